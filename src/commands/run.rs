//! `run`: poll the source and deliver new Currents objects until stopped; `run --once`: one
//! pass over the lookback window. The protocol is the engine's (`worker::engine`).

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::config::{Config, DEFAULTS, HumanDuration, as_text};
use super::worker::{Exit, WorkerArgs, engine, shutdown_on_signals};
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
    let shutdown = shutdown_on_signals(abandon.clone());
    let engine = match engine(&config, plan).await {
        Ok(engine) => engine.with_abandon(abandon),
        Err(exit) => return exit,
    };
    let _server = match config.listen {
        // Ready while polls keep succeeding: allow two missed polls and a slow listing.
        Some(addr) => match crate::server::serve(
            addr,
            engine.metrics(),
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
    let report = engine.drive(shutdown).await;
    print!("{}", report.render());
    print!("{}", report.counts.render_odd_values());
    report.outcome.into()
}

/// Stops the metrics server when `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
