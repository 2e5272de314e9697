//! Types shared by the kernel side (`observer-ebpf`) and the agent (`observer`).
//!
//! Every probe and kernel hook sends one [`ProbeEvent`] through the ring buffer: a common
//! header, an id and a scalar, and up to five bounded strings, one per label, packed one
//! after another. The agent dispatches on [`EventHeader::kind`] alone. All types are
//! `#[repr(C)]` without implicit padding.
#![no_std]

/// Name of the ring buffer map in the eBPF object.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices in [`counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the in-flight request map (key [`InFlightKey`], value start time in ns).
pub const IN_FLIGHT_MAP: &str = "IN_FLIGHT";
/// Requests the in-flight map holds (one entry when request latency is off).
pub const IN_FLIGHT_ENTRIES: u32 = 65_536;
/// Global set by the agent: submit with a forced wakeup once this many bytes wait.
pub const WAKEUP_THRESHOLD_GLOBAL: &str = "WAKEUP_THRESHOLD";
/// Global set by the agent: the tracepoint field offsets ([`Layout`]).
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
/// Global set to 1 by the node-wide agent: every exec outside the targets' trees is sent
/// as [`kind::PROCESS_EXEC`], so that new proxies are found.
pub const DISCOVER_GLOBAL: &str = "DISCOVER";
/// Global set to 0 by an agent run with `--no-request-latency`: `request_end` neither
/// looks for its start nor reads the clock, and flags its event [`FLAG_UNTIMED`].
pub const REQUEST_LATENCY_GLOBAL: &str = "REQUEST_LATENCY";
/// The targets' process trees (key tgid, value [`Tracked`]).
pub const TRACKED_MAP: &str = "TRACKED";
/// What the targets listen on (key [`listening_key`], value [`Listener`]).
pub const LISTENING_MAP: &str = "LISTENING";
/// The targets' TCP sockets (key the socket's kernel address, value [`TrackedSocket`]).
pub const SOCKETS_MAP: &str = "SOCKETS";

/// Event kinds: the values of [`EventHeader::kind`], one per probe that sends events
/// (`request_start` only records a start time in the kernel).
pub mod kind {
    pub const REQUEST_END: u32 = 1;
    pub const ACL_DECISION: u32 = 2;
    pub const AUTH_FAILURE: u32 = 3;
    pub const BACKEND_CONNECT_START: u32 = 4;
    pub const BACKEND_CONNECT_END: u32 = 5;
    pub const BACKEND_DISCONNECT: u32 = 6;
    pub const BACKENDS_CONFIGURED: u32 = 7;
    pub const IDLE_REAPER_RUN: u32 = 8;
    pub const SESSION_OPEN: u32 = 9;
    pub const SESSION_CLOSE: u32 = 10;
    pub const TOOL_CACHE_SIZE: u32 = 11;
    pub const CLASSIFIER_CACHE: u32 = 12;
    pub const CHILD_SPAWN: u32 = 13;
    // Kernel hooks: `tgid` is the target's, `id` the socket address or the child's pid.
    pub const TCP_OPEN: u32 = 14;
    pub const TCP_CLOSE: u32 = 15;
    pub const TCP_RESET: u32 = 16;
    pub const TCP_TIMEOUT: u32 = 17;
    pub const TCP_RETRANSMIT: u32 = 18;
    pub const CHILD_FORK: u32 = 19;
    pub const CHILD_EXEC: u32 = 20;
    pub const CHILD_EXIT: u32 = 21;
    // Discovery (agent mode): `tgid` is the process's own.
    /// A process outside every target's tree, or a target itself, executed a program.
    pub const PROCESS_EXEC: u32 = 22;
    /// A target process exited.
    pub const TARGET_EXIT: u32 = 23;
    /// One past the last kind.
    pub const END: u32 = 24;

    /// Whether the agent reads the time of events of `kind` (durations and lifetimes from
    /// paired events, the order of a process's exec and exit): the kernel reads the clock
    /// for those only and sends [`super::UNTIMED`] for the counts and gauges.
    /// `REQUEST_END` is timed unless request latency is off.
    pub const fn timed(kind: u32) -> bool {
        !matches!(
            kind,
            ACL_DECISION
                | AUTH_FAILURE
                | BACKENDS_CONFIGURED
                | IDLE_REAPER_RUN
                | TOOL_CACHE_SIZE
                | CLASSIFIER_CACHE
                | CHILD_SPAWN
        )
    }

    /// The `kind` label of each event kind, indexed by kind (0 is unused).
    pub const NAMES: [&str; END as usize] = [
        "",
        "request_end",
        "acl_decision",
        "auth_failure",
        "backend_connect_start",
        "backend_connect_end",
        "backend_disconnect",
        "backends_configured",
        "idle_reaper_run",
        "session_open",
        "session_close",
        "tool_cache_size",
        "classifier_cache",
        "child_spawn",
        "tcp_open",
        "tcp_close",
        "tcp_reset",
        "tcp_timeout",
        "tcp_retransmit",
        "child_fork",
        "child_exec",
        "child_exit",
        "process_exec",
        "target_exit",
    ];
}

/// Indices into the per-CPU `COUNTERS` array. The agent sums them over CPUs at scrape.
pub mod counter {
    /// A probe argument pointed to memory the kernel could not read.
    pub const BAD_USER_POINTER: u32 = 0;
    /// A request start could not be recorded because the in-flight map was full.
    pub const IN_FLIGHT_FULL: u32 = 1;
    /// A request start reused the id of a request still in flight (a proxy bug); the
    /// first start is kept.
    pub const DUPLICATE_START: u32 = 2;
    /// A new process of a target's tree could not be tracked: `TRACKED` was full.
    pub const TRACKED_FULL: u32 = 3;
    /// A target's connection could not be tracked: the socket map was full.
    pub const SOCKETS_FULL: u32 = 4;
    /// Events of kind `k` that found the ring buffer full are counted at `LOST_BASE + k`.
    pub const LOST_BASE: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = LOST_BASE + super::kind::END;
}

/// Header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process (thread-group) id that hit the probe.
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe fired; [`UNTIMED`] for events
    /// recorded as counts or gauges, whose time nobody reads.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);

/// [`EventHeader::ts_ns`] of an event whose time the agent never reads (see
/// [`kind::timed`]; also request ends without latency): reading the clock costs about
/// 70 ns of a probe's 0.5 µs here (bpf_stats).
pub const UNTIMED: u64 = 0;

/// String slots of a [`ProbeEvent`], in struct order; also the bit numbers of the
/// `FLAG_TRUNCATED_SHIFT` / `FLAG_UNREADABLE_SHIFT` flags.
pub mod field {
    pub const METHOD: usize = 0;
    pub const TRANSPORT: usize = 1;
    pub const IDENTITY: usize = 2;
    pub const SERVER: usize = 3;
    pub const TOOL: usize = 4;
    pub const COUNT: usize = 5;
    /// The label each slot becomes.
    pub const LABELS: [&str; COUNT] = ["method", "transport", "identity", "server", "tool"];
}

/// Bytes kept of each string; longer values are truncated and flagged.
pub const METHOD_CAP: usize = 64;
pub const TRANSPORT_CAP: usize = 32;
pub const IDENTITY_CAP: usize = 128;
pub const SERVER_CAP: usize = 64;
pub const TOOL_CAP: usize = 128;
/// The caps in [`field`] order.
pub const CAPS: [usize; field::COUNT] = [METHOD_CAP, TRANSPORT_CAP, IDENTITY_CAP, SERVER_CAP, TOOL_CAP];
/// Room for every string at its cap.
pub const STRINGS_CAP: usize = METHOD_CAP + TRANSPORT_CAP + IDENTITY_CAP + SERVER_CAP + TOOL_CAP;

/// [`ProbeEvent::flags`]: a request end, disconnect or close whose start the kernel did
/// not see (the observer attached later, or the in-flight map was full); `duration_ns` is 0.
pub const FLAG_NO_START: u32 = 1 << 0;
/// [`ProbeEvent::flags`]: a request end sent without latency on purpose
/// ([`REQUEST_LATENCY_GLOBAL`]); `duration_ns` is 0.
pub const FLAG_UNTIMED: u32 = 1 << 1;
/// Bit `FLAG_TRUNCATED_SHIFT + field` is set when that string was truncated.
pub const FLAG_TRUNCATED_SHIFT: u32 = 8;
/// Bit `FLAG_UNREADABLE_SHIFT + field` is set when that string's pointer was bad.
pub const FLAG_UNREADABLE_SHIFT: u32 = 16;

/// What every probe sends through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeEvent {
    /// Common header.
    pub header: EventHeader,
    /// The proxy's request, connection or session id; 0 for probes without one.
    pub id: u64,
    /// `request_end`: end minus start, measured in the kernel; 0 otherwise.
    pub duration_ns: u64,
    /// The probe's scalar argument: status, decision, reason, count, entries or pid;
    /// `backend_connect_end`: kind in the low 32 bits, result in the high 32 bits.
    pub value: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Bytes of each string, in [`field`] order; 0 for an absent string. Each is at most
    /// its slot's cap.
    pub lens: [u16; field::COUNT],
    /// Zero.
    pub pad: u16,
    /// The strings, packed in [`field`] order: string `f` starts after the `lens` of the
    /// slots before it. Packed, a typical event's strings span one or two cache lines
    /// instead of five, which both the kernel (writing) and the agent (reading) pay for.
    pub strings: [u8; STRINGS_CAP],
}
const _: () = assert!(core::mem::size_of::<ProbeEvent>() == 56 + STRINGS_CAP);
// The kernel zeroes `lens` and `pad` as three aligned words.
const _: () = assert!(core::mem::offset_of!(ProbeEvent, lens) % 4 == 0);
const _: () =
    assert!(core::mem::offset_of!(ProbeEvent, strings) - core::mem::offset_of!(ProbeEvent, lens) == 12);

impl ProbeEvent {
    /// Where string slot `slot` starts in [`ProbeEvent::strings`].
    #[inline(always)]
    pub fn string_start(&self, slot: usize) -> usize {
        string_start(&self.lens, slot)
    }
}

/// Where string slot `slot` starts among strings of lengths `lens` packed in slot order:
/// the layout both the kernel (writing) and the agent (reading) follow.
#[inline(always)]
pub fn string_start(lens: &[u16; field::COUNT], slot: usize) -> usize {
    let mut at = 0;
    let mut before = 0;
    while before < slot && before < field::COUNT {
        at += lens[before] as usize;
        before += 1;
    }
    at
}

/// TCP events' `value`: the connection's direction in the low 32 bits (a
/// `TCP_TIMEOUT` carries the timer that fired in the high 32 bits).
pub mod direction {
    /// Accepted on a port a target listens on.
    pub const INBOUND: u64 = 0;
    /// Connected by a process of a target's tree.
    pub const OUTBOUND: u64 = 1;
}

/// `TCP_TIMEOUT`: which timer gave up, in the high 32 bits of `value`.
pub mod timeout {
    pub const KEEPALIVE: u32 = 0;
    pub const RETRANSMISSION: u32 = 1;
}

/// An event's `value` holding two `u32`s, as both sides read it: `low`, the first
/// enumeration (a probe's first scalar argument, a socket's direction) and `high`, the
/// second (a connect's result, a TCP timeout's kind). A probe's two `u32` arguments lie
/// in memory exactly so on a little-endian machine.
pub const fn pack(low: u32, high: u32) -> u64 {
    ((high as u64) << 32) | low as u64
}

/// The first `u32` of a [`pack`]ed value.
pub const fn low(value: u64) -> u32 {
    value as u32
}

/// The second `u32` of a [`pack`]ed value.
pub const fn high(value: u64) -> u32 {
    (value >> 32) as u32
}
const _: () = assert!(low(pack(7, 9)) == 7 && high(pack(7, 9)) == 9 && pack(u32::MAX, 0) == u32::MAX as u64);

/// `CHILD_EXIT`'s `value`: set when the child called `exit_group`, whose status is then
/// in the low 8 bits; clear when a signal ended it.
pub const EXIT_STATUS_KNOWN: u64 = 1 << 32;
/// `CHILD_EXIT`'s `value`: the kernel has no syscall tracepoints, so how the child ended
/// cannot be told.
pub const EXIT_STATUS_UNKNOWN: u64 = 1 << 33;

/// A process of a target's tree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The target's tgid.
    pub root: u32,
    /// The target's direct child this process descends from (itself for a direct child);
    /// 0 for the target itself.
    pub child: u32,
    /// `exit_group`'s status, once [`TRACKED_EXITING`] is set.
    pub exit_status: u32,
    /// `TRACKED_*` bits.
    pub flags: u32,
    /// For a target itself, the id of its executable's uprobes (their attach cookie): a
    /// file seen through two overlay mounts is one inode with two sets of uprobes, and
    /// each target counts the hits of its own set only. 0 for the others.
    pub binary: u32,
}
/// [`Tracked::flags`]: the process called `exit_group`.
pub const TRACKED_EXITING: u32 = 1;
const _: () = assert!(core::mem::size_of::<Tracked>() == 20);

/// A listening socket of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The target's tgid.
    pub target: u32,
    /// The process of its tree that listens.
    pub owner: u32,
    /// The socket's kernel address; 0 for a listener found in /proc at attach.
    pub skaddr: u64,
}

/// The key of a listening port: an accepted socket has its listener's family (IPv4
/// connections to a dual-stack IPv6 listener included) and port.
pub const fn listening_key(family: u16, port: u16) -> u32 {
    (family as u32) << 16 | port as u32
}

/// A TCP socket of a target, from connect (or accept) to close.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedSocket {
    /// The target's tgid.
    pub target: u32,
    /// `direction::*` as u32.
    pub direction: u32,
    /// `socket_state::*`.
    pub state: u32,
    /// The keepalive timer gave up on it (its abort's ETIMEDOUT is then not a
    /// retransmission timeout).
    pub keepalive_timeout: u32,
    /// When its handshake ended.
    pub established_ns: u64,
}

/// [`TrackedSocket::state`].
pub mod socket_state {
    /// Connecting: its handshake is under way.
    pub const CONNECTING: u32 = 0;
    /// Accepted on a port the target listens on, but a listener on the same port in
    /// another network namespace would look the same: it is the target's once a process
    /// of the target's tree reads it.
    pub const UNCONFIRMED: u32 = 1;
    /// Open, and counted: its open was sent, its close will be.
    pub const OPEN: u32 = 2;
}

/// Marks a field the running kernel's tracepoint lacks.
pub const ABSENT: u32 = u32::MAX;

/// Where each field the kernel hooks read sits in its tracepoint's record (a byte offset),
/// read by the agent from tracefs `format` files at start-up: Rust eBPF has no CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `sock:inet_sock_set_state`.
    pub state_skaddr: u32,
    pub state_oldstate: u32,
    pub state_newstate: u32,
    pub state_sport: u32,
    pub state_dport: u32,
    pub state_family: u32,
    pub state_protocol: u32,
    /// `sock:inet_sk_error_report`.
    pub error_error: u32,
    pub error_sport: u32,
    pub error_dport: u32,
    pub error_protocol: u32,
    /// `tcp:tcp_send_reset`; `reason` is [`ABSENT`] before Linux 6.10.
    pub send_reset_skaddr: u32,
    pub send_reset_reason: u32,
    /// The value of `SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`, from the format's print
    /// table; [`ABSENT`] when the kernel does not name it.
    pub keepalive_timeout_reason: u32,
    /// `tcp:tcp_receive_reset`.
    pub receive_reset_skaddr: u32,
    /// `tcp:tcp_retransmit_skb`; `err` is [`ABSENT`] before Linux 6.17, which also
    /// traces failed attempts.
    pub retransmit_skaddr: u32,
    pub retransmit_err: u32,
    /// `sock:sock_recv_length` (Linux 6.3); [`ABSENT`] without it, and inbound
    /// connections are then the target's by port alone.
    pub recv_sk: u32,
    pub recv_protocol: u32,
    /// `task:task_newtask`.
    pub newtask_pid: u32,
    pub newtask_comm: u32,
    pub newtask_clone_flags: u32,
    /// `sched:sched_process_exec`: the `__data_loc` of the file name.
    pub exec_filename: u32,
    /// `sched:sched_process_exit`; [`ABSENT`] before Linux 6.16, where the exit of the
    /// thread-group leader stands for the process's.
    pub process_exit_group_dead: u32,
    /// `syscalls:sys_enter_exit_group`; [`ABSENT`] without syscall tracepoints.
    pub exit_group_error_code: u32,
}

impl Layout {
    /// Every field absent: where the agent starts before it reads the formats, and what
    /// a hook the kernel lacks leaves behind.
    pub const ABSENT: Layout = Layout {
        state_skaddr: ABSENT,
        state_oldstate: ABSENT,
        state_newstate: ABSENT,
        state_sport: ABSENT,
        state_dport: ABSENT,
        state_family: ABSENT,
        state_protocol: ABSENT,
        error_error: ABSENT,
        error_sport: ABSENT,
        error_dport: ABSENT,
        error_protocol: ABSENT,
        send_reset_skaddr: ABSENT,
        send_reset_reason: ABSENT,
        keepalive_timeout_reason: ABSENT,
        receive_reset_skaddr: ABSENT,
        retransmit_skaddr: ABSENT,
        retransmit_err: ABSENT,
        recv_sk: ABSENT,
        recv_protocol: ABSENT,
        newtask_pid: ABSENT,
        newtask_comm: ABSENT,
        newtask_clone_flags: ABSENT,
        exec_filename: ABSENT,
        process_exit_group_dead: ABSENT,
        exit_group_error_code: ABSENT,
    };
}
const _: () = assert!(core::mem::size_of::<Layout>() == 25 * 4);

/// Key of the in-flight map: requests are identified per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InFlightKey {
    /// Process id of the proxy.
    pub tgid: u32,
    /// Zero.
    pub pad: u32,
    /// The proxy's request id.
    pub id: u64,
}
const _: () = assert!(core::mem::size_of::<InFlightKey>() == 16);

/// The C layouts of probe ABI v1's arguments (`mcp_probes`), as the kernel reads them.
pub mod abi {
    /// `ProbeStr`: a `(ptr, len)` string.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Str {
        /// User-space address of the first byte.
        pub ptr: u64,
        /// Length in bytes, untrusted.
        pub len: u64,
    }

    /// `RequestEnd`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct RequestEnd {
        pub method: Str,
        pub transport: Str,
        pub identity: Str,
        pub server: Str,
        pub tool: Str,
        /// `Status` value.
        pub status: u32,
        /// Microseconds since the request started, as the proxy measured it; 0 = unknown
        /// (every proxy built before the field was named).
        pub elapsed_us: u32,
    }
    const _: () = assert!(core::mem::size_of::<RequestEnd>() == 88);

    /// `AclCheck`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct AclCheck {
        pub identity: Str,
        pub server: Str,
        pub tool: Str,
        /// `Decision` value (low 32 bits) and a reserved zero.
        pub decision: u64,
    }
    const _: () = assert!(core::mem::size_of::<AclCheck>() == 56);

    /// Every other argument struct: one string and 8 bytes of scalars (`BackendConnect`,
    /// `BackendDisconnect`, `Session`, `ToolCache`, `ClassifierLookup`, `ChildSpawn`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct Labelled {
        pub label: Str,
        /// The scalars as one little-endian u64 (first u32 in the low bits).
        pub value: u64,
    }
    const _: () = assert!(core::mem::size_of::<Labelled>() == 24);
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; every bit pattern is valid.
    unsafe impl aya::Pod for crate::InFlightKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Tracked {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Layout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::TrackedSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Listener {}
}
