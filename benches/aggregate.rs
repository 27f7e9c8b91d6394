//! Criterion bench of rollup folding on generated `edge_access` traffic: rows folded per second
//! into the shipped `edge_access_1m` rollup with 1, 4 and 16 shards (each shard a thread with its
//! own state, merged at the end, as independent accumulators or nodes would be), next to decode +
//! validate of the same rows for scale. Before the benches it prints rows received against the
//! partial rows sluice writes and the rows the rollup table holds once ClickHouse has merged
//! them.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::aggregate::rollup::RollupState;
use sluice::decode::{BodyFormat, ContentEncoding};
use sluice::schema::rollup::Rollup;
use sluice::validate::{CompiledSchema, RequestContext};
use sluice_loadtest::generator::{self, Format, Generator, GeneratorConfig};

const ROWS: usize = 160_000;
const ROWS_PER_BATCH: usize = 10_000;

fn validate(compiled: &CompiledSchema, body: &[u8]) -> RecordBatch {
    let context = RequestContext {
        principal: "edge-a".into(),
        url_encoded: true,
        ..Default::default()
    };
    common::decode_validate(
        compiled,
        &context,
        body,
        ContentEncoding::Identity,
        BodyFormat::Ndjson,
    )
    .batch
}

/// `ROWS` requests spread over `span_secs`, as validated batches.
fn traffic(compiled: &CompiledSchema, span_secs: u64) -> (Vec<Vec<u8>>, Vec<RecordBatch>) {
    let config = GeneratorConfig {
        span_secs,
        ..GeneratorConfig::default()
    };
    let rows = Generator::with_config(3, config).edge_access(ROWS);
    let bodies: Vec<Vec<u8>> = rows
        .chunks(ROWS_PER_BATCH)
        .map(|chunk| generator::encode_access(chunk, Format::Ndjson))
        .collect();
    let batches = bodies.iter().map(|body| validate(compiled, body)).collect();
    (bodies, batches)
}

fn rollup(compiled: &CompiledSchema) -> Arc<Rollup> {
    compiled.schema.rollups[0].clone()
}

/// Folds the batches with `shards` threads, each with its own state, and merges the states.
fn fold_sharded(rollup: &Arc<Rollup>, batches: &[RecordBatch], shards: usize) -> RollupState {
    let states: Vec<RollupState> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..shards)
            .map(|shard| {
                scope.spawn(move || {
                    let mut state = RollupState::new(rollup.clone());
                    for batch in batches.iter().skip(shard).step_by(shards) {
                        state.fold(batch, 0);
                    }
                    state
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut merged = RollupState::new(rollup.clone());
    for state in states {
        merged.merge(state);
    }
    merged
}

/// Rows received against partial rows written (a flush per `rows_per_flush` requests) and rows
/// stored once ClickHouse has merged them, for `requests` spread over `span_secs`, streamed
/// through validation and folding in bodies of `ROWS_PER_BATCH`.
fn report_reduction(
    label: &str,
    compiled: &CompiledSchema,
    rollup: &Arc<Rollup>,
    requests: usize,
    span_secs: u64,
    rows_per_flush: usize,
) {
    let config = GeneratorConfig {
        span_secs,
        ..GeneratorConfig::default()
    };
    let mut generator = Generator::with_config(4, config);
    let mut state = RollupState::new(rollup.clone());
    let (mut partials, mut folded) = (0, 0);
    let mut all = Vec::new();
    while folded < requests {
        let rows = generator.edge_access(ROWS_PER_BATCH);
        let batch = validate(compiled, &generator::encode_access(&rows, Format::Ndjson));
        state.fold(&batch, 0);
        folded += batch.num_rows();
        if folded % rows_per_flush == 0 {
            let rows = state.take();
            partials += rows.len();
            all.extend(rows);
        }
    }
    let rows = state.take();
    partials += rows.len();
    all.extend(rows);
    let stored = RollupState::merged_view(all).len();
    println!(
        "{label}: {requests} requests over {span_secs} s, a flush per {rows_per_flush}: \
         {partials} partial rows written ({:.0}× fewer), {stored} rows stored after merges \
         ({:.0}× fewer)",
        requests as f64 / partials as f64,
        requests as f64 / stored as f64
    );
}

/// The shipped rollup with a path-prefix key added (whose values are the generator's ~5,000
/// first path segments, file names included), to show what the key set costs.
fn rollup_with_path_prefix() -> Arc<Rollup> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/edge_access.v1.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[[rollups.measures]]\nname = \"requests\"",
        "[[rollups.keys]]\nname = \"path_prefix\"\ncolumn = \"path\"\nderive = \"path_prefix\"\nsegments = 1\n\n[[rollups.measures]]\nname = \"requests\"",
    );
    let schema = sluice::schema::Schema::from_toml(&text, &path).unwrap();
    assert_eq!(schema.rollups[0].keys.len(), 5);
    schema.rollups[0].clone()
}

fn fold(c: &mut Criterion) {
    let compiled = common::compiled();
    let rollup = rollup(&compiled);
    let more_keys = rollup_with_path_prefix();
    for requests in [100_000, 1_000_000] {
        report_reduction("edge_access_1m", &compiled, &rollup, requests, 60, 100_000);
        report_reduction(
            "with path_prefix",
            &compiled,
            &more_keys,
            requests,
            60,
            100_000,
        );
    }
    let (bodies, batches) = traffic(&compiled, 60);
    let mut group = c.benchmark_group("rollup_fold");
    group.throughput(Throughput::Elements(ROWS as u64));
    for shards in [1, 4, 16] {
        group.bench_with_input(BenchmarkId::new("shards", shards), &shards, |b, &shards| {
            b.iter(|| fold_sharded(&rollup, &batches, shards).rows())
        });
    }
    group.bench_function("decode_validate_ndjson", |b| {
        b.iter(|| {
            bodies
                .iter()
                .map(|body| validate(&compiled, body).num_rows())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = fold
}
criterion_main!(benches);
