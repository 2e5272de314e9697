//! Ring-buffer records checked in place ([`check`]) and read as typed events ([`event`]):
//! every ABI value unpacked and checked here, so that the families never see a raw
//! record. What the ring holds comes from the kernel programs, but its strings and values
//! from the proxy: nothing is trusted.

mod values;

use observer_common::{
    CAPS, FLAG_NO_START, FLAG_TRUNCATED_SHIFT, FLAG_UNTIMED, ProbeEvent, field, high, kind, low,
};
pub use values::*;

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

/// One string of an event, as the kernel sent it: its slot (one of
/// `observer_common::field`), its bytes, and whether the kernel cut it at its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label<'a> {
    pub slot: usize,
    pub bytes: &'a [u8],
    pub truncated: bool,
}

/// An event's strings, read where they lie in the ring buffer.
#[derive(Clone, Copy, Debug)]
pub struct Strings<'a> {
    record: &'a ProbeEvent,
}

impl<'a> Strings<'a> {
    /// The strings of `record` (a test's own).
    #[cfg(test)]
    pub fn of(record: &'a ProbeEvent) -> Self {
        Self { record }
    }

    /// String slot `slot`.
    pub fn get(self, slot: usize) -> Label<'a> {
        let record = self.record;
        // In bounds: `check` checked every length against its slot's cap.
        let start = record.string_start(slot);
        Label {
            slot,
            bytes: &record.strings[start..start + usize::from(record.lens[slot])],
            truncated: record.flags & (1 << (FLAG_TRUNCATED_SHIFT + slot as u32)) != 0,
        }
    }

    /// Whether the kernel cut any of them.
    pub fn any_truncated(self) -> bool {
        self.record.flags & TRUNCATED != 0
    }

    /// Appends what tells one set of strings from another: the truncation flags, every
    /// length, then the strings as they lie, packed.
    pub fn identity(self, into: &mut Vec<u8>) {
        let record = self.record;
        into.extend_from_slice(&(record.flags & TRUNCATED).to_ne_bytes());
        for len in record.lens {
            into.extend_from_slice(&len.to_ne_bytes());
        }
        into.extend_from_slice(&record.strings[..record.string_start(field::COUNT)]);
    }
}

/// Every slot's truncated flag.
const TRUNCATED: u32 = ((1 << field::COUNT) - 1) << FLAG_TRUNCATED_SHIFT;

/// A checked event: which process, when, and what happened.
#[derive(Clone, Copy, Debug)]
pub struct Decoded<'a> {
    pub at: Stamp,
    pub event: Event<'a>,
}

/// Which process an event is about, and when the kernel saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The target process (for the process tree's hooks, the target the process belongs to).
    pub tgid: u32,
    /// CLOCK_MONOTONIC, ns; `observer_common::UNTIMED` for the events whose time nobody reads.
    pub ts_ns: u64,
}

/// What one ring-buffer record says, its ABI values unpacked and checked. Ids are the
/// proxy's (requests, connections, sessions) or the kernel's (a socket's address, a pid).
///
/// - `labels` are a request end's method, transport, identity, server and tool; an ACL
///   decision's identity, server and tool; a classifier cache lookup's server.
/// - `ChildSpawn`: the proxy named its child `pid` after backend `server`. `ChildFork`'s
///   `command` is the child's command name, NUL-padded; `ChildExec`'s `path` the
///   executable's path (its tail when long).
/// - `ProcessExec`: a process outside every target's tree, or a target itself, executed a
///   program. `TargetExit`: a target process exited.
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    RequestEnd { id: u64, status: Status, timing: Timing, labels: Strings<'a> },
    AclDecision { decision: Decision, labels: Strings<'a> },
    AuthFailure { reason: AuthFailure },
    BackendConnectStart { conn: u64 },
    BackendConnectEnd { conn: u64, kind: ConnectKind, result: ConnectResult, server: Label<'a> },
    BackendDisconnect { conn: u64, reason: DisconnectReason, server: Label<'a> },
    BackendsConfigured { count: u64 },
    IdleReaperRun,
    SessionOpen { session: u64, transport: Label<'a> },
    SessionClose { session: u64, reason: SessionCloseReason, transport: Label<'a> },
    ToolCacheSize { entries: u64, server: Label<'a> },
    ClassifierCache { outcome: CacheOutcome, labels: Strings<'a> },
    ChildSpawn { pid: u32, server: Label<'a> },
    TcpOpen { socket: u64, direction: Direction },
    TcpClose { socket: u64, direction: Direction },
    TcpReset { direction: Direction },
    TcpTimeout { direction: Direction, kind: TimeoutKind },
    TcpRetransmit { direction: Direction },
    ChildFork { pid: u32, command: Label<'a> },
    ChildExec { pid: u32, path: Label<'a> },
    ChildExit { pid: u32, outcome: ChildOutcome },
    ProcessExec,
    TargetExit,
}

/// What a request end says about its duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// Measured, in ns.
    Measured(u64),
    /// Its start was not seen (the observer attached later, or the in-flight map was full).
    NoStart,
    /// Sent without latency on purpose (request latency off and no time from the proxy).
    Untimed,
}

/// Checks a record where it lies in the ring buffer (the kernel aligns records to 8 bytes;
/// reading it in place saves a copy of its 472 bytes per event).
pub fn check(bytes: &[u8]) -> Result<&ProbeEvent, DecodeError> {
    let expected = size_of::<ProbeEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Length { len: bytes.len(), expected });
    }
    if bytes.as_ptr().align_offset(align_of::<ProbeEvent>()) != 0 {
        return Err(DecodeError::Misaligned);
    }
    // SAFETY: length and alignment checked above; ProbeEvent is plain integers and bytes,
    // valid for any bit pattern.
    let record: &ProbeEvent = unsafe { &*bytes.as_ptr().cast() };
    let kind = record.header.kind;
    if kind == 0 || kind >= kind::END {
        return Err(DecodeError::UnknownKind { kind });
    }
    for (&len, &cap) in record.lens.iter().zip(&CAPS) {
        if usize::from(len) > cap {
            return Err(DecodeError::StringLength { len, cap });
        }
    }
    Ok(record)
}

/// The typed event of a [`check`]ed record.
pub fn event(record: &ProbeEvent) -> Result<Decoded<'_>, DecodeError> {
    let ProbeEvent { id, value, flags, .. } = *record;
    let strings = Strings { record };
    let string = |slot| strings.get(slot);
    let pid = id as u32;
    let direction = || Direction::from_abi(low(value));
    let event = match record.header.kind {
        kind::REQUEST_END => Event::RequestEnd {
            id,
            status: Status::from_abi(value)?,
            timing: match flags {
                _ if flags & FLAG_NO_START != 0 => Timing::NoStart,
                _ if flags & FLAG_UNTIMED != 0 => Timing::Untimed,
                _ => Timing::Measured(record.duration_ns),
            },
            labels: strings,
        },
        kind::ACL_DECISION => {
            Event::AclDecision { decision: Decision::from_abi(low(value))?, labels: strings }
        }
        kind::AUTH_FAILURE => Event::AuthFailure { reason: AuthFailure::from_abi(value)? },
        kind::BACKEND_CONNECT_START => Event::BackendConnectStart { conn: id },
        kind::BACKEND_CONNECT_END => Event::BackendConnectEnd {
            conn: id,
            kind: ConnectKind::from_abi(low(value))?,
            result: ConnectResult::from_abi(high(value))?,
            server: string(field::SERVER),
        },
        kind::BACKEND_DISCONNECT => Event::BackendDisconnect {
            conn: id,
            reason: DisconnectReason::from_abi(low(value))?,
            server: string(field::SERVER),
        },
        kind::BACKENDS_CONFIGURED => Event::BackendsConfigured { count: value },
        kind::IDLE_REAPER_RUN => Event::IdleReaperRun,
        kind::SESSION_OPEN => Event::SessionOpen { session: id, transport: string(field::TRANSPORT) },
        kind::SESSION_CLOSE => Event::SessionClose {
            session: id,
            reason: SessionCloseReason::from_abi(low(value))?,
            transport: string(field::TRANSPORT),
        },
        kind::TOOL_CACHE_SIZE => Event::ToolCacheSize { entries: value, server: string(field::SERVER) },
        kind::CLASSIFIER_CACHE => {
            Event::ClassifierCache { outcome: CacheOutcome::from_abi(low(value))?, labels: strings }
        }
        kind::CHILD_SPAWN => Event::ChildSpawn { pid: value as u32, server: string(field::SERVER) },
        kind::TCP_OPEN => Event::TcpOpen { socket: id, direction: direction()? },
        kind::TCP_CLOSE => Event::TcpClose { socket: id, direction: direction()? },
        kind::TCP_RESET => Event::TcpReset { direction: direction()? },
        kind::TCP_TIMEOUT => {
            Event::TcpTimeout { direction: direction()?, kind: TimeoutKind::from_abi(high(value))? }
        }
        kind::TCP_RETRANSMIT => Event::TcpRetransmit { direction: direction()? },
        kind::CHILD_FORK => Event::ChildFork { pid, command: string(field::SERVER) },
        kind::CHILD_EXEC => Event::ChildExec { pid, path: string(field::SERVER) },
        kind::CHILD_EXIT => Event::ChildExit { pid, outcome: ChildOutcome::from_abi(value) },
        kind::PROCESS_EXEC => Event::ProcessExec,
        kind::TARGET_EXIT => Event::TargetExit,
        kind => return Err(DecodeError::UnknownKind { kind }),
    };
    Ok(Decoded { at: Stamp { tgid: record.header.tgid, ts_ns: record.header.ts_ns }, event })
}

#[cfg(test)]
pub mod tests {
    use observer_common::{EXIT_STATUS_KNOWN, EXIT_STATUS_UNKNOWN, pack};

    use super::*;

    /// A record as the ring buffer holds it (8-byte aligned), with `strings` in their slots.
    pub fn record(kind: u32, id: u64, value: u64, strings: &[(usize, &[u8])]) -> Box<ProbeEvent> {
        // SAFETY: all-zero is a valid ProbeEvent.
        let mut record: Box<ProbeEvent> = Box::new(unsafe { std::mem::zeroed() });
        record.header.kind = kind;
        record.header.ts_ns = 1;
        record.id = id;
        record.value = value;
        for &(slot, text) in strings {
            record.lens[slot] = text.len() as u16;
        }
        for &(slot, text) in strings {
            let start = record.string_start(slot);
            record.strings[start..start + text.len()].copy_from_slice(text);
        }
        record
    }

    fn bytes(record: &ProbeEvent) -> &[u8] {
        // SAFETY: a repr(C) struct without padding viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const *record).cast::<u8>(), size_of::<ProbeEvent>()) }
    }

    #[test]
    fn strings_are_packed_in_slot_order_and_read_in_place() {
        let strings = [(field::IDENTITY, &b"alice"[..]), (field::SERVER, b"alpha"), (field::TOOL, b"echo")];
        let mut record = record(kind::ACL_DECISION, 0, 1, &strings);
        record.flags = 1 << (FLAG_TRUNCATED_SHIFT + field::TOOL as u32);
        assert_eq!(&record.strings[..14], b"alicealphaecho");
        let Event::AclDecision { decision, labels } = event(check(bytes(&record)).unwrap()).unwrap().event
        else {
            panic!("not an ACL decision")
        };
        assert_eq!(decision, Decision::Deny);
        assert_eq!(
            labels.get(field::IDENTITY),
            Label { slot: field::IDENTITY, bytes: b"alice", truncated: false }
        );
        assert_eq!(labels.get(field::SERVER).bytes, b"alpha");
        assert_eq!(labels.get(field::TOOL), Label { slot: field::TOOL, bytes: b"echo", truncated: true });
        assert_eq!(labels.get(field::METHOD).bytes, b"");
        assert!(labels.any_truncated());
    }

    #[test]
    fn rejects_short_unknown_misaligned_and_overlong_records() {
        assert!(matches!(check(&[0; 8]), Err(DecodeError::Length { len: 8, .. })));
        for kind in [0, 99] {
            assert_eq!(
                check(bytes(&record(kind, 0, 0, &[]))).unwrap_err(),
                DecodeError::UnknownKind { kind }
            );
        }
        let mut overlong = record(kind::ACL_DECISION, 0, 0, &[]);
        overlong.lens[field::TOOL] = observer_common::TOOL_CAP as u16 + 1;
        assert!(matches!(check(bytes(&overlong)), Err(DecodeError::StringLength { .. })));
        let mut shifted = vec![0u8; size_of::<ProbeEvent>() + 8];
        let at = shifted.as_ptr().align_offset(8) + 1;
        let size = size_of::<ProbeEvent>();
        shifted[at..at + size].copy_from_slice(bytes(&record(kind::REQUEST_END, 0, 0, &[])));
        assert_eq!(check(&shifted[at..at + size]).unwrap_err(), DecodeError::Misaligned);
    }

    /// The typed event of a record of `kind` with `id` and `value`.
    fn typed(kind: u32, id: u64, value: u64) -> Result<Event<'static>, DecodeError> {
        let record = Box::leak(record(kind, id, value, &[(field::SERVER, b"alpha")]));
        event(record).map(|decoded| decoded.event)
    }

    #[test]
    fn packed_values_are_unpacked_into_their_enumerations() {
        let Ok(Event::BackendConnectEnd { conn: 7, kind, result, server }) =
            typed(kind::BACKEND_CONNECT_END, 7, pack(1, 1))
        else {
            panic!("not a connect end")
        };
        assert_eq!((kind, result, server.bytes), (ConnectKind::Lazy, ConnectResult::Error, &b"alpha"[..]));
        let Ok(Event::TcpTimeout { direction, kind }) = typed(kind::TCP_TIMEOUT, 0, pack(1, 0)) else {
            panic!("not a TCP timeout")
        };
        assert_eq!((direction, kind), (Direction::Outbound, TimeoutKind::Keepalive));
        let outcome = |value| match typed(kind::CHILD_EXIT, 11, value) {
            Ok(Event::ChildExit { pid: 11, outcome }) => outcome,
            other => panic!("not a child exit: {other:?}"),
        };
        assert_eq!(outcome(EXIT_STATUS_KNOWN), ChildOutcome::Clean);
        assert_eq!(outcome(EXIT_STATUS_KNOWN | 3), ChildOutcome::Error);
        assert_eq!(outcome(9), ChildOutcome::Signal);
        assert_eq!(outcome(EXIT_STATUS_UNKNOWN), ChildOutcome::Unknown);
    }

    #[test]
    fn values_the_abi_does_not_define_are_errors() {
        let undefined = |what, value| Err(DecodeError::Value { what, value });
        assert_eq!(typed(kind::REQUEST_END, 0, 7).map(|_| ()), undefined("request status", 7));
        assert_eq!(typed(kind::ACL_DECISION, 0, 2).map(|_| ()), undefined("ACL decision", 2));
        assert_eq!(
            typed(kind::BACKEND_CONNECT_END, 0, pack(0, 2)).map(|_| ()),
            undefined("connect result", 2)
        );
        assert_eq!(typed(kind::TCP_TIMEOUT, 0, pack(2, 0)).map(|_| ()), undefined("direction", 2));
        assert_eq!(
            typed(kind::AUTH_FAILURE, 0, u64::MAX).map(|_| ()),
            undefined("authentication failure reason", u64::MAX)
        );
        assert_eq!(Status::ALL.last().map(|s| s.label()), Some("connect_failed"));
    }

    #[test]
    fn a_request_end_says_how_it_was_timed() {
        let timing = |flags, duration_ns| {
            let mut record = record(kind::REQUEST_END, 1, 0, &[]);
            (record.flags, record.duration_ns) = (flags, duration_ns);
            match event(Box::leak(record)).unwrap().event {
                Event::RequestEnd { timing, .. } => timing,
                other => panic!("not a request end: {other:?}"),
            }
        };
        assert_eq!(timing(0, 5), Timing::Measured(5));
        assert_eq!(timing(FLAG_NO_START, 0), Timing::NoStart);
        assert_eq!(timing(FLAG_UNTIMED, 0), Timing::Untimed);
    }
}
