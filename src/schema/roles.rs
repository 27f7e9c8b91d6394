//! SQL for servers with RBAC (ClickHouse 20.5 and later): the roles of
//! `deploy/clickhouse/users.d/sluice.xml` as `CREATE ROLE` / `GRANT` statements. 18.16 has no
//! SQL access control; use the users.xml file there.
//!
//! - `sluice_admin`: DDL in sluice's database (and creating it): `sluice schema apply`.
//! - `sluice_writer`: INSERT and SELECT in sluice's database (replay probes count stored rows);
//!   no DDL, whatever settings a client sends.
//! - `sluice_analyst`: SELECT in sluice's database.

/// The statements, one per line, for `database`. Users are the operator's to create (with their
/// own passwords); the trailing comment shows how.
pub fn script(database: &str) -> String {
    let statements = [
        "CREATE ROLE IF NOT EXISTS sluice_admin".to_string(),
        format!("GRANT CREATE DATABASE ON {database}.* TO sluice_admin"),
        format!(
            "GRANT CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, ALTER, TRUNCATE, OPTIMIZE, \
             INSERT, SELECT, SHOW ON {database}.* TO sluice_admin"
        ),
        "CREATE ROLE IF NOT EXISTS sluice_writer".to_string(),
        format!("GRANT INSERT, SELECT ON {database}.* TO sluice_writer"),
        "CREATE ROLE IF NOT EXISTS sluice_analyst".to_string(),
        format!("GRANT SELECT ON {database}.* TO sluice_analyst"),
    ];
    let mut script = String::new();
    for statement in statements {
        script.push_str(&statement);
        script.push_str(";\n");
    }
    script.push_str(
        "-- Users, with your own passwords, e.g.:\n\
         -- CREATE USER IF NOT EXISTS sluice_writer IDENTIFIED WITH sha256_password BY '…' DEFAULT ROLE sluice_writer;\n\
         -- GRANT sluice_writer TO sluice_writer;\n",
    );
    script
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_writer_gets_no_ddl_and_everything_is_scoped_to_the_database() {
        let script = super::script("edge");
        assert!(script.contains("GRANT INSERT, SELECT ON edge.* TO sluice_writer;\n"));
        assert!(script.contains("GRANT SELECT ON edge.* TO sluice_analyst;\n"));
        for line in script.lines().filter(|l| l.starts_with("GRANT")) {
            assert!(line.contains(" ON edge.* TO "), "{line}");
            if line.ends_with("sluice_writer;") || line.ends_with("sluice_analyst;") {
                for ddl in ["CREATE", "DROP", "ALTER", "TRUNCATE"] {
                    assert!(!line.contains(ddl), "{line}");
                }
            }
        }
    }
}
