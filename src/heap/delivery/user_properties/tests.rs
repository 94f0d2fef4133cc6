//! The user-properties lane inside the driver, against a scripted Heap on a paused clock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::super::{Delivery, DeliveryConfig, Parts, Submission, Tracker};
use crate::currents::datum::Datum;
use crate::currents::event::{CustomHttpEvent, Property, User};
use crate::deadletter::{DeadLetterFilter, DeadLetterStore, Output};
use crate::heap::client::{Answer, Reply, Transport};
use crate::heap::map::{HeapMapper, MappingConfig};
use crate::heap::properties::{Field, GLOBAL_SUBSCRIPTION, PROFILE_UPDATE, PropertyConfig};
use crate::store::LocalStore;
use std::sync::Arc;

/// Heap's two endpoints: track accepts everything; add_user_properties answers from its
/// script, then rejects any request holding `refused` (400) and accepts the rest, applying
/// them in order (last write wins, as Heap documents).
#[derive(Default)]
struct Heap {
    script: Mutex<Vec<Reply>>,
    refused: Option<String>,
    events: Mutex<Vec<String>>,
    property_requests: Mutex<Vec<serde_json::Value>>,
    applied: Mutex<std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
}

struct Endpoint(Arc<Heap>, bool);

fn reply(status: u16, answer: Answer) -> Reply {
    Reply {
        status: Some(status),
        connected: true,
        answer,
    }
}

impl Transport for Endpoint {
    fn post(&self, body: Vec<u8>) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        let heap = &self.0;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if !self.1 {
            for e in body["events"].as_array().unwrap() {
                heap.events
                    .lock()
                    .unwrap()
                    .push(e["idempotency_key"].as_str().unwrap().into());
            }
            return Box::pin(async { reply(200, Answer::Accepted) });
        }
        heap.property_requests.lock().unwrap().push(body.clone());
        let users = body["users"].as_array().unwrap();
        let mut script = heap.script.lock().unwrap();
        let answer = if !script.is_empty() {
            script.remove(0)
        } else if users
            .iter()
            .any(|u| Some(u["identity"].as_str().unwrap()) == heap.refused.as_deref())
        {
            reply(
                400,
                Answer::Rejected {
                    reason: "400".into(),
                },
            )
        } else {
            reply(200, Answer::Accepted)
        };
        if answer.answer == Answer::Accepted {
            let mut applied = heap.applied.lock().unwrap();
            for user in users {
                let mine = applied
                    .entry(user["identity"].as_str().unwrap().into())
                    .or_default();
                for (k, v) in user["properties"].as_object().unwrap() {
                    mine.insert(k.clone(), v.clone());
                }
            }
        }
        Box::pin(async move { answer })
    }

    fn user_properties(&self) -> Option<Arc<dyn Transport>> {
        Some(Arc::new(Endpoint(self.0.clone(), true)))
    }
}

fn string(s: &str) -> Property {
    Property::Avro(Datum::String(s.into()))
}

fn profile(id: &str, user: &str, time_ms: i64, fields: &[(&str, &str)]) -> CustomHttpEvent {
    let mut properties = vec![(Arc::from("time_ms"), Property::Avro(Datum::Long(time_ms)))];
    properties.extend(fields.iter().map(|(k, v)| (Arc::from(*k), string(v))));
    CustomHttpEvent {
        event_type: Arc::from(PROFILE_UPDATE),
        id: id.into(),
        time: time_ms / 1000,
        user: User {
            external_user_id: Some(user.into()),
            ..User::default()
        },
        properties,
    }
}

fn subscription(id: &str, user: Option<&str>, channel: &str, status: &str) -> CustomHttpEvent {
    CustomHttpEvent {
        event_type: Arc::from(GLOBAL_SUBSCRIPTION),
        id: id.into(),
        time: 1_764_248_400,
        user: User {
            external_user_id: user.map(Into::into),
            user_id: Some("braze-1".into()),
            ..User::default()
        },
        properties: vec![
            (Arc::from("channel"), string(channel)),
            (Arc::from("subscription_status"), string(status)),
        ],
    }
}

struct Run {
    heap: Arc<Heap>,
    tracker: Arc<Tracker>,
    metrics: Arc<crate::telemetry::Metrics>,
    dead_letters: Arc<DeadLetterStore>,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    pub fn new() -> Dir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Dir(std::env::temp_dir().join(format!(
            "currents-heap-user-properties-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )))
    }
}

async fn run(heap: Heap, fields: &str, events: Vec<CustomHttpEvent>) -> Run {
    let heap = Arc::new(heap);
    let dir = tempdir::new();
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::lazy(&dir.0))));
    let config = DeliveryConfig {
        jitter_seed: Some(7),
        properties: PropertyConfig {
            fields: fields
                .split(',')
                .map(|f| f.parse::<Field>().unwrap())
                .collect(),
            ..PropertyConfig::default()
        },
        ..DeliveryConfig::new("1")
    };
    let delivery = Delivery::new(
        config,
        Arc::new(Endpoint(heap.clone(), false)),
        HeapMapper::new(MappingConfig::default()),
        dead_letters.clone(),
    );
    let metrics = delivery.metrics();
    let tracker = Arc::new(Tracker::default());
    let (tx, rx) = mpsc::channel(events.len().max(1));
    for (record, event) in (0u64..).zip(events) {
        let submission = Submission {
            event,
            object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
            tracker: tracker.clone(),
            record,
            parts: Parts::EventAndUpdate,
        };
        assert!(tx.send(submission).await.is_ok());
    }
    drop(tx);
    delivery.run(rx).await.unwrap();
    Run {
        heap,
        tracker,
        metrics,
        dead_letters,
        _dir: dir,
    }
}

fn applied(run: &Run, user: &str) -> serde_json::Value {
    serde_json::Value::Object(
        run.heap
            .applied
            .lock()
            .unwrap()
            .get(user)
            .cloned()
            .unwrap_or_default(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_newer_value_is_never_set_back_by_an_older_one_that_arrives_later() {
    let events = vec![
        profile("b", "u1", 2_000, &[("home_city", "Paris")]),
        profile(
            "a",
            "u1",
            1_000,
            &[("home_city", "Lyon"), ("first_name", "Ann")],
        ),
        // Same millisecond: the event id decides.
        profile("d", "u2", 5_000, &[("home_city", "Oslo")]),
        profile("c", "u2", 5_000, &[("home_city", "Rome")]),
    ];
    let run = run(Heap::default(), "home_city,first_name", events).await;
    assert_eq!(
        applied(&run, "u1"),
        serde_json::json!({"braze_home_city": "Paris", "braze_first_name": "Ann"})
    );
    assert_eq!(
        applied(&run, "u2"),
        serde_json::json!({"braze_home_city": "Oslo"})
    );
    assert_eq!(
        run.heap.events.lock().unwrap().len(),
        4,
        "every event still went"
    );
    let counts = run.metrics.counts();
    assert_eq!(counts.user_property_updates["superseded"], 1, "c lost to d");
    assert_eq!(counts.user_property_updates["accepted"], 3);
    assert_eq!(run.tracker.ended_prefix(), 4);
    // One identity per entry: u1's two updates went as one merged user.
    let requests = run.heap.property_requests.lock().unwrap();
    let users: usize = requests
        .iter()
        .map(|r| r["users"].as_array().unwrap().len())
        .sum();
    assert_eq!(users, 2);
}

#[tokio::test(start_paused = true)]
async fn personal_data_goes_out_only_when_named() {
    let events = vec![profile(
        "a",
        "u1",
        1_000,
        &[
            ("email_address", "ann@example.com"),
            ("phone_number", "+14155552671"),
            ("dob", "1990-01-01"),
            ("home_city", "Paris"),
        ],
    )];
    let run = run(Heap::default(), "home_city", events).await;
    let bodies = serde_json::to_string(&*run.heap.property_requests.lock().unwrap()).unwrap();
    for secret in ["ann@example.com", "+14155552671", "1990-01-01"] {
        assert!(!bodies.contains(secret), "{secret} went out: {bodies}");
    }
    assert_eq!(
        applied(&run, "u1"),
        serde_json::json!({"braze_home_city": "Paris"})
    );
}

#[tokio::test(start_paused = true)]
async fn a_user_heap_refuses_is_parked_alone_and_the_rest_arrive() {
    let mut events: Vec<CustomHttpEvent> = (0..6)
        .map(|n| {
            subscription(
                &format!("s{n}"),
                Some(&format!("u{n}")),
                "email",
                "Subscribed",
            )
        })
        .collect();
    // No identity under the policy: skipped and counted, its event too.
    events.push(subscription("s-anon", None, "email", "Unsubscribed"));
    let heap = Heap {
        refused: Some("u3".into()),
        script: Mutex::new(vec![
            reply(
                503,
                Answer::Retry {
                    reason: "503".into(),
                    retry_after: Some(Duration::from_secs(1)),
                    scope: None,
                },
            ),
            reply(
                429,
                Answer::Retry {
                    reason: "429".into(),
                    retry_after: None,
                    scope: None,
                },
            ),
        ]),
        ..Heap::default()
    };
    let run = run(heap, "subscription", events).await;
    for n in [0, 1, 2, 4, 5] {
        assert_eq!(
            applied(&run, &format!("u{n}")),
            serde_json::json!({"braze_email_subscription": "Subscribed"})
        );
    }
    assert_eq!(applied(&run, "u3"), serde_json::json!({}));
    let counts = run.metrics.counts();
    assert_eq!(counts.user_property_updates["accepted"], 5);
    assert_eq!(counts.user_property_updates["parked"], 1);
    assert_eq!(counts.user_property_updates["no_identity"], 1);
    assert_eq!(counts.user_property_requests["429"], 1);
    assert_eq!(counts.user_property_requests["503"], 1);
    // The events went as events (the anonymous one is skipped by the same policy).
    assert_eq!(run.tracker.delivered(), 6);
    assert_eq!(run.tracker.skipped(), 1);
    assert_eq!(run.tracker.ended_prefix(), 7, "parked is final");
    let keys = run
        .dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    let mut letters = Vec::new();
    for key in keys {
        letters.extend(run.dead_letters.read(&key.key).await.unwrap());
    }
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event.id, "s3");
    assert_eq!(letters[0].output, Output::UserProperties);
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_unit_s_waiting_updates_are_dropped_unsent() {
    let heap = Arc::new(Heap {
        script: Mutex::new(vec![reply(
            503,
            Answer::Retry {
                reason: "503".into(),
                retry_after: Some(Duration::from_secs(60)),
                scope: None,
            },
        )]),
        ..Heap::default()
    });
    let dir = tempdir::new();
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::lazy(&dir.0))));
    let delivery = Delivery::new(
        DeliveryConfig {
            jitter_seed: Some(7),
            properties: PropertyConfig {
                fields: vec![Field::Subscription],
                ..PropertyConfig::default()
            },
            ..DeliveryConfig::new("1")
        },
        Arc::new(Endpoint(heap.clone(), false)),
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let metrics = delivery.metrics();
    let abandon = tokio_util::sync::CancellationToken::new();
    let tracker = Arc::new(Tracker::under(&abandon));
    let (tx, rx) = mpsc::channel(8);
    let running = tokio::spawn(delivery.run(rx));
    for n in 0..3u64 {
        let event = subscription(
            &format!("s{n}"),
            Some(&format!("u{n}")),
            "email",
            "Subscribed",
        );
        let submission = Submission {
            event,
            object: Arc::from("o/event_type=T/date=2026-11-27-13/x.avro"),
            tracker: tracker.clone(),
            record: n,
            parts: Parts::EventAndUpdate,
        };
        assert!(tx.send(submission).await.is_ok());
    }
    // The first request is answered 503: the updates wait 60 s for their retry.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(heap.property_requests.lock().unwrap().len(), 1);
    abandon.cancel();
    tracker.withdraw();
    drop(tx);
    running.await.unwrap().unwrap();
    assert_eq!(
        heap.property_requests.lock().unwrap().len(),
        1,
        "none sent again"
    );
    assert_eq!(tracker.delivered(), 3, "the events had gone");
    assert_eq!(tracker.withdrawn(), 3, "the updates were dropped");
    assert_eq!(tracker.ended_prefix(), 0, "and the object is read again");
    assert_eq!(metrics.counts().user_property_updates["accepted"], 0);
}
