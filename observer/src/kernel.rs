//! What the kernel and our privileges allow, checked before anything is loaded so that a
//! missing feature is named instead of surfacing as an opaque EPERM or ENOENT.

use std::path::{Path, PathBuf};

use crate::error::ObserveError;

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

// Capability numbers from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Kernel facts shown by `--check`.
#[derive(Debug)]
pub struct Features {
    pub release: String,
    pub uprobes: bool,
    pub tracefs: Option<PathBuf>,
    pub kprobes: bool,
}

pub fn features() -> Features {
    let release =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    Features {
        release,
        uprobes: Path::new(UPROBE_PMU).exists(),
        tracefs: crate::tracefs::find(),
        kprobes: Path::new("/sys/bus/event_source/devices/kprobe/type").exists(),
    }
}

/// Fails with the first missing capability that loading and attaching programs needs.
pub fn require_capabilities() -> Result<(), ObserveError> {
    let caps = effective_capabilities();
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            return Err(ObserveError::MissingCapability { cap: "CAP_BPF" });
        }
        if !has(CAP_PERFMON) {
            return Err(ObserveError::MissingCapability { cap: "CAP_PERFMON" });
        }
    }
    Ok(())
}

/// Fails when the kernel cannot attach uprobes.
pub fn require_uprobes() -> Result<(), ObserveError> {
    if !Path::new(UPROBE_PMU).exists() {
        return Err(ObserveError::NoUprobes { path: UPROBE_PMU.into() });
    }
    Ok(())
}

fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}
