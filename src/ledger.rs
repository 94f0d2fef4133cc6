//! The ledger: which Currents objects are finished.
//!
//! # Guarantee
//! An object is recorded **done** only after every event read from it was accepted by Heap
//! (a 2xx), skipped by policy (no identity), or written durably as a dead letter. It is
//! recorded **failed** only when it cannot be read as Currents data (corrupt Avro, an empty
//! object, a key outside the layout); the events read before the damage were handled like
//! any others. Nothing else is ever recorded. So a crash at any point loses nothing: an
//! object without a record is processed again from its start (or its progress record,
//! below), and the idempotency keys (the
//! Currents event ids) make Heap ignore the events it already has.
//!
//! An object that is not finished may have a **progress** record: "records `[0, N)` of this
//! version have all ended finally" (accepted, skipped, or parked durably: delivery's ended
//! prefix, [`crate::heap::delivery::Tracker::ended_prefix`]). It only ever covers records
//! whose end is final, so a run that resumes the object at record N instead of its start
//! loses nothing, and the guarantee above is unchanged: at least once, nothing lost. A
//! progress record names the version (key, size, ETag) it was taken of; one of another
//! version is never applied ([`Ledger::progress`]), so a re-uploaded object is read from its
//! start. The done or failed record replaces it ([`Ledger::clear_progress`]); a progress
//! record left beside one (a crash between the two writes) is never read, because a finished
//! version is not processed again.
//!
//! # Layout and cost
//! One small object per finished Currents object and version:
//! `ledger/<object key>/<size>-<etag>.done` (or `.failed`), holding the counts as JSON.
//! Marking an object costs one PUT, whatever the history. Checking which objects of an
//! `event_type=` folder are finished over a range of `date=` hours costs one ranged listing
//! ([`Ledger::finished_in_hours`], a request per 1,000 markers in the range), with no reads:
//! the version and the outcome are in the key, and ledger keys sort like the source keys
//! they mirror. A re-uploaded object (new ETag or size) is a new version and is processed
//! again.
//!
//! A progress record is `ledger/<object key>/<size>-<etag>.progress`, JSON, rewritten whole:
//! one PUT per write, one GET to read it at a resume, one DELETE when the object finishes.
//! Listings for finished versions skip it, so it never makes an object count as finished;
//! they note it ([`Finished::has_checkpoint`]), so only an object that has one costs the GET.
//! When and how it is written is [`crate::worker::checkpoint`]'s.
//!
//! # Several writers
//! The ledger takes no leases, because conditional writes are not reliably atomic on every
//! S3-compatible store. In polling mode one worker runs per source and state location (two
//! pollers would each send every object). In SQS mode several `run` replicas may share one
//! state: each notification goes to one replica at a time, and the guarantee above still
//! holds, because every record is a whole-object PUT of its own key: two replicas that finish
//! the same object (a message received twice) write the same marker, and no write can tear
//! or undo another's. What they share is Heap's rate limit, not the ledger; dividing that
//! budget between replicas is issue 20's.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::now_iso8601;
use crate::currents::key::DateHour;
use crate::source::{CurrentsObject, hour_bound};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

pub const LEDGER_PREFIX: &str = "ledger/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Done,
    Failed,
}

impl Outcome {
    fn suffix(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
        }
    }
}

/// What the ledger records about one object version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub outcome: Outcome,
    pub events: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub parked: u64,
    /// Why a failed object could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub finished_at: String,
    /// The record this run started at: 0 for a read from the start, N for a resume from a
    /// progress record (records before N ended in an earlier run).
    #[serde(default)]
    pub resumed_at: u64,
}

impl Entry {
    pub fn new(object: &ObjectMeta, outcome: Outcome) -> Self {
        Entry {
            key: object.key.clone(),
            size: object.size,
            etag: object.etag.clone(),
            outcome,
            events: 0,
            delivered: 0,
            skipped: 0,
            parked: 0,
            reason: None,
            finished_at: now_iso8601(),
            resumed_at: 0,
        }
    }
}

/// How far an unfinished object version has ended (see the module's guarantee).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// Every record before this index ended finally.
    pub records: u64,
    /// Bytes of the object's Avro header (a resume reads `0..header_len`), and the block that
    /// holds record `records`: its byte offset and the index of its first record.
    pub header_len: u64,
    pub block_offset: u64,
    pub block_first_record: u64,
    pub updated_at: String,
}

impl Progress {
    /// Whether it was taken of this version of this object.
    fn is_of(&self, key: &str, size: u64, etag: &str) -> bool {
        self.key == key && self.size == size && self.etag == etag
    }
}

/// The progress records under a prefix, for `status`, and those that could not be read.
#[derive(Debug, Default)]
pub struct InProgress {
    pub entries: Vec<Progress>,
    /// (ledger key, why it does not parse).
    pub unreadable: Vec<(String, String)>,
}

const PROGRESS_SUFFIX: &str = "progress";

/// The ledger key of a version's progress record.
fn progress_key(key: &str, size: u64, etag: &str) -> String {
    format!(
        "{LEDGER_PREFIX}{key}/{}.{PROGRESS_SUFFIX}",
        version(size, etag)
    )
}

/// The finished versions found under a prefix: (object key, version) → outcome.
#[derive(Debug, Default)]
pub struct Finished {
    versions: HashMap<(String, String), Outcome>,
    /// Versions with a progress record (a checkpoint) beside them: not finished, but worth
    /// a lookup when they start (see [`Finished::has_checkpoint`]).
    checkpoints: std::collections::HashSet<(String, String)>,
}

impl Finished {
    pub fn outcome(&self, key: &str, size: u64, etag: &str) -> Option<Outcome> {
        self.versions
            .get(&(key.to_string(), version(size, etag)))
            .copied()
    }

    pub fn contains(&self, object: &CurrentsObject) -> bool {
        self.outcome(&object.key, object.size, &object.etag)
            .is_some()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.versions.values().filter(|o| **o == outcome).count()
    }

    /// Versions held, done and failed.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Adds what was just recorded, without reading the ledger again.
    pub fn insert(&mut self, entry: &Entry) {
        self.versions.insert(
            (entry.key.clone(), version(entry.size, &entry.etag)),
            entry.outcome,
        );
    }

    /// Adds everything `other` holds.
    pub fn extend(&mut self, other: Finished) {
        self.versions.extend(other.versions);
        self.checkpoints.extend(other.checkpoints);
    }

    /// Keeps only the versions of objects whose key `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.versions.retain(|(key, _), _| keep(key));
        self.checkpoints.retain(|(key, _)| keep(key));
    }

    /// Whether the listing that filled this held a progress record of this version: only
    /// then is the record worth a GET when the object starts, so an object never cut short
    /// costs no request more than before checkpoints.
    pub fn has_checkpoint(&self, key: &str, size: u64, etag: &str) -> bool {
        self.checkpoints
            .contains(&(key.to_string(), version(size, etag)))
    }

    /// Adds the version a ledger marker key (`ledger/<object key>/<version>.<outcome>`) names;
    /// anything else under `ledger/` is not a marker and is skipped.
    /// (A progress record is not a finished version: it is skipped too.)
    fn insert_marker(&mut self, ledger_key: &str) {
        let Some((object_key, version, suffix)) = parse_marker(ledger_key) else {
            return;
        };
        let outcome = match suffix {
            "done" => Outcome::Done,
            "failed" => Outcome::Failed,
            PROGRESS_SUFFIX => {
                self.checkpoints
                    .insert((object_key.to_string(), version.to_string()));
                return;
            }
            _ => return,
        };
        self.versions
            .insert((object_key.to_string(), version.to_string()), outcome);
    }

    fn has_version(&self, object_key: &str, version: &str) -> bool {
        self.versions
            .contains_key(&(object_key.to_string(), version.to_string()))
    }

    /// Whether some version of `key` is recorded done: an older failed version of it was
    /// replaced by a good upload.
    pub fn has_done_version(&self, key: &str) -> bool {
        self.versions
            .iter()
            .any(|((k, _), o)| k == key && *o == Outcome::Done)
    }

    /// Failed versions of objects that no done version has replaced.
    pub fn count_failed_unreplaced(&self) -> usize {
        self.failed_keys()
            .filter(|key| !self.has_done_version(key))
            .count()
    }

    /// Object keys with a version recorded done.
    pub fn done_keys(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .filter(|(_, o)| **o == Outcome::Done)
            .map(|((key, _), _)| key.as_str())
    }

    /// Failed object keys.
    pub fn failed_keys(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .filter(|(_, o)| **o == Outcome::Failed)
            .map(|((key, _), _)| key.as_str())
    }
}

pub struct Ledger {
    store: Arc<dyn ObjectStore>,
}

impl Ledger {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Ledger { store }
    }

    pub fn describe(&self) -> String {
        format!(
            "{}/{LEDGER_PREFIX}",
            self.store.describe().trim_end_matches('/')
        )
    }

    /// Records an object version as finished: one PUT.
    pub async fn record(&self, entry: &Entry) -> Result<(), StoreError> {
        let key = format!(
            "{LEDGER_PREFIX}{}/{}.{}",
            entry.key,
            version(entry.size, &entry.etag),
            entry.outcome.suffix()
        );
        let body = serde_json::to_vec_pretty(entry).expect("ledger entries serialize");
        self.store.put(&key, body).await
    }

    /// The finished versions of every object whose key starts with `source_prefix`: a
    /// listing of all of them, so its cost grows with the history.
    pub async fn finished(&self, source_prefix: &str) -> Result<Finished, StoreError> {
        let mut finished = Finished::default();
        for meta in self
            .store
            .list(&format!("{LEDGER_PREFIX}{source_prefix}"))
            .await?
        {
            finished.insert_marker(&meta.key);
        }
        Ok(finished)
    }

    /// The finished versions of the objects of one `event_type=` folder (a source key
    /// prefix ending in `/`) in the `date=` hours `from` (inclusive) to `to` (exclusive):
    /// one ranged listing, so its cost follows the range, not the history.
    pub async fn finished_in_hours(
        &self,
        folder: &str,
        from: DateHour,
        to: DateHour,
    ) -> Result<Finished, StoreError> {
        let mut finished = Finished::default();
        for meta in self.markers_in_hours(folder, from, to).await? {
            finished.insert_marker(&meta.key);
        }
        Ok(finished)
    }

    /// What `status` shows of one `event_type=` folder's hours `from` to `to`: the finished
    /// versions, and the entries of the failed ones (read one by one). One ranged listing.
    pub async fn read_hours(
        &self,
        folder: &str,
        from: DateHour,
        to: DateHour,
    ) -> Result<(Finished, FailedEntries), StoreError> {
        let markers = self.markers_in_hours(folder, from, to).await?;
        self.read_markers(markers).await
    }

    /// [`Ledger::read_hours`] over the whole ledger: one listing of all of it.
    pub async fn read_all(&self) -> Result<(Finished, FailedEntries), StoreError> {
        let markers = self.store.list(LEDGER_PREFIX).await?;
        self.read_markers(markers).await
    }

    async fn markers_in_hours(
        &self,
        folder: &str,
        from: DateHour,
        to: DateHour,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = format!("{LEDGER_PREFIX}{folder}");
        self.store
            .list_range(
                &prefix,
                &hour_bound(&prefix, from),
                Some(&hour_bound(&prefix, to)),
            )
            .await
    }

    async fn read_markers(
        &self,
        markers: Vec<ObjectMeta>,
    ) -> Result<(Finished, FailedEntries), StoreError> {
        let mut finished = Finished::default();
        let mut failed = FailedEntries::default();
        for meta in markers {
            finished.insert_marker(&meta.key);
            if meta.key.ends_with(".failed") {
                failed.read(&*self.store, meta.key).await?;
            }
        }
        Ok((finished, failed))
    }

    /// The progress record of this version, if any: one GET (not found: `None`). A record
    /// that does not parse, or that names another key, size or ETag than asked, is never
    /// applied: `None`, with a warning naming the ledger key (the object is read from its start).
    pub async fn progress(
        &self,
        key: &str,
        size: u64,
        etag: &str,
    ) -> Result<Option<Progress>, StoreError> {
        let ledger_key = progress_key(key, size, etag);
        let bytes = match self.store.get(&ledger_key).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<Progress>(&bytes) {
            Ok(progress) if progress.is_of(key, size, etag) => Ok(Some(progress)),
            Ok(progress) => {
                tracing::warn!(
                    ledger_key = %ledger_key,
                    "a progress record names another version ({} size {} etag {}) than its key: ignored, the object is read from its start",
                    progress.key,
                    progress.size,
                    progress.etag
                );
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(
                    ledger_key = %ledger_key,
                    "a progress record does not parse: ignored, the object is read from its start: {e}"
                );
                Ok(None)
            }
        }
    }

    /// Records how far an object version has ended: one PUT of
    /// `ledger/<object key>/<version>.progress`, replacing the last one.
    pub async fn record_progress(&self, progress: &Progress) -> Result<(), StoreError> {
        let key = progress_key(&progress.key, progress.size, &progress.etag);
        let body = serde_json::to_vec_pretty(progress).expect("progress records serialize");
        self.store.put(&key, body).await
    }

    /// Deletes a version's progress record (missing: `Ok`): the done or failed record
    /// replaces it. One DELETE.
    pub async fn clear_progress(&self, key: &str, size: u64, etag: &str) -> Result<(), StoreError> {
        self.store.delete(&progress_key(key, size, etag)).await
    }

    /// Every progress record under `source_prefix`, for `status`: a listing, then a GET each.
    /// One left beside a done or failed record of its version (a crash between the two
    /// writes) is not in progress and is left out. A record that does not parse is reported
    /// with its key and the reason, never skipped silently.
    pub async fn in_progress(&self, source_prefix: &str) -> Result<InProgress, StoreError> {
        let markers = self
            .store
            .list(&format!("{LEDGER_PREFIX}{source_prefix}"))
            .await?;
        self.read_progress(markers).await
    }

    /// [`Ledger::in_progress`] of one `event_type=` folder's hours `from` to `to`: one ranged
    /// listing (see [`Ledger::finished_in_hours`]), then a GET per progress record.
    pub async fn in_progress_in_hours(
        &self,
        folder: &str,
        from: DateHour,
        to: DateHour,
    ) -> Result<InProgress, StoreError> {
        let markers = self.markers_in_hours(folder, from, to).await?;
        self.read_progress(markers).await
    }

    async fn read_progress(&self, markers: Vec<ObjectMeta>) -> Result<InProgress, StoreError> {
        let mut finished = Finished::default();
        for meta in &markers {
            finished.insert_marker(&meta.key);
        }
        let mut found = InProgress::default();
        for meta in markers {
            match parse_marker(&meta.key) {
                Some((object_key, version, PROGRESS_SUFFIX))
                    if !finished.has_version(object_key, version) => {}
                _ => continue,
            }
            let bytes = match self.store.get(&meta.key).await {
                Ok(bytes) => bytes,
                // Cleared since the listing: the object finished meanwhile.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            match serde_json::from_slice::<Progress>(&bytes) {
                Ok(progress) => found.entries.push(progress),
                Err(e) => found.unreadable.push((meta.key, e.to_string())),
            }
        }
        Ok(found)
    }

    /// Reads the entries of failed objects under a prefix, for `status`. A marker that does
    /// not parse is reported with its key and the reason, never skipped silently.
    pub async fn failed_entries(&self, source_prefix: &str) -> Result<FailedEntries, StoreError> {
        let mut failed = FailedEntries::default();
        for meta in self
            .store
            .list(&format!("{LEDGER_PREFIX}{source_prefix}"))
            .await?
        {
            if meta.key.ends_with(".failed") {
                failed.read(&*self.store, meta.key).await?;
            }
        }
        Ok(failed)
    }
}

impl FailedEntries {
    /// Reads the entry of one `.failed` marker: one GET.
    async fn read(
        &mut self,
        store: &dyn ObjectStore,
        ledger_key: String,
    ) -> Result<(), StoreError> {
        let bytes = store.get(&ledger_key).await?;
        match serde_json::from_slice::<Entry>(&bytes) {
            Ok(entry) => self.entries.push(entry),
            Err(e) => self.unreadable.push((ledger_key, e.to_string())),
        }
        Ok(())
    }
}

/// The failed objects under a prefix, and ledger markers that could not be read.
#[derive(Debug, Default)]
pub struct FailedEntries {
    pub entries: Vec<Entry>,
    /// (ledger key, why it does not parse).
    pub unreadable: Vec<(String, String)>,
}

/// The object key, version and suffix a ledger key `ledger/<object key>/<version>.<suffix>`
/// names; `None` for anything else under `ledger/`.
fn parse_marker(ledger_key: &str) -> Option<(&str, &str, &str)> {
    let (object_key, marker) = ledger_key.strip_prefix(LEDGER_PREFIX)?.rsplit_once('/')?;
    let (version, suffix) = marker.rsplit_once('.')?;
    Some((object_key, version, suffix))
}

/// A key-safe version tag: the size, then the ETag's letters and digits.
fn version(size: u64, etag: &str) -> String {
    let etag: String = etag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("{size}-{etag}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn records_versions_and_finds_them_by_listing() {
        let dir = std::env::temp_dir().join(format!("currents-heap-ledger-{}", std::process::id()));
        let ledger = Ledger::new(Arc::new(LocalStore::lazy(&dir)));
        let meta = ObjectMeta {
            key: "c/event_type=T/date=2026-11-27-13/a.avro".into(),
            size: 10,
            etag: "\"abc\"".into(),
        };
        ledger
            .record(&Entry::new(&meta, Outcome::Done))
            .await
            .unwrap();
        let bad = ObjectMeta {
            key: "c/event_type=T/date=2026-11-27-13/b.avro".into(),
            size: 0,
            etag: "e".into(),
        };
        let mut failed = Entry::new(&bad, Outcome::Failed);
        failed.reason = Some("the file is empty".into());
        ledger.record(&failed).await.unwrap();

        let finished = ledger.finished("c/event_type=T/").await.unwrap();
        assert_eq!(
            finished.outcome(&meta.key, 10, "\"abc\""),
            Some(Outcome::Done)
        );
        assert_eq!(
            finished.outcome(&meta.key, 11, "\"abc\""),
            None,
            "a re-upload is a new version"
        );
        assert_eq!(finished.outcome(&bad.key, 0, "e"), Some(Outcome::Failed));
        assert_eq!(
            (
                finished.count(Outcome::Done),
                finished.count(Outcome::Failed)
            ),
            (1, 1)
        );
        let failed = ledger.failed_entries("").await.unwrap();
        assert_eq!(
            failed.entries[0].reason.as_deref(),
            Some("the file is empty")
        );
        assert!(failed.unreadable.is_empty());
        assert_eq!(finished.count_failed_unreplaced(), 1);
        // The failed object is uploaded again, readable this time.
        ledger
            .record(&Entry::new(
                &ObjectMeta {
                    size: 7,
                    ..bad.clone()
                },
                Outcome::Done,
            ))
            .await
            .unwrap();
        let finished = ledger.finished("c/event_type=T/").await.unwrap();
        assert!(finished.has_done_version(&bad.key));
        assert_eq!(
            finished.count_failed_unreplaced(),
            0,
            "a failure replaced by a good version is no longer a failure"
        );
        std::fs::write(
            dir.join("ledger/c/event_type=T/date=2026-11-27-13/b.avro/0-f.failed"),
            b"{not json",
        )
        .unwrap();
        let failed = ledger.failed_entries("").await.unwrap();
        assert_eq!(failed.entries.len(), 1);
        assert_eq!(failed.unreadable.len(), 1, "{failed:?}");
        assert!(failed.unreadable[0].0.ends_with("0-f.failed"));
        assert!(
            ledger
                .finished("other/")
                .await
                .unwrap()
                .count(Outcome::Done)
                == 0
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn reads_one_folder_over_a_range_of_hours() {
        let dir =
            std::env::temp_dir().join(format!("currents-heap-ledger-hours-{}", std::process::id()));
        let ledger = Ledger::new(Arc::new(LocalStore::lazy(&dir)));
        let folder = "c/event_type=T/";
        let hour = |n: i64| DateHour::from_hours_since_epoch(500_000 + n);
        let meta = |folder: &str, n: i64| ObjectMeta {
            key: format!("{folder}date={}/a.avro", hour(n)),
            size: 1,
            etag: "e".into(),
        };
        for n in -1..=2 {
            ledger
                .record(&Entry::new(&meta(folder, n), Outcome::Done))
                .await
                .unwrap();
        }
        let mut failed = Entry::new(&meta(folder, 1), Outcome::Failed);
        failed.size = 2;
        failed.reason = Some("corrupt".into());
        ledger.record(&failed).await.unwrap();
        let other = "c/event_type=T2/";
        ledger
            .record(&Entry::new(&meta(other, 0), Outcome::Done))
            .await
            .unwrap();

        let finished = ledger
            .finished_in_hours(folder, hour(0), hour(2))
            .await
            .unwrap();
        let has = |folder, n| finished.outcome(&meta(folder, n).key, 1, "e").is_some();
        assert!(has(folder, 0) && has(folder, 1));
        assert!(
            !has(folder, -1) && !has(folder, 2) && !has(other, 0),
            "the range is from inclusive to exclusive, in one folder"
        );
        assert_eq!(finished.len(), 3);
        let (finished, failed) = ledger.read_hours(folder, hour(1), hour(2)).await.unwrap();
        assert_eq!((finished.len(), failed.entries.len()), (2, 1));
        assert_eq!(failed.entries[0].reason.as_deref(), Some("corrupt"));
        let (finished, failed) = ledger.read_all().await.unwrap();
        assert_eq!((finished.len(), failed.entries.len()), (6, 1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn temp_ledger(name: &str) -> (std::path::PathBuf, Ledger) {
        let dir = std::env::temp_dir().join(format!(
            "currents-heap-ledger-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (dir.clone(), Ledger::new(Arc::new(LocalStore::lazy(&dir))))
    }

    fn progress(key: &str, size: u64, etag: &str, records: u64) -> Progress {
        Progress {
            key: key.into(),
            size,
            etag: etag.into(),
            records,
            header_len: 412,
            block_offset: 9_000,
            block_first_record: records - records % 100,
            updated_at: now_iso8601(),
        }
    }

    const KEY: &str = "c/event_type=T/date=2026-11-27-13/a.avro";

    #[tokio::test]
    async fn progress_is_kept_per_version_rewritten_and_cleared() {
        let (dir, ledger) = temp_ledger("progress");
        assert_eq!(ledger.progress(KEY, 10, "\"abc\"").await.unwrap(), None);
        let first = progress(KEY, 10, "\"abc\"", 250);
        ledger.record_progress(&first).await.unwrap();
        assert_eq!(
            ledger.progress(KEY, 10, "\"abc\"").await.unwrap(),
            Some(first)
        );
        let later = progress(KEY, 10, "\"abc\"", 900);
        ledger.record_progress(&later).await.unwrap();
        assert_eq!(
            ledger.progress(KEY, 10, "\"abc\"").await.unwrap(),
            Some(later),
            "one record per version, rewritten whole"
        );
        assert_eq!(
            ledger.progress(KEY, 11, "\"abc\"").await.unwrap(),
            None,
            "a re-upload is another version: read from its start"
        );
        ledger.clear_progress(KEY, 10, "\"abc\"").await.unwrap();
        assert_eq!(ledger.progress(KEY, 10, "\"abc\"").await.unwrap(), None);
        ledger
            .clear_progress(KEY, 10, "\"abc\"")
            .await
            .expect("clearing a missing record is fine");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_progress_record_of_another_version_or_unreadable_is_never_applied() {
        let (dir, ledger) = temp_ledger("progress-other");
        // A record whose body names another ETag than its key (copied, or written by a
        // worker that read another version): never applied.
        let other = progress(KEY, 10, "new", 500);
        let body = serde_json::to_vec(&other).unwrap();
        ledger
            .store
            .put(&progress_key(KEY, 10, "old"), body)
            .await
            .unwrap();
        assert_eq!(ledger.progress(KEY, 10, "old").await.unwrap(), None);
        ledger
            .store
            .put(&progress_key(KEY, 10, "bad"), b"{not json".to_vec())
            .await
            .unwrap();
        assert_eq!(ledger.progress(KEY, 10, "bad").await.unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_progress_marker_never_makes_an_object_count_as_finished() {
        let (dir, ledger) = temp_ledger("progress-unfinished");
        ledger
            .record_progress(&progress(KEY, 10, "e", 100))
            .await
            .unwrap();
        assert!(ledger.finished("").await.unwrap().is_empty());
        assert!(ledger.finished("c/event_type=T/").await.unwrap().is_empty());
        let hour = |n: i64| DateHour::from_hours_since_epoch(n);
        let hours = ledger
            .finished_in_hours("c/event_type=T/", hour(0), hour(1_000_000))
            .await
            .unwrap();
        assert!(hours.is_empty());
        let (finished, failed) = ledger.read_all().await.unwrap();
        assert!(finished.is_empty() && failed.entries.is_empty() && failed.unreadable.is_empty());
        assert!(ledger.failed_entries("").await.unwrap().entries.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn in_progress_lists_unfinished_versions_and_reports_unreadable_ones() {
        let (dir, ledger) = temp_ledger("in-progress");
        let b = "c/event_type=T/date=2026-11-27-13/b.avro";
        let going = progress(KEY, 10, "e", 300);
        ledger.record_progress(&going).await.unwrap();
        // b finished, but the crash came before its progress record was cleared.
        ledger
            .record_progress(&progress(b, 5, "e", 100))
            .await
            .unwrap();
        let meta = ObjectMeta {
            key: b.into(),
            size: 5,
            etag: "e".into(),
        };
        ledger
            .record(&Entry::new(&meta, Outcome::Done))
            .await
            .unwrap();
        ledger
            .store
            .put(
                &progress_key("c/event_type=T/date=2026-11-27-13/z.avro", 1, "e"),
                b"{not json".to_vec(),
            )
            .await
            .unwrap();
        let found = ledger.in_progress("c/").await.unwrap();
        assert_eq!(found.entries, vec![going], "b is done, not in progress");
        assert_eq!(found.unreadable.len(), 1, "{found:?}");
        assert!(found.unreadable[0].0.ends_with("z.avro/1-e.progress"));
        assert!(
            ledger
                .in_progress("other/")
                .await
                .unwrap()
                .entries
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_entry_written_before_resumes_reads_as_a_read_from_the_start() {
        let old = r#"{"key":"k","size":1,"etag":"e","outcome":"done","events":3,
            "delivered":3,"skipped":0,"parked":0,"finished_at":"2026-11-27T13:00:00Z"}"#;
        let entry: Entry = serde_json::from_str(old).unwrap();
        assert_eq!(entry.resumed_at, 0);
    }
}
