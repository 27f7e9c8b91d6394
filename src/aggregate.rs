//! Aggregate: gather the validated batches of one table until a flush is due.
//!
//! Requests hand their Arrow batches over a bounded crossbeam channel to the table's accumulator
//! thread (no lock on the request path; a full channel is back-pressure, answered 503). The
//! accumulator keeps raw rows and decides when to flush: on rows, bytes or the age of the oldest
//! row, whichever comes first. Rollups declared in schemas fold in here as well.

pub mod rollup;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::sink::{BatchKey, SinkError};
use crate::spool::RecordId;
use crate::validate::RequestContext;

/// What a request learns once its rows are delivered: the id of the insert that carried them
/// (of every insert, comma-separated, when the receipt is complete).
pub type Delivery = Result<std::sync::Arc<str>, SinkError>;

/// Follows one request's rows through delivery. They may travel in several inserts (accepted
/// rows to the stream's table, rejected rows to its quarantine table); the request is delivered
/// when every part is.
pub struct Receipt {
    remaining: AtomicUsize,
    /// The verified context of the request: its (principal, batch id) is how ClickHouse can be
    /// asked whether it has the rows, and it labels rows sent to quarantine.
    pub context: Option<Arc<RequestContext>>,
    /// The spool record the rows were derived from, confirmed once every part is delivered.
    pub spool_id: Option<RecordId>,
    /// Told when every part is confirmed by ClickHouse, or when one finally fails.
    done: Mutex<Option<oneshot::Sender<Delivery>>>,
    /// The inserts that carried delivered parts (their ClickHouse `query_id`s).
    insert_ids: Mutex<Vec<Arc<str>>>,
}

impl Receipt {
    pub fn new(
        parts: usize,
        context: Option<Arc<RequestContext>>,
        spool_id: Option<RecordId>,
        done: Option<oneshot::Sender<Delivery>>,
    ) -> Arc<Receipt> {
        Arc::new(Receipt {
            remaining: AtomicUsize::new(parts),
            context,
            spool_id,
            done: Mutex::new(done),
            insert_ids: Mutex::new(Vec::new()),
        })
    }

    /// The (principal, batch id) that identifies the request's rows in ClickHouse.
    pub fn key(&self) -> Option<BatchKey> {
        self.context
            .as_ref()
            .map(|c| (c.principal.clone(), c.batch_id.clone()))
    }

    /// Whether a sender waits for the outcome (its batch is not acknowledged yet).
    pub fn has_waiter(&self) -> bool {
        self.done.lock().unwrap().is_some()
    }

    /// Records the outcome of one part; true when it completed the receipt (every part
    /// delivered). A failed part leaves the receipt incomplete for good.
    pub fn part_delivered(&self, outcome: &Delivery) -> bool {
        match outcome {
            Err(_) => {
                if let Some(done) = self.done.lock().unwrap().take() {
                    let _ = done.send(outcome.clone());
                }
                false
            }
            Ok(insert_id) => {
                let insert_ids = {
                    let mut ids = self.insert_ids.lock().unwrap();
                    if !insert_id.is_empty() && !ids.contains(insert_id) {
                        ids.push(insert_id.clone());
                    }
                    ids.join(",")
                };
                let completed = self.remaining.fetch_sub(1, Ordering::AcqRel) == 1;
                if !completed {
                    return false;
                }
                if let Some(context) = &self.context {
                    // The line that leads from a sender's request id to `system.query_log`.
                    tracing::info!(
                        request_id = %context.request_id,
                        batch_id = %context.batch_id,
                        principal = %context.principal,
                        %insert_ids,
                        "request delivered"
                    );
                }
                if let Some(done) = self.done.lock().unwrap().take() {
                    let _ = done.send(Ok(Arc::from(insert_ids)));
                }
                true
            }
        }
    }
}

/// One part of a request's rows on its way to an accumulator.
pub struct Submission {
    pub batch: RecordBatch,
    pub receipt: Arc<Receipt>,
    /// A place in the stream's queue, given back when the accumulator takes the rows.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The rows' share of the in-flight memory bound, given back once they are delivered.
    pub memory: Option<OwnedSemaphorePermit>,
}

/// When to flush.
#[derive(Debug, Clone, Copy)]
pub struct FlushLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// Rows ready to be encoded as one insert, and the requests waiting for them.
#[derive(Default)]
pub struct Pending {
    /// Each request's rows (possibly none) with its receipt.
    pub parts: Vec<(Arc<Receipt>, RecordBatch)>,
    pub rows: usize,
    pub bytes: usize,
    /// In-flight memory held by these rows until they are delivered.
    pub memory: Vec<OwnedSemaphorePermit>,
    /// When the oldest of these rows arrived (for `sluice_flush_age_seconds`).
    pub since: Option<Instant>,
}

/// The pending rows of one table.
pub struct Accumulator {
    limits: FlushLimits,
    pending: Pending,
    oldest: Option<Instant>,
}

impl Accumulator {
    pub fn new(limits: FlushLimits) -> Accumulator {
        Accumulator {
            limits,
            pending: Pending::default(),
            oldest: None,
        }
    }

    /// Adds a request's rows; returns the pending rows when a size limit is reached.
    pub fn push(&mut self, submission: Submission, now: Instant) -> Option<Pending> {
        let Submission {
            batch,
            receipt,
            permit,
            memory,
        } = submission;
        drop(permit);
        self.pending.memory.extend(memory);
        self.oldest.get_or_insert(now);
        self.pending.rows += batch.num_rows();
        self.pending.bytes += batch.get_array_memory_size();
        self.pending.parts.push((receipt, batch));
        if self.pending.rows >= self.limits.max_rows || self.pending.bytes >= self.limits.max_bytes
        {
            return Some(self.take());
        }
        None
    }

    /// When the oldest pending row must be flushed, if any row is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.limits.max_age)
    }

    /// The pending rows if their age limit has passed.
    pub fn take_if_due(&mut self, now: Instant) -> Option<Pending> {
        match self.deadline() {
            Some(deadline) if now >= deadline => Some(self.take()),
            _ => None,
        }
    }

    /// Everything pending (at shutdown).
    pub fn take(&mut self) -> Pending {
        let since = self.oldest.take();
        Pending {
            since,
            ..std::mem::take(&mut self.pending)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.parts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, UInt32Array};

    use super::*;

    fn submission(rows: u32) -> (Submission, oneshot::Receiver<Delivery>) {
        let column: ArrayRef = Arc::new(UInt32Array::from_iter_values(0..rows));
        let batch = RecordBatch::try_from_iter([("n", column)]).unwrap();
        let (done, receiver) = oneshot::channel();
        let submission = Submission {
            batch,
            receipt: Receipt::new(1, None, Some(rows.into()), Some(done)),
            permit: None,
            memory: None,
        };
        (submission, receiver)
    }

    #[test]
    fn flushes_on_rows_bytes_and_age() {
        let limits = FlushLimits {
            max_rows: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
        };
        let mut accumulator = Accumulator::new(limits);
        let start = Instant::now();
        assert!(accumulator.push(submission(6).0, start).is_none());
        let flushed = accumulator
            .push(submission(6).0, start)
            .expect("12 rows ≥ 10");
        assert_eq!((flushed.rows, flushed.parts.len()), (12, 2));
        let spool_ids: Vec<_> = flushed.parts.iter().map(|(r, _)| r.spool_id).collect();
        assert_eq!(spool_ids, [Some(6), Some(6)]);
        assert!(accumulator.is_empty() && accumulator.deadline().is_none());

        assert!(accumulator.push(submission(1).0, start).is_none());
        assert_eq!(accumulator.deadline(), Some(start + Duration::from_secs(1)));
        assert!(
            accumulator
                .take_if_due(start + Duration::from_millis(999))
                .is_none()
        );
        assert_eq!(
            accumulator
                .take_if_due(start + Duration::from_secs(1))
                .unwrap()
                .rows,
            1
        );

        let mut small = Accumulator::new(FlushLimits {
            max_bytes: 64,
            ..limits
        });
        assert!(
            small.push(submission(100).0, start).is_some(),
            "400 bytes ≥ 64"
        );
    }
}

#[cfg(test)]
mod receipt_tests {
    use super::*;

    #[test]
    fn a_receipt_completes_when_every_part_is_delivered() {
        let (done, mut receiver) = oneshot::channel();
        let receipt = Receipt::new(2, None, Some(7), Some(done));
        let ok: Delivery = Ok(Arc::from("insert-1"));
        assert!(!receipt.part_delivered(&ok));
        assert!(receiver.try_recv().is_err(), "one part is still on its way");
        assert!(receipt.part_delivered(&ok));
        assert_eq!(receiver.try_recv().unwrap().unwrap().as_ref(), "insert-1");

        let (done, mut receiver) = oneshot::channel();
        let receipt = Receipt::new(2, None, Some(8), Some(done));
        let failed: Delivery = Err(SinkError::Retryable("down".into()));
        assert!(!receipt.part_delivered(&failed));
        assert!(
            receiver.try_recv().unwrap().is_err(),
            "the waiter hears of the failure at once"
        );
        assert!(
            !receipt.part_delivered(&ok),
            "a receipt with a failed part never completes"
        );
    }
}
