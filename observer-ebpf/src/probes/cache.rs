//! `mcp_probe_tool_cache_size` and `mcp_probe_classifier_cache`.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use observer_common::{field, kind};

use super::{observed, send_labelled};

#[uprobe]
pub fn mcp_tool_cache_size(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::SERVER }>(&ctx, me, kind::TOOL_CACHE_SIZE, false);
    0
}

#[uprobe]
pub fn mcp_classifier_cache(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    send_labelled::<{ field::SERVER }>(&ctx, me, kind::CLASSIFIER_CACHE, false);
    0
}
