//! The backend pool: configured backends are connected on first use, one connect at a time
//! per backend (concurrent users wait for it), reconnected after they went away, and
//! disconnected by the idle reaper or at shutdown. It fires the pool probes: connect
//! start/end, tool-cache size, classifier-cache lookups and (through `Upstream`) child
//! spawns and disconnects.

use std::{
    collections::{BTreeMap, HashSet},
    ops::Deref,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::bail;
use mcp_probes::{BackendConnection, CacheOutcome, ConnectKind, DisconnectReason};
use tokio::sync::OwnedMutexGuard;

use crate::upstream::{Launch, Upstream};

/// A backend that has not finished connecting by then never will.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Pool {
    backends: BTreeMap<String, Backend>,
    extra_tools: usize,
    startup_delay_ms: u64,
    /// (server, tool) pairs classified so far in the proxy's life; survives reconnects.
    classified: Mutex<HashSet<(String, String)>>,
    closing: AtomicBool,
}

struct Backend {
    broken: bool,
    /// Held across a connect, so that concurrent users coalesce into one.
    slot: Arc<tokio::sync::Mutex<Slot>>,
}

#[derive(Default)]
struct Slot {
    upstream: Option<Arc<Upstream>>,
    /// Connect attempts so far: the first one is `Initial`, every later one `Lazy`.
    attempts: u64,
}

pub enum LeaseError {
    NotConfigured,
    ConnectFailed(String),
}

/// A connected backend in use; while any lease is held the reaper leaves it alone.
pub struct Lease(Arc<Upstream>);

impl Lease {
    fn new(upstream: Arc<Upstream>) -> Self {
        upstream.begin_use();
        Self(upstream)
    }
}

impl Deref for Lease {
    type Target = Upstream;

    fn deref(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.end_use();
    }
}

impl Pool {
    /// `healthy` and `broken` backends are configured but not connected yet; the broken ones
    /// are started with `--fail-start`.
    pub fn new(
        healthy: &[String],
        broken: &[String],
        extra_tools: usize,
        startup_delay_ms: u64,
    ) -> anyhow::Result<Self> {
        let mut backends = BTreeMap::new();
        for (name, is_broken) in healthy.iter().map(|n| (n, false)).chain(broken.iter().map(|n| (n, true))) {
            if name.is_empty() || name.contains(crate::proxy::TOOL_SEPARATOR) {
                bail!("backend name {name:?} is empty or contains {:?}", crate::proxy::TOOL_SEPARATOR);
            }
            let backend = Backend { broken: is_broken, slot: Arc::default() };
            if backends.insert(name.clone(), backend).is_some() {
                bail!("backend {name:?} is configured twice");
            }
        }
        Ok(Self {
            backends,
            extra_tools,
            startup_delay_ms,
            classified: Mutex::default(),
            closing: AtomicBool::new(false),
        })
    }

    pub fn configured(&self) -> u64 {
        self.backends.len() as u64
    }

    /// The connected backend `server`, connecting it first if need be.
    pub async fn lease(self: &Arc<Self>, server: &str) -> Result<Lease, LeaseError> {
        let backend = self.backends.get(server).ok_or(LeaseError::NotConfigured)?;
        let slot = backend.slot.clone().lock_owned().await;
        if let Some(upstream) = slot.upstream.as_ref().filter(|u| u.is_live()) {
            return Ok(Lease::new(upstream.clone()));
        }
        if self.closing.load(Ordering::SeqCst) {
            return Err(LeaseError::ConnectFailed("the proxy is shutting down".into()));
        }
        // The connect owns the slot in a task of its own: a caller that gives up (request
        // timeout) must neither cut a connect in half nor let a second one start.
        let (pool, server, broken) = (self.clone(), server.to_string(), backend.broken);
        tokio::spawn(async move { pool.connect(&server, broken, slot).await })
            .await
            .unwrap_or_else(|error| Err(LeaseError::ConnectFailed(error.to_string())))
    }

    /// Every configured backend, connected concurrently where needed, by name.
    pub async fn lease_all(self: &Arc<Self>) -> Vec<(String, Result<Lease, LeaseError>)> {
        let tasks: Vec<_> = self
            .backends
            .keys()
            .map(|server| {
                let (pool, name) = (self.clone(), server.clone());
                (server.clone(), tokio::spawn(async move { pool.lease(&name).await }))
            })
            .collect();
        let mut leases = Vec::with_capacity(tasks.len());
        for (server, task) in tasks {
            let lease = task.await.unwrap_or_else(|error| Err(LeaseError::ConnectFailed(error.to_string())));
            leases.push((server, lease));
        }
        leases
    }

    async fn connect(
        &self,
        server: &str,
        broken: bool,
        mut slot: OwnedMutexGuard<Slot>,
    ) -> Result<Lease, LeaseError> {
        let kind = if slot.attempts == 0 { ConnectKind::Initial } else { ConnectKind::Lazy };
        slot.attempts += 1;
        slot.upstream = None;
        let connection = Arc::new(BackendConnection::connecting(server, kind));
        let launch = Launch {
            extra_tools: self.extra_tools,
            startup_delay_ms: self.startup_delay_ms,
            fail_start: broken,
        };
        let started =
            tokio::time::timeout(CONNECT_TIMEOUT, Upstream::start(connection.clone(), launch)).await;
        let upstream = match started {
            Ok(Ok(upstream)) => upstream,
            failed => {
                // Dropping the failed connection killed its child.
                connection.failed();
                let why = match failed {
                    Ok(Err(error)) => format!("{error:#}"),
                    _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                };
                return Err(LeaseError::ConnectFailed(format!(
                    "backend {server} could not be connected: {why}"
                )));
            }
        };
        // A backend that died meanwhile is counted as disconnected now.
        connection.connected();
        mcp_probes::tool_cache_size(server, upstream.tools.len() as u64);
        self.classify(server, &upstream);
        let upstream = Arc::new(upstream);
        slot.upstream = Some(upstream.clone());
        Ok(Lease::new(upstream))
    }

    /// Classifies each listed tool: a miss the first time the proxy sees it, a hit after.
    fn classify(&self, server: &str, upstream: &Upstream) {
        let mut classified = self.classified.lock().expect("classified lock");
        for tool in &upstream.tools {
            let name = tool["name"].as_str().unwrap_or_default().to_string();
            let first = classified.insert((server.to_string(), name));
            mcp_probes::classifier_cache(server, if first { CacheOutcome::Miss } else { CacheOutcome::Hit });
        }
    }

    /// Disconnects every backend nobody has used for `idle`. A backend being connected or
    /// leased right now is busy, so its slot being locked just skips it.
    pub fn reap_idle(&self, idle: Duration) {
        for backend in self.backends.values() {
            let Ok(mut slot) = backend.slot.try_lock() else { continue };
            let Some(upstream) = &slot.upstream else { continue };
            if !upstream.is_live() {
                slot.upstream = None;
            } else if upstream.idle_for().is_some_and(|for_| for_ >= idle) {
                upstream.close(DisconnectReason::IdleReaped);
                slot.upstream = None;
            }
        }
    }

    /// Disconnects every connected backend and waits for its child; connects no more.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for backend in self.backends.values() {
            let upstream = backend.slot.lock().await.upstream.take();
            if let Some(upstream) = upstream
                && upstream.close(DisconnectReason::Shutdown)
            {
                upstream.exited().await;
            }
        }
    }
}
