//! The SQS queue that receives the bucket's notifications, through aws-sdk-sqs.
//!
//! Configuration is the standard AWS one, as for S3: the credential chain, `AWS_REGION`, and
//! `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_SQS`) for emulators. Errors name the queue URL and
//! never include credentials or receipt handles.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};

use crate::aws::CountRequests;
use crate::telemetry::Metrics;

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    /// The handle that deletes it or changes its visibility; valid for this receipt only.
    pub receipt: String,
    pub body: String,
}

/// Why a queue operation failed, naming the queue.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation} {queue}: {reason}")]
pub struct QueueError {
    pub operation: &'static str,
    pub queue: String,
    pub reason: String,
    /// The service's error code, when the queue answered (e.g. `AccessDenied`).
    pub code: Option<String>,
    /// The HTTP status, when the queue answered.
    pub status: Option<u16>,
}

impl QueueError {
    /// The queue answered that it does not exist or that access is denied: a setting to
    /// fix, not an outage to wait out. Any 403 is one (AccessDenied, InvalidClientTokenId,
    /// SignatureDoesNotMatch, ...: credentials or a policy), whatever its code: an emulator or
    /// a proxy may answer a JSON request with an XML error the SDK cannot read a code from.
    pub fn is_configuration(&self) -> bool {
        self.status == Some(403)
            || self.code.as_deref().is_some_and(|code| {
                code.contains("NonExistentQueue")
                    || code.contains("QueueDoesNotExist")
                    || code.contains("AccessDenied")
                    || code.contains("InvalidClientTokenId")
                    || code.contains("InvalidAddress")
            })
    }
}

pub type QueueFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, QueueError>> + Send + 'a>>;

/// The operations the listener needs. Batch operations take any number of receipts and
/// answer with the indexes that failed and why (SQS batches succeed or fail per entry).
pub trait Queue: Send + Sync {
    fn describe(&self) -> String;

    /// Long-polls for up to `max` messages (1 to 10), waiting up to `wait` (0 to 20 s), and
    /// hides what it returns from other receivers for `visibility`.
    fn receive(
        &self,
        max: u8,
        wait: Duration,
        visibility: Duration,
    ) -> QueueFuture<'_, Vec<Message>>;

    fn delete<'a>(&'a self, receipts: &'a [String]) -> QueueFuture<'a, Vec<(usize, String)>>;

    /// Hides the messages for `visibility` from now; zero makes them visible at once.
    fn change_visibility<'a>(
        &'a self,
        receipts: &'a [String],
        visibility: Duration,
    ) -> QueueFuture<'a, Vec<(usize, String)>>;
}

pub struct SqsQueue {
    client: Client,
    url: String,
}

/// SQS batch requests carry at most 10 entries.
const BATCH: usize = 10;

impl SqsQueue {
    /// Connects with the standard AWS configuration, counting requests into `metrics`.
    /// Errors: no region configured.
    pub async fn connect(url: &str, metrics: Arc<Metrics>) -> Result<Self, QueueError> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        if config.region().is_none() {
            return Err(QueueError {
                operation: "connect to",
                queue: url.into(),
                reason: "no AWS region is configured: set AWS_REGION".into(),
                code: None,
                status: None,
            });
        }
        let sqs_config = aws_sdk_sqs::config::Builder::from(&config)
            .interceptor(CountRequests::new("sqs", metrics))
            .build();
        Ok(SqsQueue::from_client(Client::from_conf(sqs_config), url))
    }

    /// Asks the queue for its attributes once: a queue that does not exist, or that these
    /// credentials may not use, is found at start instead of at every receive.
    pub async fn check(&self) -> Result<(), QueueError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(|e| self.error("check", e))?;
        Ok(())
    }

    /// For callers that build their own client (tests, custom endpoints); to count its
    /// requests, give its config a [`CountRequests`].
    pub fn from_client(client: Client, url: &str) -> Self {
        SqsQueue {
            client,
            url: url.to_string(),
        }
    }

    fn error<E>(
        &self,
        operation: &'static str,
        e: aws_sdk_sqs::error::SdkError<E, aws_sdk_sqs::config::http::HttpResponse>,
    ) -> QueueError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        use aws_sdk_sqs::error::ProvideErrorMetadata;
        let mut reason = crate::aws::error_text(&e);
        let mut code = e.code().map(str::to_string);
        // SQS speaks JSON, but an error may come back as query-protocol XML (older
        // endpoints, emulators): the SDK then finds no code, and the operator would read
        // only "error (HTTP 403)". The code is in the body; it names no secret.
        if code.is_none()
            && let Some(found) = e
                .raw_response()
                .and_then(|raw| raw.body().bytes())
                .and_then(|body| xml_error_code(&String::from_utf8_lossy(body)))
        {
            if let Some(rest) = reason.strip_prefix("error") {
                reason = format!("{found}{rest}");
            }
            code = Some(found);
        }
        QueueError {
            operation,
            queue: self.url.clone(),
            reason,
            code,
            status: e.raw_response().map(|raw| raw.status().as_u16()),
        }
    }
}

/// The `<Code>` of a query-protocol XML error body, if it holds one.
pub(crate) fn xml_error_code(body: &str) -> Option<String> {
    let (_, rest) = body.split_once("<Code>")?;
    let (code, _) = rest.split_once("</Code>")?;
    let code = code.trim();
    (!code.is_empty() && code.len() < 100 && !code.contains('<')).then(|| code.to_string())
}

fn secs(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

impl Queue for SqsQueue {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn receive(
        &self,
        max: u8,
        wait: Duration,
        visibility: Duration,
    ) -> QueueFuture<'_, Vec<Message>> {
        Box::pin(async move {
            let output = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::from(max.clamp(1, 10)))
                .wait_time_seconds(secs(wait).clamp(0, 20))
                .visibility_timeout(secs(visibility))
                .send()
                .await
                .map_err(|e| self.error("receive from", e))?;
            Ok(output
                .messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    Some(Message {
                        id: m.message_id?,
                        receipt: m.receipt_handle?,
                        body: m.body.unwrap_or_default(),
                    })
                })
                .collect())
        })
    }

    fn delete<'a>(&'a self, receipts: &'a [String]) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            for (n, chunk) in receipts.chunks(BATCH).enumerate() {
                failed.extend(offset(n, self.delete_batch(chunk).await?));
            }
            Ok(failed)
        })
    }

    fn change_visibility<'a>(
        &'a self,
        receipts: &'a [String],
        visibility: Duration,
    ) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async move {
            let mut failed = Vec::new();
            for (n, chunk) in receipts.chunks(BATCH).enumerate() {
                failed.extend(offset(
                    n,
                    self.change_visibility_batch(chunk, visibility).await?,
                ));
            }
            Ok(failed)
        })
    }
}

impl SqsQueue {
    /// One DeleteMessageBatch of up to 10; the failures by index in `chunk`.
    async fn delete_batch(&self, chunk: &[String]) -> Result<Vec<(usize, String)>, QueueError> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("delete messages from", e))?;
        Ok(output.failed.into_iter().map(failure).collect())
    }

    /// One ChangeMessageVisibilityBatch of up to 10; the failures by index in `chunk`.
    async fn change_visibility_batch(
        &self,
        chunk: &[String],
        visibility: Duration,
    ) -> Result<Vec<(usize, String)>, QueueError> {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(secs(visibility))
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| self.error("change the visibility of messages in", e))?;
        Ok(output.failed.into_iter().map(failure).collect())
    }
}

/// Failures of the `n`th batch, indexed into all the receipts.
fn offset(n: usize, failed: Vec<(usize, String)>) -> impl Iterator<Item = (usize, String)> {
    failed
        .into_iter()
        .map(move |(i, reason)| (i + n * BATCH, reason))
}

/// A batch entry that failed: its index in the batch (the id we gave it) and why.
fn failure(entry: aws_sdk_sqs::types::BatchResultErrorEntry) -> (usize, String) {
    (
        entry.id.parse().unwrap_or(0),
        entry.message.unwrap_or(entry.code),
    )
}
