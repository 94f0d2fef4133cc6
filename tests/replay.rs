//! `replay` in process on a paused clock: dead letters are removed only once re-sent, a state
//! it cannot write or a stop leaves them in place, and one damaged line strands nothing else.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::commands::worker::Exit;
use currents_heap::deadletter::{DeadLetter, DeadLetterFilter, DeadLetterStore};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::worker::Outcome;
use currents_heap::worker::replay::replay;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Ops};
use support::{APP_ID, TempDir, custom_event, heap, settings};
use tokio::time::Instant;

/// A dead-letter store holding `n` parked events of one hour.
async fn parked(state: &Arc<dyn ObjectStore>, n: usize) {
    let object =
        "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0.avro";
    let letters: Vec<DeadLetter> = (0..n)
        .map(|i| {
            DeadLetter::new(
                custom_event(i, &format!("u{i}")),
                "retries exhausted",
                object,
            )
        })
        .collect();
    let refs: Vec<&DeadLetter> = letters.iter().collect();
    DeadLetterStore::new(state.clone())
        .park(&refs)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn replay_gives_up_on_a_state_it_cannot_write_and_keeps_the_dead_letters() {
    // Heap rejects every event again, so replay must write new dead letters: it cannot.
    let poison: HashSet<String> = (0..6).map(|i| format!("evt-{i:06}")).collect();
    let standin = Standin::start(StandinConfig {
        poison_keys: poison,
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let dir = TempDir::new("replay-outage");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dir.0));
    parked(&local, 6).await;
    let state = Arc::new(FaultyStore::new(local.clone()));
    let start = Instant::now();
    state.outage(start, start + Duration::from_secs(3600), Ops::Writes);
    let report = replay(
        state,
        heap(&standin),
        &DeadLetterFilter::default(),
        &settings(),
        std::future::pending(),
        &Default::default(),
    )
    .await;
    assert!(
        matches!(report.outcome(), Outcome::Incomplete { .. }),
        "{:?}\n{}",
        report.outcome(),
        report.render()
    );
    assert!(
        start.elapsed() < Duration::from_secs(300),
        "bounded by --retry-max-time, not the outage: {:?}",
        start.elapsed()
    );
    let left = DeadLetterStore::new(local)
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "the dead-letter object is kept");
}

#[tokio::test(start_paused = true)]
async fn replay_stopped_by_a_signal_keeps_what_it_did_not_finish_and_exits_4() {
    let standin = Standin::start(StandinConfig {
        response_delay: Duration::from_secs(600),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let dir = TempDir::new("replay-stop");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dir.0));
    parked(&local, 4).await;
    let started = Instant::now();
    let report = replay(
        local.clone(),
        heap(&standin),
        &DeadLetterFilter::default(),
        &settings(),
        tokio::time::sleep(Duration::from_secs(2)),
        &Default::default(),
    )
    .await;
    assert_eq!(
        Exit::from(report.outcome()).code(),
        4,
        "{}",
        report.render()
    );
    assert!(
        started.elapsed() <= Duration::from_secs(33),
        "stop + 30 s at most"
    );
    let left = DeadLetterStore::new(local)
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "nothing is removed that was not replayed");
}

#[tokio::test(start_paused = true)]
async fn a_damaged_line_in_a_dead_letter_object_does_not_strand_the_others() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dir = TempDir::new("replay-damaged");
    let local: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dir.0));
    parked(&local, 3).await;
    let store = DeadLetterStore::new(local.clone());
    let key = store.list(&DeadLetterFilter::default()).await.unwrap()[0]
        .key
        .clone();
    let mut body = local.get(&key).await.unwrap();
    body.extend_from_slice(b"{\"event\": truncated by hand\n");
    local.put(&key, body).await.unwrap();

    let report = replay(
        local.clone(),
        heap(&standin),
        &DeadLetterFilter::default(),
        &settings(),
        std::future::pending(),
        &Default::default(),
    )
    .await;
    assert_eq!(report.delivered, 3, "{}", report.render());
    assert_eq!(report.unreadable_lines, 1);
    assert_eq!(
        report.outcome(),
        Outcome::FinishedWithFailures,
        "exit 3: something needs a person"
    );
    assert_eq!(standin.stored().len(), 3);
    let kept = String::from_utf8(local.get(&key).await.unwrap()).unwrap();
    assert_eq!(
        kept, "{\"event\": truncated by hand\n",
        "only the damaged line is kept, for a person to read"
    );
}
