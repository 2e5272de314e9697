//! ACL decisions and authentication failures.

use observer_common::{ProbeEvent, field, low};
use prometheus::{IntCounter, IntCounterVec};

use super::{
    Scope, counter_vec,
    series_cache::{Resolve, SeriesCache},
};
use crate::decode::{DecodeError, name, names};

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
        for reason in names::AUTH_FAILURE {
            access.auth_failures.with_label_values(&[reason]);
        }
        access
    }

    pub fn acl_decision(&self, ev: &ProbeEvent, labels: &dyn Resolve) -> Result<(), DecodeError> {
        let decision = name(names::DECISION, "ACL decision", low(ev.value))?;
        let slots = [field::IDENTITY, field::SERVER, field::TOOL];
        self.acl_series.record(
            ev,
            slots,
            u64::from(low(ev.value)),
            labels,
            |[identity, server, tool]| {
                self.acl_decisions.with_label_values(&[identity.as_str(), &server, &tool, decision])
            },
            IntCounter::inc,
        );
        Ok(())
    }

    pub fn auth_failure(&self, ev: &ProbeEvent) -> Result<(), DecodeError> {
        let reason = name(names::AUTH_FAILURE, "authentication failure reason", ev.value)?;
        self.auth_failures.with_label_values(&[reason]).inc();
        Ok(())
    }
}
