//! A worker started with notifications, as after every rollout or restart: objects that
//! predate the notifications, the pending and lag gauges, and readiness on a new bucket.
//! In process, on a paused clock; local stores; a queue that stays empty (no notification
//! arrives, so whatever is done is the reconciliation's doing); Heap is the stand-in.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::ledger::Ledger;
use currents_heap::notifications::sqs::{Message, Queue, QueueFuture};
use currents_heap::store::LocalStore;
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::Notifications;
use currents_heap::worker::listener::ListenerSettings;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Outcome, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{TempDir, until};

const APP_ID: &str = "79";
const RECONCILE: Duration = Duration::from_secs(3600);

/// A queue nothing is ever sent to: each receive waits its long poll out, empty.
struct Silent;

impl Queue for Silent {
    fn describe(&self) -> String {
        "https://sqs.us-east-1.amazonaws.com/123456789012/currents".into()
    }

    fn receive(
        &self,
        _max: u8,
        wait: Duration,
        _visibility: Duration,
    ) -> QueueFuture<'_, Vec<Message>> {
        Box::pin(async move {
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            Ok(Vec::new())
        })
    }

    fn delete<'a>(&'a self, _receipts: &'a [String]) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn change_visibility<'a>(
        &'a self,
        _receipts: &'a [String],
        _visibility: Duration,
    ) -> QueueFuture<'a, Vec<(usize, String)>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

fn engine(source: &TempDir, state: &TempDir, standin: &Standin, metrics: Arc<Metrics>) -> Engine {
    Engine::start(
        support::engine_settings(Admission::fixed(4)),
        Plan::Live {
            lookback: Lookback::Hours(72),
            poll_interval: RECONCILE,
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)),
        support::heap_output(standin, APP_ID, Duration::from_secs(30)),
        metrics,
    )
    .without_handover()
    .with_notifications(Notifications {
        queue: Arc::new(Silent),
        settings: ListenerSettings {
            bucket: "currents".into(),
            prefix: String::new(),
            visibility: Duration::from_secs(30),
            retry_after: RECONCILE,
            max_held: 64,
        },
    })
}

/// The value of a gauge in the `/metrics` text.
fn gauge(metrics: &Metrics, name: &str) -> i64 {
    let text = metrics.render();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

async fn recorded(state: &TempDir) -> Vec<String> {
    Ledger::new(Arc::new(LocalStore::new(&state.0)))
        .finished("")
        .await
        .map(|f| f.done_keys().map(str::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn objects_that_predate_the_notifications_are_processed_at_the_first_reconciliation() {
    let source = TempDir::new("sqs-start-source");
    let state = TempDir::new("sqs-start-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let now = DateHour::now().hours_since_epoch();
    let options = SynthOptions {
        events: 20,
        null_percent: 0,
        ..SynthOptions::default()
    };
    // Three objects of five hours ago, written before this worker listened; one of this
    // hour, whose notification may still be on its way.
    let old = write_custom_events(
        &source.0,
        DateHour::from_hours_since_epoch(now - 5),
        3,
        &options,
    )
    .unwrap();
    let newest_options = SynthOptions {
        seed: 50_000,
        ..options.clone()
    };
    write_custom_events(
        &source.0,
        DateHour::from_hours_since_epoch(now),
        1,
        &newest_options,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine(&source, &state, &standin, metrics.clone()).drive(
        async move {
            let _ = stopped.await;
        },
    ));
    let started = tokio::time::Instant::now();
    until(|| async { recorded(&state).await.len() >= 3 }).await;
    let waited = started.elapsed();
    // The gauges follow the objects as they end, not the last reconciliation's listing.
    let (pending, lag) = (
        gauge(&metrics, "currents_heap_objects_pending"),
        gauge(&metrics, "currents_heap_lag_seconds"),
    );
    let this_hour_age = unix_secs_now() - now * 3600;
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert!(
        waited < RECONCILE,
        "the objects of five hours ago waited {waited:?}, a whole reconcile interval"
    );
    let done = recorded(&state).await;
    assert_eq!(done.len(), 3, "only the old ones: {done:?}");
    assert!(
        done.iter()
            .all(|k| k.contains(&DateHour::from_hours_since_epoch(now - 5).to_string()))
    );
    assert_eq!(standin.stored().len(), old.len());
    assert_eq!(pending, 1, "the newest object, left to its notification");
    assert!(
        (0..=this_hour_age + 1).contains(&lag),
        "lag {lag}s: the age of this hour, not of the hour already done"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_listening_to_a_queue_is_ready_on_a_new_bucket() {
    let source = TempDir::new("sqs-new-source");
    let state = TempDir::new("sqs-new-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine(&source, &state, &standin, metrics.clone()).drive(
        async move {
            let _ = stopped.await;
        },
    ));
    until(|| async { metrics.counts().polls >= 1 }).await;
    let ready_within = RECONCILE * 3 + Duration::from_secs(60);
    let not_ready = metrics.not_ready(unix_secs_now(), ready_within);
    stop.send(()).unwrap();
    worker.await.unwrap();
    assert_eq!(not_ready, None, "a new bucket, no event_type= folder yet");
}

/// The tester's case: objects of this hour and the previous one, uploaded before the worker
/// (or its queue) existed, so no notification will ever bring them. They must reach Heap
/// within the start-up grace, not a whole reconcile interval later (nor never, for a pod
/// restarted more often than that). An object uploaded after the start stays left to its
/// notification.
#[tokio::test(start_paused = true)]
async fn objects_of_the_newest_hours_that_predate_the_start_are_processed_within_the_grace() {
    let source = TempDir::new("sqs-grace-source");
    let state = TempDir::new("sqs-grace-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let now = DateHour::now().hours_since_epoch();
    let options = |seed| SynthOptions {
        events: 10,
        null_percent: 0,
        seed,
        ..SynthOptions::default()
    };
    let this_hour = DateHour::from_hours_since_epoch(now);
    let last_hour = DateHour::from_hours_since_epoch(now - 1);
    write_custom_events(&source.0, this_hour, 2, &options(1)).unwrap();
    write_custom_events(&source.0, last_hour, 2, &options(10_000)).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine(&source, &state, &standin, metrics.clone()).drive(
        async move {
            let _ = stopped.await;
        },
    ));
    let started = tokio::time::Instant::now();
    until(|| async { metrics.counts().polls >= 1 }).await;
    // Uploaded after the first reconciliation: its notification is the one to bring it.
    let later = copy_to_a_new_key(&source.0, this_hour);
    until(|| async { recorded(&state).await.len() >= 4 }).await;
    let waited = started.elapsed();
    // Past the grace's second pass and well before the next interval.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let done = recorded(&state).await;
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert!(
        waited <= Duration::from_secs(180),
        "objects that predate the start waited {waited:?}"
    );
    assert_eq!(done.len(), 4, "the four that predate the start: {done:?}");
    assert!(
        !done.iter().any(|d| d.ends_with(&later)),
        "the object uploaded after the start is left to its notification: {done:?}"
    );
}

/// Copies one object of `hour` to a new file name beside it (another offset), as a new
/// upload; returns the new file name.
fn copy_to_a_new_key(root: &std::path::Path, hour: DateHour) -> String {
    fn find(dir: &std::path::Path, hour: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()? {
            let path = entry.ok()?.path();
            if path.is_dir() {
                if let Some(found) = find(&path, hour) {
                    return Some(found);
                }
            } else if path.to_string_lossy().contains(hour) {
                return Some(path);
            }
        }
        None
    }
    let from = find(root, &format!("date={hour}")).expect("an object of the hour");
    let old = from.file_name().unwrap().to_string_lossy().to_string();
    let name = format!("{}+0000990000.avro", old.rsplit_once('+').unwrap().0);
    std::fs::copy(&from, from.with_file_name(&name)).unwrap();
    name
}
