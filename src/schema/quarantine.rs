//! The quarantine table of a stream: every row that failed validation, with the reason and the
//! record as it was sent, so that nothing is dropped silently (`<table>_quarantine`).

use std::path::Path;

use super::Schema;

/// The columns, in the order the validator builds them.
pub const COLUMNS: [&str; 11] = [
    "time",
    "stream",
    "schema_version",
    "principal",
    "origin",
    "batch_id",
    "request_id",
    "line",
    "field",
    "error",
    "raw",
];

/// The quarantine schema that belongs to `schema`.
pub fn schema_for(schema: &Schema) -> Schema {
    let text = format!(
        r#"
stream = "{stream}_quarantine"
version = {version}
description = "rows of {stream} that failed validation"
[table]
name = "{table}_quarantine"
partition_by = "toYYYYMMDD(time)"
order_by = ["stream", "time"]
[[columns]]
name = "time"
type = "DateTime"
context = "received_at"
[[columns]]
name = "stream"
type = "LowCardinality(String)"
[[columns]]
name = "schema_version"
type = "UInt32"
[[columns]]
name = "principal"
type = "LowCardinality(String)"
context = "principal"
[[columns]]
name = "origin"
type = "LowCardinality(String)"
context = "origin"
[[columns]]
name = "batch_id"
type = "String"
context = "batch_id"
[[columns]]
name = "request_id"
type = "String"
context = "request_id"
[[columns]]
name = "line"
type = "UInt32"
[[columns]]
name = "field"
type = "String"
[[columns]]
name = "error"
type = "String"
[[columns]]
name = "raw"
type = "String"
"#,
        stream = schema.stream,
        version = schema.version,
        table = schema.table.name,
    );
    Schema::from_toml(&text, Path::new("(quarantine)")).expect("the quarantine schema is valid")
}
