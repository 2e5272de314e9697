//! The probe functions themselves and the ELF note that lists them.
//!
//! Each probe is a naked function whose first instruction is a 5-byte NOP: the kernel
//! (6.x) turns a uprobe on a nop5 into a cheap optimized probe (~0.5 µs per hit instead
//! of ~3.6 µs on another instruction, and ~9 µs on a bare `ret`). Naked, so that rustc
//! adds no prologue before the NOP.

use crate::{
    AclCheck, BackendConnect, BackendDisconnect, ChildSpawn, ClassifierLookup, RequestEnd, Session, ToolCache,
};

#[cfg(target_arch = "x86_64")]
macro_rules! probe_body {
    () => {
        core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
    };
}

#[cfg(target_arch = "aarch64")]
macro_rules! probe_body {
    () => {
        core::arch::naked_asm!("nop", "ret")
    };
}

/// Probe: request `id` started.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_request_start(_id: u64) {
    probe_body!()
}

/// Probe: request `id` ended; `end` points to its labels and status.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_request_end(_id: u64, _end: *const RequestEnd) {
    probe_body!()
}

/// Probe: the proxy's ACL decided whether `check.identity` may call `check.tool`.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_acl_decision(_check: *const AclCheck) {
    probe_body!()
}

/// Probe: a client failed to authenticate; `reason` is an `AuthFailure` value.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_auth_failure(_reason: u32) {
    probe_body!()
}

/// Probe: the proxy starts connecting backend connection `connection`.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_backend_connect_start(_connection: u64) {
    probe_body!()
}

/// Probe: connecting `connection` ended, connected or not.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_backend_connect_end(_connection: u64, _end: *const BackendConnect) {
    probe_body!()
}

/// Probe: the connected backend connection `connection` is gone.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_backend_disconnect(_connection: u64, _disconnect: *const BackendDisconnect) {
    probe_body!()
}

/// Probe: the proxy's configuration names `count` backends.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_backends_configured(_count: u64) {
    probe_body!()
}

/// Probe: one pass of the idle reaper began.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_idle_reaper_run() {
    probe_body!()
}

/// Probe: client session `session` opened.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_session_open(_session: u64, _info: *const Session) {
    probe_body!()
}

/// Probe: client session `session` closed.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_session_close(_session: u64, _info: *const Session) {
    probe_body!()
}

/// Probe: a backend's tool cache now holds `cache.entries` tools.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_tool_cache_size(_cache: *const ToolCache) {
    probe_body!()
}

/// Probe: one lookup in the tool classifier's cache, hit or miss.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_classifier_cache(_lookup: *const ClassifierLookup) {
    probe_body!()
}

/// Probe: the proxy spawned a child process for a stdio backend.
#[unsafe(no_mangle)]
#[unsafe(naked)]
pub extern "C" fn mcp_probe_child_spawn(_spawn: *const ChildSpawn) {
    probe_body!()
}

// `.note.mcp_probes`: a non-allocated note section (like USDT's `.note.stapsdt`) that
// `strip` keeps. The linker resolves `.8byte <symbol>` in a non-allocated section to the
// link-time address even in a PIE, so the observer can find every probe without symbols.
//
// Note layout (4-byte aligned, owner "MCP"):
//   type 1 (ABI):   desc = u32 ABI version
//   type 2 (probe): desc = u64 address, NUL-terminated probe name
// The symbol `mcp_probes_abi_v1` is an alias of the first probe: it marks ABI v1 in the
// symbol table and is kept as long as the probes are.
macro_rules! probe_notes {
    ($($name:literal),+) => {
        core::arch::global_asm!(
            ".globl mcp_probes_abi_v1",
            ".set mcp_probes_abi_v1, mcp_probe_request_start",
            ".pushsection .note.mcp_probes, \"\", %note",
            ".balign 4",
            ".4byte 4, 4, 1",
            ".asciz \"MCP\"",
            ".4byte 1",
            $(
                ".balign 4",
                ".4byte 4, 2f - 1f, 2",
                ".asciz \"MCP\"",
                "1:",
                concat!(".8byte mcp_probe_", $name),
                concat!(".asciz \"", $name, "\""),
                "2:",
            )+
            ".balign 4",
            ".popsection",
        );
    };
}

probe_notes!(
    "request_start",
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
    "child_spawn"
);
