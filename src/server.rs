//! A running sluice: the pipeline, the ingest and admin listeners, and orderly shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::accept::{self, AppState, admin};
use crate::check;
use crate::config::Config;
use crate::dedup::{Claim, DedupStore};
use crate::pipeline::Pipeline;
use crate::reload::Reloader;
use crate::schema::SchemaSet;
use crate::sink::clickhouse::{self as ch, ClickHouseSink};
use crate::sink::{Sink, SinkError};
use crate::spool::{RecordId, Recovery, Spool, SpoolRecord};
use crate::status::Status;
use crate::validate;

pub struct Server {
    pub ingest_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    ingest: tokio::task::JoinHandle<anyhow::Result<()>>,
    admin: tokio::task::JoinHandle<()>,
    probe: tokio::task::JoinHandle<()>,
    /// Reloads certificates, keys and principals on SIGHUP and file changes.
    reload: tokio::task::JoinHandle<()>,
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
            let version = check::apply_schemas_everywhere(ch, &schemas).await?;
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
        let status = Arc::new(Status::new(config.admin.status_errors));
        let pipeline = Pipeline::start(
            &config,
            &schemas,
            sink.clone(),
            spool.clone(),
            status.clone(),
        )?;
        let dedup = DedupStore::open(
            config.spool.as_ref().map(|s| s.dir.as_path()),
            Duration::from_secs(config.dedup.window_secs),
            config.dedup.max_entries,
        )?;
        if let (Some(spool), Some(recovery)) = (&spool, recovery) {
            replay(recovery, &pipeline, spool, &dedup, sink.as_ref(), &config).await?;
        }

        let ingest_listener = tokio::net::TcpListener::bind(config.ingest.listen).await?;
        let admin_listener = tokio::net::TcpListener::bind(config.admin.listen).await?;
        let ingest_addr = ingest_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };

        let max_concurrent_decodes = config.limits.max_concurrent_decodes;
        let max_buffered_body_bytes = config
            .limits
            .max_buffered_body_bytes
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let auth = crate::auth::Auth::from_config(&config).map_err(|err| anyhow::anyhow!(err))?;
        let tls = match &config.ingest.tls {
            Some(tls_config) => Some(Arc::new(arc_swap::ArcSwap::new(
                crate::accept::tls::server_config(tls_config)?,
            ))),
            None => None,
        };
        let reload_settings = config.reload.clone();
        let reload_config = config.clone();
        let state = Arc::new(AppState {
            auth: arc_swap::ArcSwap::from_pointee(auth),
            tls,
            config: Arc::new(config),
            pipeline,
            spool,
            dedup,
            decodes: tokio::sync::Semaphore::new(max_concurrent_decodes),
            buffered_bodies: tokio::sync::Semaphore::new(max_buffered_body_bytes),
            status: status.clone(),
        });
        let weak_state = Arc::downgrade(&state);
        let admin_state = Arc::new(admin::AdminState {
            metrics,
            status: status.clone(),
            spool: state.spool.clone(),
            // A weak reference: shutdown takes the pipeline out of the state.
            before_scrape: Some(Box::new(move || {
                metrics::counter!("sluice_log_lines_dropped_total")
                    .absolute(crate::logging::dropped_lines());
                if let Some(state) = weak_state.upgrade() {
                    state.pipeline.report_queues();
                }
            })),
        });
        let probe = tokio::spawn(admin::probe_clickhouse(
            status,
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
        let reloader = Arc::new(Reloader::new(state.clone(), reload_config));
        let reload = tokio::spawn(crate::reload::run(
            reloader,
            reload_settings,
            crate::reload::Hangup::listen(),
            wait_for_stop(stopped.clone()),
        ));
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
            reload,
            state,
        })
    }

    /// Stops accepting, answers in-flight requests, flushes pending rows and waits for the
    /// last inserts.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        let served = self.ingest.await;
        self.probe.abort();
        // It holds the state too; it ends on the same stop signal.
        let _ = self.reload.await;
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

/// Delivers the spool's unconfirmed records again, before the listeners open. Each body is
/// validated again; a record whose rows ClickHouse already holds (its principal and batch id are
/// found with as many rows as validation accepts) is confirmed without a second insert: a crash
/// between an insert and its confirmation must not duplicate rows.
async fn replay(
    recovery: Recovery,
    pipeline: &Pipeline,
    spool: &Arc<Spool>,
    dedup: &DedupStore,
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
    // The batches this replay delivers, by principal, stream and batch id.
    let mut replayed_batches: std::collections::HashSet<(String, String, String)> =
        Default::default();
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
        let probe_error =
            |err: SinkError| anyhow::anyhow!("probing ClickHouse before spool replay: {err}");
        let raw_stored = if version.keep_raw {
            probe(&version.raw.target).await.map_err(probe_error)?
        } else {
            Default::default()
        };
        let quarantine_stored = probe(&version.quarantine.target)
            .await
            .map_err(probe_error)?;
        // Each rollup's flush log: rows of each batch already folded into a stored flush.
        let mut rollups_stored = Vec::new();
        for lane in &version.rollups {
            rollups_stored.push(probe(&lane.target).await.map_err(probe_error)?);
        }
        for (id, record) in records {
            let key = key_of(&record);
            let encoding = crate::decode::content_encoding(record.content_encoding.as_deref())?;
            let context = Arc::new(record.context.clone());
            let compiled = version.compiled.clone();
            // Version-1 records predate recorded limits; they were accepted.
            let recorded_limits = record.limits;
            // Only a sender's batch id is deduplicated (see `SpoolRecord::sender_batch_id`).
            let digest = record.sender_batch_id;
            let limits = recorded_limits.unwrap_or_else(|| config.limits.body_limits());
            let part_bytes = config.ingest.decode_part_bytes;
            let body = record.body.clone();
            let content_type = record.content_type.clone();
            let validated = tokio::task::spawn_blocking(move || {
                validate::validate_body(
                    &compiled,
                    record.context,
                    &body,
                    encoding,
                    content_type.as_deref(),
                    limits,
                    validate::Validation { digest, part_bytes },
                )
            })
            .await?;
            // The ingest path appends a body while validating it: a record can hold a batch
            // that was refused, if sluice stopped before the void reached the disk (and then
            // before the answer was sent). The same checks refuse it again here.
            let refused = |reason: &str| {
                tracing::warn!(record = id, principal = %key.0, batch_id = %key.1,
                    request_id = %context.request_id, reason,
                    "spool record holds a batch refused when it was received; not delivered");
                metrics::counter!("sluice_spool_refused_on_replay_total").increment(1);
                spool.confirm(&[id]);
            };
            let (validated, digest) = match validated {
                Ok(Some(validated)) => validated,
                // Logpush's destination probe: nothing to store.
                Ok(None) => {
                    spool.confirm(&[id]);
                    continue;
                }
                Err(err) if recorded_limits.is_none() => {
                    anyhow::bail!(
                        "spool record {id} (batch {} of {}), acknowledged by an earlier release, no longer validates: {err}",
                        key.1,
                        key.0
                    );
                }
                Err(err) => {
                    refused(&err.to_string());
                    continue;
                }
            };
            let records_found = (validated.accepted + validated.rejected) as u64;
            if let Some(declared) = record.declared_rows
                && declared != records_found
            {
                refused(&format!(
                    "declares {declared} records, holds {records_found}"
                ));
                continue;
            }
            if records_found == 0 {
                spool.confirm(&[id]); // an empty body
                continue;
            }
            // The dedup window decides, as it did when the batch arrived. A crash during
            // validation left no entry: replay commits it, or a retry of the batch would be
            // stored a second time. An entry already there is the batch's own (acknowledged
            // before the crash), unless an earlier record of this replay made it: then this
            // record was a retry answered as a duplicate but not voided in time. Other content
            // under the id: this record was a 409.
            if let Some(digest) = digest.filter(|_| validated.accepted > 0) {
                let batch = (key.0.clone(), stream.clone(), key.1.clone());
                match dedup.claim(&key.0, &stream, &key.1, digest).await {
                    Claim::New(claim) => {
                        claim.commit();
                        replayed_batches.insert(batch);
                    }
                    Claim::Duplicate if replayed_batches.contains(&batch) => {
                        refused("a duplicate of an earlier record");
                        continue;
                    }
                    Claim::Duplicate => {
                        replayed_batches.insert(batch);
                    }
                    Claim::Conflict => {
                        refused("its batch id is held by other content");
                        continue;
                    }
                }
            }
            let accepted = validated.accepted as u64;
            let raw_found = raw_stored.get(&key).copied().unwrap_or(0);
            let quarantine_found = quarantine_stored.get(&key).copied().unwrap_or(0);
            // Only the parts ClickHouse does not have yet.
            let raw = version.raw_rows(&validated.batch, &context.batch_id);
            let raw_done = raw_found >= raw.num_rows() as u64;
            let quarantine_done = quarantine_found >= validated.rejected as u64;
            let rollups_done: Vec<bool> = rollups_stored
                .iter()
                .map(|stored| stored.get(&key).copied().unwrap_or(0) >= accepted)
                .collect();
            if raw_done && quarantine_done && rollups_done.iter().all(|done| *done) {
                spool.confirm(&[id]);
                already_stored += 1;
                continue;
            }
            if (raw_found > 0 && !raw_done) || (quarantine_found > 0 && !quarantine_done) {
                tracing::error!(principal = %key.0, batch_id = %key.1, raw_found, quarantine_found, accepted,
                    "clickhouse holds part of a spooled batch; replaying the part whole (some rows will be doubled)");
            }
            let raw = if raw_done { raw.slice(0, 0) } else { raw };
            let quarantine = if quarantine_done {
                validated.quarantine.slice(0, 0)
            } else {
                validated.quarantine
            };
            let rollups: Vec<Option<RecordBatch>> = rollups_done
                .iter()
                .map(|done| (!done).then(|| validated.batch.clone()))
                .collect();
            let permit = version
                .reserve_waiting(
                    raw.get_array_memory_size()
                        + quarantine.get_array_memory_size()
                        + validated.batch.get_array_memory_size(),
                )
                .await;
            version
                .submit_parts(raw, quarantine, rollups, permit, context, Some(id), None)
                .map_err(|err| anyhow::anyhow!("spool replay: {err}"))?;
            replayed += 1;
        }
    }
    tracing::info!(replayed, already_stored, "spool replay queued");
    metrics::counter!("sluice_spool_replayed_records_total").increment(replayed as u64);
    Ok(())
}
