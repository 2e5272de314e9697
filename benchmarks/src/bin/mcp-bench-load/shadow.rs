//! Exact copies of three probes that no observer attaches to: the same machine code (the
//! probe ABI's NOP, then a return) at another address, so the unobserved side of a
//! comparison runs in the same process, in the same window schedule, as the observed side.

use mcp_probes::RequestEnd;

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

#[unsafe(naked)]
pub extern "C" fn shadow_request_start(_id: u64) {
    probe_body!()
}

#[unsafe(naked)]
pub extern "C" fn shadow_request_end(_id: u64, _end: *const RequestEnd) {
    probe_body!()
}

#[unsafe(naked)]
pub extern "C" fn shadow_idle_reaper_run() {
    probe_body!()
}
