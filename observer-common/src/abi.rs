//! The C layouts of probe ABI v1's arguments (`mcp_probes`), as the kernel reads them.

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
