//! The targets' process trees, kept in the kernel so that every hook can ask whether the
//! current process belongs to a target. The agent adds each target (and whatever it had
//! already spawned); `task:task_newtask` adds each new process under its parent's target
//! (`sched:sched_process_fork` cannot tell a thread from a process, the clone flags
//! can), `sched:sched_process_exit` removes it. A target's direct children are its
//! backends: their fork, exec and exit are sent as events. The node-wide agent also
//! hears of every exec outside the trees (a proxy may be starting) and of each target's
//! exit.

use aya_ebpf::{
    EbpfContext as _,
    helpers::bpf_get_current_pid_tgid,
    macros::{map, tracepoint},
    maps::HashMap,
    programs::TracePointContext,
};
use observer_common::{
    ABSENT, EXIT_STATUS_KNOWN, EXIT_STATUS_UNKNOWN, TRACKED_EXITING, Tracked, counter, kind,
};

use super::{field, layout};
use crate::{
    event::{read_kernel_name, send, tgid},
    maps::count,
};

/// Every process of every target's tree, by tgid.
#[map]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(16_384, 0);

/// Set by the node-wide agent at load: report execs outside the trees.
#[unsafe(no_mangle)]
static DISCOVER: u32 = 0;

const CLONE_THREAD: u64 = 0x0001_0000;
/// `comm` is a 16-byte array in every tracepoint that has it.
const COMM_LEN: usize = 16;

/// The tree entry of process `pid`, if it belongs to a target.
#[inline(always)]
fn tracked(pid: u32) -> Option<Tracked> {
    // SAFETY: a copy of the value is taken at once.
    unsafe { TRACKED.get(pid) }.copied()
}

/// The tree entry of the current process, if it belongs to a target.
#[inline(always)]
pub fn current() -> Option<Tracked> {
    tracked(tgid())
}

/// The target's tgid when the uprobe with attach cookie `binary` fired in a target that
/// counts it: the target itself (uprobes are attached once per executable file, for every
/// process that runs it), through its own executable's uprobes.
#[inline(always)]
pub fn observed(binary: u64) -> Option<u32> {
    // The pid read once: the caller keys its event and its maps with it.
    let pid = tgid();
    tracked(pid).filter(|me| me.root == pid && u64::from(me.binary) == binary).map(|_| pid)
}

fn discovering() -> bool {
    // SAFETY: a plain read of a global the loader may have rewritten.
    unsafe { core::ptr::read_volatile(&DISCOVER) != 0 }
}

#[tracepoint]
pub fn mcp_task_newtask(ctx: TracePointContext) -> u32 {
    let Some(parent) = current() else { return 0 };
    let layout = layout();
    let Some(flags) = field::<u64>(&ctx, layout.newtask_clone_flags) else { return 0 };
    let Some(pid) = field::<u32>(&ctx, layout.newtask_pid) else { return 0 };
    if flags & CLONE_THREAD != 0 {
        return 0;
    }
    let direct = parent.child == 0;
    let child = Tracked {
        root: parent.root,
        child: if direct { pid } else { parent.child },
        exit_status: 0,
        flags: 0,
        binary: 0,
    };
    if TRACKED.insert(pid, child, 0).is_err() {
        count(counter::TRACKED_FULL);
        return 0;
    }
    if direct {
        let comm = layout.newtask_comm;
        send(parent.root, kind::CHILD_FORK, u64::from(pid), 0, |ev| {
            // SAFETY: `ev` is the reserved event; the comm lies inside the record.
            unsafe { read_kernel_name(ctx.as_ptr().cast::<u8>().add(comm as usize), COMM_LEN, ev) }
        });
    }
    0
}

#[tracepoint]
pub fn mcp_sched_process_exec(ctx: TracePointContext) -> u32 {
    let pid = tgid();
    let me = current();
    // A process of no tree may be a proxy starting; a target may have replaced its program.
    if me.is_none_or(|me| me.root == pid) {
        if discovering() {
            send(pid, kind::PROCESS_EXEC, u64::from(pid), 0, |_| 0);
        }
        return 0;
    }
    let Some(me) = me.filter(|me| me.child == pid) else { return 0 };
    // `__data_loc`: the string's offset in the record (low 16 bits) and its length with
    // the NUL (high 16 bits).
    let Some(loc) = field::<u32>(&ctx, layout().exec_filename) else { return 0 };
    let (offset, len) = ((loc & 0xffff) as usize, ((loc >> 16) as usize).saturating_sub(1));
    // The tail of a long path: the agent wants the file name after the last '/'.
    let cap = observer_common::SERVER_CAP;
    let skip = len.saturating_sub(cap);
    send(me.root, kind::CHILD_EXEC, u64::from(pid), 0, |ev| {
        // SAFETY: `ev` is the reserved event; the string lies inside the record.
        unsafe { read_kernel_name(ctx.as_ptr().cast::<u8>().add(offset + skip), len - skip, ev) }
    });
    0
}

#[tracepoint]
pub fn mcp_sys_enter_exit_group(ctx: TracePointContext) -> u32 {
    let pid = tgid();
    let Some(me) = TRACKED.get_ptr_mut(pid) else { return 0 };
    let Some(status) = field::<u64>(&ctx, layout().exit_group_error_code) else { return 0 };
    // SAFETY: a live map value; only this process's own exit writes it.
    unsafe {
        if (*me).child == pid {
            (*me).exit_status = (status & 0xff) as u32;
            (*me).flags |= TRACKED_EXITING;
        }
    }
    0
}

#[tracepoint]
pub fn mcp_sched_process_exit(ctx: TracePointContext) -> u32 {
    // Each thread's exit fires this; the process is gone with the last one. Kernels
    // before 6.16 do not say which is the last: the leader's exit stands for it.
    let layout = layout();
    let last = if layout.process_exit_group_dead == ABSENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        pid_tgid as u32 == (pid_tgid >> 32) as u32
    } else {
        field::<u8>(&ctx, layout.process_exit_group_dead) == Some(1)
    };
    if !last {
        return 0;
    }
    let pid = tgid();
    let Some(me) = current() else { return 0 };
    let _ = TRACKED.remove(pid);
    if me.root == pid {
        send(pid, kind::TARGET_EXIT, u64::from(pid), 0, |_| 0);
    } else if me.child == pid {
        // Without exit_group, the process was ended by a signal.
        let status = if layout.exit_group_error_code == ABSENT {
            EXIT_STATUS_UNKNOWN
        } else if me.flags & TRACKED_EXITING != 0 {
            EXIT_STATUS_KNOWN | u64::from(me.exit_status)
        } else {
            0
        };
        send(me.root, kind::CHILD_EXIT, u64::from(pid), status, |_| 0);
    }
    0
}
