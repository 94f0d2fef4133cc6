//! Exit codes as a user sees them: the binary, a local bucket, the Heap stand-in, and
//! signals. Races are repeated many times in one test. A stop during the first listing
//! exits like any stop; configuration mistakes exit 2, not 4.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup, TempDir, all_sendable, stored_ids};
use tokio::io::{AsyncBufReadExt, BufReader};

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
    // Checkpoints may stand for the events skipped by policy; nothing is recorded done.
    let recorded = walk_files(&setup.state.0.join("ledger"))
        .into_iter()
        .filter(|f| f.ends_with(".done") || f.ends_with(".failed"))
        .count();
    assert_eq!(
        recorded, 0,
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

/// An S3 endpoint that takes connections and never answers, but for the first `answered`
/// requests, which get an empty listing: a listing after those lasts until a signal, as one
/// of a slow or vast bucket would.
async fn silent_s3(answered: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut left = answered;
        while let Ok((mut socket, _)) = silent.accept().await {
            if left > 0 {
                left -= 1;
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>currents</Name><Prefix>c/</Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated></ListBucketResult>";
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                continue;
            }
            held.push(socket);
        }
    });
    endpoint
}

/// A SIGTERM while a listing hangs, in the start-up check (the first listing of all) and in
/// the engine's first poll: a clean stop (0 for `run`, 4 for `run --once`), not the signal's
/// default action, and nothing sent.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_the_first_listing_is_a_clean_stop() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let state = TempDir::new("silent-source-state");
    // (requests answered, the line logged just before the listing that hangs, the line
    // that says the stop cut it short)
    let phases = [
        (
            0,
            "checking the source and the state",
            "stopped during the start-up check",
        ),
        (1, "started:", "stopping during a poll"),
    ];
    for (answered, before, stopped) in phases {
        for (args, expected) in [(&["run"][..], 0), (&["run", "--once"][..], 4)] {
            let endpoint = silent_s3(answered).await;
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
            let mut seen = Vec::new();
            while let Some(line) = stderr.next_line().await.unwrap() {
                let found = line.contains(before);
                seen.push(line);
                if found {
                    break;
                }
            }
            assert!(
                seen.last().is_some_and(|l| l.contains(before)),
                "{args:?}: no `{before}` line: {seen:#?}"
            );
            if answered > 0 {
                // The engine's listing, not the check's, is the one the signal lands in.
                assert!(
                    !seen
                        .iter()
                        .any(|l| l.contains("stopped during the start-up check")),
                    "{seen:#?}"
                );
            }
            support::signal(&child, "-TERM");
            let mut rest = Vec::new();
            while let Some(line) = stderr.next_line().await.unwrap() {
                rest.push(line);
            }
            let status = child.wait().await.unwrap();
            assert_eq!(
                status.code(),
                Some(expected),
                "{args:?} after `{before}`: a stop during the first listing exits like any stop, not by the signal"
            );
            if expected == 4 || answered > 0 {
                assert!(
                    rest.iter().any(|l| l.contains(stopped)),
                    "{args:?}: the signal landed in the listing and cut it short: {rest:#?}"
                );
            }
        }
    }
    assert_eq!(
        standin.report().requests,
        0,
        "a stop before the first send sends nothing"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_2_before_any_work() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let mut missing_app = setup.command(&standin, &["run", "--once"]);
    missing_app.env_remove("HEAP_APP_ID");
    let output = missing_app.output().await.unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("HEAP_APP_ID"));
    for args in [
        &["run", "--once", "--heap-url", "not a url"][..],
        &["run", "--once", "--lookback", "soon"],
        &["backfill", "--from", "yesterday", "--to", "2026-11-28"],
        &["run", "--once", "--max-batch-events", "5000"],
    ] {
        let (code, _, stderr) = setup.run(&standin, args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    assert_eq!(standin.report().requests, 0);
    assert!(
        std::fs::read_dir(&setup.state.0).unwrap().next().is_none(),
        "no state was written"
    );
}

/// Every file under `dir` (none when it does not exist), as paths.
fn walk_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path.to_string_lossy().into_owned());
            }
        }
    }
    found
}
