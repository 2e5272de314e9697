//! Real processes for the kernel tests: the testbed proxy, its load client (the ground
//! truth), the burst generator, and mcp-observe itself, all spawned from the release
//! binaries.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, mpsc},
    time::{Duration, Instant},
};

use prometheus_parse::{Scrape, Value};

/// The kernel tests share the kernel's BPF objects: one at a time, whatever the runner does.
static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the serial lock and fails (never skips) when not root.
pub fn kernel_test() -> MutexGuard<'static, ()> {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the kernel tests load eBPF and need root: run them with `cargo xtask test` as root"
    );
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn observer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mcp-observe"))
}

pub fn testbed_bin() -> PathBuf {
    let path = observer_bin().with_file_name("mcp-testbed");
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build --release`; `cargo xtask test` does)",
        path.display()
    );
    path
}

/// A child process that announced its listening address on stderr; killed on drop.
pub struct Running {
    pub child: Child,
    pub addr: String,
    /// Every stderr line so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The network namespace its address is in (`/proc/PID/ns/net`), when not the test's.
    pub netns: Option<PathBuf>,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawns `command` and waits for a stderr line containing `marker` followed by an
    /// address (`http://ADDR`).
    pub fn spawn(mut command: Command, marker: &str) -> Running {
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let log = stderr.clone();
        let wanted = marker.to_string();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(rest) = line.split(&wanted).nth(1) {
                    let addr =
                        rest.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
                    let _ = tx.send(addr);
                }
                log.lock().unwrap().push(line);
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!("{command:?} never printed {marker:?}; stderr: {:?}", stderr.lock().unwrap());
        };
        Running { child, addr, stderr, netns: None }
    }

    /// GETs `path` from its HTTP listener: the body of a 2xx answer. From a thread in its
    /// network namespace when it has one of its own.
    pub fn get(&self, path: &str) -> Result<String, ureq::Error> {
        let url = format!("http://{}{path}", self.addr);
        let fetch = || ureq::get(&url).call()?.body_mut().read_to_string();
        let Some(netns) = &self.netns else { return fetch() };
        let netns = std::fs::File::open(netns).expect("the network namespace");
        std::thread::scope(|scope| {
            let inside = scope.spawn(|| {
                // SAFETY: moves this thread alone into the namespace `netns` names.
                let entered =
                    unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) };
                assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                fetch()
            });
            inside.join().expect("the GET thread")
        })
    }

    /// Waits for the process to exit after `signal`, and returns its stderr lines.
    pub fn stop(mut self, signal: i32) -> Vec<String> {
        self.signal(signal);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exit after signal {signal}: {status:?}");
        // The reader thread may still be appending the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0, "kill({}, {signal})", self.pid());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the testbed proxy from `binary` on a free loopback port.
pub fn start_proxy(binary: &Path) -> Running {
    start_proxy_with(binary, &[])
}

/// Starts the testbed proxy with extra arguments.
pub fn start_proxy_with(binary: &Path, extra: &[&str]) -> Running {
    let mut command = Command::new(binary);
    command.args(["proxy", "--listen", "127.0.0.1:0"]).args(extra);
    Running::spawn(command, " serving ")
}

/// Starts mcp-observe on `pids` and waits until /readyz answers 200.
pub fn start_observer(pids: &[u32], extra: &[&str]) -> Running {
    start_observer_env(pids, extra, &[])
}

/// [`start_observer`] with environment variables.
pub fn start_observer_env(pids: &[u32], extra: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(observer_bin());
    command.args(["--listen", "127.0.0.1:0"]).args(extra).env("RUST_LOG", "info").envs(env.iter().copied());
    for pid in pids {
        command.args(["--pid", &pid.to_string()]);
    }
    let observer = Running::spawn(command, "serving /metrics on ");
    wait_ready(&observer);
    observer
}

/// Waits until the mcp-observe in `observer` answers /readyz with 200.
pub fn wait_ready(observer: &Running) {
    wait_for(Duration::from_secs(10), "mcp-observe ready", || observer.get("/readyz").is_ok());
}

pub fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of the load client's ground truth.
#[derive(Clone, Debug)]
pub struct Truth {
    pub method: String,
    pub transport: String,
    pub server: String,
    pub tool: String,
    pub identity: String,
    pub status: String,
    pub count: u64,
}

/// Runs the testbed load client against `proxy` and returns its ground truth.
pub fn run_load(proxy: &Running, calls: usize, concurrency: usize, seed: u64, sleep_ms: u64) -> Vec<Truth> {
    requests_of(&load_truth(proxy, calls, concurrency, seed, sleep_ms, &[]))
}

/// Runs the load client with extra arguments and returns its whole ground truth.
pub fn load_truth(
    proxy: &Running,
    calls: usize,
    concurrency: usize,
    seed: u64,
    sleep_ms: u64,
    extra: &[&str],
) -> serde_json::Value {
    testbed_client(&[
        &["load", "--url", &format!("http://{}/mcp", proxy.addr)],
        &["--calls", &calls.to_string(), "--concurrency", &concurrency.to_string()],
        &["--seed", &seed.to_string(), "--sleep-ms", &sleep_ms.to_string()],
        extra,
    ])
}

/// Runs a testbed client subcommand and parses the one JSON object it prints.
pub fn testbed_client(args: &[&[&str]]) -> serde_json::Value {
    let output = Command::new(testbed_bin()).args(args.concat()).output().expect("run the testbed client");
    assert!(output.status.success(), "testbed client failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("ground truth is JSON")
}

/// The request rows of a ground truth.
pub fn requests_of(truth: &serde_json::Value) -> Vec<Truth> {
    truth["requests"]
        .as_array()
        .expect("requests array")
        .iter()
        .map(|row| {
            let field = |name: &str| row[name].as_str().expect("string field").to_string();
            Truth {
                method: field("method"),
                transport: field("transport"),
                server: field("server"),
                tool: field("tool"),
                identity: field("identity"),
                status: field("status"),
                count: row["count"].as_u64().expect("count"),
            }
        })
        .collect()
}

/// Adds up ground truths from several load runs, label set by label set.
pub fn merge(truths: &[Vec<Truth>]) -> Vec<Truth> {
    let mut merged: Vec<Truth> = Vec::new();
    for row in truths.iter().flatten() {
        match merged.iter_mut().find(|m| m.labels() == row.labels()) {
            Some(m) => m.count += row.count,
            None => merged.push(row.clone()),
        }
    }
    merged
}

impl Truth {
    /// A request whose end never came, expired by the observer: only its status is known.
    pub fn expired(&self) -> bool {
        self.status == "timeout" && self.method.is_empty()
    }

    pub fn labels(&self) -> [(&str, &str); 6] {
        [
            ("method", &self.method),
            ("transport", &self.transport),
            ("status", &self.status),
            ("identity", &self.identity),
            ("server", &self.server),
            ("tool", &self.tool),
        ]
    }
}

/// A scrape once the agent has read what is on its way (it drains every 5 ms): one scrape
/// collects family after family while events are recorded, so families read during a
/// burst can disagree by the events recorded in between.
pub fn settled(observer: &Running) -> Scrape {
    std::thread::sleep(Duration::from_millis(200));
    scrape(observer)
}

pub fn scrape(observer: &Running) -> Scrape {
    let body = observer.get("/metrics").expect("GET /metrics");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

/// Sum of the samples of `metric` whose labels include all of `labels`.
pub fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a scalar: {other:?}"),
        })
        .sum()
}

/// Observations of the histogram series with exactly `labels` at or below `le`.
pub fn bucket(scrape: &Scrape, metric: &str, labels: &[(&str, &str)], le: f64) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Histogram(buckets) => {
                buckets
                    .iter()
                    .find(|b| b.less_than == le)
                    .unwrap_or_else(|| panic!("no bucket le={le}"))
                    .count
            }
            other => panic!("{metric} is not a histogram: {other:?}"),
        })
        .sum()
}

/// Asserts that the observer's request series equal the ground truth exactly: every label
/// set's counter and histogram count, and no series beyond them.
pub fn assert_requests_match(observer: &Running, truth: &[Truth]) {
    assert_workload_requests_match(observer, &[], truth);
    let ended: u64 = truth.iter().filter(|t| !t.expired()).map(|t| t.count).sum();
    let metrics = scrape(observer);
    assert_eq!(value(&metrics, "mcp_observer_events_total", &[("kind", "request_end")]), ended as f64);
    for clean in [
        "mcp_observer_events_lost_total",
        "mcp_observer_decode_errors_total",
        "mcp_observer_bad_user_pointers_total",
        "mcp_observer_unmatched_ends_total",
        "mcp_observer_late_request_ends_total",
        "mcp_observer_in_flight_full_total",
        "mcp_observer_duplicate_request_starts_total",
    ] {
        assert_eq!(value(&metrics, clean, &[]), 0.0, "{clean}");
    }
}

/// [`assert_requests_match`] for the series of one workload (`workload`: its labels),
/// among others; its requests in flight back to 0.
pub fn assert_workload_requests_match(observer: &Running, workload: &[(&str, &str)], truth: &[Truth]) {
    let total: u64 = truth.iter().map(|t| t.count).sum();
    let mut metrics = scrape(observer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while value(&metrics, "mcp_proxy_requests_total", workload) < total as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        metrics = scrape(observer);
    }
    let metrics = settled(observer);
    for row in truth {
        let labels: Vec<(&str, &str)> = row.labels().into_iter().chain(workload.iter().copied()).collect();
        assert_eq!(
            value(&metrics, "mcp_proxy_requests_total", &labels),
            row.count as f64,
            "requests_total for {row:?} in {workload:?}"
        );
        // An expired request never ended: it has no latency.
        let timed = if row.expired() { 0 } else { row.count };
        assert_eq!(
            value(&metrics, "mcp_proxy_request_duration_seconds_count", &labels),
            timed as f64,
            "duration histogram count for {row:?} in {workload:?}"
        );
    }
    assert_eq!(
        value(&metrics, "mcp_proxy_requests_total", workload),
        total as f64,
        "series beyond the ground truth in {workload:?}"
    );
    assert_eq!(value(&metrics, "mcp_proxy_requests_in_flight", workload), 0.0, "in flight in {workload:?}");
}

/// Opens `count` connections to `addr` at once, holds them `hold`, then closes them.
pub fn hold_connections(addr: &str, count: usize, hold: Duration) {
    let streams: Vec<std::net::TcpStream> =
        (0..count).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(hold);
    drop(streams);
}

/// The pids of `pid`'s children whose command line contains `needle`.
pub fn children_of(pid: u32, needle: &str) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " ").contains(needle))
        })
        .collect()
}

/// Asserts that every `sleep` tool call (which sleeps ≥ `min_seconds`) landed in a bucket
/// at or above it: none at or below the largest bucket bound under `min_seconds`.
pub fn assert_sleeps_are_slow(observer: &Running, truth: &[Truth], below: f64) {
    let metrics = scrape(observer);
    let sleeps: Vec<&Truth> = truth.iter().filter(|t| t.tool == "sleep" && t.status == "ok").collect();
    assert!(!sleeps.is_empty(), "the mix has no sleep calls");
    for row in sleeps {
        let labels = row.labels();
        assert_eq!(
            bucket(&metrics, "mcp_proxy_request_duration_seconds", &labels, below),
            0.0,
            "fast sleeps for {row:?}"
        );
        assert_eq!(bucket(&metrics, "mcp_proxy_request_duration_seconds", &labels, 300.0), row.count as f64);
    }
}

/// The rows of ground-truth table `key` (`acl`, `sessions`, …).
pub fn truth_rows<'a>(truth: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    truth[key].as_array().unwrap_or_else(|| panic!("ground truth has no {key}: {truth}"))
}

/// Rows of a ground-truth table (`truth[key]`): each row's string fields as labels, and
/// its `count`. The metric must have exactly these series with exactly these values.
pub fn assert_rows_match(observer: &Running, metric: &str, truth: &serde_json::Value, key: &str) {
    let rows = truth_rows(truth, key);
    let metrics = scrape(observer);
    let mut total = 0.0;
    for row in rows {
        let labels: Vec<(&str, &str)> = row
            .as_object()
            .expect("row object")
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
            .collect();
        let count = row["count"].as_f64().expect("count");
        assert_eq!(value(&metrics, metric, &labels), count, "{metric} for {row}");
        total += count;
    }
    assert_eq!(value(&metrics, metric, &[]), total, "{metric}: series beyond the ground truth");
}

/// Scrapes until `done` holds (at most 10 s), then returns that scrape.
pub fn scrape_until(observer: &Running, what: &str, done: impl FnMut(&Scrape) -> bool) -> Scrape {
    scrape_until_for(observer, Duration::from_secs(10), what, done)
}

/// Scrapes until `done` holds (at most `timeout`), then returns that scrape.
pub fn scrape_until_for(
    observer: &Running,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let metrics = scrape(observer);
        if done(&metrics) {
            return metrics;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            scalars(&metrics)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scrape's counters and gauges, a line each: what a timed-out wait saw last.
fn scalars(scrape: &Scrape) -> String {
    let mut lines = Vec::new();
    for sample in &scrape.samples {
        if let Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) = sample.value {
            lines.push(format!("{}{{{}}} {v}", sample.metric, sample.labels));
        }
    }
    lines.join("\n")
}

/// Runs `mcp-observe ARGS` to completion: (exit code, stdout, stderr).
pub fn observe_once(args: &[&str], wrapper: &[&str]) -> (i32, String, String) {
    observe_once_in(args, wrapper, &[])
}

/// [`observe_once`] with environment variables.
pub fn observe_once_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    observe_once_in(args, &[], env)
}

fn observe_once_in(args: &[&str], wrapper: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(observer_bin());
            c
        }
        None => Command::new(observer_bin()),
    };
    let output = command
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run mcp-observe");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A network namespace of the test's own, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(purpose: &str) -> Netns {
        let name = format!("mcp-observe-{purpose}-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status().expect("ip netns add");
        assert!(status.success(), "ip netns add {name}");
        let netns = Netns { name };
        netns.run(&["ip", "link", "set", "lo", "up"]);
        netns
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    pub fn run(&self, argv: &[&str]) {
        let output = self.command(argv[0]).args(&argv[1..]).output().expect("run in the namespace");
        assert!(output.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// From now on the namespace drops every packet it receives (nftables).
    pub fn black_hole(&self) {
        self.run(&["nft", "add", "table", "inet", "blackhole"]);
        let chain = "{ type filter hook input priority 0; policy drop; }";
        self.run(&["nft", "add", "chain", "inet", "blackhole", "input", chain]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A child of the test that printed a first line on stdout; killed on drop.
pub struct Client {
    child: Child,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Client {
    /// `command`, its output discarded.
    pub fn quiet(mut command: Command) -> Client {
        Client { child: command.stdout(Stdio::null()).spawn().expect("spawn client"), _stdout: None }
    }

    pub fn spawn(mut command: Command) -> (Client, String) {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().expect("spawn client");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (Client { child, _stdout: Some(stdout) }, line.trim().to_string())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `setpriv` keeping only `caps` (kernel names, e.g. `SYS_PTRACE`) for a root process.
pub fn with_only(caps: &[String]) -> Vec<String> {
    let kept: Vec<String> = caps.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
    vec!["setpriv".into(), format!("--bounding-set=-all,{}", kept.join(",")), "--".into()]
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(purpose: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mcp-observe-{purpose}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Scratch(dir)
    }

    /// A copy of the testbed binary at `relative`: a file (an inode) of its own.
    pub fn copy_testbed(&self, relative: &str) -> PathBuf {
        let path = self.0.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(testbed_bin(), &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An overlay mount of `lower`, as a container runtime makes one per container; unmounted
/// on drop.
pub struct Overlay(pub PathBuf);

impl Overlay {
    pub fn new(scratch: &Scratch, lower: &Path, name: &str) -> Overlay {
        let [upper, work, merged] = ["upper", "work", "merged"].map(|d| scratch.0.join(name).join(d));
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        let status =
            Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&merged).status();
        assert!(status.unwrap().success(), "mount -t overlay {options}");
        Overlay(merged)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
