//! Pre-generated request bodies.
//!
//! The generator, the encoders and gzip cost far more CPU per row than sluice should, and the
//! harness shares the machine with sluice and ClickHouse; so bodies are made before the clock
//! starts — `load.pool_batches` distinct bodies per stream entry, on every core — and the run
//! cycles through them, each send under a fresh batch id. Row keys (`request_id`, `event_id`)
//! therefore repeat across batches but never within one, which is how verification counts them:
//! per batch id.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;

use crate::baseline::{self, Schema};
use crate::generator::{Generator, GeneratorConfig, compress, encode_access, encode_events};
use crate::scenario::{Scenario, StreamSpec};
use crate::send::Stream;

/// One body, ready to post.
#[derive(Clone, Debug)]
pub struct PoolBody {
    pub rows: u64,
    /// As sent (compressed per the entry's encoding).
    pub body: Bytes,
    /// Before compression.
    pub raw_bytes: u64,
    /// Smallest and largest row key in the body (what `min(key)`/`max(key)` give in ClickHouse).
    pub key_min: String,
    pub key_max: String,
    /// The same rows as the baseline's JSONEachRow (uncompressed), when a baseline is wanted.
    pub baseline_jsonl: Option<Bytes>,
}

/// The bodies of one stream entry.
#[derive(Clone, Debug)]
pub struct StreamPool {
    pub spec: StreamSpec,
    pub bodies: Vec<PoolBody>,
}

impl StreamPool {
    /// The body that batch number `n` of this entry uses.
    pub fn body(&self, n: u64) -> &PoolBody {
        &self.bodies[(n % self.bodies.len() as u64) as usize]
    }
}

/// Seed of body `i` of entry `entry`: distinct per body, fixed by the scenario seed.
fn body_seed(seed: u64, entry: usize, i: usize) -> u64 {
    seed.wrapping_mul(1_000_003)
        .wrapping_add((entry as u64) << 20)
        .wrapping_add(i as u64)
}

/// Makes one body (and its baseline rows when `schema` is given).
pub fn make_body(
    spec: &StreamSpec,
    seed: u64,
    config: &GeneratorConfig,
    schema: Option<(&Schema, &baseline::AuditContext)>,
    rows: u64,
) -> anyhow::Result<PoolBody> {
    let mut generator = Generator::with_config(seed, config.clone());
    let n = rows as usize;
    let (raw, keys, jsonl) = match spec.stream {
        Stream::EdgeAccess => {
            let rows = generator.edge_access(n);
            let keys: Vec<&str> = rows.iter().map(|r| r.req_id.as_str()).collect();
            let jsonl = schema
                .map(|(s, ctx)| baseline::encode_access_rows(&s.columns, &rows, ctx))
                .transpose()?;
            (encode_access(&rows, spec.format), min_max(&keys), jsonl)
        }
        Stream::EdgeEvents => {
            let rows = generator.edge_events(n);
            let keys: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let jsonl = schema
                .map(|(s, ctx)| baseline::encode_event_rows(&s.columns, &rows, ctx))
                .transpose()?;
            (encode_events(&rows, spec.format), min_max(&keys), jsonl)
        }
    };
    Ok(PoolBody {
        rows,
        raw_bytes: raw.len() as u64,
        body: Bytes::from(compress(&raw, spec.encoding)),
        key_min: keys.0,
        key_max: keys.1,
        baseline_jsonl: jsonl.map(Bytes::from),
    })
}

fn min_max(keys: &[&str]) -> (String, String) {
    let min = keys.iter().min().copied().unwrap_or_default();
    let max = keys.iter().max().copied().unwrap_or_default();
    (min.to_string(), max.to_string())
}

/// Builds every entry's pool on all cores. `schemas[i]` is entry `i`'s schema when the baseline
/// rows are wanted.
pub fn build(
    scenario: &Scenario,
    schemas: &[Option<Schema>],
    ctx: &baseline::AuditContext,
) -> anyhow::Result<Vec<StreamPool>> {
    let config = GeneratorConfig::recent(scenario.load.time_span_secs);
    let jobs: Vec<(usize, usize)> = (0..scenario.streams.len())
        .flat_map(|e| (0..scenario.load.pool_batches).map(move |i| (e, i)))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(jobs.len())
        .max(1);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Vec<anyhow::Result<Vec<(usize, usize, PoolBody)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (next, jobs, config) = (next.clone(), &jobs, &config);
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(entry, i)) = jobs.get(j) else {
                            return Ok(done);
                        };
                        let spec = &scenario.streams[entry];
                        let schema = schemas[entry].as_ref().map(|s| (s, ctx));
                        let body = make_body(
                            spec,
                            body_seed(scenario.load.seed, entry, i),
                            config,
                            schema,
                            spec.batch_rows,
                        )
                        .with_context(|| format!("generating {} body {i}", spec.label()))?;
                        done.push((entry, i, body));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pool generator thread panicked"))
            .collect()
    });
    let mut pools: Vec<StreamPool> = scenario
        .streams
        .iter()
        .map(|spec| StreamPool {
            spec: spec.clone(),
            bodies: Vec::new(),
        })
        .collect();
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(e, i, _)| (*e, *i));
    for (entry, _, body) in all {
        pools[entry].bodies.push(body);
    }
    Ok(pools)
}
