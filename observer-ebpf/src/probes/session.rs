//! `mcp_probe_session_open` / `mcp_probe_session_close`. The agent pairs them by
//! (tgid, session id) and takes the duration from the two kernel timestamps.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use observer_common::{field, kind};

use super::{observed, send_labelled};

#[uprobe]
pub fn mcp_session_open(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::TRANSPORT }>(&ctx, me, kind::SESSION_OPEN, true);
    0
}

#[uprobe]
pub fn mcp_session_close(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::TRANSPORT }>(&ctx, me, kind::SESSION_CLOSE, true);
    0
}
