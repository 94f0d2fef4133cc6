//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod azurite;
pub mod conformance;
pub mod fake_gcs;
pub mod install;
pub mod moto;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::process::Stdio;

use currents_heap::currents::datum::Datum;
use currents_heap::currents::event::{CUSTOM_EVENT, CustomHttpEvent, Property, User};
use currents_heap_testkit::standin::Standin;
use tokio::process::Command;

/// A fresh, empty directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "currents-heap-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CustomEvent for `identity`, with a few properties like real ones.
/// Feeds `events` of `object` to a delivery, as the pipeline would: the receiver for
/// `Delivery::run`, the tracker they resolve, and the feeding task.
#[allow(dead_code)]
pub fn feed(
    events: Vec<CustomHttpEvent>,
    object: &str,
) -> (
    tokio::sync::mpsc::Receiver<currents_heap::heap::delivery::Submission>,
    Arc<currents_heap::heap::delivery::Tracker>,
    tokio::task::JoinHandle<()>,
) {
    use currents_heap::heap::delivery::{Submission, Tracker};
    let tracker = Arc::new(Tracker::default());
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let (feeder_tracker, object) = (tracker.clone(), Arc::<str>::from(object));
    let feeder = tokio::spawn(async move {
        for (record, event) in (0u64..).zip(events) {
            let submission = Submission {
                event,
                object: object.clone(),
                tracker: feeder_tracker.clone(),
                record,
                parts: currents_heap::heap::delivery::Parts::EventAndUpdate,
            };
            if tx.send(submission).await.is_err() {
                break;
            }
        }
    });
    (rx, tracker, feeder)
}

/// Polls a condition on the (paused) clock every 100 ms: virtual time, so no real waiting.
#[allow(dead_code)]
pub async fn until<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    for _ in 0..100_000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the condition never held");
}

pub fn custom_event(n: usize, identity: &str) -> CustomHttpEvent {
    CustomHttpEvent {
        event_type: Arc::from(CUSTOM_EVENT),
        id: format!("evt-{n:06}"),
        time: 1_764_248_400 + n as i64,
        user: User {
            user_id: Some(format!("{:024x}", n)),
            external_user_id: Some(identity.to_string()),
            device_id: Some(format!("device-{}", n % 97)),
            timezone: Some("Europe/Berlin".into()),
        },
        properties: vec![
            (Arc::from("app_id"), Property::Avro(Datum::String("app-1".into()))),
            (Arc::from("platform"), Property::Avro(Datum::String("ios".into()))),
            (Arc::from("name"), Property::Avro(Datum::String("Added To Cart".into()))),
            (
                Arc::from("custom_properties"),
                Property::Json(serde_json::from_str(&format!(r#"{{"sku":"sku-{n}","price":{n}.5,"tags":["a","b"],"cart":{{"items":{}}}}}"#, n % 7)).unwrap()),
            ),
        ],
    }
}

/// The bundled synthetic Currents bucket.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bucket")
}

pub fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Event ids a run should deliver, by `date=` hour, read from the fixtures' expected JSON:
/// every event with a non-empty `external_user_id` (the default identity).
pub fn sendable_by_hour() -> HashMap<String, HashSet<String>> {
    let mut by_hour: HashMap<String, HashSet<String>> = HashMap::new();
    let mut dirs = vec![fixtures()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                let hour = path.to_str().unwrap().split("date=").nth(1).unwrap()[..13].to_string();
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let event: serde_json::Value = serde_json::from_str(line).unwrap();
                    if event["user"]["external_user_id"]
                        .as_str()
                        .is_some_and(|s| !s.is_empty())
                    {
                        by_hour
                            .entry(hour.clone())
                            .or_default()
                            .insert(event["id"].as_str().unwrap().to_string());
                    }
                }
            }
        }
    }
    by_hour
}

pub fn all_sendable() -> HashSet<String> {
    sendable_by_hour().into_values().flatten().collect()
}

/// The Heap app id the binary tests use.
pub const APP_ID: &str = "77";

/// A copy of the fixture bucket as a local source, an empty state, and the binary run
/// against them and a stand-in.
pub struct Setup {
    pub source: TempDir,
    pub state: TempDir,
}

impl Setup {
    pub fn new() -> Self {
        let source = TempDir::new("source");
        copy_tree(&fixtures(), &source.0);
        Setup {
            source,
            state: TempDir::new("state"),
        }
    }

    pub fn command(&self, standin: &Standin, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
        command.args(args);
        // replay needs only the state: dead letters hold the events.
        if args[0] != "replay" {
            command.arg("--source").arg(&self.source.0);
        }
        command
            .arg("--state")
            .arg(&self.state.0)
            .env("HEAP_API_URL", standin.url())
            .env("HEAP_APP_ID", APP_ID)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    pub async fn run(&self, standin: &Standin, args: &[&str]) -> (i32, String, String) {
        output(self.command(standin, args)).await
    }
}

/// Runs `command` to its end: exit code (-1 for a signal), stdout and stderr.
pub async fn output(mut command: Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn stored_ids(standin: &Standin) -> HashSet<String> {
    standin.stored().into_keys().collect()
}

/// Engine settings as `run` starts with them, but for how many objects run at once: a stop
/// waits 30 s for objects in flight, a bounded run gives a failing state 60 s.
pub fn engine_settings(
    object_concurrency: currents_heap::worker::scheduler::Admission,
) -> currents_heap::worker::Settings {
    currents_heap::worker::Settings {
        object_concurrency,
        shutdown_timeout: std::time::Duration::from_secs(30),
        bounded_state_retry: std::time::Duration::from_secs(60),
        dry_run: false,
    }
}

/// Delivery to the stand-in as app `app_id`, with the default mapping and a seeded jitter,
/// so retries repeat from run to run.
pub fn heap_output(
    standin: &Standin,
    app_id: &str,
    request_timeout: std::time::Duration,
) -> currents_heap::worker::Output {
    use currents_heap::heap::client::HeapClient;
    use currents_heap::heap::delivery::DeliveryConfig;
    use currents_heap::heap::map::{HeapMapper, MappingConfig};
    currents_heap::worker::Output::Heap(Box::new(currents_heap::worker::engine::HeapOutput {
        client: HeapClient::new(&standin.url(), request_timeout).unwrap(),
        config: DeliveryConfig {
            jitter_seed: Some(7),
            ..DeliveryConfig::new(app_id)
        },
        mapper: HeapMapper::new(MappingConfig::default()),
    }))
}

/// Engine settings as `run` starts with them: 4 objects at a time, more while they are
/// small (see [`engine_settings`]).
pub fn settings() -> currents_heap::worker::Settings {
    use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
    engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET))
}

/// Delivery to the stand-in as [`APP_ID`], with 30 s requests (see [`heap_output`]).
pub fn heap(standin: &Standin) -> currents_heap::worker::Output {
    heap_output(standin, APP_ID, std::time::Duration::from_secs(30))
}

/// Sends `name` (`-TERM`, `-KILL`, `-STOP`...) to a child process, as an operator's `kill` would.
#[cfg(unix)]
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// A registry with one series in every labelled family: prometheus-client encodes a family
/// (even its `# TYPE` line) only once it has a series, so a test that lists what /metrics can
/// show emits one of each first.
pub fn metrics_with_every_family() -> currents_heap::telemetry::Metrics {
    use currents_heap::telemetry::events::{
        EventsRead, HeapRequest, NotificationDropped, StoreRequest,
    };
    let metrics = currents_heap::telemetry::Metrics::new();
    metrics.lease_role(currents_heap::telemetry::LeaseRole::Held);
    EventsRead {
        event_type: "x",
        count: 1,
    }
    .emit(&metrics);
    HeapRequest {
        status: Some(429),
        latency: std::time::Duration::from_millis(5),
    }
    .emit(&metrics);
    StoreRequest {
        service: "sqs",
        operation: "ReceiveMessage",
    }
    .emit(&metrics);
    NotificationDropped::TestEvent.emit(&metrics);
    currents_heap::telemetry::events::UserPropertyRequest {
        status: Some(200),
        budget: 5_000,
    }
    .emit(&metrics);
    metrics
}

/// Every metric family /metrics can show, as `(name, type)` from its `# TYPE` lines (a
/// counter's name without `_total`, as declared).
pub fn exported_metric_families() -> Vec<(String, String)> {
    metrics_with_every_family()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// Copies every object of `from` into `to`, keys as they are; returns how many.
pub async fn copy_all(
    from: &dyn currents_heap::store::ObjectStore,
    to: &dyn currents_heap::store::ObjectStore,
) -> usize {
    let objects = from.list("").await.unwrap();
    for meta in &objects {
        to.put(&meta.key, from.get(&meta.key).await.unwrap())
            .await
            .unwrap();
    }
    objects.len()
}
