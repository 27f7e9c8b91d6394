//! Sluice moves edge telemetry into ClickHouse.
//!
//! Stages, in flow order:
//! - [`accept`]: TLS (client certificates), HTTP/1.1 + HTTP/2, connection and time limits.
//! - [`schema`]: stream schemas and ClickHouse types.
//!
//! Tools: [`certs`] writes development certificates (`sluice certs dev`).
pub mod accept;
pub mod certs;
pub mod schema;
