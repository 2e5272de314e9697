//! `mcp-observe`: Prometheus metrics for an MCP proxy, from eBPF uprobes on the probe
//! functions it calls and from tracepoints on its TCP connections and child processes.
//! The proxy carries no exporter code.

mod decode;
mod error;
mod events;
mod hooks;
mod http;
mod kernel;
mod labels;
mod loader;
mod maps;
mod metrics;
mod probes;
mod ring;
mod spans;
mod state;
mod targets;
mod top;
mod tracefs;
mod tree;
mod workload;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    error::ObserveError,
    labels::{IdentityMode, LabelConfig},
    loader::{LoadOptions, Loaded, RingConfig},
    maps::monotonic_ns,
    metrics::Metrics,
    probes::{Executable, ProbeTable, Search},
    state::AppState,
    targets::{Added, Targets},
};

/// Observe probe-enabled MCP proxies from the outside and serve Prometheus metrics: the
/// `--pid`s given, or with `agent` every proxy on this node.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-observe",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Process id of the proxy to observe (repeat for several proxies).
    #[arg(long = "pid", required = true, value_name = "PID")]
    pids: Vec<u32>,
    /// Attach, print what was found and attached, and exit (0 = every probe attached).
    #[arg(long)]
    check: bool,
    /// Attach no uprobes, only the kernel hooks: TCP and child-process metrics, for a
    /// proxy built without the probes.
    #[arg(long)]
    kernel_only: bool,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Subcommand)]
enum Command {
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
struct AgentArgs {
    /// The host's /proc (with `hostPID: true`, the pod's own /proc is the host's).
    #[arg(long, default_value = "/proc", value_name = "PATH")]
    proc: PathBuf,
    /// kubelet's container log links, whose names give namespace, pod and container.
    #[arg(long, default_value = "/var/log/containers", value_name = "DIR")]
    container_logs: PathBuf,
    /// Scan once, print the proxies found and what was attached, and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    listen: Listen,
    #[command(flatten)]
    common: Common,
}

/// Where the agent serves.
#[derive(Debug, clap::Args)]
struct Listen {
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    listen: SocketAddr,
}

/// `top`: a live table in the terminal.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["pids", "url"])))]
struct TopArgs {
    /// Attach to this proxy (repeat for several) and show what this process observes.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Show what a running agent serves instead, e.g. http://127.0.0.1:9464/metrics run in
    /// the DaemonSet's agent pod: nothing is attached twice. Plain HTTP only.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Rates, percentiles and error shares are over this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    window_secs: u64,
    /// How often the table is refreshed, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=60_000))]
    interval_ms: u64,
    #[command(flatten)]
    common: Common,
}

/// Flags of every mode that attaches.
#[derive(Clone, Debug, clap::Args)]
struct Common {
    /// Ring-buffer size in bytes (a power of two, at least 4096). The default holds 9 ms
    /// of events at a million a second, past the drain interval.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    ring_buffer_bytes: u32,
    /// How often the agent drains the ring buffer while events flow, in milliseconds
    /// (up to 16 times less often while they trickle).
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=1000))]
    drain_interval_ms: u64,
    /// Count a request in flight longer than this as status="timeout" and forget it
    /// (the proxy dropped it without ending it). Keep it above the proxy's own timeout.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    request_expiry_secs: u64,
    /// Leave `mcp_probe_request_start` unattached: requests are counted by status and
    /// labels from their ends alone, with the latency the proxy measured itself if its
    /// request_end carries one (the mcp-probes request guard does) and without the
    /// in-flight gauges (a request the proxy drops without ending it is not counted at
    /// all); each costs the proxy one uprobe hit instead of two (benchmarks/README.md).
    #[arg(long, conflicts_with = "request_expiry_secs")]
    no_request_latency: bool,
    /// Keep a workload's series this long after its last process exited: a container
    /// restarted meanwhile continues its counters; then they are removed.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    retention_secs: u64,
    #[command(flatten)]
    labels: LabelArgs,
}

impl Common {
    /// `request_start` is attached and requests are timed.
    fn request_latency(&self) -> bool {
        !self.no_request_latency
    }
}

/// Cardinality: distinct values kept per label (the rest fold into `__other__`, counted in
/// mcp_observer_label_overflow_total), the tool allowlist and what to do with identities.
#[derive(Clone, Debug, clap::Args)]
struct LabelArgs {
    /// Distinct `method` values kept (clients can send any method name).
    #[arg(long, default_value_t = 50, value_name = "N")]
    max_methods: usize,
    /// Distinct `transport` values kept.
    #[arg(long, default_value_t = 8, value_name = "N")]
    max_transports: usize,
    /// Distinct `identity` values kept.
    #[arg(long, default_value_t = 500, value_name = "N")]
    max_identities: usize,
    /// Distinct `server` values kept.
    #[arg(long, default_value_t = 100, value_name = "N")]
    max_servers: usize,
    /// Distinct `tool` values kept.
    #[arg(long, default_value_t = 500, value_name = "N")]
    max_tools: usize,
    /// Keep only these tool names (repeat, or separate with commas); others become __other__.
    #[arg(long = "allow-tool", value_delimiter = ',', value_name = "TOOL")]
    allow_tools: Vec<String>,
    /// What the `identity` label holds: the identity, nothing, or a salted SHA-256 of it.
    #[arg(long, value_enum, default_value_t = IdentityMode::Keep)]
    identity: IdentityMode,
    /// Salt for `--identity hash`, so that identities cannot be guessed from their hashes.
    #[arg(long, env = "MCP_OBSERVE_IDENTITY_SALT", default_value = "", hide_env_values = true)]
    identity_salt: String,
}

impl LabelArgs {
    fn config(&self) -> LabelConfig {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The live table owns the terminal: log nothing unless asked to (RUST_LOG).
    let default_log = if matches!(cli.command, Some(Command::Top(_))) { "off" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_log)).init();
    let result = match &cli.command {
        Some(Command::Agent(agent)) if !agent.proc.join("1/stat").is_file() => {
            Err(ObserveError::NotProc { path: agent.proc.clone() })
        }
        Some(Command::Agent(agent)) => {
            tree::set_proc_root(agent.proc.clone());
            let sources = workload::Sources {
                proc_root: agent.proc.clone(),
                container_logs: agent.container_logs.clone(),
                ..workload::Sources::default()
            };
            let mode = Mode { pids: None, kernel_only: false, sources };
            if agent.check {
                check(&agent.common, &mode)
            } else {
                serve(&agent.common, mode, agent.listen.listen, None)
            }
        }
        Some(Command::Top(top)) => self::top(top),
        None => {
            let mode = Mode {
                pids: Some(unique_pids(&cli.pids)),
                kernel_only: cli.kernel_only,
                sources: Default::default(),
            };
            if cli.check {
                check(&cli.common, &mode)
            } else {
                serve(&cli.common, mode, cli.listen.listen, None)
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-observe: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Which processes are observed.
struct Mode {
    /// The `--pid`s; None: every proxy on the node.
    pids: Option<Vec<u32>>,
    kernel_only: bool,
    sources: workload::Sources,
}

/// The pids in the order given, each once: attaching twice would count every request twice.
fn unique_pids(pids: &[u32]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    pids.iter().copied().filter(|pid| seen.insert(*pid)).collect()
}

/// Everything attached, ready to serve.
struct Started {
    targets: Targets,
    state: Arc<AppState>,
    ring: ring::Ring,
    /// How each kernel hook attached, or why it did not.
    plan: hooks::Plan,
    /// Each `--pid` and what adding it found (empty in the node-wide mode).
    added: Vec<(u32, Added)>,
}

/// Checks the `--pid`s' probes and the privileges, loads the programs, attaches the
/// kernel hooks, and adds the targets: the `--pid`s, or every proxy /proc shows.
fn start(common: &Common, mode: &Mode) -> Result<Started, ObserveError> {
    let ring = RingConfig { bytes: common.ring_buffer_bytes }.validate()?;
    // Each --pid's executable, opened once, and its probes.
    let executables = match &mode.pids {
        Some(pids) => pids
            .iter()
            .map(|&pid| {
                let added_ns = monotonic_ns();
                let executable = Executable::of(pid)?;
                let table = match mode.kernel_only {
                    false => Some(Arc::new(executable.table(pid, Search::Thorough)?)),
                    true => None,
                };
                Ok((pid, executable, table, added_ns))
            })
            .collect::<Result<Vec<_>, ObserveError>>()?,
        None => Vec::new(),
    };
    if !mode.kernel_only {
        kernel::require_uprobes()?;
    }
    kernel::require_capabilities(mode.kernel_only, mode.pids.is_none())?;
    kernel::require_attach_cookies()?;
    let tracefs = tracefs::ensure()?;
    let plan = hooks::Plan::probe(&tracefs::formats(&tracefs))?;
    let request_latency = common.request_latency();
    let options = LoadOptions { discover: mode.pids.is_none(), request_latency };
    let mut loaded = Loaded::load(ring, &plan, options)?;
    loaded.attach_hooks(&plan)?;
    for line in plan.gap_lines() {
        log::warn!("Linux {}: {line}", kernel::release());
    }
    let metrics = Arc::new(Metrics::new(common.labels.config(), request_latency));
    metrics.observer.hooks_available(&plan);
    let state = Arc::new(AppState {
        metrics,
        kernel: Mutex::new(loaded.take_maps(Duration::from_secs(common.request_expiry_secs))?),
        ready: false.into(),
    });
    let ring = loaded.take_ring(common.ring_buffer_bytes)?;
    let retention = Duration::from_secs(common.retention_secs);
    let mut targets = Targets::new(loaded, state.clone(), mode.sources.clone(), retention, mode.pids.clone());
    let mut added = Vec::new();
    // Parents before their children: a child then belongs to its parent's tree, and is refused.
    let order = tree::parents_first(executables.iter().map(|(pid, ..)| *pid).collect());
    let mut executables = executables;
    executables.sort_by_key(|(pid, ..)| order.iter().position(|p| p == pid));
    for (pid, executable, table, added_ns) in executables {
        match targets.add(pid, &executable, table, added_ns)? {
            Some(found) => added.push((pid, found)),
            None => {
                let root = state.kernel.lock().expect("kernel maps lock").root_of(pid).unwrap_or(pid);
                return Err(ObserveError::InTree { pid, root });
            }
        }
    }
    if mode.pids.is_none() {
        targets.scan();
    }
    state.ready.store(true, Ordering::Relaxed);
    Ok(Started { targets, state, ring, plan, added })
}

fn check(common: &Common, mode: &Mode) -> Result<(), ObserveError> {
    let Started { targets, state, plan, added, .. } = start(common, mode)?;
    let features = kernel::features();
    println!(
        "kernel {}: uprobes {}, attach cookies yes, tracefs {}, kprobes {}, perf_event_paranoid {}",
        features.release,
        yes_no(features.uprobes),
        features.tracefs.as_deref().map_or("absent".to_string(), |p| format!("at {}", p.display())),
        yes_no(features.kprobes),
        features.perf_event_paranoid.map_or("unknown".to_string(), |p| p.to_string()),
    );
    print_hooks(&plan);
    for (pid, found) in &added {
        match &found.table {
            Some(table) => print_probes(*pid, table, &found.attached, common.request_latency()),
            None => print_kernel_only(*pid),
        }
        let snapshot = &found.snapshot;
        let children: Vec<String> =
            snapshot.children.iter().map(|(p, name)| format!("{name} ({p})")).collect();
        let mut ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
        ports.dedup();
        println!(
            "  labelled {}; tracking its tree: {} descendant(s), children [{}], listening on TCP ports {ports:?}",
            found.labels,
            snapshot.descendants.len(),
            children.join(", "),
        );
    }
    if mode.pids.is_none() {
        for line in targets.describe() {
            println!("{line}");
        }
    }
    let observer = &state.metrics.observer;
    println!(
        "ok: {} probes on {} executable(s) and {} kernel hooks attached for {} process(es); ring buffer {} bytes, submit without wakeup, drain every {}–{} ms",
        observer.probes_attached.get(),
        observer.binaries_attached.get(),
        plan.attached().count(),
        observer.targets.get(),
        common.ring_buffer_bytes,
        common.drain_interval_ms,
        common.drain_interval_ms * u64::from(events::SLOWEST)
    );
    targets.shutdown();
    Ok(())
}
/// How each kernel hook attached, and what this kernel cannot tell.
fn print_hooks(plan: &hooks::Plan) {
    let attached: Vec<String> = plan.attached().map(|hook| hook.tracepoint()).collect();
    println!("kernel hooks: {} attached ({})", attached.len(), attached.join(", "));
    for line in plan.gap_lines() {
        println!("  {line}");
    }
    if hooks::timeouts_supported(&plan.layout) {
        println!(
            "  TCP timeouts told apart: keepalive (reset reason {}), retransmission (ETIMEDOUT after close)",
            plan.layout.keepalive_timeout_reason
        );
    }
}

fn print_probes(pid: u32, table: &ProbeTable, attached: &[&str], request_latency: bool) {
    println!(
        "pid {pid}: {} (probe ABI v{}, from the {})",
        table.path.display(),
        table.abi_version,
        table.source
    );
    for (probe, _) in probes::CATALOGUE.iter().filter(|(probe, _)| table.site(probe).is_none()) {
        println!("  mcp_probe_{probe:<22} absent from this binary: its metrics stay empty");
    }
    for site in &table.sites {
        let state = if attached.contains(&site.name.as_str()) {
            "attached"
        } else if !probes::attached_when(&site.name, request_latency) {
            "not attached (--no-request-latency)"
        } else {
            "not in this observer's catalogue, ignored"
        };
        println!(
            "  mcp_probe_{:<22} address {:#x}  file offset {:#x}  {state}",
            site.name, site.address, site.file_offset
        );
    }
}

fn print_kernel_only(pid: u32) {
    let found = match probes::for_pid(pid) {
        Ok(table) => format!("it has {} probes, not attached", table.sites.len()),
        Err(ObserveError::NoProbes { .. }) => "it has no MCP probes".to_string(),
        Err(error) => format!("its probes were not read: {error}"),
    };
    println!(
        "pid {pid}: {} in kernel-only mode ({found}): TCP and child-process metrics only, no request metrics",
        tree::executable_name(pid)
    );
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// `top --url`, or `top --pid`: the agent on a loopback port of its own, on a thread, and
/// the table reading it; quitting the table stops the agent, which detaches.
fn top(args: &TopArgs) -> Result<(), ObserveError> {
    let window = Duration::from_secs(args.window_secs);
    let interval = Duration::from_millis(args.interval_ms);
    if let Some(url) = &args.url {
        return top::run(url, window, interval, || false);
    }
    let mode = Mode { pids: Some(unique_pids(&args.pids)), kernel_only: false, sources: Default::default() };
    let (announce, announced) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let common = args.common.clone();
    let embedded = Embedded { announce, stop: stopped };
    let agent = std::thread::spawn(move || {
        serve(&common, mode, SocketAddr::from(([127, 0, 0, 1], 0)), Some(embedded))
    });
    // Nothing announced: the agent could not start, and says why.
    let Ok(addr) = announced.recv() else {
        return agent.join().expect("agent thread");
    };
    let url = format!("http://{addr}/metrics");
    let shown = top::run(&url, window, interval, || agent.is_finished());
    let _ = stop.send(());
    let detached = agent.join().expect("agent thread");
    shown.and(detached)
}

/// An agent run by another part of this process (`top`): it is told where the agent
/// serves, and stops it.
struct Embedded {
    announce: std::sync::mpsc::Sender<SocketAddr>,
    stop: tokio::sync::oneshot::Receiver<()>,
}

/// Runs the agent until SIGTERM or Ctrl-C, or until `embedded`'s owner stops it.
fn serve(
    common: &Common,
    mode: Mode,
    listen: SocketAddr,
    embedded: Option<Embedded>,
) -> Result<(), ObserveError> {
    // One thread for the reader, its timer and HTTP: a wakeup costs tens of microseconds of
    // context switches on a VM, and a timer on another thread would wake two per drain.
    // Blocking work (the targets, the kernel maps at a scrape) has threads of its own.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        let Started { targets, state, ring, plan, .. } = start(common, &mode)?;
        log::info!("attached {} kernel hooks (TCP connections and child processes)", plan.attached().count());
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ObserveError::Listen { addr: listen, source })?;
        let bound = listener.local_addr().map_err(|source| ObserveError::Listen { addr: listen, source })?;
        log::info!("serving /metrics on http://{bound}");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let (announce, stop) = embedded.map(|e| (e.announce, e.stop)).unzip();
        if let Some(announce) = announce {
            let _ = announce.send(bound);
        }
        let stopped_by_owner = async {
            match stop {
                Some(stop) => drop(stop.await),
                None => std::future::pending().await,
            }
        };

        // The targets live on a thread of their own: adding one reads /proc and ELF files.
        let (lifecycle, events) = std::sync::mpsc::sync_channel(LIFECYCLE_QUEUE);
        let mut manager = tokio::task::spawn_blocking(move || targets::run(targets, events));
        let mut manager_done = false;
        let drain = events::drain_forever(
            ring,
            common.ring_buffer_bytes,
            state.metrics.clone(),
            lifecycle.clone(),
            Duration::from_millis(common.drain_interval_ms),
        );
        let server = axum::serve(listener, http::router(state)).into_future();
        // Only a signal ends the agent cleanly; any part stopping on its own is a failure.
        let stopped = tokio::select! {
            result = drain => Some(format!("the ring-buffer reader stopped: {result:?}")),
            result = server => Some(format!("the HTTP server stopped: {result:?}")),
            result = &mut manager => {
                manager_done = true;
                Some(format!("the targets thread stopped: {result:?}"))
            }
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
            _ = stopped_by_owner => None,
        };
        log::info!("detaching");
        // The targets thread detaches every uprobe and unloads the programs as it ends.
        let _ = lifecycle.send(None);
        if !manager_done {
            let _ = manager.await;
        }
        match stopped {
            Some(what) => Err(ObserveError::Stopped { what }),
            None => Ok(()),
        }
    })
}

/// Process execs and target exits waiting for the targets thread, at most.
const LIFECYCLE_QUEUE: usize = 65_536;
