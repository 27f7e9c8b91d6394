//! CREATE statements for the tables a schema describes, for the ClickHouse version at hand.
//!
//! Sluice talks to servers from 18.16 (Debian's package) to current releases. What differs and
//! matters here: TTL exists from 19.6; LowCardinality needs
//! `allow_experimental_low_cardinality_type = 1` before 19.9 (the setting is harmless later).

use std::fmt::{self, Write as _};

use super::Schema;
use super::rollup::Rollup;

/// A ClickHouse server version as `SELECT version()` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
}

impl ServerVersion {
    /// Parses `18.16.1`, `24.8.4.13` or `18.16`.
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        self >= ServerVersion { major, minor }
    }

    pub fn supports_ttl(self) -> bool {
        self.at_least(19, 6)
    }

    pub fn low_cardinality_is_experimental(self) -> bool {
        !self.at_least(19, 9)
    }

    /// `insert_deduplication_token` and `non_replicated_deduplication_window` (22.2+): a retried
    /// insert with the same token is stored once, on plain MergeTree too.
    pub fn supports_deduplication_token(self) -> bool {
        self.at_least(22, 2)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// One statement plus the settings it must run with (sent as URL parameters, since 18.16 has no
/// `SETTINGS` clause on DDL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub settings: Vec<(&'static str, &'static str)>,
}

pub fn create_database(database: &str) -> Statement {
    Statement {
        sql: format!("CREATE DATABASE IF NOT EXISTS {database}"),
        settings: Vec::new(),
    }
}

/// `CREATE TABLE IF NOT EXISTS` for the schema's table.
pub fn create_table(schema: &Schema, database: &str, server: ServerVersion) -> Statement {
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {database}.{}\n(\n",
        schema.table.name
    );
    for (i, column) in schema.columns.iter().enumerate() {
        let separator = if i + 1 < schema.columns.len() {
            ","
        } else {
            ""
        };
        let _ = writeln!(sql, "    `{}` {}{separator}", column.name(), column.ch_type);
    }
    let _ = write!(sql, ")\nENGINE = {}", schema.table.engine);
    if !schema.table.engine.ends_with(')') {
        sql.push_str("()");
    }
    if let Some(partition_by) = &schema.table.partition_by {
        let _ = write!(sql, "\nPARTITION BY {partition_by}");
    }
    let _ = write!(sql, "\nORDER BY ({})", schema.table.order_by.join(", "));
    if let Some(ttl) = schema.table.ttl.as_ref().filter(|_| server.supports_ttl()) {
        let _ = write!(sql, "\nTTL {ttl}");
    }
    if server.supports_deduplication_token() && !schema.table.engine.starts_with("Replicated") {
        // Replicated tables deduplicate by themselves; plain MergeTree needs a window for the
        // insert ids sluice sends as insert_deduplication_token.
        sql.push_str("\nSETTINGS non_replicated_deduplication_window = 1000");
    }
    let mut settings = Vec::new();
    if server.low_cardinality_is_experimental()
        && schema
            .columns
            .iter()
            .any(|c| c.ch_type.uses_low_cardinality())
    {
        settings.push(("allow_experimental_low_cardinality_type", "1"));
    }
    Statement { sql, settings }
}

/// Every statement needed for the schemas' tables and their quarantine tables, database first. Pass the newest version of
/// each stream ([`super::SchemaSet::latest`]): older versions describe a subset of its columns.
pub fn statements<'a>(
    schemas: impl Iterator<Item = &'a Schema>,
    database: &str,
    server: ServerVersion,
) -> Vec<Statement> {
    let mut tables = std::collections::HashSet::new();
    let mut out = vec![create_database(database)];
    for schema in schemas.filter(|schema| tables.insert(schema.table.name.clone())) {
        out.push(create_table(schema, database, server));
        out.push(create_table(
            &super::quarantine::schema_for(schema),
            database,
            server,
        ));
        for rollup in &schema.rollups {
            out.extend(rollup_statements(rollup, database, server));
        }
    }
    out
}

/// The tables of one rollup: the `Null`-engine input table sluice inserts partial rows into, the
/// AggregatingMergeTree rollup table (a materialized view over the input, so the server picks
/// the exact aggregate-state types of its version), and the flush log with its view.
pub fn rollup_statements(rollup: &Rollup, database: &str, server: ServerVersion) -> Vec<Statement> {
    let columns = rollup.input_columns();
    let settings = if server.low_cardinality_is_experimental()
        && columns.iter().any(|(_, t)| t.uses_low_cardinality())
    {
        vec![("allow_experimental_low_cardinality_type", "1")]
    } else {
        Vec::new()
    };
    let input = rollup.input_table();
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {database}.{input}\n(\n");
    let column_lines: Vec<String> = columns
        .iter()
        .map(|(name, ty)| format!("    `{name}` {ty}"))
        .collect();
    sql.push_str(&column_lines.join(",\n"));
    sql.push_str("\n)\nENGINE = Null");
    let create_input = Statement {
        sql,
        settings: settings.clone(),
    };

    let group = rollup
        .group_columns()
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut sql = format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{}\nENGINE = AggregatingMergeTree()\nPARTITION BY {}\nORDER BY ({group})",
        rollup.name, rollup.partition_by
    );
    if let Some(ttl) = rollup.ttl.as_ref().filter(|_| server.supports_ttl()) {
        let _ = write!(sql, "\nTTL {ttl}");
    }
    let states: Vec<String> = rollup
        .measures
        .iter()
        .map(|m| format!("{} AS `{}`", m.state_expression(), m.name))
        .collect();
    let _ = write!(
        sql,
        "\nAS SELECT {group}, {}\nFROM {database}.{input}\nGROUP BY {group}",
        states.join(", ")
    );
    let create_rollup = Statement { sql, settings };

    let flushes = rollup.flushes_table();
    let create_flushes = Statement {
        sql: format!(
            "CREATE TABLE IF NOT EXISTS {database}.{flushes}\n(\n    `flush_id` String,\n    `principal` String,\n    `batch_id` String,\n    `rows` UInt64,\n    `stored_at` DateTime DEFAULT now()\n)\nENGINE = MergeTree()\nPARTITION BY toYYYYMM(stored_at)\nORDER BY (principal, batch_id)"
        ),
        settings: Vec::new(),
    };
    let log_view = Statement {
        sql: format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{flushes}_mv TO {database}.{flushes}\nAS SELECT `_flush_id` AS flush_id, principal, batch_id, rows, now() AS stored_at\nFROM {database}.{input}\nARRAY JOIN `_principals` AS principal, `_batch_ids` AS batch_id, `_rows` AS rows"
        ),
        settings: Vec::new(),
    };
    vec![create_input, create_rollup, create_flushes, log_view]
}

/// The statements as a script for `clickhouse-client --multiquery`.
pub fn script(statements: &[Statement]) -> String {
    let mut out = String::new();
    for statement in statements {
        for (name, value) in &statement.settings {
            let _ = writeln!(out, "SET {name} = {value};");
        }
        let _ = writeln!(out, "{};\n", statement.sql);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaSet;
    use std::path::Path;

    #[test]
    fn ttl_and_low_cardinality_follow_the_server_version() {
        let set =
            SchemaSet::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let access = set
            .versions("edge_access")
            .unwrap()
            .values()
            .next()
            .unwrap();
        let old = create_table(access, "sluice", ServerVersion::parse("18.16.1").unwrap());
        assert!(!old.sql.contains("TTL"));
        assert_eq!(
            old.settings,
            [("allow_experimental_low_cardinality_type", "1")]
        );
        assert!(old.sql.contains("    `status` UInt16,\n"));
        assert!(old.sql.ends_with(
            "ENGINE = MergeTree()\nPARTITION BY toYYYYMMDD(time)\nORDER BY (host, time)"
        ));
        let new = create_table(access, "sluice", ServerVersion::parse("24.8.4.13").unwrap());
        assert!(new.sql.ends_with(
            "TTL time + INTERVAL 30 DAY\nSETTINGS non_replicated_deduplication_window = 1000"
        ));
        assert!(new.settings.is_empty());
    }
}
