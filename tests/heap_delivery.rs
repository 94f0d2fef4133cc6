//! Delivery to a Heap stand-in over real HTTP, on a paused clock: faults, poisoned events,
//! rate limits and hot identities, all deterministic (seeded faults and jitter).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::currents::event::CustomHttpEvent;
use currents_heap::deadletter::{DeadLetterFilter, DeadLetterStore};
use currents_heap::heap::client::HeapClient;
use currents_heap::heap::delivery::{Delivery, DeliveryConfig, DeliveryError, Tracker};
use currents_heap::heap::map::{HeapMapper, MappingConfig};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::heap::retry::RetryPolicy;
use currents_heap::store::LocalStore;
use currents_heap::telemetry::Counts;
use currents_heap_testkit::standin::{Fault, Standin, StandinConfig, StoredEvent};
use support::{TempDir, custom_event};
use tokio::time::Instant;

const APP_ID: &str = "4242";
const OBJECT: &str =
    "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0000000000.avro";

struct Run {
    stats: Counts,
    result: Result<(), DeliveryError>,
    tracker: Arc<Tracker>,
    dead_letters: DeadLetterStore,
    _dir: TempDir,
    elapsed: Duration,
}

fn delivery_config() -> DeliveryConfig {
    DeliveryConfig {
        jitter_seed: Some(11),
        retry: RetryPolicy {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(15 * 60),
        },
        ..DeliveryConfig::new(APP_ID)
    }
}

async fn deliver(heap_url: &str, config: DeliveryConfig, events: Vec<CustomHttpEvent>) -> Run {
    let dir = TempDir::new("delivery");
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::new(&dir.0))));
    let client = Arc::new(HeapClient::new(heap_url, Duration::from_secs(10)).unwrap());
    let delivery = Delivery::new(
        config,
        client,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let (rx, tracker, feeder) = support::feed(events, OBJECT);
    let start = Instant::now();
    let metrics = delivery.metrics();
    let result = delivery.run(rx).await;
    let stats = metrics.counts();
    let elapsed = start.elapsed();
    feeder.await.unwrap();
    Run {
        stats,
        result,
        tracker,
        dead_letters: DeadLetterStore::new(Arc::new(LocalStore::new(&dir.0))),
        _dir: dir,
        elapsed,
    }
}

/// A stand-in enforcing Heap's documented limits, and a delivery paced to the same limits.
async fn heap_with_documented_limits() -> (Standin, RateLimits, DeliveryConfig) {
    let limits = RateLimits::default();
    let standin = Standin::start(StandinConfig {
        limits,
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let config = DeliveryConfig {
        limits,
        ..delivery_config()
    };
    (standin, limits, config)
}

fn events(n: usize, identities: usize) -> Vec<CustomHttpEvent> {
    (0..n)
        .map(|i| custom_event(i, &format!("user-{}", i % identities)))
        .collect()
}

fn assert_stored_exactly(
    stored: &std::collections::HashMap<String, StoredEvent>,
    events: &[CustomHttpEvent],
) {
    let expected: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let actual: HashSet<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        actual.len(),
        expected.len(),
        "stored {} of {} events",
        actual.len(),
        expected.len()
    );
    assert_eq!(actual, expected);
    for (key, stored) in stored {
        assert_eq!(stored.event["idempotency_key"], key.as_str());
    }
}

/// The most events any sliding window of `window` saw, given their arrival times.
fn busiest_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test(start_paused = true)]
async fn under_twenty_percent_faults_every_event_arrives_exactly_once() {
    let standin = Standin::start(StandinConfig {
        fault_percent: 20,
        seed: 7,
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let events = events(6_000, 120);
    // Lingering batches fill up to 1,000 events, a handful of requests: batches of 25 make
    // about 290, enough for every kind of fault to come up several times.
    let config = DeliveryConfig {
        max_batch_events: 25,
        ..delivery_config()
    };
    let run = deliver(&standin.url(), config, events.clone()).await;
    run.result.unwrap();

    assert_stored_exactly(&standin.stored(), &events);
    let report = standin.report();
    assert_eq!(report.limit_violations, 0, "{report:?}");
    assert_eq!(report.invalid_requests, 0, "{:?}", report.invalid_reasons);
    // Every kind of fault was injected, and some caused repeats that Heap deduplicated.
    assert_eq!(report.faults.len(), 7, "{:?}", report.faults);
    assert!(report.duplicates > 0, "{report:?}");
    let total = run.stats.total();
    assert_eq!((total.read, total.sent, total.parked), (6_000, 6_000, 0));
    assert_eq!(run.tracker.delivered(), 6_000);
    assert!(run.stats.retries > 0);
    assert!(
        run.stats.requests.get("none").copied().unwrap_or(0) > 0,
        "{:?}",
        run.stats.requests
    );
}

#[tokio::test(start_paused = true)]
async fn a_poisoned_event_in_a_batch_of_1000_is_the_only_one_parked() {
    let events = events(1_000, 10);
    let poison = events[617].id.clone();
    let config = StandinConfig {
        poison_keys: HashSet::from([poison.clone()]),
        ..StandinConfig::new(APP_ID)
    };
    let standin = Standin::start(config).await.unwrap();
    let run = deliver(
        &standin.url(),
        DeliveryConfig {
            concurrency: 1,
            ..delivery_config()
        },
        events.clone(),
    )
    .await;
    run.result.unwrap();

    let stored = standin.stored();
    assert_eq!(stored.len(), 999);
    assert!(!stored.contains_key(&poison));
    assert_eq!(run.tracker.parked(), 1);
    assert_eq!(run.tracker.delivered(), 999);
    // Halving 1000 events isolates one in about log2(1000) rounds of two requests.
    assert!(
        run.stats.bisections >= 9 && run.stats.bisections <= 12,
        "{} bisections",
        run.stats.bisections
    );
    let files = run
        .dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    let letters = run.dead_letters.read(&files[0].key).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event.id, poison);
    assert_eq!(letters[0].object, OBJECT);
    assert!(
        letters[0].reason.contains("400") && letters[0].reason.contains("poisoned"),
        "{}",
        letters[0].reason
    );
}

#[tokio::test(start_paused = true)]
async fn the_pacer_never_trips_the_limits_and_keeps_up_with_them() {
    let (standin, limits, config) = heap_with_documented_limits().await;
    let events = events(40_000, 100);
    let run = deliver(&standin.url(), config, events.clone()).await;
    run.result.unwrap();

    let stored = standin.stored();
    assert_stored_exactly(&stored, &events);
    assert_eq!(standin.report().limit_violations, 0);
    let times: Vec<Instant> = stored.values().map(|s| s.received_at).collect();
    assert!(busiest_window(times, limits.window) <= 15_000);
    // 40,000 events at 15,000 a minute: full windows at 0 s and 60 s, the rest at 120 s.
    assert!(run.elapsed >= Duration::from_secs(120), "{:?}", run.elapsed);
    assert!(
        run.elapsed <= Duration::from_secs(124),
        "throughput fell short: {:?}",
        run.elapsed
    );
    assert!(run.stats.rate_limit_waits >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_hot_identity_does_not_stall_the_others() {
    let (standin, limits, config) = heap_with_documented_limits().await;
    // The hot identity's 3,000 events come first; 1,000 events of 50 others follow.
    let mut events: Vec<CustomHttpEvent> = (0..3_000).map(|i| custom_event(i, "hot")).collect();
    events.extend((3_000..4_000).map(|i| custom_event(i, &format!("cold-{}", i % 50))));
    let start = Instant::now();
    let run = deliver(&standin.url(), config, events.clone()).await;
    run.result.unwrap();

    let stored = standin.stored();
    assert_stored_exactly(&stored, &events);
    assert_eq!(standin.report().limit_violations, 0);
    let (hot, cold): (Vec<&StoredEvent>, Vec<&StoredEvent>) =
        stored.values().partition(|s| s.event["identity"] == "hot");
    let last_cold = cold.iter().map(|s| s.received_at - start).max().unwrap();
    assert!(
        last_cold < Duration::from_secs(1),
        "the others waited {last_cold:?} behind the hot identity"
    );
    let hot_times: Vec<Instant> = hot.iter().map(|s| s.received_at).collect();
    assert_eq!(busiest_window(hot_times, limits.window), 1_000);
    assert!(run.elapsed >= Duration::from_secs(120));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    standin.script([Fault::TooManyRequestsRetryAfter(7)]);
    let events = events(10, 3);
    let start = Instant::now();
    let run = deliver(&standin.url(), delivery_config(), events.clone()).await;
    run.result.unwrap();
    let first_stored = standin
        .stored()
        .values()
        .map(|s| s.received_at - start)
        .min()
        .unwrap();
    assert!(
        first_stored >= Duration::from_secs(7),
        "retried after {first_stored:?}"
    );
    assert!(
        first_stored < Duration::from_secs(8),
        "waited too long: {first_stored:?}"
    );
    assert_eq!(run.stats.retries, 1);
    assert_eq!(run.stats.requests.get("429"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn events_are_parked_with_the_last_error_when_retries_run_out() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    standin.script(std::iter::repeat_n(Fault::Unavailable, 1_000));
    let config = DeliveryConfig {
        retry: RetryPolicy {
            max_elapsed: Duration::from_secs(120),
            ..delivery_config().retry
        },
        ..delivery_config()
    };
    let run = deliver(&standin.url(), config, events(25, 5)).await;
    run.result.unwrap();
    assert!(standin.stored().is_empty());
    assert_eq!(run.tracker.parked(), 25);
    assert!(run.elapsed <= Duration::from_secs(121), "{:?}", run.elapsed);
    let files = run
        .dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    let letter = &run.dead_letters.read(&files[0].key).await.unwrap()[0];
    assert!(
        letter.reason.contains("gave up after") && letter.reason.contains("503"),
        "{}",
        letter.reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_wrong_app_id_or_url_stops_delivery_without_parking_or_dropping() {
    let standin = Standin::start(StandinConfig::new("another-app"))
        .await
        .unwrap();
    let run = deliver(&standin.url(), delivery_config(), events(50, 5)).await;
    let error = run.result.unwrap_err().to_string();
    assert!(
        error.contains("401") && error.contains("HEAP_APP_ID"),
        "{error}"
    );
    assert_eq!(
        run.tracker.resolved(),
        0,
        "nothing parked, skipped or counted as sent"
    );
    assert!(
        run.dead_letters
            .list(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    let wrong_path = format!("{}/not-heap", standin.url());
    let run = deliver(&wrong_path, delivery_config(), events(5, 5)).await;
    let error = run.result.unwrap_err().to_string();
    assert!(
        error.contains("404") && error.contains("HEAP_API_URL"),
        "{error}"
    );
    assert_eq!(run.tracker.resolved(), 0);
}

#[tokio::test(start_paused = true)]
async fn unsendable_events_are_parked_and_anonymous_ones_skipped_before_sending() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let mut events = events(20, 4);
    events[3].user.external_user_id = Some("x".repeat(300));
    events[5].user.external_user_id = None;
    events[6].user.external_user_id = None;
    let run = deliver(&standin.url(), delivery_config(), events).await;
    run.result.unwrap();
    assert_eq!(standin.stored().len(), 17);
    assert_eq!(
        (
            run.tracker.delivered(),
            run.tracker.skipped(),
            run.tracker.parked()
        ),
        (17, 2, 1)
    );
    let total = run.stats.total();
    assert_eq!(total.skipped_no_identity, 2);
    let files = run
        .dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    let letter = &run.dead_letters.read(&files[0].key).await.unwrap()[0];
    assert!(
        letter.reason.contains("300 characters"),
        "{}",
        letter.reason
    );
    assert_eq!(standin.report().invalid_requests, 0);
}

/// Issue 20: the lease's self-fence stops requests from starting, and moving it resumes them;
/// the history tap reads what was sent while delivery runs.
#[tokio::test(start_paused = true)]
async fn a_passed_fence_starts_no_request_until_it_moves_and_loses_nothing() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dir = TempDir::new("fence");
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::new(&dir.0))));
    let client = Arc::new(HeapClient::new(&standin.url(), Duration::from_secs(10)).unwrap());
    let (fence_tx, fence_rx) = tokio::sync::watch::channel(Instant::now());
    let config = DeliveryConfig {
        fence: Some(fence_rx),
        ..delivery_config()
    };
    let delivery = Delivery::new(
        config,
        client,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let tap = delivery.history_tap();
    let metrics = delivery.metrics();
    let batch = events(3_000, 300);
    let (rx, tracker, _feeder) = support::feed(batch.clone(), OBJECT);
    let running = tokio::spawn(delivery.run(rx));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(standin.report().requests, 0, "the fence had passed");
    assert!(tap.snapshot(Instant::now()).sent.is_empty());
    assert_eq!(tracker.resolved(), 0, "nothing parked or dropped meanwhile");

    fence_tx.send_replace(Instant::now() + Duration::from_secs(3_600));
    standin.wait_until_stored(3_000).await;
    running.await.unwrap().unwrap();
    assert_eq!(tracker.delivered(), 3_000);
    assert_eq!(metrics.counts().total().parked, 0);
    assert_stored_exactly(&standin.stored(), &batch);
    let history = tap.snapshot(Instant::now());
    assert_eq!(
        history.sent.iter().map(|(_, n)| n).sum::<u64>(),
        3_000,
        "the tap saw every event sent in the window"
    );
    assert!(history.sent.iter().all(|(age, _)| age % 1000 == 0));

    // A fence that passes mid-run stops new requests at its deadline.
    let (fence_tx, fence_rx) =
        tokio::sync::watch::channel(Instant::now() + Duration::from_secs(3_600));
    let standin = Standin::start(StandinConfig {
        // Answers take a virtual second, so the run lasts long enough to fence it mid-way.
        response_delay: Duration::from_secs(1),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let client = Arc::new(HeapClient::new(&standin.url(), Duration::from_secs(10)).unwrap());
    let delivery = Delivery::new(
        DeliveryConfig {
            fence: Some(fence_rx),
            ..delivery_config()
        },
        client,
        HeapMapper::new(MappingConfig::default()),
        Arc::new(DeadLetterStore::new(Arc::new(LocalStore::new(&dir.0)))),
    );
    let (rx, tracker, _feeder) = support::feed(events(10_000, 300), OBJECT);
    let running = tokio::spawn(delivery.run(rx));
    standin.wait_until_stored(1_000).await;
    fence_tx.send_replace(Instant::now());
    let at_deadline = standin.report().requests;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let before = standin.report().requests;
    assert!(
        before <= at_deadline + 2,
        "only requests already started (concurrency 2) reach Heap after the deadline"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        standin.report().requests,
        before,
        "no request after the deadline"
    );
    assert!(standin.stored().len() < 10_000, "the fence stopped the run");
    assert_eq!(tracker.parked(), 0);
    fence_tx.send_replace(Instant::now() + Duration::from_secs(3_600));
    running.await.unwrap().unwrap();
    assert_eq!(tracker.delivered(), 10_000);
}
