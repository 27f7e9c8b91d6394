//! A circuit breaker per ClickHouse endpoint: after a few failures in a row the endpoint is left
//! alone for a cool-down (doubling up to a cap), then tried by one request (half-open); a success
//! closes it. A dead ClickHouse is probed, not hammered.

use std::time::{Duration, Instant};

/// Failures in a row that open the breaker.
const FAILURES_TO_OPEN: u32 = 3;
const FIRST_COOL_DOWN: Duration = Duration::from_secs(1);
const MAX_COOL_DOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cool_down: Duration,
    },
    /// One trial request is out since `since`; if it never reports back, another is allowed
    /// after a cool-down.
    HalfOpen {
        cool_down: Duration,
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    state: State,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: State::Closed { failures: 0 },
        }
    }
}

impl Breaker {
    #[cfg(test)]
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request may go to this endpoint now (an open breaker whose cool-down has
    /// passed lets one trial through).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until, cool_down } if now >= until => {
                self.state = State::HalfOpen {
                    cool_down,
                    since: now,
                };
                true
            }
            State::HalfOpen { cool_down, since } if now >= since + cool_down => {
                self.state = State::HalfOpen {
                    cool_down,
                    since: now,
                };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < FAILURES_TO_OPEN => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } => State::Open {
                until: now + FIRST_COOL_DOWN,
                cool_down: FIRST_COOL_DOWN,
            },
            State::HalfOpen { cool_down, .. } | State::Open { cool_down, .. } => {
                let cool_down = (cool_down * 2).min(MAX_COOL_DOWN);
                State::Open {
                    until: now + cool_down,
                    cool_down,
                }
            }
        };
    }

    /// When the breaker lets the next trial through, unless it is closed.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            State::Open { until, .. } => Some(until),
            State::HalfOpen { cool_down, since } => Some(since + cool_down),
            State::Closed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_cools_down_and_closes_on_success() {
        let mut breaker = Breaker::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_OPEN {
            assert!(breaker.allow(t0));
            breaker.failure(t0);
        }
        assert!(!breaker.allow(t0), "open: requests are not sent");
        assert!(!breaker.allow(t0 + Duration::from_millis(999)));
        assert!(
            breaker.allow(t0 + FIRST_COOL_DOWN),
            "one trial after the cool-down"
        );
        assert!(!breaker.allow(t0 + FIRST_COOL_DOWN), "only one");
        assert!(
            breaker.allow(t0 + FIRST_COOL_DOWN * 2),
            "a trial that never reports back does not keep the breaker shut"
        );
        breaker.failure(t0 + FIRST_COOL_DOWN * 2);
        assert_eq!(
            breaker.retry_at(),
            Some(t0 + FIRST_COOL_DOWN * 4),
            "cool-down doubled"
        );
        assert!(breaker.allow(t0 + FIRST_COOL_DOWN * 4));
        breaker.success();
        assert_eq!(breaker.state(), State::Closed { failures: 0 });
        for i in 0..20 {
            breaker.allow(t0 + MAX_COOL_DOWN * (i + 10));
            breaker.failure(t0 + MAX_COOL_DOWN * (i + 10));
        }
        let State::Open { cool_down, .. } = breaker.state() else {
            panic!()
        };
        assert_eq!(cool_down, MAX_COOL_DOWN, "capped");
    }
}
