//! With `--log-format json`, the progress and summary lines carry their counts as fields
//! (under `fields`, as tracing-subscriber's JSON formatter writes them), and a run whose
//! lookback finds nothing but older hours says how to deliver them.

mod support;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup, output};

/// The JSON log lines of `stderr` whose message starts with `start`.
fn lines_starting(stderr: &str, start: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(start))
        })
        .collect()
}

async fn run_json(setup: &Setup, standin: &Standin, args: &[&str]) -> (i32, String, String) {
    let mut command = setup.command(standin, args);
    command
        .env("CURRENTS_HEAP_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    output(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_line_carries_what_was_sent_as_fields() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let (code, stdout, stderr) =
        run_json(&setup, &standin, &["run", "--once", "--lookback", "all"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let summaries = lines_starting(&stderr, "activity: ");
    assert_eq!(summaries.len(), 1, "one last line at the end:\n{stderr}");
    let fields = &summaries[0]["fields"];
    assert_eq!(summaries[0]["level"], "INFO");
    let sent = support::stored_ids(&standin).len() as u64;
    assert!(sent > 0);
    assert_eq!(fields["events_sent"].as_u64(), Some(sent), "{fields}");
    assert!(fields["requests"].as_u64().unwrap() > 0, "{fields}");
    assert_eq!(fields["throttled"], 0);
    assert_eq!(fields["objects_pending"], 0);
    for field in [
        "objects_ended",
        "lag_secs",
        "budget_events",
        "interval_secs",
    ] {
        assert!(fields[field].is_u64(), "{field}: {fields}");
    }
    // The poll line too.
    let polled = lines_starting(&stderr, "polled ");
    assert_eq!(polled.len(), 1, "{stderr}");
    assert!(polled[0]["fields"]["objects_pending"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookback_that_finds_nothing_but_older_hours_says_how_to_backfill_them() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    // The fixtures' hours are 2026-11-27; an hour's lookback holds none of them.
    let (code, stdout, stderr) =
        run_json(&setup, &standin, &["run", "--once", "--lookback", "1h"]).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(support::stored_ids(&standin).is_empty());
    let hints = lines_starting(&stderr, "no object in the lookback window");
    assert_eq!(hints.len(), 1, "{stderr}");
    let hint = &hints[0];
    assert_eq!(hint["level"], "WARN");
    let message = hint["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains("older than --lookback 1h")
            && message.contains("oldest date=2026-11-27-")
            && message.contains("backfill --from 2026-11-27T"),
        "{message}"
    );
    assert!(hint["fields"]["older_hours"].as_u64().unwrap() >= 1);
    // The hint's command delivers them.
    let from = message
        .split("--from ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let to = message
        .split("--to ")
        .nth(1)
        .unwrap()
        .split('`')
        .next()
        .unwrap();
    let (code, stdout, stderr) = setup
        .run(&standin, &["backfill", "--from", from, "--to", to])
        .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(support::stored_ids(&standin), support::all_sendable());

    // A window that holds objects gives no hint.
    let (_, _, stderr) = run_json(&setup, &standin, &["run", "--once", "--lookback", "all"]).await;
    assert!(lines_starting(&stderr, "no object in the lookback window").is_empty());
}
