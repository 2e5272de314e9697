//! The ABI's enumerations as the agent reads them: each value checked, each with its label.

use observer_common::{EXIT_STATUS_KNOWN, EXIT_STATUS_UNKNOWN, direction, timeout};

use super::DecodeError;

/// An enumeration of the ABI: its variants in value order, each with its label value.
macro_rules! abi_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in ABI order.
            pub const ALL: &[Self] = &[$(Self::$variant),+];

            /// The label value (a classifier outcome picks a family instead).
            #[allow(dead_code)]
            pub const fn label(self) -> &'static str {
                match self { $(Self::$variant => $label),+ }
            }

            pub(super) fn from_abi(value: impl Into<u64>) -> Result<Self, DecodeError> {
                let value = value.into();
                usize::try_from(value)
                    .ok()
                    .and_then(|i| Self::ALL.get(i).copied())
                    .ok_or(DecodeError::Value { what: $what, value })
            }
        }
    };
}

abi_enum!(
    /// How a request ended.
    Status, "request status" {
        Ok = "ok", JsonrpcError = "jsonrpc_error", ToolError = "tool_error", Timeout = "timeout",
        AclDenied = "acl_denied", AuthFailed = "auth_failed", ConnectFailed = "connect_failed",
    }
);
abi_enum!(Decision, "ACL decision" { Allow = "allow", Deny = "deny" });
abi_enum!(AuthFailure, "authentication failure reason" {
    MissingCredentials = "missing_credentials", InvalidCredentials = "invalid_credentials",
    Expired = "expired", Other = "other",
});
abi_enum!(ConnectKind, "connect kind" { Initial = "initial", Lazy = "lazy" });
abi_enum!(ConnectResult, "connect result" { Ok = "ok", Error = "error" });
abi_enum!(DisconnectReason, "disconnect reason" {
    IdleReaped = "idle_reaped", Error = "error", Shutdown = "shutdown",
});
abi_enum!(SessionCloseReason, "session close reason" {
    ClientClosed = "client_closed", Expired = "expired", Shutdown = "shutdown", Error = "error",
});
abi_enum!(CacheOutcome, "classifier cache outcome" { Hit = "hit", Miss = "miss" });
abi_enum!(
    /// A TCP connection's side (set by the kernel hooks, `observer_common::direction`).
    Direction, "direction" { Inbound = "inbound", Outbound = "outbound" }
);
abi_enum!(
    /// The timer that aborted a TCP connection (`observer_common::timeout`).
    TimeoutKind, "timeout kind" { Keepalive = "keepalive", Retransmission = "retransmission" }
);
const _: () = assert!(
    Direction::Inbound as u64 == direction::INBOUND && Direction::Outbound as u64 == direction::OUTBOUND
);
const _: () = assert!(
    TimeoutKind::Keepalive as u32 == timeout::KEEPALIVE
        && TimeoutKind::Retransmission as u32 == timeout::RETRANSMISSION
);

/// How a child process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildOutcome {
    /// `exit_group(0)`.
    Clean,
    /// `exit_group` with another status.
    Error,
    /// Killed by a signal.
    Signal,
    /// The kernel has no syscall tracepoints to tell.
    Unknown,
}

impl ChildOutcome {
    pub const fn label(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Error => "error",
            Self::Signal => "signal",
            Self::Unknown => "unknown",
        }
    }

    pub(super) const fn from_abi(value: u64) -> Self {
        if value & EXIT_STATUS_UNKNOWN != 0 {
            Self::Unknown
        } else if value & EXIT_STATUS_KNOWN == 0 {
            Self::Signal
        } else if value & 0xff == 0 {
            Self::Clean
        } else {
            Self::Error
        }
    }
}
