//! What a long-lived `run` knows is finished, kept between polls so that an idle poll reads
//! nothing from the state.
//!
//! Per `event_type=` folder: the finished versions of its objects, and the `date=` hours of
//! the ledger they were read from (`loaded`, one contiguous range). A poll reads the ledger
//! only for hours of a folder it has not loaded yet, and only when the folder holds an object
//! there that is not known finished: the first poll loads the window of every folder with
//! objects; later, when the window slides into a new hour and objects appear in it, one
//! ranged listing loads the hours from the end of `loaded` to the end of the window. What the
//! engine records (done or failed) is added as it ends, so the ledger never has to be read
//! again for a loaded hour. Hours that leave the window are forgotten, so memory follows the
//! window, not the run's age. A restart begins empty, and its first poll loads again.
//!
//! This holds because the ledger has one writer per source and state (see
//! [`crate::ledger`]): what this process did not record in a loaded hour, nobody did.
//!
//! `Window::All` has no hours to slide: the whole ledger is read once, at the first poll
//! with objects, and kept.

use std::collections::HashMap;

use crate::currents::key::DateHour;
use crate::ledger::{Entry, Finished};
use crate::source::{event_type_folder, folder_hour};
use crate::store::ObjectMeta;

/// The `date=` hours `from` (inclusive) to `to` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hours {
    pub from: DateHour,
    pub to: DateHour,
}

impl Hours {
    fn contains(self, hour: DateHour) -> bool {
        self.from <= hour && hour < self.to
    }

    fn is_empty(self) -> bool {
        self.from >= self.to
    }
}

/// One folder: what was read of its ledger, and what has been recorded since.
#[derive(Debug)]
struct Folder {
    loaded: Hours,
    finished: Finished,
}

/// What is known finished, per `event_type=` folder (a source key prefix ending in `/`).
#[derive(Debug, Default)]
pub struct FinishedSet {
    folders: HashMap<String, Folder>,
    /// `Window::All`: the whole ledger, once read.
    everything: Option<Finished>,
}

impl FinishedSet {
    /// Forgets the hours before `from`, which have left the window: their entries, and the
    /// folders with no loaded hour left.
    pub fn forget_before(&mut self, from: DateHour) {
        self.folders.retain(|folder, state| {
            if state.loaded.from < from {
                state.loaded.from = from;
                state
                    .finished
                    .retain(|key| folder_hour(folder, key).is_some_and(|h| h >= from));
            }
            !state.loaded.is_empty()
        });
    }

    /// The hours of `folder`'s ledger to read before `objects` (all in `folder` and in
    /// `window`) can be told apart, or `None` if each one is known finished or lies in a
    /// loaded hour. The first read of a folder is the whole window; later ones are the hours
    /// between what is loaded and the window's edge, so one listing extends `loaded`.
    pub fn to_load<'m>(
        &self,
        folder: &str,
        window: Hours,
        objects: impl IntoIterator<Item = &'m ObjectMeta>,
    ) -> Option<Hours> {
        let state = self.folders.get(folder);
        let (mut below, mut above) = (false, false);
        for meta in objects {
            let Some(hour) = folder_hour(folder, &meta.key) else {
                continue;
            };
            match state {
                None => return Some(window),
                Some(state) if state.loaded.contains(hour) => {}
                Some(state)
                    if state
                        .finished
                        .outcome(&meta.key, meta.size, &meta.etag)
                        .is_some() => {}
                Some(state) => {
                    below |= hour < state.loaded.from;
                    above |= hour >= state.loaded.to;
                }
            }
        }
        let loaded = state?.loaded;
        // Hours both below and above what is loaded (the clock stepped back, then on): one
        // listing of the window, rather than two.
        let hours = match (below, above) {
            (false, false) => return None,
            (true, true) => window,
            (true, false) => Hours {
                from: window.from,
                to: loaded.from,
            },
            (false, true) => Hours {
                from: loaded.to,
                to: window.to,
            },
        };
        Some(hours)
    }

    /// Adds what one ledger read of `folder` over `hours` (as [`FinishedSet::to_load`] asked
    /// for) found, and marks those hours loaded.
    pub fn loaded(&mut self, folder: &str, hours: Hours, finished: Finished) {
        match self.folders.get_mut(folder) {
            Some(state) => {
                state.loaded = Hours {
                    from: state.loaded.from.min(hours.from),
                    to: state.loaded.to.max(hours.to),
                };
                state.finished.extend(finished);
            }
            None => {
                self.folders.insert(
                    folder.to_string(),
                    Folder {
                        loaded: hours,
                        finished,
                    },
                );
            }
        }
    }

    /// Whether the version `meta` names is known finished.
    pub fn contains(&self, meta: &ObjectMeta) -> bool {
        let known =
            |finished: &Finished| finished.outcome(&meta.key, meta.size, &meta.etag).is_some();
        if self.everything.as_ref().is_some_and(known) {
            return true;
        }
        event_type_folder(&meta.key)
            .and_then(|folder| self.folders.get(folder))
            .is_some_and(|state| known(&state.finished))
    }

    /// Whether the ledger read held a checkpoint of the version `meta` names (see
    /// [`Finished::has_checkpoint`]).
    pub fn has_checkpoint(&self, meta: &ObjectMeta) -> bool {
        let listed =
            |finished: &Finished| finished.has_checkpoint(&meta.key, meta.size, &meta.etag);
        self.everything.as_ref().is_some_and(listed)
            || event_type_folder(&meta.key)
                .and_then(|folder| self.folders.get(folder))
                .is_some_and(|state| listed(&state.finished))
    }

    /// `Window::All`: whether the whole ledger has been read.
    pub fn has_everything(&self) -> bool {
        self.everything.is_some()
    }

    /// `Window::All`: what a read of the whole ledger found.
    pub fn loaded_everything(&mut self, finished: Finished) {
        self.everything = Some(finished);
    }

    /// Adds an object version the engine has just recorded done or failed. Outside the
    /// loaded hours it is left out: an hour not loaded is read from the ledger, which has it.
    pub fn insert(&mut self, entry: &Entry) {
        if let Some(everything) = &mut self.everything {
            everything.insert(entry);
        }
        let Some(folder) = event_type_folder(&entry.key) else {
            return;
        };
        if let Some(state) = self.folders.get_mut(folder)
            && folder_hour(folder, &entry.key).is_some_and(|h| state.loaded.contains(h))
        {
            state.finished.insert(entry);
        }
    }

    /// Versions held, over every folder: what memory follows.
    pub fn len(&self) -> usize {
        self.folders
            .values()
            .map(|f| f.finished.len())
            .sum::<usize>()
            + self.everything.as_ref().map_or(0, Finished::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hours of `folder` loaded, if any.
    pub fn loaded_hours(&self, folder: &str) -> Option<Hours> {
        self.folders.get(folder).map(|f| f.loaded)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;
    use crate::ledger::{Ledger, Outcome};
    use crate::source::Window;
    use crate::store::{LocalStore, ObjectStore, Opened, ReadRange, StoreFuture};
    use crate::worker::discovery::find_unfinished;
    use crate::worker::scheduler::Work;

    const A: &str = "c/d/event_type=A/";
    const B: &str = "c/d/event_type=B/";
    /// An hour, as hours since the epoch: the tests set the window, not the clock.
    const NOW: i64 = 500_000;

    fn hour(n: i64) -> DateHour {
        DateHour::from_hours_since_epoch(n)
    }

    /// The 72 h lookback's window at `now`.
    fn window(now: i64) -> Window {
        Window::Hours {
            from: hour(now - 72),
            to: hour(now + 2),
        }
    }

    fn key(folder: &str, at: i64, name: &str) -> String {
        format!("{folder}date={}/612/z/{name}.avro", hour(at))
    }

    /// A local store that logs the calls it passes on, listings with their arguments.
    struct Counting {
        inner: LocalStore,
        calls: Mutex<Vec<String>>,
    }

    impl Counting {
        fn new(dir: &std::path::Path) -> Arc<Self> {
            Arc::new(Counting {
                inner: LocalStore::lazy(dir),
                calls: Mutex::new(Vec::new()),
            })
        }

        fn log(&self, call: String) {
            self.calls
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(call);
        }

        /// The reads logged since the last call.
        fn take_reads(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .filter(|c| !c.starts_with("put "))
                .collect()
        }
    }

    impl ObjectStore for Counting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
            self.log(format!("list {prefix}"));
            self.inner.list(prefix)
        }
        fn list_range<'a>(
            &'a self,
            prefix: &'a str,
            start_after: &'a str,
            end: Option<&'a str>,
        ) -> StoreFuture<'a, Vec<ObjectMeta>> {
            self.log(format!("list_range {prefix} {start_after} {end:?}"));
            self.inner.list_range(prefix, start_after, end)
        }
        fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
            self.log(format!("list_folders {prefix}"));
            self.inner.list_folders(prefix)
        }
        fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
            self.log(format!("get {key}"));
            self.inner.get(key)
        }
        fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
            match range.is_whole() {
                true => self.log(format!("open {key}")),
                false => self.log(format!("open {key} {}", range.header())),
            }
            self.inner.open_range(key, range)
        }
        fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
            self.log(format!("put {key}"));
            self.inner.put(key, bytes)
        }
        fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
            self.log(format!("delete {key}"));
            self.inner.delete(key)
        }
        fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, crate::store::Versioned> {
            self.log(format!("get {key} (versioned)"));
            self.inner.get_versioned(key)
        }
        fn put_if<'a>(
            &'a self,
            key: &'a str,
            bytes: Vec<u8>,
            condition: &'a crate::store::PutCondition,
        ) -> StoreFuture<'a, String> {
            self.log(format!("put {key} (conditional)"));
            self.inner.put_if(key, bytes, condition)
        }
    }

    /// A source and a state in temporary directories, removed when dropped.
    struct Stores {
        dir: std::path::PathBuf,
        source: Arc<Counting>,
        state: Arc<Counting>,
        ledger: Ledger,
    }

    impl Stores {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "currents-heap-finished-{label}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            // A local state that does not exist is an error, not an empty ledger.
            std::fs::create_dir_all(dir.join("state")).unwrap();
            let source = Counting::new(&dir.join("source"));
            let state = Counting::new(&dir.join("state"));
            let ledger = Ledger::new(state.clone());
            Stores {
                dir,
                source,
                state,
                ledger,
            }
        }

        async fn upload(&self, key: &str) -> ObjectMeta {
            self.source.put(key, key.as_bytes().to_vec()).await.unwrap();
            self.source.take_reads();
            self.source.inner.list(key).await.unwrap().remove(0)
        }

        /// What the pipeline does when an object ends done: one ledger marker.
        async fn record(&self, meta: &ObjectMeta) -> Entry {
            let entry = Entry::new(meta, Outcome::Done);
            self.ledger.record(&entry).await.unwrap();
            entry
        }

        /// One poll: the keys it would queue.
        async fn poll(&self, now: i64, known: Option<&mut FinishedSet>) -> Vec<String> {
            let (_, work) = find_unfinished(&*self.source, &self.ledger, &window(now), known)
                .await
                .unwrap();
            work.iter().map(|w| w.key().to_string()).collect()
        }
    }

    impl Drop for Stores {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn ledger_range(folder: &str, from: i64, to: i64) -> String {
        format!(
            "list_range ledger/{folder} ledger/{folder}date={} Some(\"ledger/{folder}date={}\")",
            hour(from),
            hour(to)
        )
    }

    #[tokio::test]
    async fn an_idle_poll_reads_no_state_and_what_the_engine_recorded_is_not_queued_again() {
        let stores = Stores::new("idle");
        let a1 = stores.upload(&key(A, NOW - 5, "a1")).await;
        let a2 = stores.upload(&key(A, NOW - 1, "a2")).await;
        let b1 = stores.upload(&key(B, NOW - 3, "b1")).await;
        stores.upload(&key(A, NOW - 100, "old")).await;
        stores.upload(&key(B, NOW + 5, "future")).await;
        // Recorded by a process before this one.
        stores.record(&a1).await;
        stores.state.take_reads();

        let mut known = FinishedSet::default();
        let queued = stores.poll(NOW, Some(&mut known)).await;
        assert_eq!(
            queued,
            [b1.key.as_str(), a2.key.as_str()],
            "oldest first; a1 was done"
        );
        assert_eq!(
            stores.state.take_reads(),
            [
                ledger_range(A, NOW - 72, NOW + 2),
                ledger_range(B, NOW - 72, NOW + 2)
            ],
            "the first poll reads each folder's window once"
        );
        let source_reads = stores.source.take_reads();
        assert_eq!(
            source_reads
                .iter()
                .filter(|c| c.starts_with("list_range "))
                .count(),
            2,
            "{source_reads:?}"
        );
        assert!(
            source_reads.iter().all(|c| !c.starts_with("list ")),
            "{source_reads:?}"
        );

        // The engine records both as they end.
        for meta in [&a2, &b1] {
            let entry = stores.record(meta).await;
            known.insert(&entry);
        }
        assert!(stores.poll(NOW, Some(&mut known)).await.is_empty());
        assert!(
            stores.state.take_reads().is_empty(),
            "an idle poll reads nothing from the state"
        );

        // A new object in a loaded hour is queued without a read; once the engine has
        // recorded it, it is not queued again, though only the set knows it.
        let a3 = stores.upload(&key(A, NOW, "a3")).await;
        assert_eq!(stores.poll(NOW, Some(&mut known)).await, [a3.key.as_str()]);
        known.insert(&Entry::new(&a3, Outcome::Done));
        assert!(stores.poll(NOW, Some(&mut known)).await.is_empty());
        assert!(stores.state.take_reads().is_empty());

        // A restart knows nothing: its first poll reads again, and queues what the ledger lacks.
        let mut restarted = FinishedSet::default();
        assert_eq!(
            stores.poll(NOW, Some(&mut restarted)).await,
            [a3.key.as_str()]
        );
        assert_eq!(stores.state.take_reads().len(), 2);
    }

    #[tokio::test]
    async fn a_slide_into_a_new_hour_loads_only_that_hour_where_objects_are() {
        let stores = Stores::new("slide");
        let edge = stores.upload(&key(A, NOW - 72, "edge")).await;
        let b1 = stores.upload(&key(B, NOW - 3, "b1")).await;
        let mut known = FinishedSet::default();
        assert_eq!(
            stores.poll(NOW, Some(&mut known)).await,
            [edge.key.as_str(), b1.key.as_str()]
        );
        for meta in [&edge, &b1] {
            known.insert(&stores.record(meta).await);
        }
        assert_eq!(known.len(), 2);
        stores.state.take_reads();

        // Two hours later the window holds NOW + 3; objects arrive there in A only, one of
        // them already recorded (by a backfill, say).
        let n1 = stores.upload(&key(A, NOW + 3, "n1")).await;
        let n2 = stores.upload(&key(A, NOW + 3, "n2")).await;
        stores.record(&n1).await;
        stores.state.take_reads();
        assert_eq!(
            stores.poll(NOW + 2, Some(&mut known)).await,
            [n2.key.as_str()]
        );
        assert_eq!(
            stores.state.take_reads(),
            [ledger_range(A, NOW + 2, NOW + 4)],
            "only the hours of A past what was loaded, and nothing of B"
        );
        assert_eq!(
            known.loaded_hours(A),
            Some(Hours {
                from: hour(NOW - 70),
                to: hour(NOW + 4)
            })
        );
        assert!(
            !known.contains(&edge),
            "the hour that left the window is forgotten"
        );
        assert_eq!(known.len(), 2, "b1 and n1; edge is gone");

        known.insert(&stores.record(&n2).await);
        assert!(stores.poll(NOW + 2, Some(&mut known)).await.is_empty());
        assert!(stores.state.take_reads().is_empty());

        // Once the window has passed a folder's every loaded hour, the folder is forgotten.
        known.forget_before(hour(NOW + 10));
        assert!(known.is_empty() && known.loaded_hours(A).is_none());
    }

    #[tokio::test]
    async fn a_bounded_poll_reads_one_range_per_folder_with_objects() {
        let stores = Stores::new("bounded");
        let a1 = stores.upload(&key(A, NOW - 5, "a1")).await;
        stores.upload(&key(B, NOW - 100, "old")).await;
        stores.record(&a1).await;
        stores.state.take_reads();
        for _ in 0..2 {
            assert!(stores.poll(NOW, None).await.is_empty());
            assert_eq!(
                stores.state.take_reads(),
                [ledger_range(A, NOW - 72, NOW + 2)],
                "B has no object in the window, so its ledger is not read"
            );
        }
    }

    #[tokio::test]
    async fn a_live_run_over_every_hour_reads_the_ledger_once() {
        let stores = Stores::new("all");
        let a1 = stores.upload(&key(A, NOW - 500, "a1")).await;
        let outside = stores.upload("c/elsewhere/x.avro").await;
        let mut known = FinishedSet::default();
        let (_, work) = find_unfinished(
            &*stores.source,
            &stores.ledger,
            &Window::All,
            Some(&mut known),
        )
        .await
        .unwrap();
        assert_eq!(work.len(), 2);
        assert!(matches!(&work[1], Work::OutsideLayout(m) if m.key == outside.key));
        assert_eq!(stores.state.take_reads(), ["list ledger/"]);
        known.insert(&stores.record(&a1).await);
        known.insert(&Entry::new(&outside, Outcome::Failed));
        let (_, work) = find_unfinished(
            &*stores.source,
            &stores.ledger,
            &Window::All,
            Some(&mut known),
        )
        .await
        .unwrap();
        assert!(work.is_empty());
        assert!(stores.state.take_reads().is_empty());
    }
}
