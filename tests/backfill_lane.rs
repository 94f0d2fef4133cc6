//! A live worker and a backfill at once (issue 12): the backfill is handed to the worker as a
//! request in the state, runs on the backfill lane, and the two together stay within the
//! app's limit. In process, on a paused clock; local stores; Heap is the stand-in over HTTP,
//! enforcing the same limit the worker is configured with.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::{BackfillState, Control};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::HeapOutput;
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Keys, Ops};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{APP_ID, TempDir, until};
use tokio::time::Instant;

const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// Heap's documented limits at a tenth of the app limit, so a backfill of a few minutes
/// stays a small test; the worker is configured with the same.
fn limits() -> RateLimits {
    RateLimits {
        app_events: 1_500,
        identity_events: 1_000,
        window: Duration::from_secs(60),
    }
}

fn heap(standin: &Standin) -> Output {
    let Output::Heap(mut heap) = support::heap(standin) else {
        unreachable!()
    };
    let HeapOutput { config, .. } = &mut *heap;
    config.limits = limits();
    // Room for every event: a decoder blocked on a full delivery channel is a blocking task,
    // which stops the paused clock from advancing while delivery waits for rate room.
    config.max_pending = 50_000;
    Output::Heap(heap)
}

#[tokio::test(start_paused = true)]
async fn a_backfill_handed_to_a_live_worker_leaves_room_for_live_objects() {
    let source = TempDir::new("lane-source");
    let state = TempDir::new("lane-state");
    let standin = Standin::start(StandinConfig {
        limits: limits(),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    // Six minutes of backfill at the limit: 20 objects of 450 events in an old hour.
    let old = DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 24 * 30);
    let backfill_options = SynthOptions {
        events: 450,
        identities: 2_000,
        null_percent: 0,
        ..SynthOptions::default()
    };
    let backfill_ids = write_custom_events(&source.0, old, 20, &backfill_options).unwrap();

    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        support::settings(),
        Plan::Live {
            lookback: Lookback::Hours(2),
            poll_interval: POLL_INTERVAL,
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin),
        metrics.clone(),
    )
    .with_heartbeat_interval(Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.drive(async move {
        let _ = stopped.await;
    }));

    // `backfill` finds the live worker and hands the range over.
    let state_store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&state.0));
    let control = Control::new(state_store);
    let live = loop {
        let live = control.live_workers(unix_secs_now()).await.unwrap();
        if !live.is_empty() {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let old_next = DateHour::from_hours_since_epoch(old.hours_since_epoch() + 1);
    let request = control
        .request(old, old_next, &live[0].worker, unix_secs_now())
        .await
        .unwrap();

    // A live object lands mid-backfill.
    until(|| async { standin.stored().len() >= 3_000 }).await;
    let landed = Instant::now();
    let live_options = SynthOptions {
        events: 40,
        seed: 90_000,
        identities: 2_000,
        null_percent: 0,
        ..SynthOptions::default()
    };
    let live_ids = write_custom_events(&source.0, DateHour::now(), 1, &live_options).unwrap();
    until(|| async {
        let stored = standin.stored();
        live_ids.iter().all(|id| stored.contains_key(id))
    })
    .await;
    let stored = standin.stored();
    let live_latency = live_ids
        .iter()
        .map(|id| stored[id].received_at - landed)
        .max()
        .unwrap();
    let backfill_done_then = backfill_ids
        .iter()
        .filter(|id| stored.contains_key(*id))
        .count();

    // The backfill still finishes.
    until(|| async {
        let progress = control.progress(&request.id).await.unwrap();
        progress.is_some_and(|p| p.state.is_terminal())
    })
    .await;
    let progress = control.progress(&request.id).await.unwrap().unwrap();
    stop.send(()).unwrap();
    let report = worker.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());

    let stored = standin.stored();
    let report_429 = standin.report();
    let counts = metrics.counts();
    eprintln!(
        "live latency {live_latency:?} (backfill {backfill_done_then} of {} events in by then); 429s {}; sent live {} backfill {}; progress {progress:?}",
        backfill_ids.len(),
        report_429.limit_violations,
        counts.sent_live,
        counts.sent_backfill
    );
    assert_eq!(progress.state, BackfillState::Done, "{progress:?}");
    assert_eq!(progress.found, 20);
    assert_eq!(progress.ended, 20);
    assert_eq!(progress.events_sent, backfill_ids.len() as u64);
    assert_eq!(report_429.limit_violations, 0, "no request answered 429");
    assert_eq!(report_429.duplicates, 0, "nothing sent twice");
    let expected: HashSet<&String> = backfill_ids.iter().chain(&live_ids).collect();
    assert_eq!(stored.keys().collect::<HashSet<_>>(), expected);
    assert!(
        backfill_done_then < backfill_ids.len(),
        "the live object landed mid-backfill"
    );
    assert!(
        live_latency <= POLL_INTERVAL + Duration::from_secs(5),
        "the live object took {live_latency:?} to reach Heap during the backfill"
    );
    assert_eq!(counts.sent_live, live_ids.len() as u64);
    assert_eq!(counts.sent_backfill, backfill_ids.len() as u64);
}

/// A state whose control objects never answer (a store that stopped answering); the ledger
/// and dead letters work.
fn hung_control(state: &TempDir) -> Arc<dyn ObjectStore> {
    let store = FaultyStore::new(Arc::new(LocalStore::lazy(&state.0)));
    for ops in [Ops::Reads, Ops::Writes] {
        store.hang(ops, Keys::prefix("control/"));
    }
    Arc::new(store)
}

#[tokio::test(start_paused = true)]
async fn a_hung_state_does_not_hold_a_stop_past_its_timeout() {
    let source = TempDir::new("hung-source");
    let state = TempDir::new("hung-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let engine = Engine::start(
        support::settings(),
        Plan::Live {
            lookback: Lookback::Hours(2),
            poll_interval: POLL_INTERVAL,
        },
        Arc::new(LocalStore::new(&source.0)),
        hung_control(&state),
        heap(&standin),
        Arc::new(Metrics::new()),
    );
    let stop_at = Duration::from_secs(95);
    let started = Instant::now();
    let report = tokio::time::timeout(
        stop_at + Duration::from_secs(120),
        engine.drive(tokio::time::sleep(stop_at)),
    )
    .await
    .expect("the stop never ended");
    let stopped_in = started.elapsed() - stop_at;
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert!(
        stopped_in <= Duration::from_secs(30),
        "a stop took {stopped_in:?} with the heartbeat's store hung"
    );
}
