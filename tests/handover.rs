//! `backfill` hands its range to a live `run` worker, as a user sees it: the binary, a local
//! state into which the test writes what a worker would (it holds the lease and renews it, a
//! fresh heartbeat, then progress),
//! and the Heap stand-in, which must receive nothing while the range is handed over.

mod support;

use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::lease::{Acquired, LeaseClient, LeaseTimings, Role};
use currents_heap::handover::{
    BackfillProgress, BackfillRequest, BackfillState, Control, Heartbeat,
};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup, all_sendable, stored_ids};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const RANGE: [&str; 5] = ["backfill", "--from", "2026-11-27", "--to", "2026-11-28"];

fn control(setup: &Setup) -> Control {
    Control::new(Arc::new(LocalStore::lazy(&setup.state.0)))
}

/// A worker that is live now, as `run` would announce itself: it holds the lease and keeps
/// renewing it (on a task of this test's runtime, until the test ends).
async fn live_worker(setup: &Setup) -> Heartbeat {
    let hb = Heartbeat::new_worker(unix_secs_now());
    control(setup).beat(&hb).await.unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&setup.state.0));
    let lease = LeaseClient::new(store, hb.worker.clone(), Role::Run, LeaseTimings::default());
    let Acquired::Held(holding, _) = lease.acquire(&CancellationToken::new(), |_, _| false).await
    else {
        panic!("the lease of a fresh state is free");
    };
    let (fence, _) = watch::channel(Instant::now());
    // Dropping the keeper leaves its renewals running.
    drop(lease.keep(holding, |_| serde_json::Value::Null, fence));
    hb
}

/// Waits until the state holds a backfill request, and returns them all.
async fn requested(setup: &Setup) -> Vec<(BackfillRequest, Option<BackfillProgress>)> {
    let control = control(setup);
    for _ in 0..3000 {
        let requests = control.requests().await.unwrap();
        if !requests.is_empty() {
            return requests;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "no backfill request appeared in {}",
        setup.state.0.display()
    );
}

/// Reads the child's stderr until a line contains `needle`; returns what was read.
async fn stderr_until(child: &mut Child, needle: &str) -> String {
    let stderr = child.stderr.as_mut().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let wait = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(needle) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no line with `{needle}`"));
    assert!(seen.contains(needle), "stderr ended first:\n{seen}");
    seen
}

/// The worker's side: the progress it writes for a request.
fn progress(
    request: &BackfillRequest,
    worker: &str,
    state: BackfillState,
    message: Option<&str>,
) -> BackfillProgress {
    BackfillProgress {
        state,
        worker: worker.into(),
        found: 12,
        ended: if state.is_terminal() { 12 } else { 5 },
        failed: 0,
        events_sent: 340,
        events_parked: u64::from(state == BackfillState::DoneWithFailures),
        started_at: Some(unix_secs_now() - 20),
        updated_at: unix_secs_now(),
        message: message.map(String::from),
        ..BackfillProgress::queued(request, unix_secs_now())
    }
}

async fn exit_of(child: Child) -> (i32, String, String) {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the backfill exits once the progress is terminal")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_gets_the_range_once_and_its_final_state_is_the_exit_code() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    for (state, message, code) in [
        (BackfillState::Done, None, 0),
        (BackfillState::DoneWithFailures, None, 3),
        (
            BackfillState::Incomplete,
            Some("the source failed for 15m"),
            4,
        ),
    ] {
        let setup = Setup::new();
        let worker = live_worker(&setup).await;
        let first = setup.command(&standin, &RANGE).spawn().unwrap();
        let requests = requested(&setup).await;
        assert_eq!(requests.len(), 1, "{state:?}");
        let (request, queued) = &requests[0];
        assert_eq!(
            request.worker, worker.worker,
            "addressed to the live worker"
        );
        assert_eq!(
            (request.from, request.to),
            (
                DateHour::parse("2026-11-27-00").unwrap(),
                DateHour::parse("2026-11-28-00").unwrap()
            )
        );
        assert_eq!(queued.as_ref().unwrap().state, BackfillState::Queued);

        // A second backfill of the same range (a Job's pod restarted) follows the same
        // request: its log says so, and no second request appears.
        let mut second = setup.command(&standin, &RANGE);
        second.env("RUST_LOG", "info");
        let mut second = second.spawn().unwrap();
        stderr_until(&mut second, &format!("backfill {} of", request.id)).await;
        assert_eq!(control(&setup).requests().await.unwrap().len(), 1);

        // The worker starts it, then ends it.
        let control = control(&setup);
        control
            .report(&progress(
                request,
                &worker.worker,
                BackfillState::Running,
                None,
            ))
            .await
            .unwrap();
        control
            .report(&progress(request, &worker.worker, state, message))
            .await
            .unwrap();
        for child in [first, second] {
            let (got, stdout, stderr) = exit_of(child).await;
            assert_eq!(got, code, "{state:?}\n{stdout}\n{stderr}");
            assert!(
                stdout.contains(&format!(
                    "backfill {}: 2026-11-27-00 to 2026-11-28-00 {state_label} on worker {}",
                    request.id,
                    worker.worker,
                    state_label = state.label()
                )),
                "{stdout}"
            );
            assert!(stdout.contains("events: 340 sent"), "{stdout}");
            if let Some(message) = message {
                assert!(stderr.contains(message), "{stderr}");
            }
        }
        assert_eq!(control.requests().await.unwrap().len(), 1);
    }
    assert!(
        standin.stored().is_empty(),
        "a backfill that handed its range over sends nothing itself"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_stops_following_but_not_the_request() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let worker = live_worker(&setup).await;
    let child = setup.command(&standin, &RANGE).spawn().unwrap();
    let request = requested(&setup).await.remove(0).0;
    control(&setup)
        .report(&progress(
            &request,
            &worker.worker,
            BackfillState::Running,
            None,
        ))
        .await
        .unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &child.id().unwrap().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let (code, stdout, stderr) = exit_of(child).await;
    assert_eq!(code, 4, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("stopped following backfill {}", request.id))
            && stderr.contains("status"),
        "{stderr}"
    );
    let still = control(&setup)
        .progress(&request.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.state, BackfillState::Running, "not cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_queues_the_range_once_and_status_shows_it() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let worker = live_worker(&setup).await;
    let detach = [&RANGE[..], &["--detach"]].concat();
    let (code, stdout, stderr) =
        tokio::time::timeout(Duration::from_secs(30), setup.run(&standin, &detach))
            .await
            .expect("--detach returns at once");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let requests = control(&setup).requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let request = &requests[0].0;
    assert!(
        stdout.contains(&format!(
            "backfill {}: 2026-11-27-00 to 2026-11-28-00 is handed to worker {}",
            request.id, worker.worker
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("status"),
        "it says how to follow it: {stdout}"
    );

    let (code, again, stderr) = setup.run(&standin, &detach).await;
    assert_eq!(code, 0, "{again}\n{stderr}");
    assert!(again.contains(&request.id), "the same request: {again}");
    assert_eq!(control(&setup).requests().await.unwrap().len(), 1);

    let (code, status, stderr) = setup.run(&standin, &["status"]).await;
    assert_eq!(code, 0, "{status}\n{stderr}");
    assert!(status.contains("workers: 1 live\n"), "{status}");
    assert!(
        status.contains(&format!("  {}: host ", worker.worker)),
        "{status}"
    );
    assert!(
        status.contains("backfills: 1 open, 0 finished\n"),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "  {}: date=2026-11-27-00 up to date=2026-11-28-00, queued for worker {}, 0/0 objects ended, 0 events sent\n",
            request.id, worker.worker
        )),
        "{status}"
    );
    assert!(standin.stored().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_stale_heartbeat_the_backfill_runs_itself() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let mut stale = Heartbeat::new_worker(unix_secs_now() - 3600);
    stale.beat_at = unix_secs_now() - 91;
    control(&setup).beat(&stale).await.unwrap();
    let (code, stdout, stderr) = setup.run(&standin, &RANGE).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
    assert!(control(&setup).requests().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_handover_and_dry_run_run_here_despite_a_live_worker() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let worker = live_worker(&setup).await;

    let dry_run = [&RANGE[..], &["--dry-run"]].concat();
    let (code, stdout, stderr) = setup.run(&standin, &dry_run).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stored_ids(&standin).is_empty(), "a dry run sends nothing");

    let no_handover = [&RANGE[..], &["--no-handover"]].concat();
    let (code, stdout, stderr) = setup.run(&standin, &no_handover).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
    assert!(
        stderr.contains("--no-handover") && stderr.contains(&worker.worker),
        "it warns that both send at the full rate: {stderr}"
    );
    assert!(control(&setup).requests().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_contradict_each_other_exit_2_naming_the_option() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    live_worker(&setup).await;
    let config = setup.state.0.join("dry.toml");
    std::fs::write(&config, "dry_run = true\n").unwrap();
    let config = config.to_str().unwrap();
    for (extra, names) in [
        (
            &["--detach", "--no-handover"][..],
            &["--detach", "--no-handover"][..],
        ),
        (&["--detach", "--dry-run"], &["--detach", "--dry-run"]),
        (
            &["--detach", "--config", config],
            &["--detach", "--dry-run"],
        ),
    ] {
        let args = [&RANGE[..], extra].concat();
        let (code, stdout, stderr) = setup.run(&standin, &args).await;
        assert_eq!(code, 2, "{extra:?}\n{stdout}\n{stderr}");
        for name in names {
            assert!(stderr.contains(name), "{extra:?}: {stderr}");
        }
    }
    assert!(control(&setup).requests().await.unwrap().is_empty());
    assert!(standin.stored().is_empty());
}
