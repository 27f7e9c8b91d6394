//! The direct-insert baseline: what a user without sluice would do — post the rows to
//! ClickHouse's HTTP interface as `INSERT … FORMAT JSONEachRow`.
//!
//! Fairness: the baseline table is a copy of sluice's (`CREATE TABLE b.t AS db.t`: same columns,
//! types, engine, ORDER BY), and every baseline row carries the same values sluice stores for the
//! same generated record — typed numbers, URL-decoded text, the audit columns filled with
//! constants — built from sluice's schema file (column name, type, body field, context). So the
//! server parses the DataStream 2 payload's *decoded* rows in JSONEachRow (the cheapest thing a
//! user could send as JSON: no strings-for-numbers, no URL-encoding for ClickHouse to undo).
//! Inserts are large (`baseline.rows_per_insert`, by default sluice's `batch.max_rows`) with a
//! few in flight, as ClickHouse recommends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::generator::{ACCESS_FIELDS, EdgeAccess, EdgeEvent};
use crate::send::Stream;

/// One column of a sluice schema file (only what the baseline needs; other keys are ignored).
#[derive(Clone, Debug, Deserialize)]
pub struct SchemaColumn {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// Body field the value comes from.
    pub field: Option<String>,
    /// Request-context value instead of a body field.
    pub context: Option<String>,
    /// Value when the field is absent.
    pub default: Option<toml::Value>,
    /// The field is a JSON value kept as text.
    #[serde(default)]
    pub json: bool,
}

#[derive(Debug, Deserialize)]
struct SchemaFile {
    stream: String,
    version: u32,
    table: SchemaTable,
    columns: Vec<SchemaColumn>,
}

#[derive(Debug, Deserialize)]
struct SchemaTable {
    name: String,
}

/// The newest schema version of a stream.
#[derive(Clone, Debug)]
pub struct Schema {
    pub path: PathBuf,
    pub table: String,
    pub columns: Vec<SchemaColumn>,
}

/// Reads the highest `version` among the schema files in `dir` for `stream`.
pub fn load_schema(dir: &Path, stream: Stream) -> anyhow::Result<Schema> {
    let mut best: Option<(u32, Schema)> = None;
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading schemas in {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let Ok(file) = toml::from_str::<SchemaFile>(&text) else {
            continue;
        };
        if file.stream == stream.as_str() && best.as_ref().is_none_or(|b| file.version > b.0) {
            best = Some((
                file.version,
                Schema {
                    path,
                    table: file.table.name,
                    columns: file.columns,
                },
            ));
        }
    }
    best.map(|b| b.1).with_context(|| {
        format!(
            "no schema for stream {} in {}",
            stream.as_str(),
            dir.display()
        )
    })
}

/// What sluice would put in the context columns.
#[derive(Clone, Debug)]
pub struct AuditContext {
    pub principal: String,
    pub origin: String,
    pub region: String,
    pub batch_id: String,
    pub request_id: String,
    /// Unix seconds.
    pub received_at: u64,
}

/// Body field → decoded value of one access record (absent fields missing).
pub fn access_fields(row: &EdgeAccess) -> BTreeMap<&'static str, Value> {
    ACCESS_FIELDS
        .iter()
        .zip(row.values())
        .filter_map(|(key, value)| Some((*key, Value::String(value?.into_owned()))))
        .collect()
}

/// Body field → value of one event, with `ts` as the unix seconds ClickHouse stores.
pub fn event_fields(row: &EdgeEvent) -> BTreeMap<&'static str, Value> {
    let mut m = BTreeMap::new();
    m.insert("id", Value::String(row.id.clone()));
    m.insert("ts", Value::from(row.unix_seconds()));
    m.insert("worker", Value::String(row.worker.clone()));
    m.insert("event", Value::String(row.event.clone()));
    if let Some(level) = &row.level {
        m.insert("level", Value::String(level.clone()));
    }
    if let Some(d) = row.duration_ms {
        m.insert("duration_ms", Value::from(d));
    }
    if let Some(s) = row.status {
        m.insert("status", Value::from(s));
    }
    if let Some(h) = &row.host {
        m.insert("host", Value::String(h.clone()));
    }
    m.insert(
        "tags",
        Value::Array(row.tags.iter().cloned().map(Value::String).collect()),
    );
    m.insert("properties", row.properties.clone());
    m
}

/// `Nullable(LowCardinality(T))` → (`T`, nullable).
fn base_type(mut ty: &str) -> (&str, bool) {
    let mut nullable = false;
    loop {
        ty = ty.trim();
        if let Some(inner) = ty
            .strip_prefix("Nullable(")
            .and_then(|t| t.strip_suffix(')'))
        {
            nullable = true;
            ty = inner;
        } else if let Some(inner) = ty
            .strip_prefix("LowCardinality(")
            .and_then(|t| t.strip_suffix(')'))
        {
            ty = inner;
        } else {
            return (ty, nullable);
        }
    }
}

/// `value` as JSONEachRow wants it for a column of type `ty` (`None`: leave the column out).
pub fn column_value(ty: &str, json: bool, value: Option<&Value>) -> anyhow::Result<Option<Value>> {
    let (base, nullable) = base_type(ty);
    let Some(value) = value else {
        return Ok(nullable.then_some(Value::Null));
    };
    let text = || match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let number = |v: &Value| -> anyhow::Result<Value> {
        match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => serde_json::from_str::<serde_json::Number>(s.trim())
                .map(Value::Number)
                .with_context(|| format!("{s:?} is not a {base}")),
            other => bail!("{other} is not a {base}"),
        }
    };
    Ok(Some(if json {
        Value::String(match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    } else if base.starts_with("UInt")
        || base.starts_with("Int")
        || base.starts_with("Float")
        || base == "DateTime"
    {
        number(value)?
    } else if base.starts_with("Array(") {
        value.clone()
    } else {
        Value::String(text())
    }))
}

/// One baseline row: (column, value) in schema column order.
pub fn baseline_row<'c>(
    columns: &'c [SchemaColumn],
    fields: &BTreeMap<&'static str, Value>,
    extra: Option<&Map<String, Value>>,
    ctx: &AuditContext,
) -> anyhow::Result<Vec<(&'c str, Value)>> {
    let mut row = Vec::with_capacity(columns.len());
    for column in columns {
        let value = match (&column.context, &column.field) {
            (Some(context), _) => Some(match context.as_str() {
                "principal" => Value::String(ctx.principal.clone()),
                "origin" => Value::String(ctx.origin.clone()),
                "region" => Value::String(ctx.region.clone()),
                "batch_id" => Value::String(ctx.batch_id.clone()),
                "request_id" => Value::String(ctx.request_id.clone()),
                "received_at" => Value::from(ctx.received_at),
                "extra" => Value::String(match extra {
                    Some(map) if !map.is_empty() => Value::Object(map.clone()).to_string(),
                    _ => String::new(),
                }),
                other => bail!("column {}: unknown context {other:?}", column.name),
            }),
            (None, Some(field)) => {
                let default = column.default.as_ref().map(|d| match d {
                    toml::Value::String(s) => Value::String(s.clone()),
                    other => Value::String(other.to_string()),
                });
                fields.get(field.as_str()).cloned().or(default)
            }
            (None, None) => None,
        };
        if let Some(v) = column_value(&column.ty, column.json, value.as_ref())
            .with_context(|| format!("column {}", column.name))?
        {
            row.push((column.name.as_str(), v));
        }
    }
    Ok(row)
}

/// JSONEachRow body of access records.
pub fn encode_access_rows(
    columns: &[SchemaColumn],
    rows: &[EdgeAccess],
    ctx: &AuditContext,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * 700);
    for row in rows {
        write_object(
            &mut out,
            &baseline_row(columns, &access_fields(row), None, ctx)?,
        )?;
    }
    Ok(out)
}

/// JSONEachRow body of events.
pub fn encode_event_rows(
    columns: &[SchemaColumn],
    rows: &[EdgeEvent],
    ctx: &AuditContext,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.len() * 500);
    for row in rows {
        write_object(
            &mut out,
            &baseline_row(columns, &event_fields(row), Some(&row.extra), ctx)?,
        )?;
    }
    Ok(out)
}

/// One JSONEachRow line, keys in the given order.
fn write_object(out: &mut Vec<u8>, row: &[(&str, Value)]) -> anyhow::Result<()> {
    out.push(b'{');
    for (i, (key, value)) in row.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        serde_json::to_writer(&mut *out, value)?;
    }
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// Pool bodies per INSERT, and the distinct INSERT bodies a cycle through a pool of
/// `pool_len` bodies of `body_rows` rows needs when each INSERT takes about `rows_per_insert`
/// rows: INSERT `i` starts at pool body `(i * per_insert) % pool_len`.
pub fn insert_plan(pool_len: usize, body_rows: u64, rows_per_insert: u64) -> (usize, usize) {
    let per_insert = rows_per_insert.div_ceil(body_rows.max(1)).max(1) as usize;
    let distinct = pool_len / gcd(pool_len, per_insert % pool_len.max(1));
    (per_insert, distinct.max(1))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::Generator;

    fn schema(stream: Stream) -> Schema {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        load_schema(&dir, stream).unwrap()
    }

    fn ctx() -> AuditContext {
        AuditContext {
            principal: "edge-a".into(),
            origin: "o".into(),
            region: "r".into(),
            batch_id: "b-1".into(),
            request_id: String::new(),
            received_at: 1_767_225_600,
        }
    }

    #[test]
    fn types_are_unwrapped_and_values_converted() {
        assert_eq!(base_type("Nullable(UInt32)"), ("UInt32", true));
        assert_eq!(
            base_type("LowCardinality(Nullable(String))"),
            ("String", true)
        );
        assert_eq!(base_type("LowCardinality(String)"), ("String", false));
        let s = |t: &str| Value::String(t.into());
        assert_eq!(
            column_value("UInt16", false, Some(&s("404"))).unwrap(),
            Some(Value::from(404))
        );
        assert_eq!(
            column_value("Nullable(UInt32)", false, None).unwrap(),
            Some(Value::Null)
        );
        assert_eq!(column_value("UInt32", false, None).unwrap(), None);
        assert_eq!(
            column_value("Float64", false, Some(&Value::from(1.5))).unwrap(),
            Some(Value::from(1.5))
        );
        assert_eq!(
            column_value("String", true, Some(&serde_json::json!({"a": 1}))).unwrap(),
            Some(s(r#"{"a":1}"#))
        );
        assert_eq!(
            column_value("Enum8('GET' = 1)", false, Some(&s("GET"))).unwrap(),
            Some(s("GET"))
        );
        assert!(column_value("UInt8", false, Some(&s("x"))).is_err());
    }

    #[test]
    fn access_rows_carry_decoded_typed_values_and_the_context() {
        let schema = schema(Stream::EdgeAccess);
        assert_eq!(schema.table, "edge_access");
        let rows = Generator::new(3).edge_access(200);
        let body = encode_access_rows(&schema.columns, &rows, &ctx()).unwrap();
        let lines: Vec<Value> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 200);
        let (first, row) = (&lines[0], &rows[0]);
        assert_eq!(first["request_id"], Value::String(row.req_id.clone()));
        assert_eq!(first["status"], Value::from(row.status_code));
        assert_eq!(first["time"], Value::from(row.req_time_sec));
        assert_eq!(first["host"], Value::String(row.req_host.clone()));
        assert_eq!(first["_principal"], "edge-a");
        assert_eq!(first["_batch_id"], "b-1");
        // Text is the decoded value (sluice URL-decodes DataStream 2's UA), absent nullable
        // columns are null.
        for (line, row) in lines.iter().zip(&rows) {
            match &row.ua {
                Some(ua) => assert_eq!(line["user_agent"], Value::String(ua.clone())),
                None => assert!(line.get("user_agent").is_none()),
            }
            match row.referer.as_deref() {
                Some(r) => assert_eq!(line["referer"], r),
                None => assert_eq!(line["referer"], Value::Null),
            }
        }
        // Every schema column but the absent non-nullable ones is present, in schema order.
        let first_line = std::str::from_utf8(body.split(|&b| b == b'\n').next().unwrap()).unwrap();
        let positions: Vec<usize> = schema
            .columns
            .iter()
            .filter(|c| lines[0].get(&c.name).is_some())
            .map(|c| first_line.find(&format!("\"{}\":", c.name)).unwrap())
            .collect();
        assert!(positions.len() >= 25, "{first_line}");
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{first_line}");
    }

    #[test]
    fn event_rows_use_seconds_defaults_json_text_and_extras() {
        let schema = schema(Stream::EdgeEvents);
        let rows = Generator::new(4).edge_events(300);
        let body = encode_event_rows(&schema.columns, &rows, &ctx()).unwrap();
        let lines: Vec<Value> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        for (line, row) in lines.iter().zip(&rows) {
            assert_eq!(line["event_id"], Value::String(row.id.clone()));
            assert_eq!(line["time"], Value::from(row.unix_seconds()));
            assert_eq!(line["level"], row.effective_level());
            assert_eq!(
                line["properties"],
                Value::String(row.properties.to_string())
            );
            assert!(line["tags"].is_array());
            if row.extra.is_empty() {
                assert_eq!(line["_extra"], "");
            } else {
                let extra: Value = serde_json::from_str(line["_extra"].as_str().unwrap()).unwrap();
                assert_eq!(extra, Value::Object(row.extra.clone()));
            }
        }
    }

    #[test]
    fn insert_plan_cycles_through_the_pool() {
        // 20 bodies per insert over a pool of 8: starts 0, 4, 0, … → 2 distinct inserts.
        assert_eq!(insert_plan(8, 5000, 100_000), (20, 2));
        // 3 per insert over 8: starts 0, 3, 6, 1, … → all 8.
        assert_eq!(insert_plan(8, 1000, 2500), (3, 8));
        // Bodies bigger than an insert: one body each.
        assert_eq!(insert_plan(4, 10_000, 100), (1, 4));
        assert_eq!(insert_plan(1, 100, 1000), (10, 1));
        assert_eq!(insert_plan(5, 100, 500), (5, 1));
    }
}
