//! Generate batches and post them to `POST /v1/streams/{stream}`.
//!
//! Batches are generated in order by one seeded [`Generator`] on a separate thread (so their bytes
//! do not depend on `concurrency`) and posted by `concurrency` workers. No retries: this is a
//! measuring tool, and every non-2xx answer or transport error counts as a failed batch.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::generator::{
    Encoding, Format, Generator, GeneratorConfig, compress, encode_access, encode_events,
};

/// Header carrying the batch id.
pub const BATCH_ID_HEADER: &str = "X-Sluice-Batch-Id";

/// Which stream's rows to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    EdgeAccess,
    EdgeEvents,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::EdgeAccess => "edge_access",
            Stream::EdgeEvents => "edge_events",
        }
    }

    /// The stream a `…/v1/streams/{stream}` URL names, when it is one the generator knows.
    pub fn from_url(url: &str) -> Option<Stream> {
        let path = url.split(['?', '#']).next()?;
        path.trim_end_matches('/').rsplit('/').next()?.parse().ok()
    }
}

impl FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "edge_access" => Ok(Stream::EdgeAccess),
            "edge_events" => Ok(Stream::EdgeEvents),
            other => Err(format!(
                "unknown stream {other:?}: use edge_access or edge_events"
            )),
        }
    }
}

/// What to send and how.
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// Full URL, e.g. `https://127.0.0.1:8443/v1/streams/edge_access`.
    pub url: String,
    pub stream: Stream,
    /// Total rows.
    pub rows: usize,
    /// Rows per batch (the last batch may be smaller).
    pub batch_rows: usize,
    pub format: Format,
    pub encoding: Encoding,
    pub seed: u64,
    /// Batches in flight at once.
    pub concurrency: usize,
    pub generator: GeneratorConfig,
    /// Batch ids are `{prefix}-{index:06}` (index from 0).
    pub batch_id_prefix: String,
    /// Extra request headers (e.g. the one custom header a DataStream 2 stream may set).
    pub headers: Vec<(String, String)>,
}

impl SendOptions {
    /// Defaults: 1000 rows in batches of 500, NDJSON, gzip, seed 1, concurrency 4, the fixed
    /// default generator config, and a batch-id prefix unique to this process run.
    pub fn new(url: impl Into<String>, stream: Stream) -> Self {
        SendOptions {
            url: url.into(),
            stream,
            rows: 1000,
            batch_rows: 500,
            format: Format::Ndjson,
            encoding: Encoding::Gzip,
            seed: 1,
            concurrency: 4,
            generator: GeneratorConfig::default(),
            batch_id_prefix: unique_batch_prefix(1),
            headers: Vec::new(),
        }
    }
}

/// `lt-{seed}-{unix ms hex}{counter}`: distinct across runs and calls, so the server's dedup
/// does not treat a rerun with the same seed as a retry.
pub fn unique_batch_prefix(seed: u64) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "lt-{seed}-{ms:x}{:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// One encoded, compressed batch ready to post.
#[derive(Clone, Debug)]
pub struct Batch {
    pub index: usize,
    pub id: String,
    pub rows: usize,
    /// The body as sent (compressed per the encoding).
    pub body: Vec<u8>,
}

/// The batches `opts` describes, generated lazily and deterministically (same options → same
/// bodies).
pub fn batches(opts: &SendOptions) -> impl Iterator<Item = Batch> + Send + 'static {
    let mut generator = Generator::with_config(opts.seed, opts.generator.clone());
    let (stream, format, encoding) = (opts.stream, opts.format, opts.encoding);
    let (total, per_batch) = (opts.rows, opts.batch_rows.max(1));
    let prefix = opts.batch_id_prefix.clone();
    let count = total.div_ceil(per_batch);
    (0..count).map(move |index| {
        let rows = per_batch.min(total - index * per_batch);
        let body = match stream {
            Stream::EdgeAccess => encode_access(&generator.edge_access(rows), format),
            Stream::EdgeEvents => encode_events(&generator.edge_events(rows), format),
        };
        Batch {
            index,
            id: format!("{prefix}-{index:06}"),
            rows,
            body: compress(&body, encoding),
        }
    })
}

/// The JSON answer of sluice (the fields this tool reads).
#[derive(Debug, Default, Deserialize)]
struct Answer {
    accepted: Option<u64>,
    rejected: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default)]
    errors: Vec<serde_json::Value>,
    code: Option<String>,
    message: Option<String>,
}

/// What happened to the batches of one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SendReport {
    pub batches: usize,
    pub failed_batches: usize,
    /// HTTP status → batches answered with it.
    pub statuses: BTreeMap<u16, usize>,
    /// Batches that got no HTTP answer (connect, TLS, timeout, …).
    pub transport_errors: usize,
    pub rows_sent: u64,
    pub rows_accepted: u64,
    pub rows_rejected: u64,
    /// Batches answered `"duplicate": true`.
    pub duplicates: usize,
    /// Body bytes as sent (after compression).
    pub bytes_sent: u64,
    pub elapsed: Duration,
    /// The first few problems (failed batches, row rejects), for a human.
    pub first_errors: Vec<String>,
}

const MAX_REPORTED_ERRORS: usize = 5;

impl SendReport {
    /// Every batch got a 2xx answer.
    pub fn ok(&self) -> bool {
        self.failed_batches == 0
    }

    /// Rows sent per second of wall time.
    pub fn rows_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rows_sent as f64 / secs
        } else {
            0.0
        }
    }

    fn note(&mut self, message: String) {
        if self.first_errors.len() < MAX_REPORTED_ERRORS {
            self.first_errors.push(message);
        }
    }

    fn merge(&mut self, other: SendReport) {
        self.batches += other.batches;
        self.failed_batches += other.failed_batches;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.rows_sent += other.rows_sent;
        self.rows_accepted += other.rows_accepted;
        self.rows_rejected += other.rows_rejected;
        self.duplicates += other.duplicates;
        self.bytes_sent += other.bytes_sent;
        for e in other.first_errors {
            self.note(e);
        }
    }
}

impl fmt::Display for SendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "batches: {} ({} failed), rows sent: {}, bytes sent: {}",
            self.batches, self.failed_batches, self.rows_sent, self.bytes_sent
        )?;
        for (status, n) in &self.statuses {
            writeln!(f, "  HTTP {status}: {n}")?;
        }
        if self.transport_errors > 0 {
            writeln!(f, "  transport errors: {}", self.transport_errors)?;
        }
        writeln!(
            f,
            "rows accepted: {}, rejected: {}, duplicate batches: {}",
            self.rows_accepted, self.rows_rejected, self.duplicates
        )?;
        write!(
            f,
            "elapsed: {:.3} s, {:.0} rows/s",
            self.elapsed.as_secs_f64(),
            self.rows_per_sec()
        )?;
        for e in &self.first_errors {
            write!(f, "\n  ! {e}")?;
        }
        Ok(())
    }
}

/// Generates and posts every batch of `opts` with `client`; `Err` only for bad options.
pub async fn send(client: &reqwest::Client, opts: &SendOptions) -> anyhow::Result<SendReport> {
    if opts.rows == 0 || opts.batch_rows == 0 || opts.concurrency == 0 {
        bail!("rows, batch rows and concurrency must be positive");
    }
    let url = reqwest::Url::parse(&opts.url).with_context(|| format!("URL {:?}", opts.url))?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        opts.format.content_type().parse()?,
    );
    headers.insert(
        reqwest::header::CONTENT_ENCODING,
        opts.encoding.content_encoding().parse()?,
    );
    for (name, value) in &opts.headers {
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("header name {name:?}"))?,
            value
                .parse()
                .with_context(|| format!("header {name} value {value:?}"))?,
        );
    }

    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(opts.concurrency * 2);
    let batch_source = batches(opts);
    let producer = std::thread::spawn(move || {
        for batch in batch_source {
            if tx.blocking_send(batch).is_err() {
                break;
            }
        }
    });

    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut workers = Vec::with_capacity(opts.concurrency);
    for _ in 0..opts.concurrency {
        let (rx, client, url, headers) = (rx.clone(), client.clone(), url.clone(), headers.clone());
        workers.push(tokio::spawn(async move {
            let mut report = SendReport::default();
            loop {
                let Some(batch) = rx.lock().await.recv().await else {
                    break;
                };
                post_one(&client, &url, &headers, batch, &mut report).await;
            }
            report
        }));
    }
    let mut report = SendReport::default();
    for worker in workers {
        report.merge(worker.await.context("send worker panicked")?);
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("batch generator panicked"))?;
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn post_one(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
    batch: Batch,
    report: &mut SendReport,
) {
    report.batches += 1;
    report.rows_sent += batch.rows as u64;
    report.bytes_sent += batch.body.len() as u64;
    let result = client
        .post(url.clone())
        .headers(headers.clone())
        .header(BATCH_ID_HEADER, &batch.id)
        .body(batch.body)
        .send()
        .await;
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            report.failed_batches += 1;
            report.transport_errors += 1;
            report.note(format!("batch {}: {}", batch.id, error_chain(&err)));
            return;
        }
    };
    let status = response.status();
    *report.statuses.entry(status.as_u16()).or_default() += 1;
    let text = match response.text().await {
        Ok(text) => text,
        Err(err) => {
            report.failed_batches += 1;
            report.note(format!(
                "batch {}: HTTP {status}, reading the answer: {}",
                batch.id,
                error_chain(&err)
            ));
            return;
        }
    };
    let answer: Option<Answer> = serde_json::from_str(&text).ok();
    if let Some(answer) = &answer {
        report.rows_accepted += answer.accepted.unwrap_or(0);
        report.rows_rejected += answer.rejected.unwrap_or(0);
        report.duplicates += usize::from(answer.duplicate);
    }
    if !status.is_success() {
        report.failed_batches += 1;
        let detail = match &answer {
            Some(Answer {
                code: Some(code),
                message,
                ..
            }) => format!("{code}: {}", message.as_deref().unwrap_or("")),
            _ => text.chars().take(300).collect(),
        };
        report.note(format!("batch {}: HTTP {status}: {detail}", batch.id));
    } else if let Some(answer) = &answer {
        if let Some(first) = answer.errors.first() {
            report.note(format!(
                "batch {}: {} rows rejected, first: {first}",
                batch.id,
                answer.rejected.unwrap_or(0)
            ));
        }
    } else {
        report.note(format!(
            "batch {}: HTTP {status} with an answer that is not sluice JSON: {}",
            batch.id,
            text.chars().take(200).collect::<String>()
        ));
    }
}

/// An error with its sources (reqwest's top-level message hides TLS alerts and the like).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
