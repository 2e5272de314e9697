//! The event path at its limit: `mcp-bench-load flood` calls probes at a fixed rate under
//! `mcp-observe --pid`; what it sent is compared with what the agent received and what
//! the kernel counted lost. Then the kernel's own accounting (`kernel.bpf_stats_enabled`)
//! gives each program's run time per event.

use std::{
    collections::HashMap,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use mcp_observe_benchmarks::stats::{median, quartiles};

use crate::{
    Bench,
    process::{self, Running, metric_sum, number},
    report::{Figure, duration},
};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let seconds = bench.pick("60", "3");
    let default = counted_flood(bench, DEFAULT_RING, "1050000", seconds)?;
    bench.record(
        default
            .figure(format!(
                "events per second for {seconds} s (classifier_cache, 2 threads, default 4 MiB ring)"
            ))
            .goal("≥ 1 M/s, 0 lost", default.rate >= 1e6 && default.lost == 0.0),
    );
    // The same floods on a node whose other processes keep every CPU busy: the agent then
    // waits for a CPU, and the ring must hold what arrives meanwhile.
    for (ring, rate) in [(DEFAULT_RING, "1050000"), (DEFAULT_RING, "250000"), (BUSY_RING, "1050000")] {
        let _hogs = Hogs::start()?;
        let flooded = counted_flood(bench, ring, rate, seconds)?;
        let name = format!(
            "events per second for {seconds} s, every CPU also busy with another process ({} MiB ring)",
            ring.parse::<u32>()? >> 20
        );
        let figure = flooded.figure(name);
        bench.record(if ring == BUSY_RING {
            figure.goal("≥ 1 M/s, 0 lost", flooded.rate >= 1e6 && flooded.lost == 0.0)
        } else {
            figure
        });
    }

    // Each program's time per run, from the kernel, while a tools/call mix flows.
    let (before, after) = with_bpf_stats(|| {
        let (flooded, before) = flood_after(
            bench,
            &[],
            &["--mix", "call", "--rate", "100000", "--seconds", bench.pick("5", "1")],
            program_stats,
        )?;
        let after = program_stats()?;
        flooded.observer.stop()?;
        Ok((before, after))
    })?;
    let mut names: Vec<&String> = after.keys().collect();
    names.sort();
    for name in names {
        let (time, runs) = after[name];
        let (time0, runs0) = before.get(name).copied().unwrap_or_default();
        let runs = runs.saturating_sub(runs0);
        if runs < MIN_RUNS {
            continue;
        }
        let per_run = (time - time0) as f64 / runs as f64;
        bench.record(
            Figure::new(format!("BPF time per run, {name}"), duration(per_run))
                .baseline(format!("{runs} runs"))
                .goal("≤ 150 ns", per_run <= 150.0),
        );
    }
    with_bpf_stats(|| floors(bench))
}

/// The agent's default ring buffer, and the one a busy node flooding 1 M events/s needs.
const DEFAULT_RING: &str = "4194304";
const BUSY_RING: &str = "33554432";

/// A classifier_cache flood of `rate` events/s for `seconds` under an agent with a ring of
/// `ring` bytes, every event accounted for: received + lost = sent, counted = received.
fn counted_flood(bench: &Bench, ring: &str, rate: &str, seconds: &str) -> anyhow::Result<Counted> {
    let Flooded { sent, observer, agent_cpu } = flood(
        bench,
        &["--ring-buffer-bytes", ring],
        &["--mix", "classifier", "--rate", rate, "--threads", "2", "--seconds", seconds],
    )?;
    let (_, metrics) = process::get(&observer.announced, "/metrics")?;
    let kind = ["kind=\"classifier_cache\""];
    let received = metric_sum(&metrics, "mcp_observer_events_total", &kind);
    let lost = metric_sum(&metrics, "mcp_observer_events_lost_total", &kind);
    let counted = metric_sum(&metrics, "mcp_proxy_classifier_cache_hits_total", &[]);
    let events = number(&sent["events"]);
    ensure!(
        received + lost == events && counted == received,
        "the load sent {events} events; mcp-observe received {received}, counted {counted}, and the kernel lost {lost}"
    );
    observer.stop()?;
    Ok(Counted { rate: number(&sent["per_second"]), events, received, lost, agent_cpu })
}

/// What a [`counted_flood`] sent, and what became of it.
struct Counted {
    rate: f64,
    events: f64,
    received: f64,
    lost: f64,
    agent_cpu: f64,
}

impl Counted {
    fn figure(&self, name: String) -> Figure {
        Figure::new(name, format!("{:.2} M/s, {} lost", self.rate / 1e6, self.lost)).baseline(format!(
            "sent {}, received {}; agent CPU {:.0} % of a core",
            self.events,
            self.received,
            self.agent_cpu * 100.0
        ))
    }
}

/// A CPU-bound process per CPU, killed on drop: the rest of a busy node.
struct Hogs(Vec<std::process::Child>);

impl Hogs {
    fn start() -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism()?.get();
        let spin = || Command::new("sh").args(["-c", "while :; do :; done"]).spawn();
        Ok(Self((0..cpus).map(|_| spin()).collect::<Result<_, _>>()?))
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// The floor under the figures above, from the same kernel accounting, in windows taken
/// in turn (this VM's speed drifts by tens of percent over seconds): the classifier_cache
/// event with and without its one string, whose difference is one read of the proxy's
/// memory, and the same hit in a process that is not a target, where the program returns
/// after one map lookup.
fn floors(bench: &mut Bench) -> anyhow::Result<()> {
    const PROGRAM: &str = "mcp_classifier_cache";
    let load = |mix: &str| {
        Running::spawn(
            Command::new(&bench.load).args(["flood", "--mix", mix, "--rate", "100000", "--seconds", "0.5"]),
            "mcp-bench-load: pid ",
        )
    };
    let mut loads = [load("classifier")?, load("classifier-unlabelled")?, load("classifier")?];
    let [labelled, unlabelled] = [&loads[0], &loads[1]].map(|l| l.pid().to_string());
    let observer = process::observer(&bench.observer, &["--pid", &labelled, "--pid", &unlabelled])?;
    let mut per_run: [Vec<f64>; 3] = Default::default();
    let mut sent = [0.0; 3];
    for round in 0..bench.pick(10, 2) {
        // Each round starts at another process, so that none always follows the same one.
        for which in (0..3).map(|k| (k + round) % 3) {
            let (time0, runs0) = program_stats_of(PROGRAM)?;
            let window = loads[which].ask("go")?;
            let (time, runs) = program_stats_of(PROGRAM)?;
            // Ground truth: the program ran once per call of this window, and only then.
            let events = number(&window["events"]);
            ensure!(
                (runs - runs0) as f64 == events,
                "{PROGRAM} ran {} times in a window of {events} calls",
                runs - runs0
            );
            per_run[which].push((time - time0) as f64 / events);
            sent[which] += events;
        }
    }
    // Ground truth: both targets' hits counted, the bystander's never.
    std::thread::sleep(Duration::from_millis(300));
    let (_, metrics) = process::get(&observer.announced, "/metrics")?;
    let counted = metric_sum(&metrics, "mcp_proxy_classifier_cache_hits_total", &[]);
    ensure!(
        counted == sent[0] + sent[1],
        "mcp-observe counted {counted} classifier hits; the two targets sent {} and {}",
        sent[0],
        sent[1]
    );
    observer.stop()?;
    // One read: the difference within each round, where the two windows are neighbours.
    let mut reads: Vec<f64> =
        per_run[0].iter().zip(&per_run[1]).map(|(with, without)| with - without).collect();
    let (q1, read, q3) = quartiles(&mut reads);
    let [labelled, unlabelled, bystander] = per_run.map(|mut times| median(&mut times));
    bench.record(
        Figure::new(
            "BPF time per run, a hit in a process that is not a target (one map lookup, nothing sent)",
            duration(bystander),
        )
        .against(format!("a target's classifier_cache event {}", duration(labelled)), bystander / labelled),
    );
    bench.record(
        Figure::new("BPF time per run, classifier_cache without its string", duration(unlabelled))
            .against(format!("with its string {}", duration(labelled)), unlabelled / labelled),
    );
    bench.record(
        Figure::new("one string read from the proxy's memory (bpf_probe_read_user)", duration(read))
            .baseline(format!(
                "classifier_cache with its string − without, median of the rounds' differences (IQR {}–{})",
                duration(q1),
                duration(q3)
            )),
    );
    Ok(())
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Programs that ran fewer times during the flood are the kernel hooks, run by whatever
/// else the machine did meanwhile: too few runs to quote a time per run.
const MIN_RUNS: u64 = 1000;

/// Runs `f` with the kernel's per-program accounting on, then puts the setting back.
fn with_bpf_stats<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let enabled = std::fs::read_to_string(STATS)?;
    std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = f();
    std::fs::write(STATS, enabled.trim())?;
    result
}

/// A flood that ran, under the agent that observed it (still running).
pub struct Flooded {
    /// What the load says it sent.
    pub sent: serde_json::Value,
    pub observer: Running,
    /// The agent's CPU time while the flood ran (and was drained), as a share of one core.
    pub agent_cpu: f64,
}

/// Starts `mcp-bench-load flood FLOOD…` under `mcp-observe --pid … OBSERVER…`, lets it run
/// and returns what it sent, once every event has been drained.
pub fn flood(bench: &Bench, observer: &[&str], flood: &[&str]) -> anyhow::Result<Flooded> {
    Ok(flood_after(bench, observer, flood, || Ok(()))?.0)
}

/// [`flood`], calling `ready` once the agent is attached, just before the flood starts.
pub fn flood_after<T>(
    bench: &Bench,
    observer: &[&str],
    flood: &[&str],
    ready: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(Flooded, T)> {
    let mut load =
        Running::spawn(Command::new(&bench.load).arg("flood").args(flood), "mcp-bench-load: pid ")?;
    let pid = load.pid().to_string();
    let observer = process::observer(&bench.observer, &[&["--pid", pid.as_str()], observer].concat())?;
    let at_ready = ready()?;
    let (cpu, start) = (process::cpu_time(observer.pid())?, Instant::now());
    let sent = load.ask("go")?;
    // The agent drains every 5 to 80 ms; a fraction of a second is plenty.
    std::thread::sleep(Duration::from_millis(500));
    let agent_cpu = (process::cpu_time(observer.pid())? - cpu).as_secs_f64() / start.elapsed().as_secs_f64();
    Ok((Flooded { sent, observer, agent_cpu }, at_ready))
}

/// (run time in ns, runs) of the loaded program `name`.
fn program_stats_of(name: &str) -> anyhow::Result<(u64, u64)> {
    program_stats()?.get(name).copied().with_context(|| format!("no program {name} is loaded"))
}

/// (run time in ns, runs) of every loaded program of mcp-observe's, by name.
fn program_stats() -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let output =
        Command::new("bpftool").args(["prog", "show", "--json"]).output().context("running bpftool")?;
    ensure!(output.status.success(), "bpftool prog show: {}", String::from_utf8_lossy(&output.stderr));
    let programs: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)?;
    let mut stats = HashMap::new();
    for program in programs {
        let Some(name) = program["name"].as_str().filter(|n| n.starts_with("mcp_")) else { continue };
        let entry: &mut (u64, u64) = stats.entry(name.to_string()).or_default();
        entry.0 += program["run_time_ns"].as_u64().unwrap_or(0);
        entry.1 += program["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(stats)
}
