//! Kernel hooks: the proxy's TCP connections and child processes, counted from
//! tracepoints against what the tests themselves did (connections opened and held, a
//! namespace that black-holes packets, backends crashed or killed).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{HOOKS, support::*};

const TCP_ACTIVE: &str = "mcp_proxy_tcp_connections_active";
const TCP_OPENED: &str = "mcp_proxy_tcp_connections_opened_total";
const TCP_CLOSED: &str = "mcp_proxy_tcp_connections_closed_total";
const TCP_DURATION: &str = "mcp_proxy_tcp_connection_duration_seconds";
const TCP_TIMEOUTS: &str = "mcp_proxy_tcp_timeouts_total";
const TCP_RESETS: &str = "mcp_proxy_tcp_resets_total";
const TCP_RETRANSMITS: &str = "mcp_proxy_tcp_retransmits_total";
const CHILDREN: &str = "mcp_proxy_child_processes";
const SPAWNS: &str = "mcp_proxy_child_spawns_total";
const EXITS: &str = "mcp_proxy_child_exits_total";

const INBOUND: (&str, &str) = ("direction", "inbound");
const OUTBOUND: (&str, &str) = ("direction", "outbound");

/// A TCP listener of the test's own (not in any proxy's tree): reads each connection to
/// its end, then closes it.
pub struct Sink {
    pub addr: String,
    accepted: Arc<AtomicUsize>,
}

impl Sink {
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = stream.read_to_end(&mut Vec::new());
                });
            }
        });
        Sink { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// One `tools/call` through the testbed's client, whose reply must be JSON-RPC.
pub fn call(proxy: &Running, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
    let url = format!("http://{}/mcp", proxy.addr);
    testbed_client(&[&["call", "--url", &url, "--tool", tool, "--args", &arguments.to_string()]])
}

#[test]
fn tcp_connections_of_the_proxy_tree_are_exact_and_nothing_else_counts() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let observer = start_observer(&[proxy.pid()], &[]);
    let sink = Sink::start();
    // Traffic of an unrelated process (this test) on the same machine, before and while
    // the proxy's is measured.
    hold_connections(&sink.addr, 5, Duration::from_millis(20));

    const K: usize = 4;
    let unrelated = std::thread::spawn({
        let addr = sink.addr.clone();
        move || hold_connections(&addr, 6, Duration::from_millis(300))
    });
    hold_connections(&proxy.addr, K, Duration::from_millis(300));
    unrelated.join().unwrap();
    let k = K as f64;
    let metrics = scrape_until(&observer, "inbound closes", |m| value(m, TCP_CLOSED, &[INBOUND]) >= k);
    assert_eq!(value(&metrics, TCP_OPENED, &[INBOUND]), k);
    assert_eq!(value(&metrics, TCP_CLOSED, &[INBOUND]), k);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[INBOUND]), 0.0);
    // Held 300 ms by the client: none at or below 250 ms, all at or below 1 s.
    assert_eq!(bucket(&metrics, TCP_DURATION, &[INBOUND], 0.25), 0.0);
    assert_eq!(bucket(&metrics, TCP_DURATION, &[INBOUND], 1.0), k);
    assert_eq!(value(&metrics, TCP_OPENED, &[OUTBOUND]), 0.0, "the test's own connections");
    assert_eq!(value(&metrics, TCP_RESETS, &[]), 0.0);

    // The proxy resets a connection it closes with data unread (a reset sent after the
    // close), and gets a reset from a client that aborts (SO_LINGER 0).
    let mut garbage = TcpStream::connect(&proxy.addr).unwrap();
    garbage.write_all(b"NOT HTTP\r\n\r\n").unwrap();
    // Still sending when the proxy answers 400 and closes, so that data is left unread.
    let chunk = [b'x'; 65_536];
    while garbage.write_all(&chunk).is_ok() {}
    drop(garbage);
    let aborted = TcpStream::connect(&proxy.addr).unwrap();
    socket2::SockRef::from(&aborted).set_linger(Some(Duration::ZERO)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(aborted);
    let metrics = scrape_until(&observer, "two resets", |m| {
        value(m, TCP_RESETS, &[INBOUND]) >= 2.0 && value(m, TCP_CLOSED, &[INBOUND]) >= k + 2.0
    });
    assert_eq!(value(&metrics, TCP_RESETS, &[INBOUND]), 2.0);
    assert_eq!(value(&metrics, TCP_OPENED, &[INBOUND]), k + 2.0);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[INBOUND]), 0.0);

    // The backend child (a descendant of the proxy) opens M connections, 50 ms each.
    const M: usize = 3;
    let reply = call(&proxy, "alpha__connect", json!({"addr": sink.addr, "count": M, "hold_ms": 50}));
    assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
    let m = M as f64;
    let metrics = scrape_until(&observer, "outbound closes", |m_| value(m_, TCP_CLOSED, &[OUTBOUND]) >= m);
    assert_eq!(value(&metrics, TCP_OPENED, &[OUTBOUND]), m);
    assert_eq!(value(&metrics, TCP_CLOSED, &[OUTBOUND]), m);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[OUTBOUND]), 0.0);
    assert_eq!(bucket(&metrics, TCP_DURATION, &[OUTBOUND], 0.01), 0.0);
    assert_eq!(bucket(&metrics, TCP_DURATION, &[OUTBOUND], 1.0), m);
    assert_eq!(sink.accepted.load(Ordering::SeqCst), 5 + 6 + M, "the sink saw every connection");
    assert_eq!(value(&metrics, TCP_TIMEOUTS, &[]), 0.0);
    assert_eq!(value(&metrics, TCP_RESETS, &[OUTBOUND]), 0.0);
    assert_eq!(value(&metrics, "mcp_observer_kernel_hooks_attached", &[]), HOOKS as f64);
    assert_eq!(value(&metrics, "mcp_observer_unmatched_ends_total", &[("kind", "tcp_close")]), 0.0);
}

/// An unrelated server on 127.0.0.1:`port` in a network namespace of its own (another pod
/// on the node), which has accepted, read and closed three connections of its own clients
/// when this returns.
pub fn same_port_in_another_namespace(port: &str, purpose: &str) -> Netns {
    let netns = Netns::new(purpose);
    let script = format!(
        "import socket
listener = socket.socket(); listener.bind(('127.0.0.1', {port})); listener.listen(8)
for _ in range(3):
    client = socket.create_connection(('127.0.0.1', {port}))
    conn, _ = listener.accept()
    client.sendall(b'hello'); conn.recv(5); client.close(); conn.recv(1); conn.close()
print('done', flush=True)"
    );
    let mut unrelated = netns.command("python3");
    unrelated.args(["-c", &script]);
    let (_done, said) = Client::spawn(unrelated);
    assert_eq!(said, "done");
    netns
}

#[test]
fn a_listener_on_the_proxys_port_in_another_namespace_is_not_the_proxys() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let observer = start_observer(&[proxy.pid()], &[]);
    let port = proxy.addr.rsplit_once(':').unwrap().1;
    // An unrelated server on the very same address and port, in another network namespace
    // (another pod on the node), with three clients of its own.
    let _unrelated = same_port_in_another_namespace(port, "sameport");
    // The proxy's own: one held open (counted once the proxy reads it, before any data
    // comes), two opened and closed.
    let held = TcpStream::connect(&proxy.addr).unwrap();
    scrape_until(&observer, "the held connection", |m| value(m, TCP_ACTIVE, &[INBOUND]) == 1.0);
    hold_connections(&proxy.addr, 2, Duration::from_millis(20));
    drop(held);
    let metrics = scrape_until(&observer, "the proxy's closes", |m| value(m, TCP_CLOSED, &[INBOUND]) >= 3.0);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = [metrics, scrape(&observer)];
    for metrics in &metrics {
        assert_eq!(value(metrics, TCP_OPENED, &[INBOUND]), 3.0, "only the proxy's own connections");
        assert_eq!(value(metrics, TCP_CLOSED, &[INBOUND]), 3.0);
        assert_eq!(value(metrics, TCP_ACTIVE, &[INBOUND]), 0.0);
    }
}

#[test]
fn two_proxies_on_one_port_in_two_namespaces_count_their_own_and_the_survivor_goes_on() {
    let _serial = kernel_test();
    // Two pods' proxies on the same port, each in its network namespace.
    let (first_ns, second_ns) = (Netns::new("port-a"), Netns::new("port-b"));
    let proxy_in = |netns: &Netns| {
        let mut command = netns.command(testbed_bin());
        command.args(["proxy", "--listen", "127.0.0.1:18080"]);
        Running::spawn(command, " serving ")
    };
    let (first, second) = (proxy_in(&first_ns), proxy_in(&second_ns));
    let observer = start_observer(&[first.pid(), second.pid()], &[]);
    // `count` connections from inside `netns`, each read by the proxy (a request line).
    let connect = |netns: &Netns, count: usize| {
        let script = format!(
            "import socket
for _ in range({count}):
    c = socket.create_connection(('127.0.0.1', 18080)); c.sendall(b'GET /healthz HTTP/1.0\\r\\n\\r\\n'); c.recv(1); c.close()
print('done', flush=True)"
        );
        let mut client = netns.command("python3");
        client.args(["-c", &script]);
        assert_eq!(Client::spawn(client).1, "done");
    };
    let (first_pid, second_pid) = (first.pid().to_string(), second.pid().to_string());
    let opened = |m: &prometheus_parse::Scrape, pid: &str| value(m, TCP_OPENED, &[INBOUND, ("pid", pid)]);
    connect(&first_ns, 3);
    connect(&second_ns, 2);
    scrape_until(&observer, "3 and 2 inbound connections", |m| {
        opened(m, &first_pid) == 3.0 && opened(m, &second_pid) == 2.0
    });
    // The first exits (its listener closes); once the agent forgot it (1 to 2 s later),
    // the second's port is registered again: its connections count again.
    first.signal(libc::SIGKILL);
    scrape_until(&observer, "one target left", |m| value(m, "mcp_observer_targets", &[]) == 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = loop {
        connect(&second_ns, 1);
        std::thread::sleep(Duration::from_millis(100));
        let counted = opened(&scrape(&observer), &second_pid);
        if counted > 2.0 {
            // Settled: a connection made just before may still be on its way.
            std::thread::sleep(Duration::from_millis(300));
            break opened(&scrape(&observer), &second_pid);
        }
        assert!(Instant::now() < deadline, "the survivor's connections are not counted again");
    };
    connect(&second_ns, 4);
    let metrics =
        scrape_until(&observer, "the survivor's 4 more", |m| opened(m, &second_pid) >= counted + 4.0);
    assert_eq!(opened(&metrics, &second_pid), counted + 4.0);
    assert_eq!(opened(&metrics, &first_pid), 3.0);
}

#[test]
fn keepalive_and_retransmission_timeouts_when_the_peer_goes_silent() {
    let _serial = kernel_test();
    let netns = Netns::new("timeouts");
    // Give up on unacknowledged data after 3 retransmissions (~3 s), not 15 (~15 min).
    netns.run(&["sysctl", "-q", "-w", "net.ipv4.tcp_retries2=3"]);
    // One proxy probes idle clients every second; the other never does, so that its
    // connection can only die of retransmissions.
    let proxy = |extra: &[&str]| {
        let mut command = netns.command(testbed_bin());
        command.args(["proxy", "--listen", "127.0.0.1:0"]).args(extra);
        Running::spawn(command, " serving ")
    };
    let keepalive = proxy(&["--tcp-keepalive-secs", "1"]);
    let plain = proxy(&[]);
    let observer = start_observer(&[keepalive.pid(), plain.pid()], &[]);

    // An idle client of the first, and a client of the second waiting 4 s for an answer.
    let (host, port) = keepalive.addr.split_once(':').unwrap();
    let script = format!(
        "import socket, time; s = socket.create_connection(('{host}', {port})); print('connected', flush=True); time.sleep(120)"
    );
    let mut idle = netns.command("python3");
    idle.args(["-c", &script]);
    let (_idle, said) = Client::spawn(idle);
    assert_eq!(said, "connected");
    let mut waiting = netns.command(testbed_bin());
    let url = format!("http://{}/mcp", plain.addr);
    waiting.args(["call", "--url", &url, "--tool", "alpha__sleep", "--args", r#"{"ms":4000}"#]);
    let _waiting = Client::quiet(waiting);
    scrape_until(&observer, "both connections and the call", |m| {
        value(m, TCP_ACTIVE, &[INBOUND]) == 2.0 && value(m, "mcp_proxy_requests_in_flight", &[]) == 1.0
    });

    netns.black_hole();

    let keepalive = [INBOUND, ("kind", "keepalive")];
    let retransmission = [INBOUND, ("kind", "retransmission")];
    let metrics = scrape_until_for(&observer, Duration::from_secs(30), "both timeouts", |m| {
        value(m, TCP_TIMEOUTS, &keepalive) >= 1.0 && value(m, TCP_TIMEOUTS, &retransmission) >= 1.0
    });
    assert_eq!(value(&metrics, TCP_TIMEOUTS, &keepalive), 1.0);
    assert_eq!(value(&metrics, TCP_TIMEOUTS, &retransmission), 1.0);
    assert!(value(&metrics, TCP_RETRANSMITS, &[INBOUND]) >= 3.0, "the answer was retransmitted");
    assert_eq!(value(&metrics, TCP_RESETS, &[INBOUND]), 1.0, "the keepalive timeout's reset");
    assert_eq!(value(&metrics, TCP_CLOSED, &[INBOUND]), 2.0);
    assert_eq!(value(&metrics, TCP_ACTIVE, &[INBOUND]), 0.0);
    // Counted once each, however long we wait.
    std::thread::sleep(Duration::from_secs(2));
    let metrics = scrape(&observer);
    assert_eq!(value(&metrics, TCP_TIMEOUTS, &[]), 2.0);
    assert_eq!(value(&metrics, TCP_OPENED, &[]), 2.0);
}

#[test]
fn child_processes_follow_the_backends_the_proxy_spawns_and_loses() {
    let _serial = kernel_test();
    let proxy = start_proxy_with(&testbed_bin(), &["--backends", "alpha,beta"]);
    let observer = start_observer(&[proxy.pid()], &[]);
    let server = |name: &'static str| ("server", name);
    let exits = |name: &'static str, outcome: &'static str| [("server", name), ("outcome", outcome)];

    call(&proxy, "alpha__echo", json!({"text": "hi"}));
    call(&proxy, "beta__echo", json!({"text": "hi"}));
    let metrics = scrape_until(&observer, "two backends", |m| value(m, CHILDREN, &[]) == 2.0);
    assert_eq!(value(&metrics, CHILDREN, &[server("alpha")]), 1.0);
    assert_eq!(value(&metrics, CHILDREN, &[server("beta")]), 1.0);
    assert_eq!(value(&metrics, SPAWNS, &[]), 2.0);

    // alpha exits with status 0, beta is killed, alpha comes back and exits with status 3.
    call(&proxy, "alpha__crash", json!({"status": 0}));
    scrape_until(&observer, "alpha's clean exit", |m| value(m, EXITS, &exits("alpha", "clean")) == 1.0);
    let beta = children_of(proxy.pid(), "--name beta");
    assert_eq!(beta.len(), 1, "one beta backend: {beta:?}");
    // SAFETY: sending a signal to a process of the proxy we started.
    assert_eq!(unsafe { libc::kill(beta[0] as i32, libc::SIGKILL) }, 0);
    scrape_until(&observer, "beta killed", |m| value(m, EXITS, &exits("beta", "signal")) == 1.0);
    call(&proxy, "alpha__echo", json!({"text": "again"}));
    scrape_until(&observer, "alpha respawned", |m| value(m, CHILDREN, &[server("alpha")]) == 1.0);
    call(&proxy, "alpha__crash", json!({"status": 3}));
    let metrics =
        scrape_until(&observer, "alpha's error exit", |m| value(m, EXITS, &exits("alpha", "error")) == 1.0);

    assert_eq!(value(&metrics, SPAWNS, &[server("alpha")]), 2.0);
    assert_eq!(value(&metrics, SPAWNS, &[server("beta")]), 1.0);
    assert_eq!(value(&metrics, SPAWNS, &[]), 3.0, "only backends were spawned");
    assert_eq!(value(&metrics, EXITS, &exits("alpha", "clean")), 1.0);
    assert_eq!(value(&metrics, EXITS, &exits("alpha", "error")), 1.0);
    assert_eq!(value(&metrics, EXITS, &exits("beta", "signal")), 1.0);
    assert_eq!(value(&metrics, EXITS, &[]), 3.0);
    assert_eq!(value(&metrics, CHILDREN, &[]), 0.0);
}

/// A proxy without probes: a Python process that listens on TCP (and on one more port
/// per `listen` it reads on stdin) and spawns the other commands it reads, printing each
/// new port or child pid.
const PLAIN_PROXY: &str = r#"
import socket, subprocess, sys, threading
def serve(listener):
    while True:
        conn, _ = listener.accept()
        conn.recv(1)
        conn.close()
def listen():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    return listener.getsockname()[1]
print(listen(), flush=True)
children = []
for line in sys.stdin:
    if line.strip() == "listen":
        print(listen(), flush=True)
        continue
    children.append(subprocess.Popen(line.split()))
    print(children[-1].pid, flush=True)
"#;

#[test]
fn a_proxy_without_probes_gets_kernel_metrics_in_kernel_only_mode() {
    let _serial = kernel_test();
    let mut plain = Command::new("/usr/bin/python3")
        .args(["-c", PLAIN_PROXY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = plain.stdin.take().unwrap();
    let mut stdout = BufReader::new(plain.stdout.take().unwrap());
    let mut read_line = || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    let port = read_line();
    let pid = plain.id().to_string();

    let (code, _, stderr) = observe_once(&["--pid", &pid, "--check"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("has no MCP probes") && stderr.contains("--kernel-only"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let (code, stdout_text, stderr) = observe_once(&["--pid", &pid, "--check", "--kernel-only"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let python = python.file_name().unwrap().to_string_lossy();
    assert!(
        stdout_text.contains(&format!("{python} in kernel-only mode (it has no MCP probes)")),
        "{stdout_text}"
    );
    assert!(stdout_text.contains(&format!("listening on TCP ports [{port}]")), "{stdout_text}");

    let observer = start_observer(&[plain.id()], &["--kernel-only"]);
    // Children of an unrelated process (this test) are not the proxy's.
    Command::new("sh").args(["-c", "sleep 0.1; true"]).status().unwrap();
    let mut send = |command: &str| {
        writeln!(stdin, "{command}").unwrap();
        read_line().parse::<i32>().unwrap()
    };
    let sleeper = send("sleep 60");
    send("sleep 60");
    send("true");
    send("false");
    // A port it starts listening on while observed.
    let late_port = send("listen");
    hold_connections(&format!("127.0.0.1:{port}"), 1, Duration::from_millis(50));
    hold_connections(&format!("127.0.0.1:{late_port}"), 2, Duration::from_millis(50));
    let exits = |name: &'static str, outcome: &'static str| [("server", name), ("outcome", outcome)];
    let metrics = scrape_until(&observer, "children and connections", |m| {
        value(m, SPAWNS, &[]) == 4.0 && value(m, EXITS, &[]) == 2.0 && value(m, TCP_CLOSED, &[INBOUND]) == 3.0
    });
    assert_eq!(value(&metrics, CHILDREN, &[("server", "sleep")]), 2.0);
    assert_eq!(value(&metrics, EXITS, &exits("true", "clean")), 1.0);
    assert_eq!(value(&metrics, EXITS, &exits("false", "error")), 1.0);
    // SAFETY: sending a signal to a process our plain proxy spawned.
    assert_eq!(unsafe { libc::kill(sleeper, libc::SIGKILL) }, 0);
    let metrics =
        scrape_until(&observer, "the killed sleep", |m| value(m, EXITS, &exits("sleep", "signal")) == 1.0);
    assert_eq!(value(&metrics, CHILDREN, &[("server", "sleep")]), 1.0);
    assert_eq!(value(&metrics, CHILDREN, &[]), 1.0);
    assert_eq!(value(&metrics, SPAWNS, &[]), 4.0);
    assert_eq!(value(&metrics, TCP_OPENED, &[]), 3.0);
    assert_eq!(value(&metrics, "mcp_observer_probes_attached", &[]), 0.0);
    assert_eq!(value(&metrics, "mcp_observer_kernel_hooks_attached", &[]), HOOKS as f64);
    assert!(
        !metrics.samples.iter().any(|s| s.metric.starts_with("mcp_proxy_request")
            && !matches!(&s.value, prometheus_parse::Value::Gauge(v) if *v == 0.0)),
        "request metrics from a proxy without probes"
    );
    drop(stdin);
    let _ = plain.kill();
    let _ = plain.wait();
    // The second sleep outlives its parent: end it.
    let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();

    // The proxy's ports reused by an unrelated process do not count: the one it opened
    // while observed from the moment it closed, the one it had before from when the
    // agent forgets the proxy.
    let reuse = |port: &str| {
        let listener = TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
        hold_connections(&format!("127.0.0.1:{port}"), 2, Duration::from_millis(20));
        let _accepted: Vec<TcpStream> = (0..2).map(|_| listener.accept().unwrap().0).collect();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            value(&scrape(&observer), TCP_OPENED, &[]),
            3.0,
            "port {port}'s new owner is not the proxy"
        );
    };
    reuse(&late_port.to_string());
    scrape_until(&observer, "the proxy gone", |m| value(m, "mcp_observer_targets", &[]) == 0.0);
    std::thread::sleep(Duration::from_millis(2500));
    reuse(&port);
}

#[test]
fn tracefs_is_mounted_when_absent_and_named_when_it_cannot_be() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let pid = proxy.pid().to_string();
    // A mount namespace of our own, without tracefs.
    let unmounted = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "umount /sys/kernel/tracing && { umount /sys/kernel/debug/tracing 2>/dev/null; true; } && exec \"$0\" \"$@\"",
    ];
    let (code, stdout, stderr) = observe_once(&["--pid", &pid, "--check"], &unmounted);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("mounted tracefs at /sys/kernel/tracing"), "{stderr}");
    assert!(stdout.contains("kernel hooks: 10 attached"), "{stdout}");

    let without_sys_admin = [&unmounted[..], &["setpriv", "--bounding-set", "-sys_admin", "--"]].concat();
    // Kernel-only: creating uprobes takes CAP_SYS_ADMIN too.
    let (code, _, stderr) = observe_once(&["--pid", &pid, "--check", "--kernel-only"], &without_sys_admin);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.starts_with("mcp-observe: error: tracefs is absent"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(std::path::Path::new("/sys/kernel/tracing/events").is_dir(), "the host's tracefs is untouched");
}
