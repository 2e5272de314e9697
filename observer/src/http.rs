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
    /// Every probe of every live target is attached.
    pub ready: AtomicBool,
}

impl AppState {
    /// Folds the kernel maps into the metrics, after forgetting the processes in `exited`.
    /// On a blocking thread: walking a full in-flight map takes syscalls per entry, and
    /// the ring-buffer reader must not wait for it.
    pub async fn refresh(self: &Arc<Self>, exited: Vec<u32>) {
        let state = self.clone();
        let refreshed = tokio::task::spawn_blocking(move || {
            let mut kernel = state.kernel.lock().expect("kernel maps lock");
            for pid in exited {
                kernel.forget_process(pid, &state.metrics);
                state.metrics.forget_process(pid);
            }
            kernel.refresh(&state.metrics);
            state.metrics.tick();
        });
        if let Err(error) = refreshed.await {
            log::error!("refreshing the kernel maps failed: {error}");
        }
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
    state.refresh(Vec::new()).await;
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.metrics.encode())
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: probes not attached or target gone\n")
    }
}
