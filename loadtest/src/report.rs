//! The result of a run: a JSON document ([`RunResult`]), a printed summary table and a
//! self-contained HTML report (inline CSS and SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::decode_only::DecodeOnly;
use crate::svg::{LineChart, Series, XAxis, bar_chart, escape};
use crate::verify::Verification;

/// Everything a run measured. Field units are in their names.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub description: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub harness_version: String,
    pub setup: Setup,
    pub send: SendSummary,
    pub streams: Vec<StreamSummary>,
    /// Service time: request sent → answer read.
    pub latency_ms: Latency,
    /// Paced runs only: due time → answer read (includes waiting for a free connection, so a
    /// server that falls behind cannot hide it).
    pub latency_from_due_ms: Option<Latency>,
    pub idle: Idle,
    pub sluice_phase: Phase,
    /// sluice's own histograms over the load window (`[target] metrics_url`).
    pub server_side: Option<crate::server_metrics::ServerSide>,
    pub baseline: Option<BaselineResult>,
    pub decode_only: Option<DecodeOnly>,
    pub efficiency: Efficiency,
    pub verification: Vec<Verification>,
    /// Per second of the sluice phase.
    pub timeline: Vec<TimelinePoint>,
    /// Every /proc sample of the run (seconds from the start of sending).
    pub samples: Vec<ResourcePoint>,
    /// Notes for the reader (processes not found, timeouts, …).
    pub notes: Vec<String>,
    /// Every acknowledged row is in ClickHouse exactly once, and nothing else of the run is.
    pub verified: bool,
}

/// Where and how the run was made.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Setup {
    pub target_url: String,
    pub protocol: String,
    pub clickhouse_url: String,
    pub clickhouse_version: String,
    pub database: String,
    pub connections: usize,
    /// Rows per second asked for; 0 = as fast as possible.
    pub rate: f64,
    pub duration_secs: Option<f64>,
    pub rows: Option<u64>,
    pub seed: u64,
    pub pool_batches: usize,
    pub batch_id_prefix: String,
    pub cpus: usize,
    pub sluice_process: String,
    pub clickhouse_process: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SendSummary {
    /// First batch sent → last answer read.
    pub wall_secs: f64,
    pub batches: u64,
    pub rows_sent: u64,
    /// Rows the 200 answers accepted.
    pub rows_acked: u64,
    pub rows_rejected: u64,
    pub bytes_sent: u64,
    /// HTTP status → batches.
    pub statuses: BTreeMap<u16, u64>,
    /// Batches without an HTTP answer.
    pub transport_errors: u64,
    pub acked_rows_per_sec: f64,
    pub sent_mb_per_sec: f64,
    pub first_errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamSummary {
    pub label: String,
    pub stream: String,
    pub format: String,
    pub encoding: String,
    pub batch_rows: u64,
    pub weight: u32,
    pub batches: u64,
    pub failed_batches: u64,
    pub rows_sent: u64,
    pub rows_acked: u64,
    pub rows_rejected: u64,
    pub bytes_sent: u64,
    /// Average decompressed bytes per row.
    pub raw_bytes_per_row: f64,
    /// Average compressed bytes per row.
    pub wire_bytes_per_row: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// (percentile, ms) for the distribution plot.
    pub distribution: Vec<(f64, f64)>,
}

impl Latency {
    /// From a histogram of microseconds.
    pub fn from_micros(h: &hdrhistogram::Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        const POINTS: [f64; 22] = [
            0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0, 97.5,
            99.0, 99.5, 99.75, 99.9, 99.95, 99.99, 99.999, 100.0,
        ];
        Latency {
            count: h.len(),
            min: ms(h.min()),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            distribution: POINTS
                .iter()
                .map(|&p| (p, ms(h.value_at_quantile(p / 100.0))))
                .collect(),
        }
    }
}

/// Background CPU before the load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Idle {
    pub secs: f64,
    pub sluice_cores: Option<f64>,
    pub clickhouse_cores: Option<f64>,
}

/// One measured phase: the CPU window runs from the first request until the rows are in
/// ClickHouse and both servers have gone quiet (merges included).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    /// Start, seconds from the first request of the sluice phase.
    pub t_start: f64,
    pub rows: u64,
    pub window_secs: f64,
    /// Start → rows visible in ClickHouse.
    pub drain_secs: f64,
    pub settle_secs: f64,
    /// Every acknowledged row arrived.
    pub drained: bool,
    /// Merges and CPU went quiet before `measure.settle_max_secs`.
    pub settled: bool,
    pub sluice_cpu_secs: Option<f64>,
    /// sluice's CPU by the stage of its pipeline (see [`crate::procstat::stage_of`]); empty
    /// when sluice's threads could not be read.
    pub sluice_cpu_by_stage: Vec<crate::procstat::StageCpu>,
    /// Raw CPU of the ClickHouse server over the window.
    pub clickhouse_cpu_secs: Option<f64>,
    /// The part of it after the rows had arrived (merges, mostly).
    pub clickhouse_cpu_secs_after_drain: Option<f64>,
    /// Minus its idle rate × window.
    pub clickhouse_net_cpu_secs: Option<f64>,
    pub harness_cpu_secs: Option<f64>,
    /// Average cores used by every other process on the machine over the window (contention).
    pub other_cores: Option<f64>,
    pub sluice_peak_rss_mib: Option<f64>,
    /// sluice's VmHWM at the end (peak since it started).
    pub sluice_hwm_mib: Option<f64>,
    pub clickhouse_peak_rss_mib: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BaselineResult {
    pub database: String,
    pub format: String,
    pub encoding: String,
    pub inserts: u64,
    pub rows_per_insert: u64,
    pub connections: usize,
    pub bytes_sent: u64,
    pub insert_wall_secs: f64,
    pub rows_per_sec: f64,
    pub phase: Phase,
    /// Rows the baseline tables hold afterwards (must equal `phase.rows`).
    pub rows_found: u64,
    pub ok: bool,
    pub error: Option<String>,
}

/// The headline ratios.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Efficiency {
    /// Rows acknowledged per second of sending.
    pub acked_rows_per_sec: f64,
    /// Rows acknowledged per CPU-second of sluice (window: start → rows in ClickHouse, settled).
    pub events_per_sluice_cpu_sec: Option<f64>,
    pub decode_only_rows_per_cpu_sec: Option<f64>,
    /// `events_per_sluice_cpu_sec` as a percentage of the decode-only rate.
    pub pct_of_decode_only: Option<f64>,
    /// ClickHouse CPU-seconds (net of idle) per million rows inserted by sluice.
    pub clickhouse_cpu_secs_per_million_sluice: Option<f64>,
    /// The same for the JSONEachRow baseline.
    pub clickhouse_cpu_secs_per_million_direct: Option<f64>,
    /// sluice path / direct (lower is better for sluice; the target is ≤ 0.33).
    pub clickhouse_cpu_ratio: Option<f64>,
    /// (sluice + ClickHouse) CPU µs per event via sluice.
    pub combined_cpu_us_per_event_sluice: Option<f64>,
    /// ClickHouse CPU µs per event when inserting JSONEachRow directly (the sender's own
    /// encoding work is not counted, on either side).
    pub combined_cpu_us_per_event_direct: Option<f64>,
    pub sluice_peak_rss_mib: Option<f64>,
    pub clickhouse_peak_rss_mib: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TimelinePoint {
    /// Seconds from the start of sending (bucket start).
    pub t: f64,
    /// Bucket length: 1 s, the last one shorter.
    pub width_secs: f64,
    pub acked_rows: u64,
    pub batches: u64,
    pub failed_batches: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ResourcePoint {
    pub t: f64,
    /// Cores used since the previous sample.
    pub sluice_cores: Option<f64>,
    pub clickhouse_cores: Option<f64>,
    pub harness_cores: Option<f64>,
    pub sluice_rss_mib: Option<f64>,
    pub clickhouse_rss_mib: Option<f64>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

/// `1234567` → `1,234,567`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn opt_thousands(v: Option<f64>) -> String {
    v.map_or("n/a".into(), thousands)
}

/// sluice's CPU per stage of its pipeline, per acknowledged row and as a share of all of it:
/// `requests 2.10 µs/row (68 %), accumulators …`. Stages that used no CPU are left out.
fn stage_line(p: &Phase) -> Option<String> {
    let total: f64 = p.sluice_cpu_by_stage.iter().map(|s| s.cpu_secs).sum();
    if total <= 0.0 || p.rows == 0 {
        return None;
    }
    let parts: Vec<String> = p
        .sluice_cpu_by_stage
        .iter()
        .filter(|s| s.cpu_secs >= 0.005)
        .map(|s| {
            format!(
                "{} {:.2} µs/row ({:.0} %)",
                s.stage,
                s.cpu_secs * 1e6 / p.rows as f64,
                100.0 * s.cpu_secs / total
            )
        })
        .collect();
    Some(parts.join(", "))
}

/// Puts `row` right after the line named `after` (at the end without one).
fn insert_after(rows: &mut Vec<(String, String)>, after: &str, (name, text): (&str, String)) {
    let at = rows
        .iter()
        .position(|(line, _)| line == after)
        .map_or(rows.len(), |i| i + 1);
    rows.insert(at, (name.to_string(), text));
}

/// sluice's own histograms: `requests over 5 ms 11.9 %, over 10 ms 3.6 % (4,500); spool syncs …;
/// waits for room …`.
fn server_side_line(side: &crate::server_metrics::ServerSide) -> String {
    let syncs = if side.syncs == 0 {
        "no spool syncs".to_string()
    } else {
        format!(
            "spool syncs over 5 ms {} %, over 10 ms {} % ({})",
            opt(side.syncs_over_5ms_pct, 1),
            opt(side.syncs_over_10ms_pct, 1),
            thousands(side.syncs as f64)
        )
    };
    let waits = if side.room_waits == 0 {
        "no waits for in-flight room".to_string()
    } else {
        format!(
            "waits for in-flight room {} ({} % over 10 ms)",
            thousands(side.room_waits as f64),
            opt(side.room_waits_over_10ms_pct, 1)
        )
    };
    format!(
        "requests over 5 ms {} %, over 10 ms {} % ({}); {syncs}; {waits}",
        opt(side.requests_over_5ms_pct, 1),
        opt(side.requests_over_10ms_pct, 1),
        thousands(side.requests as f64)
    )
}

/// The headline lines of a run, for the terminal and the top of the HTML report.
pub fn summary_rows(r: &RunResult) -> Vec<(String, String)> {
    let e = &r.efficiency;
    let l = &r.latency_ms;
    let mut rows = vec![
        (
            "throughput".to_string(),
            format!(
                "{} rows/s acknowledged ({} rows in {:.1} s, {} connections, {})",
                thousands(e.acked_rows_per_sec),
                thousands(r.send.rows_acked as f64),
                r.send.wall_secs,
                r.setup.connections,
                if r.setup.rate > 0.0 {
                    format!("paced at {} rows/s", thousands(r.setup.rate))
                } else {
                    "as fast as possible".to_string()
                }
            ),
        ),
        (
            "latency".to_string(),
            format!(
                "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        ),
        (
            "HTTP".to_string(),
            r.send
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}: {n}"))
                .chain(
                    (r.send.transport_errors > 0)
                        .then(|| format!("no answer: {}", r.send.transport_errors)),
                )
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "sluice CPU".to_string(),
            format!(
                "{} events per CPU-second ({} CPU s)",
                opt_thousands(e.events_per_sluice_cpu_sec),
                opt(r.sluice_phase.sluice_cpu_secs, 2)
            ),
        ),
        (
            "decode-only".to_string(),
            match &r.decode_only {
                Some(d) => format!(
                    "{} rows per CPU-second (simd-json {}); sluice at {} % of it",
                    thousands(d.rows_per_cpu_sec),
                    d.simd_json,
                    opt(e.pct_of_decode_only, 1)
                ),
                None => "not measured".to_string(),
            },
        ),
        (
            "ClickHouse CPU".to_string(),
            format!(
                "{} s per million rows via sluice, {} s via JSONEachRow: ratio {}",
                opt(e.clickhouse_cpu_secs_per_million_sluice, 3),
                opt(e.clickhouse_cpu_secs_per_million_direct, 3),
                opt(e.clickhouse_cpu_ratio, 3)
            ),
        ),
        (
            "combined CPU".to_string(),
            format!(
                "{} µs per event via sluice (sluice + ClickHouse), {} µs direct (ClickHouse)",
                opt(e.combined_cpu_us_per_event_sluice, 2),
                opt(e.combined_cpu_us_per_event_direct, 2)
            ),
        ),
        (
            "peak RSS".to_string(),
            format!(
                "sluice {} MiB (VmHWM {} MiB), ClickHouse {} MiB",
                opt(e.sluice_peak_rss_mib, 0),
                opt(r.sluice_phase.sluice_hwm_mib, 0),
                opt(e.clickhouse_peak_rss_mib, 0)
            ),
        ),
    ];
    // Lines that only some runs have, each after the line it explains.
    if let Some(side) = &r.server_side {
        insert_after(&mut rows, "latency", ("in sluice", server_side_line(side)));
    }
    if let Some(stages) = stage_line(&r.sluice_phase) {
        insert_after(&mut rows, "sluice CPU", ("by stage", stages));
    }
    let verdict = if r.verified {
        format!(
            "OK: {} acknowledged rows in ClickHouse exactly once",
            thousands(r.verification.iter().map(|v| v.expected_rows).sum::<u64>() as f64)
        )
    } else {
        let problems: Vec<String> = r
            .verification
            .iter()
            .filter(|v| !v.ok)
            .map(|v| {
                format!(
                    "{}: missing {}, extra {}, duplicate {}, from refused batches {}, unknown batches {}, wrong content {}",
                    v.table,
                    v.missing_rows,
                    v.extra_rows,
                    v.duplicate_rows,
                    v.rows_of_refused_batches,
                    v.unknown_batches,
                    v.content_mismatches
                )
            })
            .collect();
        if problems.is_empty() {
            "FAILED: not verified".to_string()
        } else {
            format!("FAILED: {}", problems.join("; "))
        }
    };
    rows.push(("verification".to_string(), verdict));
    rows
}

/// The printed summary table.
pub fn summary_table(r: &RunResult) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sluice-loadtest {} — {}",
        r.scenario,
        if r.description.is_empty() {
            "(no description)"
        } else {
            &r.description
        }
    );
    let _ = writeln!(
        out,
        "{:<34} {:>8} {:>11} {:>11} {:>9} {:>8}",
        "stream", "batches", "rows sent", "rows acked", "rejected", "B/row"
    );
    for s in &r.streams {
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>11} {:>11} {:>9} {:>8.0}",
            s.label,
            s.batches,
            thousands(s.rows_sent as f64),
            thousands(s.rows_acked as f64),
            s.rows_rejected,
            s.wire_bytes_per_row
        );
    }
    for (k, v) in summary_rows(r) {
        let _ = writeln!(out, "{k:<16} {v}");
    }
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:980px;color:#222}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#1a7f37;font-weight:600}.bad{color:#c0392b;font-weight:600}\
svg{display:block;margin:10px 0;max-width:100%;height:auto}svg .title{font-weight:600;font-size:14px}\
svg .tick,svg .legend{font-size:11px;fill:#444}svg .label{font-size:12px;fill:#444}svg .grid{stroke:#e6e6e6}\
svg .empty{fill:#999}svg .marker{stroke:#555;stroke-dasharray:4 3}code{background:#f4f4f4;padding:1px 4px}";

const BLUE: &str = "#1f77b4";
const ORANGE: &str = "#ff7f0e";
const GREEN: &str = "#2ca02c";
const RED: &str = "#d62728";
const GREY: &str = "#7f7f7f";

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    out.push_str("<table><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let numeric = cell
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit() || c == '-')
                && cell
                    .chars()
                    .all(|c| c.is_ascii_digit() || ",.- %".contains(c));
            let _ = write!(
                out,
                "<td{}>{}</td>",
                if numeric { " class=\"n\"" } else { "" },
                escape(cell)
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// The self-contained HTML report.
pub fn render_html(r: &RunResult) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sluice load test: {name}</title><style>{STYLE}</style></head><body><h1>sluice load test: {name}</h1><p>{desc}</p><p>{started} · {conn} connections · {rate} · target <code>{url}</code> · ClickHouse {chv} (<code>{db}</code>)</p>",
        name = escape(&r.scenario),
        desc = escape(&r.description),
        started = escape(&r.started_at),
        conn = r.setup.connections,
        rate = if r.setup.rate > 0.0 {
            format!("paced at {} rows/s", thousands(r.setup.rate))
        } else {
            "as fast as possible".into()
        },
        url = escape(&r.setup.target_url),
        chv = escape(&r.setup.clickhouse_version),
        db = escape(&r.setup.database),
    );
    let _ = write!(
        h,
        "<p class=\"{}\">{}</p>",
        if r.verified { "ok" } else { "bad" },
        escape(
            &summary_rows(r)
                .last()
                .map(|x| x.1.clone())
                .unwrap_or_default()
        )
    );

    h.push_str("<h2>Summary</h2>");
    let rows: Vec<Vec<String>> = summary_rows(r)
        .into_iter()
        .map(|(k, v)| vec![k, v])
        .collect();
    table(&mut h, &["", ""], &rows);

    h.push_str("<h2>Throughput</h2>");
    // Rates at bucket midpoints; a last bucket under 0.2 s is too short to say much.
    let rate = |f: fn(&TimelinePoint) -> u64| -> Vec<(f64, f64)> {
        r.timeline
            .iter()
            .filter(|p| p.width_secs >= 0.2)
            .map(|p| (p.t + p.width_secs / 2.0, f(p) as f64 / p.width_secs))
            .collect()
    };
    let acked = rate(|p| p.acked_rows);
    let failed = rate(|p| p.failed_batches);
    let mut series = vec![Series {
        name: "rows acknowledged per second".into(),
        color: BLUE,
        points: acked,
    }];
    if failed.iter().any(|p| p.1 > 0.0) {
        series.push(Series {
            name: "failed batches per second".into(),
            color: RED,
            points: failed,
        });
    }
    h.push_str(
        &LineChart {
            title: "Throughput over time".into(),
            x_label: "seconds since the first request".into(),
            y_label: "per second".into(),
            x_axis: XAxis::Linear,
            series,
            markers: vec![],
        }
        .render(),
    );

    h.push_str("<h2>Latency</h2>");
    let mut series = vec![Series {
        name: "service time".into(),
        color: BLUE,
        points: r.latency_ms.distribution.clone(),
    }];
    if let Some(due) = &r.latency_from_due_ms {
        series.push(Series {
            name: "from due time".into(),
            color: ORANGE,
            points: due.distribution.clone(),
        });
    }
    h.push_str(
        &LineChart {
            title: "Acknowledgement latency distribution".into(),
            x_label: "percentile".into(),
            y_label: "ms".into(),
            x_axis: XAxis::Percentile,
            series,
            markers: vec![],
        }
        .render(),
    );
    let mut lat_rows = vec![latency_row("service time", &r.latency_ms)];
    if let Some(due) = &r.latency_from_due_ms {
        lat_rows.push(latency_row("from due time", due));
    }
    table(
        &mut h,
        &["ms", "count", "p50", "p90", "p99", "p99.9", "max"],
        &lat_rows,
    );

    h.push_str("<h2>CPU and memory</h2>");
    let mut markers = vec![(0.0, "sluice phase".to_string())];
    if let Some(b) = &r.baseline {
        markers.push((b.phase.t_start, "baseline".to_string()));
    }
    let pick = |f: fn(&ResourcePoint) -> Option<f64>| -> Vec<(f64, f64)> {
        r.samples
            .iter()
            .filter_map(|p| Some((p.t, f(p)?)))
            .collect()
    };
    h.push_str(
        &LineChart {
            title: "CPU (cores)".into(),
            x_label: "seconds since the first request".into(),
            y_label: "cores".into(),
            x_axis: XAxis::Linear,
            series: vec![
                Series {
                    name: "sluice".into(),
                    color: BLUE,
                    points: pick(|p| p.sluice_cores),
                },
                Series {
                    name: "ClickHouse".into(),
                    color: ORANGE,
                    points: pick(|p| p.clickhouse_cores),
                },
                Series {
                    name: "load generator".into(),
                    color: GREY,
                    points: pick(|p| p.harness_cores),
                },
            ],
            markers: markers.clone(),
        }
        .render(),
    );
    h.push_str(
        &LineChart {
            title: "Resident memory (MiB)".into(),
            x_label: "seconds since the first request".into(),
            y_label: "MiB".into(),
            x_axis: XAxis::Linear,
            series: vec![
                Series {
                    name: "sluice".into(),
                    color: BLUE,
                    points: pick(|p| p.sluice_rss_mib),
                },
                Series {
                    name: "ClickHouse".into(),
                    color: ORANGE,
                    points: pick(|p| p.clickhouse_rss_mib),
                },
            ],
            markers,
        }
        .render(),
    );
    let phase_row = |name: &str, p: &Phase| {
        vec![
            name.to_string(),
            thousands(p.rows as f64),
            format!("{:.2}", p.window_secs),
            opt(p.sluice_cpu_secs, 2),
            opt(p.clickhouse_cpu_secs, 2),
            opt(p.clickhouse_cpu_secs_after_drain, 2),
            opt(p.clickhouse_net_cpu_secs, 2),
            opt(p.harness_cpu_secs, 2),
            opt(p.other_cores, 2),
            opt(p.sluice_peak_rss_mib, 0),
            opt(p.clickhouse_peak_rss_mib, 0),
        ]
    };
    let mut phases = vec![phase_row("via sluice", &r.sluice_phase)];
    if let Some(b) = &r.baseline {
        phases.push(phase_row("direct JSONEachRow", &b.phase));
    }
    table(
        &mut h,
        &[
            "phase",
            "rows",
            "window s",
            "sluice CPU s",
            "ClickHouse CPU s",
            "of it after the rows arrived",
            "net of idle",
            "generator CPU s",
            "other processes, cores",
            "sluice peak MiB",
            "ClickHouse peak MiB",
        ],
        &phases,
    );
    let _ = write!(
        h,
        "<p>Idle before the load ({:.1} s): sluice {} cores, ClickHouse {} cores.</p>",
        r.idle.secs,
        opt(r.idle.sluice_cores, 3),
        opt(r.idle.clickhouse_cores, 3)
    );

    h.push_str("<h2>ClickHouse cost: sluice vs direct JSONEachRow</h2>");
    let e = &r.efficiency;
    if let (Some(s), Some(d)) = (
        e.clickhouse_cpu_secs_per_million_sluice,
        e.clickhouse_cpu_secs_per_million_direct,
    ) {
        h.push_str(&bar_chart(
            "ClickHouse CPU-seconds per million rows",
            "s",
            &[
                ("via sluice (Native)".into(), s, GREEN),
                ("direct JSONEachRow".into(), d, RED),
            ],
        ));
    }
    if let (Some(s), Some(d)) = (
        e.combined_cpu_us_per_event_sluice,
        e.combined_cpu_us_per_event_direct,
    ) {
        h.push_str(&bar_chart(
            "Server CPU µs per event",
            "µs",
            &[
                ("sluice + ClickHouse".into(), s, GREEN),
                ("ClickHouse, direct JSON".into(), d, RED),
            ],
        ));
    }
    if let Some(b) = &r.baseline {
        let _ = write!(
            h,
            "<p>Baseline: {} rows as {} ({}) in {} INSERTs of about {} rows, {} in flight, into copies of sluice's tables in <code>{}</code>; {:.0} rows/s. {}</p>",
            thousands(b.phase.rows as f64),
            escape(&b.format),
            escape(&b.encoding),
            b.inserts,
            thousands(b.rows_per_insert as f64),
            b.connections,
            escape(&b.database),
            b.rows_per_sec,
            escape(b.error.as_deref().unwrap_or(""))
        );
    }
    if let Some(d) = &r.decode_only {
        let _ = write!(
            h,
            "<p>Decode-only reference (decompress + simd-json {} parse of the same bodies, one core): {} rows per CPU-second, {:.0} MB/s decompressed.</p>",
            escape(&d.simd_json),
            thousands(d.rows_per_cpu_sec),
            d.decoded_mb_per_cpu_sec
        );
    }

    h.push_str("<h2>Streams</h2>");
    let stream_rows: Vec<Vec<String>> = r
        .streams
        .iter()
        .map(|s| {
            vec![
                s.label.clone(),
                s.batch_rows.to_string(),
                s.batches.to_string(),
                s.failed_batches.to_string(),
                thousands(s.rows_sent as f64),
                thousands(s.rows_acked as f64),
                s.rows_rejected.to_string(),
                format!("{:.0}", s.raw_bytes_per_row),
                format!("{:.0}", s.wire_bytes_per_row),
            ]
        })
        .collect();
    table(
        &mut h,
        &[
            "stream",
            "rows/batch",
            "batches",
            "failed",
            "rows sent",
            "rows acked",
            "rejected",
            "B/row raw",
            "B/row sent",
        ],
        &stream_rows,
    );
    let status_rows: Vec<Vec<String>> = r
        .send
        .statuses
        .iter()
        .map(|(s, n)| vec![s.to_string(), n.to_string()])
        .chain(
            (r.send.transport_errors > 0)
                .then(|| vec!["no answer".to_string(), r.send.transport_errors.to_string()]),
        )
        .collect();
    table(&mut h, &["HTTP status", "batches"], &status_rows);
    if !r.send.first_errors.is_empty() {
        h.push_str("<ul>");
        for e in &r.send.first_errors {
            let _ = write!(h, "<li>{}</li>", escape(e));
        }
        h.push_str("</ul>");
    }

    h.push_str("<h2>Verification</h2>");
    let ver_rows: Vec<Vec<String>> = r
        .verification
        .iter()
        .map(|v| {
            vec![
                v.table.clone(),
                thousands(v.expected_rows as f64),
                thousands(v.found_rows as f64),
                v.missing_rows.to_string(),
                v.extra_rows.to_string(),
                v.duplicate_rows.to_string(),
                v.rows_of_refused_batches.to_string(),
                v.rows_of_unanswered_batches.to_string(),
                v.unknown_batches.to_string(),
                v.content_mismatches.to_string(),
                if v.ok { "ok" } else { "FAILED" }.to_string(),
            ]
        })
        .collect();
    table(
        &mut h,
        &[
            "table",
            "acknowledged",
            "found",
            "missing",
            "extra",
            "duplicate",
            "of refused batches",
            "of unanswered batches",
            "unknown batches",
            "wrong content",
            "",
        ],
        &ver_rows,
    );
    for v in &r.verification {
        for e in &v.examples {
            let _ = write!(h, "<p>{}: {}</p>", escape(&v.table), escape(e));
        }
    }
    if !r.notes.is_empty() {
        h.push_str("<h2>Notes</h2><ul>");
        for n in &r.notes {
            let _ = write!(h, "<li>{}</li>", escape(n));
        }
        h.push_str("</ul>");
    }
    let _ = write!(
        h,
        "<h2>Setup</h2><p>sluice: {} · ClickHouse: {} · {} CPUs · seed {} · {} pooled bodies per stream · batch ids <code>{}-…</code> · sluice-loadtest {}</p></body></html>",
        escape(&r.setup.sluice_process),
        escape(&r.setup.clickhouse_process),
        r.setup.cpus,
        r.setup.seed,
        r.setup.pool_batches,
        escape(&r.setup.batch_id_prefix),
        escape(&r.harness_version)
    );
    h.push('\n');
    h
}

fn latency_row(name: &str, l: &Latency) -> Vec<String> {
    vec![
        name.to_string(),
        l.count.to_string(),
        format!("{:.2}", l.p50),
        format!("{:.2}", l.p90),
        format!("{:.2}", l.p99),
        format!("{:.2}", l.p999),
        format!("{:.2}", l.max),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunResult {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in [1000u64, 2000, 3000, 4000, 50_000] {
            h.record(us).unwrap();
        }
        RunResult {
            scenario: "smoke<1>".into(),
            description: "a & b".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            setup: Setup {
                connections: 4,
                ..Setup::default()
            },
            send: SendSummary {
                rows_acked: 1_234_567,
                statuses: [(200, 10), (503, 2)].into_iter().collect(),
                ..SendSummary::default()
            },
            latency_ms: Latency::from_micros(&h),
            timeline: (0..5)
                .map(|i| TimelinePoint {
                    t: i as f64,
                    width_secs: 1.0,
                    acked_rows: 1000 * i,
                    batches: i,
                    failed_batches: u64::from(i == 3),
                })
                .collect(),
            samples: (0..5)
                .map(|i| ResourcePoint {
                    t: i as f64 * 0.25,
                    sluice_cores: Some(0.5),
                    clickhouse_cores: Some(0.25),
                    harness_cores: None,
                    sluice_rss_mib: Some(40.0),
                    clickhouse_rss_mib: Some(300.0),
                })
                .collect(),
            efficiency: Efficiency {
                acked_rows_per_sec: 123_456.4,
                events_per_sluice_cpu_sec: Some(400_000.0),
                clickhouse_cpu_secs_per_million_sluice: Some(1.0),
                clickhouse_cpu_secs_per_million_direct: Some(4.0),
                clickhouse_cpu_ratio: Some(0.25),
                combined_cpu_us_per_event_sluice: Some(3.5),
                combined_cpu_us_per_event_direct: Some(4.0),
                ..Efficiency::default()
            },
            verification: vec![Verification {
                table: "sluice.edge_access".into(),
                expected_rows: 1_234_567,
                found_rows: 1_234_567,
                ok: true,
                ..Verification::default()
            }],
            verified: true,
            notes: vec!["note <x>".into()],
            ..RunResult::default()
        }
    }

    #[test]
    fn latency_summary_reads_the_histogram_in_ms() {
        let l = sample().latency_ms;
        assert_eq!(l.count, 5);
        assert!((l.p50 - 3.0).abs() < 0.01, "{l:?}");
        assert!((l.max - 50.0).abs() < 0.1);
        assert_eq!(l.distribution.first().unwrap().0, 0.0);
        assert_eq!(l.distribution.last().unwrap().0, 100.0);
        assert!(l.distribution.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(
            Latency::from_micros(&hdrhistogram::Histogram::new(3).unwrap()).count,
            0
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(-12345.0), "-12,345");
    }

    #[test]
    fn summary_names_the_headline_figures() {
        let text = summary_table(&sample());
        assert!(text.contains("123,456 rows/s acknowledged"), "{text}");
        assert!(text.contains("400,000 events per CPU-second"));
        assert!(text.contains("ratio 0.250"));
        assert!(text.contains("200: 10, 503: 2"));
        assert!(text.contains("OK: 1,234,567 acknowledged rows"));
        assert!(text.contains("decode-only      not measured"));
        assert!(text.contains("note: note <x>"));
        let mut failed = sample();
        failed.verified = false;
        failed.verification[0].ok = false;
        failed.verification[0].missing_rows = 7;
        assert!(summary_table(&failed).contains("FAILED: sluice.edge_access: missing 7"));
    }

    #[test]
    fn the_summary_splits_sluice_cpu_by_stage_per_row() {
        let mut r = sample();
        assert!(!summary_table(&r).contains("by stage"), "no stages read");
        r.sluice_phase.rows = 1_000_000;
        r.sluice_phase.sluice_cpu_by_stage = [("requests", 2.1), ("accumulators", 0.6)]
            .into_iter()
            .chain([("rollups", 0.3), ("spool", 0.0), ("other", 0.0)])
            .map(|(stage, cpu_secs)| crate::procstat::StageCpu {
                stage: stage.into(),
                cpu_secs,
            })
            .collect();
        let text = summary_table(&r);
        let line = text.lines().find(|l| l.starts_with("by stage")).unwrap();
        assert_eq!(
            line,
            "by stage         requests 2.10 µs/row (70 %), accumulators 0.60 µs/row (20 %), \
             rollups 0.30 µs/row (10 %)"
        );
        let after_cpu = text
            .lines()
            .skip_while(|l| !l.starts_with("sluice CPU"))
            .nth(1);
        assert_eq!(after_cpu, Some(line), "{text}");
    }

    #[test]
    fn the_summary_shows_sluices_own_view_after_the_latency() {
        let mut r = sample();
        assert!(!summary_table(&r).contains("in sluice"));
        r.server_side = Some(crate::server_metrics::ServerSide {
            requests: 4500,
            requests_over_5ms_pct: Some(11.94),
            requests_over_10ms_pct: Some(3.6),
            syncs: 4420,
            syncs_over_5ms_pct: Some(2.2),
            syncs_over_10ms_pct: Some(0.4),
            room_waits: 8,
            room_waits_over_10ms_pct: Some(100.0),
        });
        let text = summary_table(&r);
        let after_latency = text
            .lines()
            .skip_while(|l| !l.starts_with("latency"))
            .nth(1);
        assert_eq!(
            after_latency,
            Some(
                "in sluice        requests over 5 ms 11.9 %, over 10 ms 3.6 % (4,500); \
                 spool syncs over 5 ms 2.2 %, over 10 ms 0.4 % (4,420); \
                 waits for in-flight room 8 (100.0 % over 10 ms)"
            ),
            "{text}"
        );
        let side = r.server_side.as_mut().unwrap();
        (side.syncs, side.room_waits) = (0, 0);
        assert!(summary_table(&r).contains("(4,500); no spool syncs; no waits for in-flight room"));
    }

    #[test]
    fn html_is_self_contained_escaped_and_has_the_plots() {
        let html = render_html(&sample());
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("smoke&lt;1&gt;") && !html.contains("smoke<1>"));
        assert!(html.contains("note &lt;x&gt;"));
        assert_eq!(
            html.matches("<svg").count(),
            6,
            "throughput, latency, cpu, rss, 2 bars"
        );
        assert!(html.contains("Throughput over time"));
        assert!(html.contains("Acknowledgement latency distribution"));
        assert!(html.contains("failed batches per second"));
        // Nothing loaded from elsewhere: the only URLs are SVG namespaces.
        let urls = html.matches("http://").count() + html.matches("https://").count();
        assert_eq!(urls, html.matches("http://www.w3.org/2000/svg").count());
        assert!(!html.contains("<script") && !html.contains("<link"));
        // The JSON document serializes.
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["efficiency"]["clickhouse_cpu_ratio"], 0.25);
        assert_eq!(json["send"]["statuses"]["503"], 2);
    }
}
