//! The pipeline for one Currents object: source → decode → map → delivery, then the ledger.
//!
//! Decoding runs on a blocking thread and streams from the store, one Avro block at a time;
//! events go to the shared [`Delivery`](crate::heap::delivery::Delivery) through a bounded
//! channel, so a slow Heap slows reading instead of filling memory. The object is recorded
//! in the ledger only when every event it held has an outcome (see [`crate::ledger`]).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::currents::container::ContainerError;
use crate::currents::decode::{DecodeError, EventReader};
use crate::heap::delivery::{Submission, Tracker};
use crate::heap::map::{HeapMapper, Mapped};
use crate::ledger::{Entry, Ledger, Outcome};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// Where decoded events go.
#[derive(Clone)]
pub enum Sink {
    Deliver(mpsc::Sender<Submission>),
    /// Map and count only: nothing is sent, parked or recorded.
    DryRun(Arc<HeapMapper>),
}

/// How processing one object ended.
#[derive(Debug)]
pub enum ObjectResult {
    /// Every event has an outcome; recorded done (not recorded in a dry run).
    Done(Entry),
    /// The object is not readable Currents data; recorded failed (not in a dry run).
    Failed(Entry),
    /// Reading failed for a reason that may pass (a network error): not recorded, so the next
    /// poll tries again.
    Retry { key: String, reason: String },
    /// Shutdown or a stopped delivery cut it short: not recorded.
    Abandoned { key: String },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot record {key} in the ledger: {source}")]
pub struct LedgerWriteError {
    key: String,
    source: StoreError,
}

pub struct Pipeline {
    pub source: Arc<dyn ObjectStore>,
    pub ledger: Arc<Ledger>,
    pub sink: Sink,
}

/// What the decoding thread reports.
struct Decoded {
    events: u64,
    /// Dry run: events that would be sent / skipped / parked.
    counts: (u64, u64, u64),
    error: Option<DecodeError>,
    abandoned: bool,
}

impl Pipeline {
    /// Processes one object. `abandon` cuts it short (shutdown deadline, stopped delivery).
    pub async fn process(
        &self,
        object: &ObjectMeta,
        abandon: &CancellationToken,
    ) -> Result<ObjectResult, LedgerWriteError> {
        let reader = match self.source.open(&object.key).await {
            Ok(reader) => reader,
            Err(e) if e.not_found => {
                return Ok(ObjectResult::Abandoned {
                    key: object.key.clone(),
                });
            }
            Err(e) => {
                return Ok(ObjectResult::Retry {
                    key: object.key.clone(),
                    reason: e.to_string(),
                });
            }
        };
        let tracker = Arc::new(Tracker::default());
        let decoded = {
            let (key, sink, tracker, abandon) = (
                object.key.clone(),
                self.sink.clone(),
                tracker.clone(),
                abandon.clone(),
            );
            tokio::task::spawn_blocking(move || decode(reader, &key, &sink, &tracker, &abandon))
                .await
                .unwrap_or_else(|e| Decoded {
                    events: 0,
                    counts: (0, 0, 0),
                    error: None,
                    abandoned: {
                        tracing::error!(object = %object.key, "decoding thread failed: {e}");
                        true
                    },
                })
        };
        if decoded.abandoned {
            return Ok(ObjectResult::Abandoned {
                key: object.key.clone(),
            });
        }
        if let Some(e) = &decoded.error
            && matches!(e.source, ContainerError::Io(_))
        {
            return Ok(ObjectResult::Retry {
                key: object.key.clone(),
                reason: e.to_string(),
            });
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
        entry.reason = decoded.error.map(|e| e.source.to_string());
        match &self.sink {
            Sink::DryRun(_) => {
                (entry.delivered, entry.skipped, entry.parked) = decoded.counts;
                return Ok(finished(entry));
            }
            Sink::Deliver(_) => {
                tokio::select! {
                    _ = tracker.wait_resolved(decoded.events) => {}
                    _ = abandon.cancelled() => return Ok(ObjectResult::Abandoned { key: object.key.clone() }),
                }
                (entry.delivered, entry.skipped, entry.parked) =
                    (tracker.delivered(), tracker.skipped(), tracker.parked());
            }
        }
        self.record(&entry).await?;
        Ok(finished(entry))
    }

    async fn record(&self, entry: &Entry) -> Result<(), LedgerWriteError> {
        self.ledger
            .record(entry)
            .await
            .map_err(|source| LedgerWriteError {
                key: entry.key.clone(),
                source,
            })
    }

    /// Records a key outside the Currents layout as failed, without reading it.
    pub async fn record_outside_layout(
        &self,
        object: &ObjectMeta,
    ) -> Result<ObjectResult, LedgerWriteError> {
        let mut entry = Entry::new(object, Outcome::Failed);
        entry.reason = Some(
            "the key is outside the Currents layout (no event_type= and date= segments)".into(),
        );
        if let Sink::Deliver(_) = self.sink {
            self.record(&entry).await?;
        }
        Ok(ObjectResult::Failed(entry))
    }
}

fn finished(entry: Entry) -> ObjectResult {
    match entry.outcome {
        Outcome::Done => ObjectResult::Done(entry),
        Outcome::Failed => {
            tracing::error!(object = %entry.key, "object failed: {}", entry.reason.as_deref().unwrap_or("unknown"));
            ObjectResult::Failed(entry)
        }
    }
}

fn decode(
    reader: crate::store::ObjectReader,
    key: &str,
    sink: &Sink,
    tracker: &Arc<Tracker>,
    abandon: &CancellationToken,
) -> Decoded {
    let mut decoded = Decoded {
        events: 0,
        counts: (0, 0, 0),
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
            Ok(Some((event, warning))) => {
                if let Some(warning) = warning {
                    tracing::warn!(object = %key, "{warning}");
                }
                event
            }
            Ok(None) => return decoded,
            Err(e) => {
                decoded.error = Some(e);
                return decoded;
            }
        };
        decoded.events += 1;
        match sink {
            Sink::Deliver(tx) => {
                let submission = Submission {
                    event,
                    object: object.clone(),
                    tracker: tracker.clone(),
                };
                if tx.blocking_send(submission).is_err() {
                    decoded.abandoned = true;
                    return decoded;
                }
            }
            Sink::DryRun(mapper) => match mapper.map(&event) {
                Mapped::Track { .. } => decoded.counts.0 += 1,
                Mapped::NoIdentity => decoded.counts.1 += 1,
                Mapped::Unsendable(reason) => {
                    tracing::warn!(object = %key, event_id = %event.id, "would be parked: {reason}");
                    decoded.counts.2 += 1;
                }
            },
        }
    }
}
