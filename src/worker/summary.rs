//! How a run ended: what failed, what remains undone, and the outcome that decides the exit
//! code. The counts themselves are read from the metrics ([`crate::telemetry`]), where every
//! outcome is counted once.
//!
//! # Exit codes
//! | code | outcome | when |
//! |---|---|---|
//! | 0 | [`Outcome::Finished`] | everything asked for is finished; also a long-lived `run` stopped by a signal |
//! | 1 | [`Outcome::Fatal`] | delivery cannot go on (Heap answered 401/403/404): the message says what to fix |
//! | 3 | [`Outcome::FinishedWithFailures`] | everything was tried, but events were parked or objects failed |
//! | 4 | [`Outcome::Incomplete`] | a bounded run (`run --once`, `backfill`) stopped before its work was done |
//!
//! (2, a usage or configuration error, is decided before the engine starts.) The numbers
//! are written once, in `commands::worker::Exit::code`, which an `Outcome` becomes.
//!
//! A long-lived `run` stopped by SIGTERM exits 0 whatever it parked earlier in its life: a
//! stop is how every rollout ends, parked events are already reported by `/metrics`, the logs
//! and `status`, and an exit code of 3 would mark every rollout as a failed pod.

use std::collections::BTreeMap;

use super::pipeline::ObjectResult;
use super::scheduler::Ended;
use crate::telemetry::Counts;

/// How a run ended, and so its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Finished,
    FinishedWithFailures,
    /// Work remains; running the same command again resumes it.
    Incomplete {
        reason: String,
    },
    /// What to fix.
    Fatal(String),
}

/// Why an object is not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfinished {
    /// Queued, but the run stopped before it started.
    NotStarted,
    /// Cut short in flight.
    Abandoned,
    /// A source or state error, or a panic: the reason.
    Failed(String),
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unfinished::NotStarted => f.write_str("not started (stopped)"),
            Unfinished::Abandoned => f.write_str("abandoned in flight (stopped)"),
            Unfinished::Failed(reason) => f.write_str(reason),
        }
    }
}

/// What the counters do not hold: which objects failed and which remain, by key.
#[derive(Debug, Default)]
pub struct Summary {
    /// `key: reason` of objects recorded failed.
    pub failures: Vec<String>,
    /// Objects not finished: what a rerun will pick up.
    pub remaining: Vec<(String, Unfinished)>,
}

impl Summary {
    pub fn add(&mut self, ended: &Ended) {
        match ended {
            Ended::Panicked { key, message } => self.remaining.push((
                key.clone(),
                Unfinished::Failed(format!("its task panicked: {message}")),
            )),
            Ended::Object(ObjectResult::Failed(entry)) => self.failures.push(format!(
                "{}: {}",
                entry.key,
                entry.reason.as_deref().unwrap_or("failed")
            )),
            Ended::Object(
                ObjectResult::Retry { key, reason }
                | ObjectResult::Unrecorded { key, reason }
                | ObjectResult::Gone { key, reason },
            ) => self
                .remaining
                .push((key.clone(), Unfinished::Failed(reason.clone()))),
            Ended::Object(ObjectResult::Abandoned { key }) => {
                self.remaining.push((key.clone(), Unfinished::Abandoned))
            }
            Ended::Object(ObjectResult::Done(_)) => {}
        }
        // A later pass over a range finished what an earlier one left.
        if let Ended::Object(ObjectResult::Done(entry) | ObjectResult::Failed(entry)) = ended {
            self.remaining.retain(|(key, _)| *key != entry.key);
        }
    }

    /// Objects queued but not started because the run stopped.
    pub fn not_started(&mut self, keys: Vec<String>) {
        self.remaining
            .extend(keys.into_iter().map(|k| (k, Unfinished::NotStarted)));
    }

    pub fn not_started_count(&self) -> usize {
        self.remaining
            .iter()
            .filter(|(_, why)| *why == Unfinished::NotStarted)
            .count()
    }
}

/// What the engine reports when it returns.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    /// The counters when the run ended.
    pub counts: Counts,
    pub outcome: Outcome,
    pub dry_run: bool,
    /// A range's (`backfill` run here) final progress, as a worker would write it.
    pub backfill: Option<crate::handover::BackfillProgress>,
}

/// How many remaining objects the report names; the rest are counted.
const REMAINING_SHOWN: usize = 20;

impl Report {
    /// What the run did (objects, events per type, delivery, failures), without its
    /// outcome: for a range handed over mid-run, whose outcome is the worker's.
    pub fn render_counts(&self) -> String {
        let (s, c) = (&self.summary, &self.counts);
        let (sent, parked) = if self.dry_run {
            ("would be sent", "would be parked")
        } else {
            ("sent", "parked")
        };
        let mut out = format!(
            "objects: {} done, {} failed, {} to retry, {} abandoned, {} panicked, {} not started\n",
            c.objects_done,
            c.objects_failed,
            c.objects_retried,
            c.objects_abandoned,
            c.objects_panicked,
            s.not_started_count()
        );
        let total = c.total();
        out += &format!(
            "events: {} read, {} {sent}, {} skipped (no identity), {} {parked}\n",
            total.read, total.sent, total.skipped_no_identity, total.parked
        );
        for (event_type, t) in &c.per_type {
            out += &format!(
                "  {event_type}: {} read, {} {sent}, {} skipped, {} {parked}\n",
                t.read, t.sent, t.skipped_no_identity, t.parked
            );
        }
        out += &render_user_properties(c, sent, parked);
        out += &render_delivery(c);
        for failure in &s.failures {
            out += &format!("failed: {failure}\n");
        }
        out
    }

    /// The closing report, for stdout.
    pub fn render(&self) -> String {
        let (s, mut out) = (&self.summary, self.render_counts());
        if let Outcome::Incomplete { reason } = &self.outcome {
            out += &format!("incomplete: {reason}\n");
            for (key, why) in s.remaining.iter().take(REMAINING_SHOWN) {
                out += &format!("remaining: {key}: {why}\n");
            }
            if s.remaining.len() > REMAINING_SHOWN {
                out += &format!(
                    "remaining: ... and {} more\n",
                    s.remaining.len() - REMAINING_SHOWN
                );
            }
            out += "Run the same command again to resume: finished objects are skipped.\n";
        }
        out
    }
}

/// What delivery did beyond the per-type counts (nothing when nothing was sent).
pub fn render_delivery(counts: &Counts) -> String {
    if counts.requests.is_empty() {
        return String::new();
    }
    format!(
        "heap: {}, {} retries, {} bisections, {} rate-limit waits, {} values cut to 1023 characters, {} colliding custom properties dropped\n",
        by_status(&counts.requests),
        counts.retries,
        counts.bisections,
        counts.rate_limit_waits,
        counts.values_truncated,
        counts.collisions_dropped
    ) + &render_checkpoints(counts)
}

/// The user-properties line (nothing when that output made no update): how updates ended,
/// and the requests to `add_user_properties` by status.
fn render_user_properties(counts: &Counts, sent: &str, parked: &str) -> String {
    let n = |outcome: &str| {
        counts
            .user_property_updates
            .get(outcome)
            .copied()
            .unwrap_or(0)
    };
    if counts.user_property_updates.values().all(|n| *n == 0) {
        return String::new();
    }
    let mut out = format!(
        "user-property updates: {} {sent}, {} skipped (no identity), {} superseded by a newer one, {} {parked}\n",
        n("accepted"),
        n("no_identity"),
        n("superseded"),
        n("parked")
    );
    if !counts.user_property_requests.is_empty() {
        out += &format!(
            "heap add_user_properties: {}\n",
            by_status(&counts.user_property_requests)
        );
    }
    out
}

/// `N requests (a×200, b×429)`: requests counted by answer status.
fn by_status(requests: &BTreeMap<String, u64>) -> String {
    let statuses: Vec<String> = requests.iter().map(|(s, n)| format!("{n}×{s}")).collect();
    format!(
        "{} requests ({})",
        requests.values().sum::<u64>(),
        statuses.join(", ")
    )
}

/// The checkpoints line (nothing when none were written or resumed from): what they cost in
/// writes, and what resuming saved.
fn render_checkpoints(counts: &Counts) -> String {
    if counts.progress_writes + counts.progress_write_failures + counts.objects_resumed == 0 {
        return String::new();
    }
    format!(
        "checkpoints: {} written, {} failed; {} objects resumed, {} events not sent again\n",
        counts.progress_writes,
        counts.progress_write_failures,
        counts.objects_resumed,
        counts.events_resumed_past
    )
}
