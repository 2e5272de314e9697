//! The testbed proxy is a real MCP server: the reference Python SDK's Streamable HTTP
//! client initializes a session, lists the namespaced tools and calls them.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

#[test]
fn the_reference_python_sdk_talks_to_the_proxy() {
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_mcp-testbed"))
        .args(["proxy", "--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let mut banner = String::new();
    BufReader::new(proxy.stderr.take().unwrap()).read_line(&mut banner).unwrap();
    let url = banner.split("serving ").nth(1).expect("proxy banner").trim().to_string();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_sdk_client.py");
    let output = Command::new("python3").args([script, &url, "alice-token"]).output().expect("run python3");
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    assert!(
        output.status.success(),
        "the SDK client failed (is the `mcp` package installed? `cargo xtask setup` installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["server"], "mcp-testbed-proxy");
    assert_eq!(seen["session"], true);
    let tools: Vec<&str> = seen["tools"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(
        tools,
        [
            "alpha__connect",
            "alpha__crash",
            "alpha__echo",
            "alpha__error",
            "alpha__fail",
            "alpha__sleep",
            "beta__connect",
            "beta__crash",
            "beta__echo",
            "beta__error",
            "beta__fail",
            "beta__sleep"
        ]
    );
    assert_eq!(seen["echo"], serde_json::json!(["hello sdk"]));
    assert_eq!(seen["echo_is_error"], false);
    assert_eq!(seen["error_is_error"], true);
    assert_eq!(seen["fail_code"], -32000);
}
