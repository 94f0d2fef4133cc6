//! S3 and S3-compatible stores, through aws-sdk-s3.
//!
//! Configuration is the standard AWS one: the credential chain (environment, profile, web
//! identity/IRSA, instance metadata), `AWS_REGION`, and `AWS_ENDPOINT_URL` for S3-compatible
//! stores. Error messages name the bucket and key and never include credentials.
//!
//! Listings rely on S3's order: a general-purpose bucket lists keys sorted by their UTF-8
//! bytes, which [`ObjectStore::list_range`] uses to start and stop where it is asked to.
//! Every request is counted in `/metrics` ([`crate::aws::CountRequests`]).

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use std::io::Read;
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use super::{
    ObjectMeta, ObjectReader, ObjectStore, Opened, PutCondition, ReadRange, StoreError,
    StoreErrorKind, StoreFuture, Versioned, in_range, unquoted,
};
use crate::aws::CountRequests;
use crate::telemetry::Metrics;

pub struct S3Store {
    client: Client,
    bucket: String,
    /// Empty or ending in `/`; every key is relative to it.
    prefix: String,
}

impl S3Store {
    /// Connects with the standard AWS configuration; every request is counted in `metrics`.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        path_style: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        if config.region().is_none() {
            return Err(StoreError::new(
                "connect to",
                format!("s3://{bucket}/{prefix}"),
                StoreErrorKind::Invalid,
                "no AWS region is configured: set AWS_REGION (any value for S3-compatible stores)",
            ));
        }
        let s3_config = aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(path_style)
            // Validating every response's checksum warns on each object uploaded in parts
            // (its checksum is of the parts, which the SDK cannot check) and checks nothing
            // there; Avro's own sync markers and decoding catch a corrupt body anyway.
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .interceptor(CountRequests::new("s3", metrics))
            .build();
        Ok(S3Store::from_client(
            Client::from_conf(s3_config),
            bucket,
            prefix,
        ))
    }

    /// For callers that build their own client (tests, custom endpoints); to count its
    /// requests, give its config a [`CountRequests`].
    pub fn from_client(client: Client, bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        e: &SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let kind = match e {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
                error_kind(e.raw_response().map(|r| r.status().as_u16()), e.code())
            }
            // A request the SDK could not build (a bad key, a missing region).
            SdkError::ConstructionFailure(_) => StoreErrorKind::Invalid,
            // No answer: a timeout, a refused or reset connection, DNS, or credentials the
            // chain could not fetch (the instance metadata service is an endpoint too).
            _ => StoreErrorKind::Unavailable,
        };
        StoreError::new(
            operation,
            self.location(key),
            kind,
            crate::aws::error_text(e),
        )
    }

    /// `s3://bucket/prefix/key`, for messages.
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    /// GetObject of `range`: a `Range` header unless it is the whole object, and `If-Match`
    /// (quoted, as S3 compares it) for `if_etag`. An error names the range it read.
    async fn get_object(
        &self,
        key: &str,
        range: &ReadRange,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .set_range((!range.is_whole()).then(|| range.header()))
            .set_if_match(
                range
                    .if_etag
                    .as_deref()
                    .map(|etag| format!("\"{}\"", unquoted(etag))),
            )
            .send()
            .await
            .map_err(|e| {
                let mut error = self.error("get", key, &e);
                if !range.is_whole() {
                    error.reason = format!("{} (reading {})", error.reason, range.header());
                }
                error
            })
    }

    /// GetObject of `range`, checked: the version the response names (refused if `if_etag`
    /// names another), and a reader of exactly the bytes asked for.
    ///
    /// Per S3 GetObject: a ranged answer is `206` with `Content-Range: bytes a-b/SIZE`, which
    /// gives the whole size; a whole one gives it as `Content-Length`. A store that ignores
    /// `Range` answers `200` with the whole object and no `Content-Range`: the bytes before
    /// `start` are then skipped here. One that ignores `If-Match` is caught by comparing
    /// the response's ETag.
    async fn open_checked(&self, key: &str, range: &ReadRange) -> Result<Opened, StoreError> {
        if let Some(why) = range.refusal() {
            return Err(StoreError::new(
                "get",
                self.location(key),
                StoreErrorKind::Invalid,
                why,
            ));
        }
        let output = self.get_object(key, range).await?;
        let fail = |kind, reason: String| StoreError::new("get", self.location(key), kind, reason);
        let etag = response_version(output.e_tag(), output.last_modified());
        if !range.admits(&etag) {
            return Err(fail(
                StoreErrorKind::PreconditionFailed,
                format!(
                    "the object is version {etag}, not {} (checked on the response)",
                    range.if_etag.as_deref().unwrap_or_default()
                ),
            ));
        }
        let length = output.content_length().unwrap_or(0).max(0) as u64;
        let (size, skip) = match output.content_range() {
            Some(value) => {
                let (first, total) = content_range(value).ok_or_else(|| {
                    fail(
                        StoreErrorKind::Unavailable,
                        format!("unreadable Content-Range {value:?} for {}", range.header()),
                    )
                })?;
                if first != range.start {
                    return Err(fail(
                        StoreErrorKind::Unavailable,
                        format!("asked for {}, answered {value:?}", range.header()),
                    ));
                }
                (total, 0)
            }
            // The whole object: asked for, or sent by a store that ignores `Range`.
            None if range.is_whole() => (length, 0),
            None if range.start >= length => {
                return Err(fail(
                    StoreErrorKind::Invalid,
                    format!(
                        "{} starts at or past the end of the object ({length} bytes)",
                        range.header()
                    ),
                ));
            }
            None => (length, range.start),
        };
        // Bytes arrive as the decoder asks for them: one block in memory, not the object.
        let body = SyncIoBridge::new(output.body.into_async_read());
        let reader: ObjectReader = match (skip, range.end) {
            (0, _) => Box::new(body),
            (skip, end) => Box::new(
                Skip {
                    inner: body,
                    left: skip,
                }
                .take(end.map_or(u64::MAX, |e| e - range.start)),
            ),
        };
        Ok(Opened {
            reader,
            version: ObjectMeta {
                key: key.to_string(),
                size,
                etag,
            },
        })
    }

    /// One page of a listing: the first (no `token`) starts after `start_after` if given, the
    /// next ones where the token says.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        start_after: Option<&str>,
        token: Option<String>,
    ) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, StoreError> {
        let mut request = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full_key(prefix))
            .set_start_after(
                start_after
                    .filter(|_| token.is_none())
                    .map(|key| self.full_key(key)),
            )
            .set_continuation_token(token);
        if delimiter {
            request = request.delimiter("/");
        }
        request
            .send()
            .await
            .map_err(|e| self.error("list", prefix, &e))
    }
}

impl S3Store {
    /// GetObject of the whole object: its bytes and its ETag, the token a later
    /// [`S3Store::put_conditional`] sends as `If-Match`.
    async fn get_versioned_object(&self, key: &str) -> Result<Versioned, StoreError> {
        let output = self.get_object(key, &ReadRange::default()).await?;
        let version = self.etag_token("get", key, output.e_tag())?;
        let bytes = output.body.collect().await.map_err(|e| {
            StoreError::new(
                "get",
                self.location(key),
                StoreErrorKind::Unavailable,
                e.to_string(),
            )
        })?;
        Ok(Versioned {
            bytes: bytes.to_vec(),
            version,
        })
    }

    /// PutObject with `If-None-Match: *` (create) or `If-Match: "etag"` (replace that
    /// version), per S3's conditional writes (PutObject, "Conditional requests"): 412
    /// `PreconditionFailed` when the condition does not hold, 409
    /// `ConditionalRequestConflict` when a concurrent conditional write to the key won;
    /// both are `PreconditionFailed` (see [`error_kind`]). An `If-Match` on a missing key is
    /// answered 404 `NoSuchKey` (or 412): the version asked for is not there, so that is
    /// `PreconditionFailed` too, not `NotFound`.
    async fn put_conditional(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: &PutCondition,
    ) -> Result<String, StoreError> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from(bytes));
        let request = match condition {
            PutCondition::Absent => request.if_none_match("*"),
            PutCondition::Version(etag) => request.if_match(format!("\"{}\"", unquoted(etag))),
        };
        let output = request.send().await.map_err(|e| {
            let mut error = self.error("put", key, &e);
            if error.kind == StoreErrorKind::NotFound
                && matches!(condition, PutCondition::Version(_))
                && e.code() != Some("NoSuchBucket")
            {
                error.kind = StoreErrorKind::PreconditionFailed;
            }
            error
        })?;
        self.etag_token("put", key, output.e_tag())
    }

    /// The version token of a response: its ETag without quotes. A store that sends none
    /// cannot be asked `If-Match` later, so that is refused rather than guessed.
    fn etag_token(
        &self,
        operation: &'static str,
        key: &str,
        etag: Option<&str>,
    ) -> Result<String, StoreError> {
        match etag.map(unquoted).filter(|e| !e.is_empty()) {
            Some(etag) => Ok(etag.to_string()),
            None => Err(StoreError::new(
                operation,
                self.location(key),
                StoreErrorKind::Invalid,
                "the store answered without an ETag, so it cannot do conditional writes",
            )),
        }
    }
}

impl S3Store {
    /// Pages through `ListObjectsV2` from `start_after` (or the start of `prefix`) and stops
    /// at the first page that reaches `end`: S3 sends keys in order, so the pages after it
    /// would hold nothing in range.
    async fn list_objects(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        end: Option<&str>,
    ) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = self.list_page(prefix, false, start_after, token).await?;
            let mut reached_end = false;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                reached_end |= end.is_some_and(|end| key >= end);
                // Filtered here too: an S3-compatible store that ignores `StartAfter` costs
                // requests, never wrong keys.
                if !in_range(key, start_after.unwrap_or(""), end) {
                    continue;
                }
                found.push(ObjectMeta {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: version_tag(object),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() || reached_end {
                break;
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

/// The kind of an S3 answer, from its error code first (S3 and S3-compatible stores name the
/// cause: `SlowDown` comes as a 503, `AccessDenied` as a 403) and its HTTP status second.
fn error_kind(status: Option<u16>, code: Option<&str>) -> StoreErrorKind {
    match code {
        Some("NoSuchKey" | "NoSuchBucket" | "NotFound") => return StoreErrorKind::NotFound,
        Some(
            "AccessDenied"
            | "AllAccessDisabled"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "AccountProblem",
        ) => return StoreErrorKind::Denied,
        Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded") => {
            return StoreErrorKind::Throttled;
        }
        Some("PreconditionFailed" | "ConditionalRequestConflict") => {
            return StoreErrorKind::PreconditionFailed;
        }
        _ => {}
    }
    match status {
        Some(404) => StoreErrorKind::NotFound,
        Some(401 | 403) => StoreErrorKind::Denied,
        Some(412 | 409) => StoreErrorKind::PreconditionFailed,
        Some(429) => StoreErrorKind::Throttled,
        Some(408) => StoreErrorKind::Unavailable,
        Some(400..=499) => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Unavailable,
    }
}

/// The ETag, or, from stores that list none, the last-modified time: either tells a
/// re-uploaded object from the one already processed. (Discovery never uses the time.)
fn version_tag(object: &aws_sdk_s3::types::Object) -> String {
    response_version(object.e_tag(), object.last_modified())
}

/// [`version_tag`] from a listing's or a GetObject response's fields: the same form from
/// both, so a read's version compares with a listing's.
fn response_version(
    etag: Option<&str>,
    last_modified: Option<&aws_sdk_s3::primitives::DateTime>,
) -> String {
    match etag.map(unquoted).filter(|e| !e.is_empty()) {
        Some(etag) => etag.to_string(),
        None => last_modified
            .map(|t| format!("lm{}{:09}", t.secs(), t.subsec_nanos()))
            .unwrap_or_default(),
    }
}

/// The first byte and the whole size from `Content-Range: bytes a-b/SIZE` (RFC 9110
/// §14.4); `None` if it is not of that form (a `*` size included).
fn content_range(value: &str) -> Option<(u64, u64)> {
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, _) = range.split_once('-')?;
    Some((first.parse().ok()?, size.parse().ok()?))
}

/// Drops the first `left` bytes of `inner`, then reads it: the start of a range from a
/// store that sent the whole object.
struct Skip<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Skip<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left > 0 {
            let skipped =
                std::io::copy(&mut (&mut self.inner).take(self.left), &mut std::io::sink())?;
            self.left -= skipped;
            if self.left > 0 {
                // The object ended before the range's start: nothing to read.
                return Ok(0);
            }
        }
        self.inner.read(buf)
    }
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(self.list_objects(prefix, None, None))
    }

    fn list_range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: &'a str,
        end: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<ObjectMeta>> {
        Box::pin(self.list_objects(prefix, Some(start_after), end))
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let mut folders = Vec::new();
            let mut token = None;
            loop {
                let page = self.list_page(prefix, true, None, token).await?;
                folders.extend(
                    page.common_prefixes()
                        .iter()
                        .filter_map(|p| p.prefix())
                        .filter_map(|p| p.strip_prefix(&self.prefix))
                        .map(str::to_string),
                );
                token = page.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            folders.sort();
            Ok(folders)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let output = self.get_object(key, &ReadRange::default()).await?;
            let bytes = output.body.collect().await.map_err(|e| {
                StoreError::new(
                    "get",
                    format!("s3://{}/{}", self.bucket, self.full_key(key)),
                    StoreErrorKind::Unavailable,
                    e.to_string(),
                )
            })?;
            Ok(bytes.to_vec())
        })
    }

    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(self.open_checked(key, range))
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| self.error("put", key, &e))?;
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
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .send()
                .await
                .map_err(|e| self.error("delete", key, &e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StoreErrorKind::*;

    #[test]
    fn answers_map_to_kinds_by_code_then_status() {
        let cases = [
            (Some(403), Some("AccessDenied"), Denied),
            (Some(403), None, Denied),
            (Some(401), None, Denied),
            (Some(403), Some("InvalidAccessKeyId"), Denied),
            (Some(400), Some("ExpiredToken"), Denied),
            (Some(404), Some("NoSuchKey"), NotFound),
            (Some(404), Some("NoSuchBucket"), NotFound),
            (Some(404), None, NotFound),
            (Some(412), Some("PreconditionFailed"), PreconditionFailed),
            (Some(412), None, PreconditionFailed),
            (
                Some(409),
                Some("ConditionalRequestConflict"),
                PreconditionFailed,
            ),
            (Some(503), Some("SlowDown"), Throttled),
            (Some(503), None, Unavailable),
            (Some(429), None, Throttled),
            (Some(500), Some("InternalError"), Unavailable),
            (Some(502), None, Unavailable),
            (Some(408), None, Unavailable),
            (None, None, Unavailable),
            (Some(400), Some("InvalidArgument"), Invalid),
            (Some(400), None, Invalid),
            (Some(416), Some("InvalidRange"), Invalid),
        ];
        for (status, code, kind) in cases {
            assert_eq!(error_kind(status, code), kind, "{status:?} {code:?}");
        }
    }

    #[test]
    fn content_range_gives_the_first_byte_and_the_whole_size() {
        assert_eq!(content_range("bytes 0-9/100"), Some((0, 100)));
        assert_eq!(content_range("bytes 90-99/100"), Some((90, 100)));
        assert_eq!(content_range("bytes 0-9/*"), None);
        assert_eq!(content_range("items 0-9/100"), None);
    }

    #[test]
    fn a_whole_object_skips_to_the_start_of_a_range() {
        let mut read = String::new();
        Skip {
            inner: &b"0123456789"[..],
            left: 3,
        }
        .take(4)
        .read_to_string(&mut read)
        .unwrap();
        assert_eq!(read, "3456");
    }
}
