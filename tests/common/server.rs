//! A sluice server started in-process on loopback ports, with development certificates and a
//! fresh ClickHouse database: the black-box fixture of the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice::config::Config;
use sluice::server::Server;

use super::TestClickHouse;

pub struct TestServer {
    pub server: Option<Server>,
    pub clickhouse: TestClickHouse,
    pub certs: PathBuf,
    _dir: tempfile::TempDir,
    pub base_url: String,
}

/// Config for a test server; `extra` is appended TOML (more sections, principals). Without a
/// `[spool]` section in `extra`, batches are answered once ClickHouse has them (`ack =
/// "clickhouse"`), so tests can read the rows right after a 200.
pub fn config_text(certs: &Path, clickhouse: &TestClickHouse, extra: &str) -> String {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    format!(
        r#"
schemas = "{schemas}"
[ingest]
listen = "127.0.0.1:0"
ack = "{ack}"
[ingest.tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_ca = "{certs}/ca.crt"
client_auth = "required"
[admin]
listen = "127.0.0.1:0"
[clickhouse]
url = "{url}"
database = "{database}"
apply_schema = true
[batch]
max_age_ms = 200
[[principals]]
name = "edge-a"
cert_names = ["edge-a.sluice.local"]
streams = ["*"]
region = "eu-test"
url_encoded = true
[[principals]]
name = "edge-b"
cert_names = ["edge-b.sluice.local"]
streams = ["edge_events"]
{extra}
"#,
        schemas = schemas.display(),
        certs = certs.display(),
        url = clickhouse.url,
        database = clickhouse.database,
        ack = if extra.contains("[spool]") {
            "spool"
        } else {
            "clickhouse"
        },
    )
}

impl TestServer {
    pub async fn start(test_name: &str) -> TestServer {
        TestServer::start_with(test_name, "", |_| {}).await
    }

    /// Starts a server; `extra` is appended to the config text, `adjust` may change the parsed
    /// config.
    pub async fn start_with(
        test_name: &str,
        extra: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        TestServer::start_with_metrics(test_name, extra, adjust, None).await
    }

    /// The same, serving `metrics` (a recorder's handle) on the admin listener's `/metrics`.
    pub async fn start_with_metrics(
        test_name: &str,
        extra: &str,
        adjust: impl FnOnce(&mut Config),
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> TestServer {
        let clickhouse = TestClickHouse::new(test_name).await;
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        sluice::certs::write_dev_certs(&certs).unwrap();
        let mut config = Config::from_toml(&config_text(&certs, &clickhouse, extra)).unwrap();
        adjust(&mut config);
        let server = Server::start(config, metrics).await.expect("sluice starts");
        let base_url = format!("https://localhost:{}", server.ingest_addr.port());
        TestServer {
            server: Some(server),
            clickhouse,
            certs,
            _dir: dir,
            base_url,
        }
    }

    /// An HTTPS client presenting `client` (`"client-a"`, `"client-b"`, …) or no certificate.
    pub fn client(&self, client: Option<&str>) -> reqwest::Client {
        let ca = self.certs.join("ca.crt");
        let pair = client.map(|name| {
            (
                self.certs.join(format!("{name}.crt")),
                self.certs.join(format!("{name}.key")),
            )
        });
        let tls = sluice::certs::client_config(
            &ca,
            pair.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    pub fn url(&self, stream: &str) -> String {
        format!("{}/v1/streams/{stream}", self.base_url)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.as_ref().unwrap().admin_addr)
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }
}

/// POSTs a body and returns status and JSON answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let mut headers = vec![("content-type", content_type)];
    headers.extend(encoding.map(|encoding| ("content-encoding", encoding)));
    post_with_headers(client, url, body, &headers).await
}

/// POSTs a body with these headers and returns status and JSON answer.
pub async fn post_with_headers(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request reaches sluice");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
    (status, json)
}

/// The value of one series on an admin port's `/metrics` (name with labels exactly as
/// exported); None when absent.
pub async fn metric(admin: impl std::fmt::Display, series: &str) -> Option<f64> {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

pub fn shared<T>(value: T) -> Arc<T> {
    Arc::new(value)
}
