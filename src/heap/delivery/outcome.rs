//! Where every event ends. This module owns delivery's invariant.
//!
//! # Guarantee
//! Every event submitted to delivery ends in exactly one of these places, recorded on its
//! unit's [`Tracker`] only when it is final:
//! - **accepted**: a request holding it got a 2xx from Heap;
//! - **skipped** by policy: it has no identity under the configured identity fields;
//! - **parked**: written as a dead letter, durably, before it is counted;
//! - **given back** unfinished: its dead letter could not be written within a bounded run's
//!   budget. Its object is not recorded, so the next run reads it again.
//! - **withdrawn** unsent: its unit was withdrawn ([`Tracker::withdraw`]: the object was
//!   abandoned at a stop, or its read failed) before the event was sent. It is dropped from
//!   delivery's queues, never sent, never parked; its object is not recorded, so the next
//!   run reads it again. An event already on the wire when its unit is withdrawn ends as
//!   Heap answers (accepted), or withdrawn if the answer would have it retried or parked.
//!
//! A configuration error from Heap (401, 403, 404, a redirect) stops delivery with the events
//! still unresolved: nothing is parked, nothing is dropped, and a later run sends them again.
//! Heap may receive an event more than once (a timeout after Heap stored it, a crash before
//! the ledger recorded it); the idempotency key, the Currents event id, makes repeats no-ops.
//!
//! Only the delivery module resolves events ([`Tracker::resolve`] is `pub(super)`); everyone
//! else reads the counts.
//!
//! # The ended prefix
//! Each event carries its index in its object ([`Submission::record`], from 0), and its
//! tracker keeps the **ended prefix** ([`Tracker::ended_prefix`]): the N such that every record
//! in `[0, N)` ended *finally*: accepted, skipped, or parked (its dead letter written). A
//! checkpoint taken from it never covers an event that could still need sending, so a resume
//! at N loses nothing. A record given back or withdrawn never ends finally: the prefix stops
//! before it for good, and the object is read again from there. A resumed unit
//! ([`Tracker::resuming`] at `first`) starts its prefix at `first`: the records before it
//! ended in an earlier run. Records end in any order (requests answer out of order, a parked
//! event waits for its write); memory stays bounded by the events in flight, because the
//! tracker keeps the prefix and the runs of records ended ahead of it, and each gap between
//! runs holds an event still in flight.
//!
//! # A second output
//! With user properties on, a record may also yield an update for the properties lane. That
//! part is tracked by the unit's **partner** tracker ([`Tracker::partner`]), which counts
//! how updates ended and keeps the records it still waits for. The unit's prefix is the
//! lower of its own and the partner's first record still open (or given back / withdrawn);
//! its waits, unfinished and withdrawn counts include the partner's. So a record is behind a
//! checkpoint only when its event **and** its update ended finally. The partner registers a
//! record ([`Tracker::expect`]) when delivery takes the event in, before either part can end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::currents::event::CustomHttpEvent;

/// One event to deliver, with where it came from and whom to tell how it ended.
pub struct Submission {
    pub event: CustomHttpEvent,
    /// The Currents object key, recorded with dead letters.
    pub object: Arc<str>,
    pub tracker: Arc<Tracker>,
    /// The event's index in its object (from 0): what the ended prefix counts.
    pub record: u64,
    /// What to send of it.
    pub parts: Parts,
}

/// What delivery sends of a submitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// The track event, and its user-property update when that output is on (a Currents
    /// object's events).
    EventAndUpdate,
    /// The track event only (a replayed event's letter: its update, if any, went out when
    /// it was first read, and an old value must not be sent again).
    Event,
    /// The user-property update only (a replayed update's letter), resolved on the
    /// submission's own tracker.
    Update,
}

impl Parts {
    /// What a dead letter re-sends.
    pub fn of_letter(output: crate::deadletter::Output) -> Self {
        match output {
            crate::deadletter::Output::Event => Parts::Event,
            crate::deadletter::Output::UserProperties => Parts::Update,
        }
    }
}

/// Where an event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Accepted,
    Skipped,
    Parked,
    GivenBack,
    Withdrawn,
}

/// Counts how the events of one unit of work (an object, a replay) ended.
#[derive(Debug, Default)]
pub struct Tracker {
    delivered: AtomicU64,
    skipped: AtomicU64,
    parked: AtomicU64,
    unfinished: AtomicU64,
    withdrawn: AtomicU64,
    changed: Notify,
    /// Cancelled when the unit is withdrawn; a child of the token that abandons it.
    withdrawal: CancellationToken,
    /// Wakes the delivery that holds this unit's events, so it drops them at once.
    holder: std::sync::OnceLock<Arc<Notify>>,
    /// Which records ended finally: the ended prefix.
    ended: Mutex<Ended>,
    /// The tracker of the unit's user-property updates, once one was taken in.
    partner: std::sync::OnceLock<Arc<Tracker>>,
    /// As a partner: the records taken in and not yet ended, and the first that never will.
    open: Mutex<Open>,
}

/// A partner's records still open, and the first one given back or withdrawn.
#[derive(Debug, Default)]
struct Open {
    records: std::collections::BTreeSet<u64>,
    stop: Option<u64>,
}

impl Open {
    /// The first record that has not ended finally (open, or stopped).
    fn first(&self) -> Option<u64> {
        match (self.records.first().copied(), self.stop) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The records of one unit that ended finally, kept as the prefix and the runs ended ahead of
/// it, so its size follows the gaps (events in flight), not the records.
#[derive(Debug, Default)]
struct Ended {
    /// Every record before it ended finally.
    prefix: u64,
    /// Runs of records ended ahead of the prefix: start → end (exclusive), disjoint, none
    /// touching another or the prefix.
    ahead: BTreeMap<u64, u64>,
    /// The first record given back or withdrawn: the prefix never passes it.
    stop: Option<u64>,
}

impl Ended {
    fn starting_at(first: u64) -> Self {
        Ended {
            prefix: first,
            ..Ended::default()
        }
    }

    /// Record `record` ended finally.
    fn ended(&mut self, record: u64) {
        if record < self.prefix || self.stop.is_some_and(|stop| record >= stop) {
            // Before the prefix: already counted (or before a resume's first record).
            // Past a stop: the prefix can never reach it, so it is not kept.
            return;
        }
        let (mut start, mut end) = (record, record + 1);
        // Merge with the run ending at `record` and the one starting right after it.
        if let Some((&s, &e)) = self.ahead.range(..=record).next_back() {
            if e > record {
                return; // Already ended (not expected: each record ends once).
            }
            if e == record {
                self.ahead.remove(&s);
                start = s;
            }
        }
        if let Some(e) = self.ahead.remove(&end) {
            end = e;
        }
        if start == self.prefix {
            self.prefix = end;
        } else {
            self.ahead.insert(start, end);
        }
    }

    /// Record `record` will never end finally in this run.
    fn stopped(&mut self, record: u64) {
        if record < self.prefix || self.stop.is_some_and(|stop| stop <= record) {
            return;
        }
        self.stop = Some(record);
        // Runs past the stop can never join the prefix: drop them.
        let _ = self.ahead.split_off(&record);
    }
}

impl Tracker {
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Acquire)
    }
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Acquire)
    }
    /// Events (and user-property updates) given back: their object must not be recorded.
    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Acquire) + self.partner_count(|p| p.unfinished())
    }
    /// Events (and updates) dropped unsent because the unit was withdrawn.
    pub fn withdrawn(&self) -> u64 {
        self.withdrawn.load(Ordering::Acquire) + self.partner_count(|p| p.withdrawn())
    }
    /// This tracker's own records that ended one way or another (not its partner's).
    pub fn resolved(&self) -> u64 {
        [
            &self.delivered,
            &self.skipped,
            &self.parked,
            &self.unfinished,
            &self.withdrawn,
        ]
        .iter()
        .map(|c| c.load(Ordering::Acquire))
        .sum()
    }

    fn partner_count(&self, count: impl Fn(&Tracker) -> u64) -> u64 {
        self.partner.get().map_or(0, |p| count(p))
    }

    /// The tracker of this unit's user-property updates (created on first use): withdrawn
    /// with the unit, and part of its prefix, waits and counts (see the module docs).
    pub fn partner(&self) -> Arc<Tracker> {
        self.partner
            .get_or_init(|| {
                Arc::new(Tracker {
                    withdrawal: self.withdrawal.child_token(),
                    ..Tracker::default()
                })
            })
            .clone()
    }

    /// As a partner: `record` was taken in and must end before the unit's prefix passes it.
    pub(super) fn expect(&self, record: u64) {
        self.open().records.insert(record);
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// As a partner: whether every record taken in has ended.
    fn all_ended(&self) -> bool {
        self.open().records.is_empty()
    }

    /// A tracker withdrawn when `abandon` is cancelled (or by [`Tracker::withdraw`]).
    pub fn under(abandon: &CancellationToken) -> Self {
        Tracker::resuming(abandon, 0)
    }

    /// A tracker whose unit's records before `first` ended in an earlier run (a resume at
    /// record `first`); withdrawn with `abandon` like [`Tracker::under`].
    pub fn resuming(abandon: &CancellationToken, first: u64) -> Self {
        Tracker {
            withdrawal: abandon.child_token(),
            ended: Mutex::new(Ended::starting_at(first)),
            ..Tracker::default()
        }
    }

    /// N such that every record in `[0, N)` ended finally: accepted, skipped by policy, or
    /// parked durably. A record given back or withdrawn never ends finally, so the prefix
    /// stops before it for good (see the module docs).
    pub fn ended_prefix(&self) -> u64 {
        let own = self.ended().prefix;
        match self.partner.get().and_then(|p| p.open().first()) {
            Some(first) => own.min(first),
            None => own,
        }
    }

    fn ended(&self) -> std::sync::MutexGuard<'_, Ended> {
        // Nothing panics while holding it; a poisoned lock still holds consistent data.
        self.ended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Withdraws the unit: delivery sends none of its events from now on, parks none, and
    /// drops those it holds (resolved [`Resolution::Withdrawn`]). Requests already on the
    /// wire are answered as usual.
    pub fn withdraw(&self) {
        self.withdrawal.cancel();
        if let Some(holder) = self.holder.get() {
            holder.notify_one();
        }
    }

    /// Whether the unit was withdrawn (or the token it lives under was cancelled).
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawal.is_cancelled()
    }

    /// The delivery holding this unit's events registers its wake-up (once).
    pub(super) fn held_by(&self, holder: &Arc<Notify>) {
        if self.holder.get().is_none() {
            let _ = self.holder.set(holder.clone());
        }
    }

    /// Waits until `total` events have ended one way or another, and every user-property
    /// update taken in with them.
    pub async fn wait_resolved(&self, total: u64) {
        loop {
            let changed = self.changed.notified();
            if self.resolved() >= total {
                break;
            }
            changed.await;
        }
        // Updates are taken in with their events, so the partner (if any) exists by now.
        if let Some(partner) = self.partner.get() {
            loop {
                let changed = partner.changed.notified();
                if partner.all_ended() {
                    return;
                }
                changed.await;
            }
        }
    }

    /// Record `record` of the unit ended as `resolution`. The prefix moves before the counts,
    /// so whoever sees an event counted sees the prefix that includes it.
    pub(super) fn resolve(&self, resolution: Resolution, record: u64) {
        {
            let mut open = self.open();
            if open.records.remove(&record)
                && matches!(resolution, Resolution::GivenBack | Resolution::Withdrawn)
            {
                open.stop = Some(open.stop.map_or(record, |s| s.min(record)));
            }
        }
        match resolution {
            Resolution::Accepted | Resolution::Skipped | Resolution::Parked => {
                self.ended().ended(record)
            }
            Resolution::GivenBack | Resolution::Withdrawn => self.ended().stopped(record),
        }
        let counter = match resolution {
            Resolution::Accepted => &self.delivered,
            Resolution::Skipped => &self.skipped,
            Resolution::Parked => &self.parked,
            Resolution::GivenBack => &self.unfinished,
            Resolution::Withdrawn => &self.withdrawn,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_grows_only_over_records_ended_finally_in_any_order() {
        let tracker = Tracker::default();
        for record in [3, 1, 5] {
            tracker.resolve(Resolution::Accepted, record);
        }
        assert_eq!(tracker.ended_prefix(), 0, "record 0 is still in flight");
        tracker.resolve(Resolution::Skipped, 0);
        assert_eq!(tracker.ended_prefix(), 2);
        tracker.resolve(Resolution::Parked, 2);
        assert_eq!(tracker.ended_prefix(), 4, "3 had ended ahead");
        assert_eq!(tracker.ended().ahead.len(), 1, "only the run 5..6 is kept");
        tracker.resolve(Resolution::GivenBack, 4);
        tracker.resolve(Resolution::Accepted, 6);
        assert_eq!(tracker.ended_prefix(), 4, "given back: stopped for good");
        assert!(
            tracker.ended().ahead.is_empty(),
            "nothing past a stop is kept"
        );
    }

    #[test]
    fn memory_follows_the_gaps_not_the_records() {
        let tracker = Tracker::default();
        // Record 0 is held (say, a slow request) while a million records end behind it.
        for record in 1..1_000_000 {
            tracker.resolve(Resolution::Accepted, record);
        }
        assert_eq!(tracker.ended().ahead.len(), 1, "one run");
        tracker.resolve(Resolution::Accepted, 0);
        assert_eq!(tracker.ended_prefix(), 1_000_000);
    }

    #[test]
    fn a_resumed_unit_starts_at_its_first_record() {
        let tracker = Tracker::resuming(&CancellationToken::new(), 100);
        assert_eq!(tracker.ended_prefix(), 100);
        tracker.resolve(Resolution::Accepted, 101);
        assert_eq!(tracker.ended_prefix(), 100);
        tracker.resolve(Resolution::Accepted, 100);
        assert_eq!(tracker.ended_prefix(), 102);
    }

    #[test]
    fn a_record_with_an_update_ends_only_when_both_parts_ended() {
        let tracker = Tracker::default();
        let partner = tracker.partner();
        partner.expect(1);
        for record in 0..3 {
            tracker.resolve(Resolution::Accepted, record);
        }
        assert_eq!(tracker.ended_prefix(), 1, "record 1's update is still open");
        partner.resolve(Resolution::Parked, 1);
        assert_eq!(tracker.ended_prefix(), 3);
        partner.expect(3);
        tracker.resolve(Resolution::Accepted, 3);
        partner.resolve(Resolution::GivenBack, 3);
        tracker.resolve(Resolution::Accepted, 4);
        assert_eq!(
            tracker.ended_prefix(),
            3,
            "an update given back stops the prefix"
        );
        assert_eq!(tracker.unfinished(), 1, "and the unit is not recorded");
        assert_eq!(
            (tracker.delivered(), tracker.resolved()),
            (5, 5),
            "events only"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_unit_waits_for_its_updates_too() {
        let tracker = Arc::new(Tracker::default());
        let partner = tracker.partner();
        partner.expect(0);
        tracker.resolve(Resolution::Accepted, 0);
        let waiter = tokio::spawn({
            let tracker = tracker.clone();
            async move { tracker.wait_resolved(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the update is still open");
        partner.resolve(Resolution::Accepted, 0);
        waiter.await.unwrap();
        tracker.withdraw();
        assert!(partner.is_withdrawn(), "withdrawn with its unit");
    }
}
