//! Guards: the way to wire the probes that keeps every pair matched. Each one allocates
//! its own id, fires its start probe when made and its end probe exactly once — when the
//! proxy says how it ended, or, if the proxy never does (a future dropped because the
//! client went away or a framework timeout fired, a panic, an early `return`), when it is
//! dropped, with a stated default. The proxy needs no counters and no maps of its own.

extern crate std;

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::{borrow::Cow, string::String, time::Instant};

use crate::{ConnectKind, ConnectResult, DisconnectReason, RequestLabels, SessionCloseReason, Status};

/// One counter for every kind of id: unique within the process, never 0.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A label as the proxy has it: usually a `&'static str` or a `String` it already owns.
type Label = Cow<'static, str>;

/// One request, from its arrival to its end. Labels are set as they become known; the
/// end fires once: [`Request::end`], or on drop with the status of [`Request::if_dropped`]
/// (by default [`Status::Timeout`]: what the observer's expiry would have counted, but at
/// once and with every label known by then).
#[must_use = "a request guard ends its request when dropped"]
pub struct Request {
    id: u64,
    started: Instant,
    transport: &'static str,
    method: Label,
    identity: Label,
    server: Label,
    tool: Label,
    if_dropped: Status,
    armed: bool,
}

impl Request {
    /// A request arrived on `transport` (e.g. `streamable_http`, `sse`, `stdio`).
    pub fn start(transport: &'static str) -> Self {
        let id = next_id();
        // Timed right at the probe, so that both measures span the same interval.
        let started = Instant::now();
        crate::request_start(id);
        Self {
            id,
            started,
            transport,
            method: Label::Borrowed(""),
            identity: Label::Borrowed(""),
            server: Label::Borrowed(""),
            tool: Label::Borrowed(""),
            if_dropped: Status::Timeout,
            armed: true,
        }
    }

    /// The JSON-RPC method, once the body is parsed.
    pub fn method(&mut self, method: impl Into<Label>) -> &mut Self {
        self.method = method.into();
        self
    }

    /// The authenticated identity, once known.
    pub fn identity(&mut self, identity: impl Into<Label>) -> &mut Self {
        self.identity = identity.into();
        self
    }

    /// The backend server and the tool as that backend names it, once routed.
    pub fn route(&mut self, server: impl Into<Label>, tool: impl Into<Label>) -> &mut Self {
        self.server = server.into();
        self.tool = tool.into();
        self
    }

    /// The status counted if the guard is dropped without [`Request::end`].
    pub fn if_dropped(&mut self, status: Status) -> &mut Self {
        self.if_dropped = status;
        self
    }

    /// The id the probes carry (for logs; the guard pairs start and end itself).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Time since [`Request::start`].
    pub fn elapsed(&self) -> core::time::Duration {
        self.started.elapsed()
    }

    /// The labels as they stand, with `status`: what the end probe will carry.
    pub fn labels(&self, status: Status) -> RequestLabels<'_> {
        RequestLabels {
            method: &self.method,
            transport: self.transport,
            identity: &self.identity,
            server: &self.server,
            tool: &self.tool,
            status,
        }
    }

    /// The request ended with `status`.
    pub fn end(mut self, status: Status) {
        self.fire(status);
    }

    /// Gives the request back to the raw API: nothing ends it any more but
    /// [`crate::request_end`] with this id (or, if nothing does, the observer's expiry).
    pub fn into_raw(mut self) -> u64 {
        self.armed = false;
        self.id
    }

    fn fire(&mut self, status: Status) {
        if core::mem::take(&mut self.armed) {
            crate::request_end_after(self.id, &self.labels(status), self.started.elapsed());
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.fire(self.if_dropped);
    }
}

/// One client session. Closing fires once: [`ClientSession::close`], or on drop as
/// [`SessionCloseReason::ClientClosed`].
#[must_use = "a session guard closes its session when dropped"]
pub struct ClientSession {
    id: u64,
    transport: &'static str,
    armed: bool,
}

impl ClientSession {
    /// A session opened on `transport`.
    pub fn open(transport: &'static str) -> Self {
        let id = next_id();
        crate::session_open(id, transport);
        Self { id, transport, armed: true }
    }

    /// Its id: unique in the process, usable in a session header.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The session closed for `reason`.
    pub fn close(mut self, reason: SessionCloseReason) {
        self.fire(reason);
    }

    fn fire(&mut self, reason: SessionCloseReason) {
        if core::mem::take(&mut self.armed) {
            crate::session_close(self.id, self.transport, reason);
        }
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.fire(SessionCloseReason::ClientClosed);
    }
}

const CONNECTING: u8 = 0;
/// Disconnected while connecting: reported once [`BackendConnection::connected`] says so.
const LOST_CONNECTING: u8 = 1;
const LIVE: u8 = 2;
const ENDED: u8 = 3;

/// One connection to a backend server, from the start of connecting to its end. Shared
/// (`&self` everywhere, e.g. in an `Arc`) between whoever may notice the end first — a
/// reader at EOF, the idle reaper, shutdown: the first [`BackendConnection::disconnect`]
/// fires the probe, the others return false. Dropped while connecting, it counts a failed
/// connect; dropped while connected, a disconnect for [`DisconnectReason::Error`].
#[must_use = "a connection guard ends its connection when dropped"]
pub struct BackendConnection {
    id: u64,
    server: String,
    kind: ConnectKind,
    state: AtomicU8,
}

impl BackendConnection {
    /// Connecting `server` starts, for the reason `kind`.
    pub fn connecting(server: impl Into<String>, kind: ConnectKind) -> Self {
        let id = next_id();
        crate::backend_connect_start(id);
        Self { id, server: server.into(), kind, state: AtomicU8::new(CONNECTING) }
    }

    /// The backend server's name, for a probe fired where only the connection is known.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The connection's child process `pid` was spawned (stdio backends).
    pub fn child_spawned(&self, pid: u32) {
        crate::child_spawn(&self.server, pid);
    }

    /// Connecting succeeded. False if it was lost meanwhile: that loss is counted now,
    /// as a disconnect for [`DisconnectReason::Error`].
    pub fn connected(&self) -> bool {
        crate::backend_connect_end(self.id, &self.server, self.kind, ConnectResult::Ok);
        match self.state.compare_exchange(CONNECTING, LIVE, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => true,
            Err(_) => {
                if self.state.swap(ENDED, Ordering::SeqCst) == LOST_CONNECTING {
                    crate::backend_disconnect(self.id, &self.server, DisconnectReason::Error);
                }
                false
            }
        }
    }

    /// Connecting failed.
    pub fn failed(&self) {
        if self.state.swap(ENDED, Ordering::SeqCst) != ENDED {
            crate::backend_connect_end(self.id, &self.server, self.kind, ConnectResult::Error);
        }
    }

    /// Whether it is connected and not yet ended.
    pub fn is_live(&self) -> bool {
        self.state.load(Ordering::SeqCst) == LIVE
    }

    /// The connection ended for `reason`: true for the first caller of a live connection.
    /// While connecting, the loss is remembered for [`BackendConnection::connected`].
    pub fn disconnect(&self, reason: DisconnectReason) -> bool {
        let _ = self.state.compare_exchange(CONNECTING, LOST_CONNECTING, Ordering::SeqCst, Ordering::SeqCst);
        let was_live = self.state.compare_exchange(LIVE, ENDED, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if was_live {
            crate::backend_disconnect(self.id, &self.server, reason);
        }
        was_live
    }
}

impl Drop for BackendConnection {
    fn drop(&mut self) {
        match *self.state.get_mut() {
            CONNECTING | LOST_CONNECTING => self.failed(),
            LIVE => {
                self.disconnect(DisconnectReason::Error);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_to_notice_a_connection_end_fires_it_and_only_that_one() {
        let connection = BackendConnection::connecting("alpha", ConnectKind::Initial);
        assert!(!connection.is_live());
        assert!(connection.connected());
        assert!(connection.is_live());
        assert!(connection.disconnect(DisconnectReason::IdleReaped));
        assert!(!connection.disconnect(DisconnectReason::Error), "ended once");
        assert!(!connection.is_live());
    }

    #[test]
    fn a_connection_lost_while_connecting_is_reported_when_it_is_connected() {
        let connection = BackendConnection::connecting("alpha", ConnectKind::Lazy);
        assert!(!connection.disconnect(DisconnectReason::Error), "not live yet");
        assert!(!connection.connected(), "lost meanwhile");
        assert!(!connection.is_live());
        assert!(!connection.disconnect(DisconnectReason::Shutdown));
    }

    #[test]
    fn ids_are_unique_and_never_zero() {
        let a = Request::start("stdio").into_raw();
        let b = ClientSession::open("stdio").id();
        let c = BackendConnection::connecting("alpha", ConnectKind::Initial);
        c.failed();
        assert!(a != 0 && a != b && b != c.id && a != c.id);
    }
}
