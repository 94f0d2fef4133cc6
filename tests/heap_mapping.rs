//! Whatever Braze sends, the mapped event satisfies Heap's contract as the stand-in enforces
//! it: only string and number values, keys and values under 1024 characters.

mod support;

use std::path::Path;
use std::sync::Arc;

use currents_heap::commands::inspect::{Output, inspect};
use currents_heap::currents::event::Property;
use currents_heap::heap::delivery::{BodyLimit, Disposer};
use currents_heap::heap::map::{HeapMapper, IdentitySource, Mapped, MappingConfig};
use currents_heap_testkit::standin::check_event;
use proptest::prelude::*;
use serde_json::Value as Json;

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        ".{0,40}".prop_map(Json::String),
        // Long strings cross Heap's 1024-character limit.
        (1000usize..1400).prop_map(|n| Json::String("ü".repeat(n))),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map("[a-z.]{1,12}|.{1020,1030}", inner, 0..6)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_custom_properties_map_to_a_valid_heap_event(properties in json_value(), name in ".{0,29}[a-zA-Z0-9]") {
        let mut event = support::custom_event(1, "alice");
        event.properties.retain(|(k, _)| &**k != "custom_properties" && &**k != "name");
        event.properties.push((Arc::from("name"), Property::Json(serde_json::value::to_raw_value(&name).unwrap())));
        event.properties.push((Arc::from("custom_properties"), Property::Json(serde_json::value::to_raw_value(&properties).unwrap())));
        let config = MappingConfig { identity: vec![IdentitySource::ExternalUserId], ..MappingConfig::default() };
        match HeapMapper::new(config).map(&event) {
            Mapped::Track { event, .. } => {
                let json = serde_json::to_value(&event).unwrap();
                prop_assert_eq!(check_event(&json), Ok(()));
            }
            other => prop_assert!(false, "not mapped: {:?}", other),
        }
    }
}

#[test]
fn every_fixture_maps_to_valid_heap_events_or_is_counted() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bucket");
    let mut out = Vec::new();
    let output = Output::Heap(Disposer::new(
        HeapMapper::new(MappingConfig::default()),
        BodyLimit::unknown_app(1 << 20),
    ));
    let report = inspect(&[root], &output, &mut out).unwrap();
    assert!(report.failures.is_empty());
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    let skipped: u64 = report.skipped_no_identity.values().sum();
    assert_eq!(
        lines.len() as u64 + skipped,
        report.events,
        "every event is printed or counted"
    );
    assert!(skipped > 0 && lines.len() > 100);
    for line in lines {
        let json: Json = serde_json::from_str(line).unwrap();
        assert_eq!(check_event(&json), Ok(()), "{line}");
    }
}
