//! The cheap checks at the start of every command: a wiring or permission error (a missing
//! bucket, a state that cannot be written) exits 2 naming the location and the permission,
//! before any event is sent; only a real outage at start is exit 4 for a bounded command.

mod support;

use std::process::Stdio;

use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::moto::Moto;
use support::{APP_ID, fixtures, output};
use tokio::process::Command;

const RANGE: [&str; 4] = ["--from", "2026-11-27", "--to", "2026-11-28"];

/// The binary with `args`, against `heap`, logging at warn, with no AWS configuration from
/// the host.
fn binary(heap: &Standin, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(args)
        .env("HEAP_API_URL", heap.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The bounded commands every case runs: `run --once` and a `backfill` of the fixtures' day.
fn bounded(extra: &[&str]) -> Vec<Vec<String>> {
    let mut once = vec!["run", "--once", "--lookback", "all"];
    once.extend(extra);
    let mut backfill = vec!["backfill"];
    backfill.extend(RANGE);
    backfill.extend(extra);
    [once, backfill]
        .into_iter()
        .map(|args| args.into_iter().map(String::from).collect())
        .collect()
}

/// Uploads the fixture bucket into `bucket` on moto, keys as they are (`currents/...`).
pub async fn upload_fixtures(moto: &Moto, bucket: &str) {
    moto.create_bucket(bucket).await;
    support::copy_all(&LocalStore::new(fixtures()), &moto.store(bucket, "")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_bucket_exits_2_naming_it_before_any_send() {
    let moto = Moto::start().await;
    moto.create_bucket("state-bucket").await;
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    for args in bounded(&[
        "--source",
        "s3://no-such-bucket/currents",
        "--state",
        "s3://state-bucket/state",
        "--s3-path-style",
    ]) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = binary(&heap, &args);
        moto.aws_env(&mut command);
        let (code, stdout, stderr) = output(command).await;
        assert_eq!(code, 2, "{args:?}\n{stdout}\n{stderr}");
        assert!(
            stderr.contains("s3://no-such-bucket/"),
            "{args:?}: the bucket is named: {stderr}"
        );
        assert!(
            stderr.contains("does not exist"),
            "{args:?}: says what is wrong: {stderr}"
        );
    }
    assert_eq!(heap.report().requests, 0, "nothing was sent");
}

/// `/sys/kernel` exists and refuses every new name with EPERM, even to root: a state
/// directory that can be read but not written, as a read-only mount would be.
const UNWRITABLE: &str = "/sys/kernel";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_that_cannot_be_written_exits_2_naming_it_before_any_send() {
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let source = fixtures();
    let source = source.to_str().unwrap();
    // With the lease and without (`--single-process` takes no lease, but still writes the
    // ledger); a short retry so that, were the state found only after sending, the run
    // would end soon rather than in 15 minutes.
    for lease in [&[][..], &["--single-process"]] {
        let mut extra = vec!["--source", source, "--state", UNWRITABLE];
        extra.extend(["--retry-max-time", "2s"]);
        extra.extend(lease);
        for args in bounded(&extra) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, stdout, stderr) = output(binary(&heap, &args)).await;
            assert_eq!(code, 2, "{args:?}\n{stdout}\n{stderr}");
            assert!(stderr.contains(UNWRITABLE), "{args:?}: {stderr}");
            assert!(
                stderr.contains("write permission"),
                "{args:?}: the permission is named: {stderr}"
            );
        }
    }
    assert_eq!(heap.report().requests, 0, "nothing was sent");
    assert!(heap.stored().is_empty());
}

/// A port on loopback that nothing listens on: connections are refused at once.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_at_start_exits_4_from_a_bounded_command_not_2() {
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    for lease in [&[][..], &["--single-process"]] {
        let mut extra = vec![
            "--source",
            "s3://currents-bucket/currents",
            "--state",
            "s3://state-bucket/state",
            "--s3-path-style",
        ];
        extra.extend(lease);
        for args in bounded(&extra) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut command = binary(&heap, &args);
            command
                .env("AWS_ACCESS_KEY_ID", "AKIDOUTAGE")
                .env("AWS_SECRET_ACCESS_KEY", "outage-secret")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ENDPOINT_URL", &endpoint);
            let ran =
                tokio::time::timeout(std::time::Duration::from_secs(120), output(command)).await;
            let (code, stdout, stderr) = ran.unwrap_or_else(|_| panic!("{args:?} never ended"));
            assert_eq!(code, 4, "{args:?}\n{stdout}\n{stderr}");
            assert!(stderr.contains("run the same command again"), "{stderr}");
        }
    }
    assert_eq!(heap.report().requests, 0);
}

/// A Heap URL that does not answer is found at the start of a bounded command (4, nothing
/// sent, nothing recorded), and one whose name does not resolve is wiring (2): it used to
/// read every object and retry each batch for `--retry-max-time` (15 minutes), then park it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_url_that_does_not_answer_is_found_at_start() {
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let source = fixtures();
    let source = source.to_str().unwrap();
    let closed = format!("http://127.0.0.1:{}", closed_port());
    for (url, expected, says) in [
        (closed.as_str(), 4, "Heap did not answer at start"),
        ("https://no-such-host.invalid", 2, "cannot reach it"),
    ] {
        for args in bounded(&["--source", source]) {
            let state = support::TempDir::new("heap-at-start");
            let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
            args.extend(["--state", state.0.to_str().unwrap()]);
            let mut command = binary(&heap, &args);
            command.env("HEAP_API_URL", url);
            let ran =
                tokio::time::timeout(std::time::Duration::from_secs(120), output(command)).await;
            let (code, stdout, stderr) = ran.unwrap_or_else(|_| panic!("{args:?} never ended"));
            assert_eq!(code, expected, "{args:?} {url}\n{stdout}\n{stderr}");
            assert!(
                stderr.contains(&format!("--heap-url {url}")) && stderr.contains(says),
                "{args:?}: {stderr}"
            );
            let done = LocalStore::new(state.0.clone()).list("ledger/").await;
            assert!(
                done.map(|objects| objects.is_empty()).unwrap_or(true),
                "{args:?} {url}: something was recorded"
            );
        }
    }
    assert_eq!(heap.report().requests, 0);
}
