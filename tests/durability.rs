//! Fault suite: the real `sluice` binary, SIGKILLed mid-load and restarted; ClickHouse stopped
//! mid-load and started again; a spool too small for an outage. Every row that got a 200 must
//! be in ClickHouse exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestClickHouse;
use sluice_loadtest::generator::{self, Encoding, Format, Generator};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A sluice process with a config file, certificates and a spool in a temp dir.
struct Sluice {
    dir: tempfile::TempDir,
    config: PathBuf,
    ingest_port: u16,
    admin_port: u16,
    child: Option<Child>,
}

impl Sluice {
    fn new(clickhouse_url: &str, database: &str, spool_extra: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        sluice::certs::write_dev_certs(&certs).unwrap();
        let (ingest_port, admin_port) = (free_port(), free_port());
        let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let text = format!(
            r#"
schemas = "{schemas}"
[ingest]
listen = "127.0.0.1:{ingest_port}"
ack = "spool"
[ingest.tls]
cert = "{certs}/server.crt"
key = "{certs}/server.key"
client_ca = "{certs}/ca.crt"
[admin]
listen = "127.0.0.1:{admin_port}"
[clickhouse]
url = "{clickhouse_url}"
database = "{database}"
apply_schema = true
insert_timeout_secs = 5
[batch]
max_age_ms = 100
[spool]
dir = "{spool}"
segment_bytes = 262144
{spool_extra}
[[principals]]
name = "edge-a"
cert_names = ["edge-a.sluice.local"]
streams = ["*"]
url_encoded = true
"#,
            schemas = schemas.display(),
            certs = certs.display(),
            spool = dir.path().join("spool").display(),
        );
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, text).unwrap();
        Sluice {
            dir,
            config,
            ingest_port,
            admin_port,
            child: None,
        }
    }

    async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("sluice.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sluice starts");
        self.child = Some(child);
        let health = format!("http://127.0.0.1:{}/healthz", self.admin_port);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sluice exited with {status}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sluice did not come up:\n{}", self.log());
    }

    /// A sluice whose ClickHouse is unreachable, so that what it accepts stays in the spool;
    /// [`Sluice::reach_clickhouse`] gives it one.
    fn without_clickhouse(database: &str) -> Sluice {
        let sluice = Sluice::new("http://127.0.0.1:1", database, "");
        let config = std::fs::read_to_string(&sluice.config).unwrap();
        std::fs::write(
            &sluice.config,
            config.replace("apply_schema = true", "apply_schema = false"),
        )
        .unwrap();
        sluice
    }

    /// Points the config of [`Sluice::without_clickhouse`] at `url` (from the next start).
    fn reach_clickhouse(&self, url: &str) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            config
                .replace("http://127.0.0.1:1", url)
                .replace("apply_schema = false", "apply_schema = true"),
        )
        .unwrap();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "sluice exits cleanly on SIGTERM: {status}\n{}",
                self.log()
            );
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sluice.log")).unwrap_or_default()
    }

    /// The log's warnings and errors (a test's output would truncate the whole log).
    fn log_problems(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    fn client(&self) -> reqwest::Client {
        let certs = self.dir.path().join("certs");
        let tls = sluice::certs::client_config(
            &certs.join("ca.crt"),
            Some((&certs.join("client-a.crt"), &certs.join("client-a.key"))),
        )
        .unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    fn url(&self) -> String {
        format!(
            "https://localhost:{}/v1/streams/edge_access",
            self.ingest_port
        )
    }

    /// Peak resident memory of the running process (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    fn spool_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.path().join("spool"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                    .map(|e| e.metadata().unwrap().len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a sender saw: request ids of the rows whose batch got a 200, and the status counts.
#[derive(Default)]
struct Ledger {
    acknowledged: HashSet<String>,
    statuses: HashMap<String, usize>,
}

/// Posts generated 500-row batches until `stop` is set; seeds never repeat across calls.
async fn send_until(
    client: reqwest::Client,
    url: String,
    first_seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seed = first_seed;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let rows = Generator::new(seed).edge_access(500);
        seed += 1;
        let body = generator::compress(
            &generator::encode_access(&rows, Format::Ndjson),
            Encoding::Gzip,
        );
        let outcome = client
            .post(&url)
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await;
        let key = match outcome {
            Ok(response) => {
                let status = response.status().as_u16();
                if status == 200 {
                    let ids = rows.into_iter().map(|r| r.req_id);
                    ledger.lock().unwrap().acknowledged.extend(ids);
                }
                status.to_string()
            }
            Err(_) => "error".to_string(),
        };
        *ledger.lock().unwrap().statuses.entry(key).or_default() += 1;
        if !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    }
}

/// Waits until ClickHouse holds every acknowledged row, then checks that no row is doubled.
async fn assert_exactly_once(clickhouse: &TestClickHouse, ledger: &Ledger, sluice: &Sluice) {
    let db = &clickhouse.database;
    let started = Instant::now();
    let stored: HashSet<String> = loop {
        let rows = clickhouse
            .rows(&format!("SELECT DISTINCT request_id FROM {db}.edge_access"))
            .await;
        let stored: HashSet<String> = rows
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect();
        if ledger.acknowledged.is_subset(&stored) || started.elapsed() > Duration::from_secs(120) {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let missing = ledger.acknowledged.difference(&stored).count();
    if missing > 0 {
        let quarantined = clickhouse
            .rows(&format!(
                "SELECT count() AS c FROM {db}.edge_access_quarantine"
            ))
            .await;
        panic!(
            "{missing} acknowledged rows missing from ClickHouse; quarantine holds {quarantined:?}\n{}",
            sluice.log_problems()
        );
    }
    let doubled = clickhouse
        .rows(&format!(
            "SELECT request_id, count() AS c FROM {db}.edge_access GROUP BY request_id HAVING c > 1 LIMIT 5"
        ))
        .await;
    assert!(
        doubled.is_empty(),
        "rows stored twice: {doubled:?}\n{}",
        sluice.log_problems()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_load_loses_and_doubles_nothing() {
    let clickhouse = TestClickHouse::new("sigkill").await;
    let mut sluice = Sluice::new(&clickhouse.url, &clickhouse.database, "");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..5u64 {
        sluice.start().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let senders: Vec<_> = (0..2)
            .map(|i| {
                tokio::spawn(send_until(
                    sluice.client(),
                    sluice.url(),
                    1_000_000 * (round * 2 + i + 1),
                    ledger.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        sluice.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for sender in senders {
            sender.await.unwrap();
        }
    }
    // A last start replays what the kills left in the spool.
    sluice.start().await;
    assert!(
        sluice.log().contains("replaying the spool"),
        "a restart found unconfirmed records to replay:\n{}",
        sluice.log()
    );
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        ledger.acknowledged.len() >= 50_000,
        "the load was too small to mean anything: {:?}",
        ledger.statuses
    );
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    // The rollup counts every stored row once: replay refolds only batches that no stored
    // flush counted (edge_access_1m_flushes).
    let db = &clickhouse.database;
    let raw = clickhouse.count("edge_access").await;
    let started = Instant::now();
    let rolled_up = loop {
        let answer = clickhouse
            .query(&format!(
                "SELECT sumMerge(requests) FROM {db}.edge_access_1m"
            ))
            .await;
        let rolled_up: u64 = answer.trim().parse().unwrap_or(0);
        if rolled_up >= raw || started.elapsed() > Duration::from_secs(60) {
            break rolled_up;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        rolled_up,
        raw,
        "rollup requests vs raw rows\n{}",
        sluice.log()
    );
    // Once everything is confirmed, the spool shrinks to its active segment.
    let started = Instant::now();
    while sluice.spool_bytes() > 262_144 + 65_536 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sluice.spool_bytes() <= 262_144 + 65_536,
        "spool drained: {} bytes",
        sluice.spool_bytes()
    );
    sluice.terminate();
    eprintln!(
        "statuses over 5 SIGKILLs: {:?}, rows acknowledged: {}",
        ledger.statuses,
        ledger.acknowledged.len()
    );
}

/// Starts a private ClickHouse instance (this test stops it).
struct OwnClickHouse {
    name: String,
    pub url: String,
}

impl OwnClickHouse {
    fn start(name: &str) -> OwnClickHouse {
        let (http, tcp) = (free_port(), free_port());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/clickhouse.sh");
        let status = Command::new(&script)
            .args([
                "start",
                name,
                "--http-port",
                &http.to_string(),
                "--tcp-port",
                &tcp.to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "ClickHouse instance {name} starts");
        OwnClickHouse {
            name: name.to_string(),
            url: format!("http://127.0.0.1:{http}"),
        }
    }

    fn control(&self, action: &str) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local/clickhouse.sh");
        let status = Command::new(&script)
            .args([action, &self.name])
            .status()
            .unwrap();
        assert!(status.success(), "clickhouse.sh {action} {}", self.name);
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        self.control("stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_costs_only_delay() {
    let own = OwnClickHouse::start(&format!("outage-{}", std::process::id()));
    // Point the test helper at the private instance.
    let clickhouse = TestClickHouse::with_url(&own.url, "outage").await;
    let mut sluice = Sluice::new(&own.url, &clickhouse.database, "");
    sluice.start().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = tokio::spawn(send_until(
        sluice.client(),
        sluice.url(),
        7_000_000,
        ledger.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    own.control("stop");
    // Longer than the flush interval and the readiness probe; batches keep being accepted.
    let ready = format!("http://127.0.0.1:{}/readyz", sluice.admin_port);
    let started = Instant::now();
    let mut saw_not_ready = false;
    while started.elapsed() < Duration::from_secs(7) {
        saw_not_ready |= reqwest::get(&ready).await.unwrap().status() == 503;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let acknowledged_during_outage = ledger.lock().unwrap().acknowledged.len();
    own.control("start");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.unwrap();
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(saw_not_ready, "/readyz reported the outage");
    assert!(
        acknowledged_during_outage > 0,
        "batches were accepted into the spool during the outage"
    );
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    // The spool drains: only the active segment is left.
    let started = Instant::now();
    while sluice.spool_bytes() > 262_144 + 65_536 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sluice.spool_bytes() <= 262_144 + 65_536,
        "spool drained: {} bytes",
        sluice.spool_bytes()
    );
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_answers_503_and_recovers() {
    let own = OwnClickHouse::start(&format!("full-{}", std::process::id()));
    let clickhouse = TestClickHouse::with_url(&own.url, "spool_full").await;
    let mut sluice = Sluice::new(&own.url, &clickhouse.database, "max_bytes = 400000");
    sluice.start().await;
    own.control("stop");
    let client = sluice.client();
    let mut ledger = Ledger::default();
    let mut refusal = None;
    for seed in 0..200 {
        let rows = Generator::new(9_000_000 + seed).edge_access(500);
        let body = generator::compress(
            &generator::encode_access(&rows, Format::Ndjson),
            Encoding::Gzip,
        );
        let response = client
            .post(sluice.url())
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            ledger
                .acknowledged
                .extend(rows.into_iter().map(|r| r.req_id));
            continue;
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        refusal = Some((
            response.status().as_u16(),
            retry_after,
            response.text().await.unwrap(),
        ));
        break;
    }
    let (status, retry_after, body) = refusal.expect("the spool fills up");
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(body.contains("\"code\":\"spool_full\""), "{body}");
    assert!(sluice.spool_bytes() <= 400_000);
    let peak_rss_kib = sluice.peak_rss_kib();
    assert!(
        peak_rss_kib < 512 * 1024,
        "memory stays bounded: peak RSS {peak_rss_kib} KiB"
    );
    eprintln!("peak RSS with a full spool: {} MiB", peak_rss_kib / 1024);
    own.control("start");
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_id_is_stored_once_even_across_a_crash() {
    let clickhouse = TestClickHouse::new("retry").await;
    let mut sluice = Sluice::new(&clickhouse.url, &clickhouse.database, "");
    sluice.start().await;
    let client = sluice.client();
    let rows = Generator::new(42).edge_access(300);
    let plain = generator::encode_access(&rows, Format::Ndjson);
    let post = |body: Vec<u8>, encoding: &'static str, batch_id: &'static str| {
        client
            .post(sluice.url())
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", encoding)
            .header("x-sluice-batch-id", batch_id)
            .body(body)
    };
    let first = post(
        generator::compress(&plain, Encoding::Gzip),
        "gzip",
        "batch-1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(first.status(), 200);
    // The sender never saw that answer; sluice is killed; the sender retries the same content,
    // compressed differently.
    sluice.kill();
    sluice.start().await;
    let client = sluice.client();
    let post = |body: Vec<u8>, encoding: &'static str, batch_id: &'static str| {
        client
            .post(sluice.url())
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", encoding)
            .header("x-sluice-batch-id", batch_id)
            .body(body)
    };
    let retry = post(
        generator::compress(&plain, Encoding::Zstd),
        "zstd",
        "batch-1",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(retry.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&retry.text().await.unwrap()).unwrap();
    assert_eq!(answer["duplicate"], true, "{answer}");
    assert_eq!(answer["accepted"], 0, "{answer}");

    let other = generator::encode_access(&Generator::new(43).edge_access(10), Format::Ndjson);
    let conflict = post(other, "identity", "batch-1").send().await.unwrap();
    assert_eq!(conflict.status(), 409);
    let answer: serde_json::Value = serde_json::from_str(&conflict.text().await.unwrap()).unwrap();
    assert_eq!(answer["code"], "batch_id_conflict");
    assert_eq!(
        answer["message"],
        "batch id \"batch-1\" was already stored with other content"
    );

    let ledger = Ledger {
        acknowledged: rows.iter().map(|r| r.req_id.clone()).collect(),
        ..Default::default()
    };
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    assert_eq!(clickhouse.count("edge_access").await, 300);
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_memory_is_bounded() {
    // ClickHouse unreachable and every batch kept in memory until delivered: once the bound is
    // taken, new batches are refused with 503 instead of piling up.
    let server = common::server::TestServer::start_with("memory_bound", "", |config| {
        config.ingest.ack = sluice::config::AckMode::Memory;
        config.clickhouse.url = "http://127.0.0.1:1".to_string();
        config.clickhouse.apply_schema = false;
        config.clickhouse.insert_attempts = 1000;
        config.limits.max_in_flight_bytes = 400_000;
        // Refused at once rather than after a second's wait for room that never comes.
        config.limits.overload_wait_ms = 0;
    })
    .await;
    let client = server.client(Some("client-a"));
    let mut statuses = Vec::new();
    for seed in 0..20 {
        let rows = Generator::new(seed).edge_access(500);
        let body = generator::encode_access(&rows, Format::Ndjson);
        let (status, answer) = common::server::post(
            &client,
            &server.url("edge_access"),
            "application/x-ndjson",
            None,
            body,
        )
        .await;
        if status == 503 {
            assert_eq!(answer["code"], "overloaded", "{answer}");
        }
        statuses.push(status);
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert!(accepted >= 1, "{statuses:?}");
    assert!(
        statuses.contains(&503),
        "the bound refuses batches: {statuses:?}"
    );
    assert!(
        accepted < 10,
        "at most ~400 KB of rows are held: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_fail_over_to_the_next_endpoint() {
    let clickhouse = TestClickHouse::new("failover").await;
    let schemas =
        sluice::schema::SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
            .unwrap();
    let admin = sluice::sink::clickhouse::client(&clickhouse.url, "default", "");
    sluice::check::apply_schemas(&admin, &schemas, &clickhouse.database)
        .await
        .unwrap();
    let url = clickhouse.url.clone();
    let database = clickhouse.database.clone();
    // The first endpoint is dead; the second (a replica, here the test server) takes inserts.
    let server = common::server::TestServer::start_with("failover_server", "", move |config| {
        config.clickhouse.url = "http://127.0.0.1:1".to_string();
        config.clickhouse.failover_urls = vec![url];
        config.clickhouse.apply_schema = false;
        config.clickhouse.database = database;
    })
    .await;
    let client = server.client(Some("client-a"));
    for seed in 0..5 {
        let rows = Generator::new(500 + seed).edge_access(100);
        let body = generator::encode_access(&rows, Format::Ndjson);
        let (status, answer) = common::server::post(
            &client,
            &server.url("edge_access"),
            "application/x-ndjson",
            None,
            body,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(clickhouse.count("edge_access").await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_clickhouse_refuses_go_to_quarantine() {
    let spool = tempfile::tempdir().unwrap();
    let extra = format!("[spool]\ndir = \"{}\"\n", spool.path().display());
    let server = common::server::TestServer::start_with("refused", &extra, |_| {}).await;
    let db = server.clickhouse.database.clone();
    // Schema drift: the table lost a column sluice writes.
    server
        .clickhouse
        .exec(&format!("ALTER TABLE {db}.edge_access DROP COLUMN country"))
        .await;
    let client = server.client(Some("client-a"));
    let rows = Generator::new(77).edge_access(50);
    let body = generator::encode_access(&rows, Format::Ndjson);
    let (status, answer) = common::server::post(
        &client,
        &server.url("edge_access"),
        "application/x-ndjson",
        None,
        body,
    )
    .await;
    assert_eq!(status, 200, "acknowledged once spooled: {answer}");
    let started = Instant::now();
    while server.clickhouse.count("edge_access_quarantine").await < 50
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quarantined = server
        .clickhouse
        .rows(&format!(
            "SELECT line, error, raw FROM {db}.edge_access_quarantine ORDER BY line"
        ))
        .await;
    assert_eq!(quarantined.len(), 50, "every refused row is kept");
    let error = quarantined[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Code: 16") && error.contains("country"),
        "{error}"
    );
    let raw: serde_json::Value =
        serde_json::from_str(quarantined[0]["raw"].as_str().unwrap()).unwrap();
    assert!(
        rows.iter().any(|r| raw["request_id"] == r.req_id.as_str()),
        "{raw}"
    );
    // The request-context columns (Arrow dictionaries) are kept as their text.
    assert_eq!(raw["_principal"], "edge-a", "{raw}");
    assert_eq!(
        raw["_batch_id"],
        answer["batch_id"]
            .as_str()
            .expect("the answer names the batch id"),
        "{raw}"
    );
    assert_eq!(server.clickhouse.count("edge_access").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_spool_tail_is_reported_and_the_records_before_it_delivered() {
    let clickhouse = TestClickHouse::new("torn").await;
    // First run: ClickHouse unreachable, so the records stay in the spool.
    let mut sluice = Sluice::without_clickhouse(&clickhouse.database);
    sluice.start().await;
    let client = sluice.client();
    let mut batches = Vec::new();
    for seed in 0..3 {
        let rows = Generator::new(600 + seed).edge_access(200);
        let body = generator::encode_access(&rows, Format::Ndjson);
        let response = client
            .post(sluice.url())
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        batches.push(rows);
    }
    sluice.kill();
    // A crash in the middle of writing the last record.
    let spool_dir = sluice.dir.path().join("spool");
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - 100)
        .unwrap();

    // Second run, ClickHouse back.
    sluice.reach_clickhouse(&clickhouse.url);
    sluice.start().await;
    let ledger = Ledger {
        acknowledged: batches[..2]
            .iter()
            .flatten()
            .map(|r| r.req_id.clone())
            .collect(),
        ..Default::default()
    };
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    assert_eq!(
        clickhouse.count("edge_access").await,
        400,
        "the torn third record is gone, the two before it arrived"
    );
    assert!(
        sluice
            .log()
            .contains("spool segment has a torn or corrupt tail"),
        "the damage is reported:\n{}",
        sluice.log()
    );
    sluice.terminate();
}

/// Posts `body` as NDJSON with extra headers; the status and the answer's JSON.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut all = vec![("content-type", "application/x-ndjson")];
    all.extend_from_slice(headers);
    common::server::post_with_headers(client, url, body, &all).await
}

/// The batch id of each row in the quarantine table.
async fn quarantined_batch_ids(clickhouse: &TestClickHouse) -> Vec<String> {
    let db = &clickhouse.database;
    clickhouse
        .rows(&format!("SELECT batch_id FROM {db}.edge_access_quarantine"))
        .await
        .iter()
        .map(|row| row["batch_id"].as_str().unwrap().to_string())
        .collect()
}

/// One series of the admin port's /metrics.
async fn metric(sluice: &Sluice, series: &str) -> Option<f64> {
    common::server::metric(format!("127.0.0.1:{}", sluice.admin_port), series).await
}

/// An insert's body is kept for the next insert once ClickHouse has it, and let go when no
/// insert comes (`sluice_insert_body_kept_bytes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_body_is_kept_for_the_next_insert_and_let_go_when_idle() {
    let clickhouse = TestClickHouse::new("body_kept").await;
    let mut sluice = Sluice::new(&clickhouse.url, &clickhouse.database, "");
    sluice.start().await;
    let kept = r#"sluice_insert_body_kept_bytes{table="edge_access"}"#;
    let body = generator::encode_access(&Generator::new(900).edge_access(500), Format::Ndjson);
    let (status, answer) = post(&sluice.client(), &sluice.url(), body, &[]).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(500)),
        "{answer}"
    );
    // Kept from when the insert is settled until the accumulator has been idle for 2 s.
    let started = Instant::now();
    let mut seen = None;
    while seen.is_none() && started.elapsed() < Duration::from_secs(10) {
        seen = metric(&sluice, kept).await.filter(|bytes| *bytes > 0.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clickhouse.count("edge_access").await, 500);
    let sent = metric(&sluice, r#"sluice_insert_bytes_total{table="edge_access"}"#).await;
    let seen = seen.unwrap_or_else(|| panic!("no body kept:\n{}", sluice.log_problems()));
    assert!(
        seen >= sent.unwrap(),
        "kept {seen} bytes of a {sent:?}-byte body"
    );
    let mut now = seen;
    while now > 0.0 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = metric(&sluice, kept).await.unwrap();
    }
    assert_eq!(now, 0.0, "the kept body is let go when idle");
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_refused_after_their_append_are_voided_and_never_replayed() {
    let clickhouse = TestClickHouse::new("voided").await;
    // First run: ClickHouse unreachable, so what was accepted stays in the spool.
    let mut sluice = Sluice::without_clickhouse(&clickhouse.database);
    // A row rate whose bucket holds 1,000 rows: a larger batch can never pass (413).
    let mut config = std::fs::read_to_string(&sluice.config).unwrap();
    config.push_str("[principals.rate_limit]\nrows_per_sec = 1000.0\n");
    std::fs::write(&sluice.config, config).unwrap();
    sluice.start().await;
    let (client, url) = (sluice.client(), sluice.url());
    let rows = Generator::new(700).edge_access(200);
    let plain = generator::encode_access(&rows, Format::Ndjson);
    let other = generator::encode_access(&Generator::new(701).edge_access(50), Format::Ndjson);
    let batch = ("x-sluice-batch-id", "batch-a");
    let (status, answer) = post(&client, &url, plain.clone(), &[batch]).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(200)));
    // A retry of a stored batch id is a duplicate, another body under it a conflict, whatever
    // validation finds: neither touches the spool.
    let gzipped = generator::compress(&plain, Encoding::Gzip);
    let (status, answer) = post(
        &client,
        &url,
        gzipped,
        &[batch, ("content-encoding", "gzip")],
    )
    .await;
    assert_eq!((status, answer["duplicate"].as_bool()), (200, Some(true)));
    // The id decides before the rows: a body whose every row would be rejected is a conflict.
    for body in [other.clone(), br#"{"reqId":"r8"}"#.to_vec()] {
        let (status, answer) = post(&client, &url, body, &[batch]).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (409, Some("batch_id_conflict"))
        );
    }
    let voided = metric(&sluice, "sluice_spool_voided_records_total").await;
    assert_eq!(
        voided.unwrap_or(0.0),
        0.0,
        "nothing to void: nothing appended"
    );
    let syncs = metric(&sluice, "sluice_spool_fsync_seconds_count").await;
    assert_eq!(syncs, Some(1.0), "one append, the stored batch's, one sync");
    // A batch whose every row is rejected is answered 422 and delivered to the quarantine
    // table: its record stays.
    let (status, answer) = post(&client, &url, br#"{"reqId":"r7"}"#.to_vec(), &[]).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (422, Some("all_rows_rejected"))
    );
    // Each of these is appended to the spool while it is validated, then refused: each must
    // be voided before its answer.
    let refusals = [
        (
            other.clone(),
            vec![("x-sluice-row-count", "3")],
            400,
            "row_count_mismatch",
        ),
        (
            b"not gzip".to_vec(),
            vec![("content-encoding", "gzip")],
            400,
            "bad_compression",
        ),
        (
            generator::encode_access(&Generator::new(702).edge_access(5000), Format::Ndjson),
            vec![],
            413,
            "over_burst",
        ),
    ];
    for (body, headers, expected, code) in refusals {
        let (status, answer) = post(&client, &url, body, &headers).await;
        assert_eq!((status, answer["code"].as_str()), (expected, Some(code)));
    }
    assert_eq!(
        metric(&sluice, "sluice_spool_voided_records_total").await,
        Some(3.0)
    );
    assert_eq!(
        metric(&sluice, "sluice_spool_unconfirmed_records").await,
        Some(2.0),
        "only the accepted batch and the rejected row wait in the spool"
    );
    // fsync = "always" (the default): every group of appends was synced, and timed; five
    // appends make one to five groups.
    let syncs = metric(&sluice, "sluice_spool_fsync_seconds_count").await;
    assert!(syncs.is_some_and(|n| (1.0..=5.0).contains(&n)), "{syncs:?}");
    sluice.kill();

    // Second run, ClickHouse back: only the accepted batch and the rejected row arrive, and
    // replay had nothing to refuse.
    sluice.reach_clickhouse(&clickhouse.url);
    sluice.start().await;
    let ledger = Ledger {
        acknowledged: rows.iter().map(|r| r.req_id.clone()).collect(),
        ..Default::default()
    };
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    assert_eq!(clickhouse.count("edge_access").await, 200);
    let quarantined = quarantined_batch_ids(&clickhouse).await;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(
        !sluice.log().contains("refused when it was received"),
        "{}",
        sluice.log_problems()
    );
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_again_what_a_crash_left_unvoided() {
    use sluice::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolRecord};
    let clickhouse = TestClickHouse::new("unvoided").await;
    let mut sluice = Sluice::new(&clickhouse.url, &clickhouse.database, "");
    // The spool as a crash leaves it when it comes between the appends and their voids (and
    // the answers): refused batches beside accepted ones.
    let (spool, _) = Spool::open(SpoolConfig {
        dir: sluice.dir.path().join("spool"),
        max_bytes: 1 << 30,
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Always,
        fsync_interval_ms: 100,
    })
    .unwrap();
    let limits = sluice::config::Limits::default().body_limits();
    let record =
        |batch_id: &str, body: &[u8], encoding: Option<&str>, declared: Option<u64>| SpoolRecord {
            stream: "edge_access".into(),
            schema_version: 1,
            context: sluice::validate::RequestContext {
                principal: "edge-a".into(),
                origin: "edge-a".into(),
                batch_id: batch_id.into(),
                request_id: format!("req-{batch_id}"),
                received_at: 1_760_000_000,
                url_encoded: true,
                ..Default::default()
            },
            content_type: Some("application/x-ndjson".into()),
            content_encoding: encoding.map(str::to_string),
            declared_rows: declared,
            limits: Some(limits),
            sender_batch_id: true,
            body: bytes::Bytes::copy_from_slice(body),
        };
    let first = Generator::new(710).edge_access(200);
    let second = Generator::new(711).edge_access(50);
    let third = Generator::new(712).edge_access(10);
    let (first_body, second_body) = (
        generator::encode_access(&first, Format::Ndjson),
        generator::encode_access(&second, Format::Ndjson),
    );
    for record in [
        record("b-1", &first_body, None, None),
        // A retry answered as a duplicate, then one with other content (409).
        record("b-1", &first_body, None, None),
        record("b-1", &second_body, None, None),
        // Every row rejected: answered 422, delivered to the quarantine table.
        record("b-2", br#"{"reqId":"r7"}"#, None, None),
        // A wrong declared count and a body that does not inflate (400).
        record("b-3", &second_body, None, Some(3)),
        record("b-4", b"not gzip", Some("gzip"), None),
        record("b-5", &second_body, None, Some(50)),
        // Validated under a limit of 10 records (a principal's `max_batch_rows`, or a lower
        // setting since): refused as it was then (413).
        SpoolRecord {
            limits: Some(sluice::validate::BodyLimits {
                max_records: 10,
                ..limits
            }),
            ..record("b-6", &second_body, None, None)
        },
        // Its batch id is held by an acknowledged batch with other content (see below): 409.
        record("b-7", &second_body, None, None),
        // A batch id sluice made up: delivered, never deduplicated.
        SpoolRecord {
            sender_batch_id: false,
            ..record(
                "generated-1",
                &generator::encode_access(&third, Format::Ndjson),
                None,
                None,
            )
        },
    ] {
        spool.append(&record).await.unwrap();
    }
    drop(spool);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        sluice.dir.path().join("spool/dedup.log"),
        format!("{now}\t{}\tedge-a\tedge_access\tb-7\n", "11".repeat(16)),
    )
    .unwrap();

    sluice.start().await;
    let ledger = Ledger {
        acknowledged: first
            .iter()
            .chain(&second)
            .chain(&third)
            .map(|r| r.req_id.clone())
            .collect(),
        ..Default::default()
    };
    assert_exactly_once(&clickhouse, &ledger, &sluice).await;
    assert_eq!(clickhouse.count("edge_access").await, 260);
    assert_eq!(quarantined_batch_ids(&clickhouse).await, ["b-2"]);
    let log = sluice.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused when it was received"))
        .collect();
    assert_eq!(refused.len(), 6, "{}", sluice.log_problems());
    for (reason, times) in [
        ("a duplicate of an earlier record", 1),
        // b-1 with other content, and b-7.
        ("its batch id is held by other content", 2),
        ("declares 3 records, holds 50", 1),
        ("gzip", 1),
        ("more than the limit of 10 records", 1),
    ] {
        assert_eq!(
            refused.iter().filter(|l| l.contains(reason)).count(),
            times,
            "{reason}: {refused:#?}"
        );
    }

    // The crash came before the batches' dedup entries were written; replay wrote them (for
    // the sender's batch ids only), so a sender's retry is a duplicate, not a second copy.
    let dedup_log = std::fs::read_to_string(sluice.dir.path().join("spool/dedup.log")).unwrap();
    assert!(dedup_log.contains("\tb-1\n"), "{dedup_log}");
    assert!(!dedup_log.contains("generated-1"), "{dedup_log}");
    let (client, url) = (sluice.client(), sluice.url());
    let (status, answer) = post(&client, &url, first_body, &[("x-sluice-batch-id", "b-1")]).await;
    assert_eq!(
        (status, answer["duplicate"].as_bool()),
        (200, Some(true)),
        "{answer}"
    );
    let (status, answer) = post(&client, &url, second_body, &[("x-sluice-batch-id", "b-1")]).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("batch_id_conflict"))
    );
    assert_eq!(clickhouse.count("edge_access").await, 260);
    sluice.terminate();
}
