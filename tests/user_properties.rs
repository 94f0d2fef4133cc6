//! User properties from Braze's profile and subscription events, through the binary against
//! the strict Heap stand-in: exactly the expected properties per identity, no personal data
//! outside the allowlist, every event still an event, Heap's faults losing nothing, `replay`
//! delivering a refused update, and nothing changed with the option off.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use currents_heap_testkit::avro::{
    Codec, GLOBAL_SUBSCRIPTION_SCHEMA, GROUP_SUBSCRIPTION_SCHEMA, PROFILE_UPDATE_SCHEMA,
    RANDOM_BUCKET_SCHEMA, avro_object,
};
use currents_heap_testkit::standin::{Fault, Standin, StandinConfig};
use serde_json::{Value as Json, json};
use support::{APP_ID, Setup, TempDir};

const FIELDS: &str = "subscription,subscription_group,random_bucket_number,home_city,first_name,custom_attributes.plan";

/// Writes one object of `records` of `event_type` in Braze's key layout under `source`.
fn object(source: &Path, event_type: &str, schema: &str, n: u32, records: &[Json]) {
    let dir = source.join(format!(
        "currents/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817/event_type={event_type}/date=2026-11-27-13/618/zone-a"
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = avro_object(schema, records, Codec::Null).unwrap();
    std::fs::write(
        dir.join(format!(
            "dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817+0+{n:010}.avro"
        )),
        bytes,
    )
    .unwrap();
}

/// The four types, with an out-of-order pair for u1 (the newer first), personal data not on
/// the allowlist, and a subscription change without an identity.
fn write_inputs(source: &Path) {
    let profile = |id: &str, time_ms: i64, fields: Json| {
        let mut record = json!({
            "id": id, "user_id": "braze-u1", "external_user_id": "u1",
            "time": time_ms / 1000, "time_ms": time_ms, "update_source": "api",
        });
        record
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        record
    };
    object(
        source,
        "users.profile.Update",
        PROFILE_UPDATE_SCHEMA,
        1,
        &[
            profile(
                "p-new",
                1_764_248_402_000,
                json!({
                    "home_city": "Paris",
                    "email_address": "ann@example.com",
                    "phone_number": "+14155552671",
                    "dob": "1990-01-01",
                    "custom_attributes": {"plan": "pro", "secret_note": "do not send"},
                }),
            ),
            profile(
                "p-old",
                1_764_248_401_000,
                json!({"home_city": "Lyon", "first_name": "Ann", "custom_attributes": {"plan": "free"}}),
            ),
        ],
    );
    let subscription = |id: &str, user: Option<&str>, channel: &str, status: &str| {
        json!({
            "id": id, "user_id": "braze-x", "external_user_id": user,
            "subscription_status": status, "channel": channel, "time": 1_764_248_400,
            "email_address": "hidden@example.com",
        })
    };
    object(
        source,
        "users.behaviors.subscription.GlobalStateChange",
        GLOBAL_SUBSCRIPTION_SCHEMA,
        2,
        &[
            subscription("s-1", Some("u1"), "email", "Unsubscribed"),
            subscription("s-2", Some("u2"), "sms", "Subscribed"),
            subscription("s-anon", None, "email", "Subscribed"),
        ],
    );
    object(
        source,
        "users.behaviors.subscriptiongroup.StateChange",
        GROUP_SUBSCRIPTION_SCHEMA,
        3,
        &[json!({
            "id": "g-1", "user_id": "braze-u2", "external_user_id": "u2",
            "subscription_group_id": "grp-7", "subscription_status": "Subscribed",
            "time": 1_764_248_400, "phone_number": "+33600000000",
        })],
    );
    object(
        source,
        "users.RandomBucketNumberUpdate",
        RANDOM_BUCKET_SCHEMA,
        4,
        &[json!({
            "id": "r-1", "user_id": "braze-u3", "external_user_id": "u3",
            "random_bucket_number": 4242, "time": 1_764_248_400,
        })],
    );
}

fn expected() -> BTreeMap<String, BTreeMap<String, Json>> {
    let user = |pairs: &[(&str, Json)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    BTreeMap::from([
        (
            "u1".into(),
            user(&[
                ("braze_home_city", json!("Paris")),
                ("braze_first_name", json!("Ann")),
                ("braze_plan", json!("pro")),
                ("braze_email_subscription", json!("Unsubscribed")),
            ]),
        ),
        (
            "u2".into(),
            user(&[
                ("braze_sms_subscription", json!("Subscribed")),
                ("braze_subscription_group.grp-7", json!("Subscribed")),
            ]),
        ),
        (
            "u3".into(),
            user(&[("braze_random_bucket_number", json!(4242))]),
        ),
    ])
}

/// Every event with an identity, as an event.
const EVENTS: [&str; 7] = ["p-new", "p-old", "s-1", "s-2", "g-1", "r-1", "s-anon"];

/// `run --once --lookback all --user-properties FIELDS` and `extra`, to its end.
async fn run_once(setup: &Setup, standin: &Standin, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "run",
        "--once",
        "--lookback",
        "all",
        "--user-properties",
        FIELDS,
    ];
    args.extend_from_slice(extra);
    setup.run(standin, &args).await
}

fn setup() -> Setup {
    let setup = Setup {
        source: TempDir::new("user-properties-source"),
        state: TempDir::new("user-properties-state"),
    };
    write_inputs(&setup.source.0);
    setup
}

fn assert_no_personal_data(standin: &Standin) {
    let bodies = standin.user_property_bodies().join("\n");
    for secret in [
        "ann@example.com",
        "+14155552671",
        "1990-01-01",
        "hidden@example.com",
        "+33600000000",
        "secret_note",
    ] {
        assert!(!bodies.contains(secret), "{secret} went out: {bodies}");
    }
}

#[tokio::test]
async fn the_four_types_become_exactly_the_expected_properties_and_stay_events() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = setup();
    let (code, stdout, stderr) = run_once(&setup, &standin, &[]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(standin.user_properties(), expected());
    assert_no_personal_data(&standin);
    let mut sent: Vec<String> = standin.stored().into_keys().collect();
    sent.sort();
    let mut want: Vec<String> = EVENTS[..6].iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(sent, want, "every event with an identity is still an event");
    assert_eq!(standin.report().duplicates, 0);
    assert!(
        stdout.contains("user-property updates: 6 sent, 1 skipped (no identity), 0 superseded by a newer one, 0 parked"),
        "{stdout}"
    );
    let report = standin.user_properties_report();
    assert_eq!(report.too_many_requests, 0);

    // A dry run (on a state of its own: this one has every object done) counts the same
    // updates, sending nothing more.
    let before = standin.user_properties_report().requests;
    let fresh = self::setup();
    let (code, stdout, _) = run_once(&fresh, &standin, &["--dry-run"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("user-property updates: 6 would be sent, 1 skipped (no identity)"),
        "{stdout}"
    );
    assert_eq!(standin.user_properties_report().requests, before);
}

#[tokio::test]
async fn inspect_heap_prints_the_updates_an_object_would_make() {
    let setup = setup();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args([
            "inspect",
            "--heap",
            "--user-properties",
            "subscription,home_city",
        ])
        .arg(&setup.source.0)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<Json> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let updates: Vec<&Json> = lines
        .iter()
        .filter_map(|l| l.get("user_properties"))
        .collect();
    assert!(updates.contains(
        &&json!({"identity": "u1", "properties": {"braze_email_subscription": "Unsubscribed"}})
    ));
    assert!(
        updates.contains(&&json!({"identity": "u1", "properties": {"braze_home_city": "Lyon"}}))
    );
    assert_eq!(updates.len(), 4, "{updates:?}");
    assert_eq!(lines.len() - updates.len(), 6, "and the track events");
}

#[tokio::test]
async fn heap_faults_lose_nothing_and_replay_delivers_the_refused_update() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    standin.script_user_properties([
        Fault::InternalError,
        Fault::TooManyRequests,
        Fault::DropAfterStore,
    ]);
    standin.set_rejected_identities(["u2".to_string()]);
    let setup = setup();
    let (code, stdout, stderr) = run_once(&setup, &standin, &[]).await;
    assert_eq!(code, 3, "an update was parked: {stdout}\n{stderr}");
    let mut partial = expected();
    partial.remove("u2");
    assert_eq!(standin.user_properties(), partial);
    assert!(stdout.contains("2 parked"), "u2's two updates: {stdout}");
    let events = standin.stored().len();
    assert_eq!(events, 6, "the refused user's events still went as events");

    // A replay under a narrower allowlist keeps what it does not cover parked (it used to
    // delete them as skipped), and its dry run says so (it said "skipped (no identity)").
    let (code, dry, _) = setup
        .run(
            &standin,
            &["replay", "--dry-run", "--user-properties", "home_city"],
        )
        .await;
    assert_eq!(
        code, 3,
        "a dry run that would park exits as the replay would: {dry}"
    );
    assert!(dry.contains("events would be parked again: 2"), "{dry}");
    let (code, narrow, _) = setup
        .run(&standin, &["replay", "--user-properties", "home_city"])
        .await;
    assert_eq!(code, 3, "{narrow}");
    assert!(narrow.contains("events parked again: 2"), "{narrow}");
    assert!(!standin.user_properties().contains_key("u2"));
    let (code, dry, _) = setup
        .run(
            &standin,
            &["replay", "--dry-run", "--user-properties", FIELDS],
        )
        .await;
    assert_eq!(code, 0);
    assert!(dry.contains("events would be sent: 2"), "{dry}");
    standin.set_rejected_identities(Vec::<String>::new());
    let (code, stdout, stderr) = setup
        .run(&standin, &["replay", "--user-properties", FIELDS])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(standin.user_properties(), expected());
    assert_eq!(standin.stored().len(), events, "replay sent no event again");
    assert_eq!(standin.report().duplicates, 0);
    assert_no_personal_data(&standin);
    let (_, status, _) = setup.run(&standin, &["status"]).await;
    assert!(!status.contains("dead letters: 2"), "{status}");
}

/// With the option off, Heap receives exactly today's track events, byte for byte (the
/// golden file was written by the build before user properties existed).
#[tokio::test]
async fn with_the_option_off_the_fixture_events_are_byte_identical() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let (code, stdout, stderr) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let stored: BTreeMap<String, String> = standin
        .stored()
        .into_iter()
        .map(|(id, e)| (id, serde_json::to_string(&e.event).unwrap()))
        .collect();
    let text: String = stored.values().map(|e| format!("{e}\n")).collect();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixture-events.jsonl");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(golden).unwrap());
    assert_eq!(standin.user_properties_report().requests, 0);
}
