//! Probe calls, uprobe hits and one request's cost, from `mcp-bench-load calls`; the
//! in-process alternatives are timed in the same process, in the same windows.

use std::{process::Command, time::Duration};

use crate::{
    Bench,
    process::{self, Running, metric_sum, number},
    report::{Figure, duration},
};
use anyhow::ensure;

pub fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let (windows, calls) = bench.pick(("15", "20000"), ("3", "2000"));
    let mut load = Running::spawn(
        Command::new(&bench.load).args(["calls", "--windows", windows, "--calls", calls]),
        "calls: pid ",
    )?;
    let unattached = load.ask("unattached")?;
    let [empty, call] = [&unattached["empty_ns"], &unattached["probe_call_ns"]].map(number);
    bench.record(
        Figure::new("probe call, nothing attached", duration(call - empty))
            .baseline(format!("empty loop {}/iteration", duration(empty)))
            .goal("≤ 2 ns", call - empty <= 2.0),
    );
    let end_call = number(&unattached["request_end_call_ns"]);
    bench.record(
        Figure::new(
            "request_end call, nothing attached (its labels copied back to back)",
            duration(end_call - empty),
        )
        .baseline(format!("empty loop {}/iteration", duration(empty))),
    );

    let watching = Watching::attach(bench, &load, &[])?;
    let attached = load.ask("attached")?;
    // Another process running the same file: the uprobes fire there too (they are placed
    // in the file), and the programs return after finding it is not a target.
    let mut bystander = Running::spawn(
        Command::new(&bench.load).args(["calls", "--windows", windows, "--calls", calls]),
        "calls: pid ",
    )?;
    let bystanding = bystander.ask("attached")?;
    bystander.stop()?;
    // Ground truth against the count.
    let (metrics, agent_ns) = watching.drained()?;
    let requests = metric_sum(&metrics, "mcp_proxy_requests_total", &[]);
    let runs = metric_sum(&metrics, "mcp_proxy_idle_reaper_runs_total", &[]);
    // What the agent spent on each event (a hit or a request), on the other CPU.
    let agent_per_event = agent_ns / (requests + runs);
    let lost = metric_sum(&metrics, "mcp_observer_events_lost_total", &[]);
    ensure!(
        requests == number(&attached["requests_sent"]) && runs == number(&attached["hits_sent"]),
        "mcp-observe counted {requests} requests and {runs} probe hits, the load sent {} and {} ({lost} events lost)",
        attached["requests_sent"],
        attached["hits_sent"]
    );

    let [hit, shadow_hit, hit99, shadow_hit99] =
        ["hit_ns_p50", "shadow_hit_ns_p50", "hit_ns_p99", "shadow_hit_ns_p99"].map(|k| number(&attached[k]));
    bench.record(
        Figure::new("uprobe hit (idle_reaper_run, event sent), p50", duration(hit - shadow_hit))
            .baseline(format!(
                "unattached copy {} p50 (clock reads); p99 {} vs {}",
                duration(shadow_hit),
                duration(hit99),
                duration(shadow_hit99)
            ))
            .goal("≤ 700 ns", hit - shadow_hit <= 700.0),
    );
    let [bystander_hit, bystander_shadow] =
        ["hit_ns_p50", "shadow_hit_ns_p50"].map(|k| number(&bystanding[k]));
    bench.record(
        Figure::new(
            "uprobe hit in another process of the same executable (not a target), p50",
            duration(bystander_hit - bystander_shadow),
        )
        .against(
            format!("a target's hit {}", duration(hit - shadow_hit)),
            (bystander_hit - bystander_shadow) / (hit - shadow_hit),
        ),
    );
    let [request, shadow_request, clock, prometheus, opentelemetry] =
        ["request_ns", "shadow_request_ns", "clock_ns", "prometheus_ns", "opentelemetry_ns"]
            .map(|k| number(&attached[k]));
    // The proxy's thread (two uprobe hits and their programs) and the agent's event.
    let (in_proxy, observed) = (request - shadow_request, request - shadow_request + agent_per_event);
    let (prometheus, opentelemetry) = (prometheus - clock, opentelemetry - clock);
    bench.record(
        Figure::new(
            "one request, observed by mcp-observe (start + end uprobes, and the agent)",
            duration(observed),
        )
        .against(
            format!(
                "in-process OpenTelemetry {} (mcp-observe: {} in the proxy's thread, {} in the agent)",
                duration(opentelemetry),
                duration(in_proxy),
                duration(agent_per_event)
            ),
            observed / opentelemetry,
        )
        .goal("below in-process OpenTelemetry", observed < opentelemetry),
    );
    // The trade-off behind `--no-request-latency`: one uprobe hit per request, no latency.
    let watching = Watching::attach(bench, &load, &["--no-request-latency"])?;
    let untimed = load.ask("requests")?;
    let (metrics, agent_ns) = watching.drained()?;
    let counted = metric_sum(&metrics, "mcp_proxy_requests_total", &[]);
    let sent = number(&untimed["requests_sent"]);
    ensure!(
        counted == sent,
        "mcp-observe --no-request-latency counted {counted} requests, the load sent {sent}"
    );
    let agent_per_request = agent_ns / counted;
    let one_hit = number(&untimed["request_ns"]) - number(&untimed["shadow_request_ns"]) + agent_per_request;
    bench.record(
        Figure::new(
            "one request, observed with --no-request-latency (end uprobe only, no latency)",
            duration(one_hit),
        )
        .against(
            format!(
                "in-process OpenTelemetry {}; with latency {}",
                duration(opentelemetry),
                duration(observed)
            ),
            one_hit / opentelemetry,
        )
        .goal("below in-process OpenTelemetry", one_hit < opentelemetry),
    );
    // What one kernel read of the labels saves, against five (the raw ABI's labels where
    // they lie in memory), in the proxy's thread; the agent's work is the same.
    let scattered = number(&attached["scattered_request_ns"]) - shadow_request;
    bench.record(
        Figure::new(
            "one request in the proxy's thread, labels packed by mcp-probes (one read)",
            duration(in_proxy),
        )
        .against(format!("labels where they lie (five reads) {}", duration(scattered)), in_proxy / scattered),
    );
    bench.record(
        Figure::new("one request, in-process `prometheus` crate", duration(prometheus))
            .against(format!("mcp-observe {}", duration(observed)), prometheus / observed),
    );
    bench.record(
        Figure::new("one request, in-process OpenTelemetry SDK (as `mcp serve`)", duration(opentelemetry))
            .against(format!("mcp-observe {}", duration(observed)), opentelemetry / observed),
    );
    Ok(())
}

/// `mcp-observe --pid` attached to the load, and its CPU time when it was ready.
struct Watching {
    observer: Running,
    cpu_at_start: Duration,
}

impl Watching {
    fn attach(bench: &Bench, load: &Running, extra: &[&str]) -> anyhow::Result<Self> {
        let pid = load.pid().to_string();
        // Calls back to back outrun any drain timer: a ring that holds a whole window.
        let args = [&["--pid", pid.as_str(), "--ring-buffer-bytes", "33554432"], extra].concat();
        let observer = process::observer(&bench.observer, &args)?;
        let cpu_at_start = process::cpu_time(observer.pid())?;
        Ok(Self { observer, cpu_at_start })
    }

    /// Once every event is drained (the agent drains every 5 ms): its /metrics, and the CPU
    /// time it spent since it was ready, in ns. Stops it.
    fn drained(self) -> anyhow::Result<(String, f64)> {
        std::thread::sleep(Duration::from_millis(300));
        let (_, metrics) = process::get(&self.observer.announced, "/metrics")?;
        let spent = process::cpu_time(self.observer.pid())? - self.cpu_at_start;
        self.observer.stop()?;
        Ok((metrics, spent.as_nanos() as f64))
    }
}
