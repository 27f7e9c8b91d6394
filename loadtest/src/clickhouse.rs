//! The few ClickHouse HTTP calls the harness makes: queries, DDL and the baseline's inserts.
//! Works against 18.16 (credentials as URL parameters, no query parameters).

use std::time::Duration;

use anyhow::{Context, bail};

/// A ClickHouse HTTP endpoint with credentials.
#[derive(Clone, Debug)]
pub struct ClickHouseHttp {
    http: reqwest::Client,
    url: reqwest::Url,
    user: String,
    password: String,
}

impl ClickHouseHttp {
    pub fn new(url: &str, user: &str, password: &str) -> anyhow::Result<ClickHouseHttp> {
        let http = crate::client::plain_client_builder()?
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the ClickHouse HTTP client")?;
        Ok(ClickHouseHttp {
            http,
            url: reqwest::Url::parse(url).with_context(|| format!("ClickHouse URL {url:?}"))?,
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    fn request(&self, params: &[(&str, &str)]) -> reqwest::RequestBuilder {
        let mut url = self.url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("user", &self.user);
            if !self.password.is_empty() {
                query.append_pair("password", &self.password);
            }
            // Harmless where LowCardinality is not experimental; needed to copy such tables on
            // 18.16.
            query.append_pair("allow_experimental_low_cardinality_type", "1");
            for (k, v) in params {
                query.append_pair(k, v);
            }
        }
        self.http.post(url)
    }

    /// Runs one statement (the SQL is the body) and returns the answer text.
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        let response = self
            .request(&[])
            .body(sql.to_string())
            .send()
            .await
            .with_context(|| format!("ClickHouse at {} did not answer", self.url))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .context("reading ClickHouse's answer")?;
        if !status.is_success() {
            bail!(
                "ClickHouse refused {}: {status}: {}",
                shorten(sql, 200),
                text.trim()
            );
        }
        Ok(text)
    }

    /// `INSERT INTO {table} FORMAT {format}` with `body` (already encoded as
    /// `content_encoding`, e.g. `gzip`, or `identity`).
    pub async fn insert(
        &self,
        table: &str,
        format: &str,
        body: bytes::Bytes,
        content_encoding: &str,
    ) -> anyhow::Result<()> {
        let query = format!("INSERT INTO {table} FORMAT {format}");
        let mut request = self.request(&[("query", &query)]).body(body);
        if content_encoding != "identity" {
            request = request.header(reqwest::header::CONTENT_ENCODING, content_encoding);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("ClickHouse at {} did not answer", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            bail!("{query}: {status}: {}", shorten(text.trim(), 500));
        }
        Ok(())
    }

    /// A single number (`SELECT count() …`).
    pub async fn number(&self, sql: &str) -> anyhow::Result<u64> {
        let text = self.query(sql).await?;
        let text = text.trim();
        if text.is_empty() || text == "\\N" {
            return Ok(0);
        }
        text.parse()
            .with_context(|| format!("{sql}: expected a number, got {text:?}"))
    }

    /// Rows in the active parts of a table: cheap (no scan), exact once inserts are done.
    pub async fn active_rows(&self, database: &str, table: &str) -> anyhow::Result<u64> {
        self.number(&format!(
            "SELECT sum(rows) FROM system.parts WHERE database = '{database}' \
             AND table = '{table}' AND active"
        ))
        .await
    }

    pub async fn version(&self) -> anyhow::Result<String> {
        Ok(self.query("SELECT version()").await?.trim().to_string())
    }

    pub async fn table_exists(&self, database: &str, table: &str) -> anyhow::Result<bool> {
        Ok(self
            .number(&format!(
                "SELECT count() FROM system.tables WHERE database = '{database}' AND name = '{table}'"
            ))
            .await?
            > 0)
    }

    pub fn port(&self) -> Option<u16> {
        self.url.port_or_known_default()
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
