//! `mcp_probe_acl_decision` and `mcp_probe_auth_failure`.

use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use observer_common::{abi, field, kind};

use super::{observed, read_arg};
use crate::event::{read_packed, read_str, send};

#[uprobe]
pub fn mcp_acl_decision(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let Some(check) = read_arg::<abi::AclCheck>(&ctx, 0) else { return 0 };
    send(me, kind::ACL_DECISION, 0, check.decision, |ev| {
        let mut flags = 0;
        // SAFETY: `ev` is the reserved event.
        unsafe {
            if !read_packed::<{ field::IDENTITY }, 3>([&check.identity, &check.server, &check.tool], ev) {
                read_str::<{ field::IDENTITY }>(&check.identity, ev, &mut flags);
                read_str::<{ field::SERVER }>(&check.server, ev, &mut flags);
                read_str::<{ field::TOOL }>(&check.tool, ev, &mut flags);
            }
        }
        flags
    });
    0
}

#[uprobe]
pub fn mcp_auth_failure(ctx: ProbeContext) -> u32 {
    let Some(me) = observed(&ctx) else { return 0 };
    let reason = ctx.arg::<u32>(0).unwrap_or(u32::MAX);
    send(me, kind::AUTH_FAILURE, 0, u64::from(reason), |_| 0);
    0
}
