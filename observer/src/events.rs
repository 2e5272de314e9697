//! Decodes ring-buffer records and drains the ring buffer.
//!
//! The eBPF side submits without waking us (a wakeup per event costs ~6 µs on a VM), so
//! the reader drains on a short timer, and on readiness when the kernel forces a wakeup
//! because the buffer is filling up.

use std::{sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use observer_common::{
    EventHeader, kind,
    request::{self, RequestEndEvent},
};
use tokio::io::unix::AsyncFd;

use crate::metrics::Metrics;

/// How a request ended (`mcp_probes::Status`), as its `status` label.
pub fn status_label(code: u32) -> Option<&'static str> {
    const NAMES: [&str; 7] =
        ["ok", "jsonrpc_error", "tool_error", "timeout", "acl_denied", "auth_failed", "connect_failed"];
    NAMES.get(code as usize).copied()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header")]
    Short { len: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("event kind {kind} has {len} bytes, expected {expected}")]
    Length { kind: u32, len: usize, expected: usize },
    #[error("unknown request status {code}")]
    Status { code: u32 },
    #[error("string length {len} exceeds its capacity {cap}")]
    StringLength { len: u16, cap: usize },
}

/// A decoded record.
#[derive(Debug)]
pub enum Event {
    RequestEnd(Box<RequestEndEvent>),
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    // SAFETY: length checked above; EventHeader is plain integers.
    let header: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match header.kind {
        kind::REQUEST_END => {
            let expected = size_of::<RequestEndEvent>();
            if bytes.len() != expected {
                return Err(DecodeError::Length { kind: header.kind, len: bytes.len(), expected });
            }
            // SAFETY: length checked above; RequestEndEvent is plain integers and bytes.
            let event: RequestEndEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            for (len, cap) in [
                (event.method_len, request::METHOD_CAP),
                (event.transport_len, request::TRANSPORT_CAP),
                (event.identity_len, request::IDENTITY_CAP),
                (event.server_len, request::SERVER_CAP),
                (event.tool_len, request::TOOL_CAP),
            ] {
                if usize::from(len) > cap {
                    return Err(DecodeError::StringLength { len, cap });
                }
            }
            Ok(Event::RequestEnd(Box::new(event)))
        }
        kind => Err(DecodeError::UnknownKind { kind }),
    }
}

/// Drains `ring` into `metrics` forever: every `interval`, and whenever the kernel wakes us.
pub async fn drain_forever(
    ring: RingBuf<MapData>,
    metrics: Arc<Metrics>,
    interval: Duration,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open until it is dropped,
    // which only happens with the AsyncFd.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &metrics);
                guard.clear_ready();
            }
            _ = ticker.tick() => drain(ring.get_mut(), &metrics),
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, metrics: &Metrics) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => metrics.record(&event),
            Err(error) => metrics.decode_error(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_end_bytes(tool: &[u8], tool_len: u16) -> Vec<u8> {
        // SAFETY: all-zero is a valid RequestEndEvent.
        let mut event: RequestEndEvent = unsafe { std::mem::zeroed() };
        event.header.kind = kind::REQUEST_END;
        event.tool[..tool.len()].copy_from_slice(tool);
        event.tool_len = tool_len;
        // SAFETY: a repr(C) struct without padding viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<RequestEndEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_a_request_end() {
        let Event::RequestEnd(event) = decode(&request_end_bytes(b"echo", 4)).unwrap();
        assert_eq!(&event.tool[..usize::from(event.tool_len)], b"echo");
    }

    #[test]
    fn rejects_short_unknown_and_overlong_records() {
        assert_eq!(decode(&[0; 8]).unwrap_err(), DecodeError::Short { len: 8 });
        let mut unknown = request_end_bytes(b"", 0);
        unknown[0] = 99;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind { kind: 99 });
        let truncated = &request_end_bytes(b"", 0)[..100];
        assert!(matches!(decode(truncated), Err(DecodeError::Length { len: 100, .. })));
        let overlong = request_end_bytes(b"", request::TOOL_CAP as u16 + 1);
        assert!(matches!(decode(&overlong), Err(DecodeError::StringLength { .. })));
    }

    #[test]
    fn every_abi_status_has_a_label() {
        assert_eq!(status_label(0), Some("ok"));
        assert_eq!(status_label(6), Some("connect_failed"));
        assert_eq!(status_label(7), None);
    }
}
