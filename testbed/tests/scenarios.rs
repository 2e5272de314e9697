//! The pool scenario and the load client against a proxy with a broken backend: each
//! client's own checks of the replies pass, and SIGTERM shuts the proxy down cleanly with
//! its report of the idle-reaper passes.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
};

use serde_json::{Value, json};

fn testbed(args: &[&str]) -> Value {
    let output =
        Command::new(env!("CARGO_BIN_EXE_mcp-testbed")).args(args).output().expect("run mcp-testbed");
    assert!(output.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("ground truth is JSON")
}

#[test]
fn pool_scenario_and_load_against_a_broken_backend() {
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_mcp-testbed"))
        .args(["proxy", "--listen", "127.0.0.1:0", "--backends", "alpha,beta", "--broken-backends", "gamma"])
        .args(["--idle-timeout-ms", "300", "--reaper-interval-ms", "50", "--connect-delay-ms", "20"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let mut stderr = BufReader::new(proxy.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    let url = banner.split("serving ").nth(1).expect("proxy banner").trim().to_string();

    let pool = testbed(&["pool", "--url", &url, "--idle-ms", "300", "--cycles", "1", "--broken", "gamma"]);
    assert_eq!(pool["connected_at_end"], json!(["alpha"]));
    assert_eq!(
        pool["disconnects"],
        json!([
            {"server": "alpha", "reason": "idle_reaped", "count": 1},
            {"server": "beta", "reason": "error", "count": 1},
            {"server": "beta", "reason": "idle_reaped", "count": 1},
        ])
    );
    assert_eq!(
        pool["child_spawns"],
        json!([
            {"server": "alpha", "count": 2},
            {"server": "beta", "count": 2},
            {"server": "gamma", "count": 2},
        ])
    );

    let load = testbed(&["load", "--url", &url, "--calls", "100", "--concurrency", "4", "--broken", "gamma"]);
    assert_eq!(load["sessions"], json!([{"transport": "streamable_http", "opened": 3, "closed": 3}]));
    assert!(load["requests"].as_array().unwrap().iter().all(|row| row["transport"] == "streamable_http"));

    Command::new("kill").args(["-TERM", &proxy.id().to_string()]).status().expect("kill -TERM");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(proxy.wait().unwrap().success(), "the proxy did not exit 0: {rest}");
    let runs = rest
        .trim()
        .strip_prefix("mcp-testbed proxy: idle reaper ran ")
        .and_then(|r| r.strip_suffix(" times"));
    assert!(runs.and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0), "last stderr line: {rest:?}");
}
