//! `currents-heap check`: one line per check (what, where, ok/warn/fail and the fix), or one
//! JSON document; exit 0, or 2 when any check fails; never an event sent to Heap.

mod support;

use std::process::Stdio;

use currents_heap::source::event_type_folders;
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::moto::Moto;
use support::{APP_ID, fixtures, output};
use tokio::process::Command;

/// `check` with `args` against moto and `heap`.
fn check(moto: &Moto, heap: &Standin, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .arg("check")
        .args(args)
        .arg("--s3-path-style")
        .env("HEAP_API_URL", heap.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    moto.aws_env(&mut command);
    command
}

/// moto with the fixture bucket in `currents-bucket` and an empty `state-bucket`.
async fn correct_setup() -> Moto {
    let moto = Moto::start().await;
    moto.create_bucket("currents-bucket").await;
    moto.create_bucket("state-bucket").await;
    support::copy_all(
        &LocalStore::new(fixtures()),
        &moto.store("currents-bucket", ""),
    )
    .await;
    moto
}

const SOURCE: &str = "s3://currents-bucket/currents";
const STATE: &str = "s3://state-bucket/state";

/// The line of `check` in `stdout`.
fn line<'a>(stdout: &'a str, check: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split("  ").next().map(str::trim) == Some(check))
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_correct_moto_setup_exits_0_and_says_what_it_checked() {
    let moto = correct_setup().await;
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let folders = event_type_folders(&LocalStore::new(fixtures()))
        .await
        .unwrap()
        .len();
    let (code, stdout, stderr) =
        output(check(&moto, &heap, &["--source", SOURCE, "--state", STATE])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let source = line(&stdout, "source");
    assert!(
        source.starts_with("source  ok   s3://currents-bucket/currents/: lists; ")
            && source.ends_with(&format!("{folders} event_type= folders")),
        "{source}"
    );
    assert_eq!(
        line(&stdout, "state"),
        "state   ok   s3://state-bucket/state/: a probe object under control/ was written, read back and deleted"
    );
    assert!(
        line(&stdout, "lease")
            .contains("ok   s3://state-bucket/state/: honours conditional writes"),
        "{stdout}"
    );
    let heap_line = line(&stdout, "heap");
    assert!(
        heap_line.starts_with("heap    warn http://127.0.0.1:"),
        "{heap_line}"
    );
    assert!(
        heap_line.contains("not TLS: only for a local stand-in"),
        "{heap_line}"
    );
    assert!(
        line(&stdout, "app id").starts_with("app id  ok   HEAP_APP_ID / --heap-app-id: given"),
        "{stdout}"
    );
    let clock = line(&stdout, "clock");
    assert!(
        clock.starts_with(&format!(
            "clock   ok   {}: this host's clock is",
            moto.endpoint
        )),
        "{clock}"
    );
    assert!(
        line(&stdout, "sqs").starts_with("sqs     skip -: no --sqs-queue-url"),
        "{stdout}"
    );
    assert_eq!(stdout.lines().count(), 7, "one line per check:\n{stdout}");
    // The GET of Heap's base is no track request, and nothing was stored.
    assert_eq!(heap.report().requests, 0);
    assert!(heap.stored().is_empty());
    // The probe left nothing behind.
    let state = moto.store("state-bucket", "");
    assert!(state.list("").await.unwrap().is_empty());

    // --json: the same checks, one document.
    let (code, stdout, stderr) = output(check(
        &moto,
        &heap,
        &["--source", SOURCE, "--state", STATE, "--json"],
    ))
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let checks: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let checks = checks.as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["source", "state", "lease", "heap", "app id", "clock", "sqs"]
    );
    for check in checks {
        let status = check["status"].as_str().unwrap();
        assert!(["ok", "warn", "skip"].contains(&status), "{check}");
        assert!(
            check["target"].is_string() && check["detail"].is_string(),
            "{check}"
        );
        assert!(check.get("fix").is_some(), "{check}");
    }
    assert_eq!(checks[3]["status"], "warn");
    assert!(checks[3]["fix"].as_str().unwrap().contains("https://"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_missing_bucket_and_a_state_it_cannot_write_and_exits_2() {
    let moto = correct_setup().await;
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (code, stdout, stderr) = output(check(
        &moto,
        &heap,
        &["--source", "s3://no-such-bucket/currents", "--state", STATE],
    ))
    .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let source = line(&stdout, "source");
    assert!(
        source.starts_with("source  fail s3://no-such-bucket/currents/:"),
        "{source}"
    );
    assert!(
        source.contains("fix: the bucket s3://no-such-bucket/ does not exist"),
        "{source}"
    );
    // The other checks still ran.
    assert!(line(&stdout, "state").contains(" ok "), "{stdout}");
    assert!(stderr.contains("1 of 7 checks failed"), "{stderr}");

    // A state directory that refuses writes (EPERM, even to root).
    let (code, stdout, stderr) = output(check(
        &moto,
        &heap,
        &["--source", SOURCE, "--state", "/sys/kernel", "--json"],
    ))
    .await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let checks: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let state = &checks[1];
    assert_eq!(state["check"], "state");
    assert_eq!(state["status"], "fail");
    assert!(
        state["detail"]
            .as_str()
            .unwrap()
            .contains("/sys/kernel/control/probe-"),
        "{state}"
    );
    assert!(
        state["fix"]
            .as_str()
            .unwrap()
            .contains("write permission (on a writable mount) on /sys/kernel"),
        "{state}"
    );
    assert_eq!(
        checks[2]["status"], "skip",
        "the lease is not checked: {}",
        checks[2]
    );
    assert_eq!(heap.report().requests, 0);
}
