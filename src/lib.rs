//! Sluice moves edge telemetry into ClickHouse.
//!
//! Data flows one way through the stages, each a module, listed in flow order:
//!
//! 1. [`accept`] — HTTPS listener with client certificates (rustls), limits, admin endpoints.
//! 2. [`auth`] — the principal behind a request and the origin/region it may claim.
//! 3. [`decode`] — decompression under caps; NDJSON, JSON array, CSV, delimited lines.
//! 4. [`validate`] — per-row checks against the stream's [`schema`], into Arrow columns.
//! 5. [`aggregate`] — per-table accumulation until a flush is due.
//! 6. [`encode`] — Arrow batches to ClickHouse Native blocks with LZ4/zstd block framing.
//! 7. [`sink`] — inserts over HTTP, retries, error classification.
//!
//! [`pipeline`] is where the stages meet; [`server`] runs them; [`config`], [`schema`] and
//! [`check`] are what an operator touches; [`reload`] swaps in new certificates, keys and
//! principals while running; [`certs`] makes development certificates; [`status`] and
//! [`logging`] are how an operator sees inside; [`text`] compares the short texts of the hot
//! paths.

pub mod accept;
pub mod aggregate;
pub mod auth;
pub mod certs;
pub mod check;
pub mod config;
pub mod decode;
pub mod dedup;
pub mod encode;
pub mod logging;
pub mod pipeline;
pub mod reload;
pub mod schema;
pub mod server;
pub mod sink;
pub mod spool;
pub mod status;
pub mod text;
pub mod validate;
