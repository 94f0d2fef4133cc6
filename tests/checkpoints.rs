//! Checkpoints inside objects (issue 19), as a user meets them: the binary, a local source
//! and state, and the Heap stand-in answering each request after a second (about Heap's
//! real pace). A stop, a crash and a restart resume each object where it stopped, so Heap
//! sees few events twice; and what ended is never skipped.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use currents_heap::currents::key::DateHour;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{APP_ID, TempDir, signal};
use tokio::process::{Child, Command};

fn old_hour() -> DateHour {
    DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 24 * 30)
}

/// `backfill` of one hour with small requests, two at a time.
fn backfill(source: &Path, state: &Path, standin: &Standin, hour: DateHour) -> Command {
    let next = DateHour::from_hours_since_epoch(hour.hours_since_epoch() + 1);
    // `--from` takes `YYYY-MM-DDTHH`.
    let arg = |hour: DateHour| {
        let text = hour.to_string();
        format!("{}T{}", &text[..10], &text[11..])
    };
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(["backfill", "--from", &arg(hour), "--to", &arg(next)])
        .args(["--max-batch-events", "100", "--heap-concurrency", "2"])
        // A drain long enough to finish everything would leave nothing to resume.
        .args(["--shutdown-timeout", "5s"])
        .arg("--source")
        .arg(source)
        .arg("--state")
        .arg(state)
        .env("HEAP_API_URL", standin.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits (polling the stand-in every 50 ms) until it has stored `events` distinct events;
/// a run that ends first fails the test with its output.
async fn until_stored(standin: &Standin, child: &mut Child, events: usize) {
    for _ in 0..6_000 {
        if standin.stored().len() >= events {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = stderr.read_to_string(&mut err).await;
            }
            panic!("the run ended ({status}) before Heap stored {events} events: {err}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Heap never stored {events} events");
}

async fn finish(child: Child) -> (i32, String) {
    let output = child.wait_with_output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// The check: 8 objects of 1,000 events, Heap answering each 100-event request after
/// 1 s, 2 requests at a time (about 200 events/s). A SIGTERM a quarter of the way in, a
/// restart, a SIGKILL a quarter further, a restart to the end: every event arrives, at most
/// 300 are sent twice after the SIGTERM and 1,800 in all (without checkpoints: about 5,000).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_and_a_crash_resume_each_object_where_it_stopped() {
    let (source, state) = (TempDir::new("ckpt-source"), TempDir::new("ckpt-state"));
    let hour = old_hour();
    let options = SynthOptions {
        events: 1_000,
        identities: 5_000,
        null_percent: 0,
        block_size: 16_000,
        ..SynthOptions::default()
    };
    let ids = write_custom_events(&source.0, hour, 8, &options).unwrap();
    assert_eq!(ids.len(), 8_000);
    let standin = Standin::start(StandinConfig {
        response_delay: Duration::from_secs(1),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let start = || {
        backfill(&source.0, &state.0, &standin, hour)
            .spawn()
            .unwrap()
    };

    let mut first = start();
    until_stored(&standin, &mut first, 2_000).await;
    signal(&first, "-TERM");
    let (code, output) = finish(first).await;
    assert_ne!(code, -1, "a SIGTERM ends the run itself: {output}");
    let written = |output: &str| {
        output
            .lines()
            .find(|l| l.starts_with("checkpoints:"))
            .unwrap_or("checkpoints: none")
            .to_string()
    };
    eprintln!("after the SIGTERM: {}", written(&output));
    let before_restart = standin.report().duplicates;

    let mut second = start();
    let stored = standin.stored().len();
    until_stored(&standin, &mut second, (stored + 2_000).min(7_900)).await;
    let after_sigterm = standin.report().duplicates - before_restart;
    signal(&second, "-KILL");
    let _ = finish(second).await;

    let (code, output) = finish(start()).await;
    assert_eq!(code, 0, "{output}");
    eprintln!("the last run: {}", written(&output));
    let stored: HashSet<String> = standin.stored().into_keys().collect();
    assert_eq!(stored, ids, "every event arrives");
    let report = standin.report();
    eprintln!(
        "sent twice: {after_sigterm} after the SIGTERM, {} in all; {} requests, {} answered 429",
        report.duplicates, report.requests, report.limit_violations
    );
    assert_eq!(report.limit_violations, 0, "no request over Heap's limits");
    assert!(
        after_sigterm <= 300,
        "{after_sigterm} events sent twice after the SIGTERM"
    );
    assert!(
        report.duplicates <= 1_800,
        "{} events sent twice in all",
        report.duplicates
    );
    assert_eq!(report.duplicate_mismatches, 0);
}
