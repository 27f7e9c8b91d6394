//! The admin listener: `/healthz` (the process is up), `/readyz` (ClickHouse answers),
//! `/metrics` (Prometheus text), `/status` (a small self-refreshing HTML page) and
//! `/status.json` (the figures it shows).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::spool::Spool;
use crate::status::Status;

/// The status page: one file, no external assets; it fetches `/status.json` every two seconds.
const STATUS_PAGE: &str = include_str!("status.html");

/// What the admin endpoints report.
pub struct AdminState {
    pub metrics: Option<PrometheusHandle>,
    /// Live figures, including the outcome of the last ClickHouse probe.
    pub status: Arc<Status>,
    pub spool: Option<Arc<Spool>>,
    /// Sets the gauges that are read rather than counted (queue depths) before a scrape.
    pub before_scrape: Option<Box<dyn Fn() + Send + Sync>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/status") }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if state.status.clickhouse_ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready: clickhouse ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: clickhouse unreachable\n",
        )
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    if let Some(before_scrape) = &state.before_scrape {
        before_scrape();
    }
    match &state.metrics {
        Some(handle) => (StatusCode::OK, handle.render()),
        None => (
            StatusCode::NOT_FOUND,
            "metrics recorder not installed\n".to_string(),
        ),
    }
}

async fn status_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        STATUS_PAGE,
    )
}

async fn status_json(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    Json(state.status.snapshot(state.spool.as_deref()))
}

/// Probes ClickHouse every `interval` and records the outcome for `/readyz` and the status page.
pub async fn probe_clickhouse(status: Arc<Status>, client: clickhouse::Client, interval: Duration) {
    loop {
        let ok = client.query("SELECT 1").execute().await.is_ok();
        if status.clickhouse_ready.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(ready = ok, "clickhouse readiness changed");
        }
        metrics::gauge!("sluice_clickhouse_up").set(if ok { 1.0 } else { 0.0 });
        tokio::time::sleep(interval).await;
    }
}
