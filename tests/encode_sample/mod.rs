//! One table's worth of sample rows with a column of every type the Native encoder supports,
//! shared by the tests that check the encoder's bytes against real engines
//! (`encode_clickhouse.rs`: ClickHouse 18.16; `encode_chdb.rs`: the current engine via chDB).
//!
//! The rows carry the awkward values: NULLs, empty strings and arrays, unicode, quotes, zero
//! bytes in FixedString, the ends of every integer range, a UUID with distinct bytes.
#![allow(dead_code)]

use std::sync::Arc;

use arrow_array::builder::{FixedSizeBinaryBuilder, ListBuilder, StringBuilder};
use arrow_array::types::Int16Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
};
use serde_json::{Value, json};
use sluice::encode::{EncodeError, NativeColumn, write_native_block};
use sluice::schema::ChType;

/// Column names and ClickHouse types, in table order.
pub const COLUMNS: &[(&str, &str)] = &[
    ("row", "UInt32"),
    ("s", "String"),
    ("lc", "LowCardinality(String)"),
    ("lcn", "LowCardinality(Nullable(String))"),
    ("fs", "FixedString(4)"),
    ("u8", "UInt8"),
    ("u16", "UInt16"),
    ("u64", "UInt64"),
    ("i8", "Int8"),
    ("i16", "Int16"),
    ("i32", "Int32"),
    ("i64", "Int64"),
    ("f32", "Float32"),
    ("f64", "Float64"),
    ("ts", "DateTime"),
    ("method", "Enum8('GET' = 1, 'POST' = 2, 'délété' = -1)"),
    ("id", "UUID"),
    ("n_i64", "Nullable(Int64)"),
    ("n_f64", "Nullable(Float64)"),
    ("n_s", "Nullable(String)"),
    ("n_fs", "Nullable(FixedString(2))"),
    ("n_ts", "Nullable(DateTime)"),
    ("n_method", "Nullable(Enum8('GET' = 1, 'POST' = 2))"),
    ("n_id", "Nullable(UUID)"),
    ("tags", "Array(String)"),
    // Request-context columns as the validator builds them: Dictionary(Int16, Utf8).
    ("ctx", "String"),
    ("ctx_lc", "LowCardinality(String)"),
    ("ctx_n", "Nullable(String)"),
];

/// Names of the DateTime columns (engines print those differently; tests select them as unix
/// seconds).
pub const DATETIME_COLUMNS: &[&str] = &["ts", "n_ts"];

/// Enum names by code, as declared in [`COLUMNS`].
fn method_name(code: i8) -> &'static str {
    match code {
        1 => "GET",
        2 => "POST",
        -1 => "délété",
        _ => panic!("undeclared code {code}"),
    }
}

/// One sample row.
pub struct Row {
    pub row: u32,
    pub s: &'static str,
    pub lc: &'static str,
    pub lcn: Option<&'static str>,
    pub fs: [u8; 4],
    pub u8: u8,
    pub u16: u16,
    pub u64: u64,
    pub i8: i8,
    pub i16: i16,
    pub i32: i32,
    pub i64: i64,
    pub f32: f32,
    pub f64: f64,
    pub ts: u32,
    pub method: i8,
    pub id: &'static str,
    pub n_i64: Option<i64>,
    pub n_f64: Option<f64>,
    pub n_s: Option<&'static str>,
    pub n_fs: Option<[u8; 2]>,
    pub n_ts: Option<u32>,
    pub n_method: Option<i8>,
    pub n_id: Option<&'static str>,
    pub tags: &'static [&'static str],
    /// The value of the three dictionary columns.
    pub ctx: &'static str,
}

pub fn rows() -> Vec<Row> {
    vec![
        Row {
            row: 0,
            s: "",
            lc: "",
            lcn: None,
            fs: *b"ab\0\0",
            u8: 0,
            u16: 0,
            u64: 0,
            i8: i8::MIN,
            i16: i16::MIN,
            i32: i32::MIN,
            i64: i64::MIN,
            f32: 0.0,
            f64: 0.0,
            ts: 0,
            method: 1,
            id: "00000000-0000-0000-0000-000000000000",
            n_i64: None,
            n_f64: None,
            n_s: None,
            n_fs: None,
            n_ts: None,
            n_method: None,
            n_id: None,
            tags: &[],
            ctx: "edge-a",
        },
        Row {
            row: 1,
            s: "plain",
            lc: "a",
            lcn: Some("a"),
            fs: *b"abcd",
            u8: u8::MAX,
            u16: u16::MAX,
            u64: u64::MAX,
            i8: i8::MAX,
            i16: i16::MAX,
            i32: i32::MAX,
            i64: i64::MAX,
            f32: 1.5,
            f64: -2.25,
            ts: 1_500_000_000,
            method: 2,
            id: "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
            n_i64: Some(-7),
            n_f64: Some(0.5),
            n_s: Some(""),
            n_fs: Some(*b"xy"),
            n_ts: Some(1_600_000_000),
            n_method: Some(2),
            n_id: Some("61f0c404-5cb3-11e7-907b-a6006ad3dba0"),
            tags: &["", "x"],
            ctx: "",
        },
        Row {
            row: 2,
            s: "héllo 日本 🚀",
            lc: "日本",
            lcn: Some(""),
            fs: *b"\xc3\xa9\0\0",
            u8: 7,
            u16: 258,
            u64: 1 << 40,
            i8: -1,
            i16: -2,
            i32: -3,
            i64: -4,
            f32: -0.25,
            f64: 3.125,
            ts: 4_294_967_295,
            method: -1,
            id: "00112233-4455-6677-8899-aabbccddeeff",
            n_i64: None,
            n_f64: Some(-1.0),
            n_s: Some("ünï"),
            n_fs: None,
            n_ts: None,
            n_method: Some(1),
            n_id: None,
            tags: &["日本", "with \"quote\"", "tab\tand\\backslash"],
            ctx: "区域 \"b\"",
        },
        Row {
            row: 3,
            s: "it's \"quoted\"\n\\",
            lc: "a",
            lcn: None,
            fs: *b"\0\0\0\0",
            u8: 1,
            u16: 1,
            u64: 1,
            i8: 1,
            i16: 1,
            i32: 1,
            i64: 1,
            f32: 2.0,
            f64: 1e-3,
            ts: 1,
            method: 1,
            id: "ffffffff-ffff-ffff-ffff-ffffffffffff",
            n_i64: Some(i64::MIN),
            n_f64: None,
            n_s: None,
            n_fs: Some(*b"\0z"),
            n_ts: Some(0),
            n_method: None,
            n_id: Some("00000000-0000-0000-0000-000000000001"),
            tags: &[],
            ctx: "edge-a",
        },
        Row {
            row: 4,
            s: "four",
            lc: "",
            lcn: Some("b"),
            fs: *b"wxyz",
            u8: 4,
            u16: 4,
            u64: 4,
            i8: 4,
            i16: 4,
            i32: 4,
            i64: 4,
            f32: 4.0,
            f64: 4.0,
            ts: 4,
            method: 2,
            id: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            n_i64: Some(0),
            n_f64: Some(0.0),
            n_s: Some("four"),
            n_fs: Some(*b"ab"),
            n_ts: Some(4),
            n_method: Some(1),
            n_id: Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            tags: &["a"],
            ctx: "edge-a",
        },
        Row {
            row: 5,
            s: "five",
            lc: "日本",
            lcn: Some("a"),
            fs: *b"5555",
            u8: 5,
            u16: 5,
            u64: 5,
            i8: 5,
            i16: 5,
            i32: 5,
            i64: 5,
            f32: 5.5,
            f64: 5.5,
            ts: 5,
            method: -1,
            id: "00000000-0000-0000-0000-000000000005",
            n_i64: None,
            n_f64: None,
            n_s: None,
            n_fs: None,
            n_ts: None,
            n_method: None,
            n_id: None,
            tags: &["", "", ""],
            ctx: "区域 \"b\"",
        },
    ]
}

/// The ClickHouse types of [`COLUMNS`].
pub fn column_types() -> Vec<ChType> {
    COLUMNS
        .iter()
        .map(|(_, ty)| ChType::parse(ty).expect("sample type parses"))
        .collect()
}

/// `name Type, …` — the table structure.
pub fn structure() -> String {
    COLUMNS
        .iter()
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fixed<const N: usize>(values: impl Iterator<Item = Option<[u8; N]>>) -> ArrayRef {
    let mut builder = FixedSizeBinaryBuilder::new(N as i32);
    for value in values {
        match value {
            Some(bytes) => builder.append_value(bytes).unwrap(),
            None => builder.append_null(),
        }
    }
    Arc::new(builder.finish())
}

fn uuid_bytes(text: &str) -> [u8; 16] {
    *uuid::Uuid::parse_str(text).unwrap().as_bytes()
}

/// The Arrow batch of `rows`, in the representation the validator builds.
pub fn batch(rows: &[Row]) -> RecordBatch {
    let mut tags = ListBuilder::new(StringBuilder::new());
    for row in rows {
        for tag in row.tags {
            tags.values().append_value(tag);
        }
        tags.append(true);
    }
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.row))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.s))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.lc))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.lcn))),
        fixed(rows.iter().map(|r| Some(r.fs))),
        Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.u8))),
        Arc::new(UInt16Array::from_iter_values(rows.iter().map(|r| r.u16))),
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.u64))),
        Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.i8))),
        Arc::new(Int16Array::from_iter_values(rows.iter().map(|r| r.i16))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.i32))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.i64))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.f32))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.f64))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.ts))),
        Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.method))),
        fixed(rows.iter().map(|r| Some(uuid_bytes(r.id)))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.n_i64))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.n_f64))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.n_s))),
        fixed(rows.iter().map(|r| r.n_fs)),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.n_ts))),
        Arc::new(Int8Array::from_iter(rows.iter().map(|r| r.n_method))),
        fixed(rows.iter().map(|r| r.n_id.map(uuid_bytes))),
        Arc::new(tags.finish()),
        context_column(rows),
        context_column(rows),
        context_column(rows),
    ];
    RecordBatch::try_from_iter(COLUMNS.iter().map(|(name, _)| *name).zip(arrays))
        .expect("sample batch")
}

/// The `ctx` values as a dictionary with Int16 keys, values in order of first appearance (the
/// shape the validator gives request-context columns; a body validated in parts has several).
fn context_column(rows: &[Row]) -> ArrayRef {
    let mut values: Vec<&str> = Vec::new();
    let keys = rows.iter().map(|row| {
        let key = match values.iter().position(|v| *v == row.ctx) {
            Some(key) => key,
            None => {
                values.push(row.ctx);
                values.len() - 1
            }
        };
        key as i16
    });
    let keys = Int16Array::from_iter_values(keys.collect::<Vec<_>>());
    Arc::new(DictionaryArray::<Int16Type>::new(
        keys,
        Arc::new(StringArray::from(values)),
    ))
}

/// Appends one Native block of `batch` (whose columns are [`COLUMNS`]) to `out`.
pub fn write_block(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let types = column_types();
    let columns: Vec<NativeColumn<'_>> = COLUMNS
        .iter()
        .zip(&types)
        .map(|((name, _), ch_type)| NativeColumn { name, ch_type })
        .collect();
    write_native_block(&columns, batch, out)
}

fn text(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8(bytes.to_vec()).expect("sample bytes are UTF-8"))
}

/// The row as an engine prints it in JSONEachRow, normalised by [`normalize`]: 64-bit integers
/// and DateTime (as unix seconds) are strings, Enum8 is the name, UUID the text form,
/// FixedString the raw bytes.
pub fn expected_json(row: &Row) -> Value {
    normalize(json!({
        "row": row.row,
        "s": row.s,
        "lc": row.lc,
        "lcn": row.lcn,
        "fs": text(&row.fs),
        "u8": row.u8,
        "u16": row.u16,
        "u64": row.u64.to_string(),
        "i8": row.i8,
        "i16": row.i16,
        "i32": row.i32,
        "i64": row.i64.to_string(),
        "f32": row.f32,
        "f64": row.f64,
        "ts": row.ts.to_string(),
        "method": method_name(row.method),
        "id": row.id,
        "n_i64": row.n_i64.map(|v| v.to_string()),
        "n_f64": row.n_f64,
        "n_s": row.n_s,
        "n_fs": row.n_fs.as_ref().map(|bytes| text(bytes)),
        "n_ts": row.n_ts.map(|v| v.to_string()),
        "n_method": row.n_method.map(method_name),
        "n_id": row.n_id,
        "tags": row.tags,
        "ctx": row.ctx,
        "ctx_lc": row.ctx,
        "ctx_n": row.ctx,
    }))
}

/// Makes JSON from different engines comparable: every number becomes an f64 (all sample
/// numbers that are not 64-bit integers are exact in f64; those travel as strings).
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Number(number) => json!(number.as_f64().expect("number fits f64")),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        Value::Object(fields) => {
            Value::Object(fields.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        other => other,
    }
}

/// Compares rows read back from an engine with the sample, value by value, naming the first
/// difference.
pub fn assert_rows_match(engine: &str, actual: Vec<Value>, expected: &[Row]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{engine}: row count; got {actual:#?}"
    );
    for (actual, expected_row) in actual.into_iter().zip(expected) {
        let actual = normalize(actual);
        let expected = expected_json(expected_row);
        for (name, _) in COLUMNS {
            assert_eq!(
                actual.get(*name),
                expected.get(*name),
                "{engine}: row {}, column {name}",
                expected_row.row
            );
        }
        assert_eq!(
            actual.as_object().map(|o| o.len()),
            Some(COLUMNS.len()),
            "{engine}: columns of {actual}"
        );
    }
}
