//! Hot reload against a real handshake and a real ClickHouse: files swapped on disk (client CA,
//! server certificate, header secret) take effect for new connections while a client keeps its
//! connection open, a broken file leaves the old material in force, and SIGHUP re-reads the
//! config file's principals. This binary installs the global metrics recorder, so it holds
//! this one test only.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestClickHouse;
use common::auth::records;
use common::server::config_text;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sluice::config::Config;
use sluice::server::Server;

const OLD_SECRET: &str = "ew-old-secret-0123456789abcdef";
const NEW_SECRET: &str = "ew-new-secret-0123456789abcdef";
const LATE_SECRET: &str = "late-secret-0123456789abcdef";

/// Replaces `path` the way deployment tools do: write beside it, then rename over it.
fn replace(path: &Path, contents: &[u8]) {
    let temporary = path.with_extension("tmp-new");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn copy_over(from: &Path, to: &Path) {
    replace(to, &std::fs::read(from).unwrap());
}

/// An HTTPS client that trusts `ca` for the server and presents `pair` (certificate, key).
/// Each client opens its own connections and keeps them alive.
fn client(ca: &Path, pair: Option<(&Path, &Path)>) -> reqwest::Client {
    let tls = sluice::certs::client_config(ca, pair).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends two records as batch `id`; the status, or `None` when the request failed below HTTP
/// (a refused handshake).
async fn send(
    client: &reqwest::Client,
    url: &str,
    id: &str,
    headers: &[(&str, &str)],
) -> Option<u16> {
    let mut request = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .header("x-sluice-batch-id", id)
        .body(records(0..2));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.send().await {
        Ok(response) => Some(response.status().as_u16()),
        Err(err) => {
            assert!(err.status().is_none(), "{id}: {err:?}");
            None
        }
    }
}

/// Retries `attempt` (each time with a fresh batch id suffix) until it answers `expected`, or
/// fails after a deadline. Returns the batch id that got it.
async fn eventually<F, Fut>(what: &str, expected: Option<u16>, mut attempt: F) -> String
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Option<u16>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        let id = format!("{what}-{n}");
        let got = attempt(id.clone()).await;
        if got == expected {
            return id;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

fn counter(metrics: &PrometheusHandle, name: &str, what: &str) -> u64 {
    let prefix = format!("{name}{{what=\"{what}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix).map(|n| n.parse().unwrap()))
        .unwrap_or(0)
}

struct Dirs {
    _root: tempfile::TempDir,
    /// What sluice reads (its config names these files).
    live: PathBuf,
    /// The first certificate set (a copy of the initial `live`).
    old: PathBuf,
    /// A second, unrelated certificate set: another CA, server and clients.
    next: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let live = root.path().join("live");
    let old = root.path().join("old");
    let next = root.path().join("next");
    sluice::certs::write_dev_certs(&old).unwrap();
    sluice::certs::write_dev_certs(&next).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    for entry in std::fs::read_dir(&old).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), live.join(entry.file_name())).unwrap();
    }
    Dirs {
        _root: root,
        live,
        old,
        next,
    }
}

/// The config file: the test server's config with optional client certificates, principal
/// `ew` (header secret file `live/ew-secret`) and `extra`.
fn write_config(dirs: &Dirs, clickhouse: &TestClickHouse, extra: &str) -> PathBuf {
    let secret = dirs.live.join("ew-secret");
    if !secret.exists() {
        std::fs::write(&secret, format!("{OLD_SECRET}\n")).unwrap();
    }
    let extra = format!(
        r#"
[[principals]]
name = "ew"
streams = ["edge_access"]
header_secrets = [{{ file = "{secret}" }}]
{extra}
"#,
        secret = secret.display()
    );
    let text = config_text(&dirs.live, clickhouse, &extra)
        .replace("client_auth = \"required\"", "client_auth = \"optional\"");
    let path = dirs.live.join("sluice.toml");
    replace(&path, text.as_bytes());
    path
}

async fn stored(clickhouse: &TestClickHouse) -> Vec<(String, String)> {
    let db = &clickhouse.database;
    clickhouse
        .rows(&format!(
            "SELECT _batch_id, _principal, count() AS n FROM {db}.edge_access \
             GROUP BY _batch_id, _principal ORDER BY _batch_id"
        ))
        .await
        .iter()
        .map(|row| {
            assert_eq!(row["n"], json!("2"), "{row}");
            (
                row["_batch_id"].as_str().unwrap().to_string(),
                row["_principal"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_files_serve_new_connections_while_open_ones_keep_working() {
    let metrics = PrometheusBuilder::new().install_recorder().unwrap();
    let clickhouse = TestClickHouse::new("reload").await;
    let dirs = dirs();
    let config_path = write_config(&dirs, &clickhouse, "[reload]\ndebounce_ms = 100");
    let server = Server::start(Config::load(&config_path).unwrap(), None)
        .await
        .expect("sluice starts");
    let url = format!(
        "https://localhost:{}/v1/streams/edge_access",
        server.ingest_addr.port()
    );
    let pair = |dir: &Path, name: &str| {
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    };
    let (old_a_cert, old_a_key) = pair(&dirs.old, "client-a");
    let (next_a_cert, next_a_key) = pair(&dirs.next, "client-a");
    let old_ca = dirs.old.join("ca.crt");
    let next_ca = dirs.next.join("ca.crt");

    // The client that keeps its connection open throughout.
    let kept = client(&old_ca, Some((old_a_cert.as_path(), old_a_key.as_path())));
    assert_eq!(send(&kept, &url, "kept-0", &[]).await, Some(200));

    // 1. Header secret: the new one works on new requests, the old one no longer does.
    let anonymous = || client(&old_ca, None);
    let secret = |value: &'static str| [("x-sluice-secret", value)];
    assert_eq!(
        send(&anonymous(), &url, "secret-old", &secret(OLD_SECRET)).await,
        Some(200)
    );
    replace(&dirs.live.join("ew-secret"), NEW_SECRET.as_bytes());
    let secret_new = eventually("secret-new", Some(200), |id| {
        let url = url.clone();
        async move { send(&anonymous(), &url, &id, &secret(NEW_SECRET)).await }
    })
    .await;
    assert_eq!(
        send(
            &anonymous(),
            &url,
            "refused-old-secret",
            &secret(OLD_SECRET)
        )
        .await,
        Some(401)
    );

    // 2. Client CA: certificates of the new CA are accepted on new connections, those of the
    //    old one refused in the handshake; the open connection goes on.
    copy_over(&next_ca, &dirs.live.join("ca.crt"));
    let next_client = eventually("next-ca", Some(200), |id| {
        let url = url.clone();
        let c = client(&old_ca, Some((next_a_cert.as_path(), next_a_key.as_path())));
        async move { send(&c, &url, &id, &[]).await }
    })
    .await;
    assert_eq!(
        send(
            &client(&old_ca, Some((old_a_cert.as_path(), old_a_key.as_path()))),
            &url,
            "refused-old-ca",
            &[]
        )
        .await,
        None
    );
    assert_eq!(send(&kept, &url, "kept-1", &[]).await, Some(200));

    // 3. Server certificate (with its key): new connections get the new one, which only the
    //    new CA vouches for; the open connection goes on.
    copy_over(&dirs.next.join("server.key"), &dirs.live.join("server.key"));
    copy_over(&dirs.next.join("server.crt"), &dirs.live.join("server.crt"));
    let next_server = eventually("next-server", Some(200), |id| {
        let url = url.clone();
        let c = client(
            &next_ca,
            Some((next_a_cert.as_path(), next_a_key.as_path())),
        );
        async move { send(&c, &url, &id, &[]).await }
    })
    .await;
    assert_eq!(send(&kept, &url, "kept-2", &[]).await, Some(200));

    // 4. A broken client CA file: the reload fails, is counted, and the last good CA stays.
    let failures = counter(&metrics, "sluice_reload_failures_total", "tls");
    let reloads = counter(&metrics, "sluice_reloads_total", "tls");
    assert!(reloads >= 2, "{}", metrics.render());
    replace(&dirs.live.join("ca.crt"), b"not a certificate\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&metrics, "sluice_reload_failures_total", "tls") == failures {
        assert!(Instant::now() < deadline, "{}", metrics.render());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = client(
        &next_ca,
        Some((next_a_cert.as_path(), next_a_key.as_path())),
    );
    assert_eq!(send(&c, &url, "after-broken", &[]).await, Some(200));
    assert_eq!(send(&kept, &url, "kept-3", &[]).await, Some(200));
    server.shutdown().await.unwrap();

    // 5. SIGHUP, with file watching off: principals and secrets are read again from the
    //    config file and its files only when the signal comes.
    copy_over(&next_ca, &dirs.live.join("ca.crt"));
    let config_path = write_config(&dirs, &clickhouse, "[reload]\nwatch = false");
    let server = Server::start(Config::load(&config_path).unwrap(), None)
        .await
        .expect("sluice starts again");
    let url = format!(
        "https://localhost:{}/v1/streams/edge_access",
        server.ingest_addr.port()
    );
    let anonymous = || client(&next_ca, None);
    let late = [("x-sluice-secret", LATE_SECRET)];
    std::fs::write(dirs.live.join("late-secret"), LATE_SECRET).unwrap();
    write_config(
        &dirs,
        &clickhouse,
        &format!(
            "[reload]\nwatch = false\n[[principals]]\nname = \"late\"\nstreams = [\"edge_access\"]\n\
             header_secrets = [{{ file = \"{}\" }}]",
            dirs.live.join("late-secret").display()
        ),
    );
    // Nothing watches the files: the new principal is unknown until SIGHUP.
    assert_eq!(
        send(&anonymous(), &url, "refused-late", &late).await,
        Some(401)
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -HUP {}", std::process::id()))
        .status()
        .unwrap();
    assert!(status.success());
    let late_id = eventually("late", Some(200), |id| {
        let url = url.clone();
        async move { send(&anonymous(), &url, &id, &late).await }
    })
    .await;
    server.shutdown().await.unwrap();

    // Every accepted batch landed once, under the principal that sent it; nothing refused did.
    let mut expected: Vec<(String, String)> = [
        ("kept-0", "edge-a"),
        ("kept-1", "edge-a"),
        ("kept-2", "edge-a"),
        ("kept-3", "edge-a"),
        ("after-broken", "edge-a"),
        ("secret-old", "ew"),
        (secret_new.as_str(), "ew"),
        (next_client.as_str(), "edge-a"),
        (next_server.as_str(), "edge-a"),
        (late_id.as_str(), "late"),
    ]
    .iter()
    .map(|(id, principal)| (id.to_string(), principal.to_string()))
    .collect();
    expected.sort();
    assert_eq!(stored(&clickhouse).await, expected);
    let rendered = metrics.render();
    for what in ["config", "tls", "auth"] {
        assert!(
            counter(&metrics, "sluice_reloads_total", what) >= 1,
            "{what}: {rendered}"
        );
    }
}
