//! `run`: poll the source and deliver new Currents objects until stopped; `run --once`: one
//! pass over the lookback window. The protocol is the engine's (`worker::engine`).

use std::time::Duration;

use clap::Args;

use super::worker::{Exit, WorkerArgs, engine, shutdown_on_signals};
use crate::clock::parse_duration;
use crate::worker::{Lookback, Plan};

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// How often to look for new objects.
    #[arg(long, env = "CURRENTS_HEAP_POLL_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Process what is pending in the lookback window once, then exit (4 if work remains).
    #[arg(long)]
    pub once: bool,
    /// Which `date=` hours to look at: e.g. 72h (at least 1h), or `all` (lists the whole source).
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
    let plan = if args.once {
        Plan::Once {
            lookback: args.lookback,
        }
    } else {
        Plan::Live {
            lookback: args.lookback,
            poll_interval: args.poll_interval,
        }
    };
    let engine = match engine(&args.worker, plan, args.shutdown_timeout).await {
        Ok(engine) => engine,
        Err(exit) => return exit,
    };
    let _server = match args.listen {
        // Ready while polls keep succeeding: allow two missed polls and a slow listing.
        Some(addr) => match crate::server::serve(
            addr,
            engine.metrics(),
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
    let shutdown = shutdown_on_signals(&engine);
    let report = engine.drive(shutdown).await;
    print!("{}", report.render());
    report.outcome.into()
}

/// Stops the metrics server when `run` returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
