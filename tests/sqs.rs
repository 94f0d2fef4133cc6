//! Event-driven discovery against moto, which serves S3 and SQS and delivers the bucket's
//! ObjectCreated notifications to a queue: keys as S3 encodes them, what is dropped, the
//! visibility heartbeat, and messages deleted only once their objects are recorded. These test
//! the real client against moto; the listener's logic on a paused clock, with the testkit's
//! in-memory queue, is in tests/listener.rs.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use currents_heap::ledger::{Entry, Ledger, Outcome};
use currents_heap::notifications::sqs::{Queue, SqsQueue};
use currents_heap::store::{LocalStore, ObjectMeta};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::inbox::KeyEnd;
use currents_heap::worker::listener::{Listener, ListenerSettings};
use currents_heap::worker::scheduler::Work;
use support::TempDir;
use support::moto::{ACCESS_KEY, Moto, SECRET_KEY};
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "currents";
const PREFIX: &str = "exports/";

/// moto with a bucket whose ObjectCreated notifications go to a fresh queue.
struct Wired {
    moto: Moto,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

async fn wired() -> Wired {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .build(),
    );
    let queue_url = sqs
        .create_queue()
        .queue_name("currents-notifications")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    moto.client
        .put_bucket_notification_configuration()
        .bucket(BUCKET)
        .notification_configuration(
            NotificationConfiguration::builder()
                .queue_configurations(
                    QueueConfiguration::builder()
                        .queue_arn(arn)
                        .events(Event::from("s3:ObjectCreated:*"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    Wired {
        moto,
        sqs,
        queue_url,
    }
}

impl Wired {
    async fn put(&self, key: &str, bytes: &[u8]) {
        self.moto
            .client
            .put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .unwrap();
    }

    fn queue(&self) -> Arc<dyn Queue> {
        Arc::new(SqsQueue::from_client(self.sqs.clone(), &self.queue_url))
    }

    /// Messages in the queue, visible or hidden.
    async fn messages_left(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap();
        attributes.values().map(|v| v.parse::<u64>().unwrap()).sum()
    }

    /// Receives directly, as another replica would, waiting up to `wait` for a message.
    async fn receive_elsewhere(&self, wait: Duration) -> usize {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .wait_time_seconds(wait.as_secs() as i32)
            .visibility_timeout(1)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
            .len()
    }
}

fn settings(visibility: Duration) -> ListenerSettings {
    ListenerSettings {
        bucket: BUCKET.into(),
        prefix: PREFIX.into(),
        visibility,
        retry_after: Duration::from_secs(1),
        max_held: 64,
    }
}

fn key_of(work: &Work) -> String {
    work.key().to_string()
}

/// The next `n` objects the listener hands on, within a deadline that only fails the test.
async fn take(listener: &mut Listener, n: usize) -> Vec<Work> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), listener.work.recv()).await {
            Ok(Some(work)) => got.push(work),
            Ok(None) => panic!("the listener stopped after {got:?}"),
            Err(_) => panic!("only {} of {n} objects arrived: {got:?}", got.len()),
        }
    }
    got
}

fn recorded(work: &Work) -> KeyEnd {
    let meta = work.meta();
    KeyEnd::Recorded {
        size: meta.size,
        etag: meta.etag.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_become_work_with_keys_decoded_and_strays_dropped() {
    let wired = wired().await;
    let state = TempDir::new("sqs-state");
    let ledger = Arc::new(Ledger::new(Arc::new(LocalStore::new(&state.0))));
    let folder =
        "exports/dataexport.prod-03.S3.integration.abc/event_type=users.messages.email.Open";
    let wanted = [
        format!("{folder}/date=2026-11-27-13/277540.+0+0000004000.avro"),
        format!("{folder}/date=2026-11-27-13/with space and = sign.avro"),
        format!("{folder}/date=2026-11-27-13/café ✓ 日本.avro"),
        format!("{folder}/date=2026-11-27-14/a%2Bb 100%.avro"),
        // Outside the Currents layout but under the prefix: handed on to be recorded failed.
        "exports/stray.avro".to_string(),
    ];
    for key in &wanted {
        wired.put(key, b"not really avro").await;
    }
    // Dropped: outside the prefix, not .avro.
    wired.put("elsewhere/x.avro", b"x").await;
    wired
        .put(&format!("{folder}/date=2026-11-27-13/notes.txt"), b"x")
        .await;
    // Dropped: a test event and a body that is not a notification.
    for body in [
        r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"currents"}"#,
        "not json",
    ] {
        wired
            .sqs
            .send_message()
            .queue_url(&wired.queue_url)
            .message_body(body)
            .send()
            .await
            .unwrap();
    }

    let stop = CancellationToken::new();
    let mut listener = Listener::spawn(
        wired.queue(),
        ledger.clone(),
        settings(Duration::from_secs(30)),
        Arc::new(Metrics::new()),
        stop.clone(),
    );
    let got = take(&mut listener, wanted.len()).await;
    let keys: BTreeSet<String> = got
        .iter()
        .map(|w| key_of(w).trim_start_matches(PREFIX).to_string())
        .collect();
    let expected: BTreeSet<String> = wanted
        .iter()
        .map(|k| k.trim_start_matches(PREFIX).to_string())
        .collect();
    assert_eq!(keys, expected);
    let outside: Vec<&Work> = got
        .iter()
        .filter(|w| matches!(w, Work::OutsideLayout(_)))
        .collect();
    assert_eq!(outside.len(), 1, "{outside:?}");
    assert_eq!(key_of(outside[0]), "stray.avro");

    // Held until recorded: the other notifications are gone, these five are not.
    for work in &got {
        listener.ended(work.key(), recorded(work));
    }
    stop.cancel();
    listener.finish().await;
    assert_eq!(
        wired.messages_left().await,
        0,
        "every message is deleted once its object is recorded, and the strays at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_already_recorded_is_not_handed_on_and_its_message_is_deleted() {
    let wired = wired().await;
    let state = TempDir::new("sqs-state");
    let ledger = Arc::new(Ledger::new(Arc::new(LocalStore::new(&state.0))));
    let folder = "exports/event_type=users.behaviors.CustomEvent/date=2026-11-27-13";
    wired.put(&format!("{folder}/done.avro"), b"one").await;
    wired.put(&format!("{folder}/new.avro"), b"two").await;
    // The first is recorded already (by another replica, or before a restart), at the
    // version the notification names.
    let head = wired
        .moto
        .client
        .head_object()
        .bucket(BUCKET)
        .key(format!("{folder}/done.avro"))
        .send()
        .await
        .unwrap();
    let done = ObjectMeta {
        key: format!("{folder}/done.avro")
            .trim_start_matches(PREFIX)
            .into(),
        size: 3,
        etag: head.e_tag.unwrap(),
    };
    ledger
        .record(&Entry::new(&done, Outcome::Done))
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let mut listener = Listener::spawn(
        wired.queue(),
        ledger,
        settings(Duration::from_secs(30)),
        Arc::new(Metrics::new()),
        stop.clone(),
    );
    let got = take(&mut listener, 1).await;
    assert_eq!(
        key_of(&got[0]),
        "event_type=users.behaviors.CustomEvent/date=2026-11-27-13/new.avro"
    );
    listener.ended(got[0].key(), recorded(&got[0]));
    stop.cancel();
    listener.finish().await;
    assert_eq!(wired.messages_left().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_stays_hidden_past_its_visibility_and_comes_back_if_unrecorded() {
    let wired = wired().await;
    let state = TempDir::new("sqs-state");
    let ledger = Arc::new(Ledger::new(Arc::new(LocalStore::new(&state.0))));
    wired
        .put(
            "exports/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/slow.avro",
            b"x",
        )
        .await;
    let stop = CancellationToken::new();
    // Hidden for 2 s at a time, renewed every second while the object is in flight.
    let mut listener = Listener::spawn(
        wired.queue(),
        ledger,
        settings(Duration::from_secs(2)),
        Arc::new(Metrics::new()),
        stop.clone(),
    );
    let got = take(&mut listener, 1).await;
    // Another replica long-polls for 5 s, well past the 2 s visibility: it gets nothing.
    assert_eq!(wired.receive_elsewhere(Duration::from_secs(5)).await, 0);
    // Not recorded (e.g. Heap unreachable): the message comes back for another try.
    listener.ended(
        got[0].key(),
        KeyEnd::NotRecorded {
            after: Duration::ZERO,
        },
    );
    stop.cancel();
    listener.finish().await;
    assert_eq!(wired.receive_elsewhere(Duration::from_secs(5)).await, 1);
}

/// The control for the heartbeat test: without a heartbeat, moto does give a message back
/// after its visibility runs out, so that test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_heartbeat_a_message_comes_back_after_its_visibility() {
    let wired = wired().await;
    wired
        .put("exports/event_type=T/date=2026-11-27-13/a.avro", b"x")
        .await;
    let queue = wired.queue();
    let mut first = Vec::new();
    while first.is_empty() {
        first = queue
            .receive(10, Duration::from_secs(5), Duration::from_secs(2))
            .await
            .unwrap();
    }
    assert_eq!(wired.receive_elsewhere(Duration::from_secs(5)).await, 1);
}

// ---------------------------------------------------------------------------------------
// The engine with notifications: moto serves the source and the queue, the state is local,
// the Heap stand-in counts what arrives and what arrives twice.

use currents_heap::aws::CountRequests;
use currents_heap::currents::key::DateHour;
use currents_heap::store::ObjectStore;
use currents_heap::worker::engine::Notifications;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Outcome as RunOutcome, Plan, Report};
use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs};
use currents_heap_testkit::standin::{Standin, StandinConfig};

const APP_ID: &str = "64";

/// Real Currents files (the fixtures), as (event type, bytes).
fn currents_files(n: usize) -> Vec<(String, Vec<u8>)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_ROOT);
    fixture_specs()
        .iter()
        .take(n)
        .map(|spec| {
            (
                spec.event_type.clone(),
                std::fs::read(root.join(spec.key())).unwrap(),
            )
        })
        .collect()
}

/// A key this hour, with a file name that S3 encodes in notifications: `+`, spaces, `=`
/// and non-ASCII letters.
fn odd_key(event_type: &str, n: usize) -> String {
    let hour = DateHour::now();
    format!(
        "{PREFIX}dataexport.prod-03.S3.integration.abc/event_type={event_type}/date={hour}/file {n}+0+000000400{n} = é✓.avro"
    )
}

impl Wired {
    fn counted_queue(&self, metrics: Arc<Metrics>) -> Arc<dyn Queue> {
        let config = self
            .sqs
            .config()
            .to_builder()
            .interceptor(CountRequests::new("sqs", metrics))
            .build();
        Arc::new(SqsQueue::from_client(
            aws_sdk_sqs::Client::from_conf(config),
            &self.queue_url,
        ))
    }

    fn engine(
        &self,
        state: &TempDir,
        standin: &Standin,
        reconcile: Duration,
        visibility: Duration,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let source: Arc<dyn ObjectStore> =
            Arc::new(self.moto.counted_store(BUCKET, PREFIX, metrics.clone()));
        let output = support::heap_output(standin, APP_ID, Duration::from_secs(30));
        Engine::start(
            support::engine_settings(Admission::fixed(4)),
            Plan::Live {
                lookback: Lookback::Hours(72),
                poll_interval: reconcile,
            },
            source,
            Arc::new(LocalStore::new(&state.0)),
            output,
            metrics.clone(),
        )
        .with_notifications(Notifications {
            queue: self.counted_queue(metrics),
            settings: settings(visibility),
        })
    }
}

/// A running engine, stopped (like SIGTERM) by `stop`.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Report>,
}

fn drive(engine: Engine) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.drive(async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) -> Report {
        let _ = self.stop.send(());
        self.task.await.unwrap()
    }
}

/// Waits for a condition that the system under test makes true, failing after a deadline.
async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recorded_done(state: &TempDir) -> usize {
    Ledger::new(Arc::new(LocalStore::new(&state.0)))
        .finished("")
        .await
        .map(|f| f.count(Outcome::Done))
        .unwrap_or(0)
}

fn list_requests(metrics: &Metrics) -> u64 {
    metrics
        .counts()
        .aws_requests
        .get(&("s3".to_string(), "ListObjectsV2".to_string()))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_objects_reach_heap_from_notifications_with_no_listing_between_reconciliations() {
    let wired = wired().await;
    let state = TempDir::new("sqs-e2e");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let running = drive(wired.engine(
        &state,
        &standin,
        Duration::from_secs(3600),
        Duration::from_secs(30),
        metrics.clone(),
    ));
    until("the first reconciliation", async || {
        metrics.counts().polls >= 1
    })
    .await;
    let lists_after_reconciliation = list_requests(&metrics);

    let files = currents_files(4);
    let mut latencies = Vec::new();
    for (n, (event_type, bytes)) in files.iter().enumerate() {
        let put_at = std::time::Instant::now();
        wired.put(&odd_key(event_type, n), bytes).await;
        until("the object recorded", async || {
            recorded_done(&state).await > n
        })
        .await;
        latencies.push(put_at.elapsed());
    }
    until("every message deleted", async || {
        wired.messages_left().await == 0
    })
    .await;
    let counts = metrics.counts();
    eprintln!(
        "notification to Heap and recorded, per object: {:?}; SQS requests {:?}",
        latencies,
        counts
            .aws_requests
            .iter()
            .filter(|((service, _), _)| service == "sqs")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        list_requests(&metrics),
        lists_after_reconciliation,
        "no S3 listing between reconciliations"
    );
    let report = running.stop().await;
    assert_eq!(report.outcome, RunOutcome::Finished, "{}", report.render());
    assert_eq!(report.counts.objects_done, 4);
    let sent = report.counts.total().sent;
    assert!(sent > 0);
    assert_eq!(standin.stored().len() as u64, sent);
    assert_eq!(standin.report().duplicates, 0);
    let keys: BTreeSet<String> = Ledger::new(Arc::new(LocalStore::new(&state.0)))
        .finished("")
        .await
        .unwrap()
        .done_keys()
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = files
        .iter()
        .enumerate()
        .map(|(n, (t, _))| odd_key(t, n).trim_start_matches(PREFIX).to_string())
        .collect();
    assert_eq!(keys, expected, "recorded under the keys as S3 holds them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_whose_notification_was_lost_is_found_by_the_reconciliation() {
    let wired = wired().await;
    // The notification is lost: the bucket stops notifying before the upload.
    wired
        .moto
        .client
        .put_bucket_notification_configuration()
        .bucket(BUCKET)
        .notification_configuration(NotificationConfiguration::builder().build())
        .send()
        .await
        .unwrap();
    let state = TempDir::new("sqs-lost");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let files = currents_files(1);
    wired.put(&odd_key(&files[0].0, 0), &files[0].1).await;
    let metrics = Arc::new(Metrics::new());
    let running = drive(wired.engine(
        &state,
        &standin,
        Duration::from_secs(1),
        Duration::from_secs(30),
        metrics.clone(),
    ));
    until("the reconciliation records it", async || {
        recorded_done(&state).await == 1
    })
    .await;
    assert!(
        metrics.counts().polls >= 2,
        "queued at its second sighting, not its first"
    );
    let report = running.stop().await;
    assert_eq!(report.counts.objects_done, 1, "{}", report.render());
    assert_eq!(standin.report().duplicates, 0);
    assert_eq!(standin.stored().len() as u64, report.counts.total().sent);
}

/// Two replicas on one queue and one state, with objects that take longer than the
/// visibility timeout (Heap answers after 3 s, messages hide for 2 s at a time): every
/// object is recorded once, nothing reaches Heap twice. Three rounds, for the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_queue_process_each_object_once_even_past_the_visibility_timeout() {
    let wired = wired().await;
    let state = TempDir::new("sqs-two");
    let mut config = StandinConfig::new(APP_ID);
    config.response_delay = Duration::from_secs(3);
    let standin = Standin::start(config).await.unwrap();
    let (a, b) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let visibility = Duration::from_secs(2);
    let reconcile = Duration::from_secs(3600);
    let first = drive(wired.engine(&state, &standin, reconcile, visibility, a.clone()));
    let second = drive(wired.engine(&state, &standin, reconcile, visibility, b.clone()));
    until("both reconciled", async || {
        a.counts().polls >= 1 && b.counts().polls >= 1
    })
    .await;
    // Distinct files, so that an event arriving twice can only be one sent twice.
    let files = currents_files(18);
    assert_eq!(files.len(), 18);
    let mut uploaded = 0;
    for round in files.chunks(6) {
        for (event_type, bytes) in round {
            wired.put(&odd_key(event_type, uploaded), bytes).await;
            uploaded += 1;
        }
        until("every object recorded", async || {
            recorded_done(&state).await == uploaded
        })
        .await;
    }
    until("every message deleted", async || {
        wired.messages_left().await == 0
    })
    .await;
    let (ra, rb) = (first.stop().await, second.stop().await);
    assert_eq!(
        ra.counts.objects_done + rb.counts.objects_done,
        uploaded as u64,
        "each object recorded once:\n{}\n{}",
        ra.render(),
        rb.render()
    );
    assert!(
        ra.counts.objects_done > 0 && rb.counts.objects_done > 0,
        "both replicas took work: {} and {}",
        ra.counts.objects_done,
        rb.counts.objects_done
    );
    let report = standin.report();
    assert_eq!(report.duplicates, 0, "{report:?}");
    assert_eq!(
        standin.stored().len() as u64,
        ra.counts.total().sent + rb.counts.total().sent
    );
}

/// The binary as an operator runs it: `run --sqs-queue-url` against moto (AWS_ENDPOINT_URL
/// serves S3 and SQS alike), a new object reaches Heap, SIGTERM exits 0, the message is
/// gone, and no credential appears in the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_from_notifications_and_stops_cleanly_on_sigterm() {
    let wired = wired().await;
    let state = TempDir::new("sqs-bin");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args(["run", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
        .arg("--state")
        .arg(&state.0)
        .args(["--s3-path-style", "--sqs-queue-url", &wired.queue_url])
        .env("AWS_ENDPOINT_URL", &wired.moto.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("HEAP_API_URL", standin.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let files = currents_files(2);
    for (n, (event_type, bytes)) in files.iter().enumerate() {
        wired.put(&odd_key(event_type, n), bytes).await;
    }
    until("both objects recorded", async || {
        recorded_done(&state).await == 2
    })
    .await;
    until("every message deleted", async || {
        wired.messages_left().await == 0
    })
    .await;
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("objects: 2 done"), "{stdout}");
    // The start line says where new objects come from, and how often it reconciles.
    let start = stderr
        .lines()
        .find(|l| l.contains("started:"))
        .unwrap_or_else(|| panic!("no start line in\n{stderr}"));
    assert!(
        start.contains(&format!("listening to the queue {}", wired.queue_url))
            && start.contains("reconciling every 3600s")
            && !start.contains("polling every"),
        "{start}"
    );
    assert_eq!(standin.report().duplicates, 0);
    for secret in [SECRET_KEY, ACCESS_KEY] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "`{secret}` leaked:\n{stdout}\n{stderr}"
        );
    }
}

fn binary(
    wired: &Wired,
    state: &TempDir,
    standin: &Standin,
    extra: &[&str],
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(["run", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
        .arg("--state")
        .arg(&state.0)
        .args(["--s3-path-style"])
        .args(extra)
        .env("AWS_ENDPOINT_URL", &wired.moto.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("HEAP_API_URL", standin.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_does_not_exist_exits_2_naming_the_option() {
    let wired = wired().await;
    let state = TempDir::new("sqs-missing");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let missing = format!("{}/123456789012/no-such-queue", wired.moto.endpoint);
    let output = binary(&wired, &state, &standin, &["--sqs-queue-url", &missing])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--sqs-queue-url") && stderr.contains("NonExistentQueue"),
        "{stderr}"
    );
    assert!(
        stderr.lines().count() < 5,
        "one readable line, not an SDK dump: {stderr}"
    );
    assert!(!stderr.contains(SECRET_KEY));
}

/// SIGTERM while an object is in flight (Heap answers after 5 s, the shutdown timeout is
/// 1 s): its message is visible again as soon as the process has exited, not a whole
/// visibility timeout (60 s) later; and a notification for an object that no longer
/// exists is spent, not received again forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_gives_messages_back_at_once_and_a_gone_object_spends_its_message() {
    let wired = wired().await;
    let state = TempDir::new("sqs-stop");
    let mut config = StandinConfig::new(APP_ID);
    config.response_delay = Duration::from_secs(5);
    let standin = Standin::start(config).await.unwrap();
    let ghost = format!(
        r#"{{"Records":[{{"eventName":"ObjectCreated:Put","s3":{{"bucket":{{"name":"{BUCKET}"}},"object":{{"key":"exports/event_type%3DT/date%3D2026-11-27-13/ghost.avro","size":9,"eTag":"abc"}}}}}}]}}"#
    );
    wired
        .sqs
        .send_message()
        .queue_url(&wired.queue_url)
        .message_body(ghost)
        .send()
        .await
        .unwrap();
    let child = binary(
        &wired,
        &state,
        &standin,
        &[
            "--sqs-queue-url",
            &wired.queue_url,
            "--shutdown-timeout",
            "1s",
        ],
    )
    .env("RUST_LOG", "info")
    .spawn()
    .unwrap();
    until("the notification for a gone object is spent", async || {
        wired.messages_left().await == 0
    })
    .await;
    let files = currents_files(1);
    wired.put(&odd_key(&files[0].0, 0), &files[0].1).await;
    until("the object reached Heap", async || {
        standin.report().requests > 0
    })
    .await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("1 abandoned"), "{stdout}");
    // Another replica gets it at once (visibility 1 s here, so a hidden message would
    // need the whole 60 s the binary asked for).
    assert_eq!(wired.receive_elsewhere(Duration::from_secs(3)).await, 1);
}

/// Credentials the queue refuses (moto enforcing auth answers 403 InvalidClientTokenId, as
/// XML) are a setting to fix: exit 2 at start naming `--sqs-queue-url` and the AWS error
/// code, not a warning and a failing receive every 5 s forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_queue_refuses_exit_2_naming_the_option_and_the_code() {
    fn running_on(line: &str) -> Option<String> {
        let url = line.split("Running on ").nth(1)?.trim();
        url.starts_with("http://").then(|| url.to_string())
    }
    let exe = tokio::task::spawn_blocking(support::moto::moto_server)
        .await
        .unwrap();
    let (_moto, endpoint) = support::install::launch(
        tokio::process::Command::new(&exe)
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .args(["-H", "127.0.0.1", "-p", "0"]),
        running_on,
    )
    .await;
    let state = TempDir::new("sqs-denied");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args(["run", "--source", &format!("s3://{BUCKET}/{PREFIX}")])
        .arg("--state")
        .arg(&state.0)
        .args(["--s3-path-style", "--sqs-queue-url"])
        .arg(format!("{endpoint}/123456789012/currents"))
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the run exits instead of receiving forever")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    // The start-up check uses the credentials first, on the source: refused there, named
    // there (the queue would refuse them the same way).
    assert!(
        (stderr.contains("--sqs-queue-url") && stderr.contains("InvalidClientTokenId"))
            || (stderr.contains("--source") && stderr.contains("InvalidAccessKeyId")),
        "{stderr}"
    );
    assert!(stderr.contains("credentials were refused"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY), "{stderr}");
}
