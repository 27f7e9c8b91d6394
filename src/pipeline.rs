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

use crate::aggregate::rollup::RollupState;
use crate::aggregate::{Accumulator, Delivery, FlushLimits, Pending, Receipt, Submission};
use crate::config::{Config, StreamMode};
use crate::encode::{self, Compression};
use crate::schema::{ChType, ContextField, Schema, SchemaSet};
use crate::sink::{BatchKey, InsertRequest, ShardMap, Sink, SinkError, TableTarget};
use crate::spool::{RecordId, Spool};
use crate::status::Status;
use crate::validate::{CompiledSchema, QuarantineBuilder, RequestContext, StreamOptions};

/// One stream version: its compiled schema and the ways to its accumulators.
pub struct StreamVersion {
    pub compiled: Arc<CompiledSchema>,
    /// Accepted rows, to the stream's table.
    pub raw: Lane,
    /// Rejected rows, to the quarantine table.
    pub quarantine: Lane,
    /// Accepted rows, to each rollup's accumulator (none when the stream's mode is `raw`).
    pub rollups: Vec<Lane>,
    /// Whether raw rows are stored (mode `both` or `raw`).
    pub keep_raw: bool,
    /// Fraction of accepted rows kept in the raw table.
    pub raw_sample: f64,
    /// Places in the accumulators' queues (`batch.queue_depth`).
    capacity: Arc<Semaphore>,
    queue_depth: usize,
    /// KiB of validated rows in flight, shared by every stream (`limits.max_in_flight_bytes`).
    memory: Arc<Semaphore>,
    memory_total_kib: u32,
}

/// A place in a stream's queue and the rows' share of the memory bound.
pub struct Reservation {
    queue: OwnedSemaphorePermit,
    memory: OwnedSemaphorePermit,
}

/// The way to one table's accumulator.
pub struct Lane {
    pub target: Arc<TableTarget>,
    submissions: crossbeam_channel::Sender<Submission>,
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

/// What one table's encoder keeps from insert to insert (see [`DeliveryOptions::encode`]).
#[derive(Default)]
struct EncodeScratch {
    column: Vec<u8>,
    last_body: usize,
    bodies: Bodies,
}

/// Insert bodies handed back once their insert is settled, for the next insert to write into.
/// A body is up to `batch.max_bytes` (64 MiB in the quick start) written once and sent; a new
/// one for every insert page-faulted all of it in again, since the allocator hands freed
/// memory back to the OS within 20 ms (4 % of sluice's CPU in a profile, on the accumulator
/// thread). At most one body waits here; an accumulator that falls idle lets it go
/// ([`Bodies::IDLE`]). The bytes waiting are `sluice_insert_body_kept_bytes`.
struct Bodies {
    back: BodyBack,
    returned: crossbeam_channel::Receiver<Vec<u8>>,
}

/// The way back to one table's [`Bodies`].
#[derive(Clone)]
struct BodyBack {
    sender: crossbeam_channel::Sender<Vec<u8>>,
    kept: metrics::Gauge,
}

impl Default for Bodies {
    fn default() -> Bodies {
        Bodies::new(None)
    }
}

impl Bodies {
    /// How long a body is kept for an insert that does not come.
    const IDLE: Duration = Duration::from_secs(2);

    /// The bodies of `table`'s inserts (None: not counted in the metric).
    fn new(table: Option<&str>) -> Bodies {
        let (sender, returned) = crossbeam_channel::bounded(1);
        let kept = match table {
            Some(table) => {
                metrics::gauge!("sluice_insert_body_kept_bytes", "table" => table.to_string())
            }
            None => metrics::Gauge::noop(),
        };
        Bodies {
            back: BodyBack { sender, kept },
            returned,
        }
    }

    /// A body handed back, emptied, or a new one.
    fn take(&self) -> Vec<u8> {
        let Ok(mut body) = self.returned.try_recv() else {
            return Vec::new();
        };
        self.back.kept.decrement(body.capacity() as f64);
        body.clear();
        body
    }

    /// Drops the body that waits, if any.
    fn release(&self) {
        drop(self.take());
    }
}

impl BodyBack {
    /// Gives `body` back to the encoder that wrote it, unless someone else still holds it (a
    /// sink that kept a copy) or a body already waits there.
    fn give(&self, body: Bytes) {
        let Ok(body) = body.try_into_mut() else {
            return;
        };
        let body = Vec::from(body);
        let bytes = body.capacity() as f64;
        // Counted before it can be taken, so that the gauge never dips below zero.
        self.kept.increment(bytes);
        if self.sender.try_send(body).is_err() {
            self.kept.decrement(bytes);
        }
    }
}

/// What happens when an insert finally succeeds or fails.
struct Delivered {
    spool: Option<Arc<Spool>>,
    shutting_down: Arc<AtomicBool>,
    /// Inserts and their errors, for the status page.
    status: Arc<Status>,
}

impl DeliveryOptions {
    /// The insert body of `batch`: its Native block, in ClickHouse's compressed-block framing
    /// as configured; and whether it is framed (`decompress=1`). The block is framed a column at
    /// a time, so the uncompressed block is never held whole.
    ///
    /// `scratch` is the caller's, kept from insert to insert: it holds the column being framed,
    /// and its `last_body` sizes the next body, so neither grows by copying itself.
    fn encode(
        &self,
        columns: &[encode::NativeColumn<'_>],
        rows: encode::BlockRows<'_>,
        scratch: &mut EncodeScratch,
    ) -> Result<(Vec<u8>, bool), encode::EncodeError> {
        let mut body = scratch.bodies.take();
        body.reserve(scratch.last_body + scratch.last_body / 8);
        let framed = match self.compression {
            Compression::None => {
                encode::write_native_block(columns, rows, &mut body)?;
                false
            }
            compression => {
                let mut frames = encode::FrameEncoder::new(compression, self.zstd_level);
                encode::write_native_block_chunked(
                    columns,
                    rows,
                    encode::MAX_FRAME_INPUT_BYTES,
                    &mut scratch.column,
                    |piece| frames.write(piece, &mut body),
                )?;
                true
            }
        };
        scratch.last_body = body.len();
        Ok((body, framed))
    }

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
    /// Released once the insert is settled.
    memory: Vec<OwnedSemaphorePermit>,
    /// Each request's rows in this insert, with its receipt.
    parts: Vec<(Arc<Receipt>, RecordBatch)>,
    /// Where rows go that ClickHouse refuses for good (raw tables only).
    fallback: Option<Arc<Fallback>>,
    /// Rows per batch in this insert, to ask ClickHouse whether an insert of unknown outcome
    /// went in after all.
    expected: HashMap<BatchKey, u64>,
    /// Where the body goes once the insert is settled (see [`Bodies`]).
    body_back: Option<BodyBack>,
}

/// The quarantine lane of a stream: where rows go that ClickHouse refuses for good.
struct Fallback {
    compiled: Arc<CompiledSchema>,
    quarantine: crossbeam_channel::Sender<Submission>,
}

impl Fallback {
    /// Sends each acknowledged part's rows to quarantine, as JSON with ClickHouse's reason; their
    /// receipts complete once the quarantine insert does. The other parts are returned.
    fn quarantine(
        &self,
        parts: Vec<(Arc<Receipt>, RecordBatch)>,
        reason: &str,
    ) -> Vec<(Arc<Receipt>, RecordBatch)> {
        let mut unsent = Vec::new();
        for (receipt, batch) in parts {
            // A sender still waiting for its answer (ack = "clickhouse") hears of the refusal
            // instead: its rows were never acknowledged.
            let Some(context) = receipt.context.clone().filter(|_| !receipt.has_waiter()) else {
                unsent.push((receipt, batch));
                continue;
            };
            let mut json = Vec::new();
            let written = {
                let mut writer = arrow_json::LineDelimitedWriter::new(&mut json);
                writer.write(&batch).and_then(|()| writer.finish())
            };
            if written.is_err() {
                unsent.push((receipt, batch));
                continue;
            }
            let mut rows = QuarantineBuilder::default();
            for (line, raw) in String::from_utf8_lossy(&json).lines().enumerate() {
                rows.push(line as u32 + 1, "", reason, raw);
            }
            let submission = Submission {
                batch: rows.finish(&self.compiled, &context),
                receipt: receipt.clone(),
                permit: None,
                memory: None,
            };
            if self.quarantine.send(submission).is_err() {
                unsent.push((receipt, batch));
            }
        }
        unsent
    }
}

/// Tells every receipt the outcome of the insert that carried (part of) its rows, and confirms
/// the spool records whose rows are now all delivered.
fn settle<'a>(
    receipts: impl IntoIterator<Item = &'a Arc<Receipt>>,
    outcome: &Delivery,
    spool: Option<&Spool>,
) {
    let completed: Vec<RecordId> = receipts
        .into_iter()
        .filter(|receipt| receipt.part_delivered(outcome))
        .filter_map(|receipt| receipt.spool_id)
        .collect();
    if let Some(spool) = spool.filter(|_| !completed.is_empty()) {
        spool.confirm(&completed);
    }
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
        status: Arc<Status>,
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
            status,
        });
        let shard_map = sink.shard_map();
        let dispatcher = tokio::spawn(dispatch(insert_rx, sink, delivery, delivered.clone()));
        let memory_total_kib =
            (config.limits.max_in_flight_bytes / 1024).clamp(1, u32::MAX as usize) as u32;
        let memory = Arc::new(Semaphore::new(memory_total_kib as usize));
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
            // One accumulator for the stream's table, one for its quarantine table.
            let lane = |table_schema: &Arc<Schema>, fallback: Option<Arc<Fallback>>| {
                // Unbounded: the semaphore bounds it, so that a place can be taken before the
                // batch is spooled.
                let (submissions, receiver) = crossbeam_channel::unbounded();
                let column_of = |context: ContextField| {
                    let columns = &table_schema.columns;
                    let column = columns.iter().find(|c| c.spec.context == Some(context));
                    column.map(|c| c.name().to_string())
                };
                let batch_key_columns =
                    column_of(ContextField::Principal).zip(column_of(ContextField::BatchId));
                let target = Arc::new(TableTarget::new(
                    &config.clickhouse.database,
                    &table_schema.table.name,
                    table_schema.columns.iter().map(|c| c.name()),
                    batch_key_columns,
                ));
                let worker = AccumulatorThread {
                    spool: delivered.spool.clone(),
                    fallback,
                    sort_key: encode::SortKey::of(table_schema),
                    schema: table_schema.clone(),
                    target: target.clone(),
                    receiver,
                    inserts: insert_tx.clone(),
                    accumulators: (0..shard_map.len())
                        .map(|_| Accumulator::new(limits))
                        .collect(),
                    shard_map: shard_map.clone(),
                    delivery,
                    scratch: EncodeScratch {
                        bodies: Bodies::new(Some(&table_schema.table.name)),
                        ..EncodeScratch::default()
                    },
                };
                let name = format!("acc-{}-v{}", table_schema.stream, table_schema.version);
                let thread = std::thread::Builder::new().name(name).spawn(move || {
                    yield_to_requests();
                    worker.run()
                });
                thread.map(|handle| {
                    (
                        handle,
                        Lane {
                            target,
                            submissions,
                        },
                    )
                })
            };
            let (quarantine_thread, quarantine) = lane(&compiled.quarantine, None)?;
            let fallback = Arc::new(Fallback {
                compiled: compiled.clone(),
                quarantine: quarantine.submissions.clone(),
            });
            let (raw_thread, raw) = lane(schema, Some(fallback))?;
            accumulators.extend([raw_thread, quarantine_thread]);
            let mode = stream_config.map(|s| s.mode).unwrap_or_default();
            let raw_sample = stream_config.map_or(1.0, |s| s.raw_sample);
            let mut rollups = Vec::new();
            if mode != StreamMode::Raw {
                for index in 0..schema.rollups.len() {
                    let (thread, lane) = start_rollup(
                        schema,
                        index,
                        config,
                        &insert_tx,
                        delivery,
                        shard_map.clone(),
                    )?;
                    accumulators.push(thread);
                    rollups.push(lane);
                }
            }
            streams.entry(schema.stream.clone()).or_default().insert(
                schema.version,
                StreamVersion {
                    compiled,
                    raw,
                    quarantine,
                    rollups,
                    keep_raw: mode != StreamMode::Rollups || schema.rollups.is_empty(),
                    raw_sample,
                    capacity: Arc::new(Semaphore::new(config.batch.queue_depth)),
                    queue_depth: config.batch.queue_depth,
                    memory: memory.clone(),
                    memory_total_kib,
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

    /// Sets the queue gauges (called when `/metrics` is scraped):
    /// `sluice_queue_depth_requests{stream,version}` (validated requests waiting for their
    /// accumulator) and `sluice_in_flight_bytes` (validated rows not yet delivered).
    pub fn report_queues(&self) {
        let mut in_flight_kib = None;
        for (stream, versions) in &self.streams {
            for (version, stream_version) in versions {
                let waiting = stream_version
                    .queue_depth
                    .saturating_sub(stream_version.capacity.available_permits());
                metrics::gauge!("sluice_queue_depth_requests", "stream" => stream.clone(),
                    "version" => version.to_string())
                .set(waiting as f64);
                in_flight_kib.get_or_insert_with(|| {
                    (stream_version.memory_total_kib as usize)
                        .saturating_sub(stream_version.memory.available_permits())
                });
            }
        }
        metrics::gauge!("sluice_in_flight_bytes").set((in_flight_kib.unwrap_or(0) * 1024) as f64);
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
    /// Takes a place in the accumulator's queue and `bytes` of the in-flight memory bound, or
    /// says that either is full.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, SubmitError> {
        let queue = self.capacity.clone().try_acquire_owned();
        let memory = self.memory.clone().try_acquire_many_owned(self.kib(bytes));
        match (queue, memory) {
            (Ok(queue), Ok(memory)) => Ok(Reservation { queue, memory }),
            _ => Err(SubmitError::Overloaded),
        }
    }

    /// Whether a new batch is all but sure to be refused: the queue is full, or less than a
    /// sixteenth of the in-flight memory bound is left (more than a usual batch needs).
    pub fn saturated(&self) -> bool {
        self.capacity.available_permits() == 0
            || self.memory.available_permits() < (self.memory_total_kib as usize).div_ceil(16)
    }

    /// Waits for a place in the queue and memory (spool replay at start; a validated request
    /// under a timeout).
    pub async fn reserve_waiting(&self, bytes: usize) -> Reservation {
        let queue = self.capacity.clone().acquire_owned().await;
        let memory = self
            .memory
            .clone()
            .acquire_many_owned(self.kib(bytes))
            .await;
        Reservation {
            queue: queue.expect("never closed"),
            memory: memory.expect("never closed"),
        }
    }

    /// KiB for `bytes`, at most the whole bound (a batch larger than the bound still passes,
    /// alone).
    fn kib(&self, bytes: usize) -> u32 {
        bytes
            .div_ceil(1024)
            .clamp(1, self.memory_total_kib as usize) as u32
    }

    /// The accepted rows that go to the raw table: none in mode `rollups`, a deterministic
    /// sample (by batch id and row position, so a replay keeps the same rows) with `raw_sample`.
    pub fn raw_rows(&self, accepted: &RecordBatch, batch_id: &str) -> RecordBatch {
        if !self.keep_raw {
            return accepted.slice(0, 0);
        }
        if self.raw_sample >= 1.0 {
            return accepted.clone();
        }
        let seed = fnv1a(batch_id.as_bytes());
        let threshold = (self.raw_sample * (1u64 << 53) as f64) as u64;
        let mask: arrow_array::BooleanArray = (0..accepted.num_rows() as u64)
            .map(|row| Some(splitmix64(seed ^ row) >> 11 < threshold))
            .collect();
        arrow_select::filter::filter_record_batch(accepted, &mask)
            .expect("a mask of the batch's length")
    }

    /// Queues a request's accepted rows and rejected rows (each may be empty) in a reserved
    /// place: the accepted rows to the raw table (see [`StreamVersion::raw_rows`]) and to every
    /// rollup. With a spool record, it is confirmed once every part is delivered; `done` hears
    /// the outcome.
    #[allow(clippy::too_many_arguments)]
    pub fn submit(
        &self,
        accepted: RecordBatch,
        rejected: RecordBatch,
        reservation: Reservation,
        context: Arc<RequestContext>,
        spool_id: Option<RecordId>,
        done: Option<oneshot::Sender<Delivery>>,
    ) -> Result<(), SubmitError> {
        let raw = self.raw_rows(&accepted, &context.batch_id);
        let rollups = vec![Some(accepted); self.rollups.len()];
        self.submit_parts(raw, rejected, rollups, reservation, context, spool_id, done)
    }

    /// Queues each part that has rows: raw rows, rejected rows, and for each rollup (in schema
    /// order) the rows to fold, or None when that rollup already has them (spool replay).
    #[allow(clippy::too_many_arguments)]
    pub fn submit_parts(
        &self,
        raw: RecordBatch,
        rejected: RecordBatch,
        rollups: Vec<Option<RecordBatch>>,
        reservation: Reservation,
        context: Arc<RequestContext>,
        spool_id: Option<RecordId>,
        done: Option<oneshot::Sender<Delivery>>,
    ) -> Result<(), SubmitError> {
        let parts: Vec<(&Lane, RecordBatch)> = [(&self.raw, raw), (&self.quarantine, rejected)]
            .into_iter()
            .chain(
                self.rollups
                    .iter()
                    .zip(rollups)
                    .filter_map(|(lane, batch)| batch.map(|batch| (lane, batch))),
            )
            .filter(|(_, batch)| batch.num_rows() > 0)
            .collect();
        let receipt = Receipt::new(parts.len(), Some(context), spool_id, done);
        if parts.is_empty() {
            receipt.part_delivered(&Ok(Arc::from("")));
            return Ok(());
        }
        let (mut queue, mut memory) = (Some(reservation.queue), Some(reservation.memory));
        for (lane, batch) in parts {
            let submission = Submission {
                batch,
                receipt: receipt.clone(),
                permit: queue.take(),
                memory: memory.take(),
            };
            lane.submissions
                .send(submission)
                .map_err(|_| SubmitError::ShuttingDown)?;
        }
        Ok(())
    }
}

/// Lowers the calling thread's scheduling priority (nice +10, Linux: per thread). The
/// accumulator and rollup threads sort, encode and compress whole inserts, bursts of 100 ms
/// and more (and the binary's allocator purger hands back tens of MiB at a time); requests
/// waiting for their answer should not queue behind them for a core. The work still gets
/// done: a lower priority only yields a busy core, it never starves.
pub fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id; a failure leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// FNV-1a, 64 bits: a stable hash of a batch id (the same in every build and on every node).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finalizer: spreads a seed over 64 bits.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Starts the accumulator thread of one rollup of a schema.
fn start_rollup(
    schema: &Arc<Schema>,
    index: usize,
    config: &Config,
    inserts: &mpsc::Sender<EncodedInsert>,
    delivery: DeliveryOptions,
    shard_map: ShardMap,
) -> anyhow::Result<(JoinHandle<()>, Lane)> {
    let rollup = &schema.rollups[index];
    let columns = rollup.input_columns();
    let target = Arc::new(
        TableTarget::new(
            &config.clickhouse.database,
            &rollup.input_table(),
            columns.iter().map(|(name, _)| name.as_str()),
            None,
        )
        .with_probe(&rollup.flushes_table(), "sum(rows)"),
    );
    let (submissions, receiver) = crossbeam_channel::unbounded();
    let max_age_ms = config
        .batch
        .rollup_max_age_ms
        .unwrap_or(config.batch.max_age_ms);
    let worker = RollupThread {
        state: RollupState::new(rollup.clone()),
        columns,
        target: target.clone(),
        receiver,
        inserts: inserts.clone(),
        delivery,
        scratch: EncodeScratch::default(),
        max_rows: config.batch.max_rows,
        max_age: Duration::from_millis(max_age_ms),
        oldest: None,
        receipts: Vec::new(),
        memory: Vec::new(),
        shard_map,
    };
    let name = format!("rollup-{}", rollup.name);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        yield_to_requests();
        worker.run()
    })?;
    Ok((
        handle,
        Lane {
            target,
            submissions,
        },
    ))
}

/// Folds a rollup's rows as they arrive and writes its partial rows at every flush: when
/// `batch.max_rows` partial rows are pending or the oldest contribution is
/// `batch.rollup_max_age_ms` old. The requests whose rows a flush carries are delivered (and
/// their spool records confirmed) when its insert is.
struct RollupThread {
    state: RollupState,
    columns: Vec<(String, ChType)>,
    target: Arc<TableTarget>,
    receiver: crossbeam_channel::Receiver<Submission>,
    inserts: mpsc::Sender<EncodedInsert>,
    delivery: DeliveryOptions,
    scratch: EncodeScratch,
    max_rows: usize,
    max_age: Duration,
    oldest: Option<Instant>,
    /// The requests folded since the last flush, with the rows each contributed.
    receipts: Vec<(Arc<Receipt>, u64)>,
    memory: Vec<OwnedSemaphorePermit>,
    /// Partial rows may land on any shard (queries merge the states across shards, and the
    /// flush log sits beside them): each flush goes to the shard its insert id hashes to.
    shard_map: ShardMap,
}

impl RollupThread {
    fn run(mut self) {
        loop {
            let received = match self.oldest {
                Some(oldest) => self.receiver.recv_deadline(oldest + self.max_age),
                None => self
                    .receiver
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match received {
                Ok(submission) => {
                    let Submission {
                        batch,
                        receipt,
                        permit,
                        memory,
                    } = submission;
                    drop(permit);
                    self.memory.extend(memory);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    self.state.fold(&batch, now);
                    self.receipts.push((receipt, batch.num_rows() as u64));
                    self.oldest.get_or_insert_with(Instant::now);
                    if self.state.rows() >= self.max_rows {
                        self.flush();
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.flush(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        self.oldest = None;
        let receipts = std::mem::take(&mut self.receipts);
        let memory = std::mem::take(&mut self.memory);
        if receipts.is_empty() {
            return;
        }
        let rollup = self.state.rollup().name.clone();
        let stats = std::mem::take(&mut self.state.stats);
        metrics::counter!("sluice_rollup_folded_rows_total", "rollup" => rollup.clone())
            .increment(stats.rows);
        metrics::counter!("sluice_rollup_late_rows_total", "rollup" => rollup.clone())
            .increment(stats.late_rows);
        metrics::counter!("sluice_rollup_overflow_rows_total", "rollup" => rollup.clone())
            .increment(stats.overflow_rows);
        metrics::counter!("sluice_rollup_early_emits_total", "rollup" => rollup.clone())
            .increment(stats.early_emits);
        let rows = self.state.take();
        // The groups held until this flush (each becomes one partial row).
        metrics::gauge!("sluice_rollup_groups", "rollup" => rollup.clone()).set(rows.len() as f64);
        let mut contributions: Vec<(String, String, u64)> = Vec::new();
        let mut expected: HashMap<BatchKey, u64> = HashMap::new();
        for (receipt, count) in &receipts {
            if let Some(key) = receipt.key() {
                *expected.entry(key).or_default() += count;
            }
        }
        for ((principal, batch_id), count) in &expected {
            contributions.push((principal.clone(), batch_id.clone(), *count));
        }
        let insert_id: Arc<str> = Arc::from(format!("sluice-{}", uuid::Uuid::new_v4()));
        let batch = self.state.to_batch(&rows, &insert_id, &contributions);
        let empty = batch.slice(0, 0);
        let parts: Vec<(Arc<Receipt>, RecordBatch)> = receipts
            .into_iter()
            .map(|(receipt, _)| (receipt, empty.clone()))
            .collect();
        let started = Instant::now();
        let columns: Vec<encode::NativeColumn<'_>> = self
            .columns
            .iter()
            .map(|(name, ch_type)| encode::NativeColumn { name, ch_type })
            .collect();
        let encoded = self
            .delivery
            .encode(&columns, (&batch).into(), &mut self.scratch);
        let (body, framed) = match encoded {
            Ok(encoded) => encoded,
            Err(err) => {
                tracing::error!(rollup = %rollup, error = %err, "encoding failed");
                let error = SinkError::Permanent {
                    code: 0,
                    message: format!("encoding failed: {err}"),
                };
                settle(parts.iter().map(|(r, _)| r), &Err(error), None);
                return;
            }
        };
        metrics::histogram!("sluice_encode_seconds", "table" => self.target.table.clone())
            .record(started.elapsed().as_secs_f64());
        let request = InsertRequest {
            target: self.target.clone(),
            body: Bytes::from(body),
            framed,
            rows: rows.len(),
            shard: self
                .shard_map
                .shard_of(Some(&(rollup.clone(), insert_id.to_string()))),
            insert_id,
        };
        let insert = EncodedInsert {
            request,
            memory,
            parts,
            fallback: None,
            expected,
            body_back: None,
        };
        if let Err(err) = self.inserts.blocking_send(insert) {
            let error = SinkError::Retryable("sluice is shutting down".to_string());
            settle(err.0.parts.iter().map(|(r, _)| r), &Err(error), None);
        }
    }
}

struct AccumulatorThread {
    spool: Option<Arc<Spool>>,
    fallback: Option<Arc<Fallback>>,
    /// The table's sorting key, when inserts can be sent in its order (see [`encode::order`]).
    sort_key: Option<encode::SortKey>,
    schema: Arc<Schema>,
    target: Arc<TableTarget>,
    receiver: crossbeam_channel::Receiver<Submission>,
    inserts: mpsc::Sender<EncodedInsert>,
    /// One accumulator per shard of the cluster (one without shards): a request's rows join
    /// the accumulator of the shard its batch hashes to, so each insert goes to one shard.
    accumulators: Vec<Accumulator>,
    shard_map: ShardMap,
    delivery: DeliveryOptions,
    scratch: EncodeScratch,
}

impl AccumulatorThread {
    fn run(mut self) {
        loop {
            let deadline = self.accumulators.iter().filter_map(|a| a.deadline()).min();
            let received = match deadline {
                Some(deadline) => self.receiver.recv_deadline(deadline),
                // Nothing pending: a body handed back meanwhile is let go after a while.
                None => match self.receiver.recv_timeout(Bodies::IDLE) {
                    Err(RecvTimeoutError::Timeout) => {
                        self.scratch.bodies.release();
                        continue;
                    }
                    received => received,
                },
            };
            let now = Instant::now();
            match received {
                Ok(submission) => {
                    let shard = self.shard_map.shard_of(submission.receipt.key().as_ref());
                    if let Some(pending) = self.accumulators[shard].push(submission, now) {
                        self.flush(pending, shard);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let due: Vec<(usize, Pending)> = (self.accumulators.iter_mut().enumerate())
                        .filter_map(|(shard, a)| a.take_if_due(now).map(|p| (shard, p)))
                        .collect();
                    for (shard, pending) in due {
                        self.flush(pending, shard);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let rest: Vec<(usize, Pending)> = (self.accumulators.iter_mut().enumerate())
                        .filter(|(_, a)| !a.is_empty())
                        .map(|(shard, a)| (shard, a.take()))
                        .collect();
                    for (shard, pending) in rest {
                        self.flush(pending, shard);
                    }
                    return;
                }
            }
        }
    }

    fn flush(&mut self, pending: Pending, shard: usize) {
        let Pending {
            parts,
            rows,
            memory,
            since,
            ..
        } = pending;
        if let Some(since) = since {
            metrics::histogram!("sluice_flush_age_seconds", "table" => self.target.table.clone())
                .record(since.elapsed().as_secs_f64());
        }
        let receipts = || parts.iter().map(|(receipt, _)| receipt);
        if rows == 0 {
            // Only empty parts: nothing to insert, nothing to wait for.
            settle(receipts(), &Ok(Arc::from("")), self.spool.as_deref());
            return;
        }
        let mut expected: HashMap<BatchKey, u64> = HashMap::new();
        for (receipt, batch) in &parts {
            if let Some(key) = receipt.key() {
                *expected.entry(key).or_default() += batch.num_rows() as u64;
            }
        }
        let started = Instant::now();
        let batches: Vec<&RecordBatch> = parts
            .iter()
            .map(|(_, batch)| batch)
            .filter(|batch| batch.num_rows() > 0)
            .collect();
        let request = match self.encode(&batches, rows, shard) {
            Ok(request) => request,
            Err(err) => {
                tracing::error!(table = %self.target.table, error = %err, "encoding failed");
                let error = SinkError::Permanent {
                    code: 0,
                    message: format!("encoding failed: {err}"),
                };
                settle(receipts(), &Err(error), None);
                return;
            }
        };
        metrics::histogram!("sluice_encode_seconds", "table" => self.target.table.clone())
            .record(started.elapsed().as_secs_f64());
        let insert = EncodedInsert {
            request,
            memory,
            parts,
            fallback: self.fallback.clone(),
            expected,
            body_back: Some(self.scratch.bodies.back.clone()),
        };
        if let Err(err) = self.inserts.blocking_send(insert) {
            let error = SinkError::Retryable("sluice is shutting down".to_string());
            settle(err.0.parts.iter().map(|(r, _)| r), &Err(error), None);
        }
    }

    fn encode(
        &mut self,
        batches: &[&RecordBatch],
        rows: usize,
        shard: usize,
    ) -> anyhow::Result<InsertRequest> {
        let columns = encode::native_columns(&self.schema);
        // The requests' rows in the table's order, read from their batches as the block is
        // written: neither joined nor sorted into a copy first.
        let order = match &self.sort_key {
            Some(key) => key.order(batches)?,
            None => None,
        };
        let sequence;
        let block = match (batches, &order) {
            ([single], None) => encode::BlockRows::Batch(single),
            (_, Some(order)) => encode::BlockRows::Gathered { batches, order },
            (_, None) => {
                sequence = encode::in_sequence(batches);
                encode::BlockRows::Gathered {
                    batches,
                    order: &sequence,
                }
            }
        };
        let (body, framed) = self.delivery.encode(&columns, block, &mut self.scratch)?;
        Ok(InsertRequest {
            target: self.target.clone(),
            body: Bytes::from(body),
            framed,
            rows,
            insert_id: Arc::from(format!("sluice-{}", uuid::Uuid::new_v4())),
            shard,
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
            let started = Instant::now();
            let outcome = deliver(
                sink.as_ref(),
                &insert.request,
                &insert.expected,
                options.attempts,
                &delivered,
            )
            .await;
            let table = insert.request.target.table.clone();
            metrics::histogram!("sluice_delivery_seconds", "table" => table.clone())
                .record(started.elapsed().as_secs_f64());
            if outcome.is_ok() {
                metrics::histogram!("sluice_insert_batch_rows", "table" => table)
                    .record(insert.request.rows as f64);
            }
            if let (Err(error), Some(_)) = (&outcome, &delivered.spool)
                && error.is_retryable()
            {
                tracing::error!(
                    insert_id = %insert.request.insert_id,
                    requests = insert.parts.len(),
                    %error,
                    "insert not delivered; its records stay in the spool for the next start"
                );
            }
            let mut parts = insert.parts;
            if let (Err(SinkError::Permanent { message, .. }), Some(fallback)) =
                (&outcome, &insert.fallback)
            {
                // Refused for good (a type or schema mismatch): the rows go to quarantine with
                // ClickHouse's reason rather than being dropped or retried forever.
                tracing::error!(insert_id = %insert.request.insert_id, %message,
                    "clickhouse refused the rows; they go to the quarantine table");
                let table = insert.request.target.table.clone();
                metrics::counter!("sluice_rows_refused_total", "table" => table)
                    .increment(insert.request.rows as u64);
                parts = fallback.quarantine(parts, message);
            }
            let delivery: Delivery = outcome.map(|()| insert.request.insert_id.clone());
            settle(
                parts.iter().map(|(r, _)| r),
                &delivery,
                delivered.spool.as_deref(),
            );
            drop(insert.memory);
            drop(permit);
            if let Some(back) = &insert.body_back {
                back.give(insert.request.body);
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

/// How long after a refusal the insert is tried once more before the refusal counts.
const REFUSAL_RECHECK: Duration = Duration::from_secs(2);

/// Tries an insert until it succeeds, fails for good, or runs out of attempts. With a spool,
/// retryable failures are retried without limit until shutdown: the rows are safe on disk and a
/// ClickHouse outage must cost nothing but delay.
///
/// A refusal (a "permanent" error code) is final only when the next attempt, made
/// [`REFUSAL_RECHECK`] later, is refused too: some of those codes can be passing states that
/// say nothing about the rows (a table dropped and created again is "unknown" in between), and
/// acknowledged rows must not go to quarantine on such an answer.
async fn deliver(
    sink: &dyn Sink,
    request: &InsertRequest,
    expected: &HashMap<BatchKey, u64>,
    attempts: u32,
    delivered: &Delivered,
) -> Result<(), SinkError> {
    let table = request.target.table.clone();
    let mut attempt = 1;
    // Set once an attempt may have been applied although it failed (its answer was lost): from
    // then on the insert is sent again only after ClickHouse says its rows are not there.
    let mut uncertain = false;
    // Refusals in a row.
    let mut refusals = 0;
    loop {
        let result = if uncertain {
            match stored(sink, request, expected).await {
                Stored::All => {
                    tracing::info!(insert_id = %request.insert_id, "an insert of unknown outcome is stored");
                    return Ok(());
                }
                Stored::Unknown(error) => Err(error),
                Stored::None | Stored::Part => {
                    insert(sink, request, &table, &delivered.status).await
                }
            }
        } else {
            insert(sink, request, &table, &delivered.status).await
        };
        let error = match result {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        uncertain |= matches!(error, SinkError::Retryable(_));
        let refused = matches!(error, SinkError::Permanent { .. });
        refusals = if refused { refusals + 1 } else { 0 };
        let keep_trying =
            delivered.spool.is_some() && !delivered.shutting_down.load(Ordering::Relaxed);
        if refusals >= 2 || (attempt >= attempts && !keep_trying) {
            tracing::warn!(insert_id = %request.insert_id, attempt, %error, "insert failed");
            return Err(error);
        }
        let backoff = if refused {
            REFUSAL_RECHECK
        } else {
            backoff(attempt)
        };
        tracing::info!(insert_id = %request.insert_id, attempt, %error, ?backoff, "insert will be retried");
        tokio::time::sleep(backoff).await;
        attempt += 1;
    }
}

/// One attempt, with its metrics.
async fn insert(
    sink: &dyn Sink,
    request: &InsertRequest,
    table: &str,
    status: &Status,
) -> Result<(), SinkError> {
    let started = Instant::now();
    let result = sink.insert(request).await;
    metrics::histogram!("sluice_insert_seconds", "table" => table.to_string())
        .record(started.elapsed().as_secs_f64());
    let class = match &result {
        Ok(()) => "ok",
        Err(error) => error.class(),
    };
    metrics::counter!("sluice_inserts_total", "table" => table.to_string(), "result" => class)
        .increment(1);
    match &result {
        Ok(()) => status.insert(request.rows, None),
        Err(error) => {
            let code = match error {
                SinkError::Permanent { code, .. } => code.to_string(),
                SinkError::Retryable(message) => crate::sink::clickhouse::error_code(message)
                    .map_or_else(|| "none".to_string(), |code| code.to_string()),
                SinkError::Unreachable(_) => "none".to_string(),
            };
            metrics::counter!("sluice_clickhouse_errors_total", "table" => table.to_string(),
                "class" => error.class(), "code" => code)
            .increment(1);
            status.insert(
                request.rows,
                Some(&format!(
                    "insert {} into {table}: {error}",
                    request.insert_id
                )),
            );
        }
    }
    if result.is_ok() {
        metrics::counter!("sluice_insert_rows_total", "table" => table.to_string())
            .increment(request.rows as u64);
        metrics::counter!("sluice_insert_bytes_total", "table" => table.to_string())
            .increment(request.body.len() as u64);
        tracing::debug!(insert_id = %request.insert_id, rows = request.rows, "insert confirmed");
    }
    result
}

/// What ClickHouse holds of an insert's rows.
enum Stored {
    All,
    None,
    Part,
    /// It cannot be asked (unreachable, or the table has no batch-key columns).
    Unknown(SinkError),
}

async fn stored(
    sink: &dyn Sink,
    request: &InsertRequest,
    expected: &HashMap<BatchKey, u64>,
) -> Stored {
    if expected.is_empty() || request.target.batch_key_columns.is_none() {
        // No way to tell: sending again risks doubles, not sending risks loss; send.
        return Stored::None;
    }
    let keys: Vec<BatchKey> = expected.keys().cloned().collect();
    match sink.stored_rows(&request.target, &keys).await {
        Ok(found) => {
            let count = |key: &BatchKey| found.get(key).copied().unwrap_or(0);
            if expected.iter().all(|(key, rows)| count(key) >= *rows) {
                Stored::All
            } else if expected.keys().all(|key| count(key) == 0) {
                Stored::None
            } else {
                tracing::error!(insert_id = %request.insert_id,
                    "clickhouse holds part of an insert of unknown outcome; sending it again whole");
                Stored::Part
            }
        }
        Err(error) => Stored::Unknown(error),
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

    /// Delivers one insert to a sink whose next inserts fail with `failures`; the outcome and
    /// the inserts the sink stored.
    async fn deliver_after(failures: Vec<SinkError>) -> (Result<(), SinkError>, usize) {
        let sink = crate::sink::MemorySink::default();
        sink.fail_next(failures);
        let target = TableTarget::new("db", "t", ["a"].into_iter(), None);
        let request = InsertRequest {
            target: Arc::new(target),
            body: Bytes::new(),
            framed: false,
            rows: 1,
            insert_id: Arc::from("sluice-test"),
            shard: 0,
        };
        let delivered = Delivered {
            spool: None,
            shutting_down: Arc::new(AtomicBool::new(false)),
            status: Arc::new(Status::new(4)),
        };
        let outcome = deliver(&sink, &request, &HashMap::new(), 10, &delivered).await;
        let stored = sink.inserts.lock().unwrap().len();
        (outcome, stored)
    }

    fn refusal(code: u32) -> SinkError {
        SinkError::Permanent {
            code,
            message: format!("Code: {code}"),
        }
    }

    #[tokio::test]
    async fn a_refusal_that_does_not_repeat_is_retried() {
        // A table dropped and created again answers "unknown table" in between.
        let (outcome, stored) = deliver_after(vec![refusal(60)]).await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(stored, 1);
    }

    #[tokio::test]
    async fn a_refusal_counts_when_repeated_in_a_row() {
        let unreachable = SinkError::Unreachable("connection refused".into());
        let (outcome, stored) = deliver_after(vec![refusal(60), unreachable, refusal(60)]).await;
        assert_eq!(outcome, Ok(()), "an outage in between restarts the count");
        assert_eq!(stored, 1);
        // The sink would take a third attempt: there is none.
        let (outcome, stored) = deliver_after(vec![refusal(53), refusal(53)]).await;
        assert!(matches!(
            outcome,
            Err(SinkError::Permanent { code: 53, .. })
        ));
        assert_eq!(stored, 0);
    }

    #[test]
    fn a_settled_body_is_written_again_by_the_next_insert() {
        let bodies = Bodies::default();
        let mut body = bodies.take();
        // Room to spare, as an encoded body has; `Bytes` holds a body cut to its length
        // another way, given back further down.
        body.reserve(1500);
        body.extend_from_slice(&[7; 1000]);
        let at = body.as_ptr();
        let sent = Bytes::from(body);
        let kept = sent.clone();
        // Someone still holds a copy: that body is not the encoder's to write again.
        bodies.back.give(sent);
        assert!(bodies.returned.is_empty());
        bodies.back.give(kept);
        let again = bodies.take();
        assert_eq!(again.as_ptr(), at, "the same memory");
        assert!(again.is_empty() && again.capacity() >= 1000);
        // One body waits at most (the first given back); one let go is gone.
        let exact = vec![1; 10].into_boxed_slice().into_vec();
        let exact_at = exact.as_ptr();
        bodies.back.give(Bytes::from(exact));
        bodies.back.give(Bytes::from(again));
        assert_eq!(bodies.returned.len(), 1);
        let waiting = bodies.take();
        assert_eq!(waiting.as_ptr(), exact_at);
        bodies.back.give(Bytes::from(vec![2; 10]));
        bodies.release();
        assert!(bodies.returned.is_empty());
        assert_eq!(bodies.take().capacity(), 0);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(300));
            assert!(backoff(20) <= Duration::from_secs(15));
        }
    }
}
