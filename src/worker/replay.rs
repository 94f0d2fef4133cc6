//! Replaying dead letters: re-send parked events once their cause is fixed. It needs only the
//! state and Heap: dead letters hold the events themselves.
//!
//! Each dead-letter object is replayed whole: its events go through the normal delivery, and
//! once every one has an outcome the object is deleted. Events that fail again have already
//! been parked anew, with the new reason, before the old object goes; a crash in between
//! leaves both, and replaying both is harmless (idempotency keys). An object whose events
//! could not all be resolved (delivery stopped, dead letters could not be written) is kept.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::delivery_task::DeliveryTask;
use super::engine::Output;
use super::settings::Settings;
use super::summary::{Outcome, render_delivery};
use crate::deadletter::{DeadLetterFilter, DeadLetterStore, Output as LetterOutput};
use crate::heap::delivery::Disposition;
use crate::heap::delivery::{Delivery, Parts, Submission, Tracker};
use crate::heap::properties::map::Mapped as PropertyMapped;
use crate::store::ObjectStore;
use crate::telemetry::Metrics;

/// What a replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub objects: usize,
    pub replayed: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub parked_again: u64,
    /// Events of objects kept in place because they could not all be resolved.
    pub left: u64,
    /// Dead-letter objects not replayed because the replay was stopped.
    pub left_objects: usize,
    pub unreadable_objects: u64,
    /// Lines of dead-letter objects that are not dead letters (kept in place).
    pub unreadable_lines: u64,
    /// Dry run: what would happen, by outcome.
    pub would: BTreeMap<&'static str, u64>,
    pub dry_run: bool,
    /// The delivery line of the report.
    pub delivery: String,
    pub outcome: Option<Outcome>,
}

impl ReplayReport {
    pub fn outcome(&self) -> Outcome {
        self.outcome.clone().unwrap_or(Outcome::Finished)
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "dead-letter objects: {}\nevents replayed: {}\n",
            self.objects, self.replayed
        );
        if self.dry_run {
            for (what, n) in &self.would {
                out += &format!("events {what}: {n}\n");
            }
        } else {
            out += &format!(
                "events delivered: {}\nevents skipped (no identity; for user-property updates also: superseded by a newer one in this replay): {}\nevents parked again: {}\nevents left in place: {}\n",
                self.delivered, self.skipped, self.parked_again, self.left
            );
        }
        if self.unreadable_lines > 0 {
            out += &format!(
                "unreadable dead-letter lines (kept in place): {}\n",
                self.unreadable_lines
            );
        }
        if self.unreadable_objects > 0 {
            out += &format!(
                "unreadable dead-letter objects: {}\n",
                self.unreadable_objects
            );
        }
        out + &self.delivery
    }
}

/// Replays the dead letters in `state` that match `filter`, until done or `shutdown`
/// resolves. Then the object in hand is finished, for up to `settings.shutdown_timeout` or
/// until `abandon` fires: if all its events have an outcome in time, it is removed as
/// usual; if not, it is kept (its events may be sent again, under the same idempotency
/// keys). The objects after it are not started, and the outcome is incomplete.
pub async fn replay(
    state: Arc<dyn ObjectStore>,
    output: Output,
    filter: &DeadLetterFilter,
    settings: &Settings,
    shutdown: impl Future<Output = ()>,
    abandon: &CancellationToken,
) -> ReplayReport {
    let mut shutdown = std::pin::pin!(shutdown);
    let dead_letters = Arc::new(DeadLetterStore::new(state));
    let mut report = ReplayReport {
        dry_run: matches!(output, Output::DryRun(_)),
        ..ReplayReport::default()
    };
    let files = match dead_letters.list(filter).await {
        Ok(files) => files,
        Err(e) => {
            report.outcome = Some(Outcome::Fatal(format!(
                "cannot list dead letters in the state: {e}"
            )));
            return report;
        }
    };
    report.objects = files.len();
    let metrics = Arc::new(Metrics::new());
    let (dry_run, delivery) = match output {
        Output::DryRun(disposer) => (Some(disposer), None),
        Output::Heap(heap) => {
            let mut config = heap.config;
            // A bounded command: a state outage must end it (exit 4), not hang it.
            config.park_retry_max = Some(settings.bounded_state_retry);
            // One dead-letter object is sent and answered before the next is read: nothing
            // could join a lingering batch, so a linger would only delay each object.
            config.batch_linger = std::time::Duration::ZERO;
            let delivery = Delivery::new(
                config,
                Arc::new(heap.client),
                heap.mapper,
                dead_letters.clone(),
            )
            .with_metrics(metrics.clone());
            (None, Some(DeliveryTask::spawn(delivery, 256)))
        }
    };
    let mut stopped = false;
    let mut interrupted: Option<Instant> = None;
    for (done, file) in files.iter().enumerate() {
        if interrupted.is_some() {
            report.left_objects = files.len() - done;
            break;
        }
        let (letters, unreadable) = match dead_letters.read_lenient(&file.key).await {
            Ok(read) => (read.letters, read.unreadable),
            Err(e) => {
                tracing::error!("skipping unreadable dead-letter object: {e}");
                report.unreadable_objects += 1;
                continue;
            }
        };
        for bad in &unreadable {
            tracing::error!(object = %file.key, line = bad.line, "a line is not a dead letter; it is kept in place: {}", bad.reason);
        }
        report.unreadable_lines += unreadable.len() as u64;
        let total = letters.len() as u64;
        report.replayed += total;
        if let Some(disposer) = &dry_run {
            for letter in &letters {
                let outcome = match letter.output {
                    LetterOutput::Event => match disposer.dispose(&letter.event) {
                        Disposition::Send { .. } => "would be sent",
                        Disposition::Skip => "would be skipped (no identity)",
                        Disposition::Park(_) => "would be parked again",
                    },
                    // A letter of a user-property update re-sends only the update.
                    // As delivery decides: an update the allowlist no longer covers (`Nothing`)
                    // is parked again, not skipped.
                    LetterOutput::UserProperties => match disposer.update(&letter.event) {
                        Some(PropertyMapped::Update(_)) => "would be sent",
                        Some(PropertyMapped::NoIdentity) => "would be skipped (no identity)",
                        Some(PropertyMapped::Nothing | PropertyMapped::Unsendable(_)) | None => {
                            "would be parked again"
                        }
                    },
                };
                *report.would.entry(outcome).or_insert(0) += 1;
            }
            continue;
        }
        let Some((task, sender)) = &delivery else {
            continue;
        };
        let tracker = Arc::new(Tracker::default());
        for (record, letter) in (0u64..).zip(letters) {
            let output = letter.output;
            let submission = Submission {
                event: letter.event,
                object: Arc::from(letter.object),
                tracker: tracker.clone(),
                // Its line in the dead-letter file: a replay keeps no checkpoint.
                record,
                parts: Parts::of_letter(output),
            };
            if sender.send(submission).await.is_err() {
                break;
            }
        }
        let resolved = tokio::select! {
            _ = tracker.wait_resolved(total) => true,
            _ = task.stopped() => {
                stopped = true;
                break;
            }
            _ = &mut shutdown => {
                // Cutting the object short would leave its dead letters to be sent again
                // and parked twice: finish it within the timeout instead.
                let deadline = Instant::now() + settings.shutdown_timeout;
                interrupted = Some(deadline);
                tokio::select! {
                    _ = tracker.wait_resolved(total) => true,
                    _ = tokio::time::sleep_until(deadline) => false,
                    _ = abandon.cancelled() => false,
                    _ = task.stopped() => {
                        stopped = true;
                        false
                    }
                }
            }
        };
        if !resolved {
            report.left_objects = files.len() - done;
            report.left += total;
            break;
        }
        report.delivered += tracker.delivered();
        report.skipped += tracker.skipped();
        report.parked_again += tracker.parked();
        if tracker.unfinished() > 0 {
            report.left += total;
            tracing::warn!(object = %file.key, "kept: {} events could not be parked again", tracker.unfinished());
            continue;
        }
        // Lines that are not dead letters stay where they were, alone, for a person to read.
        let cleared = if unreadable.is_empty() {
            dead_letters.remove(&file.key).await
        } else {
            dead_letters.keep_only(&file.key, &unreadable).await
        };
        if let Err(e) = cleared {
            report.outcome = Some(Outcome::Fatal(format!(
                "replayed {} but cannot remove it from the state: {e}",
                file.key
            )));
            break;
        }
    }
    let end = match delivery {
        Some((task, sender)) => {
            drop(sender);
            Some(task.finish(interrupted, abandon).await)
        }
        None => None,
    };
    report.delivery = render_delivery(&metrics.counts());
    if report.outcome.is_none() {
        report.outcome = Some(match end.map(|e| e.result) {
            Some(Err(e)) => Outcome::Fatal(e),
            _ if stopped => Outcome::Fatal("delivery stopped".into()),
            _ if interrupted.is_some() && report.left_objects > 0 => Outcome::Incomplete {
                reason: format!(
                    "stopped by a signal with {} dead-letter objects not replayed (they are kept)",
                    report.left_objects
                ),
            },
            _ if report.left > 0 => Outcome::Incomplete {
                reason: format!(
                    "{} events were left in place; replay again once the state is writable",
                    report.left
                ),
            },
            _ if report.parked_again > 0
                || report.unreadable_objects > 0
                || report.unreadable_lines > 0 =>
            {
                Outcome::FinishedWithFailures
            }
            _ if report
                .would
                .get("would be parked again")
                .copied()
                .unwrap_or(0)
                > 0 =>
            {
                Outcome::FinishedWithFailures
            }
            _ => Outcome::Finished,
        });
    }
    report
}
