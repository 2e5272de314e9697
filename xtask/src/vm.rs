//! The VM stage: Debian's own kernel packages, booted under QEMU (software emulation:
//! `/dev/kvm` here cannot boot stock kernels, and no network device) on an initramfs made
//! of the release binaries, the kernel test suite's binary, their libraries and busybox,
//! each at its host path. Inside each VM, as root, the kernel tests of
//! `observer/tests/kernel/kernels.rs`'s `on_every_kernel` module run against that kernel;
//! their output comes back on a second serial port.
//!
//! Kernels and busybox are fetched once through an apt state of our own (sources, lists and
//! archives under the cache; never the host's `/etc/apt`) into
//! `${XDG_CACHE_HOME:-~/.cache}/mcp-observe`, outside the work tree, so that CI's fresh
//! clone finds them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{exec, rootfs};

/// The Debian suites whose `linux-image-amd64` is booted: 6.1, the LTS line many node
/// images run, and 6.12.
pub const SUITES: [&str; 2] = ["bookworm", "trixie"];

/// The tests run in each VM: libtest's filter, a module of the kernel tests.
const TESTS: &str = "kernels::on_every_kernel::";

/// The VM a run needs.
#[derive(Clone, Copy)]
enum Machine {
    /// Two vCPUs, one host thread each: the kernel tests.
    Tests,
    /// One vCPU whose clock advances one nanosecond per instruction it executes
    /// (`-icount shift=0`, single-threaded TCG): the instructions suite, whose CPU times
    /// are then instruction counts; marked on the kernel command line for the suite.
    Counting,
}

impl Machine {
    fn qemu_args(self) -> &'static [&'static str] {
        match self {
            Machine::Tests => &["-accel", "tcg,thread=multi", "-smp", "2"],
            Machine::Counting => &["-accel", "tcg", "-icount", "shift=0,sleep=off", "-smp", "1"],
        }
    }

    fn cmdline(self) -> &'static str {
        match self {
            Machine::Tests => "",
            Machine::Counting => ICOUNT_MARK,
        }
    }

    /// A VM that has not powered off by then is killed and counted as failed.
    fn limit(self) -> Duration {
        match self {
            Machine::Tests => Duration::from_secs(600),
            Machine::Counting => Duration::from_secs(1800),
        }
    }
}

/// `mcp-observe-bench`'s mark (its `suites::throughput::ICOUNT_MARK`) for a VM that counts
/// instructions.
const ICOUNT_MARK: &str = "mcp_observe_bench.icount";

/// One kernel's outcome.
pub struct Outcome {
    pub suite: &'static str,
    pub release: String,
    pub passed: u64,
    pub failed: u64,
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/mcp-observe`.
fn cache() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("mcp-observe"))
}

/// The private apt state's options.
fn apt_options(root: &Path) -> Vec<String> {
    let at = |p: &str| root.join(p).display().to_string();
    [
        ("Dir::Etc::SourceList", at("sources.list")),
        ("Dir::Etc::SourceParts", at("sources.list.d")),
        ("Dir::State::Lists", at("lists")),
        ("Dir::State::Status", at("status")),
        ("Dir::Cache", at("cache")),
        ("APT::Architecture", "amd64".into()),
        ("APT::Sandbox::User", "root".into()),
        ("Acquire::Languages", "none".into()),
    ]
    .into_iter()
    .flat_map(|(key, value)| ["-o".to_string(), format!("{key}={value}")])
    .collect()
}

/// A fetched kernel: its release and image.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
    /// Its overlayfs module, uncompressed: the tests mount overlays as container runtimes do.
    overlay: PathBuf,
}

/// The private apt state, its lists updated once per run: the options that select it.
fn apt_state() -> anyhow::Result<Vec<String>> {
    static UPDATED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    if let Some(options) = UPDATED.get() {
        return Ok(options.clone());
    }
    let apt = cache()?.join("apt");
    for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(sub))?;
    }
    let _ = std::fs::File::create_new(apt.join("status"));
    let sources: String = SUITES
        .iter()
        .map(|suite| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"
            )
        })
        .collect();
    std::fs::write(apt.join("sources.list"), sources)?;
    let options = apt_options(&apt);
    exec(Command::new("apt-get").args(&options).arg("update"))?;
    Ok(UPDATED.get_or_init(|| options).clone())
}

/// Debian `suite`'s `package`, downloaded and unpacked into `dir/root` once: unpacked
/// beside it and renamed, so that an interrupted run leaves nothing half-written.
fn unpack(options: &[String], suite: &str, package: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let (root, partial, debs) = (dir.join("root"), dir.join("root.partial"), dir.join("debs"));
    for stale in [&partial, &debs] {
        let _ = std::fs::remove_dir_all(stale);
    }
    std::fs::create_dir_all(&debs)?;
    exec(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(options)
            .args(["download", &format!("{package}/{suite}")]),
    )?;
    for deb in std::fs::read_dir(&debs)? {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb?.path()).arg(&partial))?;
    }
    std::fs::remove_dir_all(&debs)?;
    std::fs::rename(&partial, &root)?;
    Ok(root)
}

/// The kernel of `suite`, fetched and unpacked once.
fn fetch(suite: &str) -> anyhow::Result<Kernel> {
    let dir = cache()?.join("kernels").join(suite);
    if let Some(found) = unpacked(&dir)? {
        return Ok(found);
    }
    let options = apt_state()?;
    // The metapackage depends on the versioned image package, which holds vmlinuz.
    let shown = Command::new("apt-cache")
        .args(&options)
        .args(["show", &format!("linux-image-amd64/{suite}")])
        .output()?;
    let shown = String::from_utf8_lossy(&shown.stdout);
    let image = shown
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .into_iter()
        .flat_map(|d| d.split(','))
        .map(|d| d.split(['(', '|']).next().unwrap_or_default().trim())
        .find(|d| d.starts_with("linux-image-") && !d.ends_with("-unsigned"))
        .with_context(|| format!("no linux-image-amd64 in Debian {suite} in the private apt lists"))?
        .to_string();
    // A cache from before the overlay module was kept is fetched again.
    let _ = std::fs::remove_dir_all(dir.join("root"));
    let root = unpack(&options, suite, &image, &dir)?;
    keep_overlay_module(&root, &dir)?;
    // Only the image is booted; of its modules, the tests need overlayfs alone.
    let _ = std::fs::remove_dir_all(root.join("lib/modules"));
    let _ = std::fs::remove_dir_all(root.join("usr/lib/modules"));
    unpacked(&dir)?.with_context(|| format!("{} holds no boot/vmlinuz-*", root.display()))
}

/// Writes the overlayfs module of the kernel unpacked in `root` to `dir/overlay.ko`,
/// uncompressed (busybox's insmod reads plain modules), through a partial file.
fn keep_overlay_module(root: &Path, dir: &Path) -> anyhow::Result<()> {
    let found = ["lib/modules", "usr/lib/modules"]
        .iter()
        .filter_map(|modules| std::fs::read_dir(root.join(modules)).ok())
        .flatten()
        .flat_map(|release| {
            let overlayfs = release.map(|r| r.path().join("kernel/fs/overlayfs")).unwrap_or_default();
            ["overlay.ko", "overlay.ko.xz", "overlay.ko.zst"].map(|name| overlayfs.join(name))
        })
        .find(|path| path.is_file())
        .with_context(|| format!("no kernel/fs/overlayfs/overlay.ko* under {}", root.display()))?;
    let partial = dir.join("overlay.ko.partial");
    let decompressor = match found.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        _ => None,
    };
    match decompressor {
        Some(tool) => {
            let out = Command::new(tool).arg("-dc").arg(&found).output()?;
            if !out.status.success() {
                bail!("{tool} -dc {}: {}", found.display(), String::from_utf8_lossy(&out.stderr));
            }
            std::fs::write(&partial, out.stdout)?;
        }
        None => {
            std::fs::copy(&found, &partial)?;
        }
    }
    std::fs::rename(&partial, dir.join("overlay.ko"))?;
    Ok(())
}

/// Debian bookworm's static busybox (the initramfs's shell and tools), fetched once.
fn busybox() -> anyhow::Result<PathBuf> {
    let dir = cache()?.join("busybox");
    let find = |root: &Path| {
        ["bin/busybox", "usr/bin/busybox"].map(|p| root.join(p)).into_iter().find(|p| p.is_file())
    };
    if let Some(found) = find(&dir.join("root")) {
        return Ok(found);
    }
    let root = unpack(&apt_state()?, "bookworm", "busybox-static", &dir)?;
    find(&root).with_context(|| format!("busybox-static unpacked into {} holds no busybox", root.display()))
}

fn unpacked(dir: &Path) -> anyhow::Result<Option<Kernel>> {
    let overlay = dir.join("overlay.ko");
    if !overlay.is_file() {
        return Ok(None);
    }
    let Ok(boot) = std::fs::read_dir(dir.join("root/boot")) else { return Ok(None) };
    for entry in boot {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            return Ok(Some(Kernel { release: release.to_string(), vmlinuz: path, overlay }));
        }
    }
    Ok(None)
}

/// The initramfs: `binaries` and their libraries at their host paths, each kernel's
/// overlayfs module at `/lib/modules/<release>/overlay.ko`, busybox for the rest, and
/// `init`; written to `out`.
fn initramfs(
    binaries: &[PathBuf],
    kernels: &[Kernel],
    workdir: &Path,
    staging: &Path,
    out: &Path,
    init: &str,
) -> anyhow::Result<()> {
    if staging.exists() {
        std::fs::remove_dir_all(staging)?;
    }
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root"] {
        std::fs::create_dir_all(staging.join(dir))?;
    }
    std::fs::create_dir_all(staging.join(workdir.strip_prefix("/")?))?;
    rootfs::place_with_libraries(staging, binaries)?;
    for kernel in kernels {
        let modules = staging.join("lib/modules").join(&kernel.release);
        std::fs::create_dir_all(&modules)?;
        std::fs::copy(&kernel.overlay, modules.join("overlay.ko"))?;
    }
    // busybox is static: no libraries.
    let busybox = busybox()?;
    std::fs::copy(&busybox, staging.join("bin/busybox"))?;
    let applets = crate::setup::output(&busybox.display().to_string(), &["--list"]);
    for applet in applets.lines().filter(|a| !a.is_empty()) {
        let at = staging.join("bin").join(applet);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink("busybox", &at)
                .with_context(|| format!("linking {}", at.display()))?;
        }
    }
    std::fs::write(staging.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(staging.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(staging.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    let init_path = staging.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(&init_path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let archived = Command::new("sh")
        .current_dir(staging)
        .arg("-c")
        .arg(format!("find . | cpio -o -H newc --quiet > '{}'", out.display()))
        .status()?;
    if !archived.success() {
        bail!("cpio of {} failed", staging.display());
    }
    std::fs::remove_dir_all(staging)?;
    Ok(())
}

/// What the VM runs as `/init`: `run`, its output on the second serial port, then power
/// off. The initramfs is itself a writable tmpfs: nothing is mounted over `/tmp`, where the
/// workspace may lie (CI clones it there).
fn init(run: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tracefs tracefs /sys/kernel/tracing
insmod /lib/modules/$(uname -r)/overlay.ko
ip link set lo up
{{
{run}
}} > /dev/ttyS1
poweroff -f
"#
    )
}

/// `/init` of the kernel tests' VMs.
fn init_script(workdir: &Path, tests_binary: &Path) -> String {
    init(&format!(
        r#"  echo "kernel $(uname -r)"
  cd {workdir} && {tests} --test-threads=1 --show-output {TESTS} 2>&1
  echo "exit status $?""#,
        workdir = workdir.display(),
        tests = tests_binary.display(),
    ))
}

/// Boots `kernel` on `initrd` and returns what the VM wrote to its second serial port.
fn boot(kernel: &Kernel, initrd: &Path, machine: Machine, logs: (&Path, &Path)) -> anyhow::Result<String> {
    let (console, results) = logs;
    let _ = std::fs::remove_file(results);
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(machine.qemu_args())
        .args(["-cpu", "max", "-m", "2G", "-nic", "none"])
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 {}", machine.cmdline()))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86): run `cargo xtask setup`")?;
    while child.try_wait()?.is_none() {
        if started.elapsed() > machine.limit() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("Linux {} did not power off within {:?}", kernel.release, machine.limit());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(std::fs::read_to_string(results).unwrap_or_default())
}

/// The kernel tests' binary, as `cargo test --no-run` built it.
fn tests_binary() -> anyhow::Result<PathBuf> {
    let output = Command::new("cargo")
        .args(["test", "--release", "--no-run", "--features", crate::KERNEL_TESTS, "--test", "kernel"])
        .arg("--message-format=json")
        .output()?;
    if !output.status.success() {
        bail!("building the kernel tests failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "kernel")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo test --no-run named no kernel test executable")
}

/// Every kernel of [`SUITES`] in turn, on the release build of `workspace`, whatever an
/// earlier one did; each reported on its own line, with its console log printed when it
/// failed.
pub fn run(workspace: &Path) -> anyhow::Result<Vec<Outcome>> {
    let tests = tests_binary()?;
    let binaries = [
        workspace.join("target/release/mcp-observe"),
        workspace.join("target/release/mcp-testbed"),
        tests.clone(),
    ];
    let scratch = workspace.join("target/vm");
    std::fs::create_dir_all(&scratch)?;
    let workdir = workspace.join("observer");
    let initrd = scratch.join("initramfs.cpio");
    let kernels = SUITES.map(fetch).into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    let init = init_script(&workdir, &tests);
    initramfs(&binaries, &kernels, &workdir, &scratch.join("staging"), &initrd, &init)?;
    let mut outcomes = Vec::new();
    for (suite, kernel) in SUITES.into_iter().zip(kernels) {
        let console = scratch.join(format!("{suite}.console.log"));
        let results = scratch.join(format!("{suite}.results.log"));
        let started = Instant::now();
        eprintln!("xtask: booting Debian {suite}'s Linux {} under QEMU (TCG)", kernel.release);
        let output =
            boot(&kernel, &initrd, Machine::Tests, (&console, &results)).unwrap_or_else(|e| format!("{e:#}"));
        println!("{output}");
        let (passed, failed) = judge(&output);
        if failed > 0 {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            println!("Linux {}'s console ({}):\n{log}", kernel.release, console.display());
        }
        eprintln!(
            "xtask: Linux {} (Debian {suite}): {passed} passed, {failed} failed in {:.0} s",
            kernel.release,
            started.elapsed().as_secs_f64()
        );
        outcomes.push(Outcome { suite, release: kernel.release, passed, failed });
    }
    Ok(outcomes)
}

/// Runs the benchmarks' instructions suite in a VM that counts instructions, on the
/// newest kernel of [`SUITES`]; prints its figures and returns their Markdown table.
pub fn bench(workspace: &Path, quick: bool) -> anyhow::Result<Table> {
    let release = workspace.join("target/release");
    let binaries = [
        release.join("mcp-observe"),
        release.join("mcp-testbed"),
        release.join("mcp-observe-bench"),
        release.join("mcp-bench-load"),
        workspace.join("target/bench-without-probes/release/mcp-testbed"),
    ];
    let scratch = workspace.join("target/vm-bench");
    std::fs::create_dir_all(&scratch)?;
    let suite = SUITES[SUITES.len() - 1];
    let kernel = fetch(suite)?;
    let init = bench_init_script(workspace, quick);
    let initrd = scratch.join("initramfs.cpio");
    initramfs(&binaries, std::slice::from_ref(&kernel), workspace, &scratch.join("staging"), &initrd, &init)?;
    let (console, results) = (scratch.join("console.log"), scratch.join("results.log"));
    eprintln!("xtask: booting Debian {suite}'s Linux {} under QEMU counting instructions", kernel.release);
    let output = boot(&kernel, &initrd, Machine::Counting, (&console, &results))?;
    let (figures, table) = split_table(&output);
    println!("{figures}");
    if !figures.contains("exit status 0") {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        bail!("the instructions suite failed in the VM; its console ({}):\n{log}", console.display());
    }
    Ok(table)
}

/// The suite's output, and the Markdown table after it ([`TABLE`]), from what the VM wrote
/// on its serial port (whose tty ends lines with CR LF).
fn split_table(output: &str) -> (String, Table) {
    let output = output.replace("\r\n", "\n");
    let (figures, table) = output.split_once(TABLE).unwrap_or((&output, ""));
    let mut lines = table.lines().map(|line| format!("{line}\n"));
    let header = lines.by_ref().take(2).collect();
    (figures.to_string(), Table { header, rows: lines.collect() })
}

/// A Markdown table of figures: its header and separator lines, and its rows.
pub struct Table {
    pub header: String,
    pub rows: String,
}

/// Separates the suite's output from its Markdown table on the VM's second serial port.
const TABLE: &str = "--- markdown table\n";

/// `/init` of the instructions suite's VM.
fn bench_init_script(workspace: &Path, quick: bool) -> String {
    init(&format!(
        r#"  cd {workspace} && target/release/mcp-observe-bench --only instructions {quick} --markdown /tmp/table.md 2>&1
  echo "exit status $?"
  printf '{TABLE}'
  cat /tmp/table.md"#,
        workspace = workspace.display(),
        quick = if quick { "--quick" } else { "" },
        TABLE = TABLE.replace('\n', "\\n"),
    ))
}

/// Passed and failed tests in one VM's output: every test libtest said it would run must
/// have passed, and the run must have ended with status 0; a VM that never got that far
/// counts as one failure at least.
fn judge(output: &str) -> (u64, u64) {
    let ran = |verdict: &str| {
        output.lines().filter(|l| l.starts_with("test ") && l.ends_with(verdict)).count() as u64
    };
    let (passed, failed) = (ran(" ... ok"), ran(" ... FAILED"));
    let announced = output
        .lines()
        .find_map(|l| l.strip_prefix("running ")?.strip_suffix(" tests")?.parse::<u64>().ok())
        .unwrap_or(0);
    let complete = announced > 0 && passed == announced && output.contains("exit status 0");
    if complete { (passed, 0) } else { (passed, announced.saturating_sub(passed).max(failed).max(1)) }
}

#[cfg(test)]
mod tests {
    use super::{judge, split_table};

    #[test]
    fn the_instructions_table_comes_back_from_the_serial_port_without_its_carriage_returns() {
        let output = "Instructions:\r\n  a: 1\r\nexit status 0\r\n--- markdown table\r\n| h |\r\n| --- |\r\n| a | 1 |\r\n";
        let (figures, table) = split_table(output);
        assert_eq!(figures, "Instructions:\n  a: 1\nexit status 0\n");
        assert_eq!((table.header.as_str(), table.rows.as_str()), ("| h |\n| --- |\n", "| a | 1 |\n"));
    }

    #[test]
    fn a_vm_passes_only_when_every_announced_test_did() {
        let good = "kernel 6.1\nrunning 2 tests\ntest a ... ok\ntest b ... ok\nexit status 0\n";
        assert_eq!(judge(good), (2, 0));
        assert_eq!(judge("running 2 tests\ntest a ... ok\ntest b ... FAILED\nexit status 101\n"), (1, 1));
        assert_eq!(judge("running 2 tests\ntest a ... ok\n"), (1, 1), "cut short");
        assert_eq!(judge("Linux 6.1 did not power off within 600s"), (0, 1));
        assert_eq!(judge("running 0 tests\nexit status 0\n"), (0, 1), "a filter that matched nothing");
    }
}
