//! `run`: poll the source and deliver new Currents objects until stopped; `run --once`: one
//! pass over the lookback window. The protocol is the engine's (`worker::engine`).

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::check::{Preflight, StateUse, preflight_until};
use super::config::{Config, DEFAULTS, HumanDuration, as_text};
use super::worker::{
    Exit, Leased, WorkerArgs, engine, hand_over_when_rate_bound, lease, sent_record,
    stop_on_signals,
};
use crate::clock::unix_secs_now;
use crate::handover::lease::{Acquired, Holding, LeaseClient, Role, Takeover};
use crate::handover::{Control, HEARTBEAT_INTERVAL, Heartbeat};
use crate::heap::delivery::HistoryTap;
use crate::heap::pacer::SentHistory;
use crate::notifications::wiring;
use crate::store::Location;
use crate::telemetry::{LeaseRole, Metrics};
use crate::worker::{Lookback, Plan};
use tokio_util::sync::CancellationToken;

/// `run`'s flags; it runs with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct RunArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) worker: WorkerArgs,
    /// How often to look for new objects, 1s to 24h.
    #[arg(long, env = "CURRENTS_HEAP_POLL_INTERVAL", default_value_t = DEFAULTS.poll_interval.clone())]
    poll_interval: HumanDuration,
    /// Process what is pending in the lookback window once, then exit (4 if work remains).
    #[arg(long)]
    #[serde(skip)]
    pub once: bool,
    /// Which `date=` hours to look at: 1h to 400 days (e.g. 72h), or `all` (lists the whole
    /// source).
    #[arg(long, env = "CURRENTS_HEAP_LOOKBACK", default_value_t = DEFAULTS.lookback)]
    #[serde(with = "as_text")]
    lookback: Lookback,
    /// Learn of new objects from the bucket's S3 event notifications in this SQS queue,
    /// instead of listing every poll interval (needs an s3:// source; not with --once).
    #[arg(long, env = "CURRENTS_HEAP_SQS_QUEUE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    sqs_queue_url: Option<String>,
    /// With --sqs-queue-url: how often a listing pass finds objects whose notification was
    /// lost, 1s to 168h (7 days).
    #[arg(long, env = "CURRENTS_HEAP_RECONCILE_INTERVAL", default_value_t = DEFAULTS.reconcile_interval.clone())]
    reconcile_interval: HumanDuration,
    /// With --sqs-queue-url: how long a received message stays hidden, renewed every third
    /// of it while its object is in flight, 5s to 12h.
    #[arg(long, env = "CURRENTS_HEAP_SQS_VISIBILITY_TIMEOUT", default_value_t = DEFAULTS.sqs_visibility_timeout.clone())]
    sqs_visibility_timeout: HumanDuration,
    /// Serve /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9090.
    #[arg(long, env = "CURRENTS_HEAP_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// After a stop signal, how long objects in flight may take to finish, 1s to 1h.
    #[arg(long, default_value_t = DEFAULTS.shutdown_timeout.clone())]
    shutdown_timeout: HumanDuration,
}

pub async fn run(args: RunArgs, config: Config) -> Exit {
    let mut poll_interval = config.poll_interval.get();
    if config.sqs_queue_url.is_some() {
        if args.once {
            return Exit::Usage(
                "--sqs-queue-url: not with --once, which lists the lookback window once".into(),
            );
        }
        if config.dry_run {
            return Exit::Usage(
                "--sqs-queue-url: not with --dry-run, which records nothing and so could delete no message".into(),
            );
        }
        // Polls become reconciliations beside the notifications.
        poll_interval = config.reconcile_interval.get();
    }
    let plan = if args.once {
        Plan::Once {
            lookback: config.lookback,
        }
    } else {
        Plan::Live {
            lookback: config.lookback,
            poll_interval,
        }
    };
    // Signals are handled from here on: starting the engine can take a while (credentials).
    let abandon = CancellationToken::new();
    let stop = stop_on_signals(abandon.clone());
    let metrics = Arc::new(Metrics::new());
    let _server = match config.listen {
        // Ready while polls keep succeeding (allow two missed polls and a slow listing), or,
        // for a standby, while it can read the lease.
        Some(addr) => match crate::server::serve(
            addr,
            metrics.clone(),
            poll_interval * 3 + Duration::from_secs(60),
        )
        .await
        {
            Ok((bound, task)) => {
                tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");
                Some(AbortOnDrop(task))
            }
            Err(e) => return Exit::Usage(format!("--listen {addr}: {e}")),
        },
        None => None,
    };
    // Wiring found before any send: exit 2; an outage ends `--once` (4), and is waited out
    // by a long-lived run.
    let start = Preflight {
        source: true,
        state: StateUse::Write { lease: true },
        bounded: args.once,
    };
    if let Err(exit) = preflight_until(&config, start, &metrics, &stop).await {
        return exit;
    }
    // Before the lease and any send: a queue the bucket does not feed exits 2 here.
    if let Err(exit) = check_wiring(&config, &metrics).await {
        return exit;
    }
    let lease = match lease(&config, Role::Run, &metrics).await {
        Ok(lease) => lease,
        Err(exit) => return exit,
    };
    let Some(lease) = lease else {
        // No lease (`--single-process`, a dry run): this process is the only sender.
        let engine = match engine(&config, plan, metrics, None).await {
            Ok(engine) => engine.with_abandon(abandon),
            Err(exit) => return exit,
        };
        return drive(engine, stop.cancelled()).await.into();
    };
    let once = args.once;
    // One id for this process, as standby and as holder: the lease's, in its heartbeat.
    let mut heartbeat = Heartbeat::new_worker(unix_secs_now());
    heartbeat.worker = lease.me().to_string();
    let mut own = None;
    loop {
        metrics.lease_role(LeaseRole::Standby);
        let standby = Standby::start(Control::new(lease.store()), &heartbeat);
        // `run --once` does not wait beside a live holder: that one already delivers.
        let mut said = false;
        let acquired = lease
            .acquire(&stop, |holder, live| {
                if !said {
                    said = true;
                    tracing::info!(
                        "standby: {} holds the lease and sends; this process takes over when it stops renewing",
                        holder.holder
                    );
                }
                once && live
            })
            .await;
        standby.end().await;
        let acquired = match acquired {
            Acquired::Held(holding, takeover) => (holding, takeover),
            Acquired::Stopped => return Exit::Success,
            Acquired::GaveUp(holder) => {
                return Exit::Incomplete(format!(
                    "{} (a `run`, long-lived or `--once`) holds the lease and delivers this source: this `run --once` would send beside it, so it sent nothing; run it again once that one has stopped",
                    holder.holder
                ));
            }
        };
        tracing::info!(
            worker = lease.me(),
            takeover = acquired.1.label(),
            "holds the lease: this process sends to Heap"
        );
        metrics.lease_role(LeaseRole::Held);
        let held = hold(
            &config,
            plan,
            (&lease, &heartbeat),
            acquired,
            &mut own,
            &metrics,
            (&abandon, &stop),
        )
        .await;
        match held {
            Held::Ended(exit) => return exit,
            Held::Lost => {
                metrics.lease_role(LeaseRole::Fenced);
                tracing::warn!("lost the lease: back to standby");
            }
        }
    }
}

/// How a spell as the lease holder ended.
enum Held {
    /// The run ended (a stop, `--once` done, or fatal): exit so.
    Ended(Exit),
    /// The lease was lost: the engine was abandoned; watch again.
    Lost,
}

/// Runs the engine while this process holds the lease: renews it, fences delivery on it,
/// and at the end releases it with what was sent (or, if it was lost, abandons the work in
/// flight at once: another process may already be resuming it).
async fn hold(
    config: &Config,
    plan: Plan,
    (lease, heartbeat): (&LeaseClient, &Heartbeat),
    (holding, takeover): (Holding, Takeover),
    own: &mut Option<SentHistory>,
    metrics: &Arc<Metrics>,
    (abandon, stop): (&CancellationToken, &CancellationToken),
) -> Held {
    let (fence, fence_rx) = watch::channel(holding.may_send_until);
    let tap: Arc<OnceLock<HistoryTap>> = Arc::default();
    let keeper = lease.keep(holding, sent_record(tap.clone()), fence);
    let lost = keeper.lost();
    let leased = Leased::new(fence_rx, &takeover, own.take());
    // Abandoned on a second signal, or at once when the lease is lost.
    let cut = abandon.child_token();
    let engine = match engine(config, plan, metrics.clone(), Some(leased)).await {
        Ok(engine) => engine
            .with_abandon(cut.clone())
            .with_worker(heartbeat.clone()),
        Err(exit) => {
            keeper.release(RELEASE_WITHIN).await;
            return Held::Ended(exit);
        }
    };
    if let Some(history) = engine.history_tap() {
        let _ = tap.set(history);
    }
    let on_lost = {
        let (lost, cut) = (lost.clone(), cut.clone());
        tokio::spawn(async move {
            lost.cancelled().await;
            cut.cancel();
        })
    };
    let mut hand_over = None;
    let shutdown = async {
        tokio::select! {
            _ = stop.cancelled() => hand_over = Some(hand_over_when_rate_bound(metrics, &cut)),
            _ = lost.cancelled() => {}
        }
    };
    let exit = drive(engine, shutdown).await;
    on_lost.abort();
    if let Some(task) = hand_over {
        task.abort();
    }
    if lost.is_cancelled() && !stop.is_cancelled() {
        // Heap's window still holds what this process sent: counted if it holds again.
        *own = tap
            .get()
            .map(|tap| tap.snapshot(tokio::time::Instant::now()));
        return Held::Lost;
    }
    keeper.release(RELEASE_WITHIN).await;
    Held::Ended(exit.into())
}

/// How long a stop waits for the lease's release.
const RELEASE_WITHIN: Duration = Duration::from_secs(5);

/// Drives the engine to its end and prints its report.
async fn drive(
    engine: crate::worker::Engine,
    shutdown: impl std::future::Future<Output = ()>,
) -> crate::worker::Outcome {
    let report = engine.drive(shutdown).await;
    print!("{}", report.render());
    print!("{}", report.counts.render_odd_values());
    report.outcome
}

/// A standby's heartbeat, so that a `backfill` holding the lease sees that a `run` worker
/// waits, and hands its range over.
struct Standby {
    task: (Control, String, tokio::task::JoinHandle<()>),
}

impl Standby {
    fn start(control: Control, heartbeat: &Heartbeat) -> Standby {
        let mut heartbeat = heartbeat.clone();
        let me = heartbeat.worker.clone();
        let beating = control.clone();
        let task = tokio::spawn(async move {
            let mut beats = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                beats.tick().await;
                heartbeat.beat_at = unix_secs_now();
                if let Err(e) = beating.beat(&heartbeat).await {
                    tracing::debug!("cannot write the standby's heartbeat: {e}");
                }
            }
        });
        Standby {
            task: (control, me, task),
        }
    }

    /// Stops beating and deletes the heartbeat (the holder's engine keeps its own).
    async fn end(self) {
        let (control, me, task) = self.task;
        task.abort();
        let _ = control.retire(&me).await;
    }
}

/// Stops the metrics server when `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// With --sqs-queue-url: the bucket's notifications (or an EventBridge rule) must bring the
/// source's new objects to the queue (`notifications::wiring`), or `run` exits 2 before any
/// event is sent. An outage is waited out as a failing receive is: warned of, and `/readyz`
/// reports the queue until it answers.
async fn check_wiring(config: &Config, metrics: &Arc<Metrics>) -> Result<(), Exit> {
    let (Some(url), Location::S3 { bucket, prefix }) = (&config.sqs_queue_url, &config.source)
    else {
        return Ok(());
    };
    match wiring::check(url, bucket, prefix, config.s3_path_style, metrics.clone()).await {
        Ok(ok) => {
            tracing::info!("--sqs-queue-url: {}", ok.found);
            for warning in ok.warnings {
                tracing::warn!("--sqs-queue-url: {warning}");
            }
            Ok(())
        }
        Err(e) if e.is_outage() => {
            tracing::warn!("--sqs-queue-url: {e}; receiving anyway");
            Ok(())
        }
        Err(e) => Err(Exit::Usage(format!("--sqs-queue-url: {e}"))),
    }
}
