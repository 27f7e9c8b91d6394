//! Sluice moves edge telemetry into ClickHouse.
pub mod schema;
