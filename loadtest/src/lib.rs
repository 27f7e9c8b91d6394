//! sluice-loadtest: a seeded generator of realistic CDN edge telemetry, encoders that write
//! exactly what the edge senders (Akamai DataStream 2, Logpush-style CSV, custom EdgeWorkers)
//! put on the wire, and a small sender for sluice's `POST /v1/streams/{stream}`.

pub mod generator;

pub use generator::{
    EdgeAccess, EdgeEvent, Encoding, Format, Generator, GeneratorConfig, compress,
    ds2_sample_batch, ds2_sample_batch_at, encode_access, encode_events,
};
