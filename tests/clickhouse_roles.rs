//! The deployed ClickHouse users (deploy/clickhouse/users.d/sluice.xml) on the local 18.16:
//! the admin applies DDL, the writer may insert into sluice's database but neither drop nor
//! alter nor reach another database, the analyst may read but not insert. The local test server
//! loads that file (deploy/local/clickhouse.sh copies it into its users.d/).

mod common;

use common::{TestClickHouse, clickhouse_url};

/// Runs `sql` as `user` and returns the HTTP status and the body.
async fn run_as(user: &str, password: &str, sql: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(clickhouse_url())
        .query(&[("user", user), ("password", password)])
        .body(sql.to_string())
        .send()
        .await
        .expect("ClickHouse answers");
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

fn assert_refused(answer: (u16, String), code: u32, what: &str) {
    assert_ne!(answer.0, 200, "{what} was allowed: {}", answer.1);
    assert!(
        answer.1.starts_with(&format!("Code: {code},")),
        "{what}: expected code {code}, got {}",
        answer.1
    );
}

#[tokio::test]
async fn admin_applies_ddl_writer_only_inserts_into_sluice_analyst_only_reads() {
    let admin = ("sluice_admin", "sluice-admin-dev");
    let writer = ("sluice_writer", "sluice-writer-dev");
    let analyst = ("sluice_analyst", "sluice-analyst-dev");
    let other = TestClickHouse::new("roles_other").await;
    let table = format!("sluice.roles_{}", std::process::id());

    let (status, body) = run_as(admin.0, admin.1, "CREATE DATABASE IF NOT EXISTS sluice").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = run_as(
        admin.0,
        admin.1,
        &format!("CREATE TABLE {table} (x UInt32) ENGINE = MergeTree ORDER BY x"),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The writer inserts and reads back (sluice's replay probes count stored rows).
    let (status, body) = run_as(
        writer.0,
        writer.1,
        &format!("INSERT INTO {table} VALUES (1), (2)"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = run_as(writer.0, writer.1, &format!("SELECT count() FROM {table}")).await;
    assert_eq!((status, body.trim()), (200, "2"));
    // … but runs no DDL and reaches no other database.
    for ddl in [
        format!("DROP TABLE {table}"),
        format!("ALTER TABLE {table} ADD COLUMN y UInt8"),
        format!("ALTER TABLE {table} DELETE WHERE x = 1"),
        format!("TRUNCATE TABLE {table}"),
        format!("RENAME TABLE {table} TO {table}_renamed"),
        "CREATE TABLE sluice.writer_made (x UInt8) ENGINE = Memory".to_string(),
        "DROP DATABASE sluice".to_string(),
    ] {
        assert_refused(run_as(writer.0, writer.1, &ddl).await, 392, &ddl);
    }
    other
        .exec(&format!(
            "CREATE TABLE {}.t (x UInt8) ENGINE = Memory",
            other.database
        ))
        .await;
    let insert_elsewhere = format!("INSERT INTO {}.t VALUES (1)", other.database);
    assert_refused(
        run_as(writer.0, writer.1, &insert_elsewhere).await,
        291,
        "writer insert into another database",
    );

    // The analyst reads, and writes nothing.
    let (status, body) = run_as(analyst.0, analyst.1, &format!("SELECT sum(x) FROM {table}")).await;
    assert_eq!((status, body.trim()), (200, "3"));
    for write in [
        format!("INSERT INTO {table} VALUES (3)"),
        format!("DROP TABLE {table}"),
        format!("ALTER TABLE {table} DELETE WHERE x = 1"),
    ] {
        assert_refused(run_as(analyst.0, analyst.1, &write).await, 164, &write);
    }
    assert_refused(
        run_as(
            analyst.0,
            analyst.1,
            &format!("SELECT 1 FROM {}.t", other.database),
        )
        .await,
        291,
        "analyst read of another database",
    );

    let (status, body) = run_as(admin.0, admin.1, &format!("SELECT count() FROM {table}")).await;
    assert_eq!(
        (status, body.trim()),
        (200, "2"),
        "nothing changed the table"
    );
    let (status, body) = run_as(admin.0, admin.1, &format!("DROP TABLE {table}")).await;
    assert_eq!(status, 200, "{body}");
}
