//! A worker killed (`kill -9`) while running a handed-over backfill leaves its heartbeat and
//! its last progress behind. `status` must say the worker is not live and when its progress
//! last moved, not repeat its last state (`waiting for rate room`, `ETA 0s`) as current.

mod support;

use std::sync::Arc;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::{BackfillProgress, BackfillState, Control, Heartbeat};
use currents_heap::store::LocalStore;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_a_dead_workers_backfill_is_not_live_with_its_last_progress_time() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    std::fs::create_dir_all(&setup.state.0).unwrap();
    let control = Control::new(Arc::new(LocalStore::new(&setup.state.0)));
    let now = unix_secs_now();
    // The heartbeat stopped 10 minutes ago, with the worker's last progress.
    let dead = Heartbeat::new_worker(now - 600);
    control.beat(&dead).await.unwrap();
    let request = control
        .request(
            DateHour::parse("2026-11-27-00").unwrap(),
            DateHour::parse("2026-11-28-00").unwrap(),
            &dead.worker,
            now - 900,
        )
        .await
        .unwrap();
    let mut progress = BackfillProgress::queued(&request, now - 600);
    progress.state = BackfillState::Running;
    progress.started_at = Some(now - 900);
    progress.found = 60;
    progress.ended = 56;
    progress.events_sent = 24_000;
    progress.eta_at_update = Some(1);
    progress.waiting_for_rate = true;
    control.report(&progress).await.unwrap();
    let last = currents_heap::clock::iso8601_utc((now - 600) * 1000).unwrap();

    let (code, status, stderr) = setup.run(&standin, &["status"]).await;
    assert_eq!(code, 0, "{status}\n{stderr}");
    let line = status
        .lines()
        .find(|l| l.contains(&request.id))
        .unwrap_or_else(|| panic!("no line for the backfill:\n{status}"));
    assert!(
        !line.contains("ETA") && !line.contains("waiting for rate room"),
        "the dead worker's last state is not current: {line}"
    );
    assert!(
        line.contains("not live") && line.contains(&format!("last progress at {last}")),
        "{line}"
    );
}
