//! The engine and its one drive loop, shared by `run`, `run --once` and `backfill`.
//!
//! # Protocol
//! 1. Poll ([`Poller`]): discover the plan's window, queue what the ledger has not finished.
//!    A long-lived run polls every `poll_interval`, keeping what it read of the ledger and
//!    what it recorded since (see [`super::finished`]); `run --once` polls once, and a
//!    range (`backfill` run here) is listed pass by pass by its [`BackfillLane`]. A failed
//!    poll is logged and retried at the next interval (long-lived), or ends a bounded run as
//!    incomplete.
//!    With notifications ([`Engine::with_notifications`]), the listener queues objects as
//!    their messages arrive, and each poll is a reconciliation
//!    ([`super::discovery::queue_missed`]) that catches what no notification brought. Each
//!    object's end goes back to the listener, which deletes its message only if it was
//!    recorded.
//! 2. Objects run through the pipeline, `object_concurrency` at a time. Each ends done,
//!    failed, to retry, abandoned, or panicked; only done and failed are recorded.
//! 3. Shutdown, when the future passed to [`Engine::drive`] resolves ([`Stop`]): no more
//!    polls, queued objects are dropped (not started, so not recorded), objects in flight
//!    keep going and delivery keeps sending their events. `shutdown_timeout` later, or when
//!    [`Engine::abandon_token`] is cancelled, whatever is still in flight is abandoned.
//! 4. If delivery stops on its own (a fatal answer from Heap), objects in flight are cut
//!    short, nothing more is started, and the run ends fatal.
//! 5. The input to delivery closes once every object has ended; delivery drains; the outcome
//!    follows from the summary and how delivery ended ([`decide`], [`super::summary`]).
//!
//! A range run here is the same [`BackfillLane`] with one request, on the only lane, and its
//! outcome is the backfill's final state (a fatal delivery still wins).
//!
//! A long-lived run that records also keeps a heartbeat in the state and runs the backfills
//! handed to it ([`BackfillLane`]), one at a time, on the scheduler's and delivery's
//! backfill lane: each pass lists the range less the ledger, like a poll. At a stop, a
//! backfill under way stays open (running), for the next live worker to resume.
//!
//! [`Engine::drive`] is only the `select!` over these parts: each owns its state (the
//! poller its schedule and what it knows finished, the lane its backfills, [`Stop`] the
//! deadline), so a new kind of work gets a part of its own instead of locals in the loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::backfills::{BackfillLane, Meter};
use super::delivery_task::{DeliveryEnd, DeliveryTask};
use super::inbox::KeyEnd;
use super::listener::{Listener, ListenerSettings};
use super::pipeline::{ObjectResult, Pipeline, Sink};
use super::poller::Poller;
use super::scheduler::{BudgetRoom, Ended, LaneRate, Scheduler, Work};
use super::settings::{Plan, Settings};
use super::summary::{Outcome, Report, Summary};
use crate::clock::unix_secs_now;
use crate::deadletter::DeadLetterStore;
use crate::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, HEARTBEAT_INTERVAL, HERE,
};
use crate::heap::client::HeapClient;
use crate::heap::delivery::{Delivery, DeliveryConfig, Disposer, HistoryTap, Lane};
use crate::heap::map::HeapMapper;
use crate::heap::pacer::RateLimits;
use crate::ledger::Ledger;
use crate::notifications::sqs::Queue;
use crate::store::ObjectStore;
use crate::telemetry::activity::{self, SUMMARY_EVERY};
use crate::telemetry::events::{ListeningToQueue, ObjectEnded};
use crate::telemetry::{Counts, Metrics};

/// Where mapped events go.
pub enum Output {
    /// Map and count; nothing is sent, parked or recorded.
    DryRun(Disposer),
    Heap(Box<HeapOutput>),
}

/// Delivery to Heap: the client, its limits and retries, and the mapping.
pub struct HeapOutput {
    pub client: HeapClient,
    pub config: DeliveryConfig,
    pub mapper: HeapMapper,
}

/// Event-driven discovery for a long-lived run (see [`super::listener`]): the plan's polls
/// become reconciliations, at its poll interval.
pub struct Notifications {
    pub queue: Arc<dyn Queue>,
    pub settings: ListenerSettings,
}

/// Called after every object with the summary so far and the objects found to do.
pub type ProgressFn = Box<dyn FnMut(&Counts, u64) + Send>;

pub struct Engine {
    settings: Settings,
    plan: Plan,
    source: Arc<dyn ObjectStore>,
    ledger: Arc<Ledger>,
    pipeline: Arc<Pipeline>,
    metrics: Arc<Metrics>,
    delivery: Option<DeliveryTask>,
    abandon: CancellationToken,
    progress: Option<ProgressFn>,
    notifications: Option<Notifications>,
    /// The backfill lane's pipeline and the control objects, for a long-lived run that
    /// records; how often it beats.
    handover: Option<(Arc<Pipeline>, Control)>,
    heartbeat_interval: Duration,
    /// Delivery's rate limits (`None`: a dry run), for the backfill lane's ETA.
    limits: Option<RateLimits>,
    /// A range (`backfill` run here): its request, and where its lane reports progress.
    range: Option<(BackfillRequest, watch::Sender<Option<BackfillProgress>>)>,
    /// What delivery sent in the last window, for the lease's renewals.
    history: Option<HistoryTap>,
    /// This process's heartbeat (its lease id), if the command made one.
    worker: Option<crate::handover::Heartbeat>,
}

/// Decoded events waiting for delivery: small, so a slow Heap slows decoding soon instead of
/// filling memory.
const DELIVERY_CHANNEL: usize = 256;

impl Engine {
    /// Builds the pipeline and, unless dry-running, starts the delivery task. `state` holds
    /// the ledger and dead letters.
    pub fn start(
        settings: Settings,
        plan: Plan,
        source: Arc<dyn ObjectStore>,
        state: Arc<dyn ObjectStore>,
        output: Output,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let ledger = Arc::new(Ledger::new(state.clone()));
        let state_retry_max = plan.is_bounded().then_some(settings.bounded_state_retry);
        let lanes = matches!(plan, Plan::Live { .. });
        let control = Control::new(state.clone());
        let limits = match &output {
            Output::DryRun(_) => None,
            Output::Heap(heap) => Some(heap.config.limits),
        };
        let range = match plan {
            Plan::Range { from, to } => Some((
                BackfillRequest {
                    id: "here".into(),
                    from,
                    to,
                    worker: HERE.into(),
                    requested_at: unix_secs_now(),
                },
                watch::channel(None).0,
            )),
            Plan::Live { .. } | Plan::Once { .. } => None,
        };
        let mut history = None;
        let (sink, delivery, backfill_sink) = match output {
            Output::DryRun(disposer) => (Sink::DryRun(Arc::new(disposer)), None, None),
            Output::Heap(heap) => {
                let HeapOutput {
                    client,
                    mut config,
                    mapper,
                } = *heap;
                config.park_retry_max = state_retry_max;
                let dead_letters = Arc::new(DeadLetterStore::new(state));
                let delivery = Delivery::new(config, Arc::new(client), mapper, dead_letters)
                    .with_metrics(metrics.clone());
                history = Some(delivery.history_tap());
                let (task, tx, backfill_tx) =
                    DeliveryTask::spawn_lanes(delivery, DELIVERY_CHANNEL, lanes);
                (
                    Sink::Deliver(tx),
                    Some(task),
                    backfill_tx.map(Sink::Deliver),
                )
            }
        };
        let pipeline_to = |sink| {
            Arc::new(Pipeline {
                source: source.clone(),
                ledger: ledger.clone(),
                sink,
                metrics: metrics.clone(),
                ledger_retry: crate::store::retry::SharedRetry::new(state_retry_max),
                checkpointed: Default::default(),
            })
        };
        let pipeline = pipeline_to(sink);
        let handover = backfill_sink.map(|sink| (pipeline_to(sink), control));
        Engine {
            settings,
            plan,
            source,
            ledger,
            pipeline,
            metrics,
            delivery,
            abandon: CancellationToken::new(),
            progress: None,
            notifications: None,
            handover,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            limits,
            range,
            history,
            worker: None,
        }
    }

    /// The heartbeat a long-lived run writes: the process's own, with the id it holds the
    /// lease under, so a worker has one id whatever part it plays.
    pub fn with_worker(mut self, heartbeat: crate::handover::Heartbeat) -> Self {
        self.worker = Some(heartbeat);
        self
    }

    /// What delivery sent recently, for the lease (`None`: a dry run sends nothing).
    pub fn history_tap(&self) -> Option<HistoryTap> {
        self.history.clone()
    }

    /// For a range (`backfill` run here): its request and its progress as the backfill lane
    /// reports it, the same [`BackfillProgress`] a worker writes for a handed-over range.
    pub fn range_progress(
        &self,
    ) -> Option<(BackfillRequest, watch::Receiver<Option<BackfillProgress>>)> {
        let (request, sink) = self.range.as_ref()?;
        Some((request.clone(), sink.subscribe()))
    }

    /// No heartbeat and no backfills handed over: for measuring a poll's requests alone.
    pub fn without_handover(mut self) -> Self {
        self.handover = None;
        self
    }

    /// How often a long-lived run rewrites its heartbeat and looks for backfills handed to it
    /// (default [`HEARTBEAT_INTERVAL`]; tests shorten it).
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Discovers new objects from S3 notifications; polls become reconciliations. Only for
    /// a long-lived plan that records (not a dry run).
    pub fn with_notifications(mut self, notifications: Notifications) -> Self {
        self.notifications = Some(notifications);
        self
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Uses `abandon` (e.g. created before the engine, with the signal handlers) as the
    /// token that abandons objects in flight.
    pub fn with_abandon(mut self, abandon: CancellationToken) -> Self {
        self.abandon = abandon;
        self
    }

    /// Cancelling it abandons objects in flight at once (a second signal), instead of
    /// waiting out the shutdown timeout.
    pub fn abandon_token(&self) -> CancellationToken {
        self.abandon.clone()
    }

    /// Runs the plan until it is done, `shutdown` resolves, or delivery stops fatally.
    pub async fn drive(self, shutdown: impl Future<Output = ()>) -> Report {
        let (mut run, delivery) = self.into_parts();
        let mut shutdown = std::pin::pin!(shutdown);
        let delivery_stopped = delivery.as_ref().map(DeliveryTask::stopped_token);
        let mut delivery_ended = std::pin::pin!(async {
            match &delivery_stopped {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        });
        run.log_start();
        let activity_stop = CancellationToken::new();
        let activity = activity::spawn(
            run.metrics.clone(),
            SUMMARY_EVERY,
            run.settings.dry_run,
            activity_stop.clone(),
        );
        loop {
            let polling = !run.stop.stopping();
            if polling && run.poller.due() {
                // A first listing of a large window can take minutes: a stop must not wait.
                tokio::select! {
                    polled = run.poller.poll(&mut run.scheduler) => run.found += polled,
                    _ = &mut shutdown => {
                        run.begin_stop(Cause::Signal("during a poll"));
                        continue;
                    }
                }
            }
            if polling && let Some(lane) = run.lane.as_mut() {
                lane.start_next();
                lane.report_if_due();
                if lane.pass_due() {
                    tokio::select! {
                        queued = lane.pass(&*run.source, &run.ledger, &mut run.scheduler) => run.found += queued,
                        _ = &mut shutdown => {
                            run.begin_stop(Cause::Signal("during a backfill's listing"));
                            continue;
                        }
                    }
                }
            }
            let backfilled = run.lane.as_ref().is_none_or(BackfillLane::idle);
            if (run.stop.stopping() || (run.poller.finished() && backfilled))
                && run.scheduler.is_idle()
            {
                break;
            }
            let backfill_wake = run.lane.as_ref().and_then(BackfillLane::next_wake);
            let poll_wake = run.poller.next_wake();
            let receiving = run.listener.is_some() && run.stop.receiving();
            tokio::select! {
                work = async { run.listener.as_mut().expect("checked").work.recv().await }, if receiving => {
                    run.received(work);
                }
                Some(request) = async { run.lane.as_mut().expect("checked").next_request().await }, if run.lane.is_some() && polling => {
                    run.lane.as_mut().expect("checked").wait(request);
                }
                _ = sleep_until(backfill_wake.unwrap_or_else(Instant::now)), if polling && backfill_wake.is_some() => {}
                Some((ended, ran_on)) = run.scheduler.next_with_lane() => run.ended(ended, ran_on),
                _ = sleep_until(poll_wake.unwrap_or_else(Instant::now)), if polling && poll_wake.is_some() => {}
                _ = &mut shutdown, if run.stop.deadline.is_none() => run.begin_stop(Cause::Signal("")),
                _ = sleep_until(run.stop.deadline.unwrap_or_else(Instant::now)), if run.stop.deadline.is_some() && !run.stop.abandon.is_cancelled() => {
                    tracing::warn!(in_flight = run.scheduler.in_flight(), "shutdown timeout reached: abandoning objects in flight");
                    run.stop.abandon.cancel();
                }
                _ = &mut delivery_ended, if !run.stop.delivery_stopped => run.begin_stop(Cause::DeliveryStopped),
            }
        }
        let report = run.finish(delivery).await;
        // The last summary line covers the run's end (delivery drained).
        activity_stop.cancel();
        let _ = activity.await;
        report
    }

    /// The parts [`Engine::drive`] selects over, and delivery apart (it outlives them).
    fn into_parts(self) -> (Parts, Option<DeliveryTask>) {
        let Engine {
            settings,
            plan,
            source,
            ledger,
            pipeline,
            metrics,
            delivery,
            abandon,
            progress,
            notifications,
            handover,
            heartbeat_interval,
            limits,
            range,
            history: _,
            worker,
        } = self;
        // Admission beyond the regular slots follows what each lane's share of Heap's budget
        // can finish before a stop's deadline (see the scheduler's docs).
        let rates = (
            Meter::new(metrics.clone(), Lane::Live, limits, false),
            Meter::new(metrics.clone(), Lane::Backfill, limits, true),
        );
        let rate: LaneRate = Box::new(move |lane| match lane {
            Lane::Live => rates.0.rate(),
            Lane::Backfill => rates.1.rate(),
        });
        let mut scheduler = Scheduler::new(pipeline, settings.object_concurrency, abandon.clone())
            .with_room(BudgetRoom::new(rate, settings.shutdown_timeout));
        let poll_every = match plan {
            Plan::Live { poll_interval, .. } => poll_interval,
            Plan::Once { .. } | Plan::Range { .. } => Duration::ZERO,
        };
        let mut lane = None;
        if let Some((backfill_pipeline, control)) = handover {
            scheduler = scheduler.with_backfill(backfill_pipeline);
            let meter = Meter::new(metrics.clone(), Lane::Backfill, limits, true);
            let heartbeat =
                worker.unwrap_or_else(|| crate::handover::Heartbeat::new_worker(unix_secs_now()));
            lane = Some(BackfillLane::spawn(
                control,
                (heartbeat, heartbeat_interval),
                poll_every,
                meter,
            ));
        }
        // A range run here is the same backfill on the only lane: no live events share it,
        // so delivery holds no reserve for them (it has one lane).
        if let Some((request, sink)) = range {
            let meter = Meter::new(metrics.clone(), Lane::Live, limits, false);
            lane = Some(BackfillLane::here(
                request,
                poll_every,
                Lane::Live,
                meter,
                sink,
            ));
        }
        let stop = Stop::new(settings.shutdown_timeout, abandon);
        let retry_after = notifications.as_ref().map(|n| n.settings.retry_after);
        // A queue URL names no secret, but a query string could carry one: never logged.
        let queue = notifications.as_ref().map(|n| {
            let described = n.queue.describe();
            described.split('?').next().unwrap_or_default().to_string()
        });
        if notifications.is_some() {
            ListeningToQueue.emit(&metrics);
        }
        let poller = Poller::new(
            plan,
            source.clone(),
            ledger.clone(),
            metrics.clone(),
            notifications.is_some(),
            settings.dry_run,
        );
        let listener = notifications.map(|n| {
            let stop = stop.listener.clone();
            Listener::spawn(n.queue, ledger.clone(), n.settings, metrics.clone(), stop)
        });
        let parts = Parts {
            settings,
            plan,
            source,
            ledger,
            metrics,
            scheduler,
            poller,
            lane,
            listener,
            stop,
            summary: Summary::default(),
            progress,
            found: 0,
            retry_after,
            queue,
        };
        (parts, delivery)
    }
}

/// What [`Engine::drive`] holds while it runs: each part owns its own state, and the loop
/// only routes what happens to the part it concerns.
struct Parts {
    settings: Settings,
    plan: Plan,
    source: Arc<dyn ObjectStore>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    scheduler: Scheduler,
    poller: Poller,
    lane: Option<BackfillLane>,
    listener: Option<Listener>,
    stop: Stop,
    summary: Summary,
    progress: Option<ProgressFn>,
    /// Objects found to do so far: by polls, notifications and backfill passes.
    found: u64,
    /// With notifications: when an object that could not be finished may come back.
    retry_after: Option<Duration>,
    /// With notifications: the queue, as the start line names it.
    queue: Option<String>,
}

impl Parts {
    /// The start line: with notifications, which queue it listens to and how often it
    /// reconciles (the plan's poll interval), instead of "polling every".
    fn log_start(&self) {
        let (source, state) = (self.source.describe(), self.ledger.describe());
        match (&self.queue, self.plan) {
            (
                Some(queue),
                Plan::Live {
                    lookback,
                    poll_interval,
                },
            ) => tracing::info!(
                %source,
                %state,
                "started: listening to the queue {queue} for new objects, reconciling every {poll_interval:?} over a lookback of {lookback}"
            ),
            _ => tracing::info!(%source, %state, "started: {}", self.plan),
        }
    }

    fn begin_stop(&mut self, cause: Cause) {
        let listener = self.listener.as_ref();
        self.stop
            .begin(cause, &mut self.scheduler, listener, &mut self.summary);
    }

    /// The listener handed on an object (or ended).
    fn received(&mut self, work: Option<Work>) {
        match work {
            Some(work) if !self.stop.stopping() => {
                self.found += 1;
                self.poller.on_notified(work.key());
                self.scheduler.enqueue(work);
            }
            // Stopping: its message goes back to the queue at once.
            Some(work) => {
                give_back(vec![work.key().to_string()], self.listener.as_ref());
            }
            // The listener stopped on its own (it never does but by panicking): the
            // reconciliations still find everything.
            None => self.stop.listener.cancel(),
        }
    }

    /// An object ended on lane `ran_on`: every part that cares hears of it.
    fn ended(&mut self, ended: Ended, ran_on: Lane) {
        // Pending first: whoever reads an object's end in the counters sees it pending no more.
        self.poller.on_ended(&ended);
        emit_ended(&ended, &self.metrics);
        if let Some(lane) = self.lane.as_mut() {
            lane.on_ended(&ended, ran_on);
        }
        if let (Some(listener), Some(retry_after)) = (&self.listener, self.retry_after) {
            listener.ended(ended.key(), key_end(&ended, retry_after));
        }
        if let Ended::Object(ObjectResult::Unrecorded { .. }) = &ended {
            // A bounded run has spent its state budget: starting more objects would only
            // send events that cannot be recorded.
            let listener = self.listener.as_ref();
            Stop::start_nothing_more(&mut self.scheduler, listener, &mut self.summary);
        }
        self.summary.add(&ended);
        if let Some(progress) = self.progress.as_mut() {
            progress(&self.metrics.counts(), self.found);
        }
    }

    /// After the loop: every object has ended. Closes the parts, lets delivery drain, and
    /// decides the outcome.
    async fn finish(self, delivery: Option<DeliveryTask>) -> Report {
        let Parts {
            settings,
            plan,
            metrics,
            scheduler,
            poller,
            lane,
            listener,
            stop,
            summary,
            ..
        } = self;
        // Every object has ended, so every sender is gone: delivery sees its input close.
        drop(scheduler);
        let backfill = match lane {
            Some(lane) => lane.finish().await,
            None => None,
        };
        if let Some(listener) = listener {
            listener.finish().await;
        }
        let end = match delivery {
            Some(task) => task.finish(stop.deadline, &stop.abandon).await,
            None => DeliveryEnd::default(),
        };
        let counts = metrics.counts();
        let stopped = stop.deadline.is_some();
        let failure = poller.into_failure();
        let decided = decide(&plan, &summary, &counts, &end, stopped, failure);
        let (outcome, backfill) = match (plan, backfill) {
            (Plan::Range { .. }, Some(backfill)) => range_outcome(decided, backfill),
            _ => (decided, None),
        };
        Report {
            summary,
            counts,
            outcome,
            dry_run: settings.dry_run,
            backfill,
        }
    }
}

/// Why a run stops taking work.
enum Cause {
    /// The shutdown future resolved; the text says what the loop was doing then.
    Signal(&'static str),
    /// Delivery stopped on its own (a fatal answer from Heap).
    DeliveryStopped,
}

/// Stopping: once it begins, nothing more is polled, received or started, and objects in
/// flight get until `deadline` (a signal) or are cut short at once (delivery stopped).
struct Stop {
    /// Set once a signal's stop begins: when objects still in flight are abandoned.
    deadline: Option<Instant>,
    delivery_stopped: bool,
    /// Ends the listener's receiving.
    listener: CancellationToken,
    timeout: Duration,
    abandon: CancellationToken,
}

impl Stop {
    fn new(timeout: Duration, abandon: CancellationToken) -> Self {
        Stop {
            deadline: None,
            delivery_stopped: false,
            listener: CancellationToken::new(),
            timeout,
            abandon,
        }
    }

    fn stopping(&self) -> bool {
        self.deadline.is_some() || self.delivery_stopped
    }

    /// Whether the listener is still to be read.
    fn receiving(&self) -> bool {
        !self.listener.is_cancelled()
    }

    /// Begins stopping: no more receiving, the queue dropped unstarted (its messages given
    /// back), and either a deadline for the objects in flight or, when delivery stopped, an
    /// abandon at once.
    fn begin(
        &mut self,
        cause: Cause,
        scheduler: &mut Scheduler,
        listener: Option<&Listener>,
        summary: &mut Summary,
    ) {
        self.listener.cancel();
        summary.not_started(give_back(scheduler.clear_queue(), listener));
        match cause {
            Cause::Signal(during) => {
                self.deadline = Some(Instant::now() + self.timeout);
                let during = if during.is_empty() {
                    String::new()
                } else {
                    format!(" {during}")
                };
                tracing::info!(
                    in_flight = scheduler.in_flight(),
                    "stopping{during}: finishing objects in flight (up to {:?})",
                    self.timeout
                );
            }
            Cause::DeliveryStopped => {
                self.delivery_stopped = true;
                self.abandon.cancel();
            }
        }
    }

    /// Starts none of the objects queued (a bounded run that cannot write its state), without
    /// stopping the run: the objects in flight end as they will.
    fn start_nothing_more(
        scheduler: &mut Scheduler,
        listener: Option<&Listener>,
        summary: &mut Summary,
    ) {
        let cleared = give_back(scheduler.clear_queue(), listener);
        if !cleared.is_empty() {
            tracing::warn!(
                objects = cleared.len(),
                "the state cannot be written: not starting the objects left"
            );
        }
        summary.not_started(cleared);
    }
}

/// The outcome, from the most serious to the least: fatal, incomplete, failures, finished.
fn decide(
    plan: &Plan,
    summary: &Summary,
    counts: &Counts,
    delivery: &DeliveryEnd,
    stopped: bool,
    poll_failure: Option<String>,
) -> Outcome {
    if let Err(e) = &delivery.result {
        return Outcome::Fatal(e.clone());
    }
    if !plan.is_bounded() {
        // Only a stop ends a long-lived run without a fatal error.
        return Outcome::Finished;
    }
    let remaining = summary.remaining.len();
    let reason = if let Some(failure) = poll_failure {
        Some(failure)
    } else if stopped {
        Some(format!(
            "stopped by a signal with {remaining} objects unfinished"
        ))
    } else if delivery.abandoned {
        Some("delivery was abandoned with events unresolved".into())
    } else if remaining > 0 {
        Some(format!("{remaining} objects are left to retry"))
    } else {
        None
    };
    match reason {
        Some(reason) => Outcome::Incomplete { reason },
        None if counts.total().parked > 0
            || counts
                .user_property_updates
                .get("parked")
                .is_some_and(|n| *n > 0)
            || counts.objects_failed > 0 =>
        {
            Outcome::FinishedWithFailures
        }
        None => Outcome::Finished,
    }
}

/// A range's outcome is its backfill's final state (the same states a worker ends a
/// handed-over range in), except that a fatal delivery wins. A range stopped before its
/// state was terminal ends incomplete, with why.
fn range_outcome(
    decided: Outcome,
    mut backfill: BackfillProgress,
) -> (Outcome, Option<BackfillProgress>) {
    if !backfill.state.is_terminal() {
        backfill.state = BackfillState::Incomplete;
        if let Outcome::Incomplete { reason } = &decided {
            backfill.message = Some(reason.clone());
        }
    }
    let outcome = match (decided, backfill.state) {
        (Outcome::Fatal(e), _) => Outcome::Fatal(e),
        (_, BackfillState::Done) => Outcome::Finished,
        (_, BackfillState::DoneWithFailures) => Outcome::FinishedWithFailures,
        (_, _) => Outcome::Incomplete {
            reason: backfill
                .message
                .clone()
                .unwrap_or_else(|| "the range was not done".into()),
        },
    };
    (outcome, Some(backfill))
}

/// Objects taken off the queue unstarted: their messages go back to the queue at once.
fn give_back(keys: Vec<String>, listener: Option<&Listener>) -> Vec<String> {
    if let Some(listener) = listener {
        for key in &keys {
            listener.ended(
                key,
                KeyEnd::NotRecorded {
                    after: Duration::ZERO,
                },
            );
        }
    }
    keys
}

/// What an object's end means for the messages that named it.
fn key_end(ended: &Ended, retry_after: Duration) -> KeyEnd {
    match ended {
        Ended::Object(ObjectResult::Done(entry) | ObjectResult::Failed(entry)) => {
            KeyEnd::Recorded {
                size: entry.size,
                etag: entry.etag.clone(),
            }
        }
        // Nothing to try again: a new upload sends a new notification.
        Ended::Object(ObjectResult::Gone { .. }) => KeyEnd::Gone,
        // Cut short by a stop: another replica may take it at once.
        Ended::Object(ObjectResult::Abandoned { .. }) => KeyEnd::NotRecorded {
            after: Duration::ZERO,
        },
        Ended::Object(ObjectResult::Retry { .. } | ObjectResult::Unrecorded { .. })
        | Ended::Panicked { .. } => KeyEnd::NotRecorded { after: retry_after },
    }
}

/// Counts how an object ended (and logs it, where an operator should hear of it).
fn emit_ended(ended: &Ended, metrics: &Metrics) {
    let event = match ended {
        Ended::Object(ObjectResult::Done(_)) => ObjectEnded::Done,
        Ended::Object(ObjectResult::Failed(entry)) => ObjectEnded::Failed {
            key: &entry.key,
            reason: entry.reason.as_deref().unwrap_or("failed"),
        },
        Ended::Object(
            ObjectResult::Retry { key, reason }
            | ObjectResult::Unrecorded { key, reason }
            | ObjectResult::Gone { key, reason },
        ) => ObjectEnded::Retried { key, reason },
        Ended::Object(ObjectResult::Abandoned { .. }) => ObjectEnded::Abandoned,
        Ended::Panicked { key, message } => ObjectEnded::Panicked { key, message },
    };
    event.emit(metrics);
}
