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
