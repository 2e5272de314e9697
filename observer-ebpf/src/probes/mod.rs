//! One module per group of probe functions; each program is named after its probe.
pub mod access;
pub mod cache;
pub mod pool;
pub mod request;
pub mod session;

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    programs::ProbeContext,
};
use observer_common::{abi, counter};

use crate::{
    event::{read_str, send},
    hooks::tree,
    maps::count,
};

/// The target's tgid when this hit counts: see [`tree::observed`]. The agent attaches
/// each executable's uprobes with that executable's id as their cookie.
#[inline(always)]
pub fn observed(ctx: &ProbeContext) -> Option<u32> {
    // SAFETY: the helper only reads the program's attach cookie.
    tree::observed(unsafe { bpf_get_attach_cookie(ctx.as_ptr()) })
}

/// Reads the probe's struct argument number `arg`; a bad pointer is counted, not sent.
#[inline(always)]
pub fn read_arg<T: Copy + 'static>(ctx: &ProbeContext, arg: usize) -> Option<T> {
    let ptr = ctx.arg::<*const T>(arg)?;
    // SAFETY: bpf_probe_read_user fails cleanly on an unmapped or null address.
    match unsafe { bpf_probe_read_user(ptr) } {
        Ok(value) => Some(value),
        Err(_) => {
            count(counter::BAD_USER_POINTER);
            None
        }
    }
}

/// The shape most probes share: an optional id argument, then a pointer to one string and
/// 8 bytes of scalars; the string goes to slot `FIELD`, the scalars to `value`.
#[inline(always)]
pub fn send_labelled<const FIELD: usize>(ctx: &ProbeContext, target: u32, kind: u32, with_id: bool) {
    let (id, arg) = if with_id { (ctx.arg::<u64>(0).unwrap_or(0), 1) } else { (0, 0) };
    let Some(labelled) = read_arg::<abi::Labelled>(ctx, arg) else { return };
    send(target, kind, id, labelled.value, |ev| {
        let mut flags = 0;
        // SAFETY: `ev` is the reserved event.
        unsafe { read_str::<FIELD>(&labelled.label, ev, &mut flags) };
        flags
    });
}
