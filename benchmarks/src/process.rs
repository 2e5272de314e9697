//! The processes a benchmark starts (mcp-observe, proxies, load), their addresses, and
//! what /proc says they cost.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A child process, stopped with SIGTERM (then killed) when dropped.
pub struct Running {
    pub child: Child,
    /// What followed the marker on its announcing stderr line (an address, or a pid).
    pub announced: String,
}

impl Running {
    /// Spawns `command` and waits (30 s at most) for a stderr line containing `marker`;
    /// later stderr lines are passed through to ours.
    pub fn spawn(command: &mut Command, marker: &str) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        let lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        let (tx, rx) = mpsc::channel();
        let wanted = marker.to_string();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                match line.split(&wanted).nth(1) {
                    Some(rest) => {
                        let _ = tx
                            .send(rest.trim_start_matches("http://").split('/').next().unwrap_or("").into());
                    }
                    None if line.contains("error") || line.contains("WARN") => eprintln!("  {line}"),
                    None => {}
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(announced) => Ok(Self { child, announced }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{command:?} did not print {marker:?} within 30 s")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("piped stdin")
    }

    /// Writes `line` to its stdin and reads one line of its stdout as JSON.
    pub fn ask(&mut self, line: &str) -> anyhow::Result<serde_json::Value> {
        writeln!(self.stdin(), "{line}")?;
        self.answer()
    }

    /// Reads one line of its stdout as JSON.
    pub fn answer(&mut self) -> anyhow::Result<serde_json::Value> {
        let stdout: &mut ChildStdout = self.child.stdout.as_mut().expect("piped stdout");
        let mut line = Vec::new();
        let mut byte = [0u8];
        while stdout.read(&mut byte)? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        serde_json::from_slice(&line)
            .with_context(|| format!("pid {} answered {:?}", self.pid(), String::from_utf8_lossy(&line)))
    }

    /// SIGTERM, then waits (and kills after 10 s).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("pid {} ignored SIGTERM for 10 s", self.pid())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// mcp-observe `args` on a free loopback port, ready (/readyz answered 200).
pub fn observer(binary: &Path, args: &[&str]) -> anyhow::Result<Running> {
    let observer = Running::spawn(
        Command::new(binary).args(args).args(["--listen", "127.0.0.1:0"]).env("RUST_LOG", "info"),
        "serving /metrics on ",
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&observer.announced, "/readyz").map(|(code, _)| code).ok() != Some(200) {
        if Instant::now() > deadline {
            bail!("mcp-observe {args:?} was not ready within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(observer)
}

/// A plain HTTP/1.0 GET: (status code, body).
pub fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("HTTP response without a body")?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("HTTP status line")?;
    Ok((code, body.to_string()))
}

/// The sum of every sample of `name` whose labels contain all of `labels` (`k="v"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples in a text exposition: what Prometheus counts as series.
pub fn series(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// CPU time of process `pid` so far, to the nanosecond, threads that ended included: its
/// process CPU-time clock (the ticks of /proc/PID/stat are 10 ms).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: plain calls filling the values passed by pointer.
    let time = unsafe {
        let code = libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock);
        anyhow::ensure!(code == 0, "the CPU clock of pid {pid}: {}", std::io::Error::from_raw_os_error(code));
        let mut time: libc::timespec = std::mem::zeroed();
        anyhow::ensure!(libc::clock_gettime(clock, &mut time) == 0, "reading the CPU clock of pid {pid}");
        time
    };
    Ok(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

/// Resident set size of `pid`, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// A number of a JSON answer; NaN when absent.
pub fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}
