//! Which batch goes next, and when.
//!
//! The [`Pacer`] hands out tickets: batch index, stream entry, row count and the moment the batch
//! is due. Entries are interleaved by smooth weighted round robin (weights 3 and 1 give
//! `A A B A`, not `A A A B`). With a rate, ticket `k` is due when the rows of the tickets before
//! it have been sent at that rate (open loop: a late batch is sent at once and its delay shows up
//! in the latency measured from the due time). Without one, tickets are due immediately. The run
//! ends at the row limit (the last batch is cut to fit) or when the duration is over: for a
//! paced run, when the next ticket would be due after it; otherwise, when a ticket is asked for
//! after it.

use std::time::Duration;

/// One batch to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// 0, 1, 2, … in the order handed out.
    pub index: u64,
    /// Index into the scenario's stream entries.
    pub stream: usize,
    /// Rows in this batch.
    pub rows: u64,
    /// When the batch is due, from the start of sending.
    pub due: Duration,
}

/// Hands out [`Ticket`]s; see the module docs.
#[derive(Clone, Debug)]
pub struct Pacer {
    batch_rows: Vec<u64>,
    sequence: Vec<usize>,
    /// Rows per second; 0 = unpaced.
    rate: f64,
    max_rows: Option<u64>,
    duration: Option<Duration>,
    next_index: u64,
    rows_issued: u64,
}

impl Pacer {
    /// `entries`: (rows per batch, weight) per stream entry.
    pub fn new(
        entries: &[(u64, u32)],
        rate: f64,
        max_rows: Option<u64>,
        duration: Option<Duration>,
    ) -> Pacer {
        assert!(!entries.is_empty(), "a pacer needs at least one entry");
        Pacer {
            batch_rows: entries.iter().map(|e| e.0.max(1)).collect(),
            sequence: weighted_sequence(&entries.iter().map(|e| e.1).collect::<Vec<_>>()),
            rate,
            max_rows,
            duration,
            next_index: 0,
            rows_issued: 0,
        }
    }

    /// The stream entry of the `index`-th batch.
    pub fn stream_of(&self, index: u64) -> usize {
        self.sequence[(index % self.sequence.len() as u64) as usize]
    }

    /// The next ticket, or `None` when the run is over. `elapsed` is the time since sending
    /// started.
    pub fn next(&mut self, elapsed: Duration) -> Option<Ticket> {
        let remaining = match self.max_rows {
            Some(max) if self.rows_issued >= max => return None,
            Some(max) => max - self.rows_issued,
            None => u64::MAX,
        };
        let due = if self.rate > 0.0 {
            Duration::from_secs_f64(self.rows_issued as f64 / self.rate)
        } else {
            Duration::ZERO
        };
        if let Some(duration) = self.duration {
            let clock = if self.rate > 0.0 { due } else { elapsed };
            if clock >= duration {
                return None;
            }
        }
        let stream = self.stream_of(self.next_index);
        let rows = self.batch_rows[stream].min(remaining);
        let ticket = Ticket {
            index: self.next_index,
            stream,
            rows,
            due,
        };
        self.next_index += 1;
        self.rows_issued += rows;
        Some(ticket)
    }

    /// Rows handed out so far.
    pub fn rows_issued(&self) -> u64 {
        self.rows_issued
    }
}

/// Smooth weighted round robin over `weights` (one cycle, `sum(weights)` long): each step adds
/// every weight to its counter, picks the largest counter and subtracts the total from it.
pub fn weighted_sequence(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w.max(1))).sum();
    let mut current = vec![0i64; weights.len()];
    let mut sequence = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w.max(1));
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
            .expect("at least one weight");
        current[best] -= total;
        sequence.push(best);
    }
    sequence
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(pacer: &mut Pacer) -> Vec<Ticket> {
        std::iter::from_fn(|| pacer.next(Duration::ZERO)).collect()
    }

    #[test]
    fn weighted_round_robin_is_smooth_and_proportional() {
        assert_eq!(weighted_sequence(&[1]), vec![0]);
        assert_eq!(weighted_sequence(&[1, 1]), vec![0, 1]);
        assert_eq!(weighted_sequence(&[3, 1]), vec![0, 0, 1, 0]);
        let seq = weighted_sequence(&[5, 2, 1]);
        assert_eq!(seq.len(), 8);
        assert_eq!(seq.iter().filter(|&&s| s == 0).count(), 5);
        assert_eq!(seq.iter().filter(|&&s| s == 1).count(), 2);
        assert_eq!(seq.iter().filter(|&&s| s == 2).count(), 1);
        // Never three of the heavy one in a row when it has 5 of 8.
        assert!(!seq.windows(3).any(|w| w.iter().all(|&s| s == 0)));
    }

    #[test]
    fn row_limit_cuts_the_last_batch() {
        let mut pacer = Pacer::new(&[(100, 1)], 0.0, Some(250), None);
        let tickets = all(&mut pacer);
        assert_eq!(
            tickets.iter().map(|t| t.rows).collect::<Vec<_>>(),
            vec![100, 100, 50]
        );
        assert_eq!(
            tickets.iter().map(|t| t.index).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(tickets.iter().all(|t| t.due == Duration::ZERO));
        assert_eq!(pacer.rows_issued(), 250);
        assert_eq!(pacer.next(Duration::ZERO), None);
    }

    #[test]
    fn paced_tickets_are_due_at_the_rate_of_rows() {
        // 1000 rows/s, batches of 100 and 300 alternating: due at 0, 0.1 s, 0.4 s, 0.5 s, …
        let mut pacer = Pacer::new(&[(100, 1), (300, 1)], 1000.0, Some(800), None);
        let tickets = all(&mut pacer);
        let due: Vec<u128> = tickets.iter().map(|t| t.due.as_millis()).collect();
        assert_eq!(due, vec![0, 100, 400, 500]);
        assert_eq!(
            tickets.iter().map(|t| t.stream).collect::<Vec<_>>(),
            vec![0, 1, 0, 1]
        );
    }

    #[test]
    fn paced_run_ends_when_the_next_ticket_would_be_due_after_the_duration() {
        // 10 batches/s for 1 s: due 0.0 … 0.9 s → 10 tickets, whatever the clock says.
        let mut pacer = Pacer::new(&[(10, 1)], 100.0, None, Some(Duration::from_secs(1)));
        let n = std::iter::from_fn(|| pacer.next(Duration::from_secs(5))).count();
        assert_eq!(n, 10);
    }

    #[test]
    fn unpaced_run_ends_when_asked_after_the_duration() {
        let mut pacer = Pacer::new(&[(10, 1)], 0.0, None, Some(Duration::from_secs(2)));
        assert!(pacer.next(Duration::from_millis(1999)).is_some());
        assert!(pacer.next(Duration::from_millis(1)).is_some());
        assert_eq!(pacer.next(Duration::from_secs(2)), None);
    }

    #[test]
    fn both_limits_stop_at_whichever_comes_first() {
        let mut pacer = Pacer::new(&[(10, 1)], 0.0, Some(30), Some(Duration::from_secs(60)));
        assert_eq!(all(&mut pacer).len(), 3);
        let mut pacer = Pacer::new(
            &[(10, 1)],
            100.0,
            Some(1_000_000),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(all(&mut pacer).len(), 10);
    }
}
