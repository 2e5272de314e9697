//! Per-call costs, each measured in windows that interleave the variants being compared
//! (so that a noisy neighbour hurts them alike); each figure is the median over windows.
//!
//! - `unattached`: the proxy's probe call with nothing attached, and `request_end` (which
//!   copies its labels back to back first), against an empty loop.
//! - `attached` (mcp-observe attached to this process): one uprobe hit and one observed
//!   request (start + end), against the same calls to identical unattached copies of the
//!   probes ([`crate::shadow`]), and the same request through the raw ABI with its labels
//!   where they lie in memory (five kernel reads instead of one: the layout `mcp-probes`
//!   does not make); and one request recorded in-process with the `prometheus`
//!   crate and with the OpenTelemetry SDK as upstream `mcp serve` does, against nothing.
//! - `requests`: the observed request alone against its unattached copy (run under
//!   `mcp-observe --no-request-latency`, where only the end is attached).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use mcp_observe_benchmarks::stats::{median, percentile};
use mcp_probes::{ProbeStr, RequestEnd, RequestLabels, Status};
use mcp_testbed::in_process::{InProcess, InProcessKind};
use serde_json::json;

use crate::shadow::{shadow_idle_reaper_run, shadow_request_end, shadow_request_start};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Windows per variant.
    #[arg(long, default_value_t = 15)]
    windows: usize,
    /// Calls per window.
    #[arg(long, default_value_t = 20_000)]
    calls: u64,
}

/// The agent drains an observed window's events on the other CPU: the windows after it
/// start once it is done, not while it competes with them.
const DRAIN: Duration = Duration::from_millis(50);

/// The labels of a typical tools/call, as `mcp serve` reports it.
const LABELS: RequestLabels<'static> = RequestLabels {
    method: "tools/call",
    transport: "streamable_http",
    identity: "alice",
    server: "alpha",
    tool: "echo",
    status: Status::Ok,
};

pub fn run(args: &Args) -> anyhow::Result<()> {
    eprintln!("mcp-bench-load calls: pid {} reading suites on stdin", std::process::id());
    for line in std::io::stdin().lines() {
        let report = match line?.trim() {
            "unattached" => unattached(args),
            "attached" => attached(args),
            "requests" => requests(args),
            other => anyhow::bail!("unknown suite {other:?}: expected unattached, attached or requests"),
        };
        println!("{report}");
    }
    Ok(())
}

fn unattached(args: &Args) -> serde_json::Value {
    // Ten times the calls: a window of 1–2 ns calls must outlast the timer's granularity.
    let calls = args.calls * 10;
    let mut empty = Vec::new();
    let mut probe = Vec::new();
    let mut end = Vec::new();
    for _ in 0..args.windows {
        empty.push(per_call(calls, |i| {
            black_box(i);
        }));
        probe.push(per_call(calls, |i| mcp_probes::request_start(black_box(i))));
        end.push(per_call(calls, |i| mcp_probes::request_end(black_box(i), black_box(&LABELS))));
    }
    json!({
        "empty_ns": median(&mut empty),
        "probe_call_ns": median(&mut probe),
        "request_end_call_ns": median(&mut end),
    })
}

fn attached(args: &Args) -> serde_json::Value {
    let end = request_end_args();
    // The OpenTelemetry SDK runs its periodic reader on a tokio runtime, as in `mcp serve`.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_runtime = runtime.enter();
    let prometheus = InProcess::new(InProcessKind::Prometheus);
    let opentelemetry = InProcess::new(InProcessKind::Opentelemetry);
    let mut next_id = 0u64;
    let [mut hit, mut shadow_hit] = [Vec::new(), Vec::new()];
    let [mut pair, mut shadow_pair, mut scattered, mut empty, mut prom, mut otel] =
        [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    // Each label an allocation of its own: never back to back.
    let owned =
        [LABELS.method, LABELS.transport, LABELS.identity, LABELS.server, LABELS.tool].map(String::from);
    let [method, transport, identity, server, tool] = owned.each_ref().map(|s| ProbeStr::new(s));
    let scattered_end = RequestEnd { method, transport, identity, server, tool, ..end };
    for _ in 0..args.windows {
        hit.extend(each_call(args.calls, mcp_probes::idle_reaper_run));
        std::thread::sleep(DRAIN);
        shadow_hit.extend(each_call(args.calls, || shadow_idle_reaper_run()));
        let (observed, unattached) = request_window(args.calls, &mut next_id, &end);
        pair.push(observed);
        shadow_pair.push(unattached);
        scattered.push(per_call(args.calls, |_| {
            next_id += 1;
            mcp_probes::request_start(next_id);
            mcp_probes::mcp_probe_request_end(next_id, &scattered_end);
        }));
        std::thread::sleep(DRAIN);
        empty.push(per_call(args.calls, |_| {
            black_box(Instant::now());
        }));
        prom.push(per_call(args.calls, |_| prometheus.record(&LABELS, Instant::now())));
        otel.push(per_call(args.calls, |_| opentelemetry.record(&LABELS, Instant::now())));
    }
    json!({
        "hit_ns_p50": percentile(&mut hit, 0.5),
        "hit_ns_p99": percentile(&mut hit, 0.99),
        "shadow_hit_ns_p50": percentile(&mut shadow_hit, 0.5),
        "shadow_hit_ns_p99": percentile(&mut shadow_hit, 0.99),
        "request_ns": median(&mut pair),
        "shadow_request_ns": median(&mut shadow_pair),
        "scattered_request_ns": median(&mut scattered),
        "clock_ns": median(&mut empty),
        "prometheus_ns": median(&mut prom),
        "opentelemetry_ns": median(&mut otel),
        "hits_sent": args.calls * args.windows as u64,
        "requests_sent": next_id,
    })
}

fn requests(args: &Args) -> serde_json::Value {
    let end = request_end_args();
    let mut next_id = 0u64;
    let [mut pair, mut shadow_pair] = [Vec::new(), Vec::new()];
    for _ in 0..args.windows {
        let (observed, unattached) = request_window(args.calls, &mut next_id, &end);
        pair.push(observed);
        shadow_pair.push(unattached);
    }
    json!({
        "request_ns": median(&mut pair),
        "shadow_request_ns": median(&mut shadow_pair),
        "requests_sent": next_id,
    })
}

/// One window of requests (start + end, ids from `next_id` on), then as many calls to the
/// unattached copies once the agent has drained the first: ns per request of each.
fn request_window(calls: u64, next_id: &mut u64, end: &RequestEnd) -> (f64, f64) {
    let observed = per_call(calls, |_| {
        *next_id += 1;
        mcp_probes::request_start(*next_id);
        mcp_probes::request_end(*next_id, &LABELS);
    });
    std::thread::sleep(DRAIN);
    let unattached = per_call(calls, |i| {
        shadow_request_start(i);
        shadow_request_end(i, end);
    });
    (observed, unattached)
}

/// [`LABELS`] as `request_end`'s argument, for the unattached copies.
fn request_end_args() -> RequestEnd {
    RequestEnd {
        method: ProbeStr::new(LABELS.method),
        transport: ProbeStr::new(LABELS.transport),
        identity: ProbeStr::new(LABELS.identity),
        server: ProbeStr::new(LABELS.server),
        tool: ProbeStr::new(LABELS.tool),
        status: LABELS.status as u32,
        elapsed_us: 0,
    }
}

/// Mean ns per call of `calls` calls of `f(i)`.
fn per_call(calls: u64, mut f: impl FnMut(u64)) -> f64 {
    let start = Instant::now();
    for i in 0..calls {
        f(i);
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

/// Each call of `f` timed on its own (clock reads included), in ns.
fn each_call(calls: u64, mut f: impl FnMut()) -> Vec<f64> {
    (0..calls)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_nanos() as f64
        })
        .collect()
}
