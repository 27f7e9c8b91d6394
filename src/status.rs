//! Live figures for the admin status page (`/status`, `/status.json`): totals since start,
//! ClickHouse health, spool lag and the last errors. The Prometheus metrics say the same things
//! per label; this is the small in-process summary an operator reads in a browser.
//!
//! Updated once per request and once per insert (never per row), with relaxed atomics; the
//! list of last errors is a short bounded ring (`admin.status_errors`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::spool::Spool;
use crate::validate::RejectReason;

/// Shared by the ingest handler, the sink dispatcher and the admin listener.
pub struct Status {
    started: Instant,
    requests: AtomicU64,
    refused_requests: AtomicU64,
    rows_accepted: AtomicU64,
    rows_rejected: [AtomicU64; RejectReason::ALL.len()],
    bytes_in: AtomicU64,
    inserts_ok: AtomicU64,
    inserts_failed: AtomicU64,
    rows_inserted: AtomicU64,
    /// Whether the last ClickHouse probe succeeded.
    pub clickhouse_ready: AtomicBool,
    last_errors: Mutex<VecDeque<LastError>>,
    max_errors: usize,
}

/// One remembered error.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// Unix seconds.
    pub at: u64,
    /// `request` (an answer other than 200) or `insert` (a failed ClickHouse insert).
    pub kind: &'static str,
    pub message: String,
}

/// What `/status.json` answers.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub uptime_secs: f64,
    pub requests: u64,
    pub refused_requests: u64,
    pub rows_accepted: u64,
    pub rows_rejected: u64,
    pub rejected_by_reason: std::collections::BTreeMap<&'static str, u64>,
    pub bytes_in: u64,
    pub inserts_ok: u64,
    pub inserts_failed: u64,
    pub rows_inserted: u64,
    pub clickhouse_up: bool,
    pub spool: Option<SpoolSnapshot>,
    pub last_errors: Vec<LastError>,
}

#[derive(Debug, Serialize)]
pub struct SpoolSnapshot {
    pub bytes: u64,
    pub segments: usize,
    pub unconfirmed_records: usize,
}

impl Status {
    /// `max_errors`: how many of the last errors are kept.
    pub fn new(max_errors: usize) -> Status {
        Status {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
            rows_accepted: AtomicU64::new(0),
            rows_rejected: Default::default(),
            bytes_in: AtomicU64::new(0),
            inserts_ok: AtomicU64::new(0),
            inserts_failed: AtomicU64::new(0),
            rows_inserted: AtomicU64::new(0),
            clickhouse_ready: AtomicBool::new(false),
            last_errors: Mutex::new(VecDeque::with_capacity(max_errors)),
            max_errors,
        }
    }

    /// The rows of a request: accepted, rejected per reason, and its body bytes as sent.
    pub fn rows(
        &self,
        accepted: u64,
        rejected_by_reason: &[usize; RejectReason::ALL.len()],
        bytes_in: u64,
    ) {
        self.rows_accepted.fetch_add(accepted, Ordering::Relaxed);
        for (total, count) in self.rows_rejected.iter().zip(rejected_by_reason) {
            total.fetch_add(*count as u64, Ordering::Relaxed);
        }
        self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    }

    /// An answered request; `refusal` describes an answer other than 200.
    pub fn answered(&self, refusal: Option<String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(message) = refusal {
            self.refused_requests.fetch_add(1, Ordering::Relaxed);
            self.error("request", message);
        }
    }

    /// One insert attempt.
    pub fn insert(&self, rows: usize, error: Option<&str>) {
        match error {
            None => {
                self.inserts_ok.fetch_add(1, Ordering::Relaxed);
                self.rows_inserted.fetch_add(rows as u64, Ordering::Relaxed);
            }
            Some(message) => {
                self.inserts_failed.fetch_add(1, Ordering::Relaxed);
                self.error("insert", message.to_string());
            }
        }
    }

    fn error(&self, kind: &'static str, message: String) {
        if self.max_errors == 0 {
            return;
        }
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut errors = self.last_errors.lock().unwrap();
        if errors.len() == self.max_errors {
            errors.pop_front();
        }
        errors.push_back(LastError { at, kind, message });
    }

    pub fn snapshot(&self, spool: Option<&Spool>) -> Snapshot {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let rejected_by_reason: std::collections::BTreeMap<_, _> = RejectReason::ALL
            .iter()
            .zip(&self.rows_rejected)
            .map(|(reason, n)| (reason.as_str(), load(n)))
            .collect();
        Snapshot {
            uptime_secs: self.started.elapsed().as_secs_f64(),
            requests: load(&self.requests),
            refused_requests: load(&self.refused_requests),
            rows_accepted: load(&self.rows_accepted),
            rows_rejected: rejected_by_reason.values().sum(),
            rejected_by_reason,
            bytes_in: load(&self.bytes_in),
            inserts_ok: load(&self.inserts_ok),
            inserts_failed: load(&self.inserts_failed),
            rows_inserted: load(&self.rows_inserted),
            clickhouse_up: self.clickhouse_ready.load(Ordering::Relaxed),
            spool: spool.map(|spool| {
                let stats = spool.stats();
                SpoolSnapshot {
                    bytes: stats.bytes,
                    segments: stats.segments,
                    unconfirmed_records: stats.unconfirmed_records,
                }
            }),
            // Newest first.
            last_errors: self
                .last_errors
                .lock()
                .unwrap()
                .iter()
                .rev()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_the_error_ring_is_bounded() {
        let status = Status::new(2);
        status.rows(3, &[1, 0, 2, 0, 0], 100);
        status.answered(None);
        status.rows(1, &[0, 0, 0, 0, 0], 10);
        status.answered(None);
        status.answered(Some("404 unknown_stream".to_string()));
        status.insert(4, None);
        status.insert(4, Some("Code: 60, unknown table"));
        status.insert(4, Some("Code: 81, unknown database"));
        let snapshot = status.snapshot(None);
        assert_eq!(snapshot.requests, 3);
        assert_eq!(snapshot.refused_requests, 1);
        assert_eq!(snapshot.rows_accepted, 4);
        assert_eq!(snapshot.rows_rejected, 3);
        assert_eq!(snapshot.rejected_by_reason["malformed"], 1);
        assert_eq!(snapshot.rejected_by_reason["type"], 2);
        assert_eq!(snapshot.bytes_in, 110);
        assert_eq!((snapshot.inserts_ok, snapshot.inserts_failed), (1, 2));
        assert_eq!(snapshot.rows_inserted, 4);
        let messages: Vec<_> = snapshot.last_errors.iter().map(|e| &e.message).collect();
        assert_eq!(
            messages,
            ["Code: 81, unknown database", "Code: 60, unknown table"]
        );
    }
}
