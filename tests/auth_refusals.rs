//! Origin trust, case by case against a real handshake and a real ClickHouse: every refused
//! credential or claim gets its documented status and message and stores nothing; the valid
//! ones land with the audit columns of the verified context. This binary installs the global
//! metrics recorder and log subscriber, so it holds this one test only.

mod common;

use common::auth::{Credentials, now, records, signed_headers};
use common::server::TestServer;
use metrics_exporter_prometheus::PrometheusBuilder;
use rustls::AlertDescription;
use serde_json::json;
use sluice::accept::tls::ClientAuth;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything the process logs (this binary installs the global subscriber), as text.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn install() -> CapturedLogs {
        let logs = CapturedLogs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(logs.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> CapturedLogs {
        self.clone()
    }
}

/// Connects presenting the client certificate `client` and returns what the connection
/// ended with: with TLS 1.3 the client finishes its side of the handshake before the server
/// has judged its certificate, so the server's alert arrives on the first read.
async fn handshake_refusal(server: &TestServer, client: &str) -> String {
    use tokio::io::AsyncReadExt;
    let certs = &server.certs;
    let config = sluice::certs::client_config(
        &certs.join("ca.crt"),
        Some((
            certs.join(format!("{client}.crt")).as_path(),
            certs.join(format!("{client}.key")).as_path(),
        )),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.server.as_ref().unwrap().ingest_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let error = match connector.connect(name, tcp).await {
        Err(err) => err,
        Ok(mut stream) => {
            let mut buf = [0u8; 64];
            match stream.read(&mut buf).await {
                Err(err) => err,
                Ok(n) => panic!("{client}: the server answered {n} bytes instead of an alert"),
            }
        }
    };
    error.to_string()
}

/// Polls `done` until it holds (the server logs just after it sends its alert).
async fn wait_for(case: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{case}: not seen in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Case {
    name: &'static str,
    client: Option<&'static str>,
    stream: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    message: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_exact_and_stores_nothing_and_valid_senders_land_with_audit_columns() {
    let recorder = PrometheusBuilder::new().install_recorder().unwrap();
    let logs = CapturedLogs::install();
    let dir = tempfile::tempdir().unwrap();
    let creds = Credentials::write(dir.path());
    let server = TestServer::start_with("auth_refusals", &creds.config(), |config| {
        let tls = config.ingest.tls.as_mut().unwrap();
        tls.client_auth = ClientAuth::Optional;
        // The dev CA's revocation list, beside its certificate.
        tls.client_crls = vec![tls.client_ca.as_ref().unwrap().with_file_name("ca.crl")];
    })
    .await;
    let path = "/v1/streams/edge_access";
    let ew_secret = creds.secret("ew-secret-1");
    let ew_key = creds.secret("ew-signing");
    let body = records(0..2);
    let secret = |value: &str| vec![("x-sluice-secret", value.to_string())];
    let bearer = |token: String| vec![("authorization", format!("Bearer {token}"))];
    let with = |mut a: Vec<(&'static str, String)>, b: Vec<(&'static str, String)>| {
        a.extend(b);
        a
    };

    let cases = vec![
        Case {
            name: "no credentials",
            client: None,
            stream: "edge_access",
            headers: vec![],
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "no credentials: present a client certificate, a bearer token, a header \
                      secret or a signed batch"
                .into(),
        },
        Case {
            name: "expired token",
            client: None,
            stream: "edge_access",
            headers: bearer(creds.hs256("tok", json!({"exp": 1_767_225_600}))),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token expired at 2026-01-01T00:00:00Z".into(),
        },
        Case {
            name: "not-yet-valid token",
            client: None,
            stream: "edge_access",
            headers: bearer(creds.es256(
                "tok",
                json!({"nbf": 4_102_444_800i64, "exp": 4_102_448_400i64}),
            )),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token not valid before 2100-01-01T00:00:00Z".into(),
        },
        Case {
            name: "wrong audience",
            client: None,
            stream: "edge_access",
            headers: bearer(creds.hs256("tok", json!({"aud": "someone-else"}))),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token audience does not include \"sluice\"".into(),
        },
        Case {
            name: "wrong issuer",
            client: None,
            stream: "edge_access",
            headers: bearer(creds.hs256("tok", json!({"iss": "https://evil.test"}))),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token issuer is not \"https://issuer.test\"".into(),
        },
        Case {
            name: "token signed with another key",
            client: None,
            stream: "edge_access",
            headers: bearer({
                let good = creds.hs256("tok", json!({}));
                let (head, _) = good.rsplit_once('.').unwrap();
                let forged = creds.hs256("tok", json!({"exp": now() + 601}));
                format!("{head}.{}", forged.rsplit_once('.').unwrap().1)
            }),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token signature mismatch".into(),
        },
        Case {
            name: "a bad token is refused even with a good certificate",
            client: Some("client-a"),
            stream: "edge_access",
            headers: bearer(creds.hs256("edge-a", json!({"exp": 1_767_225_600}))),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "token expired at 2026-01-01T00:00:00Z".into(),
        },
        Case {
            name: "wrong header secret",
            client: None,
            stream: "edge_access",
            headers: secret("ew-secret-1-0123456789abcdeX"),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "x-sluice-secret is not a valid secret".into(),
        },
        Case {
            name: "credentials of two principals",
            client: Some("client-a"),
            stream: "edge_access",
            headers: secret(&ew_secret),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "credentials name different principals: client certificate → \"edge-a\", \
                      header secret → \"ew\""
                .into(),
        },
        Case {
            name: "wrong batch signature (body changed after signing)",
            client: None,
            stream: "edge_access",
            headers: signed_headers("ew-2026", &ew_key, path, now(), "refused-sig", b"other"),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "signature mismatch".into(),
        },
        Case {
            name: "a bad signature is refused even with a good header secret",
            client: None,
            stream: "edge_access",
            headers: with(
                secret(&ew_secret),
                signed_headers("ew-2026", "not-the-key-0123456789", path, now(), "b", &body),
            ),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "signature mismatch".into(),
        },
        Case {
            name: "stale timestamp",
            client: None,
            stream: "edge_access",
            headers: signed_headers("ew-2026", &ew_key, path, now() - 712, "b", &body),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "timestamp outside window by 412 s".into(),
        },
        Case {
            name: "unknown signing key",
            client: None,
            stream: "edge_access",
            headers: signed_headers("nobody", &ew_key, path, now(), "b", &body),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "unknown signing key id \"nobody\"".into(),
        },
        Case {
            name: "principal that must sign sends only its secret",
            client: None,
            stream: "edge_access",
            headers: secret(&creds.secret("signer-secret")),
            body: body.clone(),
            status: 401,
            code: "unauthenticated",
            message: "principal \"signer\" must sign its batches (x-sluice-signature)".into(),
        },
        Case {
            name: "claimed origin not allowed",
            client: None,
            stream: "edge_access",
            headers: with(secret(&ew_secret), vec![("x-sluice-origin", "ew-9".into())]),
            body: body.clone(),
            status: 403,
            code: "forbidden",
            message: "principal \"ew\" may not claim origin \"ew-9\"".into(),
        },
        Case {
            name: "claimed region not allowed",
            client: None,
            stream: "edge_access",
            headers: with(
                secret(&ew_secret),
                vec![("x-sluice-region", "ap-south".into())],
            ),
            body: body.clone(),
            status: 403,
            code: "forbidden",
            message: "principal \"ew\" may not claim region \"ap-south\"".into(),
        },
        Case {
            name: "stream not allowed",
            client: None,
            stream: "edge_events",
            headers: secret(&ew_secret),
            body: body.clone(),
            status: 403,
            code: "forbidden",
            message: "principal \"ew\" may not write stream \"edge_access\""
                .replace("edge_access", "edge_events"),
        },
        Case {
            name: "token for a principal that does not exist",
            client: None,
            stream: "edge_access",
            headers: bearer(creds.hs256("ghost", json!({}))),
            body: body.clone(),
            status: 403,
            code: "forbidden",
            message: "token names principal \"ghost\", which is not configured".into(),
        },
        Case {
            name: "declared row count differs from the body",
            client: None,
            stream: "edge_access",
            headers: with(secret(&ew_secret), vec![("x-sluice-row-count", "3".into())]),
            body: body.clone(),
            status: 400,
            code: "row_count_mismatch",
            message: "x-sluice-row-count declares 3 records, the body has 2".into(),
        },
        Case {
            name: "rate limit: 4 rows fit in the bucket of 5",
            client: None,
            stream: "edge_access",
            headers: with(
                secret(&creds.secret("slow-secret")),
                vec![("x-sluice-batch-id", "slow-1".into())],
            ),
            body: records(100..104),
            status: 200,
            code: "",
            message: String::new(),
        },
        Case {
            name: "rate limit exceeded",
            client: None,
            stream: "edge_access",
            headers: secret(&creds.secret("slow-secret")),
            body: records(0..4),
            status: 429,
            code: "rate_limited",
            message: "principal \"slow\" is over its rate limit of 5 rows/s; retry in 1 s".into(),
        },
    ];

    for (i, case) in cases.iter().enumerate() {
        let client = server.client(case.client);
        let stream_url = server.url(case.stream);
        let mut request = client
            .post(&stream_url)
            .header("content-type", "application/x-ndjson")
            .body(case.body.clone());
        let mut has_batch_id = false;
        for (name, value) in &case.headers {
            has_batch_id |= *name == "x-sluice-batch-id";
            request = request.header(*name, value);
        }
        if !has_batch_id {
            request = request.header("x-sluice-batch-id", format!("refused-{i}"));
        }
        let sent_at = now();
        let response = request.send().await.unwrap();
        let answered_at = now();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: {status} {text}", case.name));
        assert_eq!(status, case.status, "{}: {answer}", case.name);
        if case.status == 200 {
            continue;
        }
        assert_eq!(answer["code"], case.code, "{}: {answer}", case.name);
        if case.code == "unauthenticated" && case.message.starts_with("timestamp outside") {
            // The distance is measured by the server's clock, which may tick past a second
            // boundary between building the case and answering it: the expected distance is
            // the one at some second the request was in flight.
            let stamp: i64 = case
                .headers
                .iter()
                .find(|(n, _)| *n == "x-sluice-timestamp")
                .unwrap()
                .1
                .parse()
                .unwrap();
            let accepted: Vec<String> = (sent_at..=answered_at)
                .map(|at| format!("timestamp outside window by {} s", stamp.abs_diff(at) - 300))
                .collect();
            assert!(
                accepted.contains(&answer["message"].as_str().unwrap().to_string()),
                "{}: {answer} not in {accepted:?}",
                case.name
            );
        } else {
            assert_eq!(answer["message"], case.message.as_str(), "{}", case.name);
        }
        if case.status == 429 {
            let header = |name: &str| headers[name].to_str().unwrap().to_string();
            assert_eq!(header("retry-after"), "1");
            assert_eq!(header("x-ratelimit-limit"), "5");
            assert!(["1", "2"].contains(&header("x-ratelimit-remaining").as_str()));
            assert!(["1", "2", "3", "4", "5"].contains(&header("x-ratelimit-reset").as_str()));
        }
    }

    // Refused client certificates, even in optional mode: a TLS alert (no HTTP answer), a log
    // line and a metric by reason.
    let handshake_cases = [
        (
            "cert from another CA",
            "client-untrusted",
            AlertDescription::UnknownCA,
            "unknown_ca",
        ),
        (
            "expired cert",
            "client-expired",
            AlertDescription::CertificateExpired,
            "expired",
        ),
        (
            "revoked cert",
            "client-revoked",
            AlertDescription::CertificateRevoked,
            "revoked",
        ),
    ];
    for (name, client, alert, reason) in handshake_cases {
        assert_eq!(
            handshake_refusal(&server, client).await,
            rustls::Error::AlertReceived(alert).to_string(),
            "{name}"
        );
        let wanted = format!("reason=\"{reason}\"");
        wait_for(name, || {
            logs.text()
                .lines()
                .any(|line| line.contains("tls handshake refused") && line.contains(&wanted))
        })
        .await;
    }

    // Valid senders, each with its own credential.
    let ok = |headers: Vec<(&'static str, String)>, client: Option<&'static str>, id: &str| {
        let client = server.client(client);
        let url = server.url("edge_access");
        let body = records(0..2);
        let id = id.to_string();
        async move {
            let mut request = client
                .post(url)
                .header("x-sluice-batch-id", id.clone())
                .header("x-request-id", format!("req-{id}"))
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert_eq!(status, 200, "{id}: {text}");
        }
    };
    ok(secret(&ew_secret), None, "ok-secret").await;
    ok(
        with(
            secret(&creds.secret("ew-secret-2")),
            vec![
                ("x-sluice-origin", "ew-2".into()),
                ("x-sluice-region", "us-east".into()),
            ],
        ),
        None,
        "ok-rotated-secret",
    )
    .await;
    ok(bearer(creds.hs256("tok", json!({}))), None, "ok-hs256").await;
    ok(bearer(creds.es256("tok", json!({}))), None, "ok-es256").await;
    ok(
        signed_headers("ew-2026", &ew_key, path, now(), "ok-signed", &records(0..2)),
        None,
        "ok-signed",
    )
    .await;
    ok(vec![], Some("client-a"), "ok-cert").await;

    let db = &server.clickhouse.database;
    for table in ["edge_access", "edge_access_quarantine"] {
        let column = if table == "edge_access" {
            "_batch_id"
        } else {
            "batch_id"
        };
        let refused = server
            .clickhouse
            .rows(&format!(
                "SELECT count() AS n FROM {db}.{table} WHERE {column} LIKE 'refused-%'"
            ))
            .await;
        assert_eq!(refused, [json!({"n": "0"})], "{table}");
    }
    let rows = server
        .clickhouse
        .rows(&format!(
            "SELECT _batch_id, _principal, _origin, region, _request_id, count() AS n, \
             max(_received_at) >= now() - 600 AS recent FROM {db}.edge_access \
             GROUP BY _batch_id, _principal, _origin, region, _request_id ORDER BY _batch_id"
        ))
        .await;
    let row = |batch: &str, principal: &str, origin: &str, region: &str, n: &str| {
        let request_id = if batch == "slow-1" {
            serde_json::Value::Null
        } else {
            json!(format!("req-{batch}"))
        };
        (
            batch.to_string(),
            principal.to_string(),
            origin.to_string(),
            region.to_string(),
            n.to_string(),
            request_id,
        )
    };
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["recent"], 1, "{r}");
            let request_id = if r["_batch_id"] == "slow-1" {
                serde_json::Value::Null
            } else {
                r["_request_id"].clone()
            };
            (
                r["_batch_id"].as_str().unwrap().to_string(),
                r["_principal"].as_str().unwrap().to_string(),
                r["_origin"].as_str().unwrap().to_string(),
                r["region"].as_str().unwrap().to_string(),
                r["n"].as_str().unwrap().to_string(),
                request_id,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            row("ok-cert", "edge-a", "", "eu-test", "2"),
            row("ok-es256", "tok", "", "", "2"),
            row("ok-hs256", "tok", "", "", "2"),
            row("ok-rotated-secret", "ew", "ew-2", "us-east", "2"),
            row("ok-secret", "ew", "ew-1", "eu-west", "2"),
            row("ok-signed", "ew", "ew-1", "eu-west", "2"),
            row("slow-1", "slow", "", "", "4"),
        ]
    );

    let metrics = recorder.render();
    for line in [
        "sluice_auth_failures_total{reason=\"no_credentials\"} 1",
        "sluice_auth_failures_total{reason=\"token_expired\"} 2",
        "sluice_auth_failures_total{reason=\"token_not_yet_valid\"} 1",
        "sluice_auth_failures_total{reason=\"token_audience\"} 1",
        "sluice_auth_failures_total{reason=\"token_issuer\"} 1",
        "sluice_auth_failures_total{reason=\"bad_token\"} 1",
        "sluice_auth_failures_total{reason=\"bad_secret\"} 1",
        "sluice_auth_failures_total{reason=\"credentials_disagree\"} 1",
        "sluice_auth_failures_total{reason=\"bad_signature\"} 3",
        "sluice_auth_failures_total{reason=\"stale_timestamp\"} 1",
        "sluice_auth_failures_total{reason=\"signature_required\"} 1",
        "sluice_auth_failures_total{reason=\"origin_forbidden\"} 1",
        "sluice_auth_failures_total{reason=\"region_forbidden\"} 1",
        "sluice_auth_failures_total{reason=\"stream_forbidden\"} 1",
        "sluice_auth_failures_total{reason=\"unknown_principal\"} 1",
        "sluice_auth_failures_total{reason=\"row_count_mismatch\"} 1",
        "sluice_auth_failures_total{reason=\"rate_limited\"} 1",
        "sluice_principal_requests_total{principal=\"ew\",status=\"200\"} 3",
        "sluice_principal_requests_total{principal=\"slow\",status=\"429\"} 1",
        "sluice_tls_handshake_failures_total{reason=\"unknown_ca\"} 1",
        "sluice_tls_handshake_failures_total{reason=\"expired\"} 1",
        "sluice_tls_handshake_failures_total{reason=\"revoked\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    server.stop().await;
}
