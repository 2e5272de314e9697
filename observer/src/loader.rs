//! Loads the embedded eBPF object, attaches its uprobes to the target processes and its
//! kernel hooks to their tracepoints, and registers each target's process tree.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use observer_common::{
    COUNTERS_MAP, EVENTS_MAP, IN_FLIGHT_MAP, LAYOUT_GLOBAL, LISTENING_MAP, Layout, Listener, SOCKETS_MAP,
    TRACKED_MAP, Tracked, WAKEUP_THRESHOLD_GLOBAL, listening_key,
};

use crate::{
    error::ObserveError,
    maps::KernelMaps,
    probes::{CATALOGUE, ProbeTable},
    tracefs::{self, HOOKS, Hook},
    tree::{self, Snapshot},
};

/// `BPF_NOEXIST` refused the insert: the key is there already.
fn already_present(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EEXIST))
}

/// Passes over /proc when a target is tracked, at most (see `Loaded::track`).
const SNAPSHOT_PASSES: usize = 4;

/// `bpf_map_update_elem` flag: only add, never overwrite.
const BPF_NOEXIST: u64 = 1;

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Ring-buffer tuning.
#[derive(Clone, Copy, Debug)]
pub struct RingConfig {
    /// Size of the ring buffer in bytes: a power of two, a multiple of the page size.
    pub bytes: u32,
}

impl RingConfig {
    pub fn validate(self) -> Result<Self, ObserveError> {
        // SAFETY: sysconf has no preconditions.
        let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        if self.bytes.is_power_of_two() && self.bytes >= page {
            Ok(self)
        } else {
            Err(ObserveError::RingBufferSize { bytes: self.bytes, page })
        }
    }

    /// Past half full, producers wake the agent instead of waiting for its timer.
    fn wakeup_threshold(self) -> u64 {
        u64::from(self.bytes / 2)
    }
}

/// One attached probe, for `--check` and the logs.
#[derive(Debug)]
pub struct Attached {
    pub pid: u32,
    pub probe: &'static str,
    pub path: PathBuf,
    pub file_offset: u64,
}

/// The loaded programs; dropping it detaches every probe.
pub struct Loaded {
    ebpf: Ebpf,
}

impl Loaded {
    /// Loads every program; the kernel hooks read their tracepoints' fields at `layout`.
    pub fn load(ring: RingConfig, layout: &Layout) -> Result<Self, ObserveError> {
        let threshold = ring.wakeup_threshold();
        let mut ebpf = EbpfLoader::new()
            .override_global(WAKEUP_THRESHOLD_GLOBAL, &threshold, true)
            .override_global(LAYOUT_GLOBAL, layout, true)
            .map_max_entries(EVENTS_MAP, ring.bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| ObserveError::Load(Box::new(e)))?;
        for (_, program) in CATALOGUE {
            let uprobe: &mut UProbe = ebpf
                .program_mut(program)
                .unwrap_or_else(|| panic!("eBPF object lacks program {program}"))
                .try_into()
                .expect("program is a uprobe");
            uprobe.load().map_err(|e| ObserveError::Load(Box::new(e.into())))?;
        }
        for hook in HOOKS {
            let program = hook.program;
            let hook: &mut TracePoint = ebpf
                .program_mut(program)
                .unwrap_or_else(|| panic!("eBPF object lacks program {program}"))
                .try_into()
                .expect("program is a tracepoint");
            hook.load().map_err(|e| ObserveError::Load(Box::new(e.into())))?;
        }
        Ok(Self { ebpf })
    }

    /// Attaches every kernel hook this kernel has tracepoints for (an optional one may be
    /// missing) and returns them. They act on tracked processes only, so they count
    /// nothing until [`Self::track`] registers a target. The process tree's hooks come
    /// first: a child forked while the others attach is already tracked.
    pub fn attach_hooks(&mut self, tracefs: &Path) -> Result<Vec<&'static Hook>, ObserveError> {
        let mut attached = Vec::new();
        for hook in HOOKS {
            if hook.without.is_some() && !tracefs::exists(tracefs, hook) {
                continue;
            }
            let program: &mut TracePoint =
                self.ebpf.program_mut(hook.program).expect("loaded above").try_into().expect("a tracepoint");
            program.attach(hook.category, hook.name).map_err(|source| ObserveError::HookAttach {
                category: hook.category,
                name: hook.name,
                source: Box::new(source),
            })?;
            attached.push(hook);
        }
        Ok(attached)
    }

    /// Registers target `pid` in the kernel, then what its tree already held as /proc
    /// shows it after the registration, so that nothing falls between: the descendants
    /// the fork hook has not added meanwhile, and the listening sockets. Returns what it
    /// added (the children among them are running now, unknown to the hooks).
    pub fn track(&mut self, pid: u32) -> Result<Snapshot, ObserveError> {
        let failed = |source: MapError| ObserveError::Track { pid, source: Box::new(source) };
        let root = Tracked { root: pid, child: 0, exit_status: 0, flags: 0 };
        self.tracked().insert(pid, root, 0).map_err(failed)?;
        let mut added = Snapshot::default();
        // Again until a pass adds nothing: a descendant may fork before it is added.
        for _ in 0..SNAPSHOT_PASSES {
            let snapshot = tree::snapshot(pid);
            let mut tracked = self.tracked();
            let before = added.descendants.len();
            for &(descendant, child) in &snapshot.descendants {
                if added.descendants.iter().any(|&(d, _)| d == descendant) {
                    continue;
                }
                match tracked.insert(
                    descendant,
                    Tracked { root: pid, child, exit_status: 0, flags: 0 },
                    BPF_NOEXIST,
                ) {
                    Ok(()) if tree::is_alive(descendant) => {
                        added.descendants.push((descendant, child));
                        added
                            .children
                            .extend(snapshot.children.iter().filter(|(c, _)| *c == descendant).cloned());
                    }
                    // Exited before it was added (its exit hook found nothing to remove):
                    // the entry must go, or an unrelated process reusing the pid would count.
                    Ok(()) => {
                        let _ = tracked.remove(&descendant);
                    }
                    // Added by the fork hook since `track`: its events tell the rest.
                    Err(error) if already_present(&error) => {}
                    Err(error) => log::warn!("pid {pid}: descendant {descendant} not tracked: {error}"),
                }
            }
            added.listeners = snapshot.listeners;
            if added.descendants.len() == before {
                break;
            }
        }
        let map = self.ebpf.map_mut(LISTENING_MAP).expect("eBPF object has the listening map");
        let mut listening: HashMap<_, u32, Listener> = HashMap::try_from(map).map_err(failed)?;
        for l in &added.listeners {
            let listener = Listener { target: pid, owner: l.owner, skaddr: 0 };
            // Never over one the listen hook added since `track`.
            match listening.insert(listening_key(l.family, l.port), listener, BPF_NOEXIST) {
                Ok(()) => {}
                Err(error) if already_present(&error) => {}
                Err(error) => return Err(failed(error)),
            }
        }
        Ok(added)
    }

    fn tracked(&mut self) -> HashMap<&mut MapData, u32, Tracked> {
        let map = self.ebpf.map_mut(TRACKED_MAP).expect("eBPF object has the process tree map");
        HashMap::try_from(map).expect("the process tree map is a hash map of u32 to Tracked")
    }

    /// Attaches every catalogued probe that `table` has, for process `pid` only.
    pub fn attach(&mut self, pid: u32, table: &ProbeTable) -> Result<Vec<Attached>, ObserveError> {
        let scope = UProbeScope::OneProcess(NonZeroU32::new(pid).ok_or(ObserveError::NoSuchProcess { pid })?);
        // Through /proc/PID/exe the kernel resolves the very file the process runs, even
        // inside another mount namespace.
        let target = PathBuf::from(format!("/proc/{pid}/exe"));
        let mut attached = Vec::new();
        // Ends before starts (the catalogue lists starts first): a request, connection or
        // session that begins between two attaches must not be left open forever (an end
        // without a start is counted instead).
        for &(probe, program) in CATALOGUE.iter().rev() {
            // Probes the proxy never calls may have been discarded by its linker.
            let Some(site) = table.site(probe) else { continue };
            let uprobe: &mut UProbe = self
                .ebpf
                .program_mut(program)
                .expect("loaded above")
                .try_into()
                .expect("program is a uprobe");
            uprobe.attach(UProbeAttachLocation::AbsoluteOffset(site.file_offset), &target, scope).map_err(
                |source| ObserveError::Attach {
                    probe,
                    pid,
                    path: table.path.clone(),
                    source: Box::new(source),
                },
            )?;
            attached.push(Attached { pid, probe, path: table.path.clone(), file_offset: site.file_offset });
        }
        Ok(attached)
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, ObserveError> {
        let map = self.ebpf.take_map(EVENTS_MAP).expect("eBPF object has the ring buffer");
        RingBuf::try_from(map).map_err(|e| ObserveError::Map { name: EVENTS_MAP, source: Box::new(e) })
    }

    /// The maps read at scrape time. `request_expiry`: see [`KernelMaps`].
    pub fn take_maps(&mut self, request_expiry: std::time::Duration) -> Result<KernelMaps, ObserveError> {
        let counters = self.ebpf.take_map(COUNTERS_MAP).expect("eBPF object has the counters");
        let counters = PerCpuArray::try_from(counters)
            .map_err(|e| ObserveError::Map { name: COUNTERS_MAP, source: Box::new(e) })?;
        Ok(KernelMaps {
            counters,
            in_flight: self.take_hash_map(IN_FLIGHT_MAP)?,
            request_expiry,
            tracked: self.take_hash_map(TRACKED_MAP)?,
            listening: self.take_hash_map(LISTENING_MAP)?,
            sockets: self.take_hash_map(SOCKETS_MAP)?,
        })
    }

    fn take_hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<MapData, K, V>, ObserveError> {
        let map = self.ebpf.take_map(name).unwrap_or_else(|| panic!("eBPF object lacks map {name}"));
        HashMap::try_from(map).map_err(|e| ObserveError::Map { name, source: Box::new(e) })
    }
}
