//! Every body format lands exactly the rows that were sent, every column compared, in the real
//! ClickHouse.

mod common;

use std::collections::HashMap;

use common::server::{TestServer, post};
use sluice_loadtest::generator::{self, EdgeAccess, EdgeEvent, Encoding, Format, Generator};

/// Every column of `edge_access` as text, keyed by request id.
async fn access_rows(server: &TestServer) -> HashMap<String, Vec<Option<String>>> {
    let columns = [
        "ds_version",
        "stream_id",
        "cp_code",
        "toUnixTimestamp(time)",
        "bytes",
        "client_ip",
        "status",
        "protocol",
        "host",
        "method",
        "path",
        "port",
        "response_bytes",
        "content_type",
        "user_agent",
        "tls_overhead_ms",
        "tls_version",
        "ttfb_ms",
        "cache_status",
        "referer",
        "country",
        "asn",
        "edgeworker_id",
        "region",
        "_principal",
    ];
    let select = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("toString({c}) AS c{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = server
        .clickhouse
        .rows(&format!(
            "SELECT request_id, {select} FROM {}.edge_access",
            server.clickhouse.database
        ))
        .await;
    rows.into_iter()
        .map(|row| {
            let values = (0..columns.len())
                .map(|i| row[format!("c{i}")].as_str().map(str::to_string))
                .collect();
            (row["request_id"].as_str().unwrap().to_string(), values)
        })
        .collect()
}

/// What ClickHouse must hold for a generated row (absent non-nullable fields are zero/empty).
fn expected_access(row: &EdgeAccess, principal: &str) -> Vec<Option<String>> {
    let text = |v: &dyn ToString| Some(v.to_string());
    let zero_or = |v: Option<u64>| Some(v.unwrap_or(0).to_string());
    let empty_or = |v: &Option<String>| Some(v.clone().unwrap_or_default());
    vec![
        text(&row.version),
        text(&row.stream_id),
        text(&row.cp),
        text(&row.req_time_sec),
        text(&row.bytes),
        text(&row.cli_ip),
        text(&row.status_code),
        text(&row.proto),
        text(&row.req_host),
        text(&row.req_method),
        text(&row.req_path),
        text(&row.req_port),
        zero_or(row.rsp_content_len),
        empty_or(&row.rsp_content_type),
        empty_or(&row.ua),
        zero_or(row.tls_overhead_time_msec.map(u64::from)),
        empty_or(&row.tls_version),
        row.time_to_first_byte.map(|v| v.to_string()),
        text(&row.cache_status),
        row.referer.clone(),
        empty_or(&row.country),
        row.asn.map(|v| v.to_string()),
        row.ew_id.map(|v| v.to_string()),
        Some(if principal == "edge-a" { "eu-test" } else { "" }.to_string()),
        Some(principal.to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_lands_the_rows_it_carries() {
    // edge-a sends as DataStream 2 does (URL-encoded text: JSON and structured lines); edge-b is
    // a CSV sender that does not URL-encode.
    let server = TestServer::start_with("formats", "", |config| {
        config.principals[1].streams = vec!["*".to_string()];
    })
    .await;
    let cases = [
        (Format::Ndjson, Encoding::Gzip, "edge-a"),
        (Format::JsonArray, Encoding::Identity, "edge-a"),
        (Format::Csv, Encoding::Zstd, "edge-b"),
        (Format::Delimited, Encoding::Gzip, "edge-a"),
    ];
    let mut sent: Vec<(EdgeAccess, &str)> = Vec::new();
    for (seed, (format, encoding, principal)) in cases.into_iter().enumerate() {
        let client = server.client(Some(if principal == "edge-a" {
            "client-a"
        } else {
            "client-b"
        }));
        let rows = Generator::new(100 + seed as u64).edge_access(400);
        let body = generator::compress(&generator::encode_access(&rows, format), encoding);
        let (status, answer) = post(
            &client,
            &server.url("edge_access"),
            format.content_type(),
            Some(encoding.content_encoding()),
            body,
        )
        .await;
        assert_eq!(status, 200, "{format:?}: {answer}");
        assert_eq!(
            (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
            (Some(400), Some(0)),
            "{format:?}: {answer}"
        );
        sent.extend(rows.into_iter().map(|row| (row, principal)));
    }
    let landed = access_rows(&server).await;
    assert_eq!(landed.len(), sent.len(), "one row per request id");
    // Every insert carries its insert id as query_id and asks for log_queries=1, so
    // system.query_log (off by default on 18.16) records it.
    server.clickhouse.exec("SYSTEM FLUSH LOGS").await;
    let logged = server
        .clickhouse
        .rows(&format!(
            "SELECT sum(written_rows) AS rows FROM system.query_log WHERE type = 2 \
             AND query_id LIKE 'sluice-%' AND query LIKE 'INSERT INTO {}.edge_access %'",
            server.clickhouse.database
        ))
        .await;
    assert_eq!(logged[0]["rows"], "1600", "{logged:?}");
    // The rows went out in the table's ORDER BY order: ClickHouse wrote every block of every
    // insert without sorting it (the generator's hosts come in random order).
    let event = |name: &str| {
        format!(
            "sumArray(arrayMap((n, v) -> if(n = '{name}', v, 0), ProfileEvents.Names, \
             ProfileEvents.Values))"
        )
    };
    let blocks = server
        .clickhouse
        .rows(&format!(
            "SELECT {} AS blocks, {} AS sorted FROM system.query_log WHERE type = 2 \
             AND query_id LIKE 'sluice-%' AND query LIKE 'INSERT INTO {}.edge_access %'",
            event("MergeTreeDataWriterBlocks"),
            event("MergeTreeDataWriterBlocksAlreadySorted"),
            server.clickhouse.database
        ))
        .await;
    assert_ne!(blocks[0]["blocks"], "0", "{blocks:?}");
    assert_eq!(blocks[0]["sorted"], blocks[0]["blocks"], "{blocks:?}");
    for (row, principal) in &sent {
        let got = landed
            .get(&row.req_id)
            .unwrap_or_else(|| panic!("{} missing", row.req_id));
        assert_eq!(got, &expected_access(row, principal), "row {}", row.req_id);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datastream2_batch_as_akamai_documents_it_is_accepted_whole() {
    let server = TestServer::start("ds2_sample").await;
    let client = server.client(Some("client-a"));
    let body = generator::ds2_sample_batch();
    let records = body.lines().filter(|l| !l.trim().is_empty()).count();
    let (status, answer) = post(
        &client,
        &server.url("edge_access"),
        "application/json",
        None,
        body.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["rejected"], 0, "{answer}");
    assert_eq!(answer["accepted"].as_u64(), Some(records as u64));
    let rows = server
        .clickhouse
        .rows(&format!(
            "SELECT user_agent, path FROM {}.edge_access ORDER BY request_id LIMIT 1",
            server.clickhouse.database
        ))
        .await;
    let agent = rows[0]["user_agent"].as_str().unwrap();
    assert!(
        !agent.contains('%') && !agent.contains('+'),
        "URL-decoded: {agent}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_with_uuids_enums_arrays_and_json() {
    let server = TestServer::start("events").await;
    let client = server.client(Some("client-b"));
    let events: Vec<EdgeEvent> = Generator::new(7).edge_events(300);
    let body = generator::compress(
        &generator::encode_events(&events, Format::Ndjson),
        Encoding::Gzip,
    );
    let (status, answer) = post(
        &client,
        &server.url("edge_events"),
        "application/x-ndjson",
        Some("gzip"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 300, "{answer}");

    let rows = server
        .clickhouse
        .rows(&format!(
            "SELECT toString(event_id) AS id, toUnixTimestamp(time) AS t, worker, name, toString(level) AS level, \
             duration_ms, status, host, tags, properties, _extra, _principal FROM {}.edge_events",
            server.clickhouse.database
        ))
        .await;
    assert_eq!(rows.len(), 300);
    let by_id: HashMap<&str, &serde_json::Value> = rows
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    for event in &events {
        let row = by_id[event.id.as_str()];
        assert_eq!(
            row["t"].as_u64(),
            Some(event.unix_seconds()),
            "{}",
            event.id
        );
        assert_eq!(row["worker"], event.worker.as_str());
        assert_eq!(row["name"], event.event.as_str());
        assert_eq!(row["level"], event.effective_level());
        assert_eq!(
            row["duration_ms"].as_f64(),
            event.duration_ms,
            "{}",
            event.id
        );
        assert_eq!(row["status"].as_u64(), event.status.map(u64::from));
        assert_eq!(row["host"].as_str(), event.host.as_deref());
        let tags: Vec<&str> = row["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tags, event.tags);
        let properties: serde_json::Value =
            serde_json::from_str(row["properties"].as_str().unwrap()).unwrap();
        assert_eq!(properties, event.properties);
        let extra: serde_json::Value =
            serde_json::from_str(row["_extra"].as_str().unwrap()).unwrap();
        assert_eq!(extra, serde_json::Value::Object(event.extra.clone()));
        assert_eq!(row["_principal"], "edge-b");
    }
    server.stop().await;
}
