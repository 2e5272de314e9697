//! The agent under steady load: `mcp-bench-load flood` sends 100k request events a second
//! for ten minutes, in windows alternating one tool name and 500 (about 10k series), while
//! the agent's CPU time and resident memory are measured per window; then /metrics is
//! scraped back to back and each scrape timed, beside the `prometheus` crate encoding as
//! many series in this process.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::ensure;
use mcp_observe_benchmarks::stats::{median, percentile, quartiles};
use prometheus::{Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

use crate::{
    Bench,
    process::{self, Running, metric_sum, number, series},
    report::{Figure, duration},
};

const TOOLS: usize = 500;
const RATE: f64 = 100_000.0;

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let window = bench.pick(10.0, 1.0);
    let rounds = bench.pick(30, 2);
    let mut load = Running::spawn(
        Command::new(&bench.load).args([
            "flood",
            "--mix",
            "request",
            "--rate",
            &RATE.to_string(),
            "--tools",
            &TOOLS.to_string(),
            "--seconds",
            &window.to_string(),
        ]),
        "mcp-bench-load: pid ",
    )?;
    let observer = process::observer(&bench.observer, &["--pid", &load.pid().to_string()])?;
    let agent = observer.pid();

    // Idle first: what the agent costs with nothing to read.
    let idle_cpu = cpu_share(agent, Duration::from_secs_f64(window))?;
    let idle_rss = process::rss(agent)?;

    // One agent, one flood, windows alternating one label set (a proxy whose traffic is
    // mostly one tool of one client) and all 500 in turn (the worst case for caches: each
    // event's series is another one's), in the order AB BA AB … so that a drift of the
    // machine falls on both. A first window resolves the 500 label sets.
    let mut sent = number(&load.ask(&format!("tools {TOOLS}"))?["events"]);
    let mut rss = vec![process::rss(agent)? as f64];
    let (mut one, mut many, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [(1, 0.0, 0.0), (TOOLS, 0.0, 0.0)];
        if round % 2 == 1 {
            pair.reverse();
        }
        for (tools, share, per_event) in &mut pair {
            let (cpu, start) = (process::cpu_time(agent)?, Instant::now());
            let events = number(&load.ask(&format!("tools {tools}"))?["events"]);
            // The agent drains every 5 to 80 ms: the window's last events, then its CPU.
            std::thread::sleep(Duration::from_millis(200));
            let used = (process::cpu_time(agent)? - cpu).as_secs_f64();
            (*share, *per_event) = (used / start.elapsed().as_secs_f64() * 100.0, used / events * 1e9);
            sent += events;
            rss.push(process::rss(agent)? as f64);
        }
        pair.sort_by_key(|&(tools, ..)| tools);
        one.push(pair[0].1);
        many.push(pair[1].1);
        ratios.push(pair[1].2 / pair[0].2);
    }

    let (_, metrics) = process::get(&observer.announced, "/metrics")?;
    let requests = metric_sum(&metrics, "mcp_proxy_requests_total", &[]);
    let lost = metric_sum(&metrics, "mcp_observer_events_lost_total", &[]);
    ensure!(
        requests == sent,
        "the load sent {sent} requests, mcp-observe counted {requests} ({lost} events lost)"
    );
    let series = series(&metrics);
    let mut scrapes: Vec<f64> = (0..bench.pick(500, 50))
        .map(|_| {
            let start = Instant::now();
            process::get(&observer.announced, "/metrics").map(|_| start.elapsed().as_nanos() as f64)
        })
        .collect::<Result<_, _>>()?;
    observer.stop()?;

    let idle = format!("idle {:.2} %", idle_cpu * 100.0);
    let (one_set, busy) = (median(&mut one), median(&mut many));
    bench.record(
        Figure::new(
            format!("agent CPU at {:.0}k request events/s, one label set", RATE / 1e3),
            format!("{one_set:.2} % of a core"),
        )
        .baseline(idle.clone())
        .goal("≤ 2 %", one_set <= 2.0),
    );
    bench.record(
        Figure::new(
            format!("agent CPU at {:.0}k request events/s, {TOOLS} label sets in turn", RATE / 1e3),
            format!("{busy:.2} % of a core"),
        )
        .baseline(idle)
        .goal("≤ 2 %", busy <= 2.0),
    );
    let (q1, ratio, q3) = quartiles(&mut ratios);
    bench.record(
        Figure::new(format!("agent CPU per event, {TOOLS} label sets / one"), format!("{ratio:.3}"))
            .against(
                format!(
                    "one label set, alternate {window:.0} s windows; IQR of the round ratios {q1:.3}–{q3:.3}"
                ),
                ratio,
            )
            .goal("≤ 1", ratio <= 1.0),
    );
    let budget = 20.0 * 1024.0 * 1024.0 + 512.0 * series as f64;
    let (first, last, peak) = (rss[0], rss[rss.len() - 1], rss.iter().copied().fold(0.0, f64::max));
    let mib = |bytes: f64| format!("{:.1} MiB", bytes / 1024.0 / 1024.0);
    bench.record(
        Figure::new(
            format!("agent RSS over {:.0} s, {series} series", window * (2 * rounds) as f64),
            format!("peak {}, {} → {}", mib(peak), mib(first), mib(last)),
        )
        .against(
            format!("budget {} (20 MiB + 0.5 KiB/series); idle {}", mib(budget), mib(idle_rss as f64)),
            peak / budget,
        )
        .goal("≤ budget, flat", peak <= budget && last - first <= 1024.0 * 1024.0),
    );
    let (p50, p99) = (percentile(&mut scrapes, 0.5), percentile(&mut scrapes, 0.99));
    let encode = prometheus_encode(series, bench.pick(200, 20));
    bench.record(
        Figure::new(format!("GET /metrics, {series} series, p99"), duration(p99))
            .against(
                format!(
                    "p50 {}; `prometheus` crate gather+encode of as many series, in process, p99 {}",
                    duration(p50),
                    duration(encode)
                ),
                p99 / encode,
            )
            .goal("≤ 10 ms", p99 <= 10e6),
    );
    Ok(())
}

/// Share of one core the process used over `window`.
fn cpu_share(pid: u32, window: Duration) -> anyhow::Result<f64> {
    let before = process::cpu_time(pid)?;
    let start = Instant::now();
    std::thread::sleep(window);
    Ok((process::cpu_time(pid)? - before).as_secs_f64() / start.elapsed().as_secs_f64())
}

/// p99 of gather + text encoding of a registry of request counters and histograms with
/// about `series` samples, as an in-process exporter would serve them.
/// (The same registry as the testbed's `--in-process-metrics prometheus`, built here
/// because linking the testbed library would bring the probe note into this binary, and
/// the node-wide agent of the node suite would then take the orchestrator for a proxy.)
fn prometheus_encode(series: usize, scrapes: usize) -> f64 {
    let registry = Registry::new();
    let labels = ["method", "transport", "status", "identity", "server", "tool"];
    let total =
        IntCounterVec::new(Opts::new("mcp_proxy_requests_total", "requests"), &labels).expect("metric");
    let buckets = vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
        300.0,
    ];
    let duration = HistogramVec::new(
        HistogramOpts::new("mcp_proxy_request_duration_seconds", "latency").buckets(buckets.clone()),
        &labels,
    )
    .expect("metric");
    registry.register(Box::new(total.clone())).expect("register");
    registry.register(Box::new(duration.clone())).expect("register");
    // A label set is a counter and a histogram (its buckets, +Inf, sum and count).
    let per_set = 1 + buckets.len() + 3;
    for i in 0..series.div_ceil(per_set) {
        let tool = format!("tool{i:04}");
        let values = ["tools/call", "streamable_http", "ok", "alice", "alpha", tool.as_str()];
        total.with_label_values(&values).inc();
        duration.with_label_values(&values).observe(0.003);
    }
    let mut times: Vec<f64> = (0..scrapes)
        .map(|_| {
            let start = Instant::now();
            let mut buffer = Vec::new();
            TextEncoder::new().encode(&registry.gather(), &mut buffer).expect("encode");
            start.elapsed().as_nanos() as f64
        })
        .collect();
    percentile(&mut times, 0.99)
}
