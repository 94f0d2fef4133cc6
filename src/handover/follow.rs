//! The `backfill` side of the protocol (steps 2 and 4 in [`crate::handover`]): notice a worker
//! coming up, hand a range over (or find the request already open for it), follow its
//! progress until it is terminal, and the exit that terminal state means.
//!
//! Nothing here draws: [`follow`] hands each progress it reads to the caller, which shows it
//! (the command's progress bar or log lines).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{
    BackfillProgress, BackfillRequest, BackfillState, Control, HEARTBEAT_INTERVAL, HandoverError,
    Heartbeat, STALE_AFTER, owner,
};
use crate::clock::unix_secs_now;
use crate::currents::key::DateHour;

/// How often a follower reads the progress of a handed-over range (one small GET).
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);
/// A progress read that keeps failing is logged at most this often.
const READ_ERROR_EVERY: Duration = Duration::from_secs(10);

/// Resolves with the `run` workers seen waiting, checking every `every` (a standby beats
/// every [`super::HEARTBEAT_INTERVAL`]). A worker counts as waiting when this process has
/// seen its heartbeat written since its first look: a heartbeat that changed, or one that
/// appeared. Its `beat_at` only tells one write from the next; no clock is compared with
/// another host's. A check that fails is logged and does not stop the backfill.
pub async fn worker_comes_up(control: &Control, every: Duration) -> Vec<Heartbeat> {
    let mut seen: Option<HashMap<String, i64>> = None;
    loop {
        match control.workers().await {
            Ok(workers) => {
                let beaten: Vec<Heartbeat> = match &seen {
                    None => Vec::new(),
                    Some(seen) => workers
                        .iter()
                        .filter(|hb| seen.get(&hb.worker) != Some(&hb.beat_at))
                        .cloned()
                        .collect(),
                };
                if !beaten.is_empty() {
                    return beaten;
                }
                seen = Some(
                    workers
                        .into_iter()
                        .map(|hb| (hb.worker, hb.beat_at))
                        .collect(),
                );
            }
            Err(e) => {
                tracing::warn!("cannot check for a waiting `run` worker, continuing here: {e}")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The open request for the range (a Job restarted by Kubernetes follows the one it made),
/// else a new one addressed to `worker` (the lease holder, for people: whoever holds the
/// lease runs it), or to no worker in particular (empty).
pub async fn hand_over(
    control: &Control,
    from: DateHour,
    to: DateHour,
    worker: &str,
) -> Result<BackfillRequest, HandoverError> {
    let open = control.requests().await?.into_iter().find(|(r, p)| {
        r.from == from && r.to == to && !p.as_ref().is_some_and(|p| p.state.is_terminal())
    });
    if let Some((request, progress)) = open {
        let state = progress.map_or(BackfillState::Queued, |p| p.state);
        tracing::info!(
            "backfill {} of {from} to {to} is already {state} for {}: following it",
            request.id,
            worker_label(&request.worker)
        );
        return Ok(request);
    }
    let request = control.request(from, to, worker, unix_secs_now()).await?;
    if worker.is_empty() {
        tracing::warn!(
            "no `run` worker is live on this state: backfill {} waits until one starts",
            request.id
        );
    } else {
        tracing::info!(
            "handed {from} to {to} to `run` worker {worker} as backfill {}",
            request.id
        );
    }
    Ok(request)
}

/// The runner a range run by `backfill` itself names in its progress (never a worker id,
/// which has no spaces).
pub const HERE: &str = "this process";

/// A worker as a request names it, for people: an empty name is "the next `run` worker to
/// start" (a request made while none was live); [`HERE`] is this process.
pub fn worker_label(worker: &str) -> String {
    if worker == HERE {
        HERE.into()
    } else if worker.is_empty() {
        "the next `run` worker to start".into()
    } else {
        format!("worker {worker}")
    }
}

/// How following a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followed {
    /// Its progress reached a terminal state.
    Ended(BackfillProgress),
    /// The request was removed from the state before it finished.
    Removed,
    /// `stop` was cancelled: the request stays, and `runner` carries on with it.
    Stopped { runner: String },
}

impl Followed {
    /// The follower's exit: a terminal state's by [`final_exit`], else incomplete.
    pub fn exit(&self, request: &BackfillRequest) -> FollowExit {
        match self {
            Followed::Ended(progress) => final_exit(request, progress),
            Followed::Removed => FollowExit::Incomplete(format!(
                "backfill {} was removed from the state before it finished",
                request.id
            )),
            Followed::Stopped { runner } => FollowExit::Incomplete(format!(
                "stopped following backfill {}: the range continues in {} (the request is not cancelled), and `currents-heap status` shows its progress",
                request.id,
                worker_label(runner)
            )),
        }
    }
}

/// The exit a follower maps to the process's code: done 0, done with failures 3,
/// incomplete 4 (running the same `backfill` again resumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowExit {
    Done,
    DoneWithFailures,
    Incomplete(String),
}

impl FollowExit {
    /// The exit of `state`: [`FollowExit::Incomplete`] with `why` for anything but done.
    pub fn of(state: BackfillState, why: impl FnOnce() -> String) -> FollowExit {
        match state {
            BackfillState::Done => FollowExit::Done,
            BackfillState::DoneWithFailures => FollowExit::DoneWithFailures,
            _ => FollowExit::Incomplete(why()),
        }
    }
}

/// The exit of a handed-over range by its terminal state.
pub fn final_exit(request: &BackfillRequest, p: &BackfillProgress) -> FollowExit {
    FollowExit::of(p.state, || {
        format!(
            "backfill {} on {}: {}",
            request.id,
            worker_label(&p.worker),
            p.message
                .as_deref()
                .unwrap_or("the worker stopped before the range was done")
        )
    })
}

/// The closing lines for stdout once a handed-over range is terminal.
pub fn render_final(request: &BackfillRequest, p: &BackfillProgress) -> String {
    let mut out = format!(
        "backfill {}: {} to {} {} on {}\nobjects: {} of {} ended, {} failed\nevents: {} sent, {} parked\n",
        request.id,
        request.from,
        request.to,
        p.state,
        worker_label(&p.worker),
        p.ended,
        p.found,
        p.failed,
        p.events_sent,
        p.events_parked
    );
    if let Some(message) = &p.message {
        out += &format!("{}: {message}\n", p.state);
    }
    out
}

/// Follows a handed-over range until its progress is terminal, every [`FOLLOW_POLL`], handing
/// each non-terminal progress read to `show` (with the Unix time it was read at). A signal
/// (`stop`) stops following only: the request stays, and the worker carries on.
pub async fn follow(
    control: &Control,
    request: &BackfillRequest,
    stop: &CancellationToken,
    mut show: impl FnMut(&BackfillProgress, i64),
) -> Followed {
    let mut watch = Staleness::new(request);
    let mut read_error_logged: Option<Instant> = None;
    loop {
        let now = unix_secs_now();
        match control.progress(&request.id).await {
            Ok(Some(progress)) if progress.state.is_terminal() => {
                return Followed::Ended(progress);
            }
            Ok(Some(progress)) => {
                watch.saw(&progress);
                // Once its worker is found not live, this progress is history, not news.
                if !watch.warned {
                    show(&progress, now);
                }
            }
            // Queued with its progress not written yet (or lost): keep waiting, unless the
            // request itself is gone.
            Ok(None) => {
                if let Ok(None) = control.get_request(&request.id).await {
                    return Followed::Removed;
                }
            }
            Err(e) => {
                if read_error_logged.is_none_or(|at| at.elapsed() >= READ_ERROR_EVERY) {
                    read_error_logged = Some(Instant::now());
                    tracing::warn!("backfill {}: {e}; trying again", request.id);
                }
            }
        }
        watch.check(control, now).await;
        tokio::select! {
            _ = stop.cancelled() => {
                return Followed::Stopped { runner: watch.request.worker };
            }
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Says once, when progress has not moved for [`STALE_AFTER`], that the worker it waits for
/// is not live (checked at most every [`HEARTBEAT_INTERVAL`]), and when its progress last
/// moved; from then until the progress moves again, [`follow`] shows none of it.
struct Staleness {
    /// The request, its `worker` the one running it (or its addressee while queued).
    request: BackfillRequest,
    last: Option<(BackfillState, u64, u64, u64, u64)>,
    /// When the runner last wrote the progress (Unix seconds).
    updated_at: Option<i64>,
    changed_at: Instant,
    checked_at: Option<Instant>,
    warned: bool,
}

impl Staleness {
    fn new(request: &BackfillRequest) -> Self {
        Staleness {
            request: request.clone(),
            last: None,
            updated_at: None,
            changed_at: Instant::now(),
            checked_at: None,
            warned: false,
        }
    }

    fn saw(&mut self, p: &BackfillProgress) {
        let now = (p.state, p.found, p.ended, p.events_sent, p.events_parked);
        if self.last != Some(now) {
            self.last = Some(now);
            self.changed_at = Instant::now();
            self.warned = false;
        }
        self.updated_at = Some(p.updated_at);
        if !p.worker.is_empty() {
            self.request.worker.clone_from(&p.worker);
        }
    }

    async fn check(&mut self, control: &Control, now: i64) {
        if self.warned
            || self.changed_at.elapsed() < STALE_AFTER
            || self
                .checked_at
                .is_some_and(|at| at.elapsed() < HEARTBEAT_INTERVAL)
        {
            return;
        }
        self.checked_at = Some(Instant::now());
        // A worker that adopted the request re-addressed it.
        if let Ok(Some(request)) = control.get_request(&self.request.id).await
            && self
                .last
                .is_none_or(|(state, ..)| state == BackfillState::Queued)
        {
            self.request.worker = request.worker;
        }
        let Ok(live) = control.live_workers(now).await else {
            return;
        };
        let owner = owner(&self.request, &live);
        if owner == Some(self.request.worker.as_str()) {
            return;
        }
        self.warned = true;
        let idle = self.changed_at.elapsed().as_secs();
        let next = match owner {
            Some(worker) => format!("live worker {worker} will adopt it"),
            None => "it resumes when a `run` worker starts on this state".into(),
        };
        let last = self.updated_at.map_or_else(String::new, |at| {
            let at = crate::clock::iso8601_utc(at.saturating_mul(1000))
                .unwrap_or_else(|| at.to_string());
            format!(" (its last progress at {at})")
        });
        tracing::warn!(
            "backfill {}: no progress for {idle}s and {} has no live heartbeat{last}: {next}; still following",
            self.request.id,
            worker_label(&self.request.worker)
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn a_worker_coming_up_is_noticed_and_failed_checks_do_not_stop_the_watch() {
        let dir = std::env::temp_dir().join(format!(
            "currents-heap-handover-watch-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Not lazy: until the directory exists, every listing fails.
        let control = Control::new(Arc::new(LocalStore::new(&dir)));
        assert!(control.live_workers(unix_secs_now()).await.is_err());
        let every = Duration::from_millis(5);
        let mut watch = std::pin::pin!(worker_comes_up(&control, every));
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut watch).await;
        assert!(waited.is_err(), "a failing state is not a live worker");

        std::fs::create_dir_all(&dir).unwrap();
        let stale = Heartbeat::new_worker(unix_secs_now() - 3600);
        control.beat(&stale).await.unwrap();
        // A watch that starts with the stale heartbeat there: it is not rewritten, so it is
        // no worker coming up. (The first watch may have listed the empty directory in a
        // blocking read still running when its timeout fired, and so seen the stale heartbeat
        // appear: that one is asked only for the live worker below.)
        let mut settled = std::pin::pin!(worker_comes_up(&control, every));
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut settled).await;
        assert!(waited.is_err(), "a stale heartbeat is not a live worker");

        let live = Heartbeat::new_worker(unix_secs_now());
        control.beat(&live).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(10), &mut settled)
            .await
            .expect("the live worker is noticed");
        assert_eq!(found, std::slice::from_ref(&live));
        // The first watch, whose checks failed, still notices a worker: at once (the
        // heartbeats appeared since its first successful look), or at the next beat.
        let found = match tokio::time::timeout(Duration::from_millis(100), &mut watch).await {
            Ok(found) => found,
            Err(_) => {
                let again = Heartbeat {
                    beat_at: live.beat_at + 1,
                    ..live.clone()
                };
                control.beat(&again).await.unwrap();
                tokio::time::timeout(Duration::from_secs(10), &mut watch)
                    .await
                    .expect("a worker is noticed, although earlier checks failed")
            }
        };
        assert!(!found.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_final_state_decides_the_exit_code() {
        let request = BackfillRequest {
            id: "1-00000000".into(),
            from: DateHour::parse("2026-11-01-00").unwrap(),
            to: DateHour::parse("2026-11-02-00").unwrap(),
            worker: "w".into(),
            requested_at: 1,
        };
        let mut p = BackfillProgress::queued(&request, 1);
        p.state = BackfillState::Done;
        assert_eq!(final_exit(&request, &p), FollowExit::Done);
        p.state = BackfillState::DoneWithFailures;
        assert_eq!(final_exit(&request, &p), FollowExit::DoneWithFailures);
        p.state = BackfillState::Incomplete;
        p.message = Some("the source failed".into());
        match final_exit(&request, &p) {
            FollowExit::Incomplete(message) => assert!(message.contains("the source failed")),
            other => panic!("{other:?}"),
        }
        assert!(render_final(&request, &p).contains("incomplete: the source failed"));
        assert_eq!(
            Followed::Ended(p.clone()).exit(&request),
            final_exit(&request, &p)
        );
        assert!(matches!(
            Followed::Removed.exit(&request),
            FollowExit::Incomplete(m) if m.contains("removed")
        ));
    }

    /// After `kill -9` of the worker running a range, its last progress stays behind
    /// ("waiting for rate room", ETA 0s): once the follower finds the worker not live, it
    /// stops handing that progress on as current (the warning says when it last moved).
    #[tokio::test(start_paused = true)]
    async fn a_dead_workers_last_progress_is_not_shown_as_current() {
        let dir =
            std::env::temp_dir().join(format!("currents-heap-follow-dead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let control = Control::new(Arc::new(LocalStore::new(&dir)));
        let dead = Heartbeat::new_worker(unix_secs_now() - 3600);
        control.beat(&dead).await.unwrap();
        let request = control
            .request(
                DateHour::parse("2026-11-27-00").unwrap(),
                DateHour::parse("2026-11-28-00").unwrap(),
                &dead.worker,
                unix_secs_now() - 3600,
            )
            .await
            .unwrap();
        let mut progress = BackfillProgress::queued(&request, unix_secs_now() - 3600);
        progress.state = BackfillState::Running;
        progress.found = 60;
        progress.ended = 56;
        progress.eta_at_update = Some(1);
        progress.waiting_for_rate = true;
        control.report(&progress).await.unwrap();
        let stop = CancellationToken::new();
        let started = Instant::now();
        let mut last_shown = None;
        let following = follow(&control, &request, &stop, |_, _| {
            last_shown = Some(started.elapsed());
        });
        let stopper = async {
            tokio::time::sleep(STALE_AFTER + HEARTBEAT_INTERVAL * 10).await;
            stop.cancel();
        };
        let (followed, ()) = tokio::join!(following, stopper);
        assert!(matches!(followed, Followed::Stopped { .. }));
        let last_shown = last_shown.expect("shown while it may still be live");
        assert!(
            last_shown <= STALE_AFTER + FOLLOW_POLL,
            "the dead worker's progress was still shown as current {last_shown:?} in"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
