//! The admin listener: `/healthz` (the process is up), `/readyz` (ClickHouse answers), and
//! `/metrics` (Prometheus text).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// What the admin endpoints report.
pub struct AdminState {
    pub metrics: Option<PrometheusHandle>,
    /// Whether the last ClickHouse probe succeeded.
    pub clickhouse_ready: AtomicBool,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.clickhouse_ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: clickhouse ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: clickhouse unreachable\n",
        )
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".to_string(),
        ),
    }
}

/// Probes ClickHouse every `interval` and records the outcome for `/readyz`.
pub async fn probe_clickhouse(
    state: Arc<AdminState>,
    client: clickhouse::Client,
    interval: Duration,
) {
    loop {
        let ok = client.query("SELECT 1").execute().await.is_ok();
        if state.clickhouse_ready.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(ready = ok, "clickhouse readiness changed");
        }
        metrics::gauge!("sluice_clickhouse_up").set(if ok { 1.0 } else { 0.0 });
        tokio::time::sleep(interval).await;
    }
}
