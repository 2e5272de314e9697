//! The maps and globals the kernel programs share with the agent, and their entries.

use crate::kind;

/// Name of the ring buffer map in the eBPF object.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU counter array (indices in [`counter`]).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the in-flight request map (key [`InFlightKey`], value start time in ns).
pub const IN_FLIGHT_MAP: &str = "IN_FLIGHT";
/// Requests the in-flight map holds (one entry when request latency is off).
pub const IN_FLIGHT_ENTRIES: u32 = 65_536;
/// Global set by the agent: submit with a forced wakeup once this many bytes wait.
pub const WAKEUP_THRESHOLD_GLOBAL: &str = "WAKEUP_THRESHOLD";
/// Global set by the agent: the tracepoint field offsets ([`Layout`](crate::Layout)).
pub const LAYOUT_GLOBAL: &str = "LAYOUT";
/// Global set to 1 by the node-wide agent: every exec outside the targets' trees is sent
/// as [`kind::PROCESS_EXEC`], so that new proxies are found.
pub const DISCOVER_GLOBAL: &str = "DISCOVER";
/// Global set to 0 by an agent run with `--no-request-latency`: `request_end` neither
/// looks for its start nor reads the clock, and flags its event [`FLAG_UNTIMED`](crate::FLAG_UNTIMED).
pub const REQUEST_LATENCY_GLOBAL: &str = "REQUEST_LATENCY";
/// The targets' process trees (key tgid, value [`Tracked`]).
pub const TRACKED_MAP: &str = "TRACKED";
/// What the targets listen on (key [`listening_key`], value [`Listener`]).
pub const LISTENING_MAP: &str = "LISTENING";
/// The targets' TCP sockets (key the socket's kernel address, value [`TrackedSocket`]).
pub const SOCKETS_MAP: &str = "SOCKETS";

/// Indices into the per-CPU `COUNTERS` array. The agent sums them over CPUs at scrape.
pub mod counter {
    /// A probe argument pointed to memory the kernel could not read.
    pub const BAD_USER_POINTER: u32 = 0;
    /// A request start could not be recorded because the in-flight map was full.
    pub const IN_FLIGHT_FULL: u32 = 1;
    /// A request start reused the id of a request still in flight (a proxy bug); the
    /// first start is kept.
    pub const DUPLICATE_START: u32 = 2;
    /// A new process of a target's tree could not be tracked: `TRACKED` was full.
    pub const TRACKED_FULL: u32 = 3;
    /// A target's connection could not be tracked: the socket map was full.
    pub const SOCKETS_FULL: u32 = 4;
    /// Events of kind `k` that found the ring buffer full are counted at `LOST_BASE + k`.
    pub const LOST_BASE: u32 = 5;
    /// Number of counters.
    pub const COUNT: u32 = LOST_BASE + super::kind::END;
}

/// A process of a target's tree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The target's tgid.
    pub root: u32,
    /// The target's direct child this process descends from (itself for a direct child);
    /// 0 for the target itself.
    pub child: u32,
    /// `exit_group`'s status, once [`TRACKED_EXITING`] is set.
    pub exit_status: u32,
    /// `TRACKED_*` bits.
    pub flags: u32,
    /// For a target itself, the id of its executable's uprobes (their attach cookie): a
    /// file seen through two overlay mounts is one inode with two sets of uprobes, and
    /// each target counts the hits of its own set only. 0 for the others.
    pub binary: u32,
}
/// [`Tracked::flags`]: the process called `exit_group`.
pub const TRACKED_EXITING: u32 = 1;
const _: () = assert!(core::mem::size_of::<Tracked>() == 20);

/// A listening socket of a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The target's tgid.
    pub target: u32,
    /// The process of its tree that listens.
    pub owner: u32,
    /// The socket's kernel address; 0 for a listener found in /proc at attach.
    pub skaddr: u64,
}

/// The key of a listening port: an accepted socket has its listener's family (IPv4
/// connections to a dual-stack IPv6 listener included) and port.
pub const fn listening_key(family: u16, port: u16) -> u32 {
    (family as u32) << 16 | port as u32
}

/// A TCP socket of a target, from connect (or accept) to close.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackedSocket {
    /// The target's tgid.
    pub target: u32,
    /// `direction::*` as u32.
    pub direction: u32,
    /// `socket_state::*`.
    pub state: u32,
    /// The keepalive timer gave up on it (its abort's ETIMEDOUT is then not a
    /// retransmission timeout).
    pub keepalive_timeout: u32,
    /// When its handshake ended.
    pub established_ns: u64,
}

/// [`TrackedSocket::state`].
pub mod socket_state {
    /// Connecting: its handshake is under way.
    pub const CONNECTING: u32 = 0;
    /// Accepted on a port the target listens on, but a listener on the same port in
    /// another network namespace would look the same: it is the target's once a process
    /// of the target's tree reads it.
    pub const UNCONFIRMED: u32 = 1;
    /// Open, and counted: its open was sent, its close will be.
    pub const OPEN: u32 = 2;
}

/// Key of the in-flight map: requests are identified per process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InFlightKey {
    /// Process id of the proxy.
    pub tgid: u32,
    /// Zero.
    pub pad: u32,
    /// The proxy's request id.
    pub id: u64,
}
const _: () = assert!(core::mem::size_of::<InFlightKey>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; every bit pattern is valid.
    unsafe impl aya::Pod for crate::InFlightKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Tracked {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Layout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::TrackedSocket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::Listener {}
}
