//! Log output: `tracing` events as text lines or JSON objects (`log.format`), filtered by
//! `log.level` (or `RUST_LOG`), written to standard error by a thread of their own: a request
//! thread formats its line and hands it over, so a slow reader of standard error (a full pipe,
//! a stalled journal) delays log lines, never requests. Lines that find
//! [`BUFFERED_LINES`] waiting are dropped and counted (`sluice_log_lines_dropped_total`).
//! Colours only when standard error is a terminal.
//!
//! The events an operator follows a batch by: `request answered` (request id, batch id,
//! principal, status, rows; with `ingest.ack = "clickhouse"` also the insert ids), `request
//! delivered` (request id and the insert ids that carried its rows, once ClickHouse confirmed
//! them all). Every insert's id is its ClickHouse `query_id`, so `system.query_log` finds it.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
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

/// Log lines waiting for the writer thread at most (a few MiB); more are dropped.
pub const BUFFERED_LINES: usize = 16_384;

/// Lines dropped because [`BUFFERED_LINES`] were waiting, once [`init_stderr`] ran.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the global subscriber writing to standard error through its own thread (see the
/// module doc). Keep the guard until the process ends: dropping it writes what is left.
pub fn init_stderr(config: &LogConfig) -> Result<WorkerGuard, String> {
    let (writer, guard) = writer_thread(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    init(config, writer, std::io::stderr().is_terminal())?;
    Ok(guard)
}

/// Log lines dropped so far because the writer thread fell behind.
pub fn dropped_lines() -> u64 {
    DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// A writer that hands lines to a thread writing them to `out`, buffered: the thread writes
/// what has queued up, then flushes, so a burst of lines costs few writes.
fn writer_thread<W: Write + Send + 'static>(out: W) -> (NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(out))
}

/// Installs the global subscriber writing to `writer` (tests capture it; `sluice serve` uses
/// [`init_stderr`]), with ANSI colours if `ansi`. Fails when one is installed already.
pub fn init<W>(config: &LogConfig, writer: W, ansi: bool) -> Result<(), String>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(config)?)
        .with_ansi(ansi)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer whose bytes the test reads; `gate` held blocks every write.
    #[derive(Clone, Default)]
    struct Shared {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn subscriber(writer: NonBlocking) -> impl tracing::Subscriber {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(writer)
            .finish()
    }

    #[test]
    fn the_writer_thread_writes_every_line_in_order_by_the_time_its_guard_is_dropped() {
        let out = Shared::default();
        let (writer, guard) = writer_thread(out.clone());
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            for n in 0..1000 {
                tracing::info!(n, "request answered");
            }
        });
        drop(guard);
        let text = String::from_utf8(out.bytes.lock().unwrap().clone()).unwrap();
        let numbers: Vec<&str> = text
            .lines()
            .map(|line| line.rsplit("n=").next().unwrap())
            .collect();
        let expected: Vec<String> = (0..1000).map(|n| n.to_string()).collect();
        assert_eq!(numbers, expected);
        assert!(!text.contains('\x1b'), "no colours: {}", &text[..80]);
        assert_eq!(writer.error_counter().dropped_lines(), 0);
    }

    #[test]
    fn lines_beyond_the_buffer_are_dropped_and_counted_while_the_output_is_stuck() {
        let out = Shared::default();
        let (writer, guard) = writer_thread(out.clone());
        let stuck = out.gate.lock().unwrap();
        let lines = BUFFERED_LINES + 500;
        tracing::subscriber::with_default(subscriber(writer.clone()), || {
            for n in 0..lines {
                tracing::info!(n, "request answered");
            }
        });
        // The queue holds BUFFERED_LINES; the stuck thread holds what its 8 KiB buffer took in
        // before the first write (a line here is ~90 bytes).
        let dropped = writer.error_counter().dropped_lines();
        assert!(
            (300..=500).contains(&dropped),
            "{dropped} dropped of {lines}"
        );
        drop(stuck);
        drop(guard);
        let written = String::from_utf8(out.bytes.lock().unwrap().clone())
            .unwrap()
            .lines()
            .count();
        assert_eq!(written + dropped, lines);
    }
}
