//! The operator's view against the real ClickHouse: health and readiness, exact counts on
//! `/metrics` after a known load, and one request followed by its id from sluice's JSON log to
//! the insert that carried its rows and on to ClickHouse's `system.query_log`.
//! This binary installs the global metrics recorder and the global logger, so it holds these
//! tests only.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::server::TestServer;
use metrics_exporter_prometheus::PrometheusBuilder;
use sluice::config::{Config, LogConfig, LogFormat};
use sluice::server::Server;

fn record(i: usize, status: &str) -> String {
    format!(
        r#"{{"reqId":"r{i}","reqTimeSec":"1700000000","cliIP":"10.0.0.{i}","statusCode":"{status}","reqHost":"h","reqMethod":"GET","reqPath":"/{i}"}}"#
    )
}

/// Log lines written by sluice, kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Every JSON log line whose fields include `request_id`.
    fn lines_of(&self, request_id: &str) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON log line"))
            .filter(|line| line["request_id"] == request_id)
            .collect()
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    request_id: &str,
    body: String,
) -> (u16, serde_json::Value) {
    let response = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .header("x-request-id", request_id)
        .body(body)
        .send()
        .await
        .expect("request reaches sluice");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_load_and_a_request_id_leads_to_query_log() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let logs = Captured::default();
    let log_config = LogConfig {
        format: LogFormat::Json,
        level: Some("info".to_string()),
    };
    let writer = logs.clone();
    sluice::logging::init(&log_config, move || writer.clone(), false).unwrap();

    let fixture = TestServer::start_with_metrics("admin", "", |_| {}, Some(recorder.clone())).await;
    let client = fixture.client(Some("client-a"));
    let plain = reqwest::Client::new();

    let health = plain
        .get(fixture.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Readiness follows the ClickHouse probe, which runs at start.
    let mut ready = 0;
    for _ in 0..50 {
        ready = plain
            .get(fixture.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if ready == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);

    // The known load: 3 good rows and one of the wrong type; 2 good rows and a line that is
    // not JSON; a batch whose only row lacks required fields (422); an unknown stream (404).
    let url = fixture.url("edge_access");
    let first = format!(
        "{}\n{}\n{}\n{}\n",
        record(1, "200"),
        record(2, "204"),
        record(3, "404"),
        record(4, "x")
    );
    let second = format!("{}\n{{not json\n{}\n", record(5, "200"), record(6, "301"));
    let third = r#"{"reqId":"r7"}"#.to_string() + "\n";
    let body_bytes = first.len() + second.len() + third.len();
    let (status, answer) = post(&client, &url, "req-first", first).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(1))
    );
    let (status, answer) = post(&client, &url, "req-second", second).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    let (status, answer) = post(&client, &url, "req-third", third).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("all_rows_rejected"))
    );
    let (status, _) = post(&client, &fixture.url("nope"), "req-fourth", "{}".into()).await;
    assert_eq!(status, 404);

    let metrics = plain
        .get(fixture.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "sluice_requests_total{stream=\"edge_access\",status=\"200\"} 2".to_string(),
        "sluice_requests_total{stream=\"edge_access\",status=\"422\"} 1".to_string(),
        "sluice_requests_total{stream=\"unknown\",status=\"404\"} 1".to_string(),
        "sluice_principal_requests_total{principal=\"edge-a\",status=\"200\"} 2".to_string(),
        "sluice_principal_requests_total{principal=\"edge-a\",status=\"422\"} 1".to_string(),
        "sluice_rows_accepted_total{stream=\"edge_access\",principal=\"edge-a\"} 5".to_string(),
        "sluice_rows_rejected_total{stream=\"edge_access\",principal=\"edge-a\",reason=\"type\"} 1"
            .to_string(),
        "sluice_rows_rejected_total{stream=\"edge_access\",principal=\"edge-a\",reason=\"malformed\"} 1"
            .to_string(),
        "sluice_rows_rejected_total{stream=\"edge_access\",principal=\"edge-a\",reason=\"missing_field\"} 1"
            .to_string(),
        format!(
            "sluice_request_bytes_total{{stream=\"edge_access\",principal=\"edge-a\"}} {body_bytes}"
        ),
        format!(
            "sluice_request_decoded_bytes_total{{stream=\"edge_access\",principal=\"edge-a\"}} {body_bytes}"
        ),
        "sluice_batch_rows_count{stream=\"edge_access\"} 3".to_string(),
        "sluice_batch_rows_sum{stream=\"edge_access\"} 8".to_string(),
        "sluice_ack_seconds_count{stream=\"edge_access\"} 3".to_string(),
        "sluice_insert_rows_total{table=\"edge_access\"} 5".to_string(),
        "sluice_insert_rows_total{table=\"edge_access_quarantine\"} 3".to_string(),
        "sluice_rollup_folded_rows_total{rollup=\"edge_access_1m\"} 5".to_string(),
        "sluice_insert_batch_rows_sum{table=\"edge_access\"} 5".to_string(),
        "sluice_queue_depth_requests{stream=\"edge_access\",version=\"1\"} 0".to_string(),
        "sluice_in_flight_bytes 0".to_string(),
        "sluice_clickhouse_up 1".to_string(),
        // This test's logger is not the writer thread of `sluice serve`: nothing dropped.
        "sluice_log_lines_dropped_total 0".to_string(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_rollup_groups{rollup=\"edge_access_1m\"} ")),
        "missing sluice_rollup_groups in:\n{metrics}"
    );
    assert_eq!(fixture.clickhouse.count("edge_access").await, 5);
    assert_eq!(fixture.clickhouse.count("edge_access_quarantine").await, 3);

    // One request id → sluice's log line → the insert id → system.query_log.
    let lines = logs.lines_of("req-first");
    let answered = lines
        .iter()
        .find(|line| line["message"] == "request answered")
        .unwrap_or_else(|| panic!("no `request answered` line for req-first: {lines:?}"));
    assert_eq!(answered["status"], 200);
    assert_eq!(answered["accepted"], 3);
    assert_eq!(answered["principal"], "edge-a");
    let delivered = lines
        .iter()
        .find(|line| line["message"] == "request delivered")
        .unwrap_or_else(|| panic!("no `request delivered` line for req-first: {lines:?}"));
    let insert_ids: Vec<&str> = answered["insert_ids"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(delivered["insert_ids"], answered["insert_ids"]);
    // Accepted rows to edge_access, the rejected one to its quarantine table, and the
    // partial rows of the edge_access_1m rollup that folded the accepted ones.
    assert_eq!(insert_ids.len(), 3, "{answered}");
    let refused = logs.lines_of("req-fourth");
    assert_eq!(refused[0]["message"], "request refused");
    assert_eq!(refused[0]["code"], "unknown_stream");

    let clickhouse = &fixture.clickhouse;
    clickhouse.exec("SYSTEM FLUSH LOGS").await;
    let quoted: Vec<String> = insert_ids.iter().map(|id| format!("'{id}'")).collect();
    let logged = clickhouse
        .rows(&format!(
            "SELECT query_id, written_rows, query FROM system.query_log \
             WHERE type = 2 AND query_id IN ({}) ORDER BY written_rows DESC",
            quoted.join(", ")
        ))
        .await;
    assert_eq!(logged.len(), 3, "{logged:?}");
    let insert_into = |table: &str| {
        let prefix = format!("INSERT INTO {}.{table} ", clickhouse.database);
        logged
            .iter()
            .find(|row| row["query"].as_str().unwrap().contains(&prefix))
            .unwrap_or_else(|| panic!("no insert into {table}: {logged:?}"))
    };
    assert_eq!(insert_into("edge_access")["written_rows"], "3");
    assert_eq!(insert_into("edge_access_quarantine")["written_rows"], "1");
    insert_into("edge_access_1m_input");
    // The rows carry the request id in their audit column.
    let stored = clickhouse
        .rows(&format!(
            "SELECT count() AS n FROM {}.edge_access WHERE _request_id = 'req-first'",
            clickhouse.database
        ))
        .await;
    assert_eq!(stored[0]["n"], "3");
    fixture.stop().await;

    // A dead ClickHouse makes the server not ready.
    let clickhouse = common::TestClickHouse::new("admin_dead").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    sluice::certs::write_dev_certs(&certs).unwrap();
    let mut config =
        Config::from_toml(&common::server::config_text(&certs, &clickhouse, "")).unwrap();
    config.clickhouse.url = "http://127.0.0.1:1".to_string();
    config.clickhouse.apply_schema = false;
    let server = Server::start(config, Some(recorder.clone())).await.unwrap();
    let admin = format!("http://{}", server.admin_addr);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ready = plain.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.text().await.unwrap(),
        "not ready: clickhouse unreachable\n"
    );
    server.shutdown().await.unwrap();
}
