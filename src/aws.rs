//! What every AWS SDK client here shares: [`CountRequests`], the interceptor that counts each
//! HTTP attempt by service and operation into `/metrics`
//! (`currents_heap_requests_total{service="s3",operation="ListObjectsV2"}`), so what a poll
//! costs is measured, not estimated.
//!
//! Any SDK client takes it, S3 or SQS alike, on its config builder:
//! `aws_sdk_s3::config::Builder::from(&sdk_config).interceptor(CountRequests::new("s3", metrics))`
//! (`"sqs"` for an SQS client). Credential providers (STS, IMDS, SSO) have clients of their
//! own and are not counted.

use std::fmt;
use std::sync::Arc;

use aws_sdk_s3::config::ConfigBag;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::telemetry::Metrics;
use crate::telemetry::events::StoreRequest;

/// Counts every attempt a client transmits (a retried request counts once per attempt), by
/// `service` (the label given to [`CountRequests::new`]) and the operation the SDK names.
/// Cloning shares the counters.
#[derive(Clone)]
pub struct CountRequests {
    service: &'static str,
    metrics: Arc<Metrics>,
}

impl CountRequests {
    /// `service` is the metric's label: `s3`, `sqs`.
    pub fn new(service: &'static str, metrics: Arc<Metrics>) -> Self {
        CountRequests { service, metrics }
    }
}

impl fmt::Debug for CountRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountRequests")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "CountRequests"
    }

    // Before transmit runs once per attempt, after signing: exactly the requests the
    // service sees (and bills), retries included.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", Metadata::name);
        StoreRequest {
            service: self.service,
            operation,
        }
        .emit(&self.metrics);
        Ok(())
    }
}

/// One readable line for an SDK error: the service's code and message (`NoSuchBucket: The
/// specified bucket does not exist`, `AWS.SimpleQueueService.NonExistentQueue: …`), or why
/// no answer came (`cannot reach the endpoint: …`, `timed out`). The SDK's own display
/// (`DisplayErrorContext`) dumps the raw response with headers and debug structures, which is
/// unreadable in a log line and on `/readyz`. Never holds credentials: neither form does.
pub fn error_text<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("error");
            match service.err().message() {
                Some(message) => format!("{code}: {message} (HTTP {status})"),
                None => format!("{code} (HTTP {status})"),
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => format!("cannot reach the endpoint: {}", chain(e)),
        SdkError::ResponseError(_) => format!("the response could not be read: {}", chain(e)),
        _ => chain(e),
    }
}

/// An error and its sources, each by its display, joined by `: `.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
