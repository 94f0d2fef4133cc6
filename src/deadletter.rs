//! Dead letters: events that could not be delivered, kept with the reason so that `replay`
//! can re-send them once the cause is fixed.
//!
//! Each `park` call writes new JSON-lines objects (one per event type and source hour) and
//! never appends: object stores cannot append, and new objects need no coordination between
//! writers. Keys: `dead-letters/event_type=<type>/date=<YYYY-MM-DD-HH>/<millis>-<random>.jsonl`,
//! where the date is the source object's `date=` partition (`unknown` if it has none).
//!
//! The `<random>` part is 128 bits from the operating system's random source, drawn for every
//! object. The process id cannot serve: in a container every process is PID 1, and a `run`
//! Deployment and a `backfill` Job share one state location, so two writers parking in the
//! same millisecond and hour would overwrite each other's dead letters.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::{now_iso8601, unix_millis_now};
use crate::currents::event::CustomHttpEvent;
use crate::currents::key::CurrentsKey;
use crate::store::{ObjectMeta, ObjectStore, StoreError, StoreErrorKind};

pub const DEAD_LETTER_PREFIX: &str = "dead-letters/";

/// One parked event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original event, in the Custom HTTP connector shape.
    pub event: CustomHttpEvent,
    pub reason: String,
    /// The Currents object it came from.
    pub object: String,
    /// When it was parked (ISO 8601, UTC).
    pub parked_at: String,
    /// Which output failed: the event itself, or the user-property update made from it.
    /// Absent in letters written before user properties existed (events).
    #[serde(default, skip_serializing_if = "Output::is_event")]
    pub output: Output,
}

/// What a dead letter re-sends: the track event, or only the user-property update made from
/// the event (re-derived at replay under the allowlist then in force).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    #[default]
    Event,
    UserProperties,
}

impl Output {
    fn is_event(&self) -> bool {
        *self == Output::Event
    }
}

impl DeadLetter {
    pub fn new(
        event: CustomHttpEvent,
        reason: impl Into<String>,
        object: impl Into<String>,
    ) -> Self {
        DeadLetter {
            event,
            reason: reason.into(),
            object: object.into(),
            parked_at: now_iso8601(),
            output: Output::Event,
        }
    }

    /// The letter of a user-property update that could not be delivered.
    pub fn of_user_properties(mut self) -> Self {
        self.output = Output::UserProperties;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("dead-letter object {key}, line {line}: {reason}")]
    Corrupt {
        key: String,
        line: usize,
        reason: String,
    },
}

/// A dead-letter object, read leniently.
#[derive(Debug, Default)]
pub struct ReadLetters {
    pub letters: Vec<DeadLetter>,
    pub unreadable: Vec<UnreadableLine>,
}

/// A line of a dead-letter object that is not a dead letter.
#[derive(Debug, Clone)]
pub struct UnreadableLine {
    /// 1-based.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// Which dead letters to select.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub event_type: Option<String>,
    /// A `date=` partition (`YYYY-MM-DD-HH`) or a day prefix (`YYYY-MM-DD`).
    pub date: Option<String>,
}

pub struct DeadLetterStore {
    store: Arc<dyn ObjectStore>,
    /// Unix milliseconds for object keys; injected in tests to force same-millisecond writers.
    clock: fn() -> i64,
}

impl DeadLetterStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        DeadLetterStore {
            store,
            clock: unix_millis_now,
        }
    }

    /// The same store with another clock for object keys (tests: two writers, one millisecond).
    pub fn with_clock(store: Arc<dyn ObjectStore>, clock: fn() -> i64) -> Self {
        DeadLetterStore { store, clock }
    }

    pub fn describe(&self) -> String {
        format!("{}/{}", self.store.describe(), DEAD_LETTER_PREFIX)
    }

    /// Writes the letters durably, one new object per event type and hour; returns the keys
    /// written. On an error some objects may have been written: the caller keeps every letter
    /// unresolved and parks them all again, which only duplicates dead letters, never loses one.
    pub async fn park(&self, letters: &[&DeadLetter]) -> Result<Vec<String>, StoreError> {
        let mut groups: BTreeMap<(String, String), Vec<&DeadLetter>> = BTreeMap::new();
        for letter in letters {
            let date = CurrentsKey::parse(&letter.object)
                .date
                .map_or_else(|| "unknown".to_string(), |d| d.to_string());
            groups
                .entry((letter.event.event_type.to_string(), date))
                .or_default()
                .push(letter);
        }
        let mut keys = Vec::with_capacity(groups.len());
        for ((event_type, date), letters) in groups {
            let key = format!(
                "{DEAD_LETTER_PREFIX}event_type={event_type}/date={date}/{:013}-{}.jsonl",
                (self.clock)(),
                random_name(&self.store, &event_type)?
            );
            self.store.put(&key, to_json_lines(&letters)).await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// The dead-letter objects matching the filter, in key order.
    pub async fn list(&self, filter: &DeadLetterFilter) -> Result<Vec<ObjectMeta>, StoreError> {
        let prefix = match &filter.event_type {
            Some(event_type) => format!("{DEAD_LETTER_PREFIX}event_type={event_type}/"),
            None => DEAD_LETTER_PREFIX.to_string(),
        };
        let mut objects = self.store.list(&prefix).await?;
        if let Some(date) = &filter.date {
            objects.retain(|o| {
                CurrentsKey::parse(&o.key)
                    .date
                    .is_some_and(|d| d.to_string().starts_with(date.as_str()))
            });
        }
        Ok(objects)
    }

    /// Every dead letter in the object; the first line that does not parse is an error.
    pub async fn read(&self, key: &str) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let read = self.read_lenient(key).await?;
        match read.unreadable.into_iter().next() {
            Some(bad) => Err(DeadLetterError::Corrupt {
                key: key.to_string(),
                line: bad.line,
                reason: bad.reason,
            }),
            None => Ok(read.letters),
        }
    }

    /// The dead letters that parse, and the lines that do not (with their text, so that they
    /// can be kept for a person to look at): one damaged line must not strand the others.
    pub async fn read_lenient(&self, key: &str) -> Result<ReadLetters, StoreError> {
        let bytes = self.store.get(key).await?;
        let text = String::from_utf8_lossy(&bytes);
        let mut read = ReadLetters::default();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line) {
                Ok(letter) => read.letters.push(letter),
                Err(e) => read.unreadable.push(UnreadableLine {
                    line: i + 1,
                    text: line.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
        Ok(read)
    }

    /// Replaces the object with just these lines (after the readable ones were replayed).
    pub async fn keep_only(&self, key: &str, lines: &[UnreadableLine]) -> Result<(), StoreError> {
        let mut body = Vec::new();
        for line in lines {
            body.extend_from_slice(line.text.as_bytes());
            body.push(b'\n');
        }
        self.store.put(key, body).await
    }

    pub async fn remove(&self, key: &str) -> Result<(), StoreError> {
        self.store.delete(key).await
    }
}

fn to_json_lines(letters: &[&DeadLetter]) -> Vec<u8> {
    let mut out = Vec::new();
    for letter in letters {
        // A DeadLetter holds only strings, integers and validated JSON: serializing cannot fail.
        serde_json::to_writer(&mut out, letter).expect("dead letters serialize");
        out.push(b'\n');
    }
    out
}

/// 128 random bits from the operating system, as 32 hex digits.
fn random_name(store: &Arc<dyn ObjectStore>, event_type: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        StoreError::new(
            "name a dead-letter object in",
            format!(
                "{}/{DEAD_LETTER_PREFIX}event_type={event_type}/",
                store.describe()
            ),
            StoreErrorKind::Unavailable,
            format!("the operating system's random source failed: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currents::event::{Property, User};
    use crate::store::LocalStore;

    fn event(id: &str, event_type: &str) -> CustomHttpEvent {
        CustomHttpEvent {
            event_type: Arc::from(event_type),
            id: id.into(),
            time: 1,
            user: User {
                external_user_id: Some("alice".into()),
                ..User::default()
            },
            properties: vec![(
                Arc::from("custom_properties"),
                Property::Json(serde_json::from_str(r#"{"a":[1,2]}"#).unwrap()),
            )],
        }
    }

    /// Two writers sharing a state location, as a `run` Deployment and a `backfill` Job do,
    /// each PID 1 in its container, parking in the same millisecond and the same hour.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_in_the_same_millisecond_and_hour_never_overwrite_each_other() {
        let dir =
            std::env::temp_dir().join(format!("currents-heap-dl-race-{}", std::process::id()));
        let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::lazy(&dir));
        let object =
            "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f.avro";
        let same_millisecond = || 1_764_248_400_000;
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let store = Arc::new(DeadLetterStore::with_clock(store.clone(), same_millisecond));
                tokio::spawn(async move {
                    for n in 0..50 {
                        let letter = DeadLetter::new(
                            event(&format!("w{w}-{n}"), "users.behaviors.CustomEvent"),
                            "retries exhausted",
                            object,
                        );
                        store.park(&[&letter]).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let reader = DeadLetterStore::new(store);
        let mut ids = std::collections::HashSet::new();
        for file in reader.list(&DeadLetterFilter::default()).await.unwrap() {
            for letter in reader.read(&file.key).await.unwrap() {
                ids.insert(letter.event.id);
            }
        }
        assert_eq!(ids.len(), 100, "every dead letter survives");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn parks_reads_filters_and_removes() {
        let dir = std::env::temp_dir().join(format!("currents-heap-dl-{}", std::process::id()));
        let store = DeadLetterStore::new(Arc::new(LocalStore::lazy(&dir)));
        let object =
            "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f.avro";
        let keys = store
            .park(&[
                &DeadLetter::new(
                    event("e1", "users.behaviors.CustomEvent"),
                    "Heap rejected it (400)",
                    object,
                ),
                &DeadLetter::new(
                    event("e2", "users.messages.email.Open"),
                    "retries exhausted",
                    "local.avro",
                ),
            ])
            .await
            .unwrap();
        assert_eq!(keys.len(), 2);
        let all = store.list(&DeadLetterFilter::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let by_date = DeadLetterFilter {
            date: Some("2026-11-27".into()),
            ..Default::default()
        };
        let dated = store.list(&by_date).await.unwrap();
        assert_eq!(dated.len(), 1);
        let letters = store.read(&dated[0].key).await.unwrap();
        assert_eq!(letters[0].event, event("e1", "users.behaviors.CustomEvent"));
        assert_eq!(letters[0].reason, "Heap rejected it (400)");
        assert_eq!(letters[0].object, object);
        let by_type = DeadLetterFilter {
            event_type: Some("users.messages.email.Open".into()),
            ..Default::default()
        };
        assert!(
            store.list(&by_type).await.unwrap()[0]
                .key
                .contains("date=unknown")
        );
        store.remove(&dated[0].key).await.unwrap();
        assert_eq!(
            store
                .list(&DeadLetterFilter::default())
                .await
                .unwrap()
                .len(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
