//! The worker's side of [`crate::handover`]: a long-lived `run` says it is live, takes the
//! backfills handed to it, and reports their progress.
//!
//! - [`Desk`]: an actor on its own task, so a slow or failing state store never holds up the
//!   drive loop. Every [`crate::handover::HEARTBEAT_INTERVAL`] it rewrites the heartbeat, lists the requests,
//!   and passes on each open one this worker owns (re-addressing it first if it was another
//!   worker's). It writes the latest progress it is given at most every
//!   [`PROGRESS_EVERY`], and a terminal state at once. At the end it writes the last
//!   progress and deletes the heartbeat. A failed write is logged and tried again at the next
//!   turn; it never ends the run.
//! - [`Backfill`]: one request being run, as pure bookkeeping: found, ended, events; passes
//!   over the range until nothing is left to retry or [`MAX_PASSES`] have run.
//! - [`BackfillLane`]: what the engine holds: where progress goes, the backfill under way and
//!   the requests waiting; it lists each pass and queues it on the scheduler's backfill lane.
//!   A `backfill` that runs its range here ([`BackfillLane::here`]) holds the same lane with
//!   one request and a local reporter (a watch channel the command reads; nothing is written
//!   to the state, so a dry run writes nothing): the range makes the same passes and ends in
//!   the same states wherever it runs.
//! - Progress counts the events Heap accepted on the lane (the [`Meter`] reads the lane's
//!   counter, relative to where it stood when the range started, plus what an earlier
//!   worker reported), every [`REPORT_EVERY`] while the range runs, not only when an object
//!   ends. The ETA is the events left (events per byte so far times the bytes not ended)
//!   over the rate the pacer allows the lane.
//!
//! One request runs at a time, oldest first: the lane's room is shared anyway, and progress
//! per request stays exact.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::discovery::find_unfinished;
use super::pipeline::ObjectResult;
use super::scheduler::{Ended, Scheduler, Work};
use crate::clock::unix_secs_now;
use crate::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, HERE, Heartbeat, PRUNE_EVERY,
    check_range,
};
use crate::heap::delivery::Lane;
use crate::heap::delivery::batcher::LIVE_RESERVE_SHARE;
use crate::heap::pacer::RateLimits;
use crate::ledger::Ledger;
use crate::source::Window;
use crate::store::ObjectStore;
use crate::telemetry::{Counts, Metrics};

/// Progress is written at most this often while a backfill runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
pub use crate::handover::MAX_RANGE_HOURS;
/// How long a stop waits for the last progress write and the heartbeat's deletion.
pub const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// Passes over a range before objects that keep ending "retry later" make it incomplete.
pub const MAX_PASSES: u32 = 3;
/// Progress is reported at least this often while a backfill runs (the desk writes it at
/// most every [`PROGRESS_EVERY`]).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The actor's handle (see the module docs).
pub struct Desk {
    /// Requests this worker is to run, each passed on once, with the progress written so far
    /// (by another worker, if it is adopted mid-range).
    pub requests: mpsc::Receiver<(BackfillRequest, Option<BackfillProgress>)>,
    progress: watch::Sender<Option<BackfillProgress>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    worker: String,
}

impl Desk {
    /// Starts beating at once, then every `interval` ([`crate::handover::HEARTBEAT_INTERVAL`] in production).
    /// `heartbeat`: this process's (its id is the one it holds the lease under).
    pub fn spawn(control: Control, interval: Duration, heartbeat: Heartbeat) -> Desk {
        let worker = heartbeat.worker.clone();
        let (requests_tx, requests) = mpsc::channel(16);
        let (progress, progress_rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(desk(
            control,
            heartbeat,
            interval,
            requests_tx,
            progress_rx,
            stop.clone(),
        ));
        Desk {
            requests,
            progress,
            stop,
            task,
            worker,
        }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Hands the latest progress of the running request to the actor (the latest wins).
    pub fn report(&self, progress: &BackfillProgress) {
        self.progress.send_replace(Some(progress.clone()));
    }

    /// Writes the last progress, deletes the heartbeat, and waits for the actor to end, for
    /// at most [`FINISH_WITHIN`]: a hung state store must not hold a stop past its timeout
    /// (the heartbeat then goes stale in 90 s, and the progress stays as last written).
    pub async fn finish(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(FINISH_WITHIN, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            tracing::warn!(
                "the state did not answer within {FINISH_WITHIN:?}: this worker's heartbeat goes stale instead of being deleted"
            );
        }
    }
}

async fn desk(
    control: Control,
    mut heartbeat: Heartbeat,
    interval: Duration,
    requests: mpsc::Sender<(BackfillRequest, Option<BackfillProgress>)>,
    mut progress: watch::Receiver<Option<BackfillProgress>>,
    stop: CancellationToken,
) {
    let mut beats = tokio::time::interval(interval);
    beats.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut writes = tokio::time::interval(PROGRESS_EVERY);
    writes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut passed_on: HashSet<String> = HashSet::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut unwritten: Option<BackfillProgress> = None;
    // The retention rule, at start and then hourly, on its own task: a long history must not
    // delay the heartbeat.
    let mut prunes = tokio::time::interval(PRUNE_EVERY);
    prunes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pruning: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = prunes.tick(), if pruning.as_ref().is_none_or(JoinHandle::is_finished) => {
                let control = control.clone();
                pruning = Some(tokio::spawn(async move {
                    control.prune(unix_secs_now()).await;
                }));
            }
            _ = beats.tick() => {
                heartbeat.beat_at = unix_secs_now();
                if let Err(e) = control.beat(&heartbeat).await {
                    tracing::warn!("cannot write this worker's heartbeat (backfills cannot hand over until it works): {e}");
                    continue;
                }
                take_requests(&control, &heartbeat.worker, &requests, &mut passed_on, &mut ended).await;
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    break;
                }
                let latest = progress.borrow_and_update().clone();
                if let Some(latest) = latest {
                    let terminal = latest.state.is_terminal();
                    unwritten = Some(latest);
                    if terminal {
                        write(&control, &mut unwritten).await;
                    }
                }
            }
            _ = writes.tick(), if unwritten.is_some() => write(&control, &mut unwritten).await,
            _ = stop.cancelled() => break,
        }
    }
    if let Some(pruning) = pruning {
        pruning.abort();
    }
    if let Some(latest) = progress.borrow().clone() {
        unwritten = Some(latest);
    }
    write(&control, &mut unwritten).await;
    if let Err(e) = control.retire(&heartbeat.worker).await {
        tracing::warn!("cannot delete this worker's heartbeat; it goes stale in 90 s: {e}");
    }
}

/// Passes on the open requests this worker owns that it has not passed on yet; remembers
/// the ones that ended, so as not to read them again.
async fn take_requests(
    control: &Control,
    me: &str,
    requests: &mpsc::Sender<(BackfillRequest, Option<BackfillProgress>)>,
    passed_on: &mut HashSet<String>,
    ended: &mut HashSet<String>,
) {
    let listed = match control.requests_except(ended).await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!("cannot list the backfill requests: {e}");
            return;
        }
    };
    for (request, progress) in listed {
        let open = progress.as_ref().is_none_or(|p| !p.state.is_terminal());
        if !open {
            ended.insert(request.id.clone());
        }
        // This worker holds the lease (or is the only sender), so every open request is
        // its own: the owner is the lease holder, never a rule over heartbeats.
        if !open || passed_on.contains(&request.id) {
            continue;
        }
        let request = if request.worker == me {
            request
        } else {
            match control.adopt(&request, me).await {
                Ok(adopted) => {
                    tracing::info!(
                        id = %adopted.id,
                        from = %request.worker,
                        "adopted a backfill: this worker holds the lease"
                    );
                    adopted
                }
                Err(e) => {
                    tracing::warn!("cannot adopt backfill {}: {e}", request.id);
                    continue;
                }
            }
        };
        passed_on.insert(request.id.clone());
        if requests.send((request, progress)).await.is_err() {
            return;
        }
    }
}

async fn write(control: &Control, unwritten: &mut Option<BackfillProgress>) {
    let Some(progress) = unwritten.as_ref() else {
        return;
    };
    match control.report(progress).await {
        Ok(()) => *unwritten = None,
        Err(e) => tracing::warn!("cannot write backfill {} progress: {e}", progress.id),
    }
}

/// What the metrics say about a lane at one moment (see [`Meter`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    /// Events Heap accepted on the lane since the process started (mapped to send, in a
    /// dry run).
    pub sent: u64,
    /// Events per second the pacer allows the lane now; `None` without a rate limit.
    pub rate: Option<f64>,
    /// Delivery holds events the pacer has no room for.
    pub waiting: bool,
}

/// Reads a lane's [`Reading`] from the metrics.
pub struct Meter {
    metrics: Arc<Metrics>,
    lane: Lane,
    dry_run: bool,
    /// The configured limits (the ceiling before Heap's first answer); `None` in a dry run.
    limits: Option<RateLimits>,
    /// Share of the app budget the lane may use: backfill beside live leaves the reserve.
    share: f64,
}

impl Meter {
    /// The lane `lane` of a run whose delivery has `limits` (`None`: a dry run, which sends
    /// nothing and counts the events it would send); `beside_live` when a live lane holds a
    /// reserve.
    pub fn new(
        metrics: Arc<Metrics>,
        lane: Lane,
        limits: Option<RateLimits>,
        beside_live: bool,
    ) -> Self {
        Meter {
            metrics,
            lane,
            dry_run: limits.is_none(),
            limits,
            share: if beside_live {
                1.0 - LIVE_RESERVE_SHARE
            } else {
                1.0
            },
        }
    }

    pub fn read(&self) -> Reading {
        self.of(&self.metrics.counts())
    }

    /// The lane's events per second: its share of the app's budget (Heap's, once it has
    /// answered; the configured limit before). `None` in a dry run or without a limit.
    pub fn rate(&self) -> Option<f64> {
        self.rate_of(self.metrics.rate_budget_app())
    }

    fn rate_of(&self, budget_app: u64) -> Option<f64> {
        self.limits.and_then(|limits| {
            let budget = match budget_app {
                0 => limits.app_events,
                budget => budget,
            };
            let window = limits.window.as_secs_f64();
            (budget > 0 && budget != u64::MAX && window > 0.0)
                .then(|| budget as f64 * self.share / window)
        })
    }

    fn of(&self, counts: &Counts) -> Reading {
        let sent = if self.dry_run {
            counts.total().sent
        } else {
            match self.lane {
                Lane::Live => counts.sent_live,
                Lane::Backfill => counts.sent_backfill,
            }
        };
        Reading {
            sent,
            rate: self.rate_of(counts.rate_budget_app),
            waiting: counts.waiting_for_rate,
        }
    }
}

/// One request being run (see the module docs).
#[derive(Debug)]
pub struct Backfill {
    pub request: BackfillRequest,
    pub progress: BackfillProgress,
    pass: u32,
    /// Objects queued or in flight for this pass, with their sizes.
    outstanding: HashMap<String, u64>,
    /// Objects of this pass that ended without a record (to find again next pass).
    to_retry: u64,
    /// When the next pass lists the range again; `None` while one is under way.
    pub next_pass: Option<Instant>,
    /// The lane's counter when this process started the range, and what earlier workers
    /// had sent of it.
    sent_base: u64,
    sent_before: u64,
    /// Events and bytes of the objects this process finished: the events per byte.
    ended_events: u64,
    ended_bytes: u64,
    /// Why a listing left folders out, if one did: the range cannot be done then.
    unlisted: Option<String>,
}

impl Backfill {
    /// Starts running `request` on `worker`: its first pass lists the range at once.
    /// `sent` is the lane's counter now.
    pub fn start(request: BackfillRequest, worker: &str, now: Instant, sent: u64) -> Backfill {
        let unix = unix_secs_now();
        let mut progress = BackfillProgress::queued(&request, unix);
        progress.state = BackfillState::Running;
        progress.worker = worker.to_string();
        progress.started_at = Some(unix);
        Backfill {
            request,
            progress,
            pass: 0,
            outstanding: HashMap::new(),
            to_retry: 0,
            next_pass: Some(now),
            sent_base: sent,
            sent_before: 0,
            ended_events: 0,
            ended_bytes: 0,
            unlisted: None,
        }
    }

    /// Why the requested range cannot be run, if it cannot: a request written by hand (or by
    /// another version) is not checked by the `backfill` command.
    pub fn out_of_bounds(&self) -> Option<String> {
        check_range(self.request.from, self.request.to)
            .err()
            .map(|e| e.to_string())
    }

    /// Continues the counts `prior` wrote (a worker adopting a range another one began): the
    /// ledger skips what that worker finished, so its events are carried over (its objects
    /// are counted again by the first listing, from the ledger).
    pub fn resuming(mut self, prior: Option<&BackfillProgress>) -> Backfill {
        if let Some(prior) = prior.filter(|p| p.started_at.is_some()) {
            self.progress.ended = prior.ended;
            self.progress.failed = prior.failed;
            self.progress.events_sent = prior.events_sent;
            self.sent_before = prior.events_sent;
            self.progress.events_parked = prior.events_parked;
            self.progress.started_at = prior.started_at;
        }
        self
    }

    /// A pass listed `listed` objects in the range, of which the ledger had not finished
    /// `unfinished`, and queued `queued` (key and size).
    pub fn listed(&mut self, listed: usize, unfinished: usize, queued: Vec<(String, u64)>) {
        self.pass += 1;
        self.next_pass = None;
        self.outstanding = queued.into_iter().collect();
        self.to_retry = 0;
        self.unlisted = None;
        if self.pass == 1 {
            // Whoever ran the earlier part, the ledger holds what it finished.
            self.progress.found = listed as u64;
            self.progress.ended = listed.saturating_sub(unfinished) as u64;
        }
        self.progress.updated_at = unix_secs_now();
    }

    /// A listing left folders out (`why`): the pass counts as one to retry.
    pub fn partly_listed(&mut self, why: String) {
        self.to_retry += 1;
        self.unlisted = Some(why);
    }

    /// Events of one of the range's objects that the other lane sent (it held the key when
    /// the pass listed it): the lane's meter never saw them.
    pub fn sent_elsewhere(&mut self, events: u64) {
        self.sent_before += events;
        self.progress.events_sent += events;
    }

    /// Takes a reading of the lane: events sent, whether they wait for rate room, the ETA.
    pub fn metered(&mut self, reading: Reading) {
        let sent_here = reading.sent.saturating_sub(self.sent_base);
        self.progress.events_sent = self.sent_before + sent_here;
        self.progress.waiting_for_rate = reading.waiting && !self.outstanding.is_empty();
        self.progress.eta_at_update = self.eta(sent_here, reading.rate);
        self.progress.updated_at = unix_secs_now();
    }

    /// Seconds left: the events still to send over `rate`. Events to send are estimated
    /// from the bytes of the objects not ended, at the events per byte of those this
    /// process finished, less what was sent of them already. `None` until an object ends.
    fn eta(&self, sent_here: u64, rate: Option<f64>) -> Option<u64> {
        if self.progress.state.is_terminal() {
            return Some(0);
        }
        if self.ended_bytes == 0 {
            return None;
        }
        let rate = rate.filter(|r| *r > 0.0)?;
        let per_byte = self.ended_events as f64 / self.ended_bytes as f64;
        let bytes_left: u64 = self.outstanding.values().sum();
        let sent_of_unended = sent_here.saturating_sub(self.ended_events) as f64;
        let left = (per_byte * bytes_left as f64 - sent_of_unended).max(0.0);
        Some((left / rate).ceil() as u64)
    }

    /// A pass could not list the range: try again at `retry_at`, counting it as a pass.
    pub fn listing_failed(&mut self, reason: &str, retry_at: Instant) {
        self.pass += 1;
        self.next_pass = Some(retry_at);
        self.progress.message = Some(format!("listing the range failed: {reason}"));
        self.progress.updated_at = unix_secs_now();
    }

    /// One of this backfill's objects ended. Its events were counted as Heap accepted them
    /// (see [`Backfill::metered`]).
    /// An end outside the pass (another key, on either lane) is not counted; returns
    /// whether this one was.
    pub fn ended(&mut self, ended: &Ended) -> bool {
        if self.outstanding.remove(ended.key()).is_none() {
            return false;
        }
        match ended {
            Ended::Object(ObjectResult::Done(entry)) => {
                self.progress.ended += 1;
                self.progress.events_parked += entry.parked;
                self.ended_events += entry.delivered + entry.parked;
                self.ended_bytes += entry.size;
            }
            Ended::Object(ObjectResult::Failed(_)) => {
                self.progress.ended += 1;
                self.progress.failed += 1;
            }
            // Deleted since the listing: nothing left to do for it.
            Ended::Object(ObjectResult::Gone { .. }) => self.progress.ended += 1,
            Ended::Object(_) | Ended::Panicked { .. } => self.to_retry += 1,
        }
        self.progress.updated_at = unix_secs_now();
        true
    }

    /// Whether the pass under way has nothing queued or in flight.
    pub fn pass_over(&self) -> bool {
        self.next_pass.is_none() && self.outstanding.is_empty()
    }

    /// After a pass is over: another pass at `next` if objects are left to retry and passes
    /// remain, else the terminal state. Returns whether the backfill ended.
    pub fn conclude(&mut self, next: Instant) -> bool {
        self.progress.updated_at = unix_secs_now();
        if self.to_retry > 0 && self.pass < MAX_PASSES {
            self.next_pass = Some(next);
            return false;
        }
        self.progress.state = if self.to_retry > 0 || self.pass > MAX_PASSES {
            self.progress.message = Some(match &self.unlisted {
                Some(why) => format!(
                    "the range's listing still left folders out after {} passes: {why}; run the backfill again",
                    self.pass
                ),
                None => format!(
                    "{} objects were still left to retry after {} passes over the range; run the backfill again",
                    self.to_retry, self.pass
                ),
            });
            BackfillState::Incomplete
        } else {
            BackfillState::finished(self.progress.failed, self.progress.events_parked)
        };
        true
    }

    /// Whether listing has failed on every pass allowed.
    pub fn out_of_passes(&self) -> bool {
        self.pass >= MAX_PASSES && self.next_pass.is_some()
    }

    /// Gives up: the worker stopped, or listing kept failing.
    pub fn give_up(&mut self, reason: String) {
        self.progress.state = BackfillState::Incomplete;
        self.progress.message = Some(reason);
        self.progress.updated_at = unix_secs_now();
    }
}

/// Where a lane's progress goes.
enum Reporter {
    /// A worker's: the desk writes it to the state.
    Desk(Desk),
    /// A range run here: the command reads it; nothing is written.
    Here(watch::Sender<Option<BackfillProgress>>),
}

impl Reporter {
    fn worker(&self) -> &str {
        match self {
            Reporter::Desk(desk) => desk.worker(),
            Reporter::Here(_) => HERE,
        }
    }

    fn report(&self, progress: &BackfillProgress) {
        match self {
            Reporter::Desk(desk) => desk.report(progress),
            Reporter::Here(sink) => {
                sink.send_replace(Some(progress.clone()));
            }
        }
    }
}

/// The backfills a run takes on, one at a time: where their progress goes (the [`Desk`] that
/// also hands them over, or the command running a range here), the one under way, and those
/// waiting their turn.
pub struct BackfillLane {
    reporter: Reporter,
    running: Option<Backfill>,
    waiting: VecDeque<(BackfillRequest, Option<BackfillProgress>)>,
    /// How long after a pass (or a failed listing) the next one lists the range: the plan's
    /// poll interval.
    every: Duration,
    /// The scheduler's lane the backfills run on, and its meter.
    lane: Lane,
    meter: Meter,
    /// When progress is next reported without an object ending.
    next_report: Option<Instant>,
}

impl BackfillLane {
    /// A worker's lane: starts the desk (see [`Desk::spawn`]); passes are `every` apart;
    /// objects run on the scheduler's backfill lane.
    pub fn spawn(
        control: Control,
        (heartbeat, heartbeat_interval): (Heartbeat, Duration),
        every: Duration,
        meter: Meter,
    ) -> Self {
        BackfillLane {
            reporter: Reporter::Desk(Desk::spawn(control, heartbeat_interval, heartbeat)),
            running: None,
            waiting: VecDeque::new(),
            every,
            lane: Lane::Backfill,
            meter,
            next_report: None,
        }
    }

    /// A range run here, alone in its process: the one request, on `lane` (the scheduler's
    /// only one, so no reserve is held for live events that never come), reporting to
    /// `sink`. Passes are `every` apart.
    pub fn here(
        request: BackfillRequest,
        every: Duration,
        lane: Lane,
        meter: Meter,
        sink: watch::Sender<Option<BackfillProgress>>,
    ) -> Self {
        BackfillLane {
            reporter: Reporter::Here(sink),
            running: None,
            waiting: VecDeque::from([(request, None)]),
            every,
            lane,
            meter,
            next_report: None,
        }
    }

    /// Whether no backfill is under way or waiting.
    pub fn idle(&self) -> bool {
        self.running.is_none() && self.waiting.is_empty()
    }

    /// The next request the desk hands over (pending while there is none, and always for a
    /// range run here).
    pub async fn next_request(&mut self) -> Option<(BackfillRequest, Option<BackfillProgress>)> {
        match &mut self.reporter {
            Reporter::Desk(desk) => desk.requests.recv().await,
            Reporter::Here(_) => std::future::pending().await,
        }
    }

    /// Queues a request behind the one under way.
    pub fn wait(&mut self, request: (BackfillRequest, Option<BackfillProgress>)) {
        self.waiting.push_back(request);
    }

    /// Starts the oldest waiting request if none is under way.
    pub fn start_next(&mut self) {
        if self.running.is_some() {
            return;
        }
        let Some((request, prior)) = self.waiting.pop_front() else {
            return;
        };
        tracing::info!(id = %request.id, "backfill {} to {}: running it on the {} lane", request.from, request.to, self.lane.label());
        let sent = self.meter.read().sent;
        let mut started = Backfill::start(request, self.reporter.worker(), Instant::now(), sent)
            .resuming(prior.as_ref());
        if let Some(wrong) = started.out_of_bounds() {
            started.give_up(wrong);
        }
        self.running = Some(started);
        self.settle(Instant::now());
    }

    /// Whether the backfill under way is due to list its range.
    pub fn pass_due(&self) -> bool {
        self.running
            .as_ref()
            .and_then(|b| b.next_pass)
            .is_some_and(|at| Instant::now() >= at)
    }

    /// Lists the range less the ledger and queues it on the lane. Returns how many objects
    /// it queued. Dropped mid-listing (a stop), nothing is queued.
    pub async fn pass(
        &mut self,
        source: &dyn ObjectStore,
        ledger: &Ledger,
        scheduler: &mut Scheduler,
    ) -> u64 {
        let Some(running) = self.running.as_mut() else {
            return 0;
        };
        let window = Window::Hours {
            from: running.request.from,
            to: running.request.to,
        };
        let mut found = 0;
        match find_unfinished(source, ledger, &window, None).await {
            Ok((unfinished, work)) => {
                let sized = |work: &Work| {
                    let (Work::Object(meta) | Work::Resume(meta) | Work::OutsideLayout(meta)) =
                        work;
                    (meta.key.clone(), meta.size)
                };
                // Every unfinished key is the pass's, queued here or not: a key the live lane
                // holds already (a range that overlaps the lookback) stays there, and the
                // pass waits for its end all the same (E2).
                let mut queued = Vec::with_capacity(work.len());
                for work in work {
                    queued.push(sized(&work));
                    found += u64::from(scheduler.enqueue_in(self.lane, work));
                }
                running.listed(unfinished.listed, unfinished.count, queued);
                if let Some(first) = unfinished.failed.first() {
                    running.partly_listed(format!(
                        "cannot list {} of {} event_type= folders: {first}",
                        unfinished.failed.len(),
                        unfinished.folders
                    ));
                }
                if unfinished.folders == 0 {
                    tracing::warn!(
                        "the source {} holds no event_type= folders: check --source (a wrong prefix, or a directory that moved?)",
                        source.describe()
                    );
                }
            }
            Err(e) if running.out_of_passes() => {
                running.give_up(format!("listing the range failed: {e}"));
            }
            Err(e) => {
                tracing::warn!(id = %running.request.id, "backfill listing failed, trying again: {e}");
                running.listing_failed(&e.to_string(), Instant::now() + self.every);
            }
        }
        self.settle(Instant::now() + self.every);
        found
    }

    /// An object ended on lane `ran_on`: counted if it is one of the running pass's keys.
    /// Its events were metered on `ran_on`: those of a key the other lane held count here.
    pub fn on_ended(&mut self, ended: &Ended, ran_on: Lane) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if !running.ended(ended) {
            return;
        }
        if ran_on != self.lane
            && let Ended::Object(ObjectResult::Done(entry)) = ended
        {
            running.sent_elsewhere(entry.delivered);
        }
        self.settle(Instant::now() + self.every);
    }

    /// Reports the backfill under way if [`REPORT_EVERY`] has passed since its last report.
    pub fn report_if_due(&mut self) {
        if self.next_report.is_some_and(|at| Instant::now() >= at) {
            self.report();
        }
    }

    /// When the backfill under way next lists its range or reports, if it waits to.
    pub fn next_wake(&self) -> Option<Instant> {
        let running = self.running.as_ref()?;
        [running.next_pass, self.next_report]
            .into_iter()
            .flatten()
            .min()
    }

    /// At a stop: the backfill under way stays open for the next live worker (the desk
    /// writes the last progress and deletes the heartbeat). Returns the last progress of the
    /// backfill under way or the last one that ended: for a range run here, its result.
    pub async fn finish(mut self) -> Option<BackfillProgress> {
        let reading = self.meter.read();
        let last = self.running.as_mut().map(|running| {
            running.metered(reading);
            running.progress.message = Some(match self.reporter {
                Reporter::Desk(_) => {
                    "the worker stopped; the range resumes when a worker is live".into()
                }
                Reporter::Here(_) => "stopped before the range was done".into(),
            });
            running.progress.clone()
        });
        if let Some(last) = &last {
            self.reporter.report(last);
        }
        match self.reporter {
            Reporter::Desk(desk) => {
                desk.finish().await;
                last
            }
            Reporter::Here(sink) => last.or_else(|| sink.borrow().clone()),
        }
    }

    /// Reads the meter and hands the progress under way to the reporter.
    fn report(&mut self) {
        let Some(running) = self.running.as_mut() else {
            self.next_report = None;
            return;
        };
        running.metered(self.meter.read());
        self.reporter.report(&running.progress);
        self.next_report = Some(Instant::now() + REPORT_EVERY);
    }

    /// Ends the backfill under way if its pass is over and nothing is left to retry (or
    /// passes ran out); else schedules its next pass at `next`. Reports either way.
    fn settle(&mut self, next: Instant) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let ended =
            running.progress.state.is_terminal() || (running.pass_over() && running.conclude(next));
        self.report();
        if ended {
            let Some(running) = self.running.take() else {
                return;
            };
            let progress = &running.progress;
            tracing::info!(
                backfill_id = %progress.id,
                state = %progress.state,
                objects_ended = progress.ended,
                objects_failed = progress.failed,
                events_sent = progress.events_sent,
                events_parked = progress.events_parked,
                "backfill {} to {} ended", running.request.from, running.request.to
            );
            self.next_report = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currents::key::DateHour;
    use crate::ledger::{Entry, Outcome};
    use crate::store::ObjectMeta;

    fn request() -> BackfillRequest {
        BackfillRequest {
            id: "1-abc".into(),
            from: DateHour::from_hours_since_epoch(10),
            to: DateHour::from_hours_since_epoch(12),
            worker: "w".into(),
            requested_at: 0,
        }
    }

    fn done(key: &str, delivered: u64, parked: u64) -> Ended {
        done_sized(key, delivered, parked, 1)
    }

    fn done_sized(key: &str, delivered: u64, parked: u64, size: u64) -> Ended {
        let meta = ObjectMeta {
            key: key.into(),
            size,
            etag: "e".into(),
        };
        let mut entry = Entry::new(&meta, Outcome::Done);
        entry.delivered = delivered;
        entry.parked = parked;
        Ended::Object(ObjectResult::Done(entry))
    }

    fn queued(keys: &[&str]) -> Vec<(String, u64)> {
        keys.iter().map(|k| (k.to_string(), 1)).collect()
    }

    fn sent(sent: u64) -> Reading {
        Reading {
            sent,
            rate: Some(10.0),
            waiting: false,
        }
    }

    fn retry(key: &str) -> Ended {
        Ended::Object(ObjectResult::Retry {
            key: key.into(),
            reason: "outage".into(),
        })
    }

    #[test]
    fn an_end_outside_the_pass_is_not_counted() {
        let mut backfill = Backfill::start(request(), "w", Instant::now(), 0);
        backfill.listed(1, 1, queued(&["a"]));
        assert!(!backfill.ended(&done("live-only", 9, 0)));
        assert!(!backfill.pass_over());
        assert!(backfill.ended(&done("a", 5, 0)));
        assert!(backfill.pass_over());
        assert_eq!(backfill.progress.ended, 1);
    }

    #[test]
    fn objects_left_to_retry_get_another_pass_then_make_it_incomplete() {
        let now = Instant::now();
        let mut backfill = Backfill::start(request(), "w", now, 0);
        assert_eq!(backfill.progress.state, BackfillState::Running);
        backfill.listed(2, 2, queued(&["a", "b"]));
        backfill.ended(&done("a", 5, 0));
        backfill.metered(sent(5));
        assert!(!backfill.pass_over());
        backfill.ended(&retry("b"));
        assert!(backfill.pass_over());
        assert!(!backfill.conclude(now), "a second pass for b");
        assert_eq!(backfill.next_pass, Some(now));
        for _ in 1..MAX_PASSES {
            backfill.listed(2, 1, queued(&["b"]));
            assert_eq!(backfill.progress.found, 2, "found counts the first pass");
            backfill.ended(&retry("b"));
            if backfill.conclude(now) {
                break;
            }
        }
        assert_eq!(backfill.progress.state, BackfillState::Incomplete);
        assert!(
            backfill
                .progress
                .message
                .as_deref()
                .unwrap()
                .contains("1 objects")
        );
        assert_eq!(backfill.progress.events_sent, 5);
    }

    #[test]
    fn a_range_ends_done_or_done_with_failures() {
        let now = Instant::now();
        let mut clean = Backfill::start(request(), "w", now, 0);
        clean.listed(0, 0, Vec::new());
        assert!(clean.pass_over() && clean.conclude(now));
        assert_eq!(clean.progress.state, BackfillState::Done);

        let mut parked = Backfill::start(request(), "w", now, 0);
        parked.listed(1, 1, queued(&["a"]));
        parked.ended(&done("a", 4, 1));
        assert!(parked.conclude(now));
        assert_eq!(parked.progress.state, BackfillState::DoneWithFailures);
        assert_eq!(
            (parked.progress.ended, parked.progress.events_parked),
            (1, 1)
        );
    }

    #[test]
    fn a_range_written_by_hand_is_checked() {
        let now = Instant::now();
        let ok = Backfill::start(request(), "w", now, 0);
        assert_eq!(ok.out_of_bounds(), None);
        let backwards = BackfillRequest {
            from: DateHour::from_hours_since_epoch(12),
            to: DateHour::from_hours_since_epoch(10),
            ..request()
        };
        let reason = Backfill::start(backwards, "w", now, 0)
            .out_of_bounds()
            .unwrap();
        assert!(reason.contains("empty"), "{reason}");
        let huge = BackfillRequest {
            to: DateHour::from_hours_since_epoch(10 + MAX_RANGE_HOURS + 1),
            ..request()
        };
        assert!(Backfill::start(huge, "w", now, 0).out_of_bounds().is_some());
    }

    #[test]
    fn an_adopted_range_carries_the_earlier_workers_counts() {
        let now = Instant::now();
        let mut prior = BackfillProgress::queued(&request(), 0);
        prior.state = BackfillState::Running;
        prior.started_at = Some(100);
        (prior.ended, prior.events_sent) = (6, 300);
        let mut adopted = Backfill::start(request(), "w2", now, 0).resuming(Some(&prior));
        // The range holds 10 objects; the ledger has the 6 the earlier worker finished.
        adopted.listed(10, 4, queued(&["a", "b", "c", "d"]));
        assert_eq!((adopted.progress.found, adopted.progress.ended), (10, 6));
        adopted.ended(&done("a", 50, 0));
        adopted.metered(sent(50));
        assert_eq!(adopted.progress.events_sent, 350);
        assert_eq!(adopted.progress.started_at, Some(100));
        assert_eq!(adopted.progress.worker, "w2");
        let queued = BackfillProgress::queued(&request(), 0);
        let fresh = Backfill::start(request(), "w", now, 0).resuming(Some(&queued));
        assert_eq!(
            fresh.progress.ended, 0,
            "a queued request has nothing to carry"
        );
    }

    #[test]
    fn an_adopted_range_counts_every_object_of_the_range_even_after_a_short_earlier_report() {
        // The earlier worker reported 2 ended, but finished 5 before it died (its last
        // progress write was lost): the ledger says 5, so the range still counts 12 of 12.
        let now = Instant::now();
        let mut prior = BackfillProgress::queued(&request(), 0);
        prior.state = BackfillState::Running;
        prior.started_at = Some(100);
        prior.ended = 2;
        let mut adopted = Backfill::start(request(), "w2", now, 0).resuming(Some(&prior));
        let left: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = left.iter().map(String::as_str).collect();
        adopted.listed(12, 7, queued(&keys));
        for key in &keys {
            adopted.ended(&done(key, 1, 0));
        }
        assert!(adopted.conclude(now));
        assert_eq!((adopted.progress.found, adopted.progress.ended), (12, 12));
    }

    #[test]
    fn events_count_as_heap_accepts_them_and_the_eta_follows_the_rate() {
        let now = Instant::now();
        // The lane had sent 1,000 events of something else before the range started.
        let mut backfill = Backfill::start(request(), "w", now, 1_000);
        backfill.listed(
            3,
            3,
            vec![("a".into(), 100), ("b".into(), 100), ("c".into(), 200)],
        );
        backfill.metered(sent(1_040));
        assert_eq!(backfill.progress.events_sent, 40, "before any object ends");
        assert_eq!(
            backfill.progress.eta_at_update, None,
            "no events per byte yet"
        );
        backfill.ended(&done_sized("a", 100, 0, 100));
        backfill.metered(Reading {
            sent: 1_150,
            rate: Some(10.0),
            waiting: true,
        });
        // 1 event per byte: 300 bytes left, 50 of their events sent, at 10/s.
        assert_eq!(backfill.progress.eta_at_update, Some(25));
        assert!(backfill.progress.waiting_for_rate);
        assert_eq!(backfill.progress.activity(), "waiting for rate room");
    }
}
