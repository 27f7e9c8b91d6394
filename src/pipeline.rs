//! The one place where stages meet.
//!
//! ```text
//! request ─▶ validate (per request) ─▶ [bounded channel] ─▶ accumulator thread (per stream version)
//!        ─▶ encode (Native + framing) ─▶ [bounded channel] ─▶ sink dispatcher ─▶ ClickHouse
//! ```
//!
//! Back-pressure travels the other way: a full accumulator channel answers the request 503, a
//! full sink channel blocks the accumulator (whose channel then fills). A request's answer waits
//! until ClickHouse has confirmed the insert that carried its rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use crossbeam_channel::RecvTimeoutError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::aggregate::{Accumulator, Delivery, FlushLimits, Pending, Submission};
use crate::config::Config;
use crate::encode::{self, Compression, NativeColumn};
use crate::schema::{Schema, SchemaSet};
use crate::sink::{InsertRequest, Sink, SinkError, TableTarget};
use crate::spool::{RecordId, Spool};
use crate::validate::{CompiledSchema, StreamOptions};

/// One stream version: its compiled schema and the way to its accumulator.
pub struct StreamVersion {
    pub compiled: Arc<CompiledSchema>,
    pub target: Arc<TableTarget>,
    submissions: crossbeam_channel::Sender<Submission>,
    /// Places in the accumulator's queue (`batch.queue_depth`).
    capacity: Arc<Semaphore>,
}

/// Every stream's versions.
pub struct Pipeline {
    streams: HashMap<String, BTreeMap<u32, StreamVersion>>,
    accumulators: Vec<JoinHandle<()>>,
    dispatcher: tokio::task::JoinHandle<()>,
    shutting_down: Arc<AtomicBool>,
}

/// Why rows could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("ingest queue for this stream is full")]
    Overloaded,
    #[error("sluice is shutting down")]
    ShuttingDown,
}

/// How inserts are encoded and retried.
#[derive(Debug, Clone, Copy)]
pub struct DeliveryOptions {
    pub compression: Compression,
    pub zstd_level: i32,
    pub attempts: u32,
    pub max_in_flight: usize,
}

/// What happens when an insert finally succeeds or fails.
struct Delivered {
    spool: Option<Arc<Spool>>,
    shutting_down: Arc<AtomicBool>,
}

impl DeliveryOptions {
    pub fn from_config(config: &Config) -> DeliveryOptions {
        DeliveryOptions {
            compression: config.clickhouse.compression,
            zstd_level: config.clickhouse.zstd_level,
            attempts: config.clickhouse.insert_attempts,
            max_in_flight: config.clickhouse.max_inserts_in_flight,
        }
    }
}

struct EncodedInsert {
    request: InsertRequest,
    spool_ids: Vec<RecordId>,
    waiters: Vec<oneshot::Sender<Delivery>>,
}

impl Pipeline {
    /// Compiles every schema, starts one accumulator thread per stream version and the sink
    /// dispatcher on the current tokio runtime. With a spool, delivered records are confirmed
    /// in it, and retryable failures are retried until delivery (the spool holds the rows).
    pub fn start(
        config: &Config,
        schemas: &SchemaSet,
        sink: Arc<dyn Sink>,
        spool: Option<Arc<Spool>>,
    ) -> anyhow::Result<Pipeline> {
        let delivery = DeliveryOptions::from_config(config);
        let limits = FlushLimits {
            max_rows: config.batch.max_rows,
            max_bytes: config.batch.max_bytes,
            max_age: Duration::from_millis(config.batch.max_age_ms),
        };
        let (insert_tx, insert_rx) = mpsc::channel(delivery.max_in_flight * 2);
        let shutting_down = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Delivered {
            spool,
            shutting_down: shutting_down.clone(),
        });
        let dispatcher = tokio::spawn(dispatch(insert_rx, sink, delivery, delivered));
        let mut streams: HashMap<String, BTreeMap<u32, StreamVersion>> = HashMap::new();
        let mut accumulators = Vec::new();
        for schema in schemas.iter() {
            let stream_config = config.stream_config(&schema.stream);
            let options = StreamOptions {
                delimited_fields: stream_config.and_then(|s| s.delimited_fields.clone()),
                unknown_fields: stream_config.and_then(|s| s.unknown_fields),
            };
            let compiled = CompiledSchema::new(schema.clone(), &options)
                .map_err(|err| anyhow::anyhow!("streams ({}): {err}", schema.stream))?;
            let compiled = Arc::new(compiled);
            // Unbounded: the semaphore bounds it, so that a place can be taken before the
            // batch is spooled.
            let (submissions, receiver) = crossbeam_channel::unbounded();
            let target = Arc::new(TableTarget::new(
                &config.clickhouse.database,
                &schema.table.name,
                schema.columns.iter().map(|c| c.name()),
            ));
            let worker = AccumulatorThread {
                schema: schema.clone(),
                compiled: compiled.clone(),
                target: target.clone(),
                receiver,
                inserts: insert_tx.clone(),
                accumulator: Accumulator::new(limits),
                delivery,
            };
            let name = format!("acc-{}-v{}", schema.stream, schema.version);
            accumulators.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || worker.run())?,
            );
            streams.entry(schema.stream.clone()).or_default().insert(
                schema.version,
                StreamVersion {
                    compiled,
                    target,
                    submissions,
                    capacity: Arc::new(Semaphore::new(config.batch.queue_depth)),
                },
            );
        }
        for stream in &config.streams {
            if !streams.contains_key(&stream.name) {
                anyhow::bail!("streams: {:?} has no schema", stream.name);
            }
        }
        Ok(Pipeline {
            streams,
            accumulators,
            dispatcher,
            shutting_down,
        })
    }

    /// The versions of a stream, newest last.
    pub fn stream(&self, name: &str) -> Option<&BTreeMap<u32, StreamVersion>> {
        self.streams.get(name)
    }

    /// Stops accepting, flushes what is pending and waits until every insert has finished.
    pub async fn shutdown(self) {
        // Inserts still failing now stay in the spool for the next start.
        self.shutting_down.store(true, Ordering::Relaxed);
        drop(self.streams);
        let accumulators = self.accumulators;
        let _ = tokio::task::spawn_blocking(move || {
            for handle in accumulators {
                let _ = handle.join();
            }
        })
        .await;
        let _ = self.dispatcher.await;
    }
}

impl StreamVersion {
    /// Takes a place in the accumulator's queue, or says it is full.
    pub fn reserve(&self) -> Result<OwnedSemaphorePermit, SubmitError> {
        self.capacity
            .clone()
            .try_acquire_owned()
            .map_err(|_| SubmitError::Overloaded)
    }

    /// Waits for a place in the queue (spool replay at start).
    pub async fn reserve_waiting(&self) -> OwnedSemaphorePermit {
        self.capacity
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// Queues validated rows in a reserved place. `done` is told once ClickHouse has them.
    pub fn submit(
        &self,
        batch: RecordBatch,
        permit: OwnedSemaphorePermit,
        spool_id: Option<RecordId>,
        done: Option<oneshot::Sender<Delivery>>,
    ) -> Result<(), SubmitError> {
        let submission = Submission {
            batch,
            spool_id,
            done,
            permit: Some(permit),
        };
        self.submissions
            .send(submission)
            .map_err(|_| SubmitError::ShuttingDown)
    }
}

struct AccumulatorThread {
    schema: Arc<Schema>,
    compiled: Arc<CompiledSchema>,
    target: Arc<TableTarget>,
    receiver: crossbeam_channel::Receiver<Submission>,
    inserts: mpsc::Sender<EncodedInsert>,
    accumulator: Accumulator,
    delivery: DeliveryOptions,
}

impl AccumulatorThread {
    fn run(mut self) {
        loop {
            let received = match self.accumulator.deadline() {
                Some(deadline) => self.receiver.recv_deadline(deadline),
                None => self
                    .receiver
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            let now = Instant::now();
            let ready = match received {
                Ok(submission) => self.accumulator.push(submission, now),
                Err(RecvTimeoutError::Timeout) => self.accumulator.take_if_due(now),
                Err(RecvTimeoutError::Disconnected) => {
                    if !self.accumulator.is_empty() {
                        let pending = self.accumulator.take();
                        self.flush(pending);
                    }
                    return;
                }
            };
            if let Some(pending) = ready {
                self.flush(pending);
            }
        }
    }

    fn flush(&self, pending: Pending) {
        let Pending {
            batches,
            rows,
            waiters,
            spool_ids,
            ..
        } = pending;
        if rows == 0 {
            // Only empty submissions: nothing to insert.
            let id: Arc<str> = Arc::from("");
            waiters.into_iter().for_each(|w| {
                let _ = w.send(Ok(id.clone()));
            });
            return;
        }
        let started = Instant::now();
        let request = match self.encode(&batches, rows) {
            Ok(request) => request,
            Err(err) => {
                tracing::error!(table = %self.target.table, error = %err, "encoding failed");
                let error = SinkError::Permanent {
                    code: 0,
                    message: format!("encoding failed: {err}"),
                };
                waiters.into_iter().for_each(|w| {
                    let _ = w.send(Err(error.clone()));
                });
                return;
            }
        };
        metrics::histogram!("sluice_encode_seconds", "table" => self.target.table.clone())
            .record(started.elapsed().as_secs_f64());
        let insert = EncodedInsert {
            request,
            spool_ids,
            waiters,
        };
        if let Err(err) = self.inserts.blocking_send(insert) {
            let error = SinkError::Retryable("sluice is shutting down".to_string());
            err.0.waiters.into_iter().for_each(|w| {
                let _ = w.send(Err(error.clone()));
            });
        }
    }

    fn encode(&self, batches: &[RecordBatch], rows: usize) -> anyhow::Result<InsertRequest> {
        let columns: Vec<NativeColumn<'_>> = self
            .schema
            .columns
            .iter()
            .map(|c| NativeColumn {
                name: c.name(),
                ch_type: &c.ch_type,
            })
            .collect();
        let merged;
        let batch = match batches {
            [single] => single,
            _ => {
                merged =
                    arrow_select::concat::concat_batches(&self.compiled.arrow_schema, batches)?;
                &merged
            }
        };
        let mut native = Vec::with_capacity(batch.get_array_memory_size());
        encode::write_native_block(&columns, batch, &mut native)?;
        let (body, framed) = match self.delivery.compression {
            Compression::None => (native, false),
            compression => {
                let mut framed = Vec::with_capacity(native.len() / 2);
                encode::write_compressed_frames(
                    &native,
                    compression,
                    self.delivery.zstd_level,
                    &mut framed,
                );
                (framed, true)
            }
        };
        Ok(InsertRequest {
            target: self.target.clone(),
            body: Bytes::from(body),
            framed,
            rows,
            insert_id: Arc::from(format!("sluice-{}", uuid::Uuid::new_v4())),
        })
    }
}

/// Runs inserts, at most `max_in_flight` at once, retrying retryable failures with jittered
/// exponential back-off, then confirms the spool records and tells every waiting request.
async fn dispatch(
    mut inserts: mpsc::Receiver<EncodedInsert>,
    sink: Arc<dyn Sink>,
    options: DeliveryOptions,
    delivered: Arc<Delivered>,
) {
    let permits = Arc::new(Semaphore::new(options.max_in_flight));
    let mut running = tokio::task::JoinSet::new();
    while let Some(insert) = inserts.recv().await {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let sink = sink.clone();
        let delivered = delivered.clone();
        running.spawn(async move {
            let outcome =
                deliver(sink.as_ref(), &insert.request, options.attempts, &delivered).await;
            match (&outcome, &delivered.spool) {
                (Ok(()), Some(spool)) => spool.confirm(&insert.spool_ids),
                (Err(error), Some(_)) if !insert.spool_ids.is_empty() => tracing::error!(
                    insert_id = %insert.request.insert_id,
                    records = insert.spool_ids.len(),
                    %error,
                    "insert not delivered; its records stay in the spool for the next start"
                ),
                _ => {}
            }
            let delivery: Delivery = outcome.map(|()| insert.request.insert_id.clone());
            for waiter in insert.waiters {
                let _ = waiter.send(delivery.clone());
            }
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// Tries an insert until it succeeds, fails for good, or runs out of attempts. With a spool,
/// retryable failures are retried without limit until shutdown: the rows are safe on disk and a
/// ClickHouse outage must cost nothing but delay.
async fn deliver(
    sink: &dyn Sink,
    request: &InsertRequest,
    attempts: u32,
    delivered: &Delivered,
) -> Result<(), SinkError> {
    let table = request.target.table.clone();
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let result = sink.insert(request).await;
        metrics::histogram!("sluice_insert_seconds", "table" => table.clone())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                metrics::counter!("sluice_inserts_total", "table" => table.clone(), "result" => "ok")
                    .increment(1);
                metrics::counter!("sluice_insert_rows_total", "table" => table.clone())
                    .increment(request.rows as u64);
                metrics::counter!("sluice_insert_bytes_total", "table" => table)
                    .increment(request.body.len() as u64);
                tracing::debug!(insert_id = %request.insert_id, rows = request.rows, "insert confirmed");
                return Ok(());
            }
            Err(error) => {
                metrics::counter!("sluice_inserts_total", "table" => table.clone(), "result" => error.class())
                    .increment(1);
                let keep_trying =
                    delivered.spool.is_some() && !delivered.shutting_down.load(Ordering::Relaxed);
                if !error.is_retryable() || (attempt >= attempts && !keep_trying) {
                    tracing::warn!(insert_id = %request.insert_id, attempt, %error, "insert failed");
                    return Err(error);
                }
                let backoff = backoff(attempt);
                tracing::info!(insert_id = %request.insert_id, attempt, %error, ?backoff, "insert will be retried");
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
        }
    }
}

/// 200 ms × 2^(attempt−1), capped at 10 s, with ±50 % jitter.
fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(200) * 2u32.saturating_pow(attempt.saturating_sub(1));
    let base = base.min(Duration::from_secs(10));
    base.mul_f64(0.5 + fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(300));
            assert!(backoff(20) <= Duration::from_secs(15));
        }
    }
}
