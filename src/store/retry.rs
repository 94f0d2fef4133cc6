//! One retry for state writes: the ledger's (one per object, shared by the objects of a
//! pipeline) and the dead letters' (one writer, in delivery). Pure bookkeeping: every method
//! takes `now`, so each rule is tested without a store or a clock.
//!
//! - **Backoff.** A failed write is tried again after 1 s, doubling to 30 s. The schedule is
//!   the store's, not each writer's: a failure while another writer already waits for the
//!   next try joins that try instead of stepping the backoff again.
//! - **Budget.** Unbounded (a long-lived `run`): writes are retried until they succeed. With a
//!   budget (bounded runs, `--retry-max-time`), the outage is timed from its first failure,
//!   across writers; the last try lands on the deadline, and once it is past, every failure
//!   gives up at once until a write succeeds again.
//! - **Causes.** A denied write (a role lost its permission) or an invalid or missing target
//!   is not an outage, and is reported as what it is: "permission denied writing the state at
//!   …: check the credentials/role". It is retried with the same backoff and budget all the
//!   same, so a role fixed by the operator heals without a restart.
//! - **Logging, once per cause.** The first failure of an outage (and a change of its cause)
//!   is a [`Notice::Began`]; while it lasts, at most one [`Notice::Ongoing`] a minute; the
//!   first success after it, one [`Notice::Healed`]. Every failure is still counted in the
//!   metrics by the caller. (A state outage with 256 objects in flight used to log up to
//!   about 30,000 lines an hour: one per object per retry.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{StoreError, StoreErrorKind};

/// The first wait is twice this.
const BASE: Duration = Duration::from_millis(500);
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The least time between two log lines about one outage.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What a failure of a state write means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The store is down, slow or throttling: waiting may be enough.
    Outage,
    /// The credentials were refused: someone must fix the credentials or the role.
    Denied,
    /// The store refused the request as invalid, or the bucket or container is missing:
    /// someone must fix the state location.
    Refused,
}

impl Cause {
    pub fn of(kind: StoreErrorKind) -> Cause {
        match kind {
            StoreErrorKind::Denied => Cause::Denied,
            StoreErrorKind::Invalid | StoreErrorKind::NotFound => Cause::Refused,
            StoreErrorKind::Throttled
            | StoreErrorKind::Unavailable
            | StoreErrorKind::PreconditionFailed => Cause::Outage,
        }
    }

    /// What `/readyz` and the log say first, for a write that failed at `location`.
    pub fn headline(self, location: &str) -> String {
        match self {
            Cause::Outage => "state writes have failed".into(),
            Cause::Denied => format!(
                "permission denied writing the state at {location}: check the credentials/role"
            ),
            Cause::Refused => format!(
                "the state store refused a write at {location} as invalid or missing: check \
                 --state and that its bucket or container exists"
            ),
        }
    }
}

/// When to try a failed write again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(Instant),
    /// The budget is spent: leave the work for the next run.
    GiveUp,
}

/// A log line due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The first failure of an outage, or a failure of another cause than before.
    Began { cause: Cause },
    /// Still failing, at most once per [`SUMMARY_EVERY`].
    Ongoing {
        failing_for: Duration,
        failures: u64,
    },
    /// Writes work again.
    Healed { after: Duration, failures: u64 },
}

impl Notice {
    /// Writes the line. `writes` names them (`ledger`, `dead-letter`); `waiting` says what
    /// waits on them (`12 objects`); `error` is the last failure (none when healed).
    pub fn log(&self, writes: &str, waiting: &str, error: Option<&StoreError>) {
        let location = error.map_or("", |e| e.location.as_str());
        let error = error.map(ToString::to_string).unwrap_or_default();
        match *self {
            Notice::Began {
                cause: Cause::Outage,
            } => tracing::warn!(
                "state {writes} writes are failing, {waiting} waiting; trying again with \
                 backoff (up to {}s), with a summary every minute until they work: {error}",
                MAX_BACKOFF.as_secs()
            ),
            Notice::Began { cause } => tracing::warn!(
                "{}; {waiting} waiting, trying again with backoff: {error}",
                cause.headline(location)
            ),
            Notice::Ongoing {
                failing_for,
                failures,
            } => tracing::warn!(
                "state {writes} writes failing for {}, {waiting} waiting ({failures} failed \
                 attempts): {error}",
                human(failing_for)
            ),
            Notice::Healed { after, failures } => tracing::info!(
                "state {writes} writes work again after {} ({failures} failed attempts)",
                human(after)
            ),
        }
    }
}

/// `45s`, `3m 12s`, `2h 5m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

/// What a failure decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub next: Next,
    pub notice: Option<Notice>,
}

#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    /// Backoff steps taken: tries that failed at or after their scheduled time.
    attempts: u32,
    next_try: Instant,
    failures: u64,
    cause: Cause,
    /// When the last notice was due.
    noticed: Instant,
}

/// The retry of failing state writes (see the module doc).
#[derive(Debug, Clone)]
pub struct StateRetry {
    /// `None`: retry until the work is abandoned.
    budget: Option<Duration>,
    failing: Option<Failing>,
}

impl StateRetry {
    pub fn new(budget: Option<Duration>) -> Self {
        StateRetry {
            budget,
            failing: None,
        }
    }

    /// Since when writes fail, if they do.
    pub fn failing_since(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.since)
    }

    /// When the next try is due, if writes are failing.
    pub fn next_try(&self) -> Option<Instant> {
        self.failing.as_ref().map(|f| f.next_try)
    }

    /// A write failed at `now`: when to try again, and the log line due, if any.
    pub fn on_failure(&mut self, now: Instant, error: &StoreError) -> Failed {
        let cause = Cause::of(error.kind);
        let mut notice = None;
        let failing = self.failing.get_or_insert_with(|| {
            notice = Some(Notice::Began { cause });
            Failing {
                since: now,
                attempts: 0,
                next_try: now,
                failures: 0,
                cause,
                noticed: now,
            }
        });
        failing.failures += 1;
        if notice.is_none() {
            if failing.cause != cause {
                failing.cause = cause;
                failing.noticed = now;
                notice = Some(Notice::Began { cause });
            } else if now.saturating_duration_since(failing.noticed) >= SUMMARY_EVERY {
                failing.noticed = now;
                notice = Some(Notice::Ongoing {
                    failing_for: now - failing.since,
                    failures: failing.failures,
                });
            }
        }
        // A try at or after its time steps the backoff; one made while another writer waits
        // for the next try (a new object's first write) joins that try.
        if now >= failing.next_try {
            failing.attempts += 1;
            failing.next_try = now + backoff(failing.attempts);
        }
        let next = match self.budget.map(|budget| failing.since + budget) {
            Some(deadline) if now >= deadline => Next::GiveUp,
            Some(deadline) => Next::RetryAt(failing.next_try.min(deadline)),
            None => Next::RetryAt(failing.next_try),
        };
        Failed { next, notice }
    }

    /// A write succeeded: the outage, if there was one, is over.
    pub fn on_success(&mut self, now: Instant) -> Option<Notice> {
        self.failing.take().map(|f| Notice::Healed {
            after: now.saturating_duration_since(f.since),
            failures: f.failures,
        })
    }
}

/// The wait after the `attempts`-th failed try: 1 s, 2 s, 4 s … 30 s.
fn backoff(attempts: u32) -> Duration {
    BASE.saturating_mul(1 << attempts.min(6)).min(MAX_BACKOFF)
}

/// A [`StateRetry`] shared by concurrent writers (the objects of a pipeline, each recording
/// itself in the ledger), with the count of writers waiting on it for the log.
#[derive(Debug)]
pub struct SharedRetry {
    retry: Mutex<StateRetry>,
    waiting: AtomicUsize,
}

impl SharedRetry {
    pub fn new(budget: Option<Duration>) -> Self {
        SharedRetry {
            retry: Mutex::new(StateRetry::new(budget)),
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn on_failure(&self, now: Instant, error: &StoreError) -> Failed {
        self.lock().on_failure(now, error)
    }

    pub fn on_success(&self, now: Instant) -> Option<Notice> {
        self.lock().on_success(now)
    }

    /// Counts a writer as waiting until the guard is dropped.
    pub fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.waiting)
    }

    /// Writers waiting for a failed write to be tried again.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, StateRetry> {
        self.retry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A writer counted as waiting on a [`SharedRetry`].
pub struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: StoreErrorKind) -> StoreError {
        StoreError::new("put", "s3://b/ledger/k", kind, "answer")
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn backs_off_from_one_second_doubling_to_thirty() {
        let start = Instant::now();
        let mut retry = StateRetry::new(None);
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let Next::RetryAt(at) = retry
                .on_failure(now, &error(StoreErrorKind::Unavailable))
                .next
            else {
                panic!("an unbounded retry never gives up");
            };
            waits.push((at - now).as_secs());
            now = at;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry.failing_since(), Some(start));
        retry.on_success(now);
        assert_eq!(retry.failing_since(), None);
        let again = retry.on_failure(now, &error(StoreErrorKind::Unavailable));
        assert_eq!(again.next, Next::RetryAt(now + secs(1)), "a success resets");
    }

    #[test]
    fn a_writer_failing_while_another_waits_joins_its_try() {
        let start = Instant::now();
        let mut retry = StateRetry::new(None);
        let unavailable = error(StoreErrorKind::Unavailable);
        assert_eq!(
            retry.on_failure(start, &unavailable).next,
            Next::RetryAt(start + secs(1))
        );
        // 255 more objects fail before the try: they all try again with it.
        for i in 1..256 {
            let now = start + Duration::from_millis(i);
            assert_eq!(
                retry.on_failure(now, &unavailable).next,
                Next::RetryAt(start + secs(1))
            );
        }
        let at = start + secs(1);
        assert_eq!(
            retry.on_failure(at, &unavailable).next,
            Next::RetryAt(at + secs(2))
        );
    }

    #[test]
    fn a_budget_is_timed_from_the_first_failure_and_its_last_try_lands_on_the_deadline() {
        let start = Instant::now();
        let mut retry = StateRetry::new(Some(secs(10)));
        let unavailable = error(StoreErrorKind::Unavailable);
        let mut now = start;
        let mut tries = vec![];
        while let Next::RetryAt(at) = retry.on_failure(now, &unavailable).next {
            tries.push((at - start).as_secs());
            now = at;
        }
        assert_eq!(tries, [1, 3, 7, 10]);
        assert_eq!(now, start + secs(10));
        // Later writers give up at their first failure, until a write succeeds.
        assert_eq!(
            retry.on_failure(now + secs(5), &unavailable).next,
            Next::GiveUp
        );
        retry.on_success(now + secs(6));
        assert!(matches!(
            retry.on_failure(now + secs(7), &unavailable).next,
            Next::RetryAt(_)
        ));
        let mut none = StateRetry::new(Some(Duration::ZERO));
        assert_eq!(none.on_failure(start, &unavailable).next, Next::GiveUp);
    }

    #[test]
    fn notices_once_per_cause_then_once_a_minute_then_when_healed() {
        let start = Instant::now();
        let mut retry = StateRetry::new(None);
        let mut notices = Vec::new();
        // An hour of failures from 256 writers, each trying every second.
        for s in 0..3600 {
            for w in 0..256 {
                let now = start + secs(s) + Duration::from_micros(w);
                notices.extend(
                    retry
                        .on_failure(now, &error(StoreErrorKind::Unavailable))
                        .notice,
                );
            }
        }
        assert_eq!(
            notices[0],
            Notice::Began {
                cause: Cause::Outage
            }
        );
        assert_eq!(notices.len(), 60, "one, then one a minute: {notices:?}");
        assert!(matches!(
            notices[1],
            Notice::Ongoing { failing_for, failures }
                if failing_for == secs(60) && failures == 60 * 256 + 1
        ));
        let healed = retry.on_success(start + secs(3600));
        assert_eq!(
            healed,
            Some(Notice::Healed {
                after: secs(3600),
                failures: 3600 * 256
            })
        );
        assert_eq!(retry.on_success(start + secs(3601)), None, "healed once");
    }

    #[test]
    fn a_denied_write_is_its_own_cause_and_is_retried() {
        let start = Instant::now();
        let mut retry = StateRetry::new(None);
        let first = retry.on_failure(start, &error(StoreErrorKind::Unavailable));
        assert_eq!(
            first.notice,
            Some(Notice::Began {
                cause: Cause::Outage
            })
        );
        let denied = retry.on_failure(start + secs(1), &error(StoreErrorKind::Denied));
        assert_eq!(
            denied.notice,
            Some(Notice::Began {
                cause: Cause::Denied
            }),
            "a new cause is logged at once"
        );
        assert!(matches!(denied.next, Next::RetryAt(_)), "and retried");
        assert_eq!(
            retry
                .on_failure(start + secs(3), &error(StoreErrorKind::Denied))
                .notice,
            None
        );
        assert_eq!(retry.failing_since(), Some(start));
        let headline = Cause::Denied.headline("s3://b/ledger/k");
        assert!(
            headline.contains("permission denied writing the state at s3://b/ledger/k")
                && headline.contains("check the credentials/role")
                && !headline.contains("outage"),
            "{headline}"
        );
        assert_eq!(Cause::of(StoreErrorKind::Invalid), Cause::Refused);
        assert_eq!(Cause::of(StoreErrorKind::Throttled), Cause::Outage);
    }

    #[test]
    fn shared_retry_counts_its_waiting_writers() {
        let shared = SharedRetry::new(None);
        let a = shared.wait();
        let b = shared.wait();
        assert_eq!(shared.waiting(), 2);
        drop(a);
        assert_eq!(shared.waiting(), 1);
        drop(b);
        assert_eq!(shared.waiting(), 0);
    }
}
