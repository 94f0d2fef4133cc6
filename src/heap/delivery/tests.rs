//! The driver's rules against a scripted transport: no server, a paused clock.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use super::*;
use crate::currents::datum::Datum;
use crate::currents::event::{CUSTOM_EVENT, Property, User};
use crate::heap::client::Answer;
use crate::heap::map::MappingConfig;
use crate::store::LocalStore;

/// Answers each request with the first script entry, or by the body: a body holding a
/// poisoned idempotency key is rejected (400), any other is accepted.
struct Scripted {
    script: Mutex<Vec<Reply>>,
    poison: HashSet<String>,
    requests: Mutex<Vec<Vec<String>>>,
    /// When each request was posted.
    posted: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(script: Vec<Reply>, poison: &[&str]) -> Arc<Self> {
        Arc::new(Scripted {
            script: Mutex::new(script),
            poison: poison.iter().map(|s| s.to_string()).collect(),
            requests: Mutex::new(Vec::new()),
            posted: Mutex::new(Vec::new()),
        })
    }
}

impl Transport for Scripted {
    fn post(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let keys: Vec<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["idempotency_key"].as_str().unwrap().to_string())
            .collect();
        let poisoned = keys.iter().any(|k| self.poison.contains(k));
        self.requests.lock().unwrap().push(keys);
        self.posted.lock().unwrap().push(Instant::now());
        let mut script = self.script.lock().unwrap();
        let reply = if !script.is_empty() {
            script.remove(0)
        } else if poisoned {
            Reply {
                status: Some(400),
                connected: true,
                answer: Answer::Rejected {
                    reason: "Heap answered 400".into(),
                },
            }
        } else {
            Reply {
                status: Some(200),
                connected: true,
                answer: Answer::Accepted,
            }
        };
        Box::pin(async move { reply })
    }
}

fn event(n: usize) -> CustomHttpEvent {
    CustomHttpEvent {
        event_type: Arc::from(CUSTOM_EVENT),
        id: format!("e{n}"),
        time: 1_764_248_400,
        user: User {
            external_user_id: Some(format!("user-{}", n % 5)),
            ..User::default()
        },
        properties: vec![(
            Arc::from("name"),
            Property::Avro(Datum::String("Added To Cart".into())),
        )],
    }
}

struct Outcome {
    tracker: Arc<Tracker>,
    result: Result<(), DeliveryError>,
    metrics: Arc<Metrics>,
    _state: TempState,
}

struct TempState(std::path::PathBuf);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_state() -> (TempState, Arc<DeadLetterStore>) {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "currents-heap-delivery-unit-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::lazy(&dir))));
    (TempState(dir), dead_letters)
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        jitter_seed: Some(3),
        max_batch_events: 8,
        ..DeliveryConfig::new("1")
    }
}

async fn deliver(transport: Arc<Scripted>, events: usize) -> Outcome {
    let (state, dead_letters) = temp_state();
    let delivery = Delivery::new(
        config(),
        transport,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let metrics = delivery.metrics();
    let tracker = Arc::new(Tracker::default());
    let (tx, rx) = mpsc::channel(events.max(1));
    for n in 0..events {
        let submission = Submission {
            event: event(n),
            object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
            tracker: tracker.clone(),
            record: n as u64,
            parts: crate::heap::delivery::Parts::EventAndUpdate,
        };
        assert!(tx.send(submission).await.is_ok());
    }
    drop(tx);
    let result = delivery.run(rx).await;
    Outcome {
        tracker,
        result,
        metrics,
        _state: state,
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejected_batch_is_bisected_until_only_the_poisoned_event_is_parked() {
    let transport = Scripted::new(Vec::new(), &["e5"]);
    let outcome = deliver(transport.clone(), 8).await;
    assert!(outcome.result.is_ok());
    assert_eq!(
        (outcome.tracker.delivered(), outcome.tracker.parked()),
        (7, 1)
    );
    let counts = outcome.metrics.counts();
    assert_eq!(counts.bisections, 3, "8 → 4 → 2 → 1");
    assert_eq!(counts.total().parked, 1);
    let requests = transport.requests.lock().unwrap();
    assert_eq!(requests.last().unwrap(), &["e5"]);
}

#[tokio::test(start_paused = true)]
async fn a_retryable_answer_sends_the_same_batch_again() {
    let transport = Scripted::new(
        vec![Reply {
            status: Some(503),
            connected: true,
            answer: Answer::Retry {
                reason: "Heap answered 503".into(),
                retry_after: Some(Duration::from_secs(2)),
                scope: None,
            },
        }],
        &[],
    );
    let started = Instant::now();
    let outcome = deliver(transport.clone(), 8).await;
    assert!(outcome.result.is_ok());
    assert_eq!(outcome.tracker.delivered(), 8);
    assert!(started.elapsed() >= Duration::from_secs(2), "Retry-After");
    let requests = transport.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0], requests[1], "the same events, again");
    let counts = outcome.metrics.counts();
    assert_eq!(counts.retries, 1);
    assert_eq!(counts.requests.get("503"), Some(&1));
}

#[tokio::test(start_paused = true)]
async fn a_fatal_answer_stops_with_every_event_unresolved() {
    let transport = Scripted::new(
        vec![Reply {
            status: Some(401),
            connected: true,
            answer: Answer::Fatal {
                reason: "Heap answered 401: check HEAP_APP_ID".into(),
            },
        }],
        &[],
    );
    let outcome = deliver(transport, 8).await;
    assert!(matches!(&outcome.result, Err(DeliveryError::Configuration(r)) if r.contains("401")));
    assert_eq!(
        outcome.tracker.resolved(),
        0,
        "nothing parked, nothing dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn events_arriving_apart_share_a_request_sent_when_the_oldest_has_lingered() {
    let transport = Scripted::new(Vec::new(), &[]);
    let (_state, dead_letters) = temp_state();
    let linger = Duration::from_millis(100);
    let delivery = Delivery::new(
        DeliveryConfig {
            batch_linger: linger,
            ..config()
        },
        transport.clone(),
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let tracker = Arc::new(Tracker::default());
    let (tx, rx) = mpsc::channel(16);
    let running = tokio::spawn(delivery.run(rx));
    let start = Instant::now();
    let submit = |n| Submission {
        event: event(n),
        object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
        tracker: tracker.clone(),
        record: n as u64,
        parts: crate::heap::delivery::Parts::EventAndUpdate,
    };
    for n in 0..3 {
        assert!(tx.send(submit(n)).await.is_ok());
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    for n in 3..5 {
        assert!(tx.send(submit(n)).await.is_ok());
    }
    // The input stays open long after the linger: only the linger's own wake-up sends them.
    tracker.wait_resolved(5).await;
    let waited = start.elapsed();
    assert_eq!(
        waited, linger,
        "sent when the first event had waited the linger"
    );
    drop(tx);
    running.await.unwrap().unwrap();
    let requests = transport.requests.lock().unwrap();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].len(), 5);
    assert_eq!(transport.posted.lock().unwrap()[0] - start, linger);
}

#[tokio::test(start_paused = true)]
async fn a_429_naming_the_identity_limit_late_in_its_body_lowers_the_identity_not_the_app() {
    // The reason keeps only the body's first 200 characters; the scope is read from all of it.
    let body = format!(
        r#"{{"message":"{}","limit":"identity events per minute"}}"#,
        "x".repeat(250)
    );
    let throttled = Reply {
        status: Some(429),
        connected: true,
        answer: crate::heap::client::classify(reqwest::StatusCode::TOO_MANY_REQUESTS, &body, None),
    };
    let transport = Scripted::new(vec![throttled], &[]);
    let (_state, dead_letters) = temp_state();
    // 8 events against an app limit of 10: inferred, the scope would be the app's.
    let limits = RateLimits {
        app_events: 10,
        identity_events: 1_000,
        window: Duration::from_secs(60),
    };
    let delivery = Delivery::new(
        DeliveryConfig { limits, ..config() },
        transport.clone(),
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let metrics = delivery.metrics();
    let tracker = Arc::new(Tracker::default());
    let (tx, rx) = mpsc::channel(8);
    for n in 0..8 {
        let submission = Submission {
            event: event(n),
            object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
            tracker: tracker.clone(),
            record: n as u64,
            parts: crate::heap::delivery::Parts::EventAndUpdate,
        };
        assert!(tx.send(submission).await.is_ok());
    }
    drop(tx);
    assert!(delivery.run(rx).await.is_ok());
    assert_eq!(tracker.delivered(), 8);
    assert_eq!(
        metrics.counts().rate_budget_app,
        10,
        "the app's budget is untouched: the 429 named the identity limit"
    );
}

// The ended prefix (see `outcome`): which records of an object ended finally.

/// Holds each request that carries one of `gated` keys until `gate` gives it a permit, then
/// answers it with `held_reply`; answers every other request at once with a 200.
struct Gated {
    gated: HashSet<String>,
    held_reply: Reply,
    gate: tokio::sync::Semaphore,
}

impl Gated {
    fn new(gated: &[&str], held_reply: Reply) -> Arc<Self> {
        Arc::new(Gated {
            gated: gated.iter().map(|s| s.to_string()).collect(),
            held_reply,
            gate: tokio::sync::Semaphore::new(0),
        })
    }
}

fn accepted() -> Reply {
    Reply {
        status: Some(200),
        connected: true,
        answer: Answer::Accepted,
    }
}

impl Transport for Gated {
    fn post(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let held = body["events"].as_array().unwrap().iter().any(|e| {
            self.gated
                .contains(e["idempotency_key"].as_str().unwrap_or_default())
        });
        Box::pin(async move {
            if !held {
                return accepted();
            }
            self.gate.acquire().await.unwrap().forget();
            self.held_reply.clone()
        })
    }
}

/// Feeds records `first..first + count` of one object to a delivery running in the background.
async fn feed(
    delivery: Delivery,
    tracker: &Arc<Tracker>,
    first: u64,
    count: u64,
) -> tokio::task::JoinHandle<Result<(), DeliveryError>> {
    let (tx, rx) = mpsc::channel(count.max(1) as usize);
    for record in first..first + count {
        let submission = Submission {
            event: event(record as usize),
            object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
            tracker: tracker.clone(),
            record,
            parts: crate::heap::delivery::Parts::EventAndUpdate,
        };
        assert!(tx.send(submission).await.is_ok());
    }
    drop(tx);
    tokio::spawn(delivery.run(rx))
}

fn delivery_with(transport: Arc<dyn Transport>, config: DeliveryConfig) -> (TempState, Delivery) {
    let (state, dead_letters) = temp_state();
    let delivery = Delivery::new(
        config,
        transport,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    (state, delivery)
}

#[tokio::test(start_paused = true)]
async fn records_accepted_out_of_order_across_requests_give_the_prefix_before_the_gap() {
    for _ in 0..20 {
        // Two requests of 8 on the wire at once; the first one's answer comes last.
        let transport = Gated::new(&["e0"], accepted());
        let (_state, delivery) = delivery_with(transport.clone(), config());
        let tracker = Arc::new(Tracker::default());
        let running = feed(delivery, &tracker, 0, 16).await;
        tracker.wait_resolved(8).await;
        assert_eq!(tracker.delivered(), 8, "records 8..16 are accepted");
        assert_eq!(
            tracker.ended_prefix(),
            0,
            "record 0 is still on the wire: nothing before it can be skipped by a resume"
        );
        transport.gate.add_permits(1);
        tracker.wait_resolved(16).await;
        assert_eq!(tracker.ended_prefix(), 16, "the gap closed: all 16 ended");
        running.await.unwrap().unwrap();
    }
}

/// A state store whose writes fail while `failing` is set (an outage).
struct Outage {
    inner: LocalStore,
    failing: std::sync::atomic::AtomicBool,
}

impl crate::store::ObjectStore for Outage {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list<'a>(
        &'a self,
        prefix: &'a str,
    ) -> crate::store::StoreFuture<'a, Vec<crate::store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_folders<'a>(&'a self, prefix: &'a str) -> crate::store::StoreFuture<'a, Vec<String>> {
        self.inner.list_folders(prefix)
    }
    fn get<'a>(&'a self, key: &'a str) -> crate::store::StoreFuture<'a, Vec<u8>> {
        self.inner.get(key)
    }
    fn open_range<'a>(
        &'a self,
        key: &'a str,
        range: &'a crate::store::ReadRange,
    ) -> crate::store::StoreFuture<'a, crate::store::Opened> {
        self.inner.open_range(key, range)
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> crate::store::StoreFuture<'a, ()> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            let error = crate::store::StoreError::new(
                "put",
                key,
                crate::store::StoreErrorKind::Unavailable,
                "the store is down (test)",
            );
            return Box::pin(async move { Err(error) });
        }
        self.inner.put(key, bytes)
    }
    fn delete<'a>(&'a self, key: &'a str) -> crate::store::StoreFuture<'a, ()> {
        self.inner.delete(key)
    }
}

/// A delivery whose dead letters go to a store that is down until `failing` is cleared.
fn delivery_over_an_outage(
    transport: Arc<dyn Transport>,
    config: DeliveryConfig,
) -> (TempState, Arc<Outage>, Delivery) {
    let (state, _) = temp_state();
    let outage = Arc::new(Outage {
        inner: LocalStore::lazy(&state.0),
        failing: std::sync::atomic::AtomicBool::new(true),
    });
    let delivery = Delivery::new(
        config,
        transport,
        HeapMapper::new(MappingConfig::default()),
        Arc::new(DeadLetterStore::new(outage.clone())),
    );
    (state, outage, delivery)
}

#[tokio::test(start_paused = true)]
async fn a_parked_record_ends_only_once_its_dead_letter_is_written() {
    // e3 is rejected alone after bisection and goes to parking, where the store is down.
    let transport = Scripted::new(Vec::new(), &["e3"]);
    let (_state, outage, delivery) = delivery_over_an_outage(transport, config());
    let tracker = Arc::new(Tracker::default());
    let running = feed(delivery, &tracker, 0, 8).await;
    tracker.wait_resolved(7).await;
    assert_eq!((tracker.delivered(), tracker.parked()), (7, 0));
    assert_eq!(
        tracker.ended_prefix(),
        3,
        "record 3 waits for its dead letter: the prefix stops before it"
    );
    outage
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    tracker.wait_resolved(8).await;
    assert_eq!(tracker.parked(), 1);
    assert_eq!(tracker.ended_prefix(), 8, "written: record 3 ended");
    running.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_record_given_back_by_a_failed_park_stops_the_prefix_for_good() {
    let transport = Scripted::new(Vec::new(), &["e3"]);
    let config = DeliveryConfig {
        park_retry_max: Some(Duration::from_secs(30)),
        ..config()
    };
    let (_state, _outage, delivery) = delivery_over_an_outage(transport, config);
    let tracker = Arc::new(Tracker::default());
    feed(delivery, &tracker, 0, 8).await.await.unwrap().unwrap();
    assert_eq!((tracker.delivered(), tracker.unfinished()), (7, 1));
    assert_eq!(
        tracker.ended_prefix(),
        3,
        "records 4..8 were accepted, but the prefix never passes the record given back"
    );
}

#[tokio::test(start_paused = true)]
async fn withdrawn_records_stop_the_prefix() {
    // Requests of 4 records, two at a time: 0..4 and 8..12 are held on the wire, then
    // answered 503 after the withdrawal, so they end withdrawn; 4..8 are accepted.
    let retry = Reply {
        status: Some(503),
        connected: true,
        answer: Answer::Retry {
            reason: "Heap answered 503".into(),
            retry_after: None,
            scope: None,
        },
    };
    let transport = Gated::new(&["e0", "e8"], retry);
    let config = DeliveryConfig {
        max_batch_events: 4,
        ..config()
    };
    let (_state, delivery) = delivery_with(transport.clone(), config);
    let tracker = Arc::new(Tracker::under(&tokio_util::sync::CancellationToken::new()));
    let running = feed(delivery, &tracker, 0, 12).await;
    tracker.wait_resolved(4).await;
    assert_eq!(tracker.ended_prefix(), 0);
    tracker.withdraw();
    transport.gate.add_permits(2);
    running.await.unwrap().unwrap();
    assert_eq!((tracker.delivered(), tracker.withdrawn()), (4, 8));
    assert_eq!(
        tracker.ended_prefix(),
        0,
        "records 0..4 were withdrawn: 4..8 ended, but a resume must read from 0"
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_tracker_starts_its_prefix_at_its_first_record() {
    let (_state, delivery) = delivery_with(Scripted::new(Vec::new(), &[]), config());
    let tracker = Arc::new(Tracker::resuming(
        &tokio_util::sync::CancellationToken::new(),
        100,
    ));
    assert_eq!(
        tracker.ended_prefix(),
        100,
        "records 0..100 ended in an earlier run"
    );
    feed(delivery, &tracker, 100, 8)
        .await
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tracker.ended_prefix(), 108);
}
