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

use super::check::{Preflight, StateUse, preflight_until};
use super::config::{Config, DEFAULTS, HumanDuration};
use super::worker::{
    Exit, Leased, WorkerArgs, engine, hand_over_when_rate_bound, lease, open_state, sent_record,
    stop_on_signals,
};
use crate::clock::unix_secs_now;
use crate::currents::key::DateHour;
use crate::handover::lease::{
    Acquired, Holding, Keeper, LeaseClient, LeaseState, Read, Role, Takeover,
};
use crate::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, FollowExit, Followed,
    HEARTBEAT_INTERVAL, Heartbeat, check_range, final_exit, follow, hand_over, render_final,
    worker_comes_up, worker_label,
};
use crate::heap::delivery::HistoryTap;
use crate::telemetry::Metrics;
use crate::worker::{Outcome, Plan};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a log line reports progress when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// `backfill`'s flags; it runs with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct BackfillArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) worker: WorkerArgs,
    /// First `date=` hour, inclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = DateHour::parse_arg)]
    #[serde(skip)]
    pub from: DateHour,
    /// End of the range, exclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = DateHour::parse_arg)]
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
    if let Err(e) = check_range(args.from, args.to) {
        return Exit::Usage(format!("--from/--to: {e}"));
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
    // Wiring found before any send (exit 2); an outage at start is exit 4.
    let start = Preflight {
        source: true,
        state: StateUse::Write {
            lease: !args.no_handover,
        },
        bounded: true,
    };
    if let Err(exit) = preflight_until(&config, start, &Arc::new(Metrics::new()), &stop).await {
        return exit;
    }
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
    let metrics = Arc::new(Metrics::new());
    let lease = match lease(&config, Role::Backfill, &metrics).await {
        Ok(Some(lease)) => lease,
        // `--single-process`: this is the only sender; nothing to hand over to.
        Ok(None) => return run_here(&args, &config, abandon, &stop, None).await.exit,
        Err(exit) => return exit,
    };
    if args.detach {
        let holder = holder_of(&lease).await;
        return match hand_over(&control, args.from, args.to, &holder).await {
            Ok(request) => {
                println!(
                    "backfill {}: {} to {} is handed to {}",
                    request.id,
                    request.from,
                    request.to,
                    worker_label(&request.worker)
                );
                println!(
                    "`currents-heap status` shows its progress; `backfill` of the same range follows it."
                );
                Exit::Success
            }
            Err(e) => Exit::Fatal(format!("cannot hand the range over: {e}")),
        };
    }
    // A live `run` worker holding the lease takes the range; another backfill holding it is
    // waited for (both ranges go through one pacer, one after the other).
    let mut said = false;
    let acquired = lease
        .acquire(&stop, |holder, live| {
            if live && holder.role != Role::Run && !said {
                said = true;
                tracing::info!(
                    "{} holds the lease (a {}): waiting for it",
                    holder.holder,
                    holder.role
                );
            }
            live && holder.role == Role::Run
        })
        .await;
    let leased = match acquired {
        Acquired::GaveUp(holder) => {
            let request = match hand_over(&control, args.from, args.to, &holder.holder).await {
                Ok(request) => request,
                Err(e) => return Exit::Fatal(format!("cannot hand the range over: {e}")),
            };
            return follow_here(&control, &request, &stop).await;
        }
        Acquired::Stopped => {
            return Exit::Incomplete("stopped while waiting for the lease".into());
        }
        Acquired::Held(holding, takeover) => Some((&lease, &control, holding, takeover)),
    };
    let ran = run_here(&args, &config, abandon, &stop, leased).await;
    let Some(live) = ran.worker_came_up else {
        return ran.exit;
    };
    let request = match hand_over(&control, args.from, args.to, &live[0].worker).await {
        Ok(request) => request,
        Err(e) => {
            return Exit::Incomplete(format!(
                "stopped to hand the rest of the range over, but cannot: {e}"
            ));
        }
    };
    let exit = follow_here(&control, &request, &stop).await;
    match (exit, ran.exit) {
        // What this process parked before the handover counts as much as the worker's.
        (Exit::Success, Exit::Parked) => Exit::Parked,
        (exit, _) => exit,
    }
}

/// The `run` worker holding the lease now, if one does (one read; for `--detach`, which
/// addresses its request to it), else empty: the next holder takes it.
async fn holder_of(lease: &LeaseClient) -> String {
    match lease.read().await {
        Ok(Read::Present {
            body: Some(body), ..
        }) if body.state == LeaseState::Held && body.role == Role::Run => body.holder,
        _ => String::new(),
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
    leased: Option<(&LeaseClient, &Control, Holding, Takeover)>,
) -> Ran {
    let plan = Plan::Range {
        from: args.from,
        to: args.to,
    };
    let metrics = Arc::new(Metrics::new());
    // Holding the lease: renew it, fence delivery on it, count the predecessor's sends.
    let tap: Arc<OnceLock<HistoryTap>> = Arc::default();
    let (keeper, lease_hook, control) = match leased {
        Some((lease, control, holding, takeover)) => {
            let (fence, fence_rx) = watch::channel(holding.may_send_until);
            let keeper = lease.keep(holding, sent_record(tap.clone()), fence);
            let hook = Leased::new(fence_rx, &takeover, None);
            (Some(keeper), Some(hook), Some(control))
        }
        None => (None, None, None),
    };
    let lost = keeper
        .as_ref()
        .map_or_else(CancellationToken::new, Keeper::lost);
    let cut = abandon.child_token();
    let engine = match engine(config, plan, metrics.clone(), lease_hook).await {
        Ok(engine) => engine.with_abandon(cut.clone()),
        Err(exit) => {
            if let Some(keeper) = keeper {
                keeper.release(RELEASE_WITHIN).await;
            }
            return Ran {
                exit,
                worker_came_up: None,
            };
        }
    };
    if let Some(history) = engine.history_tap() {
        let _ = tap.set(history);
    }
    tracing::info!("backfill {} to {}", args.from, args.to);
    let Some((request, mut reports)) = engine.range_progress() else {
        return Ran {
            exit: Exit::Fatal("a range's engine reports no progress".into()),
            worker_came_up: None,
        };
    };
    let came_up = OnceLock::new();
    // Handing over, once events only wait for rate room: the worker resumes them at once.
    let mut hand_over = None;
    let shutdown = async {
        tokio::select! {
            _ = stop.cancelled() => hand_over = Some(hand_over_when_rate_bound(&metrics, &cut)),
            _ = lost.cancelled() => {
                // Another process may already be resuming these objects.
                tracing::error!("lost the lease: stopping at once; run the backfill again to resume");
                cut.cancel();
            }
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
                hand_over = Some(hand_over_when_rate_bound(&metrics, &cut));
                let _ = came_up.set(live);
            }
        }
    };
    // The same progress a follower of a handed-over range shows, as the lane reports it.
    let mut display = Progress::new("{bar:40} {pos}/{len} objects, {msg}");
    let show = async {
        while reports.changed().await.is_ok() {
            let latest = reports.borrow_and_update().clone();
            if let Some(progress) = latest {
                display.follow_update(&request, &progress, unix_secs_now());
            }
        }
    };
    let (report, ()) = tokio::join!(engine.drive(shutdown), show);
    if let Some(task) = hand_over {
        task.abort();
    }
    display.finish();
    if let Some(keeper) = keeper
        && !lost.is_cancelled()
    {
        keeper.release(RELEASE_WITHIN).await;
    }
    let worker_came_up = came_up.into_inner();
    let handing_over = worker_came_up.is_some()
        && !matches!(report.outcome, Outcome::Fatal(_))
        && report
            .backfill
            .as_ref()
            .is_some_and(|p| p.state == BackfillState::Incomplete);
    if handing_over {
        // Not "incomplete: run again": the worker takes the rest.
        print!("{}", report.render_counts());
    } else {
        print!("{}", report.render());
    }
    print!("{}", report.counts.render_odd_values());
    let exit = match (&report.outcome, &report.backfill) {
        (Outcome::Fatal(_), _) | (_, None) => report.outcome.clone().into(),
        (_, Some(progress)) => final_exit(&request, progress).into(),
    };
    match (&report.backfill, worker_came_up) {
        (Some(progress), Some(live)) if handing_over => {
            // What this process parked or failed still counts.
            let mine = BackfillState::finished(progress.failed, progress.events_parked);
            Ran {
                exit: FollowExit::of(mine, String::new).into(),
                worker_came_up: Some(live),
            }
        }
        // Finished (or failed) before the stop took effect: nothing to hand over.
        _ => Ran {
            exit,
            worker_came_up: None,
        },
    }
}

/// How long a backfill's end waits for the lease's release.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

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

/// Follows a handed-over range, drawing its progress, and exits by how it ended.
async fn follow_here(
    control: &Control,
    request: &BackfillRequest,
    stop: &CancellationToken,
) -> Exit {
    let mut display = Progress::new("{bar:40} {pos}/{len} objects, {msg}");
    let followed = follow(control, request, stop, |progress, now| {
        display.follow_update(request, progress, now)
    })
    .await;
    display.finish();
    if let Followed::Ended(progress) = &followed {
        print!("{}", render_final(request, progress));
    }
    followed.exit(request).into()
}

impl From<FollowExit> for Exit {
    fn from(exit: FollowExit) -> Self {
        match exit {
            FollowExit::Done => Exit::Success,
            FollowExit::DoneWithFailures => Exit::Parked,
            FollowExit::Incomplete(reason) => Exit::Incomplete(reason),
        }
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

    /// A range's progress, as the lane running it reported it (a worker's, or this
    /// process's own).
    fn follow_update(&mut self, request: &BackfillRequest, p: &BackfillProgress, now: i64) {
        let eta = p
            .eta_secs(now)
            .map_or_else(|| "unknown".to_string(), |s| format!("{s}s"));
        if let Some(bar) = &self.bar {
            bar.set_length(p.found);
            bar.set_position(p.ended);
            bar.set_message(format!(
                "{} events sent, {} on {}, ETA {eta}",
                p.events_sent,
                p.activity(),
                worker_label(&p.worker)
            ));
        }
        if self.log_due(false) {
            tracing::info!(
                backfill_id = %request.id,
                worker = %p.worker,
                objects_ended = p.ended,
                objects_found = p.found,
                objects_failed = p.failed,
                events_sent = p.events_sent,
                events_parked = p.events_parked,
                eta_secs = p.eta_secs(now),
                waiting_for_rate = p.waiting_for_rate,
                "backfill {}: {} on {}, {}/{} objects, {} events sent, {} parked, ETA {eta}",
                request.id,
                p.activity(),
                worker_label(&p.worker),
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
