//! The value table on every path (`inspect`, `inspect --heap`, delivery, dead letters and
//! `replay`), with the shared cases `properties-json-edge` and `non-finite-floats`
//! (tests/data/cases/), and a property test: the Heap event sent directly equals the one
//! `replay` sends after parking, and passes the stand-in's contract.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use currents_heap::commands::inspect::{InspectReport, Output, inspect};
use currents_heap::currents::datum::Datum;
use currents_heap::currents::event::{CUSTOM_EVENT, CustomHttpEvent, EventMapper, Property, User};
use currents_heap::currents::schema::compile_event_schema;
use currents_heap::deadletter::DeadLetter;
use currents_heap::heap::delivery::{BodyLimit, Disposer};
use currents_heap::heap::map::{HeapMapper, Mapped, MappingConfig};
use currents_heap_testkit::standin::{Standin, StandinConfig, check_event};
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use support::{APP_ID, Setup, copy_tree};

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cases")
        .join(name)
}

fn inspected(output: &Output) -> (Vec<Json>, InspectReport) {
    let mut out = Vec::new();
    let report = inspect(
        &[case("properties-json-edge"), case("non-finite-floats")],
        output,
        &mut out,
    )
    .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let lines = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, report)
}

fn by_id<'a>(events: &'a [Json], id_field: &str, id: &str) -> &'a Json {
    events
        .iter()
        .find(|e| e[id_field] == id)
        .unwrap_or_else(|| panic!("no event {id}"))
}

/// The Heap properties every path must send for the case events.
fn expected_heap_values() -> Vec<(&'static str, Json)> {
    vec![
        (
            "evt-surrogate",
            json!({"plan": "pro", "seats": 3, "title": "Cafe \u{FFFD}", "sku": "SKU-1"}),
        ),
        (
            "evt-bignum",
            json!({"plan": "free", "seats": 2, "ratio": "1e400", "sku": "SKU-2"}),
        ),
        (
            "evt-plain",
            json!({"plan": "free", "seats": 1, "sku": "SKU-3"}),
        ),
        ("p-nan", json!({"price": "NaN", "score": "NaN"})),
        ("p-inf", json!({"price": "Infinity", "score": "-Infinity"})),
        ("p-normal", json!({"price": 12.34, "score": 0.5})),
    ]
}

fn assert_heap_values(events: &[Json]) {
    assert_eq!(events.len(), 6);
    for (id, expected) in expected_heap_values() {
        let event = by_id(events, "idempotency_key", id);
        assert_eq!(check_event(event), Ok(()), "{event}");
        for (key, value) in expected.as_object().unwrap() {
            assert_eq!(&event["properties"][key], value, "{id}.{key}: {event}");
        }
        assert!(
            event["properties"].get("custom_properties").is_none(),
            "no property holds the raw text: {event}"
        );
    }
}

#[test]
fn inspect_prints_each_odd_value_in_its_table_form_and_counts_it() {
    let (events, report) = inspected(&Output::CustomHttp);
    let custom = |id: &str| by_id(&events, "id", id)["properties"]["custom_properties"].clone();
    assert_eq!(
        custom("evt-surrogate"),
        json!({"plan": "pro", "seats": 3, "title": "Cafe \u{FFFD}", "sku": "SKU-1"})
    );
    assert_eq!(
        custom("evt-bignum"),
        json!({"plan": "free", "seats": 2, "ratio": "1e400", "sku": "SKU-2"})
    );
    let purchase = |id: &str| by_id(&events, "id", id)["properties"].clone();
    assert_eq!(purchase("p-nan")["price"], "NaN");
    assert_eq!(purchase("p-nan")["score"], "NaN");
    assert_eq!(purchase("p-inf")["price"], "Infinity");
    assert_eq!(purchase("p-inf")["score"], "-Infinity");
    assert_eq!(purchase("p-normal")["price"], json!(12.34));
    assert_eq!(report.warnings, 2);
    assert_eq!(
        report.odd_values.into_iter().collect::<Vec<_>>(),
        [("lone_surrogate", 1), ("number_out_of_range", 1)]
    );
}

#[test]
fn inspect_heap_sends_every_custom_property_separately() {
    let (events, _) = inspected(&Output::Heap(Disposer::new(
        HeapMapper::new(MappingConfig::default()),
        BodyLimit::unknown_app(1 << 20),
    )));
    assert_heap_values(&events);
}

#[test]
fn the_property_prefix_applies_to_every_key_within_heaps_limits() {
    let config = MappingConfig {
        property_prefix: "braze-".into(),
        event_prefix: "braze-".into(),
        ..MappingConfig::default()
    };
    let (events, _) = inspected(&Output::Heap(Disposer::new(
        HeapMapper::new(config),
        BodyLimit::unknown_app(1 << 20),
    )));
    let event = by_id(&events, "idempotency_key", "evt-surrogate");
    assert_eq!(event["event"], "braze-Viewed Product");
    assert_eq!(event["properties"]["braze-plan"], "pro");
    assert!(
        event["properties"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("braze-")),
        "{event}"
    );
    let long = MappingConfig {
        property_prefix: "p".repeat(1022),
        ..MappingConfig::default()
    };
    let (events, _) = inspected(&Output::Heap(Disposer::new(
        HeapMapper::new(long),
        BodyLimit::unknown_app(1 << 20),
    )));
    for event in &events {
        assert_eq!(check_event(event), Ok(()), "{event}");
    }
}

/// The binary against stand-ins: direct delivery; delivery where Heap refuses every event
/// (all parked); then `replay` of those dead letters. Replay sends byte for byte what direct
/// delivery sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_dead_letters_and_replay_send_the_same_bytes() {
    let setup = || {
        let setup = Setup::new();
        std::fs::remove_dir_all(&setup.source.0).unwrap();
        std::fs::create_dir_all(&setup.source.0).unwrap();
        copy_tree(&case("properties-json-edge"), &setup.source.0);
        copy_tree(&case("non-finite-floats"), &setup.source.0);
        setup
    };
    let run = ["run", "--once", "--lookback", "all"];

    let direct_heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let direct = setup();
    let (code, stdout, stderr) = direct.run(&direct_heap, &run).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("odd property values repaired")
            && stdout.contains("1 lone_surrogate")
            && stdout.contains("1 number_out_of_range"),
        "the run summary counts them: {stdout}"
    );
    assert!(
        stderr.contains("evt-surrogate") && stderr.contains("`title`"),
        "the warning names the event and the property: {stderr}"
    );
    let sent: HashMap<String, Json> = direct_heap
        .stored()
        .into_iter()
        .map(|(k, v)| (k, v.event))
        .collect();
    assert_heap_values(&sent.values().cloned().collect::<Vec<_>>());

    let ids: HashSet<String> = sent.keys().cloned().collect();
    let refusing_heap = Standin::start(StandinConfig {
        poison_keys: ids.clone(),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let parked = setup();
    let (code, stdout, _) = parked.run(&refusing_heap, &run).await;
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains(", 6 parked"), "{stdout}");
    let letters = dead_letters(&parked.state.0);
    assert_eq!(letters.len(), 6);
    let nan = letters.iter().find(|l| l.event.id == "p-nan").unwrap();
    let stored = serde_json::to_value(&nan.event).unwrap();
    assert_eq!(stored["properties"]["price"], "NaN", "{stored}");

    let replay_heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (code, stdout, stderr) = parked.run(&replay_heap, &["replay"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let replayed = replay_heap.stored();
    assert_eq!(replayed.len(), 6);
    for (id, event) in &sent {
        assert_eq!(
            serde_json::to_string(&replayed[id].event).unwrap(),
            serde_json::to_string(event).unwrap(),
            "replayed {id}"
        );
    }
}

fn dead_letters(state: &Path) -> Vec<DeadLetter> {
    let mut letters = Vec::new();
    let mut dirs = vec![state.join("dead-letters")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    letters.push(serde_json::from_str(line).unwrap());
                }
            }
        }
    }
    letters
}

// ---- property test ----

/// Avro values with the edge cases: non-finite and signed-zero floats, integers around 2^53,
/// bytes beyond ASCII, nesting.
fn datum() -> impl Strategy<Value = Datum> {
    let leaf = prop_oneof![
        Just(Datum::Null),
        any::<bool>().prop_map(Datum::Boolean),
        any::<i32>().prop_map(Datum::Int),
        prop_oneof![
            any::<i64>(),
            Just((1i64 << 53) + 1),
            Just(-(1i64 << 53) - 1),
            Just((1i64 << 53) - 1),
            Just(i64::MIN),
        ]
        .prop_map(Datum::Long),
        prop_oneof![
            any::<f32>(),
            Just(f32::NAN),
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(-0.0f32),
            Just(f32::MAX),
            Just(f32::MIN_POSITIVE),
        ]
        .prop_map(Datum::Float),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(1e300),
            Just(5e-324),
        ]
        .prop_map(Datum::Double),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(Datum::Bytes),
        ".{0,12}".prop_map(Datum::String),
        (1000usize..1100).prop_map(|n| Datum::String("é".repeat(n))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Datum::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(Datum::Map),
        ]
    })
}

/// JSON-ish text: valid JSON with the odd values serde_json refuses (lone surrogates, numbers
/// beyond the double range, big integers, deep nesting), and some text that is not JSON.
fn json_text() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("1e400".to_string()),
        Just("-1.5E-400".to_string()),
        Just("-0.0".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("9007199254740993".to_string()),
        Just(r#""Cafe \ud83d""#.to_string()),
        Just(r#""\udc00\ud83d\ude00""#.to_string()),
        Just(r#""NaN""#.to_string()),
        ".{0,10}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just(format!("{}1{}", "[".repeat(40), "]".repeat(40))),
    ];
    let value = scalar.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((r#"[a-z]{1,5}|\\ud800x"#, inner), 0..5).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!(r#""{k}":{v}"#))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    });
    prop_oneof![
        8 => value,
        1 => Just("{not json".to_string()),
        1 => ".{0,20}",
    ]
}

fn custom_event_schema() -> Arc<currents_heap::currents::schema::RecordShape> {
    compile_event_schema(
        r#"{"type":"record","name":"CustomEvent","namespace":"dataexport.S3.inner.users.behaviors","fields":[
        {"name":"id","type":"string"},{"name":"user_id","type":"string"},
        {"name":"external_user_id","type":["null","string"]},{"name":"time","type":"int"},
        {"name":"name","type":"string"},{"name":"properties","type":"string"}]}"#,
    )
    .unwrap()
}

/// What replay sends for an event parked by delivery: the dead-letter line is written and
/// read back exactly as `DeadLetterStore` does, then mapped again.
fn after_parking(event: &CustomHttpEvent, mapper: &HeapMapper) -> Mapped {
    let letter = DeadLetter::new(event.clone(), "Heap rejected it (400)", "f.avro");
    let line = serde_json::to_string(&letter).unwrap();
    assert!(!line.contains('\n'));
    let back: DeadLetter = serde_json::from_str(&line).unwrap();
    mapper.map(&back.event)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replay_after_parking_sends_what_direct_delivery_sends(
        // Writer schemas name each field once, and the decoder leaves null fields out.
        fields in prop::collection::btree_map("f_[a-z_]{1,8}", datum().prop_filter("not null", |d| *d != Datum::Null), 0..6),
        properties in json_text(),
        name in prop_oneof![Just(String::new()), ".{1,20}"],
        prefix in prop_oneof![Just(String::new()), Just("braze-".to_string())],
    ) {
        // Decoded the way an Avro record is: the JSON text goes through the decoder's rules.
        let mapper = EventMapper::new(Arc::from(CUSTOM_EVENT), &custom_event_schema());
        let (mut event, _) = mapper.map(vec![
            Datum::String("evt-1".into()),
            Datum::String("b1".into()),
            Datum::String("alice".into()),
            Datum::Int(1_764_248_400),
            Datum::String(name),
            Datum::String(properties),
        ]);
        for (key, value) in fields {
            event.properties.insert(0, (Arc::from(key), Property::Avro(value)));
        }
        let heap = HeapMapper::new(MappingConfig {
            event_prefix: prefix.clone(),
            property_prefix: prefix,
            ..MappingConfig::default()
        });
        let direct = heap.map(&event);
        let replayed = after_parking(&event, &heap);
        match (&direct, &replayed) {
            (Mapped::Track { event: a, .. }, Mapped::Track { event: b, .. }) => {
                prop_assert_eq!(serde_json::to_string(a).unwrap(), serde_json::to_string(b).unwrap());
                prop_assert_eq!(check_event(&serde_json::to_value(a).unwrap()), Ok(()));
            }
            _ => prop_assert_eq!(&direct, &replayed),
        }
        // A second parking changes nothing either.
        if let Mapped::Unsendable(_) = direct {
            let again: DeadLetter = serde_json::from_str(
                &serde_json::to_string(&DeadLetter::new(event.clone(), "x", "f.avro")).unwrap(),
            ).unwrap();
            prop_assert_eq!(heap.map(&again.event), direct);
        }
    }
}

#[test]
fn an_empty_custom_event_name_is_parked_not_sent_as_the_prefix() {
    let mut event = support::custom_event(1, "alice");
    for (k, v) in &mut event.properties {
        if &**k == "name" {
            *v = Property::Avro(Datum::String(String::new()));
        }
    }
    let config = MappingConfig {
        event_prefix: "braze-".into(),
        ..MappingConfig::default()
    };
    for blank in ["", " \t "] {
        for (k, v) in &mut event.properties {
            if &**k == "name" {
                *v = Property::Avro(Datum::String(blank.into()));
            }
        }
        match HeapMapper::new(config.clone()).map(&event) {
            Mapped::Unsendable(reason) => {
                assert!(reason.contains("`name` is empty or blank"), "{reason}")
            }
            other => panic!("`{blank}` sent: {other:?}"),
        }
    }
    event.id = String::new();
    event.user = User {
        external_user_id: Some("alice".into()),
        ..User::default()
    };
    event.properties.retain(|(k, _)| &**k != "name");
    event
        .properties
        .push((Arc::from("name"), Property::Avro(Datum::String("x".into()))));
    assert!(matches!(
        HeapMapper::new(MappingConfig::default()).map(&event),
        Mapped::Unsendable(reason) if reason.contains("idempotency key")
    ));
}
