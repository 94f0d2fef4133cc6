//! `run`: poll the source and deliver new Currents objects until stopped.
//!
//! # Shutdown
//! 1. SIGTERM or SIGINT cancels `stop`: no more polls, and queued objects that have not
//!    started are dropped (the ledger does not have them, so the next start picks them up).
//! 2. Objects in flight keep going, and delivery keeps sending their events.
//! 3. `--shutdown-timeout` later, `abandon` is cancelled: objects still in flight stop where
//!    they are and delivery is aborted. None of them is recorded as done.
//! 4. The process exits 0 (or 3 if something was parked).

use std::time::Duration;

use clap::Args;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::pipeline::ObjectResult;

use super::worker::{
    Exit, Lookback, Scheduler, Summary, Worker, WorkerArgs, conclude, parse_duration,
    print_delivery, queue_unfinished, shutdown_signal,
};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// How often to look for new objects.
    #[arg(long, env = "CURRENTS_HEAP_POLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Process what is pending in the lookback window once, then exit.
    #[arg(long)]
    pub once: bool,
    /// Which `date=` hours to look at: e.g. 72h, or `all` (lists the whole source).
    #[arg(long, env = "CURRENTS_HEAP_LOOKBACK", default_value = "72h")]
    pub lookback: Lookback,
    /// Serve /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9090.
    #[arg(long, env = "CURRENTS_HEAP_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// After a stop signal, how long objects in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

pub async fn run(args: RunArgs) -> Exit {
    let worker = match Worker::start(&args.worker).await {
        Ok(worker) => worker,
        Err(exit) => return exit,
    };
    let _server = match args.listen {
        // Ready while polls keep succeeding: allow two missed polls and a slow listing.
        Some(addr) => match crate::server::serve(
            addr,
            worker.metrics.clone(),
            args.poll_interval * 3 + Duration::from_secs(60),
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
    let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
    spawn_signal_handler(stop.clone(), abandon.clone(), args.shutdown_timeout);
    let mut scheduler = Scheduler::new(
        worker.pipeline.clone(),
        args.worker.object_concurrency as usize,
        abandon.clone(),
    );
    let mut summary = Summary::default();
    let window = args.lookback;
    let mut next_poll = Instant::now();
    let mut polled = false;
    loop {
        let poll_due = !stop.is_cancelled() && Instant::now() >= next_poll;
        if poll_due && !(args.once && polled) {
            match queue_unfinished(
                &*worker.source,
                &worker.ledger,
                &window.window(),
                &mut scheduler,
            )
            .await
            {
                Ok(unfinished) => {
                    let lag = unfinished.oldest.map(|hour| {
                        let now = crate::deadletter::unix_millis_now() / 1000;
                        Duration::from_secs((now - hour.hours_since_epoch() * 3600).max(0) as u64)
                    });
                    let now_unix = crate::deadletter::unix_millis_now() / 1000;
                    worker
                        .metrics
                        .poll_succeeded(unfinished.count as u64, lag, now_unix);
                    tracing::info!(
                        unfinished = unfinished.count,
                        queued = scheduler.queued(),
                        "polled {}",
                        worker.source.describe()
                    );
                }
                Err(e) if args.once => return Exit::Fatal(format!("cannot list the source: {e}")),
                Err(e) => tracing::error!("poll failed, trying again next interval: {e}"),
            }
            polled = true;
            next_poll = Instant::now() + args.poll_interval;
        }
        if (args.once || stop.is_cancelled()) && scheduler.is_idle() {
            break;
        }
        tokio::select! {
            Some(result) = scheduler.next() => match result {
                Ok(result) => {
                    match &result {
                        ObjectResult::Done(_) => worker.metrics.object_done(),
                        ObjectResult::Failed(_) => worker.metrics.object_failed(),
                        _ => {}
                    }
                    summary.add(&result);
                }
                Err(e) => {
                    abandon.cancel();
                    return Exit::Fatal(e.to_string());
                }
            },
            _ = tokio::time::sleep_until(next_poll), if !args.once && !stop.is_cancelled() => {}
            _ = stop.cancelled(), if !stop.is_cancelled() => {
                tracing::info!("stopping: finishing objects in flight (up to {:?})", args.shutdown_timeout);
                scheduler.clear_queue();
            }
            _ = worker.delivery_stopped.cancelled() => {
                abandon.cancel();
                break;
            }
        }
    }
    drop(scheduler);
    let (stats, delivery) = worker.finish(&abandon).await;
    print_delivery(&stats);
    summary.print(args.worker.dry_run);
    conclude(&summary, delivery)
}

/// Stops the metrics server when `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// First signal: stop fetching; after the timeout: abandon what is in flight.
pub fn spawn_signal_handler(
    stop: CancellationToken,
    abandon: CancellationToken,
    timeout: Duration,
) {
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
        tokio::select! {
            _ = tokio::time::sleep(timeout) => tracing::warn!("shutdown timeout reached: abandoning objects in flight"),
            _ = shutdown_signal() => tracing::warn!("second signal: abandoning objects in flight"),
        }
        abandon.cancel();
    });
}
