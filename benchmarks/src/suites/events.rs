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

use crate::{
    Bench,
    process::{self, Running, metric_sum, number},
    report::{Figure, duration},
};

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let seconds = bench.pick("60", "3");
    let Flooded { sent, observer, agent_cpu } = flood(
        bench,
        &[],
        &["--mix", "classifier", "--rate", "1050000", "--threads", "2", "--seconds", seconds],
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
    let rate = number(&sent["per_second"]);
    bench.record(
        Figure::new(
            format!("events per second for {seconds} s (classifier_cache, 2 threads, default 4 MiB ring)"),
            format!("{:.2} M/s, {lost} lost", rate / 1e6),
        )
        .baseline(format!(
            "sent {events}, received {received}; agent CPU {:.0} % of a core",
            agent_cpu * 100.0
        ))
        .goal("≥ 1 M/s, 0 lost", rate >= 1e6 && lost == 0.0),
    );

    // Each program's time per run, from the kernel, while a tools/call mix flows.
    let enabled = std::fs::read_to_string(STATS)?;
    std::fs::write(STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
    let result = (|| {
        let (flooded, before) = flood_after(
            bench,
            &[],
            &["--mix", "call", "--rate", "100000", "--seconds", bench.pick("5", "1")],
            program_stats,
        )?;
        let after = program_stats()?;
        flooded.observer.stop()?;
        Ok::<_, anyhow::Error>((before, after))
    })();
    std::fs::write(STATS, enabled.trim())?;
    let (before, after) = result?;
    let mut names: Vec<&String> = after.keys().collect();
    names.sort();
    for name in names {
        let (time, runs) = after[name];
        let (time0, runs0) = before.get(name).copied().unwrap_or_default();
        let runs = runs.saturating_sub(runs0);
        if runs == 0 {
            continue;
        }
        let per_run = (time - time0) as f64 / runs as f64;
        bench.record(
            Figure::new(format!("BPF time per run, {name}"), duration(per_run))
                .baseline(format!("{runs} runs"))
                .goal("≤ 150 ns", per_run <= 150.0),
        );
    }
    Ok(())
}

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

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
