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
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::telemetry::Metrics;
use crate::telemetry::events::AwsRequest;

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
        AwsRequest {
            service: self.service,
            operation,
        }
        .emit(&self.metrics);
        Ok(())
    }
}
