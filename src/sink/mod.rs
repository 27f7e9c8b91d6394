//! Sink: deliver encoded inserts to ClickHouse.
//!
//! The [`Sink`] trait is the boundary the pipeline talks to; [`clickhouse::ClickHouseSink`] is the
//! real one (HTTP, Native format, ClickHouse block framing), [`MemorySink`] keeps inserts in
//! memory for unit tests and benches. Retry decisions live with delivery: an error says whether
//! the same insert may be tried again.

mod breaker;
pub mod clickhouse;
pub mod shard;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use shard::ShardMap;

/// Where one table's inserts go, and what they contain.
#[derive(Debug)]
pub struct TableTarget {
    pub database: String,
    pub table: String,
    /// `INSERT INTO db.table (c1, c2, …) FORMAT Native`.
    pub insert_sql: String,
    /// The principal and batch-id audit columns, when the table has both: they identify a
    /// stored batch (a principal's batch id is unique within the dedup window), so sluice can
    /// ask ClickHouse whether an insert of unknown outcome, or a spooled batch, is already in.
    pub batch_key_columns: Option<(String, String)>,
    /// Where stored rows are counted per batch key, and how: the table itself with `count()`,
    /// or a rollup's flush log with `sum(rows)`.
    pub probe_table: String,
    pub probe_rows: String,
}

impl TableTarget {
    pub fn new<'a>(
        database: &str,
        table: &str,
        columns: impl Iterator<Item = &'a str>,
        batch_key_columns: Option<(String, String)>,
    ) -> Self {
        let columns: Vec<String> = columns.map(|c| format!("`{c}`")).collect();
        TableTarget {
            database: database.to_string(),
            table: table.to_string(),
            insert_sql: format!(
                "INSERT INTO {database}.{table} ({}) FORMAT Native",
                columns.join(", ")
            ),
            batch_key_columns,
            probe_table: table.to_string(),
            probe_rows: "count()".to_string(),
        }
    }

    /// Counts stored rows in `table` (keyed by `principal` and `batch_id`) as `rows_expression`.
    pub fn with_probe(mut self, table: &str, rows_expression: &str) -> Self {
        self.batch_key_columns = Some(("principal".to_string(), "batch_id".to_string()));
        self.probe_table = table.to_string();
        self.probe_rows = rows_expression.to_string();
        self
    }
}

/// A stored batch: (principal, batch id).
pub type BatchKey = (String, String);

/// One encoded insert.
#[derive(Debug, Clone)]
pub struct InsertRequest {
    pub target: Arc<TableTarget>,
    /// Native blocks, wrapped in ClickHouse block framing when `framed`.
    pub body: Bytes,
    /// Whether `body` carries ClickHouse compressed-block framing (`decompress=1`).
    pub framed: bool,
    pub rows: usize,
    /// Unique id of this insert, sent as ClickHouse `query_id`.
    pub insert_id: Arc<str>,
    /// The shard whose local table takes the rows (index into [`Sink::shard_map`]).
    pub shard: usize,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Worth retrying, and the insert may have been applied: the connection broke or timed out
    /// after the body went out, server overload, 5xx without a permanent code.
    #[error("clickhouse unavailable: {0}")]
    Retryable(String),
    /// Worth retrying, and nothing was applied: the connection could not be opened, or every
    /// endpoint's circuit breaker is open.
    #[error("clickhouse unreachable: {0}")]
    Unreachable(String),
    /// The same insert would fail again: type mismatch, unknown table, no rights.
    #[error("clickhouse refused the insert (code {code}): {message}")]
    Permanent { code: u32, message: String },
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_) | SinkError::Unreachable(_))
    }

    /// A short label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            SinkError::Retryable(_) => "retryable",
            SinkError::Unreachable(_) => "unreachable",
            SinkError::Permanent { .. } => "permanent",
        }
    }
}

#[async_trait::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers one insert to the shard it names.
    async fn insert(&self, request: &InsertRequest) -> Result<(), SinkError>;

    /// The shards inserts go to, by batch (one shard unless the sink writes to a cluster).
    fn shard_map(&self) -> ShardMap {
        ShardMap::single()
    }

    /// Rows already stored per batch (see [`TableTarget::batch_key_columns`]; empty when the
    /// table has no such columns): how an insert whose outcome is unknown, and spool replay
    /// after a crash, find batches that ClickHouse already has. On a cluster: summed over every
    /// shard, so that a batch routed elsewhere before (another shard count) is found too.
    async fn stored_rows(
        &self,
        target: &TableTarget,
        keys: &[BatchKey],
    ) -> Result<HashMap<BatchKey, u64>, SinkError>;
}

/// Keeps every insert in memory; can be told to fail.
#[derive(Default)]
pub struct MemorySink {
    pub inserts: Mutex<Vec<InsertRequest>>,
    failure: Mutex<Option<SinkError>>,
    next_failures: Mutex<std::collections::VecDeque<SinkError>>,
}

impl MemorySink {
    /// Makes every following insert fail with `error` (None: succeed again).
    pub fn fail_with(&self, error: Option<SinkError>) {
        *self.failure.lock().unwrap() = error;
    }

    /// Makes the next inserts fail with `errors`, one each, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = SinkError>) {
        self.next_failures.lock().unwrap().extend(errors);
    }

    pub fn rows(&self) -> usize {
        self.inserts.lock().unwrap().iter().map(|i| i.rows).sum()
    }
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn insert(&self, request: &InsertRequest) -> Result<(), SinkError> {
        if let Some(error) = self.next_failures.lock().unwrap().pop_front() {
            return Err(error);
        }
        if let Some(error) = self.failure.lock().unwrap().clone() {
            return Err(error);
        }
        self.inserts.lock().unwrap().push(request.clone());
        Ok(())
    }

    async fn stored_rows(
        &self,
        _target: &TableTarget,
        _keys: &[BatchKey],
    ) -> Result<HashMap<BatchKey, u64>, SinkError> {
        Ok(HashMap::new())
    }
}
