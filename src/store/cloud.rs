//! Azure Blob Storage and Google Cloud Storage, through the `object_store` crate (arrow-rs):
//! one client crate for both, on the reqwest + rustls stack the Heap client already uses.
//!
//! Credentials follow each cloud's conventions; [`super::Location::open`] builds the client
//! from the environment (see docs/reference/stores.md).
//! Error messages name the store and the key, are one line, and never hold an account key,
//! a SAS token or a bearer token: object_store hides signed URLs, and [`CloudStore`] blanks
//! every secret it was configured with besides.
//!
//! # Keys these stores cannot hold
//!
//! object_store names objects by its `Path`, which has no empty segment, no `.` or `..`
//! segment, no leading or trailing `/` and no ASCII control character. Both services take
//! such names; object_store does not. Rather than map two keys to one (`Path::from` would
//! drop the empty segment of `a//b` and re-encode `%`), every key goes through
//! [`Path::parse`], which keeps the key byte for byte or refuses it, and a refused key fails
//! with an error that says why. A listing over an object whose name object_store cannot
//! parse fails too, naming it: such an object is never skipped in silence. Everything else
//! (`%`, `+`, `=`, spaces, any Unicode, 1,024 bytes) is held exactly.
//!
//! # Listing cost
//!
//! A listing asks the service for the folder part of the prefix and filters the rest here
//! (object_store lists by folder). [`ObjectStore::list_range`] passes its start to the
//! service (`startFrom` on Azure, `start-after` on GCS), so a slice of a large folder costs
//! a request per page of the slice, and stops reading pages at the first key past its end.
//! Every HTTP request, credential requests included, is counted in `/metrics` as
//! `currents_heap_requests_total{service="azure"|"gcs",operation=…}`.
//!
//! # Conditional writes
//!
//! [`ObjectStore::put_if`] is object_store's `put_opts` with `PutMode::Create` (Azure
//! `If-None-Match: *`, GCS `x-goog-if-generation-match: 0`) or `PutMode::Update` (Azure
//! `If-Match: <etag>`, GCS `x-goog-if-generation-match: <generation>`). Azure compares
//! ETags, GCS generations, so the version token carries both: `<e_tag>\n<version>`, each
//! part as object_store's `ObjectMeta`/`PutResult` gives it, empty when absent (see
//! `version_token`). object_store's `AlreadyExists` and `Precondition` are
//! `PreconditionFailed`.

use std::sync::Arc;

use futures_util::StreamExt;
use object_store::client::{HttpClient, HttpConnector, HttpService, ReqwestConnector};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectStore as _, ObjectStoreExt as _, PutMode, PutOptions, PutPayload,
    UpdateVersion,
};
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{
    ObjectMeta, ObjectStore, Opened, PutCondition, ReadRange, StoreError, StoreErrorKind,
    StoreFuture, Versioned, in_range, unquoted,
};
use crate::telemetry::Metrics;
use crate::telemetry::events::StoreRequest;

/// Longest error reason kept: the service's answer can carry a whole XML body.
const MAX_REASON: usize = 400;

pub struct CloudStore {
    inner: Arc<dyn object_store::ObjectStore>,
    /// `az://container/` or `gs://bucket/`, for messages.
    root: String,
    /// Empty or ending in `/`; every key is relative to it.
    prefix: String,
    /// Values blanked out of every message: keys, SAS tokens, bearer tokens.
    secrets: Vec<String>,
}

impl CloudStore {
    /// A store over `inner` (whose names start at the container or bucket), for keys under
    /// `prefix`. `root` names it in messages; `secrets` are never shown.
    pub fn new(
        inner: Arc<dyn object_store::ObjectStore>,
        root: &str,
        prefix: &str,
        secrets: Vec<String>,
    ) -> Self {
        let prefix = prefix.trim_matches('/');
        CloudStore {
            inner,
            root: format!("{}/", root.trim_end_matches('/')),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            secrets: secrets.into_iter().filter(|s| s.len() >= 4).collect(),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A key this store cannot name or list under: refused before any request.
    fn error(&self, operation: &'static str, key: &str, reason: String) -> StoreError {
        StoreError::new(
            operation,
            format!("{}{}", self.root, self.full_key(key)),
            StoreErrorKind::Invalid,
            self.one_line(&reason),
        )
    }

    fn store_error(
        &self,
        operation: &'static str,
        key: &str,
        e: &object_store::Error,
    ) -> StoreError {
        StoreError {
            kind: error_kind(e),
            ..self.error(operation, key, e.to_string())
        }
    }

    /// One line, secrets blanked, at most [`MAX_REASON`] characters.
    fn one_line(&self, text: &str) -> String {
        let mut line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for secret in &self.secrets {
            line = line.replace(secret.as_str(), "<redacted>");
        }
        if let Some((cut, _)) = line.char_indices().nth(MAX_REASON) {
            line.truncate(cut);
            line.push('…');
        }
        line
    }

    /// The object_store name of `key`, exactly, or why it has none.
    fn path(&self, operation: &'static str, key: &str) -> Result<Path, StoreError> {
        let full = self.full_key(key);
        match unnameable(&full) {
            Some(why) => Err(self.error(
                operation,
                key,
                format!("this store cannot hold the key: {why} (object_store refuses such names)"),
            )),
            None => Path::parse(&full).map_err(|e| self.error(operation, key, e.to_string())),
        }
    }

    /// The folder part of `prefix` (up to its last `/`) as a listing prefix: `None` for the
    /// container's root.
    fn folder(&self, operation: &'static str, prefix: &str) -> Result<Option<Path>, StoreError> {
        let full = self.full_key(prefix);
        let folder = &full[..full.rfind('/').map_or(0, |i| i + 1)];
        if folder.is_empty() {
            return Ok(None);
        }
        // `a/b/` names the folder `a/b`; a name with an empty or dot segment has none.
        let name = &folder[..folder.len() - 1];
        match unnameable(name) {
            Some(why) => Err(self.error(
                operation,
                prefix,
                format!("this store cannot list under this prefix: {why}"),
            )),
            None => Path::parse(name)
                .map(Some)
                .map_err(|e| self.error(operation, prefix, e.to_string())),
        }
    }

    /// The objects under `prefix`, after `start_after` and before `end` (as
    /// [`ObjectStore::list_range`]). Reads pages only until a key reaches `end` or leaves
    /// the prefix: the services list in key order.
    async fn list_objects(
        &self,
        prefix: &str,
        start_after: &str,
        end: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let folder = self.folder("list", prefix)?;
        let full_prefix = self.full_key(prefix);
        let full_start = self.full_key(start_after);
        let full_end = end.map(|end| self.full_key(end));
        // The service starts after `offset`: the start itself, or (if object_store cannot
        // name it) the start of the folder. Any offset at or before the start is correct,
        // as every key is checked below.
        let offset = Some(full_start.trim_end_matches('/'))
            .filter(|start| *start > full_prefix.as_str() && unnameable(start).is_none())
            .and_then(|start| Path::parse(start).ok());
        let mut listing = match &offset {
            Some(offset) => self.inner.list_with_offset(folder.as_ref(), offset),
            None => self.inner.list(folder.as_ref()),
        };
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| self.store_error("list", prefix, &e))?;
            let full: &str = meta.location.as_ref();
            if full_end.as_deref().is_some_and(|end| full >= end)
                || (full > full_prefix.as_str() && !full.starts_with(&full_prefix))
            {
                // Past the end or past the prefix: no later page holds a key in range.
                break;
            }
            let Some(key) = full.strip_prefix(&self.prefix) else {
                continue;
            };
            if key.starts_with(prefix) && in_range(key, start_after, end) {
                found.push(ObjectMeta {
                    key: key.to_string(),
                    size: meta.size,
                    etag: version_tag(&meta),
                });
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    async fn get_result(&self, key: &str) -> Result<object_store::GetResult, StoreError> {
        let path = self.path("get", key)?;
        self.inner
            .get(&path)
            .await
            .map_err(|e| self.store_error("get", key, &e))
    }

    /// `get_opts` of `range` (object_store's `GetOptions`: `range` as `GetRange::Bounded` or
    /// `Offset`, none for the whole object; `if_match` quoted, as Azure and GCS send ETags),
    /// and the version from `GetResult::meta`, whose size object_store takes from
    /// `Content-Range` for a ranged read. object_store's `Precondition` is
    /// `PreconditionFailed`; the ETag is compared here as well, for servers that ignore
    /// `If-Match`.
    async fn open_checked(&self, key: &str, range: &ReadRange) -> Result<Opened, StoreError> {
        let path = self.path("get", key)?;
        let named = |mut error: StoreError| {
            if !range.is_whole() {
                error.reason = format!("{} (reading {})", error.reason, range.header());
            }
            error
        };
        if let Some(why) = range.refusal() {
            return Err(named(self.error("get", key, why)));
        }
        let options = GetOptions {
            range: match (range.is_whole(), range.end) {
                (true, _) => None,
                (false, Some(end)) => Some(GetRange::Bounded(range.start..end)),
                (false, None) => Some(GetRange::Offset(range.start)),
            },
            if_match: range
                .if_etag
                .as_deref()
                .map(|etag| format!("\"{}\"", unquoted(etag))),
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(&path, options).await {
            Ok(result) => result,
            // Azure answers `If-Match` on a missing blob with 412 (as RFC 9110 §13.1.1 has
            // it); a HEAD, on this failure path only, tells a missing key from another
            // version, so every store says `NotFound` for a missing key.
            Err(e @ object_store::Error::Precondition { .. }) => {
                return Err(match self.inner.head(&path).await {
                    Err(missing @ object_store::Error::NotFound { .. }) => {
                        named(self.store_error("get", key, &missing))
                    }
                    _ => named(self.store_error("get", key, &e)),
                });
            }
            Err(e) => return Err(named(self.store_error("get", key, &e))),
        };
        let version = ObjectMeta {
            key: key.to_string(),
            size: result.meta.size,
            etag: version_tag(&result.meta),
        };
        if !range.admits(&version.etag) {
            return Err(StoreError {
                kind: StoreErrorKind::PreconditionFailed,
                ..self.error(
                    "get",
                    key,
                    format!(
                        "the object is version {}, not {} (checked on the response)",
                        version.etag,
                        range.if_etag.as_deref().unwrap_or_default()
                    ),
                )
            });
        }
        // Bytes arrive as the decoder asks for them: one chunk in memory, not the object.
        let stream = result
            .into_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other));
        let reader = SyncIoBridge::new(StreamReader::new(stream));
        Ok(Opened {
            reader: Box::new(reader),
            version,
        })
    }
}

impl CloudStore {
    /// `get` of the whole object, with the version token of its `GetResult::meta`.
    async fn get_versioned_object(&self, key: &str) -> Result<Versioned, StoreError> {
        let result = self.get_result(key).await?;
        let version = version_token(result.meta.e_tag.as_deref(), result.meta.version.as_deref());
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.store_error("get", key, &e))?;
        Ok(Versioned {
            bytes: bytes.to_vec(),
            version,
        })
    }

    /// `put_opts` with the mode of `condition`. A missing key under `Update` is the version
    /// not holding (Azure answers 412, or 404 from some servers): `PreconditionFailed`.
    async fn put_conditional(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: &PutCondition,
    ) -> Result<String, StoreError> {
        let path = self.path("put", key)?;
        let mode = match condition {
            PutCondition::Absent => PutMode::Create,
            PutCondition::Version(token) => PutMode::Update(update_version(token)),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let result = self
            .inner
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
            .map_err(|e| {
                let mut error = self.store_error("put", key, &e);
                if error.kind == StoreErrorKind::NotFound
                    && matches!(condition, PutCondition::Version(_))
                {
                    error.kind = StoreErrorKind::PreconditionFailed;
                }
                error
            })?;
        Ok(version_token(
            result.e_tag.as_deref(),
            result.version.as_deref(),
        ))
    }
}

/// The version token of [`ObjectStore::get_versioned`] and [`ObjectStore::put_if`]:
/// `<e_tag>\n<version>`, either part empty when the service gave none. Both parts are
/// needed: Azure's `If-Match` compares the ETag, GCS's `x-goog-if-generation-match` the
/// generation (object_store's `version`). Neither holds a newline (an ETag is a quoted
/// string of visible characters, RFC 9110 §8.8.3; a generation is a number).
fn version_token(e_tag: Option<&str>, version: Option<&str>) -> String {
    format!("{}\n{}", e_tag.unwrap_or(""), version.unwrap_or(""))
}

/// The `UpdateVersion` a [`version_token`] names; a token without a newline (not one of
/// ours) is taken as an ETag.
fn update_version(token: &str) -> UpdateVersion {
    let (e_tag, version) = token.split_once('\n').unwrap_or((token, ""));
    let part = |s: &str| (!s.is_empty()).then(|| s.to_string());
    UpdateVersion {
        e_tag: part(e_tag),
        version: part(version),
    }
}

/// The ETag without its quotes, or, from a store that gives none, the modification time: the
/// same form from a listing and from a read, so the two compare.
fn version_tag(meta: &object_store::ObjectMeta) -> String {
    meta.e_tag
        .as_deref()
        .map(unquoted)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "lm{}",
                meta.last_modified.timestamp_nanos_opt().unwrap_or(0)
            )
        })
}

/// The kind of an object_store error. object_store maps 404, 401, 403, 409 and 412 of a get,
/// put or delete to their own variants; other answers, and every answer to a listing, come as
/// `Generic`, whose status type is private. Its text states the status in a fixed form
/// (`Server returned non-2xx status code: 403 Forbidden`), read by [`generic_status`]; a
/// `Generic` without one (a connection error, retried already) is an outage.
fn error_kind(e: &object_store::Error) -> StoreErrorKind {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => StoreErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::Denied,
        E::Precondition { .. } | E::AlreadyExists { .. } | E::NotModified { .. } => {
            StoreErrorKind::PreconditionFailed
        }
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. } => StoreErrorKind::Invalid,
        // A range that starts at or past the end, found by object_store in the answer
        // (`InvalidGetRange::StartTooLarge`), as S3 answers it with 416.
        E::Generic { .. } if e.to_string().contains("Wanted range starting at") => {
            StoreErrorKind::Invalid
        }
        E::Generic { .. } => match generic_status(&e.to_string()) {
            Some(401 | 403) => StoreErrorKind::Denied,
            Some(404) => StoreErrorKind::NotFound,
            Some(409 | 412) => StoreErrorKind::PreconditionFailed,
            Some(429) => StoreErrorKind::Throttled,
            Some(400..=499) => StoreErrorKind::Invalid,
            _ => StoreErrorKind::Unavailable,
        },
        _ => StoreErrorKind::Unavailable,
    }
}

/// The HTTP status object_store's client states in an error's text, if any.
fn generic_status(text: &str) -> Option<u16> {
    let (_, after) = text.split_once("non-2xx status code: ")?;
    after.get(..3)?.parse().ok()
}

/// Why object_store's `Path` cannot name `key` exactly, if it cannot.
pub fn unnameable(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("it is empty")
    } else if key.starts_with('/') {
        Some("it starts with `/`")
    } else if key.ends_with('/') {
        Some("it ends with `/`")
    } else if key.split('/').any(str::is_empty) {
        Some("it has an empty segment (`//`)")
    } else if key.split('/').any(|s| s == "." || s == "..") {
        Some("it has a `.` or `..` segment")
    } else if key.chars().any(|c| c.is_ascii_control()) {
        Some("it has a control character")
    } else {
        None
    }
}

impl ObjectStore for CloudStore {
    fn describe(&self) -> String {
        format!("{}{}", self.root, self.prefix)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(self.list_objects(prefix, "", None))
    }

    fn list_range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: &'a str,
        end: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(self.list_objects(prefix, start_after, end))
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let folder = self.folder("list", prefix)?;
            let listed = self
                .inner
                .list_with_delimiter(folder.as_ref())
                .await
                .map_err(|e| self.store_error("list", prefix, &e))?;
            let mut folders: Vec<String> = listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.as_ref().strip_prefix(&self.prefix))
                .map(|p| format!("{p}/"))
                .filter(|p| p.starts_with(prefix))
                .collect();
            folders.sort();
            Ok(folders)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let result = self.get_result(key).await?;
            let bytes = result
                .bytes()
                .await
                .map_err(|e| self.store_error("get", key, &e))?;
            Ok(bytes.to_vec())
        })
    }

    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(self.open_checked(key, range))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path("put", key)?;
            // One request (Put Blob, or GCS's object PUT): readers see all or nothing.
            self.inner
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(|e| self.store_error("put", key, &e))?;
            Ok(())
        })
    }

    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        Box::pin(self.get_versioned_object(key))
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.put_conditional(key, bytes, condition))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path("delete", key)?;
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.store_error("delete", key, &e)),
            }
        })
    }
}

/// object_store's reqwest connector, counting every request it sends into `/metrics`.
#[derive(Debug)]
pub struct CountingConnector(Counter);

impl CountingConnector {
    /// `service` is the metric's label: `azure`, `gcs`.
    pub fn new(service: &'static str, metrics: Arc<Metrics>) -> Self {
        CountingConnector(Counter { service, metrics })
    }
}

#[derive(Clone)]
struct Counter {
    service: &'static str,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.service)
    }
}

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &object_store::ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            counter: self.0.clone(),
            inner,
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    counter: Counter,
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(
        &self,
        request: object_store::client::HttpRequest,
    ) -> Result<object_store::client::HttpResponse, object_store::client::HttpError> {
        StoreRequest {
            service: self.counter.service,
            operation: operation(request.method(), request.uri()),
        }
        .emit(&self.counter.metrics);
        self.inner.execute(request).await
    }
}

/// The metric's operation: `List`, `Get`, `Put`, `Delete`, `Head`, or `Token` for a
/// credential request (OAuth, instance metadata).
fn operation(method: &http::Method, uri: &http::Uri) -> &'static str {
    let query = uri.query().unwrap_or("");
    if uri.path().ends_with("/token") || uri.path().contains("/oauth2/") {
        return "Token";
    }
    if query
        .split('&')
        .any(|p| p == "comp=list" || p == "list-type=2")
    {
        return "List";
    }
    match *method {
        http::Method::GET => "Get",
        http::Method::PUT => "Put",
        http::Method::DELETE => "Delete",
        http::Method::HEAD => "Head",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_or_says_why_not() {
        for key in [
            "a/b",
            "pct/100%",
            "pct/%2E",
            "plus/a+b",
            "sp/ x /y ",
            "Grüße/🎉",
        ] {
            assert_eq!(unnameable(key), None, "{key}");
            assert_eq!(Path::parse(key).unwrap().as_ref(), key);
        }
        for key in [
            "", "/lead", "trail/", "a//b", "a/./b", "a/../b", "..", "dots/.", "a\nb",
        ] {
            assert!(unnameable(key).is_some(), "{key:?}");
        }
    }

    #[test]
    fn errors_map_to_kinds() {
        use object_store::Error as E;
        let source = || Box::<dyn std::error::Error + Send + Sync>::from("answer");
        let path = || "c/k".to_string();
        let cases = [
            (
                E::NotFound {
                    path: path(),
                    source: source(),
                },
                StoreErrorKind::NotFound,
            ),
            (
                E::PermissionDenied {
                    path: path(),
                    source: source(),
                },
                StoreErrorKind::Denied,
            ),
            (
                E::Unauthenticated {
                    path: path(),
                    source: source(),
                },
                StoreErrorKind::Denied,
            ),
            (
                E::Precondition {
                    path: path(),
                    source: source(),
                },
                StoreErrorKind::PreconditionFailed,
            ),
            (
                E::NotSupported { source: source() },
                StoreErrorKind::Invalid,
            ),
            (
                E::Generic {
                    store: "MicrosoftAzure",
                    source: source(),
                },
                StoreErrorKind::Unavailable,
            ),
            (
                E::Generic {
                    store: "MicrosoftAzure",
                    source: "Error performing GET REDACTED in 8ms - Server returned non-2xx \
                             status code: 403 Forbidden: <Error>"
                        .into(),
                },
                StoreErrorKind::Denied,
            ),
            (
                E::Generic {
                    store: "GCS",
                    source: "Server returned non-2xx status code: 429 Too Many Requests".into(),
                },
                StoreErrorKind::Throttled,
            ),
        ];
        for (error, kind) in cases {
            assert_eq!(error_kind(&error), kind, "{error}");
        }
        let store = CloudStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "az://c",
            "p",
            Vec::new(),
        );
        let refused = store.path("put", "a//b").unwrap_err();
        assert_eq!(refused.kind, StoreErrorKind::Invalid, "{refused}");
    }

    #[tokio::test]
    async fn a_missing_key_is_not_found() {
        let store = CloudStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "az://c",
            "p",
            Vec::new(),
        );
        let missing = store.get("no/such").await.unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
    }

    #[test]
    fn a_version_token_keeps_the_etag_and_the_generation() {
        let token = version_token(Some("\"0x8D\""), Some("1700000000000001"));
        let update = update_version(&token);
        assert_eq!(update.e_tag.as_deref(), Some("\"0x8D\""));
        assert_eq!(update.version.as_deref(), Some("1700000000000001"));
        let azure = update_version(&version_token(Some("\"e\""), None));
        assert_eq!(
            (azure.e_tag.as_deref(), azure.version),
            (Some("\"e\""), None)
        );
    }

    #[tokio::test]
    async fn in_memory_conditional_writes_are_honoured() {
        let store = CloudStore::new(
            Arc::new(object_store::memory::InMemory::new()),
            "az://c",
            "p",
            Vec::new(),
        );
        super::super::probe_conditions(&store, "probe/key")
            .await
            .unwrap();
    }

    #[test]
    fn operations_are_named_from_the_request() {
        let op = |method: http::Method, uri: &str| operation(&method, &uri.parse().unwrap());
        assert_eq!(
            op(http::Method::GET, "http://h/c?restype=container&comp=list"),
            "List"
        );
        assert_eq!(
            op(http::Method::GET, "http://h/b?list-type=2&prefix=a"),
            "List"
        );
        assert_eq!(op(http::Method::GET, "http://h/b/a/key"), "Get");
        assert_eq!(op(http::Method::PUT, "http://h/b/a/key"), "Put");
        assert_eq!(
            op(http::Method::POST, "http://login/t/oauth2/v2.0/token"),
            "Token"
        );
    }
}
