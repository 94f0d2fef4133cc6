//! Checkpoints inside objects: how far an object in flight has ended, written to the ledger
//! so a stop, a crash or a takeover resumes it there instead of at its first event.
//!
//! # Protocol
//! 1. **What a checkpoint says.** "Records `[0, N)` of this object version have all ended":
//!    accepted by Heap, skipped by policy, or parked durably ([`Tracker::ended_prefix`]). An
//!    event given back or withdrawn never ends, so `N` stops before it for good. The record
//!    also names the block that holds record `N` (its byte offset and first record) and the
//!    header's length, so a resume reads the header and then the object from that block.
//! 2. **Which version.** Every checkpoint names the version the read returned (the GET's
//!    size and ETag), never what a listing or a notification said. A resume looks up the
//!    checkpoint of the listed version and reads with `If-Match` on its ETag: an object that
//!    changed since is read from its start, and no checkpoint of another version is applied.
//! 3. **When it is written** ([`Cadence`]): when `N` has grown, not before [`FIRST_AFTER`] from
//!    the object's start (an object that finishes sooner writes none, so small objects cost
//!    what they cost without checkpoints), then at most once per [`TICK`], whenever
//!    [`EVERY`] has passed since the last write or [`EVENTS`] more events have ended. Once
//!    more when the object is cut short (a stop's deadline, a failed read), bounded by
//!    [`FINAL_WRITE`] so a stop keeps its timeout.
//! 4. **When it goes.** The done or failed record replaces it: the pipeline deletes it after
//!    writing that record. A delete that fails leaves a record that is never applied again
//!    (the version is finished, so it is never read again).
//! 5. **Failures.** A checkpoint that cannot be written is counted and logged at most once
//!    per object; the object goes on. The worst it costs is events sent again after a stop.
//!
//! So the ledger's guarantee is unchanged (see [`crate::ledger`]): a checkpoint only ever
//! covers events whose end is final, a crash between two writes sends the events since the
//! last one again (Heap drops them by idempotency key), and nothing is skipped that did not
//! end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock::now_iso8601;
use crate::currents::container::BlockStart;
use crate::heap::delivery::Tracker;
use crate::ledger::{Ledger, Progress};
use crate::store::ObjectMeta;
use crate::telemetry::Metrics;
use crate::telemetry::events::{ProgressWriteFailed, ProgressWritten};

/// No checkpoint before this long after an object starts.
pub const FIRST_AFTER: Duration = Duration::from_secs(5);
/// A checkpoint at least this often while the ended prefix grows.
pub const EVERY: Duration = Duration::from_secs(3);
/// ... or sooner, once this many more events have ended.
pub const EVENTS: u64 = 1_000;
/// How often the writer looks: at most one write per object per tick.
pub const TICK: Duration = Duration::from_secs(1);
/// The last write of an object cut short waits at most this long for the state store.
pub const FINAL_WRITE: Duration = Duration::from_secs(1);

/// When an object's next checkpoint is due (pure: takes `now`).
#[derive(Debug, Clone)]
pub struct Cadence {
    started: Instant,
    /// When the last checkpoint was written, and the prefix it recorded.
    last: Option<(Instant, u64)>,
    /// The prefix the object started at (a resume's `N`): nothing to write until it grows.
    start: u64,
}

impl Cadence {
    pub fn new(started: Instant, start: u64) -> Self {
        Cadence {
            started,
            last: None,
            start,
        }
    }

    /// The prefix recorded last (or the start).
    pub fn recorded(&self) -> u64 {
        self.last.map_or(self.start, |(_, n)| n)
    }

    /// Whether a checkpoint of `prefix` is due at `now`.
    pub fn due(&self, now: Instant, prefix: u64) -> bool {
        let grown = prefix.saturating_sub(self.recorded());
        if grown == 0 || now < self.started + FIRST_AFTER {
            return false;
        }
        match self.last {
            None => true,
            Some((at, _)) => now >= at + EVERY || grown >= EVENTS,
        }
    }

    pub fn written(&mut self, now: Instant, prefix: u64) {
        self.last = Some((now, prefix));
    }

    /// Whether a checkpoint was written for this object in this run.
    pub fn wrote_any(&self) -> bool {
        self.last.is_some()
    }
}

/// Where the blocks of an object being read start, as the decoding thread meets them, and
/// the header's length: what a checkpoint names besides its prefix.
#[derive(Debug, Default)]
pub struct Blocks {
    inner: Mutex<BlocksInner>,
}

#[derive(Debug, Default)]
struct BlocksInner {
    header_len: u64,
    /// In order of `first_record`; those wholly before the last checkpoint are dropped.
    starts: Vec<BlockStart>,
}

impl Blocks {
    /// The decoding thread read the header.
    pub fn header(&self, header_len: u64) {
        self.lock().header_len = header_len;
    }

    /// The decoding thread is in the block starting at `start` (called per event; a block
    /// already known is ignored).
    pub fn entered(&self, start: BlockStart) {
        let mut inner = self.lock();
        if inner
            .starts
            .last()
            .is_none_or(|last| start.first_record > last.first_record)
        {
            inner.starts.push(start);
        }
    }

    /// The header's length and the block that holds record `record`, dropping the blocks
    /// wholly before it. `None` before the decoder met it.
    pub fn holding(&self, record: u64) -> Option<(u64, BlockStart)> {
        let mut inner = self.lock();
        let at = inner
            .starts
            .iter()
            .rposition(|b| b.first_record <= record)?;
        inner.starts.drain(..at);
        Some((inner.header_len, inner.starts[0]))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BlocksInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checkpoints of one object in flight.
pub struct Checkpoints {
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// The version being read, as the GET returned it.
    version: ObjectMeta,
    tracker: Arc<Tracker>,
    blocks: Arc<Blocks>,
    cadence: Cadence,
    /// Whether a checkpoint of this version exists in the ledger (read at the start, or
    /// written since): the done record must replace it.
    exists: bool,
    /// A failed write is logged once per object.
    warned: bool,
}

impl Checkpoints {
    /// `resumed`: the checkpoint the object resumed from, if any.
    pub fn new(
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        version: ObjectMeta,
        tracker: Arc<Tracker>,
        blocks: Arc<Blocks>,
        resumed: Option<&Progress>,
    ) -> Self {
        let start = resumed.map_or(0, |p| p.records);
        Checkpoints {
            ledger,
            metrics,
            version,
            tracker,
            blocks,
            cadence: Cadence::new(Instant::now(), start),
            exists: resumed.is_some(),
            warned: false,
        }
    }

    /// Writes checkpoints as they fall due; never returns (dropped when the object ends).
    pub async fn keep_writing(&mut self) -> std::convert::Infallible {
        let mut tick = tokio::time::interval_at(Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let prefix = self.tracker.ended_prefix();
            if self.cadence.due(Instant::now(), prefix) {
                self.write(prefix).await;
            }
        }
    }

    /// The last checkpoint of an object cut short: what ended since the last write, within
    /// [`FINAL_WRITE`].
    pub async fn write_final(&mut self) {
        let prefix = self.tracker.ended_prefix();
        if prefix <= self.cadence.recorded() {
            return;
        }
        if tokio::time::timeout(FINAL_WRITE, self.write(prefix))
            .await
            .is_err()
        {
            self.failed("the state store did not answer in time".into());
        }
    }

    /// Whether a checkpoint of this version is in the ledger (read at the start, or written).
    pub fn exists(&self) -> bool {
        self.exists
    }

    /// After the done or failed record: deletes the checkpoint it replaces, if one exists.
    pub async fn clear(&self) {
        if !self.exists {
            return;
        }
        let v = &self.version;
        if let Err(e) = self.ledger.clear_progress(&v.key, v.size, &v.etag).await {
            // Harmless: a finished version is never read again, so it is never applied.
            tracing::debug!(object = %v.key, "could not delete the object's checkpoint: {e}");
        }
    }

    async fn write(&mut self, prefix: u64) {
        let Some((header_len, block)) = self.blocks.holding(prefix) else {
            return;
        };
        let v = &self.version;
        let progress = Progress {
            key: v.key.clone(),
            size: v.size,
            etag: v.etag.clone(),
            records: prefix,
            header_len,
            block_offset: block.offset,
            block_first_record: block.first_record,
            updated_at: now_iso8601(),
        };
        match self.ledger.record_progress(&progress).await {
            Ok(()) => {
                self.exists = true;
                self.cadence.written(Instant::now(), prefix);
                ProgressWritten.emit(&self.metrics);
            }
            Err(e) => self.failed(e.to_string()),
        }
    }

    fn failed(&mut self, error: String) {
        let log = !self.warned;
        self.warned = true;
        ProgressWriteFailed {
            object: &self.version.key,
            error: &error,
            log,
        }
        .emit(&self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_checkpoint_in_the_first_5_s_then_every_3_s_or_thousand_events() {
        let t0 = Instant::now();
        let mut cadence = Cadence::new(t0, 0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!cadence.due(at(4), 5_000), "a small object writes none");
        assert!(!cadence.due(at(6), 0), "nothing ended: nothing to write");
        assert!(cadence.due(at(5), 1));
        cadence.written(at(5), 1);
        assert!(
            !cadence.due(at(6), 900),
            "not yet 3 s, not yet 1,000 events"
        );
        assert!(cadence.due(at(6), 1_001), "1,000 events ended");
        assert!(!cadence.due(at(7), 2), "2 s since the last write, 1 event");
        assert!(cadence.due(at(8), 2), "3 s since the last write");
        assert!(!cadence.due(at(60), 1), "the prefix has not grown");
    }

    #[test]
    fn a_resumed_object_writes_only_past_where_it_resumed() {
        let t0 = Instant::now();
        let cadence = Cadence::new(t0, 700);
        assert!(!cadence.due(t0 + Duration::from_secs(9), 700));
        assert!(cadence.due(t0 + Duration::from_secs(9), 701));
        assert_eq!(cadence.recorded(), 700);
    }

    #[test]
    fn the_block_holding_a_record_is_found_and_older_ones_dropped() {
        let blocks = Blocks::default();
        assert_eq!(blocks.holding(0), None, "before the decoder met a block");
        blocks.header(40);
        for (offset, first_record) in [(40, 0), (140, 10), (240, 20)] {
            blocks.entered(BlockStart {
                offset,
                first_record,
            });
            blocks.entered(BlockStart {
                offset,
                first_record,
            });
        }
        let block = |offset, first_record| BlockStart {
            offset,
            first_record,
        };
        assert_eq!(blocks.holding(0), Some((40, block(40, 0))));
        assert_eq!(blocks.holding(15), Some((40, block(140, 10))));
        assert_eq!(blocks.holding(20), Some((40, block(240, 20))));
        assert_eq!(blocks.holding(25), Some((40, block(240, 20))));
        assert_eq!(blocks.holding(5), None, "dropped: wholly before the last");
    }
}
