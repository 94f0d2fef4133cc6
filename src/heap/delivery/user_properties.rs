//! The user-properties lane: updates in, bulk `add_user_properties` requests out, driven by
//! the same loop as events (see the driver in the parent module).
//!
//! # Protocol
//! 1. **Intake.** An update ([`Update`]) comes with its part: the record's partner tracker
//!    (or, replaying a letter of an update, the letter's own tracker). Each property is
//!    checked against `newest`, the latest stamp this run took in for that identity and
//!    property: an older one is dropped (superseded). An update left with nothing ends at
//!    once, skipped (`superseded`). Otherwise it is **merged** into the identity's pending
//!    entry, property by property, the newer stamp winning; the entry keeps every part.
//! 2. **Send.** One request at a time (so Heap applies merged values in the order they were
//!    taken in, and an older value can never overtake a newer one on the wire), only while
//!    the fence allows. A request holds up to 1,000 pending entries (one per identity) that
//!    fit the body limit and the pacer's room (its own ceiling, users per minute, lowered on
//!    429 like the events' budget).
//! 3. **Answer**, by the events' [`policy`]: accepted → every part ends accepted; retry →
//!    the entries wait and are merged with what arrived for their identities meanwhile
//!    (newer values win); rejected → the request is split in halves, sent next, down to one
//!    user, whose parts are parked (a letter per event, marked `user_properties`); fatal →
//!    delivery stops with everything unresolved, as for events.
//! 4. **Withdrawal.** Parts of withdrawn units are dropped unsent from pending entries, and
//!    from an answered request that would be retried or parked; an entry left without parts
//!    is dropped.
//!
//! `newest` is bounded ([`NEWEST_KEPT`] identity-property pairs, about 30 MB): past it, it
//! is cleared, and ordering then holds for what arrives after (the pending entries still
//! merge). The parts held (pending, split, on the wire) count toward delivery's
//! `max_pending`, so intake pauses while the lane is behind.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::outcome::{Resolution, Tracker};
use super::parking::ToPark;
use super::policy::{self, Action, Attempted};
use crate::currents::event::CustomHttpEvent;
use crate::deadletter::DeadLetter;
use crate::heap::client::{Reply, Transport};
use crate::heap::pacer::{Pacer, RateLimits};
use crate::heap::properties::map::{Stamp, Update};
use crate::heap::properties::{MAX_USERS_PER_REQUEST, PropertyConfig};
use crate::heap::retry::RetryPolicy;
use crate::telemetry::Metrics;
use crate::telemetry::events::{UserPropertyRequest, UserPropertyUpdates};
use fastrand::Rng;

/// Identity-property pairs remembered for ordering within a run (about 100 bytes each).
pub const NEWEST_KEPT: usize = 200_000;

/// Where one update came from and whom to tell how it ended.
pub struct Part {
    pub tracker: Arc<Tracker>,
    pub record: u64,
    /// The event it was made from, for its dead letter.
    pub event: CustomHttpEvent,
    pub object: Arc<str>,
}

/// One identity's merged properties and the parts they came from.
struct Entry {
    /// Arrival order: requests take the oldest entries first.
    seq: u64,
    identity: Arc<str>,
    properties: BTreeMap<String, (Json, Stamp)>,
    parts: Vec<Part>,
    /// Failed attempts, the first try, and when it may go again.
    attempt: u32,
    first_try: Option<Instant>,
    retry_at: Option<Instant>,
}

impl Entry {
    /// Takes in `other`'s parts and its properties where they are newer.
    fn merge(&mut self, other: Entry) {
        for (name, (value, stamp)) in other.properties {
            match self.properties.get(&name) {
                Some((_, mine)) if *mine >= stamp => {}
                _ => {
                    self.properties.insert(name, (value, stamp));
                }
            }
        }
        self.parts.extend(other.parts);
        self.seq = self.seq.min(other.seq);
        self.first_try = match (self.first_try, other.first_try) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.attempt = self.attempt.max(other.attempt);
        self.retry_at = match (self.retry_at, other.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// `{"identity":…,"properties":{…}}`.
    fn json(&self) -> Vec<u8> {
        let properties: Map<String, Json> = self
            .properties
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "identity": &*self.identity,
            "properties": properties,
        }))
        .expect("JSON values serialize")
    }
}

/// A request on the wire.
type Flight = JoinHandle<(Reply, std::time::Duration)>;

pub struct UserPropertiesLane {
    config: PropertyConfig,
    app_id: String,
    transport: Arc<dyn Transport>,
    pacer: Pacer,
    retry: RetryPolicy,
    max_body_bytes: usize,
    /// Entries waiting, one per identity.
    pending: HashMap<Arc<str>, Entry>,
    next_seq: u64,
    /// Parts held: pending, split or on the wire.
    parts: usize,
    /// Halves of a rejected request, sent next as they are.
    split: VecDeque<Vec<Entry>>,
    newest: HashMap<(Arc<str>, String), Stamp>,
    in_flight: Option<(Vec<Entry>, Instant, Flight)>,
}

/// What the driver must do after the lane handled something.
#[derive(Default)]
pub struct Effects {
    /// Letters to write (parts whose update Heap refused or that could not be sent).
    pub park: Vec<ToPark>,
    /// Heap refused the configuration: stop delivery.
    pub fatal: Option<String>,
}

impl UserPropertiesLane {
    pub fn new(
        config: PropertyConfig,
        app_id: String,
        transport: Arc<dyn Transport>,
        retry: RetryPolicy,
        max_body_bytes: usize,
    ) -> Self {
        let limits = RateLimits {
            app_events: config.users_per_minute,
            identity_events: 0,
            window: std::time::Duration::from_secs(60),
        };
        UserPropertiesLane {
            config,
            app_id,
            transport,
            pacer: Pacer::new(limits),
            retry,
            max_body_bytes,
            pending: HashMap::new(),
            next_seq: 0,
            parts: 0,
            split: VecDeque::new(),
            newest: HashMap::new(),
            in_flight: None,
        }
    }

    pub fn config(&self) -> &PropertyConfig {
        &self.config
    }

    /// Updates (parts) waiting or on the wire.
    pub fn held(&self) -> usize {
        self.parts
    }

    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.split.is_empty() || self.in_flight.is_some()
    }

    /// Takes one update in (step 1 of the protocol).
    pub fn push(&mut self, update: Update, part: Part, metrics: &Metrics) {
        if self.newest.len() >= NEWEST_KEPT {
            self.newest.clear();
        }
        let mut properties = BTreeMap::new();
        for (name, value) in update.properties {
            let key = (update.identity.clone(), name);
            match self.newest.get(&key) {
                Some(newer) if *newer > update.stamp => {}
                _ => {
                    self.newest.insert(key.clone(), update.stamp.clone());
                    properties.insert(key.1, (value, update.stamp.clone()));
                }
            }
        }
        if properties.is_empty() {
            UserPropertyUpdates {
                outcome: "superseded",
                count: 1,
            }
            .emit(metrics);
            part.tracker.resolve(Resolution::Skipped, part.record);
            return;
        }
        self.parts += 1;
        self.next_seq += 1;
        let entry = Entry {
            seq: self.next_seq,
            identity: update.identity,
            properties,
            parts: vec![part],
            attempt: 0,
            first_try: None,
            retry_at: None,
        };
        self.requeue(entry);
    }

    /// Merges `entry` into its identity's pending entry, or queues it.
    fn requeue(&mut self, entry: Entry) {
        match self.pending.get_mut(&entry.identity) {
            Some(pending) => pending.merge(entry),
            None => {
                self.pending.insert(entry.identity.clone(), entry);
            }
        }
    }

    /// The earliest moment something may be sent, when nothing can be now. Without room
    /// that is when the pacer frees some (nothing can go before, whatever waits); with room
    /// but nothing sent, the first entry's retry time (the scan of pending entries happens
    /// only then, while Heap is failing).
    pub fn next_wake(&mut self, now: Instant) -> Option<Instant> {
        if self.in_flight.is_some() || (self.pending.is_empty() && self.split.is_empty()) {
            return None;
        }
        if self.pacer.app_room(now) == 0 {
            return self.pacer.next_expiry(now).filter(|at| *at > now);
        }
        self.pending
            .values()
            .filter_map(|e| e.retry_at)
            .filter(|at| *at > now)
            .min()
    }

    /// Starts a request if none is on the wire and the pacer has room (step 2). It costs
    /// nothing when it cannot send, as the driver calls it on every wake (every event).
    pub fn dispatch(&mut self, now: Instant) -> Effects {
        let mut effects = Effects::default();
        if self.in_flight.is_some() || (self.pending.is_empty() && self.split.is_empty()) {
            return effects;
        }
        let room = usize::try_from(self.pacer.app_room(now)).unwrap_or(usize::MAX);
        if room == 0 {
            return effects;
        }
        let (batch, body) = match self.split.pop_front() {
            Some(half) if half.len() <= room => {
                let entries: Vec<Vec<u8>> = half.iter().map(Entry::json).collect();
                let body = self.body(&entries);
                (half, body)
            }
            Some(half) => {
                self.split.push_front(half);
                return effects;
            }
            None => self.compose(now, room.min(MAX_USERS_PER_REQUEST), &mut effects),
        };
        if batch.is_empty() {
            return effects;
        }
        let per_identity: HashMap<Arc<str>, u64> =
            batch.iter().map(|e| (e.identity.clone(), 1)).collect();
        self.pacer.start(&per_identity);
        let transport = self.transport.clone();
        let flight = tokio::spawn(async move {
            let started = Instant::now();
            let reply = transport.post(body).await;
            (reply, started.elapsed())
        });
        self.in_flight = Some((batch, now, flight));
        effects
    }

    /// Takes ready entries, in arrival order, up to `max` users and the body limit, and
    /// writes their body (each entry serialized once). An entry too large to go alone is
    /// parked; the first that does not fit beside the others ends the request.
    fn compose(
        &mut self,
        now: Instant,
        max: usize,
        effects: &mut Effects,
    ) -> (Vec<Entry>, Vec<u8>) {
        let overhead = self.body(&[]).len();
        let mut ready: Vec<(u64, Arc<str>)> = self
            .pending
            .values()
            .filter(|e| e.retry_at.is_none_or(|at| at <= now))
            .map(|e| (e.seq, e.identity.clone()))
            .collect();
        ready.sort_unstable();
        let mut size = overhead;
        let mut batch = Vec::new();
        let mut entries = Vec::new();
        for (_, identity) in ready {
            if batch.len() >= max {
                break;
            }
            let Some(entry) = self.pending.remove(&identity) else {
                continue;
            };
            let json = entry.json();
            let len = json.len() + 1;
            if overhead + len > self.max_body_bytes {
                let reason = format!(
                    "the user's properties take {len} bytes; a request body holds at most {} (--max-body-bytes)",
                    self.max_body_bytes
                );
                self.parts -= entry.parts.len();
                park_entry(entry, &reason, &mut effects.park);
                continue;
            }
            if size + len > self.max_body_bytes {
                self.pending.insert(identity, entry);
                break;
            }
            size += len;
            batch.push(entry);
            entries.push(json);
        }
        let body = self.body(&entries);
        (batch, body)
    }

    /// `{"app_id":…,"users":[…]}` around the serialized entries.
    fn body(&self, entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            32 + self.app_id.len() + entries.iter().map(Vec::len).sum::<usize>() + entries.len(),
        );
        out.extend_from_slice(b"{\"app_id\":");
        serde_json::to_writer(&mut out, &self.app_id).expect("strings serialize");
        out.extend_from_slice(b",\"users\":[");
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(entry);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Waits for the request on the wire to be answered (forever if there is none).
    pub async fn answer(&mut self) -> (Reply, std::time::Duration) {
        match &mut self.in_flight {
            Some((_, _, flight)) => match flight.await {
                Ok(answer) => answer,
                Err(e) => (
                    Reply {
                        status: None,
                        answer: crate::heap::client::Answer::Retry {
                            reason: format!("the request task failed: {e}"),
                            retry_after: None,
                            scope: None,
                        },
                        connected: true,
                    },
                    std::time::Duration::ZERO,
                ),
            },
            None => std::future::pending().await,
        }
    }

    /// Applies Heap's answer to the request on the wire (step 3).
    pub fn answered(
        &mut self,
        reply: Reply,
        now: Instant,
        rng: &mut Rng,
        metrics: &Metrics,
    ) -> Effects {
        let mut effects = Effects::default();
        let Some((mut batch, sent_at, _)) = self.in_flight.take() else {
            return effects;
        };
        let per_identity: HashMap<Arc<str>, u64> =
            batch.iter().map(|e| (e.identity.clone(), 1)).collect();
        self.pacer
            .finish(&per_identity, super::counted(&reply), sent_at, now);
        UserPropertyRequest {
            status: reply.status,
            budget: self.pacer.app_budget(now),
        }
        .emit(metrics);
        let first_try = batch
            .iter()
            .filter_map(|e| e.first_try)
            .min()
            .unwrap_or(sent_at);
        let attempt = batch.iter().map(|e| e.attempt).max().unwrap_or(0);
        let attempted = Attempted {
            events: batch.len(),
            attempt,
            first_try,
        };
        let action = policy::decide(&reply.answer, attempted, now, &self.retry, rng);
        if !matches!(action, Action::Accept | Action::Fatal(_)) {
            self.parts -= drop_withdrawn(&mut batch);
        }
        match action {
            Action::Accept => {
                let parts: u64 = batch.iter().map(|e| e.parts.len() as u64).sum();
                UserPropertyUpdates {
                    outcome: "accepted",
                    count: parts,
                }
                .emit(metrics);
                for entry in batch {
                    self.parts -= entry.parts.len();
                    for part in entry.parts {
                        part.tracker.resolve(Resolution::Accepted, part.record);
                    }
                }
            }
            Action::RetryAt { at, reason } => {
                tracing::debug!(
                    users = batch.len(),
                    attempt,
                    "user properties: retrying: {reason}"
                );
                for mut entry in batch {
                    entry.attempt = attempt + 1;
                    entry.first_try = Some(first_try);
                    entry.retry_at = Some(at);
                    self.requeue(entry);
                }
            }
            Action::Bisect => {
                let second = batch.split_off(batch.len() / 2);
                for half in [second, batch] {
                    if !half.is_empty() {
                        self.split.push_front(half);
                    }
                }
            }
            Action::Park(reason) => {
                let reason = reason.replace(
                    "Heap rejected the event",
                    "Heap rejected the user's properties",
                );
                for entry in batch {
                    self.parts -= entry.parts.len();
                    park_entry(entry, &reason, &mut effects.park);
                }
            }
            Action::Fatal(reason) => {
                // Unresolved, as events are: the next run sends them again.
                effects.fatal = Some(format!(
                    "add_user_properties (the user-properties output; events stop too, as for any configuration error): {reason}"
                ));
            }
        }
        effects
    }

    /// Drops the parts of withdrawn units from everything waiting (step 4).
    pub fn withdraw(&mut self) -> usize {
        let mut pending: Vec<Entry> = self.pending.drain().map(|(_, e)| e).collect();
        let mut dropped = drop_withdrawn(&mut pending);
        self.pending = pending
            .into_iter()
            .map(|e| (e.identity.clone(), e))
            .collect();
        let mut split: Vec<Vec<Entry>> = self.split.drain(..).collect();
        for half in &mut split {
            dropped += drop_withdrawn(half);
        }
        self.split = split.into_iter().filter(|h| !h.is_empty()).collect();
        self.parts -= dropped;
        dropped
    }
}

/// Resolves the withdrawn parts of `entries` as withdrawn and drops entries left without
/// parts; returns how many parts went.
fn drop_withdrawn(entries: &mut Vec<Entry>) -> usize {
    let mut dropped = 0;
    for entry in entries.iter_mut() {
        let (gone, kept): (Vec<Part>, Vec<Part>) = std::mem::take(&mut entry.parts)
            .into_iter()
            .partition(|p| p.tracker.is_withdrawn());
        dropped += gone.len();
        for part in gone {
            part.tracker.resolve(Resolution::Withdrawn, part.record);
        }
        entry.parts = kept;
    }
    entries.retain(|e| !e.parts.is_empty());
    dropped
}

/// A letter per part of `entry`, each holding the event its update came from.
fn park_entry(entry: Entry, reason: &str, park: &mut Vec<ToPark>) {
    for part in entry.parts {
        park.push(ToPark {
            event_type: part.event.event_type.clone(),
            letter: DeadLetter::new(part.event, reason, &*part.object).of_user_properties(),
            tracker: part.tracker,
            record: part.record,
        });
    }
}

#[cfg(test)]
mod tests;
