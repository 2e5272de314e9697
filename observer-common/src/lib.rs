//! Types shared by the kernel side (`observer-ebpf`) and the agent (`observer`).
//!
//! Every probe sends one [`ProbeEvent`] through the ring buffer: a common header, the
//! probe's id and scalar argument, and up to five bounded strings, each in the slot of
//! the label it becomes. The agent dispatches on [`EventHeader::kind`] alone. All types
//! are `#[repr(C)]` without implicit padding.
#![no_std]

/// Name of the ring buffer map in the eBPF object.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices in [`counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the in-flight request map (key [`InFlightKey`], value start time in ns).
pub const IN_FLIGHT_MAP: &str = "IN_FLIGHT";
/// Global set by the agent: submit with a forced wakeup once this many bytes wait.
pub const WAKEUP_THRESHOLD_GLOBAL: &str = "WAKEUP_THRESHOLD";

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
    /// One past the last kind.
    pub const END: u32 = 14;

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
    ];
}

/// Indices into the per-CPU `COUNTERS` array. The agent sums them over CPUs at scrape.
pub mod counter {
    /// A probe argument pointed to memory the kernel could not read.
    pub const BAD_USER_POINTER: u32 = 0;
    /// A request start could not be recorded because the in-flight map was full.
    pub const IN_FLIGHT_FULL: u32 = 1;
    /// Requests whose start was recorded.
    pub const REQUESTS_STARTED: u32 = 2;
    /// Requests whose end matched a recorded start.
    pub const REQUESTS_FINISHED: u32 = 3;
    /// A request start reused the id of a request still in flight (a proxy bug); the
    /// first start is kept.
    pub const DUPLICATE_START: u32 = 4;
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
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe fired.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);

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

/// [`ProbeEvent::flags`]: a request end, disconnect or close whose start the kernel did
/// not see (the observer attached later, or the in-flight map was full); `duration_ns` is 0.
pub const FLAG_NO_START: u32 = 1 << 0;
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
    /// Bytes used in each string slot, in [`field`] order; 0 for an absent string.
    pub lens: [u16; field::COUNT],
    /// Zero.
    pub pad: u16,
    /// JSON-RPC method.
    pub method: [u8; METHOD_CAP],
    /// Client transport.
    pub transport: [u8; TRANSPORT_CAP],
    /// Client identity.
    pub identity: [u8; IDENTITY_CAP],
    /// Backend server.
    pub server: [u8; SERVER_CAP],
    /// Tool name.
    pub tool: [u8; TOOL_CAP],
}
const _: () = assert!(
    core::mem::size_of::<ProbeEvent>()
        == 56 + METHOD_CAP + TRANSPORT_CAP + IDENTITY_CAP + SERVER_CAP + TOOL_CAP
);

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
        /// Zero.
        pub reserved: u32,
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
}
