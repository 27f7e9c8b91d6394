//! sluice's own view of a run, from its Prometheus endpoint (`[target] metrics_url`) read
//! before and after the load: how long requests took inside sluice (`sluice_request_seconds`),
//! how long the spool's segment syncs took (`sluice_spool_fsync_seconds`), and how often
//! requests waited for in-flight room (`sluice_in_flight_wait_seconds`). Next to the latency
//! the harness sees, it tells a slow tail spent in sluice from one spent in the network or the
//! harness, and a disk's or the memory bound's share of it from the CPU's.
//!
//! Histograms give counts per bucket only, so shares are of observations above a bucket bound
//! (sluice's buckets for seconds start 1 ms, 5 ms, 10 ms, 50 ms).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

/// The cumulative buckets of one histogram, summed over its series: (upper bound, observations
/// at or below it), by bound; the last is `+Inf`, the count.
pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(bound) = labels
            .split(',')
            .find_map(|label| label.strip_prefix("le=\""))
            .and_then(|le| le.strip_suffix('"'))
            .and_then(|le| match le {
                "+Inf" => Some(f64::INFINITY),
                le => le.parse().ok(),
            })
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, sum)) => *sum += value,
            None => buckets.push((bound, value)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// What was observed between two readings of a histogram, bucket by bucket (a bucket missing
/// before counts from zero: the series began during the run).
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0.0, |(_, c)| *c);
            (bound, (count - earlier).max(0.0))
        })
        .collect()
}

/// Observations in all (the `+Inf` bucket).
pub fn count(buckets: &[(f64, f64)]) -> f64 {
    buckets
        .iter()
        .find(|(b, _)| b.is_infinite())
        .map_or(0.0, |(_, c)| *c)
}

/// The percentage of observations above `bound`, which must be one of the buckets' bounds;
/// `None` without observations or without that bucket.
pub fn pct_above(buckets: &[(f64, f64)], bound: f64) -> Option<f64> {
    let total = count(buckets);
    let at_or_below = buckets.iter().find(|(b, _)| *b == bound)?.1;
    (total > 0.0).then(|| 100.0 * (total - at_or_below) / total)
}

/// sluice's view of the load window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerSide {
    /// Requests sluice answered (every stream).
    pub requests: u64,
    pub requests_over_5ms_pct: Option<f64>,
    pub requests_over_10ms_pct: Option<f64>,
    /// Syncs of spool segments (none when the spool is off or `fsync = "never"`).
    pub syncs: u64,
    pub syncs_over_5ms_pct: Option<f64>,
    pub syncs_over_10ms_pct: Option<f64>,
    /// Waits for in-flight room (`limits.max_in_flight_bytes`): a request can wait on arrival
    /// and again once validated.
    pub room_waits: u64,
    pub room_waits_over_10ms_pct: Option<f64>,
}

impl ServerSide {
    /// From the endpoint's text before and after the window.
    pub fn between(before: &str, after: &str) -> ServerSide {
        let window = |name: &str| delta(&histogram(before, name), &histogram(after, name));
        let requests = window("sluice_request_seconds");
        let syncs = window("sluice_spool_fsync_seconds");
        let waits = window("sluice_in_flight_wait_seconds");
        ServerSide {
            requests: count(&requests) as u64,
            requests_over_5ms_pct: pct_above(&requests, 0.005),
            requests_over_10ms_pct: pct_above(&requests, 0.01),
            syncs: count(&syncs) as u64,
            syncs_over_5ms_pct: pct_above(&syncs, 0.005),
            syncs_over_10ms_pct: pct_above(&syncs, 0.01),
            room_waits: count(&waits) as u64,
            room_waits_over_10ms_pct: pct_above(&waits, 0.01),
        }
    }
}

/// Reads the endpoint's text.
pub async fn scrape(url: &str) -> anyhow::Result<String> {
    let client = crate::client::plain_client_builder()?
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the metrics client")?;
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    response.text().await.with_context(|| format!("GET {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE sluice_request_seconds histogram
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"0.005\"} 10
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"0.01\"} 10
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"+Inf\"} 10
sluice_request_seconds_sum{stream=\"edge_access\"} 0.02
sluice_request_seconds_count{stream=\"edge_access\"} 10
";

    const AFTER: &str = "\
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"0.005\"} 80
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"0.01\"} 100
sluice_request_seconds_bucket{stream=\"edge_access\",le=\"+Inf\"} 110
sluice_request_seconds_bucket{stream=\"edge_events\",le=\"0.005\"} 10
sluice_request_seconds_bucket{stream=\"edge_events\",le=\"0.01\"} 10
sluice_request_seconds_bucket{stream=\"edge_events\",le=\"+Inf\"} 10
sluice_request_seconds_count{stream=\"edge_access\"} 110
sluice_spool_fsync_seconds_bucket{le=\"0.001\"} 50
sluice_spool_fsync_seconds_bucket{le=\"0.005\"} 90
sluice_spool_fsync_seconds_bucket{le=\"0.01\"} 99
sluice_spool_fsync_seconds_bucket{le=\"+Inf\"} 100
sluice_in_flight_wait_seconds_bucket{stream=\"edge_access\",at=\"arrival\",le=\"0.01\"} 3
sluice_in_flight_wait_seconds_bucket{stream=\"edge_access\",at=\"arrival\",le=\"+Inf\"} 4
";

    #[test]
    fn histograms_are_summed_over_series_by_bound() {
        assert_eq!(
            histogram(AFTER, "sluice_request_seconds"),
            [(0.005, 90.0), (0.01, 110.0), (f64::INFINITY, 120.0)]
        );
        assert!(histogram(AFTER, "sluice_ack_seconds").is_empty());
    }

    #[test]
    fn the_window_counts_only_what_it_observed() {
        let side = ServerSide::between(BEFORE, AFTER);
        assert_eq!(
            side,
            ServerSide {
                // 110 of edge_access, 10 of them before; 10 of edge_events, all new.
                requests: 110,
                requests_over_5ms_pct: Some(100.0 * 30.0 / 110.0),
                requests_over_10ms_pct: Some(100.0 * 10.0 / 110.0),
                syncs: 100,
                syncs_over_5ms_pct: Some(10.0),
                syncs_over_10ms_pct: Some(1.0),
                room_waits: 4,
                room_waits_over_10ms_pct: Some(25.0),
            }
        );
        let nothing = ServerSide::between(AFTER, AFTER);
        assert_eq!(
            (nothing.requests, nothing.requests_over_10ms_pct),
            (0, None)
        );
        assert_eq!(
            pct_above(&histogram(AFTER, "sluice_spool_fsync_seconds"), 0.002),
            None
        );
    }
}
