//! Ring-buffer records checked in place: their length, alignment, kind and string
//! lengths, and the labels of the ABI's enumerations. What the ring holds comes from the
//! kernel programs, but its strings and values from the proxy: nothing is trusted.

use observer_common::{CAPS, EventHeader, ProbeEvent, kind};

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
    #[error("record not aligned to 8 bytes")]
    Misaligned,
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("string length {len} exceeds its capacity {cap}")]
    StringLength { len: u16, cap: usize },
    #[error("{what} {value} is not defined by probe ABI v1")]
    Value { what: &'static str, value: u64 },
}

/// The label of ABI value `value` in `table` (one of [`names`]).
pub fn name(
    table: &[&'static str],
    what: &'static str,
    value: impl Into<u64>,
) -> Result<&'static str, DecodeError> {
    let value = value.into();
    usize::try_from(value).ok().and_then(|i| table.get(i).copied()).ok_or(DecodeError::Value { what, value })
}

/// Checks a record where it lies in the ring buffer (the kernel aligns records to 8 bytes;
/// reading it in place saves a copy of its 472 bytes per event).
pub fn decode(bytes: &[u8]) -> Result<&ProbeEvent, DecodeError> {
    let expected = size_of::<ProbeEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Length { len: bytes.len(), expected });
    }
    if bytes.as_ptr().align_offset(align_of::<ProbeEvent>()) != 0 {
        return Err(DecodeError::Misaligned);
    }
    // SAFETY: length and alignment checked above; ProbeEvent is plain integers and bytes,
    // valid for any bit pattern.
    let event: &ProbeEvent = unsafe { &*bytes.as_ptr().cast() };
    let EventHeader { kind, .. } = event.header;
    if kind == 0 || kind >= kind::END {
        return Err(DecodeError::UnknownKind { kind });
    }
    for (&len, &cap) in event.lens.iter().zip(&CAPS) {
        if usize::from(len) > cap {
            return Err(DecodeError::StringLength { len, cap });
        }
    }
    Ok(event)
}

/// The bytes of string slot `slot` (one of `observer_common::field`).
pub fn string(event: &ProbeEvent, slot: usize) -> &[u8] {
    // In bounds: `decode` checked every length against its slot's cap.
    let start = event.string_start(slot);
    &event.strings[start..start + usize::from(event.lens[slot])]
}

#[cfg(test)]
mod tests {
    use observer_common::field;

    use super::*;

    /// A record as the ring buffer holds it (8-byte aligned).
    fn record(kind: u32, tool: &[u8], tool_len: u16) -> Box<ProbeEvent> {
        // SAFETY: all-zero is a valid ProbeEvent.
        let mut event: Box<ProbeEvent> = Box::new(unsafe { std::mem::zeroed() });
        event.header.kind = kind;
        // The only string: it starts at 0.
        event.strings[..tool.len()].copy_from_slice(tool);
        event.lens[field::TOOL] = tool_len;
        event
    }

    fn bytes(event: &ProbeEvent) -> &[u8] {
        // SAFETY: a repr(C) struct without padding viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const *event).cast::<u8>(), size_of::<ProbeEvent>()) }
    }

    #[test]
    fn decodes_an_event_and_its_strings() {
        let record = record(kind::REQUEST_END, b"echo", 4);
        let event = decode(bytes(&record)).unwrap();
        assert_eq!(string(event, field::TOOL), b"echo");
        assert_eq!(string(event, field::METHOD), b"");
    }

    #[test]
    fn strings_are_packed_in_slot_order() {
        let mut event = record(kind::ACL_DECISION, b"", 0);
        for (slot, text) in
            [(field::IDENTITY, &b"alice"[..]), (field::SERVER, b"alpha"), (field::TOOL, b"echo")]
        {
            let start = event.string_start(slot);
            event.strings[start..start + text.len()].copy_from_slice(text);
            event.lens[slot] = text.len() as u16;
        }
        assert_eq!(&event.strings[..14], b"alicealphaecho");
        let event = decode(bytes(&event)).unwrap();
        assert_eq!(string(event, field::IDENTITY), b"alice");
        assert_eq!(string(event, field::SERVER), b"alpha");
        assert_eq!(string(event, field::TOOL), b"echo");
        assert_eq!(string(event, field::METHOD), b"");
    }

    #[test]
    fn rejects_short_unknown_and_overlong_records() {
        assert!(matches!(decode(&[0; 8]), Err(DecodeError::Length { len: 8, .. })));
        assert_eq!(decode(bytes(&record(99, b"", 0))).unwrap_err(), DecodeError::UnknownKind { kind: 99 });
        assert_eq!(decode(bytes(&record(0, b"", 0))).unwrap_err(), DecodeError::UnknownKind { kind: 0 });
        let overlong = record(kind::ACL_DECISION, b"", observer_common::TOOL_CAP as u16 + 1);
        assert!(matches!(decode(bytes(&overlong)), Err(DecodeError::StringLength { .. })));
        let mut shifted = vec![0u8; size_of::<ProbeEvent>() + 8];
        let at = shifted.as_ptr().align_offset(8) + 1;
        shifted[at..at + size_of::<ProbeEvent>()].copy_from_slice(bytes(&record(kind::REQUEST_END, b"", 0)));
        assert_eq!(decode(&shifted[at..at + size_of::<ProbeEvent>()]).unwrap_err(), DecodeError::Misaligned);
    }

    #[test]
    fn abi_values_have_labels_and_others_are_errors() {
        assert_eq!(name(names::STATUS, "status", 6u32), Ok("connect_failed"));
        assert_eq!(name(names::STATUS, "status", 7u32), Err(DecodeError::Value { what: "status", value: 7 }));
        assert_eq!(name(names::DISCONNECT_REASON, "reason", 2u32), Ok("shutdown"));
        assert!(name(names::DECISION, "decision", u64::MAX).is_err());
    }
}
