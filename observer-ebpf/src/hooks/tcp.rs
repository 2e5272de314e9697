//! The targets' TCP connections, from `sock:inet_sock_set_state` and the `tcp:` reset and
//! retransmit tracepoints. A connection is the target's when a process of its tree
//! connects it (`outbound`, seen in the connecting process's context), or when it is
//! accepted on a port a process of its tree listens on and then read by a process of its
//! tree (`inbound`: the handshake ends in softirq context, where the current process means
//! nothing, and another network namespace may listen on the same port; the first read,
//! `sock:sock_recv_length`, runs in the reader's context). Only connections seen from
//! their start are counted: one opened before the agent attached never is.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use observer_common::{
    ABSENT, Listener, TrackedSocket as Socket, counter, direction, kind, listening_key, pack,
    socket_state::{CONNECTING, OPEN, UNCONFIRMED},
    timeout,
};

use super::{field, layout, tree};
use crate::{
    event::{send_at, tgid},
    maps::count,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;
const IPPROTO_TCP: u16 = 6;
const ETIMEDOUT: i32 = 110;

/// The last tracked socket that closed on this CPU: the kernel reports a socket's error
/// (`inet_sk_error_report`, which names no socket) right after closing it, in the same
/// call, so the error is matched to it by ports.
#[repr(C)]
#[derive(Clone, Copy)]
struct LastClose {
    ts_ns: u64,
    skaddr: u64,
    sport: u32,
    dport: u32,
    socket: Socket,
}

/// What the targets listen on, by [`listening_key`], and whose listener it is.
#[map]
static LISTENING: HashMap<u32, Listener> = HashMap::with_max_entries(1024, 0);

/// The targets' sockets from connect (or accept) to close, by kernel address. Not
/// preallocated: an entry deleted on one CPU while another holds it is freed after an
/// RCU grace period instead of being handed at once to a new socket.
#[map]
static SOCKETS: HashMap<u64, Socket> = HashMap::with_max_entries(65_536, BPF_F_NO_PREALLOC);

/// Sockets closed lately: a socket aborted with a reset (SO_LINGER 0, unread data) sends
/// it after closing. Forgotten when the address is reused by a new socket.
#[map]
static CLOSED: LruHashMap<u64, Socket> = LruHashMap::with_max_entries(4096, 0);

#[map]
static LAST_CLOSE: PerCpuArray<LastClose> = PerCpuArray::with_max_entries(1, 0);

/// A socket error reported more than this after the close it belongs to is not its.
const ERROR_AFTER_CLOSE_NS: u64 = 10_000_000;

/// An event of `socket`: its direction, and `high` (a timeout's kind) in the value.
fn send_socket(kind: u32, socket: &Socket, skaddr: u64, high: u32) {
    send_socket_at(crate::now(), kind, socket, skaddr, high);
}

fn send_socket_at(ts_ns: u64, kind: u32, socket: &Socket, skaddr: u64, high: u32) {
    send_at(socket.target, kind, ts_ns, skaddr, pack(socket.direction, high), |_| 0);
}

/// The target's socket at `skaddr`, counted from now on if it was not yet: an accepted
/// socket nobody has read before it is reset, times out or closes is the target's by
/// its port, the only thing left to go by.
fn owned(skaddr: u64) -> Option<Socket> {
    let socket = SOCKETS.get_ptr_mut(skaddr)?;
    // SAFETY: a live map value (freed only after an RCU grace period).
    unsafe {
        if (*socket).state == UNCONFIRMED {
            (*socket).state = OPEN;
            send_socket_at((*socket).established_ns, kind::TCP_OPEN, &*socket, skaddr, 0);
        }
        Some(*socket)
    }
}

fn track(skaddr: u64, socket: &Socket) -> bool {
    if SOCKETS.insert(skaddr, socket, 0).is_err() {
        count(counter::SOCKETS_FULL);
        return false;
    }
    true
}

/// A new socket at `skaddr`: whatever an earlier socket there left behind goes. Its close
/// may have been missed (a program nested in another on one CPU is skipped): it is sent
/// now, or the active gauge would stay high and the new socket would inherit its target.
fn forget_earlier(skaddr: u64) {
    let _ = CLOSED.remove(skaddr);
    // SAFETY: a copy is taken at once.
    if let Some(earlier) = unsafe { SOCKETS.get(skaddr) }.copied() {
        let _ = SOCKETS.remove(skaddr);
        if earlier.state == OPEN {
            send_socket(kind::TCP_CLOSE, &earlier, skaddr, 0);
        }
    }
}

#[tracepoint]
pub fn mcp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let layout = layout();
    if field::<u16>(&ctx, layout.state_protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    let (Some(old), Some(new), Some(skaddr), Some(sport), Some(family)) = (
        field::<i32>(&ctx, layout.state_oldstate),
        field::<i32>(&ctx, layout.state_newstate),
        field::<u64>(&ctx, layout.state_skaddr),
        field::<u16>(&ctx, layout.state_sport),
        field::<u16>(&ctx, layout.state_family),
    ) else {
        return 0;
    };
    let listening = listening_key(family, sport);
    match (old, new) {
        // listen() and connect() run in the calling process's context.
        (TCP_CLOSE, TCP_LISTEN) => {
            forget_earlier(skaddr);
            // Port 0: listen() without bind() picks its port after this transition.
            if let Some(me) = tree::current()
                && sport != 0
            {
                // Never over another listener's entry: a listen() that fails with
                // EADDRINUSE goes LISTEN and back to CLOSE on its own address.
                let listener = Listener { target: me.root, owner: tgid(), skaddr };
                let _ = LISTENING.insert(listening, listener, BPF_NOEXIST as u64);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            // SAFETY: a copy is taken at once.
            let Some(listener) = (unsafe { LISTENING.get(listening) }).copied() else { return 0 };
            // Closed even by an exiting process, which has left the tree by now; a
            // listener found at attach has no address, its owner closes it.
            if listener.skaddr == skaddr || (listener.skaddr == 0 && listener.owner == tgid()) {
                let _ = LISTENING.remove(listening);
            }
        }
        (TCP_CLOSE, TCP_SYN_SENT) => {
            forget_earlier(skaddr);
            if let Some(me) = tree::current() {
                let socket = Socket {
                    target: me.root,
                    direction: direction::OUTBOUND as u32,
                    state: CONNECTING,
                    keepalive_timeout: 0,
                    established_ns: 0,
                };
                track(skaddr, &socket);
            }
        }
        (TCP_LISTEN, TCP_SYN_RECV) => forget_earlier(skaddr),
        // close() or shutdown() of a socket, in the closing process's context: like a
        // read, it tells whose an unconfirmed socket is.
        // (A process of no target closing proves nothing: a target's exiting process has
        // left its tree before its files close.)
        (TCP_ESTABLISHED | TCP_SYN_RECV, TCP_FIN_WAIT1) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => {
            claim(skaddr, false)
        }
        (TCP_SYN_SENT, TCP_ESTABLISHED) => {
            if let Some(socket) = SOCKETS.get_ptr_mut(skaddr) {
                // SAFETY: a live map value.
                let socket = unsafe {
                    (*socket).state = OPEN;
                    (*socket).established_ns = crate::now();
                    *socket
                };
                send_socket_at(socket.established_ns, kind::TCP_OPEN, &socket, skaddr, 0);
            }
        }
        (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            // SAFETY: a copy is taken at once.
            if let Some(listener) = unsafe { LISTENING.get(listening) }.copied() {
                // Without the read hook, the port must do.
                let confirmable = layout.recv_sk != ABSENT && layout.recv_protocol != ABSENT;
                let socket = Socket {
                    target: listener.target,
                    direction: direction::INBOUND as u32,
                    state: if confirmable { UNCONFIRMED } else { OPEN },
                    keepalive_timeout: 0,
                    established_ns: crate::now(),
                };
                if track(skaddr, &socket) && !confirmable {
                    send_socket_at(socket.established_ns, kind::TCP_OPEN, &socket, skaddr, 0);
                }
            }
        }
        (_, TCP_CLOSE) => {
            let Some(socket) = owned(skaddr) else { return 0 };
            let _ = SOCKETS.remove(skaddr);
            if socket.state == OPEN {
                send_socket(kind::TCP_CLOSE, &socket, skaddr, 0);
                let _ = CLOSED.insert(skaddr, socket, 0);
            }
            if let (Some(last), Some(dport)) =
                (LAST_CLOSE.get_ptr_mut(0), field::<u16>(&ctx, layout.state_dport))
            {
                let closed = LastClose {
                    ts_ns: crate::now(),
                    skaddr,
                    sport: u32::from(sport),
                    dport: u32::from(dport),
                    socket,
                };
                // SAFETY: this CPU's slot.
                unsafe { *last = closed };
            }
        }
        _ => {}
    }
    0
}

#[tracepoint]
pub fn mcp_inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let layout = layout();
    if field::<u16>(&ctx, layout.error_protocol) != Some(IPPROTO_TCP)
        || field::<i32>(&ctx, layout.error_error) != Some(ETIMEDOUT)
    {
        return 0;
    }
    let (Some(sport), Some(dport), Some(last)) = (
        field::<u16>(&ctx, layout.error_sport),
        field::<u16>(&ctx, layout.error_dport),
        LAST_CLOSE.get_ptr_mut(0),
    ) else {
        return 0;
    };
    // SAFETY: this CPU's slot.
    let closed = unsafe { *last };
    let now = crate::now();
    if closed.ts_ns == 0
        || now.saturating_sub(closed.ts_ns) > ERROR_AFTER_CLOSE_NS
        || closed.sport != u32::from(sport)
        || closed.dport != u32::from(dport)
    {
        return 0;
    }
    // SAFETY: as above; the match is used once.
    unsafe { (*last).ts_ns = 0 };
    if closed.socket.keepalive_timeout == 0 {
        send_socket(kind::TCP_TIMEOUT, &closed.socket, closed.skaddr, timeout::RETRANSMISSION);
    }
    0
}

#[tracepoint]
pub fn mcp_sock_recv_length(ctx: TracePointContext) -> u32 {
    let layout = layout();
    if field::<u16>(&ctx, layout.recv_protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    if let Some(skaddr) = field::<u64>(&ctx, layout.recv_sk) {
        claim(skaddr, true);
    }
    0
}

/// The current process reads or closes the socket at `skaddr`: if its ownership was
/// unconfirmed, it is now that process's target's (which, when two targets listen on
/// the same port in two namespaces, the port could not say), or, when a process of no
/// target reads it and `foreign_disowns`, nobody's. The reader's
/// tracepoint runs after the socket lock is released, so a close on another CPU may
/// count the socket at the same time: the agent drops the second open of one handshake.
fn claim(skaddr: u64, foreign_disowns: bool) {
    let Some(socket) = SOCKETS.get_ptr_mut(skaddr) else { return };
    // SAFETY: a live map value (freed only after an RCU grace period); only the fields
    // that change are written.
    unsafe {
        if (*socket).state != UNCONFIRMED {
            return;
        }
        match tree::current() {
            Some(me) => {
                (*socket).target = me.root;
                (*socket).state = OPEN;
                send_socket_at((*socket).established_ns, kind::TCP_OPEN, &*socket, skaddr, 0);
            }
            // Another namespace's server on the same port.
            None if foreign_disowns => {
                let _ = SOCKETS.remove(skaddr);
            }
            None => {}
        }
    }
}

#[tracepoint]
pub fn mcp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    let layout = layout();
    let Some(skaddr) = field::<u64>(&ctx, layout.send_reset_skaddr) else { return 0 };
    if let Some(mut socket) = owned(skaddr) {
        let keepalive = layout.keepalive_timeout_reason != ABSENT
            && layout.send_reset_reason != ABSENT
            && field::<u32>(&ctx, layout.send_reset_reason) == Some(layout.keepalive_timeout_reason);
        if keepalive && let Some(entry) = SOCKETS.get_ptr_mut(skaddr) {
            socket.keepalive_timeout = 1;
            // SAFETY: a live map value.
            unsafe { (*entry).keepalive_timeout = 1 };
        }
        send_socket(kind::TCP_RESET, &socket, skaddr, 0);
        if keepalive {
            send_socket(kind::TCP_TIMEOUT, &socket, skaddr, timeout::KEEPALIVE);
        }
    // SAFETY: a copy is taken at once.
    } else if let Some(socket) = unsafe { CLOSED.get(skaddr) }.copied() {
        send_socket(kind::TCP_RESET, &socket, skaddr, 0);
    }
    0
}

#[tracepoint]
pub fn mcp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    on_socket(&ctx, layout().receive_reset_skaddr, kind::TCP_RESET);
    0
}

#[tracepoint]
pub fn mcp_tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let layout = layout();
    // Since Linux 6.17 failed attempts (the segment still queued below) fire it too.
    if layout.retransmit_err != ABSENT && field::<i32>(&ctx, layout.retransmit_err) != Some(0) {
        return 0;
    }
    on_socket(&ctx, layout.retransmit_skaddr, kind::TCP_RETRANSMIT);
    0
}

/// Sends `kind` if the socket at field `offset` is a target's.
#[inline(always)]
fn on_socket(ctx: &TracePointContext, offset: u32, kind: u32) {
    let Some(skaddr) = field::<u64>(ctx, offset) else { return };
    if let Some(socket) = owned(skaddr) {
        send_socket(kind, &socket, skaddr, 0);
    }
}
