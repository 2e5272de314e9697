//! Client sessions of the Streamable HTTP transport: opened by `initialize`, named by the
//! `Mcp-Session-Id` header `{pid}-{id:08x}`, closed by `DELETE`, inactivity or shutdown.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use mcp_probes::SessionCloseReason;

use crate::proxy::TRANSPORT;

pub struct Sessions {
    next: AtomicU64,
    /// Open sessions and when each was last seen.
    open: Mutex<HashMap<u64, Instant>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self { next: AtomicU64::new(1), open: Mutex::default() }
    }

    /// Opens a session and returns its `Mcp-Session-Id`.
    pub fn open(&self) -> String {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("sessions lock").insert(id, Instant::now());
        mcp_probes::session_open(id, TRANSPORT);
        format!("{}-{id:08x}", std::process::id())
    }

    /// A request carried this header: the session, if open, is not idle.
    pub fn touch(&self, header: &str) {
        if let Some(id) = parse(header)
            && let Some(seen) = self.open.lock().expect("sessions lock").get_mut(&id)
        {
            *seen = Instant::now();
        }
    }

    /// Closes the session the header names; false if no such session is open.
    pub fn close(&self, header: &str, reason: SessionCloseReason) -> bool {
        let Some(id) = parse(header) else { return false };
        let closed = self.open.lock().expect("sessions lock").remove(&id).is_some();
        if closed {
            mcp_probes::session_close(id, TRANSPORT, reason);
        }
        closed
    }

    /// Closes every session not seen for `idle`.
    pub fn expire(&self, idle: Duration) {
        self.open.lock().expect("sessions lock").retain(|&id, seen| {
            let keep = seen.elapsed() < idle;
            if !keep {
                mcp_probes::session_close(id, TRANSPORT, SessionCloseReason::Expired);
            }
            keep
        });
    }

    pub fn close_all(&self, reason: SessionCloseReason) {
        for (id, _) in self.open.lock().expect("sessions lock").drain() {
            mcp_probes::session_close(id, TRANSPORT, reason);
        }
    }
}

/// The session id in a header this process issued.
fn parse(header: &str) -> Option<u64> {
    let (pid, id) = header.split_once('-')?;
    (pid.parse::<u32>().ok()? == std::process::id()).then_some(())?;
    u64::from_str_radix(id, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_header_names_its_session_in_this_process_only() {
        let sessions = Sessions::new();
        let header = sessions.open();
        assert_eq!(parse(&header), Some(1));
        assert_eq!(parse(&format!("{}-00000001", std::process::id() + 1)), None);
        assert_eq!(parse("not-a-session"), None);
        assert!(!sessions.close("1-00000001", SessionCloseReason::ClientClosed));
        assert!(sessions.close(&header, SessionCloseReason::ClientClosed));
        assert!(!sessions.close(&header, SessionCloseReason::ClientClosed));
    }
}
