//! The engine and its one drive loop, shared by `run`, `run --once` and `backfill`.
//!
//! # Protocol
//! 1. Poll: discover the plan's window, queue what the ledger has not finished. A long-lived
//!    run polls every `poll_interval`, keeping what it read of the ledger and what it
//!    recorded since (see [`super::finished`]); a bounded run polls once. A failed poll is
//!    logged and retried at the next interval (long-lived), or ends a bounded run as
//!    incomplete.
//!    With notifications ([`Engine::with_notifications`]), the listener queues objects as
//!    their messages arrive, and each poll is a reconciliation ([`queue_missed`]) that
//!    catches what no notification brought. Each object's end goes back to the listener,
//!    which deletes its message only if it was recorded.
//! 2. Objects run through the pipeline, `object_concurrency` at a time. Each ends done,
//!    failed, to retry, abandoned, or panicked; only done and failed are recorded.
//! 3. Shutdown, when the future passed to [`Engine::drive`] resolves: no more polls, queued
//!    objects are dropped (not started, so not recorded), objects in flight keep going and
//!    delivery keeps sending their events. `shutdown_timeout` later, or when
//!    [`Engine::abandon_token`] is cancelled, whatever is still in flight is abandoned.
//! 4. If delivery stops on its own (a fatal answer from Heap), objects in flight are cut
//!    short, nothing more is started, and the run ends fatal.
//! 5. The input to delivery closes once every object has ended; delivery drains; the outcome
//!    follows from the summary and how delivery ended (see [`super::summary`]).
//!
//! A long-lived run that records also keeps a heartbeat in the state and runs the backfills
//! handed to it ([`super::backfills`]), one at a time, on the scheduler's and delivery's
//! backfill lane: each pass lists the range less the ledger, like a poll. At a stop, a
//! backfill under way stays open (running), for the next live worker to resume.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::backfills::{Backfill, Desk};
use super::delivery_task::{DeliveryEnd, DeliveryTask};
use super::discovery::{Sightings, find_unfinished, queue_missed, queue_unfinished};
use super::finished::FinishedSet;
use super::inbox::KeyEnd;
use super::listener::{Listener, ListenerSettings};
use super::pipeline::{ObjectResult, Pipeline, Sink};
use super::scheduler::{Ended, Scheduler};
use super::settings::{Plan, Settings};
use super::summary::{Outcome, Report, Summary};
use crate::clock::unix_secs_now;
use crate::deadletter::DeadLetterStore;
use crate::handover::{BackfillProgress, BackfillRequest, Control, HEARTBEAT_INTERVAL};
use crate::heap::client::HeapClient;
use crate::heap::delivery::{Delivery, DeliveryConfig, Disposer, Lane};
use crate::heap::map::HeapMapper;
use crate::ledger::Ledger;
use crate::notifications::sqs::Queue;
use crate::source::Window;
use crate::store::ObjectStore;
use crate::telemetry::events::{ObjectEnded, PollFailed, PollSucceeded};
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
                state_retry_max,
                state_failing_since: std::sync::Mutex::new(None),
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
        }
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
        let Engine {
            settings,
            plan,
            source,
            ledger,
            pipeline,
            metrics,
            delivery,
            abandon,
            mut progress,
            notifications,
            handover,
            heartbeat_interval,
        } = self;
        let mut scheduler = Scheduler::new(
            pipeline.clone(),
            settings.object_concurrency,
            abandon.clone(),
        );
        drop(pipeline);
        let mut desk = None;
        if let Some((backfill_pipeline, control)) = handover {
            scheduler = scheduler.with_backfill(backfill_pipeline);
            desk = Some(Desk::spawn(control, heartbeat_interval));
        }
        // The backfill under way, and the requests waiting their turn.
        let mut backfill: Option<Backfill> = None;
        let mut waiting: std::collections::VecDeque<(BackfillRequest, Option<BackfillProgress>)> =
            Default::default();
        let poll_every = match plan {
            Plan::Live { poll_interval, .. } => poll_interval,
            Plan::Once { .. } | Plan::Range { .. } => Duration::ZERO,
        };
        let mut summary = Summary::default();
        let mut shutdown = std::pin::pin!(shutdown);
        // Set once shutdown begins: when objects still in flight are abandoned.
        let mut deadline: Option<Instant> = None;
        let mut next_poll = Some(Instant::now());
        let mut poll_failure: Option<String> = None;
        let mut delivery_stopped = false;
        let mut found: u64 = 0;
        // Only a long-lived run polls again, so only it keeps what the ledger said; with
        // notifications, another replica may record too, so each reconciliation reads afresh.
        let mut known = (matches!(plan, Plan::Live { .. }) && notifications.is_none())
            .then(FinishedSet::default);
        let listener_stop = CancellationToken::new();
        let retry_after = notifications.as_ref().map(|n| n.settings.retry_after);
        let mut listener = notifications.map(|n| {
            Listener::spawn(
                n.queue,
                ledger.clone(),
                n.settings,
                metrics.clone(),
                listener_stop.clone(),
            )
        });
        let mut sightings = Sightings::new();
        let delivery_stopped_token = delivery.as_ref().map(DeliveryTask::stopped_token);
        let delivery_ended = async {
            match &delivery_stopped_token {
                Some(token) => token.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let mut delivery_ended = std::pin::pin!(delivery_ended);
        tracing::info!(source = %source.describe(), state = %ledger.describe(), "started: {plan}");
        loop {
            let polling = deadline.is_none() && !delivery_stopped;
            if polling && next_poll.is_some_and(|at| Instant::now() >= at) {
                // A first listing of a large window can take minutes: a stop must not wait.
                let window = plan.window();
                let polled = tokio::select! {
                    polled = async {
                        if listener.is_some() {
                            queue_missed(&*source, &ledger, &window, &mut sightings, &mut scheduler).await
                        } else {
                            queue_unfinished(&*source, &ledger, &window, known.as_mut(), &mut scheduler).await
                        }
                    } => Some(polled),
                    _ = &mut shutdown => None,
                };
                let Some(polled) = polled else {
                    deadline = Some(Instant::now() + settings.shutdown_timeout);
                    listener_stop.cancel();
                    summary.not_started(give_back(scheduler.clear_queue(), listener.as_ref()));
                    tracing::info!(
                        in_flight = scheduler.in_flight(),
                        "stopping during a poll: finishing objects in flight (up to {:?})",
                        settings.shutdown_timeout
                    );
                    continue;
                };
                match polled {
                    Ok(unfinished) => {
                        found += unfinished.count as u64;
                        let now = unix_secs_now();
                        let lag = unfinished.oldest.map(|hour| {
                            Duration::from_secs(
                                (now - hour.hours_since_epoch() * 3600).max(0) as u64
                            )
                        });
                        PollSucceeded {
                            pending: unfinished.count as u64,
                            lag,
                            folders: unfinished.folders as u64,
                            at_unix: now,
                        }
                        .emit(&metrics);
                        if let Some(first) = unfinished.failed.first() {
                            let e = format!(
                                "cannot list {} of {} event_type= folders in the source (the others' objects are queued): {first}",
                                unfinished.failed.len(),
                                unfinished.folders
                            );
                            PollFailed { error: &e }.emit(&metrics);
                            tracing::error!("{e}");
                            if plan.is_bounded() {
                                poll_failure = Some(e);
                            }
                        }
                        if unfinished.folders == 0 {
                            tracing::warn!(
                                "the source {} holds no event_type= folders: check --source (a wrong prefix, or a directory that moved?)",
                                source.describe()
                            );
                        }
                        tracing::info!(
                            unfinished = unfinished.count,
                            queued = scheduler.queued(),
                            in_flight = scheduler.in_flight(),
                            "polled {}",
                            source.describe()
                        );
                    }
                    Err(e) if plan.is_bounded() => {
                        PollFailed {
                            error: &e.to_string(),
                        }
                        .emit(&metrics);
                        tracing::error!("{e}");
                        poll_failure = Some(e.to_string());
                    }
                    Err(e) => {
                        PollFailed {
                            error: &e.to_string(),
                        }
                        .emit(&metrics);
                        tracing::error!("poll failed, trying again next interval: {e}");
                    }
                }
                next_poll = match plan {
                    Plan::Live { poll_interval, .. } => Some(Instant::now() + poll_interval),
                    Plan::Once { .. } | Plan::Range { .. } => None,
                };
            }
            if polling && let Some(desk) = &desk {
                if backfill.is_none()
                    && let Some((request, prior)) = waiting.pop_front()
                {
                    tracing::info!(id = %request.id, "backfill {} to {}: running it on the backfill lane", request.from, request.to);
                    let mut started = Backfill::start(request, desk.worker(), Instant::now())
                        .resuming(prior.as_ref());
                    if let Some(wrong) = started.out_of_bounds() {
                        started.give_up(wrong);
                    }
                    backfill = Some(started);
                    settle(&mut backfill, desk, Instant::now());
                }
                if let Some(running) = backfill.as_mut()
                    && running.next_pass.is_some_and(|at| Instant::now() >= at)
                {
                    let window = Window::Hours {
                        from: running.request.from,
                        to: running.request.to,
                    };
                    let listed = tokio::select! {
                        listed = find_unfinished(&*source, &ledger, &window, None) => Some(listed),
                        _ = &mut shutdown => None,
                    };
                    match listed {
                        None => {
                            deadline = Some(Instant::now() + settings.shutdown_timeout);
                            listener_stop.cancel();
                            summary
                                .not_started(give_back(scheduler.clear_queue(), listener.as_ref()));
                            continue;
                        }
                        Some(Ok((_, work))) => {
                            let queued = work
                                .into_iter()
                                .filter_map(|work| {
                                    scheduler.enqueue_in(Lane::Backfill, work).then_some(())
                                })
                                .count();
                            found += queued as u64;
                            running.listed(queued);
                        }
                        Some(Err(e)) if running.out_of_passes() => {
                            running.give_up(format!("listing the range failed: {e}"));
                        }
                        Some(Err(e)) => {
                            tracing::warn!(id = %running.request.id, "backfill listing failed, trying again: {e}");
                            running.listing_failed(&e.to_string(), Instant::now() + poll_every);
                        }
                    }
                    settle(&mut backfill, desk, Instant::now() + poll_every);
                }
            }
            let nothing_more = deadline.is_some() || delivery_stopped || next_poll.is_none();
            if nothing_more && scheduler.is_idle() {
                break;
            }
            let receiving = listener.is_some() && !listener_stop.is_cancelled();
            tokio::select! {
                work = async { listener.as_mut().expect("checked").work.recv().await }, if receiving => {
                    match work {
                        Some(work) if deadline.is_none() && !delivery_stopped => {
                            found += 1;
                            scheduler.enqueue(work);
                        }
                        // Stopping: its message goes back to the queue at once.
                        Some(work) => {
                            give_back(vec![work.key().to_string()], listener.as_ref());
                        }
                        // The listener stopped on its own (it never does but by panicking):
                        // the reconciliations still find everything.
                        None => listener_stop.cancel(),
                    }
                }
                Some(request) = async { desk.as_mut().expect("checked").requests.recv().await }, if desk.is_some() && polling => {
                    waiting.push_back(request);
                }
                _ = sleep_until(backfill.as_ref().and_then(|b| b.next_pass).unwrap_or_else(Instant::now)), if polling && backfill.as_ref().is_some_and(|b| b.next_pass.is_some()) => {}
                Some((ended, lane)) = scheduler.next_with_lane() => {
                    emit_ended(&ended, &metrics);
                    if lane == Lane::Backfill
                        && let (Some(running), Some(desk)) = (backfill.as_mut(), &desk)
                    {
                        running.ended(&ended);
                        desk.report(&running.progress);
                        settle(&mut backfill, desk, Instant::now() + poll_every);
                    }
                    if let (Some(listener), Some(retry_after)) = (&listener, retry_after) {
                        listener.ended(ended.key(), key_end(&ended, retry_after));
                    }
                    // What was just recorded need not be read back from the ledger (a dry
                    // run records nothing).
                    if let Some(known) = known.as_mut()
                        && !settings.dry_run
                        && let Ended::Object(ObjectResult::Done(entry) | ObjectResult::Failed(entry)) = &ended
                    {
                        known.insert(entry);
                    }
                    match &ended {
                        Ended::Object(ObjectResult::Unrecorded { .. }) => {
                            // A bounded run has spent its state budget: starting more objects
                            // would only send events that cannot be recorded.
                            let cleared = give_back(scheduler.clear_queue(), listener.as_ref());
                            if !cleared.is_empty() {
                                tracing::warn!(objects = cleared.len(), "the state cannot be written: not starting the objects left");
                            }
                            summary.not_started(cleared);
                        }
                        Ended::Object(_) | Ended::Panicked { .. } => {}
                    }
                    summary.add(&ended);
                    if let Some(progress) = progress.as_mut() {
                        progress(&metrics.counts(), found);
                    }
                }
                _ = sleep_until(next_poll.unwrap_or_else(Instant::now)), if polling && next_poll.is_some() => {}
                _ = &mut shutdown, if deadline.is_none() => {
                    deadline = Some(Instant::now() + settings.shutdown_timeout);
                    listener_stop.cancel();
                    summary.not_started(give_back(scheduler.clear_queue(), listener.as_ref()));
                    tracing::info!(in_flight = scheduler.in_flight(), "stopping: finishing objects in flight (up to {:?})", settings.shutdown_timeout);
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !abandon.is_cancelled() => {
                    tracing::warn!(in_flight = scheduler.in_flight(), "shutdown timeout reached: abandoning objects in flight");
                    abandon.cancel();
                }
                _ = &mut delivery_ended, if !delivery_stopped => {
                    delivery_stopped = true;
                    listener_stop.cancel();
                    summary.not_started(give_back(scheduler.clear_queue(), listener.as_ref()));
                    abandon.cancel();
                }
            }
        }
        // Every object has ended, so every sender is gone: delivery sees its input close.
        drop(scheduler);
        if let Some(desk) = desk {
            if let Some(running) = backfill.as_mut() {
                running.progress.message =
                    Some("the worker stopped; the range resumes when a worker is live".into());
                desk.report(&running.progress);
            }
            desk.finish().await;
        }
        if let Some(listener) = listener {
            listener.finish().await;
        }
        let end = match delivery {
            Some(task) => task.finish(deadline, &abandon).await,
            None => DeliveryEnd::default(),
        };
        let counts = metrics.counts();
        let outcome = decide(
            &plan,
            &summary,
            &counts,
            &end,
            deadline.is_some(),
            poll_failure,
        );
        Report {
            summary,
            counts,
            outcome,
            dry_run: settings.dry_run,
        }
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
        None if counts.total().parked > 0 || counts.objects_failed > 0 => {
            Outcome::FinishedWithFailures
        }
        None => Outcome::Finished,
    }
}

/// Ends the backfill under way if its pass is over and nothing is left to retry (or passes
/// ran out); else schedules its next pass at `next`. Reports either way.
fn settle(backfill: &mut Option<Backfill>, desk: &Desk, next: Instant) {
    let Some(running) = backfill.as_mut() else {
        return;
    };
    let ended =
        running.progress.state.is_terminal() || (running.pass_over() && running.conclude(next));
    desk.report(&running.progress);
    if ended {
        let progress = &running.progress;
        tracing::info!(
            id = %progress.id,
            state = %progress.state,
            objects = progress.ended,
            events = progress.events_sent,
            "backfill {} to {} ended", running.request.from, running.request.to
        );
        *backfill = None;
    }
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
