//! Delivery: Custom HTTP events in; paced, batched, retried bulk requests to Heap out.
//!
//! # Guarantee
//! Every submitted event ends in exactly one of three states, recorded on its [`Tracker`]:
//! - **delivered**: a request holding it got a 2xx from Heap;
//! - **skipped** by policy: it has no identity under the configured identity fields;
//! - **parked**: written as a dead letter, durably, before it is counted.
//!
//! A failed dead-letter write is not a fourth outcome at first: the letters stay queued and
//! the write is tried again with backoff, for as long as the state store is down (a long-lived
//! `run`), or up to `park_retry_max` (bounded runs). Only then are the events given back as
//! **unfinished**: their objects are not recorded, so the next run reads them again.
//!
//! A configuration error from Heap (401, 403, 404, a redirect) stops delivery with the events
//! still unresolved: nothing is parked, nothing is dropped, and a later run sends them again.
//! Heap may receive an event more than once (a timeout after Heap stored it, a crash before
//! the ledger recorded it); the idempotency key, the Currents event id, makes repeats no-ops.
//!
//! # How
//! Mapped events wait in `pending`. A batch takes, in arrival order, the events whose identity
//! and app still have room in the [`Pacer`]'s windows, up to 1000 events and the body limit:
//! a hot identity's excess stays pending while other identities' events keep flowing. A
//! failed batch goes back through the pacer after its backoff; a rejected (400) batch is split
//! in halves until the offending events are alone, and only those are parked.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::client::{Answer, HeapClient, Reply};
use super::map::{HeapMapper, Mapped};
use super::pacer::{Pacer, RateLimits};
use super::retry::RetryPolicy;
use super::track::{bulk_body, bulk_overhead};
use crate::currents::event::CustomHttpEvent;
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::rng::Rng;
use crate::telemetry::Metrics;

/// Delivery settings; the command line documents each.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Heap's environment id; sent in every body, never logged.
    pub app_id: String,
    pub limits: RateLimits,
    /// Events per bulk request (Heap allows at most 1000).
    pub max_batch_events: usize,
    /// Bytes per request body; an event that cannot fit alone is parked.
    pub max_body_bytes: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Mapped events held in memory waiting for room; intake pauses beyond this.
    pub max_pending: usize,
    /// Seed for retry jitter; `None` seeds from the clock.
    pub jitter_seed: Option<u64>,
    /// How long failing dead-letter writes are retried before their events are given back
    /// unfinished; `None`: until delivery ends (a long-lived `run` outlasts a store outage).
    pub park_retry_max: Option<Duration>,
}

impl DeliveryConfig {
    pub fn new(app_id: impl Into<String>) -> Self {
        DeliveryConfig {
            app_id: app_id.into(),
            limits: RateLimits::default(),
            max_batch_events: 1000,
            max_body_bytes: 1024 * 1024,
            concurrency: 2,
            retry: RetryPolicy::default(),
            max_pending: 5_000,
            jitter_seed: None,
            park_retry_max: None,
        }
    }
}

/// One event to deliver, with where it came from and whom to tell how it ended.
pub struct Submission {
    pub event: CustomHttpEvent,
    /// The Currents object key, recorded with dead letters.
    pub object: Arc<str>,
    pub tracker: Arc<Tracker>,
}

/// Counts how the events of one unit of work (an object, a replay) ended.
#[derive(Debug, Default)]
pub struct Tracker {
    delivered: AtomicU64,
    skipped: AtomicU64,
    parked: AtomicU64,
    /// Events whose dead letters could not be written: their object must not be recorded.
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

    fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

/// Per event type counts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TypeStats {
    pub read: u64,
    pub sent: u64,
    pub skipped_no_identity: u64,
    pub parked: u64,
}

/// What a delivery run did, for reports and metrics.
#[derive(Debug, Default, Clone)]
pub struct DeliveryStats {
    pub per_type: HashMap<Arc<str>, TypeStats>,
    /// Requests by HTTP status (`"200"`, `"429"`, ...) or `"no response"`.
    pub requests: HashMap<String, u64>,
    pub retries: u64,
    pub bisections: u64,
    /// Times sending waited for rate-limit room, and how long in all.
    pub pacing_waits: u64,
    pub pacing_wait_time: Duration,
    pub truncated_values: u64,
    pub collisions_dropped: u64,
}

impl DeliveryStats {
    pub fn total(&self) -> TypeStats {
        self.per_type
            .values()
            .fold(TypeStats::default(), |a, s| TypeStats {
                read: a.read + s.read,
                sent: a.sent + s.sent,
                skipped_no_identity: a.skipped_no_identity + s.skipped_no_identity,
                parked: a.parked + s.parked,
            })
    }

    fn of(&mut self, event_type: &Arc<str>) -> &mut TypeStats {
        if !self.per_type.contains_key(event_type) {
            self.per_type
                .insert(event_type.clone(), TypeStats::default());
        }
        self.per_type.get_mut(event_type).expect("inserted above")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("Heap refused the configuration, so delivery stopped: {0}")]
    Configuration(String),
    #[error("a request task failed: {0}")]
    Task(String),
}

/// Whether a batch being retried fits the pacer's room now.
fn fits(pacer: &mut Pacer, batch: &Batch, now: Instant) -> bool {
    let per_identity = batch.per_identity();
    let total: u64 = per_identity.values().sum();
    pacer.app_room(now) >= total
        && per_identity
            .iter()
            .all(|(id, n)| pacer.identity_room(id, now) >= *n)
}

/// An event mapped, serialized once, and waiting to be sent. The original is kept as Custom
/// HTTP JSON, one allocation instead of dozens, in case it must be parked: thousands wait here.
struct Item {
    identity: Arc<str>,
    json: Box<[u8]>,
    original: Box<[u8]>,
    event_type: Arc<str>,
    object: Arc<str>,
    tracker: Arc<Tracker>,
}

/// An event waiting for its dead letter to be written.
struct ToPark {
    letter: DeadLetter,
    event_type: Arc<str>,
    tracker: Arc<Tracker>,
}

impl ToPark {
    fn submission(submission: Submission, reason: String) -> Self {
        ToPark {
            event_type: submission.event.event_type.clone(),
            letter: DeadLetter::new(submission.event, reason, &*submission.object),
            tracker: submission.tracker,
        }
    }

    fn item(item: Item, reason: String) -> Self {
        // Written by `intake` from a CustomHttpEvent: it reads back.
        let event: CustomHttpEvent =
            serde_json::from_slice(&item.original).expect("queued events read back");
        ToPark {
            letter: DeadLetter::new(event, reason, &*item.object),
            event_type: item.event_type,
            tracker: item.tracker,
        }
    }
}

/// Dead-letter writes that are failing: when to try again, and since when.
struct ParkFailure {
    since: Instant,
    attempts: u32,
    next_try: Instant,
}

struct Batch {
    items: Vec<Item>,
    /// Failed attempts so far.
    attempt: u32,
    first_try: Instant,
}

impl Batch {
    fn new(items: Vec<Item>, now: Instant) -> Self {
        Batch {
            items,
            attempt: 0,
            first_try: now,
        }
    }

    fn per_identity(&self) -> HashMap<Arc<str>, u64> {
        let mut counts = HashMap::new();
        for item in &self.items {
            *counts.entry(item.identity.clone()).or_insert(0) += 1;
        }
        counts
    }
}

pub struct Delivery {
    config: DeliveryConfig,
    client: Arc<HeapClient>,
    mapper: HeapMapper,
    dead_letters: Arc<DeadLetterStore>,
    pacer: Pacer,
    rng: Rng,
    pending: VecDeque<Item>,
    /// Batches waiting for their retry time.
    retries: Vec<(Instant, Batch)>,
    in_flight: JoinSet<(Batch, Reply, Duration)>,
    to_park: Vec<ToPark>,
    park_failure: Option<ParkFailure>,
    stats: DeliveryStats,
    body_overhead: usize,
    blocked_since: Option<Instant>,
    metrics: Arc<Metrics>,
}

enum Wake {
    Replied(Batch, Reply, Duration),
    Received(Option<Submission>),
    Timer,
}

impl Delivery {
    pub fn new(
        config: DeliveryConfig,
        client: Arc<HeapClient>,
        mapper: HeapMapper,
        dead_letters: Arc<DeadLetterStore>,
    ) -> Self {
        let rng = config.jitter_seed.map_or_else(Rng::from_entropy, Rng::new);
        Delivery {
            pacer: Pacer::new(config.limits),
            body_overhead: bulk_overhead(&config.app_id),
            config,
            client,
            mapper,
            dead_letters,
            rng,
            pending: VecDeque::new(),
            retries: Vec::new(),
            in_flight: JoinSet::new(),
            to_park: Vec::new(),
            park_failure: None,
            stats: DeliveryStats::default(),
            blocked_since: None,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Reports to these metrics (by default, to a private instance nobody reads).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Delivers everything received until `input` closes. On a fatal error, the events not yet
    /// resolved stay unresolved (their trackers say so) and the stats so far are returned.
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<Submission>,
    ) -> (DeliveryStats, Result<(), DeliveryError>) {
        let result = self.drive(&mut input).await;
        self.in_flight.abort_all();
        (self.stats, result)
    }

    async fn drive(&mut self, input: &mut mpsc::Receiver<Submission>) -> Result<(), DeliveryError> {
        let mut input_open = true;
        loop {
            while input_open && self.held() < self.config.max_pending {
                match input.try_recv() {
                    Ok(submission) => self.intake(submission),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => input_open = false,
                }
            }
            self.flush_parked(Instant::now()).await;
            let now = Instant::now();
            self.dispatch(now);
            if !input_open
                && self.pending.is_empty()
                && self.retries.is_empty()
                && self.in_flight.is_empty()
                && self.to_park.is_empty()
            {
                return Ok(());
            }
            let wake_at = self.next_timer(now);
            let can_receive = input_open && self.held() < self.config.max_pending;
            let wake = tokio::select! {
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    let (batch, reply, latency) = joined.map_err(|e| DeliveryError::Task(e.to_string()))?;
                    Wake::Replied(batch, reply, latency)
                }
                received = input.recv(), if can_receive => Wake::Received(received),
                _ = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => Wake::Timer,
                // Nothing to wait for but work left would be a bug in the pacer's bookkeeping:
                // look again shortly rather than stall or panic.
                else => {
                    tracing::warn!(pending = self.pending.len(), retries = self.retries.len(), "delivery found nothing to wait for; checking again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Wake::Timer
                }
            };
            match wake {
                Wake::Replied(batch, reply, latency) => self.handle(batch, reply, latency)?,
                Wake::Received(Some(submission)) => self.intake(submission),
                Wake::Received(None) => input_open = false,
                Wake::Timer => {}
            }
        }
    }

    /// Events held in memory: waiting to be sent, or waiting for their dead letter.
    fn held(&self) -> usize {
        self.pending.len() + self.to_park.len()
    }

    fn intake(&mut self, submission: Submission) {
        self.stats.of(&submission.event.event_type).read += 1;
        self.metrics.events_read(&submission.event.event_type);
        match self.mapper.map(&submission.event) {
            Mapped::Track { event, adjustments } => {
                self.stats.truncated_values += u64::from(adjustments.truncated);
                self.stats.collisions_dropped += u64::from(adjustments.collisions_dropped);
                let json = serde_json::to_vec(&event).expect("track events serialize");
                if json.len() + 1 + self.body_overhead > self.config.max_body_bytes {
                    let reason = format!(
                        "the mapped event is {} bytes, over the {}-byte request limit (--max-body-bytes)",
                        json.len(),
                        self.config.max_body_bytes
                    );
                    self.to_park.push(ToPark::submission(submission, reason));
                    return;
                }
                let original = serde_json::to_vec(&submission.event).expect("events serialize");
                self.pending.push_back(Item {
                    identity: Arc::from(event.identity),
                    json: json.into_boxed_slice(),
                    original: original.into_boxed_slice(),
                    event_type: submission.event.event_type,
                    object: submission.object,
                    tracker: submission.tracker,
                });
            }
            Mapped::NoIdentity => {
                self.stats
                    .of(&submission.event.event_type)
                    .skipped_no_identity += 1;
                self.metrics.events_skipped(&submission.event.event_type);
                submission.tracker.add(&submission.tracker.skipped);
            }
            Mapped::Unsendable(reason) => self.to_park.push(ToPark::submission(submission, reason)),
        }
    }

    /// Sends what the pacer and the concurrency limit allow right now.
    fn dispatch(&mut self, now: Instant) {
        let mut blocked_by_pacer = false;
        while self.in_flight.len() < self.config.concurrency {
            if let Some(i) = self.retries.iter().position(|(due, _)| *due <= now) {
                if fits(&mut self.pacer, &self.retries[i].1, now) {
                    let (_, batch) = self.retries.swap_remove(i);
                    self.send(batch, now);
                    continue;
                }
                // A due retry goes before new events, or new events could starve it of room.
                blocked_by_pacer = true;
                break;
            }
            match self.compose(now) {
                Some(batch) => self.send(batch, now),
                None => {
                    blocked_by_pacer |= !self.pending.is_empty();
                    break;
                }
            }
        }
        match (blocked_by_pacer, self.blocked_since) {
            (true, None) => {
                self.blocked_since = Some(now);
                self.stats.pacing_waits += 1;
                self.metrics.pacing_wait();
            }
            (false, Some(since)) => {
                self.stats.pacing_wait_time += now - since;
                self.blocked_since = None;
            }
            _ => {}
        }
        if self.pacer.tracked_identities() > 4 * self.config.max_pending.max(1) {
            self.pacer.forget_idle(now);
        }
    }

    /// Takes pending events in arrival order, skipping identities without room. The queue is
    /// rotated in place (skipped events go to the back in order), so no batch allocates a copy.
    fn compose(&mut self, now: Instant) -> Option<Batch> {
        if self.pending.is_empty() {
            return None;
        }
        let mut app_room = self
            .pacer
            .app_room(now)
            .min(self.config.max_batch_events as u64);
        let mut bytes = self.body_overhead;
        let mut rooms: HashMap<Arc<str>, u64> = HashMap::new();
        let mut selected = Vec::new();
        let mut left = self.pending.len();
        while left > 0 {
            if app_room == 0 {
                break;
            }
            let Some(item) = self.pending.pop_front() else {
                break;
            };
            left -= 1;
            if bytes + item.json.len() + 1 > self.config.max_body_bytes {
                self.pending.push_front(item);
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
                self.pending.push_back(item);
                continue;
            }
            *room -= 1;
            app_room -= 1;
            bytes += item.json.len() + 1;
            selected.push(item);
        }
        // Events not looked at go behind the skipped ones, keeping arrival order.
        self.pending.rotate_left(left);
        (!selected.is_empty()).then(|| Batch::new(selected, now))
    }

    fn send(&mut self, batch: Batch, now: Instant) {
        self.pacer.start(&batch.per_identity());
        let body = bulk_body(&self.config.app_id, batch.items.iter().map(|i| &*i.json));
        let client = self.client.clone();
        self.in_flight.spawn(async move {
            let reply = client.post(body).await;
            (batch, reply, now.elapsed())
        });
    }

    fn handle(
        &mut self,
        mut batch: Batch,
        reply: Reply,
        latency: Duration,
    ) -> Result<(), DeliveryError> {
        let now = Instant::now();
        self.pacer.finish(&batch.per_identity(), now);
        let status = reply
            .status
            .map_or_else(|| "no response".to_string(), |s| s.to_string());
        *self.stats.requests.entry(status.clone()).or_insert(0) += 1;
        self.metrics.heap_request(&status, latency);
        match reply.answer {
            Answer::Accepted => {
                for item in batch.items {
                    self.stats.of(&item.event_type).sent += 1;
                    self.metrics.events_sent(&item.event_type);
                    item.tracker.add(&item.tracker.delivered);
                }
            }
            Answer::Retry {
                reason,
                retry_after,
            } => {
                let delay = self
                    .config
                    .retry
                    .delay(batch.attempt, retry_after, &mut self.rng);
                let elapsed = now + delay - batch.first_try;
                if elapsed > self.config.retry.max_elapsed {
                    let reason = format!(
                        "gave up after {} attempts over {}s (--retry-max-time): {reason}",
                        batch.attempt + 1,
                        (now - batch.first_try).as_secs()
                    );
                    self.park_batch(batch, reason);
                } else {
                    tracing::debug!(
                        events = batch.items.len(),
                        attempt = batch.attempt + 1,
                        ?delay,
                        "{reason}; retrying"
                    );
                    batch.attempt += 1;
                    self.stats.retries += 1;
                    self.metrics.heap_retry();
                    self.retries.push((now + delay, batch));
                }
            }
            Answer::Rejected { reason } => {
                if batch.items.len() == 1 {
                    let reason = format!("Heap rejected the event: {reason}");
                    self.park_batch(batch, reason);
                } else {
                    // Heap may reject a whole request for one bad event: halve until it is alone.
                    self.stats.bisections += 1;
                    let second = batch.items.split_off(batch.items.len() / 2);
                    self.retries.push((now, Batch::new(batch.items, now)));
                    self.retries.push((now, Batch::new(second, now)));
                }
            }
            Answer::Fatal { reason } => return Err(DeliveryError::Configuration(reason)),
        }
        Ok(())
    }

    fn park_batch(&mut self, batch: Batch, reason: String) {
        self.to_park.extend(
            batch
                .items
                .into_iter()
                .map(|i| ToPark::item(i, reason.clone())),
        );
    }

    /// Writes queued dead letters, then counts them as parked. A failed write keeps them
    /// queued and tries again after a backoff (0.5 s doubling to 30 s); past
    /// `park_retry_max`, the events are given back unfinished.
    async fn flush_parked(&mut self, now: Instant) {
        if self.to_park.is_empty() || self.park_failure.as_ref().is_some_and(|f| f.next_try > now) {
            return;
        }
        let letters: Vec<&DeadLetter> = self.to_park.iter().map(|p| &p.letter).collect();
        let written = self.dead_letters.park(&letters).await;
        drop(letters);
        match written {
            Ok(_) => {
                if self.park_failure.take().is_some() {
                    tracing::info!("dead letters can be written again");
                }
                self.metrics.state_write_succeeded();
                for park in std::mem::take(&mut self.to_park) {
                    tracing::warn!(event_id = %park.letter.event.id, object = %park.letter.object, "parked event as a dead letter: {}", park.letter.reason);
                    self.stats.of(&park.event_type).parked += 1;
                    self.metrics.events_dead_lettered(&park.event_type);
                    park.tracker.add(&park.tracker.parked);
                }
            }
            Err(e) => {
                self.metrics.state_write_failed(&e.to_string());
                let failure = self.park_failure.get_or_insert(ParkFailure {
                    since: now,
                    attempts: 0,
                    next_try: now,
                });
                failure.attempts += 1;
                let backoff = Duration::from_millis(500)
                    .saturating_mul(1 << failure.attempts.min(6))
                    .min(Duration::from_secs(30));
                failure.next_try = now + backoff;
                let failing_for = now - failure.since;
                if self
                    .config
                    .park_retry_max
                    .is_some_and(|max| failing_for >= max)
                {
                    tracing::error!(
                        events = self.to_park.len(),
                        "cannot write dead letters for {}s, giving up: their objects are left unrecorded for the next run: {e}",
                        failing_for.as_secs()
                    );
                    for park in std::mem::take(&mut self.to_park) {
                        park.tracker.add(&park.tracker.unfinished);
                    }
                    self.park_failure = None;
                } else {
                    tracing::warn!(
                        events = self.to_park.len(),
                        "cannot write dead letters, trying again in {backoff:?}: {e}"
                    );
                }
            }
        }
    }

    /// The next time something may become sendable without a reply arriving.
    fn next_timer(&self, now: Instant) -> Option<Instant> {
        let retry = self
            .retries
            .iter()
            .map(|(due, _)| *due)
            .filter(|due| *due > now)
            .min();
        let pacing = (!self.pending.is_empty() || !self.retries.is_empty())
            .then(|| self.pacer.next_expiry(now))
            .flatten();
        let park = self
            .park_failure
            .as_ref()
            .filter(|_| !self.to_park.is_empty())
            .map(|f| f.next_try);
        retry.into_iter().chain(pacing).chain(park).min()
    }
}
