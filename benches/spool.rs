//! Criterion bench of the spool: appending the record of a 1000-row gzip NDJSON `edge_access`
//! batch (the body as received plus its verified context), under each fsync policy, one append
//! at a time and 16 at once (group commit: one fdatasync covers every append in the group).
//! Each record is confirmed right after its append, as the sink does once ClickHouse has the
//! rows, so sealed segments are deleted and the bench does not fill the disk.

use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolRecord};
use sluice::validate::RequestContext;
use sluice_loadtest::generator::{self, Encoding, Format, Generator};

const ROWS: usize = 1000;

fn record(body: Bytes) -> SpoolRecord {
    SpoolRecord {
        stream: "edge_access".into(),
        schema_version: 1,
        context: RequestContext {
            principal: "edge-a".into(),
            origin: "ew-4711".into(),
            region: "eu-west".into(),
            batch_id: "b-0000000001".into(),
            request_id: "r-0000000001".into(),
            url_encoded: true,
            ..Default::default()
        },
        content_type: Some("application/x-ndjson".into()),
        content_encoding: Some("gzip".into()),
        declared_rows: Some(ROWS as u64),
        limits: Some(sluice::config::Limits::default().body_limits()),
        sender_batch_id: true,
        body,
    }
}

fn spool_append(c: &mut Criterion) {
    let rows = Generator::new(3).edge_access(ROWS);
    let body = generator::compress(
        &generator::encode_access(&rows, Format::Ndjson),
        Encoding::Gzip,
    );
    let record = Arc::new(record(Bytes::from(body)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("spool_append");
    for (name, fsync) in [
        ("never", FsyncPolicy::Never),
        ("interval", FsyncPolicy::Interval),
        ("always", FsyncPolicy::Always),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(SpoolConfig {
            dir: dir.path().to_path_buf(),
            max_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            fsync,
            fsync_interval_ms: 100,
        })
        .unwrap();
        let spool = Arc::new(spool);
        for concurrency in [1usize, 16] {
            group.throughput(Throughput::Elements((ROWS * concurrency) as u64));
            let id = BenchmarkId::new(name, format!("{concurrency}x1000rows"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    runtime.block_on(async {
                        let appends = (0..concurrency).map(|_| {
                            let spool = spool.clone();
                            let record = record.clone();
                            tokio::spawn(async move {
                                let id = spool.append(&record).await.unwrap();
                                spool.confirm(&[id]);
                            })
                        });
                        for append in appends.collect::<Vec<_>>() {
                            append.await.unwrap();
                        }
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = spool_append
}
criterion_main!(benches);
