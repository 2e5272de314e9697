//! The backend pool: connects, disconnects, the idle reaper, the configured backends and
//! the child processes of stdio backends. Connect duration and connection lifetime come
//! from the kernel timestamps of the paired events (the agent pairs them by connection id).

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use observer_common::{field, kind};

use super::{observed, send_labelled};
use crate::event::send;

#[uprobe]
pub fn mcp_backend_connect_start(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let id = ctx.arg::<u64>(0).unwrap_or(0);
    send(me, kind::BACKEND_CONNECT_START, id, 0, |_| 0);
    0
}

#[uprobe]
pub fn mcp_backend_connect_end(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::SERVER }>(&ctx, me, kind::BACKEND_CONNECT_END, true);
    0
}

#[uprobe]
pub fn mcp_backend_disconnect(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::SERVER }>(&ctx, me, kind::BACKEND_DISCONNECT, true);
    0
}

#[uprobe]
pub fn mcp_backends_configured(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let configured = ctx.arg::<u64>(0).unwrap_or(0);
    send(me, kind::BACKENDS_CONFIGURED, 0, configured, |_| 0);
    0
}

#[uprobe]
pub fn mcp_idle_reaper_run(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send(me, kind::IDLE_REAPER_RUN, 0, 0, |_| 0);
    0
}

#[uprobe]
pub fn mcp_child_spawn(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::SERVER }>(&ctx, me, kind::CHILD_SPAWN, false);
    0
}
