//! sluice-loadtest: a seeded generator of realistic CDN edge telemetry, encoders that write
//! exactly what the edge senders (Akamai DataStream 2, Logpush-style CSV, custom EdgeWorkers)
//! put on the wire, a small sender for sluice's `POST /v1/streams/{stream}`, and the load-test
//! harness (`sluice-loadtest run`).
//!
//! The harness, in the order a run uses it: [`scenario`] (what to do) → [`pool`] (bodies made
//! up front) → [`decode_only`] (the parse ceiling) → [`pacing`] + the connections in [`run`]
//! (send, with [`procstat`] sampling CPU and memory and [`server_metrics`] reading sluice's own
//! histograms) → [`verify`] (ClickHouse holds exactly the
//! acknowledged rows) → [`baseline`] (the same rows as direct JSONEachRow inserts) → [`report`]
//! (JSON, HTML with [`svg`] plots, summary table).

pub mod baseline;
pub mod clickhouse;
pub mod client;
pub mod decode_only;
pub mod generator;
pub mod pacing;
pub mod pool;
pub mod procstat;
pub mod report;
pub mod run;
pub mod scenario;
pub mod send;
pub mod server_metrics;
pub mod svg;
pub mod verify;

pub use client::{
    mtls_client, mtls_client_from_pem, plain_client, tls_config, tls_config_from_pem,
};
pub use generator::{
    EdgeAccess, EdgeEvent, Encoding, Format, Generator, GeneratorConfig, compress,
    ds2_sample_batch, ds2_sample_batch_at, encode_access, encode_events,
};
pub use run::{RunOptions, RunOutcome, run};
pub use scenario::Scenario;
pub use send::{SendOptions, SendReport, Stream, send};
