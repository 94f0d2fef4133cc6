//! A running worker deletes the control objects no one needs (issue 18): heartbeats of workers
//! killed without a clean stop, and backfill requests that ended long ago. Live heartbeats,
//! open requests and the finished ones `status` lists stay. The worker runs in process on a
//! paused clock (its hourly turn is virtual time); the state is a local directory.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::{BackfillRequest, BackfillState, Control, Heartbeat};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Lookback, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, TempDir, until};

const DAY: i64 = 24 * 3600;
/// The retention rule's turn (`handover::PRUNE_EVERY`), written out so that this test also
/// builds against the code before the rule existed.
const HOUR: Duration = Duration::from_secs(3600);

fn beat(worker: &str, beat_at: i64) -> Heartbeat {
    Heartbeat {
        worker: worker.into(),
        host: "pod".into(),
        pid: 1,
        started_at: beat_at,
        beat_at,
    }
}

/// A request made at `at`, addressed to `worker`, in `state` as last written at `updated`
/// (`None`: queued, its progress never written).
async fn request(
    control: &Control,
    state_dir: &std::path::Path,
    at: i64,
    worker: &str,
    state: Option<(BackfillState, i64)>,
) -> BackfillRequest {
    let from = DateHour::parse("2026-01-01-00").unwrap();
    let to = DateHour::parse("2026-01-02-00").unwrap();
    let request = control.request(from, to, worker, at).await.unwrap();
    match state {
        Some((state, updated_at)) => {
            let mut progress = control.progress(&request.id).await.unwrap().unwrap();
            progress.state = state;
            progress.updated_at = updated_at;
            progress.started_at = Some(at);
            control.report(&progress).await.unwrap();
        }
        None => {
            let key = format!("control/backfills/{}/progress.json", request.id);
            std::fs::remove_file(state_dir.join(key)).unwrap();
        }
    }
    request
}

async fn heartbeats(control: &Control) -> Vec<String> {
    let mut ids: Vec<String> = control
        .workers()
        .await
        .unwrap()
        .into_iter()
        .map(|hb| hb.worker)
        .collect();
    ids.retain(|id| id.starts_with("w-"));
    ids
}

async fn request_ids(control: &Control) -> Vec<String> {
    control
        .requests()
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_running_worker_deletes_stale_heartbeats_and_old_finished_requests_only() {
    let source = TempDir::new("retention-source");
    let state = TempDir::new("retention-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let control = Control::new(Arc::new(LocalStore::new(&state.0)));
    let now = unix_secs_now();

    // Heartbeats: a worker killed two days ago, one killed an hour ago, and one live.
    control.beat(&beat("w-dead", now - 2 * DAY)).await.unwrap();
    control.beat(&beat("w-lost", now - 3600)).await.unwrap();
    control.beat(&beat("w-live", now)).await.unwrap();
    // Requests, oldest first: two open ones from long ago (running on the live worker, and
    // queued with no progress), 23 that finished 15+ days ago, and one finished yesterday.
    let running = request(
        &control,
        &state.0,
        now - 60 * DAY,
        "w-live",
        Some((BackfillState::Running, now - 30 * DAY)),
    )
    .await;
    let queued = request(&control, &state.0, now - 59 * DAY, "w-live", None).await;
    let mut finished = Vec::new();
    for n in 0..23 {
        let at = now - 40 * DAY + n;
        let ended = [
            BackfillState::Done,
            BackfillState::DoneWithFailures,
            BackfillState::Incomplete,
        ][n as usize % 3];
        finished.push(
            request(
                &control,
                &state.0,
                at,
                "w-live",
                Some((ended, now - 15 * DAY)),
            )
            .await,
        );
    }
    let recent = request(
        &control,
        &state.0,
        now - DAY,
        "w-live",
        Some((BackfillState::Done, now - DAY + 60)),
    )
    .await;
    assert_eq!(request_ids(&control).await.len(), 26);

    let engine = Engine::start(
        support::engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET)),
        Plan::Live {
            lookback: Lookback::Hours(2),
            poll_interval: Duration::from_secs(60),
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)) as Arc<dyn ObjectStore>,
        support::heap_output(&standin, APP_ID, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .with_heartbeat_interval(Duration::from_secs(30));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.drive(async move {
        let _ = stopped.await;
    }));

    // At its start: the heartbeat stale for two days goes, and of the 24 finished requests
    // the 4 oldest (the 20 most recent stay, although 19 of them ended 15 days ago).
    let pruned = tokio::time::timeout(
        Duration::from_secs(120),
        until(|| async { !heartbeats(&control).await.contains(&"w-dead".to_string()) }),
    )
    .await;
    assert!(pruned.is_ok(), "the stale heartbeat was never deleted");
    let mut expected: Vec<String> = [&running, &queued]
        .into_iter()
        .chain(&finished[4..])
        .chain([&recent])
        .map(|r| r.id.clone())
        .collect();
    expected.sort();
    // The deletions are under way; wait until as many are gone as should be.
    until(|| async { request_ids(&control).await.len() <= expected.len() }).await;
    let mut kept = request_ids(&control).await;
    kept.sort();
    assert_eq!(
        kept, expected,
        "open requests and the 20 most recent finished stay"
    );
    assert_eq!(heartbeats(&control).await, ["w-live", "w-lost"]);
    for gone in &finished[..4] {
        assert_eq!(
            control.progress(&gone.id).await.unwrap(),
            None,
            "{}",
            gone.id
        );
    }

    // A worker killed later is deleted at the next hourly turn, and not before.
    control
        .beat(&beat("w-dead-2", now - 2 * DAY))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(heartbeats(&control).await.contains(&"w-dead-2".to_string()));
    tokio::time::sleep(HOUR).await;
    assert_eq!(heartbeats(&control).await, ["w-live", "w-lost"]);
    assert_eq!(request_ids(&control).await.len(), expected.len());
    // The engine holds the lease in this setup, so it owns every open request, another
    // worker's too (issue 20): it ran it; an open request is never deleted meanwhile.
    assert_ne!(
        control.progress(&running.id).await.unwrap().unwrap().state,
        BackfillState::Queued,
        "the holder adopted the open request"
    );

    let _ = stop.send(());
    worker.await.unwrap();
    assert_eq!(heartbeats(&control).await, ["w-live", "w-lost"]);
}
