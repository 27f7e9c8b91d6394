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

/// A self-signed CA certificate (PEM) that expires at midnight UTC `days` days from today.
fn ca_expiring_in(days: i64, name: &str) -> String {
    use chrono::Datelike;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let date = chrono::DateTime::from_timestamp(now + days * 86_400, 0)
        .unwrap()
        .date_naive();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test]
async fn check_reports_config_certificates_clickhouse_and_drift() {
    let clickhouse = TestClickHouse::new("drift").await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    sluice::certs::write_dev_certs(&certs).unwrap();
    // Client CAs: the development CA and one that expires in ten days.
    let bundle = dir.path().join("client-cas.pem");
    let dev_ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
    std::fs::write(&bundle, dev_ca + &ca_expiring_in(10, "soon expiring CA")).unwrap();
    let path = dir.path().join("sluice.toml");
    let config_text = format!(
        "[ingest]\nlisten = \"127.0.0.1:0\"\nack = \"clickhouse\"\n\
         [ingest.tls]\ncert = \"{certs}/server.crt\"\nkey = \"{certs}/server.key\"\nclient_ca = \"{bundle}\"\n\
         [clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n",
        certs = certs.display(),
        bundle = bundle.display(),
        url = clickhouse.url,
        db = clickhouse.database,
    );
    std::fs::write(&path, &config_text).unwrap();
    let config = path.to_string_lossy().into_owned();
    let (code, _, stderr) = sluice(&["schema", "apply", "--config", &config]);
    assert_eq!(code, 0, "{stderr}");

    // Everything is fine but one client CA expires soon: a warning, exit code 1.
    let (code, out, stderr) = sluice(&["check", "--config", &config]);
    assert_eq!(code, 1, "{out}{stderr}");
    let db = &clickhouse.database;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("ok    config     {config}"), "{out}");
    assert!(
        lines[1].starts_with("ok    schema     edge_access v1 → ")
            && lines[1].ends_with("schemas/edge_access.v1.toml"),
        "{out}"
    );
    let has = |prefix: &str, rest: &str| {
        lines
            .iter()
            .any(|line| line.starts_with(prefix) && line.contains(rest))
    };
    assert!(
        has("ok    cert       ingest.tls.cert: CN=", "days)"),
        "{out}"
    );
    assert!(
        has("ok    cert       ingest.tls.client_ca: CN=", "days)"),
        "{out}"
    );
    assert!(
        has(
            "warn  cert       ingest.tls.client_ca: CN=soon expiring CA: expires on ",
            " day(s): renew it"
        ),
        "{out}"
    );
    assert!(
        lines.contains(
            &format!(
                "ok    clickhouse {} answers (version 18.16.1)",
                clickhouse.url
            )
            .as_str()
        ) || has("ok    clickhouse ", " answers (version "),
        "{out}"
    );
    assert!(
        lines.contains(&format!("ok    table      {db}.edge_access matches its schema").as_str()),
        "{out}"
    );
    assert_eq!(
        lines.last(),
        Some(&"check: 0 error(s), 1 warning(s)"),
        "{out}"
    );

    // Drift: a column sluice writes is gone (error), one it does not know appeared (note).
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
            "\nerror table      table {db}.edge_access: column country is in the schema but not in ClickHouse\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("\nnote  table      table {db}.edge_access: column note (String) is in ClickHouse but not in the schema (harmless)\n")),
        "{out}"
    );
    assert!(out.ends_with("check: 1 error(s), 1 warning(s)\n"), "{out}");

    // A config sluice would refuse, and an unreachable ClickHouse: errors naming the key / URL.
    std::fs::write(
        &path,
        config_text.replace("[clickhouse]", "[clickhouse]\nurll = 1"),
    )
    .unwrap();
    let (code, out, _) = sluice(&["check", "--config", &config]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("error config     "), "{out}");
    assert!(out.contains("unknown field: found `urll`"), "{out}");
    std::fs::write(
        &path,
        config_text.replace(&clickhouse.url, "http://127.0.0.1:1"),
    )
    .unwrap();
    let (code, out, _) = sluice(&["check", "--config", &config]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains(
            "\nerror clickhouse http://127.0.0.1:1: clickhouse did not answer SELECT version()"
        ),
        "{out}"
    );
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
