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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::currents::event::CustomHttpEvent;

/// One event to deliver, with where it came from and whom to tell how it ended.
pub struct Submission {
    pub event: CustomHttpEvent,
    /// The Currents object key, recorded with dead letters.
    pub object: Arc<str>,
    pub tracker: Arc<Tracker>,
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
    /// Events given back: their object must not be recorded.
    pub fn unfinished(&self) -> u64 {
        self.unfinished.load(Ordering::Acquire)
    }
    /// Events dropped unsent because the unit was withdrawn.
    pub fn withdrawn(&self) -> u64 {
        self.withdrawn.load(Ordering::Acquire)
    }
    pub fn resolved(&self) -> u64 {
        self.delivered() + self.skipped() + self.parked() + self.unfinished() + self.withdrawn()
    }

    /// A tracker withdrawn when `abandon` is cancelled (or by [`Tracker::withdraw`]).
    pub fn under(abandon: &CancellationToken) -> Self {
        Tracker {
            withdrawal: abandon.child_token(),
            ..Tracker::default()
        }
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

    /// Waits until `total` events have ended one way or another.
    pub async fn wait_resolved(&self, total: u64) {
        loop {
            let changed = self.changed.notified();
            if self.resolved() >= total {
                return;
            }
            changed.await;
        }
    }

    pub(super) fn resolve(&self, resolution: Resolution) {
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
