//! The Heap stand-in's `add_user_properties` (issue 22) over real HTTP: the documented shapes
//! and limits, last write wins, its own faults (apart from track's), the rejected identity and
//! the optional limit; and the Avro inputs of the four user-property types, written with the
//! testkit's `avro_object` and read back by the production decoder.

use std::collections::BTreeMap;
use std::time::Duration;

use currents_heap::currents::decode::EventReader;
use currents_heap_testkit::apache_avro::Codec;
use currents_heap_testkit::avro::{avro_object, user_property_schema};
use currents_heap_testkit::standin::{Fault, Standin, StandinConfig, UserPropertiesConfig};
use serde_json::{Value as Json, json};

const APP_ID: &str = "4242";

async fn post(standin: &Standin, path: &str, body: &Json) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("{}{path}", standin.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
}

/// Status and body of an `add_user_properties` request.
async fn add(standin: &Standin, body: &Json) -> (u16, Json) {
    let response = post(standin, "/api/add_user_properties", body)
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

fn bulk(users: Json) -> Json {
    json!({"app_id": APP_ID, "users": users})
}

fn props(pairs: &[(&str, Json)]) -> BTreeMap<String, Json> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::test]
async fn both_shapes_are_applied_in_order_and_the_last_write_wins() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let first = bulk(json!([
        {"identity": "alice", "properties": {"braze_plan": "free", "braze_seats": 3}},
        {"identity": "bob", "properties": {"braze_email_subscription": "Subscribed"}},
        {"identity": "alice", "properties": {"braze_plan": "pro"}},
    ]));
    assert_eq!(add(&standin, &first).await, (200, json!({})));
    let single = json!({"app_id": APP_ID, "identity": "alice", "properties": {"braze_plan": "team", "braze_ratio": 0.5}});
    assert_eq!(add(&standin, &single).await, (200, json!({})));
    standin.wait_until_user_property_requests(2).await;

    let applied = standin.user_properties();
    assert_eq!(
        applied["alice"],
        props(&[
            ("braze_plan", json!("team")),
            ("braze_seats", json!(3)),
            ("braze_ratio", json!(0.5))
        ])
    );
    assert_eq!(
        applied["bob"],
        props(&[("braze_email_subscription", json!("Subscribed"))])
    );
    assert_eq!(applied.len(), 2);
    let report = standin.user_properties_report();
    assert_eq!(
        (
            report.requests,
            report.accepted_requests,
            report.users_received,
            report.users_accepted,
            report.invalid_requests
        ),
        (2, 2, 4, 4, 0)
    );
    let bodies = standin.user_property_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(serde_json::from_str::<Json>(&bodies[0]).unwrap(), first);
    // Track saw nothing of it.
    assert_eq!(standin.report().requests, 0);
    assert!(standin.stored().is_empty());
}

#[tokio::test]
async fn the_limits_hold_at_their_edges() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let thousand: Vec<Json> = (0..1000)
        .map(|i| json!({"identity": format!("u{i}"), "properties": {"n": i}}))
        .collect();
    assert_eq!(add(&standin, &bulk(Json::Array(thousand))).await.0, 200);
    let edges = bulk(json!([{
        "identity": "x".repeat(255),
        "properties": {"k".repeat(1023): "v".repeat(1023), "email": "a@b.c", "Identity": 1}
    }]));
    assert_eq!(add(&standin, &edges).await.0, 200);
    // Heap's OpenAPI requires only app_id and identity.
    let no_properties = json!({"app_id": APP_ID, "identity": "carol"});
    assert_eq!(add(&standin, &no_properties).await.0, 200);
    assert_eq!(standin.user_properties().len(), 1002);
    assert_eq!(standin.user_properties_report().accepted_requests, 3);
}

#[tokio::test]
async fn every_breach_of_the_contract_is_a_400_and_applies_nothing() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let user = |properties: Json| bulk(json!([{"identity": "alice", "properties": properties}]));
    let too_many: Vec<Json> = (0..1001)
        .map(|i| json!({"identity": format!("u{i}"), "properties": {"n": i}}))
        .collect();
    let cases: Vec<(&str, Json, &str)> = vec![
        ("1001 users", bulk(Json::Array(too_many)), "1001 users"),
        ("no users", bulk(json!([])), "0 users"),
        (
            "long identity",
            bulk(json!([{"identity": "x".repeat(256), "properties": {"a": 1}}])),
            "256 characters",
        ),
        (
            "empty identity",
            bulk(json!([{"identity": "", "properties": {"a": 1}}])),
            "0 characters",
        ),
        (
            "numeric identity",
            bulk(json!([{"identity": 7, "properties": {"a": 1}}])),
            "`identity` is not a string",
        ),
        (
            "missing identity",
            bulk(json!([{"properties": {"a": 1}}])),
            "`identity` is not a string",
        ),
        ("`ID` key", user(json!({"ID": "1"})), "reserved"),
        ("`id` key", user(json!({"id": "1"})), "reserved"),
        ("`Id` key", user(json!({"Id": 1})), "reserved"),
        ("`user_id` key", user(json!({"user_id": "1"})), "reserved"),
        ("`USER_ID` key", user(json!({"USER_ID": "1"})), "reserved"),
        ("empty key", user(json!({"": "1"})), "0 characters"),
        (
            "long key",
            user(json!({"k".repeat(1024): "1"})),
            "1024 characters",
        ),
        (
            "long value",
            user(json!({"k": "v".repeat(1024)})),
            "1024 or more characters",
        ),
        (
            "nested object value",
            user(json!({"cart": {"total": 3}})),
            "not a string or number",
        ),
        (
            "array value",
            user(json!({"tags": ["a"]})),
            "not a string or number",
        ),
        (
            "boolean value",
            user(json!({"vip": true})),
            "not a string or number",
        ),
        (
            "null value",
            user(json!({"vip": null})),
            "not a string or number",
        ),
        (
            "properties not an object",
            user(json!(["a"])),
            "`properties` is not an object",
        ),
        (
            "unknown entry field",
            bulk(json!([{"identity": "a", "properties": {}, "user_id": "1"}])),
            "unknown field `user_id`",
        ),
        (
            "unknown top-level field",
            json!({"app_id": APP_ID, "users": [{"identity": "a"}], "library": "server"}),
            "unknown field `library`",
        ),
        (
            "bulk and single at once",
            json!({"app_id": APP_ID, "users": [{"identity": "a"}], "identity": "b"}),
            "unknown field `identity`",
        ),
        (
            "users not an array",
            json!({"app_id": APP_ID, "users": {"identity": "a"}}),
            "users is not an array",
        ),
        (
            "single with a bad key",
            json!({"app_id": APP_ID, "identity": "a", "properties": {"iD": 1}}),
            "reserved",
        ),
        (
            "missing app_id",
            json!({"users": [{"identity": "a"}]}),
            "app_id is missing",
        ),
    ];
    for (name, body, reason) in &cases {
        let (status, answer) = add(&standin, body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{name}: {error}");
    }
    let response = post(
        &standin,
        "/api/add_user_properties",
        &json!("not an object"),
    )
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // Another app id: 401, as track answers it.
    let other_app = json!({"app_id": "9", "users": [{"identity": "a", "properties": {"p": 1}}]});
    assert_eq!(add(&standin, &other_app).await.0, 401);

    assert!(standin.user_properties().is_empty());
    let report = standin.user_properties_report();
    assert_eq!(report.invalid_requests, cases.len() as u64 + 1);
    assert_eq!(report.invalid_reasons.len(), cases.len() + 1);
    assert_eq!(report.unknown_app_requests, 1);
    assert_eq!(report.accepted_requests, 0);
    assert_eq!(report.requests, cases.len() as u64 + 2);
}

#[tokio::test]
async fn a_rejected_identity_refuses_every_request_holding_it_until_cleared() {
    let standin = Standin::start(StandinConfig {
        user_properties: UserPropertiesConfig {
            reject_identities: ["mallory".to_string()].into(),
            ..UserPropertiesConfig::default()
        },
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let both = bulk(json!([
        {"identity": "alice", "properties": {"p": 1}},
        {"identity": "mallory", "properties": {"p": 2}},
    ]));
    let (status, answer) = add(&standin, &both).await;
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("mallory"));
    assert!(
        standin.user_properties().is_empty(),
        "nothing of it applied"
    );
    // Bisected: the half without it goes through, the half with it does not.
    let alice = bulk(json!([{"identity": "alice", "properties": {"p": 1}}]));
    let mallory = bulk(json!([{"identity": "mallory", "properties": {"p": 2}}]));
    assert_eq!(add(&standin, &alice).await.0, 200);
    assert_eq!(add(&standin, &mallory).await.0, 400);
    let report = standin.user_properties_report();
    assert_eq!(report.rejected_identity_requests, 2);
    assert_eq!(report.invalid_requests, 2);
    // A replay after the fault clears is taken.
    standin.set_rejected_identities([]);
    assert_eq!(add(&standin, &mallory).await.0, 200);
    assert_eq!(
        standin.user_properties().keys().collect::<Vec<_>>(),
        ["alice", "mallory"]
    );
}

#[tokio::test]
async fn the_optional_app_limit_answers_429_like_track_and_counts_only_accepted_users() {
    let standin = Standin::start(StandinConfig {
        user_properties: UserPropertiesConfig {
            app_users: 3,
            window: Duration::from_secs(600),
            limit_retry_after: Some(7),
            ..UserPropertiesConfig::default()
        },
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let users = |names: &[&str]| {
        bulk(Json::Array(
            names
                .iter()
                .map(|n| json!({"identity": n, "properties": {"p": 1}}))
                .collect(),
        ))
    };
    assert_eq!(add(&standin, &users(&["a", "b"])).await.0, 200);
    let response = post(&standin, "/api/add_user_properties", &users(&["c", "d"]))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    // The refused users did not fill the window: one more fits exactly.
    assert_eq!(add(&standin, &users(&["c"])).await.0, 200);
    assert_eq!(add(&standin, &users(&["d"])).await.0, 429);
    let report = standin.user_properties_report();
    assert_eq!(
        (
            report.limit_violations,
            report.limit_violation_users,
            report.too_many_requests
        ),
        (2, 3, 2)
    );
    assert_eq!(standin.user_properties().len(), 3);
    // Off by default: the same requests on a default stand-in all pass.
    let unlimited = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    for _ in 0..5 {
        assert_eq!(add(&unlimited, &users(&["a", "b"])).await.0, 200);
    }
}

#[tokio::test]
async fn faults_of_the_properties_endpoint_leave_track_alone() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    standin.script_user_properties([
        Fault::InternalError,
        Fault::TooManyRequestsRetryAfter(3),
        Fault::DropAfterStore,
        Fault::DropBeforeStore,
    ]);
    let track = json!({"app_id": APP_ID, "events": [{
        "identity": "alice", "event": "e", "timestamp": "2017-03-10T22:21:56Z", "idempotency_key": "k1"
    }]});
    let response = post(&standin, "/api/track", &track).await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "track is not scripted");

    let update = |v: i64| bulk(json!([{"identity": "alice", "properties": {"p": v}}]));
    assert_eq!(add(&standin, &update(1)).await.0, 500);
    let response = post(&standin, "/api/add_user_properties", &update(2))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert!(standin.user_properties().is_empty());
    // Applied, then the connection closes without an answer.
    assert!(
        post(&standin, "/api/add_user_properties", &update(3))
            .await
            .is_err()
    );
    assert_eq!(standin.user_properties()["alice"]["p"], json!(3));
    // Dropped before looking: not applied.
    assert!(
        post(&standin, "/api/add_user_properties", &update(4))
            .await
            .is_err()
    );
    assert_eq!(standin.user_properties()["alice"]["p"], json!(3));
    assert_eq!(add(&standin, &update(5)).await.0, 200);
    assert_eq!(standin.user_properties()["alice"]["p"], json!(5));

    let report = standin.user_properties_report();
    assert_eq!(report.requests, 5);
    assert_eq!(report.accepted_requests, 2);
    assert_eq!(report.too_many_requests, 1);
    assert_eq!(report.faults.values().sum::<u64>(), 4);
    assert_eq!(standin.user_property_bodies().len(), 5);
    let track_report = standin.report();
    assert_eq!(
        (track_report.requests, track_report.accepted_requests),
        (1, 1)
    );
    assert!(track_report.faults.is_empty());
}

#[test]
fn objects_of_the_four_user_property_types_decode_with_the_production_decoder() {
    let cases = [
        (
            "users.profile.Update",
            json!({
                "id": "p1", "user_id": "5f0c2a9e8b7d6c5b4a392817", "external_user_id": "alice",
                "time": 1_795_784_400, "time_ms": 1_795_784_400_123i64, "update_source": "REST API",
                "email_address": "alice@example.com", "archived": false,
                "custom_attributes": {"plan": "pro", "seats": 3}
            }),
            vec![
                ("update_source", json!("REST API")),
                ("time_ms", json!(1_795_784_400_123i64)),
                ("email_address", json!("alice@example.com")),
                ("archived", json!(false)),
            ],
        ),
        (
            "users.behaviors.subscription.GlobalStateChange",
            json!({
                "id": "g1", "user_id": "5f0c2a9e8b7d6c5b4a392817", "external_user_id": "alice",
                "subscription_status": "Unsubscribed", "channel": "email", "time": 1_795_784_401
            }),
            vec![
                ("subscription_status", json!("Unsubscribed")),
                ("channel", json!("email")),
            ],
        ),
        (
            "users.behaviors.subscriptiongroup.StateChange",
            json!({
                "id": "s1", "user_id": "5f0c2a9e8b7d6c5b4a392817", "external_user_id": "alice",
                "subscription_group_id": "sg-1", "subscription_status": "Subscribed",
                "time": 1_795_784_402
            }),
            vec![
                ("subscription_group_id", json!("sg-1")),
                ("subscription_status", json!("Subscribed")),
            ],
        ),
        (
            "users.RandomBucketNumberUpdate",
            json!({
                "id": "r1", "user_id": "5f0c2a9e8b7d6c5b4a392817", "external_user_id": "alice",
                "time": 1_795_784_403, "random_bucket_number": 4321, "prev_random_bucket_number": 17
            }),
            vec![
                ("random_bucket_number", json!(4321)),
                ("prev_random_bucket_number", json!(17)),
            ],
        ),
    ];
    for codec in [Codec::Null, Codec::Snappy] {
        for (event_type, record, expected) in &cases {
            let schema = user_property_schema(event_type).unwrap();
            let avro = avro_object(schema, std::slice::from_ref(record), codec).unwrap();
            // No `event_type=` in the name: the writer schema's full name must give the type.
            let mut reader = EventReader::open(&avro[..], "object.avro").unwrap();
            assert_eq!(&**reader.event_type(), *event_type);
            let (event, warnings) = reader.next_event().unwrap().unwrap();
            assert!(warnings.is_empty(), "{event_type}: {warnings:?}");
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["id"], record["id"], "{event_type}");
            assert_eq!(json["time"], record["time"], "{event_type}");
            assert_eq!(json["user"]["external_user_id"], "alice", "{event_type}");
            for (field, value) in expected {
                assert_eq!(json["properties"][field], *value, "{event_type}: {field}");
            }
            assert!(reader.next_event().unwrap().is_none());
        }
    }
    // custom_attributes stays the JSON text Braze writes.
    let profile = avro_object(
        user_property_schema("users.profile.Update").unwrap(),
        &[cases[0].1.clone()],
        Codec::Null,
    )
    .unwrap();
    let (event, _) = EventReader::open(&profile[..], "object.avro")
        .unwrap()
        .next_event()
        .unwrap()
        .unwrap();
    let json = serde_json::to_value(&event).unwrap();
    let attributes = json["properties"]["custom_attributes"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Json>(attributes).unwrap(),
        json!({"plan": "pro", "seats": 3})
    );
}
