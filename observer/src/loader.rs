//! Loads the embedded eBPF object, attaches its uprobes to the executables of the
//! targets and its kernel hooks to their tracepoints.

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{
        Program, ProgramError, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
    },
};
use observer_common::{
    COUNTERS_MAP, DISCOVER_GLOBAL, EVENTS_MAP, IN_FLIGHT_ENTRIES, IN_FLIGHT_MAP, LAYOUT_GLOBAL,
    LISTENING_MAP, REQUEST_LATENCY_GLOBAL, SOCKETS_MAP, TRACKED_MAP, WAKEUP_THRESHOLD_GLOBAL,
};

use crate::{
    error::{ObserveError, causes},
    hooks::Plan,
    kernel,
    maps::KernelMaps,
    probes::{self, CATALOGUE, Executable, ProbeTable},
    ring::Ring,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Program `name` of the embedded object, as its kind (a uprobe, a tracepoint).
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut P
where
    &'a mut P: TryFrom<&'a mut Program>,
{
    let program = ebpf.program_mut(name).unwrap_or_else(|| panic!("eBPF object lacks program {name}"));
    program.try_into().unwrap_or_else(|_| panic!("program {name} is not a {}", std::any::type_name::<P>()))
}

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

    /// Past a quarter full, producers wake the agent instead of waiting for its timer: the
    /// other three quarters hold what arrives while it wakes up (an idle vCPU can take
    /// milliseconds to run again; 3 MiB of the default ring are 6.6 ms at a million events
    /// a second).
    fn wakeup_threshold(self) -> u64 {
        u64::from(self.bytes / 4)
    }
}

/// One probe attached to one executable file; detached when dropped (which waits for
/// the kernel: about 0.1 s per uprobe here).
#[derive(Debug)]
pub struct ProbeLink {
    pub probe: &'static str,
    _link: UProbeLink,
}

/// The loaded programs; dropping it detaches every probe.
pub struct Loaded {
    ebpf: Ebpf,
    options: LoadOptions,
}

/// How the programs behave, fixed at load.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    /// The kernel reports every exec outside the targets' trees (the node-wide agent).
    pub discover: bool,
    /// `request_start` is attached and request ends are timed; without it, the in-flight
    /// map shrinks to one entry.
    pub request_latency: bool,
}

impl Loaded {
    /// Loads the probes' programs, and the kernel hooks' that `plan` found a hook for
    /// (the others stay unloaded: the verifier would refuse their absent fields); the
    /// hooks read their tracepoints' fields at `plan.layout`.
    pub fn load(ring: RingConfig, plan: &Plan, options: LoadOptions) -> Result<Self, ObserveError> {
        let threshold = ring.wakeup_threshold();
        let mut ebpf = EbpfLoader::new()
            .override_global(WAKEUP_THRESHOLD_GLOBAL, &threshold, true)
            .override_global(LAYOUT_GLOBAL, &plan.layout, true)
            .override_global(DISCOVER_GLOBAL, &u32::from(options.discover), true)
            .override_global(REQUEST_LATENCY_GLOBAL, &u32::from(options.request_latency), true)
            .map_max_entries(EVENTS_MAP, ring.bytes)
            .map_max_entries(IN_FLIGHT_MAP, if options.request_latency { IN_FLIGHT_ENTRIES } else { 1 })
            .load(EBPF_OBJECT)
            .map_err(|e| ObserveError::Load { release: kernel::release(), cause: causes(&e) })?;
        let failed = |program: &'static str| {
            move |e: ProgramError| ObserveError::ProgramLoad {
                program,
                release: kernel::release(),
                cause: causes(&e),
            }
        };
        for (_, name) in CATALOGUE {
            program::<UProbe>(&mut ebpf, name).load().map_err(failed(name))?;
        }
        for hook in plan.attached() {
            program::<TracePoint>(&mut ebpf, hook.program).load().map_err(failed(hook.program))?;
        }
        Ok(Self { ebpf, options })
    }

    /// Attaches every kernel hook `plan` loaded. They act on tracked processes only, so
    /// they count nothing until [`KernelMaps::track`] registers a target. The process
    /// tree's hooks come first: a child forked while the others attach is already
    /// tracked. A tracepoint that does not attach stops the agent: what refuses one
    /// refuses them all.
    pub fn attach_hooks(&mut self, plan: &Plan) -> Result<(), ObserveError> {
        for hook in plan.attached() {
            program::<TracePoint>(&mut self.ebpf, hook.program).attach(hook.category, hook.name).map_err(
                |e| ObserveError::HookAttach {
                    hook: format!("tracepoint {}", hook.tracepoint()),
                    cause: causes(&e),
                    next: kernel::perf_refusal_hint(&e),
                },
            )?;
        }
        Ok(())
    }

    /// Attaches every catalogued probe that `table` has to `executable` (which `pid`
    /// runs), for every process that runs it, with `cookie` as their attach cookie: the
    /// eBPF programs count a hit only in a target whose [`observer_common::Tracked::binary`]
    /// it is. Through the open file's `/proc/self/fd` path the kernel places them in the
    /// very file the table was read from, even inside another mount namespace.
    pub fn attach_binary(
        &mut self,
        pid: u32,
        executable: &Executable,
        table: &ProbeTable,
        cookie: u32,
    ) -> Result<Vec<ProbeLink>, ObserveError> {
        let target = executable.fd_path();
        let mut links = Vec::new();
        // Ends before starts (the catalogue lists starts first): a request, connection or
        // session that begins between two attaches must not be left open forever (an end
        // without a start is counted instead).
        for &(probe, name) in CATALOGUE.iter().rev() {
            if !probes::attached_when(probe, self.options.request_latency) {
                continue;
            }
            // Probes the proxy never calls may have been discarded by its linker.
            let Some(site) = table.site(probe) else { continue };
            let uprobe = program::<UProbe>(&mut self.ebpf, name);
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                cookie: Some(u64::from(cookie)),
            };
            let attached =
                uprobe.attach(point, &target, UProbeScope::AllProcesses).and_then(|id| uprobe.take_link(id));
            // On an error the links attached so far detach as they drop.
            let link = attached.map_err(|e| ObserveError::Attach {
                probe,
                pid,
                path: table.path.clone(),
                cause: causes(&e),
                next: kernel::perf_refusal_hint(&e),
            })?;
            links.push(ProbeLink { probe, _link: link });
        }
        Ok(links)
    }

    pub fn take_ring(&mut self, bytes: u32) -> Result<Ring, ObserveError> {
        let map = self.ebpf.take_map(EVENTS_MAP).expect("eBPF object has the ring buffer");
        let Map::RingBuf(map) = map else { unreachable!("{EVENTS_MAP} is a ring buffer") };
        Ring::new(map, bytes).map_err(ObserveError::MapRing)
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
