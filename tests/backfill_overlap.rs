//! A backfill handed to a live worker whose range overlaps the lookback (review defect E2):
//! the range's objects are already queued or in flight on the live lane when the backfill
//! lists it. They belong to the range all the same: the backfill counts them, waits for
//! them, and ends only once they have ended. In process, on a paused clock; local stores;
//! Heap is the stand-in over HTTP, answering slowly so the live objects stay in flight.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::{BackfillState, Control};
use currents_heap::ledger::{Ledger, Outcome as Recorded};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Lookback, Outcome, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{TempDir, until};

const APP_ID: &str = "78";
const OBJECTS: usize = 6;

#[tokio::test(start_paused = true)]
async fn a_backfill_over_objects_in_flight_on_the_live_lane_waits_for_them() {
    let source = TempDir::new("overlap-source");
    let state = TempDir::new("overlap-state");
    // Every answer takes a minute: the live poll's objects are still in flight when the
    // backfill lists the same hour.
    let standin = Standin::start(StandinConfig {
        response_delay: Duration::from_secs(60),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let hour = DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 1);
    let options = SynthOptions {
        events: 30,
        null_percent: 0,
        ..SynthOptions::default()
    };
    let ids = write_custom_events(&source.0, hour, OBJECTS, &options).unwrap();

    let engine = Engine::start(
        support::engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET)),
        Plan::Live {
            lookback: Lookback::Hours(3),
            poll_interval: Duration::from_secs(10),
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)),
        support::heap_output(&standin, APP_ID, Duration::from_secs(300)),
        Arc::new(Metrics::new()),
    )
    .with_heartbeat_interval(Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.drive(async move {
        let _ = stopped.await;
    }));

    let state_store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&state.0));
    let control = Control::new(state_store.clone());
    let live = loop {
        let live = control.live_workers(unix_secs_now()).await.unwrap();
        if !live.is_empty() {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let next = DateHour::from_hours_since_epoch(hour.hours_since_epoch() + 1);
    let request = control
        .request(hour, next, &live[0].worker, unix_secs_now())
        .await
        .unwrap();
    until(|| async {
        let progress = control.progress(&request.id).await.unwrap();
        progress.is_some_and(|p| p.state.is_terminal())
    })
    .await;
    // Read at once: the range may say done only once its objects are recorded.
    let recorded = Ledger::new(state_store)
        .finished("")
        .await
        .unwrap()
        .count(Recorded::Done);
    let progress = control.progress(&request.id).await.unwrap().unwrap();
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(progress.state, BackfillState::Done, "{progress:?}");
    assert_eq!(
        recorded, OBJECTS,
        "the backfill ended before its objects were recorded: {progress:?}"
    );
    assert_eq!(
        (progress.found, progress.ended),
        (OBJECTS as u64, OBJECTS as u64),
        "{progress:?}"
    );
    assert_eq!(progress.events_sent, ids.len() as u64, "{progress:?}");
    assert_eq!(standin.report().duplicates, 0);
}
