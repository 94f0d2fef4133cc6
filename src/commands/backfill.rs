//! `backfill --from D --to D`: deliver a past range of `date=` hours, skipping objects the
//! ledger has finished, so an interrupted backfill resumes where it stopped.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::config::{Config, DEFAULTS, HumanDuration};
use super::worker::{Exit, WorkerArgs, engine, shutdown_on_signals};
use crate::currents::key::DateHour;
use crate::source::parse_date_arg;
use crate::telemetry::Counts;
use crate::worker::Plan;
use tokio_util::sync::CancellationToken;

/// `backfill`'s flags; it runs with the resolved [`Config`].
/// The longest range one backfill takes: discovery lists the whole range (one ranged listing
/// per event type, a request per 1,000 objects) and holds what it found before sending, so a
/// typo like `--to 9999-12-31` must not start that.
const MAX_RANGE_HOURS: i64 = 400 * 24;

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
    let plan = Plan::Range {
        from: args.from,
        to: args.to,
    };
    // Signals are handled from here on: starting the engine can take a while (credentials).
    let abandon = CancellationToken::new();
    let shutdown = shutdown_on_signals(abandon.clone());
    let engine = match engine(&config, plan).await {
        Ok(engine) => engine.with_abandon(abandon),
        Err(exit) => return exit,
    };
    tracing::info!("backfill {} to {}", args.from, args.to);
    let mut progress = Progress::new();
    let bar = progress.bar.clone();
    let engine = engine.with_progress(Box::new(move |counts, found| {
        progress.update(counts, found)
    }));
    let report = engine.drive(shutdown).await;
    if let Some(bar) = bar {
        bar.finish();
    }
    print!("{}", report.render());
    print!("{}", report.counts.render_odd_values());
    report.outcome.into()
}

/// A progress bar on a terminal; a log line every 10 seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} objects, {msg}, ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn update(&mut self, counts: &Counts, total: u64) {
        let done = counts.objects_ended();
        let events = counts.total().read;
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!("{events} events"));
            }
            None if self.last_log.elapsed() >= Duration::from_secs(10) || done == total => {
                self.last_log = Instant::now();
                let eta = (done > 0 && total >= done).then(|| {
                    self.started
                        .elapsed()
                        .mul_f64((total - done) as f64 / done as f64)
                });
                tracing::info!(
                    "backfill: {done}/{total} objects, {events} events, ETA {}",
                    eta.map_or_else(|| "unknown".to_string(), |d| format!("{}s", d.as_secs()))
                );
            }
            None => {}
        }
    }
}
