//! The admin listener: health, readiness against the real ClickHouse, and Prometheus metrics.
//! This binary installs the global metrics recorder, so it holds this one test only.

mod common;

use common::server::{TestServer, post};
use metrics_exporter_prometheus::PrometheusBuilder;
use sluice::config::Config;
use sluice::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let fixture = TestServer::start("admin").await;
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

    let good = r#"{"reqId":"a","reqTimeSec":"1700000000","cliIP":"10.0.0.1","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/"}"#;
    let bad = good.replace("\"200\"", "\"x\"");
    let (status, _) = post(
        &client,
        &fixture.url("edge_access"),
        "application/x-ndjson",
        None,
        format!("{good}\n{bad}\n").into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &client,
        &fixture.url("nope"),
        "application/x-ndjson",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 404);

    // The fixture's server has no recorder handle; read the global one.
    let text = recorder.render();
    for line in [
        "sluice_requests_total{stream=\"edge_access\",status=\"200\"} 1",
        "sluice_requests_total{stream=\"unknown\",status=\"404\"} 1",
        "sluice_rows_accepted_total{stream=\"edge_access\"} 1",
        "sluice_rows_rejected_total{stream=\"edge_access\"} 1",
        "sluice_inserts_total{table=\"edge_access\",result=\"ok\"} 1",
        "sluice_insert_rows_total{table=\"edge_access\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    fixture.stop().await;

    // A server given the handle serves the same text on /metrics; a dead ClickHouse makes it
    // not ready.
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
    let metrics = plain
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sluice_requests_total"), "{metrics}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let ready = plain.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.text().await.unwrap(),
        "not ready: clickhouse unreachable\n"
    );
    server.shutdown().await.unwrap();
}
