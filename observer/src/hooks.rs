//! The kernel hooks: which tracepoint each eBPF program attaches to, and what the running
//! kernel offers of them. Probed before anything is loaded: a program is loaded only when its hook exists and its
//! fields have the expected sizes. Only the process tree's hooks are required; any other
//! one absent is a named gap that costs what its `without` says, never a verifier failure.

use std::path::Path;

use observer_common::{ABSENT, Layout};

use crate::{error::ObserveError, tracefs::Format};

/// A tracepoint the kernel hooks attach to, with the program handling it.
#[derive(Debug)]
pub struct Hook {
    pub category: &'static str,
    pub name: &'static str,
    pub program: &'static str,
    /// What is lost on a kernel without it; `None` when it is required.
    pub without: Option<&'static str>,
    /// Reads the offsets of the fields the program reads from the tracepoint's format.
    fields: fn(&Format, &mut Layout) -> Result<(), ObserveError>,
}

impl Hook {
    /// `category:name`, as tracefs and `--check` name it.
    pub fn tracepoint(&self) -> String {
        format!("{}:{}", self.category, self.name)
    }
}

/// Whether a hook attaches on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Tracepoint,
    /// Not attached, and why.
    Absent(String),
}

const fn hook(
    category: &'static str,
    name: &'static str,
    program: &'static str,
    fields: fn(&Format, &mut Layout) -> Result<(), ObserveError>,
) -> Hook {
    Hook { category, name, program, without: None, fields }
}

/// Every kernel hook, the process tree's first (see `Loaded::attach_hooks`).
pub const HOOKS: &[Hook] = &[
    hook("task", "task_newtask", "mcp_task_newtask", |f, l| {
        l.newtask_pid = f.offset("pid", 4)?;
        l.newtask_comm = f.offset("comm", 16)?;
        l.newtask_clone_flags = f.offset("clone_flags", 8)?;
        Ok(())
    }),
    hook("sched", "sched_process_exec", "mcp_sched_process_exec", |f, l| {
        l.exec_filename = f.offset("filename", 4)?;
        Ok(())
    }),
    Hook {
        without: Some("child exit statuses (outcome=\"unknown\")"),
        ..hook("syscalls", "sys_enter_exit_group", "mcp_sys_enter_exit_group", |f, l| {
            l.exit_group_error_code = f.offset("error_code", 8)?;
            Ok(())
        })
    },
    hook("sched", "sched_process_exit", "mcp_sched_process_exit", |f, l| {
        l.process_exit_group_dead = f.optional("group_dead", 1)?;
        Ok(())
    }),
    Hook {
        without: Some("TCP connection metrics (mcp_proxy_tcp_connections_*)"),
        ..hook("sock", "inet_sock_set_state", "mcp_inet_sock_set_state", |f, l| {
            l.state_skaddr = f.offset("skaddr", 8)?;
            l.state_oldstate = f.offset("oldstate", 4)?;
            l.state_newstate = f.offset("newstate", 4)?;
            l.state_sport = f.offset("sport", 2)?;
            l.state_dport = f.offset("dport", 2)?;
            l.state_family = f.offset("family", 2)?;
            l.state_protocol = f.offset("protocol", 2)?;
            Ok(())
        })
    },
    Hook {
        without: Some("retransmission timeouts"),
        ..hook("sock", "inet_sk_error_report", "mcp_inet_sk_error_report", |f, l| {
            l.error_error = f.offset("error", 4)?;
            l.error_sport = f.offset("sport", 2)?;
            l.error_dport = f.offset("dport", 2)?;
            l.error_protocol = f.offset("protocol", 2)?;
            Ok(())
        })
    },
    Hook {
        without: Some("resets sent and keepalive timeouts"),
        ..hook("tcp", "tcp_send_reset", "mcp_tcp_send_reset", |f, l| {
            l.send_reset_skaddr = f.offset("skaddr", 8)?;
            l.send_reset_reason = f.optional("reason", 4)?;
            l.keepalive_timeout_reason = f.symbol("TCP_KEEPALIVE_TIMEOUT").unwrap_or(ABSENT);
            Ok(())
        })
    },
    Hook {
        without: Some("resets received"),
        ..hook("tcp", "tcp_receive_reset", "mcp_tcp_receive_reset", |f, l| {
            l.receive_reset_skaddr = f.offset("skaddr", 8)?;
            Ok(())
        })
    },
    Hook {
        without: Some("retransmissions"),
        ..hook("tcp", "tcp_retransmit_skb", "mcp_tcp_retransmit_skb", |f, l| {
            l.retransmit_skaddr = f.offset("skaddr", 8)?;
            l.retransmit_err = f.optional("err", 4)?;
            Ok(())
        })
    },
    Hook {
        without: Some(
            "check of whose an accepted connection is: it is the target's by its port alone (a listener on the same port in another network namespace counts too)",
        ),
        ..hook("sock", "sock_recv_length", "mcp_sock_recv_length", |f, l| {
            l.recv_sk = f.offset("sk", 8)?;
            l.recv_protocol = f.offset("protocol", 2)?;
            Ok(())
        })
    },
];

/// What this kernel offers: the fields' offsets, and how each hook of [`HOOKS`] attaches.
#[derive(Debug)]
pub struct Plan {
    pub layout: Layout,
    pub hooks: Vec<(&'static Hook, Via)>,
}

impl Plan {
    /// Reads every hook's format from `tracefs`. Fails only for a required hook.
    pub fn probe(tracefs: &Path) -> Result<Self, ObserveError> {
        let mut layout = Layout::ABSENT;
        let mut hooks = Vec::new();
        for hook in HOOKS {
            let via = match Format::read(tracefs, hook.category, hook.name)? {
                Some(format) => {
                    // A copy, so that a hook refused halfway leaves no offsets behind.
                    let mut with = layout;
                    match (hook.fields)(&format, &mut with) {
                        Ok(()) => {
                            layout = with;
                            Via::Tracepoint
                        }
                        Err(e) if hook.without.is_some() => Via::Absent(e.to_string()),
                        Err(e) => return Err(e),
                    }
                }
                None if hook.without.is_none() => {
                    return Err(ObserveError::RequiredTracepoint { event: hook.tracepoint() });
                }
                None => Via::Absent(format!("no tracepoint {}", hook.tracepoint())),
            };
            hooks.push((hook, via));
        }
        Ok(Self { layout, hooks })
    }

    /// The hooks that could not be attached, with why and what it costs.
    pub fn gaps(&self) -> impl Iterator<Item = (&'static Hook, &str)> {
        self.hooks.iter().filter_map(|(hook, via)| match via {
            Via::Absent(why) => Some((*hook, why.as_str())),
            _ => None,
        })
    }

    /// The hooks attached.
    pub fn attached(&self) -> impl Iterator<Item = &'static Hook> + '_ {
        self.hooks.iter().filter(|(_, via)| *via == Via::Tracepoint).map(|(hook, _)| *hook)
    }

    /// One line per thing this kernel cannot tell, with what it costs the operator: an
    /// absent hook, and fields older kernels' tracepoints lack.
    pub fn gap_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .gaps()
            .map(|(hook, why)| {
                format!("{} not attached ({why}): no {}", hook.tracepoint(), hook.without.unwrap_or_default())
            })
            .collect();
        if self.layout.process_exit_group_dead == ABSENT {
            lines.push(
                "sched:sched_process_exit has no group_dead (Linux 6.16 added it): a child ends with its leader thread"
                    .into(),
            );
        }
        if !timeouts_supported(&self.layout) {
            lines.push(
                "TCP timeouts not counted: this kernel lacks reset reasons or inet_sk_error_report (Linux 6.10 has both)"
                    .into(),
            );
        }
        lines
    }
}

/// Whether TCP timeouts are told apart on this kernel: a keepalive timeout by its reset's
/// reason (Linux 6.10), a retransmission timeout by the `ETIMEDOUT` right after its close.
pub fn timeouts_supported(layout: &Layout) -> bool {
    layout.send_reset_reason != ABSENT
        && layout.keepalive_timeout_reason != ABSENT
        && layout.error_error != ABSENT
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracefs of the test's own with the formats of Linux 6.1, which lacks
    /// `sock_recv_length` and reset reasons: `--check`'s plan there.
    #[test]
    fn a_missing_tracepoint_or_a_resized_field_is_a_gap() {
        let dir = std::env::temp_dir().join(format!("mcp-observe-hooks-{}", std::process::id()));
        for hook in HOOKS.iter().filter(|h| h.name != "sock_recv_length") {
            let at = dir.join("events").join(hook.category).join(hook.name);
            std::fs::create_dir_all(&at).unwrap();
            std::fs::write(at.join("format"), fake_format(hook)).unwrap();
        }
        let plan = Plan::probe(&dir).unwrap();
        let via = |name: &str| plan.hooks.iter().find(|(h, _)| h.name == name).unwrap().1.clone();
        assert_eq!(via("inet_sock_set_state"), Via::Tracepoint);
        assert_eq!(plan.layout.recv_sk, ABSENT, "the program reading it is not loaded");
        assert!(!timeouts_supported(&plan.layout), "6.1's resets have no reason");

        let without = Plan::probe(&dir).unwrap();
        let gaps: Vec<_> = without.gaps().map(|(h, why)| (h.name, why.to_string())).collect();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].1.contains("no tracepoint sock:sock_recv_length"), "{gaps:?}");

        // A field of another size: that hook alone is left out, the reason named.
        let reset = dir.join("events/tcp/tcp_receive_reset/format");
        std::fs::write(&reset, "format:\n\tfield:int skaddr;\toffset:8;\tsize:4;\tsigned:1;\n").unwrap();
        let resized = Plan::probe(&dir).unwrap();
        let gap = resized.gaps().find(|(h, _)| h.name == "tcp_receive_reset").unwrap().1.to_string();
        assert!(gap.contains("skaddr") && gap.contains("4"), "{gap}");
        assert_eq!(resized.layout.receive_reset_skaddr, ABSENT);

        // A required hook's absence stops the agent, naming it.
        std::fs::remove_dir_all(dir.join("events/task")).unwrap();
        let error = Plan::probe(&dir).unwrap_err().to_string();
        assert!(error.contains("task:task_newtask"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A format file giving every field the hook reads the size it expects.
    fn fake_format(hook: &Hook) -> String {
        let fields: &[(&str, u32)] = match hook.name {
            "task_newtask" => &[("pid", 4), ("comm", 16), ("clone_flags", 8)],
            "sched_process_exec" => &[("filename", 4)],
            "sys_enter_exit_group" => &[("error_code", 8)],
            "sched_process_exit" => &[("pid", 4)],
            "inet_sock_set_state" => &[
                ("skaddr", 8),
                ("oldstate", 4),
                ("newstate", 4),
                ("sport", 2),
                ("dport", 2),
                ("family", 2),
                ("protocol", 2),
            ],
            "inet_sk_error_report" => &[("error", 4), ("sport", 2), ("dport", 2), ("protocol", 2)],
            _ => &[("skaddr", 8)],
        };
        let mut text = String::from("format:\n");
        for (at, (name, size)) in fields.iter().enumerate() {
            text += &format!("\tfield:x {name};\toffset:{};\tsize:{size};\tsigned:0;\n", 8 + 16 * at);
        }
        text
    }
}
