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
//!
//! # Resuming
//! While an object is delivered, its [`Checkpoints`] record how far it has ended (the
//! protocol is in [`super::checkpoint`]). An object whose listed version has a checkpoint
//! starts at the checkpoint's record: the header is read with a ranged GET of its bytes and
//! the rest from the block that holds that record (both `If-Match` the listed ETag), whole
//! blocks before the record skipped by their counts. An object that changed since it was
//! listed, or whose resume cannot be read, is read from its start. Every record names the
//! version the read returned.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Blocks, Checkpoints};
use crate::currents::container::{BlockStart, ContainerError};
use crate::currents::decode::{DecodeError, EventReader};
use crate::currents::key::layout_problem;
use crate::heap::delivery::{Disposer, Disposition, Parts, Submission, Tracker};
use crate::heap::properties::map::Mapped as PropertyMapped;
use crate::ledger::{Entry, Ledger, Outcome, Progress};
use crate::store::retry::{Cause, Next, SharedRetry};
use crate::store::{ObjectMeta, ObjectReader, ObjectStore, ReadRange, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::events::{
    EventsParked, EventsRead, EventsSent, EventsSkipped, ObjectResumed, OddPropertyValue,
    StateWriteFailed, StateWriteSucceeded, UserPropertyUpdates,
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
    /// Objects this process left with a checkpoint (cut short, not finished): looked up when
    /// they start again, though the listing that queued them predates the checkpoint.
    pub checkpointed: std::sync::Mutex<std::collections::HashSet<String>>,
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
    /// The resume could not be read (no block at the checkpoint's offset, a skip that
    /// failed, fewer records than the checkpoint says ended) before any event was handed
    /// on: read the object from its start instead.
    resume_failed: Option<String>,
}

/// An object opened for reading: the version the GET returned, and where its events start.
struct Opening {
    reader: ObjectReader,
    version: ObjectMeta,
    /// The checkpoint this read resumes from, if one of this version was found.
    resume: Option<Progress>,
    /// With a ranged resume: the header's bytes, read apart from the rest.
    header: Option<ObjectReader>,
}

impl Opening {
    fn start(&self) -> u64 {
        self.resume.as_ref().map_or(0, |p| p.records)
    }
}

impl Pipeline {
    /// Processes one object. `abandon` cuts it short (shutdown deadline, stopped delivery):
    /// at once, whatever the object is waiting for (see the module docs).
    /// `listed_checkpoint`: the listing that queued it showed a checkpoint of its version.
    pub async fn process(
        &self,
        object: &ObjectMeta,
        listed_checkpoint: bool,
        abandon: &CancellationToken,
    ) -> ObjectResult {
        let ended = self.process_from(object, listed_checkpoint, abandon).await;
        let mut checkpointed = self.checkpointed.lock().unwrap_or_else(|p| p.into_inner());
        match &ended {
            (_, false) => {}
            (ObjectResult::Done(_) | ObjectResult::Failed(_), true) => {
                checkpointed.remove(&object.key);
            }
            (_, true) => {
                checkpointed.insert(object.key.clone());
            }
        }
        ended.0
    }

    /// [`Pipeline::process`], and whether a checkpoint of the object exists (or existed)
    /// in the ledger.
    async fn process_from(
        &self,
        object: &ObjectMeta,
        listed_checkpoint: bool,
        abandon: &CancellationToken,
    ) -> (ObjectResult, bool) {
        let look = listed_checkpoint
            || self
                .checkpointed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&object.key);
        let mut resume = if look {
            self.checkpoint_of(object).await
        } else {
            None
        };
        loop {
            let opening = match self.open(object, resume.take(), abandon).await {
                Ok(opening) => opening,
                Err(ended) => return (ended, false),
            };
            let resumed = opening.resume.is_some();
            // Withdrawn with the object: when it is abandoned, or its read fails part way.
            let tracker = Arc::new(Tracker::resuming(abandon, opening.start()));
            let blocks = Arc::new(Blocks::default());
            let mut checkpoints = Checkpoints::new(
                self.ledger.clone(),
                self.metrics.clone(),
                opening.version.clone(),
                tracker.clone(),
                blocks.clone(),
                opening.resume.as_ref(),
            );
            let delivering = matches!(self.sink, Sink::Deliver(_));
            let ended = tokio::select! {
                ended = self.deliver(opening, &tracker, &blocks, abandon) => ended,
                never = checkpoints.keep_writing(), if delivering => match never {},
            };
            let ended = match ended {
                Delivered::Ended(ended) => ended,
                // Every event has ended: no checkpoint is due while the record is written.
                Delivered::Record(entry) => self.record(entry, abandon).await,
                Delivered::ResumeFailed(e) if resumed => {
                    tracing::warn!(object = %object.key, "cannot resume the object at its checkpoint, reading it from its start: {e}");
                    continue;
                }
                Delivered::ResumeFailed(e) => unreachable_resume(object, e),
            };
            if delivering {
                match &ended {
                    ObjectResult::Done(_) | ObjectResult::Failed(_) => checkpoints.clear().await,
                    ObjectResult::Gone { .. } => {}
                    _ => checkpoints.write_final().await,
                }
            }
            return (ended, checkpoints.exists());
        }
    }

    /// Decodes an opened object and waits for every event it handed on to end, then records
    /// it. `ResumeFailed`: the resume could not be read, and no event was handed on.
    async fn deliver(
        &self,
        opening: Opening,
        tracker: &Arc<Tracker>,
        blocks: &Arc<Blocks>,
        abandon: &CancellationToken,
    ) -> Delivered {
        let version = opening.version.clone();
        let start = opening.start();
        let key = || version.key.clone();
        let decoded = match self.read(opening, tracker, blocks, abandon).await {
            Ok(decoded) => decoded,
            Err(ended) => {
                tracker.withdraw();
                return Delivered::Ended(ended);
            }
        };
        if let Some(e) = decoded.resume_failed {
            return Delivered::ResumeFailed(e);
        }
        if decoded.warnings > WARNINGS_SHOWN {
            tracing::warn!(
                object = %version.key,
                "{} more warnings like the ones above for this object (each at debug level)",
                decoded.warnings - WARNINGS_SHOWN
            );
        }
        if decoded.abandoned {
            tracker.withdraw();
            return Delivered::Ended(ObjectResult::Abandoned { key: key() });
        }
        if let Some(e) = &decoded.error
            && matches!(e.source, ContainerError::Io(_))
        {
            // The object is read again later (from its checkpoint): the events handed over
            // are withdrawn (those not yet sent are dropped, never parked), and the object
            // ends only once every one has an outcome, so they are never pending twice.
            tracker.withdraw();
            tokio::select! {
                _ = tracker.wait_resolved(decoded.events) => {}
                _ = abandon.cancelled() => return Delivered::Ended(ObjectResult::Abandoned { key: key() }),
            }
            return Delivered::Ended(ObjectResult::Retry {
                key: key(),
                reason: format!("cannot read the source object: {e}"),
            });
        }

        let mut entry = Entry::new(
            &version,
            if decoded.error.is_some() {
                Outcome::Failed
            } else {
                Outcome::Done
            },
        );
        entry.events = start + decoded.events;
        entry.resumed_at = start;
        entry.reason = decoded.error.as_ref().map(|e| e.source.to_string());
        match &self.sink {
            Sink::DryRun(_) => {
                (entry.delivered, entry.skipped, entry.parked) = decoded.counts;
                self.count_dry_run(&decoded);
                return Delivered::Ended(finished(entry));
            }
            Sink::Deliver(_) => {
                tokio::select! {
                    _ = tracker.wait_resolved(decoded.events) => {}
                    _ = abandon.cancelled() => {
                        tracker.withdraw();
                        return Delivered::Ended(ObjectResult::Abandoned { key: key() });
                    }
                }
                // The abandon may have withdrawn the last events as they resolved: that is
                // a stop, not a dead-letter write that failed.
                if abandon.is_cancelled() {
                    tracker.withdraw();
                    return Delivered::Ended(ObjectResult::Abandoned { key: key() });
                }
                if tracker.unfinished() + tracker.withdrawn() > 0 {
                    return Delivered::Ended(ObjectResult::Unrecorded {
                        key: key(),
                        reason: format!(
                            "{} of its events could not be written as dead letters to the state",
                            tracker.unfinished() + tracker.withdrawn()
                        ),
                    });
                }
                (entry.delivered, entry.skipped, entry.parked) =
                    (tracker.delivered(), tracker.skipped(), tracker.parked());
            }
        }
        Delivered::Record(entry)
    }

    /// The checkpoint of the listed version, if the ledger holds one: one GET. A lookup
    /// that fails reads the object from its start (safe: Heap drops the repeats).
    async fn checkpoint_of(&self, object: &ObjectMeta) -> Option<Progress> {
        match self
            .ledger
            .progress(&object.key, object.size, &object.etag)
            .await
        {
            Ok(Some(found)) => match unusable(&found) {
                None => Some(found),
                Some(why) => {
                    tracing::warn!(object = %object.key, "the object's checkpoint cannot be applied ({why}): reading it from its start");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(object = %object.key, "cannot read the object's checkpoint, reading it from its start: {e}");
                None
            }
        }
    }

    /// Opens the object, at its checkpoint if `resume` holds one: a ranged read of the header
    /// and one from the checkpoint's block, both only of the listed version. An object that
    /// changed since is opened whole. `Err`: how the object ended before it could be read
    /// (gone, unreadable, abandoned).
    async fn open(
        &self,
        object: &ObjectMeta,
        resume: Option<Progress>,
        abandon: &CancellationToken,
    ) -> Result<Opening, ObjectResult> {
        let opened = tokio::select! {
            opened = self.try_open(object, resume) => opened,
            _ = abandon.cancelled() => return Err(ObjectResult::Abandoned { key: object.key.clone() }),
        };
        opened.map_err(|e| {
            let key = object.key.clone();
            if e.is_not_found() {
                ObjectResult::Gone {
                    key,
                    reason: format!("the object no longer exists: {e}"),
                }
            } else {
                ObjectResult::Retry {
                    key,
                    reason: format!("cannot read the source object: {e}"),
                }
            }
        })
    }

    async fn try_open(
        &self,
        object: &ObjectMeta,
        resume: Option<Progress>,
    ) -> Result<Opening, StoreError> {
        if let Some(progress) = resume {
            let key = &object.key;
            let only = Some(progress.etag.clone());
            let ranged = progress.block_offset > progress.header_len;
            let header = ReadRange {
                start: 0,
                end: ranged.then_some(progress.header_len),
                if_etag: only.clone(),
            };
            match self.source.open_range(key, &header).await {
                Ok(opened) if opened.version.size == progress.size => {
                    let bytes_skipped = progress.block_offset.saturating_sub(progress.header_len);
                    let (reader, header) = if ranged {
                        let body = ReadRange {
                            start: progress.block_offset,
                            end: None,
                            if_etag: only,
                        };
                        let body = self.source.open_range(key, &body).await?;
                        (body.reader, Some(opened.reader))
                    } else {
                        (opened.reader, None)
                    };
                    ObjectResumed {
                        object: key,
                        at: progress.records,
                        bytes_skipped: if ranged { bytes_skipped } else { 0 },
                    }
                    .emit(&self.metrics);
                    return Ok(Opening {
                        reader,
                        version: opened.version,
                        resume: Some(progress),
                        header,
                    });
                }
                // Another version than the checkpoint's: read it whole, from its start.
                Ok(_) => {}
                Err(e) if e.kind == crate::store::StoreErrorKind::PreconditionFailed => {}
                Err(e) => return Err(e),
            }
            tracing::info!(object = %key, "the object changed since its checkpoint: reading the new version from its start");
        }
        let opened = self
            .source
            .open_range(&object.key, &ReadRange::default())
            .await?;
        Ok(Opening {
            reader: opened.reader,
            version: recorded_version(object, opened.version),
            resume: None,
            header: None,
        })
    }

    /// Decodes the opened object on a blocking thread, handing its events to the sink.
    /// `Err`: the object was abandoned before its thread ended.
    async fn read(
        &self,
        opening: Opening,
        tracker: &Arc<Tracker>,
        blocks: &Arc<Blocks>,
        abandon: &CancellationToken,
    ) -> Result<Decoded, ObjectResult> {
        let key = opening.version.key.clone();
        let (sink, thread_tracker, thread_blocks, thread_abandon, metrics, runtime) = (
            self.sink.clone(),
            tracker.clone(),
            blocks.clone(),
            abandon.clone(),
            self.metrics.clone(),
            tokio::runtime::Handle::current(),
        );
        let decoding = tokio::task::spawn_blocking(move || {
            let to = Destination {
                sink: &sink,
                tracker: &thread_tracker,
                blocks: &thread_blocks,
                abandon: &thread_abandon,
                runtime: &runtime,
            };
            decode(opening, &to, &metrics)
        });
        // An abandoned object does not wait for its thread: a read stuck on the network
        // ends on its own, and the thread sees the abandon at its next event or send.
        tokio::select! {
            joined = decoding => match joined {
                Ok(decoded) => Ok(decoded),
                // The scheduler owns what a panic means (the object is given back): pass it on.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => Err(ObjectResult::Abandoned { key }),
            },
            _ = abandon.cancelled() => Err(ObjectResult::Abandoned { key }),
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
        entry.reason = Some(layout_problem(&object.key).unwrap_or_else(|| {
            "the key is outside the Currents layout (no event_type= and date= segments)".into()
        }));
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
    /// Where the blocks start, for the checkpoints.
    blocks: &'a Blocks,
    abandon: &'a CancellationToken,
    /// The runtime the thread waits on for room in delivery's channel.
    runtime: &'a tokio::runtime::Handle,
}

/// How [`Pipeline::deliver`] ended: the object's end, its entry to record, or a resume that
/// could not be read.
enum Delivered {
    Ended(ObjectResult),
    Record(Entry),
    ResumeFailed(String),
}

/// A resume failed on a read that was not a resume: cannot happen, but never a panic.
fn unreachable_resume(object: &ObjectMeta, e: String) -> ObjectResult {
    ObjectResult::Retry {
        key: object.key.clone(),
        reason: format!("cannot read the source object: {e}"),
    }
}

/// The version the records name: the one the read returned. But a store whose listing
/// carries no ETag (s3s-fs, some S3-compatible servers) lists a version made of the
/// modification time (`lm` and digits, see [`crate::store::s3`]) while its reads return an
/// ETag: there the listed version is kept when the size agrees, since it is the one the next
/// listing finds.
fn recorded_version(listed: &ObjectMeta, read: ObjectMeta) -> ObjectMeta {
    let untagged = listed
        .etag
        .strip_prefix("lm")
        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if untagged && read.size == listed.size {
        ObjectMeta {
            key: read.key,
            ..listed.clone()
        }
    } else {
        read
    }
}

/// Opens the decoder where the read starts: at the checkpoint's block and record, or at the
/// first block.
/// Why a checkpoint cannot be applied as it stands (a record written by hand, or damaged):
/// its block must lie between the header and the object's end and start at or before its
/// record. `None`: it may be applied (the reader checks the rest: a block at the offset, and
/// records up to the checkpoint's).
fn unusable(p: &Progress) -> Option<String> {
    if p.header_len == 0 || p.block_offset < p.header_len || p.block_offset >= p.size {
        return Some(format!(
            "its block at byte {} is not between the header's end ({}) and the object's end ({})",
            p.block_offset, p.header_len, p.size
        ));
    }
    if p.block_first_record > p.records {
        return Some(format!(
            "its block starts at record {}, after its record {}",
            p.block_first_record, p.records
        ));
    }
    None
}

/// Where the decoder could not be opened, or its resume read: the object's error (never
/// resumed then), or why the resume failed.
enum OpenFailed {
    Object(DecodeError),
    Resume(String),
}

/// Opens the decoder where the read starts: at the checkpoint's block and record, or at the
/// first block. A resume must find every record the checkpoint says ended: an object that
/// ends before them is not the one the checkpoint was taken of.
fn open_events(opening: Opening) -> Result<EventReader<ObjectReader>, OpenFailed> {
    let key = opening.version.key.clone();
    let Some(p) = opening.resume else {
        return EventReader::open(opening.reader, &key).map_err(OpenFailed::Object);
    };
    let resume = |e: DecodeError| OpenFailed::Resume(e.to_string());
    let mut events = match opening.header {
        Some(header) => {
            let at = BlockStart {
                offset: p.block_offset,
                first_record: p.block_first_record,
            };
            EventReader::open_at(header, opening.reader, at, &key).map_err(resume)?
        }
        None => EventReader::open(opening.reader, &key).map_err(resume)?,
    };
    events.skip_to(p.records).map_err(resume)?;
    if events.next_index() < p.records {
        return Err(OpenFailed::Resume(format!(
            "the object ends at record {}, before the checkpoint's record {}",
            events.next_index(),
            p.records
        )));
    }
    Ok(events)
}

fn decode(opening: Opening, to: &Destination<'_>, metrics: &Metrics) -> Decoded {
    let Destination {
        sink,
        tracker,
        blocks,
        abandon,
        runtime,
    } = to;
    let key = opening.version.key.clone();
    let key = key.as_str();
    let mut decoded = Decoded {
        events: 0,
        counts: (0, 0, 0),
        would_park: std::collections::BTreeMap::new(),
        event_type: None,
        warnings: 0,
        error: None,
        abandoned: false,
        resume_failed: None,
    };
    let mut events = match open_events(opening) {
        Ok(events) => events,
        Err(OpenFailed::Resume(why)) => {
            decoded.resume_failed = Some(why);
            return decoded;
        }
        Err(OpenFailed::Object(e)) => {
            decoded.error = Some(e);
            return decoded;
        }
    };
    blocks.header(events.header_len());
    let object: Arc<str> = Arc::from(key);
    loop {
        if abandon.is_cancelled() {
            decoded.abandoned = true;
            return decoded;
        }
        let record = events.next_index();
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
        blocks.entered(events.block_start());
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
                    parts: Parts::EventAndUpdate,
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
            Sink::DryRun(disposer) => {
                // The update a delivery would make, counted as its outcome would be (but
                // for `superseded`, which depends on the order of delivery).
                count_would_update(disposer.update(&event), metrics);
                match disposer.dispose(&event) {
                    Disposition::Send { .. } => decoded.counts.0 += 1,
                    Disposition::Skip => decoded.counts.1 += 1,
                    Disposition::Park(reason) => {
                        tracing::debug!(object = %key, event_id = %event.id, "would be parked: {reason}");
                        *decoded.would_park.entry(reason).or_insert(0) += 1;
                        decoded.counts.2 += 1;
                    }
                }
            }
        }
    }
}

/// Counts the user-property update a dry run's event would make, as delivery would.
fn count_would_update(update: Option<PropertyMapped>, metrics: &Metrics) {
    let outcome = match update {
        Some(PropertyMapped::Update(_)) => "accepted",
        Some(PropertyMapped::NoIdentity) => "no_identity",
        Some(PropertyMapped::Unsendable(_)) => "parked",
        Some(PropertyMapped::Nothing) | None => return,
    };
    UserPropertyUpdates { outcome, count: 1 }.emit(metrics);
}
