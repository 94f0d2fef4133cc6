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
use std::sync::Arc;

use tokio_util::io::SyncIoBridge;

use super::{
    ObjectMeta, ObjectReader, ObjectStore, StoreError, StoreErrorKind, StoreFuture, in_range,
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
            format!("s3://{}/{}", self.bucket, self.full_key(key)),
            kind,
            crate::aws::error_text(e),
        )
    }

    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.error("get", key, &e))
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
    match object
        .e_tag()
        .map(|e| e.trim_matches('"'))
        .filter(|e| !e.is_empty())
    {
        Some(etag) => etag.to_string(),
        None => object
            .last_modified()
            .map(|t| format!("lm{}{:09}", t.secs(), t.subsec_nanos()))
            .unwrap_or_default(),
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
            let output = self.get_object(key).await?;
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

    fn open<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectReader> {
        Box::pin(async move {
            let output = self.get_object(key).await?;
            // Bytes arrive as the decoder asks for them: one block in memory, not the object.
            let reader = SyncIoBridge::new(output.body.into_async_read());
            Ok(Box::new(reader) as ObjectReader)
        })
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
            (Some(503), Some("SlowDown"), Throttled),
            (Some(503), None, Unavailable),
            (Some(429), None, Throttled),
            (Some(500), Some("InternalError"), Unavailable),
            (Some(502), None, Unavailable),
            (Some(408), None, Unavailable),
            (None, None, Unavailable),
            (Some(400), Some("InvalidArgument"), Invalid),
            (Some(400), None, Invalid),
        ];
        for (status, code, kind) in cases {
            assert_eq!(error_kind(status, code), kind, "{status:?} {code:?}");
        }
    }
}
