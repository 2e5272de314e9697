//! One module per group of figures.

mod agent;
mod calls;
mod events;
mod node;
mod throughput;

use crate::Bench;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Suite {
    /// Probe calls, uprobe hits, and one request's cost against in-process metrics.
    Calls,
    /// Proxy throughput at saturation: probes compiled out, unobserved, observed, in-process.
    Throughput,
    /// The event path at its limit: events per second without loss, BPF time per event.
    Events,
    /// The agent under steady load: CPU, memory over time, /metrics latency at 10k series.
    Agent,
    /// What the node's other processes pay: exec discovery and the TCP hooks.
    Node,
    /// CPU per request in instructions, in the QEMU VM that `cargo xtask bench` boots
    /// (not in the default set: it refuses to run elsewhere).
    Instructions,
}

impl Suite {
    pub const ALL: [Suite; 5] = [Suite::Calls, Suite::Throughput, Suite::Events, Suite::Agent, Suite::Node];

    pub fn run(self, bench: &mut Bench) -> anyhow::Result<()> {
        match self {
            Suite::Calls => calls::run(bench),
            Suite::Throughput => throughput::run(bench),
            Suite::Events => events::run(bench),
            Suite::Agent => agent::run(bench),
            Suite::Node => node::run(bench),
            Suite::Instructions => throughput::run_counted(bench),
        }
    }
}
