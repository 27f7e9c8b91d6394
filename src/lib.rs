//! Sluice moves edge telemetry into ClickHouse.
pub mod decode;
pub mod schema;
pub mod validate;
