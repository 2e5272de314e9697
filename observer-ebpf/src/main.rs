//! mcp-observe's kernel programs: one module per hook (`probes/request.rs`, …).
#![no_std]
#![no_main]
// Atomic add on per-CPU counters (see maps::count): nightly builds this crate anyway.
#![feature(core_intrinsics)]
// Inline asm for `event::opaque`, the verifier's bound that LLVM must not fold away.
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod event;
mod hooks;
mod maps;
mod probes;

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the clock the agent compares ages against.
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
