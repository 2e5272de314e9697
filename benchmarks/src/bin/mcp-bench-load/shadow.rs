//! Exact copies of two probes that no observer attaches to: the same machine code (a nop5
//! and `ret`) at another address, so the unobserved side of a comparison runs in the same
//! process, in the same window schedule, as the observed side.

use mcp_probes::RequestEnd;

#[unsafe(naked)]
pub extern "C" fn shadow_request_start(_id: u64) {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
}

#[unsafe(naked)]
pub extern "C" fn shadow_request_end(_id: u64, _end: *const RequestEnd) {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
}

#[unsafe(naked)]
pub extern "C" fn shadow_idle_reaper_run() {
    core::arch::naked_asm!(".byte 0x0f, 0x1f, 0x44, 0x00, 0x00", "ret")
}
