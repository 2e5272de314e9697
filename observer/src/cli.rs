//! The command line: the modes (`--pid`, `agent`, `top`) and their flags.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::labels::{IdentityMode, LabelConfig};

/// Observe probe-enabled MCP proxies from the outside and serve Prometheus metrics: the
/// `--pid`s given, or with `agent` every proxy on this node.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-observe",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Process id of the proxy to observe (repeat for several proxies).
    #[arg(long = "pid", required = true, value_name = "PID")]
    pub pids: Vec<u32>,
    /// Attach, print what was found and attached, and exit (0 = every probe attached).
    #[arg(long)]
    pub check: bool,
    /// Attach no uprobes, only the kernel hooks: TCP and child-process metrics, for a
    /// proxy built without the probes.
    #[arg(long)]
    pub kernel_only: bool,
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Observe every probe-enabled MCP proxy on this node, as they start and exit (the
    /// Kubernetes DaemonSet's mode): series are labelled by namespace, pod and container,
    /// or by pid and exe outside Kubernetes.
    Agent(AgentArgs),
    /// A live table of each proxy's backends and tools, refreshed every second, like
    /// `top`: request rate, p50 and p99 latency, error share, totals; sessions, backends
    /// and requests in flight per proxy; events lost. `q` quits.
    Top(TopArgs),
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The host's /proc (with `hostPID: true`, the pod's own /proc is the host's).
    #[arg(long, default_value = "/proc", value_name = "PATH")]
    pub proc: PathBuf,
    /// kubelet's container log links, whose names give namespace, pod and container.
    #[arg(long, default_value = "/var/log/containers", value_name = "DIR")]
    pub container_logs: PathBuf,
    /// Scan once, print the proxies found and what was attached, and exit.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub listen: Listen,
    #[command(flatten)]
    pub common: Common,
}

/// Where the agent serves.
#[derive(Debug, clap::Args)]
pub struct Listen {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub listen: SocketAddr,
}

/// `top`: a live table in the terminal.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["pids", "url"])))]
pub struct TopArgs {
    /// Attach to this proxy (repeat for several) and show what this process observes.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Show what a running agent serves instead, e.g. http://127.0.0.1:9464/metrics run in
    /// the DaemonSet's agent pod: nothing is attached twice. Plain HTTP only.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Rates, percentiles and error shares are over this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub window_secs: u64,
    /// How often the table is refreshed, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
    #[command(flatten)]
    pub common: Common,
}

/// Flags of every mode that attaches.
#[derive(Clone, Debug, clap::Args)]
pub struct Common {
    /// Ring-buffer size in bytes (a power of two, at least 4096). The default holds 9 ms
    /// of events at a million a second, past the drain interval.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub ring_buffer_bytes: u32,
    /// How often the agent drains the ring buffer while events flow, in milliseconds
    /// (up to 16 times less often while they trickle).
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub drain_interval_ms: u64,
    /// Count a request in flight longer than this as status="timeout" and forget it
    /// (the proxy dropped it without ending it). Keep it above the proxy's own timeout.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub request_expiry_secs: u64,
    /// Leave `mcp_probe_request_start` unattached: requests are counted by status and
    /// labels from their ends alone, with the latency the proxy measured itself if its
    /// request_end carries one (the mcp-probes request guard does) and without the
    /// in-flight gauges (a request the proxy drops without ending it is not counted at
    /// all); each costs the proxy one uprobe hit instead of two (benchmarks/README.md).
    #[arg(long, conflicts_with = "request_expiry_secs")]
    pub no_request_latency: bool,
    /// Keep a workload's series this long after its last process exited: a container
    /// restarted meanwhile continues its counters; then they are removed.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub retention_secs: u64,
    #[command(flatten)]
    pub labels: LabelArgs,
}

impl Common {
    /// `request_start` is attached and requests are timed.
    pub fn request_latency(&self) -> bool {
        !self.no_request_latency
    }
}

/// Cardinality: distinct values kept per label (the rest fold into `__other__`, counted in
/// mcp_observer_label_overflow_total), the tool allowlist and what to do with identities.
#[derive(Clone, Debug, clap::Args)]
pub struct LabelArgs {
    /// Distinct `method` values kept (clients can send any method name).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub max_methods: usize,
    /// Distinct `transport` values kept.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_transports: usize,
    /// Distinct `identity` values kept.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub max_identities: usize,
    /// Distinct `server` values kept.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_servers: usize,
    /// Distinct `tool` values kept.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub max_tools: usize,
    /// Keep only these tool names (repeat, or separate with commas); others become __other__.
    #[arg(long = "allow-tool", value_delimiter = ',', value_name = "TOOL")]
    pub allow_tools: Vec<String>,
    /// What the `identity` label holds: the identity, nothing, or a salted SHA-256 of it.
    #[arg(long, value_enum, default_value_t = IdentityMode::Keep)]
    pub identity: IdentityMode,
    /// Salt for `--identity hash`, so that identities cannot be guessed from their hashes.
    #[arg(long, env = "MCP_OBSERVE_IDENTITY_SALT", default_value = "", hide_env_values = true)]
    pub identity_salt: String,
}

impl LabelArgs {
    pub fn config(&self) -> LabelConfig {
        LabelConfig {
            // In observer_common::field order.
            max_values: [
                self.max_methods,
                self.max_transports,
                self.max_identities,
                self.max_servers,
                self.max_tools,
            ],
            tool_allowlist: (!self.allow_tools.is_empty())
                .then(|| self.allow_tools.iter().cloned().collect()),
            identity: self.identity,
            identity_salt: self.identity_salt.clone(),
        }
    }
}
