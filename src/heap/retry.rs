//! When to retry a failed request: exponential backoff with full jitter, never sooner than
//! Heap's `Retry-After`, within a total time budget.
//!
//! Full jitter (a uniform delay in `[0, min(cap, base·2^attempt)]`) spreads retries of many
//! batches apart better than adding jitter on top of a fixed delay. The RNG is passed in, so
//! tests replay exactly the same delays.

use std::time::Duration;

use fastrand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The ceiling of the first retry's delay.
    pub initial: Duration,
    /// No delay ceiling grows past this.
    pub max_delay: Duration,
    /// How long one batch may keep failing before its events are parked as dead letters.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, rng: &mut Rng) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max_delay);
        let jittered = ceiling.mul_f64(rng.f64());
        jittered.max(retry_after.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_the_cap_and_respect_retry_after() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_elapsed: Duration::from_secs(60),
        };
        let mut rng = Rng::with_seed(7);
        for attempt in 0..10 {
            let ceiling = Duration::from_secs(1 << attempt.min(3));
            let delays: Vec<Duration> = (0..200)
                .map(|_| policy.delay(attempt, None, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "attempt {attempt}");
            // Full jitter: both short and long delays occur.
            assert!(
                delays.iter().any(|d| *d < ceiling / 4)
                    && delays.iter().any(|d| *d > ceiling * 3 / 4)
            );
        }
        let after = Duration::from_secs(30);
        assert!((0..50).all(|_| policy.delay(0, Some(after), &mut rng) == after));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let policy = RetryPolicy::default();
        let run = |seed| {
            (0..8)
                .map(|a| policy.delay(a, None, &mut Rng::with_seed(seed)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
