//! The worker binary end to end: a local source laid out like a Currents bucket, local state,
//! and the Heap stand-in. Covers run/backfill/replay/status, bad objects,
//! graceful shutdown, and SIGKILL at several points of a run.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{Setup, all_sendable, fixtures, sendable_by_hour, stored_ids};

use support::APP_ID;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_delivers_every_event_once_and_a_second_run_sends_nothing() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let (code, stdout, stderr) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
    assert!(stdout.contains("objects: 19 done, 0 failed"), "{stdout}");
    assert!(stdout.contains("44 skipped (no identity)"), "{stdout}");
    let requests = standin.report().requests;

    let (code, stdout, _) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0);
    assert!(stdout.contains("objects: 0 done"), "{stdout}");
    assert_eq!(
        standin.report().requests,
        requests,
        "a finished object is not sent again"
    );

    let (code, stdout, _) = setup.run(&standin, &["status", "--lookback", "all"]).await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("objects pending: 0") && stdout.contains("objects done: 19"),
        "{stdout}"
    );
    assert!(stdout.contains("caught up"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_recorded_as_failed_and_do_not_block_the_rest() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let hour = setup.source.0.join(
        "currents/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817/event_type=users.behaviors.CustomEvent/date=2026-11-27-14/612/zone-a",
    );
    let good = std::fs::read_dir(&hour)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "avro"))
        .unwrap();
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(
        hour.join("truncated+0+0000009999.avro"),
        &bytes[..bytes.len() * 2 / 3],
    )
    .unwrap();
    std::fs::write(hour.join("empty+0+0000009998.avro"), b"").unwrap();
    std::fs::write(setup.source.0.join("currents/stray.avro"), &bytes).unwrap();

    let (code, stdout, stderr) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    assert_eq!(
        stored_ids(&standin),
        all_sendable(),
        "the good objects were all delivered"
    );
    assert!(stdout.contains("objects: 19 done, 3 failed"), "{stdout}");
    for (name, reason) in [
        ("truncated+0+0000009999.avro", "truncated"),
        ("empty+0+0000009998.avro", "empty"),
        ("stray.avro", "outside the Currents layout"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("failed:") && l.contains(name) && l.contains(reason)),
            "{name}: {stdout}"
        );
    }
    let (_, status, _) = setup.run(&standin, &["status", "--lookback", "all"]).await;
    assert!(
        status.contains("objects failed: 3") && status.contains("objects pending: 0"),
        "{status}"
    );
    assert!(
        status.contains("empty+0+0000009998.avro: the file is empty"),
        "{status}"
    );
    // The same versions are not tried again; nothing is left to do.
    let (code, stdout, _) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0, "{stdout}");

    // Braze (or the operator) uploads the empty object again, readable this time: a new
    // version, delivered, and no longer reported as failed.
    std::fs::write(hour.join("empty+0+0000009998.avro"), &bytes).unwrap();
    let (code, stdout, _) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("objects: 1 done"), "{stdout}");
    let (_, status, _) = setup.run(&standin, &["status", "--lookback", "all"]).await;
    assert!(
        status.contains("objects failed: 2 (1 more failed versions were since replaced"),
        "{status}"
    );
    assert!(!status.contains("the file is empty"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_takes_exactly_its_range_and_resumes() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let by_hour = sendable_by_hour();
    let (code, stdout, stderr) = setup
        .run(
            &standin,
            &[
                "backfill",
                "--from",
                "2026-11-27T13",
                "--to",
                "2026-11-27T15",
            ],
        )
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let expected: HashSet<String> = ["2026-11-27-13", "2026-11-27-14"]
        .iter()
        .flat_map(|h| by_hour[*h].clone())
        .collect();
    assert_eq!(stored_ids(&standin), expected);

    let (code, stdout, _) = setup
        .run(
            &standin,
            &["backfill", "--from", "2026-11-27", "--to", "2026-11-28"],
        )
        .await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("objects: 2 done"),
        "only hours 12 and 15 were left: {stdout}"
    );
    assert_eq!(stored_ids(&standin), all_sendable());
    assert_eq!(
        standin.report().duplicates,
        0,
        "resuming sent nothing twice"
    );

    let (code, _, stderr) = setup
        .run(
            &standin,
            &["backfill", "--from", "2026-11-28", "--to", "2026-11-27"],
        )
        .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("must come before"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_replayed_once_the_cause_is_fixed() {
    let poisoned = sendable_by_hour()["2026-11-27-13"]
        .iter()
        .next()
        .unwrap()
        .clone();
    let broken_heap = Standin::start(StandinConfig {
        poison_keys: HashSet::from([poisoned.clone()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let setup = Setup::new();
    let (code, stdout, _) = setup
        .run(&broken_heap, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 3, "{stdout}");
    assert!(stdout.contains(", 1 parked"), "{stdout}");
    let (_, status, _) = setup
        .run(&broken_heap, &["status", "--lookback", "all"])
        .await;
    assert!(
        status.contains("dead letters: 1") && status.contains("poisoned"),
        "{status}"
    );
    assert!(
        status.contains("objects pending: 0"),
        "an object with a parked event is done: {status}"
    );

    let fixed_heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (code, stdout, _) = setup
        .run(
            &fixed_heap,
            &["replay", "--event-type", "users.messages.email.Open"],
        )
        .await;
    assert_eq!(
        (code, stdout.contains("dead-letter objects: 0")),
        (0, true),
        "the filter matched nothing: {stdout}"
    );
    let (code, stdout, stderr) = setup
        .run(&fixed_heap, &["replay", "--date", "2026-11-27"])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&fixed_heap), HashSet::from([poisoned]));
    let (_, status, _) = setup
        .run(&fixed_heap, &["status", "--lookback", "all"])
        .await;
    assert!(status.contains("dead letters: 0"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_and_records_nothing() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let (code, stdout, _) = setup
        .run(
            &standin,
            &["run", "--once", "--dry-run", "--lookback", "all"],
        )
        .await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("{} would be sent", all_sendable().len())),
        "{stdout}"
    );
    assert_eq!(standin.report().requests, 0);
    assert!(std::fs::read_dir(&setup.state.0).unwrap().next().is_none());
}

/// A stand-in that answers after 25 ms, so a run lasts long enough to interrupt.
async fn slow_standin() -> Standin {
    Standin::start(StandinConfig {
        response_delay: Duration::from_millis(25),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap()
}

/// A run slow enough to interrupt: small batches, one request at a time, slow answers, and
/// two objects at a time however small (so that some are still queued at a stop).
fn slow_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec![
        "run",
        "--lookback",
        "all",
        "--max-batch-events",
        "4",
        "--heap-concurrency",
        "1",
        "--object-concurrency",
        "2",
        "--small-object-budget",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_several_points_loses_nothing_and_repeats_use_the_same_keys() {
    let standin = slow_standin().await;
    let setup = Setup::new();
    let total = all_sendable().len();
    let mut killed = 0;
    for stored_before_kill in [1, total / 3, total * 2 / 3] {
        let mut child = setup
            .command(&standin, &slow_args(&["--once"]))
            .spawn()
            .unwrap();
        tokio::select! {
            _ = standin.wait_until_stored(stored_before_kill) => {
                child.start_kill().unwrap();
                killed += 1;
            }
            _ = child.wait() => {}
        }
        child.wait().await.unwrap();
    }
    assert!(killed >= 2, "the runs finished before they could be killed");
    let (code, stdout, stderr) = setup.run(&standin, &slow_args(&["--once"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
    let report = standin.report();
    assert!(
        report.duplicates > 0,
        "a kill mid-object re-sends its events: {report:?}"
    );
    assert_eq!(
        report.duplicate_mismatches, 0,
        "a repeat must be the same event under the same key"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_objects_in_flight_and_records_only_finished_ones() {
    let standin = slow_standin().await;
    let setup = Setup::new();
    let child = setup
        .command(
            &standin,
            &slow_args(&["--poll-interval", "1h", "--shutdown-timeout", "20s"]),
        )
        .spawn()
        .unwrap();
    standin.wait_until_stored(20).await;
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("0 abandoned"),
        "in-flight objects finished within the timeout: {stdout}"
    );
    assert!(
        stored_ids(&standin).len() < all_sendable().len(),
        "it stopped fetching new objects"
    );

    // Every object the ledger calls done had all its sendable events delivered.
    let stored = stored_ids(&standin);
    let mut done_markers = 0;
    let mut dirs = vec![setup.state.0.join("ledger")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "done") {
                done_markers += 1;
                let object = path
                    .parent()
                    .unwrap()
                    .strip_prefix(setup.state.0.join("ledger"))
                    .unwrap();
                let json = fixtures().join(object).with_extension("json");
                for line in std::fs::read_to_string(json).unwrap().lines() {
                    let event: serde_json::Value = serde_json::from_str(line).unwrap();
                    if event["user"]["external_user_id"].is_string() {
                        assert!(
                            stored.contains(event["id"].as_str().unwrap()),
                            "{object:?} marked done early"
                        );
                    }
                }
            }
        }
    }
    assert!(done_markers > 0);
    let (code, _, _) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 0);
    assert_eq!(stored_ids(&standin), all_sendable());
}

/// Reads one metric's value from a Prometheus text page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        .parse()
        .unwrap()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_reports_a_run() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let mut command = setup.command(
        &standin,
        &[
            "run",
            "--lookback",
            "all",
            "--poll-interval",
            "1h",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    command.env("RUST_LOG", "info");
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let address = loop {
        let line = stderr
            .next_line()
            .await
            .unwrap()
            .expect("the worker logs where it listens");
        if let Some(url) = line.split("on http://").nth(1) {
            break url.trim().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let total = all_sendable().len();
    standin.wait_until_stored(total).await;

    let http = reqwest::Client::new();
    let get = |path: &str| {
        let request = http.get(format!("http://{address}{path}"));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The last objects are recorded just after their events land: wait for the ledger.
    let mut page = String::new();
    for _ in 0..200 {
        page = get("/metrics").await.1;
        if metric(&page, "currents_heap_objects_done_total") == 19.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(metric(&page, "currents_heap_objects_done_total"), 19.0);
    let sent: f64 = page
        .lines()
        .filter(|l| l.starts_with("currents_heap_events_sent_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(sent as usize, total);
    assert_eq!(
        metric(
            &page,
            "currents_heap_events_read_total{event_type=\"users.behaviors.CustomEvent\"}"
        ),
        136.0
    );
    assert_eq!(
        metric(
            &page,
            "currents_heap_events_skipped_total{event_type=\"users.behaviors.CustomEvent\"}"
        ),
        30.0
    );
    let requests = metric(&page, "currents_heap_heap_requests_total{status=\"200\"}");
    assert_eq!(requests as u64, standin.report().accepted_requests);
    assert_eq!(
        metric(&page, "currents_heap_heap_request_duration_seconds_count"),
        requests
    );
    // The gauges follow the objects as they end, not the poll that found them (issue 18).
    assert_eq!(
        metric(&page, "currents_heap_objects_pending"),
        0.0,
        "all 19 ended since the only poll"
    );
    assert_eq!(metric(&page, "currents_heap_lag_seconds"), 0.0);
    assert!(
        metric(
            &page,
            "currents_heap_last_successful_poll_timestamp_seconds"
        ) > 1.7e9
    );
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(get("/nope").await.0, 404);

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().await.unwrap().code(), Some(0));
}

/// A replay stopped by SIGTERM finishes the dead-letter object in hand (its events are not
/// sent again by the next replay, nor parked twice), starts no other, and exits 4; the next
/// replay finishes the rest and exits 0. Three stops at different points, for the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replay_finishes_the_object_in_hand_and_the_next_resumes() {
    // Park every sendable event: Heap refuses them all.
    let refusing = Standin::start(StandinConfig {
        poison_keys: all_sendable(),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let setup = Setup::new();
    let (code, stdout, _) = setup
        .run(&refusing, &["run", "--once", "--lookback", "all"])
        .await;
    assert_eq!(code, 3, "{stdout}");
    let parked = all_sendable().len();
    let dead_letter_objects = || {
        let mut found = 0;
        let mut dirs = vec![setup.state.0.join("dead-letters")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(dir).into_iter().flatten() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found += 1;
                }
            }
        }
        found
    };
    let objects = dead_letter_objects();
    assert!(objects > 3, "{objects} dead-letter objects");

    let fixed = slow_standin().await;
    let mut stored_before = 0;
    for stop in 0..3 {
        let child = setup
            .command(
                &fixed,
                &[
                    "replay",
                    "--max-batch-events",
                    "2",
                    "--heap-concurrency",
                    "1",
                    "--shutdown-timeout",
                    "30s",
                ],
            )
            .spawn()
            .unwrap();
        fixed.wait_until_stored(stored_before + 1 + stop).await;
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let output = child.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let code = output.status.code();
        assert!(
            code == Some(4) || (code == Some(0) && dead_letter_objects() == 0),
            "{code:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("events left in place: 0"),
            "the object in hand was finished, not cut short: {stdout}"
        );
        stored_before = fixed.stored().len();
    }
    let (code, stdout, stderr) = setup.run(&fixed, &["replay"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(dead_letter_objects(), 0);
    assert_eq!(fixed.stored().len(), parked);
    assert_eq!(
        fixed.report().duplicates,
        0,
        "no dead letter was sent twice across the stops"
    );
}
