//! One small object-store interface for everything currents-heap reads and writes: Currents
//! objects (source), the ledger and dead letters (state). Back-ends: a local directory here;
//! S3 and S3-compatible stores (aws-sdk-s3), Azure Blob Storage and Google Cloud Storage
//! (object_store, in [`cloud`]) beside it.
//!
//! Keys are `/`-separated and relative to the store's root (a directory or `bucket/prefix`).
//! Every store takes every key S3 takes, with S3's meaning: segments may be empty
//! (`exports//currents/...`, which a Braze prefix ending in `/` produces), and `.` and `..`
//! are plain names, never steps up or across. The local store maps keys to file names by a
//! reversible encoding, described in [`local`]. The empty key is not an object. Azure and GCS,
//! through object_store, refuse with an error the keys it cannot name (empty, `.` and `..`
//! segments, a leading or trailing `/`, control characters); see [`cloud`].
//!
//! # Conditional writes
//!
//! [`ObjectStore::put_if`] and [`ObjectStore::get_versioned`] are what a lease is built on;
//! [`probe_conditions`] checks at start-up that a store honours them (5 requests). Per
//! back-end (sources: ../shared/reference/leases-and-checkpoints.md, and the tests named):
//! - S3 ([`s3`]): PutObject with `If-None-Match: *` (create) or `If-Match: "<etag>"`; the
//!   token is the ETag. 412 `PreconditionFailed` and 409 `ConditionalRequestConflict` (a
//!   racing conditional write won) are `PreconditionFailed`, as is 404 `NoSuchKey` on an
//!   `If-Match` (AWS S3 user guide, "conditional writes"). moto honours both, also under
//!   8 racing writers (tests/s3.rs); s3s-fs checks them, but not atomically with the write.
//!   An S3 ETag is the MD5 of a single-part object, so equal bytes give equal tokens: a
//!   lease record should change with every write (a counter).
//! - Azure ([`cloud`], object_store `PutMode::Create` / `PutMode::Update`): `If-None-Match:
//!   *` / `If-Match: <etag>`, 412 `ConditionNotMet` (Azure Blob REST, "specifying
//!   conditional headers"); object_store's `AlreadyExists` / `Precondition`. Azurite
//!   honours both under races (tests/cloud.rs).
//! - GCS ([`cloud`]): `x-goog-if-generation-match: 0` / `<generation>`, 412 (GCS "request
//!   preconditions"); the token holds ETag and generation. fake-gcs-server ignores the
//!   header (tests/cloud.rs records that its probe fails).
//! - A local directory ([`local`]): a temporary file `link`ed to the name (`EEXIST`, POSIX
//!   `link(2)`) or renamed over it after comparing the version, under `flock` on a lock
//!   file beside it; the token is the file's device, inode, modification time and size.

pub mod cloud;
pub mod cloud_env;
pub mod local;
pub mod location;
pub mod retry;
pub mod s3;

use std::future::Future;
use std::io::Read;
use std::pin::Pin;

pub use cloud::CloudStore;
pub use local::LocalStore;
pub use location::Location;
pub use retry::{Next, Notice, StateRetry};
pub use s3::S3Store;

/// A blocking reader over an object's bytes, streamed as they arrive. Use it only on a
/// blocking thread (`spawn_blocking`): for S3 it waits on the async runtime underneath.
pub type ObjectReader = Box<dyn Read + Send>;

/// A boxed future, so the trait can be used as `dyn ObjectStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An object found by a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// A version tag: the S3 ETag, or size and modification time for local files. Together
    /// with the key it tells a re-uploaded object from the one already processed.
    pub etag: String,
}

/// Why a store operation failed, naming the store and the key, and what kind of failure it
/// was: the kind decides the advice (a denied write needs a credential fixed, an outage needs
/// waiting). Never holds credentials or a URL's query string.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {location}: {reason}")]
pub struct StoreError {
    pub operation: &'static str,
    /// `store/key`, e.g. `s3://bucket/prefix/key` or `/var/lib/state/key`.
    pub location: String,
    pub kind: StoreErrorKind,
    /// The back-end's own words (its error code and message), one line.
    pub reason: String,
}

/// What kind of failure a [`StoreError`] is, as every back-end maps its own errors (an HTTP
/// status or S3 error code, an object_store variant, an `io::ErrorKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// No such key (or bucket, container, directory).
    NotFound,
    /// The credentials were refused or lack the permission (HTTP 401/403, a file mode).
    Denied,
    /// The store asked to slow down (HTTP 429, S3's `SlowDown`).
    Throttled,
    /// The store did not answer or failed on its side (5xx, a timeout, a refused or reset
    /// connection, a full disk): a cause that may pass.
    Unavailable,
    /// A condition of the request did not hold (HTTP 412, an object that already exists).
    PreconditionFailed,
    /// The store refused the request as malformed, or cannot hold the key (HTTP 400, a key
    /// object_store cannot name, the empty key).
    Invalid,
}

impl StoreErrorKind {
    /// Whether waiting may help by itself: an outage or throttling. A denied or invalid
    /// request needs someone to change the credentials or the configuration.
    pub fn may_pass(self) -> bool {
        matches!(
            self,
            StoreErrorKind::Throttled
                | StoreErrorKind::Unavailable
                | StoreErrorKind::PreconditionFailed
        )
    }
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreErrorKind::NotFound => "not found",
            StoreErrorKind::Denied => "permission denied",
            StoreErrorKind::Throttled => "throttled",
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::PreconditionFailed => "precondition failed",
            StoreErrorKind::Invalid => "invalid request",
        })
    }
}

impl StoreError {
    pub fn new(
        operation: &'static str,
        location: impl Into<String>,
        kind: StoreErrorKind,
        reason: impl Into<String>,
    ) -> Self {
        StoreError {
            operation,
            location: location.into(),
            kind,
            reason: reason.into(),
        }
    }

    /// The key (or the bucket, container or directory) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }
}

/// Which bytes of which version [`ObjectStore::open_range`] reads. The default is the whole
/// object, whatever its version.
///
/// Offsets are in bytes from the start of the object, as HTTP's `Range: bytes=a-b` (RFC 9110
/// §14.1.2; S3 GetObject `Range`, object_store `GetOptions::range`), but end-exclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadRange {
    /// The first byte (0: the start of the object).
    pub start: u64,
    /// One past the last byte; `None`: to the end of the object.
    pub end: Option<u64>,
    /// Only this version: an object whose ETag is another one is refused with
    /// `StoreErrorKind::PreconditionFailed` (S3/Azure `If-Match`; checked by us as well on the
    /// ETag the response carries, for stores that ignore the header).
    pub if_etag: Option<String>,
}

impl ReadRange {
    /// From `start` to the end of the object.
    pub fn starting_at(start: u64) -> Self {
        ReadRange {
            start,
            ..ReadRange::default()
        }
    }

    /// Only if the object's ETag is still `etag` (quotes or none, as a listing gives it).
    pub fn of_version(self, etag: impl Into<String>) -> Self {
        ReadRange {
            if_etag: Some(etag.into()),
            ..self
        }
    }

    /// Whether this asks for the whole object (no `Range` header is sent).
    pub fn is_whole(&self) -> bool {
        self.start == 0 && self.end.is_none()
    }

    /// The HTTP form, `bytes=a-b` (inclusive) or `bytes=a-`, for requests and messages.
    pub fn header(&self) -> String {
        match self.end {
            Some(end) => format!("bytes={}-{}", self.start, end.saturating_sub(1)),
            None => format!("bytes={}-", self.start),
        }
    }

    /// Why no store can serve this range, if so: an empty range (`end <= start`) has no HTTP
    /// form, and is refused before any request.
    pub fn refusal(&self) -> Option<String> {
        match self.end {
            Some(end) if end <= self.start => Some(format!(
                "an empty byte range ({}..{end}) cannot be read",
                self.start
            )),
            _ => None,
        }
    }

    /// Whether `etag` (as a response gave it, quoted or not) is the version asked for.
    pub fn admits(&self, etag: &str) -> bool {
        self.if_etag
            .as_deref()
            .is_none_or(|wanted| unquoted(wanted) == unquoted(etag))
    }
}

/// An ETag without its quotes (and without a weak `W/` mark): the form listings report, and
/// the one compared.
pub fn unquoted(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

/// An object being read: its bytes as they arrive, and the version they belong to.
pub struct Opened {
    pub reader: ObjectReader,
    /// The key, and the WHOLE object's size and ETag as this read's response gave them
    /// (not a listing's, and not the range's length).
    pub version: ObjectMeta,
}

/// The whole object, of any version: what [`ObjectStore::open`] reads.
const WHOLE: ReadRange = ReadRange {
    start: 0,
    end: None,
    if_etag: None,
};

pub trait ObjectStore: Send + Sync {
    /// Where this store points, for messages: `s3://bucket/prefix` or a directory.
    fn describe(&self) -> String;

    /// Every object whose key starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>>;

    /// The objects whose key starts with `prefix`, sorts strictly after `start_after` and,
    /// given `end`, strictly before `end`, in key order: S3's `StartAfter`, so a listing of
    /// one slice of a large folder costs a request per 1,000 keys in the slice, not in the
    /// folder. Keys sort by their UTF-8 bytes, as S3 sorts them (and as `str` compares).
    ///
    /// E.g. `list_range("f/", "f/date=2026-11-27-13", Some("f/date=2026-11-27-15"))` gives
    /// every key under `f/date=2026-11-27-13/` and `f/date=2026-11-27-14/`: a start without
    /// the trailing `/` sorts before every key of its hour, and an end without it before
    /// every key of the hour it names.
    ///
    /// The default filters [`ObjectStore::list`] of the whole prefix, which is right for
    /// stores where a listing costs no request (a directory); S3 overrides it.
    fn list_range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: &'a str,
        end: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(async move {
            let mut found = self.list(prefix).await?;
            found.retain(|meta| in_range(&meta.key, start_after, end));
            Ok(found)
        })
    }

    /// The "folders" directly below `prefix` (which ends in `/` or is empty), each ending in
    /// `/`: a listing with a delimiter, so finding `event_type=` folders costs one call per level.
    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>>;

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>>;

    /// Streams `range` of an object (see [`ReadRange`]) with the version it belongs to, so
    /// memory does not grow with the object's size.
    ///
    /// `version` is the whole object's key, size (bytes) and ETag as this read's response
    /// gave them: S3 GetObject's `ETag` and `Content-Range: bytes a-b/SIZE` (or
    /// `Content-Length` for a whole read), object_store's `GetResult::meta` (which it takes
    /// from the same headers), a local file's length and modification time. The ETag has the
    /// form a listing of the same store reports, so the two compare.
    ///
    /// An `end` past the object's end reads to its end (as HTTP ranges do). Errors:
    /// `NotFound` for a missing key; `PreconditionFailed` when `if_etag` is given and the
    /// object is another version; `Invalid`, naming the range, for an empty range or a start
    /// at or past the object's end (S3's 416 `InvalidRange`), except that the whole of an
    /// empty object reads as nothing.
    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened>;

    /// Streams the whole object, so memory does not grow with its size: `open_range` of
    /// everything, its reader.
    fn open<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectReader> {
        Box::pin(async move { Ok(self.open_range(key, &WHOLE).await?.reader) })
    }

    /// Writes the whole object; readers see the old or the new content, never a mix.
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()>;

    /// Deleting a missing key is not an error.
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;

    /// The whole object and its version token, for a later [`ObjectStore::put_if`]: the
    /// lease's read. Errors: `NotFound` for a missing key.
    ///
    /// The default refuses (`Invalid`): a store that cannot do conditional writes cannot
    /// hold a lease (see [`probe_conditions`]).
    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(async move { Err(no_conditions(self, "get", key)) })
    }

    /// Writes the whole object only if `condition` holds, atomically with the check (the
    /// store's own compare-and-swap: S3 `If-None-Match: *` / `If-Match`, Azure ETags, GCS
    /// generations, a link or lock for a directory), and returns the new version's token.
    ///
    /// Errors: `PreconditionFailed` when the condition does not hold (the key exists for
    /// [`PutCondition::Absent`]; it is missing or another version for
    /// [`PutCondition::Version`]), including a store's "conflicting conditional write"
    /// (S3's 409 `ConditionalRequestConflict`): whoever wrote first won. The default refuses
    /// (`Invalid`).
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        let _ = (bytes, condition);
        Box::pin(async move { Err(no_conditions(self, "put", key)) })
    }
}

/// The condition of an [`ObjectStore::put_if`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if no object has the key (create).
    Absent,
    /// Only if the object is still the version this token names (a token from
    /// [`ObjectStore::get_versioned`] or [`ObjectStore::put_if`] of the same store).
    Version(String),
}

/// An object's bytes and its version token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub bytes: Vec<u8>,
    /// Opaque: only the store that gave it compares it (an S3/Azure ETag, a GCS ETag and
    /// generation, a local file's content version).
    pub version: String,
}

fn no_conditions(
    store: &(impl ObjectStore + ?Sized),
    operation: &'static str,
    key: &str,
) -> StoreError {
    StoreError::new(
        operation,
        format!("{}/{key}", store.describe()),
        StoreErrorKind::Invalid,
        "this store does not support conditional writes",
    )
}

/// Whether `key` sorts strictly after `start_after` and strictly before `end` (if any), by
/// UTF-8 bytes: the bounds of [`ObjectStore::list_range`].
pub fn in_range(key: &str, start_after: &str, end: Option<&str>) -> bool {
    key > start_after && end.is_none_or(|end| key < end)
}

/// Why [`probe_conditions`] found a store unfit to hold a lease.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    /// The probe itself failed (denied, unavailable, not supported): the error says which.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The store accepted a write whose condition did not hold: it ignores the header (some
    /// S3-compatible servers), so two processes could both believe they hold the lease.
    #[error(
        "{location}: the store ignored {condition}: a second write that should have been refused succeeded, so it cannot keep two processes from sending at once"
    )]
    Ignored {
        location: String,
        condition: &'static str,
    },
}

/// Checks that `store` honours [`ObjectStore::put_if`]'s conditions, on a fresh `key` it
/// creates and deletes: a create of an existing key must be refused, a replace of the
/// current version must succeed, and a replace of the version before it (a token the store
/// itself gave, now stale: what a process that lost the lease would send) must be refused.
/// The first write is also read back, and the delete must succeed: the probe is the one
/// check at start that the state can be written, read and deleted (`commands::check`).
/// 6 requests: 4 conditional PUTs, a GET and a DELETE.
///
/// The stale token is a real one rather than a forged string: a token may hold more than
/// one part (GCS's ETag and generation), and text appended to it would change only one of
/// them, so a store could be probed on the part it does not compare.
pub async fn probe_conditions(store: &dyn ObjectStore, key: &str) -> Result<(), ProbeFailure> {
    let location = format!("{}/{key}", store.describe());
    let refused = |result: Result<String, StoreError>, condition| match result {
        Err(e) if e.kind == StoreErrorKind::PreconditionFailed => Ok(()),
        Err(e) => Err(ProbeFailure::Store(e)),
        Ok(_) => Err(ProbeFailure::Ignored {
            location: location.clone(),
            condition,
        }),
    };
    let first = store
        .put_if(key, b"1".to_vec(), &PutCondition::Absent)
        .await?;
    let outcome = async {
        read_back(store, key, b"1").await?;
        refused(
            store
                .put_if(key, b"2".to_vec(), &PutCondition::Absent)
                .await,
            "a create-only condition (If-None-Match: *)",
        )?;
        let stale = PutCondition::Version(first);
        store.put_if(key, b"3".to_vec(), &stale).await?;
        refused(
            store.put_if(key, b"4".to_vec(), &stale).await,
            "a version condition (If-Match)",
        )?;
        Ok(())
    }
    .await;
    // The probe object goes whatever the outcome; a failed delete leaves a small object,
    // and is the outcome only when all else passed (a state the worker cannot delete in
    // would keep every checkpoint it ends).
    let deleted = store.delete(key).await;
    outcome.and(deleted.map_err(ProbeFailure::Store))
}

/// Reads `key` back and checks that it holds `written`: an error names the key otherwise.
pub async fn read_back(
    store: &dyn ObjectStore,
    key: &str,
    written: &[u8],
) -> Result<(), StoreError> {
    let read = store.get(key).await?;
    if read != written {
        return Err(StoreError::new(
            "get",
            format!("{}/{key}", store.describe()),
            StoreErrorKind::Invalid,
            format!(
                "read back {} bytes other than the {} just written: the store does not keep what it is given",
                read.len(),
                written.len()
            ),
        ));
    }
    Ok(())
}
