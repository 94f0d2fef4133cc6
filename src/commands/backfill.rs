//! `backfill --from D --to D`: deliver a past range of `date=` hours, skipping objects the
//! ledger has finished, so an interrupted backfill resumes where it stopped.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::run::spawn_signal_handler;
use super::worker::{
    Exit, Scheduler, Summary, Worker, WorkerArgs, conclude, print_delivery, queue_unfinished,
};
use crate::currents::key::DateHour;
use crate::source::{Window, parse_date_arg};

#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// First `date=` hour, inclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = parse_date_arg)]
    pub from: DateHour,
    /// End of the range, exclusive: YYYY-MM-DD or YYYY-MM-DDTHH.
    #[arg(long, value_parser = parse_date_arg)]
    pub to: DateHour,
}

pub async fn backfill(args: BackfillArgs) -> Exit {
    if args.from >= args.to {
        return Exit::Usage(format!(
            "--from {} must come before --to {} (which is exclusive)",
            args.from, args.to
        ));
    }
    let worker = match Worker::start(&args.worker).await {
        Ok(worker) => worker,
        Err(exit) => return exit,
    };
    let (stop, abandon) = (CancellationToken::new(), CancellationToken::new());
    spawn_signal_handler(stop.clone(), abandon.clone(), Duration::from_secs(30));
    let mut scheduler = Scheduler::new(
        worker.pipeline.clone(),
        args.worker.object_concurrency as usize,
        abandon.clone(),
    );
    let window = Window::Hours {
        from: args.from,
        to: args.to,
    };
    let total =
        match queue_unfinished(&*worker.source, &worker.ledger, &window, &mut scheduler).await {
            Ok(unfinished) => unfinished.count as u64,
            Err(e) => return Exit::Fatal(format!("cannot list the source: {e}")),
        };
    tracing::info!(
        "backfill {} to {}: {total} objects to process",
        args.from,
        args.to
    );
    let mut progress = Progress::new(total);
    let mut summary = Summary::default();
    loop {
        tokio::select! {
            next = scheduler.next() => match next {
                Some(Ok(result)) => {
                    summary.add(&result);
                    progress.update(&summary);
                }
                Some(Err(e)) => {
                    abandon.cancel();
                    return Exit::Fatal(e.to_string());
                }
                None => break,
            },
            _ = stop.cancelled(), if !stop.is_cancelled() => scheduler.clear_queue(),
            _ = worker.delivery_stopped.cancelled() => {
                abandon.cancel();
                break;
            }
        }
    }
    progress.finish();
    drop(scheduler);
    let (stats, delivery) = worker.finish(&abandon).await;
    print_delivery(&stats);
    summary.print(args.worker.dry_run);
    conclude(&summary, delivery)
}

/// A progress bar on a terminal; a log line every 10 seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} objects, {msg}, ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Progress {
            bar,
            total,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    fn update(&mut self, summary: &Summary) {
        let done = summary.objects_done
            + summary.objects_failed
            + summary.objects_retry
            + summary.objects_abandoned;
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(format!("{} events", summary.events));
            }
            None if self.last_log.elapsed() >= Duration::from_secs(10) || done == self.total => {
                self.last_log = Instant::now();
                let eta = (done > 0).then(|| {
                    self.started
                        .elapsed()
                        .mul_f64((self.total - done) as f64 / done as f64)
                });
                tracing::info!(
                    "backfill: {done}/{} objects, {} events, ETA {}",
                    self.total,
                    summary.events,
                    eta.map_or_else(|| "unknown".to_string(), |d| format!("{}s", d.as_secs()))
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
