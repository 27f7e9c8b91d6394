//! Delivery to ClickHouse over HTTP with the `clickhouse` crate: one `INSERT … FORMAT Native`
//! per request, the body sent as is (already framed and compressed by the encoder, announced
//! with `decompress=1`), the insert id as `query_id`, and `log_queries=1` so that
//! `system.query_log` records it (off by default on 18.16).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::breaker::Breaker;
use super::{BatchKey, InsertRequest, Sink, SinkError, TableTarget};
use crate::config::ClickHouseConfig;
use crate::schema::ddl::ServerVersion;

/// Inserts go to their shard (`clickhouse.shards`, or one shard of `clickhouse.url` then
/// `clickhouse.failover_urls`), there to the first replica whose breaker lets them through.
pub struct ClickHouseSink {
    /// Each shard's replicas, in order.
    shards: Vec<Vec<Endpoint>>,
    shard_map: super::ShardMap,
    timeout: Duration,
    /// Send the insert id as `insert_deduplication_token` (servers 22.2+), so that a retry of
    /// an insert whose answer was lost is stored once by the server itself.
    deduplication_token: bool,
}

struct Endpoint {
    url: String,
    client: clickhouse::Client,
    breaker: Mutex<Breaker>,
}

impl ClickHouseSink {
    pub fn new(config: &ClickHouseConfig, server: Option<ServerVersion>) -> ClickHouseSink {
        let endpoint = |url: String| Endpoint {
            client: client(&url, &config.user, &config.password),
            url,
            breaker: Mutex::new(Breaker::default()),
        };
        let shards: Vec<Vec<Endpoint>> = config
            .shard_urls()
            .into_iter()
            .map(|urls| urls.into_iter().map(endpoint).collect())
            .collect();
        let shard_map = if config.shards.is_empty() {
            super::ShardMap::single()
        } else {
            super::ShardMap::weighted(config.shards.iter().map(|s| s.weight))
        };
        ClickHouseSink {
            shards,
            shard_map,
            timeout: Duration::from_secs(config.insert_timeout_secs),
            deduplication_token: server.is_some_and(ServerVersion::supports_deduplication_token),
        }
    }

    /// The replica of `shard` to use now, or when the first breaker lets a trial through.
    fn pick(&self, shard: usize) -> Result<&Endpoint, SinkError> {
        let now = Instant::now();
        let endpoints = self.shards.get(shard).ok_or_else(|| SinkError::Permanent {
            code: 0,
            message: format!("no shard {shard}: {} configured", self.shards.len()),
        })?;
        if let Some(endpoint) = endpoints
            .iter()
            .find(|e| e.breaker.lock().unwrap().allow(now))
        {
            return Ok(endpoint);
        }
        let next = endpoints
            .iter()
            .filter_map(|e| e.breaker.lock().unwrap().retry_at())
            .min()
            .map(|at| at.saturating_duration_since(now));
        let of_shard = if self.shards.len() > 1 {
            format!(" of shard {}", shard + 1)
        } else {
            String::new()
        };
        Err(SinkError::Unreachable(format!(
            "every clickhouse endpoint{of_shard} is failing; next trial in {:.1} s",
            next.unwrap_or_default().as_secs_f64()
        )))
    }

    fn record(&self, endpoint: &Endpoint, outcome: &Result<(), SinkError>) {
        let mut breaker = endpoint.breaker.lock().unwrap();
        let up = match outcome {
            Ok(()) | Err(SinkError::Permanent { .. }) => {
                breaker.success();
                true
            }
            Err(SinkError::Retryable(_) | SinkError::Unreachable(_)) => {
                breaker.failure(Instant::now());
                false
            }
        };
        metrics::gauge!("sluice_clickhouse_endpoint_up", "endpoint" => endpoint.url.clone())
            .set(if up { 1.0 } else { 0.0 });
    }

    async fn insert_into(
        &self,
        endpoint: &Endpoint,
        request: &InsertRequest,
    ) -> Result<(), SinkError> {
        let mut insert = endpoint
            .client
            .insert_formatted_with(request.target.insert_sql.clone())
            .with_setting("query_id", request.insert_id.to_string())
            .with_setting("log_queries", "1")
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        if request.framed {
            insert = insert.with_setting("decompress", "1");
        }
        if self.deduplication_token {
            insert =
                insert.with_setting("insert_deduplication_token", request.insert_id.to_string());
        }
        insert.send(request.body.clone()).await.map_err(classify)?;
        insert.end().await.map_err(classify)
    }
}

/// A client for `url` with credentials; schema validation off (18.16 lacks
/// RowBinaryWithNamesAndTypes).
pub fn client(url: &str, user: &str, password: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_user(user)
        .with_password(password)
        .with_validation(false)
}

#[async_trait::async_trait]
impl Sink for ClickHouseSink {
    async fn insert(&self, request: &InsertRequest) -> Result<(), SinkError> {
        loop {
            let endpoint = self.pick(request.shard)?;
            let outcome = self.insert_into(endpoint, request).await;
            self.record(endpoint, &outcome);
            match outcome {
                // Nothing was sent: the next endpoint may take it at once.
                Err(SinkError::Unreachable(message)) => {
                    tracing::warn!(endpoint = %endpoint.url, %message, "clickhouse endpoint unreachable");
                    continue;
                }
                // Anything else (including an answer lost after the body went out) goes back to
                // delivery, which asks ClickHouse before sending again.
                outcome => return outcome,
            }
        }
    }

    async fn stored_rows(
        &self,
        target: &TableTarget,
        keys: &[BatchKey],
    ) -> Result<HashMap<BatchKey, u64>, SinkError> {
        let Some((principal, batch_id)) = &target.batch_key_columns else {
            return Ok(HashMap::new());
        };
        let mut found: HashMap<BatchKey, u64> = HashMap::new();
        for shard in 0..self.shards.len() {
            let endpoint = self.pick(shard)?;
            // Bounded like an insert: a probe that hangs must not hold its insert for good.
            let outcome = tokio::time::timeout(
                self.timeout,
                query_stored_rows(endpoint, target, principal, batch_id, keys),
            )
            .await
            .unwrap_or_else(|_| {
                Err(SinkError::Retryable(format!(
                    "no answer to the stored-rows probe within {} s",
                    self.timeout.as_secs()
                )))
            });
            // A probe is a trial like any request: its outcome feeds the endpoint's breaker.
            self.record(
                endpoint,
                &outcome.as_ref().map(|_| ()).map_err(Clone::clone),
            );
            for (key, rows) in outcome? {
                *found.entry(key).or_default() += rows;
            }
        }
        Ok(found)
    }

    fn shard_map(&self) -> super::ShardMap {
        self.shard_map.clone()
    }
}

/// Rows per (principal, batch id) in the target table.
async fn query_stored_rows(
    endpoint: &Endpoint,
    target: &TableTarget,
    principal: &str,
    batch_id: &str,
    keys: &[BatchKey],
) -> Result<HashMap<BatchKey, u64>, SinkError> {
    let mut found = HashMap::new();
    for chunk in keys.chunks(500) {
        // 18.16 takes `IN ((…), (…))`, not an array: one placeholder pair per key.
        let placeholders = vec!["(?, ?)"; chunk.len()].join(", ");
        let mut query = endpoint.client.query(&format!(
            "SELECT `{principal}`, `{batch_id}`, toUInt64({}) FROM {}.{} \
             WHERE (`{principal}`, `{batch_id}`) IN ({placeholders}) GROUP BY `{principal}`, `{batch_id}`",
            target.probe_rows, target.database, target.probe_table
        ));
        for (p, b) in chunk {
            query = query.bind(p.as_str()).bind(b.as_str());
        }
        let rows: Vec<(String, String, u64)> = query.fetch_all().await.map_err(classify)?;
        found.extend(rows.into_iter().map(|(p, b, n)| ((p, b), n)));
    }
    Ok(found)
}

/// A connection that could not be opened: the insert never left.
fn is_connect_error(message: &str) -> bool {
    message.contains("(Connect)")
}

/// Error codes after which the same insert will fail again.
const PERMANENT_CODES: &[(u32, &str)] = &[
    (16, "no such column in table"),
    (27, "cannot parse input"),
    (33, "cannot read all data"),
    (40, "checksum doesn't match"),
    (44, "illegal column"),
    (53, "type mismatch"),
    (60, "unknown table"),
    (62, "syntax error"),
    (81, "unknown database"),
    (117, "unknown field / incorrect data"),
    (164, "readonly user"),
    (192, "unknown user"),
    (193, "wrong password"),
    (368, "bad cast / LowCardinality mismatch"),
    (497, "access denied"),
    (516, "authentication failed"),
];

/// Classifies a client error by ClickHouse's `Code: N` (not by HTTP status alone).
pub fn classify(error: clickhouse::error::Error) -> SinkError {
    match error {
        clickhouse::error::Error::BadResponse(message) => classify_message(&message),
        other => {
            let message = other.to_string();
            if is_connect_error(&message) {
                SinkError::Unreachable(message)
            } else {
                SinkError::Retryable(message)
            }
        }
    }
}

pub fn classify_message(message: &str) -> SinkError {
    let message = message.trim().to_string();
    match error_code(&message) {
        Some(code) if PERMANENT_CODES.iter().any(|(c, _)| *c == code) => {
            SinkError::Permanent { code, message }
        }
        _ => SinkError::Retryable(message),
    }
}

/// The `N` of `Code: N` in a ClickHouse error text.
pub fn error_code(message: &str) -> Option<u32> {
    let start = message.find("Code: ")? + "Code: ".len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code() {
        let unknown_table = "Code: 60, e.displayText() = DB::Exception: Table db.t doesn't exist., e.what() = DB::Exception";
        assert_eq!(error_code(unknown_table), Some(60));
        assert!(matches!(
            classify_message(unknown_table),
            SinkError::Permanent { code: 60, .. }
        ));
        let too_many_parts = "Code: 252, e.displayText() = DB::Exception: Too many parts";
        assert!(classify_message(too_many_parts).is_retryable());
        assert!(classify_message("connection reset").is_retryable());
    }
}
