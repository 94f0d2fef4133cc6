//! `backfill --from D --to D`: deliver a past range of `date=` hours, skipping objects the
//! ledger has finished, so an interrupted backfill resumes where it stopped.
//!
//! While a `run` worker is live on the same state, the range is handed over to it (see
//! [`crate::handover`]) and this command follows its progress: the two never pace against
//! Heap's limit separately. With no live worker it runs the range itself, and hands the rest
//! over if a worker comes up meanwhile.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::config::{Config, DEFAULTS, HumanDuration};
use super::worker::{Exit, WorkerArgs, engine, open_state, shutdown_on_signals};
use crate::clock::unix_secs_now;
use crate::currents::key::DateHour;
use crate::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, HEARTBEAT_INTERVAL, HandoverError,
    Heartbeat, STALE_AFTER,
};
use crate::source::parse_date_arg;
use crate::telemetry::{Counts, Metrics};
use crate::worker::{Outcome, Plan, Report};
use tokio_util::sync::CancellationToken;

// The longest range one backfill takes, here or in a worker: discovery lists the whole range
// (one ranged listing per event type, a request per 1,000 objects) and holds what it found
// before sending, so a typo like `--to 9999-12-31` must not start that.
use crate::worker::backfills::MAX_RANGE_HOURS;

/// How often a follower reads the progress of a handed-over range (one small GET).
const FOLLOW_POLL: Duration = Duration::from_secs(2);
/// How often a log line reports progress when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `backfill`'s flags; it runs with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct BackfillArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) worker: WorkerArgs,
    /// First `date=` hour, inclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = parse_date_arg)]
    #[serde(skip)]
    pub from: DateHour,
    /// End of the range, exclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = parse_date_arg)]
    #[serde(skip)]
    pub to: DateHour,
    /// After a stop signal, how long objects in flight may take to finish, 1s to 1h.
    #[arg(long, default_value_t = DEFAULTS.shutdown_timeout.clone())]
    shutdown_timeout: HumanDuration,
    /// Hand the range to the live `run` worker on this state (or find the request already
    /// open for the same range), print the request's id and exit 0 at once; `status` shows
    /// its progress. With no worker live, the request waits for the next one to start. Not
    /// with --dry-run or --no-handover.
    #[arg(long, conflicts_with = "no_handover")]
    #[serde(skip)]
    pub detach: bool,
    /// Run the range in this process even while a `run` worker is live on this state. Each
    /// then paces itself to the whole rate limit, so together they may send up to twice it
    /// (Heap answers 429, and live events wait behind retries): for emergencies, such as a
    /// worker that cannot take the range.
    #[arg(long)]
    #[serde(skip)]
    pub no_handover: bool,
}

pub async fn backfill(args: BackfillArgs, config: Config) -> Exit {
    if args.from >= args.to {
        return Exit::Usage(format!(
            "--from {} must come before --to {} (which is exclusive)",
            args.from, args.to
        ));
    }
    let hours = args.to.hours_since_epoch() - args.from.hours_since_epoch();
    if hours > MAX_RANGE_HOURS {
        return Exit::Usage(format!(
            "--from {} --to {} spans {hours} hours; a backfill takes at most {MAX_RANGE_HOURS} (400 days): split the range",
            args.from, args.to
        ));
    }
    if args.detach && config.dry_run {
        return Exit::Usage(
            "--detach: not with --dry-run, which sends and records nothing, so there is nothing to hand over".into(),
        );
    }
    // Signals are handled from here on: starting the engine can take a while (credentials).
    // The first one cancels `stop`, whatever this command is doing by then.
    let abandon = CancellationToken::new();
    let stop = stop_on_signals(abandon.clone());
    if config.dry_run || args.no_handover {
        // A dry run sends nothing, so it never needs to hand over.
        if !config.dry_run {
            warn_if_live(&config).await;
        }
        return run_here(&args, &config, abandon, &stop, None).await.exit;
    }
    let control = match open_control(&config).await {
        Ok(control) => control,
        Err(exit) => return exit,
    };
    let live = match control.live_workers(unix_secs_now()).await {
        Ok(live) => live,
        Err(e) if args.detach => return Exit::Fatal(format!("cannot hand the range over: {e}")),
        Err(e) => {
            tracing::warn!(
                "cannot tell whether a `run` worker is live on this state, so running the range here: {e}"
            );
            Vec::new()
        }
    };
    if !live.is_empty() || args.detach {
        let request = match hand_over(&control, args.from, args.to, &live).await {
            Ok(request) => request,
            Err(e) => return Exit::Fatal(format!("cannot hand the range over: {e}")),
        };
        if args.detach {
            println!(
                "backfill {}: {} to {} is handed to {}",
                request.id,
                request.from,
                request.to,
                addressee(&request.worker)
            );
            println!(
                "`currents-heap status` shows its progress; `backfill` of the same range follows it."
            );
            return Exit::Success;
        }
        return follow(&control, &request, &stop).await;
    }
    let ran = run_here(&args, &config, abandon, &stop, Some(&control)).await;
    let Some(live) = ran.worker_came_up else {
        return ran.exit;
    };
    let request = match hand_over(&control, args.from, args.to, &live).await {
        Ok(request) => request,
        Err(e) => {
            return Exit::Incomplete(format!(
                "stopped to hand the rest of the range over, but cannot: {e}"
            ));
        }
    };
    let exit = follow(&control, &request, &stop).await;
    match (exit, ran.exit) {
        // What this process parked before the handover counts as much as the worker's.
        (Exit::Success, Exit::Parked) => Exit::Parked,
        (exit, _) => exit,
    }
}

/// How running the range here ended.
struct Ran {
    exit: Exit,
    /// Set when it stopped because a worker became live: hand the rest over to them.
    worker_came_up: Option<Vec<Heartbeat>>,
}

/// Runs the range in this process, as before handovers existed. With `control`, checks every
/// [`HEARTBEAT_INTERVAL`] for a live worker and stops (as on a signal) when one appears.
async fn run_here(
    args: &BackfillArgs,
    config: &Config,
    abandon: CancellationToken,
    stop: &CancellationToken,
    control: Option<&Control>,
) -> Ran {
    let plan = Plan::Range {
        from: args.from,
        to: args.to,
    };
    let engine = match engine(config, plan).await {
        Ok(engine) => engine.with_abandon(abandon),
        Err(exit) => {
            return Ran {
                exit,
                worker_came_up: None,
            };
        }
    };
    tracing::info!("backfill {} to {}", args.from, args.to);
    let mut progress = Progress::new("{bar:40} {pos}/{len} objects, {msg}, ETA {eta}");
    let bar = progress.bar.clone();
    let started = Instant::now();
    let engine = engine.with_progress(Box::new(move |counts, found| {
        progress.engine_update(counts, found, started)
    }));
    let came_up = OnceLock::new();
    let shutdown = async {
        tokio::select! {
            _ = stop.cancelled() => {}
            live = async {
                match control {
                    Some(control) => worker_comes_up(control, HEARTBEAT_INTERVAL).await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!(
                    "`run` worker {} is now live on this state: stopping here (objects in flight finish) to hand the rest of the range over",
                    live[0].worker
                );
                let _ = came_up.set(live);
            }
        }
    };
    let report = engine.drive(shutdown).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    let worker_came_up = came_up.into_inner();
    match (&report.outcome, worker_came_up) {
        (Outcome::Incomplete { .. }, Some(live)) => {
            // Not "incomplete: run again": the worker takes the rest.
            let Report {
                summary,
                counts,
                dry_run,
                ..
            } = report;
            let handed = Report {
                summary,
                counts,
                outcome: Outcome::Finished,
                dry_run,
            };
            print!("{}", handed.render());
            print!("{}", handed.counts.render_odd_values());
            let mine = if handed.counts.total().parked > 0 || handed.counts.objects_failed > 0 {
                Exit::Parked
            } else {
                Exit::Success
            };
            Ran {
                exit: mine,
                worker_came_up: Some(live),
            }
        }
        // Finished (or failed) before the stop took effect: nothing to hand over.
        _ => {
            print!("{}", report.render());
            print!("{}", report.counts.render_odd_values());
            Ran {
                exit: report.outcome.into(),
                worker_came_up: None,
            }
        }
    }
}

/// A token cancelled by the first SIGTERM/SIGINT; a second one cancels `abandon` (objects in
/// flight are abandoned). The handlers are installed now.
fn stop_on_signals(abandon: CancellationToken) -> CancellationToken {
    let stop = CancellationToken::new();
    let signal = shutdown_on_signals(abandon);
    let cancel = stop.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    stop
}

/// The state's control objects; the state is not created if it does not exist.
async fn open_control(config: &Config) -> Result<Control, Exit> {
    // These few requests are not served as metrics: the engine has its own.
    let metrics = std::sync::Arc::new(Metrics::new());
    Ok(Control::new(open_state(config, false, &metrics).await?))
}

/// With `--no-handover`: says so if a worker is live, since both then send at the full rate.
async fn warn_if_live(config: &Config) {
    let Ok(control) = open_control(config).await else {
        return;
    };
    if let Ok(live) = control.live_workers(unix_secs_now()).await
        && let Some(hb) = live.first()
    {
        tracing::warn!(
            "--no-handover: `run` worker {} is live on this state and this backfill runs beside it; each paces itself to the whole rate limit, so together they may send up to twice it",
            hb.worker
        );
    }
}

/// Resolves with the live workers once there are any, checking every `every`. A check that
/// fails is logged and does not stop the backfill.
async fn worker_comes_up(control: &Control, every: Duration) -> Vec<Heartbeat> {
    loop {
        tokio::time::sleep(every).await;
        match control.live_workers(unix_secs_now()).await {
            Ok(live) if !live.is_empty() => return live,
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot check for a live `run` worker, continuing here: {e}"),
        }
    }
}

/// The open request for the range (a Job restarted by Kubernetes follows the one it made),
/// else a new one addressed to the live worker with the lowest id ([`crate::handover::owner`]'s
/// choice with no addressee), or to no worker in particular if none is live.
async fn hand_over(
    control: &Control,
    from: DateHour,
    to: DateHour,
    live: &[Heartbeat],
) -> Result<BackfillRequest, HandoverError> {
    let open = control.requests().await?.into_iter().find(|(r, p)| {
        r.from == from && r.to == to && !p.as_ref().is_some_and(|p| p.state.is_terminal())
    });
    if let Some((request, progress)) = open {
        let state = progress.map_or(BackfillState::Queued, |p| p.state);
        tracing::info!(
            "backfill {} of {from} to {to} is already {state} for {}: following it",
            request.id,
            addressee(&request.worker)
        );
        return Ok(request);
    }
    let worker = live
        .iter()
        .map(|hb| hb.worker.as_str())
        .min()
        .unwrap_or_default();
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

fn addressee(worker: &str) -> String {
    if worker.is_empty() {
        "the next `run` worker to start".into()
    } else {
        format!("worker {worker}")
    }
}

/// Follows a handed-over range until its progress is terminal, then exits by it. A signal
/// stops following only: the request stays, and the worker carries on.
async fn follow(control: &Control, request: &BackfillRequest, stop: &CancellationToken) -> Exit {
    let mut display = Progress::new("{bar:40} {pos}/{len} objects, {msg}");
    let mut watch = Staleness::new(request);
    let mut read_error_logged: Option<Instant> = None;
    loop {
        let now = unix_secs_now();
        match control.progress(&request.id).await {
            Ok(Some(progress)) if progress.state.is_terminal() => {
                display.finish();
                print!("{}", render_final(request, &progress));
                return final_exit(request, &progress);
            }
            Ok(Some(progress)) => {
                display.follow_update(request, &progress, now);
                watch.saw(&progress);
            }
            // Queued with its progress not written yet (or lost): keep waiting, unless the
            // request itself is gone.
            Ok(None) => {
                if let Ok(None) = control.get_request(&request.id).await {
                    display.finish();
                    return Exit::Incomplete(format!(
                        "backfill {} was removed from the state before it finished",
                        request.id
                    ));
                }
            }
            Err(e) => {
                if read_error_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    read_error_logged = Some(Instant::now());
                    tracing::warn!("backfill {}: {e}; trying again", request.id);
                }
            }
        }
        watch.check(control, now).await;
        tokio::select! {
            _ = stop.cancelled() => {
                display.finish();
                return Exit::Incomplete(format!(
                    "stopped following backfill {}: the range continues in {} (the request is not cancelled), and `currents-heap status` shows its progress",
                    request.id,
                    addressee(&watch.runner)
                ));
            }
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Says once, when progress has not moved for [`STALE_AFTER`], that the worker it waits for
/// is not live (checked at most every [`HEARTBEAT_INTERVAL`]).
struct Staleness {
    request_id: String,
    /// The worker running the request, or its addressee while queued.
    runner: String,
    last: Option<(BackfillState, u64, u64, u64, u64)>,
    changed_at: Instant,
    checked_at: Option<Instant>,
    warned: bool,
}

impl Staleness {
    fn new(request: &BackfillRequest) -> Self {
        Staleness {
            request_id: request.id.clone(),
            runner: request.worker.clone(),
            last: None,
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
        if !p.worker.is_empty() {
            self.runner.clone_from(&p.worker);
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
        if let Ok(Some(request)) = control.get_request(&self.request_id).await
            && self
                .last
                .is_none_or(|(state, ..)| state == BackfillState::Queued)
        {
            self.runner = request.worker;
        }
        let Ok(live) = control.live_workers(now).await else {
            return;
        };
        if live.iter().any(|hb| hb.worker == self.runner) {
            return;
        }
        self.warned = true;
        let idle = self.changed_at.elapsed().as_secs();
        let next = match live.first() {
            Some(hb) => format!("live worker {} will adopt it", hb.worker),
            None => "it resumes when a `run` worker starts on this state".into(),
        };
        tracing::warn!(
            "backfill {}: no progress for {idle}s and {} has no live heartbeat: {next}; still following",
            self.request_id,
            addressee(&self.runner)
        );
    }
}

/// The closing line for stdout once a handed-over range is terminal.
fn render_final(request: &BackfillRequest, p: &BackfillProgress) -> String {
    let mut out = format!(
        "backfill {}: {} to {} {} on worker {}\nobjects: {} of {} ended, {} failed\nevents: {} sent, {} parked\n",
        request.id,
        request.from,
        request.to,
        p.state,
        p.worker,
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

/// The exit code of a terminal state: done 0, done with failures 3, incomplete 4.
fn final_exit(request: &BackfillRequest, p: &BackfillProgress) -> Exit {
    match p.state {
        BackfillState::Done => Exit::Success,
        BackfillState::DoneWithFailures => Exit::Parked,
        _ => Exit::Incomplete(format!(
            "backfill {} on worker {}: {}",
            request.id,
            p.worker,
            p.message
                .as_deref()
                .unwrap_or("the worker stopped before the range was done")
        )),
    }
}

/// A progress bar on a terminal; a log line every 10 seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    last_log: Option<Instant>,
}

impl Progress {
    fn new(template: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            last_log: Some(Instant::now()),
        }
    }

    /// Whether a log line is due (no bar, and 10 s since the last or `now_anyway`).
    fn log_due(&mut self, now_anyway: bool) -> bool {
        let due = self.bar.is_none()
            && (now_anyway || self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY));
        if due {
            self.last_log = Some(Instant::now());
        }
        due
    }

    /// This process's own progress, from the engine's counters.
    fn engine_update(&mut self, counts: &Counts, total: u64, started: Instant) {
        let done = counts.objects_ended();
        let events = counts.total().read;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(format!("{events} events"));
        }
        if self.log_due(done == total) {
            let eta = (done > 0 && total >= done).then(|| {
                started
                    .elapsed()
                    .mul_f64((total - done) as f64 / done as f64)
            });
            tracing::info!(
                "backfill: {done}/{total} objects, {events} events, ETA {}",
                eta.map_or_else(|| "unknown".to_string(), |d| format!("{}s", d.as_secs()))
            );
        }
    }

    /// A handed-over range's progress, as the worker wrote it.
    fn follow_update(&mut self, request: &BackfillRequest, p: &BackfillProgress, now: i64) {
        let eta = p
            .eta_secs(now)
            .map_or_else(|| "unknown".to_string(), |s| format!("{s}s"));
        if let Some(bar) = &self.bar {
            bar.set_length(p.found);
            bar.set_position(p.ended);
            bar.set_message(format!(
                "{} events sent, {} on worker {}, ETA {eta}",
                p.events_sent, p.state, p.worker
            ));
        }
        if self.log_due(false) {
            tracing::info!(
                "backfill {}: {} on {}, {}/{} objects, {} events sent, {} parked, ETA {eta}",
                request.id,
                p.state,
                addressee(&p.worker),
                p.ended,
                p.found,
                p.events_sent,
                p.events_parked
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
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
        let waited = tokio::time::timeout(Duration::from_millis(100), &mut watch).await;
        assert!(waited.is_err(), "a stale heartbeat is not a live worker");

        let live = Heartbeat::new_worker(unix_secs_now());
        control.beat(&live).await.unwrap();
        let found = tokio::time::timeout(Duration::from_secs(10), &mut watch)
            .await
            .expect("the live worker is noticed, although earlier checks failed");
        assert_eq!(found, [live]);
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
        assert!(matches!(final_exit(&request, &p), Exit::Success));
        p.state = BackfillState::DoneWithFailures;
        assert!(matches!(final_exit(&request, &p), Exit::Parked));
        p.state = BackfillState::Incomplete;
        p.message = Some("the source failed".into());
        match final_exit(&request, &p) {
            Exit::Incomplete(message) => assert!(message.contains("the source failed")),
            other => panic!("{other:?}"),
        }
        assert!(render_final(&request, &p).contains("incomplete: the source failed"));
    }
}
