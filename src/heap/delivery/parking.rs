//! Dead letters on their way to the state store, and their accounting.
//!
//! An event counts as parked only after its dead letter was written. A failed write keeps the
//! letters queued and tries again by the state-write retry ([`crate::store::retry`]: its
//! backoff, causes and once-per-cause logging), for as long as the store is down, or up to
//! `retry_max` (bounded runs); past it, the events are given back unfinished (see
//! [`super::outcome`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::{Resolution, Tracker};
use crate::deadletter::{DeadLetter, DeadLetterStore, Output};
use crate::store::retry::{Cause, Next, StateRetry};
use crate::telemetry::Metrics;
use crate::telemetry::events::{
    EventsParked, StateWriteFailed, StateWriteSucceeded, UserPropertyUpdates,
};

/// An event waiting for its dead letter to be written.
pub struct ToPark {
    pub letter: DeadLetter,
    pub event_type: Arc<str>,
    pub tracker: Arc<Tracker>,
    /// Its index in its object: it ends (for the ended prefix) only once the letter is written.
    pub record: u64,
}

pub struct Parking {
    store: Arc<DeadLetterStore>,
    queue: Vec<ToPark>,
    /// Its budget: `None`, retry until delivery ends.
    retry: StateRetry,
}

impl Parking {
    pub fn new(store: Arc<DeadLetterStore>, retry_max: Option<Duration>) -> Self {
        Parking {
            store,
            queue: Vec::new(),
            retry: StateRetry::new(retry_max),
        }
    }

    pub fn push(&mut self, park: ToPark) {
        self.queue.push(park);
    }

    /// Takes out the letters of withdrawn units: they are not to be written.
    pub fn withdraw(&mut self) -> Vec<ToPark> {
        let (gone, kept) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|p| p.tracker.is_withdrawn());
        self.queue = kept;
        gone
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When a failed write is tried again, if letters are waiting for it.
    pub fn next_try(&self) -> Option<Instant> {
        self.retry.next_try().filter(|_| !self.queue.is_empty())
    }

    /// Writes the queued letters (one object per event type and hour), unless a failed write
    /// is still backing off.
    pub async fn flush(&mut self, now: Instant, metrics: &Metrics) {
        if self.queue.is_empty() || self.retry.next_try().is_some_and(|at| at > now) {
            return;
        }
        let letters: Vec<&DeadLetter> = self.queue.iter().map(|p| &p.letter).collect();
        let written = self.store.park(&letters).await;
        drop(letters);
        match written {
            Ok(_) => {
                if let Some(healed) = self.retry.on_success(now) {
                    healed.log("dead-letter", "", None);
                }
                StateWriteSucceeded.emit(metrics);
                self.resolve_all(metrics);
            }
            Err(e) => {
                let failed = self.retry.on_failure(now, &e);
                StateWriteFailed {
                    cause: &Cause::of(e.kind).headline(&e.location),
                    error: &e.to_string(),
                }
                .emit(metrics);
                if let Some(notice) = failed.notice {
                    let events = format!("{} events", self.queue.len());
                    notice.log("dead-letter", &events, Some(&e));
                }
                if failed.next == Next::GiveUp {
                    let failing_for = self
                        .retry
                        .failing_since()
                        .map_or(Duration::ZERO, |since| now - since);
                    tracing::error!(
                        events = self.queue.len(),
                        "cannot write dead letters for {}s, giving up: their objects are left unrecorded for the next run: {e}",
                        failing_for.as_secs()
                    );
                    for park in self.queue.drain(..) {
                        park.tracker.resolve(Resolution::GivenBack, park.record);
                    }
                }
            }
        }
    }

    /// Counts the written letters as parked, with one log line per event type.
    fn resolve_all(&mut self, metrics: &Metrics) {
        let mut by_type: BTreeMap<Arc<str>, BTreeMap<String, u64>> = BTreeMap::new();
        let mut updates: BTreeMap<String, u64> = BTreeMap::new();
        for park in self.queue.drain(..) {
            tracing::debug!(event_id = %park.letter.event.id, object = %park.letter.object, "parked: {}", park.letter.reason);
            if park.letter.output == Output::UserProperties {
                *updates.entry(park.letter.reason.clone()).or_insert(0) += 1;
                park.tracker.resolve(Resolution::Parked, park.record);
                continue;
            }
            *by_type
                .entry(park.event_type.clone())
                .or_default()
                .entry(park.letter.reason.clone())
                .or_insert(0) += 1;
            park.tracker.resolve(Resolution::Parked, park.record);
        }
        for (reason, count) in updates {
            tracing::warn!(
                count,
                "parked {count} user-property updates as dead letters (`replay --user-properties …` re-sends them): {reason}"
            );
            UserPropertyUpdates {
                outcome: "parked",
                count,
            }
            .emit(metrics);
        }
        for (event_type, reasons) in by_type {
            let reasons: Vec<(String, u64)> = reasons.into_iter().collect();
            EventsParked {
                event_type: &event_type,
                count: reasons.iter().map(|(_, n)| n).sum(),
                reasons: &reasons,
                dry_run: false,
            }
            .emit(metrics);
        }
    }
}
