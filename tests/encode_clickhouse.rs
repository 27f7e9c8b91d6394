//! The Native encoder and the compressed-block framing against a real ClickHouse 18.16 server
//! (`TEST_CLICKHOUSE_URL`): every supported type is inserted over HTTP plain, LZ4-framed and
//! zstd-framed, and every value is read back and compared. Also: bodies of several frames, the
//! widest LowCardinality indexes, and the checksum (a wrong one must answer Code 40).

mod common;
mod encode_sample;

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use bytes::Bytes;
use common::TestClickHouse;
use encode_sample::{COLUMNS, DATETIME_COLUMNS};
use sluice::config::ClickHouseConfig;
use sluice::encode::{
    Compression, MAX_FRAME_INPUT_BYTES, NativeColumn, write_compressed_frames, write_native_block,
};
use sluice::schema::ChType;
use sluice::sink::clickhouse::ClickHouseSink;
use sluice::sink::{InsertRequest, Sink, TableTarget};

/// The test ClickHouse for `name`. reqwest is built without a default rustls crypto provider,
/// so the process-wide one (ring, as in sluice) is installed first.
async fn test_clickhouse(name: &str) -> TestClickHouse {
    let _ = rustls::crypto::ring::default_provider().install_default();
    TestClickHouse::new(name).await
}

/// Sends `body` as `INSERT INTO db.table (columns) FORMAT Native`; `framed` adds `decompress=1`.
/// Returns the HTTP status and ClickHouse's answer.
async fn insert(
    clickhouse: &TestClickHouse,
    table: &str,
    columns: &[&str],
    body: Vec<u8>,
    framed: bool,
) -> (reqwest::StatusCode, String) {
    let query = format!(
        "INSERT INTO {}.{table} ({}) FORMAT Native",
        clickhouse.database,
        columns.join(", ")
    );
    let mut params = vec![("query", query.as_str())];
    if framed {
        params.push(("decompress", "1"));
    }
    let response = reqwest::Client::new()
        .post(&clickhouse.url)
        .query(&params)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|err| panic!("ClickHouse at {} did not answer: {err}", clickhouse.url));
    let status = response.status();
    (status, response.text().await.expect("answer body"))
}

async fn insert_ok(
    clickhouse: &TestClickHouse,
    table: &str,
    columns: &[&str],
    body: Vec<u8>,
    framed: bool,
) {
    let (status, answer) = insert(clickhouse, table, columns, body, framed).await;
    assert!(
        status.is_success(),
        "insert into {table} (framed: {framed}) refused: {status} {answer}"
    );
}

async fn create_sample_table(clickhouse: &TestClickHouse, table: &str) {
    clickhouse
        .exec(&format!(
            "CREATE TABLE {}.{table} ({}) ENGINE = MergeTree ORDER BY row",
            clickhouse.database,
            encode_sample::structure()
        ))
        .await;
}

/// The sample table's rows as JSON, DateTime columns as unix seconds.
async fn read_sample_table(clickhouse: &TestClickHouse, table: &str) -> Vec<serde_json::Value> {
    let select_list: Vec<String> = COLUMNS
        .iter()
        .map(|(name, _)| {
            if DATETIME_COLUMNS.contains(name) {
                format!("toString(toUInt32({name})) AS {name}")
            } else {
                name.to_string()
            }
        })
        .collect();
    clickhouse
        .rows(&format!(
            "SELECT {} FROM {}.{table} ORDER BY row",
            select_list.join(", "),
            clickhouse.database
        ))
        .await
}

fn column_names() -> Vec<&'static str> {
    COLUMNS.iter().map(|(name, _)| *name).collect()
}

#[tokio::test]
async fn every_type_round_trips_plain_lz4_and_zstd() {
    let clickhouse = test_clickhouse("encode").await;
    let rows = encode_sample::rows();
    let batch = encode_sample::batch(&rows);
    let names = column_names();

    // Plain: an empty block, then the rows as two blocks of a sliced batch.
    create_sample_table(&clickhouse, "plain").await;
    let mut plain = Vec::new();
    encode_sample::write_block(&batch.slice(0, 0), &mut plain).unwrap();
    encode_sample::write_block(&batch.slice(0, 2), &mut plain).unwrap();
    encode_sample::write_block(&batch.slice(2, rows.len() - 2), &mut plain).unwrap();
    insert_ok(&clickhouse, "plain", &names, plain, false).await;
    let actual = read_sample_table(&clickhouse, "plain").await;
    encode_sample::assert_rows_match("ClickHouse 18.16, plain Native", actual, &rows);

    // LZ4 frames of one block.
    create_sample_table(&clickhouse, "lz4").await;
    let mut native = Vec::new();
    encode_sample::write_block(&batch, &mut native).unwrap();
    let mut framed = Vec::new();
    write_compressed_frames(&native, Compression::Lz4, 0, &mut framed);
    assert_eq!(framed[16], 0x82, "LZ4 method byte");
    insert_ok(&clickhouse, "lz4", &names, framed, true).await;
    let actual = read_sample_table(&clickhouse, "lz4").await;
    encode_sample::assert_rows_match("ClickHouse 18.16, Native in LZ4 frames", actual, &rows);

    // zstd frames of two blocks.
    create_sample_table(&clickhouse, "zstd").await;
    let mut native = Vec::new();
    encode_sample::write_block(&batch.slice(0, 3), &mut native).unwrap();
    encode_sample::write_block(&batch.slice(3, rows.len() - 3), &mut native).unwrap();
    let mut framed = Vec::new();
    write_compressed_frames(&native, Compression::Zstd, 3, &mut framed);
    assert_eq!(framed[16], 0x90, "zstd method byte");
    insert_ok(&clickhouse, "zstd", &names, framed, true).await;
    let actual = read_sample_table(&clickhouse, "zstd").await;
    encode_sample::assert_rows_match("ClickHouse 18.16, Native in zstd frames", actual, &rows);

    // Stored frames (method 0x02) are accepted too.
    create_sample_table(&clickhouse, "stored").await;
    let mut framed = Vec::new();
    write_compressed_frames(&native, Compression::None, 0, &mut framed);
    insert_ok(&clickhouse, "stored", &names, framed, true).await;
    let actual = read_sample_table(&clickhouse, "stored").await;
    encode_sample::assert_rows_match("ClickHouse 18.16, Native in stored frames", actual, &rows);
}

/// 70 000 rows: LowCardinality with UInt32 indexes (70 001 keys) and UInt16 indexes, a body of
/// several megabytes, so several frames.
#[tokio::test]
async fn large_bodies_span_several_frames_and_wide_low_cardinality_indexes() {
    const ROWS: u32 = 70_000;
    let clickhouse = test_clickhouse("encode_large").await;
    let types: Vec<ChType> = [
        "UInt32",
        "String",
        "LowCardinality(String)",
        "LowCardinality(Nullable(String))",
    ]
    .iter()
    .map(|ty| ChType::parse(ty).unwrap())
    .collect();
    let names = ["row", "s", "lc", "lcn"];
    let columns: Vec<NativeColumn<'_>> = names
        .iter()
        .zip(&types)
        .map(|(name, ch_type)| NativeColumn { name, ch_type })
        .collect();
    let tail = "x".repeat(40);
    let s: Vec<String> = (0..ROWS).map(|i| format!("{i}-{tail}")).collect();
    let s_bytes: usize = s.iter().map(String::len).sum();
    let lc: Vec<String> = (0..ROWS).map(|i| format!("key {i}")).collect();
    let lcn: Vec<Option<String>> = (0..ROWS)
        .map(|i| (i % 7 != 0).then(|| format!("v{}", i % 300)))
        .collect();
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(0..ROWS)),
        Arc::new(StringArray::from_iter_values(&s)),
        Arc::new(StringArray::from_iter_values(&lc)),
        Arc::new(StringArray::from_iter(lcn.iter().map(|v| v.as_deref()))),
    ];
    let batch = RecordBatch::try_from_iter(names.iter().copied().zip(arrays)).unwrap();
    let mut native = Vec::new();
    write_native_block(&columns, &batch, &mut native).unwrap();
    assert!(
        native.len() > 3 * MAX_FRAME_INPUT_BYTES,
        "{} bytes",
        native.len()
    );

    let expected_nulls = (0..ROWS).filter(|i| i % 7 == 0).count();
    let expected_lcn_values = lcn
        .iter()
        .flatten()
        .collect::<std::collections::HashSet<_>>()
        .len();
    for (table, compression) in [("lz4", Compression::Lz4), ("zstd", Compression::Zstd)] {
        clickhouse
            .exec(&format!(
                "CREATE TABLE {}.{table} (row UInt32, s String, lc LowCardinality(String), \
                 lcn LowCardinality(Nullable(String))) ENGINE = MergeTree ORDER BY row",
                clickhouse.database
            ))
            .await;
        let mut framed = Vec::new();
        write_compressed_frames(&native, compression, 1, &mut framed);
        insert_ok(&clickhouse, table, &names, framed, true).await;
        // uniqExact(lcn) would count NULL as a value: 18.16 does that for any
        // LowCardinality(Nullable) column, also one built by the server itself.
        let summary = clickhouse
            .rows(&format!(
                "SELECT count() AS rows, uniqExact(lc) AS lc_values, \
                 uniqExactIf(lcn, lcn IS NOT NULL) AS lcn_values, \
                 countIf(lcn IS NULL) AS lcn_nulls, \
                 sum(length(s)) AS s_bytes, countIf(lc = concat('key ', toString(row))) AS lc_ok, \
                 countIf(s = concat(toString(row), '-{tail}')) AS s_ok \
                 FROM {}.{table}",
                clickhouse.database
            ))
            .await;
        let expected = encode_sample::normalize(serde_json::json!({
            "rows": ROWS.to_string(),
            "lc_values": ROWS.to_string(),
            "lcn_values": expected_lcn_values.to_string(),
            "lcn_nulls": expected_nulls.to_string(),
            "s_bytes": s_bytes.to_string(),
            "lc_ok": ROWS.to_string(),
            "s_ok": ROWS.to_string(),
        }));
        assert_eq!(
            encode_sample::normalize(summary[0].clone()),
            expected,
            "{compression:?}"
        );
        let spot = clickhouse
            .rows(&format!(
                "SELECT row, lcn FROM {}.{table} WHERE row IN (0, 1, 299, 301, 69999) ORDER BY row",
                clickhouse.database
            ))
            .await;
        assert_eq!(
            spot,
            serde_json::json!([
                {"row": 0, "lcn": null},
                {"row": 1, "lcn": "v1"},
                {"row": 299, "lcn": "v299"},
                {"row": 301, "lcn": null},
                {"row": 69999, "lcn": "v99"},
            ])
            .as_array()
            .unwrap()
            .clone(),
            "{compression:?}"
        );
    }
}

#[tokio::test]
async fn a_wrong_checksum_is_refused_with_code_40() {
    let clickhouse = test_clickhouse("encode_checksum").await;
    create_sample_table(&clickhouse, "t").await;
    let names = column_names();
    let rows = encode_sample::rows();
    let mut native = Vec::new();
    encode_sample::write_block(&encode_sample::batch(&rows), &mut native).unwrap();
    let mut framed = Vec::new();
    write_compressed_frames(&native, Compression::Lz4, 0, &mut framed);

    let mut flipped = framed.clone();
    flipped[3] ^= 0x01;
    // The halves in the other order: what a library returning (second, first) would write.
    let mut swapped = framed.clone();
    swapped[..16].rotate_left(8);
    for (what, body) in [("one flipped bit", flipped), ("swapped halves", swapped)] {
        let (status, answer) = insert(&clickhouse, "t", &names, body, true).await;
        assert!(!status.is_success(), "{what}: accepted");
        assert!(
            answer.contains("Code: 40"),
            "{what}: expected Code 40 (checksum doesn't match), got {status} {answer}"
        );
    }
    assert_eq!(clickhouse.count("t").await, 0);

    insert_ok(&clickhouse, "t", &names, framed, true).await;
    assert_eq!(clickhouse.count("t").await, rows.len() as u64);
}

/// Each insert's body is written again by a later insert once the insert is settled
/// (`pipeline`'s `Bodies`), which takes the ClickHouse client letting go of it: when an insert
/// has returned, its rows are in and the body is the sender's alone again.
#[tokio::test]
async fn an_insert_leaves_its_body_to_the_sender() {
    let clickhouse = test_clickhouse("encode_body_released").await;
    create_sample_table(&clickhouse, "t").await;
    let rows = encode_sample::rows();
    let mut native = Vec::new();
    encode_sample::write_block(&encode_sample::batch(&rows), &mut native).unwrap();
    let config: ClickHouseConfig = toml::from_str(&format!(
        "url = {:?}\ndatabase = {:?}",
        clickhouse.url, clickhouse.database
    ))
    .unwrap();
    let sink = ClickHouseSink::new(&config, None);
    let target = TableTarget::new(&clickhouse.database, "t", column_names().into_iter(), None);
    let request = InsertRequest {
        target: Arc::new(target),
        body: Bytes::from(native),
        framed: false,
        rows: rows.len(),
        insert_id: Arc::from("sluice-body-released"),
        shard: 0,
    };
    sink.insert(&request).await.unwrap();
    assert_eq!(clickhouse.count("t").await, rows.len() as u64);
    assert!(
        request.body.try_into_mut().is_ok(),
        "the client still holds the body of an insert that returned"
    );
}
