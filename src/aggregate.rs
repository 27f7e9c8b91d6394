//! Aggregate: gather the validated batches of one table until a flush is due.
//!
//! Requests hand their Arrow batches over a bounded crossbeam channel to the table's accumulator
//! thread (no lock on the request path; a full channel is back-pressure, answered 503). The
//! accumulator keeps raw rows and decides when to flush: on rows, bytes or the age of the oldest
//! row, whichever comes first. Rollups declared in schemas fold in here as well.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::sink::SinkError;
use crate::spool::RecordId;

/// What a request learns once its rows are delivered: the insert id that carried them.
pub type Delivery = Result<std::sync::Arc<str>, SinkError>;

/// One request's validated rows on their way to the accumulator.
pub struct Submission {
    pub batch: RecordBatch,
    /// The spool record the rows were derived from, confirmed once ClickHouse has them.
    pub spool_id: Option<RecordId>,
    /// Told when the rows are confirmed by ClickHouse (or finally refused), when someone waits.
    pub done: Option<oneshot::Sender<Delivery>>,
    /// A place in the stream's queue, given back when the accumulator takes the rows.
    pub permit: Option<OwnedSemaphorePermit>,
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
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    pub bytes: usize,
    pub spool_ids: Vec<RecordId>,
    pub waiters: Vec<oneshot::Sender<Delivery>>,
    /// Submissions taken in (also the empty ones).
    pub submissions: usize,
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
            spool_id,
            done,
            permit,
        } = submission;
        drop(permit);
        self.oldest.get_or_insert(now);
        self.pending.submissions += 1;
        self.pending.spool_ids.extend(spool_id);
        self.pending.rows += batch.num_rows();
        self.pending.bytes += batch.get_array_memory_size();
        if batch.num_rows() > 0 {
            self.pending.batches.push(batch);
        }
        self.pending.waiters.extend(done);
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
        self.oldest = None;
        std::mem::take(&mut self.pending)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.submissions == 0
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
            spool_id: Some(rows.into()),
            done: Some(done),
            permit: None,
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
        assert_eq!(
            (flushed.rows, flushed.batches.len(), flushed.waiters.len()),
            (12, 2, 2)
        );
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
