//! A store wrapper that injects faults, as object_store's `throttle.rs` wraps any store:
//! an outage of reads or writes over a window of (tokio, so pausable) time, and a panic on
//! opening one key, once.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use currents_heap::store::{ObjectMeta, ObjectReader, ObjectStore, StoreError, StoreFuture};
use tokio::time::Instant;

/// Which operations an outage fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// list, list_folders, get, open
    Reads,
    /// put, delete
    Writes,
}

pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    outage: Mutex<Option<(Instant, Instant, Ops)>>,
    panic_on_open: Mutex<Option<String>>,
    /// Operations the outage failed.
    pub failures: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        FaultyStore {
            inner,
            outage: Mutex::new(None),
            panic_on_open: Mutex::new(None),
            failures: AtomicU64::new(0),
        }
    }

    /// Fails `ops` from `from` until `until` (tokio time).
    pub fn outage(&self, from: Instant, until: Instant, ops: Ops) {
        *self.outage.lock().unwrap() = Some((from, until, ops));
    }

    /// The next `open` of `key` panics; later ones work.
    pub fn panic_once_on_open(&self, key: &str) {
        *self.panic_on_open.lock().unwrap() = Some(key.to_string());
    }

    fn check(&self, ops: Ops, operation: &'static str, key: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        match *self.outage.lock().unwrap() {
            Some((from, until, failing)) if failing == ops && now >= from && now < until => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                Err(StoreError {
                    operation,
                    location: format!("{}/{key}", self.inner.describe()),
                    reason: "injected outage: 503 Service Unavailable".into(),
                    not_found: false,
                })
            }
            _ => Ok(()),
        }
    }
}

impl ObjectStore for FaultyStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            self.check(Ops::Reads, "list", prefix)?;
            self.inner.list(prefix).await
        })
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.check(Ops::Reads, "list", prefix)?;
            self.inner.list_folders(prefix).await
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            self.check(Ops::Reads, "get", key)?;
            self.inner.get(key).await
        })
    }

    fn open<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectReader> {
        Box::pin(async move {
            let panic_now = {
                let mut target = self.panic_on_open.lock().unwrap();
                if target.as_deref() == Some(key) {
                    target.take();
                    true
                } else {
                    false
                }
            };
            assert!(!panic_now, "injected panic while opening {key}");
            self.check(Ops::Reads, "get", key)?;
            self.inner.open(key).await
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check(Ops::Writes, "put", key)?;
            self.inner.put(key, bytes).await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.check(Ops::Writes, "delete", key)?;
            self.inner.delete(key).await
        })
    }
}
