//! What the kernel and our privileges allow, checked before anything is loaded so that a
//! missing feature is named instead of surfacing as an opaque EPERM or ENOENT.

use std::path::{Path, PathBuf};

use crate::error::ObserveError;

const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe/type";

// Capability numbers from linux/capability.h.
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";
const PERF_EVENT_PARANOID: &str = "/proc/sys/kernel/perf_event_paranoid";

/// Kernel facts shown by `--check`.
#[derive(Debug)]
pub struct Features {
    pub release: String,
    pub uprobes: bool,
    pub tracefs: Option<PathBuf>,
    pub kprobes: bool,
    pub perf_event_paranoid: Option<i32>,
}

pub fn features() -> Features {
    Features {
        release: release(),
        uprobes: Path::new(UPROBE_PMU).exists(),
        tracefs: crate::tracefs::find(),
        kprobes: Path::new(KPROBE_PMU).exists(),
        perf_event_paranoid: perf_event_paranoid(),
    }
}

/// The running kernel's release, as `uname -r` says it.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string(PERF_EVENT_PARANOID).ok()?.trim().parse().ok()
}

/// The next step after a perf event or BPF link the kernel refused with `error`.
pub fn perf_refusal_hint(error: &(dyn std::error::Error + 'static)) -> String {
    let errno = crate::error::errno(error);
    let paranoid = perf_event_paranoid();
    let sys_admin = effective_capabilities() & (1u64 << CAP_SYS_ADMIN) != 0;
    match errno {
        Some(libc::EACCES | libc::EPERM) if paranoid.is_some_and(|p| p >= 3) && !sys_admin => format!(
            "{}: kernel.perf_event_paranoid is {}, at which Debian's and Ubuntu's kernels open perf events to CAP_SYS_ADMIN alone; grant CAP_SYS_ADMIN (the DaemonSet has it), or set `sysctl kernel.perf_event_paranoid=2`",
            errno_name(errno),
            paranoid.unwrap_or_default()
        ),
        Some(libc::EACCES | libc::EPERM) => format!(
            "{}: grant CAP_BPF and CAP_PERFMON (uprobes also CAP_SYS_ADMIN), or run as root; a kernel in lockdown=confidentiality refuses it to root too",
            errno_name(errno)
        ),
        _ => format!("{}: please report it with `uname -r` and this line", errno_name(errno)),
    }
}

fn errno_name(errno: Option<i32>) -> String {
    let name = match errno {
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EOPNOTSUPP) => "EOPNOTSUPP",
        Some(other) => return format!("errno {other}"),
        None => return "no errno".to_string(),
    };
    name.to_string()
}

/// Fails with the first missing capability: to create uprobes (unless `kernel_only`), to
/// load and attach programs, and node-wide to read other users' processes in /proc
/// (following their `exe` and `fd` links takes CAP_SYS_PTRACE, listing their `fd`
/// directory, mode 0500 and theirs, CAP_DAC_READ_SEARCH).
pub fn require_capabilities(kernel_only: bool, node_wide: bool) -> Result<(), ObserveError> {
    let caps = effective_capabilities();
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if !has(CAP_SYS_ADMIN) && !kernel_only && !may_create_uprobes() {
        return Err(ObserveError::UprobesNeedSysAdmin);
    }
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            return Err(ObserveError::MissingCapability { cap: "CAP_BPF" });
        }
        if !has(CAP_PERFMON) {
            return Err(ObserveError::MissingCapability { cap: "CAP_PERFMON" });
        }
    }
    if node_wide {
        for (cap, name) in [(CAP_SYS_PTRACE, "CAP_SYS_PTRACE"), (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH")]
        {
            if !has(cap) {
                return Err(ObserveError::MissingCapability { cap: name });
            }
        }
    }
    Ok(())
}

/// `perf_event_attr.exclude_kernel` (bit 5 of the flags word).
const EXCLUDE_KERNEL: u64 = 1 << 5;

/// The first fields of `struct perf_event_attr` (`PERF_ATTR_SIZE_VER1`): enough for a
/// uprobe, whose path and offset are `config1` and `config2`.
#[repr(C)]
struct UprobeAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// Whether this kernel lets us create uprobes. Linux 5.8 opened them to CAP_PERFMON; a
/// 2025 security fix gave them back to CAP_SYS_ADMIN alone. Asked with a uprobe past the
/// end of our own executable, for our own process and user space only (which perf allows
/// anyone): refused (EACCES) before anything is made, or rejected as out of range. In a
/// container, the runtime's default seccomp filter refuses perf_event_open itself (EPERM)
/// to a process without CAP_SYS_ADMIN: no uprobes either.
fn may_create_uprobes() -> bool {
    let Ok(kind) = std::fs::read_to_string(UPROBE_PMU).map(|t| t.trim().parse::<u32>()) else { return true };
    let Ok(kind) = kind else { return true };
    let path = c"/proc/self/exe";
    let attr = UprobeAttr {
        kind,
        size: size_of::<UprobeAttr>() as u32,
        config: 0,
        sample_period: 0,
        sample_type: 0,
        read_format: 0,
        flags: EXCLUDE_KERNEL,
        wakeup_events: 0,
        bp_type: 0,
        config1: path.as_ptr() as u64,
        config2: u64::MAX >> 1,
    };
    // SAFETY: `attr` and the path it points to outlive the call; a returned fd is closed.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, &raw const attr, 0, -1, -1, 0) };
    if fd >= 0 {
        // SAFETY: the fd was just opened by us.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    !matches!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

/// Fails when the kernel cannot attach uprobes.
pub fn require_uprobes() -> Result<(), ObserveError> {
    if !Path::new(UPROBE_PMU).exists() {
        return Err(ObserveError::NoUprobes { path: UPROBE_PMU.into() });
    }
    Ok(())
}

/// The oldest Linux the programs load on: their uprobes read attach cookies.
const OLDEST_RELEASE: (u32, u32) = (5, 15);

/// Fails on a kernel whose uprobes cannot read attach cookies (`bpf_get_attach_cookie`,
/// Linux 5.15), before the verifier would, less clearly: asked of the kernel by loading a
/// program that calls it, and, where that cannot be asked, told by the release.
pub fn require_attach_cookies() -> Result<(), ObserveError> {
    use aya::{programs::ProgramType, sys::BpfHelper};
    let release = release();
    let supported = aya::sys::is_helper_supported(ProgramType::KProbe, BpfHelper::BPF_FUNC_get_attach_cookie)
        .unwrap_or_else(|e| {
            log::debug!("probing bpf_get_attach_cookie: {e}; judging by the release");
            !too_old(&release)
        });
    if !supported {
        return Err(ObserveError::OldKernel { release });
    }
    Ok(())
}

fn too_old(release: &str) -> bool {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(str::parse::<u32>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) < OLDEST_RELEASE,
        _ => false,
    }
}

fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::too_old;

    #[test]
    fn releases_before_5_15_are_too_old() {
        assert!(too_old("5.14.21-150400.24-default"));
        assert!(too_old("4.18.0-553.el8_10.x86_64"));
        assert!(!too_old("5.15.0-1"));
        assert!(!too_old("6.18.44-fc-v669"));
        assert!(!too_old("garbage"), "unknown: let the loader say");
    }
}
