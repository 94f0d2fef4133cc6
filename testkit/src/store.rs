//! Store wrappers for tests, in the manner of object_store's `throttle.rs`: each wraps any
//! [`ObjectStore`] and passes every call through to it, after injecting a fault or a delay.
//!
//! - [`FaultyStore`] fails the n-th read or write (of any key, or of keys under a prefix),
//!   fails reads or writes over a window of time (an outage), each failure of a chosen
//!   [`StoreErrorKind`] (an outage is `Unavailable` unless told otherwise), cuts the stream an `open`
//!   returns after n bytes (a connection reset mid-object, the way an S3 GetObject body fails),
//!   and panics once on opening a key.
//! - [`SlowStore`] waits before every call.
//!
//! Time is tokio's, so a paused test clock drives the outages and the delays.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use currents_heap::store::{
    ObjectMeta, ObjectReader, ObjectStore, Opened, PutCondition, ReadRange, StoreError,
    StoreErrorKind, StoreFuture, Versioned,
};
use tokio::time::Instant;

/// Which calls a fault or a delay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// list, list_folders, get, open
    Reads,
    /// put, delete
    Writes,
}

impl Ops {
    fn of(operation: &str) -> Ops {
        match operation {
            "put" | "delete" => Ops::Writes,
            _ => Ops::Reads,
        }
    }
}

/// Which keys a fault applies to (for a listing, the prefix listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    Any,
    /// Keys starting with this, e.g. `ledger/` or `dead-letters/`.
    Prefix(String),
    Exact(String),
    /// Keys containing this anywhere, e.g. one `event_type=` folder below any prefix.
    Containing(String),
}

impl Keys {
    pub fn prefix(prefix: impl Into<String>) -> Keys {
        Keys::Prefix(prefix.into())
    }

    pub fn exact(key: impl Into<String>) -> Keys {
        Keys::Exact(key.into())
    }

    pub fn containing(part: impl Into<String>) -> Keys {
        Keys::Containing(part.into())
    }

    fn matches(&self, key: &str) -> bool {
        match self {
            Keys::Any => true,
            Keys::Prefix(prefix) => key.starts_with(prefix.as_str()),
            Keys::Exact(exact) => key == exact,
            Keys::Containing(part) => key.contains(part.as_str()),
        }
    }
}

/// One call of a kind to fail, counted from when it was asked for.
struct Nth {
    ops: Ops,
    keys: Keys,
    n: u64,
    seen: u64,
}

/// The next `open` of a matching key streams this many bytes, then fails.
struct Cut {
    keys: Keys,
    after: u64,
}

#[derive(Default)]
struct Faults {
    outage: Option<(Instant, Instant, Ops, StoreErrorKind)>,
    nth: Vec<Nth>,
    cuts: Vec<Cut>,
    panic_on_open: Option<String>,
    /// Calls of these kinds on matching keys fail, every one, with this kind.
    always: Vec<(Ops, Keys, StoreErrorKind)>,
    /// Calls of these kinds on matching keys never answer (a hung server).
    hung: Vec<(Ops, Keys)>,
}

/// A store whose calls fail when told to. Every injected failure is an error the real stores
/// return, of the kind asked for: a passing cause (a 503, a reset connection) by default, a
/// denied one (a 403) for [`FaultyStore::fail_always`].
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
    /// `operation location: reason` of every failure injected, in order.
    injected: Arc<Mutex<Vec<String>>>,
    /// Calls passed through, by kind.
    reads: AtomicU64,
    writes: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::new(Faults::default()),
            injected: Arc::new(Mutex::new(Vec::new())),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// Fails `ops` from `from` until `until` (tokio time).
    pub fn outage(&self, from: Instant, until: Instant, ops: Ops) {
        self.outage_of(from, until, ops, StoreErrorKind::Unavailable);
    }

    /// Fails `ops` from `from` until `until` with errors of `kind`: e.g. `Denied` for a role
    /// whose permission was removed mid-run and given back later.
    pub fn outage_of(&self, from: Instant, until: Instant, ops: Ops, kind: StoreErrorKind) {
        self.faults().outage = Some((from, until, ops, kind));
    }

    /// Fails the `n`-th call (1-based, counted from now) of `ops` on a key matching `keys`;
    /// the calls before and after it pass. Several can be asked for at once.
    pub fn fail_nth(&self, ops: Ops, keys: Keys, n: u64) {
        assert!(n >= 1, "calls are counted from 1");
        self.faults().nth.push(Nth {
            ops,
            keys,
            n,
            seen: 0,
        });
    }

    /// Fails every call of `ops` on a key matching `keys` from now on (for a listing, the
    /// prefix listed): a part of the store that cannot be read or written at all.
    pub fn fail_always(&self, ops: Ops, keys: Keys) {
        self.fail_always_with(ops, keys, StoreErrorKind::Denied);
    }

    /// [`FaultyStore::fail_always`] with errors of `kind`.
    pub fn fail_always_with(&self, ops: Ops, keys: Keys, kind: StoreErrorKind) {
        self.faults().always.push((ops, keys, kind));
    }

    /// Calls of `ops` on a key matching `keys` never answer from now on: a server that hangs.
    pub fn hang(&self, ops: Ops, keys: Keys) {
        self.faults().hung.push((ops, keys));
    }

    /// The next `open` of a key matching `keys` returns a reader that yields the object's
    /// first `after` bytes and then fails with an I/O error (connection reset), as the body of
    /// an S3 GetObject does when the connection drops mid-object. Later opens read it whole.
    pub fn cut_next_open(&self, keys: Keys, after: u64) {
        self.faults().cuts.push(Cut { keys, after });
    }

    /// The next `open` of `key` panics; later ones work.
    pub fn panic_once_on_open(&self, key: &str) {
        self.faults().panic_on_open = Some(key.to_string());
    }

    /// How many failures were injected (a cut counts when its reader fails).
    pub fn failures(&self) -> u64 {
        lock(&self.injected).len() as u64
    }

    /// Every failure injected, as `operation location: reason`, in order.
    pub fn injected(&self) -> Vec<String> {
        lock(&self.injected).clone()
    }

    /// Calls of `ops` passed through to the inner store so far.
    pub fn calls(&self, ops: Ops) -> u64 {
        match ops {
            Ops::Reads => self.reads.load(Ordering::Relaxed),
            Ops::Writes => self.writes.load(Ordering::Relaxed),
        }
    }

    fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    fn error(
        &self,
        operation: &'static str,
        key: &str,
        kind: StoreErrorKind,
        reason: String,
    ) -> StoreError {
        let error = StoreError::new(
            operation,
            format!("{}/{key}", self.inner.describe()),
            kind,
            reason,
        );
        lock(&self.injected).push(error.to_string());
        error
    }

    /// Waits forever if this call hangs, else [`FaultyStore::check`].
    async fn gate(&self, operation: &'static str, key: &str) -> Result<(), StoreError> {
        let ops = Ops::of(operation);
        let hangs = self
            .faults()
            .hung
            .iter()
            .any(|(hung, keys)| *hung == ops && keys.matches(key));
        if hangs {
            std::future::pending::<()>().await;
        }
        self.check(operation, key)
    }

    /// Whether this call fails; counts it toward every `fail_nth` it matches.
    fn check(&self, operation: &'static str, key: &str) -> Result<(), StoreError> {
        let ops = Ops::of(operation);
        let now = Instant::now();
        let failure = {
            let mut faults = self.faults();
            let in_outage = match faults.outage {
                Some((from, until, failing, kind))
                    if failing == ops && now >= from && now < until =>
                {
                    Some(kind)
                }
                _ => None,
            };
            let mut nth_hit = None;
            faults.nth.retain_mut(|nth| {
                if nth.ops != ops || !nth.keys.matches(key) {
                    return true;
                }
                nth.seen += 1;
                if nth.seen == nth.n {
                    nth_hit = Some(nth.n);
                    return false;
                }
                true
            });
            let always = faults
                .always
                .iter()
                .find(|(failing, keys, _)| *failing == ops && keys.matches(key))
                .map(|(_, _, kind)| *kind);
            if let Some(kind) = in_outage {
                Some((kind, format!("injected outage: {}", answer(kind))))
            } else if let Some(kind) = always {
                Some((kind, format!("injected failure: {}", answer(kind))))
            } else {
                nth_hit.map(|n| {
                    let kind = StoreErrorKind::Unavailable;
                    (
                        kind,
                        format!("injected failure of call {n}: {}", answer(kind)),
                    )
                })
            }
        };
        match failure {
            Some((kind, reason)) => Err(self.error(operation, key, kind, reason)),
            None => {
                match ops {
                    Ops::Reads => &self.reads,
                    Ops::Writes => &self.writes,
                }
                .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// What a real store answers for a failure of `kind`.
fn answer(kind: StoreErrorKind) -> &'static str {
    match kind {
        StoreErrorKind::NotFound => "404 NoSuchKey",
        StoreErrorKind::Denied => "403 Forbidden",
        StoreErrorKind::Throttled => "503 SlowDown",
        StoreErrorKind::Unavailable => "503 Service Unavailable",
        StoreErrorKind::PreconditionFailed => "412 Precondition Failed",
        StoreErrorKind::Invalid => "400 Bad Request",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ObjectStore for FaultyStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            self.gate("list", prefix).await?;
            self.inner.list(prefix).await
        })
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.gate("list", prefix).await?;
            self.inner.list_folders(prefix).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.gate("get", key).await?;
            self.inner.get(key).await
        })
    }

    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            let (panic_now, cut) = {
                let mut faults = self.faults();
                let panic_now = faults.panic_on_open.as_deref() == Some(key);
                if panic_now {
                    faults.panic_on_open = None;
                }
                let cut = faults
                    .cuts
                    .iter()
                    .position(|c| c.keys.matches(key))
                    .map(|i| faults.cuts.remove(i).after);
                (panic_now, cut)
            };
            assert!(!panic_now, "injected panic while opening {key}");
            self.gate("get", key).await?;
            let Opened { reader, version } = self.inner.open_range(key, range).await?;
            let reader = match cut {
                Some(after) => Box::new(CutReader {
                    inner: reader,
                    left: after,
                    after,
                    location: format!("{}/{key}", self.inner.describe()),
                    injected: self.injected.clone(),
                    reported: false,
                }) as ObjectReader,
                None => reader,
            };
            Ok(Opened { reader, version })
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.gate("put", key).await?;
            self.inner.put(key, bytes).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.gate("delete", key).await?;
            self.inner.delete(key).await
        })
    }

    /// A read: fails as `get` does.
    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(async move {
            self.gate("get", key).await?;
            self.inner.get_versioned(key).await
        })
    }

    /// A write: fails as `put` does.
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            self.gate("put", key).await?;
            self.inner.put_if(key, bytes, condition).await
        })
    }
}

/// Yields `after` bytes of the object, then fails every read, as a reset connection does.
struct CutReader {
    inner: ObjectReader,
    left: u64,
    after: u64,
    location: String,
    injected: Arc<Mutex<Vec<String>>>,
    reported: bool,
}

impl Read for CutReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let reason = format!(
                "injected: connection reset by peer after {} bytes of the body",
                self.after
            );
            if !self.reported {
                self.reported = true;
                lock(&self.injected).push(format!("get {}: {reason}", self.location));
            }
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, reason));
        }
        let most = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..most])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A store that waits (tokio time) before passing each call on: reads (list, get, open) and
/// writes (put, delete) each by their own delay.
pub struct SlowStore {
    inner: Arc<dyn ObjectStore>,
    reads: Duration,
    writes: Duration,
}

impl SlowStore {
    /// The same delay before every call.
    pub fn new(inner: Arc<dyn ObjectStore>, delay: Duration) -> Self {
        SlowStore::with_delays(inner, delay, delay)
    }

    pub fn with_delays(inner: Arc<dyn ObjectStore>, reads: Duration, writes: Duration) -> Self {
        SlowStore {
            inner,
            reads,
            writes,
        }
    }

    async fn wait(&self, ops: Ops) {
        let delay = match ops {
            Ops::Reads => self.reads,
            Ops::Writes => self.writes,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

impl ObjectStore for SlowStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            self.wait(Ops::Reads).await;
            self.inner.list(prefix).await
        })
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.wait(Ops::Reads).await;
            self.inner.list_folders(prefix).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.wait(Ops::Reads).await;
            self.inner.get(key).await
        })
    }

    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            self.wait(Ops::Reads).await;
            self.inner.open_range(key, range).await
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.wait(Ops::Writes).await;
            self.inner.put(key, bytes).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.wait(Ops::Writes).await;
            self.inner.delete(key).await
        })
    }

    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(async move {
            self.wait(Ops::Reads).await;
            self.inner.get_versioned(key).await
        })
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            self.wait(Ops::Writes).await;
            self.inner.put_if(key, bytes, condition).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use currents_heap::store::LocalStore;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(label: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!(
                "currents-heap-testkit-{label}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        fn store(&self) -> Arc<dyn ObjectStore> {
            Arc::new(LocalStore::new(&self.0))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn fails_exactly_the_nth_matching_call() {
        let dir = Dir::new("nth");
        let store = FaultyStore::new(dir.store());
        store.fail_nth(Ops::Writes, Keys::prefix("ledger/"), 2);
        store.put("other/a", b"x".to_vec()).await.unwrap();
        store.put("ledger/a", b"x".to_vec()).await.unwrap();
        let error = store.put("ledger/b", b"x".to_vec()).await.unwrap_err();
        assert_eq!(error.kind, StoreErrorKind::Unavailable);
        assert!(error.to_string().contains("ledger/b"), "{error}");
        store.put("ledger/b", b"x".to_vec()).await.unwrap();
        store.get("ledger/b").await.unwrap();
        assert_eq!(store.failures(), 1);
        assert_eq!(store.calls(Ops::Writes), 3);
        assert_eq!(store.calls(Ops::Reads), 1);
        assert!(store.injected()[0].starts_with("put "));
    }

    #[tokio::test]
    async fn a_cut_stream_yields_its_bytes_then_fails_once_per_request() {
        let dir = Dir::new("cut");
        let store = FaultyStore::new(dir.store());
        let body: Vec<u8> = (0..100u8).collect();
        store.put("obj", body.clone()).await.unwrap();
        store.cut_next_open(Keys::exact("obj"), 40);
        let mut reader = store.open("obj").await.unwrap();
        let mut got = Vec::new();
        let error = tokio::task::spawn_blocking(move || {
            let e = reader.read_to_end(&mut got).unwrap_err();
            (got, e)
        })
        .await
        .unwrap();
        assert_eq!(error.0, body[..40]);
        assert_eq!(error.1.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(store.failures(), 1);
        // The next request reads the whole object.
        let mut reader = store.open("obj").await.unwrap();
        let whole = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map(|_| all)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(whole, body);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_fails_only_its_kind_and_only_in_its_window() {
        let dir = Dir::new("outage");
        let store = FaultyStore::new(dir.store());
        let start = Instant::now();
        store.outage(
            start + Duration::from_secs(1),
            start + Duration::from_secs(2),
            Ops::Writes,
        );
        store.put("a", vec![1]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(store.put("a", vec![2]).await.is_err());
        assert_eq!(store.get("a").await.unwrap(), vec![1]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.put("a", vec![3]).await.unwrap();
        assert_eq!(store.failures(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_carry_the_kind_asked_for() {
        let dir = Dir::new("kinds");
        let store = FaultyStore::new(dir.store());
        let start = Instant::now();
        store.outage_of(
            start,
            start + Duration::from_secs(1),
            Ops::Writes,
            StoreErrorKind::Denied,
        );
        let denied = store.put("a", vec![1]).await.unwrap_err();
        assert_eq!(denied.kind, StoreErrorKind::Denied);
        assert!(denied.to_string().contains("403"), "{denied}");
        store.fail_always_with(Ops::Reads, Keys::prefix("t/"), StoreErrorKind::Throttled);
        let throttled = store.get("t/x").await.unwrap_err();
        assert_eq!(throttled.kind, StoreErrorKind::Throttled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_store_waits_before_each_call() {
        let dir = Dir::new("slow");
        let store = SlowStore::with_delays(
            dir.store(),
            Duration::from_millis(200),
            Duration::from_secs(3),
        );
        let start = Instant::now();
        store.put("a", vec![1]).await.unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(3), "{took:?}");
        store.get("a").await.unwrap();
        store.list("").await.unwrap();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(3400) && took < Duration::from_millis(3500),
            "{took:?}"
        );
    }
}
