//! The start's wiring check against moto (S3, SQS and EventBridge in one server): the bucket's
//! notification, or an EventBridge rule, must bring the objects under `--source` to the queue.
//! moto 5.2.5 keeps a bucket's `EventBridgeConfiguration` but leaves it out of
//! GetBucketNotificationConfiguration's answer, so the cases where EventBridge is on read the
//! bucket's configuration from a one-answer S3 stand-in (`eventbridge_on`); the rules and the
//! queue are moto's.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;
use currents_heap::currents::key::DateHour;
use currents_heap::notifications::wiring::{Clients, WiringError, check_with};
use currents_heap::telemetry::Metrics;
use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::TempDir;
use support::moto::{ACCESS_KEY, Moto, SECRET_KEY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUCKET: &str = "currents";
const PREFIX: &str = "currents/";
const APP_ID: &str = "64";

/// moto with the bucket and a queue, and clients built as the worker builds them.
struct Setup {
    moto: Moto,
    clients: Clients,
    metrics: Arc<Metrics>,
    queue_url: String,
    queue_arn: String,
}

fn sdk_config(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            ACCESS_KEY, SECRET_KEY, None, None, "test",
        )))
        .build()
}

async fn setup() -> Setup {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let metrics = Arc::new(Metrics::new());
    let clients = Clients::from_sdk_config(&sdk_config(&moto.endpoint), true, metrics.clone());
    let queue_url = create_queue(&clients, "currents-heap").await;
    let queue_arn = queue_arn(&clients, &queue_url).await;
    Setup {
        moto,
        clients,
        metrics,
        queue_url,
        queue_arn,
    }
}

async fn create_queue(clients: &Clients, name: &str) -> String {
    clients
        .sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

async fn queue_arn(clients: &Clients, url: &str) -> String {
    clients
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone()
}

impl Setup {
    /// The bucket notifies `arn` of `events`, with these (name, value) filter rules.
    async fn notify(&self, arn: &str, events: &[&str], filters: &[(&str, &str)]) {
        let mut queue = QueueConfiguration::builder()
            .id("currents-to-heap")
            .queue_arn(arn)
            .set_events(Some(events.iter().map(|e| Event::from(*e)).collect()));
        if !filters.is_empty() {
            let rules = filters
                .iter()
                .map(|(name, value)| {
                    FilterRule::builder()
                        .name(FilterRuleName::from(*name))
                        .value(*value)
                        .build()
                })
                .collect();
            queue = queue.filter(
                NotificationConfigurationFilter::builder()
                    .key(S3KeyFilter::builder().set_filter_rules(Some(rules)).build())
                    .build(),
            );
        }
        self.moto
            .client
            .put_bucket_notification_configuration()
            .bucket(BUCKET)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(queue.build().unwrap())
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    /// One fixture object under the prefix, in an hour the lookback covers.
    async fn put_fixture(&self) {
        let spec = &fixture_specs()[0];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_ROOT);
        let hour = DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 5);
        let key = format!(
            "{PREFIX}dataexport.prod-03.S3.integration.abc/event_type={}/date={hour}/0+0+0000000001.avro",
            spec.event_type
        );
        self.moto
            .client
            .put_object()
            .bucket(BUCKET)
            .key(&key)
            .body(ByteStream::from(
                std::fs::read(root.join(spec.key())).unwrap(),
            ))
            .send()
            .await
            .unwrap();
    }

    /// The binary's `command` on this bucket and queue, a local state and the stand-in.
    fn binary(&self, standin: &Standin, state: &TempDir, command: &str) -> tokio::process::Command {
        let mut binary = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"));
        binary
            .args([command, "--source", &format!("s3://{BUCKET}/{PREFIX}")])
            .arg("--state")
            .arg(&state.0)
            .args(["--s3-path-style", "--sqs-queue-url", &self.queue_url])
            .env("HEAP_API_URL", standin.url())
            .env("HEAP_APP_ID", APP_ID)
            .env("NO_COLOR", "1")
            .kill_on_drop(true);
        self.moto.aws_env(&mut binary);
        binary
    }

    async fn check(&self) -> Result<currents_heap::notifications::wiring::WiringOk, WiringError> {
        check_with(&self.clients, &self.queue_url, BUCKET, PREFIX).await
    }

    /// An EventBridge rule with this pattern, targeting the queue.
    async fn rule(&self, name: &str, pattern: &str) {
        self.clients
            .events
            .put_rule()
            .name(name)
            .event_pattern(pattern)
            .send()
            .await
            .unwrap();
        self.clients
            .events
            .put_targets()
            .rule(name)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("queue")
                    .arn(&self.queue_arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    /// These clients, but the bucket's notification configuration is "send to EventBridge".
    async fn eventbridge_on(&self) -> Clients {
        let body = r#"<?xml version="1.0" encoding="UTF-8"?><NotificationConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><EventBridgeConfiguration></EventBridgeConfiguration></NotificationConfiguration>"#;
        let endpoint = one_answer(body).await;
        let mut clients = self.clients.clone();
        clients.s3 =
            Clients::from_sdk_config(&sdk_config(&endpoint), true, self.metrics.clone()).s3;
        clients
    }

    fn requests(&self, service: &str) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .filter(|l| {
                l.starts_with("currents_heap_requests_total")
                    && l.contains(&format!("service=\"{service}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// An HTTP server that answers every request with `body` (200, XML); its URL.
async fn one_answer(body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

const PATTERN: &str = r#"{"source":["aws.s3"],"detail-type":["Object Created"],"detail":{"bucket":{"name":["currents"]},"object":{"key":[{"prefix":"currents/"}]}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_to_the_queue_covering_the_prefix_passes_and_names_itself() {
    let s = setup().await;
    s.notify(
        &s.queue_arn,
        &["s3:ObjectCreated:*"],
        &[("prefix", PREFIX), ("suffix", ".avro")],
    )
    .await;
    let ok = s.check().await.unwrap();
    assert!(
        ok.found.contains("`currents-to-heap`")
            && ok.found.contains("s3:ObjectCreated:*")
            && ok.found.contains("prefix `currents/`")
            && ok.found.contains(&s.queue_arn),
        "{}",
        ok.found
    );
    // moto's queue has no policy: a warning, not a failure (moto delivers without one).
    assert!(
        ok.warnings.iter().any(|w| w.contains("no access policy")),
        "{:?}",
        ok.warnings
    );
    assert_eq!(
        s.requests("sqs"),
        2 + 1,
        "create, ARN, and the check's attributes"
    );
    assert_eq!(s.requests("s3"), 1, "GetBucketNotificationConfiguration");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_prefix_filter_covers_and_put_alone_is_a_warning() {
    let s = setup().await;
    s.notify(
        &s.queue_arn,
        &["s3:ObjectCreated:Put"],
        &[("prefix", "curr")],
    )
    .await;
    let ok = s.check().await.unwrap();
    assert!(ok.found.contains("prefix `curr`"), "{}", ok.found);
    assert!(
        ok.warnings
            .iter()
            .any(|w| w.contains("CompleteMultipartUpload")),
        "{:?}",
        ok.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_that_miss_keys_of_the_source_fail_naming_the_filter() {
    let s = setup().await;
    for (filters, named) in [
        (vec![("prefix", "other/")], "prefix filter `other/`"),
        (
            vec![("prefix", "currents/event_type=x/")],
            "prefix filter `currents/event_type=x/`",
        ),
        (vec![("suffix", ".json")], "suffix filter `.json`"),
    ] {
        s.notify(&s.queue_arn, &["s3:ObjectCreated:*"], &filters)
            .await;
        let e = s.check().await.unwrap_err();
        assert!(matches!(e, WiringError::FilterMisses { .. }), "{e:?}");
        assert!(!e.is_outage());
        let text = e.to_string();
        assert!(
            text.contains(named) && text.contains(BUCKET) && text.contains(PREFIX),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_are_not_creations_fail() {
    let s = setup().await;
    s.notify(&s.queue_arn, &["s3:ObjectRemoved:*"], &[]).await;
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, WiringError::NotObjectCreated { .. }), "{e:?}");
    assert!(e.to_string().contains("s3:ObjectRemoved:*"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_notification_or_one_to_another_queue_fails_naming_bucket_and_queue() {
    let s = setup().await;
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, WiringError::NoNotification { .. }), "{e:?}");
    assert!(!e.is_outage());
    let text = e.to_string();
    assert!(
        text.contains(BUCKET) && text.contains(&s.queue_arn),
        "{text}"
    );
    let other_url = create_queue(&s.clients, "something-else").await;
    let other = queue_arn(&s.clients, &other_url).await;
    s.notify(&other, &["s3:ObjectCreated:*"], &[]).await;
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, WiringError::NoNotification { .. }), "{e:?}");
    assert!(
        e.to_string().contains(&format!("it notifies {other}")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventbridge_with_a_rule_to_the_queue_passes_and_without_one_fails() {
    let s = setup().await;
    let on = s.eventbridge_on().await;
    let e = check_with(&on, &s.queue_url, BUCKET, PREFIX)
        .await
        .unwrap_err();
    assert!(matches!(e, WiringError::NoRule { .. }), "{e:?}");
    assert!(e.to_string().contains(&s.queue_arn), "{e}");
    // A rule for another prefix does not cover.
    s.rule(
        "other-prefix",
        &PATTERN.replace(r#""prefix":"currents/""#, r#""prefix":"other/""#),
    )
    .await;
    let e = check_with(&on, &s.queue_url, BUCKET, PREFIX)
        .await
        .unwrap_err();
    assert!(matches!(e, WiringError::RuleMisses { .. }), "{e:?}");
    assert!(e.to_string().contains("other-prefix"), "{e}");
    s.rule("currents-heap-objects", PATTERN).await;
    let ok = check_with(&on, &s.queue_url, BUCKET, PREFIX).await.unwrap();
    assert!(ok.found.contains("`currents-heap-objects`"), "{}", ok.found);
    assert!(s.requests("events") >= 4, "{}", s.metrics.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_to_the_queue_while_the_bucket_does_not_send_to_eventbridge_fails() {
    let s = setup().await;
    s.rule("currents-heap-objects", PATTERN).await;
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, WiringError::EventBridgeOff { .. }), "{e:?}");
    assert!(e.to_string().contains("EventBridgeConfiguration"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_lets_another_bucket_in_fails() {
    let s = setup().await;
    s.notify(&s.queue_arn, &["s3:ObjectCreated:*"], &[]).await;
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"Service":"s3.amazonaws.com"}},"Action":"sqs:SendMessage","Resource":"{}","Condition":{{"ArnEquals":{{"aws:SourceArn":"arn:aws:s3:::another-bucket"}}}}}}]}}"#,
        s.queue_arn
    );
    s.clients
        .sqs
        .set_queue_attributes()
        .queue_url(&s.queue_url)
        .attributes(QueueAttributeName::Policy, &policy)
        .send()
        .await
        .unwrap();
    let e = s.check().await.unwrap_err();
    assert!(matches!(e, WiringError::PolicyRefuses { .. }), "{e:?}");
    assert!(e.to_string().contains("s3.amazonaws.com"), "{e}");
    let good = policy.replace("another-bucket", BUCKET);
    s.clients
        .sqs
        .set_queue_attributes()
        .queue_url(&s.queue_url)
        .attributes(QueueAttributeName::Policy, &good)
        .send()
        .await
        .unwrap();
    let ok = s.check().await.unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_is_a_setting_and_a_refused_endpoint_an_outage() {
    let s = setup().await;
    let missing = format!("{}/123456789012/no-such-queue", s.moto.endpoint);
    let e = check_with(&s.clients, &missing, BUCKET, PREFIX)
        .await
        .unwrap_err();
    assert!(matches!(e, WiringError::QueueMissing { .. }), "{e:?}");
    assert!(
        !e.is_outage() && e.to_string().contains("no-such-queue"),
        "{e}"
    );
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let refused = Clients::from_sdk_config(&sdk_config(&closed), true, s.metrics.clone());
    let e = check_with(&refused, &format!("{closed}/1/q"), BUCKET, PREFIX)
        .await
        .unwrap_err();
    assert!(e.is_outage(), "{e:?}");
    assert!(!e.to_string().contains(SECRET_KEY));
}

/// The operator's case: `run --sqs-queue-url` on a queue the bucket does not notify exits 2
/// at start, naming the bucket and the queue, and sends nothing, though the bucket holds an
/// object the first reconciliation would send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_queue_the_bucket_does_not_notify_exits_2_before_sending() {
    let s = setup().await;
    s.put_fixture().await;
    let state = TempDir::new("wiring-run");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        s.binary(&standin, &state, "run").output(),
    )
    .await
    .expect("the run exits at start instead of running")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sqs-queue-url")
            && stderr.contains(&format!("`{BUCKET}`"))
            && stderr.contains(&s.queue_arn),
        "{stderr}"
    );
    assert_eq!(standin.report().requests, 0);
    assert!(!stderr.contains(SECRET_KEY));
}

/// The issue's check: `check` on moto with S3, SQS and the bucket's notification exits 0 and
/// its `sqs` line names the notification; without the notification it exits 2, the line
/// failing with its fix. Nothing is sent either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_s3_sqs_and_a_notification_exits_0_and_without_it_2() {
    let s = setup().await;
    s.put_fixture().await;
    let state = TempDir::new("wiring-check");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let sqs_line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("sqs "))
            .unwrap_or_else(|| panic!("no sqs line in:\n{stdout}"))
            .to_string()
    };

    let output = s.binary(&standin, &state, "check").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    let line = sqs_line(&stdout);
    assert!(
        line.contains(" fail ")
            && line.contains(&s.queue_arn)
            && line.contains("add a QueueConfiguration")
            && line.contains("docs/notifications.md#errors-and-their-fixes"),
        "{line}"
    );

    s.notify(
        &s.queue_arn,
        &["s3:ObjectCreated:*"],
        &[("prefix", PREFIX), ("suffix", ".avro")],
    )
    .await;
    let output = s.binary(&standin, &state, "check").output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let line = sqs_line(&stdout);
    // moto's queue has no access policy: a warning, which check allows.
    assert!(
        line.contains(" warn ") && line.contains("`currents-to-heap`"),
        "{line}"
    );
    for check in ["source", "state", "lease"] {
        let found = stdout.lines().find(|l| l.starts_with(check)).unwrap();
        assert!(found.contains(" ok "), "{found}");
    }
    assert_eq!(standin.report().requests, 0);
}
