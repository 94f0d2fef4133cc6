//! One decision per mapped event (issue 18): a dry run counts what delivery does, and a
//! timestamp Heap cannot read is parked before it is sent.

mod support;

use std::sync::Arc;

use currents_heap::currents::datum::Datum;
use currents_heap::currents::event::Property;
use currents_heap::deadletter::{DeadLetter, DeadLetterFilter, DeadLetterStore};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{Setup, custom_event};

const OBJECT: &str =
    "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0.avro";

/// Two ordinary parked events and one whose mapped form is over 16 KiB: 30 properties of
/// 1,000 characters (each under Heap's 1,024).
async fn park_one_oversized(state: &std::path::Path) {
    let mut big = custom_event(2, "u2");
    for i in 0..30 {
        big.properties.push((
            Arc::from(format!("long_{i}").as_str()),
            Property::Avro(Datum::String("x".repeat(1000))),
        ));
    }
    let letters = [
        DeadLetter::new(custom_event(0, "u0"), "retries exhausted", OBJECT),
        DeadLetter::new(custom_event(1, "u1"), "retries exhausted", OBJECT),
        DeadLetter::new(big, "retries exhausted", OBJECT),
    ];
    let refs: Vec<&DeadLetter> = letters.iter().collect();
    DeadLetterStore::new(Arc::new(LocalStore::new(state)))
        .park(&refs)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_parks_an_event_over_the_body_limit_as_delivery_does() {
    let standin = Standin::start(StandinConfig::new(support::APP_ID))
        .await
        .unwrap();
    let setup = Setup::new();
    park_one_oversized(&setup.state.0).await;
    let limit = ["--max-body-bytes", "16384"];
    let (code, stdout, stderr) = setup
        .run(&standin, &[&["replay", "--dry-run"][..], &limit].concat())
        .await;
    assert!(
        code != 2
            && stdout.contains("events would be sent: 2")
            && stdout.contains("events would be parked again: 1"),
        "the dry run counts the oversized event parked: {code}: {stdout}{stderr}"
    );
    // And delivery does just that.
    let (code, stdout, stderr) = setup
        .run(&standin, &[&["replay"][..], &limit].concat())
        .await;
    assert!(
        stdout.contains("events delivered: 2") && stdout.contains("events parked again: 1"),
        "{code}: {stdout}{stderr}"
    );
    assert_eq!(standin.stored().len(), 2);
}

/// Through `replay`: a Currents `time` is an Avro int, so only a dead letter (whose `time`
/// is any integer) or a `time_ms` can carry a year before 0000 to the mapper.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_before_0000_is_parked_with_its_reason_and_never_sent() {
    let standin = Standin::start(StandinConfig::new(support::APP_ID))
        .await
        .unwrap();
    let setup = Setup::new();
    let mut year_minus_one = custom_event(0, "u0");
    // 1 January of year -1 (proleptic Gregorian; year 0 is a leap year).
    year_minus_one.time = -62_167_219_200 - 365 * 86_400;
    let letters = [
        DeadLetter::new(year_minus_one, "retries exhausted", OBJECT),
        DeadLetter::new(custom_event(1, "u1"), "retries exhausted", OBJECT),
    ];
    let state: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&setup.state.0));
    let refs: Vec<&DeadLetter> = letters.iter().collect();
    DeadLetterStore::new(state.clone())
        .park(&refs)
        .await
        .unwrap();
    let (code, stdout, stderr) = setup.run(&standin, &["replay"]).await;
    assert!(
        stdout.contains("events delivered: 1") && stdout.contains("events parked again: 1"),
        "{code}: {stdout}{stderr}"
    );
    let heap_saw = standin.report();
    assert_eq!(
        (heap_saw.requests, heap_saw.invalid_requests),
        (1, 0),
        "only the readable event is sent: {:?}",
        heap_saw.invalid_reasons
    );
    let letters = DeadLetterStore::new(state);
    let mut reasons = Vec::new();
    for file in letters.list(&DeadLetterFilter::default()).await.unwrap() {
        let read = letters.read_lenient(&file.key).await.unwrap();
        reasons.extend(read.letters.into_iter().map(|l| l.reason));
    }
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("RFC 3339"),
        "parked with the reason: {reasons:?}"
    );
}
