//! Calls the probes the way a buggy or hostile proxy would, once each, so that tests can
//! check the observer counts every defect instead of trusting the proxy: a duplicate
//! start, an end without a start, an unreadable string pointer, a null `RequestEnd`, a
//! 10 KiB identity and an identity that is not UTF-8 (in a request and in an ACL
//! decision), an undefined ACL decision, a null argument, and a disconnect and a session
//! close whose opening never happened. Waits for a line on stdin first.

use mcp_probes::{
    AclCheck, Decision, DisconnectReason, ProbeStr, RequestEnd, SessionCloseReason, Status,
    mcp_probe_acl_decision, mcp_probe_request_end, mcp_probe_request_start,
};

fn end(method: &'static str, identity: ProbeStr, tool: ProbeStr) -> RequestEnd {
    RequestEnd {
        method: ProbeStr::new(method),
        transport: ProbeStr::new("misbehave"),
        identity,
        server: ProbeStr::new("alpha"),
        tool,
        status: Status::Ok as u32,
        elapsed_us: 0,
    }
}

pub fn run() -> anyhow::Result<()> {
    eprintln!("mcp-testbed misbehave: pid {} waiting for a line on stdin", std::process::id());
    std::io::stdin().read_line(&mut String::new())?;
    let echo = ProbeStr::new("echo");
    let alice = ProbeStr::new("alice");

    mcp_probe_request_start(1);
    mcp_probe_request_start(1);
    mcp_probe_request_end(1, &end("duplicate_start", alice, echo));

    mcp_probe_request_end(2, &end("end_without_start", alice, echo));

    // An address no process maps (the zero page).
    let unreadable = ProbeStr { ptr: 0x10 as *const u8, len: 5 };
    mcp_probe_request_start(3);
    mcp_probe_request_end(3, &end("unreadable_tool", alice, unreadable));

    mcp_probe_request_start(4);
    mcp_probe_request_end(4, std::ptr::null());

    let long = "x".repeat(10 * 1024);
    mcp_probe_request_start(5);
    mcp_probe_request_end(5, &end("long_identity", ProbeStr::new(&long), echo));

    let not_utf8: &[u8] = b"caf\xff\xfe";
    mcp_probe_request_start(6);
    mcp_probe_request_end(
        6,
        &end("not_utf8_identity", ProbeStr { ptr: not_utf8.as_ptr(), len: not_utf8.len() }, echo),
    );

    let acl = |identity, decision| AclCheck {
        identity,
        server: ProbeStr::new("alpha"),
        tool: echo,
        decision,
        reserved: 0,
    };
    mcp_probes::acl_decision(&long, "alpha", "echo", Decision::Deny);
    mcp_probe_acl_decision(&acl(
        ProbeStr { ptr: not_utf8.as_ptr(), len: not_utf8.len() },
        Decision::Allow as u32,
    ));
    mcp_probe_acl_decision(&acl(alice, 7));
    mcp_probe_acl_decision(std::ptr::null());

    mcp_probes::backend_disconnect(99, "alpha", DisconnectReason::Error);
    mcp_probes::session_close(99, "misbehave", SessionCloseReason::ClientClosed);

    println!("{{\"done\":true}}");
    Ok(())
}
