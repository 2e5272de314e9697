//! Client sessions of the Streamable HTTP transport: opened by `initialize`, named by the
//! `Mcp-Session-Id` header `{pid}-{id:08x}`, closed by `DELETE`, inactivity or shutdown.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use mcp_probes::{ClientSession, SessionCloseReason};

use crate::proxy::TRANSPORT;

pub struct Sessions {
    /// Open sessions by id, and when each was last seen.
    open: Mutex<HashMap<u64, (ClientSession, Instant)>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self { open: Mutex::default() }
    }

    /// Opens a session and returns its `Mcp-Session-Id`.
    pub fn open(&self) -> String {
        let session = ClientSession::open(TRANSPORT);
        let id = session.id();
        self.open.lock().expect("sessions lock").insert(id, (session, Instant::now()));
        format!("{}-{id:08x}", std::process::id())
    }

    /// A request carried this header: the session, if open, is not idle.
    pub fn touch(&self, header: &str) {
        if let Some(id) = parse(header)
            && let Some((_, seen)) = self.open.lock().expect("sessions lock").get_mut(&id)
        {
            *seen = Instant::now();
        }
    }

    /// Closes the session the header names; false if no such session is open.
    pub fn close(&self, header: &str, reason: SessionCloseReason) -> bool {
        let Some(id) = parse(header) else { return false };
        let closed = self.open.lock().expect("sessions lock").remove(&id);
        closed.map(|(session, _)| session.close(reason)).is_some()
    }

    /// Closes every session not seen for `idle`.
    pub fn expire(&self, idle: Duration) {
        let mut open = self.open.lock().expect("sessions lock");
        for (_, (session, _)) in open.extract_if(|_, (_, seen)| seen.elapsed() >= idle) {
            session.close(SessionCloseReason::Expired);
        }
    }

    pub fn close_all(&self, reason: SessionCloseReason) {
        for (_, (session, _)) in self.open.lock().expect("sessions lock").drain() {
            session.close(reason);
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
        let id = parse(&header).expect("an id of this process");
        assert_eq!(parse(&format!("{}-{id:08x}", std::process::id() + 1)), None);
        assert_eq!(parse("not-a-session"), None);
        assert!(!sessions.close("1-00000001", SessionCloseReason::ClientClosed));
        assert!(sessions.close(&header, SessionCloseReason::ClientClosed));
        assert!(!sessions.close(&header, SessionCloseReason::ClientClosed));
    }
}
