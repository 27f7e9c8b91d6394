//! Shared helpers for tests that talk to a real ClickHouse server.
//!
//! The server is found through `TEST_CLICKHOUSE_URL` (set by the test command; deliberately not a
//! `SLUICE_…` name, which sluice reads as config overrides). A test that needs ClickHouse fails
//! loudly when the variable is missing or the server does not answer: it never skips itself.
#![allow(dead_code)]

pub mod auth;
pub mod local_clickhouse;
pub mod server;

use std::sync::atomic::{AtomicU32, Ordering};

/// A throw-away database on the test server, one per test.
pub struct TestClickHouse {
    pub url: String,
    pub database: String,
    http: reqwest::Client,
}

static DATABASE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// reqwest is built without a bundled crypto provider (the whole tree uses ring); install it.
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn clickhouse_url() -> String {
    init_crypto();
    std::env::var("TEST_CLICKHOUSE_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_CLICKHOUSE_URL is not set: run the suite with the README's test command, \
             which starts a local ClickHouse and points this variable at it"
        )
    })
}

impl TestClickHouse {
    /// Creates a fresh, empty database named after the test.
    pub async fn new(test_name: &str) -> TestClickHouse {
        TestClickHouse::with_url(&clickhouse_url(), test_name).await
    }

    /// The same on another server (a test's private instance).
    pub async fn with_url(url: &str, test_name: &str) -> TestClickHouse {
        init_crypto();
        let url = url.to_string();
        let database = format!(
            "t_{test_name}_{}_{}",
            std::process::id(),
            DATABASE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let test_clickhouse = TestClickHouse {
            url,
            database,
            http: reqwest::Client::new(),
        };
        test_clickhouse
            .exec(&format!(
                "DROP DATABASE IF EXISTS {}",
                test_clickhouse.database
            ))
            .await;
        test_clickhouse
            .exec(&format!("CREATE DATABASE {}", test_clickhouse.database))
            .await;
        test_clickhouse
    }

    /// Runs one statement and returns the body; panics with ClickHouse's message on failure.
    pub async fn query(&self, sql: &str) -> String {
        let response = self
            .http
            .post(&self.url)
            .query(&[("allow_experimental_low_cardinality_type", "1")])
            .body(sql.to_string())
            .send()
            .await
            .unwrap_or_else(|err| panic!("ClickHouse at {} did not answer: {err}", self.url));
        let status = response.status();
        let body = response.text().await.expect("ClickHouse answer body");
        assert!(
            status.is_success(),
            "ClickHouse refused {sql:?}: {status} {body}"
        );
        body
    }

    pub async fn exec(&self, sql: &str) {
        self.query(sql).await;
    }

    /// Runs a SELECT and returns its rows as JSON objects (64-bit integers come back as strings).
    pub async fn rows(&self, select: &str) -> Vec<serde_json::Value> {
        let body = self.query(&format!("{select} FORMAT JSONEachRow")).await;
        body.lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).expect("JSONEachRow line"))
            .collect()
    }

    /// `SELECT count() FROM db.table`.
    pub async fn count(&self, table: &str) -> u64 {
        let body = self
            .query(&format!("SELECT count() FROM {}.{table}", self.database))
            .await;
        body.trim().parse().expect("count() answer")
    }
}
