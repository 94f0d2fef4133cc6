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
//! - [`BackfillLane`]: what the engine holds: the desk, the backfill under way and the
//!   requests waiting; it lists each pass and queues it on the scheduler's backfill lane.
//!
//! One request runs at a time, oldest first: the lane's room is shared anyway, and progress
//! per request stays exact.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::discovery::find_unfinished;
use super::pipeline::ObjectResult;
use super::scheduler::{Ended, Scheduler};
use crate::clock::unix_secs_now;
use crate::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, Heartbeat, PRUNE_EVERY, check_range,
    owner,
};
use crate::heap::delivery::Lane;
use crate::ledger::Ledger;
use crate::source::Window;
use crate::store::ObjectStore;

/// Progress is written at most this often while a backfill runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
pub use crate::handover::MAX_RANGE_HOURS;
/// How long a stop waits for the last progress write and the heartbeat's deletion.
pub const FINISH_WITHIN: Duration = Duration::from_secs(5);
/// Passes over a range before objects that keep ending "retry later" make it incomplete.
pub const MAX_PASSES: u32 = 3;

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
    pub fn spawn(control: Control, interval: Duration) -> Desk {
        let heartbeat = Heartbeat::new_worker(unix_secs_now());
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
    let live = match control.live_workers(unix_secs_now()).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!("cannot list the live workers: {e}");
            return;
        }
    };
    for (request, progress) in listed {
        let open = progress.as_ref().is_none_or(|p| !p.state.is_terminal());
        if !open {
            ended.insert(request.id.clone());
        }
        if !open || passed_on.contains(&request.id) || owner(&request, &live) != Some(me) {
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
                        "adopted a backfill whose worker is no longer live"
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

/// One request being run (see the module docs).
#[derive(Debug)]
pub struct Backfill {
    pub request: BackfillRequest,
    pub progress: BackfillProgress,
    pass: u32,
    /// The keys of this pass not ended yet, on whichever lane they run: a key of the range
    /// the live lane had queued or in flight already (a range that overlaps the lookback)
    /// is the range's all the same.
    outstanding: HashSet<String>,
    /// Objects of this pass that ended without a record (to find again next pass).
    to_retry: u64,
    /// When the next pass lists the range again; `None` while one is under way.
    pub next_pass: Option<Instant>,
}

impl Backfill {
    /// Starts running `request` on `worker`: its first pass lists the range at once.
    pub fn start(request: BackfillRequest, worker: &str, now: Instant) -> Backfill {
        let unix = unix_secs_now();
        let mut progress = BackfillProgress::queued(&request, unix);
        progress.state = BackfillState::Running;
        progress.worker = worker.to_string();
        progress.started_at = Some(unix);
        Backfill {
            request,
            progress,
            pass: 0,
            outstanding: HashSet::new(),
            to_retry: 0,
            next_pass: Some(now),
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
    /// ledger skips what that worker finished, so its objects and events are carried over.
    pub fn resuming(mut self, prior: Option<&BackfillProgress>) -> Backfill {
        if let Some(prior) = prior.filter(|p| p.started_at.is_some()) {
            self.progress.ended = prior.ended;
            self.progress.failed = prior.failed;
            self.progress.events_sent = prior.events_sent;
            self.progress.events_parked = prior.events_parked;
            self.progress.started_at = prior.started_at;
        }
        self
    }

    /// A pass listed the range and found these keys unfinished, now queued or in flight.
    pub fn listed(&mut self, keys: impl IntoIterator<Item = String>) {
        self.pass += 1;
        self.next_pass = None;
        self.outstanding = keys.into_iter().collect();
        self.to_retry = 0;
        if self.pass == 1 {
            // What is left, plus what an earlier worker finished of the range.
            self.progress.found = self.progress.ended + self.outstanding.len() as u64;
        }
        self.progress.updated_at = unix_secs_now();
    }

    /// A pass could not list the range: try again at `retry_at`, counting it as a pass.
    pub fn listing_failed(&mut self, reason: &str, retry_at: Instant) {
        self.pass += 1;
        self.next_pass = Some(retry_at);
        self.progress.message = Some(format!("listing the range failed: {reason}"));
        self.progress.updated_at = unix_secs_now();
    }

    /// An object ended, on either lane; counted if it is one of this pass's. Returns whether
    /// it was.
    pub fn ended(&mut self, ended: &Ended) -> bool {
        if !self.outstanding.remove(ended.key()) {
            return false;
        }
        match ended {
            Ended::Object(ObjectResult::Done(entry)) => {
                self.progress.ended += 1;
                self.progress.events_sent += entry.delivered;
                self.progress.events_parked += entry.parked;
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
            self.progress.message = Some(format!(
                "{} objects were still left to retry after {} passes over the range; run the backfill again",
                self.to_retry, self.pass
            ));
            BackfillState::Incomplete
        } else if self.progress.failed > 0 || self.progress.events_parked > 0 {
            BackfillState::DoneWithFailures
        } else {
            BackfillState::Done
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

/// The backfills a long-lived run takes on, run on the scheduler's backfill lane one at a
/// time: the [`Desk`] that hands them over, the one under way, and those waiting their turn.
pub struct BackfillLane {
    desk: Desk,
    running: Option<Backfill>,
    waiting: VecDeque<(BackfillRequest, Option<BackfillProgress>)>,
    /// How long after a pass (or a failed listing) the next one lists the range: the plan's
    /// poll interval.
    every: Duration,
}

impl BackfillLane {
    /// Starts the desk (see [`Desk::spawn`]); passes are `every` apart.
    pub fn spawn(control: Control, heartbeat_interval: Duration, every: Duration) -> Self {
        BackfillLane {
            desk: Desk::spawn(control, heartbeat_interval),
            running: None,
            waiting: VecDeque::new(),
            every,
        }
    }

    /// The next request the desk hands over (pending while there is none).
    pub async fn next_request(&mut self) -> Option<(BackfillRequest, Option<BackfillProgress>)> {
        self.desk.requests.recv().await
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
        tracing::info!(id = %request.id, "backfill {} to {}: running it on the backfill lane", request.from, request.to);
        let mut started =
            Backfill::start(request, self.desk.worker(), Instant::now()).resuming(prior.as_ref());
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

    /// Lists the range less the ledger and queues it on the backfill lane. A key the live
    /// lane holds already stays there, and the pass waits for it too. Returns how many
    /// objects it queued. Dropped mid-listing (a stop), nothing is queued.
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
            Ok((_, work)) => {
                let keys: Vec<String> = work.iter().map(|w| w.key().to_string()).collect();
                for work in work {
                    // Not queued: queued or in flight already, the end counted all the same.
                    found += u64::from(scheduler.enqueue_in(Lane::Backfill, work));
                }
                running.listed(keys);
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

    /// An object ended, on either lane: counted if it is one of the running pass's.
    pub fn on_ended(&mut self, ended: &Ended) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        if !running.ended(ended) {
            return;
        }
        self.desk.report(&running.progress);
        self.settle(Instant::now() + self.every);
    }

    /// When the backfill under way next lists its range, if it waits to.
    pub fn next_wake(&self) -> Option<Instant> {
        self.running.as_ref().and_then(|b| b.next_pass)
    }

    /// At a stop: the backfill under way stays open for the next live worker; the desk
    /// writes the last progress and deletes the heartbeat.
    pub async fn finish(mut self) {
        if let Some(running) = self.running.as_mut() {
            running.progress.message =
                Some("the worker stopped; the range resumes when a worker is live".into());
            self.desk.report(&running.progress);
        }
        self.desk.finish().await;
    }

    /// Ends the backfill under way if its pass is over and nothing is left to retry (or
    /// passes ran out); else schedules its next pass at `next`. Reports either way.
    fn settle(&mut self, next: Instant) {
        let Some(running) = self.running.as_mut() else {
            return;
        };
        let ended =
            running.progress.state.is_terminal() || (running.pass_over() && running.conclude(next));
        self.desk.report(&running.progress);
        if ended {
            let progress = &running.progress;
            tracing::info!(
                id = %progress.id,
                state = %progress.state,
                objects = progress.ended,
                events = progress.events_sent,
                "backfill {} to {} ended", running.request.from, running.request.to
            );
            self.running = None;
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
        let meta = ObjectMeta {
            key: key.into(),
            size: 1,
            etag: "e".into(),
        };
        let mut entry = Entry::new(&meta, Outcome::Done);
        entry.delivered = delivered;
        entry.parked = parked;
        Ended::Object(ObjectResult::Done(entry))
    }

    fn keys(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn an_end_outside_the_pass_is_not_counted() {
        let mut backfill = Backfill::start(request(), "w", Instant::now());
        backfill.listed(keys(&["a"]));
        assert!(!backfill.ended(&done("live-only", 9, 0)));
        assert!(!backfill.pass_over());
        assert!(backfill.ended(&done("a", 5, 0)));
        assert!(backfill.pass_over());
        assert_eq!(
            (backfill.progress.ended, backfill.progress.events_sent),
            (1, 5)
        );
    }

    fn retry(key: &str) -> Ended {
        Ended::Object(ObjectResult::Retry {
            key: key.into(),
            reason: "outage".into(),
        })
    }

    #[test]
    fn objects_left_to_retry_get_another_pass_then_make_it_incomplete() {
        let now = Instant::now();
        let mut backfill = Backfill::start(request(), "w", now);
        assert_eq!(backfill.progress.state, BackfillState::Running);
        backfill.listed(keys(&["a", "b"]));
        backfill.ended(&done("a", 5, 0));
        assert!(!backfill.pass_over());
        backfill.ended(&retry("b"));
        assert!(backfill.pass_over());
        assert!(!backfill.conclude(now), "a second pass for b");
        assert_eq!(backfill.next_pass, Some(now));
        for _ in 1..MAX_PASSES {
            backfill.listed(keys(&["b"]));
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
        let mut clean = Backfill::start(request(), "w", now);
        clean.listed(keys(&[]));
        assert!(clean.pass_over() && clean.conclude(now));
        assert_eq!(clean.progress.state, BackfillState::Done);

        let mut parked = Backfill::start(request(), "w", now);
        parked.listed(keys(&["a"]));
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
        let ok = Backfill::start(request(), "w", now);
        assert_eq!(ok.out_of_bounds(), None);
        let backwards = BackfillRequest {
            from: DateHour::from_hours_since_epoch(12),
            to: DateHour::from_hours_since_epoch(10),
            ..request()
        };
        let reason = Backfill::start(backwards, "w", now)
            .out_of_bounds()
            .unwrap();
        assert!(reason.contains("empty"), "{reason}");
        let huge = BackfillRequest {
            to: DateHour::from_hours_since_epoch(10 + MAX_RANGE_HOURS + 1),
            ..request()
        };
        assert!(Backfill::start(huge, "w", now).out_of_bounds().is_some());
    }

    #[test]
    fn an_adopted_range_carries_the_earlier_workers_counts() {
        let now = Instant::now();
        let mut prior = BackfillProgress::queued(&request(), 0);
        prior.state = BackfillState::Running;
        prior.started_at = Some(100);
        (prior.ended, prior.events_sent) = (6, 300);
        let mut adopted = Backfill::start(request(), "w2", now).resuming(Some(&prior));
        adopted.listed(keys(&["a", "b", "c", "d"]));
        assert_eq!((adopted.progress.found, adopted.progress.ended), (10, 6));
        adopted.ended(&done("a", 50, 0));
        assert_eq!(adopted.progress.events_sent, 350);
        assert_eq!(adopted.progress.started_at, Some(100));
        assert_eq!(adopted.progress.worker, "w2");
        let queued = BackfillProgress::queued(&request(), 0);
        let fresh = Backfill::start(request(), "w", now).resuming(Some(&queued));
        assert_eq!(
            fresh.progress.ended, 0,
            "a queued request has nothing to carry"
        );
    }
}
