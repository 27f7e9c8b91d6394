//! sluice-loadtest: a seeded generator of realistic CDN edge telemetry, encoders that write
//! exactly what the edge senders (Akamai DataStream 2, Logpush-style CSV, custom EdgeWorkers)
//! put on the wire, and a small sender for sluice's `POST /v1/streams/{stream}`.

pub mod client;
pub mod generator;
pub mod send;

pub use client::{
    mtls_client, mtls_client_from_pem, plain_client, tls_config, tls_config_from_pem,
};
pub use generator::{
    EdgeAccess, EdgeEvent, Encoding, Format, Generator, GeneratorConfig, compress,
    ds2_sample_batch, ds2_sample_batch_at, encode_access, encode_events,
};
pub use send::{SendOptions, SendReport, Stream, send};
