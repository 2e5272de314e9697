//! Probe points for MCP proxies, ABI v1.
//!
//! A proxy calls these functions where something happens; each one does nothing at all
//! (a 5-byte NOP and `ret`, about 1–2 ns) until `mcp-observe` attaches a uprobe to it.
//! The observer then reads the arguments from the registers and the proxy's memory, so
//! the proxy needs no exporter code. The contract is documented in `docs/probe-abi.md`.
//!
//! The probe functions are found either through their symbols or, in a stripped binary,
//! through the `.note.mcp_probes` ELF note section that this crate emits: one note per
//! probe holding its link-time address and name.
#![no_std]

mod raw;

pub use raw::{mcp_probe_request_end, mcp_probe_request_start};

/// The ABI version carried by the `mcp_probes_abi_v1` marker and the ELF note.
pub const ABI_VERSION: u32 = 1;

/// A borrowed string as the observer reads it: a pointer and a length in bytes.
/// Never NUL-terminated; the observer reads at most a fixed number of bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeStr {
    /// First byte of the UTF-8 text.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl ProbeStr {
    /// Borrows `s` for the duration of a probe call.
    pub const fn new(s: &str) -> Self {
        Self { ptr: s.as_ptr(), len: s.len() }
    }
}

/// How a request ended. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A result was returned and it is not a tool error.
    Ok = 0,
    /// A JSON-RPC error response (unknown method or tool, invalid params, backend error).
    JsonrpcError = 1,
    /// A `tools/call` result with `isError: true`.
    ToolError = 2,
    /// The proxy gave up waiting for the backend.
    Timeout = 3,
    /// The proxy's ACL refused the call.
    AclDenied = 4,
    /// The client's credentials were missing or invalid.
    AuthFailed = 5,
    /// The backend could not be connected or started.
    ConnectFailed = 6,
}

/// What the proxy knows when a request ends. Passed by pointer to
/// [`mcp_probe_request_end`]; the strings must stay valid for the duration of the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestEnd {
    /// JSON-RPC method, e.g. `tools/call`.
    pub method: ProbeStr,
    /// Client transport, e.g. `streamable_http` or `stdio`.
    pub transport: ProbeStr,
    /// Authenticated identity of the client; empty when unknown.
    pub identity: ProbeStr,
    /// Backend server the request was routed to; empty when it never resolved to one.
    pub server: ProbeStr,
    /// Tool name as the backend knows it; empty for methods other than `tools/call`.
    pub tool: ProbeStr,
    /// A [`Status`] value.
    pub status: u32,
    /// Zero; reserved for later versions of ABI v1.
    pub reserved: u32,
}

/// Labels of a finished request, as `&str`s.
#[derive(Clone, Copy, Debug)]
pub struct RequestLabels<'a> {
    pub method: &'a str,
    pub transport: &'a str,
    pub identity: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    pub status: Status,
}

/// Marks the start of request `id`. Ids must be unique among the process's requests in
/// flight; the observer pairs start and end by (process, id) to measure latency.
#[inline]
pub fn request_start(id: u64) {
    mcp_probe_request_start(id);
}

/// Marks the end of request `id` (which [`request_start`] began).
#[inline]
pub fn request_end(id: u64, labels: &RequestLabels<'_>) {
    let end = RequestEnd {
        method: ProbeStr::new(labels.method),
        transport: ProbeStr::new(labels.transport),
        identity: ProbeStr::new(labels.identity),
        server: ProbeStr::new(labels.server),
        tool: ProbeStr::new(labels.tool),
        status: labels.status as u32,
        reserved: 0,
    };
    mcp_probe_request_end(id, &end);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel optimizes a uprobe only on a 5-byte NOP; anything before it (a push, a
    /// bare `ret`) costs 5–20× more per hit.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_probe_starts_with_a_nop5_then_returns() {
        const NOP5_RET: [u8; 6] = [0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3];
        let probes: [(&str, *const u8); 2] = [
            ("request_start", mcp_probe_request_start as *const u8),
            ("request_end", mcp_probe_request_end as *const u8),
        ];
        for (name, code) in probes {
            // SAFETY: reading the first bytes of a function's machine code.
            let bytes = unsafe { core::slice::from_raw_parts(code, NOP5_RET.len()) };
            assert_eq!(bytes, NOP5_RET, "mcp_probe_{name}");
        }
    }

    #[test]
    fn probes_are_callable_and_do_nothing() {
        request_start(7);
        let labels = RequestLabels {
            method: "tools/call",
            transport: "stdio",
            identity: "alice",
            server: "alpha",
            tool: "echo",
            status: Status::ToolError,
        };
        request_end(7, &labels);
    }
}
