//! `/metrics`, `/healthz` and `/readyz`: a router only; what a scrape refreshes is the
//! agent's state's (`state`).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

use crate::state::AppState;

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
