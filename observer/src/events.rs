//! Decodes ring-buffer records and drains the ring buffer.
//!
//! The eBPF side submits without waking us (a wakeup per event costs ~6 µs on a VM), so
//! the reader drains on a short timer, and on readiness when the kernel forces a wakeup
//! because the buffer is filling up.

use std::{
    sync::{
        Arc,
        mpsc::{SyncSender, TrySendError},
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use observer_common::{CAPS, EventHeader, ProbeEvent, field, kind};
use tokio::io::unix::AsyncFd;

use crate::{metrics::Metrics, targets::Lifecycle};

/// Label values of the ABI's enumerations, indexed by their numeric values.
pub mod names {
    pub const STATUS: &[&str] =
        &["ok", "jsonrpc_error", "tool_error", "timeout", "acl_denied", "auth_failed", "connect_failed"];
    pub const DECISION: &[&str] = &["allow", "deny"];
    pub const AUTH_FAILURE: &[&str] = &["missing_credentials", "invalid_credentials", "expired", "other"];
    pub const CONNECT_KIND: &[&str] = &["initial", "lazy"];
    pub const CONNECT_RESULT: &[&str] = &["ok", "error"];
    pub const DISCONNECT_REASON: &[&str] = &["idle_reaped", "error", "shutdown"];
    pub const SESSION_CLOSE_REASON: &[&str] = &["client_closed", "expired", "shutdown", "error"];
    pub const CACHE_OUTCOME: &[&str] = &["hit", "miss"];
    // Kernel hooks (observer_common::direction, observer_common::timeout).
    pub const DIRECTION: &[&str] = &["inbound", "outbound"];
    pub const TIMEOUT: &[&str] = &["keepalive", "retransmission"];
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes, expected {expected}")]
    Length { len: usize, expected: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("string length {len} exceeds its capacity {cap}")]
    StringLength { len: u16, cap: usize },
    #[error("{what} {value} is not defined by probe ABI v1")]
    Value { what: &'static str, value: u64 },
}

/// The label of ABI value `value` in `table` (one of [`names`]).
pub fn name(table: &[&'static str], what: &'static str, value: u64) -> Result<&'static str, DecodeError> {
    usize::try_from(value).ok().and_then(|i| table.get(i).copied()).ok_or(DecodeError::Value { what, value })
}

/// The first `u32` of an argument's 8 bytes of scalars (`ProbeEvent::value`): the enum
/// value; the second is reserved, or a connect's result.
pub fn low_u32(value: u64) -> u64 {
    value & u64::from(u32::MAX)
}

/// Checks a record and copies it out of the ring buffer.
pub fn decode(bytes: &[u8]) -> Result<Box<ProbeEvent>, DecodeError> {
    let expected = size_of::<ProbeEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Length { len: bytes.len(), expected });
    }
    // SAFETY: length checked above; ProbeEvent is plain integers and bytes.
    let event: ProbeEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let EventHeader { kind, .. } = event.header;
    if kind == 0 || kind >= kind::END {
        return Err(DecodeError::UnknownKind { kind });
    }
    for (&len, &cap) in event.lens.iter().zip(&CAPS) {
        if usize::from(len) > cap {
            return Err(DecodeError::StringLength { len, cap });
        }
    }
    Ok(Box::new(event))
}

/// The bytes of string slot `slot` (one of `observer_common::field`).
pub fn string(event: &ProbeEvent, slot: usize) -> &[u8] {
    let bytes: &[u8] = match slot {
        field::METHOD => &event.method,
        field::TRANSPORT => &event.transport,
        field::IDENTITY => &event.identity,
        field::SERVER => &event.server,
        _ => &event.tool,
    };
    &bytes[..usize::from(event.lens[slot])]
}

/// Drains `ring` into `metrics` forever: every `interval`, and whenever the kernel wakes us.
/// Process execs and target exits also go to `lifecycle`.
pub async fn drain_forever(
    ring: RingBuf<MapData>,
    metrics: Arc<Metrics>,
    lifecycle: SyncSender<Option<Lifecycle>>,
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
                drain(guard.get_inner_mut(), &metrics, &lifecycle);
                guard.clear_ready();
            }
            _ = ticker.tick() => drain(ring.get_mut(), &metrics, &lifecycle),
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, metrics: &Metrics, lifecycle: &SyncSender<Option<Lifecycle>>) {
    let start = crate::maps::monotonic_ns();
    let _batch = metrics.batch();
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => {
                metrics.record(&event);
                let (pid, ns) = (event.header.tgid, event.header.ts_ns);
                let told = match event.header.kind {
                    kind::PROCESS_EXEC => Some(Lifecycle::Exec { pid, ns }),
                    kind::TARGET_EXIT => Some(Lifecycle::Exit { pid, ns }),
                    _ => None,
                };
                // Full: the targets' periodic checks of /proc catch up.
                if let Some(told) = told
                    && let Err(TrySendError::Full(_)) = lifecycle.try_send(Some(told))
                {
                    log::warn!("lifecycle queue full: {told:?} left to the next scan of /proc");
                }
            }
            Err(error) => metrics.decode_error(&error),
        }
    }
    metrics.drained(start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(kind: u32, tool: &[u8], tool_len: u16) -> Vec<u8> {
        // SAFETY: all-zero is a valid ProbeEvent.
        let mut event: ProbeEvent = unsafe { std::mem::zeroed() };
        event.header.kind = kind;
        event.tool[..tool.len()].copy_from_slice(tool);
        event.lens[field::TOOL] = tool_len;
        // SAFETY: a repr(C) struct without padding viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<ProbeEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_an_event_and_its_strings() {
        let event = decode(&bytes(kind::REQUEST_END, b"echo", 4)).unwrap();
        assert_eq!(string(&event, field::TOOL), b"echo");
        assert_eq!(string(&event, field::METHOD), b"");
    }

    #[test]
    fn rejects_short_unknown_and_overlong_records() {
        assert!(matches!(decode(&[0; 8]), Err(DecodeError::Length { len: 8, .. })));
        assert_eq!(decode(&bytes(99, b"", 0)).unwrap_err(), DecodeError::UnknownKind { kind: 99 });
        assert_eq!(decode(&bytes(0, b"", 0)).unwrap_err(), DecodeError::UnknownKind { kind: 0 });
        let overlong = bytes(kind::ACL_DECISION, b"", observer_common::TOOL_CAP as u16 + 1);
        assert!(matches!(decode(&overlong), Err(DecodeError::StringLength { .. })));
    }

    #[test]
    fn abi_values_have_labels_and_others_are_errors() {
        assert_eq!(name(names::STATUS, "status", 6), Ok("connect_failed"));
        assert_eq!(name(names::STATUS, "status", 7), Err(DecodeError::Value { what: "status", value: 7 }));
        assert_eq!(name(names::DISCONNECT_REASON, "reason", 2), Ok("shutdown"));
        assert!(name(names::DECISION, "decision", u64::MAX).is_err());
    }
}
