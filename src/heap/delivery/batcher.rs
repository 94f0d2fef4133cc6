//! Batches: which pending events go into the next request, and when anything can go next.
//!
//! Pure: no I/O, no clock of its own; every decision takes `now`. A batch takes, in arrival
//! order, the events whose identity and app still have room in the [`Pacer`]'s windows, up
//! to `max_batch_events` and the body limit: a hot identity's excess stays pending while other
//! identities' events keep flowing. A failed batch waits for its retry time and then goes
//! through the pacer again, before any new events, so new events cannot starve it of room.
//!
//! # Linger
//! New events are held until they can fill a request, so that many small objects share bulk
//! requests instead of each sending its few events alone. Pending events go out as soon as
//! any of these holds:
//! - they fill a request: `max_batch_events` events, or a whole body (`max_body_bytes`);
//! - the oldest of them has waited `linger` (zero: at once, whatever is pending);
//! - nothing more can arrive before something is sent ([`Batcher::set_flush`]): the input
//!   closed, or intake paused because `max_pending` events are held.
//!
//! A due retry is never held. Events the pacer holds back (a hot identity's excess) count
//! toward the linger like any other, so behind such a backlog new events go out as soon as a
//! request slot is free, as they would without a linger.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::Tracker;
use crate::currents::event::CustomHttpEvent;
use crate::heap::pacer::{Counted, Pacer, RateLimits};

/// Which work an event belongs to: live events go first; backfill events use the room they
/// leave, less [`LIVE_RESERVE_SHARE`] of the app budget kept free for live events to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Live,
    Backfill,
}

impl Lane {
    pub fn label(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Backfill => "backfill",
        }
    }
}

/// The share of the app budget backfill events leave unused (at most one full request), so a
/// live object that lands mid-backfill is sent at once instead of waiting for the window to
/// slide.
pub const LIVE_RESERVE_SHARE: f64 = 0.1;

/// An event mapped, serialized once, and waiting to be sent. The original is kept as decoded,
/// in case it must be parked; it is serialized only then. (Serializing every event here cost
/// a third of intake's time, for the rare event that is parked after Heap's answer.)
pub struct Item {
    pub identity: Arc<str>,
    pub json: Box<[u8]>,
    pub original: Box<CustomHttpEvent>,
    pub event_type: Arc<str>,
    pub object: Arc<str>,
    pub tracker: Arc<Tracker>,
    /// Its index in its object, for the tracker's ended prefix.
    pub record: u64,
    pub lane: Lane,
}

/// Events sent, or to be sent, in one request.
pub struct Batch {
    pub items: Vec<Item>,
    /// Failed attempts so far.
    pub attempt: u32,
    pub first_try: Instant,
    /// When this attempt was sent: a 429 for it lowers a budget only if it was sent after
    /// the last decrease.
    pub sent_at: Instant,
}

impl Batch {
    pub fn new(items: Vec<Item>, now: Instant) -> Self {
        Batch {
            items,
            attempt: 0,
            first_try: now,
            sent_at: now,
        }
    }

    pub fn per_identity(&self) -> HashMap<Arc<str>, u64> {
        let mut counts = HashMap::new();
        for item in &self.items {
            *counts.entry(item.identity.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Live if any of its events is: a batch with live events is never held for the reserve.
    pub fn lane(&self) -> Lane {
        if self.items.iter().any(|i| i.lane == Lane::Live) {
            Lane::Live
        } else {
            Lane::Backfill
        }
    }
}

/// What can be sent now.
pub enum Next {
    Send(Batch),
    /// Events wait for rate-limit room.
    Blocked,
    /// Events wait for more to join them, until [`Batcher::next_wake`] at the latest.
    Held,
    /// Nothing is waiting.
    Idle,
}

/// One lane's pending events with the time each arrived, oldest first: `compose` keeps that
/// order.
#[derive(Default)]
struct Queue {
    events: VecDeque<(Instant, Item)>,
    /// The events' JSON bytes, each with its separating comma.
    bytes: usize,
}

pub struct Batcher {
    pacer: Pacer,
    live: Queue,
    backfill: Queue,
    /// Batches waiting for their retry time.
    retries: Vec<(Instant, Batch)>,
    max_batch_events: usize,
    max_body_bytes: usize,
    /// The bytes a request body adds around its events.
    body_overhead: usize,
    /// How long pending events that cannot fill a request wait for more.
    linger: Duration,
    /// Nothing more can arrive before something is sent: hold nothing.
    flush: bool,
}

impl Batcher {
    /// `max_batch_events` ≥ 1; `max_body_bytes` bounds every request body, `body_overhead`
    /// included. Sends pending events at once; see [`Batcher::lingering`].
    pub fn new(
        limits: RateLimits,
        max_batch_events: usize,
        max_body_bytes: usize,
        body_overhead: usize,
    ) -> Self {
        Batcher {
            pacer: Pacer::new(limits),
            live: Queue::default(),
            backfill: Queue::default(),
            retries: Vec::new(),
            max_batch_events: max_batch_events.max(1),
            max_body_bytes,
            body_overhead,
            linger: Duration::ZERO,
            flush: false,
        }
    }

    /// Holds pending events that cannot fill a request until the oldest has waited `linger`
    /// (see the module docs); zero sends them at once.
    pub fn lingering(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Whether nothing more can arrive before something is sent (the input closed, intake
    /// paused): then nothing is held for the linger.
    pub fn set_flush(&mut self, flush: bool) {
        self.flush = flush;
    }

    /// The pacer, for the lease's history and seed.
    pub fn pacer(&mut self) -> &mut Pacer {
        &mut self.pacer
    }

    /// The body limit now (lowered by a 413, see [`Batcher::lower_body_limit`]).
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The body of a request holding `items`.
    pub fn body_len(&self, items: &[Item]) -> usize {
        self.body_overhead + items.iter().map(|i| i.json.len() + 1).sum::<usize>()
    }

    /// Lowers the body limit for the rest of the run; takes out the events that no longer
    /// fit a request alone (queued or waiting for a retry), which cannot be sent. Retries
    /// composed under the old limit are split to fit the new one.
    pub fn lower_body_limit(&mut self, max_body_bytes: usize) -> Vec<Item> {
        self.max_body_bytes = self.max_body_bytes.min(max_body_bytes);
        let mut unfit = Vec::new();
        for lane in [Lane::Live, Lane::Backfill] {
            let (overhead, max) = (self.body_overhead, self.max_body_bytes);
            let queue = self.queue(lane);
            let (gone, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut queue.events)
                .into_iter()
                .partition(|(_, i)| overhead + i.json.len() >= max);
            for (_, item) in gone {
                queue.bytes -= item.json.len() + 1;
                unfit.push(item);
            }
            queue.events = kept;
        }
        for (due, batch) in std::mem::take(&mut self.retries) {
            let (attempt, first_try) = (batch.attempt, batch.first_try);
            let (fit, gone): (Vec<Item>, Vec<Item>) = batch
                .items
                .into_iter()
                .partition(|i| self.fits_alone(i.json.len()));
            unfit.extend(gone);
            for part in self.split_to_fit(fit) {
                let mut part = Batch::new(part, first_try);
                part.attempt = attempt;
                self.retries.push((due, part));
            }
        }
        unfit
    }

    /// Splits events (each fitting alone) into requests within the body limit, in order.
    pub fn split_to_fit(&self, items: Vec<Item>) -> Vec<Vec<Item>> {
        let mut parts: Vec<Vec<Item>> = Vec::new();
        let mut bytes = self.body_overhead;
        for item in items {
            let len = item.json.len() + 1;
            match parts.last_mut() {
                Some(part) if bytes + len <= self.max_body_bytes => part.push(item),
                _ => {
                    bytes = self.body_overhead;
                    parts.push(vec![item]);
                }
            }
            bytes += len;
        }
        parts
    }

    /// Whether a mapped event of `len` bytes can ever be sent under the body limit.
    pub fn fits_alone(&self, len: usize) -> bool {
        // Each event also takes one separating comma.
        self.body_overhead + len < self.max_body_bytes
    }

    fn queue(&mut self, lane: Lane) -> &mut Queue {
        match lane {
            Lane::Live => &mut self.live,
            Lane::Backfill => &mut self.backfill,
        }
    }

    /// Queues an event that arrived at `now` (not before any event already queued).
    pub fn push(&mut self, item: Item, now: Instant) {
        let queue = self.queue(item.lane);
        queue.bytes += item.json.len() + 1;
        queue.events.push_back((now, item));
    }

    pub fn pending(&self) -> usize {
        self.live.events.len() + self.backfill.events.len()
    }

    /// Takes out every event, queued or waiting for a retry, whose unit was withdrawn: they
    /// are never to be sent. Batches on the wire are not here (see [`super::outcome`]).
    pub fn withdraw(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        for queue in [&mut self.live, &mut self.backfill] {
            if !queue.events.iter().any(|(_, i)| i.tracker.is_withdrawn()) {
                continue;
            }
            let (gone, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut queue.events)
                .into_iter()
                .partition(|(_, i)| i.tracker.is_withdrawn());
            for (_, item) in gone {
                queue.bytes -= item.json.len() + 1;
                out.push(item);
            }
            queue.events = kept;
        }
        for (_, batch) in &mut self.retries {
            let (gone, kept) = std::mem::take(&mut batch.items)
                .into_iter()
                .partition(|i| i.tracker.is_withdrawn());
            batch.items = kept;
            out.extend::<Vec<Item>>(gone);
        }
        self.retries.retain(|(_, batch)| !batch.items.is_empty());
        out
    }

    /// Events of one lane waiting to be sent.
    pub fn pending_in(&self, lane: Lane) -> usize {
        match lane {
            Lane::Live => self.live.events.len(),
            Lane::Backfill => self.backfill.events.len(),
        }
    }

    /// Anything waiting: pending events or batches to retry.
    pub fn has_work(&self) -> bool {
        self.pending() > 0 || !self.retries.is_empty()
    }

    /// Sends `batch` again at `at`, through the pacer.
    pub fn retry_at(&mut self, at: Instant, batch: Batch) {
        self.retries.push((at, batch));
    }

    /// The app budget now, for the gauge.
    pub fn app_budget(&mut self, now: Instant) -> u64 {
        self.pacer.app_budget(now)
    }

    /// Identities whose budget is lowered, for the gauge.
    pub fn lowered_identities(&self) -> usize {
        self.pacer.lowered_identities()
    }

    /// The next batch to send: a due retry first, then new events, live before backfill.
    ///
    /// A due retry that does not fit the room left goes in part: the events that fit now,
    /// the rest again at once. (Sent whole, a batch of 1,000 under a budget lowered to 450
    /// would wait until the budget grew back, and block everything behind it.) A due retry
    /// of which nothing fits lets new events of other identities go.
    pub fn next(&mut self, now: Instant) -> Next {
        let mut blocked = false;
        if let Some(i) = self.retries.iter().position(|(due, _)| *due <= now) {
            let per_identity = self.retries[i].1.per_identity();
            let lane = self.retries[i].1.lane();
            if self.fits(&per_identity, lane, now) {
                let (_, batch) = self.retries.swap_remove(i);
                return Next::Send(batch);
            }
            if let Some(part) = self.split_retry(i, lane, now) {
                return Next::Send(part);
            }
            blocked = true;
        }
        if self.pending() == 0 {
            return if blocked { Next::Blocked } else { Next::Idle };
        }
        if !self.ready(Lane::Live, now) && !self.ready(Lane::Backfill, now) {
            return Next::Held;
        }
        match self.compose(now) {
            Some(batch) => Next::Send(batch),
            None => Next::Blocked,
        }
    }

    /// The part of due retry `i` that fits the room now, if any; the rest stays due.
    fn split_retry(&mut self, i: usize, lane: Lane, now: Instant) -> Option<Batch> {
        let mut app_room = self.lane_room(lane, now);
        let mut rooms: HashMap<Arc<str>, u64> = HashMap::new();
        let batch = &mut self.retries[i].1;
        let (mut fit, mut rest) = (Vec::new(), Vec::new());
        for item in batch.items.drain(..) {
            let room = match rooms.get_mut(&item.identity) {
                Some(room) => room,
                None => {
                    let room = self.pacer.identity_room(&item.identity, now);
                    rooms.entry(item.identity.clone()).or_insert(room)
                }
            };
            if app_room > 0 && *room > 0 {
                app_room -= 1;
                *room -= 1;
                fit.push(item);
            } else {
                rest.push(item);
            }
        }
        batch.items = rest;
        if fit.is_empty() {
            return None;
        }
        let part = Batch {
            items: fit,
            attempt: batch.attempt,
            first_try: batch.first_try,
            sent_at: now,
        };
        if batch.items.is_empty() {
            self.retries.swap_remove(i);
        }
        Some(part)
    }

    /// Whether a lane's pending events go out now rather than wait for more (the module's
    /// linger rules).
    fn ready(&self, lane: Lane, now: Instant) -> bool {
        let queue = match lane {
            Lane::Live => &self.live,
            Lane::Backfill => &self.backfill,
        };
        !queue.events.is_empty()
            && (self.flush
                || queue.events.len() >= self.max_batch_events
                || self.body_overhead + queue.bytes >= self.max_body_bytes
                || queue
                    .events
                    .front()
                    .is_some_and(|(arrived, _)| now >= *arrived + self.linger))
    }

    /// A batch is on its way at `now`: its events take room in the windows until answered.
    pub fn started(&mut self, batch: &mut Batch, now: Instant) {
        batch.sent_at = now;
        self.pacer.start(&batch.per_identity());
    }

    /// A batch was answered at `now`; `counted` says whether Heap may have counted it.
    pub fn finished(&mut self, batch: &Batch, counted: Counted, now: Instant) {
        self.pacer
            .finish(&batch.per_identity(), counted, batch.sent_at, now);
    }

    /// The next time something may become sendable without an answer arriving.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        let retry = self
            .retries
            .iter()
            .map(|(due, _)| *due)
            .filter(|due| *due > now)
            .min();
        let pacing = self
            .has_work()
            .then(|| self.pacer.next_expiry(now))
            .flatten();
        // Once ready, a held batch waits only for a request slot or rate-limit room, which
        // the answers and the pacer's expiry already wake for.
        let linger = [(Lane::Live, &self.live), (Lane::Backfill, &self.backfill)]
            .into_iter()
            .filter(|(lane, _)| !self.ready(*lane, now))
            .filter_map(|(_, queue)| queue.events.front())
            .map(|(arrived, _)| *arrived + self.linger)
            .min();
        retry.into_iter().chain(pacing).chain(linger).min()
    }

    /// Bounds the pacer's memory: identities with nothing in their window are forgotten once
    /// there are more than `limit` of them.
    pub fn forget_idle_beyond(&mut self, limit: usize, now: Instant) {
        if self.pacer.tracked_identities() > limit {
            self.pacer.forget_idle(now, limit);
        }
    }

    /// The app room a lane may use now: backfill leaves the live reserve.
    fn lane_room(&mut self, lane: Lane, now: Instant) -> u64 {
        let room = self.pacer.app_room(now);
        match lane {
            Lane::Live => room,
            Lane::Backfill => {
                let budget = self.pacer.app_budget(now);
                let reserve = if budget == u64::MAX {
                    0
                } else {
                    ((budget as f64 * LIVE_RESERVE_SHARE) as u64).min(self.max_batch_events as u64)
                };
                room.saturating_sub(reserve)
            }
        }
    }

    fn fits(&mut self, per_identity: &HashMap<Arc<str>, u64>, lane: Lane, now: Instant) -> bool {
        let total: u64 = per_identity.values().sum();
        self.lane_room(lane, now) >= total
            && per_identity
                .iter()
                .all(|(id, n)| self.pacer.identity_room(id, now) >= *n)
    }

    /// Takes pending events in arrival order, live first, skipping identities without room.
    fn compose(&mut self, now: Instant) -> Option<Batch> {
        let mut selected = Vec::new();
        let mut bytes = self.body_overhead;
        let mut rooms: HashMap<Arc<str>, u64> = HashMap::new();
        for lane in [Lane::Live, Lane::Backfill] {
            let room = self
                .lane_room(lane, now)
                .min(self.max_batch_events as u64)
                .saturating_sub(selected.len() as u64);
            self.take(lane, room, &mut bytes, &mut rooms, &mut selected, now);
        }
        (!selected.is_empty()).then(|| Batch::new(selected, now))
    }

    /// Moves up to `app_room` events of one lane into `selected`. The queue is rotated in place
    /// (skipped events go to the back in order), so no batch allocates a copy.
    fn take(
        &mut self,
        lane: Lane,
        mut app_room: u64,
        bytes: &mut usize,
        rooms: &mut HashMap<Arc<str>, u64>,
        selected: &mut Vec<Item>,
        now: Instant,
    ) {
        let max_body_bytes = self.max_body_bytes;
        let queue = match lane {
            Lane::Live => &mut self.live,
            Lane::Backfill => &mut self.backfill,
        };
        let mut left = queue.events.len();
        while left > 0 && app_room > 0 {
            let Some((arrived, item)) = queue.events.pop_front() else {
                break;
            };
            left -= 1;
            if *bytes + item.json.len() + 1 > max_body_bytes {
                queue.events.push_front((arrived, item));
                left += 1;
                break;
            }
            let room = match rooms.get_mut(&item.identity) {
                Some(room) => room,
                None => {
                    let room = self.pacer.identity_room(&item.identity, now);
                    rooms.entry(item.identity.clone()).or_insert(room)
                }
            };
            if *room == 0 {
                queue.events.push_back((arrived, item));
                continue;
            }
            *room -= 1;
            app_room -= 1;
            *bytes += item.json.len() + 1;
            queue.bytes -= item.json.len() + 1;
            selected.push(item);
        }
        // Events not looked at go behind the skipped ones, which arrived before them: the
        // queue stays in arrival order, so its front is the oldest event.
        queue.events.rotate_left(left);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn item(identity: &str, bytes: usize) -> Item {
        Item {
            identity: Arc::from(identity),
            json: vec![b'x'; bytes].into_boxed_slice(),
            original: Box::new(CustomHttpEvent {
                event_type: Arc::from("T"),
                id: String::new(),
                time: 0,
                user: Default::default(),
                properties: Vec::new(),
            }),
            event_type: Arc::from("T"),
            object: Arc::from("o"),
            tracker: Arc::new(Tracker::default()),
            record: 0,
            lane: Lane::Live,
        }
    }

    fn limits(app: u64, identity: u64) -> RateLimits {
        RateLimits {
            app_events: app,
            identity_events: identity,
            window: Duration::from_secs(60),
        }
    }

    fn identities(batch: &Batch) -> Vec<&str> {
        batch.items.iter().map(|i| &*i.identity).collect()
    }

    #[test]
    fn a_hot_identity_waits_while_others_go_in_arrival_order() {
        let now = Instant::now();
        let mut batcher = Batcher::new(limits(100, 2), 1000, 1 << 20, 10);
        for id in ["a", "a", "a", "b", "a", "c"] {
            batcher.push(item(id, 10), now);
        }
        let Next::Send(mut batch) = batcher.next(now) else {
            panic!("room for a batch");
        };
        assert_eq!(identities(&batch), ["a", "a", "b", "c"]);
        batcher.started(&mut batch, now);
        batcher.finished(&batch, Counted::Stored, now);
        assert_eq!(batcher.pending(), 2, "a's excess stays pending");
        assert!(matches!(batcher.next(now), Next::Blocked));
        let wake = batcher.next_wake(now).expect("the window frees room later");
        assert_eq!(wake, now + Duration::from_secs(60));
        let Next::Send(later) = batcher.next(wake) else {
            panic!("room again once the window passed");
        };
        assert_eq!(identities(&later), ["a", "a"]);
    }

    #[test]
    fn batches_stop_at_the_event_count_and_the_body_limit() {
        let now = Instant::now();
        let mut batcher = Batcher::new(limits(0, 0), 3, 10 + 4 * 101, 10);
        for n in 0..10 {
            batcher.push(item(&format!("u{n}"), 100), now);
        }
        let Next::Send(batch) = batcher.next(now) else {
            panic!()
        };
        assert_eq!(batch.items.len(), 3, "max_batch_events");
        let mut small = Batcher::new(limits(0, 0), 1000, 10 + 2 * 101, 10);
        for n in 0..5 {
            small.push(item(&format!("u{n}"), 100), now);
        }
        let Next::Send(batch) = small.next(now) else {
            panic!()
        };
        assert_eq!(batch.items.len(), 2, "the body limit");
        assert!(small.fits_alone(100) && !small.fits_alone(300));
    }

    #[test]
    fn a_due_retry_goes_before_new_events_and_only_when_it_fits() {
        let now = Instant::now();
        let mut batcher = Batcher::new(limits(3, 0), 1000, 1 << 20, 10);
        let retry = Batch::new(vec![item("r", 1), item("r", 1)], now);
        batcher.retry_at(now + Duration::from_secs(5), retry);
        batcher.push(item("n", 1), now);
        let Next::Send(mut first) = batcher.next(now) else {
            panic!()
        };
        assert_eq!(identities(&first), ["n"], "the retry is not due yet");
        batcher.started(&mut first, now);
        let due = now + Duration::from_secs(5);
        let Next::Send(mut second) = batcher.next(due) else {
            panic!()
        };
        assert_eq!(identities(&second), ["r", "r"]);
        batcher.started(&mut second, now);
        batcher.retry_at(due, Batch::new(vec![item("r", 1)], due));
        assert!(
            matches!(batcher.next(due), Next::Blocked),
            "the app window is full: the due retry waits and blocks new events"
        );
    }

    fn sizes(batch: &Batch) -> usize {
        batch.items.len()
    }

    #[test]
    fn a_short_batch_waits_for_its_oldest_event_to_have_lingered() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(100);
        let mut batcher = Batcher::new(limits(0, 0), 10, 1 << 20, 10).lingering(linger);
        assert!(matches!(batcher.next(t0), Next::Idle));
        assert_eq!(
            batcher.next_wake(t0),
            None,
            "nothing waits, nothing to wake for"
        );
        batcher.push(item("a", 10), t0);
        let t1 = t0 + Duration::from_millis(60);
        batcher.push(item("b", 10), t1);
        assert!(matches!(batcher.next(t1), Next::Held));
        assert_eq!(
            batcher.next_wake(t1),
            Some(t0 + linger),
            "the oldest event's deadline, not the newest's"
        );
        let due = t0 + linger;
        assert!(matches!(
            batcher.next(due - Duration::from_millis(1)),
            Next::Held
        ));
        let Next::Send(batch) = batcher.next(due) else {
            panic!("the oldest event has waited the linger");
        };
        assert_eq!(
            identities(&batch),
            ["a", "b"],
            "everything pending goes along"
        );
        assert!(matches!(batcher.next(due), Next::Idle));
        assert_eq!(batcher.next_wake(due), None);
    }

    #[test]
    fn a_full_batch_goes_at_once_and_its_remainder_keeps_the_linger() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(100);
        let mut batcher = Batcher::new(limits(0, 0), 3, 1 << 20, 10).lingering(linger);
        for n in 0..4 {
            batcher.push(item(&format!("u{n}"), 10), t0);
        }
        let Next::Send(full) = batcher.next(t0) else {
            panic!("max_batch_events are pending: no reason to wait");
        };
        assert_eq!(sizes(&full), 3);
        assert!(
            matches!(batcher.next(t0), Next::Held),
            "one event is no batch"
        );
        assert_eq!(batcher.next_wake(t0), Some(t0 + linger));

        // The body limit fills a request too: three 100-byte events are over 10 + 250 bytes.
        let mut by_bytes = Batcher::new(limits(0, 0), 1000, 10 + 250, 10).lingering(linger);
        for n in 0..3 {
            by_bytes.push(item(&format!("u{n}"), 100), t0);
        }
        let Next::Send(batch) = by_bytes.next(t0) else {
            panic!("more than a body's worth is pending");
        };
        assert_eq!(sizes(&batch), 2, "the body limit");
        assert!(matches!(by_bytes.next(t0), Next::Held));
    }

    #[test]
    fn nothing_is_held_when_nothing_more_can_arrive_or_without_a_linger() {
        let t0 = Instant::now();
        let mut batcher =
            Batcher::new(limits(0, 0), 1000, 1 << 20, 10).lingering(Duration::from_secs(5));
        batcher.push(item("a", 10), t0);
        assert!(matches!(batcher.next(t0), Next::Held));
        batcher.set_flush(true);
        assert!(
            matches!(batcher.next(t0), Next::Send(_)),
            "the input closed: waiting would only delay"
        );
        batcher.set_flush(false);
        let mut at_once = Batcher::new(limits(0, 0), 1000, 1 << 20, 10);
        at_once.push(item("a", 10), t0);
        assert!(matches!(at_once.next(t0), Next::Send(_)), "a zero linger");
    }

    #[test]
    fn a_due_retry_is_never_held_for_the_linger() {
        let t0 = Instant::now();
        let linger = Duration::from_secs(1);
        let mut batcher = Batcher::new(limits(0, 0), 1000, 1 << 20, 10).lingering(linger);
        batcher.push(item("n", 1), t0);
        batcher.retry_at(t0, Batch::new(vec![item("r", 1)], t0));
        let Next::Send(retry) = batcher.next(t0) else {
            panic!("a due retry goes at once");
        };
        assert_eq!(identities(&retry), ["r"]);
        assert!(
            matches!(batcher.next(t0), Next::Held),
            "new events still linger"
        );
        let later = t0 + Duration::from_millis(300);
        batcher.retry_at(later, Batch::new(vec![item("r", 1)], t0));
        assert_eq!(
            batcher.next_wake(t0),
            Some(later),
            "the retry's time comes before the linger's end"
        );
    }

    #[test]
    fn behind_a_rate_limited_backlog_new_events_are_not_held() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(100);
        let mut batcher = Batcher::new(limits(100, 1), 1000, 1 << 20, 10).lingering(linger);
        batcher.push(item("hot", 1), t0);
        batcher.push(item("hot", 1), t0);
        let t1 = t0 + linger;
        let Next::Send(mut first) = batcher.next(t1) else {
            panic!()
        };
        batcher.started(&mut first, t1);
        batcher.finished(&first, Counted::Stored, t1);
        assert_eq!(
            batcher.pending(),
            1,
            "the hot identity's excess waits for room"
        );
        batcher.push(item("cold", 1), t1);
        let Next::Send(cold) = batcher.next(t1) else {
            panic!("the backlog's age counts: the new event is not held behind it");
        };
        assert_eq!(identities(&cold), ["cold"]);
        assert!(matches!(batcher.next(t1), Next::Blocked));
    }

    fn backfill_item(identity: &str) -> Item {
        Item {
            lane: Lane::Backfill,
            ..item(identity, 10)
        }
    }

    #[test]
    fn live_events_go_first_and_backfill_leaves_the_reserve() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(limits(100, 0), 50, 1 << 20, 10);
        for _ in 0..200 {
            batcher.push(backfill_item("b"), t0);
        }
        batcher.push(item("live", 10), t0);
        let Next::Send(mut first) = batcher.next(t0) else {
            panic!()
        };
        assert_eq!(
            identities(&first)[0],
            "live",
            "live first, whatever arrived before"
        );
        assert_eq!(first.items.len(), 50);
        assert_eq!(first.lane(), Lane::Live);
        batcher.started(&mut first, t0);
        batcher.finished(&first, Counted::Stored, t0);
        let Next::Send(mut second) = batcher.next(t0) else {
            panic!()
        };
        assert_eq!(
            second.items.len(),
            40,
            "backfill leaves 10 % of the budget to live events"
        );
        assert_eq!(second.lane(), Lane::Backfill);
        batcher.started(&mut second, t0);
        batcher.finished(&second, Counted::Stored, t0);
        assert!(matches!(batcher.next(t0), Next::Blocked));
        batcher.push(item("late", 10), t0);
        let Next::Send(late) = batcher.next(t0) else {
            panic!("a live event landing mid-backfill goes at once, in the reserve")
        };
        assert_eq!(identities(&late), ["late"]);
        assert_eq!(batcher.pending_in(Lane::Backfill), 111);
    }

    #[test]
    fn a_due_retry_larger_than_the_room_goes_in_parts() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(limits(450, 0), 1000, 1 << 20, 10);
        let ids: Vec<String> = (0..1000).map(|n| format!("u{n}")).collect();
        let retry = Batch::new(ids.iter().map(|id| item(id, 1)).collect(), t0);
        batcher.retry_at(t0, retry);
        let Next::Send(mut part) = batcher.next(t0) else {
            panic!("what fits goes now");
        };
        assert_eq!(part.items.len(), 450);
        assert_eq!(part.first_try, t0, "the parts keep the retry's deadline");
        batcher.started(&mut part, t0);
        assert!(matches!(batcher.next(t0), Next::Blocked));
        batcher.finished(&part, Counted::Stored, t0);
        let later = t0 + Duration::from_secs(60);
        let Next::Send(second) = batcher.next(later) else {
            panic!("the rest goes when room frees")
        };
        assert_eq!(second.items.len(), 450);
    }

    #[test]
    fn a_retry_whose_identity_is_out_of_room_lets_others_go() {
        let t0 = Instant::now();
        let mut batcher = Batcher::new(limits(100, 2), 1000, 1 << 20, 10);
        let mut hot = Batch::new(vec![item("hot", 1), item("hot", 1)], t0);
        batcher.started(&mut hot, t0);
        batcher.finished(&hot, Counted::Stored, t0);
        batcher.retry_at(t0, Batch::new(vec![item("hot", 1)], t0));
        batcher.push(item("cold", 1), t0);
        let Next::Send(cold) = batcher.next(t0) else {
            panic!("the cold identity is not held behind the hot one's retry");
        };
        assert_eq!(identities(&cold), ["cold"]);
    }
}
