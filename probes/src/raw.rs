//! The probe functions themselves and the ELF note that lists them.
//!
//! Each probe is a naked function whose first instruction is a 5-byte NOP: the kernel
//! (6.x) turns a uprobe on a nop5 into a cheap optimized probe (~0.5 µs per hit instead
//! of ~3.6 µs on another instruction, and ~9 µs on a bare `ret`). Naked, so that rustc
//! adds no prologue before the NOP.

use crate::RequestEnd;

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

probe_notes!("request_start", "request_end");
