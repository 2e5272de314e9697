//! Every way mcp-observe can fail, each with what the operator should do next.

use std::{io, net::SocketAddr, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(
        "no process with pid {pid}: check the pid of the proxy (e.g. `pgrep -f 'mcp serve'`) and try again"
    )]
    NoSuchProcess { pid: u32 },

    #[error("cannot read /proc/{pid}/exe: {source}; run mcp-observe as root or grant it CAP_SYS_PTRACE")]
    ExeUnreadable { pid: u32, source: io::Error },

    #[error("--proc {}: no process 1 there, so it is not a procfs; give the host's /proc (mounted with hostPID: true at /proc)", path.display())]
    NotProc { path: PathBuf },

    #[error(
        "pid {pid} belongs to the process tree of pid {root}, which is observed already: pass only --pid {root}"
    )]
    InTree { pid: u32, root: u32 },

    #[error("pid {pid} has no executable (a kernel thread, or a process exiting): pass the pid of the proxy")]
    NoExecutable { pid: u32 },

    #[error("{} is not a valid ELF executable ({reason}); is pid {pid} a native proxy binary?", path.display())]
    BadElf { pid: u32, path: PathBuf, reason: String },

    #[error("{} (pid {pid}) has no MCP probes (no .note.mcp_probes section, no mcp_probe_* symbols): add --kernel-only to watch only its TCP connections and child processes, or link the mcp-probes crate into the proxy (docs/probe-abi.md)", path.display())]
    NoProbes { pid: u32, path: PathBuf },

    #[error("{} (pid {pid}) uses probe ABI v{found}, this mcp-observe understands v{}: upgrade mcp-observe", path.display(), mcp_abi::VERSION)]
    AbiMismatch { pid: u32, path: PathBuf, found: u32 },

    #[error("{} (pid {pid}) lacks the probe {probe} of ABI v1: rebuild the proxy against the current mcp-probes crate", path.display())]
    MissingProbe { pid: u32, path: PathBuf, probe: &'static str },

    #[error("{} (pid {pid}): mcp_probe_{probe} at file offset {offset:#x} does not begin with the NOP of probe ABI v1, so no uprobe is placed there: rebuild the proxy against the mcp-probes crate", path.display())]
    NotAProbe { pid: u32, path: PathBuf, probe: String, offset: u64 },

    #[error(
        "missing capability {cap}: run mcp-observe as root, or grant it CAP_BPF and CAP_PERFMON (the node-wide agent also CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH)"
    )]
    MissingCapability { cap: &'static str },

    #[error(
        "missing capability CAP_SYS_ADMIN: this kernel creates uprobes for CAP_SYS_ADMIN only (CAP_PERFMON was enough before a 2025 security fix); grant it, or add --kernel-only for the TCP and child-process metrics alone"
    )]
    UprobesNeedSysAdmin,

    #[error(
        "Linux {release} is too old: mcp-observe needs 5.15 or later (its uprobes read attach cookies, bpf_get_attach_cookie, which this kernel lacks)"
    )]
    OldKernel { release: String },

    #[error("this kernel has no uprobe support ({} is absent): use a kernel built with CONFIG_UPROBE_EVENTS=y", path.display())]
    NoUprobes { path: PathBuf },

    #[error("tracefs is absent (not mounted at {} or /sys/kernel/debug/tracing) and mounting it failed: {source}; mount it (`mount -t tracefs tracefs /sys/kernel/tracing`) or grant mcp-observe CAP_SYS_ADMIN", path.display())]
    TracefsAbsent { path: PathBuf, source: io::Error },

    #[error(
        "cannot read the format of tracepoint {event}: {source}; this kernel lacks it, or tracefs is not readable (run as root)"
    )]
    Tracepoint { event: String, source: io::Error },

    #[error(
        "this kernel has no tracepoint {event}, which mcp-observe needs to follow the proxies' process trees: use a kernel built with CONFIG_TRACEPOINTS (every distribution kernel since 3.x has it), and check that tracefs shows events/ (`ls /sys/kernel/tracing/events`)"
    )]
    RequiredTracepoint { event: String },

    #[error(
        "tracepoint {event} has no {expected}-byte field `{field}` ({}): this kernel's tracepoint differs from what mcp-observe reads; please report it with `uname -r`",
        found.map_or("no such field".to_string(), |size| format!("it has {size} bytes"))
    )]
    TracepointField { event: String, field: &'static str, expected: u32, found: Option<u32> },

    #[error("attaching the kernel hook on {hook} failed: {cause}; {next}")]
    HookAttach { hook: String, cause: String, next: String },

    #[error("cannot track pid {pid}'s process tree in the kernel: {source}")]
    Track { pid: u32, source: Box<aya::maps::MapError> },

    #[error(
        "creating the eBPF maps on Linux {release} failed: {cause}; kernels before 5.11 charge them to `ulimit -l` (raise it), and every kernel wants CAP_BPF or CAP_SYS_ADMIN"
    )]
    Load { release: String, cause: String },

    #[error(
        "the kernel refused eBPF program {program} on Linux {release}: {cause}; please report this with `uname -r` and this line"
    )]
    ProgramLoad { program: &'static str, release: String, cause: String },

    #[error("attaching probe {probe} in {} (pid {pid}) failed: {cause}; {next}", path.display())]
    Attach { probe: &'static str, pid: u32, path: PathBuf, cause: String, next: String },

    #[error("eBPF map {name} is missing or of the wrong type: {source}")]
    Map { name: &'static str, source: Box<aya::maps::MapError> },

    #[error("cannot map the events ring buffer into memory: {0}; try a smaller --ring-buffer-bytes")]
    MapRing(io::Error),

    #[error("cannot listen on {addr}: {source}; pick a free address with --listen")]
    Listen { addr: SocketAddr, source: io::Error },

    #[error("{what}; detached everything. Restart mcp-observe, and report this with its log")]
    Stopped { what: String },

    #[error(
        "--ring-buffer-bytes {bytes} is invalid: it must be a power of two and a multiple of the page size ({page}), e.g. 4194304"
    )]
    RingBufferSize { bytes: u32, page: u32 },

    #[error(
        "cannot read {url}: {reason}; start an agent there (mcp-observe --pid PID), or use top --pid PID"
    )]
    Scrape { url: String, reason: String },

    #[error("the terminal: {0}")]
    Terminal(io::Error),
}

/// `error` and every error below it, joined on one line: aya names the failed call at
/// the top and keeps the errno below, and the verifier's log is many lines.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += ": ";
        text += &cause.to_string();
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The errno at the bottom of `error`'s chain, if an OS call failed.
pub fn errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return io.raw_os_error();
        }
        source = cause.source();
    }
    None
}

/// Facts of probe ABI v1 shared by the error messages and the ELF reader.
pub mod mcp_abi {
    /// The only ABI version this observer understands.
    pub const VERSION: u32 = 1;
    /// Owner name of the notes in `.note.mcp_probes`.
    pub const NOTE_OWNER: &[u8] = b"MCP";
    /// Section holding one note per probe.
    pub const NOTE_SECTION: &str = ".note.mcp_probes";
    /// Note type carrying the ABI version (desc: u32).
    pub const NOTE_ABI: u32 = 1;
    /// Note type describing one probe (desc: u64 address, NUL-terminated name).
    pub const NOTE_PROBE: u32 = 2;
    /// Prefix of every probe function's symbol.
    pub const SYMBOL_PREFIX: &str = "mcp_probe_";
    /// Marker symbol of ABI v1.
    pub const MARKER_SYMBOL: &str = "mcp_probes_abi_v1";
}
