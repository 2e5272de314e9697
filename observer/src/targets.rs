//! The observed processes (targets): the `--pid`s given, or in the node-wide agent every
//! process whose executable has MCP probes, found at start in /proc and then as the kernel
//! reports each exec. Each executable file gets its uprobes once, shared by every process
//! that runs it, and loses them with its last target; the eBPF programs count targets
//! only, each through its own executable's uprobes. A process is known by pid and start
//! time, so a reused pid is a new process.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    backing::Backing,
    error::ObserveError,
    events::Lifecycle,
    loader::{Loaded, ProbeLink},
    maps::monotonic_ns,
    probes::{Executable, ProbeTable, Search},
    state::AppState,
    tree::{self, Snapshot},
    workload::{self, WorkloadLabels},
};

/// Probe tables remembered per executable version, at most; then forgotten all at once.
const TABLES_REMEMBERED: usize = 4096;

/// How often the node-wide agent scans /proc again, for execs it may have missed (the
/// ring buffer was full).
const RESCAN_EVERY: Duration = Duration::from_secs(30);

/// How long a gone target's state is kept: what its exit closes (its sockets, its
/// children's stdin) is reported after the exit itself.
const FORGET_AFTER: Duration = Duration::from_secs(1);

/// An executable file as `stat` names it (through an overlay mount: the mount's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { dev: meta.dev(), ino: meta.ino() }
    }
}

/// One version of an executable file's content: an inode may be reused, or a file
/// rewritten, once nothing runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileVersion {
    key: FileKey,
    size: u64,
    mtime_ns: i128,
}

impl FileVersion {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self { key: FileKey::of(meta), size: meta.size(), mtime_ns: crate::backing::mtime_ns(meta) }
    }
}

/// An executable file with attached uprobes.
struct Binary {
    /// The uprobes' cookie: the targets running this file count their hits.
    id: u32,
    path: PathBuf,
    links: Vec<ProbeLink>,
    processes: usize,
}

struct Target {
    start_time: u64,
    /// When the agent began adding it (CLOCK_MONOTONIC ns): an exit reported before is
    /// an earlier process's (the pid was reused).
    added_ns: u64,
    /// What it runs, as `stat` names it: an exec that changes it replaces the program.
    runs: FileKey,
    /// The file with its uprobes, unless in kernel-only mode.
    binary: Option<Backing>,
    labels: WorkloadLabels,
}

/// What adding a target found, for `--check`.
pub struct Added {
    pub table: Option<Arc<ProbeTable>>,
    pub labels: WorkloadLabels,
    pub snapshot: Snapshot,
    /// The probes attached to its executable (by this target or an earlier one).
    pub attached: Vec<&'static str>,
}

pub struct Targets {
    loaded: Loaded,
    state: Arc<AppState>,
    sources: workload::Sources,
    /// Series of a workload with no process left are removed after this.
    retention: Duration,
    binaries: HashMap<Backing, Binary>,
    next_binary_id: u32,
    /// Uprobes being detached, each set on a thread of its own.
    detaching: Vec<JoinHandle<()>>,
    processes: HashMap<u32, Target>,
    /// Whether each executable version seen has probes (node-wide discovery).
    tables: HashMap<FileVersion, Option<Arc<ProbeTable>>>,
    /// Targets seen gone, and since when: forgotten once their last events are read.
    exited: Vec<(u32, Instant)>,
    /// Pids to look at again once the gone targets are forgotten: a target that replaced
    /// its program, a new process that reused a gone target's pid.
    retry: Vec<u32>,
    /// The `--pid`s given: their exit makes the agent unready. None: discovery.
    fixed: Option<Vec<u32>>,
    last_scan: Instant,
}

impl Targets {
    pub fn new(
        loaded: Loaded,
        state: Arc<AppState>,
        sources: workload::Sources,
        retention: Duration,
        fixed: Option<Vec<u32>>,
    ) -> Self {
        Self {
            loaded,
            state,
            sources,
            retention,
            binaries: HashMap::new(),
            next_binary_id: 1,
            detaching: Vec::new(),
            processes: HashMap::new(),
            tables: HashMap::new(),
            exited: Vec::new(),
            retry: Vec::new(),
            fixed,
            last_scan: Instant::now(),
        }
    }

    /// Adds process `pid`, which runs `executable`, as a target: attaches the probes of
    /// `table` (None in kernel-only mode) unless another target running the file did,
    /// labels its workload, registers its tree in the kernel. Ok(None): it is a target
    /// already, or part of a target's tree.
    pub fn add(
        &mut self,
        pid: u32,
        executable: &Executable,
        table: Option<Arc<ProbeTable>>,
        added_ns: u64,
    ) -> Result<Option<Added>, ObserveError> {
        // The process the executable was opened for, still.
        let start_time = executable.start_time;
        if tree::start_time(pid) != Some(start_time) {
            return Err(ObserveError::NoSuchProcess { pid });
        }
        match self.processes.get(&pid) {
            Some(known) if known.start_time == start_time => return Ok(None),
            // The pid was reused before its exit was heard: the old process goes first.
            Some(_) => {
                self.gone(pid);
                self.retry.push(pid);
                return Ok(None);
            }
            None => {}
        }
        if self.exited.iter().any(|(gone, _)| *gone == pid) {
            self.retry.push(pid);
            return Ok(None);
        }
        if self.kernel().root_of(pid).is_some_and(|root| root != pid) {
            return Ok(None);
        }
        let binary = match &table {
            Some(table) => Some(self.attach(pid, Backing::of(pid, executable), executable, table)?),
            None => None,
        };
        let labels = workload::resolve(&self.sources, pid, &executable.path);
        let names_children = table.as_ref().is_some_and(|t| t.site("child_spawn").is_some());
        self.state.metrics.add_target(pid, &labels, names_children);
        let id = binary.as_ref().map_or(0, |key| self.binaries[key].id);
        let tracked = self.kernel().track(pid, id);
        let snapshot = match tracked {
            Ok(snapshot) => snapshot,
            Err(error) => {
                // Whatever the kernel already had of it goes, or it would count untracked.
                self.state.refresh(&[pid]);
                if let Some(key) = binary {
                    self.release(key);
                }
                return Err(error);
            }
        };
        for (child, executable) in &snapshot.children {
            self.state.metrics.existing_child(pid, *child, executable);
        }
        log::info!("observing pid {pid} ({}) as {labels}", executable.path.display());
        let attached = binary
            .as_ref()
            .and_then(|key| self.binaries.get(key))
            .map(|b| b.links.iter().map(|l| l.probe).collect())
            .unwrap_or_default();
        let runs = FileKey::of(&executable.meta);
        self.processes.insert(pid, Target { start_time, added_ns, runs, binary, labels: labels.clone() });
        self.update_gauges();
        Ok(Some(Added { table, labels, snapshot, attached }))
    }

    fn kernel(&self) -> std::sync::MutexGuard<'_, crate::maps::KernelMaps> {
        self.state.kernel.lock().expect("kernel maps lock")
    }

    /// The executable `key` with its uprobes attached: by this call, or already.
    fn attach(
        &mut self,
        pid: u32,
        key: Backing,
        executable: &Executable,
        table: &ProbeTable,
    ) -> Result<Backing, ObserveError> {
        if let Some(binary) = self.binaries.get_mut(&key) {
            binary.processes += 1;
            return Ok(key);
        }
        let id = self.next_binary_id;
        let links = self.loaded.attach_binary(pid, executable, table, id)?;
        // 0 is "no uprobes".
        self.next_binary_id = self.next_binary_id.checked_add(1).unwrap_or(1);
        log::info!("attached {} probes to {}", links.len(), table.path.display());
        self.binaries.insert(key.clone(), Binary { id, path: table.path.clone(), links, processes: 1 });
        Ok(key)
    }

    /// One process fewer runs the executable `key`; the last one takes its uprobes. They
    /// detach on a thread of their own: each waits for the kernel (an RCU grace period,
    /// about 0.1 s here), and new proxies must not wait behind them. Uprobes placed on the
    /// file again meanwhile have another cookie: no hit counts twice.
    fn release(&mut self, key: Backing) {
        let Some(binary) = self.binaries.get_mut(&key) else { return };
        binary.processes -= 1;
        if binary.processes == 0 {
            let binary = self.binaries.remove(&key).expect("present above");
            log::info!("detaching the probes of {}: no target runs it any more", binary.path.display());
            self.detaching.push(std::thread::spawn(move || drop(binary.links)));
        }
    }

    /// The probe table of `executable`, if it has probes (node-wide discovery: a process
    /// without them is simply not a proxy). Read once per executable version; a process
    /// that vanished while it was read decides nothing.
    fn discovered_table(&mut self, pid: u32, executable: &Executable) -> Option<Arc<ProbeTable>> {
        let version = FileVersion::of(&executable.meta);
        if let Some(table) = self.tables.get(&version) {
            return table.clone();
        }
        let table = match executable.table(pid, Search::NoteOnly) {
            Ok(table) => Some(Arc::new(table)),
            Err(ObserveError::NoProbes { .. }) => None,
            Err(error) => {
                log::warn!("not observed: {error}");
                None
            }
        };
        if self.tables.len() >= TABLES_REMEMBERED {
            self.tables.clear();
        }
        self.tables.insert(version, table.clone());
        table
    }

    /// Adds `pid` if it runs an executable with probes (node-wide discovery).
    fn discover(&mut self, pid: u32) {
        if pid == std::process::id() {
            return;
        }
        let added_ns = monotonic_ns();
        // Kernel threads and processes gone meanwhile have no executable to open.
        let Ok(executable) = Executable::of(pid) else { return };
        let Some(table) = self.discovered_table(pid, &executable) else { return };
        match self.add(pid, &executable, Some(table), added_ns) {
            Ok(_) => {}
            Err(ObserveError::NoSuchProcess { .. }) => {}
            Err(error) => log::warn!("pid {pid} not observed: {error}"),
        }
    }

    /// Scans /proc for processes with probes (node-wide discovery), parents before their
    /// children: a child then belongs to its parent's tree.
    pub fn scan(&mut self) {
        self.last_scan = Instant::now();
        for pid in tree::parents_first(tree::pids()) {
            self.discover(pid);
        }
        self.update_gauges();
    }

    pub fn on(&mut self, event: Lifecycle) {
        match event {
            Lifecycle::Exec { pid, .. } if self.fixed.is_none() => match self.processes.get(&pid) {
                // The exec that made it what it runs now (/proc shows the new program a
                // little before the exec is reported), or a target replacing its program:
                // then it is observed again as what it runs now.
                Some(target) => {
                    let runs = std::fs::metadata(tree::proc_path(pid).join("exe"))
                        .ok()
                        .map(|meta| FileKey::of(&meta));
                    if runs != Some(target.runs) {
                        self.gone(pid);
                        self.retry.push(pid);
                    }
                }
                None => self.discover(pid),
            },
            Lifecycle::Exec { .. } => {}
            Lifecycle::Exit { pid, ns } => {
                // An exit reported before the agent added it is an earlier process's.
                if self.processes.get(&pid).is_some_and(|t| ns >= t.added_ns) {
                    self.gone(pid);
                }
            }
        }
    }

    /// Target `pid` exited (or replaced its program): forgotten once its last events
    /// are read.
    fn gone(&mut self, pid: u32) {
        let Some(target) = self.processes.remove(&pid) else { return };
        log::info!("pid {pid} ({}) is gone", target.labels);
        if let Some(key) = target.binary {
            self.release(key);
        }
        self.exited.push((pid, Instant::now()));
        if self.fixed.as_ref().is_some_and(|pids| pids.contains(&pid)) {
            self.state.ready.store(false, Ordering::Relaxed);
        }
        self.update_gauges();
    }

    /// Every second: forgets the targets gone for [`FORGET_AFTER`] and lets the others
    /// take over the ports they shared, checks the others are alive, refreshes the
    /// kernel maps (expiring stale requests even when nobody scrapes), retires workloads
    /// idle past the retention, and in discovery mode rescans /proc now and then.
    pub fn tick(&mut self) {
        let (forget, keep): (Vec<_>, Vec<_>) =
            self.exited.iter().partition(|(_, since)| since.elapsed() >= FORGET_AFTER);
        self.exited = keep;
        let forget: Vec<u32> = forget.into_iter().map(|(pid, _)| pid).collect();
        self.state.refresh(&forget);
        // Ports shared with a gone target: registered again as soon as its listener closed
        // (it closes after the exit is reported), and after the forget.
        if !forget.is_empty() || !self.exited.is_empty() {
            self.listen_again();
        }
        let dead: Vec<(u32, bool)> = self
            .processes
            .iter()
            .filter_map(|(&pid, t)| match tree::start_time(pid) {
                Some(started) if started != t.start_time => Some((pid, true)),
                _ if !tree::is_alive(pid) => Some((pid, false)),
                _ => None,
            })
            .collect();
        for (pid, reused) in dead {
            self.gone(pid);
            // Its pid already names a new process.
            if reused {
                self.retry.push(pid);
            }
        }
        self.state.metrics.retire(self.retention);
        self.detaching.retain(|detaching| !detaching.is_finished());
        for pid in std::mem::take(&mut self.retry) {
            self.discover(pid);
        }
        if self.fixed.is_none() && self.last_scan.elapsed() >= RESCAN_EVERY {
            self.scan();
        }
        self.update_gauges();
    }

    /// Gone targets' listening ports are free (their listeners closed, or the forget
    /// removed them): a target listening on one of them in another network namespace
    /// takes it over. /proc is read once, before the kernel maps are locked.
    fn listen_again(&self) {
        let roots: Vec<u32> = self.processes.keys().copied().collect();
        let listening: Vec<(u32, Vec<tree::Listening>)> =
            tree::snapshots(&roots).into_iter().map(|(pid, snapshot)| (pid, snapshot.listeners)).collect();
        let mut kernel = self.kernel();
        for (pid, listeners) in listening {
            if let Err(error) = kernel.add_listeners(pid, &listeners) {
                log::warn!("pid {pid}: listening ports not registered again: {error}");
            }
        }
    }

    /// One line per target, for `agent --check`.
    pub fn describe(&self) -> Vec<String> {
        let mut pids: Vec<&u32> = self.processes.keys().collect();
        pids.sort_unstable();
        pids.into_iter()
            .map(|pid| {
                let target = &self.processes[pid];
                let binary = target.binary.as_ref().and_then(|key| self.binaries.get(key));
                let (path, probes) = binary.map_or((PathBuf::new(), 0), |b| (b.path.clone(), b.links.len()));
                format!(
                    "pid {pid}: {} with {probes} probes attached, labelled {}",
                    path.display(),
                    target.labels
                )
            })
            .collect()
    }

    fn update_gauges(&self) {
        let observer = &self.state.metrics.observer;
        observer.targets.set(self.processes.len() as i64);
        observer.probes_attached.set(self.binaries.values().map(|b| b.links.len()).sum::<usize>() as i64);
        observer.binaries_attached.set(self.binaries.len() as i64);
    }

    /// Detaches everything, then unloads the programs.
    pub fn shutdown(self) {
        drop(self.binaries);
        for detaching in self.detaching {
            let _ = detaching.join();
        }
        drop(self.loaded);
    }
}

/// Runs `targets` until `events` closes or says stop (None): lifecycle events as they
/// come, a tick every second.
pub fn run(mut targets: Targets, events: std::sync::mpsc::Receiver<Option<Lifecycle>>) {
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    loop {
        match events.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(Some(event)) => targets.on(event),
            Ok(None) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_tick {
            targets.tick();
            next_tick = Instant::now() + Duration::from_secs(1);
        }
    }
    targets.shutdown();
}
