//! tracefs: found or mounted, and the record layout of each tracepoint the kernel hooks
//! read, parsed from its `format` file (Rust eBPF has no CO-RE, so offsets are learnt
//! from the running kernel instead of compiled in).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use observer_common::{ABSENT, Layout};

use crate::error::ObserveError;

/// Where tracefs lives: its own mount point first, the debugfs path of older systems next.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracepoint the kernel hooks attach to, with the program handling it.
#[derive(Debug)]
pub struct Hook {
    pub category: &'static str,
    pub name: &'static str,
    pub program: &'static str,
    /// What is lost on a kernel without it; `None` when it is required.
    pub without: Option<&'static str>,
}

const fn hook(category: &'static str, name: &'static str, program: &'static str) -> Hook {
    Hook { category, name, program, without: None }
}

/// Every kernel hook, the process tree's first (see `Loaded::attach_hooks`).
pub const HOOKS: &[Hook] = &[
    hook("task", "task_newtask", "mcp_task_newtask"),
    hook("sched", "sched_process_exec", "mcp_sched_process_exec"),
    Hook {
        without: Some("child exit statuses (outcome=\"unknown\")"),
        ..hook("syscalls", "sys_enter_exit_group", "mcp_sys_enter_exit_group")
    },
    hook("sched", "sched_process_exit", "mcp_sched_process_exit"),
    hook("sock", "inet_sock_set_state", "mcp_inet_sock_set_state"),
    Hook {
        without: Some("retransmission timeouts"),
        ..hook("sock", "inet_sk_error_report", "mcp_inet_sk_error_report")
    },
    hook("tcp", "tcp_send_reset", "mcp_tcp_send_reset"),
    hook("tcp", "tcp_receive_reset", "mcp_tcp_receive_reset"),
    hook("tcp", "tcp_retransmit_skb", "mcp_tcp_retransmit_skb"),
    Hook {
        without: Some(
            "check of whose an accepted connection is (a listener on the same port in another network namespace counts too)",
        ),
        ..hook("sock", "sock_recv_length", "mcp_sock_recv_length")
    },
];

/// Whether this kernel has the tracepoint.
pub fn exists(tracefs: &Path, hook: &Hook) -> bool {
    has_tracepoint(tracefs, hook.category, hook.name)
}

fn has_tracepoint(tracefs: &Path, category: &str, name: &str) -> bool {
    tracefs.join("events").join(category).join(name).is_dir()
}

/// The tracefs mount, mounting it first when it is absent (tracepoints are attached by
/// their ids, which only tracefs tells).
pub fn ensure() -> Result<PathBuf, ObserveError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let target = MOUNTS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (source, dir) = (c("tracefs"), c(target));
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let rc = unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(ObserveError::TracefsAbsent {
            path: target.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    log::info!("mounted tracefs at {target}");
    find().ok_or_else(|| ObserveError::TracefsAbsent {
        path: target.into(),
        source: std::io::Error::other("mounted, but it has no events directory"),
    })
}

/// The tracefs mount, if there is one.
pub fn find() -> Option<PathBuf> {
    MOUNTS.iter().map(PathBuf::from).find(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    offset: u32,
    size: u32,
}

/// A parsed `format` file: its fields by name, and its print format.
struct Format {
    event: String,
    fields: HashMap<String, Field>,
    print: String,
}

impl Format {
    fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, ObserveError> {
        let path = tracefs.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|source| ObserveError::Tracepoint { event: format!("{category}:{name}"), source })?;
        Ok(Self::parse(&format!("{category}:{name}"), &text))
    }

    fn parse(event: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        let mut print = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(fmt) = line.strip_prefix("print fmt:") {
                print = fmt.to_string();
            }
            // `field:TYPE NAME[N];	offset:O;	size:S;	signed:B;`
            let mut parts = line.split(';').map(str::trim);
            let Some(decl) = parts.next().and_then(|p| p.strip_prefix("field:")) else { continue };
            let number = |key: &str, part: Option<&str>| part?.strip_prefix(key)?.parse::<u32>().ok();
            let (Some(offset), Some(size)) = (number("offset:", parts.next()), number("size:", parts.next()))
            else {
                continue;
            };
            let name = decl.rsplit(' ').next().unwrap_or(decl);
            let name = name.split('[').next().unwrap_or(name);
            fields.insert(name.to_string(), Field { offset, size });
        }
        Self { event: event.to_string(), fields, print }
    }

    /// The offset of field `name`, which must be `size` bytes wide.
    fn offset(&self, name: &'static str, size: u32) -> Result<u32, ObserveError> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(field.offset),
            found => Err(ObserveError::TracepointField {
                event: self.event.clone(),
                field: name,
                expected: size,
                found: found.map(|f| f.size),
            }),
        }
    }

    /// Like [`Self::offset`], [`ABSENT`] when the kernel's tracepoint lacks the field.
    fn optional(&self, name: &'static str, size: u32) -> Result<u32, ObserveError> {
        if self.fields.contains_key(name) { self.offset(name, size) } else { Ok(ABSENT) }
    }

    /// The number the print format's symbol table gives `symbol`: `{ 15, "SYMBOL" }`.
    fn symbol(&self, symbol: &str) -> Option<u32> {
        let at = self.print.find(&format!("\"{symbol}\""))?;
        let before = self.print[..at].trim_end().strip_suffix(',')?;
        let open = before.rfind('{')?;
        before[open + 1..].trim().parse().ok()
    }
}

/// The offsets of every field the kernel hooks read, from this kernel's format files.
pub fn layout(tracefs: &Path) -> Result<Layout, ObserveError> {
    let format = |category, name| Format::read(tracefs, category, name);
    let state = format("sock", "inet_sock_set_state")?;
    let send_reset = format("tcp", "tcp_send_reset")?;
    let receive_reset = format("tcp", "tcp_receive_reset")?;
    let retransmit = format("tcp", "tcp_retransmit_skb")?;
    let newtask = format("task", "task_newtask")?;
    let exec = format("sched", "sched_process_exec")?;
    let exit = format("sched", "sched_process_exit")?;
    // Optional tracepoints: an empty format gives every field ABSENT.
    let optional = |category, name| {
        if has_tracepoint(tracefs, category, name) {
            format(category, name)
        } else {
            Ok(Format::parse(&format!("{category}:{name}"), ""))
        }
    };
    let error = optional("sock", "inet_sk_error_report")?;
    let exit_group = optional("syscalls", "sys_enter_exit_group")?;
    let recv = optional("sock", "sock_recv_length")?;
    Ok(Layout {
        state_skaddr: state.offset("skaddr", 8)?,
        state_oldstate: state.offset("oldstate", 4)?,
        state_newstate: state.offset("newstate", 4)?,
        state_sport: state.offset("sport", 2)?,
        state_dport: state.offset("dport", 2)?,
        state_family: state.offset("family", 2)?,
        state_protocol: state.offset("protocol", 2)?,
        error_error: error.optional("error", 4)?,
        error_sport: error.optional("sport", 2)?,
        error_dport: error.optional("dport", 2)?,
        error_protocol: error.optional("protocol", 2)?,
        send_reset_skaddr: send_reset.offset("skaddr", 8)?,
        send_reset_reason: send_reset.optional("reason", 4)?,
        keepalive_timeout_reason: send_reset.symbol("TCP_KEEPALIVE_TIMEOUT").unwrap_or(ABSENT),
        receive_reset_skaddr: receive_reset.offset("skaddr", 8)?,
        retransmit_skaddr: retransmit.offset("skaddr", 8)?,
        retransmit_err: retransmit.optional("err", 4)?,
        recv_sk: recv.optional("sk", 8)?,
        recv_protocol: recv.optional("protocol", 2)?,
        newtask_pid: newtask.offset("pid", 4)?,
        newtask_comm: newtask.offset("comm", 16)?,
        newtask_clone_flags: newtask.offset("clone_flags", 8)?,
        exec_filename: exec.offset("filename", 4)?,
        process_exit_group_dead: exit.optional("group_dead", 1)?,
        exit_group_error_code: exit_group.optional("error_code", 8)?,
    })
}

/// Whether TCP timeouts can be told apart on this kernel: Linux 6.10 gave resets a
/// reason, and reports a socket's error after closing it.
pub fn timeouts_supported(layout: &Layout) -> bool {
    layout.send_reset_reason != ABSENT
        && layout.keepalive_timeout_reason != ABSENT
        && layout.error_error != ABSENT
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;

print fmt: \"reason=%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 14, \"TCP_STATE\" }, { 15, \"TCP_KEEPALIVE_TIMEOUT\" }, { 16, \"X\" })
";

    #[test]
    fn reads_offsets_sizes_arrays_and_symbols() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        assert_eq!(format.offset("skaddr", 8).unwrap(), 16);
        assert_eq!(format.offset("reason", 4).unwrap(), 28);
        assert_eq!(format.offset("saddr", 28).unwrap(), 32);
        assert_eq!(format.symbol("TCP_KEEPALIVE_TIMEOUT"), Some(15));
        assert_eq!(format.symbol("NOT_SPECIFIED"), Some(0));
        assert_eq!(format.symbol("TCP_ABSENT"), None);
        assert_eq!(format.optional("sock_cookie", 8).unwrap(), ABSENT);
    }

    #[test]
    fn a_missing_or_resized_field_is_named() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        let error = format.offset("skaddr", 4).unwrap_err().to_string();
        assert!(error.contains("tcp:tcp_send_reset") && error.contains("skaddr"), "{error}");
        assert!(format.offset("nope", 4).is_err());
    }

    #[test]
    fn an_older_kernels_exit_tracepoint_lacks_group_dead() {
        let exit = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n";
        let format = Format::parse("sched:sched_process_exit", exit);
        assert_eq!(format.optional("group_dead", 1).unwrap(), ABSENT);
        assert_eq!(format.offset("pid", 4).unwrap(), 24);
        let missing = Format::parse("syscalls:sys_enter_exit_group", "");
        assert_eq!(missing.optional("error_code", 8).unwrap(), ABSENT);
    }

    #[test]
    fn this_kernels_formats_parse() {
        // Every kernel this runs on has tracefs at one of its paths once the tests set it up.
        let Some(tracefs) = find() else { panic!("tracefs is not mounted: run `cargo xtask setup` as root") };
        let layout = layout(&tracefs).unwrap();
        assert_ne!(layout.state_skaddr, layout.state_sport);
        // 6.18: every optional field is there.
        assert!(timeouts_supported(&layout));
        assert_ne!(layout.process_exit_group_dead, ABSENT);
        assert_ne!(layout.exit_group_error_code, ABSENT);
    }
}
