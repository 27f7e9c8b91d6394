//! The sluice configuration file (TOML) with `SLUICE_…` environment overrides.
//!
//! Environment variables override file keys: `SLUICE_CLICKHOUSE__URL` sets `clickhouse.url`
//! (sections are separated by a double underscore). Unknown keys are errors. After loading,
//! [`Config::validate`] checks what serde cannot and names the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::accept::tls::TlsConfig;
use crate::auth::AuthConfig;
use crate::auth::rate::RateLimitConfig;
use crate::auth::secret::SecretRef;
use crate::encode::Compression;
use crate::schema::UnknownFields;
use crate::spool::SpoolConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ingest: IngestConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub limits: Limits,
    pub clickhouse: ClickHouseConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Directory of stream schema files (`*.toml`), relative to the working directory.
    #[serde(default = "default_schemas_dir")]
    pub schemas: PathBuf,
    /// Who may send, and what they may claim.
    #[serde(default)]
    pub principals: Vec<PrincipalConfig>,
    /// Per-stream input options.
    #[serde(default)]
    pub streams: Vec<StreamConfig>,
    /// The durable log of accepted batches (needed by `ingest.ack = "spool"`).
    pub spool: Option<SpoolConfig>,
    #[serde(default)]
    pub dedup: DedupConfig,
    /// Listener-wide authentication settings (bearer JWTs, header-secret name, signature
    /// window).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Log output of `sluice serve`.
    #[serde(default)]
    pub log: LogConfig,
    /// Reloading certificates, keys, secrets and principals without a restart.
    #[serde(default)]
    pub reload: crate::reload::ReloadConfig,
    /// The file this config was loaded from (set by [`Config::load`]); a reload reads it again.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Log output (`[log]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default, for people) or `json` (one JSON object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `sluice=debug,info`; `RUST_LOG` overrides it.
    /// Default `info`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Batch-id deduplication (`X-Sluice-Batch-Id`). Kept in the spool directory when there is one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// How long a batch id is remembered, in seconds.
    #[serde(default = "default_dedup_window_secs")]
    pub window_secs: u64,
    /// Most batch ids remembered; the oldest are forgotten first.
    #[serde(default = "default_dedup_max_entries")]
    pub max_entries: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            window_secs: default_dedup_window_secs(),
            max_entries: default_dedup_max_entries(),
        }
    }
}

fn default_dedup_window_secs() -> u64 {
    24 * 3600
}
fn default_dedup_max_entries() -> usize {
    1_000_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address of the ingest listener, e.g. `127.0.0.1:8443`.
    pub listen: SocketAddr,
    /// TLS settings; required unless `plain_http = true`.
    pub tls: Option<TlsConfig>,
    /// Serve ingest over plain HTTP (no TLS, no client certificates). For tests behind a
    /// TLS-terminating proxy only; must be set explicitly.
    #[serde(default)]
    pub plain_http: bool,
    /// When a batch is answered 200: `spool` (its rows are on disk in the spool; needs
    /// `[spool]`), `clickhouse` (ClickHouse confirmed its rows), or `memory` (its rows are queued
    /// in memory: a crash loses them).
    #[serde(default)]
    pub ack: AckMode,
    /// An NDJSON body of at least twice this many bytes after decompression is validated in
    /// parts of at least this size on several threads at once (up to one part per CPU), so a
    /// large batch is answered sooner while a CPU is free; rows keep their order and answers
    /// their line numbers. It costs CPU (the parts are joined by a copy), so it is off by
    /// default: 0 validates every body on one thread.
    #[serde(default)]
    pub decode_part_bytes: usize,
    /// A body of at most this many bytes, as received and once inflated, is validated on the
    /// async worker that read it rather than handed to a blocking thread and back (two thread
    /// wake-ups, more CPU than the validation of a few dozen rows). The bound is how long a
    /// worker may be kept from its other connections; 0 sends every body to a blocking thread.
    #[serde(default = "default_inline_decode_bytes")]
    pub inline_decode_bytes: usize,
}

fn default_inline_decode_bytes() -> usize {
    64 << 10
}

/// When a batch is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    #[default]
    Spool,
    ClickHouse,
    Memory,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`, `/status`); plain
    /// HTTP.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// How many of the last errors the status page lists.
    #[serde(default = "default_status_errors")]
    pub status_errors: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            status_errors: default_status_errors(),
        }
    }
}

fn default_status_errors() -> usize {
    20
}

/// Limits on what one request or the whole process may take.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body as sent (compressed), in bytes. Over it: 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest body after decompression, in bytes. Over it: 413.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: usize,
    /// Most records in one request. Over it: 413.
    #[serde(default = "default_max_rows_per_batch")]
    pub max_rows_per_batch: usize,
    /// Most concurrent ingest connections; further connections wait in the accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Longest time one request may take, from headers to answer, in seconds. Over it: 408.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Most rejected rows listed in an answer's `errors` (all are counted).
    #[serde(default = "default_max_errors_reported")]
    pub max_errors_reported: usize,
    /// Memory that validated rows may hold between their request and their insert, in bytes
    /// (Arrow size). Past it new batches are answered 503 until inserts catch up.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How long a request whose stream is at `max_in_flight_bytes` (or its queue is full) waits
    /// for room, in milliseconds; then 503. It waits before it is decoded, and for what is left
    /// of this once it is validated if other requests took the room meanwhile (holding one of
    /// the `max_concurrent_decodes` places, if one is free; else 503 at once). Waiting slows
    /// senders to the rate ClickHouse takes instead of answering them 503 at once; 0 refuses at
    /// once.
    #[serde(default = "default_overload_wait_ms")]
    pub overload_wait_ms: u64,
    /// Bodies decompressed and validated at once (each up to `max_decompressed_bytes`); more
    /// requests wait. Default: twice the CPU count.
    #[serde(default = "default_max_concurrent_decodes")]
    pub max_concurrent_decodes: usize,
    /// Request bodies held in memory at once across all connections, in bytes (as sent, while
    /// they are read and until their request is answered). A request that would go past it is
    /// answered 503 `overloaded`.
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: usize,
    /// Longest record (NDJSON line, CSV record, delimited line) after decompression, in bytes.
    /// A longer record is rejected (a row error), the rest of the body is not.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Deepest nesting of JSON arrays and objects (the record object is level 1). A deeper
    /// record is rejected; a JSON-array body nested deeper cannot be framed (400).
    #[serde(default = "default_max_nesting_depth")]
    pub max_nesting_depth: usize,
    /// Largest request head (request line and headers; HTTP/2: the decoded header list), in
    /// bytes. Over it: HTTP/1.1 431 and the connection is closed; HTTP/2 the stream is refused.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request. Over it: 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Time a client has from TCP accept to a finished TLS handshake, in seconds; then the
    /// connection is closed.
    #[serde(default = "default_tls_handshake_timeout_secs")]
    pub tls_handshake_timeout_secs: u64,
    /// Time a client has to send a complete HTTP/1.1 request head, in seconds, counted from the
    /// first moment the server waits for it; then the connection is closed.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// Time a client has to send a whole request body once its head is read, in seconds. Over
    /// it: 408 `body_timeout`.
    #[serde(default = "default_body_read_timeout_secs")]
    pub body_read_timeout_secs: u64,
    /// A connection with no request in progress and no bytes moving for this long is closed, in
    /// seconds.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Most concurrent requests (streams) on one HTTP/2 connection (advertised in SETTINGS;
    /// HTTP/1.1 connections carry one at a time).
    #[serde(default = "default_http2_max_concurrent_streams")]
    pub http2_max_concurrent_streams: u32,
    /// Streams an HTTP/2 client may open and reset before they are served (rapid reset,
    /// CVE-2023-44487); past it the connection is closed with `ENHANCE_YOUR_CALM`.
    #[serde(default = "default_http2_max_pending_reset_streams")]
    pub http2_max_pending_reset_streams: usize,
    /// Streams the server may reset because of client protocol errors on one HTTP/2 connection
    /// before it closes the connection.
    #[serde(default = "default_http2_max_local_reset_streams")]
    pub http2_max_local_reset_streams: usize,
}

impl Limits {
    pub fn body_limits(&self) -> crate::validate::BodyLimits {
        crate::validate::BodyLimits {
            max_decompressed_bytes: self.max_decompressed_bytes,
            max_records: self.max_rows_per_batch,
            max_errors: self.max_errors_reported,
            max_line_bytes: self.max_line_bytes,
            max_nesting_depth: self.max_nesting_depth,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_max_body_bytes(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_rows_per_batch: default_max_rows_per_batch(),
            max_connections: default_max_connections(),
            request_timeout_secs: default_request_timeout_secs(),
            max_errors_reported: default_max_errors_reported(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            overload_wait_ms: default_overload_wait_ms(),
            max_concurrent_decodes: default_max_concurrent_decodes(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            max_line_bytes: default_max_line_bytes(),
            max_nesting_depth: default_max_nesting_depth(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            tls_handshake_timeout_secs: default_tls_handshake_timeout_secs(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            body_read_timeout_secs: default_body_read_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            http2_max_pending_reset_streams: default_http2_max_pending_reset_streams(),
            http2_max_local_reset_streams: default_http2_max_local_reset_streams(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`: inserts go here (without `shards`), and
    /// the server version, readiness and `sluice check` are asked here.
    pub url: String,
    /// More endpoints of the same tables (replicas), tried in order when `url` fails.
    #[serde(default)]
    pub failover_urls: Vec<String>,
    /// Shards of a ClickHouse cluster (`[[clickhouse.shards]]`): each batch's rows go to one
    /// shard's local tables, chosen by a hash of (principal, batch id) weighted by `weight`.
    /// Empty: one shard, `url` then `failover_urls`.
    #[serde(default)]
    pub shards: Vec<ShardConfig>,
    /// Database holding the streams' tables.
    #[serde(default = "default_database")]
    pub database: String,
    /// User for inserts (needs INSERT rights only).
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub password: String,
    /// User for DDL (`sluice schema apply`, `apply_schema`); default: `user`.
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    /// Create the database and tables at start (needs admin rights).
    #[serde(default)]
    pub apply_schema: bool,
    /// Block compression of inserts: `lz4` (cheapest for the server across a network), `zstd`
    /// (fewest bytes) or `none` (a ClickHouse on the same host: no CPU on either side).
    #[serde(default = "default_compression")]
    pub compression: Compression,
    /// zstd level when `compression = "zstd"`.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// Longest time one insert may take, in seconds.
    #[serde(default = "default_insert_timeout_secs")]
    pub insert_timeout_secs: u64,
    /// Attempts per insert before its requests are answered 503.
    #[serde(default = "default_insert_attempts")]
    pub insert_attempts: u32,
    /// Inserts in flight at once across all tables.
    #[serde(default = "default_max_inserts_in_flight")]
    pub max_inserts_in_flight: usize,
}

/// One shard of a ClickHouse cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// HTTP endpoints of the shard's replicas, tried in order (each with a circuit breaker).
    pub urls: Vec<String>,
    /// Share of batches relative to the other shards (like `<weight>` in `remote_servers`).
    #[serde(default = "default_shard_weight")]
    pub weight: u32,
}

fn default_shard_weight() -> u32 {
    1
}

impl ClickHouseConfig {
    /// The endpoints of each shard, replicas in order: `shards`, or else one shard of `url`
    /// and `failover_urls`.
    pub fn shard_urls(&self) -> Vec<Vec<String>> {
        if self.shards.is_empty() {
            let urls = std::iter::once(&self.url).chain(&self.failover_urls);
            vec![urls.cloned().collect()]
        } else {
            self.shards.iter().map(|s| s.urls.clone()).collect()
        }
    }

    /// Every distinct endpoint: `url`, `failover_urls` and every shard replica (where the
    /// schema is applied at start).
    pub fn all_urls(&self) -> Vec<String> {
        let mut urls = vec![self.url.clone()];
        for url in self.shard_urls().into_iter().flatten() {
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }

    pub fn admin_credentials(&self) -> (&str, &str) {
        match &self.admin_user {
            Some(user) => (user, self.admin_password.as_deref().unwrap_or("")),
            None => (&self.user, &self.password),
        }
    }
}

/// When a table's pending rows are flushed to ClickHouse: whichever limit is reached first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per insert. The default is about ClickHouse's own block size
    /// (`max_insert_block_size`); for wide rows `max_bytes` comes first.
    #[serde(default = "default_batch_rows")]
    pub max_rows: usize,
    /// Arrow bytes per insert (before encoding).
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: usize,
    /// Age of the oldest pending row, in milliseconds.
    #[serde(default = "default_batch_age_ms")]
    pub max_age_ms: u64,
    /// Validated requests queued per table before new requests are answered 503.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// How long rollup groups fold before their partial rows are written, in milliseconds;
    /// default `max_age_ms`. Longer means fewer partial rows, and spool records held longer.
    pub rollup_max_age_ms: Option<u64>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_batch_rows(),
            max_bytes: default_batch_bytes(),
            max_age_ms: default_batch_age_ms(),
            queue_depth: default_queue_depth(),
            rollup_max_age_ms: None,
        }
    }
}

/// A sender identity and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// Name stored in the `_principal` audit column (and the principal claim of its tokens).
    pub name: String,
    /// Client-certificate identities that are this principal: a DNS or URI subject alternative
    /// name, or the subject common name.
    #[serde(default)]
    pub cert_names: Vec<String>,
    /// Streams it may write; `"*"` for all.
    pub streams: Vec<String>,
    /// Origin (edge worker / property id) stored for its rows when the request has no
    /// `X-Sluice-Origin` header.
    #[serde(default)]
    pub origin: String,
    /// Origins it may claim in `X-Sluice-Origin` (`"*"`: any). Empty: only `origin` when that
    /// is set, else any.
    #[serde(default)]
    pub origins: Vec<String>,
    /// Region / PoP stored for its rows when the request has no `X-Sluice-Region` header.
    #[serde(default)]
    pub region: String,
    /// Regions it may claim in `X-Sluice-Region`; same rules as `origins`.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Every batch must carry a valid `X-Sluice-Signature`, whatever else authenticates it.
    #[serde(default)]
    pub require_signature: bool,
    /// Static secrets, any of which authenticates this principal in the `auth.secret_header`
    /// header (several at once for rotation). From files or environment variables.
    #[serde(default)]
    pub header_secrets: Vec<SecretRef>,
    /// HMAC keys for signed batches, each with the `id` senders name in `X-Sluice-Key-Id`.
    #[serde(default)]
    pub signing_keys: Vec<SecretRef>,
    /// Token buckets for rows/s and bytes/s; over them: 429.
    pub rate_limit: Option<RateLimitConfig>,
    /// Largest body of one batch as sent, in bytes (at most `limits.max_body_bytes`). Over it:
    /// 413.
    pub max_batch_bytes: Option<usize>,
    /// Most records in one batch (at most `limits.max_rows_per_batch`). Over it: 413.
    pub max_batch_rows: Option<usize>,
    /// This sender URL-encodes text values (RFC 1738, `+` for space), as Akamai DataStream 2
    /// does in JSON and structured bodies: schema columns marked `url_decode` are decoded.
    /// Delimited (structured) bodies are always decoded.
    #[serde(default)]
    pub url_encoded: bool,
}

impl PrincipalConfig {
    pub fn may_write(&self, stream: &str) -> bool {
        self.streams.iter().any(|s| s == "*" || s == stream)
    }
}

/// Input options of one stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    /// Field order of `text/plain` delimited lines (body field names; `"_"` skips a position).
    /// Default: the schema's body columns in order.
    pub delimited_fields: Option<Vec<String>>,
    /// Overrides the schema's `input.unknown_fields`: `ignore`, `keep` or `reject`.
    pub unknown_fields: Option<UnknownFields>,
    /// What is stored of accepted rows when the schema declares rollups: `both` (raw rows and
    /// rollups), `raw` (raw rows only, rollups off), `rollups` (rollups only).
    #[serde(default)]
    pub mode: StreamMode,
    /// Fraction of accepted rows kept in the raw table (0–1), chosen by a hash of the batch id
    /// and the row's position, so a replay keeps the same rows. Rollups see every row.
    #[serde(default = "default_raw_sample")]
    pub raw_sample: f64,
}

/// What is stored of a stream's accepted rows.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StreamMode {
    #[default]
    Both,
    Raw,
    Rollups,
}

fn default_raw_sample() -> f64 {
    1.0
}

fn default_schemas_dir() -> PathBuf {
    PathBuf::from("schemas")
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body_bytes() -> usize {
    32 << 20
}
fn default_max_decompressed_bytes() -> usize {
    256 << 20
}
fn default_max_rows_per_batch() -> usize {
    1_000_000
}
fn default_max_connections() -> usize {
    4096
}
fn default_request_timeout_secs() -> u64 {
    60
}
fn default_max_errors_reported() -> usize {
    100
}
fn default_max_in_flight_bytes() -> usize {
    96 << 20
}
fn default_overload_wait_ms() -> u64 {
    1000
}
fn default_max_concurrent_decodes() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}
fn default_max_buffered_body_bytes() -> usize {
    512 << 20
}
fn default_max_line_bytes() -> usize {
    1 << 20
}
fn default_max_nesting_depth() -> usize {
    64
}
fn default_max_header_bytes() -> usize {
    16 << 10
}
fn default_max_headers() -> usize {
    64
}
fn default_tls_handshake_timeout_secs() -> u64 {
    10
}
fn default_header_read_timeout_secs() -> u64 {
    10
}
fn default_body_read_timeout_secs() -> u64 {
    30
}
fn default_idle_timeout_secs() -> u64 {
    60
}
fn default_http2_max_concurrent_streams() -> u32 {
    64
}
fn default_http2_max_pending_reset_streams() -> usize {
    20
}
fn default_http2_max_local_reset_streams() -> usize {
    256
}
fn default_database() -> String {
    "sluice".to_string()
}
fn default_user() -> String {
    "default".to_string()
}
fn default_compression() -> Compression {
    Compression::Lz4
}
fn default_zstd_level() -> i32 {
    1
}
fn default_insert_timeout_secs() -> u64 {
    30
}
fn default_insert_attempts() -> u32 {
    3
}
fn default_max_inserts_in_flight() -> usize {
    4
}
fn default_batch_rows() -> usize {
    1_000_000
}
fn default_batch_bytes() -> usize {
    64 << 20
}
fn default_batch_age_ms() -> u64 {
    1000
}
fn default_queue_depth() -> usize {
    256
}

impl Config {
    /// Reads `path`, applies `SLUICE_…` environment overrides, and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        let config: Config = Figment::new()
            .merge(Toml::file(path))
            .merge(Env::prefixed("SLUICE_").split("__"))
            .extract()
            .map_err(|err| anyhow::anyhow!("{}: {err}", path.display()))?;
        config
            .validate()
            .map_err(|message| anyhow::anyhow!("{}: {message}", path.display()))?;
        Ok(Config {
            source: Some(path.to_path_buf()),
            ..config
        })
    }

    /// Parses a config from TOML text (no environment overrides); for tests.
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        let config: Config = toml::from_str(text)?;
        config
            .validate()
            .map_err(|message| anyhow::anyhow!(message))?;
        Ok(config)
    }

    /// Checks what the types cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.ingest.tls, self.ingest.plain_http) {
            (None, false) => {
                return Err("ingest.tls: required unless ingest.plain_http = true".to_string());
            }
            (Some(_), true) => {
                return Err("ingest.plain_http: cannot be combined with ingest.tls".to_string());
            }
            (Some(tls), false) => tls.validate("ingest.tls")?,
            (None, true) => {}
        }
        self.reload.validate()?;
        if self.ingest.ack == AckMode::Spool && self.spool.is_none() {
            return Err(
                "ingest.ack: \"spool\" (the default) needs a [spool] section with a dir; \
                 or set ingest.ack = \"clickhouse\" to answer once ClickHouse has the rows"
                    .to_string(),
            );
        }
        if let Some(spool) = &self.spool
            && (spool.segment_bytes == 0 || spool.max_bytes < spool.segment_bytes)
        {
            return Err(
                "spool.max_bytes: must be at least spool.segment_bytes (and both above 0)"
                    .to_string(),
            );
        }
        let positive = [
            ("limits.max_body_bytes", self.limits.max_body_bytes as u64),
            (
                "limits.max_decompressed_bytes",
                self.limits.max_decompressed_bytes as u64,
            ),
            (
                "limits.max_rows_per_batch",
                self.limits.max_rows_per_batch as u64,
            ),
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.max_in_flight_bytes",
                self.limits.max_in_flight_bytes as u64,
            ),
            (
                "limits.max_concurrent_decodes",
                self.limits.max_concurrent_decodes as u64,
            ),
            (
                "limits.request_timeout_secs",
                self.limits.request_timeout_secs,
            ),
            (
                "limits.max_buffered_body_bytes",
                self.limits.max_buffered_body_bytes as u64,
            ),
            ("limits.max_line_bytes", self.limits.max_line_bytes as u64),
            (
                "limits.max_nesting_depth",
                self.limits.max_nesting_depth as u64,
            ),
            ("limits.max_headers", self.limits.max_headers as u64),
            (
                "limits.tls_handshake_timeout_secs",
                self.limits.tls_handshake_timeout_secs,
            ),
            (
                "limits.header_read_timeout_secs",
                self.limits.header_read_timeout_secs,
            ),
            (
                "limits.body_read_timeout_secs",
                self.limits.body_read_timeout_secs,
            ),
            ("limits.idle_timeout_secs", self.limits.idle_timeout_secs),
            (
                "limits.http2_max_concurrent_streams",
                u64::from(self.limits.http2_max_concurrent_streams),
            ),
            (
                "limits.http2_max_pending_reset_streams",
                self.limits.http2_max_pending_reset_streams as u64,
            ),
            (
                "limits.http2_max_local_reset_streams",
                self.limits.http2_max_local_reset_streams as u64,
            ),
            ("batch.max_rows", self.batch.max_rows as u64),
            ("batch.max_bytes", self.batch.max_bytes as u64),
            ("batch.max_age_ms", self.batch.max_age_ms),
            ("batch.queue_depth", self.batch.queue_depth as u64),
            (
                "batch.rollup_max_age_ms",
                self.batch.rollup_max_age_ms.unwrap_or(1),
            ),
            (
                "clickhouse.insert_timeout_secs",
                self.clickhouse.insert_timeout_secs,
            ),
            (
                "clickhouse.insert_attempts",
                self.clickhouse.insert_attempts as u64,
            ),
            (
                "clickhouse.max_inserts_in_flight",
                self.clickhouse.max_inserts_in_flight as u64,
            ),
        ];
        crate::logging::level_filter(&self.log)?;
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("{key}: must be greater than 0"));
            }
        }
        for stream in &self.streams {
            if !(0.0..=1.0).contains(&stream.raw_sample) {
                return Err(format!(
                    "streams ({}).raw_sample: must be between 0 and 1",
                    stream.name
                ));
            }
        }
        // hyper refuses read buffers under 8 KiB; HTTP/2 header lists are sized in a u32.
        if !(8 << 10..=1 << 30).contains(&self.limits.max_header_bytes) {
            return Err("limits.max_header_bytes: must be between 8192 and 1073741824".to_string());
        }
        if self.limits.max_nesting_depth > 1024 {
            return Err("limits.max_nesting_depth: must be at most 1024".to_string());
        }
        if self.limits.max_buffered_body_bytes < self.limits.max_body_bytes {
            return Err(
                "limits.max_buffered_body_bytes: must be at least limits.max_body_bytes"
                    .to_string(),
            );
        }
        if self.limits.max_decompressed_bytes < self.limits.max_body_bytes {
            return Err(
                "limits.max_decompressed_bytes: must be at least limits.max_body_bytes".to_string(),
            );
        }
        let urls = std::iter::once(("clickhouse.url", &self.clickhouse.url)).chain(
            self.clickhouse
                .failover_urls
                .iter()
                .map(|u| ("clickhouse.failover_urls", u)),
        );
        for (key, url) in urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("{key}: {url:?} is not an http:// or https:// URL"));
            }
        }
        if !self.clickhouse.shards.is_empty() && !self.clickhouse.failover_urls.is_empty() {
            return Err("clickhouse.failover_urls: with clickhouse.shards, list each shard's replicas in its urls".to_string());
        }
        for (i, shard) in self.clickhouse.shards.iter().enumerate() {
            if shard.urls.is_empty() {
                return Err(format!(
                    "clickhouse.shards[{i}].urls: must list at least one URL"
                ));
            }
            if shard.weight == 0 {
                return Err(format!(
                    "clickhouse.shards[{i}].weight: must be greater than 0"
                ));
            }
            for url in &shard.urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!(
                        "clickhouse.shards[{i}].urls: {url:?} is not an http:// or https:// URL"
                    ));
                }
            }
        }
        if !(1..=22).contains(&self.clickhouse.zstd_level) {
            return Err("clickhouse.zstd_level: must be between 1 and 22".to_string());
        }
        let valid_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name(&self.clickhouse.database) {
            return Err(format!(
                "clickhouse.database: {:?} is not a valid name",
                self.clickhouse.database
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, principal) in self.principals.iter().enumerate() {
            if principal.name.is_empty() {
                return Err(format!("principals[{i}].name: must not be empty"));
            }
            if !names.insert(&principal.name) {
                return Err(format!(
                    "principals[{i}].name: duplicate principal {:?}",
                    principal.name
                ));
            }
            if principal.streams.is_empty() {
                return Err(format!(
                    "principals[{i}].streams: must name at least one stream or \"*\""
                ));
            }
            for (what, default, allowed) in [
                ("origin", &principal.origin, &principal.origins),
                ("region", &principal.region, &principal.regions),
            ] {
                if !default.is_empty() && !crate::auth::may_claim(default, allowed, default) {
                    return Err(format!(
                        "principals[{i}].{what}: {default:?} is not in principals[{i}].{what}s"
                    ));
                }
            }
            if let Some(limit) = &principal.rate_limit {
                limit.validate(&format!("principals[{i}].rate_limit"))?;
            }
            for (key, value) in [
                ("max_batch_bytes", principal.max_batch_bytes),
                ("max_batch_rows", principal.max_batch_rows),
            ] {
                if value == Some(0) {
                    return Err(format!("principals[{i}].{key}: must be greater than 0"));
                }
            }
        }
        let mut key_ids = std::collections::HashSet::new();
        for (i, principal) in self.principals.iter().enumerate() {
            for (j, key) in principal.signing_keys.iter().enumerate() {
                match &key.id {
                    None => {
                        return Err(format!(
                            "principals[{i}].signing_keys[{j}].id: required for a signing key"
                        ));
                    }
                    Some(id) if !key_ids.insert(id) => {
                        return Err(format!(
                            "principals[{i}].signing_keys[{j}].id: {id:?} is already used"
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if self.auth.signature_window_secs == 0 {
            return Err("auth.signature_window_secs: must be greater than 0".to_string());
        }
        let mut cert_names = std::collections::HashSet::new();
        for (i, principal) in self.principals.iter().enumerate() {
            for name in &principal.cert_names {
                if !cert_names.insert(name) {
                    return Err(format!(
                        "principals[{i}].cert_names: {name:?} already maps to another principal"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn stream_config(&self, stream: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|s| s.name == stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [ingest]
        listen = "127.0.0.1:0"
        plain_http = true
        ack = "clickhouse"
        [clickhouse]
        url = "http://127.0.0.1:8123"
    "#;

    #[test]
    fn defaults_fill_a_minimal_config() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.batch.max_rows, 1_000_000);
        assert_eq!(config.clickhouse.compression, Compression::Lz4);
        assert_eq!(config.admin.listen.port(), 9090);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::from_toml(&MINIMAL.replace("plain_http = true", "")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ingest.tls: required unless ingest.plain_http = true"
        );
        let err = Config::from_toml(&format!("{MINIMAL}\n[batch]\nmax_rows = 0")).unwrap_err();
        assert_eq!(err.to_string(), "batch.max_rows: must be greater than 0");
        let err =
            Config::from_toml(&format!("{MINIMAL}\n[limits]\nidle_timeout_secs = 0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.idle_timeout_secs: must be greater than 0"
        );
        let err =
            Config::from_toml(&format!("{MINIMAL}\n[limits]\nmax_header_bytes = 100")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.max_header_bytes: must be between 8192 and 1073741824"
        );
        let err = Config::from_toml(&format!(
            "{MINIMAL}\n[limits]\nmax_body_bytes = 2000\nmax_buffered_body_bytes = 1000"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "limits.max_buffered_body_bytes: must be at least limits.max_body_bytes"
        );
        let err = Config::from_toml(&format!("{MINIMAL}\n[batch]\nmax_rowz = 1")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_rowz`"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{MINIMAL}\n[log]\nformat = \"xml\"")).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `xml`, expected `text` or `json`"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{MINIMAL}\n[log]\nlevel = \"info,[[\"")).unwrap_err();
        assert!(err.to_string().starts_with("log.level: "), "{err}");
        let config = Config::from_toml(&format!("{MINIMAL}\n[log]\nformat = \"json\""));
        assert_eq!(config.unwrap().log.format, LogFormat::Json);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's test jail returns its own error type
    fn environment_overrides_file_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SLUICE_CLICKHOUSE__DATABASE", "from_env");
            jail.set_env("SLUICE_BATCH__MAX_AGE_MS", "250");
            let config = Config::load(&path).unwrap();
            assert_eq!(config.clickhouse.database, "from_env");
            assert_eq!(config.batch.max_age_ms, 250);
            jail.set_env("SLUICE_BATCH__MAX_AGE_MS", "soon");
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("batch.max_age_ms"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn shards_list_their_replicas() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n[[clickhouse.shards]]\nurls = [\"http://a1:8123\", \"http://a2:8123\"]\n\
             [[clickhouse.shards]]\nurls = [\"http://b1:8123\"]\nweight = 2\n"
        ))
        .unwrap();
        assert_eq!(
            config.clickhouse.shard_urls(),
            [
                vec!["http://a1:8123", "http://a2:8123"],
                vec!["http://b1:8123"]
            ]
        );
        assert_eq!(config.clickhouse.all_urls().len(), 4);
        assert_eq!(
            Config::from_toml(MINIMAL).unwrap().clickhouse.shard_urls(),
            [vec!["http://127.0.0.1:8123"]]
        );
        let err = Config::from_toml(&format!(
            "{MINIMAL}\n[[clickhouse.shards]]\nurls = [\"http://a1:8123\"]\nweight = 0\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "clickhouse.shards[0].weight: must be greater than 0"
        );
        let err = Config::from_toml(&format!(
            "{MINIMAL}\n[[clickhouse.shards]]\nurls = [\"a1:8123\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("clickhouse.shards[0].urls:"),
            "{err}"
        );
        let err = Config::from_toml(&format!("{MINIMAL}\n[[clickhouse.shards]]\nurl = \"x\"\n"))
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `url`"), "{err}");
    }
}
