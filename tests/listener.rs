//! The engine with notifications, on a paused clock: the testkit's in-memory queue stands in
//! for SQS (tests/sqs.rs runs the real client against moto), the source and the state are
//! local stores and Heap is the stand-in. What the listener promises: an object named by a
//! notification (S3 or EventBridge, bare or in SNS) is delivered and then its message deleted;
//! a broken record does not hold back the good ones beside it; a message whose object was not
//! recorded comes back after the retry delay; a held message stays hidden past its visibility;
//! a stop gives held messages back at once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::ledger::{Ledger, Outcome as Recorded};
use currents_heap::store::{LocalStore, ObjectMeta, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::Notifications;
use currents_heap::worker::listener::ListenerSettings;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Outcome, Plan, Report};
use currents_heap_testkit::queue::{MemoryQueue, Op};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Keys, Ops};
use support::{TempDir, fixtures, until};
use tokio::sync::oneshot;
use tokio::time::Instant;

const APP_ID: &str = "77";
const BUCKET: &str = "currents-bucket";
const RETRY_AFTER: Duration = Duration::from_secs(45);
const VISIBILITY: Duration = Duration::from_secs(30);

/// Fixture keys (relative to the fixture bucket), all with `+` in their names.
fn fixture_keys(n: usize) -> Vec<String> {
    let root = fixtures();
    let mut keys: Vec<String> = walk(&root)
        .into_iter()
        .map(|path| {
            path.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .filter(|key| key.ends_with(".avro"))
        .collect();
    keys.sort();
    assert!(keys.len() >= n);
    keys.truncate(n);
    keys
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A live engine on an empty local source, reconciling hourly, with notifications from
/// `queue`; objects arrive later with [`World::upload`].
struct World {
    source: TempDir,
    state: TempDir,
    queue: Arc<MemoryQueue>,
    metrics: Arc<Metrics>,
    standin: Standin,
}

impl World {
    async fn new(config: StandinConfig) -> World {
        World {
            source: TempDir::new("listener-source"),
            state: TempDir::new("listener-state"),
            queue: Arc::new(MemoryQueue::new("notifications")),
            metrics: Arc::new(Metrics::new()),
            standin: Standin::start(config).await.unwrap(),
        }
    }

    fn source(&self) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(&self.source.0))
    }

    fn engine(&self, source: Arc<dyn ObjectStore>) -> Engine {
        Engine::start(
            support::engine_settings(Admission::fixed(4)),
            Plan::Live {
                lookback: Lookback::All,
                poll_interval: Duration::from_secs(3600),
            },
            source,
            Arc::new(LocalStore::new(&self.state.0)),
            support::heap_output(&self.standin, APP_ID, Duration::from_secs(3600)),
            self.metrics.clone(),
        )
        .with_notifications(Notifications {
            queue: self.queue.clone(),
            settings: ListenerSettings {
                bucket: BUCKET.into(),
                prefix: String::new(),
                visibility: VISIBILITY,
                retry_after: RETRY_AFTER,
                max_held: 64,
            },
        })
    }

    /// Copies a fixture object into the source, as an upload would; its version as S3
    /// would name it in a notification.
    async fn upload(&self, key: &str) -> ObjectMeta {
        let to = self.source.0.join(key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(fixtures().join(key), &to).unwrap();
        let listed = self.source().list(key).await.unwrap();
        listed.into_iter().find(|m| m.key == key).unwrap()
    }

    async fn recorded_done(&self) -> usize {
        Ledger::new(Arc::new(LocalStore::new(&self.state.0)))
            .finished("")
            .await
            .map(|f| f.count(Recorded::Done))
            .unwrap_or(0)
    }

    /// Objects the listener queued from notifications.
    fn queued_from_notifications(&self) -> u64 {
        self.metric("currents_heap_notification_objects_total")
            .parse()
            .unwrap()
    }

    fn metric(&self, name: &str) -> String {
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
            .unwrap_or_default()
    }

    fn unreadable_records(&self) -> String {
        self.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("currents_heap_notification_records_unreadable_total"))
            .unwrap_or("")
            .to_string()
    }
}

/// An S3 event notification naming `objects` (keys encoded the way S3 encodes them).
fn s3_notification(objects: &[&ObjectMeta]) -> serde_json::Value {
    let records: Vec<serde_json::Value> = objects
        .iter()
        .map(|meta| {
            let key = meta.key.replace('+', "%2B").replace('=', "%3D");
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": BUCKET},
                       "object": {"key": key, "size": meta.size, "eTag": meta.etag.trim_matches('"')}}
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}

/// An S3 event as EventBridge delivers it to a queue: the key verbatim.
fn eventbridge(detail_type: &str, meta: &ObjectMeta) -> String {
    serde_json::json!({
        "version": "0", "id": "5b1e5f5a-0a65-4f0b-8c6e-1c2f7a6b9d10", "detail-type": detail_type,
        "source": "aws.s3", "account": "111122223333", "time": "2026-12-04T10:00:00Z",
        "region": "eu-west-1", "resources": [format!("arn:aws:s3:::{BUCKET}")],
        "detail": {"version": "0", "bucket": {"name": BUCKET},
                   "object": {"key": meta.key, "size": meta.size, "etag": meta.etag.trim_matches('"'),
                              "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "111122223333", "reason": "PutObject"}
    })
    .to_string()
}

fn sns(inner: &str) -> String {
    serde_json::json!({"Type": "Notification", "MessageId": "x", "TopicArn": "arn:aws:sns:eu-west-1:111122223333:t", "Message": inner})
        .to_string()
}

/// The engine driven in a task, stopped (like SIGTERM) by [`Running::stop`].
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Report>,
}

fn drive(engine: Engine) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
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

/// Waits (virtual time) for the first reconciliation: what is uploaded after it can only
/// arrive by notification until the next one, an hour later.
async fn reconciled(world: &World) {
    until(|| async { world.metrics.counts().polls >= 1 }).await;
}

#[tokio::test(start_paused = true)]
async fn eventbridge_notifications_bring_their_objects_and_are_deleted_once_recorded() {
    let world = World::new(StandinConfig::new(APP_ID)).await;
    let running = drive(world.engine(world.source()));
    reconciled(&world).await;
    let keys = fixture_keys(2);
    let (bare, wrapped) = (world.upload(&keys[0]).await, world.upload(&keys[1]).await);
    assert!(bare.key.contains('+'), "a Currents key: {}", bare.key);
    let bare_id = world.queue.send(eventbridge("Object Created", &bare));
    let wrapped_id = world
        .queue
        .send(sns(&eventbridge("Object Created", &wrapped)));
    // Other S3 events: deleted without work.
    let deleted_id = world.queue.send(eventbridge("Object Deleted", &bare));
    until(|| async { world.recorded_done().await == 2 }).await;
    until(|| async { world.queue.is_empty() }).await;
    // Queued from the notifications, not found by the hourly reconciliation. (Not asserted
    // as elapsed time: on a paused clock with real file and HTTP I/O, virtual time runs ahead
    // of a loaded machine.)
    assert_eq!(world.queued_from_notifications(), 2);
    let mut deleted = world.queue.deleted();
    deleted.sort();
    let mut expected = vec![bare_id, wrapped_id, deleted_id];
    expected.sort();
    assert_eq!(deleted, expected);
    let report = running.stop().await;
    assert_eq!(report.counts.objects_done, 2, "{}", report.render());
    assert_eq!(
        world.standin.stored().len() as u64,
        report.counts.total().sent
    );
    assert_eq!(world.standin.report().duplicates, 0);
}

#[tokio::test(start_paused = true)]
async fn a_broken_record_does_not_hold_back_the_good_ones_beside_it() {
    let world = World::new(StandinConfig::new(APP_ID)).await;
    let running = drive(world.engine(world.source()));
    reconciled(&world).await;
    let keys = fixture_keys(2);
    let (a, b) = (world.upload(&keys[0]).await, world.upload(&keys[1]).await);
    let mut body = s3_notification(&[&a, &b]);
    // A third record names a created object but has no `s3` entity.
    body["Records"]
        .as_array_mut()
        .unwrap()
        .insert(1, serde_json::json!({"eventName": "ObjectCreated:Put"}));
    let id = world.queue.send(body.to_string());
    until(|| async { world.recorded_done().await == 2 }).await;
    until(|| async { world.queue.deleted() == vec![id.clone()] }).await;
    assert_eq!(world.queued_from_notifications(), 2);
    assert_eq!(
        world.unreadable_records(),
        "currents_heap_notification_records_unreadable_total 1"
    );
    let report = running.stop().await;
    assert_eq!(report.counts.objects_done, 2, "{}", report.render());
    assert_eq!(world.standin.report().duplicates, 0);
}

#[tokio::test(start_paused = true)]
async fn a_message_whose_object_was_not_recorded_comes_back_after_the_retry_delay() {
    let world = World::new(StandinConfig::new(APP_ID)).await;
    // The object's first read fails: it ends "retry", not recorded.
    let source = Arc::new(FaultyStore::new(world.source()));
    let running = drive(world.engine(source.clone()));
    reconciled(&world).await;
    let key = &fixture_keys(1)[0];
    source.fail_nth(Ops::Reads, Keys::exact(key.clone()), 1);
    let meta = world.upload(key).await;
    let id = world.queue.send(s3_notification(&[&meta]).to_string());
    until(|| async { source.failures() == 1 }).await;
    // Given back with the retry delay: hidden for longer than the heartbeat ever asks (the
    // visibility, 30 s), up to 45 s from when it was given back.
    let hidden_for = || {
        world
            .queue
            .peek(&id)
            .and_then(|m| m.hidden_until)
            .map(|at| at.saturating_duration_since(Instant::now()))
    };
    until(|| async { hidden_for().is_some_and(|left| left > VISIBILITY) }).await;
    let left = hidden_for().unwrap();
    assert!(
        left <= RETRY_AFTER && left > RETRY_AFTER - Duration::from_secs(5),
        "hidden for {left:?} more (retry delay {RETRY_AFTER:?})"
    );
    assert_eq!(world.queue.peek(&id).unwrap().receives, 1);
    until(|| async { world.queue.peek(&id).is_some_and(|m| m.receives == 2) }).await;
    until(|| async { world.recorded_done().await == 1 }).await;
    until(|| async { world.queue.is_empty() }).await;
    let report = running.stop().await;
    assert_eq!(report.counts.objects_done, 1, "{}", report.render());
    assert_eq!(world.queue.deleted(), vec![id]);
}

#[tokio::test(start_paused = true)]
async fn a_held_message_stays_hidden_past_its_visibility_and_a_stop_gives_it_back_at_once() {
    // Heap answers after ten minutes: the object stays in flight.
    let world = World::new(StandinConfig {
        response_delay: Duration::from_secs(600),
        ..StandinConfig::new(APP_ID)
    })
    .await;
    let running = drive(world.engine(world.source()));
    reconciled(&world).await;
    let meta = world.upload(&fixture_keys(1)[0]).await;
    let id = world.queue.send(s3_notification(&[&meta]).to_string());
    until(|| async { world.standin.report().requests > 0 }).await;
    // Four visibility timeouts later, still hidden and received once: the heartbeat renews it.
    tokio::time::sleep(VISIBILITY * 4).await;
    let held = world.queue.peek(&id).unwrap();
    assert_eq!(held.receives, 1, "{held:?}");
    assert!(held.hidden_until.is_some(), "{held:?}");
    assert!(world.queue.calls(Op::ChangeVisibility) >= 4);
    // A stop: the object is abandoned after the 30 s shutdown timeout, and its message is
    // visible as soon as the engine returns, for another replica.
    let report = running.stop().await;
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(report.counts.objects_abandoned, 1, "{}", report.render());
    assert_eq!(world.queue.visible(), 1);
    assert!(world.queue.deleted().is_empty());
    assert_eq!(world.recorded_done().await, 0);
}

/// Queue outages: a failed receive is retried after a pause, and the message still arrives.
#[tokio::test(start_paused = true)]
async fn a_failing_receive_is_retried_and_the_object_still_arrives() {
    let world = World::new(StandinConfig::new(APP_ID)).await;
    world.queue.fail_next(Op::Receive, 3, "ServiceUnavailable");
    let running = drive(world.engine(world.source()));
    reconciled(&world).await;
    let meta = world.upload(&fixture_keys(1)[0]).await;
    world.queue.send(s3_notification(&[&meta]).to_string());
    until(|| async { world.recorded_done().await == 1 }).await;
    until(|| async { world.queue.is_empty() }).await;
    assert!(world.queue.calls(Op::Receive) > 3);
    let report = running.stop().await;
    assert_eq!(report.counts.objects_done, 1, "{}", report.render());
}
