//! ClickHouse servers of a test's own, started with `deploy/local/clickhouse.sh` (which installs
//! ClickHouse when it is missing) and extra config files in the instance's `config.d/`. Stopped,
//! and their folder removed, when dropped. A server that cannot start fails the test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};

pub struct LocalClickHouse {
    pub name: String,
    pub http_port: u16,
    pub tcp_port: u16,
    dir: PathBuf,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// Ports for a test's server: `TEST_LOCAL_CLICKHOUSE_PORTS=HTTP_BASE,TCP_BASE` hands them out in
/// order from those bases (for machines where only some ports may be used); otherwise free ports
/// chosen by the system.
pub fn ports() -> (u16, u16) {
    if let Ok(bases) = std::env::var("TEST_LOCAL_CLICKHOUSE_PORTS") {
        let (http, tcp) = bases
            .split_once(',')
            .and_then(|(h, t)| Some((h.trim().parse::<u16>().ok()?, t.trim().parse::<u16>().ok()?)))
            .expect("TEST_LOCAL_CLICKHOUSE_PORTS is HTTP_BASE,TCP_BASE");
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        return (http + n, tcp + n);
    }
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    (free(), free())
}

impl LocalClickHouse {
    /// The ports a server named `name` will use, and its folder, before it starts (a cluster's
    /// config names the ports of every shard).
    pub fn prepare(name: &str) -> LocalClickHouse {
        let (http_port, tcp_port) = ports();
        let name = format!("{name}-{}", std::process::id());
        let dir = repo().join(".local/clickhouse").join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("config.d")).unwrap();
        LocalClickHouse {
            name,
            http_port,
            tcp_port,
            dir,
        }
    }

    /// Adds a file to the server's `config.d/` (before `start`).
    pub fn config_file(&self, file_name: &str, text: &str) {
        std::fs::write(self.dir.join("config.d").join(file_name), text).unwrap();
    }

    pub fn start(&self) {
        let output = Command::new(repo().join("deploy/local/clickhouse.sh"))
            .args(["start", &self.name, "--http-port"])
            .arg(self.http_port.to_string())
            .arg("--tcp-port")
            .arg(self.tcp_port.to_string())
            .output()
            .expect("deploy/local/clickhouse.sh runs");
        assert!(
            output.status.success(),
            "ClickHouse instance {} did not start:\n{}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs one statement as `default`; panics with ClickHouse's message on failure.
    pub async fn query(&self, sql: &str) -> String {
        super::init_crypto();
        let response = reqwest::Client::new()
            .post(self.url())
            // Tables with LowCardinality columns need it on 18.16 (later servers ignore it).
            .query(&[("allow_experimental_low_cardinality_type", "1")])
            .body(sql.to_string())
            .send()
            .await
            .unwrap_or_else(|err| panic!("ClickHouse {} did not answer: {err}", self.name));
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{} refused {sql:?}: {body}", self.name);
        body
    }
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        let stopped = Command::new(repo().join("deploy/local/clickhouse.sh"))
            .args(["stop", &self.name])
            .output();
        if stopped.is_ok_and(|o| o.status.success()) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
