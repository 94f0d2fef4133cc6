//! Failure paths a fresh reviewer found by trying the worker as an operator would: a state
//! that vanishes mid-run, a signal during the first listing, replay during a state outage
//! or a stop, and mistakes that are configuration (exit 2), not work left to do (exit 4).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::commands::worker::Exit;
use currents_heap::deadletter::{DeadLetter, DeadLetterFilter, DeadLetterStore};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::replay::replay;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan, Settings};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Ops};
use support::{APP_ID, Setup, TempDir, all_sendable, copy_tree, custom_event, fixtures};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;

fn settings() -> Settings {
    support::engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET))
}

fn heap(standin: &Standin) -> Output {
    support::heap_output(standin, APP_ID, Duration::from_secs(30))
}

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
    assert_eq!(Exit::from(report.outcome()).code(), 4, "{}", report.render());
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

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_first_listing_is_a_clean_stop() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let state = TempDir::new("silent-source-state");
    // An S3 endpoint that takes connections and never answers: the first listing lasts
    // until the signal, as a listing of a slow or vast bucket would.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    for (args, expected) in [(&["run"][..], 0), (&["run", "--once"][..], 4)] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"));
        command
            .args(args)
            .args(["--source", "s3://currents/c", "--s3-path-style", "--state"])
            .arg(&state.0)
            .env("AWS_ACCESS_KEY_ID", "AKIDSILENTSOURCE")
            .env("AWS_SECRET_ACCESS_KEY", "silent-source-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE")
            .env("HEAP_API_URL", standin.url())
            .env("HEAP_APP_ID", APP_ID)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        // The engine logs `started:` just before its first listing, which never ends: the
        // signal lands during it.
        while let Some(line) = stderr.next_line().await.unwrap() {
            if line.contains("started:") {
                break;
            }
        }
        let pid = child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut rest = Vec::new();
        while let Some(line) = stderr.next_line().await.unwrap() {
            rest.push(line);
        }
        let status = child.wait().await.unwrap();
        assert_eq!(
            status.code(),
            Some(expected),
            "{args:?}: a stop during the first poll exits like any stop, not by the signal"
        );
        assert!(
            rest.iter().any(|l| l.contains("stopping during a poll")),
            "{args:?}: the signal landed in the listing and cut it short: {rest:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_mistakes_exit_2_not_4() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let file = setup.state.0.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let state_under_a_file = file.join("state");
    let (source, state) = (
        setup.source.0.to_str().unwrap().to_string(),
        setup.state.0.to_str().unwrap().to_string(),
    );
    for (args, expected) in [
        (
            vec![
                "run",
                "--once",
                "--source",
                "/nonexistent/currents-bucket",
                "--state",
                &state,
            ],
            "no such directory",
        ),
        (
            vec![
                "run",
                "--once",
                "--source",
                &source,
                "--state",
                state_under_a_file.to_str().unwrap(),
            ],
            "cannot create the directory",
        ),
        (
            vec![
                "backfill",
                "--from",
                "2026-11-27",
                "--to",
                "9999-12-31",
                "--source",
                &source,
                "--state",
                &state,
            ],
            "at most 9600",
        ),
    ] {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
            .args(&args)
            .env("HEAP_API_URL", standin.url())
            .env("HEAP_APP_ID", APP_ID)
            .env("NO_COLOR", "1")
            .output()
            .await
            .unwrap();
        let (code, stdout, stderr) = (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(code, 2, "{args:?}\n{stdout}\n{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(standin.report().requests, 0, "no work was started");
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
