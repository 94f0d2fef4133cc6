//! The start-up probe of conditional writes ([`probe_conditions`]) against a store that
//! ignores them, as an old S3-compatible server ignores `If-None-Match`: it must say so,
//! naming the condition, rather than let two processes both believe they hold the lease.
//! (Every real back-end's conditional writes are checked by `conditional_conformance`, from
//! tests/s3.rs and tests/cloud.rs.)

mod support;

use currents_heap::store::{
    LocalStore, ObjectMeta, ObjectStore, Opened, ProbeFailure, PutCondition, ReadRange,
    StoreFuture, probe_conditions,
};
use support::TempDir;

/// Writes whatever the condition: `put_if` is a plain `put`, answering a made-up token.
struct IgnoresConditions {
    inner: LocalStore,
    /// Which conditions are ignored: a create-only one, a version one, or both.
    ignores_absent: bool,
    ignores_version: bool,
}

impl ObjectStore for IgnoresConditions {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        self.inner.list_folders(prefix)
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        self.inner.get(key)
    }
    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        self.inner.open_range(key, range)
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        self.inner.put(key, bytes)
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.inner.delete(key)
    }
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        let ignored = match condition {
            PutCondition::Absent => self.ignores_absent,
            PutCondition::Version(_) => self.ignores_version,
        };
        if !ignored {
            return self.inner.put_if(key, bytes, condition);
        }
        Box::pin(async move {
            let token = format!("ignored-{}", bytes.len());
            self.inner.put(key, bytes).await?;
            Ok(token)
        })
    }
}

#[tokio::test]
async fn a_store_that_ignores_a_condition_fails_the_probe_naming_it() {
    let scratch = TempDir::new("ignores-conditions");
    let cases = [
        (true, true, "If-None-Match"),
        (true, false, "If-None-Match"),
        (false, true, "If-Match"),
    ];
    for (ignores_absent, ignores_version, named) in cases {
        let store = IgnoresConditions {
            inner: LocalStore::lazy(scratch.0.join("state")),
            ignores_absent,
            ignores_version,
        };
        match probe_conditions(&store, "lease/probe").await {
            Err(failure @ ProbeFailure::Ignored { condition, .. }) => {
                assert!(condition.contains(named), "{failure}");
                let message = failure.to_string();
                assert!(message.contains("lease/probe"), "{message}");
                assert!(message.contains(named), "{message}");
            }
            other => panic!("ignoring ({ignores_absent}, {ignores_version}): {other:?}"),
        }
        assert!(
            store.list("").await.unwrap().is_empty(),
            "the probe removes its object"
        );
    }
    // The same store honouring both passes, at the same key.
    let honest = LocalStore::lazy(scratch.0.join("state"));
    probe_conditions(&honest, "lease/probe").await.unwrap();
    assert!(honest.list("").await.unwrap().is_empty());
}
