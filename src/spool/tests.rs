use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::validate::{BodyLimits, RequestContext};

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 30,
        segment_bytes: 4096,
        fsync: FsyncPolicy::Always,
        fsync_interval_ms: 100,
    }
}

/// Segments large enough for every record of a test.
fn one_segment(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 1 << 20,
        ..config(dir)
    }
}

fn record(n: u32) -> SpoolRecord {
    SpoolRecord {
        stream: "edge_access".to_string(),
        schema_version: 1,
        context: RequestContext {
            principal: "edge-a".into(),
            origin: "w".into(),
            region: "eu".into(),
            batch_id: format!("b{n}"),
            request_id: format!("r{n}"),
            received_at: 1_700_000_000 + n,
            url_encoded: n.is_multiple_of(2),
        },
        content_type: Some("application/x-ndjson".into()),
        content_encoding: n.is_multiple_of(3).then(|| "gzip".to_string()),
        declared_rows: (!n.is_multiple_of(4)).then_some(u64::from(n) * 1000),
        limits: (n % 3 != 1).then_some(BodyLimits {
            max_decompressed_bytes: 1 << (20 + n % 10),
            max_records: 1000 + n as usize,
            max_errors: 100,
            max_line_bytes: 1 << 20,
            max_nesting_depth: 64 + n as usize,
        }),
        sender_batch_id: n.is_multiple_of(5),
        body: Bytes::from(vec![b'x'; (n as usize * 37) % 900]),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn records_survive_a_restart_until_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, recovery) = Spool::open(config(dir.path())).unwrap();
    assert!(recovery.unconfirmed.is_empty());
    let ids: Vec<RecordId> = (0..40)
        .map(|n| rt.block_on(spool.append(&record(n))).unwrap())
        .collect();
    assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    assert!(
        segment_files(dir.path()).len() > 1,
        "4 KiB segments roll over"
    );
    spool.confirm(&ids[..30]);
    drop(spool);

    let (spool, recovery) = Spool::open(config(dir.path())).unwrap();
    let replayed: Vec<(RecordId, SpoolRecord)> = recovery.unconfirmed;
    assert_eq!(
        replayed,
        (30..40)
            .map(|n| (n as u64 + 1, record(n)))
            .collect::<Vec<_>>()
    );
    // New ids continue after the old ones.
    assert_eq!(rt.block_on(spool.append(&record(99))).unwrap(), 41);
    spool.confirm(&(31..=41).collect::<Vec<_>>());
    let stats = spool.stats();
    assert_eq!(stats.unconfirmed_records, 0);
    assert_eq!(
        stats.segments, 1,
        "sealed, fully confirmed segments are deleted"
    );
}

#[test]
fn a_restart_counts_only_the_segments_it_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, _) = Spool::open(config(dir.path())).unwrap();
    let ids: Vec<RecordId> = (0..40)
        .map(|n| rt.block_on(spool.append(&record(n))).unwrap())
        .collect();
    spool.confirm(&ids);
    let stats = spool.stats();
    assert_eq!(stats.segments, 1, "the active segment stays while running");
    assert!(stats.bytes > 0);
    drop(spool);

    // Everything was confirmed: the start deletes the last segment too, and does not count it.
    let (spool, recovery) = Spool::open(config(dir.path())).unwrap();
    assert!(recovery.unconfirmed.is_empty());
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(
        list_files(dir.path(), "ack").unwrap(),
        Vec::<PathBuf>::new()
    );
    let stats = spool.stats();
    assert_eq!((stats.bytes, stats.segments), (0, 0));
    let id = rt.block_on(spool.append(&record(40))).unwrap();
    assert_eq!(id, 41);
    assert_eq!(
        spool.stats().bytes,
        fs::metadata(&segment_files(dir.path())[0]).unwrap().len()
    );
}

#[test]
fn a_segment_that_cannot_be_deleted_keeps_its_ack_file() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("00000000000000000001.seg");
    let stuck = dir.path().join("00000000000000000002.seg");
    fs::write(&gone, b"records").unwrap();
    // A directory where the segment file should be: unlinking it fails, even for root.
    fs::create_dir(&stuck).unwrap();
    fs::write(stuck.join("keep"), b"").unwrap();
    for segment in [&gone, &stuck] {
        fs::write(segment.with_extension("ack"), 1u64.to_le_bytes()).unwrap();
    }
    delete_segments(dir.path(), &[(gone.clone(), 7), (stuck.clone(), 7)], true);
    assert!(!gone.exists() && !gone.with_extension("ack").exists());
    assert!(stuck.exists());
    assert!(
        stuck.with_extension("ack").exists(),
        "without its ack file the segment's confirmed records would be replayed"
    );
}

#[test]
fn voided_records_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, _) = Spool::open(one_segment(dir.path())).unwrap();
    // Appended while the bodies are validated; the second is refused after all.
    let pending: Vec<PendingAppend> = (0..3)
        .map(|n| spool.begin_append(&record(n)).unwrap())
        .collect();
    let ids: Vec<RecordId> = pending
        .into_iter()
        .map(|p| rt.block_on(p.durable()).unwrap())
        .collect();
    spool.void(ids[1]).unwrap();
    assert_eq!(spool.stats().unconfirmed_records, 2);
    drop(spool);
    let (_, recovery) = Spool::open(config(dir.path())).unwrap();
    assert_eq!(
        recovery.unconfirmed,
        [(ids[0], record(0)), (ids[2], record(2))]
    );
    assert_eq!(recovery.confirmed, 1);
}

#[test]
fn a_guarded_append_is_voided_when_its_request_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (spool, _) = Spool::open(one_segment(dir.path())).unwrap();
    let spool = Arc::new(spool);
    // Waits until the spool holds more than `bytes` and every record in it is confirmed;
    // returns the unconfirmed records then (or after two seconds).
    let unconfirmed_once_written = |spool: &Spool, bytes: u64| {
        rt.block_on(async {
            for _ in 0..200 {
                let stats = spool.stats();
                if stats.bytes > bytes && stats.unconfirmed_records == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        assert!(spool.stats().bytes > bytes, "the record was written");
        spool.stats().unconfirmed_records
    };
    // Dropped while the record is being written, and after it is durable.
    let bytes = spool.stats().bytes;
    rt.block_on(async { drop(spool.begin_guarded_append(&record(1)).unwrap()) });
    assert_eq!(unconfirmed_once_written(&spool, bytes), 0);
    let bytes = spool.stats().bytes;
    rt.block_on(async {
        let mut guard = spool.begin_guarded_append(&record(2)).unwrap();
        guard.durable().await.unwrap();
    });
    assert_eq!(unconfirmed_once_written(&spool, bytes), 0);
    // Handed over: the pipeline confirms it later.
    let bytes = spool.stats().bytes;
    let id = rt.block_on(async {
        let mut guard = spool.begin_guarded_append(&record(3)).unwrap();
        let id = guard.durable().await.unwrap();
        guard.handed_over();
        id
    });
    assert_eq!(unconfirmed_once_written(&spool, bytes), 1);
    drop(spool);
    let (_, recovery) = Spool::open(one_segment(dir.path())).unwrap();
    assert_eq!(recovery.unconfirmed, [(id, record(3))]);
}

#[test]
fn an_ack_file_left_without_its_segment_is_removed_and_its_ids_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, _) = Spool::open(config(dir.path())).unwrap();
    let id = rt.block_on(spool.append(&record(1))).unwrap();
    drop(spool);
    // A crash between deleting a segment (ids up to 70) and deleting its ack file.
    let orphan = dir.path().join(format!("{:020}.ack", 60));
    fs::write(&orphan, [65u64, 70].map(u64::to_le_bytes).concat()).unwrap();
    let (spool, recovery) = Spool::open(config(dir.path())).unwrap();
    assert_eq!(recovery.unconfirmed, [(id, record(1))]);
    assert!(!orphan.exists());
    assert_eq!(rt.block_on(spool.append(&record(2))).unwrap(), 71);
}

#[test]
fn version_1_records_are_still_read() {
    // Written by earlier releases after validation, with the row counts instead of the
    // declared count: 7 accepted, 2 rejected.
    fn put(payload: &mut Vec<u8>, bytes: &[u8]) {
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(bytes);
    }
    let mut payload = 5u64.to_le_bytes().to_vec();
    payload.push(1);
    put(&mut payload, b"edge_access");
    payload.extend_from_slice(&3u32.to_le_bytes());
    for text in ["edge-a", "w", "eu", "b1", "r1"] {
        put(&mut payload, text.as_bytes());
    }
    payload.extend_from_slice(&1_700_000_000u32.to_le_bytes());
    payload.push(1); // URL-encoded
    payload.push(0); // no Content-Type
    payload.push(1);
    put(&mut payload, b"gzip");
    payload.extend_from_slice(&7u32.to_le_bytes());
    payload.extend_from_slice(&2u32.to_le_bytes());
    put(&mut payload, b"abc");
    let mut segment = MAGIC.to_vec();
    segment.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    segment.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    segment.extend_from_slice(&payload);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(format!("{:020}.seg", 5)), segment).unwrap();
    let (_, recovery) = Spool::open(config(dir.path())).unwrap();
    assert_eq!(
        recovery.unconfirmed,
        [(
            5,
            SpoolRecord {
                stream: "edge_access".into(),
                schema_version: 3,
                context: RequestContext {
                    principal: "edge-a".into(),
                    origin: "w".into(),
                    region: "eu".into(),
                    batch_id: "b1".into(),
                    request_id: "r1".into(),
                    received_at: 1_700_000_000,
                    url_encoded: true,
                },
                content_type: None,
                content_encoding: Some("gzip".into()),
                declared_rows: Some(9),
                limits: None,
                sender_batch_id: false,
                body: Bytes::from_static(b"abc"),
            }
        )]
    );
}

#[test]
fn a_torn_tail_and_a_flipped_byte_keep_the_good_records_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, _) = Spool::open(one_segment(dir.path())).unwrap();
    for n in 0..5 {
        rt.block_on(spool.append(&record(n))).unwrap();
    }
    drop(spool);
    let path = &segment_files(dir.path())[0];
    let len = fs::metadata(path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let (spool, recovery) = Spool::open(config(dir.path())).unwrap();
    assert_eq!(recovery.unconfirmed.len(), 4);
    assert!(recovery.discarded_bytes > 0);
    assert_eq!(
        spool.stats().bytes,
        fs::metadata(path).unwrap().len(),
        "the torn tail is cut off"
    );
    drop(spool);

    // Flip one byte inside the third record's payload.
    let mut bytes = fs::read(path).unwrap();
    let (records, _, _) = read_segment(path).unwrap();
    assert_eq!(records.len(), 4);
    let third = (0..2)
        .map(|n| HEADER_BYTES + 8 + record(n).encode().len())
        .sum::<usize>();
    bytes[third + HEADER_BYTES + 20] ^= 0x40;
    fs::write(path, &bytes).unwrap();
    let (_, recovery) = Spool::open(config(dir.path())).unwrap();
    let kept: Vec<RecordId> = recovery.unconfirmed.iter().map(|(id, _)| *id).collect();
    assert_eq!(kept, [1, 2]);
}

#[test]
fn appends_beyond_the_limit_are_refused_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (spool, _) = Spool::open(SpoolConfig {
        max_bytes: 2000,
        segment_bytes: 500,
        ..config(dir.path())
    })
    .unwrap();
    let mut ids = Vec::new();
    let full = loop {
        match rt.block_on(spool.append(&record(10))) {
            Ok(id) => ids.push(id),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(full, SpoolError::Full { limit: 2000, .. }),
        "{full:?}"
    );
    assert!(spool.stats().bytes <= 2000);
    spool.confirm(&ids);
    rt.block_on(spool.append(&record(10)))
        .expect("space was freed");
}

#[derive(Debug, Clone)]
enum Op {
    Append(u32),
    /// Confirm the k-th oldest unconfirmed record.
    Confirm(usize),
    /// Void the k-th oldest unconfirmed record.
    Void(usize),
    /// Drop the spool without a clean shutdown and open it again.
    Crash,
    /// Cut bytes off the newest segment, then reopen.
    Tear(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u32..50).prop_map(Op::Append),
        3 => (0usize..8).prop_map(Op::Confirm),
        1 => (0usize..8).prop_map(Op::Void),
        1 => Just(Op::Crash),
        1 => (1u8..40).prop_map(Op::Tear),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The spool against a model: a map of unconfirmed records. After every reopen, the spool
    /// returns exactly the model's unconfirmed records, except records lost to a torn tail —
    /// which the model drops too (they were the newest, and a torn write was never acknowledged
    /// under `fsync = always` in real life).
    #[test]
    fn spool_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let (mut spool, _) = Spool::open(config(dir.path())).unwrap();
        let mut model: BTreeMap<RecordId, SpoolRecord> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append(n) => {
                    let id = rt.block_on(spool.append(&record(n))).unwrap();
                    prop_assert!(model.keys().all(|&k| k < id));
                    model.insert(id, record(n));
                }
                Op::Confirm(k) => {
                    if let Some(&id) = model.keys().nth(k) {
                        spool.confirm(&[id]);
                        model.remove(&id);
                    }
                }
                Op::Void(k) => {
                    if let Some(&id) = model.keys().nth(k) {
                        spool.void(id).unwrap();
                        model.remove(&id);
                    }
                }
                Op::Crash | Op::Tear(_) => {
                    drop(spool);
                    if let Op::Tear(cut) = op
                        && let Some(path) = segment_files(dir.path()).last() {
                            let len = fs::metadata(path).unwrap().len();
                            let new_len = len.saturating_sub(cut as u64);
                            OpenOptions::new().write(true).open(path).unwrap().set_len(new_len).unwrap();
                            // The model forgets the records that no longer fit entirely.
                            let (records, _, _) = read_segment(path).unwrap();
                            let first = list_segments(dir.path()).unwrap().last().unwrap().0;
                            let kept: HashSet<RecordId> = records.iter().map(|(id, _)| *id).collect();
                            model.retain(|id, _| *id < first || kept.contains(id));
                        }
                    let (reopened, recovery) = Spool::open(config(dir.path())).unwrap();
                    let found: BTreeMap<RecordId, SpoolRecord> = recovery.unconfirmed.into_iter().collect();
                    prop_assert_eq!(&found, &model);
                    spool = reopened;
                }
            }
            prop_assert_eq!(spool.stats().unconfirmed_records, model.len());
        }
    }
}

#[test]
fn every_fsync_policy_keeps_records_across_a_restart() {
    for fsync in [
        FsyncPolicy::Always,
        FsyncPolicy::Interval,
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let (spool, _) = Spool::open(SpoolConfig {
            fsync,
            fsync_interval_ms: 5,
            ..config(dir.path())
        })
        .unwrap();
        for n in 0..10 {
            rt.block_on(spool.append(&record(n))).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(spool);
        let (_, recovery) = Spool::open(config(dir.path())).unwrap();
        assert_eq!(recovery.unconfirmed.len(), 10, "{fsync:?}");
    }
}
