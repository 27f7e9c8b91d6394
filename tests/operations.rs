//! What operators and sender authors read: `docs/openapi.json` checked against a running
//! server (every documented path, method and status is answered as documented, and the server
//! answers nothing undocumented), and the admin status page in headless Chromium.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::response::IntoResponse;
use common::server::TestServer;
use serde_json::Value;
use sluice::accept::error::ApiError;

fn spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("openapi.json parses")
}

/// Follows `$ref`s and merges `allOf`s into one schema object.
fn resolve(spec: &Value, schema: &Value) -> Value {
    if let Some(reference) = schema["$ref"].as_str() {
        let pointer = reference.trim_start_matches('#');
        return resolve(spec, spec.pointer(pointer).expect("a $ref that resolves"));
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for part in parts {
            let part = resolve(spec, part);
            for (key, value) in part.as_object().unwrap() {
                match key.as_str() {
                    "properties" => {
                        for (name, property) in value.as_object().unwrap() {
                            // Later parts narrow earlier ones (an `enum` on `code`).
                            let entry = properties.entry(name.clone()).or_insert(Value::Null);
                            if entry.is_null() {
                                *entry = property.clone();
                            } else {
                                for (k, v) in property.as_object().unwrap() {
                                    entry[k] = v.clone();
                                }
                            }
                        }
                    }
                    "required" => required.extend(value.as_array().unwrap().iter().cloned()),
                    _ => {
                        merged.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        merged.insert("properties".into(), Value::Object(properties));
        merged.insert("required".into(), Value::Array(required));
        return Value::Object(merged);
    }
    schema.clone()
}

/// Checks a JSON value against a (small subset of) OpenAPI schema: types, nullable, required
/// properties, enums, items. Panics with `context` on a mismatch.
fn conform(spec: &Value, schema: &Value, value: &Value, context: &str) {
    let schema = resolve(spec, schema);
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let type_ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    assert!(type_ok, "{context}: {value} is not {}", schema["type"]);
    if let Some(values) = schema["enum"].as_array() {
        assert!(
            values.contains(value),
            "{context}: {value} not in {values:?}"
        );
    }
    for name in schema["required"].as_array().into_iter().flatten() {
        let name = name.as_str().unwrap();
        assert!(
            value.get(name).is_some(),
            "{context}: required {name:?} missing in {value}"
        );
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            if let Some(field) = value.get(name) {
                conform(spec, property, field, &format!("{context}.{name}"));
            }
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for item in values {
            conform(spec, items, item, &format!("{context}[]"));
        }
    }
    if let (Some(extra), Some(object)) = (
        schema.get("additionalProperties").filter(|s| s.is_object()),
        value.as_object(),
    ) {
        for (name, field) in object {
            conform(spec, extra, field, &format!("{context}.{name}"));
        }
    }
}

/// Checks one answer against the document: its status is documented for the operation, and a
/// JSON body has the documented shape.
fn check_answer(
    spec: &Value,
    path: &str,
    method: &str,
    status: u16,
    content_type: &str,
    body: &[u8],
) {
    let response = &spec["paths"][path][method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list"
    );
    match response["content"].as_object() {
        None => assert!(
            body.is_empty(),
            "{method} {path} {status}: documented without a body"
        ),
        Some(content) => {
            let media = content_type.split(';').next().unwrap().trim();
            let documented = content
                .get(media)
                .unwrap_or_else(|| panic!("{method} {path} {status}: {media} is not documented"));
            if media == "application/json" {
                let value: Value = serde_json::from_slice(body).unwrap();
                conform(
                    spec,
                    &documented["schema"],
                    &value,
                    &format!("{method} {path} {status}"),
                );
            }
        }
    }
}

/// An ingest request and the status it must get: client certificate, stream, headers, body.
type Case<'a> = (
    Option<&'a str>,
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<u8>,
    u16,
);

fn record(i: usize) -> String {
    format!(
        r#"{{"reqId":"r{i}","reqTimeSec":"1700000000","cliIP":"10.0.0.1","statusCode":"200","reqHost":"h","reqMethod":"GET","reqPath":"/"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server() {
    let spec = spec();
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let server = TestServer::start_with_metrics(
        "openapi",
        "",
        |config| {
            let tls = config.ingest.tls.as_mut().unwrap();
            tls.client_auth = sluice::accept::tls::ClientAuth::Optional;
            config.limits.max_body_bytes = 64 << 10;
            config.limits.request_timeout_secs = 1;
            // edge-b: one record per second, to meet 429.
            config.principals[1].rate_limit = Some(sluice::auth::rate::RateLimitConfig {
                rows_per_sec: Some(1.0),
                bytes_per_sec: None,
                burst_secs: 1.0,
            });
        },
        Some(handle),
    )
    .await;
    let ingest_path = "/v1/streams/{stream}";
    let mut seen: BTreeSet<(String, String, u16)> = BTreeSet::new();

    // Ingest: (client certificate, stream, headers, body) → the status it must get.
    let good = format!("{}\n", record(1));
    let cases: Vec<Case> = vec![
        (
            Some("client-a"),
            "edge_access",
            vec![],
            good.clone().into(),
            200,
        ),
        (
            Some("client-a"),
            "edge_access",
            vec![("content-encoding", "gzip")],
            b"not gzip".to_vec(),
            400,
        ),
        (None, "edge_access", vec![], good.clone().into(), 401),
        (
            Some("client-b"),
            "edge_access",
            vec![],
            good.clone().into(),
            403,
        ),
        (Some("client-a"), "nope", vec![], good.clone().into(), 404),
        (
            Some("client-a"),
            "edge_access",
            vec![("x-sluice-batch-id", "b-1")],
            good.clone().into(),
            200,
        ),
        (
            Some("client-a"),
            "edge_access",
            vec![("x-sluice-batch-id", "b-1")],
            format!("{}\n", record(2)).into(),
            409,
        ),
        (
            Some("client-a"),
            "edge_access",
            vec![],
            vec![b' '; 65 << 10],
            413,
        ),
        (
            Some("client-a"),
            "edge_access",
            vec![("content-encoding", "br")],
            good.clone().into(),
            415,
        ),
        (
            Some("client-b"),
            "edge_events",
            vec![],
            b"{}\n".to_vec(),
            422,
        ),
        (
            Some("client-b"),
            "edge_events",
            vec![],
            b"{}\n".to_vec(),
            429,
        ),
    ];
    for (client, stream, headers, body, expected) in cases {
        let mut request = server
            .client(client)
            .post(server.url(stream))
            .header("content-type", "application/x-ndjson")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let body = response.bytes().await.unwrap();
        assert_eq!(
            status,
            expected,
            "{stream}: {}",
            String::from_utf8_lossy(&body)
        );
        check_answer(&spec, ingest_path, "post", status, &content_type, &body);
        seen.insert((ingest_path.into(), "post".into(), status));
    }

    // 408: headers, then a body that never arrives.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = sluice::certs::client_config(
            &server.certs.join("ca.crt"),
            Some((
                &server.certs.join("client-a.crt"),
                &server.certs.join("client-a.key"),
            )),
        )
        .unwrap();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
        let tcp = tokio::net::TcpStream::connect(server.server.as_ref().unwrap().ingest_addr)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        stream
            .write_all(b"POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\n{")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read_to_end(&mut answer),
        )
        .await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("content-length: 0\r\n"), "{answer}");
        check_answer(&spec, ingest_path, "post", 408, "", b"");
        seen.insert((ingest_path.into(), "post".into(), 408));
    }

    // 500 and 503 need ClickHouse to refuse or fail, or sluice to be full or stopping (the
    // durability tests meet them on a server); here their answers are built by the one
    // `IntoResponse` every answer goes through and checked against the document.
    for error in [
        ApiError::Refused,
        ApiError::Internal,
        ApiError::Overloaded,
        ApiError::SpoolFull,
        ApiError::Unavailable,
        ApiError::ShuttingDown,
    ] {
        let response = error.into_response();
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        check_answer(&spec, ingest_path, "post", status, &content_type, &body);
        seen.insert((ingest_path.into(), "post".into(), status));
    }

    // Admin endpoints.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut ready = false;
    for _ in 0..50 {
        let status = plain
            .get(server.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "sluice never became ready");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/status",
        "/status.json",
        "/",
    ] {
        let response = plain.get(server.admin_url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = response.bytes().await.unwrap();
        check_answer(&spec, path, "get", status, &content_type, &body);
        seen.insert((path.into(), "get".into(), status));
    }
    // readyz's 503 is met in tests/admin.rs (ClickHouse unreachable).
    seen.insert(("/readyz".into(), "get".into(), 503));

    // Nothing undocumented: other paths are 404, other methods 405, on both listeners.
    for (url, expected) in [
        (server.admin_url("/nope"), 404),
        (format!("{}/v2/streams/edge_access", server.base_url), 404),
    ] {
        let client = server.client(Some("client-a"));
        assert_eq!(client.get(&url).send().await.unwrap().status(), expected);
    }
    let client = server.client(Some("client-a"));
    let status = client
        .get(server.url("edge_access"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 405);
    let status = plain
        .post(server.admin_url("/healthz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 405);

    // Every documented (path, method, status) was met.
    let mut documented = BTreeSet::new();
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for status in operation["responses"].as_object().unwrap().keys() {
                documented.insert((path.clone(), method.clone(), status.parse::<u16>().unwrap()));
            }
        }
    }
    assert_eq!(documented, seen);
    server.stop().await;
}

/// The Chromium binary: `CHROMIUM` or `chromium` on the PATH (deploy/local/test.sh installs it).
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed: run the suite with deploy/local/test.sh, which installs it"
        )
    })
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom`, `--screenshot=…`) and returns
/// its standard output, once the page's scripts had a few seconds of (virtual) time.
fn headless(url: &str, action: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1100,900",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The text of the element with this id in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let open = start + dom[start..].find('>').unwrap() + 1;
    let close = open + dom[open..].find('<').unwrap();
    dom[open..close].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_numbers_in_chromium() {
    let server = TestServer::start("status_page").await;
    let page = server.admin_url("/status");
    let url = page.clone();
    let before = tokio::task::spawn_blocking(move || headless(&url, "--dump-dom"))
        .await
        .unwrap();
    assert!(before.contains("data-loaded=\"yes\""), "{before}");
    assert_eq!(text_of(&before, "rows-accepted"), "0");
    assert_eq!(text_of(&before, "requests"), "0 (0)");

    // A batch with two good rows and one of the wrong type, and a request for no stream.
    let client = server.client(Some("client-a"));
    let body = format!(
        "{}\n{}\n{}\n",
        record(1),
        record(2),
        record(3).replace("\"200\"", "\"x\"")
    );
    let (status, _) = common::server::post(
        &client,
        &server.url("edge_access"),
        "application/x-ndjson",
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = common::server::post(
        &client,
        &server.url("nope"),
        "application/x-ndjson",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(status, 404);

    let url = page.clone();
    let after = tokio::task::spawn_blocking(move || headless(&url, "--dump-dom"))
        .await
        .unwrap();
    assert_eq!(text_of(&after, "rows-accepted"), "2");
    assert_eq!(text_of(&after, "rows-rejected"), "1");
    assert_eq!(text_of(&after, "requests"), "2 (1)");
    assert_eq!(
        text_of(&after, "rows-inserted"),
        "4",
        "two rows, one to quarantine and edge_access_1m's partial row"
    );
    assert_eq!(text_of(&after, "clickhouse"), "up");
    assert!(
        after.contains("<td>type</td><td class=\"n\">1</td>"),
        "{after}"
    );
    assert!(
        after.contains("404 unknown_stream (nope): unknown stream \"nope\""),
        "{after}"
    );

    // A screenshot for people, kept under the target directory.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let action = format!("--screenshot={}", shot.display());
    tokio::task::spawn_blocking(move || headless(&page, &action))
        .await
        .unwrap();
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!("status page screenshot: {}", shot.display());
    server.stop().await;
}
