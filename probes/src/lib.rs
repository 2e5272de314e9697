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
//!
//! # Guards
//!
//! With the `std` feature (on by default), [`Request`], [`ClientSession`] and
//! [`BackendConnection`] are the easy way to wire the probes correctly: each allocates its
//! own id, fires its start probe when made and its end probe exactly once — when the proxy
//! says how it ended, or on drop (a future dropped by a timeout or a client that went
//! away) with a stated default. The functions below are the raw API they are built on.
//!
//! # Features
//!
//! - `std` (on by default): the guards. Without it the crate is `no_std`.
//!
//! # For benchmarks only: `--cfg mcp_probes_disabled`
//!
//! Built with `RUSTFLAGS="--cfg mcp_probes_disabled"`, the safe wrappers
//! ([`request_start`], [`request_end`], … and so the guards) do nothing and call no probe,
//! so a benchmark can compare a proxy built with its probe calls against the same proxy
//! without them. A `cfg` rather than a feature: Cargo unifies features, so any crate of a
//! build enabling one would silently switch off every probe of the binary. The raw
//! `mcp_probe_*` functions and the `.note.mcp_probes` ELF note stay.
#![no_std]

#[cfg(feature = "std")]
mod guards;
mod raw;

#[cfg(feature = "std")]
pub use guards::{BackendConnection, ClientSession, Request};

/// The README's example, compiled and run by `cargo test`.
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeExample;

pub use raw::{
    mcp_probe_acl_decision, mcp_probe_auth_failure, mcp_probe_backend_connect_end,
    mcp_probe_backend_connect_start, mcp_probe_backend_disconnect, mcp_probe_backends_configured,
    mcp_probe_child_spawn, mcp_probe_classifier_cache, mcp_probe_idle_reaper_run, mcp_probe_request_end,
    mcp_probe_request_start, mcp_probe_session_close, mcp_probe_session_open, mcp_probe_tool_cache_size,
};

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
    /// Microseconds since the request started, as the proxy measured it (saturating at
    /// `u32::MAX`, about 71 minutes); 0 = unknown. The observer uses it only when it does
    /// not attach `request_start` (`--no-request-latency`); otherwise it measures itself.
    pub elapsed_us: u32,
}

/// What the ACL decided. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow = 0,
    Deny = 1,
}

/// Why authentication failed. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials at all (no `Authorization` header).
    MissingCredentials = 0,
    /// Credentials the proxy does not accept.
    InvalidCredentials = 1,
    /// Credentials that were valid once and have expired.
    Expired = 2,
    /// Anything else.
    Other = 3,
}

/// Why the proxy connected a backend. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectKind {
    /// The backend's first connection in the proxy's life (start-up or first use).
    Initial = 0,
    /// A reconnection on demand, after the backend was disconnected (idle-reaped, failed).
    Lazy = 1,
}

/// How connecting a backend ended. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectResult {
    Ok = 0,
    Error = 1,
}

/// Why a connected backend went away. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The idle reaper closed it.
    IdleReaped = 0,
    /// It failed (the child exited, the connection broke).
    Error = 1,
    /// The proxy is shutting down.
    Shutdown = 2,
}

/// Why a client session closed. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionCloseReason {
    /// The client ended it (HTTP `DELETE`, stdin closed, SSE stream closed).
    ClientClosed = 0,
    /// The proxy expired it after inactivity.
    Expired = 1,
    /// The proxy is shutting down.
    Shutdown = 2,
    /// A transport error ended it.
    Error = 3,
}

/// Whether a cache lookup found its entry. The numeric values are part of the ABI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit = 0,
    Miss = 1,
}

/// Argument of [`mcp_probe_acl_decision`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AclCheck {
    /// Identity whose call was checked.
    pub identity: ProbeStr,
    /// Backend server of the tool.
    pub server: ProbeStr,
    /// Tool name as the backend knows it.
    pub tool: ProbeStr,
    /// A [`Decision`] value.
    pub decision: u32,
    /// Zero.
    pub reserved: u32,
}

/// Argument of [`mcp_probe_backend_connect_end`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BackendConnect {
    /// Backend server name.
    pub server: ProbeStr,
    /// A [`ConnectKind`] value.
    pub kind: u32,
    /// A [`ConnectResult`] value.
    pub result: u32,
}

/// Argument of [`mcp_probe_backend_disconnect`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BackendDisconnect {
    /// Backend server name.
    pub server: ProbeStr,
    /// A [`DisconnectReason`] value.
    pub reason: u32,
    /// Zero.
    pub reserved: u32,
}

/// Argument of [`mcp_probe_session_open`] and [`mcp_probe_session_close`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Session {
    /// Client transport, e.g. `streamable_http`, `sse` or `stdio`.
    pub transport: ProbeStr,
    /// A [`SessionCloseReason`] value; ignored at open.
    pub reason: u32,
    /// Zero.
    pub reserved: u32,
}

/// Argument of [`mcp_probe_tool_cache_size`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ToolCache {
    /// Backend server name.
    pub server: ProbeStr,
    /// Tools the cache now holds for this backend.
    pub entries: u64,
}

/// Argument of [`mcp_probe_classifier_cache`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClassifierLookup {
    /// Backend server whose tool was classified.
    pub server: ProbeStr,
    /// A [`CacheOutcome`] value.
    pub outcome: u32,
    /// Zero.
    pub reserved: u32,
}

/// Argument of [`mcp_probe_child_spawn`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ChildSpawn {
    /// Backend server the child serves.
    pub server: ProbeStr,
    /// Process id of the child.
    pub pid: u32,
    /// Zero.
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
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_request_start(id);
}

/// Marks the end of request `id` (which [`request_start`] began), without a latency of the
/// proxy's own: the observer measures it between the two probes.
#[inline]
pub fn request_end(id: u64, labels: &RequestLabels<'_>) {
    end_request(id, labels, 0);
}

/// Marks the end of request `id`, `elapsed` after it started as the proxy measured it: an
/// observer that attaches only `request_end` (one uprobe hit per request) still has latency.
#[inline]
pub fn request_end_after(id: u64, labels: &RequestLabels<'_>, elapsed: core::time::Duration) {
    // 0 means unknown: a measured 0 is sent as 1 µs.
    end_request(id, labels, u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX).max(1));
}

/// The bytes an observer keeps of each request label, in [`RequestEnd`] order (method,
/// transport, identity, server, tool; docs/probe-abi.md).
#[doc(hidden)]
pub const LABEL_CAPS: [usize; 5] = [64, 32, 128, 64, 128];

/// Room for every request label at its cap.
const LABELS_ROOM: usize = LABEL_CAPS[0] + LABEL_CAPS[1] + LABEL_CAPS[2] + LABEL_CAPS[3] + LABEL_CAPS[4];

/// The labels' [`ProbeStr`]s: copies back to back in `room`, in field order, when each is
/// within its cap (`caps`); the observer then takes them all with one read of the proxy's
/// memory instead of one each (each read costs the kernel more than the copy costs here).
/// Longer ones go as they are: the observer cuts and flags them one by one.
#[inline]
fn pack_labels<const N: usize>(
    strings: [&str; N],
    caps: [usize; N],
    room: &mut [core::mem::MaybeUninit<u8>; LABELS_ROOM],
) -> [ProbeStr; N] {
    if !strings.iter().zip(caps).all(|(s, cap)| s.len() <= cap) {
        return strings.map(ProbeStr::new);
    }
    let mut at = 0;
    strings.map(|s| {
        let to = room[at..at + s.len()].as_mut_ptr().cast::<u8>();
        // SAFETY: `to` has room for `s` (each label is within its cap, and the room is
        // the sum of every cap); a string and a buffer of ours do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), to, s.len()) };
        at += s.len();
        ProbeStr { ptr: to.cast_const(), len: s.len() }
    })
}

#[inline]
fn end_request(id: u64, labels: &RequestLabels<'_>, elapsed_us: u32) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let strings = [labels.method, labels.transport, labels.identity, labels.server, labels.tool];
    let mut room = [core::mem::MaybeUninit::<u8>::uninit(); LABELS_ROOM];
    let [method, transport, identity, server, tool] = pack_labels(strings, LABEL_CAPS, &mut room);
    let end =
        RequestEnd { method, transport, identity, server, tool, status: labels.status as u32, elapsed_us };
    mcp_probe_request_end(id, &end);
}

/// The ACL allowed or denied `identity` a call to `tool` of `server`.
#[inline]
pub fn acl_decision(identity: &str, server: &str, tool: &str, decision: Decision) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let mut room = [core::mem::MaybeUninit::<u8>::uninit(); LABELS_ROOM];
    // Identity, server and tool: the last three request labels, with their caps.
    let caps = [LABEL_CAPS[2], LABEL_CAPS[3], LABEL_CAPS[4]];
    let [identity, server, tool] = pack_labels([identity, server, tool], caps, &mut room);
    let check = AclCheck { identity, server, tool, decision: decision as u32, reserved: 0 };
    mcp_probe_acl_decision(&check);
}

/// A client failed to authenticate.
#[inline]
pub fn auth_failure(reason: AuthFailure) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_auth_failure(reason as u32);
}

/// Connecting backend connection `connection` starts. Connection ids must be unique among
/// the process's backend connections; the observer pairs start, end and disconnect by them.
#[inline]
pub fn backend_connect_start(connection: u64) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_backend_connect_start(connection);
}

/// Connecting `connection` (to `server`) ended.
#[inline]
pub fn backend_connect_end(connection: u64, server: &str, kind: ConnectKind, result: ConnectResult) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let end = BackendConnect { server: ProbeStr::new(server), kind: kind as u32, result: result as u32 };
    mcp_probe_backend_connect_end(connection, &end);
}

/// The connected `connection` (to `server`) went away.
#[inline]
pub fn backend_disconnect(connection: u64, server: &str, reason: DisconnectReason) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let disconnect = BackendDisconnect { server: ProbeStr::new(server), reason: reason as u32, reserved: 0 };
    mcp_probe_backend_disconnect(connection, &disconnect);
}

/// The configuration names `count` backends. Call it at start-up, after a reload and at
/// every idle-reaper pass, so that an observer attached later learns it soon.
#[inline]
pub fn backends_configured(count: u64) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_backends_configured(count);
}

/// An idle-reaper pass begins.
#[inline]
pub fn idle_reaper_run() {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_idle_reaper_run();
}

/// Client session `session` opened on `transport`. Session ids must be unique among the
/// process's open sessions.
#[inline]
pub fn session_open(session: u64, transport: &str) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let info = Session { transport: ProbeStr::new(transport), reason: 0, reserved: 0 };
    mcp_probe_session_open(session, &info);
}

/// Client session `session` on `transport` closed.
#[inline]
pub fn session_close(session: u64, transport: &str, reason: SessionCloseReason) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let info = Session { transport: ProbeStr::new(transport), reason: reason as u32, reserved: 0 };
    mcp_probe_session_close(session, &info);
}

/// The tool cache of `server` now holds `entries` tools.
#[inline]
pub fn tool_cache_size(server: &str, entries: u64) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_tool_cache_size(&ToolCache { server: ProbeStr::new(server), entries });
}

/// One classifier-cache lookup for a tool of `server`.
#[inline]
pub fn classifier_cache(server: &str, outcome: CacheOutcome) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    let lookup = ClassifierLookup { server: ProbeStr::new(server), outcome: outcome as u32, reserved: 0 };
    mcp_probe_classifier_cache(&lookup);
}

/// The proxy spawned child process `pid` for the stdio backend `server`.
#[inline]
pub fn child_spawn(server: &str, pid: u32) {
    if cfg!(mcp_probes_disabled) {
        return;
    }
    mcp_probe_child_spawn(&ChildSpawn { server: ProbeStr::new(server), pid, reserved: 0 });
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
        let probes: [(&str, *const u8); 14] = [
            ("request_start", mcp_probe_request_start as *const u8),
            ("request_end", mcp_probe_request_end as *const u8),
            ("acl_decision", mcp_probe_acl_decision as *const u8),
            ("auth_failure", mcp_probe_auth_failure as *const u8),
            ("backend_connect_start", mcp_probe_backend_connect_start as *const u8),
            ("backend_connect_end", mcp_probe_backend_connect_end as *const u8),
            ("backend_disconnect", mcp_probe_backend_disconnect as *const u8),
            ("backends_configured", mcp_probe_backends_configured as *const u8),
            ("idle_reaper_run", mcp_probe_idle_reaper_run as *const u8),
            ("session_open", mcp_probe_session_open as *const u8),
            ("session_close", mcp_probe_session_close as *const u8),
            ("tool_cache_size", mcp_probe_tool_cache_size as *const u8),
            ("classifier_cache", mcp_probe_classifier_cache as *const u8),
            ("child_spawn", mcp_probe_child_spawn as *const u8),
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
        request_end_after(8, &labels, core::time::Duration::from_micros(1500));
        acl_decision("alice", "alpha", "echo", Decision::Deny);
        auth_failure(AuthFailure::InvalidCredentials);
        backend_connect_start(1);
        backend_connect_end(1, "alpha", ConnectKind::Initial, ConnectResult::Ok);
        backend_disconnect(1, "alpha", DisconnectReason::IdleReaped);
        backends_configured(2);
        idle_reaper_run();
        session_open(1, "stdio");
        session_close(1, "stdio", SessionCloseReason::ClientClosed);
        tool_cache_size("alpha", 4);
        classifier_cache("alpha", CacheOutcome::Hit);
        child_spawn("alpha", 42);
    }

    #[test]
    fn labels_within_their_caps_lie_back_to_back_in_field_order() {
        let mut room = [core::mem::MaybeUninit::uninit(); LABELS_ROOM];
        let strs = pack_labels(["tools/call", "stdio", "", "alpha", "echo"], LABEL_CAPS, &mut room);
        for pair in strs.windows(2) {
            assert_eq!(pair[0].ptr.wrapping_add(pair[0].len), pair[1].ptr, "back to back");
        }
        let total: usize = strs.iter().map(|s| s.len).sum();
        // SAFETY: the five copies fill the first `total` bytes of the room.
        let bytes = unsafe { core::slice::from_raw_parts(strs[0].ptr, total) };
        assert_eq!(bytes, b"tools/callstdioalphaecho");
        // One label past its cap: all five go as they are.
        let (method, long) = (*b"tools/call", [b'x'; LABEL_CAPS[4] + 1]);
        let (method, long) = (core::str::from_utf8(&method).unwrap(), core::str::from_utf8(&long).unwrap());
        let strs = pack_labels([method, "stdio", "", "alpha", long], LABEL_CAPS, &mut room);
        assert_eq!((strs[0].ptr, strs[4].ptr), (method.as_ptr(), long.as_ptr()));
    }

    #[test]
    fn argument_structs_have_the_documented_sizes() {
        assert_eq!(size_of::<RequestEnd>(), 88);
        assert_eq!(size_of::<AclCheck>(), 56);
        for size in [
            size_of::<BackendConnect>(),
            size_of::<BackendDisconnect>(),
            size_of::<Session>(),
            size_of::<ToolCache>(),
            size_of::<ClassifierLookup>(),
            size_of::<ChildSpawn>(),
        ] {
            assert_eq!(size, 24);
        }
    }
}
