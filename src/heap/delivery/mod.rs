//! Delivery: Custom HTTP events in; paced, batched, retried bulk requests to Heap out.
//!
//! Where each event ends, and the guarantee that it ends in exactly one place, is owned by
//! [`outcome`]. The parts:
//! - [`batcher`]: pending events, pacer-aware batch composition and the linger that lets
//!   small objects share requests (pure, takes `now`);
//! - [`policy`]: Heap's answer → accept, retry at, bisect, park or fatal (pure);
//! - [`parking`]: dead letters on their way to the state store, with their accounting;
//! - [`dispose`]: the one decision, send / skip / park, for each mapped event;
//! - [`user_properties`]: the second lane, user-property updates to `add_user_properties`
//!   (its protocol is stated there);
//! - this module: the thin async driver that maps events in, sends what the batcher offers
//!   through a [`Transport`], and applies the policy to each answer.

pub mod batcher;
pub mod dispose;
pub mod outcome;
pub mod parking;
pub mod policy;
pub mod user_properties;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

pub use dispose::{BodyLimit, Disposer, Disposition, dispose};
pub use outcome::{Parts, Submission, Tracker};

pub use self::batcher::Lane;
use self::batcher::{Batch, Batcher, Item, Next};
use self::outcome::Resolution;
use self::parking::{Parking, ToPark};
use self::policy::{Action, Attempted, decide};
use self::user_properties::{Effects, Part, UserPropertiesLane};
use super::client::{Answer, Reply, Transport};
use super::map::HeapMapper;
use super::pacer::{AppView, Counted, RateLimits, SentHistory};
use super::properties::PropertyConfig;
use super::properties::map::{Mapped as PropertyMapped, PropertyMapper};
use super::retry::RetryPolicy;
use super::track::{bulk_body, bulk_overhead};
use crate::currents::event::CustomHttpEvent;
use crate::deadletter::{DeadLetter, DeadLetterStore};
use crate::telemetry::Metrics;
use crate::telemetry::events::{
    BatchBisected, EventsRead, EventsSent, EventsSkipped, HeapRequest, HeapRetry, LaneEventsSent,
    MappingAdjusted, RateBudget, RateLimitWait, UserPropertyUpdates,
};
use fastrand::Rng;

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
    /// How long events that cannot fill a request wait for more to join them, measured from
    /// the oldest; zero sends whatever is pending as soon as a request slot is free. Due
    /// retries never wait, nor does anything once the input has closed or intake has paused
    /// (see [`batcher`]).
    pub batch_linger: Duration,
    /// Seed for retry jitter (fastrand); `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
    /// How long failing dead-letter writes are retried before their events are given back
    /// unfinished; `None`: until delivery ends (a long-lived `run` outlasts a store outage).
    pub park_retry_max: Option<Duration>,
    /// Requests to Heap start only while `now < *fence.borrow()` (the lease's self-fence); when the deadline passes, no request starts (batches wait, nothing is lost or parked) until the value moves past now. None: no fence.
    pub fence: Option<tokio::sync::watch::Receiver<tokio::time::Instant>>,
    /// The predecessor's sends, counted before the first request (see pacer::Seed).
    pub seed: Option<crate::heap::pacer::Seed>,
    /// The user-properties output (off unless its allowlist names fields).
    pub properties: PropertyConfig,
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
            batch_linger: Duration::from_millis(100),
            jitter_seed: None,
            park_retry_max: None,
            fence: None,
            seed: None,
            properties: PropertyConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("Heap refused the configuration, so delivery stopped: {0}")]
    Configuration(String),
    #[error("a request task failed: {0}")]
    Task(String),
}

pub struct Delivery {
    config: DeliveryConfig,
    transport: Arc<dyn Transport>,
    mapper: HeapMapper,
    limit: BodyLimit,
    batcher: Batcher,
    parking: Parking,
    rng: Rng,
    in_flight: JoinSet<(Batch, Reply, Duration)>,
    /// Whether the last dispatch left events waiting for rate-limit room.
    blocked: bool,
    metrics: Arc<Metrics>,
    /// Notified when a unit whose events this delivery took is withdrawn.
    withdrawals: Arc<Notify>,
    /// The lease's self-fence: no request starts at or after its deadline.
    fence: Option<watch::Receiver<Instant>>,
    /// The app window as of the last request started or answered, for the lease.
    tap: HistoryTap,
    /// The largest request body Heap took, and whether a 413 lowered the limit already.
    largest_accepted_body: usize,
    body_limit_learnt: bool,
    /// The user-properties lane and its mapper, when that output is on.
    user_properties: Option<(UserPropertiesLane, PropertyMapper)>,
}

/// What this delivery sent to the app recently, readable from another task while it runs
/// (the lease writes it at each renewal): updated after each request starts and is answered.
#[derive(Debug, Clone, Default)]
pub struct HistoryTap(Arc<std::sync::Mutex<AppView>>);

impl HistoryTap {
    /// The history as of `now` (see [`SentHistory`]).
    pub fn snapshot(&self, now: Instant) -> SentHistory {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .history(now)
    }

    fn update(&self, view: AppView) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = view;
    }
}

enum Wake {
    Replied(Batch, Reply, Duration),
    PropertiesAnswered(Reply),
    Received(Option<Submission>, Lane),
    Withdrawn,
    Timer,
    FenceMoved,
}

/// Waits until the fence's deadline changes (forever without a fence or once its sender is
/// gone: the last deadline then stands).
async fn fence_moved(fence: &mut Option<watch::Receiver<Instant>>) {
    match fence {
        Some(fence) => {
            if fence.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

/// The user-properties lane's answer (forever when the lane is off or has nothing on the wire).
async fn properties_answer(lane: &mut Option<(UserPropertiesLane, PropertyMapper)>) -> Reply {
    match lane {
        Some((lane, _)) => lane.answer().await.0,
        None => std::future::pending().await,
    }
}

/// Receives from an input that is open (the select's guard checks).
async fn recv(input: &mut Option<mpsc::Receiver<Submission>>) -> Option<Submission> {
    match input {
        Some(input) => input.recv().await,
        None => std::future::pending().await,
    }
}

/// What Heap's answer means for the pacer: only events Heap may have stored take room.
pub(super) fn counted(reply: &Reply) -> Counted {
    match (reply.status, &reply.answer) {
        (Some(200..=299), _) => Counted::Stored,
        (
            Some(429),
            Answer::Retry {
                scope, retry_after, ..
            },
        ) => Counted::Throttled {
            scope: *scope,
            retry_after: *retry_after,
        },
        (Some(429), _) => Counted::Throttled {
            scope: None,
            retry_after: None,
        },
        (Some(_), _) => Counted::NotStored,
        (None, _) if reply.connected => Counted::Stored,
        (None, _) => Counted::NotStored,
    }
}

impl Delivery {
    pub fn new(
        config: DeliveryConfig,
        transport: Arc<dyn Transport>,
        mapper: HeapMapper,
        dead_letters: Arc<DeadLetterStore>,
    ) -> Self {
        let mut batcher = Batcher::new(
            config.limits,
            config.max_batch_events,
            config.max_body_bytes,
            bulk_overhead(&config.app_id),
        )
        .lingering(config.batch_linger);
        let now = Instant::now();
        if let Some(seed) = &config.seed {
            batcher.pacer().seed(seed, now);
        }
        let tap = HistoryTap::default();
        tap.update(batcher.pacer().app_view(now));
        let user_properties = match transport.user_properties() {
            Some(endpoint) if config.properties.enabled() => Some((
                UserPropertiesLane::new(
                    config.properties.clone(),
                    config.app_id.clone(),
                    endpoint,
                    config.retry,
                    config.max_body_bytes,
                ),
                PropertyMapper::new(
                    config.properties.clone(),
                    mapper.identity_sources().to_vec(),
                ),
            )),
            _ => None,
        };
        Delivery {
            user_properties,
            rng: config.jitter_seed.map_or_else(Rng::new, Rng::with_seed),
            fence: config.fence.clone(),
            tap,
            largest_accepted_body: 0,
            body_limit_learnt: false,
            batcher,
            parking: Parking::new(dead_letters, config.park_retry_max),
            limit: BodyLimit::new(config.max_body_bytes, &config.app_id),
            config,
            transport,
            mapper,
            in_flight: JoinSet::new(),
            blocked: false,
            metrics: Arc::new(Metrics::new()),
            withdrawals: Arc::new(Notify::new()),
        }
    }

    /// Reports to these metrics (by default, to a private instance).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this delivery reports to.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What this delivery sends, for the lease body, readable while it runs.
    pub fn history_tap(&self) -> HistoryTap {
        self.tap.clone()
    }

    /// Whether the lease's self-fence lets a request start now.
    fn fenced(&self, now: Instant) -> bool {
        self.fence
            .as_ref()
            .is_some_and(|fence| now >= *fence.borrow())
    }

    /// Delivers everything received until `input` closes. On a fatal error, the events not yet
    /// resolved stay unresolved (their trackers say so).
    pub async fn run(self, input: mpsc::Receiver<Submission>) -> Result<(), DeliveryError> {
        self.run_lanes(input, None).await
    }

    /// Delivers the live lane's events first and the backfill lane's in the room they leave
    /// (see [`batcher`]), until both inputs close. Each lane holds at most `max_pending`
    /// events, so a backfill's backlog never stops live events from coming in.
    pub async fn run_lanes(
        mut self,
        live: mpsc::Receiver<Submission>,
        backfill: Option<mpsc::Receiver<Submission>>,
    ) -> Result<(), DeliveryError> {
        RateBudget {
            app_events: self.batcher.app_budget(Instant::now()),
            lowered_identities: 0,
        }
        .emit(&self.metrics);
        let mut inputs = [Some(live), backfill];
        let result = self.drive(&mut inputs).await;
        self.in_flight.abort_all();
        result
    }

    async fn drive(
        &mut self,
        inputs: &mut [Option<mpsc::Receiver<Submission>>; 2],
    ) -> Result<(), DeliveryError> {
        const LANES: [Lane; 2] = [Lane::Live, Lane::Backfill];
        loop {
            for (slot, lane) in inputs.iter_mut().zip(LANES) {
                while let Some(input) = slot.as_mut()
                    && self.held(lane) < self.config.max_pending
                {
                    match input.try_recv() {
                        Ok(submission) => self.intake(submission, lane),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => *slot = None,
                    }
                }
            }
            self.parking.flush(Instant::now(), &self.metrics).await;
            // With every input closed or paused, no event can join a held batch before
            // something is sent: holding it would only delay it.
            let can_receive = |lane: Lane, this: &Self, open: bool| {
                open && this.held(lane) < this.config.max_pending
            };
            let live_open = inputs[0].is_some();
            let backfill_open = inputs[1].is_some();
            let receive_live = can_receive(Lane::Live, self, live_open);
            let receive_backfill = can_receive(Lane::Backfill, self, backfill_open);
            self.batcher.set_flush(!receive_live && !receive_backfill);
            let now = Instant::now();
            self.dispatch(now);
            self.dispatch_user_properties(now)?;
            let properties_wake = self
                .user_properties
                .as_mut()
                .and_then(|(lane, _)| lane.next_wake(now));
            if !live_open
                && !backfill_open
                && !self.batcher.has_work()
                && self.in_flight.is_empty()
                && self.parking.is_empty()
                && !self
                    .user_properties
                    .as_ref()
                    .is_some_and(|(lane, _)| lane.has_work())
            {
                return Ok(());
            }
            let wake_at = self
                .batcher
                .next_wake(now)
                .into_iter()
                .chain(self.parking.next_try())
                .chain(properties_wake)
                .min();
            let [live, backfill] = inputs;
            let wake = tokio::select! {
                biased;
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    let (batch, reply, latency) = joined.map_err(|e| DeliveryError::Task(e.to_string()))?;
                    Wake::Replied(batch, reply, latency)
                }
                reply = properties_answer(&mut self.user_properties) => Wake::PropertiesAnswered(reply),
                received = recv(live), if receive_live => Wake::Received(received, Lane::Live),
                received = recv(backfill), if receive_backfill => Wake::Received(received, Lane::Backfill),
                _ = self.withdrawals.notified() => Wake::Withdrawn,
                _ = fence_moved(&mut self.fence), if self.fence.is_some() => Wake::FenceMoved,
                _ = sleep_until(wake_at.unwrap_or(now)), if wake_at.is_some() => Wake::Timer,
                // Nothing to wait for but work left would be a bug in the pacer's bookkeeping:
                // look again shortly rather than stall or panic.
                else => {
                    tracing::warn!(pending = self.batcher.pending(), "delivery found nothing to wait for; checking again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    Wake::Timer
                }
            };
            match wake {
                Wake::Replied(batch, reply, latency) => self.answered(batch, reply, latency)?,
                Wake::PropertiesAnswered(reply) => self.user_properties_answered(reply)?,
                Wake::Received(Some(submission), lane) => self.intake(submission, lane),
                Wake::Received(None, Lane::Live) => inputs[0] = None,
                Wake::Received(None, Lane::Backfill) => inputs[1] = None,
                Wake::Withdrawn => self.withdraw(),
                Wake::Timer | Wake::FenceMoved => {}
            }
        }
    }

    /// A lane's events held in memory: waiting to be sent, or waiting for their dead letter
    /// (of any lane: parking is rare and bounded by both).
    fn held(&self, lane: Lane) -> usize {
        self.batcher.pending_in(lane)
            + self.parking.len()
            + self.user_properties.as_ref().map_or(0, |(l, _)| l.held())
    }

    fn intake(&mut self, submission: Submission, lane: Lane) {
        submission.tracker.held_by(&self.withdrawals);
        if submission.tracker.is_withdrawn() {
            submission
                .tracker
                .resolve(Resolution::Withdrawn, submission.record);
            return;
        }
        if submission.parts != Parts::Event {
            self.intake_update(&submission);
        }
        if submission.parts == Parts::Update {
            return;
        }
        let event_type = submission.event.event_type.clone();
        EventsRead {
            event_type: &event_type,
            count: 1,
        }
        .emit(&self.metrics);
        match dispose(&self.mapper, &submission.event, self.limit) {
            Disposition::Send { event, adjustments } => {
                MappingAdjusted {
                    truncated: u64::from(adjustments.truncated),
                    collisions_dropped: u64::from(adjustments.collisions_dropped),
                }
                .emit(&self.metrics);
                self.batcher.push(
                    Item {
                        identity: event.identity,
                        json: event.json.into_boxed_slice(),
                        original: Box::new(submission.event),
                        event_type,
                        object: submission.object,
                        tracker: submission.tracker,
                        record: submission.record,
                        lane,
                    },
                    Instant::now(),
                );
            }
            Disposition::Skip => {
                EventsSkipped {
                    event_type: &event_type,
                    count: 1,
                }
                .emit(&self.metrics);
                submission
                    .tracker
                    .resolve(Resolution::Skipped, submission.record);
            }
            Disposition::Park(reason) => self.park(
                submission.event,
                reason,
                submission.object,
                submission.tracker,
                submission.record,
            ),
        }
    }

    /// The user-property update of a submitted event, if that output is on and the event
    /// yields one (see [`user_properties`]). With [`Parts::EventAndUpdate`] it ends on the
    /// unit's partner tracker, registered before either part can end; with
    /// [`Parts::Update`] (a replayed letter) on the submission's own tracker, which ends
    /// here too when no update can be made.
    fn intake_update(&mut self, submission: &Submission) {
        let own = submission.parts == Parts::Update;
        let Some((lane, mapper)) = &mut self.user_properties else {
            if own {
                let reason = "user properties are off (--user-properties names no field)";
                self.park_update(submission, submission.tracker.clone(), reason.into());
            }
            return;
        };
        let mapped = mapper.map(&submission.event);
        let tracker = match (&mapped, own) {
            (_, true) => submission.tracker.clone(),
            (PropertyMapped::Update(_) | PropertyMapped::Unsendable(_), false) => {
                let partner = submission.tracker.partner();
                partner.held_by(&self.withdrawals);
                partner.expect(submission.record);
                partner
            }
            _ => submission.tracker.clone(),
        };
        match mapped {
            PropertyMapped::Update(update) => {
                MappingAdjusted {
                    truncated: u64::from(update.truncated),
                    collisions_dropped: u64::from(update.dropped),
                }
                .emit(&self.metrics);
                let part = Part {
                    tracker,
                    record: submission.record,
                    event: submission.event.clone(),
                    object: submission.object.clone(),
                };
                lane.push(update, part, &self.metrics);
            }
            PropertyMapped::Unsendable(reason) => self.park_update(submission, tracker, reason),
            PropertyMapped::NoIdentity => {
                UserPropertyUpdates {
                    outcome: "no_identity",
                    count: 1,
                }
                .emit(&self.metrics);
                if own {
                    tracker.resolve(Resolution::Skipped, submission.record);
                }
            }
            // A parked update the allowlist no longer covers stays parked: dropping it
            // would lose it for good.
            PropertyMapped::Nothing if own => self.park_update(
                submission,
                tracker,
                "--user-properties does not name what this update holds; replay with the allowlist it was parked under".into(),
            ),
            PropertyMapped::Nothing => {}
        }
    }

    fn park_update(&mut self, submission: &Submission, tracker: Arc<Tracker>, reason: String) {
        if tracker.is_withdrawn() {
            tracker.resolve(Resolution::Withdrawn, submission.record);
            return;
        }
        self.parking.push(ToPark {
            event_type: submission.event.event_type.clone(),
            letter: DeadLetter::new(submission.event.clone(), reason, &*submission.object)
                .of_user_properties(),
            tracker,
            record: submission.record,
        });
    }

    /// Starts the user-properties lane's next request if the fence allows.
    fn dispatch_user_properties(&mut self, now: Instant) -> Result<(), DeliveryError> {
        if self.fenced(now) {
            return Ok(());
        }
        let Some((lane, _)) = &mut self.user_properties else {
            return Ok(());
        };
        let effects = lane.dispatch(now);
        self.apply(effects)
    }

    fn user_properties_answered(&mut self, reply: Reply) -> Result<(), DeliveryError> {
        let Some((lane, _)) = &mut self.user_properties else {
            return Ok(());
        };
        let effects = lane.answered(reply, Instant::now(), &mut self.rng, &self.metrics);
        self.apply(effects)
    }

    fn apply(&mut self, effects: Effects) -> Result<(), DeliveryError> {
        for park in effects.park {
            if park.tracker.is_withdrawn() {
                park.tracker.resolve(Resolution::Withdrawn, park.record);
            } else {
                self.parking.push(park);
            }
        }
        match effects.fatal {
            Some(reason) => Err(DeliveryError::Configuration(reason)),
            None => Ok(()),
        }
    }

    /// Drops the events of withdrawn units, queued or waiting for their dead letter: they are
    /// never sent nor parked (see [`outcome`]).
    fn withdraw(&mut self) {
        let queued = self.batcher.withdraw();
        let parking = self.parking.withdraw();
        let updates = self
            .user_properties
            .as_mut()
            .map_or(0, |(lane, _)| lane.withdraw());
        let dropped = queued.len() + parking.len() + updates;
        for item in queued {
            item.tracker.resolve(Resolution::Withdrawn, item.record);
        }
        for park in parking {
            park.tracker.resolve(Resolution::Withdrawn, park.record);
        }
        if dropped > 0 {
            tracing::info!(
                dropped,
                still_queued = self.batcher.pending(),
                requests_on_the_wire = self.in_flight.len(),
                "dropped the unsent events of withdrawn objects (abandoned, or their read failed)"
            );
        }
    }

    fn park(
        &mut self,
        event: CustomHttpEvent,
        reason: String,
        object: Arc<str>,
        tracker: Arc<Tracker>,
        record: u64,
    ) {
        if tracker.is_withdrawn() {
            tracker.resolve(Resolution::Withdrawn, record);
            return;
        }
        self.parking.push(ToPark {
            event_type: event.event_type.clone(),
            letter: DeadLetter::new(event, reason, &*object),
            tracker,
            record,
        });
    }

    fn park_item(&mut self, item: Item, reason: String) {
        // Through its Custom HTTP JSON and back, as queued events were when intake kept only
        // that text: the dead letter holds the same event (a repeated property name reads back
        // once). Done here, for the few events parked, instead of for every event at intake.
        let json = serde_json::to_vec(&item.original).expect("events serialize");
        let event: CustomHttpEvent = serde_json::from_slice(&json).expect("events read back");
        self.park(event, reason, item.object, item.tracker, item.record);
    }

    /// Sends what the pacer and the concurrency limit allow right now.
    fn dispatch(&mut self, now: Instant) {
        let mut blocked = false;
        while self.in_flight.len() < self.config.concurrency && !self.fenced(now) {
            match self.batcher.next(now) {
                Next::Send(batch) => self.send(batch, now),
                Next::Blocked => {
                    blocked = true;
                    break;
                }
                Next::Held | Next::Idle => break,
            }
        }
        if blocked && !self.blocked {
            RateLimitWait.emit(&self.metrics);
        }
        if blocked != self.blocked {
            RateLimitWait::waiting(blocked, &self.metrics);
        }
        self.blocked = blocked;
        self.batcher
            .forget_idle_beyond(4 * self.config.max_pending.max(1), now);
    }

    fn send(&mut self, mut batch: Batch, now: Instant) {
        // The check that makes a withdrawal exact: nothing of a withdrawn unit goes out, even
        // before the wake-up that drops its queued events has run.
        if batch.items.iter().any(|i| i.tracker.is_withdrawn()) {
            let (gone, kept): (Vec<Item>, Vec<Item>) = std::mem::take(&mut batch.items)
                .into_iter()
                .partition(|i| i.tracker.is_withdrawn());
            for item in gone {
                item.tracker.resolve(Resolution::Withdrawn, item.record);
            }
            if kept.is_empty() {
                return;
            }
            batch.items = kept;
        }
        self.batcher.started(&mut batch, now);
        self.tap.update(self.batcher.pacer().app_view(now));
        let body = bulk_body(&self.config.app_id, batch.items.iter().map(|i| &*i.json));
        let transport = self.transport.clone();
        self.in_flight.spawn(async move {
            let reply = transport.post(body).await;
            (batch, reply, now.elapsed())
        });
    }

    /// Heap (or a proxy before it) refused a body as too large (413): the body limit drops
    /// for the rest of the run, to the largest body Heap took if that is smaller than the
    /// refused one, else to half the refused size, and never rises again. The batch goes
    /// again at once in requests that fit; an event that cannot fit alone is parked.
    fn body_too_large(&mut self, mut batch: Batch, now: Instant) {
        let refused = self.batcher.body_len(&batch.items);
        let learnt = if self.largest_accepted_body > 0 && self.largest_accepted_body < refused {
            self.largest_accepted_body.max(refused / 2)
        } else {
            refused / 2
        };
        let current = self.batcher.max_body_bytes();
        if learnt < current {
            if self.body_limit_learnt {
                tracing::debug!(
                    refused,
                    limit = learnt,
                    "Heap answered 413 again: the body limit drops further"
                );
            } else {
                tracing::warn!(
                    refused,
                    limit = learnt,
                    "Heap (or a proxy in front of it) refused a {refused}-byte request body with 413: requests are limited to {learnt} bytes for the rest of this run; lower --max-body-bytes to {learnt} or less"
                );
                self.body_limit_learnt = true;
            }
            self.limit = BodyLimit::new(learnt, &self.config.app_id);
            for item in self.batcher.lower_body_limit(learnt) {
                let reason = format!(
                    "the mapped event is {} bytes, over the {learnt}-byte request limit Heap answered 413 for",
                    item.json.len()
                );
                self.park_item(item, reason);
            }
        }
        if withdrawn(&mut batch) {
            return;
        }
        let (attempt, first_try) = (batch.attempt, batch.first_try);
        let (fit, unfit): (Vec<Item>, Vec<Item>) = batch
            .items
            .into_iter()
            .partition(|item| self.batcher.fits_alone(item.json.len()));
        for item in unfit {
            let reason = format!(
                "the mapped event is {} bytes: Heap answered 413 for it alone",
                item.json.len()
            );
            self.park_item(item, reason);
        }
        for part in self.batcher.split_to_fit(fit) {
            let mut part = Batch::new(part, first_try);
            part.attempt = attempt;
            self.batcher.retry_at(now, part);
        }
    }

    fn answered(
        &mut self,
        mut batch: Batch,
        reply: Reply,
        latency: Duration,
    ) -> Result<(), DeliveryError> {
        let now = Instant::now();
        self.batcher.finished(&batch, counted(&reply), now);
        self.tap.update(self.batcher.pacer().app_view(now));
        RateBudget {
            app_events: self.batcher.app_budget(now),
            lowered_identities: self.batcher.lowered_identities(),
        }
        .emit(&self.metrics);
        HeapRequest {
            status: reply.status,
            latency,
        }
        .emit(&self.metrics);
        if reply.status == Some(413) && !batch.items.is_empty() {
            self.body_too_large(batch, now);
            return Ok(());
        }
        let attempted = Attempted {
            events: batch.items.len(),
            attempt: batch.attempt,
            first_try: batch.first_try,
        };
        match decide(
            &reply.answer,
            attempted,
            now,
            &self.config.retry,
            &mut self.rng,
        ) {
            Action::Accept => {
                self.largest_accepted_body = self
                    .largest_accepted_body
                    .max(self.batcher.body_len(&batch.items));
                // Counted per run of one event type (a batch is mostly one object's events),
                // not per event.
                let mut run: Option<(Arc<str>, u64)> = None;
                let live = batch.items.iter().filter(|i| i.lane == Lane::Live).count() as u64;
                LaneEventsSent {
                    live,
                    backfill: batch.items.len() as u64 - live,
                }
                .emit(&self.metrics);
                for item in batch.items {
                    item.tracker.resolve(Resolution::Accepted, item.record);
                    match &mut run {
                        Some((event_type, n)) if *event_type == item.event_type => *n += 1,
                        _ => {
                            if let Some((event_type, count)) = run.replace((item.event_type, 1)) {
                                EventsSent {
                                    event_type: &event_type,
                                    count,
                                }
                                .emit(&self.metrics);
                            }
                        }
                    }
                }
                if let Some((event_type, count)) = run {
                    EventsSent {
                        event_type: &event_type,
                        count,
                    }
                    .emit(&self.metrics);
                }
            }
            Action::RetryAt { at, reason } => {
                if withdrawn(&mut batch) {
                    return Ok(());
                }
                batch.attempt += 1;
                HeapRetry {
                    events: batch.items.len(),
                    attempt: batch.attempt,
                    delay: at - now,
                    reason: &reason,
                }
                .emit(&self.metrics);
                self.batcher.retry_at(at, batch);
            }
            Action::Bisect => {
                if withdrawn(&mut batch) {
                    return Ok(());
                }
                BatchBisected {
                    events: batch.items.len(),
                }
                .emit(&self.metrics);
                let second = batch.items.split_off(batch.items.len() / 2);
                self.batcher.retry_at(now, Batch::new(batch.items, now));
                self.batcher.retry_at(now, Batch::new(second, now));
            }
            Action::Park(reason) => {
                for item in batch.items {
                    self.park_item(item, reason.clone());
                }
            }
            Action::Fatal(reason) => return Err(DeliveryError::Configuration(reason)),
        }
        Ok(())
    }
}

/// Resolves the events of withdrawn units in an answered batch, which is not to be sent
/// again; says whether nothing is left of it.
fn withdrawn(batch: &mut Batch) -> bool {
    batch.items.retain(|item| {
        let gone = item.tracker.is_withdrawn();
        if gone {
            item.tracker.resolve(Resolution::Withdrawn, item.record);
        }
        !gone
    });
    batch.items.is_empty()
}

#[cfg(test)]
mod tests;
