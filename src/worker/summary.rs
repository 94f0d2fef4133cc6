//! How a run ended: per event type counts, what remains undone, and the outcome that decides
//! the exit code.
//!
//! # Exit codes
//! | code | outcome | when |
//! |---|---|---|
//! | 0 | [`Outcome::Finished`] | everything asked for is finished; also a long-lived `run` stopped by a signal |
//! | 1 | [`Outcome::Fatal`] | delivery cannot go on (Heap answered 401/403/404): the message says what to fix |
//! | 3 | [`Outcome::FinishedWithFailures`] | everything was tried, but events were parked or objects failed |
//! | 4 | [`Outcome::Incomplete`] | a bounded run (`run --once`, `backfill`) stopped before its work was done |
//!
//! (2, a usage or configuration error, is decided before the engine starts.)
//!
//! A long-lived `run` stopped by SIGTERM exits 0 whatever it parked earlier in its life: a
//! stop is how every rollout ends, parked events are already reported by `/metrics`, the logs
//! and `status`, and an exit code of 3 would mark every rollout as a failed pod.

use std::collections::BTreeMap;

use super::scheduler::Ended;
use crate::currents::key::CurrentsKey;
use crate::heap::delivery::DeliveryStats;
use crate::pipeline::ObjectResult;

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

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Finished => 0,
            Outcome::Fatal(_) => 1,
            Outcome::FinishedWithFailures => 3,
            Outcome::Incomplete { .. } => 4,
        }
    }
}

/// Per event type and overall counts for the closing report.
#[derive(Debug, Default)]
pub struct Summary {
    pub objects_done: u64,
    pub objects_failed: u64,
    pub objects_retry: u64,
    pub objects_abandoned: u64,
    pub objects_panicked: u64,
    /// Queued but never started, because the run stopped.
    pub objects_not_started: u64,
    pub events: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub parked: u64,
    /// event type → [read, delivered, skipped, parked].
    pub per_type: BTreeMap<String, [u64; 4]>,
    pub failures: Vec<String>,
    /// Objects not finished, each with why: what a rerun will pick up.
    pub remaining: Vec<(String, String)>,
}

impl Summary {
    pub fn add(&mut self, ended: &Ended) {
        let result = match ended {
            Ended::Object(result) => result,
            Ended::Panicked { key, message } => {
                self.objects_panicked += 1;
                self.remaining
                    .push((key.clone(), format!("its task panicked: {message}")));
                return;
            }
        };
        match result {
            ObjectResult::Done(entry) | ObjectResult::Failed(entry) => {
                if matches!(result, ObjectResult::Done(_)) {
                    self.objects_done += 1;
                } else {
                    self.objects_failed += 1;
                    self.failures.push(format!(
                        "{}: {}",
                        entry.key,
                        entry.reason.as_deref().unwrap_or("failed")
                    ));
                }
                self.events += entry.events;
                self.delivered += entry.delivered;
                self.skipped += entry.skipped;
                self.parked += entry.parked;
                let event_type = CurrentsKey::parse(&entry.key)
                    .event_type
                    .unwrap_or("(outside the layout)");
                let counts = self.per_type.entry(event_type.to_string()).or_default();
                for (slot, n) in counts.iter_mut().zip([
                    entry.events,
                    entry.delivered,
                    entry.skipped,
                    entry.parked,
                ]) {
                    *slot += n;
                }
            }
            ObjectResult::Retry { key, reason } | ObjectResult::Unrecorded { key, reason } => {
                self.objects_retry += 1;
                tracing::warn!(object = %key, "the object will be tried again: {reason}");
                self.remaining.push((key.clone(), reason.clone()));
            }
            ObjectResult::Abandoned { key } => {
                self.objects_abandoned += 1;
                self.remaining
                    .push((key.clone(), "abandoned in flight (stopped)".into()));
            }
        }
    }

    /// Objects queued but not started because the run stopped.
    pub fn not_started(&mut self, keys: Vec<String>) {
        self.objects_not_started += keys.len() as u64;
        self.remaining.extend(
            keys.into_iter()
                .map(|k| (k, "not started (stopped)".to_string())),
        );
    }

    /// Objects that ended one way or another (for progress).
    pub fn objects_ended(&self) -> u64 {
        self.objects_done
            + self.objects_failed
            + self.objects_retry
            + self.objects_abandoned
            + self.objects_panicked
    }

    pub fn has_failures(&self) -> bool {
        self.parked > 0 || self.objects_failed > 0
    }
}

/// What the engine reports when it returns.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
    pub delivery: DeliveryStats,
    pub outcome: Outcome,
    pub dry_run: bool,
}

/// How many remaining objects the report names; the rest are counted.
const REMAINING_SHOWN: usize = 20;

impl Report {
    /// The closing report, for stdout.
    pub fn render(&self) -> String {
        let s = &self.summary;
        let (sent, parked) = if self.dry_run {
            ("would be sent", "would be parked")
        } else {
            ("sent", "parked")
        };
        let mut out = format!(
            "objects: {} done, {} failed, {} to retry, {} abandoned, {} panicked, {} not started\n",
            s.objects_done,
            s.objects_failed,
            s.objects_retry,
            s.objects_abandoned,
            s.objects_panicked,
            s.objects_not_started
        );
        out += &format!(
            "events: {} read, {} {sent}, {} skipped (no identity), {} {parked}\n",
            s.events, s.delivered, s.skipped, s.parked
        );
        for (event_type, [read, delivered, skipped, parked_n]) in &s.per_type {
            out += &format!(
                "  {event_type}: {read} read, {delivered} {sent}, {skipped} skipped, {parked_n} {parked}\n"
            );
        }
        out += &render_delivery(&self.delivery);
        for failure in &s.failures {
            out += &format!("failed: {failure}\n");
        }
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

/// What delivery did beyond the per-type counts (nothing in a dry run).
pub fn render_delivery(stats: &DeliveryStats) -> String {
    if stats.requests.is_empty() {
        return String::new();
    }
    let mut statuses: Vec<String> = stats
        .requests
        .iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect();
    statuses.sort();
    format!(
        "heap: {} requests ({}), {} retries, {} bisections, {} rate-limit waits ({}s), {} values cut to 1023 characters, {} colliding custom properties dropped\n",
        stats.requests.values().sum::<u64>(),
        statuses.join(", "),
        stats.retries,
        stats.bisections,
        stats.pacing_waits,
        stats.pacing_wait_time.as_secs(),
        stats.truncated_values,
        stats.collisions_dropped
    )
}
