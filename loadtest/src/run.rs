//! `sluice-loadtest run`: one scenario from start to report.
//!
//! Phases, in order (each named in the result):
//! 1. setup — ClickHouse reachable, sluice's tables there, the sluice and ClickHouse processes
//!    found for /proc sampling;
//! 2. pool — every body generated and compressed up front, on all cores ([`crate::pool`]);
//! 3. decode-only — one core decompresses and parses the same bodies ([`crate::decode_only`]);
//! 4. idle — the servers' background CPU for `measure.idle_secs`;
//! 5. sluice — `load.connections` connections post batches (paced or not) until the duration or
//!    row count is reached; then the harness waits until ClickHouse holds as many new rows as
//!    were acknowledged (cheaply, from `system.parts`) and until both servers are quiet; the CPU
//!    window of the phase is first request → quiet;
//! 6. verification — per batch id, in ClickHouse ([`crate::verify`]);
//! 7. baseline — the same rows inserted directly as JSONEachRow, measured the same way
//!    ([`crate::baseline`]);
//! 8. report — JSON, HTML, summary table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::baseline::{self, Schema};
use crate::clickhouse::ClickHouseHttp;
use crate::generator::{GeneratorConfig, rfc3339_millis};
use crate::pacing::{Pacer, weighted_sequence};
use crate::pool::{self, StreamPool};
use crate::procstat::{self, Probe, ProcSample, Sample, Sampler};
use crate::report::{
    BaselineResult, Efficiency, Idle, Latency, Phase, ResourcePoint, RunResult, SendSummary, Setup,
    StreamSummary, TimelinePoint,
};
use crate::scenario::{Protocol, Scenario};
use crate::send::{BATCH_ID_HEADER, unique_batch_prefix};
use crate::server_metrics::ServerSide;
use crate::verify::{self, SentBatch, Verification};

/// How to run (not part of the scenario).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// Print phase messages on stderr.
    pub verbose: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            progress: true,
            verbose: true,
        }
    }
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutcome {
    pub result: RunResult,
    pub json_path: PathBuf,
    pub html_path: PathBuf,
}

const MIB: f64 = 1024.0 * 1024.0;

macro_rules! say {
    ($opts:expr, $($arg:tt)*) => {
        if $opts.verbose {
            eprintln!("[loadtest] {}", format!($($arg)*));
        }
    };
}

/// Runs `scenario` and writes its result files.
pub async fn run(scenario: Scenario, options: RunOptions) -> anyhow::Result<RunOutcome> {
    let started_at = rfc3339_millis(unix_millis());
    let mut notes = Vec::new();

    // 1. setup
    let ch = ClickHouseHttp::new(
        &scenario.clickhouse.url,
        &scenario.clickhouse.user,
        &scenario.clickhouse.password,
    )?;
    let clickhouse_version = ch
        .version()
        .await
        .context("ClickHouse (clickhouse.url) does not answer")?;
    let db = scenario.clickhouse.database.clone();
    let mut tables: Vec<&'static str> = scenario.streams.iter().map(|s| s.table()).collect();
    tables.sort_unstable();
    tables.dedup();
    for table in &tables {
        if !ch.table_exists(&db, table).await? {
            bail!(
                "ClickHouse has no table {db}.{table}: start sluice with clickhouse.apply_schema = true \
                 (or run `sluice schema apply`), and check clickhouse.database"
            );
        }
    }
    let target_port = reqwest::Url::parse(&scenario.target.url)
        .ok()
        .and_then(|u| u.port_or_known_default());
    let sluice_found = procstat::locate(
        scenario.target.pid,
        target_port,
        &scenario.target.process_match,
    );
    let clickhouse_found = procstat::locate(
        scenario.clickhouse.pid,
        ch.port(),
        &scenario.clickhouse.process_match,
    );
    for (what, found) in [("sluice", &sluice_found), ("ClickHouse", &clickhouse_found)] {
        say!(options, "{what}: {}", found.describe());
        if found.pid().is_none() {
            notes.push(format!(
                "{what} process not found (give its pid in the scenario): its CPU and memory are not measured"
            ));
        }
    }
    let sluice_probe = sluice_found.pid().map(Probe::new);
    let clickhouse_probe = clickhouse_found.pid().map(Probe::new);
    let harness_probe = Probe::current();

    let schemas: Vec<Option<Schema>> = if scenario.baseline.enabled {
        scenario
            .streams
            .iter()
            .map(|s| {
                baseline::load_schema(&scenario.clickhouse.schemas, s.stream)
                    .map(Some)
                    .context("the baseline builds its rows from sluice's schema files (clickhouse.schemas); set baseline.enabled = false to skip it")
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        vec![None; scenario.streams.len()]
    };
    let prefix = scenario
        .load
        .batch_id_prefix
        .clone()
        .unwrap_or_else(|| unique_batch_prefix(scenario.load.seed));
    let baseline_ctx = baseline::AuditContext {
        principal: scenario.baseline.principal.clone(),
        origin: scenario.baseline.origin.clone(),
        region: scenario.baseline.region.clone(),
        batch_id: format!("{prefix}-baseline"),
        request_id: String::new(),
        received_at: unix_millis() / 1000,
    };

    // 2. pool
    say!(
        options,
        "generating {} bodies per stream entry",
        scenario.load.pool_batches
    );
    let pools = {
        let (scenario, schemas, ctx) = (scenario.clone(), schemas.clone(), baseline_ctx.clone());
        tokio::task::spawn_blocking(move || pool::build(&scenario, &schemas, &ctx))
            .await
            .context("pool generation panicked")??
    };
    let pools = Arc::new(pools);
    let sequence = weighted_sequence(
        &scenario
            .streams
            .iter()
            .map(|s| s.weight)
            .collect::<Vec<_>>(),
    );

    // 3. decode-only
    let decode_only = if scenario.decode_only.enabled {
        say!(
            options,
            "decode-only reference, {} s on one core",
            scenario.decode_only.secs
        );
        let (pools, sequence) = (pools.clone(), sequence.clone());
        let secs = scenario.decode_only.secs;
        Some(
            tokio::task::spawn_blocking(move || {
                crate::decode_only::measure(&pools, &sequence, Duration::from_secs_f64(secs))
            })
            .await
            .context("decode-only measurement panicked")??,
        )
    } else {
        None
    };

    // 4. idle
    let sampler = Sampler::start(
        sluice_probe.clone(),
        clickhouse_probe.clone(),
        Duration::from_millis(scenario.measure.sample_ms),
    );
    let idle_start = snapshot(&sluice_probe, &clickhouse_probe, &harness_probe);
    tokio::time::sleep(Duration::from_secs_f64(scenario.measure.idle_secs)).await;
    let idle_end = snapshot(&sluice_probe, &clickhouse_probe, &harness_probe);
    let idle_secs = idle_end.at.duration_since(idle_start.at).as_secs_f64();
    let idle = Idle {
        secs: idle_secs,
        sluice_cores: cpu_delta(idle_start.sluice, idle_end.sluice).map(|c| c / idle_secs),
        clickhouse_cores: cpu_delta(idle_start.clickhouse, idle_end.clickhouse)
            .map(|c| c / idle_secs),
    };

    // 5. sluice phase
    let mut rows_before = BTreeMap::new();
    for table in &tables {
        rows_before.insert(*table, ch.active_rows(&db, table).await?);
    }
    let held: u64 = rows_before.values().sum();
    if held > 0 {
        notes.push(format!(
            "sluice's tables held {} rows before the run: ClickHouse's merges with them count in the sluice phase (an empty database gives comparable figures)",
            crate::report::thousands(held as f64)
        ));
    }
    say!(
        options,
        "sending to {} over {} connections",
        scenario.target.url,
        scenario.load.connections
    );
    let metrics_url = scenario.target.metrics_url.as_deref();
    let metrics_before = match metrics_url {
        Some(url) => read_metrics(url, &mut notes).await,
        None => None,
    };
    let phase_start = snapshot(&sluice_probe, &clickhouse_probe, &harness_probe);
    let threads_start = sampler.sluice_threads();
    let sent = send_phase(&scenario, pools.clone(), &prefix, &options).await?;
    let server_side = match (metrics_url, metrics_before) {
        (Some(url), Some(before)) => read_metrics(url, &mut notes)
            .await
            .map(|after| ServerSide::between(&before, &after)),
        _ => None,
    };
    let mut expected_per_table: BTreeMap<&str, u64> = BTreeMap::new();
    for b in &sent.batches {
        if b.sent.status == Some(200) {
            *expected_per_table
                .entry(scenario.streams[b.entry].table())
                .or_default() += b.sent.accepted;
        }
    }
    say!(
        options,
        "waiting for the acknowledged rows to reach ClickHouse"
    );
    let drained = drain(
        &ch,
        &db,
        &rows_before,
        &expected_per_table,
        Duration::from_secs_f64(scenario.measure.drain_timeout_secs),
    )
    .await?;
    let phase_drained = snapshot(&sluice_probe, &clickhouse_probe, &harness_probe);
    if !drained {
        notes.push(format!(
            "the acknowledged rows did not all reach ClickHouse within {} s without progress",
            scenario.measure.drain_timeout_secs
        ));
    }
    say!(options, "waiting for merges and CPU to settle");
    let settled = settle(&scenario, &idle, &sluice_probe, &clickhouse_probe, &ch, &db).await;
    let phase_end = snapshot(&sluice_probe, &clickhouse_probe, &harness_probe);
    let threads_end = sampler.sluice_threads();
    let rows_acked: u64 = expected_per_table.values().sum();
    let mut sluice_phase = phase(
        rows_acked,
        [&phase_start, &phase_drained, &phase_end],
        &idle,
        (drained, settled),
        &sampler,
    );
    if let (Some(start), Some(end)) = (&threads_start, &threads_end) {
        sluice_phase.sluice_cpu_by_stage = end.by_stage_since(start);
    }

    // 6. verification
    say!(
        options,
        "verifying {} batches in ClickHouse",
        sent.batches.len()
    );
    let mut verification = Vec::new();
    for table in &tables {
        let key = scenario
            .streams
            .iter()
            .find(|s| s.table() == *table)
            .expect("a table of a stream")
            .key_column();
        let sent_here: Vec<SentBatch> = sent
            .batches
            .iter()
            .filter(|b| scenario.streams[b.entry].table() == *table)
            .map(|b| b.sent.clone())
            .collect();
        let text = ch
            .query(&verify::found_query(&db, table, key, &prefix))
            .await?;
        let found = verify::parse_found(&text)?;
        verification.push(verify::verify(&format!("{db}.{table}"), &sent_here, &found));
    }
    let verified = verification.iter().all(|v| v.ok) && rows_acked > 0;
    if rows_acked == 0 {
        notes.push("no row was acknowledged".to_string());
    }

    // 7. baseline
    let baseline = if scenario.baseline.enabled && rows_acked > 0 {
        say!(
            options,
            "baseline: the same rows as JSONEachRow straight into ClickHouse"
        );
        Some(
            baseline_phase(
                &scenario,
                &ch,
                &pools,
                &sent,
                &idle,
                (&sluice_probe, &clickhouse_probe, &harness_probe),
                &sampler,
            )
            .await,
        )
    } else {
        None
    };
    let send_start_t = phase_start.at.duration_since(sampler.started).as_secs_f64();
    let samples = sampler.finish();
    let mut baseline = baseline;
    sluice_phase.t_start -= send_start_t;
    if let Some(b) = baseline.as_mut() {
        b.phase.t_start -= send_start_t;
    }

    // 8. report
    let resource_points = resource_points(&samples, send_start_t);
    let result = assemble(Assembly {
        scenario: &scenario,
        started_at,
        clickhouse_version,
        prefix: &prefix,
        sluice_process: sluice_found.describe(),
        clickhouse_process: clickhouse_found.describe(),
        pools: &pools,
        sent: &sent,
        idle,
        sluice_phase,
        server_side,
        baseline,
        decode_only,
        verification,
        verified,
        samples: resource_points,
        notes,
    });
    let (json_path, html_path) = write_files(&scenario, &result)?;
    Ok(RunOutcome {
        result,
        json_path,
        html_path,
    })
}

/// sluice's metrics text; a failure is a note, not the end of the run.
async fn read_metrics(url: &str, notes: &mut Vec<String>) -> Option<String> {
    match crate::server_metrics::scrape(url).await {
        Ok(text) => Some(text),
        Err(err) => {
            notes.push(format!("sluice's metrics not read: {err:#}"));
            None
        }
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// CPU and memory of the watched processes at one moment.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    at: Instant,
    /// Busy CPU-seconds of the whole machine.
    machine: Option<f64>,
    sluice: Option<ProcSample>,
    clickhouse: Option<ProcSample>,
    harness: Option<ProcSample>,
}

fn snapshot(sluice: &Option<Probe>, clickhouse: &Option<Probe>, harness: &Probe) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        machine: procstat::machine_busy_secs(),
        sluice: sluice.as_ref().and_then(Probe::read),
        clickhouse: clickhouse.as_ref().and_then(Probe::read),
        harness: harness.read(),
    }
}

fn cpu_delta(a: Option<ProcSample>, b: Option<ProcSample>) -> Option<f64> {
    Some((b?.cpu_secs - a?.cpu_secs).max(0.0))
}

/// A phase's figures from its snapshots: start (first request), drained (rows in ClickHouse),
/// end (settled).
fn phase(
    rows: u64,
    [start, drained_at, end]: [&Snapshot; 3],
    idle: &Idle,
    (drained, settled): (bool, bool),
    sampler: &Sampler,
) -> Phase {
    let samples = sampler.snapshot();
    let window_secs = end.at.duration_since(start.at).as_secs_f64();
    let t0 = start.at.duration_since(sampler.started).as_secs_f64();
    let t1 = end.at.duration_since(sampler.started).as_secs_f64();
    let as_sample = |s: &Snapshot| Sample {
        t: t0,
        sluice: s.sluice,
        clickhouse: s.clickhouse,
        harness: s.harness,
    };
    let ends = [as_sample(start), as_sample(end)];
    let peak = |f: fn(&Sample) -> Option<ProcSample>| -> Option<f64> {
        samples
            .iter()
            .filter(|s| s.t >= t0 && s.t <= t1)
            .chain(&ends)
            .filter_map(|s| f(s).map(|p| p.rss_bytes))
            .max()
            .map(|b| b as f64 / MIB)
    };
    let clickhouse_cpu = cpu_delta(start.clickhouse, end.clickhouse);
    Phase {
        t_start: t0,
        rows,
        window_secs,
        drain_secs: drained_at.at.duration_since(start.at).as_secs_f64(),
        settle_secs: end.at.duration_since(drained_at.at).as_secs_f64(),
        drained,
        settled,
        sluice_cpu_secs: cpu_delta(start.sluice, end.sluice),
        sluice_cpu_by_stage: Vec::new(),
        clickhouse_cpu_secs: clickhouse_cpu,
        clickhouse_cpu_secs_after_drain: cpu_delta(drained_at.clickhouse, end.clickhouse),
        clickhouse_net_cpu_secs: clickhouse_cpu
            .map(|c| (c - idle.clickhouse_cores.unwrap_or(0.0) * window_secs).max(0.0)),
        harness_cpu_secs: cpu_delta(start.harness, end.harness),
        other_cores: end.machine.zip(start.machine).map(|(e, s)| {
            let ours = [
                cpu_delta(start.sluice, end.sluice),
                clickhouse_cpu,
                cpu_delta(start.harness, end.harness),
            ];
            let ours: f64 = ours.iter().flatten().sum();
            ((e - s - ours) / window_secs.max(1e-9)).max(0.0)
        }),
        sluice_peak_rss_mib: peak(|s| s.sluice),
        sluice_hwm_mib: end.sluice.map(|p| p.hwm_bytes as f64 / MIB),
        clickhouse_peak_rss_mib: peak(|s| s.clickhouse),
    }
}

/// Waits (polling `system.parts`) until every table holds at least `before + expected` rows.
/// `Ok(false)` when no progress was seen for `timeout`.
async fn drain(
    ch: &ClickHouseHttp,
    db: &str,
    before: &BTreeMap<&str, u64>,
    expected: &BTreeMap<&str, u64>,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let mut last_total = None;
    let mut last_progress = Instant::now();
    loop {
        let mut done = true;
        let mut total = 0;
        for (table, want) in expected {
            let now = ch.active_rows(db, table).await?;
            total += now;
            if now < before.get(table).copied().unwrap_or(0) + want {
                done = false;
            }
        }
        if done {
            return Ok(true);
        }
        if last_total != Some(total) {
            last_total = Some(total);
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= timeout {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the phase's work is over: ClickHouse runs no merge in `database`, and sluice and
/// ClickHouse each use no more than their idle rate plus `measure.settle_cpu_cores`, for
/// `measure.settle_quiet_secs` in a row (checked every half second); at most
/// `measure.settle_max_secs`. Merges come in bursts with pauses between them, hence the streak.
async fn settle(
    scenario: &Scenario,
    idle: &Idle,
    sluice: &Option<Probe>,
    clickhouse: &Option<Probe>,
    ch: &ClickHouseHttp,
    database: &str,
) -> bool {
    let start = Instant::now();
    let max = Duration::from_secs_f64(scenario.measure.settle_max_secs);
    let quiet_needed = Duration::from_secs_f64(scenario.measure.settle_quiet_secs);
    let watched: Vec<(&Probe, f64)> = [
        (sluice.as_ref(), idle.sluice_cores),
        (clickhouse.as_ref(), idle.clickhouse_cores),
    ]
    .into_iter()
    .filter_map(|(p, idle)| Some((p?, idle.unwrap_or(0.0) + scenario.measure.settle_cpu_cores)))
    .collect();
    let merges = format!("SELECT count() FROM system.merges WHERE database = '{database}'");
    let step = Duration::from_millis(500);
    let mut quiet_since: Option<Instant> = None;
    while start.elapsed() < max {
        let before: Vec<f64> = watched.iter().map(|(p, _)| p.cpu_secs()).collect();
        let t = Instant::now();
        tokio::time::sleep(step).await;
        let secs = t.elapsed().as_secs_f64();
        let cpu_quiet = watched
            .iter()
            .zip(before)
            .all(|((p, limit), b)| (p.cpu_secs() - b) / secs <= *limit);
        let no_merges = ch.number(&merges).await.map_or(true, |n| n == 0);
        if cpu_quiet && no_merges {
            let since = *quiet_since.get_or_insert(t);
            if since.elapsed() >= quiet_needed {
                return true;
            }
        } else {
            quiet_since = None;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Sending

/// One batch as sent and answered.
#[derive(Clone, Debug)]
struct SentRecord {
    entry: usize,
    sent: SentBatch,
}

/// What the sending part of the sluice phase produced.
struct Sent {
    batches: Vec<SentRecord>,
    wall_secs: f64,
    latency: Histogram<u64>,
    latency_from_due: Option<Histogram<u64>>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    entries: Vec<EntryCounters>,
    buckets: Vec<TimelinePoint>,
    first_errors: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct EntryCounters {
    batches: u64,
    failed: u64,
    rows_sent: u64,
    rows_acked: u64,
    rows_rejected: u64,
    bytes_sent: u64,
    raw_bytes: u64,
}

/// The fields of sluice's answer the harness reads.
#[derive(Debug, Default, Deserialize)]
struct Answer {
    accepted: Option<u64>,
    rejected: Option<u64>,
    code: Option<String>,
    message: Option<String>,
}

struct Stats {
    latency: Histogram<u64>,
    latency_from_due: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    entries: Vec<EntryCounters>,
    buckets: Vec<TimelinePoint>,
    batches: Vec<SentRecord>,
    first_errors: Vec<String>,
    rows_acked: u64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Shared by the connection tasks.
struct Shared {
    pacer: Mutex<Pacer>,
    stats: Mutex<Stats>,
    start: Instant,
    paced: bool,
    pools: Arc<Vec<StreamPool>>,
    /// Batches of each entry taken so far (picks the next pooled body).
    taken: Vec<AtomicU64>,
    urls: Vec<reqwest::Url>,
    headers: Vec<reqwest::header::HeaderMap>,
    prefix: String,
    generator: GeneratorConfig,
    seed: u64,
}

fn build_client(scenario: &Scenario) -> anyhow::Result<reqwest::Client> {
    let timeout = Duration::from_secs_f64(scenario.load.request_timeout_secs);
    let builder = if scenario.target.plain_http {
        crate::client::plain_client_builder()?
    } else {
        let ca = scenario
            .target
            .ca
            .as_deref()
            .expect("validated: ca for https");
        let identity = match (&scenario.target.cert, &scenario.target.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let mut config = crate::client::tls_config(ca, identity)?;
        config.alpn_protocols = match scenario.target.protocol {
            Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::Http2 => vec![b"h2".to_vec()],
        };
        reqwest::Client::builder().use_preconfigured_tls(config)
    };
    let builder = builder.timeout(timeout).pool_max_idle_per_host(1);
    let builder = match scenario.target.protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 if scenario.target.plain_http => builder.http2_prior_knowledge(),
        _ => builder,
    };
    builder.build().context("building the HTTP client")
}

async fn send_phase(
    scenario: &Scenario,
    pools: Arc<Vec<StreamPool>>,
    prefix: &str,
    options: &RunOptions,
) -> anyhow::Result<Sent> {
    let entries: Vec<(u64, u32)> = scenario
        .streams
        .iter()
        .map(|s| (s.batch_rows, s.weight))
        .collect();
    let pacer = Pacer::new(
        &entries,
        scenario.load.rate,
        scenario.load.rows,
        scenario.duration(),
    );
    let mut urls = Vec::new();
    let mut headers = Vec::new();
    for spec in &scenario.streams {
        urls.push(reqwest::Url::parse(&scenario.stream_url(spec)).context("target.url")?);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::CONTENT_TYPE,
            spec.format.content_type().parse()?,
        );
        h.insert(
            reqwest::header::CONTENT_ENCODING,
            spec.encoding.content_encoding().parse()?,
        );
        for (name, value) in &scenario.target.headers {
            h.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes())
                    .with_context(|| format!("target.headers: {name:?}"))?,
                value
                    .parse()
                    .with_context(|| format!("target.headers.{name}"))?,
            );
        }
        headers.push(h);
    }
    let n = scenario.streams.len();
    let shared = Arc::new(Shared {
        pacer: Mutex::new(pacer),
        stats: Mutex::new(Stats {
            latency: histogram(),
            latency_from_due: histogram(),
            statuses: BTreeMap::new(),
            transport_errors: 0,
            entries: vec![EntryCounters::default(); n],
            buckets: Vec::new(),
            batches: Vec::new(),
            first_errors: Vec::new(),
            rows_acked: 0,
        }),
        start: Instant::now(),
        paced: scenario.load.rate > 0.0,
        pools,
        taken: (0..n).map(|_| AtomicU64::new(0)).collect(),
        urls,
        headers,
        prefix: prefix.to_string(),
        generator: GeneratorConfig::recent(scenario.load.time_span_secs),
        seed: scenario.load.seed,
    });

    let bar = progress_bar(scenario, options);
    let mut tasks = Vec::new();
    for _ in 0..scenario.load.connections {
        let client = build_client(scenario)?;
        let shared = shared.clone();
        tasks.push(tokio::spawn(
            async move { connection(client, shared).await },
        ));
    }
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        let rows_mode = scenario.load.rows.is_some() && scenario.load.duration_secs.is_none();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = shared.start.elapsed();
                let (acked, failed, p99) = {
                    let s = shared.stats.lock().expect("stats lock");
                    let failed: u64 = s.entries.iter().map(|e| e.failed).sum();
                    (
                        s.rows_acked,
                        failed,
                        s.latency.value_at_quantile(0.99) as f64 / 1000.0,
                    )
                };
                if rows_mode {
                    bar.set_position(shared.pacer.lock().expect("pacer lock").rows_issued());
                } else {
                    bar.set_position(elapsed.as_millis() as u64);
                }
                bar.set_message(format!(
                    "{} rows acked, {:.0} rows/s, p99 {p99:.1} ms, {failed} failed",
                    acked,
                    acked as f64 / elapsed.as_secs_f64().max(1e-3)
                ));
            }
        })
    };
    for task in tasks {
        task.await.context("a connection task panicked")?;
    }
    ticker.abort();
    let _ = ticker.await; // drops its handle on the shared state
    bar.finish_and_clear();
    let wall_secs = shared.start.elapsed().as_secs_f64();
    let shared = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("connection tasks still hold the shared state"))?;
    let mut stats = shared.stats.into_inner().expect("stats lock");
    stats
        .batches
        .sort_by(|a, b| a.sent.batch_id.cmp(&b.sent.batch_id));
    for (i, b) in stats.buckets.iter_mut().enumerate() {
        b.t = i as f64;
        b.width_secs = (wall_secs - b.t).clamp(0.0, 1.0);
    }
    Ok(Sent {
        batches: stats.batches,
        wall_secs,
        latency: stats.latency,
        latency_from_due: shared.paced.then_some(stats.latency_from_due),
        statuses: stats.statuses,
        transport_errors: stats.transport_errors,
        entries: stats.entries,
        buckets: stats.buckets,
        first_errors: stats.first_errors,
    })
}

fn progress_bar(scenario: &Scenario, options: &RunOptions) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    let (len, template) = match (scenario.load.rows, scenario.load.duration_secs) {
        (Some(rows), None) => (
            rows,
            "{elapsed_precise} [{bar:30}] {pos}/{len} rows · {msg}",
        ),
        (_, Some(secs)) => (
            (secs * 1000.0) as u64,
            "{elapsed_precise} [{bar:30}] {percent:>3}% · {msg}",
        ),
        (None, None) => (0, "{elapsed_precise} {msg}"),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar
}

const MAX_ERRORS: usize = 10;

/// One connection: takes tickets and posts them, one at a time.
async fn connection(client: reqwest::Client, shared: Arc<Shared>) {
    loop {
        let ticket = shared
            .pacer
            .lock()
            .expect("pacer lock")
            .next(shared.start.elapsed());
        let Some(ticket) = ticket else { return };
        let due = shared.start + ticket.due;
        if shared.paced {
            tokio::time::sleep_until(due.into()).await;
        }
        let pool = &shared.pools[ticket.stream];
        let n = shared.taken[ticket.stream].fetch_add(1, Ordering::Relaxed);
        let pooled = pool.body(n);
        // A batch cut short by the row limit gets a body of its own.
        let cut;
        let body = if ticket.rows == pooled.rows {
            pooled
        } else {
            let (spec, seed, config) = (
                pool.spec.clone(),
                shared.seed ^ ticket.index,
                shared.generator.clone(),
            );
            let rows = ticket.rows;
            cut = tokio::task::spawn_blocking(move || {
                pool::make_body(&spec, seed, &config, None, rows)
            })
            .await
            .expect("body generation panicked")
            .expect("generating a body without baseline rows cannot fail");
            &cut
        };
        let batch_id = format!("{}-{:08}", shared.prefix, ticket.index);
        let sent_at = Instant::now();
        let result = client
            .post(shared.urls[ticket.stream].clone())
            .headers(shared.headers[ticket.stream].clone())
            .header(BATCH_ID_HEADER, &batch_id)
            .body(Bytes::clone(&body.body))
            .send()
            .await;
        let (status, text, error) = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.text().await {
                    Ok(text) => (Some(status), text, None),
                    Err(e) => (Some(status), String::new(), Some(error_chain(&e))),
                }
            }
            Err(e) => (None, String::new(), Some(error_chain(&e))),
        };
        let done = Instant::now();
        let answer: Answer = serde_json::from_str(&text).unwrap_or_default();
        let accepted = if status == Some(200) {
            answer.accepted.unwrap_or(0)
        } else {
            0
        };
        let rejected = answer.rejected.unwrap_or(0);

        let mut s = shared.stats.lock().expect("stats lock");
        let micros = |d: Duration| (d.as_micros() as u64).max(1);
        s.latency.saturating_record(micros(done - sent_at));
        s.latency_from_due
            .saturating_record(micros(done.saturating_duration_since(due)));
        match status {
            Some(code) => *s.statuses.entry(code).or_default() += 1,
            None => s.transport_errors += 1,
        }
        let ok = status == Some(200);
        let e = &mut s.entries[ticket.stream];
        e.batches += 1;
        e.rows_sent += ticket.rows;
        e.bytes_sent += body.body.len() as u64;
        e.raw_bytes += body.raw_bytes;
        e.rows_acked += accepted;
        e.rows_rejected += if ok { rejected } else { 0 };
        e.failed += u64::from(!ok);
        s.rows_acked += accepted;
        let second = (done - shared.start).as_secs() as usize;
        if s.buckets.len() <= second {
            s.buckets.resize(second + 1, TimelinePoint::default());
        }
        let bucket = &mut s.buckets[second];
        bucket.batches += 1;
        bucket.acked_rows += accepted;
        bucket.failed_batches += u64::from(!ok);
        if s.first_errors.len() < MAX_ERRORS {
            let problem = match (status, &error) {
                (None, Some(e)) => Some(format!("batch {batch_id}: no answer: {e}")),
                (Some(code), _) if code != 200 => Some(format!(
                    "batch {batch_id}: HTTP {code}: {}",
                    match (&answer.code, &answer.message) {
                        (Some(c), m) => format!("{c}: {}", m.as_deref().unwrap_or("")),
                        _ => text.chars().take(200).collect(),
                    }
                )),
                (Some(200), _) if answer.accepted.is_none() => Some(format!(
                    "batch {batch_id}: 200 without an accepted count: {}",
                    text.chars().take(200).collect::<String>()
                )),
                (Some(200), _) if rejected > 0 => Some(format!(
                    "batch {batch_id}: {rejected} rows rejected: {}",
                    text.chars().take(300).collect::<String>()
                )),
                _ => None,
            };
            if let Some(p) = problem {
                s.first_errors.push(p);
            }
        }
        s.batches.push(SentRecord {
            entry: ticket.stream,
            sent: SentBatch {
                batch_id,
                rows: ticket.rows,
                status,
                accepted,
                key_range: (ok && rejected == 0)
                    .then(|| (body.key_min.clone(), body.key_max.clone())),
            },
        });
    }
}

/// An error with its sources (reqwest's top-level message hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Baseline

async fn baseline_phase(
    scenario: &Scenario,
    ch: &ClickHouseHttp,
    pools: &Arc<Vec<StreamPool>>,
    sent: &Sent,
    idle: &Idle,
    probes: (&Option<Probe>, &Option<Probe>, &Probe),
    sampler: &Sampler,
) -> BaselineResult {
    let cfg = &scenario.baseline;
    let mut result = BaselineResult {
        database: cfg.database.clone(),
        format: "JSONEachRow".into(),
        encoding: cfg.encoding.content_encoding().into(),
        rows_per_insert: cfg.rows_per_insert,
        connections: cfg.connections,
        ..BaselineResult::default()
    };
    if let Err(e) = baseline_inner(
        scenario,
        ch,
        pools,
        sent,
        idle,
        probes,
        sampler,
        &mut result,
    )
    .await
    {
        result.ok = false;
        result.error = Some(format!("{e:#}"));
    }
    if !cfg.keep_tables {
        let mut tables: Vec<&str> = scenario.streams.iter().map(|s| s.table()).collect();
        tables.sort_unstable();
        tables.dedup();
        for t in tables {
            let _ = ch
                .query(&format!("DROP TABLE IF EXISTS {}.{t}", cfg.database))
                .await;
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn baseline_inner(
    scenario: &Scenario,
    ch: &ClickHouseHttp,
    pools: &Arc<Vec<StreamPool>>,
    sent: &Sent,
    idle: &Idle,
    (sluice, clickhouse, harness): (&Option<Probe>, &Option<Probe>, &Probe),
    sampler: &Sampler,
    result: &mut BaselineResult,
) -> anyhow::Result<()> {
    let cfg = &scenario.baseline;
    let db = &scenario.clickhouse.database;
    ch.query(&format!("CREATE DATABASE IF NOT EXISTS {}", cfg.database))
        .await?;
    let mut tables: Vec<&str> = scenario.streams.iter().map(|s| s.table()).collect();
    tables.sort_unstable();
    tables.dedup();
    for t in &tables {
        ch.query(&format!("DROP TABLE IF EXISTS {}.{t}", cfg.database))
            .await?;
        ch.query(&format!("CREATE TABLE {}.{t} AS {db}.{t}", cfg.database))
            .await?;
    }

    // Rows per entry: what sluice acknowledged for it, scaled down to max_rows in total.
    let acked: Vec<u64> = (0..pools.len())
        .map(|e| sent.entries[e].rows_acked)
        .collect();
    let total: u64 = acked.iter().sum();
    let scale = (cfg.max_rows as f64 / total.max(1) as f64).min(1.0);
    let mut inserts: Vec<(String, u64, Bytes)> = Vec::new();
    for (e, pool) in pools.iter().enumerate() {
        let want = (acked[e] as f64 * scale).round() as u64;
        if want == 0 {
            continue;
        }
        let table = format!("{}.{}", cfg.database, pool.spec.table());
        let body_rows = pool.spec.batch_rows;
        let (per_insert, distinct) =
            baseline::insert_plan(pool.bodies.len(), body_rows, cfg.rows_per_insert);
        // The distinct INSERT bodies of one cycle (built once, before the clock starts).
        let mut cycle: Vec<(u64, Bytes)> = Vec::with_capacity(distinct);
        for i in 0..distinct {
            let mut raw = Vec::new();
            let mut rows = 0;
            for j in 0..per_insert {
                let b = pool.body((i * per_insert + j) as u64);
                raw.extend_from_slice(b.baseline_jsonl.as_ref().context("baseline rows")?);
                rows += b.rows;
            }
            let body = crate::generator::compress(&raw, cfg.encoding);
            cycle.push((rows, Bytes::from(body)));
        }
        let mut left = want;
        let mut i = 0;
        while left > 0 {
            let (rows, body) = &cycle[i % cycle.len()];
            if *rows > left {
                // The last insert: cut the uncompressed rows to fit.
                let mut raw = Vec::new();
                let mut rows_taken = 0;
                let mut k = 0u64;
                'outer: loop {
                    let b = pool.body((i * per_insert) as u64 + k);
                    for line in b
                        .baseline_jsonl
                        .as_ref()
                        .context("baseline rows")?
                        .split_inclusive(|&c| c == b'\n')
                    {
                        if rows_taken == left {
                            break 'outer;
                        }
                        raw.extend_from_slice(line);
                        rows_taken += 1;
                    }
                    k += 1;
                }
                inserts.push((
                    table.clone(),
                    left,
                    Bytes::from(crate::generator::compress(&raw, cfg.encoding)),
                ));
                left = 0;
            } else {
                inserts.push((table.clone(), *rows, body.clone()));
                left -= rows;
            }
            i += 1;
        }
    }
    let rows: u64 = inserts.iter().map(|i| i.1).sum();
    result.inserts = inserts.len() as u64;
    result.bytes_sent = inserts.iter().map(|i| i.2.len() as u64).sum();

    let start = snapshot(sluice, clickhouse, harness);
    let queue = Arc::new(Mutex::new(inserts.into_iter()));
    let encoding = cfg.encoding.content_encoding();
    let mut tasks = Vec::new();
    for _ in 0..cfg.connections {
        let (queue, ch) = (queue.clone(), ch.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some((table, _, body)) = next else {
                    return Ok::<(), anyhow::Error>(());
                };
                ch.insert(&table, "JSONEachRow", body, encoding).await?;
            }
        }));
    }
    let mut first_error = None;
    for t in tasks {
        if let Err(e) = t.await.context("baseline insert task panicked")? {
            first_error.get_or_insert(e);
        }
    }
    let inserted = snapshot(sluice, clickhouse, harness);
    let insert_secs = inserted.at.duration_since(start.at).as_secs_f64();
    result.insert_wall_secs = insert_secs;
    result.rows_per_sec = rows as f64 / insert_secs.max(1e-9);
    let settled = settle(scenario, idle, sluice, clickhouse, ch, &cfg.database).await;
    let end = snapshot(sluice, clickhouse, harness);
    result.phase = phase(
        rows,
        [&start, &inserted, &end],
        idle,
        (true, settled),
        sampler,
    );
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut found = 0;
    for t in &tables {
        found += ch
            .number(&format!("SELECT count() FROM {}.{t}", cfg.database))
            .await?;
    }
    result.rows_found = found;
    result.ok = found == rows;
    if !result.ok {
        bail!("the baseline tables hold {found} rows, {rows} were inserted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Result

fn resource_points(samples: &[Sample], t0: f64) -> Vec<ResourcePoint> {
    let cores = |a: Option<ProcSample>, b: Option<ProcSample>, dt: f64| -> Option<f64> {
        Some(((b?.cpu_secs - a?.cpu_secs) / dt).max(0.0))
    };
    samples
        .windows(2)
        .filter(|w| w[1].t > w[0].t)
        .map(|w| {
            let dt = w[1].t - w[0].t;
            ResourcePoint {
                t: w[1].t - t0,
                sluice_cores: cores(w[0].sluice, w[1].sluice, dt),
                clickhouse_cores: cores(w[0].clickhouse, w[1].clickhouse, dt),
                harness_cores: cores(w[0].harness, w[1].harness, dt),
                sluice_rss_mib: w[1].sluice.map(|p| p.rss_bytes as f64 / MIB),
                clickhouse_rss_mib: w[1].clickhouse.map(|p| p.rss_bytes as f64 / MIB),
            }
        })
        .collect()
}

struct Assembly<'a> {
    scenario: &'a Scenario,
    started_at: String,
    clickhouse_version: String,
    prefix: &'a str,
    sluice_process: String,
    clickhouse_process: String,
    pools: &'a [StreamPool],
    sent: &'a Sent,
    idle: Idle,
    sluice_phase: Phase,
    server_side: Option<ServerSide>,
    baseline: Option<BaselineResult>,
    decode_only: Option<crate::decode_only::DecodeOnly>,
    verification: Vec<Verification>,
    verified: bool,
    samples: Vec<ResourcePoint>,
    notes: Vec<String>,
}

fn assemble(a: Assembly<'_>) -> RunResult {
    let s = a.scenario;
    let sent = a.sent;
    let streams: Vec<StreamSummary> = a
        .pools
        .iter()
        .zip(&sent.entries)
        .map(|(pool, c)| {
            let per_row = |bytes: u64| bytes as f64 / c.rows_sent.max(1) as f64;
            StreamSummary {
                label: pool.spec.label(),
                stream: pool.spec.stream.as_str().into(),
                format: pool.spec.format.as_str().into(),
                encoding: pool.spec.encoding.content_encoding().into(),
                batch_rows: pool.spec.batch_rows,
                weight: pool.spec.weight,
                batches: c.batches,
                failed_batches: c.failed,
                rows_sent: c.rows_sent,
                rows_acked: c.rows_acked,
                rows_rejected: c.rows_rejected,
                bytes_sent: c.bytes_sent,
                raw_bytes_per_row: per_row(c.raw_bytes),
                wire_bytes_per_row: per_row(c.bytes_sent),
            }
        })
        .collect();
    let rows_acked: u64 = streams.iter().map(|x| x.rows_acked).sum();
    let bytes_sent: u64 = streams.iter().map(|x| x.bytes_sent).sum();
    let send = SendSummary {
        wall_secs: sent.wall_secs,
        batches: streams.iter().map(|x| x.batches).sum(),
        rows_sent: streams.iter().map(|x| x.rows_sent).sum(),
        rows_acked,
        rows_rejected: streams.iter().map(|x| x.rows_rejected).sum(),
        bytes_sent,
        statuses: sent.statuses.clone(),
        transport_errors: sent.transport_errors,
        acked_rows_per_sec: rows_acked as f64 / sent.wall_secs.max(1e-9),
        sent_mb_per_sec: bytes_sent as f64 / 1e6 / sent.wall_secs.max(1e-9),
        first_errors: sent.first_errors.clone(),
    };
    let per_million = |cpu: Option<f64>, rows: u64| -> Option<f64> {
        (rows > 0).then_some(cpu? / (rows as f64 / 1e6))
    };
    let sp = &a.sluice_phase;
    let ch_sluice = per_million(sp.clickhouse_net_cpu_secs, sp.rows);
    let ch_direct = a
        .baseline
        .as_ref()
        .filter(|b| b.ok)
        .and_then(|b| per_million(b.phase.clickhouse_net_cpu_secs, b.phase.rows));
    let events_per_cpu = sp
        .sluice_cpu_secs
        .filter(|c| *c > 0.0)
        .map(|c| sp.rows as f64 / c);
    let decode_rate = a.decode_only.as_ref().map(|d| d.rows_per_cpu_sec);
    let max_opt = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    };
    let efficiency = Efficiency {
        acked_rows_per_sec: send.acked_rows_per_sec,
        events_per_sluice_cpu_sec: events_per_cpu,
        decode_only_rows_per_cpu_sec: decode_rate,
        pct_of_decode_only: events_per_cpu.zip(decode_rate).map(|(e, d)| 100.0 * e / d),
        clickhouse_cpu_secs_per_million_sluice: ch_sluice,
        clickhouse_cpu_secs_per_million_direct: ch_direct,
        clickhouse_cpu_ratio: ch_sluice.zip(ch_direct).map(|(s, d)| s / d),
        combined_cpu_us_per_event_sluice: sp
            .sluice_cpu_secs
            .zip(sp.clickhouse_net_cpu_secs)
            .filter(|_| sp.rows > 0)
            .map(|(s, c)| (s + c) / sp.rows as f64 * 1e6),
        // CPU-seconds per million rows are CPU-µs per row.
        combined_cpu_us_per_event_direct: ch_direct,
        sluice_peak_rss_mib: sp.sluice_peak_rss_mib,
        clickhouse_peak_rss_mib: max_opt(
            sp.clickhouse_peak_rss_mib,
            a.baseline
                .as_ref()
                .and_then(|b| b.phase.clickhouse_peak_rss_mib),
        ),
    };
    let mut notes = a.notes;
    if let Some(b) = &a.baseline
        && let Some(e) = &b.error
    {
        notes.push(format!("baseline failed: {e}"));
    }
    if !sp.drained {
        notes.push("sluice phase: not every acknowledged row arrived".into());
    }
    for (name, p) in [
        ("sluice", Some(sp)),
        ("baseline", a.baseline.as_ref().map(|b| &b.phase)),
    ] {
        if let Some(other) = p.and_then(|p| p.other_cores)
            && other > 0.25
        {
            notes.push(format!(
                "{name} phase: other processes used {other:.2} cores on average (of {}): the machine was shared",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            ));
        }
        if let Some(p) = p
            && !p.settled
        {
            notes.push(format!(
                "{name} phase: merges or CPU did not settle within {} s; the CPU window closed anyway",
                s.measure.settle_max_secs
            ));
        }
    }
    RunResult {
        scenario: s.name.clone(),
        description: s.description.clone(),
        started_at: a.started_at,
        harness_version: env!("CARGO_PKG_VERSION").to_string(),
        setup: Setup {
            target_url: s.target.url.clone(),
            protocol: s.target.protocol.as_str().into(),
            clickhouse_url: s.clickhouse.url.clone(),
            clickhouse_version: a.clickhouse_version,
            database: s.clickhouse.database.clone(),
            connections: s.load.connections,
            rate: s.load.rate,
            duration_secs: s.load.duration_secs,
            rows: s.load.rows,
            seed: s.load.seed,
            pool_batches: s.load.pool_batches,
            batch_id_prefix: a.prefix.to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            sluice_process: a.sluice_process,
            clickhouse_process: a.clickhouse_process,
        },
        send,
        streams,
        latency_ms: Latency::from_micros(&sent.latency),
        latency_from_due_ms: sent.latency_from_due.as_ref().map(Latency::from_micros),
        idle: a.idle,
        sluice_phase: a.sluice_phase,
        server_side: a.server_side,
        baseline: a.baseline,
        decode_only: a.decode_only,
        efficiency,
        verification: a.verification,
        timeline: sent.buckets.clone(),
        samples: a.samples,
        notes,
        verified: a.verified,
    }
}

/// Writes `{dir}/{name}-{YYYYMMDD-HHMMSS}.json` and `.html`.
fn write_files(scenario: &Scenario, result: &RunResult) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = &scenario.output.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // 2026-01-01T12:34:56.789Z → 20260101-123456
    let stamp: String = result
        .started_at
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .map(|c| if c == 'T' { '-' } else { c })
        .collect();
    let stem = format!("{}-{stamp}", scenario.name);
    let json_path = dir.join(format!("{stem}.json"));
    let html_path = dir.join(format!("{stem}.html"));
    std::fs::write(&json_path, serde_json::to_vec_pretty(result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&html_path, crate::report::render_html(result))
        .with_context(|| format!("writing {}", html_path.display()))?;
    Ok((json_path, html_path))
}
