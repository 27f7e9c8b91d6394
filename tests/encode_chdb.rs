//! The Native encoder's bytes against the current ClickHouse engine, through chDB.
//!
//! A batch with a column of every supported type is encoded (without the compressed-block
//! framing, which is a transport matter) into a file that `tests/chdb/read_native.py` reads with
//! `file(…, Native)`; every value is compared. Needs a Python with `chdb` (`pip install
//! chdb-core`): `$CHDB_PYTHON`, default `python3`. Without it the test fails, it never skips.

mod encode_sample;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use serde_json::Value;
use sluice::encode::{NativeColumn, write_native_block};
use sluice::schema::ChType;

/// Writes `native` to a file, has chDB read it with the given structure and returns its rows,
/// sorted by the `row` column.
fn read_with_chdb(native: &[u8], structure: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("batch.native");
    std::fs::write(&file, native).expect("write the Native file");
    let python = std::env::var("CHDB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/read_native.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&file)
        .arg(structure)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {python:?} (set CHDB_PYTHON to a Python that has `chdb`, \
                 e.g. after `pip install chdb-core`): {err}"
            )
        });
    assert!(
        output.status.success(),
        "{python} {} failed ({}): {}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("chDB rows are UTF-8");
    let mut rows: Vec<Value> = stdout
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).expect("a JSON row"))
        .collect();
    rows.sort_by_key(|row| row["row"].as_u64().expect("numeric row column"));
    rows
}

#[test]
fn the_current_engine_reads_every_type() {
    let rows = encode_sample::rows();
    let batch = encode_sample::batch(&rows);
    // An empty block, then two blocks of a sliced batch.
    let mut native = Vec::new();
    encode_sample::write_block(&batch.slice(0, 0), &mut native).unwrap();
    encode_sample::write_block(&batch.slice(0, 4), &mut native).unwrap();
    encode_sample::write_block(&batch.slice(4, rows.len() - 4), &mut native).unwrap();
    let actual = read_with_chdb(&native, &encode_sample::structure());
    encode_sample::assert_rows_match("chDB", actual, &rows);
}

/// LowCardinality with UInt16 indexes (300 values) and UInt32 indexes (70 001 keys).
#[test]
fn the_current_engine_reads_wide_low_cardinality_indexes() {
    const ROWS: u32 = 70_000;
    let names = ["row", "lc", "lcn"];
    let types: Vec<ChType> = [
        "UInt32",
        "LowCardinality(String)",
        "LowCardinality(Nullable(String))",
    ]
    .iter()
    .map(|ty| ChType::parse(ty).unwrap())
    .collect();
    let lc: Vec<String> = (0..ROWS).map(|i| format!("key {i}")).collect();
    let lcn: Vec<Option<String>> = (0..ROWS)
        .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 300)))
        .collect();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..ROWS)),
        Arc::new(StringArray::from_iter_values(&lc)),
        Arc::new(StringArray::from_iter(lcn.iter().map(|v| v.as_deref()))),
    ];
    let batch = RecordBatch::try_from_iter(names.iter().copied().zip(arrays)).unwrap();
    let columns: Vec<NativeColumn<'_>> = names
        .iter()
        .zip(&types)
        .map(|(name, ch_type)| NativeColumn { name, ch_type })
        .collect();
    let mut native = Vec::new();
    write_native_block(&columns, &batch, &mut native).unwrap();

    let structure = names
        .iter()
        .zip(&types)
        .map(|(name, ty)| format!("{name} {ty}"))
        .collect::<Vec<_>>()
        .join(", ");
    let actual = read_with_chdb(&native, &structure);
    assert_eq!(actual.len(), ROWS as usize);
    for (i, row) in actual.iter().enumerate() {
        let expected = serde_json::json!({"row": i, "lc": lc[i], "lcn": lcn[i]});
        assert_eq!(*row, expected, "row {i}");
    }
}

/// The DDL for modern servers (with `non_replicated_deduplication_window`) runs on the current
/// engine, and an insert retried with the same `insert_deduplication_token` (sluice sends its
/// insert id) is stored once.
#[test]
fn modern_ddl_and_deduplication_tokens_work_on_the_current_engine() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "schema",
            "ddl",
            "--schemas",
            "schemas",
            "--server-version",
            "26.9",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(output.status.success());
    let dir = tempfile::tempdir().unwrap();
    let ddl = dir.path().join("ddl.sql");
    std::fs::write(&ddl, &output.stdout).unwrap();
    let python = std::env::var("CHDB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/dedup_token.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&ddl)
        .output()
        .unwrap_or_else(|err| {
            panic!("cannot run {python:?} (set CHDB_PYTHON to a Python that has `chdb`): {err}")
        });
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        result["tables"],
        serde_json::json!([
            "sluice.edge_access",
            "sluice.edge_access_quarantine",
            "sluice.edge_access_1m_input",
            "sluice.edge_access_1m_flushes",
            "sluice.edge_events",
            "sluice.edge_events_quarantine"
        ])
    );
    assert_eq!(result["rows_after_retry"], 1, "the retry was deduplicated");
    assert_eq!(result["rows_after_new_insert"], 2);
}
