//! Where the fields the kernel hooks read lie in their tracepoints' records.

/// Marks a field the running kernel's tracepoint lacks.
pub const ABSENT: u32 = u32::MAX;

/// Where each field the kernel hooks read sits in its tracepoint's record (a byte offset),
/// read by the agent from tracefs `format` files at start-up: Rust eBPF has no CO-RE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// `sock:inet_sock_set_state`.
    pub state_skaddr: u32,
    pub state_oldstate: u32,
    pub state_newstate: u32,
    pub state_sport: u32,
    pub state_dport: u32,
    pub state_family: u32,
    pub state_protocol: u32,
    /// `sock:inet_sk_error_report`.
    pub error_error: u32,
    pub error_sport: u32,
    pub error_dport: u32,
    pub error_protocol: u32,
    /// `tcp:tcp_send_reset`; `reason` is [`ABSENT`] before Linux 6.10.
    pub send_reset_skaddr: u32,
    pub send_reset_reason: u32,
    /// The value of `SK_RST_REASON_TCP_KEEPALIVE_TIMEOUT`, from the format's print
    /// table; [`ABSENT`] when the kernel does not name it.
    pub keepalive_timeout_reason: u32,
    /// `tcp:tcp_receive_reset`.
    pub receive_reset_skaddr: u32,
    /// `tcp:tcp_retransmit_skb`; `err` is [`ABSENT`] before Linux 6.17, which also
    /// traces failed attempts.
    pub retransmit_skaddr: u32,
    pub retransmit_err: u32,
    /// `sock:sock_recv_length` (Linux 6.3); [`ABSENT`] without it, and inbound
    /// connections are then the target's by port alone.
    pub recv_sk: u32,
    pub recv_protocol: u32,
    /// `task:task_newtask`.
    pub newtask_pid: u32,
    pub newtask_comm: u32,
    pub newtask_clone_flags: u32,
    /// `sched:sched_process_exec`: the `__data_loc` of the file name.
    pub exec_filename: u32,
    /// `sched:sched_process_exit`; [`ABSENT`] before Linux 6.16, where the exit of the
    /// thread-group leader stands for the process's.
    pub process_exit_group_dead: u32,
    /// `syscalls:sys_enter_exit_group`; [`ABSENT`] without syscall tracepoints.
    pub exit_group_error_code: u32,
}

impl Layout {
    /// Every field absent: where the agent starts before it reads the formats, and what
    /// a hook the kernel lacks leaves behind.
    pub const ABSENT: Layout = Layout {
        state_skaddr: ABSENT,
        state_oldstate: ABSENT,
        state_newstate: ABSENT,
        state_sport: ABSENT,
        state_dport: ABSENT,
        state_family: ABSENT,
        state_protocol: ABSENT,
        error_error: ABSENT,
        error_sport: ABSENT,
        error_dport: ABSENT,
        error_protocol: ABSENT,
        send_reset_skaddr: ABSENT,
        send_reset_reason: ABSENT,
        keepalive_timeout_reason: ABSENT,
        receive_reset_skaddr: ABSENT,
        retransmit_skaddr: ABSENT,
        retransmit_err: ABSENT,
        recv_sk: ABSENT,
        recv_protocol: ABSENT,
        newtask_pid: ABSENT,
        newtask_comm: ABSENT,
        newtask_clone_flags: ABSENT,
        exec_filename: ABSENT,
        process_exit_group_dead: ABSENT,
        exit_group_error_code: ABSENT,
    };
}
const _: () = assert!(core::mem::size_of::<Layout>() == 25 * 4);
