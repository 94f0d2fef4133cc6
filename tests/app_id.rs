//! The Heap app id as users hand it over: a file saved by Notepad or PowerShell starts with a
//! UTF-8 byte order mark, a line copied from a .env file is `HEAP_APP_ID=…`. The id is the
//! digits of a Heap environment id; anything else exits 2 before a request is sent, naming
//! where it came from and never echoing it.

mod support;

use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{APP_ID, Setup, TempDir, all_sendable, output, stored_ids};

/// A value that must never appear in a log line.
const NOT_AN_ID: &str = "HEAP_APP_ID=90210731";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_id_file_with_a_byte_order_mark_and_a_newline_is_read() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let dir = TempDir::new("app-id");
    let file = dir.0.join("app-id");
    std::fs::write(&file, format!("\u{feff}{APP_ID}\r\n")).unwrap();
    let mut command = setup.command(&standin, &["run", "--once", "--lookback", "all"]);
    command
        .env_remove("HEAP_APP_ID")
        .arg("--heap-app-id-file")
        .arg(&file);
    let (code, stdout, stderr) = output(command).await;
    // The stand-in answers 401 to any other app id.
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stored_ids(&standin), all_sendable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_id_that_is_not_digits_exits_2_naming_its_source_without_its_value() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let dir = TempDir::new("app-id");
    let file = dir.0.join("heap-app-id.env");
    std::fs::write(&file, format!("{NOT_AN_ID}\n")).unwrap();

    let mut command = setup.command(&standin, &["run", "--once", "--lookback", "all"]);
    command
        .env_remove("HEAP_APP_ID")
        .arg("--heap-app-id-file")
        .arg(&file);
    let (code, stdout, stderr) = output(command).await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&file.display().to_string()),
        "the file is named: {stderr}"
    );
    assert!(
        !stderr.contains("90210731"),
        "the value is not echoed: {stderr}"
    );

    // The same rule for the variable, for each command that sends.
    for args in [
        &["run", "--once", "--lookback", "all"][..],
        &[
            "backfill",
            "--from",
            "2026-11-27",
            "--to",
            "2026-11-28",
            "--no-handover",
        ],
        &["replay"],
    ] {
        for bad in [
            NOT_AN_ID,
            "app 90210731",
            "90210731-eu",
            "9021073190210731902107319",
        ] {
            let mut command = setup.command(&standin, args);
            command.env("HEAP_APP_ID", bad);
            let (code, stdout, stderr) = output(command).await;
            assert_eq!(code, 2, "{args:?} {bad}: {stdout}\n{stderr}");
            assert!(stderr.contains("HEAP_APP_ID"), "{args:?} {bad}: {stderr}");
            assert!(
                !stderr.contains("90210731"),
                "{args:?}: the value is not echoed: {stderr}"
            );
        }
    }
    // A flag is named as the flag.
    let mut command = setup.command(&standin, &["run", "--once", "--heap-app-id", NOT_AN_ID]);
    command.env_remove("HEAP_APP_ID");
    let (code, _, stderr) = output(command).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--heap-app-id") && !stderr.contains("90210731"),
        "{stderr}"
    );
    assert_eq!(standin.report().requests, 0, "nothing was sent");
}

/// An empty file (a secret mounted before it was filled) is named as the culprit, not
/// reported as "missing: set HEAP_APP_ID, ..." as though no file had been given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_app_id_file_exits_2_saying_the_file_is_empty() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let setup = Setup::new();
    let dir = TempDir::new("app-id");
    for (name, text) in [("empty", ""), ("blank", " \r\n")] {
        let file = dir.0.join(name);
        std::fs::write(&file, text).unwrap();
        let mut command = setup.command(&standin, &["run", "--once", "--lookback", "all"]);
        command
            .env_remove("HEAP_APP_ID")
            .arg("--heap-app-id-file")
            .arg(&file);
        let (code, stdout, stderr) = output(command).await;
        assert_eq!(code, 2, "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains("is empty"),
            "{name}: the file is named, and said to be empty: {stderr}"
        );
        assert!(!stderr.contains("missing"), "{name}: {stderr}");
    }
}
