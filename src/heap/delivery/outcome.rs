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
}

/// Counts how the events of one unit of work (an object, a replay) ended.
#[derive(Debug, Default)]
pub struct Tracker {
    delivered: AtomicU64,
    skipped: AtomicU64,
    parked: AtomicU64,
    unfinished: AtomicU64,
    changed: Notify,
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
    pub fn resolved(&self) -> u64 {
        self.delivered() + self.skipped() + self.parked() + self.unfinished()
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
        };
        counter.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}
