//! Runs objects through the pipeline, a bounded number at a time.
//!
//! A key is queued or in flight at most once. Every task gives its key back when it ends,
//! whichever way it ends: a result, a panic, or a cancellation. A panicked task is reported as
//! [`Ended::Panicked`] with its key, so the object is neither lost nor stuck "in progress":
//! the next poll finds it unrecorded and queues it again.
//!
//! # Admission
//! Queued objects start in order, the next one as soon as [`Admission::admits`] says so:
//! - while fewer than `objects` (`--object-concurrency`, default 4) are in flight, whatever
//!   their size;
//! - beyond that, while fewer than [`SMALL_OBJECT_CEILING`] (256) are in flight and the
//!   listed sizes of the objects in flight plus the next one's stay within `small_budget`
//!   (`--small-object-budget`, default [`SMALL_OBJECT_BUDGET`], 16 MiB; 0 turns this off).
//!
//! An object holds its slot until Heap has answered for its last event, so a few small
//! objects at a time leave delivery idle between round trips: 10,000 objects of 5 events
//! took 177 s at 4 in flight (issue 10). Many small objects in flight fill bulk requests together (see
//! the batch linger in [`crate::heap::delivery::batcher`]). Memory stays bounded: the
//! objects admitted beyond `objects` hold at most `small_budget` stored bytes between them
//! (each decoder holds one Avro block), and their decoded events wait in the same bounded
//! channel and `--max-pending-events` as any others. One large object in flight uses up the
//! budget, so large objects run `objects` at a time, as before. The queue is not reordered:
//! a large object next in line waits for a free regular slot, and the small ones behind it
//! wait with it.
//!
//! # Admission by budget
//! Objects beyond `objects` also start only while the bytes in flight stay within what the
//! lane's share of Heap's budget can finish before a stop's deadline ([`BudgetRoom`]: the
//! lane's events per second × `--shutdown-timeout`, in bytes at the events per byte of the
//! objects that ended). Rate-bound, more objects in flight than that buy nothing: each
//! holds a slot and an unfinished tail, and a stop finds them all part way (issue 19: 10 of
//! 60 objects recorded when 28,000 of 48,000 events were in Heap). Until an object has
//! ended, or without a known rate, only the byte budget applies.
//!
//! # Lanes
//! A long-lived `run` also runs backfills handed to it ([`crate::handover`]) on a second
//! lane: its own queue, its own admission (the same rule, counted separately), and its own
//! pipeline, whose events delivery sends only in the room live events leave. Live objects
//! never wait for a backfill's objects to give up a slot, and a backfill's large objects
//! never hold live ones back. A key is queued or in flight once across both lanes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

use super::pipeline::{ObjectResult, Pipeline};
use crate::heap::delivery::Lane;
use crate::store::ObjectMeta;

/// Work for the scheduler.
#[derive(Debug, Clone)]
pub enum Work {
    Object(ObjectMeta),
    /// An object whose version has a checkpoint in the ledger (the listing showed it): it
    /// starts with a lookup of where to resume (see [`super::checkpoint`]).
    Resume(ObjectMeta),
    /// An `.avro` key outside the Currents layout: recorded failed without reading it.
    OutsideLayout(ObjectMeta),
}

impl Work {
    pub fn key(&self) -> &str {
        &self.meta().key
    }

    /// The object as listed (or notified).
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Work::Object(m) | Work::Resume(m) | Work::OutsideLayout(m) => m,
        }
    }

    /// The bytes it reads: its listed size, or none for a key only recorded as failed.
    fn size(&self) -> u64 {
        match self {
            Work::Object(m) | Work::Resume(m) => m.size,
            Work::OutsideLayout(_) => 0,
        }
    }
}

/// How one object's task ended.
#[derive(Debug)]
pub enum Ended {
    Object(ObjectResult),
    /// The task panicked (a bug): nothing was recorded, and the object is free to be queued
    /// again.
    Panicked {
        key: String,
        message: String,
    },
}

impl Ended {
    pub fn key(&self) -> &str {
        match self {
            Ended::Object(result) => result.key(),
            Ended::Panicked { key, .. } => key,
        }
    }
}

/// Objects in flight at most, however small: the top of `--object-concurrency` too.
pub const SMALL_OBJECT_CEILING: usize = 256;

/// The default `--small-object-budget`: 16 MiB of stored objects in flight, e.g. 256 objects
/// of 64 KiB (a few hundred events each), or 4 of 4 MiB and no more.
pub const SMALL_OBJECT_BUDGET: u64 = 16 * 1024 * 1024;

/// When the next queued object may start (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Objects in flight whatever their size (`--object-concurrency`); at least 1.
    pub objects: usize,
    /// Listed bytes of all objects in flight up to which more start, up to
    /// [`SMALL_OBJECT_CEILING`] objects (`--small-object-budget`); 0: never more than
    /// `objects`.
    pub small_budget: u64,
}

impl Admission {
    /// `objects` at a time, and more while they are small, within `small_budget` bytes.
    pub fn new(objects: usize, small_budget: u64) -> Self {
        Admission {
            objects: objects.max(1),
            small_budget,
        }
    }

    /// Exactly `objects` at a time, whatever their size.
    pub fn fixed(objects: usize) -> Self {
        Admission::new(objects, 0)
    }

    /// Whether an object of `next` bytes may start while `in_flight` objects of
    /// `bytes_in_flight` bytes between them are running.
    pub fn admits(&self, in_flight: usize, bytes_in_flight: u64, next: u64) -> bool {
        self.admits_within(in_flight, bytes_in_flight, next, None)
    }

    /// [`Admission::admits`], and beyond `objects` only while the bytes in flight also stay
    /// within `room` (see [`BudgetRoom`]; `None`: no such bound).
    pub fn admits_within(
        &self,
        in_flight: usize,
        bytes_in_flight: u64,
        next: u64,
        room: Option<u64>,
    ) -> bool {
        let budget = self.small_budget.min(room.unwrap_or(u64::MAX));
        in_flight < self.objects.max(1)
            || (self.small_budget > 0
                && in_flight < SMALL_OBJECT_CEILING
                && bytes_in_flight.saturating_add(next) <= budget)
    }
}

/// Events per second a lane may send to Heap (`None`: not known, or not bounded).
pub type LaneRate = Box<dyn Fn(Lane) -> Option<f64> + Send>;

/// What a lane's share of Heap's budget can finish before a stop's deadline, in bytes of
/// objects (see the module docs).
pub struct BudgetRoom {
    rate: LaneRate,
    /// `--shutdown-timeout`.
    within: std::time::Duration,
    /// Records and stored bytes of the objects that ended done, summed.
    events: u64,
    bytes: u64,
}

impl BudgetRoom {
    pub fn new(rate: LaneRate, within: std::time::Duration) -> Self {
        BudgetRoom {
            rate,
            within,
            events: 0,
            bytes: 0,
        }
    }

    /// Learns the events per byte from an object that ended done.
    pub fn learn(&mut self, events: u64, bytes: u64) {
        self.events = self.events.saturating_add(events);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// The bytes `lane` may have in flight beyond its regular slots; `None` until an object
    /// has ended, or without a rate.
    pub fn bytes(&self, lane: Lane) -> Option<u64> {
        if self.events == 0 || self.bytes == 0 {
            return None;
        }
        let events = (self.rate)(lane)? * self.within.as_secs_f64();
        Some((events * self.bytes as f64 / self.events as f64) as u64)
    }
}

impl From<usize> for Admission {
    /// A bare count: exactly that many at a time.
    fn from(objects: usize) -> Self {
        Admission::fixed(objects)
    }
}

/// One lane's queue and what it has in flight.
struct LaneState {
    pipeline: Arc<Pipeline>,
    queue: VecDeque<Work>,
    in_flight: usize,
    /// The listed sizes of the lane's objects in flight, summed.
    bytes_in_flight: u64,
}

impl LaneState {
    fn new(pipeline: Arc<Pipeline>) -> Self {
        LaneState {
            pipeline,
            queue: VecDeque::new(),
            in_flight: 0,
            bytes_in_flight: 0,
        }
    }
}

pub struct Scheduler {
    admission: Admission,
    abandon: CancellationToken,
    live: LaneState,
    /// `None` until [`Scheduler::with_backfill`].
    backfill: Option<LaneState>,
    in_progress: HashSet<String>,
    tasks: JoinSet<ObjectResult>,
    /// Which key each running task holds, to give it back if the task panics, its listed
    /// size and its lane.
    running: HashMap<Id, (String, u64, Lane)>,
    /// `None`: admission by bytes only.
    room: Option<BudgetRoom>,
}

impl Scheduler {
    /// `admission`: which objects may be in flight at once. `abandon` cuts every object short.
    pub fn new(
        pipeline: Arc<Pipeline>,
        admission: impl Into<Admission>,
        abandon: CancellationToken,
    ) -> Self {
        Scheduler {
            admission: admission.into(),
            abandon,
            live: LaneState::new(pipeline),
            backfill: None,
            in_progress: HashSet::new(),
            tasks: JoinSet::new(),
            running: HashMap::new(),
            room: None,
        }
    }

    /// Bounds admission beyond `objects` by Heap's budget too (see the module docs).
    pub fn with_room(mut self, room: BudgetRoom) -> Self {
        self.room = Some(room);
        self
    }

    /// Adds the backfill lane; its objects go through `pipeline` (whose events delivery sends
    /// on its backfill lane).
    pub fn with_backfill(mut self, pipeline: Arc<Pipeline>) -> Self {
        self.backfill = Some(LaneState::new(pipeline));
        self
    }

    /// Queues work unless the same key is queued or in flight already. Returns whether it was
    /// queued.
    pub fn enqueue(&mut self, work: Work) -> bool {
        self.enqueue_in(Lane::Live, work)
    }

    /// Queues work on a lane (the live lane without a backfill lane), unless the same key is
    /// queued or in flight already on either. Returns whether it was queued.
    pub fn enqueue_in(&mut self, lane: Lane, work: Work) -> bool {
        let queued = self.in_progress.insert(work.key().to_string());
        if queued {
            self.lane(lane).queue.push_back(work);
            self.fill();
        }
        queued
    }

    fn lane(&mut self, lane: Lane) -> &mut LaneState {
        match (lane, &mut self.backfill) {
            (Lane::Backfill, Some(backfill)) => backfill,
            _ => &mut self.live,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queued() == 0 && self.tasks.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.live.queue.len() + self.backfill.as_ref().map_or(0, |b| b.queue.len())
    }

    pub fn in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// Stops starting queued work (shutdown: stop fetching). Returns the keys not started,
    /// live ones first.
    pub fn clear_queue(&mut self) -> Vec<String> {
        let mut cleared: Vec<String> = self
            .live
            .queue
            .drain(..)
            .map(|w| w.key().to_string())
            .collect();
        if let Some(backfill) = &mut self.backfill {
            cleared.extend(backfill.queue.drain(..).map(|w| w.key().to_string()));
        }
        for key in &cleared {
            self.in_progress.remove(key);
        }
        cleared
    }

    /// Drops the backfill lane's queued work (its backfill was given up); returns the keys.
    pub fn clear_backfill_queue(&mut self) -> Vec<String> {
        let cleared: Vec<String> = match &mut self.backfill {
            Some(backfill) => backfill
                .queue
                .drain(..)
                .map(|w| w.key().to_string())
                .collect(),
            None => Vec::new(),
        };
        for key in &cleared {
            self.in_progress.remove(key);
        }
        cleared
    }

    fn fill(&mut self) {
        self.fill_lane(Lane::Live);
        if self.backfill.is_some() {
            self.fill_lane(Lane::Backfill);
        }
    }

    fn fill_lane(&mut self, lane: Lane) {
        let admission = self.admission;
        let room = self.room.as_ref().and_then(|r| r.bytes(lane));
        loop {
            let state = self.lane(lane);
            let Some(next) = state.queue.front() else {
                return;
            };
            if !admission.admits_within(state.in_flight, state.bytes_in_flight, next.size(), room) {
                return;
            }
            let Some(work) = state.queue.pop_front() else {
                return;
            };
            let key = work.key().to_string();
            let size = work.size();
            state.in_flight += 1;
            state.bytes_in_flight += size;
            let (pipeline, abandon) = (state.pipeline.clone(), self.abandon.clone());
            let handle = self.tasks.spawn(async move {
                match work {
                    Work::Object(meta) => pipeline.process(&meta, false, &abandon).await,
                    Work::Resume(meta) => pipeline.process(&meta, true, &abandon).await,
                    Work::OutsideLayout(meta) => {
                        pipeline.record_outside_layout(&meta, &abandon).await
                    }
                }
            });
            self.running.insert(handle.id(), (key, size, lane));
        }
    }

    /// Forgets a task that ended; returns its key and lane.
    fn ended(&mut self, id: Id) -> (String, Lane) {
        let (key, size, lane) = self
            .running
            .remove(&id)
            .unwrap_or((String::new(), 0, Lane::Live));
        let state = self.lane(lane);
        state.in_flight = state.in_flight.saturating_sub(1);
        state.bytes_in_flight = state.bytes_in_flight.saturating_sub(size);
        (key, lane)
    }

    /// The next object whose task ended, or `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Ended> {
        self.next_with_lane().await.map(|(ended, _)| ended)
    }

    /// [`Scheduler::next`] with the lane the object ran on.
    pub async fn next_with_lane(&mut self) -> Option<(Ended, Lane)> {
        let (ended, lane) = match self.tasks.join_next_with_id().await? {
            Ok((id, result)) => {
                let (_, lane) = self.ended(id);
                if let (Some(room), ObjectResult::Done(entry)) = (&mut self.room, &result) {
                    room.learn(entry.events, entry.size);
                }
                (Ended::Object(result), lane)
            }
            Err(e) => {
                let (key, lane) = self.ended(e.id());
                if e.is_panic() {
                    let payload = e.into_panic();
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    (Ended::Panicked { key, message }, lane)
                } else {
                    (Ended::Object(ObjectResult::Abandoned { key }), lane)
                }
            }
        };
        self.in_progress.remove(ended.key());
        self.fill();
        Some((ended, lane))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// How many of `sizes`, queued in order, start at once under `admission`.
    fn started(admission: Admission, sizes: &[u64]) -> usize {
        let (mut in_flight, mut bytes) = (0, 0);
        for &size in sizes {
            if !admission.admits(in_flight, bytes, size) {
                break;
            }
            in_flight += 1;
            bytes += size;
        }
        in_flight
    }

    #[test]
    fn small_objects_start_up_to_the_ceiling_within_the_budget() {
        let default = Admission::new(4, SMALL_OBJECT_BUDGET);
        assert_eq!(
            started(default, &[3_000; 10_000]),
            SMALL_OBJECT_CEILING,
            "10,000 objects of 3 KB: the ceiling binds"
        );
        assert_eq!(
            started(default, &[MIB; 100]),
            16,
            "objects of 1 MiB: the budget binds"
        );
        assert_eq!(
            started(Admission::new(1, 10 * MIB), &[4 * MIB; 10]),
            2,
            "4 + 4 fit 10 MiB, a third does not"
        );
    }

    #[test]
    fn large_objects_still_start_object_concurrency_at_a_time() {
        let default = Admission::new(4, SMALL_OBJECT_BUDGET);
        assert_eq!(started(default, &[100 * MIB; 10]), 4);
        assert!(
            !default.admits(4, 100 * MIB, 1),
            "one large object in flight uses up the budget"
        );
        assert!(default.admits(3, 400 * MIB, 100 * MIB), "a regular slot");
        assert_eq!(
            started(
                Admission::new(1, SMALL_OBJECT_BUDGET),
                &[1, 100 * MIB, 1, 1]
            ),
            1,
            "the queue is not reordered: the small ones wait behind the large one"
        );
        assert_eq!(
            started(Admission::new(300, SMALL_OBJECT_BUDGET), &[1; 1000]),
            300,
            "the ceiling never lowers --object-concurrency"
        );
    }

    #[test]
    fn beyond_the_regular_slots_no_more_start_than_the_budget_finishes_before_a_stop() {
        // 250 events/s for 30 s: 7,500 events; objects of 1,000 events in 100 KB.
        let mut room = BudgetRoom::new(
            Box::new(|lane| (lane == Lane::Backfill).then_some(250.0)),
            std::time::Duration::from_secs(30),
        );
        assert_eq!(room.bytes(Lane::Backfill), None, "nothing learned yet");
        room.learn(1_000, 100_000);
        assert_eq!(room.bytes(Lane::Backfill), Some(750_000));
        assert_eq!(room.bytes(Lane::Live), None, "no rate known");
        let default = Admission::new(4, SMALL_OBJECT_BUDGET);
        let (mut in_flight, mut bytes) = (0, 0);
        while default.admits_within(in_flight, bytes, 100_000, room.bytes(Lane::Backfill)) {
            in_flight += 1;
            bytes += 100_000;
        }
        assert_eq!(
            in_flight, 7,
            "7 × 1,000 events fit 7,500; the byte budget alone: 167"
        );
        assert!(
            default.admits_within(3, 10 * MIB, MIB, Some(0)),
            "the regular slots are never held back"
        );
    }

    #[test]
    fn a_zero_budget_or_a_bare_count_is_a_fixed_limit() {
        for admission in [
            Admission::new(4, 0),
            Admission::fixed(4),
            Admission::from(4),
        ] {
            assert_eq!(started(admission, &[0; 100]), 4, "{admission:?}");
            assert_eq!(started(admission, &[1; 100]), 4, "{admission:?}");
        }
        assert_eq!(Admission::fixed(0).objects, 1, "at least one");
        assert_eq!(started(Admission::new(0, 0), &[1; 10]), 1);
    }
}
