//! A running sluice: the pipeline, the ingest and admin listeners, and orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::accept::{self, AppState, admin};
use crate::check;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::schema::SchemaSet;
use crate::sink::Sink;
use crate::sink::clickhouse::{self as ch, ClickHouseSink};

pub struct Server {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    ingest: tokio::task::JoinHandle<anyhow::Result<()>>,
    admin: tokio::task::JoinHandle<()>,
    probe: tokio::task::JoinHandle<()>,
    state: Arc<AppState>,
}

impl Server {
    /// Starts sluice with the ClickHouse sink.
    pub async fn start(
        config: Config,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Server> {
        let sink = Arc::new(ClickHouseSink::new(&config.clickhouse));
        Server::start_with_sink(config, sink, metrics).await
    }

    /// Starts sluice with any sink (tests use an in-memory one).
    pub async fn start_with_sink(
        config: Config,
        sink: Arc<dyn Sink>,
        metrics: Option<PrometheusHandle>,
    ) -> anyhow::Result<Server> {
        let schemas = SchemaSet::load_dir(&config.schemas)?;
        for (i, principal) in config.principals.iter().enumerate() {
            for stream in &principal.streams {
                if stream != "*" && schemas.versions(stream).is_none() {
                    anyhow::bail!("principals[{i}].streams: {stream:?} has no schema");
                }
            }
        }
        tracing::info!(json = %crate::decode::json_implementation(), "simd-json implementation");
        let ch = &config.clickhouse;
        if ch.apply_schema {
            let (user, password) = ch.admin_credentials();
            let admin_client = ch::client(&ch.url, user, password);
            let version = check::apply_schemas(&admin_client, &schemas, &ch.database).await?;
            tracing::info!(%version, database = %ch.database, "schemas applied");
        }
        let probe_client = ch::client(&ch.url, &ch.user, &ch.password);
        let pipeline = Pipeline::start(&config, &schemas, sink)?;

        let ingest_listener = tokio::net::TcpListener::bind(config.ingest.listen).await?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen).await?;
        let ingest_addr = ingest_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };

        let admin_state = Arc::new(admin::AdminState {
            metrics,
            clickhouse_ready: AtomicBool::new(false),
        });
        let probe = tokio::spawn(admin::probe_clickhouse(
            admin_state.clone(),
            probe_client,
            Duration::from_secs(5),
        ));
        let admin_router = admin::router(admin_state);
        let admin_stop = wait_for_stop(stopped.clone());
        let admin = tokio::spawn(async move {
            let served = axum::serve(admin_listener, admin_router)
                .with_graceful_shutdown(admin_stop)
                .await;
            if let Err(err) = served {
                tracing::error!(error = %err, "admin listener failed");
            }
        });

        let state = Arc::new(AppState {
            config: Arc::new(config),
            pipeline,
        });
        let ingest = tokio::spawn(accept::serve_ingest(
            ingest_listener,
            state.clone(),
            wait_for_stop(stopped),
        ));
        tracing::info!(%ingest_addr, %admin_addr, "sluice is listening");
        Ok(Server {
            ingest_addr,
            admin_addr,
            stop,
            ingest,
            admin,
            probe,
            state,
        })
    }

    /// Stops accepting, answers in-flight requests, flushes pending rows and waits for the
    /// last inserts.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.ingest.await;
        self.probe.abort();
        let _ = self.admin.await;
        match Arc::try_unwrap(self.state) {
            Ok(state) => state.pipeline.shutdown().await,
            Err(_) => tracing::warn!(
                "requests still hold the pipeline; pending rows flush as they finish"
            ),
        }
        served??;
        Ok(())
    }
}
