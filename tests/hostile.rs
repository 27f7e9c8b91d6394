//! Hostile input against a running sluice (the real binary, with TLS and the real ClickHouse):
//! bombs, huge and deep records, bad bytes, lying and slow clients, idle connection floods,
//! HTTP/2 stream floods and rapid resets, request smuggling. Every case gets its documented
//! answer, while a well-behaved sender's batches keep flowing and all of its rows land. The
//! server's peak RSS over the whole suite must stay under the memory its limits allow.
//!
//! One server serves every case (its peak RSS is the suite's), so this file holds one test.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::TestClickHouse;
use serde_json::{Value, json};
use sluice_loadtest::generator::{self, Format, Generator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const MIB: usize = 1 << 20;
const MAX_BODY: usize = 16 * MIB;
const MAX_DECOMPRESSED: usize = 32 * MIB;
const MAX_LINE: usize = MIB;
const MAX_DEPTH: usize = 64;
const MAX_BUFFERED: usize = 64 * MIB;
const MAX_IN_FLIGHT: usize = 64 * MIB;
const DECODES: usize = 2;
const H2_STREAMS: u32 = 16;
/// Seconds; every timeout of the listener is short so the slow cases finish quickly.
const HANDSHAKE_TIMEOUT: u64 = 2;
const HEADER_TIMEOUT: u64 = 2;
const BODY_TIMEOUT: u64 = 2;
const IDLE_TIMEOUT: u64 = 3;
/// Idle connections opened at once (TCP only, and TLS-established).
const IDLE_TCP: usize = 1500;
const IDLE_TLS: usize = 300;

/// What the server may hold at most: buffered bodies, one decompressed body and its parse per
/// decode slot (simd-json's tape and the column builders: three times the body, generously),
/// validated rows in flight, and a base for the runtime, TLS sessions and connections.
fn memory_bound() -> usize {
    MAX_BUFFERED + DECODES * 3 * MAX_DECOMPRESSED + MAX_IN_FLIGHT + 128 * MIB
}

/// The sluice binary, started with a config file for a fresh ClickHouse database.
struct Sluice {
    child: Child,
    ingest: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    certs: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sluice {
    async fn start(clickhouse: &TestClickHouse) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        sluice::certs::write_dev_certs(&certs).unwrap();
        let (ingest_port, admin_port) = (free_port(), free_port());
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let config = format!(
            r#"
schemas = "{schemas}"
[ingest]
listen = "127.0.0.1:{ingest_port}"
ack = "clickhouse"
[ingest.tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_ca = "{certs}/ca.crt"
[admin]
listen = "127.0.0.1:{admin_port}"
[clickhouse]
url = "{url}"
database = "{database}"
apply_schema = true
[batch]
max_age_ms = 200
[limits]
max_body_bytes = {MAX_BODY}
max_decompressed_bytes = {MAX_DECOMPRESSED}
max_line_bytes = {MAX_LINE}
max_nesting_depth = {MAX_DEPTH}
max_buffered_body_bytes = {MAX_BUFFERED}
max_in_flight_bytes = {MAX_IN_FLIGHT}
max_concurrent_decodes = {DECODES}
max_connections = 4000
request_timeout_secs = 30
tls_handshake_timeout_secs = {HANDSHAKE_TIMEOUT}
header_read_timeout_secs = {HEADER_TIMEOUT}
body_read_timeout_secs = {BODY_TIMEOUT}
idle_timeout_secs = {IDLE_TIMEOUT}
http2_max_concurrent_streams = {H2_STREAMS}
http2_max_pending_reset_streams = 20
[[principals]]
name = "edge-a"
cert_names = ["edge-a.sluice.local"]
streams = ["*"]
[[principals]]
name = "edge-b"
cert_names = ["edge-b.sluice.local"]
streams = ["edge_events"]
"#,
            schemas = schemas.display(),
            certs = certs.display(),
            url = clickhouse.url,
            database = clickhouse.database,
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the sluice binary starts");
        let sluice = Sluice {
            child,
            ingest: ([127, 0, 0, 1], ingest_port).into(),
            admin: ([127, 0, 0, 1], admin_port).into(),
            certs,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = reqwest::get(format!("http://{}/readyz", sluice.admin)).await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "sluice did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sluice
    }

    fn url(&self, stream: &str) -> String {
        format!(
            "https://localhost:{}/v1/streams/{stream}",
            self.ingest.port()
        )
    }

    fn tls_config(&self, client: &str, alpn: &[u8]) -> rustls::ClientConfig {
        let mut tls = sluice::certs::client_config(
            &self.certs.join("ca.crt"),
            Some((
                &self.certs.join(format!("{client}.crt")),
                &self.certs.join(format!("{client}.key")),
            )),
        )
        .unwrap();
        tls.alpn_protocols = vec![alpn.to_vec()];
        tls
    }

    fn client(&self, client: &str) -> reqwest::Client {
        let mut tls = self.tls_config(client, b"h2");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// A raw TLS connection as `client-a`, speaking `alpn`.
    async fn raw(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(self.tls_config("client-a", alpn)));
        let tcp = TcpStream::connect(self.ingest).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }

    /// Peak resident memory of the server process so far (`VmHWM`), in bytes.
    fn peak_rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM in /proc/<pid>/status");
        let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// The value of one metric line (name with labels exactly as exported), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        common::server::metric(&self.admin, series)
            .await
            .unwrap_or(0.0)
    }
}

fn access_record(i: usize) -> String {
    format!(
        r#"{{"reqId":"h{i}","reqTimeSec":"1700000000","cliIP":"10.0.0.1","statusCode":"200","reqHost":"h.example","reqMethod":"GET","reqPath":"/p"}}"#
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// POSTs to edge_access as client-a with a batch id; returns status and JSON answer.
async fn post(
    client: &reqwest::Client,
    sluice: &Sluice,
    batch_id: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = client
        .post(sluice.url("edge_access"))
        .header("content-type", content_type)
        .header("x-sluice-batch-id", batch_id)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("sluice answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let answer = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("answer is not JSON ({status}): {text}"));
    (status, answer)
}

/// Reads until the server closes the connection (or `limit` passes); returns what it sent.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> (Vec<u8>, bool) {
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (answer, closed)
}

/// The well-behaved sender: gzip NDJSON batches of edge_events as client-b, one after the
/// other, until told to stop. Every answer must be a 200 accepting the whole batch.
struct GoodSender {
    stop: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<usize>,
}

const GOOD_BATCH_ROWS: usize = 50;

impl GoodSender {
    fn start(sluice: &Sluice) -> GoodSender {
        let client = sluice.client("client-b");
        let url = sluice.url("edge_events");
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(AtomicU64::new(0));
        let (stop_flag, sent_rows) = (stop.clone(), rows.clone());
        let task = tokio::spawn(async move {
            let mut generate = Generator::new(42);
            let mut batches = 0;
            while !stop_flag.load(Ordering::Relaxed) || batches < 5 {
                let events = generate.edge_events(GOOD_BATCH_ROWS);
                let body = gzip(&generator::encode_events(&events, Format::Ndjson));
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .header("content-encoding", "gzip")
                    .header("x-sluice-batch-id", format!("good-{batches}"))
                    .body(body)
                    .send()
                    .await
                    .expect("the well-behaved sender reaches sluice");
                let status = response.status().as_u16();
                let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                assert_eq!(status, 200, "well-behaved batch {batches}: {answer}");
                assert_eq!(answer["accepted"], GOOD_BATCH_ROWS, "{answer}");
                assert_eq!(answer["rejected"], 0, "{answer}");
                sent_rows.fetch_add(GOOD_BATCH_ROWS as u64, Ordering::Relaxed);
                batches += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            batches
        });
        GoodSender { stop, rows, task }
    }

    async fn finish(self) -> (usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let batches = self
            .task
            .await
            .expect("the well-behaved sender never failed");
        (batches, self.rows.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_answered_and_bounded_while_good_batches_land() {
    // Thousands of connections: the test and the server (which inherits it) need the fds.
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    let wanted = 16_384.min(hard);
    rlimit::Resource::NOFILE.set(wanted, hard).unwrap();
    assert!(
        wanted as usize > 2 * (IDLE_TCP + IDLE_TLS) + 500,
        "the open-file limit ({hard}) is too low for the idle-connection case"
    );

    let clickhouse = TestClickHouse::new("hostile").await;
    let sluice = Sluice::start(&clickhouse).await;
    let good = GoodSender::start(&sluice);
    let client = sluice.client("client-a");
    let started = Instant::now();

    bombs(&sluice, &client).await;
    huge_and_deep_records(&sluice, &client).await;
    bad_bytes_and_values(&sluice, &client).await;
    csv_ragged_rows_and_quotes(&sluice, &client).await;
    tokio::join!(
        lying_content_length(&sluice),
        slowloris_and_slow_body(&sluice),
        request_smuggling(&sluice),
    );
    http2_stream_flood(&sluice).await;
    http2_rapid_reset(&sluice).await;
    idle_connections(&sluice).await;

    let (batches, rows) = good.finish().await;
    assert!(batches >= 5);
    assert_eq!(
        clickhouse.count("edge_events").await,
        rows,
        "every row of the well-behaved sender is in ClickHouse"
    );
    // None of the hostile requests slipped rows past their answers.
    let hostile_rows = clickhouse
        .rows(&format!(
            "SELECT request_id FROM {}.edge_access ORDER BY request_id",
            clickhouse.database
        ))
        .await;
    assert_eq!(
        hostile_rows,
        [
            json!({"request_id": "csv-1"}),
            json!({"request_id": "csv-4"}),
            json!({"request_id": "csv-5"}),
            json!({"request_id": "dup-ok"}),
            json!({"request_id": "h1"}),
            json!({"request_id": "nul-ok"}),
            json!({"request_id": "range-ok"}),
            json!({"request_id": "utf8-ok"}),
        ]
    );

    for limit in [
        "decompressed_bytes",
        "line_bytes",
        "nesting_depth",
        "body_timeout",
        "header_timeout",
        "idle_timeout",
        "tls_handshake_timeout",
        "http2_reset_flood",
    ] {
        let refused = sluice
            .metric(&format!("sluice_limit_refusals_total{{limit=\"{limit}\"}}"))
            .await;
        assert!(refused >= 1.0, "no refusal counted for {limit}");
    }

    let peak = sluice.peak_rss();
    eprintln!(
        "hostile suite: {batches} good batches ({rows} rows) landed; server peak RSS {} MiB (bound {} MiB); {:.1} s",
        peak / MIB,
        memory_bound() / MIB,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak < memory_bound(),
        "peak RSS {} MiB over the bound of {} MiB",
        peak / MIB,
        memory_bound() / MIB
    );
}

/// gzip and zstd bombs: a small body that inflates past `max_decompressed_bytes` is 413.
async fn bombs(sluice: &Sluice, client: &reqwest::Client) {
    let inflated = vec![b' '; 2 * MAX_DECOMPRESSED];
    let gzip_bomb = gzip(&inflated);
    let zstd_bomb = zstd::encode_all(&inflated[..], 3).unwrap();
    assert!(gzip_bomb.len() < 100_000 && zstd_bomb.len() < 10_000);
    for (encoding, bomb) in [("gzip", gzip_bomb), ("zstd", zstd_bomb)] {
        let (status, answer) = post(
            client,
            sluice,
            &format!("bomb-{encoding}"),
            "application/x-ndjson",
            Some(encoding),
            bomb,
        )
        .await;
        assert_eq!(status, 413, "{answer}");
        assert_eq!(
            answer,
            json!({"code": "decompressed_too_large",
                   "message": format!("decompressed body exceeds the limit of {MAX_DECOMPRESSED} bytes")})
        );
    }
    // A body declared larger than max_body_bytes is refused before it is read.
    let (status, answer) = post(
        client,
        sluice,
        "too-big",
        "application/x-ndjson",
        None,
        vec![b' '; MAX_BODY + 1],
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            413,
            json!({"code": "body_too_large",
                   "message": format!("body exceeds the limit of {MAX_BODY} bytes")})
        )
    );
}

/// A 10 MB single line and 100,000-deep nesting: rejected records, bounded work.
async fn huge_and_deep_records(sluice: &Sluice, client: &reqwest::Client) {
    let huge = format!(r#"{{"reqId":"{}"}}"#, "x".repeat(10_000_000));
    let (status, answer) = post(
        client,
        sluice,
        "huge-line",
        "application/x-ndjson",
        None,
        huge.into_bytes(),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["code"], "all_rows_rejected");
    assert_eq!(
        answer["errors"],
        json!([{"line": 1, "field": null,
                "reason": format!("record is longer than the limit of {MAX_LINE} bytes")}])
    );
    // With a good line beside it, only the huge one is rejected.
    let body = format!(
        "{}\n{{\"reqId\":\"{}\"}}\n",
        access_record(1),
        "y".repeat(2 * MAX_LINE)
    );
    let (status, answer) = post(
        client,
        sluice,
        "huge-and-good",
        "application/x-ndjson",
        Some("gzip"),
        gzip(body.as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(1), Some(1))
    );

    let depth = 100_000;
    let deep = format!(
        r#"{{"reqId":"deep","x":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let (status, answer) = post(
        client,
        sluice,
        "deep-ndjson",
        "application/x-ndjson",
        None,
        deep.clone().into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            400,
            json!({"code": "malformed_body",
                   "message": format!("body cannot be read as NDJSON: line 1: invalid JSON: nested deeper than the limit of {MAX_DEPTH} levels")})
        )
    );
    let (status, answer) = post(
        client,
        sluice,
        "deep-array",
        "application/json",
        None,
        format!("[{deep}]").into_bytes(),
    )
    .await;
    assert_eq!(
        (status, answer),
        (
            400,
            json!({"code": "malformed_body",
                   "message": format!("body cannot be read as a JSON array: nested deeper than the limit of {MAX_DEPTH} levels")})
        )
    );
}

/// Invalid UTF-8, NUL bytes, duplicate keys and numbers out of range reject their rows only.
async fn bad_bytes_and_values(sluice: &Sluice, client: &reqwest::Client) {
    let good = |id: &str| access_record(0).replace("\"h0\"", &format!("\"{id}\""));
    let cases: [(&str, Vec<u8>, Value); 4] = [
        (
            "utf8",
            [
                good("utf8-ok").as_bytes(),
                b"\n",
                good("utf8-bad").replace("h.example", "h\u{0}").as_bytes(),
            ]
            .concat()
            .iter()
            .map(|&b| if b == 0 { 0xFF } else { b })
            .collect(),
            json!({"line": 2, "field": null, "reason": "invalid JSON: malformed at byte 0"}),
        ),
        (
            "nul",
            format!(
                "{}\n{}",
                good("nul-ok"),
                good("nul-bad").replace("h.example", "h\u{0}x")
            )
            .into_bytes(),
            json!({"line": 2, "field": null, "reason": "invalid JSON: malformed at byte 0"}),
        ),
        (
            "dup",
            format!(
                "{}\n{}",
                good("dup-ok"),
                good("dup-bad").replace("\"reqHost\"", "\"reqHost\":\"a\",\"reqHost\"")
            )
            .into_bytes(),
            json!({"line": 2, "field": "reqHost", "reason": "field appears more than once"}),
        ),
        (
            "range",
            format!(
                "{}\n{}",
                good("range-ok"),
                good("range-bad").replace("\"cliIP\"", "\"version\":300,\"cliIP\"")
            )
            .into_bytes(),
            json!({"line": 2, "field": "version", "reason": "value 300 out of range for UInt8"}),
        ),
    ];
    for (name, body, error) in cases {
        let (status, answer) = post(client, sluice, name, "application/x-ndjson", None, body).await;
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(
            (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
            (Some(1), Some(1)),
            "{name}: {answer}"
        );
        assert_eq!(answer["errors"], json!([error]), "{name}");
    }
    // More out-of-range values: each rejects its row with the column's type in the reason.
    let out_of_range = [
        (
            "\"statusCode\":\"200\"",
            "\"statusCode\":70000",
            "statusCode",
        ),
        ("\"statusCode\":\"200\"", "\"statusCode\":-1", "statusCode"),
        (
            "\"reqTimeSec\":\"1700000000\"",
            "\"reqTimeSec\":1e300",
            "reqTimeSec",
        ),
    ];
    let body = out_of_range
        .iter()
        .map(|(from, to, _)| good("range-x").replace(from, to))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, answer) = post(
        client,
        sluice,
        "ranges",
        "application/x-ndjson",
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    let fields: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, out_of_range.map(|(_, _, field)| field));
    // A body of NUL bytes only is not NDJSON at all.
    let (status, answer) = post(
        client,
        sluice,
        "nuls",
        "application/x-ndjson",
        None,
        vec![0; 1000],
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("malformed_body")),
        "{answer}"
    );
}

/// CSV with quotes (commas, doubled quotes, newlines inside fields) and ragged rows.
async fn csv_ragged_rows_and_quotes(sluice: &Sluice, client: &reqwest::Client) {
    let body = "reqId,reqTimeSec,cliIP,statusCode,reqHost,reqMethod,reqPath\n\
        csv-1,1700000000,10.0.0.1,200,\"h,\"\"quoted\"\"\nhost\",GET,/a\n\
        csv-2,1700000000,10.0.0.1,200\n\
        csv-3,1700000000,10.0.0.1,200,h,GET,/a,extra\n\
        csv-4,1700000000,10.0.0.1,200,h,GET,\"/\"\"b\"\"\"\n\
        csv-5,1700000000,10.0.0.1,200,h,GET,\"/unterminated\n";
    let (status, answer) = post(client, sluice, "csv", "text/csv", None, body.into()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["errors"],
        json!([
            {"line": 2, "field": null, "reason": "expected 7 fields, got 4"},
            {"line": 3, "field": null, "reason": "expected 7 fields, got 8"},
        ]),
        "{answer}"
    );
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(3), Some(2))
    );
}

/// A Content-Length larger than the body: 408 once the body timeout passes. Smaller than the
/// body: the declared bytes are the request; the rest is not a request (400, closed).
async fn lying_content_length(sluice: &Sluice) {
    let mut stream = sluice.raw(b"http/1.1").await;
    stream
        .write_all(
            b"POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\n\
              content-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n{\"reqId\":",
        )
        .await
        .unwrap();
    let (answer, closed) =
        read_until_closed(&mut stream, Duration::from_secs(BODY_TIMEOUT + 10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(&format!(
            r#"{{"code":"body_timeout","message":"the body did not arrive within {BODY_TIMEOUT} s"}}"#
        )),
        "{answer}"
    );
    assert!(closed);

    let mut stream = sluice.raw(b"http/1.1").await;
    let record = access_record(900);
    let request = format!(
        "POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\n\
         content-type: application/x-ndjson\r\ncontent-length: 9\r\n\r\n{record}\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"malformed_body""#), "{answer}");
    assert!(
        closed,
        "the bytes after the declared body end the connection"
    );
}

/// Slowloris (headers trickled byte by byte) is cut at the header timeout; a slow body gets
/// 408 at the body timeout.
async fn slowloris_and_slow_body(sluice: &Sluice) {
    let slowloris = async {
        let mut stream = sluice.raw(b"http/1.1").await;
        let started = Instant::now();
        let head = b"POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let mut closed_after = None;
        for byte in head {
            if stream.write_all(&[*byte]).await.is_err() {
                closed_after = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(HEADER_TIMEOUT + 1) {
                break;
            }
        }
        let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        assert!(
            closed || closed_after.is_some(),
            "slowloris connection still open"
        );
        assert!(started.elapsed() < Duration::from_secs(HEADER_TIMEOUT + 8));
    };
    let slow_body = async {
        let mut stream = sluice.raw(b"http/1.1").await;
        stream
            .write_all(
                b"POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\n\
                  content-type: application/x-ndjson\r\ncontent-length: 200\r\n\r\n",
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        while started.elapsed() < Duration::from_secs(BODY_TIMEOUT + 5) {
            if stream.write_all(b" ").await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
            {
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || !answer.is_empty() {
                    break;
                }
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "slow body: {answer}");
        assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    };
    tokio::join!(slowloris, slow_body);
}

/// Conflicting Transfer-Encoding / Content-Length: refused by the HTTP layer (400, closed);
/// the smuggled request inside never runs.
async fn request_smuggling(sluice: &Sluice) {
    let smuggled = format!(
        "POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\n\r\n{}",
        access_record(666).len(),
        access_record(666).replace("h666", "smuggled")
    );
    let attempts = [
        // CL.TE: both headers. Transfer-Encoding wins (RFC 9112): the chunked body is empty,
        // the Content-Length is dropped, and the connection closes after the answer, so what
        // follows the chunked body is never read.
        format!(
            "POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-length: 4\r\n\
             transfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Two different Content-Lengths.
        format!(
            "POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\
             content-length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
        // An obfuscated Transfer-Encoding.
        format!(
            "POST /v1/streams/edge_access HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\
             transfer-encoding: xchunked\r\n\r\n{smuggled}",
            smuggled.len()
        ),
    ];
    for (attempt, expected) in attempts
        .iter()
        .zip(["HTTP/1.1 200", "HTTP/1.1 400", "HTTP/1.1 400"])
    {
        let mut stream = sluice.raw(b"http/1.1").await;
        stream.write_all(attempt.as_bytes()).await.unwrap();
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(expected), "{attempt:?} → {answer}");
        if expected.ends_with("200") {
            assert!(answer.contains(r#""accepted":0,"rejected":0"#), "{answer}");
        }
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one answer only: {answer}"
        );
        assert!(closed);
    }
}

// Raw HTTP/2 frames: the client side of a flood does not follow the protocol's manners.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A POST to edge_access in HPACK without the dynamic table: indexed `:method POST` and
/// `:scheme https`, literal `:path` and `:authority` with indexed names.
fn h2_post_headers() -> Vec<u8> {
    let path = b"/v1/streams/edge_access";
    let mut block = vec![0x83, 0x87, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    block
}

/// Connects, exchanges SETTINGS, and returns the stream with the server's max concurrent
/// streams.
async fn h2_connect(sluice: &Sluice) -> (TlsStream<TcpStream>, Option<u32>) {
    let mut stream = sluice.raw(b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream.write_all(H2_PREFACE).await.unwrap();
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (kind, _, _, payload) = read_frame(&mut stream).await.expect("server SETTINGS");
    assert_eq!(kind, SETTINGS);
    let max_streams = payload
        .chunks(6)
        .find(|s| s[..2] == [0, 3])
        .map(|s| u32::from_be_bytes(s[2..6].try_into().unwrap()));
    stream.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
    (stream, max_streams)
}

async fn read_frame(stream: &mut TlsStream<TcpStream>) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], id, payload))
}

/// Opening far more streams than SETTINGS_MAX_CONCURRENT_STREAMS: the extra ones are refused
/// (RST_STREAM REFUSED_STREAM), the others answered 408 when their bodies never come.
async fn http2_stream_flood(sluice: &Sluice) {
    let (mut stream, max_streams) = h2_connect(sluice).await;
    assert_eq!(max_streams, Some(H2_STREAMS));
    let opened = 100u32;
    let mut flood = Vec::new();
    for i in 0..opened {
        flood.extend(frame(HEADERS, 0x4, 2 * i + 1, &h2_post_headers()));
    }
    stream.write_all(&flood).await.unwrap();
    let (mut refused, mut answered) = (0, 0);
    let deadline = Duration::from_secs(BODY_TIMEOUT + 10);
    let _ = tokio::time::timeout(deadline, async {
        while let Some((kind, _, _, payload)) = read_frame(&mut stream).await {
            match kind {
                RST_STREAM if payload == [0, 0, 0, 7] => refused += 1,
                HEADERS => answered += 1,
                GOAWAY => break,
                _ => {}
            }
            if refused + answered == opened {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        refused,
        opened - H2_STREAMS,
        "streams past the limit are refused"
    );
    assert_eq!(
        answered, H2_STREAMS,
        "the admitted streams are answered (408)"
    );
}

/// Rapid reset (CVE-2023-44487): streams opened and cancelled at once, over and over. The
/// server closes the connection with GOAWAY ENHANCE_YOUR_CALM.
async fn http2_rapid_reset(sluice: &Sluice) {
    let (mut stream, _) = h2_connect(sluice).await;
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        flood.extend(frame(HEADERS, 0x4, 2 * i + 1, &h2_post_headers()));
        flood.extend(frame(RST_STREAM, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&flood).await;
    let mut goaway = None;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((kind, _, _, payload)) = read_frame(&mut stream).await {
            if kind == GOAWAY {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                break;
            }
        }
    })
    .await;
    assert_eq!(goaway, Some(0xb), "GOAWAY with ENHANCE_YOUR_CALM");
}

/// Thousands of idle connections, before and after their TLS handshake: while they are open
/// the well-behaved sender keeps going; each is closed by its timeout.
async fn idle_connections(sluice: &Sluice) {
    let baseline = sluice.metric("sluice_ingest_connections").await;
    let mut tls = Vec::with_capacity(IDLE_TLS);
    for _ in 0..IDLE_TLS {
        tls.push(sluice.raw(b"http/1.1").await);
    }
    // Opened faster than the handshake timeout closes them: most are open at once.
    let mut tcp = Vec::with_capacity(IDLE_TCP);
    for _ in 0..IDLE_TCP {
        tcp.push(TcpStream::connect(sluice.ingest).await.unwrap());
    }
    // The gauge counts what sluice has accepted, which can lag the connects on two busy cores
    // (a full-suite run once read 678): read it until half are in, for at most the handshake
    // timeout, after which the first would be closed anyway.
    let half = (IDLE_TCP / 2) as f64;
    let reading = Instant::now();
    let mut open = sluice.metric("sluice_ingest_connections").await;
    while open < half && reading.elapsed() < Duration::from_secs(HANDSHAKE_TIMEOUT) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        open = open.max(sluice.metric("sluice_ingest_connections").await);
    }
    assert!(open >= half, "idle connections open at once: {open}");
    // Handshake timeout for the silent TCP ones, idle timeout for the TLS ones.
    tokio::time::sleep(Duration::from_secs(IDLE_TIMEOUT.max(HANDSHAKE_TIMEOUT) + 2)).await;
    for stream in &mut tcp {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "idle TCP connection closed"
        );
    }
    for stream in &mut tls {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(closed, "idle TLS connection closed");
    }
    let after = sluice.metric("sluice_ingest_connections").await;
    assert!(
        after <= baseline + 2.0,
        "connections left open: {after} (before: {baseline})"
    );
}
