//! Accept: the ingest listener (HTTPS with client certificates, HTTP/1.1 and HTTP/2) and the
//! admin listener. Limits on connections, time, headers, HTTP/2 streams and body size are
//! enforced here (see [`conn`] and [`ingest`]); bodies are not parsed here.

pub mod admin;
pub mod conn;
pub mod error;
pub mod ingest;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use tower_http::timeout::TimeoutLayer;

use crate::config::Config;
use crate::dedup::DedupStore;
use crate::pipeline::Pipeline;
use crate::spool::Spool;

/// What ingest handlers share.
pub struct AppState {
    pub config: Arc<Config>,
    /// Principals, their credentials and rate-limit state; swapped whole by a reload.
    pub auth: arc_swap::ArcSwap<crate::auth::Auth>,
    /// The ingest listener's TLS configuration (with `ingest.tls`); swapped whole by a reload.
    pub tls: Option<tls::SharedServerConfig>,
    pub pipeline: Pipeline,
    /// The durable log of accepted batches (with `ingest.ack = "spool"`).
    pub spool: Option<Arc<Spool>>,
    /// Batch ids seen within the dedup window.
    pub dedup: DedupStore,
    /// Live figures for the status page.
    pub status: Arc<crate::status::Status>,
    /// Places for bodies being decompressed and validated (`limits.max_concurrent_decodes`).
    pub decodes: tokio::sync::Semaphore,
    /// Bytes of request bodies held in memory (`limits.max_buffered_body_bytes`), one permit
    /// per byte.
    pub buffered_bodies: tokio::sync::Semaphore,
}

/// The ingest router.
pub fn app(state: Arc<AppState>) -> Router {
    let timeout = Duration::from_secs(state.config.limits.request_timeout_secs);
    Router::new()
        .route("/v1/streams/{stream}", post(ingest::ingest))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(state)
}

/// Serves ingest on `listener` until `shutdown` completes.
pub async fn serve_ingest(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = state.config.clone();
    let tls_config = state.tls.clone();
    let router = app(state);
    let limits = conn::ConnectionLimits::from_limits(&config.limits);
    let tls = match (&config.ingest.tls, tls_config) {
        (Some(_), Some(server_config)) => Some(server_config),
        (Some(_), None) => anyhow::bail!("ingest.tls is configured but no TLS setup was built"),
        (None, _) => None,
    };
    conn::serve_connections(listener, tls, router, &limits, shutdown).await;
    Ok(())
}
