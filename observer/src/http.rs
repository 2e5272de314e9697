//! `/metrics`, `/healthz` and `/readyz`.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::{maps::KernelMaps, metrics::Metrics};

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub kernel: Mutex<KernelMaps>,
    /// `--pid`: every probe of every target is attached and no target has exited.
    /// Node-wide: the first scan of /proc is done.
    pub ready: AtomicBool,
}

impl AppState {
    /// Folds the kernel maps into the metrics, after forgetting the processes in `exited`.
    /// Blocking: walking a full in-flight map takes syscalls per entry.
    pub fn refresh(&self, exited: &[u32]) {
        let mut kernel = self.kernel.lock().expect("kernel maps lock");
        for &pid in exited {
            kernel.forget_process(pid, &self.metrics);
            self.metrics.forget_process(pid);
        }
        kernel.refresh(&self.metrics);
        self.metrics.tick();
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    // Off the runtime's thread: the ring-buffer reader must not wait for it.
    let refreshing = state.clone();
    if let Err(error) = tokio::task::spawn_blocking(move || refreshing.refresh(&[])).await {
        log::error!("refreshing the kernel maps failed: {error}");
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.metrics.encode())
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: probes not attached or target gone\n")
    }
}
