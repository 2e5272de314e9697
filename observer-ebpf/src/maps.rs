//! Maps and helpers shared by every program.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use observer_common::counter;

/// Every event goes through this one ring buffer. The agent may resize it at load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Per-CPU counters, indexed by `observer_common::counter`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Bytes waiting in the ring buffer past which a submit wakes the agent up. Below it,
/// events are submitted without a wakeup and the agent drains on a timer: a wakeup per
/// event costs ~6 µs (an irq_work self-IPI) on a VM. Set by the agent at load.
#[unsafe(no_mangle)]
static WAKEUP_THRESHOLD: u64 = 1 << 20;

pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Atomic even though the slot is per-CPU: uprobe programs run with migration
        // disabled but stay preemptible, so two on one CPU can interleave.
        // The BPF target has no atomic RMW in `core::sync`; the intrinsic lowers to
        // BPF's atomic add instruction.
        // SAFETY: the map value is a live, aligned u64 for the program's duration.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}

/// Flags for `bpf_ringbuf_submit`: no wakeup unless the agent is falling behind.
pub fn submit_flags() -> u64 {
    // SAFETY: a plain read of a global the loader may have rewritten.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_THRESHOLD) };
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= threshold {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
