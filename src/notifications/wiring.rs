//! Does anything send this bucket's new objects under `--source` to this queue? The check that
//! `run --sqs-queue-url` makes at start (and `check` makes on demand), so a wiring mistake exits
//! before any event is sent instead of leaving the worker to an hourly reconciliation.
//!
//! # What is verified, in order
//! 1. The queue (SQS GetQueueAttributes: `QueueArn`, `Policy`): it exists and these
//!    credentials may read it.
//! 2. The bucket's notification configuration (S3 GetBucketNotificationConfiguration). A
//!    `QueueConfiguration` whose `QueueArn` is this queue's must:
//!    - send object creations: `s3:ObjectCreated:*`, or at least `s3:ObjectCreated:Put`
//!      (without `CompleteMultipartUpload` too, objects uploaded in parts come only at a
//!      reconciliation: a warning);
//!    - filter on a key prefix that is a prefix of the source's (none, `curr` and `currents/`
//!      cover `currents/`; `currents/event_type=x/` does not: the other folders would come only
//!      at a reconciliation), and on a suffix that every `.avro` key ends with (none, `.avro`).
//!
//!    When several point at the queue, one that covers is enough.
//! 3. Otherwise EventBridge: the bucket sends to EventBridge (`EventBridgeConfiguration`) and a
//!    rule of the default bus targets the queue (events ListRuleNamesByTarget, DescribeRule),
//!    enabled, whose pattern takes `source` aws.s3, `detail-type` Object Created, this bucket
//!    (`detail.bucket.name` or `resources`) and keys under the prefix (`detail.object.key`).
//!    A field the pattern leaves out matches everything; a matcher this check does not know is
//!    taken as matching, with a warning: a false refusal would stop a working deployment.
//! 4. The queue's policy lets the sender (`s3.amazonaws.com` or `events.amazonaws.com`) call
//!    `sqs:SendMessage`: some Allow statement names that service (or `*`), an action that
//!    covers SendMessage, and for S3 no `aws:SourceArn` condition naming another bucket. A
//!    queue with no policy at all is a warning, not a failure: S3 tests the destination when
//!    the notification is configured (so it had a policy then), and emulators deliver without.
//!
//! # Failures and outages
//! Every [`WiringError`] names the queue, bucket and prefix concerned and says what to fix.
//! Only [`WiringError::Outage`] (5xx, throttling, timeouts, a connection that fails) may pass
//! with time; the caller waits those out as it waits out a receive that fails.
//! Every request is counted in `/metrics` by [`CountRequests`]; no error text holds a
//! credential (they are built from the services' codes and messages, see `aws::error_text`).

use std::sync::Arc;

use aws_sdk_s3::types::{FilterRuleName, NotificationConfiguration, QueueConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::Value;

use crate::aws::CountRequests;
use crate::telemetry::Metrics;

/// The wiring is right; `found` says by what, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiringOk {
    pub found: String,
    /// What works but deserves a look (no queue policy, a rule matcher not understood, …).
    pub warnings: Vec<String>,
}

/// Why the bucket's new objects would not reach the queue, or why that cannot be known now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WiringError {
    #[error(
        "cannot check the queue {queue}: no AWS region is configured: set AWS_REGION (any value for emulators)"
    )]
    NoRegion { queue: String },
    #[error(
        "the queue {queue} does not exist ({reason}): create it, or give the URL that GetQueueUrl answers for its name"
    )]
    QueueMissing { queue: String, reason: String },
    #[error(
        "the queue {queue} refuses these credentials ({reason}): give the worker's role sqs:GetQueueAttributes, sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on it"
    )]
    QueueDenied { queue: String, reason: String },
    #[error(
        "the bucket `{bucket}` does not exist ({reason}): --source names the bucket whose notifications feed the queue"
    )]
    BucketMissing { bucket: String, reason: String },
    #[error(
        "cannot read the notification configuration of the bucket `{bucket}` ({reason}): give the worker's role s3:GetBucketNotification on arn:aws:s3:::{bucket}"
    )]
    BucketDenied { bucket: String, reason: String },
    #[error(
        "the bucket `{bucket}` sends no notification to the queue {queue_arn}{others}, and no EventBridge rule targets it: add a QueueConfiguration (events s3:ObjectCreated:*, prefix `{prefix}`) to the bucket's notification configuration, or route Object Created events through EventBridge (docs/notifications.md)"
    )]
    NoNotification {
        bucket: String,
        prefix: String,
        queue_arn: String,
        /// `` (it notifies the queues …)`` when other destinations are configured.
        others: String,
    },
    #[error(
        "the bucket `{bucket}`'s notification `{id}` to {queue_arn} filters on the {filter} filter `{value}`, which does not cover every key of --source's `{prefix}`: make its prefix `{prefix}` (or a prefix of it) and its suffix `.avro` or none"
    )]
    FilterMisses {
        bucket: String,
        prefix: String,
        queue_arn: String,
        id: String,
        /// `prefix` or `suffix`.
        filter: String,
        value: String,
    },
    #[error(
        "the bucket `{bucket}`'s notification `{id}` to {queue_arn} sends {events}, not object creations: make its events s3:ObjectCreated:*"
    )]
    NotObjectCreated {
        bucket: String,
        queue_arn: String,
        id: String,
        events: String,
    },
    #[error(
        "the bucket `{bucket}` sends its events to EventBridge, but no rule of the default event bus targets the queue {queue_arn}: add a rule with the pattern {{\"source\":[\"aws.s3\"],\"detail-type\":[\"Object Created\"],\"detail\":{{\"bucket\":{{\"name\":[\"{bucket}\"]}},\"object\":{{\"key\":[{{\"prefix\":\"{prefix}\"}}]}}}}}} and the queue as its target"
    )]
    NoRule {
        bucket: String,
        prefix: String,
        queue_arn: String,
    },
    #[error(
        "the EventBridge rule `{rule}` targets the queue {queue_arn} but {reason}: its pattern must take source aws.s3, detail-type Object Created, the bucket `{bucket}` and keys under `{prefix}`"
    )]
    RuleMisses {
        bucket: String,
        prefix: String,
        queue_arn: String,
        rule: String,
        reason: String,
    },
    #[error(
        "the EventBridge rule `{rule}` sends the bucket `{bucket}`'s objects to the queue {queue_arn}, but the bucket does not send its events to EventBridge: turn it on (put-bucket-notification-configuration with \"EventBridgeConfiguration\":{{}}, keeping the rest of its configuration)"
    )]
    EventBridgeOff {
        bucket: String,
        queue_arn: String,
        rule: String,
    },
    #[error(
        "cannot read the EventBridge rules that target the queue {queue_arn} ({reason}): give the worker's role events:ListRuleNamesByTarget and events:DescribeRule"
    )]
    RulesDenied { queue_arn: String, reason: String },
    #[error(
        "the queue {queue}'s policy does not let {sender} send to it ({via}): add a statement allowing Principal {{\"Service\":\"{sender}\"}} the action sqs:SendMessage on {queue_arn}{condition}"
    )]
    PolicyRefuses {
        queue: String,
        queue_arn: String,
        /// `s3.amazonaws.com` or `events.amazonaws.com`.
        sender: String,
        /// What would send: the notification or the rule.
        via: String,
        /// The condition to add, if any, as text.
        condition: String,
    },
    /// The service could not be asked: a 5xx, throttling, a timeout, no connection.
    #[error("cannot check the wiring of {what} now: {reason}")]
    Outage { what: String, reason: String },
}

impl WiringError {
    /// A real outage: may pass with time (5xx, throttling, timeouts, a refused connection).
    /// Everything else is a setting to fix.
    pub fn is_outage(&self) -> bool {
        matches!(self, WiringError::Outage { .. })
    }
}

/// The clients the check asks; [`check`] builds them from the standard AWS configuration.
#[derive(Debug, Clone)]
pub struct Clients {
    pub sqs: aws_sdk_sqs::Client,
    pub s3: aws_sdk_s3::Client,
    pub events: aws_sdk_eventbridge::Client,
}

impl Clients {
    /// From the standard AWS configuration (`AWS_ENDPOINT_URL` and its per-service forms
    /// apply), each request counted in `metrics`. `path_style`: as `--s3-path-style`.
    pub async fn connect(path_style: bool, metrics: Arc<Metrics>) -> Option<Clients> {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        config.region()?;
        Some(Clients::from_sdk_config(&config, path_style, metrics))
    }

    /// From a given AWS configuration (tests, custom endpoints), counted as [`Clients::connect`]'s.
    pub fn from_sdk_config(
        config: &aws_config::SdkConfig,
        path_style: bool,
        metrics: Arc<Metrics>,
    ) -> Clients {
        let sqs = aws_sdk_sqs::config::Builder::from(config)
            .interceptor(CountRequests::new("sqs", metrics.clone()))
            .build();
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .interceptor(CountRequests::new("s3", metrics.clone()))
            .build();
        let events = aws_sdk_eventbridge::config::Builder::from(config)
            .interceptor(CountRequests::new("events", metrics))
            .build();
        Clients {
            sqs: aws_sdk_sqs::Client::from_conf(sqs),
            s3: aws_sdk_s3::Client::from_conf(s3),
            events: aws_sdk_eventbridge::Client::from_conf(events),
        }
    }
}

/// Checks that the bucket's new objects under `prefix` reach the queue (module doc).
/// `path_style`: address the bucket by path, as `--s3-path-style` does for the store.
pub async fn check(
    queue_url: &str,
    bucket: &str,
    prefix: &str,
    path_style: bool,
    metrics: Arc<Metrics>,
) -> Result<WiringOk, WiringError> {
    let Some(clients) = Clients::connect(path_style, metrics).await else {
        return Err(WiringError::NoRegion {
            queue: queue_url.into(),
        });
    };
    check_with(&clients, queue_url, bucket, prefix).await
}

/// [`check`] with clients of the caller's (tests, custom endpoints).
pub async fn check_with(
    clients: &Clients,
    queue_url: &str,
    bucket: &str,
    prefix: &str,
) -> Result<WiringOk, WiringError> {
    let prefix = normal_prefix(prefix);
    let target = Target {
        bucket: bucket.to_string(),
        prefix: prefix.clone(),
    };
    let (queue_arn, policy) = queue_attributes(&clients.sqs, queue_url).await?;
    let config = bucket_notifications(&clients.s3, bucket).await?;
    let mut warnings = Vec::new();
    let ours: Vec<&QueueConfiguration> = config
        .queue_configurations()
        .iter()
        .filter(|q| q.queue_arn() == queue_arn)
        .collect();
    let (found, sender, via) = if ours.is_empty() {
        let (found, rule) =
            through_eventbridge(clients, &target, &queue_arn, &config, &mut warnings).await?;
        (found, EVENTS, format!("the rule `{rule}`"))
    } else {
        let (found, id) = direct(&target, &queue_arn, &ours, &mut warnings)?;
        (found, S3, format!("the notification `{id}`"))
    };
    match policy {
        None => warnings.push(format!(
            "the queue {queue_url} has no access policy: on AWS, {sender} can send to it only if a policy allows it (add one allowing {sender} sqs:SendMessage; emulators deliver without)"
        )),
        Some(text) => {
            if !policy_allows(&text, sender, &queue_arn, bucket, &mut warnings) {
                return Err(WiringError::PolicyRefuses {
                    queue: queue_url.into(),
                    queue_arn,
                    sender: sender.into(),
                    via,
                    condition: if sender == S3 {
                        format!(" with the condition ArnEquals aws:SourceArn arn:aws:s3:::{bucket}")
                    } else {
                        " with the condition ArnEquals aws:SourceArn <the rule's ARN>".into()
                    },
                });
            }
        }
    }
    Ok(WiringOk { found, warnings })
}

const S3: &str = "s3.amazonaws.com";
const EVENTS: &str = "events.amazonaws.com";

/// What is checked: the bucket and prefix of `--source`.
struct Target {
    bucket: String,
    /// Empty or ending in `/`.
    prefix: String,
}

/// `currents` and `/currents/` are the store's `currents/`.
fn normal_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// How an SDK error is classified: its readable text, and whether it may pass with time.
struct Failure {
    reason: String,
    code: Option<String>,
    status: Option<u16>,
    outage: bool,
}

fn failure<E>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Failure
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    let mut reason = crate::aws::error_text(e);
    let mut code = e.code().map(str::to_string);
    // A JSON service (SQS, EventBridge) may answer in query-protocol XML (emulators, proxies):
    // the SDK then reads no code, but the body holds one.
    if code.is_none()
        && let Some(found) = e
            .raw_response()
            .and_then(|raw| raw.body().bytes())
            .and_then(|body| super::sqs::xml_error_code(&String::from_utf8_lossy(body)))
    {
        if let Some(rest) = reason.strip_prefix("error") {
            reason = format!("{found}{rest}");
        }
        code = Some(found);
    }
    let status = e.raw_response().map(|raw| raw.status().as_u16());
    let throttled = status == Some(429)
        || code
            .as_deref()
            .is_some_and(|c| c.contains("Throttl") || c.contains("SlowDown"));
    let outage = match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => status.is_some_and(|s| s >= 500) || throttled,
        _ => false,
    };
    Failure {
        reason,
        code,
        status,
        outage,
    }
}

fn is_missing_queue(failure: &Failure) -> bool {
    failure.status == Some(404)
        || failure.code.as_deref().is_some_and(|c| {
            c.contains("NonExistentQueue")
                || c.contains("QueueDoesNotExist")
                || c.contains("InvalidAddress")
        })
}

/// The queue's ARN and its policy, if it has one.
async fn queue_attributes(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<(String, Option<String>), WiringError> {
    let answer = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .attribute_names(QueueAttributeName::Policy)
        .send()
        .await;
    let mut attributes = match answer {
        Ok(output) => output.attributes.unwrap_or_default(),
        Err(e) => {
            let f = failure(&e);
            return Err(if f.outage {
                WiringError::Outage {
                    what: format!("the queue {queue_url}"),
                    reason: f.reason,
                }
            } else if is_missing_queue(&f) {
                WiringError::QueueMissing {
                    queue: queue_url.into(),
                    reason: f.reason,
                }
            } else {
                WiringError::QueueDenied {
                    queue: queue_url.into(),
                    reason: f.reason,
                }
            });
        }
    };
    let Some(arn) = attributes.remove(&QueueAttributeName::QueueArn) else {
        return Err(WiringError::QueueDenied {
            queue: queue_url.into(),
            reason: "its attributes hold no QueueArn".into(),
        });
    };
    let policy = attributes
        .remove(&QueueAttributeName::Policy)
        .filter(|p| !p.trim().is_empty());
    Ok((arn, policy))
}

async fn bucket_notifications(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
) -> Result<NotificationConfiguration, WiringError> {
    let answer = s3
        .get_bucket_notification_configuration()
        .bucket(bucket)
        .send()
        .await;
    match answer {
        Ok(output) => Ok(NotificationConfiguration::builder()
            .set_queue_configurations(output.queue_configurations)
            .set_topic_configurations(output.topic_configurations)
            .set_lambda_function_configurations(output.lambda_function_configurations)
            .set_event_bridge_configuration(output.event_bridge_configuration)
            .build()),
        // A bucket without configuration is answered with an empty `NotificationConfiguration`
        // by S3, and with an empty `GetBucketNotificationResponse` by moto, which the SDK
        // cannot read: a success that names no configuration means "no notification".
        Err(e)
            if e.raw_response().is_some_and(|raw| {
                raw.status().is_success()
                    && raw.body().bytes().is_some_and(|b| {
                        let text = String::from_utf8_lossy(b);
                        ![
                            "Queue",
                            "Topic",
                            "CloudFunction",
                            "LambdaFunction",
                            "EventBridge",
                        ]
                        .iter()
                        .any(|kind| text.contains(&format!("<{kind}Configuration")))
                    })
            }) =>
        {
            Ok(NotificationConfiguration::builder().build())
        }
        Err(e) => {
            let f = failure(&e);
            Err(if f.outage {
                WiringError::Outage {
                    what: format!("the bucket `{bucket}`"),
                    reason: f.reason,
                }
            } else if f.status == Some(404) || f.code.as_deref() == Some("NoSuchBucket") {
                WiringError::BucketMissing {
                    bucket: bucket.into(),
                    reason: f.reason,
                }
            } else {
                WiringError::BucketDenied {
                    bucket: bucket.into(),
                    reason: f.reason,
                }
            })
        }
    }
}

/// A notification of the bucket to this queue that covers the prefix: the found line and its id.
// Called a few times per start: the error's size costs nothing worth boxing for.
#[allow(clippy::result_large_err)]
fn direct(
    target: &Target,
    queue_arn: &str,
    ours: &[&QueueConfiguration],
    warnings: &mut Vec<String>,
) -> Result<(String, String), WiringError> {
    let mut first_error = None;
    for q in ours {
        let id = q.id().unwrap_or("(no id)").to_string();
        match covers(target, queue_arn, &id, q) {
            Ok((events, filter, warning)) => {
                warnings.extend(warning);
                let found = format!(
                    "notification `{id}` of the bucket `{}` sends {events} {filter} to {queue_arn}",
                    target.bucket
                );
                return Ok((found, id));
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("`ours` is not empty"))
}

/// Whether one notification covers the target: its events, its filter in words, a warning.
// Called a few times per start: the error's size costs nothing worth boxing for.
#[allow(clippy::result_large_err)]
fn covers(
    target: &Target,
    queue_arn: &str,
    id: &str,
    q: &QueueConfiguration,
) -> Result<(String, String, Option<String>), WiringError> {
    let events: Vec<&str> = q.events().iter().map(|e| e.as_str()).collect();
    let all = events.contains(&"s3:ObjectCreated:*");
    let put = events.contains(&"s3:ObjectCreated:Put");
    if !all && !put {
        return Err(WiringError::NotObjectCreated {
            bucket: target.bucket.clone(),
            queue_arn: queue_arn.into(),
            id: id.into(),
            events: if events.is_empty() {
                "no event".into()
            } else {
                events.join(", ")
            },
        });
    }
    let warning = (!all && !events.contains(&"s3:ObjectCreated:CompleteMultipartUpload")).then(|| {
        format!(
            "the notification `{id}` sends s3:ObjectCreated:Put but not CompleteMultipartUpload: objects uploaded in parts come only at a reconciliation (make its events s3:ObjectCreated:*)"
        )
    });
    let mut filter_prefix = String::new();
    let mut filter_suffix = String::new();
    let rules = q
        .filter()
        .and_then(|f| f.key())
        .map(|k| k.filter_rules())
        .unwrap_or_default();
    for rule in rules {
        let value = rule.value().unwrap_or_default().to_string();
        let name = rule.name().map(FilterRuleName::as_str).unwrap_or_default();
        let miss = |filter: &str| WiringError::FilterMisses {
            bucket: target.bucket.clone(),
            prefix: target.prefix.clone(),
            queue_arn: queue_arn.into(),
            id: id.into(),
            filter: filter.into(),
            value: value.clone(),
        };
        if name.eq_ignore_ascii_case("prefix") {
            if !target.prefix.starts_with(&value) {
                return Err(miss("prefix"));
            }
            filter_prefix = value;
        } else if name.eq_ignore_ascii_case("suffix") {
            if !".avro".ends_with(&value) {
                return Err(miss("suffix"));
            }
            filter_suffix = value;
        }
    }
    let filter = match (filter_prefix.as_str(), filter_suffix.as_str()) {
        ("", "") => "for every key".to_string(),
        (p, "") => format!("with prefix `{p}`"),
        ("", s) => format!("with suffix `{s}`"),
        (p, s) => format!("with prefix `{p}` and suffix `{s}`"),
    };
    Ok((events.join(", "), filter, warning))
}

/// The route through EventBridge: the found line and the covering rule's name.
async fn through_eventbridge(
    clients: &Clients,
    target: &Target,
    queue_arn: &str,
    config: &NotificationConfiguration,
    warnings: &mut Vec<String>,
) -> Result<(String, String), WiringError> {
    let enabled = config.event_bridge_configuration().is_some();
    let others = || {
        let destinations: Vec<&str> = config
            .queue_configurations()
            .iter()
            .map(QueueConfiguration::queue_arn)
            .collect();
        if destinations.is_empty() {
            String::new()
        } else {
            format!(" (it notifies {})", destinations.join(", "))
        }
    };
    let no_notification = || WiringError::NoNotification {
        bucket: target.bucket.clone(),
        prefix: target.prefix.clone(),
        queue_arn: queue_arn.into(),
        others: others(),
    };
    let rules = match rules_targeting(&clients.events, queue_arn).await {
        Ok(rules) => rules,
        // Without EventBridge on, a setup of direct notifications need not grant events:*:
        // what is missing then is the notification.
        Err(_) if !enabled => return Err(no_notification()),
        Err(e) => return Err(e),
    };
    if rules.is_empty() {
        return Err(if enabled {
            WiringError::NoRule {
                bucket: target.bucket.clone(),
                prefix: target.prefix.clone(),
                queue_arn: queue_arn.into(),
            }
        } else {
            no_notification()
        });
    }
    let mut first_miss = None;
    for rule in &rules {
        let described = clients
            .events
            .describe_rule()
            .name(rule)
            .send()
            .await
            .map_err(|e| events_error(queue_arn, &failure(&e)))?;
        let pattern = described.event_pattern().unwrap_or_default();
        let disabled = described
            .state()
            .is_some_and(|s| s.as_str().eq_ignore_ascii_case("DISABLED"));
        let matched = if disabled {
            Err("it is disabled".to_string())
        } else {
            pattern_covers(pattern, target)
        };
        match matched {
            Ok(rule_warnings) => {
                if !enabled {
                    return Err(WiringError::EventBridgeOff {
                        bucket: target.bucket.clone(),
                        queue_arn: queue_arn.into(),
                        rule: rule.clone(),
                    });
                }
                warnings.extend(
                    rule_warnings
                        .into_iter()
                        .map(|w| format!("the EventBridge rule `{rule}`: {w}")),
                );
                let found = format!(
                    "EventBridge rule `{rule}` sends Object Created of the bucket `{}` under `{}` to {queue_arn}",
                    target.bucket, target.prefix
                );
                return Ok((found, rule.clone()));
            }
            Err(reason) => {
                first_miss.get_or_insert(WiringError::RuleMisses {
                    bucket: target.bucket.clone(),
                    prefix: target.prefix.clone(),
                    queue_arn: queue_arn.into(),
                    rule: rule.clone(),
                    reason,
                });
            }
        }
    }
    Err(if enabled {
        first_miss.expect("`rules` is not empty")
    } else {
        no_notification()
    })
}

fn events_error(queue_arn: &str, f: &Failure) -> WiringError {
    if f.outage {
        WiringError::Outage {
            what: format!("the EventBridge rules targeting {queue_arn}"),
            reason: f.reason.clone(),
        }
    } else {
        WiringError::RulesDenied {
            queue_arn: queue_arn.into(),
            reason: f.reason.clone(),
        }
    }
}

/// The names of the default bus's rules that target the queue, every page.
async fn rules_targeting(
    events: &aws_sdk_eventbridge::Client,
    queue_arn: &str,
) -> Result<Vec<String>, WiringError> {
    let mut names = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = events
            .list_rule_names_by_target()
            .target_arn(queue_arn)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| events_error(queue_arn, &failure(&e)))?;
        names.extend(page.rule_names().iter().cloned());
        match page.next_token() {
            Some(token) if !token.is_empty() && names.len() < 10_000 => next = Some(token.into()),
            _ => return Ok(names),
        }
    }
}

/// Whether an EventBridge pattern takes every Object Created event of the bucket under the
/// prefix: Ok with warnings for matchers taken on trust, or why not.
fn pattern_covers(pattern: &str, target: &Target) -> Result<Vec<String>, String> {
    let pattern: Value = serde_json::from_str(pattern)
        .map_err(|e| format!("its event pattern is not JSON ({e})"))?;
    let mut warnings = Vec::new();
    let field = |path: &[&str]| {
        path.iter()
            .try_fold(&pattern, |value, key| value.get(key))
            .cloned()
    };
    let mut need = |path: &[&str], value: &str, what: &str| -> Result<(), String> {
        let Some(matchers) = field(path) else {
            return Ok(());
        };
        match matches(&matchers, value) {
            Some(true) => Ok(()),
            Some(false) => Err(format!(
                "its pattern's `{}` ({matchers}) does not take {what}",
                path.join(".")
            )),
            None => {
                warnings.push(format!(
                    "the matcher `{}` ({matchers}) is not understood by this check and was taken as matching {what}",
                    path.join(".")
                ));
                Ok(())
            }
        }
    };
    need(&["source"], "aws.s3", "aws.s3")?;
    need(&["detail-type"], "Object Created", "Object Created")?;
    need(
        &["detail", "bucket", "name"],
        &target.bucket,
        &format!("the bucket `{}`", target.bucket),
    )?;
    need(
        &["resources"],
        &format!("arn:aws:s3:::{}", target.bucket),
        &format!("the bucket `{}`", target.bucket),
    )?;
    if let Some(matchers) = field(&["detail", "object", "key"]) {
        match key_matches(&matchers, &target.prefix) {
            Some(true) => {}
            Some(false) => {
                return Err(format!(
                    "its pattern's `detail.object.key` ({matchers}) does not take every key under `{}`",
                    target.prefix
                ));
            }
            None => warnings.push(format!(
                "the matcher `detail.object.key` ({matchers}) is not understood by this check and was taken as covering `{}`",
                target.prefix
            )),
        }
    }
    Ok(warnings)
}

/// Whether a pattern field's matchers take `value`: `None` when a matcher is not understood
/// and none of the understood ones matches.
fn matches(matchers: &Value, value: &str) -> Option<bool> {
    any_matcher(matchers, |m| match m {
        Value::String(s) => Some(s == value),
        Value::Object(o) => match (o.get("prefix"), o.get("wildcard")) {
            (Some(Value::String(p)), _) => Some(value.starts_with(p.as_str())),
            (_, Some(Value::String(w))) => Some(wildcard(w, value)),
            _ => None,
        },
        _ => Some(false),
    })
}

/// Whether key matchers take every `.avro` key under `prefix`.
fn key_matches(matchers: &Value, prefix: &str) -> Option<bool> {
    any_matcher(matchers, |m| match m {
        // One key is not every key.
        Value::String(_) => Some(false),
        Value::Object(o) => match (o.get("prefix"), o.get("suffix"), o.get("wildcard")) {
            (Some(Value::String(p)), _, _) => Some(prefix.starts_with(p.as_str())),
            (_, Some(Value::String(s)), _) => Some(".avro".ends_with(s.as_str())),
            // `currents/*` or `currents/*.avro`: what precedes the first `*` must be a
            // prefix of ours, and what follows the last one a suffix of `.avro`.
            (_, _, Some(Value::String(w))) => Some(match (w.find('*'), w.rfind('*')) {
                (Some(first), Some(last)) => {
                    prefix.starts_with(&w[..first]) && ".avro".ends_with(&w[last + 1..])
                }
                _ => false,
            }),
            _ => None,
        },
        _ => Some(false),
    })
}

/// EventBridge's rule for a field's list of matchers: one that matches is enough. `None`
/// (not understood) only when no understood matcher matches and one was not understood.
fn any_matcher(matchers: &Value, verdict: impl Fn(&Value) -> Option<bool>) -> Option<bool> {
    let Value::Array(list) = matchers else {
        return None;
    };
    let mut unknown = false;
    for m in list {
        match verdict(m) {
            Some(true) => return Some(true),
            Some(false) => {}
            None => unknown = true,
        }
    }
    if unknown { None } else { Some(false) }
}

/// `*` matches any run of characters; nothing else is special.
fn wildcard(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || value.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    if !value.ends_with(last) {
        return false;
    }
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether some Allow statement of the queue's policy lets `sender` send to the queue (module
/// doc); a policy that cannot be read is taken as allowing, with a warning.
fn policy_allows(
    text: &str,
    sender: &str,
    queue_arn: &str,
    bucket: &str,
    warnings: &mut Vec<String>,
) -> bool {
    let Ok(policy) = serde_json::from_str::<Value>(text) else {
        warnings.push(
            "the queue's policy is not JSON; whether it lets the sender in was not checked".into(),
        );
        return true;
    };
    let statements = match policy.get("Statement") {
        Some(Value::Array(list)) => list.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let texts = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    statements.iter().any(|s| {
        let allow = s.get("Effect").and_then(Value::as_str) == Some("Allow");
        let principal = match s.get("Principal") {
            Some(Value::String(p)) => p == "*",
            Some(Value::Object(o)) => {
                texts(o.get("Service")).iter().any(|p| p == sender)
                    || texts(o.get("AWS")).iter().any(|p| p == "*")
            }
            _ => false,
        };
        let action = texts(s.get("Action")).iter().any(|a| {
            let a = a.to_ascii_lowercase();
            a == "*" || wildcard(&a, "sqs:sendmessage")
        });
        let resource = {
            let resources = texts(s.get("Resource"));
            resources.is_empty() || resources.iter().any(|r| wildcard(r, queue_arn))
        };
        // S3's requests carry the bucket's ARN as aws:SourceArn: a condition naming another
        // bucket lets that one in, not ours. (EventBridge's carry the rule's.)
        let bucket_arn = format!("arn:aws:s3:::{bucket}");
        let source = sender != S3 || source_arns(s).iter().all(|arn| wildcard(arn, &bucket_arn));
        allow && principal && action && resource && source
    })
}

/// The values of `aws:SourceArn` conditions of a statement (ArnEquals, ArnLike, StringEquals…).
fn source_arns(statement: &Value) -> Vec<String> {
    let Some(Value::Object(conditions)) = statement.get("Condition") else {
        return Vec::new();
    };
    let mut arns = Vec::new();
    for (_operator, keys) in conditions {
        let Value::Object(keys) = keys else { continue };
        for (key, values) in keys {
            if key.eq_ignore_ascii_case("aws:SourceArn") {
                match values {
                    Value::String(s) => arns.push(s.clone()),
                    Value::Array(list) => {
                        arns.extend(list.iter().filter_map(|v| v.as_str().map(str::to_string)))
                    }
                    _ => {}
                }
            }
        }
    }
    arns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(prefix: &str) -> Target {
        Target {
            bucket: "b".into(),
            prefix: normal_prefix(prefix),
        }
    }

    #[test]
    fn patterns_that_take_the_bucket_and_prefix_and_those_that_do_not() {
        let t = target("currents");
        let good = r#"{"source":["aws.s3"],"detail-type":["Object Created"],"detail":{"bucket":{"name":["b"]},"object":{"key":[{"prefix":"curr"}]}}}"#;
        assert_eq!(pattern_covers(good, &t), Ok(vec![]));
        // Fields left out match everything.
        assert_eq!(pattern_covers(r#"{"source":["aws.s3"]}"#, &t), Ok(vec![]));
        for (bad, said) in [
            (r#"{"source":["aws.ec2"]}"#, "source"),
            (r#"{"detail-type":["Object Deleted"]}"#, "detail-type"),
            (
                r#"{"detail":{"bucket":{"name":["other"]}}}"#,
                "detail.bucket.name",
            ),
            (r#"{"resources":["arn:aws:s3:::other"]}"#, "resources"),
            (
                r#"{"detail":{"object":{"key":[{"prefix":"other/"}]}}}"#,
                "detail.object.key",
            ),
            (
                r#"{"detail":{"object":{"key":[{"prefix":"currents/event_type=x/"}]}}}"#,
                "detail.object.key",
            ),
            (
                r#"{"detail":{"object":{"key":[{"suffix":".json"}]}}}"#,
                "detail.object.key",
            ),
            ("not json", "not JSON"),
        ] {
            let reason = pattern_covers(bad, &t).unwrap_err();
            assert!(reason.contains(said), "{bad}: {reason}");
        }
        let wild = r#"{"detail":{"bucket":{"name":[{"wildcard":"b*"}]},"object":{"key":[{"wildcard":"currents/*.avro"}]}}}"#;
        assert_eq!(pattern_covers(wild, &t), Ok(vec![]));
        let odd = r#"{"detail":{"object":{"key":[{"anything-but":{"prefix":"tmp/"}}]}}}"#;
        assert_eq!(pattern_covers(odd, &t).unwrap().len(), 1);
    }

    #[test]
    fn policies_that_let_the_sender_in_and_those_that_do_not() {
        let arn = "arn:aws:sqs:us-east-1:1:q";
        let allows = |policy: &str, sender: &str| {
            let mut w = Vec::new();
            policy_allows(policy, sender, arn, "b", &mut w)
        };
        let s3 = r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"s3.amazonaws.com"},"Action":"sqs:SendMessage","Resource":"arn:aws:sqs:us-east-1:1:q","Condition":{"ArnEquals":{"aws:SourceArn":"arn:aws:s3:::b"}}}]}"#;
        assert!(allows(s3, S3));
        assert!(!allows(s3, EVENTS));
        let other_bucket = s3.replace(":::b\"", ":::other\"");
        assert!(!allows(&other_bucket, S3));
        let star = r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":["sqs:*"],"Resource":"arn:aws:sqs:*"}}"#;
        assert!(allows(star, S3) && allows(star, EVENTS));
        let deny = s3.replace("Allow", "Deny");
        assert!(!allows(&deny, S3));
        let receive = s3.replace("sqs:SendMessage", "sqs:ReceiveMessage");
        assert!(!allows(&receive, S3));
        let events = r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":["events.amazonaws.com"]},"Action":"sqs:SendMessage","Resource":"arn:aws:sqs:us-east-1:1:q","Condition":{"ArnEquals":{"aws:SourceArn":"arn:aws:events:us-east-1:1:rule/r"}}}]}"#;
        assert!(allows(events, EVENTS));
    }

    #[test]
    fn wildcards_match_runs_of_characters() {
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("*", ""));
        assert!(wildcard("arn:aws:sqs:*:1:*", "arn:aws:sqs:us-east-1:1:q"));
        assert!(!wildcard("a*c", "ab"));
        assert!(!wildcard("abc", "abcd"));
        assert!(wildcard("a*b*c", "axxbyyc"));
        assert!(!wildcard("a*b*c", "axxc"));
    }
}
