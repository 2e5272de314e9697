//! `mcp-observe top`, driven in tmux and read back with `capture-pane`, against the load
//! client's ground truth: once attached itself (`--pid`), once reading a running agent
//! (`--url`).

use std::{collections::BTreeMap, process::Command, time::Duration};

use crate::{links_of, programs_held_by, support::*};

#[test]
fn top_shows_each_backend_and_tool_as_the_load_client_counted_them() {
    let _serial = kernel_test();
    let proxy = start_proxy(&testbed_bin());
    let agent = start_observer(&[proxy.pid()], &[]);
    let pid = proxy.pid().to_string();
    let url = format!("http://{}/metrics", agent.addr);
    let observer = observer_bin();
    let observer = observer.to_str().unwrap();
    // A window longer than the test: every figure covers the whole load.
    let attached = Tmux::start("attached", &[observer, "top", "--pid", &pid, "--window-secs", "600"]);
    let reading = Tmux::start("reading", &[observer, "top", "--url", &url, "--window-secs", "600"]);
    for top in [&attached, &reading] {
        top.until("the header", |screen| screen.contains(&format!("pid {pid}: 0 in flight")));
    }

    let truth = load_truth(&proxy, 300, 4, 5, 300, &[]);
    let mut expected: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for t in requests_of(&truth) {
        let server = if t.server.is_empty() { "-".to_string() } else { t.server.clone() };
        let tool = if t.tool.is_empty() { format!("[{}]", t.method) } else { t.tool.clone() };
        let (total, errors) = expected.entry((server, tool)).or_default();
        *total += t.count as f64;
        *errors += if t.status == "ok" { 0.0 } else { t.count as f64 };
    }
    for top in [&attached, &reading] {
        // Sessions close after the last request ends: a screen may show one, not the other.
        let idle = [format!("pid {pid}: 0 in flight"), " 0 sessions · backends 2 connected / ".to_string()];
        let screen = top.until("every row's total and the idle gauges", |screen| {
            let rows = rows(screen);
            expected.iter().all(|(key, (total, _))| rows.get(key).is_some_and(|row| row.total == *total))
                && idle.iter().all(|gauge| screen.contains(gauge.as_str()))
        });
        let rows = rows(&screen);
        assert_eq!(rows.len(), expected.len(), "rows beyond the ground truth:\n{screen}");
        for (key, (total, errors)) in &expected {
            let row = &rows[key];
            assert_eq!(row.errors, format!("{:.1}", errors / total * 100.0), "{key:?}:\n{screen}");
            assert!(row.rate > 0.0, "{key:?}:\n{screen}");
            let p99 = milliseconds(&row.p99);
            if key.1 == "sleep" && *errors == 0.0 {
                assert!(p99 > 250.0 && p99 <= 500.0, "sleep p99 {p99} ms:\n{screen}");
            } else if key.1 == "echo" {
                assert!(p99 <= 250.0, "echo p99 {p99} ms:\n{screen}");
            }
        }
        // (Configured backends are told once, at the proxy's start, before anyone attached:
        // only the connected ones are checked.)
        assert!(screen.contains("events lost: 0"), "{screen}");
    }

    // `q` detaches what `top --pid` attached, and exits 0.
    let ours = programs_held_by(attached.pid());
    assert!(!ours.is_empty(), "top --pid holds its programs");
    for top in [&attached, &reading] {
        top.keys("q");
        top.until_clean_exit();
    }
    assert_eq!(links_of(&ours), 0, "links left behind");

    let (code, _, stderr) =
        observe_once(&["top", "--url", "http://127.0.0.1:1/metrics", "--window-secs", "5"], &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("mcp-observe: error: cannot read http://127.0.0.1:1/metrics: ")
            && stderr
                .trim_end()
                .ends_with("start an agent there (mcp-observe --pid PID), or use top --pid PID"),
        "{stderr}"
    );
    let (code, _, stderr) = observe_once(&["top"], &[]);
    assert_eq!(code, 2, "neither --pid nor --url: {stderr}");
}

struct Shown {
    rate: f64,
    p99: String,
    errors: String,
    total: f64,
}

/// The table's rows by (backend, tool): `pid N BACKEND TOOL REQ/S P50 P99 ERR% TOTAL`.
fn rows(screen: &str) -> BTreeMap<(String, String), Shown> {
    screen
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            let [_pid, _n, server, tool, rate, _p50, p99, errors, total] =
                cells.as_slice().try_into().ok()?;
            let shown = Shown {
                rate: rate.parse().ok()?,
                p99: p99.to_string(),
                errors: errors.to_string(),
                total: total.parse().ok()?,
            };
            Some(((server.to_string(), tool.to_string()), shown))
        })
        .collect()
}

fn milliseconds(shown: &str) -> f64 {
    match shown.strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => shown.strip_suffix('s').unwrap().parse::<f64>().unwrap() * 1e3,
    }
}

/// A tmux server of the test's own, one 200×50 window running a command; the pane stays
/// after the command exits so that its status can be read.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, command: &[&str]) -> Tmux {
        let socket = format!("mcp-observe-top-{name}-{}", std::process::id());
        let tmux = Tmux { socket };
        tmux.run(&["-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "50", "sh"]);
        tmux.run(&["set-option", "-g", "remain-on-exit", "on"]);
        let command = format!("exec {}", command.join(" "));
        tmux.run(&["respawn-pane", "-k", "-t", "0", &command]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux").args(["-L", &self.socket]).args(args).output().expect("run tmux");
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "0"])
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "0", keys]);
    }

    fn pid(&self) -> u32 {
        self.run(&["display-message", "-p", "-t", "0", "#{pane_pid}"]).trim().parse().unwrap()
    }

    /// Waits until the screen satisfies `done`; returns it.
    fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        wait_for(Duration::from_secs(30), what, || {
            screen = self.screen();
            done(&screen)
        });
        screen
    }

    /// Waits for the command to exit, and requires status 0 (which tmux may show empty).
    fn until_clean_exit(&self) {
        let mut state = String::new();
        wait_for(Duration::from_secs(10), "top to exit", || {
            state = self.run(&[
                "display-message",
                "-p",
                "-t",
                "0",
                "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}",
            ]);
            state.starts_with('1')
        });
        assert!(["1::", "1:0:"].contains(&state.trim()), "dead:status:signal {state}\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}
