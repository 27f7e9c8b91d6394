//! Log output: `tracing` events as text lines or JSON objects (`log.format`), filtered by
//! `log.level` (or `RUST_LOG`), written to standard error.
//!
//! The events an operator follows a batch by: `request answered` (request id, batch id,
//! principal, status, rows; with `ingest.ack = "clickhouse"` also the insert ids), `request
//! delivered` (request id and the insert ids that carried its rows, once ClickHouse confirmed
//! them all). Every insert's id is its ClickHouse `query_id`, so `system.query_log` finds it.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// The filter of `log.level`, unless `RUST_LOG` is set.
pub fn filter(config: &LogConfig) -> Result<EnvFilter, String> {
    match EnvFilter::try_from_default_env() {
        Ok(filter) => Ok(filter),
        Err(_) => level_filter(config),
    }
}

/// The filter `log.level` names (default `info`); the error names the key.
pub fn level_filter(config: &LogConfig) -> Result<EnvFilter, String> {
    EnvFilter::try_new(config.level.as_deref().unwrap_or("info"))
        .map_err(|err| format!("log.level: {err}"))
}

/// Installs the global subscriber writing to `writer` (standard error in `sluice serve`; tests
/// capture it). Fails when one is installed already.
pub fn init<W>(config: &LogConfig, writer: W) -> Result<(), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(config)?)
        .with_writer(writer);
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|err| format!("cannot install the logger: {err}"))
}
