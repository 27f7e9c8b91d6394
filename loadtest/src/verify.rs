//! End-to-end verification: ClickHouse holds exactly the rows that were acknowledged.
//!
//! Every batch of a run has its own batch id, which sluice stores in `_batch_id`. Per table the
//! harness asks ClickHouse, per batch id of the run, for the row count, the number of distinct
//! row keys and the smallest and largest key, and compares with what it sent:
//! - a batch answered 200 must have exactly `accepted` rows (fewer: rows lost; more: rows
//!   doubled), all with distinct keys (else duplicates), and — when nothing in it was rejected —
//!   the key range of the body that was sent under that id (else the wrong body landed);
//! - a batch answered with any other status must have no rows;
//! - a batch that got no answer at all (connection reset, timeout) may or may not have landed:
//!   its rows are reported, not counted as an error;
//! - a batch id of the run that was never sent must not appear.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the harness knows about one batch it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentBatch {
    pub batch_id: String,
    pub rows: u64,
    /// HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    /// Rows the 200 answer says were accepted.
    pub accepted: u64,
    /// Smallest and largest key of the body, when every row was accepted.
    pub key_range: Option<(String, String)>,
}

/// What ClickHouse holds for one batch id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundBatch {
    pub batch_id: String,
    pub rows: u64,
    pub distinct_keys: u64,
    pub key_min: String,
    pub key_max: String,
}

/// The verdict for one table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub table: String,
    /// Rows acknowledged with a 200.
    pub expected_rows: u64,
    /// Rows of the run's batch ids in the table.
    pub found_rows: u64,
    /// Rows acknowledged but not in the table.
    pub missing_rows: u64,
    /// Acknowledged batches with none of their rows in the table.
    pub missing_batches: u64,
    /// Rows beyond a batch's acknowledged count.
    pub extra_rows: u64,
    /// Rows whose key repeats within their batch.
    pub duplicate_rows: u64,
    /// Rows of batches answered with a status other than 200.
    pub rows_of_refused_batches: u64,
    /// Rows of batches that got no answer (may legitimately have landed; not an error).
    pub rows_of_unanswered_batches: u64,
    /// Batch ids found that were never sent.
    pub unknown_batches: u64,
    /// Batches whose key range differs from the body sent under their id.
    pub content_mismatches: u64,
    /// The first problems, for a human.
    pub examples: Vec<String>,
    pub ok: bool,
}

const MAX_EXAMPLES: usize = 10;

impl Verification {
    fn note(&mut self, example: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example);
        }
    }
}

/// Compares what was sent with what was found (pure).
pub fn verify(table: &str, sent: &[SentBatch], found: &[FoundBatch]) -> Verification {
    let mut v = Verification {
        table: table.to_string(),
        ..Verification::default()
    };
    let found_by_id: BTreeMap<&str, &FoundBatch> =
        found.iter().map(|f| (f.batch_id.as_str(), f)).collect();
    let sent_ids: std::collections::BTreeSet<&str> =
        sent.iter().map(|s| s.batch_id.as_str()).collect();
    v.found_rows = found.iter().map(|f| f.rows).sum();
    for batch in sent {
        let f = found_by_id.get(batch.batch_id.as_str()).copied();
        let rows = f.map_or(0, |f| f.rows);
        match batch.status {
            Some(200) => {
                v.expected_rows += batch.accepted;
                if rows < batch.accepted {
                    v.missing_rows += batch.accepted - rows;
                    if rows == 0 {
                        v.missing_batches += 1;
                    }
                    v.note(format!(
                        "batch {}: acknowledged {} rows, {rows} in ClickHouse",
                        batch.batch_id, batch.accepted
                    ));
                } else if rows > batch.accepted {
                    v.extra_rows += rows - batch.accepted;
                    v.note(format!(
                        "batch {}: acknowledged {} rows, {rows} in ClickHouse",
                        batch.batch_id, batch.accepted
                    ));
                }
                if let Some(f) = f {
                    if f.distinct_keys < f.rows {
                        v.duplicate_rows += f.rows - f.distinct_keys;
                        v.note(format!(
                            "batch {}: {} rows but {} distinct keys",
                            batch.batch_id, f.rows, f.distinct_keys
                        ));
                    }
                    if let Some((min, max)) = &batch.key_range
                        && f.rows > 0
                        && (&f.key_min != min || &f.key_max != max)
                    {
                        v.content_mismatches += 1;
                        v.note(format!(
                            "batch {}: keys {}..{} in ClickHouse, {min}..{max} sent",
                            batch.batch_id, f.key_min, f.key_max
                        ));
                    }
                }
            }
            Some(status) => {
                if rows > 0 {
                    v.rows_of_refused_batches += rows;
                    v.note(format!(
                        "batch {}: answered {status} but {rows} rows in ClickHouse",
                        batch.batch_id
                    ));
                }
            }
            None => v.rows_of_unanswered_batches += rows,
        }
    }
    for f in found {
        if !sent_ids.contains(f.batch_id.as_str()) {
            v.unknown_batches += 1;
            v.note(format!(
                "batch {}: {} rows in ClickHouse, never sent",
                f.batch_id, f.rows
            ));
        }
    }
    v.ok = v.missing_rows == 0
        && v.extra_rows == 0
        && v.duplicate_rows == 0
        && v.rows_of_refused_batches == 0
        && v.unknown_batches == 0
        && v.content_mismatches == 0;
    v
}

/// The query that produces [`FoundBatch`]es for the batch ids starting with `prefix-`
/// (TabSeparated: id, rows, distinct keys, min key, max key).
pub fn found_query(database: &str, table: &str, key: &str, prefix: &str) -> String {
    format!(
        "SELECT _batch_id, count(), uniqExact(toString({key})), min(toString({key})), \
         max(toString({key})) FROM {database}.{table} WHERE _batch_id LIKE '{prefix}-%' \
         GROUP BY _batch_id FORMAT TabSeparated"
    )
}

/// Parses the answer of [`found_query`].
pub fn parse_found(text: &str) -> anyhow::Result<Vec<FoundBatch>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 5 {
                anyhow::bail!("unexpected verification row {line:?}");
            }
            Ok(FoundBatch {
                batch_id: f[0].to_string(),
                rows: f[1].parse()?,
                distinct_keys: f[2].parse()?,
                key_min: f[3].to_string(),
                key_max: f[4].to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(
        id: &str,
        status: Option<u16>,
        accepted: u64,
        range: Option<(&str, &str)>,
    ) -> SentBatch {
        SentBatch {
            batch_id: id.into(),
            rows: 100,
            status,
            accepted,
            key_range: range.map(|(a, b)| (a.into(), b.into())),
        }
    }

    fn found(id: &str, rows: u64, distinct: u64, min: &str, max: &str) -> FoundBatch {
        FoundBatch {
            batch_id: id.into(),
            rows,
            distinct_keys: distinct,
            key_min: min.into(),
            key_max: max.into(),
        }
    }

    #[test]
    fn exact_match_is_ok() {
        let s = vec![
            sent("p-0", Some(200), 100, Some(("a", "z"))),
            sent("p-1", Some(200), 97, None), // 3 rows rejected: no range check
            sent("p-2", Some(503), 0, None),
        ];
        let f = vec![
            found("p-0", 100, 100, "a", "z"),
            found("p-1", 97, 97, "b", "y"),
        ];
        let v = verify("db.t", &s, &f);
        assert!(v.ok, "{v:?}");
        assert_eq!((v.expected_rows, v.found_rows), (197, 197));
        assert!(v.examples.is_empty());
    }

    #[test]
    fn missing_extra_and_duplicate_rows_are_counted() {
        let s = vec![
            sent("p-0", Some(200), 100, None),
            sent("p-1", Some(200), 100, None),
            sent("p-2", Some(200), 100, None),
            sent("p-3", Some(200), 100, None),
        ];
        // p-0 lost 10, p-1 doubled (200 rows, 100 keys), p-2 absent, p-3 fine.
        let f = vec![
            found("p-0", 90, 90, "a", "z"),
            found("p-1", 200, 100, "a", "z"),
            found("p-3", 100, 100, "a", "z"),
        ];
        let v = verify("t", &s, &f);
        assert!(!v.ok);
        assert_eq!(v.missing_rows, 110);
        assert_eq!(v.missing_batches, 1);
        assert_eq!(v.extra_rows, 100);
        assert_eq!(v.duplicate_rows, 100);
        assert_eq!(v.expected_rows, 400);
        assert_eq!(v.found_rows, 390);
        assert!(
            v.examples
                .iter()
                .any(|e| e.contains("p-1: 200 rows but 100 distinct"))
        );
    }

    #[test]
    fn rows_of_refused_batches_fail_and_unanswered_ones_are_only_reported() {
        let s = vec![
            sent("p-0", Some(503), 0, None),
            sent("p-1", None, 0, None),
            sent("p-2", Some(429), 0, None),
        ];
        let v = verify("t", &s, &[found("p-1", 100, 100, "a", "z")]);
        assert!(v.ok, "an unanswered batch may have landed: {v:?}");
        assert_eq!(v.rows_of_unanswered_batches, 100);
        let v = verify("t", &s, &[found("p-0", 100, 100, "a", "z")]);
        assert!(!v.ok);
        assert_eq!(v.rows_of_refused_batches, 100);
        assert!(v.examples[0].contains("answered 503"));
    }

    #[test]
    fn unknown_batches_and_wrong_content_fail() {
        let s = vec![sent("p-0", Some(200), 100, Some(("a", "z")))];
        let v = verify(
            "t",
            &s,
            &[
                found("p-0", 100, 100, "a", "q"),
                found("p-9", 5, 5, "a", "b"),
            ],
        );
        assert!(!v.ok);
        assert_eq!(v.content_mismatches, 1);
        assert_eq!(v.unknown_batches, 1);
        assert_eq!(v.found_rows, 105);
    }

    #[test]
    fn examples_are_capped() {
        let s: Vec<SentBatch> = (0..50)
            .map(|i| sent(&format!("p-{i}"), Some(200), 100, None))
            .collect();
        let v = verify("t", &s, &[]);
        assert_eq!(v.missing_batches, 50);
        assert_eq!(v.examples.len(), MAX_EXAMPLES);
    }

    #[test]
    fn found_rows_parse_from_tab_separated() {
        let q = found_query("db", "edge_access", "request_id", "lt-1");
        assert!(q.contains("FROM db.edge_access WHERE _batch_id LIKE 'lt-1-%'"));
        let rows = parse_found("lt-1-00000001\t100\t99\t0a\tff\n\n").unwrap();
        assert_eq!(rows, vec![found("lt-1-00000001", 100, 99, "0a", "ff")]);
        assert!(parse_found("x\t1\n").is_err());
        assert!(parse_found("x\ty\t1\ta\tb\n").is_err());
    }
}
