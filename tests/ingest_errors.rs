//! The HTTP contract's answers against a real server and ClickHouse: partial rejects, framing
//! errors, unknown streams, bombs, refused certificates, forbidden streams.

mod common;

use std::io::Write;

use common::server::{TestServer, post};

fn access_record(i: usize, status: &str) -> String {
    format!(
        r#"{{"reqId":"r{i}","reqTimeSec":"{}","cliIP":"10.0.{}.{}","statusCode":"{status}","reqHost":"h{}.example","reqMethod":"GET","reqPath":"/p/{i}"}}"#,
        1_700_000_000 + i,
        i / 250,
        i % 250,
        i % 3
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_bad_rows_of_a_thousand_are_reported_and_the_rest_land() {
    // 16 KiB parts: the ~200 KB body is validated in parts at once (one per CPU), and the
    // answer, the rows and the quarantine's line numbers are those of the body as a whole.
    let server = TestServer::start_with("bad_rows", "", |config| {
        config.ingest.decode_part_bytes = 16 << 10;
    })
    .await;
    let client = server.client(Some("client-a"));
    let lines: Vec<String> = (1..=1000)
        .map(|i| match i {
            17 => access_record(i, "abc"),
            500 => "{\"reqId\": oops".to_string(),
            999 => access_record(i, "200").replace(",\"reqHost\":\"h0.example\"", ""),
            _ => access_record(i, "200"),
        })
        .collect();
    let body = gzip(lines.join("\n").as_bytes());
    let (status, answer) = post(
        &client,
        &server.url("edge_access"),
        "application/x-ndjson",
        Some("gzip"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 997);
    assert_eq!(answer["rejected"], 3);
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3);
    assert_eq!(
        errors[0],
        serde_json::json!({"line": 17, "field": "statusCode", "reason": "expected UInt16, got \"abc\""})
    );
    assert_eq!(errors[1]["line"], 500);
    assert_eq!(errors[1]["field"], serde_json::Value::Null);
    assert!(
        errors[1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON"),
        "{answer}"
    );
    assert_eq!(
        errors[2],
        serde_json::json!({"line": 999, "field": "reqHost", "reason": "missing required field"})
    );

    assert_eq!(server.clickhouse.count("edge_access").await, 997);
    let missing = server
        .clickhouse
        .rows(&format!(
            "SELECT request_id FROM {}.edge_access WHERE request_id IN ('r17', 'r500', 'r999', 'r1000')",
            server.clickhouse.database
        ))
        .await;
    assert_eq!(missing, [serde_json::json!({"request_id": "r1000"})]);

    // The rejected rows are in the quarantine table, with the reason and the record as sent.
    let quarantined = server
        .clickhouse
        .rows(&format!(
            "SELECT stream, principal, batch_id, line, field, error, raw FROM {}.edge_access_quarantine ORDER BY line",
            server.clickhouse.database
        ))
        .await;
    assert_eq!(quarantined.len(), 3);
    assert_eq!(quarantined[0]["stream"], "edge_access");
    assert_eq!(quarantined[0]["principal"], "edge-a");
    assert_eq!(quarantined[0]["batch_id"], answer["batch_id"]);
    assert_eq!(quarantined[0]["line"], 17);
    assert_eq!(quarantined[0]["field"], "statusCode");
    assert_eq!(quarantined[0]["error"], "expected UInt16, got \"abc\"");
    assert_eq!(quarantined[0]["raw"], lines[16].as_str());
    assert_eq!(quarantined[1]["raw"], "{\"reqId\": oops");
    assert_eq!(quarantined[2]["field"], "reqHost");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_code() {
    let server = TestServer::start("refusals").await;
    let client = server.client(Some("client-a"));
    let url = server.url("edge_access");

    // Not JSON at all → 400.
    let (status, answer) = post(
        &client,
        &url,
        "application/x-ndjson",
        None,
        b"hello\nworld\n".to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("malformed_body")),
        "{answer}"
    );
    assert_eq!(
        answer["message"],
        "body cannot be read as NDJSON: line 1: invalid JSON: unexpected 'h' at byte 0"
    );

    // Broken gzip → 400.
    let (status, answer) = post(
        &client,
        &url,
        "application/x-ndjson",
        Some("gzip"),
        b"\x1f\x8b\x08garbage".to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("bad_compression")),
        "{answer}"
    );

    // Unknown stream → 404.
    let (status, answer) = post(
        &client,
        &server.url("nope"),
        "application/x-ndjson",
        None,
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (404, Some("unknown_stream")),
        "{answer}"
    );
    assert_eq!(answer["message"], "unknown stream \"nope\"");

    // A gzip bomb: 1 KiB on the wire, 300 MiB inflated (the limit is 256 MiB) → 413.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![b' '; 1 << 20];
    for _ in 0..300 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 400_000);
    let (status, answer) = post(&client, &url, "application/x-ndjson", Some("gzip"), bomb).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("decompressed_too_large")),
        "{answer}"
    );
    assert_eq!(
        answer["message"],
        "decompressed body exceeds the limit of 268435456 bytes"
    );

    // Unsupported encoding / type → 415.
    let (status, answer) = post(
        &client,
        &url,
        "application/x-ndjson",
        Some("br"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (415, Some("unsupported_encoding")),
        "{answer}"
    );
    let (status, answer) = post(&client, &url, "image/png", None, b"{}".to_vec()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (415, Some("unsupported_content_type")),
        "{answer}"
    );

    // Every row rejected → 422 with the rows' errors.
    let (status, answer) = post(
        &client,
        &url,
        "application/x-ndjson",
        None,
        access_record(1, "999").into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("all_rows_rejected")),
        "{answer}"
    );
    assert_eq!(
        answer["errors"][0]["reason"],
        "value 999 is above the maximum 599"
    );
    assert_eq!(
        server.clickhouse.count("edge_access_quarantine").await,
        1,
        "a 422 still keeps its rows in quarantine"
    );

    // Unknown schema version → 422.
    let response = client
        .post(&url)
        .header("x-sluice-schema-version", "7")
        .body(access_record(1, "200"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let answer: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(
        answer["message"],
        "stream \"edge_access\" has no schema version \"7\" (known: 1)"
    );

    // edge-b may write edge_events only → 403.
    let client_b = server.client(Some("client-b"));
    let (status, answer) = post(
        &client_b,
        &url,
        "application/x-ndjson",
        None,
        access_record(1, "200").into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (403, Some("forbidden")),
        "{answer}"
    );
    assert_eq!(
        answer["message"],
        "principal \"edge-b\" may not write stream \"edge_access\""
    );

    // edge-a is configured for region eu-test and may not claim another.
    let response = client
        .post(&url)
        .header("x-sluice-region", "us-east")
        .body(access_record(1, "200"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);

    // Logpush's destination probe → 200, nothing stored.
    let (status, answer) = post(
        &client,
        &url,
        "text/plain",
        Some("gzip"),
        gzip(br#"{"content":"tests"}"#),
    )
    .await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(0)),
        "{answer}"
    );

    assert_eq!(server.clickhouse.count("edge_access").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_are_refused_in_the_handshake() {
    let server = TestServer::start("handshake").await;
    for client in [None, Some("client-untrusted")] {
        let error = server
            .client(client)
            .post(server.url("edge_access"))
            .body(access_record(1, "200"))
            .send()
            .await
            .expect_err("the TLS handshake is refused");
        // With TLS 1.3 the client sees the refusal as an alert, a reset or a closed connection
        // (depending on timing), never as an HTTP status.
        assert!(error.status().is_none(), "{client:?}: {error:?}");
        assert!(
            error.is_request() || error.is_connect(),
            "{client:?}: {error:?}"
        );
    }
    // The same request with a trusted certificate goes through.
    let accepted = server
        .client(Some("client-a"))
        .post(server.url("edge_access"))
        .body(access_record(1, "200"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    assert_eq!(server.clickhouse.count("edge_access").await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_size_limit_is_413() {
    let server = TestServer::start_with("body_limit", "", |config| {
        config.limits.max_body_bytes = 1000;
        config.limits.max_decompressed_bytes = 1000;
    })
    .await;
    let client = server.client(Some("client-a"));
    let body = (0..20)
        .map(|i| access_record(i, "200"))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, answer) = post(
        &client,
        &server.url("edge_access"),
        "application/x-ndjson",
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("body_too_large")),
        "{answer}"
    );
    assert_eq!(answer["message"], "body exceeds the limit of 1000 bytes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_records_than_the_row_limit_is_413() {
    let server = TestServer::start_with("row_limit", "", |config| {
        config.limits.max_rows_per_batch = 5;
    })
    .await;
    let client = server.client(Some("client-a"));
    let body = (0..6)
        .map(|i| access_record(i, "200"))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, answer) = post(
        &client,
        &server.url("edge_access"),
        "application/x-ndjson",
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (413, Some("too_many_records")),
        "{answer}"
    );
    assert_eq!(
        answer["message"],
        "batch has more than the limit of 5 records"
    );
    assert_eq!(server.clickhouse.count("edge_access").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start_with("request_timeout", "", |config| {
        config.limits.request_timeout_secs = 1;
    })
    .await;
    let tls = sluice::certs::client_config(
        &server.certs.join("ca.crt"),
        Some((
            &server.certs.join("client-a.crt"),
            &server.certs.join("client-a.key"),
        )),
    )
    .unwrap();
    let mut tls = tls;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let addr = server.server.as_ref().unwrap().ingest_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    // Announce 100 bytes, send 10, then wait.
    stream
        .write_all(b"POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-ndjson\r\ncontent-length: 100\r\n\r\n{\"reqId\":")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    server.stop().await;
}
