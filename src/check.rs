//! Talking to ClickHouse as an operator: its version, applying the schemas' DDL, and comparing
//! the live tables with the schemas (`sluice check`).

use crate::schema::ddl::{self, ServerVersion, Statement};
use crate::schema::{Schema, SchemaSet};

/// `SELECT version()`.
pub async fn server_version(client: &clickhouse::Client) -> anyhow::Result<ServerVersion> {
    let text: String = client
        .query("SELECT version()")
        .fetch_one()
        .await
        .map_err(|err| anyhow::anyhow!("clickhouse did not answer SELECT version(): {err}"))?;
    ServerVersion::parse(&text)
        .ok_or_else(|| anyhow::anyhow!("cannot read clickhouse version {text:?}"))
}

/// Runs statements (DDL) with their settings.
pub async fn execute(client: &clickhouse::Client, statements: &[Statement]) -> anyhow::Result<()> {
    for statement in statements {
        let mut query = client.query(&statement.sql);
        for (name, value) in &statement.settings {
            query = query.with_setting(*name, *value);
        }
        query
            .execute()
            .await
            .map_err(|err| anyhow::anyhow!("{}: {err}", first_line(&statement.sql)))?;
    }
    Ok(())
}

/// Creates the database and the tables of the newest version of every stream.
pub async fn apply_schemas(
    client: &clickhouse::Client,
    schemas: &SchemaSet,
    database: &str,
) -> anyhow::Result<ServerVersion> {
    let version = server_version(client).await?;
    let statements = ddl::statements(schemas.latest().map(|s| s.as_ref()), database, version);
    execute(client, &statements).await?;
    Ok(version)
}

/// Applies the schemas on every endpoint of the config with the admin credentials: `url`, then
/// its failover replicas and every shard replica (each needs its local tables). `url` must take
/// them; another endpoint that does not answer is logged and skipped (it gets its tables from
/// `sluice schema apply` or the next start), one that answers but refuses is an error. The
/// version is `url`'s.
pub async fn apply_schemas_everywhere(
    config: &crate::config::ClickHouseConfig,
    schemas: &SchemaSet,
) -> anyhow::Result<ServerVersion> {
    let (user, password) = config.admin_credentials();
    let mut first = None;
    for url in config.all_urls() {
        let client = crate::sink::clickhouse::client(&url, user, password);
        if first.is_some()
            && let Err(err) = server_version(&client).await
        {
            tracing::warn!(%url, error = %err, "clickhouse endpoint not reachable; schemas not applied there");
            continue;
        }
        let version = apply_schemas(&client, schemas, &config.database)
            .await
            .map_err(|err| anyhow::anyhow!("applying the schemas on {url}: {err}"))?;
        first.get_or_insert(version);
    }
    Ok(first.expect("url is always the first endpoint"))
}

/// A difference between a schema and the live table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    MissingTable {
        table: String,
    },
    MissingColumn {
        table: String,
        column: String,
    },
    TypeMismatch {
        table: String,
        column: String,
        schema: String,
        live: String,
    },
    ExtraColumn {
        table: String,
        column: String,
        live: String,
    },
}

impl Drift {
    /// Extra columns are harmless for inserts (ClickHouse fills their defaults).
    pub fn breaks_inserts(&self) -> bool {
        !matches!(self, Drift::ExtraColumn { .. })
    }
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::MissingTable { table } => write!(f, "table {table}: does not exist"),
            Drift::MissingColumn { table, column } => {
                write!(
                    f,
                    "table {table}: column {column} is in the schema but not in ClickHouse"
                )
            }
            Drift::TypeMismatch {
                table,
                column,
                schema,
                live,
            } => write!(
                f,
                "table {table}: column {column} is {live} in ClickHouse but {schema} in the schema"
            ),
            Drift::ExtraColumn {
                table,
                column,
                live,
            } => write!(
                f,
                "table {table}: column {column} ({live}) is in ClickHouse but not in the schema"
            ),
        }
    }
}

/// Compares a schema's columns with `system.columns`.
pub async fn drift(
    client: &clickhouse::Client,
    schema: &Schema,
    database: &str,
) -> anyhow::Result<Vec<Drift>> {
    let table = &schema.table.name;
    let live: Vec<(String, String)> = client
        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
        .map_err(|err| anyhow::anyhow!("reading system.columns: {err}"))?;
    let qualified = format!("{database}.{table}");
    if live.is_empty() {
        return Ok(vec![Drift::MissingTable { table: qualified }]);
    }
    let mut found = Vec::new();
    for column in &schema.columns {
        match live.iter().find(|(name, _)| name == column.name()) {
            None => found.push(Drift::MissingColumn {
                table: qualified.clone(),
                column: column.name().to_string(),
            }),
            Some((_, live_type)) if *live_type != column.ch_type.to_string() => {
                found.push(Drift::TypeMismatch {
                    table: qualified.clone(),
                    column: column.name().to_string(),
                    schema: column.ch_type.to_string(),
                    live: live_type.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for (name, live_type) in &live {
        if !schema.columns.iter().any(|c| c.name() == name) {
            found.push(Drift::ExtraColumn {
                table: qualified.clone(),
                column: name.clone(),
                live: live_type.clone(),
            });
        }
    }
    Ok(found)
}

fn first_line(sql: &str) -> &str {
    sql.lines().next().unwrap_or(sql)
}

/// How bad a finding of `sluice check` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// Worth knowing, not a problem (a column ClickHouse has and the schema does not).
    Note,
    /// A problem that does not stop sluice yet (a certificate that expires within 30 days).
    Warn,
    /// sluice will not start, or inserts will fail.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Note => "note",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub level: Level,
    /// `config`, `schema`, `cert`, `clickhouse`, `table`, `spool`.
    pub area: &'static str,
    pub message: String,
}

/// What `sluice check` prints: one line per finding, then a summary. Exit code 0 when nothing
/// is wrong, 1 when there are warnings only, 2 when there are errors.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

/// A certificate expiring sooner than this is a warning.
pub const CERT_WARN_DAYS: i64 = 30;

impl Report {
    fn push(&mut self, level: Level, area: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            area,
            message: message.into(),
        });
    }

    fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }

    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.level).max() {
            Some(Level::Error) => 2,
            Some(Level::Warn) => 1,
            _ => 0,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "{:<5} {:<10} {}",
                finding.level.as_str(),
                finding.area,
                finding.message
            )?;
        }
        let (errors, warnings) = (self.count(Level::Error), self.count(Level::Warn));
        if errors + warnings == 0 {
            writeln!(f, "check: no problems")
        } else {
            writeln!(f, "check: {errors} error(s), {warnings} warning(s)")
        }
    }
}

/// Checks a config file and everything it points at: schemas, certificates, ClickHouse and its
/// tables, the spool directory. `now` is unix seconds (certificate expiry is measured from it).
pub async fn report(path: &std::path::Path, now: i64) -> Report {
    let mut report = Report::default();
    let config = match crate::config::Config::load(path) {
        Ok(config) => {
            report.push(Level::Ok, "config", path.display().to_string());
            config
        }
        Err(err) => {
            report.push(Level::Error, "config", format!("{err:#}"));
            return report;
        }
    };
    let database = &config.clickhouse.database;
    let schemas = match SchemaSet::load_dir(&config.schemas) {
        Ok(schemas) => {
            for schema in schemas.iter() {
                report.push(
                    Level::Ok,
                    "schema",
                    format!(
                        "{} v{} → {database}.{} ({} columns) {}",
                        schema.stream,
                        schema.version,
                        schema.table.name,
                        schema.columns.len(),
                        schema.source.display()
                    ),
                );
            }
            for (i, principal) in config.principals.iter().enumerate() {
                for stream in &principal.streams {
                    if stream != "*" && schemas.versions(stream).is_none() {
                        report.push(
                            Level::Error,
                            "schema",
                            format!("principals[{i}].streams: {stream:?} has no schema"),
                        );
                    }
                }
            }
            Some(schemas)
        }
        Err(err) => {
            report.push(Level::Error, "schema", format!("{err:#}"));
            None
        }
    };
    if let Some(tls) = &config.ingest.tls {
        certificates(&mut report, "ingest.tls.cert", &tls.cert, now);
        if let Some(ca) = &tls.client_ca {
            certificates(&mut report, "ingest.tls.client_ca", ca, now);
        }
        if let Err(err) = crate::accept::tls::server_config(tls) {
            report.push(Level::Error, "cert", format!("ingest.tls: {err}"));
        }
    }
    if let Some(spool) = &config.spool {
        let dir = &spool.dir;
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() && !meta.permissions().readonly() => report.push(
                Level::Ok,
                "spool",
                format!("spool.dir {} exists", dir.display()),
            ),
            Ok(_) => report.push(
                Level::Error,
                "spool",
                format!("spool.dir {} is not a writable directory", dir.display()),
            ),
            Err(_) => report.push(
                Level::Ok,
                "spool",
                format!("spool.dir {} will be created at start", dir.display()),
            ),
        }
    }
    let c = &config.clickhouse;
    let client = crate::sink::clickhouse::client(&c.url, &c.user, &c.password);
    match server_version(&client).await {
        Ok(version) => report.push(
            Level::Ok,
            "clickhouse",
            format!("{} answers (version {version})", c.url),
        ),
        Err(err) => {
            report.push(Level::Error, "clickhouse", format!("{}: {err:#}", c.url));
            return report;
        }
    }
    for url in &c.failover_urls {
        let replica = crate::sink::clickhouse::client(url, &c.user, &c.password);
        match server_version(&replica).await {
            Ok(version) => report.push(
                Level::Ok,
                "clickhouse",
                format!("{url} answers (version {version})"),
            ),
            Err(err) => report.push(Level::Warn, "clickhouse", format!("{url}: {err:#}")),
        }
    }
    for schema in schemas.iter().flat_map(|s| s.latest()) {
        match drift(&client, schema, database).await {
            Ok(found) if found.is_empty() => report.push(
                Level::Ok,
                "table",
                format!("{database}.{} matches its schema", schema.table.name),
            ),
            Ok(found) => {
                for item in found {
                    if item.breaks_inserts() {
                        report.push(Level::Error, "table", item.to_string());
                    } else {
                        report.push(Level::Note, "table", format!("{item} (harmless)"));
                    }
                }
            }
            Err(err) => report.push(Level::Error, "table", format!("{err:#}")),
        }
    }
    if report.count(Level::Error) > 0 && report.findings.iter().any(|f| f.area == "table") {
        report.push(
            Level::Note,
            "table",
            "run `sluice schema ddl` and migrate the tables that drifted",
        );
    }
    report
}

/// Reports the subject and expiry of every certificate in a PEM file.
fn certificates(report: &mut Report, key: &str, path: &std::path::Path, now: i64) {
    let certs = match crate::certs::read_pem_certs(path) {
        Ok(certs) => certs,
        Err(err) => {
            report.push(Level::Error, "cert", format!("{key}: {err:#}"));
            return;
        }
    };
    for der in certs {
        let cert = match x509_parser::parse_x509_certificate(&der) {
            Ok((_, cert)) => cert,
            Err(err) => {
                report.push(
                    Level::Error,
                    "cert",
                    format!(
                        "{key}: {}: not a readable certificate: {err}",
                        path.display()
                    ),
                );
                continue;
            }
        };
        let not_after = cert.validity().not_after.timestamp();
        let not_before = cert.validity().not_before.timestamp();
        let expires = chrono::DateTime::from_timestamp(not_after, 0).map_or_else(
            || not_after.to_string(),
            |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
        );
        let days = (not_after - now).div_euclid(86_400);
        let subject = cert.subject().to_string();
        let (level, state) = if not_after <= now {
            (Level::Error, format!("expired on {expires}"))
        } else if not_before > now {
            (Level::Error, "not valid yet".to_string())
        } else if days < CERT_WARN_DAYS {
            (
                Level::Warn,
                format!("expires on {expires}, in {days} day(s): renew it"),
            )
        } else {
            (Level::Ok, format!("expires on {expires} ({days} days)"))
        };
        report.push(level, "cert", format!("{key}: {subject}: {state}"));
    }
}
