//! The ledger: which Currents objects are finished.
//!
//! # Guarantee
//! An object is recorded **done** only after every event read from it was accepted by Heap
//! (a 2xx), skipped by policy (no identity), or written durably as a dead letter. It is
//! recorded **failed** only when it cannot be read as Currents data (corrupt Avro, an empty
//! object, a key outside the layout); the events read before the damage were handled like
//! any others. Nothing else is ever recorded. So a crash at any point loses nothing: an
//! object without a record is processed again from its start, and the idempotency keys (the
//! Currents event ids) make Heap ignore the events it already has.
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
        }
    }
}

/// The finished versions found under a prefix: (object key, version) → outcome.
#[derive(Debug, Default)]
pub struct Finished {
    versions: HashMap<(String, String), Outcome>,
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
    }

    /// Keeps only the versions of objects whose key `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.versions.retain(|(key, _), _| keep(key));
    }

    /// Adds the version a ledger marker key (`ledger/<object key>/<version>.<outcome>`) names;
    /// anything else under `ledger/` is not a marker and is skipped.
    fn insert_marker(&mut self, ledger_key: &str) {
        let Some(rest) = ledger_key.strip_prefix(LEDGER_PREFIX) else {
            return;
        };
        let Some((object_key, marker)) = rest.rsplit_once('/') else {
            return;
        };
        let (version, outcome) = match marker.rsplit_once('.') {
            Some((v, "done")) => (v, Outcome::Done),
            Some((v, "failed")) => (v, Outcome::Failed),
            _ => return,
        };
        self.versions
            .insert((object_key.to_string(), version.to_string()), outcome);
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
}
