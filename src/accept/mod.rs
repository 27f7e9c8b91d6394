//! Accept: the ingest listener (HTTPS with client certificates, HTTP/1.1 and HTTP/2) and the
//! admin listener. Limits on connections, request time and body size are enforced here; bodies
//! are not parsed here.

pub mod admin;
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
    match (&config.ingest.tls, tls_config) {
        (Some(_), Some(server_config)) => {
            tls::serve_tls(
                listener,
                server_config,
                router,
                config.limits.max_connections,
                shutdown,
            )
            .await;
        }
        (Some(_), None) => anyhow::bail!("ingest.tls is configured but no TLS setup was built"),
        (None, _) => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await?;
        }
    }
    Ok(())
}
