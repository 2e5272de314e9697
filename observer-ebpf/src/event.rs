//! Building and sending a [`ProbeEvent`]: every probe goes through [`send`], so every
//! event is counted lost when the ring buffer is full, and every string is bounded.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_probe_read_kernel, bpf_probe_read_user},
};
use core::ptr::{addr_of_mut, write_volatile};
use observer_common::{
    CAPS, FLAG_TRUNCATED_SHIFT, FLAG_UNREADABLE_SHIFT, ProbeEvent, STRINGS_CAP, UNTIMED, abi, counter, field,
    kind, string_start,
};

use crate::maps::{EVENTS, count, submit_flags};

pub fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// Sends an event of `kind` for target `target` (kernel hooks run in any process's
/// context), stamped with the time if the agent reads it ([`kind::timed`]); see [`send_at`].
#[inline(always)]
pub fn send(target: u32, kind: u32, id: u64, value: u64, fill: impl FnOnce(*mut ProbeEvent) -> u32) {
    let ts_ns = if kind::timed(kind) { crate::now() } else { UNTIMED };
    send_at(target, kind, ts_ns, id, value, fill);
}

/// Reserves an event stamped `ts_ns`, fills the header, `id` and `value` and leaves every
/// string empty; `fill` then writes strings (with [`read_str`]) and the duration and
/// returns the flags.
#[inline(always)]
pub fn send_at(
    target: u32,
    kind: u32,
    ts_ns: u64,
    id: u64,
    value: u64,
    fill: impl FnOnce(*mut ProbeEvent) -> u32,
) {
    let Some(mut entry) = EVENTS.reserve::<ProbeEvent>(0) else {
        // The event is lost, and counted so that received + lost = sent.
        count(counter::LOST_BASE + kind);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reservation of the right size; every field is written
    // through raw pointers before submit (strings only up to their lengths). Volatile:
    // LLVM would merge the zero stores into a call to an out-of-line memset (a loop).
    unsafe {
        write_volatile(addr_of_mut!((*ev).header.kind), kind);
        write_volatile(addr_of_mut!((*ev).header.tgid), target);
        write_volatile(addr_of_mut!((*ev).header.ts_ns), ts_ns);
        write_volatile(addr_of_mut!((*ev).id), id);
        write_volatile(addr_of_mut!((*ev).duration_ns), 0);
        write_volatile(addr_of_mut!((*ev).value), value);
        // `lens` and `pad`: three aligned words (asserted in observer_common).
        let lens = addr_of_mut!((*ev).lens).cast::<u32>();
        for word in 0..3 {
            write_volatile(lens.add(word), 0);
        }
        (*ev).flags = fill(ev);
    }
    entry.submit(submit_flags());
}

/// Where string slot `FIELD` of `ev` starts: right after the strings of the slots before
/// it (written first, in slot order), with room for the slot's cap.
///
/// # Safety
/// `ev` must point to a reserved event whose `lens` are written.
#[inline(always)]
unsafe fn slot<const FIELD: usize>(ev: *mut ProbeEvent) -> Option<*mut u8> {
    // SAFETY: `lens` is written (zeroed by `send`, then set slot after slot).
    let at = string_start(&unsafe { (*ev).lens }, FIELD);
    // Never true (each length is at most its cap); tells the verifier the write fits.
    if at > STRINGS_CAP - CAPS[FIELD] {
        return None;
    }
    // SAFETY: within the reserved event, by the check above.
    Some(unsafe { addr_of_mut!((*ev).strings).cast::<u8>().add(at) })
}

/// Copies at most the slot's capacity of a user string into slot `FIELD` of `ev`; never
/// trusts the length. Sets the truncated or unreadable flag bit of that slot in `flags`.
/// Slots are read in `field` order (strings are packed).
///
/// # Safety
/// `ev` must point to a reserved event.
#[inline(always)]
pub unsafe fn read_str<const FIELD: usize>(src: &abi::Str, ev: *mut ProbeEvent, flags: &mut u32) {
    let cap = CAPS[FIELD];
    // SAFETY: the caller's.
    let Some(dst) = (unsafe { slot::<FIELD>(ev) }) else { return };
    let mut len = src.len as usize;
    if len > cap {
        len = cap;
        *flags |= 1 << (FLAG_TRUNCATED_SHIFT + FIELD as u32);
    }
    // Re-bound for the verifier, which may lose track of `len` across the branch.
    let len = len & (2 * cap - 1);
    if len == 0 || len > cap {
        return;
    }
    // SAFETY: `dst` has `cap` ≥ `len` bytes; the helper fails cleanly on a bad address.
    let read = unsafe { bpf_probe_read_user(dst.cast(), len as u32, src.ptr as *const _) };
    if read == 0 {
        // SAFETY: as above.
        unsafe { (*ev).lens[FIELD] = len as u16 };
    } else {
        *flags |= 1 << (FLAG_UNREADABLE_SHIFT + FIELD as u32);
        count(counter::BAD_USER_POINTER);
    }
}

/// Copies strings `strs` into slots `FIRST..FIRST + N` of `ev` with one read of the
/// proxy's memory when they lie there back to back in slot order, each within its slot's
/// cap (as mcp-probes lays out a request end's five and an ACL check's three): the event
/// packs them in the same order. Each user read costs the kernel more than the copy costs
/// the proxy. False, with nothing written, when they do not lie so or the read failed: the
/// caller reads them one by one.
///
/// # Safety
/// `ev` must point to a reserved event whose `lens` are zero.
#[inline(always)]
pub unsafe fn read_packed<const FIRST: usize, const N: usize>(
    strs: [&abi::Str; N],
    ev: *mut ProbeEvent,
) -> bool {
    let first = strs[0].ptr;
    let mut next = first;
    for (i, s) in strs.iter().enumerate() {
        if s.ptr != next || s.len > CAPS[FIRST + i] as u64 {
            return false;
        }
        next += s.len;
    }
    // Within the room (each length within its cap), but LLVM proves that and drops any
    // bound checked here; older verifiers (Linux 6.1) then cannot, so it is checked on a
    // value LLVM cannot see through.
    let total = opaque(next - first) as usize;
    if total > STRINGS_CAP {
        return false;
    }
    if total > 0 {
        // SAFETY: the slots before FIRST are empty, so slot FIRST starts the strings, which
        // have room for STRINGS_CAP bytes; the helper fails cleanly on a bad address.
        let dst = unsafe { addr_of_mut!((*ev).strings) }.cast();
        if unsafe { bpf_probe_read_user(dst, total as u32, first as *const _) } != 0 {
            return false;
        }
    }
    for (i, s) in strs.iter().enumerate() {
        // SAFETY: the caller's; each length is within its cap, checked above.
        unsafe { (*ev).lens[FIRST + i] = s.len as u16 };
    }
    true
}

/// `value`, out of LLVM's sight (libbpf's `barrier_var`): a bound checked on the result
/// stays in the program for the verifier, even where LLVM could prove it.
#[inline(always)]
fn opaque(mut value: u64) -> u64 {
    // SAFETY: a register move, no memory touched.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) value, options(pure, nomem, nostack)) };
    value
}

/// Copies `len` bytes of kernel memory at `src` into the `server` slot of `ev` (kernel
/// hooks name a child process there), cut at the slot's capacity.
///
/// # Safety
/// `ev` must point to a reserved event.
#[inline(always)]
pub unsafe fn read_kernel_name(src: *const u8, len: usize, ev: *mut ProbeEvent) -> u32 {
    let cap = CAPS[field::SERVER];
    let (len, flags) =
        if len > cap { (cap, 1 << (FLAG_TRUNCATED_SHIFT + field::SERVER as u32)) } else { (len, 0) };
    let len = len & (2 * cap - 1);
    if len == 0 || len > cap {
        return flags;
    }
    // SAFETY: the caller's.
    let Some(dst) = (unsafe { slot::<{ field::SERVER }>(ev) }) else { return flags };
    // SAFETY: the slot has `cap` ≥ `len` bytes; the helper fails cleanly on a bad address.
    unsafe {
        if bpf_probe_read_kernel(dst.cast(), len as u32, src.cast()) == 0 {
            (*ev).lens[field::SERVER] = len as u16;
        }
    }
    flags
}
