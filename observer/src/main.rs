//! `mcp-observe`: Prometheus metrics for an MCP proxy, from eBPF uprobes on the probe
//! functions it calls and from tracepoints on its TCP connections and child processes.
//! The proxy carries no exporter code.

mod error;
mod events;
mod http;
mod kernel;
mod labels;
mod loader;
mod maps;
mod metrics;
mod probes;
mod spans;
mod tracefs;
mod tree;

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    error::ObserveError,
    http::AppState,
    labels::{IdentityMode, LabelConfig},
    loader::{Attached, Loaded, RingConfig},
    metrics::Metrics,
    probes::ProbeTable,
    tree::Snapshot,
};

/// Observe a probe-enabled MCP proxy from the outside and serve Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "mcp-observe", version)]
struct Cli {
    /// Process id of the proxy to observe (repeat for several proxies).
    #[arg(long = "pid", required = true, value_name = "PID")]
    pids: Vec<u32>,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    listen: SocketAddr,
    /// Attach, print what was found and attached, and exit (0 = every probe attached).
    #[arg(long)]
    check: bool,
    /// Attach no uprobes, only the kernel hooks: TCP and child-process metrics, for a
    /// proxy built without the probes.
    #[arg(long)]
    kernel_only: bool,
    /// Ring-buffer size in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 256 * 1024, value_name = "BYTES")]
    ring_buffer_bytes: u32,
    /// How often the agent drains the ring buffer, in milliseconds.
    #[arg(long, default_value_t = 5, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=1000))]
    drain_interval_ms: u64,
    /// Count a request in flight longer than this as status="timeout" and forget it
    /// (the proxy dropped it without ending it). Keep it above the proxy's own timeout.
    #[arg(long, default_value_t = 300, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    request_expiry_secs: u64,
    #[command(flatten)]
    labels: LabelArgs,
}

/// Cardinality: distinct values kept per label (the rest fold into `__other__`, counted in
/// mcp_observer_label_overflow_total), the tool allowlist and what to do with identities.
#[derive(Debug, clap::Args)]
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = if cli.check { check(&cli) } else { serve(&cli) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-observe: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The pids in the order given, each once: attaching twice would count every request twice.
fn unique_pids(pids: &[u32]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    pids.iter().copied().filter(|pid| seen.insert(*pid)).collect()
}

/// The loaded programs and what they were attached to.
struct Attachment {
    loaded: Loaded,
    /// Each target, with its probe table unless `--kernel-only`.
    targets: Vec<(u32, Option<ProbeTable>)>,
    attached: Vec<Attached>,
    hooks: Vec<&'static tracefs::Hook>,
    /// What each target's tree already held when it was tracked.
    snapshots: Vec<(u32, Snapshot)>,
    layout: observer_common::Layout,
}

/// Finds the probes of every target, attaches the kernel hooks, tracks the targets and
/// attaches their probes.
fn attach_all(cli: &Cli) -> Result<Attachment, ObserveError> {
    let ring = RingConfig { bytes: cli.ring_buffer_bytes }.validate()?;
    let targets = unique_pids(&cli.pids)
        .into_iter()
        .map(|pid| match cli.kernel_only {
            false => probes::for_pid(pid).map(|table| (pid, Some(table))),
            true if tree::is_alive(pid) => Ok((pid, None)),
            true => Err(ObserveError::NoSuchProcess { pid }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    kernel::require_capabilities()?;
    if !cli.kernel_only {
        kernel::require_uprobes()?;
    }
    let tracefs = tracefs::ensure()?;
    let layout = tracefs::layout(&tracefs)?;
    let mut loaded = Loaded::load(ring, &layout)?;
    let hooks = loaded.attach_hooks(&tracefs)?;
    let (mut attached, mut snapshots) = (Vec::new(), Vec::new());
    for (pid, table) in &targets {
        snapshots.push((*pid, loaded.track(*pid)?));
        if let Some(table) = table {
            attached.extend(loaded.attach(*pid, table)?);
        }
    }
    Ok(Attachment { loaded, targets, attached, hooks, snapshots, layout })
}

fn check(cli: &Cli) -> Result<(), ObserveError> {
    let Attachment { loaded: _loaded, targets, attached, hooks, snapshots, layout } = attach_all(cli)?;
    let features = kernel::features();
    println!(
        "kernel {}: uprobes {}, tracefs {}, kprobes {} (not used: the kernel hooks are tracepoints)",
        features.release,
        yes_no(features.uprobes),
        features.tracefs.as_deref().map_or("absent".to_string(), |p| format!("at {}", p.display())),
        yes_no(features.kprobes),
    );
    print_hooks(&hooks, &layout);
    for (pid, table) in &targets {
        match table {
            Some(table) => print_probes(*pid, table, &attached),
            None => print_kernel_only(*pid),
        }
        if let Some((_, snapshot)) = snapshots.iter().find(|(p, _)| p == pid) {
            let children: Vec<String> =
                snapshot.children.iter().map(|(p, name)| format!("{name} ({p})")).collect();
            let mut ports: Vec<u16> = snapshot.listeners.iter().map(|l| l.port).collect();
            ports.dedup();
            println!(
                "  tracking its tree: {} descendant(s), children [{}], listening on TCP ports {ports:?}",
                snapshot.descendants.len(),
                children.join(", "),
            );
        }
    }
    println!(
        "ok: {} probes and {} kernel hooks attached for {} process(es); ring buffer {} bytes, submit without wakeup, drain every {} ms",
        attached.len(),
        hooks.len(),
        targets.len(),
        cli.ring_buffer_bytes,
        cli.drain_interval_ms
    );
    Ok(())
}

/// The kernel hooks attached, and what this kernel's tracepoints cannot tell.
fn print_hooks(hooks: &[&'static tracefs::Hook], layout: &observer_common::Layout) {
    let names: Vec<String> = hooks.iter().map(|h| format!("{}:{}", h.category, h.name)).collect();
    println!("kernel hooks: {} tracepoints attached ({})", hooks.len(), names.join(", "));
    for hook in tracefs::HOOKS.iter().filter(|h| !hooks.iter().any(|a| std::ptr::eq(*a, *h))) {
        let lost = hook.without.unwrap_or_default();
        println!("  {}:{} absent from this kernel: no {lost}", hook.category, hook.name);
    }
    if layout.process_exit_group_dead == observer_common::ABSENT {
        println!(
            "  sched_process_exit has no group_dead (Linux 6.16 added it): a child ends with its leader thread"
        );
    }
    if tracefs::timeouts_supported(layout) {
        println!(
            "  TCP timeouts told apart: keepalive (reset reason {}), retransmission (ETIMEDOUT after close)",
            layout.keepalive_timeout_reason
        );
    } else {
        println!(
            "  TCP timeouts not counted: this kernel lacks reset reasons or inet_sk_error_report (Linux 6.10 has both)"
        );
    }
}

fn print_probes(pid: u32, table: &ProbeTable, attached: &[Attached]) {
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
        let state = if attached.iter().any(|a| a.pid == pid && a.probe == site.name) {
            "attached"
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

fn serve(cli: &Cli) -> Result<(), ObserveError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let Attachment { mut loaded, targets, attached, hooks, snapshots, layout: _ } = attach_all(cli)?;
        for a in &attached {
            log::info!(
                "attached mcp_probe_{} in {} (pid {}) at file offset {:#x}",
                a.probe,
                a.path.display(),
                a.pid,
                a.file_offset
            );
        }
        log::info!("attached {} kernel hooks (TCP connections and child processes)", hooks.len());
        let metrics = Arc::new(Metrics::new(cli.labels.config()));
        metrics.observer.probes_attached.set(attached.len() as i64);
        metrics.observer.hooks_attached.set(hooks.len() as i64);
        for a in attached.iter().filter(|a| a.probe == "child_spawn") {
            metrics.children.expect_names(a.pid);
        }
        for (pid, snapshot) in &snapshots {
            for (child, executable) in &snapshot.children {
                metrics.existing_child(*pid, *child, executable);
            }
        }
        let state = Arc::new(AppState {
            metrics: metrics.clone(),
            kernel: Mutex::new(loaded.take_maps(Duration::from_secs(cli.request_expiry_secs))?),
            ready: true.into(),
        });
        let listener = tokio::net::TcpListener::bind(cli.listen)
            .await
            .map_err(|source| ObserveError::Listen { addr: cli.listen, source })?;
        let bound =
            listener.local_addr().map_err(|source| ObserveError::Listen { addr: cli.listen, source })?;
        log::info!("serving /metrics on http://{bound}");

        let ring = loaded.take_ring()?;
        let drain =
            events::drain_forever(ring, metrics.clone(), Duration::from_millis(cli.drain_interval_ms));
        let server = axum::serve(listener, http::router(state.clone())).into_future();
        let pids: Vec<u32> = targets.iter().map(|(pid, _)| *pid).collect();
        let watch = watch_targets(&pids, &attached, state);
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            result = drain => log::error!("ring-buffer reader stopped: {result:?}"),
            result = server => log::error!("HTTP server stopped: {result:?}"),
            () = watch => {}
            _ = tokio::signal::ctrl_c() => log::info!("interrupted, detaching"),
            _ = term.recv() => log::info!("terminated, detaching"),
        }
        // Dropping `loaded` detaches every uprobe and unloads the programs.
        drop(loaded);
        Ok(())
    })
}

/// Every second: expires stale requests (even when nobody scrapes), and keeps
/// `mcp_observer_targets`, the attached-probe count, readiness and what the targets held
/// open true to their lives.
async fn watch_targets(pids: &[u32], attached: &[Attached], state: Arc<AppState>) {
    let mut targets: Vec<(u32, usize)> =
        pids.iter().map(|pid| (*pid, attached.iter().filter(|a| a.pid == *pid).count())).collect();
    let mut exited = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        // Processes seen gone a tick ago: the reader has drained their last events (their
        // shutdown disconnects and session closes) by now.
        state.refresh(std::mem::take(&mut exited)).await;
        targets.retain(|(pid, _)| {
            let alive = tree::is_alive(*pid);
            if !alive {
                log::warn!("target process {pid} exited; metrics stay served");
                state.ready.store(false, Ordering::Relaxed);
                exited.push(*pid);
            }
            alive
        });
        let observer = &state.metrics.observer;
        observer.targets.set(targets.len() as i64);
        // A dead process's uprobes no longer fire.
        observer.probes_attached.set(targets.iter().map(|(_, count)| *count).sum::<usize>() as i64);
    }
}
