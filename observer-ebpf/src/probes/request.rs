//! `mcp_probe_request_start` / `mcp_probe_request_end`: request counts, status, labels
//! and latency. Latency is measured here (start → end, keyed by tgid and request id), so
//! the proxy times nothing.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use observer_common::{
    EventHeader, counter, kind,
    request::{
        AbiRequestEnd, AbiStr, FIELD_IDENTITY, FIELD_METHOD, FIELD_SERVER, FIELD_TOOL, FIELD_TRANSPORT,
        FLAG_NO_START, FLAG_TRUNCATED_SHIFT, FLAG_UNREADABLE_SHIFT, InFlightKey, RequestEndEvent,
    },
};

use crate::maps::{EVENTS, count, submit_flags};

/// Start time (ns) of each request in flight. Bounded: a proxy that never ends its
/// requests fills it, and further starts are counted as `IN_FLIGHT_FULL`.
#[map]
static IN_FLIGHT: HashMap<InFlightKey, u64> = HashMap::with_max_entries(65_536, 0);

/// `bpf_map_update_elem` with `BPF_NOEXIST` on a key that is present.
const EEXIST: i32 = -17;

fn key(id: u64) -> InFlightKey {
    InFlightKey { tgid: (bpf_get_current_pid_tgid() >> 32) as u32, pad: 0, id }
}

#[uprobe]
pub fn mcp_request_start(ctx: ProbeContext) -> u32 {
    let Some(id) = ctx.arg::<u64>(0) else { return 0 };
    let now = unsafe { bpf_ktime_get_ns() };
    match IN_FLIGHT.insert(key(id), now, BPF_NOEXIST as u64) {
        Ok(()) => count(counter::REQUESTS_STARTED),
        Err(EEXIST) => count(counter::DUPLICATE_START),
        Err(_) => count(counter::IN_FLIGHT_FULL),
    }
    0
}

#[uprobe]
pub fn mcp_request_end(ctx: ProbeContext) -> u32 {
    let (Some(id), Some(end_ptr)) = (ctx.arg::<u64>(0), ctx.arg::<*const AbiRequestEnd>(1)) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let key = key(id);
    // SAFETY: the value is copied out before the entry is removed.
    let mut start = unsafe { IN_FLIGHT.get(key) }.copied();
    // Only the end that removes the entry owns the start: two ends racing on one id
    // must not both count as finished.
    if IN_FLIGHT.remove(key).is_ok() {
        count(counter::REQUESTS_FINISHED);
    } else {
        start = None;
    }
    // SAFETY: bpf_probe_read_user fails cleanly on an unmapped address.
    let Ok(end) = (unsafe { bpf_probe_read_user(end_ptr) }) else {
        count(counter::BAD_USER_POINTER);
        return 0;
    };
    let Some(mut event) = EVENTS.reserve::<RequestEndEvent>(0) else {
        // Ring buffer full: the event is lost, and counted so that received + lost = sent.
        count(counter::REQUEST_END_LOST);
        return 0;
    };
    let ev = event.as_mut_ptr();
    // SAFETY: `ev` points to a reservation of the right size; every field is written
    // through raw pointers before submit (strings only up to their lengths).
    unsafe {
        (*ev).header = EventHeader { kind: kind::REQUEST_END, tgid: key.tgid, ts_ns: now };
        (*ev).id = id;
        let mut flags = 0;
        (*ev).duration_ns = match start {
            Some(start) => now.saturating_sub(start),
            None => {
                flags |= FLAG_NO_START;
                0
            }
        };
        (*ev).status = end.status;
        (*ev).method_len = read_str(&end.method, &mut (*ev).method, FIELD_METHOD, &mut flags);
        (*ev).transport_len = read_str(&end.transport, &mut (*ev).transport, FIELD_TRANSPORT, &mut flags);
        (*ev).identity_len = read_str(&end.identity, &mut (*ev).identity, FIELD_IDENTITY, &mut flags);
        (*ev).server_len = read_str(&end.server, &mut (*ev).server, FIELD_SERVER, &mut flags);
        (*ev).tool_len = read_str(&end.tool, &mut (*ev).tool, FIELD_TOOL, &mut flags);
        (*ev).pad = [0; 3];
        (*ev).flags = flags;
    }
    event.submit(submit_flags());
    0
}

/// Copies at most `N` bytes of a user string; never trusts its length.
#[inline(always)]
fn read_str<const N: usize>(src: &AbiStr, dst: &mut [u8; N], field: u32, flags: &mut u32) -> u16 {
    let mut len = src.len as usize;
    if len > N {
        len = N;
        *flags |= 1 << (FLAG_TRUNCATED_SHIFT + field);
    }
    if len == 0 {
        return 0;
    }
    // Re-bound for the verifier, which may lose track of `len` across the branch.
    let len = len & (2 * N - 1);
    let Some(dst) = dst.get_mut(..len) else { return 0 };
    // SAFETY: bpf_probe_read_user fails cleanly on an unmapped or null address.
    match unsafe { bpf_probe_read_user_buf(src.ptr as *const u8, dst) } {
        Ok(()) => len as u16,
        Err(_) => {
            *flags |= 1 << (FLAG_UNREADABLE_SHIFT + field);
            count(counter::BAD_USER_POINTER);
            0
        }
    }
}
