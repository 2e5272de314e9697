//! The rest of the probe catalogue: ACL, authentication, sessions, the backend pool and
//! the caches, request expiry and label cardinality, each against ground truth from the
//! testbed's clients (or from this test, when it is the client).

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::support::*;

/// ACL decisions, authentication failures, sessions, connect failures and backend call
/// timeouts of a load.
#[test]
fn acl_auth_and_sessions_match_the_load_clients_ground_truth() {
    let _serial = kernel_test();
    let proxy = start_proxy_with(&testbed_bin(), &["--broken-backends", "delta", "--call-timeout-ms", "200"]);
    let observer = start_observer(&[proxy.pid()], &[]);
    // Every 400 ms sleep outlasts the proxy's 200 ms backend call timeout.
    let truth = load_truth(&proxy, 400, 8, 41, 400, &["--broken", "delta"]);
    let requests = requests_of(&truth);
    assert!(requests.iter().any(|r| r.status == "connect_failed" && r.server == "delta"), "{truth}");
    assert!(requests.iter().any(|r| r.status == "timeout" && r.tool == "sleep"), "{truth}");
    assert!(!requests.iter().any(|r| r.status == "ok" && r.tool == "sleep"), "{truth}");
    assert_requests_match(&observer, &requests);
    let metrics = scrape(&observer);
    for row in requests.iter().filter(|r| r.status == "timeout") {
        // Ended by the proxy after 200 ms.
        let duration = "mcp_proxy_request_duration_seconds";
        assert_eq!(bucket(&metrics, duration, &row.labels(), 0.1), 0.0, "{row:?}");
        assert_eq!(bucket(&metrics, duration, &row.labels(), 1.0), row.count as f64, "{row:?}");
    }
    assert_rows_match(&observer, "mcp_proxy_acl_decisions_total", &truth, "acl");
    assert_rows_match(&observer, "mcp_proxy_auth_failures_total", &truth, "auth_failures");
    for reason in ["missing_credentials", "invalid_credentials"] {
        assert!(
            value(&scrape(&observer), "mcp_proxy_auth_failures_total", &[("reason", reason)]) > 0.0,
            "the mix has no {reason}"
        );
    }
    assert_sessions_match(&observer, &truth);
}

/// Sessions opened and closed by the client: counts, the gauge back to rest, durations.
fn assert_sessions_match(observer: &Running, truth: &Value) {
    let metrics = scrape(observer);
    for row in truth["sessions"].as_array().expect("sessions") {
        let transport = row["transport"].as_str().unwrap();
        let (opened, closed) = (row["opened"].as_f64().unwrap(), row["closed"].as_f64().unwrap());
        let by_transport = [("transport", transport)];
        assert_eq!(value(&metrics, "mcp_proxy_sessions_opened_total", &by_transport), opened);
        let closed_by_client = [("transport", transport), ("reason", "client_closed")];
        assert_eq!(value(&metrics, "mcp_proxy_sessions_closed_total", &closed_by_client), closed);
        assert_eq!(value(&metrics, "mcp_proxy_sessions_active", &by_transport), opened - closed);
        assert_eq!(value(&metrics, "mcp_proxy_session_duration_seconds_count", &by_transport), closed);
    }
}

/// Idle reaping, a lazy reconnect on the next call, a crashed backend, a backend that
/// never starts, shutdown; connect durations and connection lifetimes in their buckets.
#[test]
fn the_backend_pool_matches_the_pool_scenario() {
    let _serial = kernel_test();
    const IDLE_MS: &str = "400";
    let proxy = start_proxy_with(
        &testbed_bin(),
        &[
            "--backends",
            "alpha,beta",
            "--broken-backends",
            "delta",
            "--idle-timeout-ms",
            IDLE_MS,
            "--reaper-interval-ms",
            "100",
            // Every pass after the observer attached, so that the proxy's count is the truth.
            "--reaper-after-first-request",
            "--connect-delay-ms",
            "150",
        ],
    );
    let observer = start_observer(&[proxy.pid()], &[]);
    let url = format!("http://{}/mcp", proxy.addr);
    let truth = testbed_client(&[&[
        "pool",
        "--url",
        &url,
        "--idle-ms",
        IDLE_MS,
        "--cycles",
        "2",
        "--broken",
        "delta",
    ]]);
    let requests = requests_of(&truth);
    assert_requests_match(&observer, &requests);
    for key in ["connects", "disconnects", "child_spawns"] {
        let metric = match key {
            "connects" => "mcp_proxy_backend_connects_total",
            "disconnects" => "mcp_proxy_backend_disconnects_total",
            _ => "mcp_proxy_child_spawns_total",
        };
        assert_rows_match(&observer, metric, &truth, key);
    }
    assert_rows_match(&observer, "mcp_proxy_acl_decisions_total", &truth, "acl");
    let rows = |key: &str| truth_rows(&truth, key);
    let of_server = |key: &str, server: &str, reason: Option<&str>| -> f64 {
        rows(key)
            .iter()
            .filter(|r| r["server"] == server && reason.is_none_or(|reason| r["reason"] == reason))
            .map(|r| r["count"].as_f64().unwrap())
            .sum()
    };

    let metrics = scrape(&observer);
    for server in ["alpha", "beta"] {
        let by_server = [("server", server)];
        let connects = of_server("connects", server, None);
        let duration = "mcp_proxy_backend_connect_duration_seconds";
        assert_eq!(value(&metrics, &format!("{duration}_count"), &by_server), connects, "{server}");
        // Every connect waits out the backend's 150 ms start-up delay.
        assert_eq!(bucket(&metrics, duration, &by_server, 0.1), 0.0, "{server} connects faster than 150 ms");
        let lifetime = "mcp_proxy_backend_connection_lifetime_seconds";
        let disconnects = of_server("disconnects", server, None);
        assert_eq!(value(&metrics, &format!("{lifetime}_count"), &by_server), disconnects, "{server}");
        // A reaped connection was idle for 400 ms first; only a crash ends one sooner.
        let crashes = of_server("disconnects", server, Some("error"));
        assert_eq!(bucket(&metrics, lifetime, &by_server, 0.1), crashes, "{server} short lifetimes");
    }
    assert!(of_server("disconnects", "alpha", Some("idle_reaped")) >= 2.0, "alpha was never reaped: {truth}");
    assert!(of_server("connects", "alpha", None) >= 3.0, "no lazy reconnect of alpha: {truth}");
    let connected_at_end: Vec<String> =
        rows("connected_at_end").iter().map(|s| s.as_str().unwrap().to_string()).collect();
    for server in ["alpha", "beta", "delta"] {
        let expected = f64::from(u8::from(connected_at_end.iter().any(|s| s == server)));
        assert_eq!(
            value(&metrics, "mcp_proxy_backends_connected", &[("server", server)]),
            expected,
            "{server}"
        );
    }
    assert_eq!(value(&metrics, "mcp_proxy_backends_configured", &[]), 3.0);
    for row in rows("tool_cache_entries") {
        let server = row["server"].as_str().unwrap();
        let entries = row["entries"].as_f64().unwrap();
        assert_eq!(
            value(&metrics, "mcp_proxy_tool_cache_entries", &[("server", server)]),
            entries,
            "{server}"
        );
    }
    for row in rows("classifier") {
        let by_server = [("server", row["server"].as_str().unwrap())];
        assert_eq!(
            value(&metrics, "mcp_proxy_classifier_cache_hits_total", &by_server),
            row["hits"].as_f64().unwrap()
        );
        assert_eq!(
            value(&metrics, "mcp_proxy_classifier_cache_misses_total", &by_server),
            row["misses"].as_f64().unwrap()
        );
    }
    assert!(
        value(&metrics, "mcp_proxy_classifier_cache_hits_total", &[]) > 0.0,
        "no reconnect hit the cache"
    );

    // Shutdown: the proxy reports its reaper passes and disconnects what is connected.
    let stderr = proxy.stop(libc::SIGTERM);
    let reaper_runs: f64 = stderr
        .iter()
        .find_map(|l| {
            l.strip_prefix("mcp-testbed proxy: idle reaper ran ")?.strip_suffix(" times")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("the proxy did not report its reaper passes: {stderr:?}"));
    assert!(reaper_runs >= 10.0, "the reaper ran only {reaper_runs} times");
    let metrics = scrape_until(&observer, "every reaper pass and the shutdown", |m| {
        value(m, "mcp_proxy_idle_reaper_runs_total", &[]) >= reaper_runs
            && value(m, "mcp_proxy_backend_disconnects_total", &[("reason", "shutdown")])
                >= connected_at_end.len() as f64
    });
    assert_eq!(value(&metrics, "mcp_proxy_idle_reaper_runs_total", &[]), reaper_runs);
    for server in &connected_at_end {
        let shutdown = [("server", server.as_str()), ("reason", "shutdown")];
        assert_eq!(value(&metrics, "mcp_proxy_backend_disconnects_total", &shutdown), 1.0, "{server}");
    }
    assert_eq!(value(&metrics, "mcp_proxy_backends_connected", &[]), 0.0);
    assert_sessions_match(&observer, &truth);
    // The scenario's one session outlived two idle periods of 3 × 400 ms.
    let session = [("transport", "streamable_http")];
    assert_eq!(bucket(&metrics, "mcp_proxy_session_duration_seconds", &session, 1.0), 0.0);
    assert_eq!(bucket(&metrics, "mcp_proxy_session_duration_seconds", &session, 10.0), 1.0);
}

/// With the request guard left to end what a dropped future leaves
/// (`--end-timed-out-requests`), a request the proxy's timeout cuts is counted at once as
/// status="timeout" with every label known when it was cut — never by expiry, an hour here.
#[test]
fn a_request_whose_future_is_dropped_ends_at_once_with_its_labels() {
    let _serial = kernel_test();
    let proxy =
        start_proxy_with(&testbed_bin(), &["--request-timeout-ms", "1000", "--end-timed-out-requests"]);
    let observer = start_observer(&[proxy.pid()], &["--request-expiry-secs", "3600"]);
    let url = format!("http://{}/mcp", proxy.addr);
    let post = |tool: &str, ms: u64| {
        let call = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{tool}","arguments":{{"ms":{ms},"text":"x"}}}}}}"#
        );
        let reply = ureq::post(&url)
            .header("authorization", "Bearer alice-token")
            .content_type("application/json")
            .config()
            .http_status_as_error(false)
            .build()
            .send(&call)
            .expect("POST");
        reply.status().as_u16()
    };
    // The backend connected first: the cut calls are routed long before their timeout.
    assert_eq!(post("alpha__echo", 0), 200);
    const CUT: u64 = 3;
    for _ in 0..CUT {
        assert_eq!(post("alpha__sleep", 3000), 504);
    }
    let cut = [
        ("method", "tools/call"),
        ("transport", "streamable_http"),
        ("identity", "alice"),
        ("server", "alpha"),
        ("tool", "sleep"),
        ("status", "timeout"),
    ];
    let metrics = scrape_until(&observer, "the cut requests", |m| {
        value(m, "mcp_proxy_requests_total", &cut) >= CUT as f64
    });
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &cut), CUT as f64);
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[]), (CUT + 1) as f64, "the echo and the cut");
    assert_eq!(value(&metrics, "mcp_proxy_requests_in_flight", &[]), 0.0);
    // Cut after the proxy's 1 s, not at the backend's 3 s.
    let duration = "mcp_proxy_request_duration_seconds";
    assert_eq!(bucket(&metrics, duration, &cut, 0.5), 0.0);
    assert_eq!(bucket(&metrics, duration, &cut, 2.5), CUT as f64);
}

/// A request the proxy drops without ending it (as `mcp serve` does on its request
/// timeout) is expired into status="timeout"; the oldest in-flight age shows it meanwhile.
#[test]
fn requests_the_proxy_never_ends_expire_as_timeouts() {
    let _serial = kernel_test();
    let proxy = start_proxy_with(&testbed_bin(), &["--request-timeout-ms", "300"]);
    let observer = start_observer(&[proxy.pid()], &["--request-expiry-secs", "2"]);
    let url = format!("http://{}/mcp", proxy.addr);
    let sent = Instant::now();
    let dropped = ureq::post(&url)
        .header("authorization", "Bearer alice-token")
        .content_type("application/json")
        .config()
        .http_status_as_error(false)
        .build()
        .send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha__sleep","arguments":{"ms":1000}}}"#)
        .expect("POST");
    assert_eq!(dropped.status(), 504);
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(sent.elapsed()));
    let metrics = scrape(&observer);
    let elapsed = sent.elapsed().as_secs_f64();
    let oldest = value(&metrics, "mcp_proxy_request_oldest_in_flight_seconds", &[]);
    assert!((1.1..=elapsed).contains(&oldest), "oldest in flight {oldest} s, {elapsed} s after sending");
    assert_eq!(value(&metrics, "mcp_proxy_requests_in_flight", &[]), 1.0);

    let expired = Truth {
        method: String::new(),
        transport: String::new(),
        server: String::new(),
        tool: String::new(),
        identity: String::new(),
        status: "timeout".into(),
        count: 1,
    };
    let metrics = scrape_until(&observer, "the dropped request to expire", |m| {
        value(m, "mcp_proxy_requests_total", &expired.labels()) == 1.0
    });
    assert_eq!(value(&metrics, "mcp_proxy_requests_in_flight", &[]), 0.0);
    assert_eq!(value(&metrics, "mcp_proxy_request_oldest_in_flight_seconds", &[]), 0.0);

    // A load whose 600 ms sleeps all hit the proxy's 300 ms request timeout.
    let load = run_load(&proxy, 200, 8, 51, 600);
    assert!(load.iter().any(Truth::expired), "the load dropped nothing: {load:?}");
    let truth = merge(&[load, vec![expired]]);
    let total: u64 = truth.iter().map(|t| t.count).sum();
    scrape_until(&observer, "every dropped request to expire", |m| {
        value(m, "mcp_proxy_requests_total", &[]) == total as f64
    });
    assert_requests_match(&observer, &truth);
}

/// 1,000 distinct tool names against a cap of 100; an allowlist and hashed identities in
/// a second observer of the same proxy. This test is the client, hence the ground truth.
#[test]
fn a_thousand_tool_names_fold_into_other_past_a_cap_of_100() {
    let _serial = kernel_test();
    const TOOLS: usize = 1000;
    const CAP: usize = 100;
    let proxy =
        start_proxy_with(&testbed_bin(), &["--backends", "alpha", "--extra-tools", &TOOLS.to_string()]);
    let capped = start_observer(&[proxy.pid()], &["--max-tools", &CAP.to_string()]);
    let allowlisted =
        start_observer(&[proxy.pid()], &["--allow-tool", "tool0007,echo", "--identity", "hash"]);
    let url = format!("http://{}/mcp", proxy.addr);
    std::thread::scope(|s| {
        for part in 0..4 {
            let url = &url;
            s.spawn(move || {
                for i in (part..TOOLS).step_by(4) {
                    let body = format!(
                        r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"alpha__tool{i:04}","arguments":{{"text":"x"}}}}}}"#
                    );
                    let reply = ureq::post(url)
                        .header("authorization", "Bearer alice-token")
                        .content_type("application/json")
                        .send(body)
                        .expect("POST")
                        .body_mut()
                        .read_to_string()
                        .expect("reply body");
                    let reply: Value = serde_json::from_str(&reply).expect("JSON reply");
                    assert_eq!(reply["result"]["isError"], false, "tool{i:04}: {reply}");
                }
            });
        }
    });

    let calls = [("method", "tools/call"), ("status", "ok")];
    scrape_until(&capped, "every call", |m| value(m, "mcp_proxy_requests_total", &calls) == TOOLS as f64);
    let metrics = settled(&capped);
    let kept: HashSet<&str> = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "mcp_proxy_requests_total")
        .filter_map(|s| s.labels.get("tool"))
        .filter(|tool| *tool != "__other__")
        .collect();
    assert_eq!(kept.len(), CAP, "tools kept: {kept:?}");
    for tool in &kept {
        assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("tool", tool)]), 1.0, "{tool}");
    }
    let folded = (TOOLS - CAP) as f64;
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("tool", "__other__")]), folded);
    assert_eq!(value(&metrics, "mcp_proxy_acl_decisions_total", &[("tool", "__other__")]), folded);
    // Folded once in the request's labels and once in its ACL decision's.
    assert_eq!(value(&metrics, "mcp_observer_label_overflow_total", &[("label", "tool")]), 2.0 * folded);

    let metrics = scrape_until(&allowlisted, "every call", |m| {
        value(m, "mcp_proxy_requests_total", &calls) == TOOLS as f64
    });
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("tool", "tool0007")]), 1.0);
    assert_eq!(value(&metrics, "mcp_proxy_requests_total", &[("tool", "__other__")]), (TOOLS - 1) as f64);
    let identities: HashSet<&str> = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "mcp_proxy_requests_total")
        .filter_map(|s| s.labels.get("identity"))
        .collect();
    assert_eq!(identities.len(), 1, "{identities:?}");
    let identity = identities.into_iter().next().unwrap();
    assert!(identity.starts_with("sha256:") && !identity.contains("alice"), "{identity}");
}

/// A proxy that dies with requests in flight: they are counted as timeouts when it is gone
/// (even as an unreaped zombie), long before their expiry, and the gauges return to rest.
#[test]
fn requests_in_flight_of_a_proxy_that_dies_are_counted_as_timeouts() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let observer = start_observer(&[proxy.pid()], &["--request-expiry-secs", "600"]);
    let url = format!("http://{}/mcp", proxy.addr);
    let caller = std::thread::spawn(move || {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"alpha__sleep","arguments":{"ms":30000}}}"#;
        ureq::post(&url)
            .header("authorization", "Bearer alice-token")
            .content_type("application/json")
            .send(body)
    });
    scrape_until(&observer, "the slow call in flight", |m| {
        value(m, "mcp_proxy_requests_in_flight", &[]) == 1.0
    });
    proxy.signal(libc::SIGKILL);
    assert!(caller.join().unwrap().is_err(), "the killed proxy cannot have answered");
    let timeout = [("status", "timeout"), ("method", ""), ("tool", "")];
    // One refresh counts the request and then returns the gauges to rest: a scrape may
    // fall between the two, so the whole state is awaited.
    let metrics = scrape_until(&observer, "the dead proxy's request counted, the gauges at rest", |m| {
        value(m, "mcp_proxy_requests_total", &timeout) == 1.0
            && value(m, "mcp_proxy_requests_in_flight", &[]) == 0.0
            && value(m, "mcp_proxy_request_oldest_in_flight_seconds", &[]) == 0.0
            && value(m, "mcp_observer_targets", &[]) == 0.0
            // Its backend died with it.
            && value(m, "mcp_proxy_backends_connected", &[]) == 0.0
            && value(m, "mcp_proxy_sessions_active", &[]) == 0.0
    });
    assert_eq!(
        value(&metrics, "mcp_proxy_requests_total", &[("status", "timeout")]),
        1.0,
        "no other timeout"
    );
}

/// Sessions the proxy expires after inactivity and closes at shutdown. This test opens
/// them, so it knows how many and when.
#[test]
fn sessions_expire_when_idle_and_close_at_shutdown() {
    let _serial = kernel_test();
    let proxy =
        start_proxy_with(&testbed_bin(), &["--session-idle-ms", "1000", "--reaper-interval-ms", "50"]);
    let observer = start_observer(&[proxy.pid()], &[]);
    let url = format!("http://{}/mcp", proxy.addr);
    let initialize = || {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"kernel-test","version":"1"}}}"#;
        let reply = ureq::post(&url)
            .header("authorization", "Bearer bob-token")
            .content_type("application/json")
            .send(body)
            .expect("initialize");
        assert!(reply.headers().contains_key("mcp-session-id"), "no session issued");
    };
    for _ in 0..3 {
        initialize();
    }
    let transport = [("transport", "streamable_http")];
    let expired = [("transport", "streamable_http"), ("reason", "expired")];
    let metrics = scrape_until(&observer, "three sessions expired", |m| {
        value(m, "mcp_proxy_sessions_closed_total", &expired) == 3.0
    });
    assert_eq!(value(&metrics, "mcp_proxy_sessions_opened_total", &transport), 3.0);
    assert_eq!(value(&metrics, "mcp_proxy_sessions_active", &transport), 0.0);
    let duration = "mcp_proxy_session_duration_seconds";
    assert_eq!(value(&metrics, &format!("{duration}_count"), &transport), 3.0);
    // Idle for a second before the reaper may expire them.
    assert_eq!(bucket(&metrics, duration, &transport, 0.5), 0.0);
    assert_eq!(bucket(&metrics, duration, &transport, 5.0), 3.0);

    initialize();
    initialize();
    scrape_until(&observer, "two sessions active", |m| {
        value(m, "mcp_proxy_sessions_active", &transport) == 2.0
    });
    proxy.stop(libc::SIGTERM);
    let shutdown = [("transport", "streamable_http"), ("reason", "shutdown")];
    let metrics = scrape_until(&observer, "two sessions closed at shutdown", |m| {
        value(m, "mcp_proxy_sessions_closed_total", &shutdown) == 2.0
    });
    assert_eq!(value(&metrics, "mcp_proxy_sessions_active", &transport), 0.0);
    assert_eq!(value(&metrics, "mcp_proxy_sessions_closed_total", &[]), 5.0);
    assert_eq!(value(&metrics, "mcp_observer_unmatched_ends_total", &[]), 0.0);
}
