//! Sluice moves edge telemetry into ClickHouse.
//!
//! Tools: [`certs`] writes development certificates (`sluice certs dev`).
pub mod certs;
pub mod schema;
