//! A state store that fails or vanishes under a running engine: the worker fails the poll
//! instead of taking a missing ledger for an empty one.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::store::LocalStore;
use currents_heap::telemetry::Metrics;
use currents_heap::worker::{Engine, Lookback, Outcome, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, TempDir, all_sendable, copy_tree, fixtures, heap, settings};

/// A long-lived run reads the ledger once per folder and hour and then keeps what it knows
/// (`worker::finished`), so idle polls over a vanished state send nothing again and read
/// nothing; the next poll that needs the ledger (here: a new event type) fails instead of
/// taking the state for an empty one.
#[tokio::test(start_paused = true)]
async fn a_state_deleted_mid_run_fails_the_poll_instead_of_sending_everything_again() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let source = TempDir::new("vanish-source");
    copy_tree(&fixtures(), &source.0);
    let scratch = TempDir::new("vanish-state");
    let state_dir = scratch.0.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let metrics = Arc::new(Metrics::new());
    let readiness = metrics.clone();
    // Back to a day before the fixtures' hours, however long ago they are.
    let fixtures_hour = currents_heap::currents::key::DateHour::parse("2026-11-27-13").unwrap();
    let lookback = currents_heap::currents::key::DateHour::now().hours_since_epoch()
        - fixtures_hour.hours_since_epoch()
        + 24;
    let engine = Engine::start(
        settings(),
        Plan::Live {
            lookback: Lookback::Hours(lookback as u64),
            poll_interval: Duration::from_secs(10),
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state_dir)),
        heap(&standin),
        metrics.clone(),
    );
    let total = all_sendable().len();
    let watched = state_dir.clone();
    let new_object_folder = source
        .0
        .join("currents/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817");
    let heap_view = &standin;
    let report = engine
        .drive(async move {
            heap_view.wait_until_stored(total).await;
            // Let the ledger record the last objects, then take the state away: a deleted
            // directory, then a file in its place.
            tokio::time::sleep(Duration::from_secs(5)).await;
            std::fs::remove_dir_all(&watched).unwrap();
            let polls = readiness.counts().polls;
            tokio::time::sleep(Duration::from_secs(25)).await;
            assert_eq!(
                heap_view.report().duplicates,
                0,
                "polls over a deleted state sent objects again"
            );
            assert!(
                readiness.counts().polls >= polls + 2,
                "idle polls need nothing from the state"
            );
            // A new event type: its hours were never read from the ledger, so the poll
            // reads them and meets the deleted directory.
            let folder = new_object_folder
                .join("event_type=users.behaviors.NewType/date=2026-11-27-13/612/zone-a");
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("new+0+0000000000.avro"), b"never read").unwrap();
            tokio::time::sleep(Duration::from_secs(15)).await;
            assert!(!watched.exists(), "nothing recreated the deleted state");
            let not_ready = readiness
                .not_ready(
                    currents_heap::clock::unix_secs_now(),
                    Duration::from_secs(3600),
                )
                .unwrap_or_default();
            assert!(
                not_ready.contains("the last poll failed") && not_ready.contains("state"),
                "/readyz says so at once: {not_ready:?}"
            );
            std::fs::write(&watched, b"not a directory").unwrap();
            tokio::time::sleep(Duration::from_secs(25)).await;
        })
        .await;
    assert_eq!(report.outcome, Outcome::Finished);
    let requests = standin.report();
    assert_eq!(
        requests.duplicates,
        0,
        "polls over a vanished state must fail, not read an empty ledger and send again: {}",
        report.render()
    );
    assert_eq!(
        report.counts.objects_done,
        19,
        "each object was processed once: {}",
        report.render()
    );
}
