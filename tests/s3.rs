//! S3 over real HTTP with SigV4. The conformance suite (`support::conformance`) runs against
//! the local store, moto (a real S3 server, see `support::moto`) and, for the keys it can
//! hold, the in-process s3s-fs;
//! then, on s3s-fs, discovery over the real key layout and the worker binary with its
//! source, ledger and dead letters all in S3; on moto, the source key with an empty segment
//! that a Braze prefix ending in `/` produces.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use currents_heap::currents::decode::EventReader;
use currents_heap::currents::key::DateHour;
use currents_heap::source::{Window, discover};
use currents_heap::store::{LocalStore, ObjectStore, S3Store};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::conformance::{
    awkward_conformance, conditional_conformance, conformance, many_keys_conformance,
};
use support::moto::{self, Moto};
use support::{TempDir, output};
use tokio::process::Command;

const ACCESS_KEY: &str = "AKIDTESTCURRENTSHEAP";
const SECRET_KEY: &str = "test-secret-that-must-never-be-logged";
const APP_ID: &str = "55";
/// What no error message may hold.
const SECRETS: &[&str] = &[SECRET_KEY, moto::SECRET_KEY];

struct S3Server {
    endpoint: String,
    client: aws_sdk_s3::Client,
    _root: TempDir,
}

async fn start_s3() -> S3Server {
    let root = TempDir::new("s3");
    let fs = s3s_fs::FileSystem::new(&root.0).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let service = service.clone();
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .force_path_style(true)
        .build();
    let client = aws_sdk_s3::Client::from_conf(config);
    for bucket in ["src", "sta", "conformance"] {
        client.create_bucket().bucket(bucket).send().await.unwrap();
    }
    S3Server {
        endpoint,
        client,
        _root: root,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_passes_the_whole_suite() {
    let scratch = TempDir::new("conformance");
    let root = scratch.0.join("root");
    conformance(&LocalStore::lazy(root.join("basic")), SECRETS).await;
    awkward_conformance(&LocalStore::lazy(root.join("awkward"))).await;
    many_keys_conformance(Arc::new(LocalStore::lazy(root.join("many")))).await;
    conditional_conformance(&LocalStore::lazy(root.join("basic"))).await;
    let beside_root: Vec<_> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        beside_root,
        ["root"],
        "`..` segments must not leave the root"
    );
    let mut in_root: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    in_root.sort();
    assert_eq!(in_root, ["awkward", "basic", "many"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_passes_the_suite_for_the_keys_it_can_hold() {
    let s3 = start_s3().await;
    conformance(
        &S3Store::from_client(s3.client.clone(), "conformance", "some/prefix"),
        SECRETS,
    )
    .await;
    // s3s-fs (in process) checks `If-None-Match`/`If-Match` on a PUT, but not atomically
    // with the write, so racing writers may all win: its races are not asserted. What the
    // start-up probe says of it is (one writer at a time), so a change in s3s-fs shows here.
    let store = S3Store::from_client(s3.client.clone(), "conformance", "cond");
    let probed = currents_heap::store::probe_conditions(&store, "probe").await;
    assert!(probed.is_ok(), "{probed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_passes_the_whole_suite() {
    let moto = Moto::start().await;
    for bucket in ["basic", "awkward", "awkward-prefixed", "many"] {
        moto.create_bucket(bucket).await;
    }
    conformance(&moto.store("basic", "some/prefix"), SECRETS).await;
    awkward_conformance(&moto.store("awkward", "")).await;
    awkward_conformance(&moto.store("awkward-prefixed", "some/prefix")).await;
    many_keys_conformance(Arc::new(moto.store("many", ""))).await;
    conditional_conformance(&moto.store("basic", "some/prefix")).await;
}

/// Uploads the fixture bucket to `src` under the prefix `c/`.
///
/// s3s-fs names a metadata file after the base64 of the whole key, so keys over about 150
/// characters fail there (S3 allows 1024 bytes), and ledger keys are longer than object keys.
/// The upload shortens the opaque segments (prefix, integration, zone), which discovery does
/// not interpret; the `event_type=`/`date=` layout is unchanged.
async fn upload_fixtures(client: &aws_sdk_s3::Client) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bucket");
    let store = S3Store::from_client(client.clone(), "src", "");
    let local = LocalStore::new(&root);
    let objects = local.list("").await.unwrap();
    for meta in &objects {
        let key = shorten(&meta.key);
        store
            .put(&key, local.get(&meta.key).await.unwrap())
            .await
            .unwrap();
    }
    objects.iter().filter(|m| m.key.ends_with(".avro")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_only_the_hours_asked_for_in_the_real_layout() {
    let s3 = start_s3().await;
    let uploaded = upload_fixtures(&s3.client).await;
    let source = S3Store::from_client(s3.client.clone(), "src", "c");
    let all = discover(&source, &Window::All).await.unwrap();
    assert_eq!(all.objects.len(), uploaded);
    assert!(all.outside_layout.is_empty());
    let hour = |s| DateHour::parse(s).unwrap();
    let one_hour = discover(
        &source,
        &Window::Hours {
            from: hour("2026-11-27-13"),
            to: hour("2026-11-27-14"),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        one_hour.objects.len(),
        14,
        "13 behaviour types and the synthetic future type"
    );
    assert!(
        one_hour
            .objects
            .iter()
            .all(|o| o.date == hour("2026-11-27-13"))
    );
    assert!(
        one_hour
            .objects
            .iter()
            .all(|o| o.key.starts_with("d/event_type="))
    );
    let none = discover(
        &source,
        &Window::Hours {
            from: hour("2026-11-28-00"),
            to: hour("2026-11-29-00"),
        },
    )
    .await
    .unwrap();
    assert!(none.objects.is_empty());
}

fn shorten(key: &str) -> String {
    key.replace(
        "dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817",
        "d",
    )
    .replace("/zone-a/", "/z/")
    .replacen("currents/", "c/", 1)
}

fn worker(s3: &S3Server, heap: &Standin, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(args)
        .args(["--state", "s3://sta/p", "--s3-path-style"])
        // replay needs only the state: dead letters hold the events.
        .args(if args[0] == "replay" {
            &[][..]
        } else {
            &["--source", "s3://src/c"][..]
        })
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &s3.endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env("HEAP_API_URL", heap.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_keeps_its_ledger_and_dead_letters_in_s3() {
    let s3 = start_s3().await;
    upload_fixtures(&s3.client).await;
    let state = S3Store::from_client(s3.client.clone(), "sta", "p");

    // Backfill one hour with a Heap that rejects one event.
    let one_hour_events = {
        let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
        let (code, stdout, stderr) = output(worker(
            &s3,
            &heap,
            &[
                "backfill",
                "--from",
                "2026-11-27T13",
                "--to",
                "2026-11-27T14",
                "--dry-run",
            ],
        ))
        .await;
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("events: "))
            .unwrap()
            .to_string()
    };
    let in_hour: usize = currents_heap_testkit::fixtures::fixture_specs()
        .iter()
        .filter(|spec| spec.date == "2026-11-27-13")
        .map(|spec| spec.options.events)
        .sum();
    assert!(
        one_hour_events.starts_with(&format!("{in_hour} read")),
        "{one_hour_events}"
    );
    let broken_heap = Standin::start(StandinConfig {
        poison_keys: HashSet::from(["placeholder".to_string()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let (code, stdout, stderr) = output(worker(
        &s3,
        &broken_heap,
        &[
            "backfill",
            "--from",
            "2026-11-27T13",
            "--to",
            "2026-11-27T14",
        ],
    ))
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("objects: 14 done"), "{stdout}");
    assert!(
        !stderr.contains(SECRET_KEY),
        "the secret key leaked into the logs"
    );
    let ledger = state.list("ledger/").await.unwrap();
    assert_eq!(
        ledger.iter().filter(|m| m.key.ends_with(".done")).count(),
        14
    );
    assert!(ledger.iter().all(|m| m.key.contains("date=2026-11-27-13")));

    // The rest, with one event poisoned: it is parked as a dead letter in S3.
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let late = {
        let local = LocalStore::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bucket"));
        let meta = local
            .list("currents/")
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.key.contains("date=2026-11-27-15") && m.key.ends_with(".json"))
            .unwrap();
        let text = String::from_utf8(local.get(&meta.key).await.unwrap()).unwrap();
        let first: serde_json::Value = serde_json::from_str(
            text.lines()
                .find(|l| l.contains("external_user_id"))
                .unwrap(),
        )
        .unwrap();
        first["id"].as_str().unwrap().to_string()
    };
    let poisoned_heap = Standin::start(StandinConfig {
        poison_keys: HashSet::from([late.clone()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let (code, stdout, _) = output(worker(
        &s3,
        &poisoned_heap,
        &["run", "--once", "--lookback", "all"],
    ))
    .await;
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("objects: 5 done") && stdout.contains("1 parked"),
        "{stdout}"
    );
    let letters = state.list("dead-letters/").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0]
            .key
            .starts_with("dead-letters/event_type=users.behaviors.CustomEvent/date=2026-11-27-15/"),
        "{}",
        letters[0].key
    );

    let (code, status, _) = output(worker(&s3, &heap, &["status", "--lookback", "all"])).await;
    assert_eq!(code, 0);
    assert!(
        status.contains("objects done: 19") && status.contains("dead letters: 1"),
        "{status}"
    );

    let (code, stdout, stderr) = output(worker(&s3, &heap, &["replay"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(heap.stored().into_keys().collect::<Vec<_>>(), [late]);
    assert!(state.list("dead-letters/").await.unwrap().is_empty());
}

/// The ids of the events in a Currents object that Heap should receive: those with an
/// `external_user_id` (the default identity).
fn sendable_ids(bytes: &[u8], key: &str) -> HashSet<String> {
    let mut reader = EventReader::open(std::io::Cursor::new(bytes), key).unwrap();
    let mut ids = HashSet::new();
    while let Some((event, _)) = reader.next_event().unwrap() {
        if event.user.external_user_id.is_some_and(|id| !id.is_empty()) {
            ids.insert(event.id);
        }
    }
    ids
}

/// `run --once` over an S3 source on moto, with a local state.
fn moto_run(moto: &Moto, heap: &Standin, source: &str, state: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(["run", "--once", "--lookback", "all", "--s3-path-style"])
        .args(["--source", source])
        .arg("--state")
        .arg(state);
    moto.aws_env(&mut command)
        .env("HEAP_API_URL", heap.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The shared case `double-slash-key`: a Braze prefix set with a trailing `/` writes keys
/// with an empty segment (`exports//currents/...`), which the local state's ledger must
/// store as `ledger//currents/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_key_with_an_empty_segment_is_delivered_and_recorded() {
    const INTEGRATION: &str = "dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817";
    let layout = format!(
        "currents/{INTEGRATION}/event_type=users.behaviors.CustomEvent/date=2026-11-27-12/101/us-east-1/{INTEGRATION}"
    );
    let objects = [
        ("a.avro", format!("exports/{layout}+0+0000000000.avro")),
        ("b.avro", format!("exports//{layout}+0+0000000100.avro")),
    ];
    let moto = Moto::start().await;
    moto.create_bucket("currents-source").await;
    let bucket = moto.store("currents-source", "");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cases/double-slash-key");
    let mut expected = HashSet::new();
    for (file, key) in &objects {
        let bytes = std::fs::read(data.join(file)).unwrap();
        let ids = sendable_ids(&bytes, key);
        assert!(!ids.is_empty(), "{file} has no event with an identity");
        expected.extend(ids);
        bucket.put(key, bytes).await.unwrap();
    }
    let state = TempDir::new("double-slash-state");
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();

    let (code, stdout, stderr) = output(moto_run(
        &moto,
        &heap,
        "s3://currents-source/exports",
        &state.0,
    ))
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let stored: HashSet<String> = heap.stored().into_keys().collect();
    assert_eq!(stored, expected, "{stdout}\n{stderr}");
    assert!(!stderr.contains(moto::SECRET_KEY));
    let ledger = LocalStore::new(&state.0).list("ledger/").await.unwrap();
    let done: Vec<&str> = ledger
        .iter()
        .map(|m| m.key.as_str())
        .filter(|k| k.ends_with(".done"))
        .collect();
    assert_eq!(done.len(), 2, "{done:?}");
    assert!(
        done.iter().any(|k| k.starts_with("ledger//currents/")),
        "{done:?}"
    );

    let requests = heap.report().requests;
    let (code, stdout, stderr) = output(moto_run(
        &moto,
        &heap,
        "s3://currents-source/exports",
        &state.0,
    ))
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(
        heap.report().requests,
        requests,
        "a second run sends nothing: {stdout}"
    );
}

/// An object uploaded in parts with checksums (as boto3 and the aws CLI do for files over
/// 8 MiB) answers GetObject with a part-level (composite) checksum the SDK cannot validate:
/// reading it must not log the SDK's "part-level checksum ... disable checksum validation"
/// warning for every such object. The binary's own stderr is captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_object_is_read_without_a_checksum_warning() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
    let moto = Moto::start().await;
    moto.create_bucket("multipart").await;
    let hour = DateHour::now();
    let key = format!("c/event_type=users.behaviors.CustomEvent/date={hour}/612/big.avro");
    let upload = moto
        .client
        .create_multipart_upload()
        .bucket("multipart")
        .key(&key)
        .checksum_algorithm(ChecksumAlgorithm::Crc32)
        .send()
        .await
        .unwrap();
    let id = upload.upload_id().unwrap();
    let mut parts = Vec::new();
    for (n, body) in [vec![b'x'; 5 * 1024 * 1024], vec![b'y'; 1024]]
        .into_iter()
        .enumerate()
    {
        let number = n as i32 + 1;
        let part = moto
            .client
            .upload_part()
            .bucket("multipart")
            .key(&key)
            .upload_id(id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .e_tag(part.e_tag().unwrap())
                .set_checksum_crc32(part.checksum_crc32().map(str::to_string))
                .build(),
        );
    }
    moto.client
        .complete_multipart_upload()
        .bucket("multipart")
        .key(&key)
        .upload_id(id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let state = TempDir::new("multipart-state");
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(["run", "--once", "--dry-run", "--s3-path-style"])
        .args(["--source", "s3://multipart/c"])
        .arg("--state")
        .arg(&state.0)
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("NO_COLOR", "1");
    let (_code, stdout, stderr) = output(command).await;
    // The object was read (it is not Avro, so it is reported failed).
    assert!(
        stdout.contains("1 failed") || stderr.contains("big.avro"),
        "the object was read: {stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("part-level checksum"),
        "the SDK's checksum warning: {stderr}"
    );
}
