//! Criterion benches of the hot path, on generated DataStream 2-style `edge_access` traffic:
//! decode + validate per body format (with and without gzip), gunzip alone (sluice's libdeflate
//! path beside flate2 over zlib-rs, the reader it replaced), a gzip NDJSON body validated in one
//! go and in parts at once (`ingest.decode_part_bytes`: wall time, the latency of one body, not
//! its CPU), and Native encoding with each block compression, one batch as it is and the
//! batches of a flush in `ORDER BY` order.

mod common;

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sluice::decode::{self, ContentEncoding};
use sluice::encode::{self, Compression};
use sluice::validate::RequestContext;
use sluice_loadtest::generator::{self, Encoding, Format, Generator};

const ROWS: usize = 10_000;

fn context() -> RequestContext {
    RequestContext {
        principal: "edge-a".into(),
        region: "bench".into(),
        url_encoded: true,
        ..Default::default()
    }
}

fn body_format(format: Format) -> decode::BodyFormat {
    match format {
        Format::Ndjson => decode::BodyFormat::Ndjson,
        Format::JsonArray => decode::BodyFormat::JsonArray,
        Format::Csv => decode::BodyFormat::Csv,
        Format::Delimited => decode::BodyFormat::Delimited,
    }
}

fn decode_validate(c: &mut Criterion) {
    let compiled = common::compiled();
    let context = context();
    let rows = Generator::new(1).edge_access(ROWS);
    let mut group = c.benchmark_group("decode_validate");
    for format in Format::ALL {
        let plain = generator::encode_access(&rows, format);
        for (encoding, wire) in [
            (ContentEncoding::Identity, plain.clone()),
            (
                ContentEncoding::Gzip,
                generator::compress(&plain, Encoding::Gzip),
            ),
        ] {
            group.throughput(Throughput::Elements(ROWS as u64));
            let id = BenchmarkId::new(format.as_str(), format!("{encoding:?}").to_lowercase());
            group.bench_with_input(id, &wire, |b, wire| {
                b.iter(|| {
                    let batch = common::decode_validate(
                        &compiled,
                        &context,
                        wire,
                        encoding,
                        body_format(format),
                    );
                    assert_eq!(batch.accepted, ROWS);
                    batch
                })
            });
        }
    }
    group.finish();
}

/// Gunzip of one NDJSON body: sluice's path (libdeflate, whole member into unzeroed memory)
/// and `flate2`'s multi-member reader over zlib-rs into a reused vector, as sluice did before.
fn gunzip(c: &mut Criterion) {
    use std::io::Read;
    let rows = Generator::new(1).edge_access(ROWS);
    let plain = generator::encode_access(&rows, Format::Ndjson);
    let body = generator::compress(&plain, Encoding::Gzip);
    let mut group = c.benchmark_group("gunzip");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    let mut out = Vec::new();
    group.bench_function("sluice", |b| {
        b.iter(|| {
            decode::decompress_into(&body, ContentEncoding::Gzip, usize::MAX, &mut out).unwrap();
            assert_eq!(out.len(), plain.len());
        })
    });
    group.bench_function("flate2_zlib_rs", |b| {
        b.iter(|| {
            out.clear();
            out.reserve(plain.len());
            flate2::bufread::MultiGzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out.len(), plain.len());
        })
    });
    group.finish();
}

/// One gzip NDJSON body through `validate_body` as the ingest path calls it, in one go and in
/// parts of 128 KiB at once (as many as there are CPUs): elements per second of wall time.
fn validate_in_parts(c: &mut Criterion) {
    let compiled = common::compiled();
    let rows = Generator::new(1).edge_access(ROWS);
    let body = generator::compress(
        &generator::encode_access(&rows, Format::Ndjson),
        Encoding::Gzip,
    );
    let limits = sluice::validate::BodyLimits {
        max_decompressed_bytes: usize::MAX,
        max_records: usize::MAX,
        max_errors: 100,
        max_line_bytes: usize::MAX,
        max_nesting_depth: 64,
    };
    let mut group = c.benchmark_group("validate_body");
    group.throughput(Throughput::Elements(ROWS as u64));
    for (name, part_bytes) in [("one_go", 0), ("parts_128k", 128 << 10)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let how = sluice::validate::Validation {
                    digest: true,
                    part_bytes,
                };
                let validated = sluice::validate::validate_body(
                    &compiled,
                    context(),
                    &body,
                    ContentEncoding::Gzip,
                    Some("application/x-ndjson"),
                    limits,
                    how,
                )
                .unwrap()
                .unwrap();
                assert_eq!(validated.0.accepted, ROWS);
                validated
            })
        });
    }
    group.finish();
}

/// An uncompressed NDJSON body, decoded and validated.
fn validate_ndjson(
    compiled: &sluice::validate::CompiledSchema,
    context: &RequestContext,
    body: &[u8],
) -> sluice::validate::ValidatedBatch {
    common::decode_validate(
        compiled,
        context,
        body,
        ContentEncoding::Identity,
        decode::BodyFormat::Ndjson,
    )
}

fn encode_native(c: &mut Criterion) {
    let compiled = Arc::new(common::compiled());
    let context = context();
    let rows = Generator::new(2).edge_access(100_000);
    let body = generator::encode_access(&rows, Format::Ndjson);
    let batch = validate_ndjson(&compiled, &context, &body).batch;
    let columns = encode::native_columns(&compiled.schema);
    let mut native = Vec::new();
    encode::write_native_block(&columns, &batch, &mut native).unwrap();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(batch.num_rows() as u64));
    group.bench_function("native", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(native.len());
            encode::write_native_block(&columns, &batch, &mut out).unwrap();
            out
        })
    });
    for (name, compression, level) in [
        ("lz4", Compression::Lz4, 0),
        ("zstd1", Compression::Zstd, 1),
        ("zstd3", Compression::Zstd, 3),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(native.len() / 2);
                encode::write_compressed_frames(&native, compression, level, &mut out);
                out
            })
        });
    }
    group.finish();
}

/// What a flush encodes: the batches of 20 requests of 5,000 rows, each with its own batch and
/// request id, written in the table's `ORDER BY` order straight from the batches.
fn encode_gathered(c: &mut Criterion) {
    let compiled = Arc::new(common::compiled());
    let mut generator = Generator::new(3);
    let batches: Vec<_> = (0..20)
        .map(|request| {
            let body = generator::encode_access(&generator.edge_access(5_000), Format::Ndjson);
            let context = RequestContext {
                batch_id: format!("batch-{request:04}-6f1c2b9e"),
                request_id: format!("0193a8c2-7d4e-7a1b-9c3d-{request:012x}"),
                origin: "bench-worker".into(),
                ..context()
            };
            let batch = validate_ndjson(&compiled, &context, &body);
            assert_eq!(batch.accepted, 5_000);
            batch.batch
        })
        .collect();
    let batches: Vec<_> = batches.iter().collect();
    let columns = encode::native_columns(&compiled.schema);
    let key = encode::SortKey::of(&compiled.schema).expect("edge_access has an ORDER BY key");

    let mut group = c.benchmark_group("encode_gathered");
    group.throughput(Throughput::Elements(100_000));
    group.bench_function("order", |b| b.iter(|| key.order(&batches).unwrap()));
    let order = key.order(&batches).unwrap().expect("more than one batch");
    group.bench_function("native", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            let rows = encode::BlockRows::Gathered {
                batches: &batches,
                order: &order,
            };
            encode::write_native_block(&columns, rows, &mut out).unwrap();
            out
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = decode_validate, gunzip, validate_in_parts, encode_native, encode_gathered
}
criterion_main!(benches);
