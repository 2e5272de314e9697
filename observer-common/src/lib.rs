//! Types shared by the kernel side (`observer-ebpf`) and the agent (`observer`).
//!
//! Every ring-buffer record starts with an [`EventHeader`]; the agent dispatches on
//! [`EventHeader::kind`] alone. All types are `#[repr(C)]` without implicit padding.
#![no_std]

/// Name of the ring buffer map in the eBPF object.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices in [`counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the in-flight request map (key [`request::InFlightKey`], value start time).
pub const IN_FLIGHT_MAP: &str = "IN_FLIGHT";
/// Global set by the agent: submit with a forced wakeup once this many bytes wait.
pub const WAKEUP_THRESHOLD_GLOBAL: &str = "WAKEUP_THRESHOLD";

/// Event kinds: the values of [`EventHeader::kind`].
pub mod kind {
    /// A [`crate::request::RequestEndEvent`].
    pub const REQUEST_END: u32 = 1;
}

/// Indices into the per-CPU `COUNTERS` array. The agent sums them over CPUs at scrape.
pub mod counter {
    /// A request-end event could not be reserved in the ring buffer (lost).
    pub const REQUEST_END_LOST: u32 = 0;
    /// A probe argument pointed to memory the kernel could not read.
    pub const BAD_USER_POINTER: u32 = 1;
    /// A request start could not be recorded because the in-flight map was full.
    pub const IN_FLIGHT_FULL: u32 = 2;
    /// Requests whose start was recorded.
    pub const REQUESTS_STARTED: u32 = 3;
    /// Requests whose end matched a recorded start.
    pub const REQUESTS_FINISHED: u32 = 4;
    /// A request start reused the id of a request still in flight (a proxy bug); the
    /// first start is kept.
    pub const DUPLICATE_START: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = 6;
}

/// Header of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Process (thread-group) id that hit the probe.
    pub tgid: u32,
    /// `bpf_ktime_get_ns()` when the event was produced.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 16);

/// The request probes: `mcp_probe_request_start` / `mcp_probe_request_end`.
pub mod request {
    use crate::EventHeader;

    /// Bytes kept of each string label; longer values are truncated and flagged.
    pub const METHOD_CAP: usize = 64;
    pub const TRANSPORT_CAP: usize = 32;
    pub const IDENTITY_CAP: usize = 128;
    pub const SERVER_CAP: usize = 64;
    pub const TOOL_CAP: usize = 128;

    /// [`RequestEndEvent::flags`]: the start of this request was not seen (the observer
    /// attached mid-request, or the in-flight map was full); `duration_ns` is 0.
    pub const FLAG_NO_START: u32 = 1 << 0;
    /// Bit `FLAG_TRUNCATED_SHIFT + field` is set when that string was truncated.
    pub const FLAG_TRUNCATED_SHIFT: u32 = 8;
    /// Bit `FLAG_UNREADABLE_SHIFT + field` is set when that string's pointer was bad.
    pub const FLAG_UNREADABLE_SHIFT: u32 = 16;
    /// Field numbers for the two shifts above, in struct order.
    pub const FIELD_METHOD: u32 = 0;
    pub const FIELD_TRANSPORT: u32 = 1;
    pub const FIELD_IDENTITY: u32 = 2;
    pub const FIELD_SERVER: u32 = 3;
    pub const FIELD_TOOL: u32 = 4;

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

    /// The C layout of a `(ptr, len)` string in probe ABI v1 (`mcp_probes::ProbeStr`).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct AbiStr {
        /// User-space address of the first byte.
        pub ptr: u64,
        /// Length in bytes, untrusted.
        pub len: u64,
    }

    /// The C layout of `mcp_probes::RequestEnd` (ABI v1).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct AbiRequestEnd {
        /// JSON-RPC method.
        pub method: AbiStr,
        /// Client transport.
        pub transport: AbiStr,
        /// Client identity.
        pub identity: AbiStr,
        /// Backend server.
        pub server: AbiStr,
        /// Tool name.
        pub tool: AbiStr,
        /// `mcp_probes::Status` value.
        pub status: u32,
        /// Reserved, zero.
        pub reserved: u32,
    }
    const _: () = assert!(core::mem::size_of::<AbiRequestEnd>() == 88);

    /// A finished request, as sent through the ring buffer.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    pub struct RequestEndEvent {
        /// Common header; `kind` is [`crate::kind::REQUEST_END`].
        pub header: EventHeader,
        /// The proxy's request id.
        pub id: u64,
        /// End time minus start time, measured in the kernel; 0 with [`FLAG_NO_START`].
        pub duration_ns: u64,
        /// `mcp_probes::Status` value as the proxy passed it.
        pub status: u32,
        /// `FLAG_*` bits.
        pub flags: u32,
        /// Bytes used in `method`.
        pub method_len: u16,
        /// Bytes used in `transport`.
        pub transport_len: u16,
        /// Bytes used in `identity`.
        pub identity_len: u16,
        /// Bytes used in `server`.
        pub server_len: u16,
        /// Bytes used in `tool`.
        pub tool_len: u16,
        /// Zero.
        pub pad: [u16; 3],
        /// JSON-RPC method bytes.
        pub method: [u8; METHOD_CAP],
        /// Transport bytes.
        pub transport: [u8; TRANSPORT_CAP],
        /// Identity bytes.
        pub identity: [u8; IDENTITY_CAP],
        /// Server bytes.
        pub server: [u8; SERVER_CAP],
        /// Tool bytes.
        pub tool: [u8; TOOL_CAP],
    }
    const _: () = assert!(
        core::mem::size_of::<RequestEndEvent>()
            == 56 + METHOD_CAP + TRANSPORT_CAP + IDENTITY_CAP + SERVER_CAP + TOOL_CAP
    );
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; every bit pattern is valid.
    unsafe impl aya::Pod for crate::request::InFlightKey {}
}
