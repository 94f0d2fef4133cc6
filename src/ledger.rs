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
//! Marking an object costs one PUT, whatever the history. Checking which objects of an hour
//! are finished costs one listing of that hour's ledger prefix, with no reads: the version
//! and the outcome are in the key. A re-uploaded object (new ETag or size) is a new version
//! and is processed again.
//!
//! One worker per source and state location: the ledger takes no leases, because conditional
//! writes are not reliably atomic on every S3-compatible store.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::now_iso8601;
use crate::source::CurrentsObject;
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

    /// The finished versions of every object whose key starts with `source_prefix`.
    pub async fn finished(&self, source_prefix: &str) -> Result<Finished, StoreError> {
        let mut finished = Finished::default();
        for meta in self
            .store
            .list(&format!("{LEDGER_PREFIX}{source_prefix}"))
            .await?
        {
            let Some(rest) = meta.key.strip_prefix(LEDGER_PREFIX) else {
                continue;
            };
            let Some((object_key, marker)) = rest.rsplit_once('/') else {
                continue;
            };
            let outcome = match marker.rsplit_once('.') {
                Some((v, "done")) => (v, Outcome::Done),
                Some((v, "failed")) => (v, Outcome::Failed),
                _ => continue,
            };
            finished
                .versions
                .insert((object_key.to_string(), outcome.0.to_string()), outcome.1);
        }
        Ok(finished)
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
                let bytes = self.store.get(&meta.key).await?;
                match serde_json::from_slice::<Entry>(&bytes) {
                    Ok(entry) => failed.entries.push(entry),
                    Err(e) => failed.unreadable.push((meta.key, e.to_string())),
                }
            }
        }
        Ok(failed)
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
        let ledger = Ledger::new(Arc::new(LocalStore::new(&dir)));
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
}
