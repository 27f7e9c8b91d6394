//! `sluice schema ddl` and `sluice check` against the real server.

mod common;

use std::process::Command;

use common::TestClickHouse;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("sluice runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config_file(dir: &tempfile::TempDir, clickhouse: &TestClickHouse) -> String {
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:0\"\nplain_http = true\nack = \"clickhouse\"\n[clickhouse]\nurl = \"{}\"\ndatabase = \"{}\"\n",
            clickhouse.url, clickhouse.database
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn printed_ddl_runs_on_the_server_and_creates_both_tables() {
    let clickhouse = TestClickHouse::new("ddl").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, &clickhouse);
    let (code, script, stderr) = sluice(&["schema", "ddl", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(script.contains(&format!(
        "CREATE TABLE IF NOT EXISTS {}.edge_access",
        clickhouse.database
    )));
    // Run the script statement by statement (the test client always sends the LowCardinality
    // setting that the script's SET lines ask for).
    let mut statements = 0;
    for statement in script.split(";\n") {
        let statement = statement
            .lines()
            .filter(|line| !line.starts_with("--") && !line.starts_with("SET "))
            .collect::<Vec<_>>()
            .join("\n");
        if !statement.trim().is_empty() {
            clickhouse.exec(&statement).await;
            statements += 1;
        }
    }
    assert_eq!(
        statements, 9,
        "database + two tables + their quarantine tables + edge_access_1m's four:\n{script}"
    );
    let tables = clickhouse
        .rows(&format!(
            "SELECT name, engine FROM system.tables WHERE database = '{}' ORDER BY name",
            clickhouse.database
        ))
        .await;
    assert_eq!(
        tables,
        [
            serde_json::json!({"name": ".inner.edge_access_1m", "engine": "AggregatingMergeTree"}),
            serde_json::json!({"name": "edge_access", "engine": "MergeTree"}),
            serde_json::json!({"name": "edge_access_1m", "engine": "MaterializedView"}),
            serde_json::json!({"name": "edge_access_1m_flushes", "engine": "MergeTree"}),
            serde_json::json!({"name": "edge_access_1m_flushes_mv", "engine": "MaterializedView"}),
            serde_json::json!({"name": "edge_access_1m_input", "engine": "Null"}),
            serde_json::json!({"name": "edge_access_quarantine", "engine": "MergeTree"}),
            serde_json::json!({"name": "edge_events", "engine": "MergeTree"}),
            serde_json::json!({"name": "edge_events_quarantine", "engine": "MergeTree"}),
        ]
    );
    let types = clickhouse
        .rows(&format!(
            "SELECT name, type FROM system.columns WHERE database = '{}' AND table = 'edge_events' AND name IN ('event_id', 'host', 'tags', 'level')",
            clickhouse.database
        ))
        .await;
    assert_eq!(
        types,
        [
            serde_json::json!({"name": "event_id", "type": "UUID"}),
            serde_json::json!({"name": "level", "type": "Enum8('debug' = 1, 'info' = 2, 'warn' = 3, 'error' = 4)"}),
            serde_json::json!({"name": "host", "type": "LowCardinality(Nullable(String))"}),
            serde_json::json!({"name": "tags", "type": "Array(String)"}),
        ]
    );

    // Applying twice is harmless.
    let (code, out, stderr) = sluice(&["schema", "apply", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");
    assert!(out.starts_with("applied 2 schema(s)"), "{out}");
}

#[tokio::test]
async fn check_reports_a_dropped_column_as_drift() {
    let clickhouse = TestClickHouse::new("drift").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(&dir, &clickhouse);
    let (code, _, stderr) = sluice(&["schema", "apply", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");

    let (code, out, stderr) = sluice(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{stderr}");
    assert!(
        out.contains(&format!("table: ok {}.edge_access", clickhouse.database)),
        "{out}"
    );

    let db = &clickhouse.database;
    clickhouse
        .exec(&format!("ALTER TABLE {db}.edge_access DROP COLUMN country"))
        .await;
    clickhouse
        .exec(&format!(
            "ALTER TABLE {db}.edge_access ADD COLUMN note String"
        ))
        .await;
    let (code, out, _) = sluice(&["check", "--config", &config]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(&format!(
            "drift: table {db}.edge_access: column country is in the schema but not in ClickHouse\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("drift: table {db}.edge_access: column note (String) is in ClickHouse but not in the schema (harmless)\n")),
        "{out}"
    );
    assert!(out.contains("1 drift(s) break inserts"), "{out}");
}

#[test]
fn ddl_for_a_stated_version_needs_no_server() {
    let (code, script, stderr) = sluice(&[
        "schema",
        "ddl",
        "--schemas",
        "schemas",
        "--server-version",
        "24.8",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(script.contains("TTL time + INTERVAL 30 DAY"), "{script}");
    assert!(
        !script.contains("SET allow_experimental_low_cardinality_type"),
        "{script}"
    );
    let (code, _, stderr) = sluice(&["schema", "ddl", "--server-version", "soon"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "error: --server-version: \"soon\" is not a version like 18.16\n"
    );
}
