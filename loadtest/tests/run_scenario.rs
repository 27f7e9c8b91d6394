//! The harness end to end: a real sluice (the workspace's `sluice` binary) in front of the test
//! ClickHouse (`TEST_CLICKHOUSE_URL`, set by the test command; the test fails, never skips, when
//! it is missing), a tiny mixed scenario through the library, then the same scenario through the
//! CLI. Asserts correctness (every acknowledged row arrived exactly once, the baseline holds its
//! rows, the report files exist), not speed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_loadtest::scenario::Scenario;
use sluice_loadtest::{RunOptions, run};

fn clickhouse_url() -> String {
    std::env::var("TEST_CLICKHOUSE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_CLICKHOUSE_URL is not set: run the suite with the README's test command, \
             which starts a local ClickHouse and points this variable at it"
        )
    })
}

/// The `sluice` binary of this build: `SLUICE_BIN`, else beside this test's `deps/` folder
/// (`cargo test --workspace` builds it for sluice's own integration tests).
fn sluice_bin() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("sluice");
    assert!(
        bin.exists(),
        "no sluice binary at {}: build it first (cargo build -p sluice --bin sluice; \
         `cargo test --workspace` does) or set SLUICE_BIN",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ch_query(sql: &str) -> String {
    let url = clickhouse_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = sluice_loadtest::plain_client().unwrap();
        let response = client
            .post(&url)
            .body(sql.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("ClickHouse at {url} did not answer: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{sql}: {status} {text}");
        text
    })
}

/// sluice running from a temporary folder; stopped (SIGTERM, then SIGKILL) on drop.
struct Sluice {
    child: Child,
    dir: tempfile::TempDir,
    ingest_port: u16,
    admin_port: u16,
    log: PathBuf,
}

impl Sluice {
    fn start(database: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let status = Command::new(sluice_bin())
            .args(["certs", "dev", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "sluice certs dev failed");
        let (ingest_port, admin_port) = (free_port(), free_port());
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        let config = format!(
            r#"
schemas = "{schemas}"
[ingest]
listen = "127.0.0.1:{ingest_port}"
ack = "spool"
[ingest.tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_ca = "{certs}/ca.crt"
client_auth = "required"
[admin]
listen = "127.0.0.1:{admin_port}"
[clickhouse]
url = "{url}"
database = "{database}"
apply_schema = true
[spool]
dir = "{spool}"
[batch]
max_age_ms = 200
[[principals]]
name = "edge-a"
cert_names = ["edge-a.sluice.local"]
streams = ["*"]
origin = "lt-test"
region = "local"
url_encoded = true
"#,
            schemas = schemas.display(),
            certs = certs.display(),
            url = clickhouse_url(),
            spool = dir.path().join("spool").display(),
        );
        let config_path = dir.path().join("sluice.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("sluice.log");
        let child = Command::new(sluice_bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut sluice = Sluice {
            child,
            dir,
            ingest_port,
            admin_port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = sluice.child.try_wait().unwrap() {
                panic!("sluice exited ({status}): {}", sluice.log_text());
            }
            if ready_ok(admin_port) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice not ready within 15 s: {}",
                sluice.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sluice
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }
}

/// `GET /readyz` on the admin port answers 200.
fn ready_ok(admin_port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", admin_port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

impl Drop for Sluice {
    fn drop(&mut self) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scenario_text(sluice: &Sluice, database: &str, baseline_db: &str, out: &Path) -> String {
    let certs = sluice.certs();
    format!(
        r#"
name = "it-tiny"
description = "integration test: a few hundred rows of two streams"
[target]
url = "https://127.0.0.1:{port}"
ca = "{certs}/ca.crt"
cert = "{certs}/client-a.crt"
key = "{certs}/client-a.key"
pid = {pid}
metrics_url = "http://127.0.0.1:{admin_port}/metrics"
[clickhouse]
url = "{url}"
database = "{database}"
schemas = "{schemas}"
[load]
connections = 2
rows = 610
pool_batches = 2
[[streams]]
stream = "edge_access"
format = "ndjson"
encoding = "gzip"
batch_rows = 100
weight = 2
[[streams]]
stream = "edge_events"
format = "json"
encoding = "identity"
batch_rows = 50
weight = 1
[measure]
sample_ms = 50
idle_secs = 0.2
settle_max_secs = 2.0
settle_quiet_secs = 0.5
drain_timeout_secs = 15
[baseline]
database = "{baseline_db}"
rows_per_insert = 120
principal = "edge-a"
origin = "lt-test"
[decode_only]
secs = 0.2
[output]
dir = "{out}"
"#,
        port = sluice.ingest_port,
        admin_port = sluice.admin_port,
        certs = certs.display(),
        pid = sluice.child.id(),
        url = clickhouse_url(),
        schemas = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas")
            .display(),
        out = out.display(),
    )
}

#[test]
fn a_tiny_scenario_lands_every_acknowledged_row_exactly_once() {
    let started = Instant::now();
    let database = format!("t_loadtest_run_{}", std::process::id());
    let baseline_db = format!("t_loadtest_base_{}", std::process::id());
    ch_query(&format!("DROP DATABASE IF EXISTS {database}"));
    let sluice = Sluice::start(&database);
    let out = tempfile::tempdir().unwrap();
    let text = scenario_text(&sluice, &database, &baseline_db, out.path());
    let scenario_path = out.path().join("it.toml");
    std::fs::write(&scenario_path, &text).unwrap();

    // Through the library.
    let scenario = Scenario::parse(&text, &[]).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let outcome = runtime
        .block_on(run(
            scenario,
            RunOptions {
                progress: false,
                verbose: false,
            },
        ))
        .unwrap_or_else(|e| panic!("run failed: {e:#}\n{}", sluice.log_text()));
    let r = &outcome.result;
    assert!(r.verified, "{:#?}\n{}", r.verification, sluice.log_text());
    assert_eq!(r.send.rows_sent, 610);
    assert_eq!(r.send.rows_acked, 610, "{:?}", r.send.first_errors);
    assert_eq!(r.send.statuses.get(&200).copied(), Some(r.send.batches));
    // Weights 2:1 interleave as A B A: 100 50 100 | 100 50 100 | 100, then an events batch cut
    // to the 10 rows left.
    assert_eq!(r.send.batches, 8);
    assert_eq!(r.streams[0].rows_acked, 500);
    assert_eq!(r.streams[1].rows_acked, 110);
    let by_table: Vec<(String, u64, u64)> = r
        .verification
        .iter()
        .map(|v| (v.table.clone(), v.expected_rows, v.found_rows))
        .collect();
    assert_eq!(
        by_table,
        vec![
            (format!("{database}.edge_access"), 500, 500),
            (format!("{database}.edge_events"), 110, 110),
        ]
    );
    // What ClickHouse holds, asked independently.
    let count = |table: &str| -> u64 {
        ch_query(&format!("SELECT count() FROM {database}.{table}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!((count("edge_access"), count("edge_events")), (500, 110));
    // The baseline inserted the same number of rows into copies of the tables and dropped them.
    let b = r.baseline.as_ref().expect("baseline ran");
    assert!(b.ok, "{:?}", b.error);
    assert_eq!((b.phase.rows, b.rows_found), (610, 610));
    // 120 rows per insert, rounded up to whole pooled bodies: access 200 + 200 + 100 (the last
    // cut to fit), events one of 110.
    assert_eq!(b.inserts, 4);
    let left = ch_query(&format!(
        "SELECT count() FROM system.tables WHERE database = '{baseline_db}'"
    ));
    assert_eq!(left.trim(), "0", "baseline tables are dropped");
    // sluice was sampled (its pid was given); the decode-only reference ran.
    assert!(r.sluice_phase.sluice_cpu_secs.is_some());
    assert!(r.efficiency.events_per_sluice_cpu_sec.is_some());
    assert!(r.sluice_phase.sluice_peak_rss_mib.unwrap() > 1.0);
    assert!(r.decode_only.as_ref().unwrap().rows_per_cpu_sec > 0.0);
    assert!(r.latency_ms.count == 8 && r.latency_ms.p50 > 0.0);
    assert_eq!(
        r.sluice_phase.sluice_cpu_by_stage.len(),
        5,
        "its threads were read"
    );
    // sluice's own histograms over the window: the 8 requests, each appended to the spool and
    // synced (fsync = "always"; appends that meet in the writer share a sync).
    let side = r.server_side.as_ref().expect("sluice's metrics were read");
    assert_eq!(side.requests, 8, "{side:?}");
    assert!((1..=8).contains(&side.syncs), "{side:?}");
    // The files.
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&outcome.json_path).unwrap()).unwrap();
    assert_eq!(json["verified"], true);
    assert_eq!(json["send"]["rows_acked"], 610);
    let html = std::fs::read_to_string(&outcome.html_path).unwrap();
    assert!(html.contains("<svg") && html.contains("it-tiny"));

    // Through the CLI, with shorthand overrides: 150 rows of access logs only, CSV.
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-loadtest"))
        .args(["run", "--scenario"])
        .arg(&scenario_path)
        .args([
            "--rows",
            "150",
            "--format",
            "csv",
            "--set",
            "streams.1.weight=1000",
            "--set",
            "streams.0.weight=1",
            "--no-baseline",
            "--no-decode-only",
            "--no-progress",
            "--quiet",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "CLI run failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("edge_events csv+identity"), "{stdout}");
    assert!(stdout.contains("OK: 150 acknowledged rows"), "{stdout}");
    assert!(stdout.contains("report: "), "{stdout}");

    drop(sluice);
    ch_query(&format!("DROP DATABASE IF EXISTS {database}"));
    ch_query(&format!("DROP DATABASE IF EXISTS {baseline_db}"));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
