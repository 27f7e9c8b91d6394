//! The `edge_access_1m` rollup against the real ClickHouse: for a generated day of edge traffic,
//! the documented analyst queries on the rollup table give the same answers as the same GROUP BY
//! on the raw table — counts, sums, min and max exactly, distinct counts equal to `uniqCombined`
//! over the raw rows, quantiles within the bins' relative error — whether one sluice process
//! ingests the day or two processes each ingest half of it.

mod common;

use common::TestClickHouse;
use common::server::{TestServer, config_text, post};
use sluice::config::Config;
use sluice::server::Server;
use sluice_loadtest::generator::{self, Encoding, Format, Generator, GeneratorConfig};

const ROWS: usize = 40_000;
const ROWS_PER_BODY: usize = 4_000;

/// The day's request bodies (gzip NDJSON, DataStream 2 style).
fn day_of_traffic() -> Vec<Vec<u8>> {
    // Recent times: the raw table's TTL (on current servers) must not expire them.
    let mut generator = Generator::with_config(5, GeneratorConfig::recent(86_400));
    let rows = generator.edge_access(ROWS);
    rows.chunks(ROWS_PER_BODY)
        .map(|chunk| {
            generator::compress(
                &generator::encode_access(chunk, Format::Ndjson),
                Encoding::Gzip,
            )
        })
        .collect()
}

/// The rollup's groups, as the README's analyst query reads them.
const GROUPS: &str = "bucket, host, status_class, cache_status, country";

fn rollup_query(database: &str) -> String {
    format!(
        "SELECT toUInt32(time) AS bucket, host, status_class, cache_status, country, sumMerge(requests) AS requests, sumMerge(bytes) AS bytes, \
             ifNull(minMerge(ttfb_min), 0) AS ttfb_min, ifNull(maxMerge(ttfb_max), 0) AS ttfb_max, \
             uniqCombinedArrayMerge(clients) AS clients, \
             quantilesExactWeightedArrayMerge(0.5, 0.9, 0.99)(ttfb_quantiles) AS ttfb_q \
             FROM {database}.edge_access_1m GROUP BY {GROUPS} ORDER BY {GROUPS}"
    )
}

fn raw_query(database: &str) -> String {
    format!(
        "SELECT toUInt32(toStartOfMinute(time)) AS bucket, host, toUInt8(intDiv(status, 100)) AS status_class, \
             cache_status, country, \
             count() AS requests, sum(bytes) AS bytes, ifNull(min(ttfb_ms), 0) AS ttfb_min, \
             ifNull(max(ttfb_ms), 0) AS ttfb_max, uniqCombined(client_ip) AS clients, \
             uniqExact(client_ip) AS clients_exact, \
             quantilesExactWeighted(0.5, 0.9, 0.99)(ttfb_ms, toUInt64(1)) AS ttfb_q \
             FROM {database}.edge_access GROUP BY {GROUPS} ORDER BY {GROUPS}"
    )
}

async fn rollup_answers(clickhouse: &TestClickHouse) -> Vec<serde_json::Value> {
    clickhouse.rows(&rollup_query(&clickhouse.database)).await
}

async fn raw_answers(clickhouse: &TestClickHouse) -> Vec<serde_json::Value> {
    clickhouse.rows(&raw_query(&clickhouse.database)).await
}

fn number(value: &serde_json::Value) -> f64 {
    match value {
        serde_json::Value::String(text) => text.parse().expect("a number"),
        other => other.as_f64().expect("a number"),
    }
}

/// Compares every group; returns the number of groups.
fn assert_same_answers(rollup: &[serde_json::Value], raw: &[serde_json::Value]) -> usize {
    assert_eq!(rollup.len(), raw.len(), "the same groups");
    for (r, w) in rollup.iter().zip(raw) {
        for key in GROUPS.split(", ") {
            assert_eq!(r[key], w[key], "group key {key}: {r} vs {w}");
        }
        for exact in ["requests", "bytes", "ttfb_min", "ttfb_max", "clients"] {
            assert_eq!(number(&r[exact]), number(&w[exact]), "{exact}: {r} vs {w}");
        }
        // uniqCombined is exact at these cardinalities; the sketch's error applies above them.
        let exact = number(&w["clients_exact"]);
        assert!(
            (number(&r["clients"]) - exact).abs() <= 0.02 * exact,
            "{r} vs {w}"
        );
        let (rq, wq) = (
            r["ttfb_q"].as_array().unwrap(),
            w["ttfb_q"].as_array().unwrap(),
        );
        for (q, (rollup_value, raw_value)) in rq.iter().zip(wq).enumerate() {
            let (a, b) = (number(rollup_value), number(raw_value));
            assert!(
                (a - b).abs() <= 0.01 * b.abs() + 1e-9,
                "quantile {q}: rollup {a} vs raw {b} in {r}"
            );
        }
    }
    rollup.len()
}

async fn send_all(server_urls: &[(reqwest::Client, String)], bodies: &[Vec<u8>]) {
    let mut sends = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (client, url) = &server_urls[i % server_urls.len()];
        sends.push(post(
            client,
            url,
            "application/x-ndjson",
            Some("gzip"),
            body.clone(),
        ));
    }
    for (status, answer) in futures_join(sends).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], ROWS_PER_BODY, "{answer}");
    }
}

async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for future in futures {
        out.push(future.await);
    }
    out
}

fn small_batches(config: &mut Config) {
    // Several flushes per body: partial rows of the same group must merge in ClickHouse.
    config.batch.max_rows = 1_500;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_of_traffic_rolls_up_to_the_raw_answers_on_one_node_and_on_two() {
    let bodies = day_of_traffic();

    // One process ingests the whole day.
    let one = TestServer::start_with("rollup_one", "", small_batches).await;
    let client = one.client(Some("client-a"));
    send_all(&[(client, one.url("edge_access"))], &bodies).await;
    let one_rollup = rollup_answers(&one.clickhouse).await;
    let groups = assert_same_answers(&one_rollup, &raw_answers(&one.clickhouse).await);
    assert!(groups > 1_000, "{groups} groups");
    let stored_partials = one.clickhouse.count("edge_access_1m_input").await;
    assert_eq!(
        stored_partials, 0,
        "the input table stores nothing (Null engine)"
    );
    let flushed: u64 = one
        .clickhouse
        .query(&format!(
            "SELECT sum(rows) FROM {}.edge_access_1m_flushes",
            one.clickhouse.database
        ))
        .await
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        flushed, ROWS as u64,
        "the flush log accounts for every row once"
    );

    // Two processes on one database, each ingesting half of the bodies.
    let first = TestServer::start_with("rollup_two", "", small_batches).await;
    let mut second_config =
        Config::from_toml(&config_text(&first.certs, &first.clickhouse, "")).unwrap();
    small_batches(&mut second_config);
    let second = Server::start(second_config, None)
        .await
        .expect("second sluice starts");
    let second_url = format!(
        "https://localhost:{}/v1/streams/edge_access",
        second.ingest_addr.port()
    );
    let client = first.client(Some("client-a"));
    send_all(
        &[
            (client.clone(), first.url("edge_access")),
            (client, second_url),
        ],
        &bodies,
    )
    .await;
    let two_rollup = rollup_answers(&first.clickhouse).await;
    assert_same_answers(&two_rollup, &raw_answers(&first.clickhouse).await);
    assert_eq!(
        two_rollup, one_rollup,
        "two nodes merge to the one node's answers"
    );

    second.shutdown().await.unwrap();
    first.stop().await;
    one.stop().await;
}

/// The same on the current ClickHouse engine (chDB): sluice's DDL for a current server, raw rows
/// and the partial rows of two accumulators (two nodes' halves) inserted as sluice writes them.
#[test]
fn the_current_engine_merges_partials_to_the_raw_answers() {
    use sluice::aggregate::rollup::RollupState;
    use sluice::encode::{NativeColumn, native_columns, write_native_block};
    use sluice::schema::SchemaSet;
    use sluice::schema::ddl::{ServerVersion, script, statements};
    use sluice::validate::{CompiledSchema, RequestContext, StreamOptions};
    use std::path::Path;

    let set = SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
    let ddl = script(&statements(
        set.latest().map(|s| s.as_ref()),
        "sluice",
        ServerVersion::parse("26.9").unwrap(),
    ));
    let schema = set
        .versions("edge_access")
        .unwrap()
        .values()
        .next_back()
        .unwrap()
        .clone();
    let compiled = CompiledSchema::new(schema.clone(), &StreamOptions::default()).unwrap();
    let context = RequestContext {
        principal: "edge-a".into(),
        url_encoded: true,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut inserts = Vec::new();
    let rollup = schema.rollups[0].clone();
    let rollup_columns = rollup.input_columns();
    let mut nodes = [
        RollupState::new(rollup.clone()),
        RollupState::new(rollup.clone()),
    ];
    for (i, body) in day_of_traffic().iter().enumerate() {
        let mut bytes =
            sluice::decode::decompress(body, sluice::decode::ContentEncoding::Gzip, 1 << 30)
                .unwrap();
        let fields = compiled.delimited_fields();
        let options = sluice::decode::DecodeOptions {
            delimiter: compiled.delimiter(),
            delimited_fields: &fields,
            max_records: usize::MAX,
            max_line_bytes: usize::MAX,
            max_nesting_depth: 64,
        };
        let mut builder = compiled.begin(&context, 100);
        sluice::decode::decode(
            sluice::decode::BodyFormat::Ndjson,
            &mut bytes,
            &options,
            &mut builder,
        )
        .unwrap();
        let batch = builder.finish().batch;
        let mut native = Vec::new();
        write_native_block(&native_columns(&schema), &batch, &mut native).unwrap();
        let raw = dir.path().join(format!("raw-{i}.native"));
        std::fs::write(&raw, native).unwrap();
        inserts.push(("sluice.edge_access".to_string(), raw));
        // Each node flushes after every body it folds: many partial rows per group.
        let node = &mut nodes[i % 2];
        node.fold(&batch, 0);
        let rows = node.take();
        let partial = node.to_batch(&rows, &format!("flush-{i}"), &[]);
        let columns: Vec<NativeColumn<'_>> = rollup_columns
            .iter()
            .map(|(name, ch_type)| NativeColumn { name, ch_type })
            .collect();
        let mut native = Vec::new();
        write_native_block(&columns, &partial, &mut native).unwrap();
        let path = dir.path().join(format!("partial-{i}.native"));
        std::fs::write(&path, native).unwrap();
        inserts.push(("sluice.edge_access_1m_input".to_string(), path));
    }
    let ddl_file = dir.path().join("ddl.sql");
    std::fs::write(&ddl_file, ddl).unwrap();
    let python = std::env::var("CHDB_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/chdb/rollup.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .arg(&ddl_file)
        .arg(serde_json::to_string(&inserts).unwrap())
        .arg(serde_json::to_string(&[rollup_query("sluice"), raw_query("sluice")]).unwrap())
        .output()
        .unwrap_or_else(|err| panic!("cannot run {python:?} (needs chdb-core): {err}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Vec<serde_json::Value>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let groups = assert_same_answers(&answers[0], &answers[1]);
    assert!(groups > 1_000, "{groups} groups");
}
