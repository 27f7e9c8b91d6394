//! Spool: the durable log of accepted batches, beside the pipeline.
//!
//! # Layout
//! `DIR/<20-digit first record id>.seg`, append-only segments. A record is
//!
//! ```text
//! magic "SLR1" (4) | payload length u32 LE | CRC-32 of payload u32 LE | payload
//! ```
//!
//! and its payload ([`SpoolRecord`], format version 2) is the record id (u64 LE) followed by
//! length-prefixed fields: stream, schema version, the verified request context (principal,
//! origin, region, batch id, request id, received-at, url-encoded flag), Content-Type,
//! Content-Encoding, the row count the sender declared, the limits the body is validated under,
//! whether the batch id is the sender's, and the body exactly as received.
//! Replay re-derives the rows from the body with the same schema version and context, so a
//! record is small (the body stays compressed) and rollups can be rebuilt from it too.
//!
//! Confirmations live beside each segment in `<id>.ack`: the ids of records whose rows
//! ClickHouse has confirmed, or that were voided, 8 bytes each. A segment is deleted once it is
//! sealed (a newer one is active) and every record in it is confirmed.
//!
//! # When the sender is acknowledged
//! Appends go through one writer thread that commits in groups: it takes every append waiting,
//! writes them, calls `fdatasync` once ([`FsyncPolicy::Always`]), then answers them all. With
//! `Never` the answer comes after `write` (the page cache survives a sluice crash, not a machine
//! crash).
//!
//! The ingest path appends a body while it validates it, so the disk's sync and the CPU's work
//! overlap. A batch refused after its append (a body that does not decode, a duplicate, a rate
//! limit, …) is withdrawn with [`Spool::void`], whose confirmation is on disk before the refusal
//! is answered. Only a request that was never answered (sluice stopped between the append and the
//! answer) can leave a record whose verdict is unknown; replay validates it again.
//!
//! # Recovery
//! At start every segment is read in order. A record whose magic, length or checksum is wrong
//! ends its segment: the tail from there is reported (log, metric) and cut off; the good records
//! before it are kept. Records without a confirmation are returned for replay.
//!
//! # Limits
//! The spool never holds more than `max_bytes`: an append that would pass it fails with
//! [`SpoolError::Full`] (answered 503 + Retry-After) until ClickHouse catches up.

mod record;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::oneshot;

pub use record::SpoolRecord;

/// Identifies a record; increases across restarts.
pub type RecordId = u64;

const MAGIC: &[u8; 4] = b"SLR1";
const HEADER_BYTES: usize = 12;
/// A record larger than this is corrupt (bodies are capped far below by `limits`).
const MAX_RECORD_BYTES: usize = 1 << 30;

/// When appended records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// `fdatasync` before acknowledging (one call covers every append in the group).
    Always,
    /// Acknowledge after `write`; `fdatasync` at most every `fsync_interval_ms` (and when
    /// idle): a power loss may cost the last interval.
    Interval,
    /// No fsync: survives a sluice crash, not a power loss.
    Never,
}

/// Spool settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the segments; created if missing.
    pub dir: PathBuf,
    /// Most bytes on disk; appends beyond it are refused (503).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A segment is sealed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// When appends reach the disk: `always` (before the answer), `interval` or `never`.
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: the longest time between fdatasync calls, in milliseconds.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

fn default_max_bytes() -> u64 {
    4 << 30
}
fn default_segment_bytes() -> u64 {
    64 << 20
}
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Always
}
fn default_fsync_interval_ms() -> u64 {
    100
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool is full ({used} of {limit} bytes)")]
    Full { used: u64, limit: u64 },
    #[error("spool i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("spool writer stopped")]
    Stopped,
}

/// Bookkeeping of one segment.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// When the segment was started (or found at start).
    created: Instant,
    bytes: u64,
    /// Records in the segment.
    records: HashSet<RecordId>,
    /// Records confirmed by ClickHouse.
    confirmed: HashSet<RecordId>,
    ack_file: Option<File>,
}

impl Segment {
    fn new(path: PathBuf) -> Segment {
        Segment {
            path,
            created: Instant::now(),
            bytes: 0,
            records: HashSet::new(),
            confirmed: HashSet::new(),
            ack_file: None,
        }
    }

    fn is_done(&self) -> bool {
        self.records.len() == self.confirmed.len()
    }
}

/// Shared state of the spool.
struct State {
    /// Segments by first record id; the last one is active.
    segments: BTreeMap<RecordId, Segment>,
}

/// Figures for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    pub bytes: u64,
    pub segments: usize,
    pub unconfirmed_records: usize,
}

pub struct Spool {
    config: SpoolConfig,
    state: Arc<Mutex<State>>,
    used_bytes: Arc<AtomicU64>,
    appends: Option<crossbeam_channel::Sender<Append>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Append {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<RecordId, SpoolError>>,
}

/// The ack file a mark was written to, and whether the mark created it.
struct Marked {
    ack_file: File,
    created: bool,
}

/// An append in the writer's hands (see [`Spool::begin_append`]).
pub struct PendingAppend(oneshot::Receiver<Result<RecordId, SpoolError>>);

impl PendingAppend {
    /// Resolves once the record is durable per the fsync policy.
    pub async fn durable(mut self) -> Result<RecordId, SpoolError> {
        self.wait().await
    }

    /// As [`PendingAppend::durable`], by reference: dropped half-way, the append is still here.
    async fn wait(&mut self) -> Result<RecordId, SpoolError> {
        (&mut self.0).await.map_err(|_| SpoolError::Stopped)?
    }
}

/// A record appended for a request, until the request hands it to the pipeline
/// ([`AppendGuard::handed_over`]) or voids it ([`AppendGuard::void`]). Dropped before either (the
/// client went away, and the request's handler was dropped with it), the record is voided in the
/// background: nothing would deliver it before the next start, and it would hold its segment
/// until then.
pub struct AppendGuard {
    spool: Arc<Spool>,
    record: Option<GuardedRecord>,
}

enum GuardedRecord {
    Pending(PendingAppend),
    Durable(RecordId),
}

impl AppendGuard {
    /// Resolves once the record is durable per the fsync policy.
    pub async fn durable(&mut self) -> Result<RecordId, SpoolError> {
        let result = match &mut self.record {
            Some(GuardedRecord::Pending(pending)) => pending.wait().await,
            Some(GuardedRecord::Durable(id)) => return Ok(*id),
            None => return Err(SpoolError::Stopped),
        };
        // A failed append left nothing to void.
        self.record = result.as_ref().ok().map(|id| GuardedRecord::Durable(*id));
        result
    }

    /// The pipeline has the record now: it confirms it once ClickHouse has the rows.
    pub fn handed_over(mut self) {
        self.record = None;
    }

    /// Voids the record (see [`Spool::void`]), waiting for its append first if need be.
    pub async fn void(mut self) -> Result<(), SpoolError> {
        match self.record.take() {
            Some(record) => void_guarded(self.spool.clone(), record).await,
            None => Ok(()),
        }
    }
}

/// Waits for the record's append, then voids it on a blocking thread: the ack file's write,
/// its sync and the deletion of a segment the void finishes are file system calls.
async fn void_guarded(spool: Arc<Spool>, record: GuardedRecord) -> Result<(), SpoolError> {
    let id = match record {
        GuardedRecord::Durable(id) => id,
        GuardedRecord::Pending(mut pending) => match pending.wait().await {
            Ok(id) => id,
            Err(_) => return Ok(()), // not appended: nothing to void
        },
    };
    tokio::task::spawn_blocking(move || spool.void(id))
        .await
        .map_err(|_| SpoolError::Stopped)?
}

impl Drop for AppendGuard {
    fn drop(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // no runtime: shutting down, and replay decides at the next start
        };
        let spool = self.spool.clone();
        runtime.spawn(async move {
            if let Err(err) = void_guarded(spool, record).await {
                tracing::error!(error = %err, "cannot void the spool record of an abandoned request");
            }
        });
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Records without a confirmation, oldest first.
    pub unconfirmed: Vec<(RecordId, SpoolRecord)>,
    /// Bytes cut off torn or corrupt segment tails.
    pub discarded_bytes: u64,
    /// Confirmed records skipped.
    pub confirmed: usize,
}

impl Spool {
    /// Opens (or creates) the spool, recovers its segments and starts the writer.
    pub fn open(config: SpoolConfig) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(&config.dir)?;
        let mut recovery = Recovery::default();
        let mut segments = BTreeMap::new();
        let mut next_id: RecordId = 1;
        // An ack file whose segment is gone was left by a crash while both were deleted: its
        // ids still count as used.
        for path in list_files(&config.dir, "ack")? {
            if !path.with_extension("seg").exists() {
                next_id = next_id.max(read_acks(&path)?.iter().max().map_or(0, |id| id + 1));
                fs::remove_file(&path)?;
            }
        }
        for (first_id, path) in list_segments(&config.dir)? {
            let confirmed = read_acks(&path.with_extension("ack"))?;
            // Ids are never reused, even those of records lost to corruption after they were
            // confirmed: an old confirmation must not match a new record.
            next_id = next_id
                .max(first_id)
                .max(confirmed.iter().max().map_or(0, |id| id + 1));
            let (records, good_len, file_len) = read_segment(&path)?;
            if good_len < file_len {
                tracing::error!(
                    segment = %path.display(),
                    kept_bytes = good_len,
                    discarded_bytes = file_len - good_len,
                    "spool segment has a torn or corrupt tail; keeping the records before it"
                );
                metrics::counter!("sluice_spool_corrupt_bytes_total")
                    .increment(file_len - good_len);
                recovery.discarded_bytes += file_len - good_len;
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(good_len)?;
            }
            let mut segment = Segment::new(path.clone());
            segment.bytes = good_len;
            for (id, record) in records {
                next_id = next_id.max(id + 1);
                segment.records.insert(id);
                if confirmed.contains(&id) {
                    segment.confirmed.insert(id);
                    recovery.confirmed += 1;
                } else {
                    recovery.unconfirmed.push((id, record));
                }
            }
            segments.insert(first_id, segment);
        }
        let mut state = State { segments };
        // Delete what recovery found fully confirmed, the newest segment too: the writer starts
        // a new one.
        let done = take_done_segments(&mut state, false);
        delete_segments(&config.dir, &done, config.fsync != FsyncPolicy::Never);
        let used = state.segments.values().map(|s| s.bytes).sum();
        let state = Arc::new(Mutex::new(state));
        let used_bytes = Arc::new(AtomicU64::new(used));
        let (appends, receiver) = crossbeam_channel::unbounded();
        let writer = Writer {
            config: config.clone(),
            state: state.clone(),
            used_bytes: used_bytes.clone(),
            next_id,
            file: None,
            dirty: false,
            last_sync: Instant::now(),
        };
        let writer = std::thread::Builder::new()
            .name("spool-writer".to_string())
            .spawn(move || writer.run(receiver))?;
        let spool = Spool {
            config,
            state,
            used_bytes,
            appends: Some(appends),
            writer: Some(writer),
        };
        spool.report();
        Ok((spool, recovery))
    }

    /// Appends a record; resolves once it is durable per the fsync policy.
    pub async fn append(&self, record: &SpoolRecord) -> Result<RecordId, SpoolError> {
        self.begin_append(record)?.durable().await
    }

    /// As [`Spool::begin_append`], with the record in an [`AppendGuard`].
    pub fn begin_guarded_append(
        self: &Arc<Self>,
        record: &SpoolRecord,
    ) -> Result<AppendGuard, SpoolError> {
        Ok(AppendGuard {
            spool: self.clone(),
            record: Some(GuardedRecord::Pending(self.begin_append(record)?)),
        })
    }

    /// Starts appending a record: refused at once when the spool is full; the returned
    /// [`PendingAppend`] resolves once the record is durable, meanwhile the caller works on.
    pub fn begin_append(&self, record: &SpoolRecord) -> Result<PendingAppend, SpoolError> {
        let payload = record.encode();
        let size = (HEADER_BYTES + payload.len() + 8) as u64;
        let used = self.used_bytes.load(Ordering::Relaxed);
        if used + size > self.config.max_bytes {
            metrics::counter!("sluice_spool_full_refusals_total").increment(1);
            return Err(SpoolError::Full {
                used,
                limit: self.config.max_bytes,
            });
        }
        let (done, receiver) = oneshot::channel();
        self.appends
            .as_ref()
            .ok_or(SpoolError::Stopped)?
            .send(Append { payload, done })
            .map_err(|_| SpoolError::Stopped)?;
        Ok(PendingAppend(receiver))
    }

    /// Records that ClickHouse has confirmed every row of `ids`; deletes finished segments.
    pub fn confirm(&self, ids: &[RecordId]) {
        // Not fsynced: a lost confirmation only means a replay, which probes ClickHouse. (A
        // failed write is logged by `mark`.)
        let _ = self.mark(ids);
    }

    /// Withdraws a record whose batch was refused after it was appended: it is marked as
    /// confirmed, and (unless `fsync = "never"`) the mark is on disk when this returns, so replay
    /// never delivers the batch. Answer the refusal only after this. Blocks on the file system:
    /// async code voids through [`AppendGuard::void`], which runs this on a blocking thread.
    pub fn void(&self, id: RecordId) -> Result<(), SpoolError> {
        metrics::counter!("sluice_spool_voided_records_total").increment(1);
        let Some(Marked { ack_file, created }) = self.mark(&[id])? else {
            return Ok(()); // the segment is gone: nothing of it can be replayed
        };
        if self.config.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        ack_file.sync_data()?;
        if created {
            // The new ack file's directory entry must reach the disk too.
            File::open(&self.config.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Appends `ids` to their segments' ack files and deletes finished segments. Returns the
    /// ack file of the last id's segment unless that segment is gone (or the id was unknown or
    /// marked before); an error if an id could not be written.
    fn mark(&self, ids: &[RecordId]) -> io::Result<Option<Marked>> {
        let mut outcome = Ok(None);
        let mut state = self.state.lock().unwrap();
        for &id in ids {
            let Some((&first, segment)) = state.segments.range_mut(..=id).next_back() else {
                continue;
            };
            if !segment.records.contains(&id) || !segment.confirmed.insert(id) {
                continue;
            }
            let mut write = || -> io::Result<(RecordId, Marked)> {
                let created = segment.ack_file.is_none();
                let file = match &mut segment.ack_file {
                    Some(file) => file,
                    None => segment.ack_file.insert(
                        OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(segment.path.with_extension("ack"))?,
                    ),
                };
                file.write_all(&id.to_le_bytes())?;
                let ack_file = file.try_clone()?;
                Ok((first, Marked { ack_file, created }))
            };
            outcome = write().map(Some).inspect_err(|err| {
                tracing::error!(error = %err, "cannot write spool ack file");
            });
        }
        let done = take_done_segments(&mut state, true);
        // A deleted segment needs no mark: nothing of it is replayed.
        let outcome = outcome.map(|marked| {
            marked
                .filter(|(first, _)| state.segments.contains_key(first))
                .map(|(_, marked)| marked)
        });
        drop(state);
        if !done.is_empty() {
            // Unlinking a large file can take a while: not under the state's lock.
            delete_segments(
                &self.config.dir,
                &done,
                self.config.fsync != FsyncPolicy::Never,
            );
            let freed = done.iter().map(|(_, bytes)| bytes).sum();
            self.used_bytes.fetch_sub(freed, Ordering::Relaxed);
        }
        self.report();
        outcome
    }

    pub fn stats(&self) -> SpoolStats {
        let state = self.state.lock().unwrap();
        SpoolStats {
            bytes: self.used_bytes.load(Ordering::Relaxed),
            segments: state.segments.len(),
            unconfirmed_records: state
                .segments
                .values()
                .map(|s| s.records.len() - s.confirmed.len())
                .sum(),
        }
    }

    fn report(&self) {
        report(
            &self.state.lock().unwrap(),
            self.used_bytes.load(Ordering::Relaxed),
        );
    }
}

/// Spool gauges: size, segments, lag (unconfirmed records) and age of the oldest segment that
/// still holds unconfirmed records.
fn report(state: &State, used_bytes: u64) {
    let unconfirmed: usize = state
        .segments
        .values()
        .map(|s| s.records.len() - s.confirmed.len())
        .sum();
    let oldest = state
        .segments
        .values()
        .filter(|s| !s.is_done())
        .map(|s| s.created.elapsed().as_secs_f64())
        .fold(0.0, f64::max);
    metrics::gauge!("sluice_spool_bytes").set(used_bytes as f64);
    metrics::gauge!("sluice_spool_segments").set(state.segments.len() as f64);
    metrics::gauge!("sluice_spool_unconfirmed_records").set(unconfirmed as f64);
    metrics::gauge!("sluice_spool_oldest_unconfirmed_seconds").set(oldest);
}

impl Drop for Spool {
    fn drop(&mut self) {
        drop(self.appends.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Takes the sealed (or, with `keep_active = false`, all) segments whose records are all
/// confirmed out of the state: their paths and sizes, for [`delete_segments`].
fn take_done_segments(state: &mut State, keep_active: bool) -> Vec<(PathBuf, u64)> {
    let active = state.segments.keys().next_back().copied();
    let done: Vec<RecordId> = state
        .segments
        .iter()
        .filter(|(first, segment)| segment.is_done() && !(keep_active && Some(**first) == active))
        .map(|(first, _)| *first)
        .collect();
    done.into_iter()
        .map(|first| {
            let segment = state.segments.remove(&first).expect("listed above");
            (segment.path, segment.bytes)
        })
        .collect()
}

/// Deletes finished segments: the segment files first and, once their removal is on disk
/// (`sync`), the ack files. An ack file left alone by a crash is harmless (see
/// [`Spool::open`]); a segment left without its ack file would be replayed, voided and delivered
/// records included — so a segment that cannot be deleted keeps its ack file, and the next
/// start finds it all confirmed and tries again.
fn delete_segments(dir: &Path, segments: &[(PathBuf, u64)], sync: bool) {
    let mut deleted = Vec::with_capacity(segments.len());
    for (path, _) in segments {
        match fs::remove_file(path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                tracing::error!(segment = %path.display(), error = %err, "cannot delete spool segment; its ack file is kept");
            }
            _ => deleted.push(path),
        }
    }
    if deleted.is_empty() {
        return;
    }
    if sync && let Err(err) = File::open(dir).and_then(|dir| dir.sync_all()) {
        // The ack files stay until the next start, which removes those without a segment.
        tracing::error!(error = %err, "cannot sync the spool directory; ack files kept");
        return;
    }
    for path in deleted {
        let _ = fs::remove_file(path.with_extension("ack"));
    }
}

/// The single writer: group commit.
struct Writer {
    config: SpoolConfig,
    state: Arc<Mutex<State>>,
    used_bytes: Arc<AtomicU64>,
    next_id: RecordId,
    /// The active segment file and its first record id.
    file: Option<(RecordId, File)>,
    /// Written but not yet fsynced (`fsync = "interval"`).
    dirty: bool,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, receiver: crossbeam_channel::Receiver<Append>) {
        let mut group: Vec<Append> = Vec::new();
        let mut headers: Vec<u8> = Vec::new();
        let interval = Duration::from_millis(self.config.fsync_interval_ms);
        loop {
            let first = match (self.dirty, self.config.fsync) {
                (true, FsyncPolicy::Interval) => {
                    let wait = interval.saturating_sub(self.last_sync.elapsed());
                    match receiver.recv_timeout(wait) {
                        Ok(first) => first,
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            self.sync();
                            continue;
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match receiver.recv() {
                    Ok(first) => first,
                    Err(_) => break,
                },
            };
            group.push(first);
            group.extend(receiver.try_iter());
            // Each record is a header (magic, length, CRC32, id) and its payload; the headers go
            // into one buffer and the payloads are written from where they are (one writev).
            headers.clear();
            let first_id = self.next_id;
            for append in &group {
                let id = self.next_id.to_le_bytes();
                self.next_id += 1;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&id);
                crc.update(&append.payload);
                headers.extend_from_slice(MAGIC);
                headers
                    .extend_from_slice(&((id.len() + append.payload.len()) as u32).to_le_bytes());
                headers.extend_from_slice(&crc.finalize().to_le_bytes());
                headers.extend_from_slice(&id);
            }
            let mut slices: Vec<IoSlice<'_>> = headers
                .chunks(HEADER_BYTES + size_of::<RecordId>())
                .zip(&group)
                .flat_map(|(header, append)| [IoSlice::new(header), IoSlice::new(&append.payload)])
                .collect();
            let result = self.write_group(first_id, group.len(), &mut slices);
            drop(slices);
            if result.is_ok() && self.config.fsync == FsyncPolicy::Interval {
                self.dirty = true;
                if self.last_sync.elapsed() >= interval {
                    self.sync();
                }
            }
            metrics::histogram!("sluice_spool_group_records").record(group.len() as f64);
            report(
                &self.state.lock().unwrap(),
                self.used_bytes.load(Ordering::Relaxed),
            );
            for (i, append) in group.drain(..).enumerate() {
                let outcome = match &result {
                    Ok(()) => Ok(first_id + i as u64),
                    Err(err) => Err(SpoolError::Io(io::Error::new(err.kind(), err.to_string()))),
                };
                let _ = append.done.send(outcome);
            }
        }
        self.sync();
    }

    fn sync(&mut self) {
        if let Some((_, file)) = &self.file
            && let Err(err) = sync_segment(file)
        {
            tracing::error!(error = %err, "spool fdatasync failed");
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }

    /// Appends the records `first_id..first_id + count`, written as `slices`, to the active
    /// segment (a new one when it is full).
    fn write_group(
        &mut self,
        first_id: RecordId,
        count: usize,
        mut slices: &mut [IoSlice<'_>],
    ) -> io::Result<()> {
        let bytes: usize = slices.iter().map(|s| s.len()).sum();
        let roll = match &self.file {
            None => true,
            Some((first, _)) => {
                let state = self.state.lock().unwrap();
                state
                    .segments
                    .get(first)
                    .is_none_or(|s| s.bytes >= self.config.segment_bytes)
            }
        };
        if roll {
            if let Some((_, old)) = self.file.take() {
                sync_segment(&old)?;
            }
            let path = self.config.dir.join(format!("{first_id:020}.seg"));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            if self.config.fsync == FsyncPolicy::Always {
                // Make the new file's directory entry durable too.
                File::open(&self.config.dir)?.sync_all()?;
            }
            self.state
                .lock()
                .unwrap()
                .segments
                .insert(first_id, Segment::new(path));
            self.file = Some((first_id, file));
        }
        let (segment_first, file) = self.file.as_mut().expect("opened above");
        let segment_first = *segment_first;
        while !slices.is_empty() {
            match file.write_vectored(slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        if self.config.fsync == FsyncPolicy::Always {
            sync_segment(file)?;
        }
        let mut state = self.state.lock().unwrap();
        let segment = state
            .segments
            .get_mut(&segment_first)
            .expect("active segment");
        segment.bytes += bytes as u64;
        segment.records.extend(first_id..first_id + count as u64);
        drop(state);
        self.used_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// fdatasync of a segment, timed (`sluice_spool_fsync_seconds`): with `fsync = "always"` every
/// acknowledgement waits for one.
fn sync_segment(file: &File) -> io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    metrics::histogram!("sluice_spool_fsync_seconds").record(started.elapsed().as_secs_f64());
    result
}

fn list_files(dir: &Path, extension: &str) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == extension) {
            files.push(path);
        }
    }
    Ok(files)
}

fn list_segments(dir: &Path) -> io::Result<Vec<(RecordId, PathBuf)>> {
    let mut segments = Vec::new();
    for path in list_files(dir, "seg")? {
        if let Some(id) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse().ok())
        {
            segments.push((id, path));
        }
    }
    segments.sort();
    Ok(segments)
}

fn read_acks(path: &Path) -> io::Result<HashSet<RecordId>> {
    match fs::read(path) {
        Ok(bytes) => Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(err) => Err(err),
    }
}

/// The good records of a segment, the length of the good prefix, and the file's length.
type SegmentContents = (Vec<(RecordId, SpoolRecord)>, u64, u64);

/// Reads the good records of a segment.
fn read_segment(path: &Path) -> io::Result<SegmentContents> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut offset = 0;
    while offset + HEADER_BYTES <= bytes.len() {
        let header = &bytes[offset..offset + HEADER_BYTES];
        if &header[..4] != MAGIC {
            break;
        }
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let end = offset + HEADER_BYTES + len;
        if !(8..=MAX_RECORD_BYTES).contains(&len) || end > bytes.len() {
            break;
        }
        let payload = &bytes[offset + HEADER_BYTES..end];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
        match SpoolRecord::decode(&payload[8..]) {
            Some(record) => records.push((id, record)),
            None => break,
        }
        offset = end;
    }
    Ok((records, offset as u64, bytes.len() as u64))
}

#[cfg(test)]
mod tests;
