//! `status` shows objects recorded failed for being outside the Currents layout whatever the
//! `--lookback`: they have no `date=` hour, so no window of hours holds them, and the README
//! promises that a misplaced object is recorded failed and that status shows it.

mod support;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_failed_keys_outside_the_layout_with_the_default_lookback() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let folder = setup.source.0.join(
        "currents/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817/event_type=users.behaviors.CustomEvent",
    );
    let misplaced = folder.join("date=garbage/612/zone-a/misplaced+0+0000000000.avro");
    std::fs::create_dir_all(misplaced.parent().unwrap()).unwrap();
    std::fs::write(&misplaced, b"not read: the key is outside the layout").unwrap();
    // A whole-history run records it failed.
    let (_, stdout, stderr) = setup
        .run(&standin, &["run", "--once", "--lookback", "all"])
        .await;
    assert!(stdout.contains("1 failed"), "{stdout}\n{stderr}");
    let (_, all, _) = setup.run(&standin, &["status", "--lookback", "all"]).await;
    assert!(all.contains("misplaced+0+0000000000.avro"), "{all}");
    for lookback in [None, Some("1h")] {
        let mut args = vec!["status"];
        if let Some(lookback) = lookback {
            args.extend(["--lookback", lookback]);
        }
        let (code, status, stderr) = setup.run(&standin, &args).await;
        assert_eq!(code, 0, "{status}\n{stderr}");
        assert!(
            status
                .lines()
                .any(|l| l.contains("date=garbage/612/zone-a/misplaced+0+0000000000.avro")),
            "{lookback:?}: the failed key outside the layout is listed:\n{status}"
        );
    }
}
