//! Start-up: the checks, the programs loaded and the kernel hooks attached, the targets
//! added; then the agent served until a signal (or `top`'s table) stops it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Common, TopArgs},
    error::ObserveError,
    events, hooks, http, kernel,
    loader::{LoadOptions, Loaded, RingConfig},
    maps::monotonic_ns,
    metrics::Metrics,
    probes::{Executable, Search},
    ring,
    state::AppState,
    targets::{self, Added, Targets},
    top, tracefs, tree, workload,
};

/// Which processes are observed.
pub struct Mode {
    /// The `--pid`s; None: every proxy on the node.
    pub pids: Option<Vec<u32>>,
    pub kernel_only: bool,
    pub sources: workload::Sources,
}

/// The pids in the order given, each once: attaching twice would count every request twice.
pub fn unique_pids(pids: &[u32]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::new();
    pids.iter().copied().filter(|pid| seen.insert(*pid)).collect()
}

/// Everything attached, ready to serve.
pub struct Started {
    pub targets: Targets,
    pub state: Arc<AppState>,
    pub ring: ring::Ring,
    /// How each kernel hook attached, or why it did not.
    pub plan: hooks::Plan,
    /// Each `--pid` and what adding it found (empty in the node-wide mode).
    pub added: Vec<(u32, Added)>,
}

/// Checks the `--pid`s' probes and the privileges, loads the programs, attaches the
/// kernel hooks, and adds the targets: the `--pid`s, or every proxy /proc shows.
pub fn start(common: &Common, mode: &Mode) -> Result<Started, ObserveError> {
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

/// `top --url`, or `top --pid`: the agent on a loopback port of its own, on a thread, and
/// the table reading it; quitting the table stops the agent, which detaches.
pub fn top(args: &TopArgs) -> Result<(), ObserveError> {
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
pub struct Embedded {
    announce: std::sync::mpsc::Sender<SocketAddr>,
    stop: tokio::sync::oneshot::Receiver<()>,
}

/// Runs the agent until SIGTERM or Ctrl-C, or until `embedded`'s owner stops it.
pub fn serve(
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
