//! Fires the request probes as fast as possible, for tests and benchmarks of the event
//! path: waits for one line on stdin (so an observer can attach first), then calls
//! request_start/request_end `requests` times and prints `{"sent": N}`.

use mcp_probes::{RequestLabels, Status};

pub fn run(requests: u64) -> anyhow::Result<()> {
    eprintln!("mcp-testbed burst: pid {} waiting for a line on stdin", std::process::id());
    std::io::stdin().read_line(&mut String::new())?;
    let labels = RequestLabels {
        method: "tools/call",
        transport: "burst",
        identity: "burst",
        server: "burst",
        tool: "burst",
        status: Status::Ok,
    };
    for id in 0..requests {
        mcp_probes::request_start(id);
        mcp_probes::request_end(id, &labels);
    }
    println!("{{\"sent\":{requests}}}");
    Ok(())
}
