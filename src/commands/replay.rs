//! `replay`: re-send dead letters once their cause is fixed. It needs only the state and
//! Heap: dead letters hold the events themselves.
//!
//! Each dead-letter object is replayed whole: its events go through the normal delivery, and
//! once every one has an outcome the object is deleted. Events that fail again have already
//! been parked anew, with the new reason, before the old object goes; a crash in between
//! leaves both, and replaying both is harmless (idempotency keys). An object whose events
//! could not all be resolved (delivery stopped, dead letters could not be written) is kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::MappingArgs;
use super::config::Config;
use super::worker::{Exit, HeapArgs, StateArgs, open_state, output};
use crate::deadletter::{DeadLetterFilter, DeadLetterStore};
use crate::heap::delivery::{Delivery, Submission, Tracker};
use crate::heap::map::Mapped;
use crate::telemetry::Metrics;
use crate::worker::Output;
use crate::worker::delivery_task::DeliveryTask;
use crate::worker::summary::render_delivery;

/// `replay`'s flags: only the state and Heap, since dead letters hold the events. It runs
/// with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct ReplayArgs {
    #[command(flatten)]
    #[serde(flatten)]
    state: StateArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) heap: HeapArgs,
    #[command(flatten)]
    #[serde(flatten)]
    mapping: MappingArgs,
    /// Map and count what would be re-sent; send nothing, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only dead letters of this event type, e.g. users.behaviors.CustomEvent.
    #[arg(long)]
    #[serde(skip)]
    pub event_type: Option<String>,
    /// Only dead letters from this `date=` hour (YYYY-MM-DD-HH) or day (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date_filter)]
    #[serde(skip)]
    pub date: Option<String>,
}

/// `YYYY-MM-DD-HH` or `YYYY-MM-DD`, checked, so a typo is an error and not an empty replay.
fn parse_date_filter(text: &str) -> Result<String, String> {
    let text = text.trim();
    let hour = crate::currents::key::DateHour::parse(text)
        .or_else(|| crate::currents::key::DateHour::parse(&format!("{text}-00")));
    match hour {
        Some(_) => Ok(text.to_string()),
        None => Err(format!(
            "`{text}` is not a date= hour (YYYY-MM-DD-HH) or day (YYYY-MM-DD)"
        )),
    }
}

#[derive(Default)]
struct Counts {
    replayed: u64,
    delivered: u64,
    skipped: u64,
    parked_again: u64,
    left: u64,
    unreadable_objects: u64,
}

pub async fn replay(args: ReplayArgs, config: Config) -> Exit {
    let output = match output(&config) {
        Ok(output) => output,
        Err(exit) => return exit,
    };
    let state = match open_state(&config).await {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let dead_letters = Arc::new(DeadLetterStore::new(state));
    let filter = DeadLetterFilter {
        event_type: args.event_type.clone(),
        date: args.date.clone(),
    };
    let files = match dead_letters.list(&filter).await {
        Ok(files) => files,
        Err(e) => return Exit::Fatal(format!("cannot list dead letters in the state: {e}")),
    };
    let metrics = Arc::new(Metrics::new());
    let (dry_run, delivery) = match output {
        Output::DryRun(mapper) => (Some(mapper), None),
        Output::Heap(heap) => {
            let delivery = Delivery::new(
                heap.config,
                Arc::new(heap.client),
                heap.mapper,
                dead_letters.clone(),
            )
            .with_metrics(metrics.clone());
            (None, Some(DeliveryTask::spawn(delivery, 256)))
        }
    };
    let mut counts = Counts::default();
    let mut would: BTreeMap<&str, u64> = BTreeMap::new();
    let mut fatal = false;
    for file in &files {
        let letters = match dead_letters.read(&file.key).await {
            Ok(letters) => letters,
            Err(e) => {
                tracing::error!("skipping unreadable dead-letter object: {e}");
                counts.unreadable_objects += 1;
                continue;
            }
        };
        let total = letters.len() as u64;
        counts.replayed += total;
        if let Some(mapper) = &dry_run {
            for letter in &letters {
                let outcome = match mapper.map(&letter.event) {
                    Mapped::Track { .. } => "would be sent",
                    Mapped::NoIdentity => "would be skipped (no identity)",
                    Mapped::Unsendable(_) => "would be parked again",
                };
                *would.entry(outcome).or_insert(0) += 1;
            }
            continue;
        }
        let Some((task, sender)) = &delivery else {
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
            _ = task.stopped() => {
                fatal = true;
                break;
            }
        }
        counts.delivered += tracker.delivered();
        counts.skipped += tracker.skipped();
        counts.parked_again += tracker.parked();
        if tracker.unfinished() > 0 {
            counts.left += total;
            tracing::warn!(object = %file.key, "kept: {} events could not be parked again", tracker.unfinished());
            continue;
        }
        if let Err(e) = dead_letters.remove(&file.key).await {
            return Exit::Fatal(format!("replayed {} but cannot remove it: {e}", file.key));
        }
    }
    let end = match delivery {
        Some((task, sender)) => {
            drop(sender);
            Some(task.finish(None, &CancellationToken::new()).await)
        }
        None => None,
    };
    println!("dead-letter objects: {}", files.len());
    println!("events replayed: {}", counts.replayed);
    if config.dry_run {
        for (what, n) in &would {
            println!("events {what}: {n}");
        }
    } else {
        println!("events delivered: {}", counts.delivered);
        println!("events skipped (no identity): {}", counts.skipped);
        println!("events parked again: {}", counts.parked_again);
        println!("events left in place: {}", counts.left);
    }
    if counts.unreadable_objects > 0 {
        println!(
            "unreadable dead-letter objects: {}",
            counts.unreadable_objects
        );
    }
    print!("{}", render_delivery(&metrics.counts()));
    match end.map(|e| e.result) {
        Some(Err(e)) => Exit::Fatal(e),
        _ if fatal => Exit::Fatal("delivery stopped".into()),
        _ if counts.left > 0 => Exit::Incomplete(format!(
            "{} events were left in place; replay again once the state is writable",
            counts.left
        )),
        _ if counts.parked_again > 0 || counts.unreadable_objects > 0 => Exit::Parked,
        _ if would.get("would be parked again").copied().unwrap_or(0) > 0 => Exit::Parked,
        _ => Exit::Success,
    }
}
