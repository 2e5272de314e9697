//! The ring buffer's records: their kinds, header, string slots and flags, and how the
//! scalars of each kind are packed.

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
/// ([`REQUEST_LATENCY_GLOBAL`](crate::REQUEST_LATENCY_GLOBAL)); `duration_ns` is 0.
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
