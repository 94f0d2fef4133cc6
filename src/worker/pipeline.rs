//! The pipeline for one Currents object: source → decode → map → delivery, then the ledger.
//!
//! Decoding runs on a blocking thread and streams from the store, one Avro block at a time;
//! events go to the shared [`Delivery`](crate::heap::delivery::Delivery) through a bounded
//! channel, so a slow Heap slows reading instead of filling memory. The object is recorded
//! in the ledger only when every event it held has an outcome (see [`crate::ledger`]).
//!
//! A failed ledger write does not lose the object's progress: the write is tried again while
//! the object holds its slot, by the pipeline's one [`SharedRetry`] (backoff, budget, causes
//! and logging are described in [`crate::store::retry`]): for as long as the state store is
//! down, or up to the budget in bounded runs. Given up, the object is left unrecorded
//! ([`ObjectResult::Unrecorded`]) and the next run reads it again. The outage is timed from
//! its first failure, across objects, so once the budget is spent the objects after it give
//! up at their first failed write instead of each waiting it out again.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::currents::container::ContainerError;
use crate::currents::decode::{DecodeError, EventReader};
use crate::heap::delivery::{Disposer, Disposition, Submission, Tracker};
use crate::ledger::{Entry, Ledger, Outcome};
use crate::store::retry::{Cause, Next, SharedRetry};
use crate::store::{ObjectMeta, ObjectStore};
use crate::telemetry::Metrics;
use crate::telemetry::events::{
    EventsParked, EventsRead, EventsSent, EventsSkipped, OddPropertyValue, StateWriteFailed,
    StateWriteSucceeded,
};

/// Where decoded events go.
#[derive(Clone)]
pub enum Sink {
    Deliver(mpsc::Sender<Submission>),
    /// Map and count only: nothing is sent, parked or recorded.
    DryRun(Arc<Disposer>),
}

/// How processing one object ended.
#[derive(Debug)]
pub enum ObjectResult {
    /// Every event has an outcome; recorded done (not recorded in a dry run).
    Done(Entry),
    /// The object is not readable Currents data; recorded failed (not in a dry run).
    Failed(Entry),
    /// Reading the source or writing the state failed for a reason that may pass (a network
    /// error, an outage): not recorded, so the next poll tries again.
    Retry { key: String, reason: String },
    /// The object no longer exists (deleted after it was listed or notified): not recorded.
    /// A listing will not find it again; a notification for it is spent.
    Gone { key: String, reason: String },
    /// Every event has an outcome, but the state could not record it (the ledger or dead
    /// letters) within a bounded run's budget: not recorded, so the next run reads it again.
    Unrecorded { key: String, reason: String },
    /// Shutdown or a stopped delivery cut it short: not recorded.
    Abandoned { key: String },
}

impl ObjectResult {
    pub fn key(&self) -> &str {
        match self {
            ObjectResult::Done(e) | ObjectResult::Failed(e) => &e.key,
            ObjectResult::Retry { key, .. }
            | ObjectResult::Gone { key, .. }
            | ObjectResult::Unrecorded { key, .. }
            | ObjectResult::Abandoned { key } => key,
        }
    }
}

pub struct Pipeline {
    pub source: Arc<dyn ObjectStore>,
    pub ledger: Arc<Ledger>,
    pub sink: Sink,
    pub metrics: Arc<Metrics>,
    /// The retry of failing ledger writes, shared by the objects in flight. Its budget is
    /// how long they are retried before an object is left for the next run; `None`: until
    /// the object is abandoned (a long-lived `run`).
    pub ledger_retry: SharedRetry,
}

/// Decoding warnings logged per object; the rest are counted in one line.
const WARNINGS_SHOWN: u64 = 3;

/// What the decoding thread reports.
struct Decoded {
    events: u64,
    /// Dry run: events that would be sent / skipped / parked.
    counts: (u64, u64, u64),
    /// Dry run: why events would be parked, with counts.
    would_park: std::collections::BTreeMap<String, u64>,
    event_type: Option<Arc<str>>,
    /// Events that came with a decoding warning (e.g. properties that are not valid JSON).
    warnings: u64,
    error: Option<DecodeError>,
    abandoned: bool,
}

impl Pipeline {
    /// Processes one object. `abandon` cuts it short (shutdown deadline, stopped delivery):
    /// at once, whatever the object is waiting for (see the module docs).
    pub async fn process(&self, object: &ObjectMeta, abandon: &CancellationToken) -> ObjectResult {
        let key = || object.key.clone();
        // Withdrawn with the object: when it is abandoned, or its read fails part way.
        let tracker = Arc::new(Tracker::under(abandon));
        let decoded = match self.read(object, &tracker, abandon).await {
            Ok(decoded) => decoded,
            Err(ended) => {
                tracker.withdraw();
                return ended;
            }
        };
        if decoded.warnings > WARNINGS_SHOWN {
            tracing::warn!(
                object = %object.key,
                "{} more warnings like the ones above for this object (each at debug level)",
                decoded.warnings - WARNINGS_SHOWN
            );
        }
        if decoded.abandoned {
            tracker.withdraw();
            return ObjectResult::Abandoned { key: key() };
        }
        if let Some(e) = &decoded.error
            && matches!(e.source, ContainerError::Io(_))
        {
            // The object is read again from its start later: the events handed over are
            // withdrawn (those not yet sent are dropped, never parked), and the object ends
            // only once every one has an outcome, so they are never pending twice.
            tracker.withdraw();
            tokio::select! {
                _ = tracker.wait_resolved(decoded.events) => {}
                _ = abandon.cancelled() => return ObjectResult::Abandoned { key: key() },
            }
            return ObjectResult::Retry {
                key: key(),
                reason: format!("cannot read the source object: {e}"),
            };
        }

        let mut entry = Entry::new(
            object,
            if decoded.error.is_some() {
                Outcome::Failed
            } else {
                Outcome::Done
            },
        );
        entry.events = decoded.events;
        entry.reason = decoded.error.as_ref().map(|e| e.source.to_string());
        match &self.sink {
            Sink::DryRun(_) => {
                (entry.delivered, entry.skipped, entry.parked) = decoded.counts;
                self.count_dry_run(&decoded);
                return finished(entry);
            }
            Sink::Deliver(_) => {
                tokio::select! {
                    _ = tracker.wait_resolved(decoded.events) => {}
                    _ = abandon.cancelled() => {
                        tracker.withdraw();
                        return ObjectResult::Abandoned { key: key() };
                    }
                }
                if tracker.unfinished() + tracker.withdrawn() > 0 {
                    return ObjectResult::Unrecorded {
                        key: key(),
                        reason: format!(
                            "{} of its events could not be written as dead letters to the state",
                            tracker.unfinished() + tracker.withdrawn()
                        ),
                    };
                }
                (entry.delivered, entry.skipped, entry.parked) =
                    (tracker.delivered(), tracker.skipped(), tracker.parked());
            }
        }
        self.record(entry, abandon).await
    }

    /// Opens the object and decodes it on a blocking thread, handing its events to the sink.
    /// `Err`: how the object ended before it could be decoded (gone, unreadable, abandoned).
    async fn read(
        &self,
        object: &ObjectMeta,
        tracker: &Arc<Tracker>,
        abandon: &CancellationToken,
    ) -> Result<Decoded, ObjectResult> {
        let key = || object.key.clone();
        let opened = tokio::select! {
            opened = self.source.open(&object.key) => opened,
            _ = abandon.cancelled() => return Err(ObjectResult::Abandoned { key: key() }),
        };
        let reader = match opened {
            Ok(reader) => reader,
            Err(e) if e.is_not_found() => {
                return Err(ObjectResult::Gone {
                    key: key(),
                    reason: format!("the object no longer exists: {e}"),
                });
            }
            Err(e) => {
                return Err(ObjectResult::Retry {
                    key: key(),
                    reason: format!("cannot read the source object: {e}"),
                });
            }
        };
        let (thread_key, sink, thread_tracker, thread_abandon, metrics, runtime) = (
            key(),
            self.sink.clone(),
            tracker.clone(),
            abandon.clone(),
            self.metrics.clone(),
            tokio::runtime::Handle::current(),
        );
        let decoding = tokio::task::spawn_blocking(move || {
            let to = Destination {
                sink: &sink,
                tracker: &thread_tracker,
                abandon: &thread_abandon,
                runtime: &runtime,
            };
            decode(reader, &thread_key, &to, &metrics)
        });
        // An abandoned object does not wait for its thread: a read stuck on the network
        // ends on its own, and the thread sees the abandon at its next event or send.
        tokio::select! {
            joined = decoding => match joined {
                Ok(decoded) => Ok(decoded),
                // The scheduler owns what a panic means (the object is given back): pass it on.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(ObjectResult::Abandoned { key: key() }),
            },
            _ = abandon.cancelled() => Err(ObjectResult::Abandoned { key: key() }),
        }
    }

    /// A dry run counts what delivery would have counted.
    fn count_dry_run(&self, decoded: &Decoded) {
        let Some(event_type) = decoded.event_type.as_deref() else {
            return;
        };
        let (sent, skipped, parked) = decoded.counts;
        EventsRead {
            event_type,
            count: decoded.events,
        }
        .emit(&self.metrics);
        EventsSent {
            event_type,
            count: sent,
        }
        .emit(&self.metrics);
        EventsSkipped {
            event_type,
            count: skipped,
        }
        .emit(&self.metrics);
        if parked > 0 {
            let reasons: Vec<(String, u64)> = decoded
                .would_park
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect();
            EventsParked {
                event_type,
                count: parked,
                reasons: &reasons,
                dry_run: true,
            }
            .emit(&self.metrics);
        }
    }

    /// Records the entry, trying again with backoff while the state store fails.
    async fn record(&self, entry: Entry, abandon: &CancellationToken) -> ObjectResult {
        let retry = &self.ledger_retry;
        // Counts this object among those waiting for the ledger from its first failure.
        let mut waiting = None;
        loop {
            let error = match self.ledger.record(&entry).await {
                Ok(()) => {
                    if let Some(healed) = retry.on_success(tokio::time::Instant::now()) {
                        healed.log("ledger", "", None);
                    }
                    StateWriteSucceeded.emit(&self.metrics);
                    return finished(entry);
                }
                Err(e) => e,
            };
            waiting.get_or_insert_with(|| retry.wait());
            let failed = retry.on_failure(tokio::time::Instant::now(), &error);
            StateWriteFailed {
                cause: &Cause::of(error.kind).headline(&error.location),
                error: &error.to_string(),
            }
            .emit(&self.metrics);
            if let Some(notice) = failed.notice {
                let objects = match retry.waiting() {
                    1 => "1 object".to_string(),
                    n => format!("{n} objects"),
                };
                notice.log("ledger", &objects, Some(&error));
            }
            let at = match failed.next {
                Next::RetryAt(at) => at,
                Next::GiveUp => {
                    return ObjectResult::Unrecorded {
                        key: entry.key,
                        reason: format!("cannot record it in the state's ledger: {error}"),
                    };
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = abandon.cancelled() => return ObjectResult::Abandoned { key: entry.key },
            }
        }
    }

    /// Records a key outside the Currents layout as failed, without reading it.
    pub async fn record_outside_layout(
        &self,
        object: &ObjectMeta,
        abandon: &CancellationToken,
    ) -> ObjectResult {
        let mut entry = Entry::new(object, Outcome::Failed);
        entry.reason = Some(
            "the key is outside the Currents layout (no event_type= and date= segments)".into(),
        );
        match self.sink {
            Sink::Deliver(_) => self.record(entry, abandon).await,
            Sink::DryRun(_) => ObjectResult::Failed(entry),
        }
    }
}

fn finished(entry: Entry) -> ObjectResult {
    match entry.outcome {
        Outcome::Done => ObjectResult::Done(entry),
        Outcome::Failed => ObjectResult::Failed(entry),
    }
}

/// Where the decoding thread hands its events, and what cuts it short.
struct Destination<'a> {
    sink: &'a Sink,
    tracker: &'a Arc<Tracker>,
    abandon: &'a CancellationToken,
    /// The runtime the thread waits on for room in delivery's channel.
    runtime: &'a tokio::runtime::Handle,
}

fn decode(
    reader: crate::store::ObjectReader,
    key: &str,
    to: &Destination<'_>,
    metrics: &Metrics,
) -> Decoded {
    let Destination {
        sink,
        tracker,
        abandon,
        runtime,
    } = to;
    let mut decoded = Decoded {
        events: 0,
        counts: (0, 0, 0),
        would_park: std::collections::BTreeMap::new(),
        event_type: None,
        warnings: 0,
        error: None,
        abandoned: false,
    };
    let mut events = match EventReader::open(reader, key) {
        Ok(events) => events,
        Err(e) => {
            decoded.error = Some(e);
            return decoded;
        }
    };
    let object: Arc<str> = Arc::from(key);
    loop {
        if abandon.is_cancelled() {
            decoded.abandoned = true;
            return decoded;
        }
        let event = match events.next_event() {
            Ok(Some((event, warnings))) => {
                for warning in &warnings {
                    decoded.warnings += 1;
                    // The first few name their events; the rest are counted once, at the end,
                    // so one bad object cannot flood the log.
                    OddPropertyValue {
                        object: key,
                        warning,
                        log: decoded.warnings <= WARNINGS_SHOWN,
                    }
                    .emit(metrics);
                }
                event
            }
            Ok(None) => return decoded,
            Err(e) => {
                decoded.error = Some(e);
                return decoded;
            }
        };
        // Its index in the object, as decoded: what the tracker's ended prefix counts.
        let record = decoded.events;
        decoded.events += 1;
        if decoded.event_type.is_none() {
            decoded.event_type = Some(event.event_type.clone());
        }
        match sink {
            Sink::Deliver(tx) => {
                let submission = Submission {
                    event,
                    object: object.clone(),
                    tracker: Arc::clone(tracker),
                    record,
                };
                // Waiting for room races the abandon: a rate-bound delivery may leave none
                // for minutes, and a stop must not wait for it (issue 18).
                let sent = runtime.block_on(async {
                    tokio::select! {
                        biased;
                        _ = abandon.cancelled() => false,
                        sent = tx.send(submission) => sent.is_ok(),
                    }
                });
                if !sent {
                    decoded.abandoned = true;
                    return decoded;
                }
            }
            Sink::DryRun(disposer) => match disposer.dispose(&event) {
                Disposition::Send { .. } => decoded.counts.0 += 1,
                Disposition::Skip => decoded.counts.1 += 1,
                Disposition::Park(reason) => {
                    tracing::debug!(object = %key, event_id = %event.id, "would be parked: {reason}");
                    *decoded.would_park.entry(reason).or_insert(0) += 1;
                    decoded.counts.2 += 1;
                }
            },
        }
    }
}
