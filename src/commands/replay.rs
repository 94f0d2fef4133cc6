//! `replay`: re-send dead letters once their cause is fixed.
//!
//! Each dead-letter object is replayed whole: its events go through the normal delivery, and
//! once every one has an outcome the object is deleted. Events that fail again have already
//! been parked anew, with the new reason, before the old object goes; a crash in between
//! leaves both, and replaying both is harmless (idempotency keys).

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::worker::{Exit, Worker, WorkerArgs, print_delivery};
use crate::deadletter::DeadLetterFilter;
use crate::heap::delivery::{Submission, Tracker};
use crate::heap::map::{HeapMapper, Mapped};

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Only dead letters of this event type, e.g. users.behaviors.CustomEvent.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only dead letters from this `date=` hour (YYYY-MM-DD-HH) or day (YYYY-MM-DD).
    #[arg(long)]
    pub date: Option<String>,
}

pub async fn replay(args: ReplayArgs) -> Exit {
    let worker = match Worker::start(&args.worker).await {
        Ok(worker) => worker,
        Err(exit) => return exit,
    };
    let filter = DeadLetterFilter {
        event_type: args.event_type.clone(),
        date: args.date.clone(),
    };
    let files = match worker.dead_letters.list(&filter).await {
        Ok(files) => files,
        Err(e) => return Exit::Fatal(format!("cannot list dead letters: {e}")),
    };
    let mapper = HeapMapper::new(args.worker.mapping.config());
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fatal = None;
    for file in &files {
        let letters = match worker.dead_letters.read(&file.key).await {
            Ok(letters) => letters,
            Err(e) => {
                tracing::error!("skipping unreadable dead-letter object: {e}");
                *counts.entry("unreadable dead-letter objects").or_insert(0) += 1;
                continue;
            }
        };
        let total = letters.len() as u64;
        *counts.entry("replayed").or_insert(0) += total;
        let Some(sender) = worker.sender() else {
            for letter in &letters {
                let outcome = match mapper.map(&letter.event) {
                    Mapped::Track { .. } => "would be sent",
                    Mapped::NoIdentity => "would be skipped (no identity)",
                    Mapped::Unsendable(_) => "would be parked again",
                };
                *counts.entry(outcome).or_insert(0) += 1;
            }
            continue;
        };
        let tracker = Arc::new(Tracker::default());
        for letter in letters {
            let submission = Submission {
                event: letter.event,
                object: Arc::from(letter.object),
                tracker: tracker.clone(),
            };
            if sender.send(submission).await.is_err() {
                break;
            }
        }
        tokio::select! {
            _ = tracker.wait_resolved(total) => {}
            _ = worker.delivery_stopped.cancelled() => {
                fatal = Some(());
                break;
            }
        }
        *counts.entry("delivered").or_insert(0) += tracker.delivered();
        *counts.entry("skipped (no identity)").or_insert(0) += tracker.skipped();
        *counts.entry("parked again").or_insert(0) += tracker.parked();
        if let Err(e) = worker.dead_letters.remove(&file.key).await {
            return Exit::Fatal(format!("replayed {} but cannot remove it: {e}", file.key));
        }
    }
    let dry_run = args.worker.dry_run;
    let (stats, delivery) = worker.finish(&CancellationToken::new()).await;
    println!("dead-letter objects: {}", files.len());
    for (what, n) in &counts {
        println!("events {what}: {n}");
    }
    print_delivery(&stats);
    match (delivery, fatal) {
        (Err(e), _) => Exit::Fatal(e.to_string()),
        (Ok(()), Some(())) => Exit::Fatal("delivery stopped".into()),
        _ if counts.get("parked again").copied().unwrap_or(0) > 0 => Exit::Parked,
        _ if dry_run && counts.get("would be parked again").copied().unwrap_or(0) > 0 => {
            Exit::Parked
        }
        _ => Exit::Success,
    }
}
