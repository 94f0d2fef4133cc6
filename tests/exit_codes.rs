//! Exit codes as a user sees them: the binary, a local bucket, the Heap stand-in, and
//! signals. Races are repeated many times in one test.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup, all_sendable, stored_ids};

#[cfg(unix)]
fn sigterm(pid: u32) {
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Files under the state's dead-letter folder.
fn dead_letter_files(setup: &Setup) -> usize {
    let mut found = 0;
    let mut dirs = vec![setup.state.0.join("dead-letters")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "jsonl") {
                found += 1;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_that_answers_401_exits_1_with_an_error_line_every_time() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    for attempt in 0..50 {
        // Vary how many objects race the fatal answer.
        let concurrency = ["1", "4", "16"][attempt % 3];
        let mut command = setup.command(
            &standin,
            &[
                "run",
                "--once",
                "--lookback",
                "all",
                "--object-concurrency",
                concurrency,
            ],
        );
        // A well-formed id of another app.
        command.env("HEAP_APP_ID", "31415926");
        let output = command.output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "attempt {attempt}: a 401 is fatal\n{stderr}"
        );
        let error = stderr
            .lines()
            .find(|l| l.contains("ERROR"))
            .unwrap_or_else(|| panic!("attempt {attempt}: no ERROR line\n{stderr}"));
        assert!(
            error.contains("401") && error.contains("HEAP_APP_ID"),
            "the ERROR line says what to fix: {error}"
        );
        assert!(!stderr.contains("31415926"), "the app id is never logged");
    }
    assert_eq!(standin.stored().len(), 0);
    assert!(
        !setup.state.0.join("ledger").exists(),
        "nothing was recorded done after a fatal answer"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_stopped_mid_range_exits_4_and_a_second_one_finishes_exactly_once() {
    let standin = Standin::start(StandinConfig {
        response_delay: Duration::from_millis(25),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let setup = Setup::new();
    let args = [
        "backfill",
        "--from",
        "2026-11-27",
        "--to",
        "2026-11-28",
        "--max-batch-events",
        "4",
        "--heap-concurrency",
        "1",
        "--object-concurrency",
        "2",
        // Two at a time however small, so that the stop finds objects not yet started.
        "--small-object-budget",
        "0",
    ];
    let child = setup.command(&standin, &args).spawn().unwrap();
    standin.wait_until_stored(all_sendable().len() / 3).await;
    sigterm(child.id().unwrap());
    let output = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("incomplete: stopped by a signal"),
        "{stdout}"
    );
    assert!(
        stdout.contains("remaining: "),
        "it says what remains: {stdout}"
    );
    assert!(stdout.contains("Run the same command again"), "{stdout}");
    assert!(
        stored_ids(&standin).len() < all_sendable().len(),
        "it stopped before the end of its range"
    );

    let (code, stdout, stderr) = setup.run(&standin, &args).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
    assert_eq!(
        standin.report().duplicates,
        0,
        "objects in flight finished before the first backfill exited; none was sent twice"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_run_stopped_by_sigterm_exits_0_even_after_parking() {
    let poisoned = all_sendable().into_iter().min().unwrap();
    let standin = Standin::start(StandinConfig {
        poison_keys: HashSet::from([poisoned]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let setup = Setup::new();
    let child = setup
        .command(
            &standin,
            &["run", "--lookback", "all", "--poll-interval", "1h"],
        )
        .spawn()
        .unwrap();
    standin.wait_until_stored(all_sendable().len() - 1).await;
    // The dead letter is written just after the last answer: wait for the file.
    for _ in 0..2000 {
        if dead_letter_files(&setup) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(dead_letter_files(&setup), 1);
    sigterm(child.id().unwrap());
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "a stopped long-lived run exits 0 whatever it parked: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}
