//! Load-test scenarios: what to send, where, how fast, and what to measure around it.
//!
//! A scenario is a TOML file (see `loadtest/scenarios/`). Paths in it are relative to the
//! directory the harness runs in (the repository root in the README's commands). Any key can be
//! overridden on the command line with `--set dotted.key=value` (the value is read as a TOML
//! value, or as a string when it is not one), e.g. `--set load.rate=50000` or
//! `--set streams.0.format=csv`; [`Scenario::load`] applies the overrides before validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::generator::{Encoding, Format};
use crate::send::Stream;

/// One load-test scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name; used in the result file names.
    pub name: String,
    /// One line for the report.
    #[serde(default)]
    pub description: String,
    /// The sluice under test.
    pub target: Target,
    /// The ClickHouse behind it (verification, CPU sampling, baseline).
    pub clickhouse: ClickHouse,
    /// How much to send and how fast.
    pub load: Load,
    /// The traffic mix: one entry per kind of batch.
    pub streams: Vec<StreamSpec>,
    #[serde(default)]
    pub measure: Measure,
    #[serde(default)]
    pub baseline: Baseline,
    #[serde(default)]
    pub decode_only: DecodeOnly,
    #[serde(default)]
    pub output: Output,
}

/// HTTP protocol the harness offers in ALPN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/2 when the server offers it, else HTTP/1.1.
    #[default]
    Auto,
    Http1,
    Http2,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// The sluice under test.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Base URL of the ingest listener, e.g. `https://127.0.0.1:8443`; batches go to
    /// `{url}/v1/streams/{stream}`.
    pub url: String,
    /// CA certificate (PEM) that signed the server certificate (required for https).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to sluice (mTLS).
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// Send over plain HTTP (a sluice with `ingest.plain_http = true`).
    #[serde(default)]
    pub plain_http: bool,
    /// ALPN offer.
    #[serde(default)]
    pub protocol: Protocol,
    /// Extra request headers on every batch.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Process id of sluice, for CPU and memory sampling. Default: the process listening on the
    /// URL's port, else the first process whose command line contains `process_match`.
    pub pid: Option<u32>,
    /// Command-line substring that identifies the sluice process when no listener is found.
    #[serde(default = "default_sluice_match")]
    pub process_match: String,
    /// sluice's Prometheus endpoint (its admin listener), e.g.
    /// `http://127.0.0.1:9090/metrics`: read before and after the load for sluice's own view of
    /// request times and spool syncs ([`crate::server_metrics`]). Unset: not read.
    #[serde(default)]
    pub metrics_url: Option<String>,
}

fn default_sluice_match() -> String {
    "sluice serve".to_string()
}

/// The ClickHouse server sluice writes to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouse {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database sluice writes to (its `clickhouse.database`); verified here.
    #[serde(default = "default_database")]
    pub database: String,
    /// A user that may SELECT there and, for the baseline, create tables and insert.
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// Process id of the server. Default: the process listening on the URL's port, else the
    /// first process whose command line contains `process_match`.
    pub pid: Option<u32>,
    /// Command-line substring that identifies the server when no listener is found.
    #[serde(default = "default_clickhouse_match")]
    pub process_match: String,
    /// Directory of sluice's schema files (`{stream}.v{N}.toml`): the baseline builds its rows
    /// from the column list there.
    #[serde(default = "default_schemas")]
    pub schemas: PathBuf,
}

fn default_database() -> String {
    "sluice".to_string()
}
fn default_user() -> String {
    "default".to_string()
}
fn default_clickhouse_match() -> String {
    "clickhouse-server".to_string()
}
fn default_schemas() -> PathBuf {
    PathBuf::from("schemas")
}

/// How much to send and how fast. The run stops at `duration_secs` or `rows`, whichever comes
/// first (at least one is required).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Concurrent connections, one batch in flight on each.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Seconds to send for.
    pub duration_secs: Option<f64>,
    /// Rows to send in total.
    pub rows: Option<u64>,
    /// Target rows per second over all streams; 0 sends as fast as the connections allow.
    #[serde(default)]
    pub rate: f64,
    /// Seed of the generator; the same seed gives the same bodies.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Distinct pre-generated bodies per stream entry; batches reuse them round robin under
    /// fresh batch ids, so the generator is not part of what is measured.
    #[serde(default = "default_pool_batches")]
    pub pool_batches: usize,
    /// Row times are spread over this many seconds before the start (inside any table TTL).
    #[serde(default = "default_time_span")]
    pub time_span_secs: u64,
    /// Batch ids are `{prefix}-{index:08}` (default: unique per run). Letters, digits, `.`, `-`.
    pub batch_id_prefix: Option<String>,
    /// Per-request timeout, seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: f64,
}

fn default_connections() -> usize {
    4
}
fn default_seed() -> u64 {
    1
}
fn default_pool_batches() -> usize {
    8
}
fn default_time_span() -> u64 {
    3600
}
fn default_request_timeout() -> f64 {
    60.0
}

/// One kind of batch in the mix.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    #[serde(deserialize_with = "from_str")]
    pub stream: Stream,
    #[serde(default = "default_format", deserialize_with = "from_str")]
    pub format: Format,
    #[serde(default = "default_encoding", deserialize_with = "from_str")]
    pub encoding: Encoding,
    /// Rows per batch (request).
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u64,
    /// Share of batches: entries are interleaved in proportion to their weights.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_format() -> Format {
    Format::Ndjson
}
fn default_encoding() -> Encoding {
    Encoding::Gzip
}
fn default_batch_rows() -> u64 {
    5000
}
fn default_weight() -> u32 {
    1
}

impl StreamSpec {
    /// The ClickHouse table sluice writes this stream to (the schemas name it after the stream).
    pub fn table(&self) -> &'static str {
        self.stream.as_str()
    }

    /// The column that identifies a row uniquely within a batch.
    pub fn key_column(&self) -> &'static str {
        match self.stream {
            Stream::EdgeAccess => "request_id",
            Stream::EdgeEvents => "event_id",
        }
    }

    /// `edge_access ndjson+gzip`.
    pub fn label(&self) -> String {
        format!(
            "{} {}+{}",
            self.stream.as_str(),
            self.format.as_str(),
            self.encoding.content_encoding()
        )
    }
}

/// Sampling and the phase boundaries.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// /proc sampling period, milliseconds.
    #[serde(default = "default_sample_ms")]
    pub sample_ms: u64,
    /// Seconds of idle measurement before the load (the servers' background CPU).
    #[serde(default = "default_idle_secs")]
    pub idle_secs: f64,
    /// After the rows have arrived, wait at most this long for ClickHouse (merges) and sluice
    /// to go quiet before a phase's CPU window closes.
    #[serde(default = "default_settle_max_secs")]
    pub settle_max_secs: f64,
    /// "Quiet": no merge running in the phase's database, and each process using at most its
    /// idle rate plus this many cores ...
    #[serde(default = "default_settle_cores")]
    pub settle_cpu_cores: f64,
    /// ... for this many seconds in a row.
    #[serde(default = "default_settle_quiet_secs")]
    pub settle_quiet_secs: f64,
    /// Give up waiting for acknowledged rows to appear in ClickHouse after this many seconds
    /// without progress.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: f64,
}

fn default_sample_ms() -> u64 {
    250
}
fn default_idle_secs() -> f64 {
    1.0
}
fn default_settle_max_secs() -> f64 {
    30.0
}
fn default_settle_quiet_secs() -> f64 {
    2.0
}
fn default_settle_cores() -> f64 {
    0.05
}
fn default_drain_timeout() -> f64 {
    60.0
}

impl Default for Measure {
    fn default() -> Self {
        Measure {
            sample_ms: default_sample_ms(),
            idle_secs: default_idle_secs(),
            settle_max_secs: default_settle_max_secs(),
            settle_cpu_cores: default_settle_cores(),
            settle_quiet_secs: default_settle_quiet_secs(),
            drain_timeout_secs: default_drain_timeout(),
        }
    }
}

/// The direct-insert baseline: the same rows posted by the harness straight to ClickHouse as
/// `INSERT … FORMAT JSONEachRow` into a copy of sluice's table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Database of the baseline tables (created; tables are replaced at every run).
    #[serde(default = "default_baseline_database")]
    pub database: String,
    /// As many rows as sluice acknowledged (the same payload, so that both tables see the same
    /// merges), but at most this many.
    #[serde(default = "default_baseline_rows")]
    pub max_rows: u64,
    /// Rows per INSERT, rounded up to whole pooled bodies (default: sluice's default
    /// `batch.max_rows`).
    #[serde(default = "default_rows_per_insert")]
    pub rows_per_insert: u64,
    /// INSERTs in flight at once.
    #[serde(default = "default_baseline_connections")]
    pub connections: usize,
    /// `identity` or `gzip` request bodies.
    #[serde(default = "default_baseline_encoding", deserialize_with = "from_str")]
    pub encoding: Encoding,
    /// Values of the audit columns that sluice fills from the request context.
    #[serde(default = "default_principal")]
    pub principal: String,
    #[serde(default = "default_origin")]
    pub origin: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Keep the baseline tables after the run (default: dropped).
    #[serde(default)]
    pub keep_tables: bool,
}

fn yes() -> bool {
    true
}
fn default_baseline_database() -> String {
    "sluice_lt_baseline".to_string()
}
fn default_baseline_rows() -> u64 {
    10_000_000
}
fn default_rows_per_insert() -> u64 {
    100_000
}
fn default_baseline_connections() -> usize {
    2
}
fn default_baseline_encoding() -> Encoding {
    Encoding::Identity
}
fn default_principal() -> String {
    "edge-a".to_string()
}
fn default_origin() -> String {
    "dev-worker-a".to_string()
}
fn default_region() -> String {
    "local".to_string()
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            enabled: true,
            database: default_baseline_database(),
            max_rows: default_baseline_rows(),
            rows_per_insert: default_rows_per_insert(),
            connections: default_baseline_connections(),
            encoding: default_baseline_encoding(),
            principal: default_principal(),
            origin: default_origin(),
            region: default_region(),
            keep_tables: false,
        }
    }
}

/// The decode-only reference: decompress + parse of the same bodies on one core.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeOnly {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds to loop over the bodies.
    #[serde(default = "default_decode_secs")]
    pub secs: f64,
}

fn default_decode_secs() -> f64 {
    2.0
}

impl Default for DecodeOnly {
    fn default() -> Self {
        DecodeOnly {
            enabled: true,
            secs: default_decode_secs(),
        }
    }
}

/// Where the result files go.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Directory for `{name}-{time}.json` and `.html`.
    #[serde(default = "default_output_dir")]
    pub dir: PathBuf,
}

fn default_output_dir() -> PathBuf {
    PathBuf::from("target/loadtest")
}

impl Default for Output {
    fn default() -> Self {
        Output {
            dir: default_output_dir(),
        }
    }
}

fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl Scenario {
    /// Reads a scenario file, applies `overrides` (`dotted.key=value`) and validates it.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Scenario::parse(&text, overrides).with_context(|| format!("scenario {}", path.display()))
    }

    /// [`Scenario::load`] from TOML text.
    pub fn parse(text: &str, overrides: &[String]) -> anyhow::Result<Scenario> {
        let mut value: toml::Value = toml::from_str(text).context("TOML syntax")?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        let scenario: Scenario = value.try_into().context("scenario fields")?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks what serde cannot; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.name.is_empty() || !self.name.chars().all(safe_name_char) {
            bail!(
                "name {:?}: letters, digits, '.', '-' and '_' only",
                self.name
            );
        }
        let scheme = self.target.url.split("://").next().unwrap_or("");
        match (scheme, self.target.plain_http) {
            ("https", false) => {
                if self.target.ca.is_none() {
                    bail!("target.ca is required for an https:// target.url");
                }
                if self.target.cert.is_some() != self.target.key.is_some() {
                    bail!("target.cert and target.key go together");
                }
            }
            ("http", true) => {}
            ("http", false) => bail!("target.url is http://: set target.plain_http = true"),
            _ => bail!(
                "target.url {:?}: https://HOST:PORT (or http:// with plain_http)",
                self.target.url
            ),
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            bail!("clickhouse.url {:?}: http://HOST:PORT", self.clickhouse.url);
        }
        check_identifier("clickhouse.database", &self.clickhouse.database)?;
        check_identifier("baseline.database", &self.baseline.database)?;
        if self.baseline.enabled && self.baseline.database == self.clickhouse.database {
            bail!("baseline.database must differ from clickhouse.database");
        }
        let load = &self.load;
        if !(1..=1024).contains(&load.connections) {
            bail!("load.connections {}: 1 to 1024", load.connections);
        }
        match (load.duration_secs, load.rows) {
            (None, None) => bail!("load: give duration_secs, rows or both"),
            (Some(d), _) if !(d > 0.0 && d <= 3600.0) => {
                bail!("load.duration_secs {d}: more than 0, at most 3600")
            }
            (_, Some(0)) => bail!("load.rows: at least 1"),
            _ => {}
        }
        if !(load.rate >= 0.0 && load.rate.is_finite()) {
            bail!(
                "load.rate {}: rows per second, 0 for as fast as possible",
                load.rate
            );
        }
        if !(1..=1024).contains(&load.pool_batches) {
            bail!("load.pool_batches {}: 1 to 1024", load.pool_batches);
        }
        if !positive(load.request_timeout_secs) {
            bail!("load.request_timeout_secs: more than 0");
        }
        if let Some(prefix) = &load.batch_id_prefix
            && (prefix.is_empty()
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
        {
            bail!("load.batch_id_prefix {prefix:?}: letters, digits, '.' and '-' only");
        }
        if self.streams.is_empty() {
            bail!("streams: at least one [[streams]] entry");
        }
        for (i, s) in self.streams.iter().enumerate() {
            if !(1..=1_000_000).contains(&s.batch_rows) {
                bail!("streams.{i}.batch_rows {}: 1 to 1000000", s.batch_rows);
            }
            if s.weight == 0 || s.weight > 1000 {
                bail!("streams.{i}.weight {}: 1 to 1000", s.weight);
            }
        }
        if self.measure.sample_ms == 0 || self.measure.sample_ms > 10_000 {
            bail!("measure.sample_ms {}: 1 to 10000", self.measure.sample_ms);
        }
        for (key, v) in [
            ("measure.idle_secs", self.measure.idle_secs),
            ("measure.settle_max_secs", self.measure.settle_max_secs),
            ("measure.settle_cpu_cores", self.measure.settle_cpu_cores),
            ("measure.settle_quiet_secs", self.measure.settle_quiet_secs),
            ("decode_only.secs", self.decode_only.secs),
        ] {
            if !(0.0..=600.0).contains(&v) {
                bail!("{key} {v}: 0 to 600");
            }
        }
        if !positive(self.measure.drain_timeout_secs) {
            bail!("measure.drain_timeout_secs: more than 0");
        }
        if self.baseline.rows_per_insert == 0 || self.baseline.max_rows == 0 {
            bail!("baseline.rows_per_insert and baseline.max_rows: at least 1");
        }
        if !(1..=64).contains(&self.baseline.connections) {
            bail!(
                "baseline.connections {}: 1 to 64",
                self.baseline.connections
            );
        }
        if self.baseline.encoding == Encoding::Zstd {
            bail!("baseline.encoding zstd: ClickHouse 18.16 takes identity or gzip");
        }
        Ok(())
    }

    /// The stream URL of one entry.
    pub fn stream_url(&self, spec: &StreamSpec) -> String {
        format!(
            "{}/v1/streams/{}",
            self.target.url.trim_end_matches('/'),
            spec.stream.as_str()
        )
    }

    pub fn duration(&self) -> Option<Duration> {
        self.load.duration_secs.map(Duration::from_secs_f64)
    }
}

fn positive(v: f64) -> bool {
    v > 0.0 && v.is_finite()
}

fn safe_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')
}

fn check_identifier(key: &str, value: &str) -> anyhow::Result<()> {
    let ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!("{key} {value:?}: a plain identifier (letters, digits, '_')");
    }
    Ok(())
}

/// Sets `dotted.key=value` in a TOML tree. Numeric path segments index arrays and `*` means every
/// entry of an array (`streams.*.encoding=identity`); missing tables are created. The value is
/// parsed as a TOML value (`5`, `true`, `"x"`, `[1, 2]`), else taken as a string (`gzip`,
/// `https://…`).
pub fn apply_override(root: &mut toml::Value, assignment: &str) -> anyhow::Result<()> {
    let (path, raw) = assignment
        .split_once('=')
        .with_context(|| format!("override {assignment:?}: use key.path=value"))?;
    let (path, raw) = (path.trim(), raw.trim());
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut table) => table.remove("v").expect("the key just parsed"),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let segments: Vec<&str> = path.split('.').collect();
    if segments.iter().any(|s| s.is_empty()) {
        bail!("override {assignment:?}: empty key segment");
    }
    set_path(root, &segments, 0, &value).with_context(|| format!("override {assignment:?}"))
}

fn set_path(
    node: &mut toml::Value,
    segments: &[&str],
    depth: usize,
    value: &toml::Value,
) -> anyhow::Result<()> {
    let segment = segments[depth];
    let last = depth + 1 == segments.len();
    match node {
        toml::Value::Table(table) => {
            if last {
                table.insert(segment.to_string(), value.clone());
                return Ok(());
            }
            let child = table
                .entry(segment.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            set_path(child, segments, depth + 1, value)
        }
        toml::Value::Array(array) => {
            let indices: Vec<usize> = if segment == "*" {
                (0..array.len()).collect()
            } else {
                let index: usize = segment
                    .parse()
                    .with_context(|| format!("{segment:?} is not an array index"))?;
                if index >= array.len() {
                    bail!("index {index} past the {} entries", array.len());
                }
                vec![index]
            };
            for index in indices {
                if last {
                    array[index] = value.clone();
                } else {
                    set_path(&mut array[index], segments, depth + 1, value)?;
                }
            }
            Ok(())
        }
        _ => bail!("{:?} is not a table", segments[..depth].join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[target]
url = "https://127.0.0.1:8443"
ca = "certs/ca.crt"
cert = "certs/client-a.crt"
key = "certs/client-a.key"
[clickhouse]
url = "http://127.0.0.1:8123"
[load]
duration_secs = 5
[[streams]]
stream = "edge_access"
"#;

    #[test]
    fn minimal_scenario_gets_the_documented_defaults() {
        let s = Scenario::parse(MINIMAL, &[]).unwrap();
        assert_eq!(s.load.connections, 4);
        assert_eq!(s.load.rate, 0.0);
        assert_eq!(s.load.pool_batches, 8);
        assert_eq!(s.clickhouse.database, "sluice");
        assert_eq!(s.clickhouse.user, "default");
        assert_eq!(s.streams[0].format, Format::Ndjson);
        assert_eq!(s.streams[0].encoding, Encoding::Gzip);
        assert_eq!(s.streams[0].batch_rows, 5000);
        assert_eq!(s.streams[0].key_column(), "request_id");
        assert!(s.baseline.enabled && s.decode_only.enabled);
        assert_eq!(s.baseline.encoding, Encoding::Identity);
        assert_eq!(s.measure.sample_ms, 250);
        assert_eq!(s.target.protocol, Protocol::Auto);
        assert_eq!(s.duration(), Some(Duration::from_secs(5)));
        assert_eq!(
            s.stream_url(&s.streams[0]),
            "https://127.0.0.1:8443/v1/streams/edge_access"
        );
    }

    #[test]
    fn overrides_reach_nested_keys_array_entries_and_new_tables() {
        let s = Scenario::parse(
            MINIMAL,
            &[
                "load.rate=50000".into(),
                "load.connections = 8".into(),
                "streams.0.format=csv".into(),
                "streams.*.encoding=\"zstd\"".into(),
                "clickhouse.url=http://127.0.0.1:18600".into(),
                "baseline.enabled=false".into(),
                "decode_only.secs=0.5".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.load.rate, 50000.0);
        assert_eq!(s.load.connections, 8);
        assert_eq!(s.streams[0].format, Format::Csv);
        assert_eq!(s.streams[0].encoding, Encoding::Zstd);
        assert_eq!(s.clickhouse.url, "http://127.0.0.1:18600");
        assert!(!s.baseline.enabled);
        assert_eq!(s.decode_only.secs, 0.5);
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let err = |o: &str| {
            format!(
                "{:#}",
                Scenario::parse(MINIMAL, &[o.to_string()]).unwrap_err()
            )
        };
        assert!(err("load.rate").contains("key.path=value"));
        assert!(err("streams.3.format=csv").contains("index 3 past the 1 entries"));
        assert!(err("streams.x.format=csv").contains("not an array index"));
        assert!(err("name.x=1").contains("\"name\" is not a table"));
        assert!(err("streams.0.format=xml").contains("unknown format"));
        assert!(err("load.speed=3").contains("unknown field `speed`"));
    }

    #[test]
    fn validation_names_the_bad_key() {
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            format!("{:#}", Scenario::parse(MINIMAL, &o).unwrap_err())
        };
        assert!(err(&["load.connections=0"]).contains("load.connections"));
        assert!(err(&["load.duration_secs=0"]).contains("load.duration_secs"));
        assert!(err(&["load.rows=0"]).contains("load.rows"));
        assert!(err(&["load.rate=-1"]).contains("load.rate"));
        assert!(err(&["streams.0.batch_rows=0"]).contains("streams.0.batch_rows"));
        assert!(err(&["streams.0.weight=0"]).contains("streams.0.weight"));
        assert!(err(&["target.url=http://127.0.0.1:1"]).contains("plain_http"));
        assert!(err(&["clickhouse.database=a-b"]).contains("clickhouse.database"));
        assert!(err(&["baseline.database=sluice"]).contains("must differ"));
        assert!(err(&["baseline.encoding=zstd"]).contains("baseline.encoding"));
        assert!(err(&["load.batch_id_prefix=a_b"]).contains("load.batch_id_prefix"));
        assert!(err(&["name=a b"]).contains("name"));
        // Neither a duration nor a row count.
        let text = MINIMAL.replace("duration_secs = 5", "");
        let e = format!("{:#}", Scenario::parse(&text, &[]).unwrap_err());
        assert!(e.contains("duration_secs, rows or both"), "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path, &[]).unwrap_or_else(|e| panic!("{e:#}"));
                found += 1;
            }
        }
        assert!(found >= 3, "only {found} scenarios in {}", dir.display());
    }
}
