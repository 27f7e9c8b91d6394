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
