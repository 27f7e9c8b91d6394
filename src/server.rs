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
use crate::dedup::DedupStore;
use crate::pipeline::Pipeline;
use crate::schema::SchemaSet;
use crate::sink::Sink;
use crate::sink::clickhouse::{self as ch, ClickHouseSink};
use crate::spool::{RecordId, Recovery, Spool, SpoolRecord};
use crate::validate;

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
        let c = &config.clickhouse;
        // The server version decides what inserts may ask for; an unreachable server (sluice
        // starts during an outage) is taken as the oldest supported one.
        let version = check::server_version(&ch::client(&c.url, &c.user, &c.password)).await;
        if let Err(err) = &version {
            tracing::warn!(error = %err, "clickhouse version unknown; inserts use what 18.16 supports");
        }
        let sink = Arc::new(ClickHouseSink::new(c, version.ok()));
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
        let (spool, recovery) = match &config.spool {
            Some(spool_config) => {
                let (spool, recovery) = Spool::open(spool_config.clone())?;
                (Some(Arc::new(spool)), Some(recovery))
            }
            None => (None, None),
        };
        let pipeline = Pipeline::start(&config, &schemas, sink.clone(), spool.clone())?;
        if let (Some(spool), Some(recovery)) = (&spool, recovery) {
            replay(recovery, &pipeline, spool, sink.as_ref(), &config).await?;
        }

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

        let max_concurrent_decodes = config.limits.max_concurrent_decodes;
        let max_buffered_body_bytes = config
            .limits
            .max_buffered_body_bytes
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let dedup = DedupStore::open(
            config.spool.as_ref().map(|s| s.dir.as_path()),
            Duration::from_secs(config.dedup.window_secs),
            config.dedup.max_entries,
        )?;
        let auth = crate::auth::Auth::from_config(&config).map_err(|err| anyhow::anyhow!(err))?;
        let state = Arc::new(AppState {
            auth,
            config: Arc::new(config),
            pipeline,
            spool,
            dedup,
            decodes: tokio::sync::Semaphore::new(max_concurrent_decodes),
            buffered_bodies: tokio::sync::Semaphore::new(max_buffered_body_bytes),
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

/// Delivers the spool's unconfirmed records again, before the listeners open. A record whose
/// rows ClickHouse already holds (its request id is found with as many rows as were accepted) is
/// confirmed without a second insert: a crash between an insert and its confirmation must not
/// duplicate rows.
async fn replay(
    recovery: Recovery,
    pipeline: &Pipeline,
    spool: &Arc<Spool>,
    sink: &dyn Sink,
    config: &Config,
) -> anyhow::Result<()> {
    if recovery.unconfirmed.is_empty() {
        return Ok(());
    }
    tracing::info!(
        records = recovery.unconfirmed.len(),
        discarded_bytes = recovery.discarded_bytes,
        "replaying the spool"
    );
    // Group by stream version, to probe ClickHouse once per table.
    let mut groups: std::collections::BTreeMap<(String, u32), Vec<(RecordId, SpoolRecord)>> =
        Default::default();
    for (id, record) in recovery.unconfirmed {
        groups
            .entry((record.stream.clone(), record.schema_version))
            .or_default()
            .push((id, record));
    }
    let (mut replayed, mut already_stored) = (0usize, 0usize);
    for ((stream, version), records) in groups {
        let Some(version) = pipeline.stream(&stream).and_then(|v| v.get(&version)) else {
            tracing::error!(%stream, version, records = records.len(),
                "spool holds records of a stream version this config lacks; they stay in the spool");
            continue;
        };
        // Rows already stored per batch, in the stream's table and in its quarantine.
        let key_of = |record: &SpoolRecord| {
            (
                record.context.principal.clone(),
                record.context.batch_id.clone(),
            )
        };
        let keys: Vec<_> = records.iter().map(|(_, r)| key_of(r)).collect();
        if version.raw.target.batch_key_columns.is_none() {
            tracing::warn!(%stream, "schema has no principal/batch_id audit columns: replay cannot detect rows stored before a crash");
        }
        let probe = |target| sink.stored_rows(target, &keys);
        let raw_stored = probe(&version.raw.target)
            .await
            .map_err(|err| anyhow::anyhow!("probing ClickHouse before spool replay: {err}"))?;
        let quarantine_stored = probe(&version.quarantine.target)
            .await
            .map_err(|err| anyhow::anyhow!("probing ClickHouse before spool replay: {err}"))?;
        for (id, record) in records {
            let key = key_of(&record);
            let raw_found = raw_stored.get(&key).copied().unwrap_or(0);
            let quarantine_found = quarantine_stored.get(&key).copied().unwrap_or(0);
            let raw_done = raw_found >= u64::from(record.accepted_rows);
            let quarantine_done = quarantine_found >= u64::from(record.rejected_rows);
            if raw_done && quarantine_done {
                spool.confirm(&[id]);
                already_stored += 1;
                continue;
            }
            if (raw_found > 0 && !raw_done) || (quarantine_found > 0 && !quarantine_done) {
                tracing::error!(principal = %key.0, batch_id = %key.1, raw_found, quarantine_found, accepted = record.accepted_rows,
                    "clickhouse holds part of a spooled batch; replaying the part whole (some rows will be doubled)");
            }
            let encoding = crate::decode::content_encoding(record.content_encoding.as_deref())?;
            let context = Arc::new(record.context.clone());
            let compiled = version.compiled.clone();
            let limits = config.limits.body_limits();
            let validated = tokio::task::spawn_blocking(move || {
                validate::validate_body(
                    &compiled,
                    record.context,
                    &record.body,
                    encoding,
                    record.content_type.as_deref(),
                    limits,
                    false,
                )
            })
            .await??;
            let Some((validated, _)) = validated else {
                spool.confirm(&[id]);
                continue;
            };
            // Only the parts ClickHouse does not have yet.
            let raw = if raw_done {
                validated.batch.slice(0, 0)
            } else {
                validated.batch
            };
            let quarantine = if quarantine_done {
                validated.quarantine.slice(0, 0)
            } else {
                validated.quarantine
            };
            let permit = version
                .reserve_waiting(raw.get_array_memory_size() + quarantine.get_array_memory_size())
                .await;
            version
                .submit(raw, quarantine, permit, context, Some(id), None)
                .map_err(|err| anyhow::anyhow!("spool replay: {err}"))?;
            replayed += 1;
        }
    }
    tracing::info!(replayed, already_stored, "spool replay queued");
    metrics::counter!("sluice_spool_replayed_records_total").increment(replayed as u64);
    Ok(())
}
