//! What Heap's answer to a batch means: a pure function, so every rule can be tested without
//! a server (the idea of Vector's `RetryLogic`).
//!
//! - 2xx: accepted.
//! - Retryable (429, 408, 5xx, no response): again after a full-jitter backoff, never sooner
//!   than `Retry-After`, until `max_elapsed` since the first try; then parked.
//! - Rejected (other 4xx): a batch of several is split in halves, since Heap may reject a
//!   whole request for one bad event; a single event is parked.
//! - Fatal (401, 403, 404, a redirect): the configuration is wrong; delivery stops.

use tokio::time::Instant;

use crate::heap::client::Answer;
use crate::heap::retry::RetryPolicy;
use fastrand::Rng;

/// What to do with a batch after Heap's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Send the batch again at `at` (through the pacer again).
    RetryAt {
        at: Instant,
        reason: String,
    },
    /// Split the batch in halves and send both now.
    Bisect,
    /// Park every event of the batch with this reason.
    Park(String),
    /// Stop delivery: the reason says what to fix.
    Fatal(String),
}

/// The batch facts the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Attempted {
    pub events: usize,
    /// Failed attempts before this answer.
    pub attempt: u32,
    pub first_try: Instant,
}

pub fn decide(
    answer: &Answer,
    batch: Attempted,
    now: Instant,
    retry: &RetryPolicy,
    rng: &mut Rng,
) -> Action {
    match answer {
        Answer::Accepted => Action::Accept,
        Answer::Retry {
            reason,
            retry_after,
            ..
        } => {
            let delay = retry.delay(batch.attempt, *retry_after, rng);
            let deadline = batch.first_try + retry.max_elapsed;
            // Heap's own Retry-After cannot be shortened; a backoff step can: the last try
            // lands on the deadline instead of giving up a whole step early (a 3 s budget
            // used to end after 1 s).
            let earliest = now + retry_after.unwrap_or_default();
            if now >= deadline || earliest > deadline {
                Action::Park(format!(
                    "gave up after {} attempts over {}s (--retry-max-time): {reason}",
                    batch.attempt + 1,
                    (now - batch.first_try).as_secs()
                ))
            } else {
                Action::RetryAt {
                    at: (now + delay).min(deadline).max(earliest),
                    reason: reason.clone(),
                }
            }
        }
        Answer::Rejected { reason } if batch.events <= 1 => {
            Action::Park(format!("Heap rejected the event: {reason}"))
        }
        Answer::Rejected { .. } => Action::Bisect,
        Answer::Fatal { reason } => Action::Fatal(reason.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn batch(events: usize, attempt: u32, first_try: Instant) -> Attempted {
        Attempted {
            events,
            attempt,
            first_try,
        }
    }

    fn retry(after: Option<u64>) -> Answer {
        Answer::Retry {
            reason: "Heap answered 429".into(),
            retry_after: after.map(Duration::from_secs),
            scope: None,
        }
    }

    #[test]
    fn retries_honour_retry_after_and_give_up_at_the_budget() {
        let now = Instant::now();
        let policy = RetryPolicy::default();
        let mut rng = Rng::with_seed(1);
        match decide(&retry(Some(7)), batch(10, 0, now), now, &policy, &mut rng) {
            Action::RetryAt { at, .. } => assert!(at >= now + Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
        let late = now + policy.max_elapsed;
        match decide(&retry(None), batch(10, 9, now), late, &policy, &mut rng) {
            Action::Park(reason) => {
                assert!(reason.contains("gave up after 10 attempts"), "{reason}");
                assert!(reason.contains("429"), "the last error is kept: {reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_budget_is_used_to_its_end_but_never_past_a_retry_after() {
        let now = Instant::now();
        let policy = RetryPolicy {
            max_elapsed: Duration::from_secs(3),
            ..RetryPolicy::default()
        };
        let mut rng = Rng::with_seed(1);
        let deadline = now + Duration::from_secs(3);
        // A backoff step that would pass the deadline is shortened to it.
        let late = deadline - Duration::from_millis(100);
        assert_eq!(
            decide(&retry(None), batch(10, 8, now), late, &policy, &mut rng),
            Action::RetryAt {
                at: deadline,
                reason: "Heap answered 429".into()
            }
        );
        // At the deadline it gives up, with the time it really spent.
        match decide(&retry(None), batch(10, 9, now), deadline, &policy, &mut rng) {
            Action::Park(reason) => assert!(reason.contains("over 3s"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Heap's Retry-After is never cut short: past the deadline, it parks now.
        assert!(matches!(
            decide(&retry(Some(5)), batch(10, 0, now), now, &policy, &mut rng),
            Action::Park(_)
        ));
    }

    #[test]
    fn rejections_bisect_until_one_event_is_left_and_config_errors_stop() {
        let now = Instant::now();
        let (policy, mut rng) = (RetryPolicy::default(), Rng::with_seed(1));
        let rejected = Answer::Rejected {
            reason: "Heap answered 400".into(),
        };
        assert_eq!(
            decide(&rejected, batch(2, 0, now), now, &policy, &mut rng),
            Action::Bisect
        );
        assert!(matches!(
            decide(&rejected, batch(1, 0, now), now, &policy, &mut rng),
            Action::Park(r) if r.starts_with("Heap rejected the event")
        ));
        let fatal = Answer::Fatal {
            reason: "Heap answered 401: check HEAP_APP_ID".into(),
        };
        assert!(matches!(
            decide(&fatal, batch(5, 0, now), now, &policy, &mut rng),
            Action::Fatal(r) if r.contains("HEAP_APP_ID")
        ));
        assert_eq!(
            decide(&Answer::Accepted, batch(5, 3, now), now, &policy, &mut rng),
            Action::Accept
        );
    }
}
