//! The testbed proxy at saturation (a closed-loop client keeping 8 requests in flight), in
//! eight variants, one process each, taken in turn round after round: built without probe
//! calls; with them, unobserved, twice (an A/A pair: how far two identical variants
//! differ is this machine's resolution); observed by `mcp-observe --pid`, with and without
//! request latency, and with its kernel hooks alone (`--kernel-only`); and instrumented
//! in-process with the `prometheus` crate and with the OpenTelemetry SDK. Each figure is
//! the median over rounds of the ratio within a round, so that drift between rounds
//! cancels out, with the interquartile range of those ratios: on a shared 2-core VM one
//! window's throughput varies by several percent, more than some of the effects measured
//! here. Beside throughput, each run also gives the CPU time per request of the proxy
//! process (its CPU clock, to the nanosecond) and, when observed, of the agent: what the
//! observer costs the proxy's own CPU, kernel hooks included, which the calls suite's
//! microbenchmark cannot see.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use mcp_observe_benchmarks::stats::{median, quartiles};

use crate::{
    Bench,
    process::{self, Running, number},
    report::Figure,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    WithoutProbes,
    Unobserved,
    UnobservedAgain,
    Observed,
    ObservedWithoutLatency,
    KernelHooksOnly,
    Prometheus,
    OpenTelemetry,
}

const VARIANTS: [Variant; 8] = [
    Variant::WithoutProbes,
    Variant::Unobserved,
    Variant::UnobservedAgain,
    Variant::Observed,
    Variant::ObservedWithoutLatency,
    Variant::KernelHooksOnly,
    Variant::Prometheus,
    Variant::OpenTelemetry,
];

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let (rounds, seconds) = bench.pick((15, "2"), (1, "1"));
    let Measured { windows, cpu } = measure(bench, &VARIANTS, rounds, seconds)?;
    let rate = |v: Variant| median(&mut windows.iter().map(|w| w[v as usize]).collect::<Vec<_>>());
    let mut figure = |name: &str, variant: Variant, (baseline, of): (&str, Variant), goal: Option<f64>| {
        let mut ratios: Vec<f64> = windows.iter().map(|w| w[variant as usize] / w[of as usize]).collect();
        let (q1, ratio, q3) = quartiles(&mut ratios);
        let figure = Figure::new(format!("proxy throughput, {name}"), format!("{:.0} req/s", rate(variant)))
            .against(
                format!("{baseline} {:.0} req/s; IQR of the round ratios {q1:.3}–{q3:.3}", rate(of)),
                ratio,
            );
        bench.record(match goal {
            // Judged only when enough rounds agree more closely than the margin judged.
            Some(goal) if windows.len() >= MIN_ROUNDS && q3 - q1 < 1.0 - goal => {
                figure.goal(format!("≥ {goal}"), ratio >= goal)
            }
            Some(goal) => figure
                .undecided(format!("≥ {goal}: undecided, too few rounds or rounds that vary more than that")),
            None => figure,
        });
    };
    for (name, variant, baseline) in COMPARISONS {
        let goal = match variant {
            Variant::Unobserved => Some(0.999),
            Variant::Observed | Variant::ObservedWithoutLatency => Some(0.99),
            _ => None,
        };
        figure(name, variant, baseline, goal);
    }
    cpu_figures(bench, "CPU per request at saturation", "ns", &VARIANTS, &cpu);
    Ok(())
}

/// What the instructions suite measures: the goals' variants, and the A/A pair.
const COUNTED: [Variant; 6] = [
    Variant::WithoutProbes,
    Variant::Unobserved,
    Variant::UnobservedAgain,
    Variant::Observed,
    Variant::ObservedWithoutLatency,
    Variant::OpenTelemetry,
];

/// On the kernel command line of the VM `cargo xtask bench` boots with QEMU's `-icount`.
pub const ICOUNT_MARK: &str = "mcp_observe_bench.icount";

/// CPU per request where a nanosecond of CPU time is one instruction: under QEMU's
/// `-icount shift=0` the guest's clock advances one nanosecond per instruction executed,
/// so what moves the host's figures (other tenants, frequency, caches) cannot move these,
/// and the A/A pair agrees to about 0.1 % where the host's differs by several percent.
pub fn run_counted(bench: &mut Bench) -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    ensure!(
        cmdline.split_whitespace().any(|arg| arg == ICOUNT_MARK),
        "the instructions suite needs a VM whose clock counts instructions: run `cargo xtask bench`, which boots one"
    );
    let (rounds, seconds) = bench.pick((5, "1"), (1, "1"));
    let Measured { cpu, .. } = measure(bench, &COUNTED, rounds, seconds)?;
    let title = "instructions per request at saturation (QEMU icount)";
    cpu_figures(bench, title, "instructions", &COUNTED, &cpu);
    Ok(())
}

/// Windows measured round after round: requests per second, and CPU ns per request of
/// the proxy and of the agent, by variant (0 for a variant not measured).
struct Measured {
    windows: Vec<[f64; VARIANTS.len()]>,
    cpu: Vec<CpuWindow>,
}

/// Saturates a proxy of each of `variants` for `seconds`, in turn, `rounds` times.
fn measure(bench: &Bench, variants: &[Variant], rounds: usize, seconds: &str) -> anyhow::Result<Measured> {
    let proxy = |binary: &Path, extra: &[&str]| {
        Running::spawn(
            Command::new(binary).args(["proxy", "--listen", "127.0.0.1:0"]).args(extra),
            " serving http://",
        )
    };
    // A process of its own for every variant, each taking one window per round: a process
    // that served more windows than another ran faster in its later ones (the A/A pair
    // showed it when two variants shared one).
    let mut proxies: Vec<Option<Running>> = VARIANTS.iter().map(|_| None).collect();
    for &variant in variants {
        proxies[variant as usize] = Some(match variant {
            Variant::WithoutProbes => proxy(&bench.testbed_without_probes, &[])?,
            Variant::Prometheus => proxy(&bench.testbed, &["--in-process-metrics", "prometheus"])?,
            Variant::OpenTelemetry => proxy(&bench.testbed, &["--in-process-metrics", "opentelemetry"])?,
            _ => proxy(&bench.testbed, &[])?,
        });
    }
    let of = |variant: Variant| proxies[variant as usize].as_ref().expect("a measured variant's proxy");
    // Backends started and code paths warm before anything counts.
    for &variant in variants {
        saturate(&bench.testbed, of(variant), "1")?;
    }
    // Requests per second, and CPU ns per request of the proxy and of the agent, by round
    // and variant.
    let mut windows: Vec<[f64; VARIANTS.len()]> = Vec::new();
    let mut cpu: Vec<CpuWindow> = Vec::new();
    for round in 0..rounds {
        let mut measured = [0.0; VARIANTS.len()];
        let mut per_request: CpuWindow = [(0.0, 0.0); VARIANTS.len()];
        for variant in shuffled(round).into_iter().filter(|v| variants.contains(v)) {
            let proxy = of(variant);
            let pid = proxy.pid().to_string();
            let observer = match variant {
                Variant::Observed => Some(process::observer(&bench.observer, &["--pid", &pid])?),
                Variant::ObservedWithoutLatency => {
                    Some(process::observer(&bench.observer, &["--pid", &pid, "--no-request-latency"])?)
                }
                Variant::KernelHooksOnly => {
                    Some(process::observer(&bench.observer, &["--pid", &pid, "--kernel-only"])?)
                }
                _ => None,
            };
            let agent_pid = observer.as_ref().map(Running::pid);
            let agent_cpu = || agent_pid.map_or(Ok(Duration::ZERO), process::cpu_time);
            let (proxy_before, agent_before) = (process::cpu_time(proxy.pid())?, agent_cpu()?);
            let (rate, handled) = saturate(&bench.testbed, proxy, seconds)?;
            let ns_per_request = |spent: Duration| spent.as_nanos() as f64 / handled;
            per_request[variant as usize] = (
                ns_per_request(process::cpu_time(proxy.pid())? - proxy_before),
                ns_per_request(agent_cpu()? - agent_before),
            );
            measured[variant as usize] = rate;
            if let Some(observer) = observer {
                observer.stop()?;
            }
        }
        windows.push(measured);
        cpu.push(per_request);
    }
    Ok(Measured { windows, cpu })
}

/// CPU time per request: the proxy's, plus the agent's where one observes it, against a
/// baseline variant's, as the median of the per-round ratios with their IQR, for every
/// comparison whose two variants were measured. A goal is a ceiling on the ratio. `unit`
/// names what a nanosecond of CPU time is (under QEMU's instruction counting, one
/// instruction).
fn cpu_figures(bench: &mut Bench, title: &str, unit: &str, variants: &[Variant], cpu: &[CpuWindow]) {
    let total = |w: &CpuWindow, v: Variant| w[v as usize].0 + w[v as usize].1;
    let median_of = |f: &dyn Fn(&CpuWindow) -> f64| median(&mut cpu.iter().map(f).collect::<Vec<_>>());
    let ratio_quartiles = |variant: Variant, of: Variant| {
        let mut ratios: Vec<f64> = cpu.iter().map(|w| total(w, variant) / total(w, of)).collect();
        quartiles(&mut ratios)
    };
    // How far from 1 two identical processes' middle half reaches: a ratio nearer its goal
    // than that says nothing about the goal.
    let spread = if variants.contains(&Variant::UnobservedAgain) && variants.contains(&Variant::Unobserved) {
        let (q1, _, q3) = ratio_quartiles(Variant::UnobservedAgain, Variant::Unobserved);
        (1.0 - q1).max(q3 - 1.0).max(0.0)
    } else {
        f64::INFINITY
    };
    let mut figure = |name: &str, variant: Variant, (baseline, of): (&str, Variant), goal: Option<f64>| {
        if !variants.contains(&variant) || !variants.contains(&of) {
            return;
        }
        let (q1, ratio, q3) = ratio_quartiles(variant, of);
        let (proxy, agent) = (median_of(&|w| w[variant as usize].0), median_of(&|w| w[variant as usize].1));
        let measured = if agent == 0.0 {
            format!("{proxy:.0} {unit}")
        } else {
            format!("{:.0} {unit} ({proxy:.0} in the proxy, {agent:.0} in the agent)", proxy + agent)
        };
        let figure = Figure::new(format!("{title}, {name}"), measured).against(
            format!(
                "{baseline} {:.0} {unit}; IQR of the round ratios {q1:.4}–{q3:.4}",
                median_of(&|w| total(w, of))
            ),
            ratio,
        );
        bench.record(match goal {
            Some(goal) => match decide(goal, (q1, q3), spread, cpu.len()) {
                Some(met) => figure.goal(format!("≤ {goal}"), met),
                None => figure.undecided(format!(
                    "≤ {goal}: undecided, too few rounds or their middle half within the A/A pair's spread (±{spread:.4}) of it"
                )),
            },
            None => figure,
        });
    };
    for (name, variant, baseline) in COMPARISONS {
        // The throughput goal's ≥ 0.99, as CPU per request (proxy + agent).
        let goal = matches!(variant, Variant::Observed | Variant::ObservedWithoutLatency).then_some(1.01);
        figure(name, variant, baseline, goal);
    }
    let otel = ("in-process OpenTelemetry", Variant::OpenTelemetry);
    figure(
        "one hit with latency (--no-request-latency and the guard's elapsed time), proxy + agent",
        Variant::ObservedWithoutLatency,
        otel,
        Some(1.0),
    );
}

/// Whether a ratio whose rounds' middle half is `(q1, q3)` meets the ceiling `goal`: None
/// (undecided) with fewer than [`MIN_ROUNDS`] rounds, or with that middle half within
/// `spread` (the A/A pair's distance from 1) of the goal.
fn decide(goal: f64, (q1, q3): (f64, f64), spread: f64, rounds: usize) -> Option<bool> {
    if rounds < MIN_ROUNDS {
        return None;
    }
    if q3 + spread <= goal {
        Some(true)
    } else if q1 - spread > goal {
        Some(false)
    } else {
        None
    }
}

/// One window's CPU ns per request by variant: the proxy's, and the agent's (0 unobserved).
type CpuWindow = [(f64, f64); VARIANTS.len()];

const UNOBSERVED: (&str, Variant) = ("unobserved", Variant::Unobserved);

/// What the figures compare: a variant, named, against a baseline variant.
const COMPARISONS: [(&str, Variant, (&str, Variant)); 7] = [
    (
        "unobserved, a second identical process (A/A: what this machine can resolve)",
        Variant::UnobservedAgain,
        UNOBSERVED,
    ),
    ("probes compiled in, unobserved", Variant::Unobserved, ("no probe calls", Variant::WithoutProbes)),
    ("observed by mcp-observe", Variant::Observed, UNOBSERVED),
    ("observed by mcp-observe --no-request-latency", Variant::ObservedWithoutLatency, UNOBSERVED),
    ("observed by mcp-observe --kernel-only (its kernel hooks alone)", Variant::KernelHooksOnly, UNOBSERVED),
    ("in-process `prometheus` crate", Variant::Prometheus, UNOBSERVED),
    ("in-process OpenTelemetry", Variant::OpenTelemetry, UNOBSERVED),
];

/// Rounds below which no goal is judged (the quick smoke run has one).
const MIN_ROUNDS: usize = 5;

/// The variants in an order of their own for each round (a fixed sequence of shuffles),
/// so that no variant always follows the same one.
fn shuffled(round: usize) -> [Variant; VARIANTS.len()] {
    let mut order = VARIANTS;
    // SplitMix64 of the round: deterministic, and enough to vary neighbours.
    let mut state = (round as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    for i in (1..order.len()).rev() {
        state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb) ^ (state >> 31);
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

/// Runs the saturating client against `proxy` for `seconds`: requests per second in the
/// counted window, and every request the proxy answered in the whole run (warm-up and
/// session included), which its CPU time over the run paid for.
fn saturate(testbed: &Path, proxy: &Running, seconds: &str) -> anyhow::Result<(f64, f64)> {
    let url = format!("http://{}/mcp", proxy.announced);
    let output = Command::new(testbed)
        .args(["saturate", "--url", &url, "--seconds", seconds, "--concurrency", "8"])
        .output()
        .context("running mcp-testbed saturate")?;
    ensure!(
        output.status.success(),
        "mcp-testbed saturate: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).context("saturate's JSON")?;
    Ok((number(&report["per_second"]), number(&report["handled"])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_is_decided_only_beyond_the_a_a_spread() {
        // The host run at f15373a: one hit against OpenTelemetry, A/A reaching ±0.053.
        assert_eq!(decide(1.0, (1.0029, 1.0831), 0.0534, 15), None);
        // The instructions run: A/A ±0.0014.
        assert_eq!(decide(1.0, (0.9793, 0.9821), 0.0014, 5), Some(true));
        assert_eq!(decide(1.01, (1.0980, 1.1002), 0.0014, 5), Some(false));
        assert_eq!(decide(1.01, (1.0980, 1.1002), 0.0014, 4), None, "too few rounds");
        assert_eq!(decide(1.0, (0.99, 0.999), 0.0, 5), Some(true), "no spread: the middle half alone");
    }
}
