//! Loads the embedded eBPF object and attaches its uprobes to the target processes.

use std::{num::NonZeroU32, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use observer_common::{COUNTERS_MAP, EVENTS_MAP, IN_FLIGHT_MAP, WAKEUP_THRESHOLD_GLOBAL};

use crate::{
    error::ObserveError,
    maps::KernelMaps,
    probes::{CATALOGUE, ProbeTable},
};

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
    pub fn load(ring: RingConfig) -> Result<Self, ObserveError> {
        let threshold = ring.wakeup_threshold();
        let mut ebpf = EbpfLoader::new()
            .override_global(WAKEUP_THRESHOLD_GLOBAL, &threshold, true)
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
        Ok(Self { ebpf })
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
        let in_flight = self.ebpf.take_map(IN_FLIGHT_MAP).expect("eBPF object has the in-flight map");
        let in_flight = HashMap::try_from(in_flight)
            .map_err(|e| ObserveError::Map { name: IN_FLIGHT_MAP, source: Box::new(e) })?;
        Ok(KernelMaps { counters, in_flight, request_expiry })
    }
}
