//! Calls the probes the way a buggy or hostile proxy would, once each, so that tests can
//! check the observer counts every defect instead of trusting the proxy: a duplicate
//! start, an end without a start, an unreadable string pointer, a null `RequestEnd`, a
//! 10 KiB identity and an identity that is not UTF-8. Waits for a line on stdin first.

use mcp_probes::{ProbeStr, RequestEnd, Status, mcp_probe_request_end, mcp_probe_request_start};

fn end(method: &'static str, identity: ProbeStr, tool: ProbeStr) -> RequestEnd {
    RequestEnd {
        method: ProbeStr::new(method),
        transport: ProbeStr::new("misbehave"),
        identity,
        server: ProbeStr::new("alpha"),
        tool,
        status: Status::Ok as u32,
        reserved: 0,
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

    println!("{{\"done\":true}}");
    Ok(())
}
