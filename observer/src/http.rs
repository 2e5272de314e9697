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

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    state.kernel.lock().expect("kernel maps lock").refresh(&state.metrics);
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], state.metrics.encode())
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: probes not attached or target gone\n")
    }
}
