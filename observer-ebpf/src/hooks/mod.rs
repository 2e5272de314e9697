//! Kernel hooks on stable tracepoints: what the proxy *does* (its TCP connections and its
//! child processes), seen even when it has no probes. Field offsets come from [`LAYOUT`],
//! which the agent fills from tracefs `format` files.
pub mod tcp;
pub mod tree;

use aya_ebpf::programs::TracePointContext;
use observer_common::{ABSENT, Layout};

/// Set by the agent at load; all zero means "not loaded by the agent".
#[unsafe(no_mangle)]
static LAYOUT: Layout = Layout {
    state_skaddr: 0,
    state_oldstate: 0,
    state_newstate: 0,
    state_sport: 0,
    state_dport: 0,
    state_family: 0,
    state_protocol: 0,
    error_error: 0,
    error_sport: 0,
    error_dport: 0,
    error_protocol: 0,
    send_reset_skaddr: 0,
    send_reset_reason: ABSENT,
    keepalive_timeout_reason: ABSENT,
    receive_reset_skaddr: 0,
    retransmit_skaddr: 0,
    retransmit_err: ABSENT,
    recv_sk: ABSENT,
    recv_protocol: ABSENT,
    newtask_pid: 0,
    newtask_comm: 0,
    newtask_clone_flags: 0,
    exec_filename: 0,
    process_exit_group_dead: ABSENT,
    exit_group_error_code: ABSENT,
};

pub fn layout() -> &'static Layout {
    // SAFETY: the loader may have rewritten the global before load; read it as memory,
    // not as the constant the compiler saw.
    unsafe { &*core::ptr::read_volatile(&&raw const LAYOUT) }
}

/// Reads field `T` at `offset` of the tracepoint's record.
#[inline(always)]
pub fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel fails cleanly past the record.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}
