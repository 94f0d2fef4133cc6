//! `status --json` holds the same facts as the text report, as one JSON document with the
//! field names docs/tools.md gives.

mod support;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup};

/// The number after `label` on the text line that starts with it.
fn number_after(text: &str, label: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line:\n{text}"));
    line[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in `{line}`"))
}

async fn both(setup: &Setup, standin: &Standin) -> (String, serde_json::Value) {
    let (code, text, stderr) = setup.run(standin, &["status", "--lookback", "all"]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, json, stderr) = setup
        .run(standin, &["status", "--lookback", "all", "--json"])
        .await;
    assert_eq!(code, 0, "{stderr}");
    let document: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}):\n{json}"));
    (text, document)
}

fn assert_same_counts(text: &str, json: &serde_json::Value) {
    for (label, field) in [
        ("objects pending: ", "objects_pending"),
        ("objects done: ", "objects_done"),
        ("objects failed: ", "objects_failed"),
        ("dead letters: ", "dead_letters"),
    ] {
        assert_eq!(
            json[field].as_u64(),
            Some(number_after(text, label)),
            "{field}:\n{text}\n{json:#}"
        );
    }
    let by_type: u64 = json["pending_by_event_type"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(Some(by_type), json["objects_pending"].as_u64());
    let sender = text.lines().find(|l| l.starts_with("sender: ")).unwrap();
    assert_eq!(
        json["sender"]["line"].as_str().map(str::trim_end),
        Some(sender)
    );
    assert!(
        json["source"].as_str().unwrap().contains("source"),
        "{json:#}"
    );
    assert_eq!(json["lookback"], "all");
    // The state as configured, not the ledger's folder inside it (a tester read `…/ledger/`
    // as a location other than the --state given).
    let state = json["state"].as_str().unwrap();
    assert!(!state.contains("ledger"), "{json:#}");
    let line = text.lines().find(|l| l.starts_with("state:")).unwrap();
    assert_eq!(line.trim_start_matches("state:").trim(), state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_match_the_text_before_and_after_a_run() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let (text, json) = both(&setup, &standin).await;
    assert_same_counts(&text, &json);
    assert!(json["objects_pending"].as_u64().unwrap() > 0);
    assert_eq!(json["sender"]["state"], "none");
    assert!(json["oldest_pending_hour"].is_string(), "{json:#}");
    assert_eq!(json["hours_from"], serde_json::Value::Null);

    let (_, stdout, stderr) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert!(stdout.contains("objects:"), "{stdout}\n{stderr}");
    let (text, json) = both(&setup, &standin).await;
    assert_same_counts(&text, &json);
    assert!(json["objects_done"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(json["objects_pending"], 0);
    assert_eq!(json["oldest_pending_hour"], serde_json::Value::Null);
    assert_eq!(json["sender"]["state"], "released");
    assert!(json["sender"]["holder"].is_string());
    assert!(json["workers"].is_array() && json["backfills"].is_array());
}
