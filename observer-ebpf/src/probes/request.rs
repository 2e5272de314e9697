//! `mcp_probe_request_start` / `mcp_probe_request_end`: request counts, status, labels
//! and latency. Latency is measured here (start → end, keyed by tgid and request id), so
//! the proxy times nothing. The agent expires starts whose end never comes. With
//! `request_start` unattached (`--no-request-latency`) an end carries the latency the
//! proxy measured itself (`RequestEnd.elapsed_us`), when it sends one.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use observer_common::{
    FLAG_NO_START, FLAG_UNTIMED, IN_FLIGHT_ENTRIES, InFlightKey, UNTIMED, abi, counter, field, kind,
};

use super::{observed, read_arg};
use crate::{
    event::{read_packed, read_str, send_at},
    maps::count,
};

/// Start time (ns) of each request in flight. Bounded: a proxy that never ends its
/// requests fills it until the agent expires them, and further starts are counted as
/// `IN_FLIGHT_FULL`.
#[map]
static IN_FLIGHT: HashMap<InFlightKey, u64> = HashMap::with_max_entries(IN_FLIGHT_ENTRIES, 0);

/// Set to 0 by the agent at load (`--no-request-latency`): `request_start` is then not
/// attached and ends are sent untimed. Read-only once loaded, so the verifier prunes the
/// branch not taken.
#[unsafe(no_mangle)]
static REQUEST_LATENCY: u32 = 1;

/// `bpf_map_update_elem` with `BPF_NOEXIST` on a key that is present.
const EEXIST: i32 = -17;

fn key(target: u32, id: u64) -> InFlightKey {
    InFlightKey { tgid: target, pad: 0, id }
}

#[uprobe]
pub fn mcp_request_start(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let Some(id) = ctx.arg::<u64>(0) else { return 0 };
    match IN_FLIGHT.insert(key(me, id), crate::now(), BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => count(counter::DUPLICATE_START),
        Err(_) => count(counter::IN_FLIGHT_FULL),
    }
    0
}

#[uprobe]
pub fn mcp_request_end(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let Some(id) = ctx.arg::<u64>(0) else { return 0 };
    // SAFETY: a plain read of a global the loader may have rewritten.
    let (now, start) = if unsafe { core::ptr::read_volatile(&REQUEST_LATENCY) } == 0 {
        (UNTIMED, Err(FLAG_UNTIMED))
    } else {
        let now = crate::now();
        (now, take_start(me, id).ok_or(FLAG_NO_START))
    };
    let Some(end) = read_arg::<abi::RequestEnd>(&ctx, 1) else { return 0 };
    let duration = match start {
        Ok(start) => Ok(now.saturating_sub(start)),
        // One hit only: the proxy's own measure, when it sends one.
        Err(FLAG_UNTIMED) if end.elapsed_us != 0 => Ok(u64::from(end.elapsed_us) * 1000),
        Err(flag) => Err(flag),
    };
    send_at(me, kind::REQUEST_END, now, id, u64::from(end.status), |ev| {
        // SAFETY: `ev` is the reserved event.
        unsafe {
            let mut flags = match duration {
                Ok(duration) => {
                    (*ev).duration_ns = duration;
                    0
                }
                Err(flag) => flag,
            };
            let strs = [&end.method, &end.transport, &end.identity, &end.server, &end.tool];
            if !read_packed::<{ field::METHOD }, 5>(strs, ev) {
                read_str::<{ field::METHOD }>(&end.method, ev, &mut flags);
                read_str::<{ field::TRANSPORT }>(&end.transport, ev, &mut flags);
                read_str::<{ field::IDENTITY }>(&end.identity, ev, &mut flags);
                read_str::<{ field::SERVER }>(&end.server, ev, &mut flags);
                read_str::<{ field::TOOL }>(&end.tool, ev, &mut flags);
            }
            flags
        }
    });
    0
}

/// The start time of request `id` of target `me`, taken out of the in-flight map. Only
/// the end that removes the entry owns the start: two ends racing on one id, or an end
/// racing the agent's expiry, must not both count it.
#[inline(always)]
fn take_start(me: u32, id: u64) -> Option<u64> {
    let key = key(me, id);
    // SAFETY: the value is copied out before the entry is removed.
    let start = unsafe { IN_FLIGHT.get(key) }.copied();
    IN_FLIGHT.remove(key).ok().and(start)
}
