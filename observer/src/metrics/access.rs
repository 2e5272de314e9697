//! ACL decisions and authentication failures.

use observer_common::field;
use prometheus::{IntCounter, IntCounterVec};

use super::{
    Scope, counter_vec,
    series_cache::{Resolve, SeriesCache},
};
use crate::decode::{AuthFailure, Decision, Strings};

pub struct Access {
    acl_decisions: IntCounterVec,
    acl_series: SeriesCache<IntCounter>,
    auth_failures: IntCounterVec,
}

impl Access {
    pub fn new(scope: &Scope) -> Self {
        let access = Self {
            acl_decisions: counter_vec(
                scope,
                "mcp_proxy_acl_decisions_total",
                "Tool calls checked by the proxy's ACL, by identity, tool and decision",
                &["identity", "server", "tool", "decision"],
            ),
            acl_series: SeriesCache::new(),
            auth_failures: counter_vec(
                scope,
                "mcp_proxy_auth_failures_total",
                "Clients that failed to authenticate",
                &["reason"],
            ),
        };
        for reason in AuthFailure::ALL {
            access.auth_failures.with_label_values(&[reason.label()]);
        }
        access
    }

    /// `labels`: the identity, server and tool.
    pub fn acl_decision(&self, decision: Decision, labels: Strings, resolve: &dyn Resolve) {
        self.acl_series.record(
            labels,
            [field::IDENTITY, field::SERVER, field::TOOL],
            decision as u64,
            resolve,
            |[identity, server, tool]| {
                self.acl_decisions.with_label_values(&[identity.as_str(), &server, &tool, decision.label()])
            },
            IntCounter::inc,
        );
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures.with_label_values(&[reason.label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use prometheus::core::Collector as _;

    use super::*;
    use crate::metrics::testing::{Plain, strings};

    #[test]
    fn acl_decisions_are_counted_by_identity_server_tool_and_decision() {
        let (access, resolve) = (Access::new(&Scope::detached()), Plain::default());
        let alice =
            strings(&[(field::IDENTITY, b"alice"), (field::SERVER, b"alpha"), (field::TOOL, b"echo")]);
        let bob = strings(&[(field::IDENTITY, b"bob"), (field::SERVER, b"alpha"), (field::TOOL, b"echo")]);
        access.acl_decision(Decision::Allow, alice, &resolve);
        access.acl_decision(Decision::Allow, alice, &resolve);
        access.acl_decision(Decision::Deny, alice, &resolve);
        access.acl_decision(Decision::Deny, bob, &resolve);
        let count = |identity, decision| {
            access.acl_decisions.with_label_values(&[identity, "alpha", "echo", decision]).get()
        };
        assert_eq!([count("alice", "allow"), count("alice", "deny"), count("bob", "deny")], [2, 1, 1]);
        assert_eq!(resolve.resolved.get(), 9, "each label set's three strings once");
    }

    #[test]
    fn auth_failures_are_counted_by_reason_from_zero() {
        let access = Access::new(&Scope::detached());
        access.auth_failure(AuthFailure::Expired);
        let count = |reason| access.auth_failures.with_label_values(&[reason]).get();
        assert_eq!(count("expired"), 1);
        assert_eq!(count("missing_credentials"), 0);
        assert_eq!(access.auth_failures.collect()[0].get_metric().len(), AuthFailure::ALL.len());
    }
}
