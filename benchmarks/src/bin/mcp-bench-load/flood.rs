//! The event flood: probe calls at a fixed rate from several threads, to find where the
//! observer stops keeping up. Each thread paces itself against the clock, so the rate holds
//! whatever the observer costs per call (up to what one core can do).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use mcp_probes::{CacheOutcome, Decision, RequestLabels, Status};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads calling probes.
    #[arg(long, default_value_t = 1)]
    threads: u64,
    /// Ring-buffer events per second, over all threads (0: as fast as possible).
    #[arg(long)]
    rate: u64,
    /// How long to flood.
    #[arg(long)]
    seconds: f64,
    /// What one iteration calls.
    #[arg(long, value_enum, default_value_t = Mix::Request)]
    mix: Mix,
    /// Distinct tool names cycled through (each one is a label set of its own); a window's
    /// line may name fewer (`tools 1`).
    #[arg(long, default_value_t = 1)]
    tools: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Mix {
    /// request_start + request_end: one event (the request, with its latency).
    Request,
    /// classifier_cache: one event per probe hit, the cheapest event there is.
    Classifier,
    /// classifier_cache with an empty server name: the same event without its one string
    /// read from this process's memory.
    ClassifierUnlabelled,
    /// What a tools/call reports: request_start, acl_decision, classifier_cache and
    /// request_end: three events.
    Call,
}

impl Mix {
    fn events(self) -> u64 {
        match self {
            Mix::Request | Mix::Classifier | Mix::ClassifierUnlabelled => 1,
            Mix::Call => 3,
        }
    }
}

/// Floods once per line on stdin, printing what each window sent, until stdin ends. A line
/// `tools N` cycles through the first N tool names only, so that one flood's windows can
/// alternate label-set counts with one agent.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads > 0 && args.tools > 0, "--threads and --tools must be at least 1");
    let tools: Vec<String> = (0..args.tools).map(|i| format!("tool{i:04}")).collect();
    for line in crate::windows() {
        let line = line?;
        let count = match line.strip_prefix("tools ") {
            Some(count) => {
                count.trim().parse().ok().filter(|n| (1..=args.tools).contains(n)).ok_or_else(|| {
                    anyhow::anyhow!("{line:?}: a window's tool count is 1 to --tools ({})", args.tools)
                })?
            }
            None => args.tools,
        };
        window(args, &tools[..count]);
    }
    Ok(())
}

fn window(args: &Args, tools: &[String]) {
    let stop = AtomicBool::new(false);
    let iterations_per_sec = args.rate as f64 / args.mix.events() as f64 / args.threads as f64;
    let start = Instant::now();
    let calls: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads)
            .map(|thread| {
                let stop = &stop;
                scope.spawn(move || flood(thread, args.mix, tools, iterations_per_sec, stop))
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(args.seconds));
        stop.store(true, Ordering::Relaxed);
        workers.into_iter().map(|w| w.join().expect("flood thread")).sum()
    });
    let seconds = start.elapsed().as_secs_f64();
    let events = calls * args.mix.events();
    println!(
        "{}",
        json!({ "iterations": calls, "events": events, "seconds": seconds, "per_second": events as f64 / seconds })
    );
}

/// One thread's loop; returns its iterations. Request ids are unique per thread.
fn flood(thread: u64, mix: Mix, tools: &[String], per_sec: f64, stop: &AtomicBool) -> u64 {
    let start = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Pace in chunks: the clock is read once per 64 iterations. A thread far ahead of
        // time sleeps, leaving the CPU to the agent; one just ahead yields, as a busy proxy
        // would keep its CPU (an idle vCPU takes long to wake on a VM).
        let ahead = done as f64 / per_sec - start.elapsed().as_secs_f64();
        if per_sec > 0.0 && ahead > 0.0 {
            if ahead > 200e-6 {
                thread::sleep(Duration::from_secs_f64(ahead));
            } else {
                thread::yield_now();
            }
            continue;
        }
        for _ in 0..64 {
            let tool = &tools[done as usize % tools.len()];
            let id = thread << 48 | done;
            match mix {
                Mix::Request => request(id, tool),
                Mix::Classifier => mcp_probes::classifier_cache(tool, CacheOutcome::Hit),
                Mix::ClassifierUnlabelled => mcp_probes::classifier_cache("", CacheOutcome::Hit),
                Mix::Call => {
                    mcp_probes::request_start(id);
                    mcp_probes::acl_decision("alice", "alpha", tool, Decision::Allow);
                    mcp_probes::classifier_cache("alpha", CacheOutcome::Hit);
                    end(id, tool);
                }
            }
            done += 1;
        }
    }
    done
}

fn request(id: u64, tool: &str) {
    mcp_probes::request_start(id);
    end(id, tool);
}

fn end(id: u64, tool: &str) {
    let labels = RequestLabels {
        method: "tools/call",
        transport: "streamable_http",
        identity: "alice",
        server: "alpha",
        tool,
        status: Status::Ok,
    };
    mcp_probes::request_end(id, &labels);
}
