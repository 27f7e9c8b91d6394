//! Per-principal rate limits: one token bucket for rows and one for bytes.
//!
//! A bucket holds at most `rate × burst_secs` tokens and refills continuously at `rate` per
//! second. A batch takes as many tokens as it has rows (or bytes as sent); when the bucket holds
//! fewer, the batch is refused with the time after which it would fit, and nothing is taken.

use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

/// `[[principals]] rate_limit = { … }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Rows (records as parsed, accepted or rejected) per second; none: no row limit.
    pub rows_per_sec: Option<f64>,
    /// Body bytes as sent per second; none: no byte limit.
    pub bytes_per_sec: Option<f64>,
    /// Seconds of rate a bucket holds when full: the largest burst after a quiet spell, and
    /// the largest batch that can ever pass.
    #[serde(default = "default_burst_secs")]
    pub burst_secs: f64,
}

fn default_burst_secs() -> f64 {
    1.0
}

impl RateLimitConfig {
    pub fn validate(&self, key: &str) -> Result<(), String> {
        for (name, rate) in [
            ("rows_per_sec", self.rows_per_sec),
            ("bytes_per_sec", self.bytes_per_sec),
        ] {
            if let Some(rate) = rate
                && !(rate.is_finite() && rate > 0.0)
            {
                return Err(format!("{key}.{name}: must be greater than 0"));
            }
        }
        if !(self.burst_secs.is_finite() && self.burst_secs > 0.0) {
            return Err(format!("{key}.burst_secs: must be greater than 0"));
        }
        Ok(())
    }
}

/// Why a batch does not fit, in the terms of the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    /// Capacity of the bucket (`X-RateLimit-Limit`).
    pub limit: u64,
    /// Whole tokens left (`X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Seconds until the bucket is full again (`X-RateLimit-Reset`).
    pub reset_secs: u64,
    /// Seconds until this batch would fit (`Retry-After`); `None` when it never can (larger
    /// than the bucket).
    pub retry_after_secs: Option<u64>,
    /// The refill rate per second.
    pub rate: f64,
}

/// A token bucket; cheap to share (one short mutex hold per batch).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    /// Tokens at the instant, before refill.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst_secs: f64, now: Instant) -> TokenBucket {
        let capacity = rate * burst_secs;
        TokenBucket {
            rate,
            capacity,
            state: Mutex::new((capacity, now)),
        }
    }

    /// Takes `n` tokens, or refuses and takes nothing.
    pub fn take(&self, n: u64, now: Instant) -> Result<(), Refusal> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        let tokens = (state.0 + elapsed * self.rate).min(self.capacity);
        *state = (tokens, now.max(state.1));
        let wanted = n as f64;
        if wanted <= tokens {
            state.0 = tokens - wanted;
            return Ok(());
        }
        Err(Refusal {
            limit: self.capacity.floor() as u64,
            remaining: tokens.floor() as u64,
            reset_secs: ((self.capacity - tokens) / self.rate).ceil() as u64,
            retry_after_secs: (wanted <= self.capacity)
                .then(|| ((wanted - tokens) / self.rate).ceil().max(1.0) as u64),
            rate: self.rate,
        })
    }

    /// Returns tokens taken for a batch that was refused later for another reason.
    pub fn give_back(&self, n: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 = (state.0 + n as f64).min(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(s)
    }

    #[test]
    fn a_bucket_refuses_what_does_not_fit_and_refills_at_its_rate() {
        let start = Instant::now();
        let bucket = TokenBucket::new(10.0, 2.0, start);
        bucket.take(15, start).unwrap();
        let refusal = bucket.take(8, start).unwrap_err();
        assert_eq!(
            refusal,
            Refusal {
                limit: 20,
                remaining: 5,
                reset_secs: 2,
                retry_after_secs: Some(1),
                rate: 10.0
            }
        );
        // Nothing was taken by the refusal; after 0.3 s there are 8 tokens.
        bucket.take(8, start + secs(0.3)).unwrap();
        let never = bucket.take(21, start + secs(100.0)).unwrap_err();
        assert_eq!(never.retry_after_secs, None);
        assert_eq!(never.remaining, 20);
        bucket.take(20, start + secs(100.0)).unwrap();
        bucket.give_back(5);
        bucket.take(5, start + secs(100.0)).unwrap();
        assert!(bucket.take(1, start + secs(100.0)).is_err());
    }
}
