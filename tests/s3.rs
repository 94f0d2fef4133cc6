//! S3 over real HTTP with SigV4. One conformance suite runs against the local store, moto (a
//! real S3 server, see `support::moto`) and, for the keys it can hold, the in-process s3s-fs;
//! then, on s3s-fs, discovery over the real key layout and the worker binary with its
//! source, ledger and dead letters all in S3; on moto, the source key with an empty segment
//! that a Braze prefix ending in `/` produces.

mod support;

use std::collections::{BTreeSet, HashSet};
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
use support::TempDir;
use support::moto::{self, Moto};
use tokio::process::Command;

const ACCESS_KEY: &str = "AKIDTESTCURRENTSHEAP";
const SECRET_KEY: &str = "test-secret-that-must-never-be-logged";
const APP_ID: &str = "55";

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

/// The same behaviour from every store, for keys every store can hold (s3s-fs included).
async fn conformance(store: &dyn ObjectStore) {
    store.put("a/b/one.txt", b"1".to_vec()).await.unwrap();
    store.put("a/b/two.txt", b"22".to_vec()).await.unwrap();
    store.put("a/c/three.txt", b"333".to_vec()).await.unwrap();
    store.put("z.txt", b"".to_vec()).await.unwrap();
    assert_eq!(store.get("a/b/two.txt").await.unwrap(), b"22");
    let listed = store.list("a/").await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["a/b/one.txt", "a/b/two.txt", "a/c/three.txt"]);
    assert_eq!(listed[2].size, 3);
    assert!(listed.iter().all(|m| !m.etag.is_empty()));
    assert_eq!(
        store.list("a/b/t").await.unwrap().len(),
        1,
        "a prefix need not end at a folder"
    );
    assert_eq!(store.list_folders("").await.unwrap(), ["a/"]);
    assert_eq!(store.list_folders("a/").await.unwrap(), ["a/b/", "a/c/"]);
    range_conformance(store).await;
    assert_eq!(read_all(store, "a/c/three.txt").await, b"333");
    store
        .put("a/b/one.txt", b"replaced".to_vec())
        .await
        .unwrap();
    assert_eq!(store.get("a/b/one.txt").await.unwrap(), b"replaced");
    store.delete("a/b/one.txt").await.unwrap();
    store.delete("a/b/one.txt").await.unwrap();
    store.delete("never/was.txt").await.unwrap();
    let missing = store.get("a/b/one.txt").await.unwrap_err();
    assert!(missing.not_found, "{missing}");
    assert!(missing.to_string().contains("a/b/one.txt"), "{missing}");
    assert!(!missing.to_string().contains(SECRET_KEY));
    assert!(!missing.to_string().contains(moto::SECRET_KEY));
    let missing = store.open("a/b/one.txt").await.err().unwrap();
    assert!(missing.not_found, "{missing}");
    assert!(missing.to_string().contains("a/b/one.txt"), "{missing}");
}

async fn ranged_keys(
    store: &dyn ObjectStore,
    prefix: &str,
    start_after: &str,
    end: Option<&str>,
) -> Vec<String> {
    let listed = store.list_range(prefix, start_after, end).await.unwrap();
    listed.into_iter().map(|m| m.key).collect()
}

/// `list_range`'s bounds, on `a/b/one.txt`, `a/b/two.txt`, `a/c/three.txt`, `z.txt`.
async fn range_conformance(store: &dyn ObjectStore) {
    assert_eq!(
        ranged_keys(store, "a/", "a/b/one.txt", None).await,
        ["a/b/two.txt", "a/c/three.txt"],
        "the start is excluded when a key equals it"
    );
    assert_eq!(
        ranged_keys(store, "a/", "a/b/one.txt", Some("a/c/three.txt")).await,
        ["a/b/two.txt"],
        "the end is excluded when a key equals it"
    );
    assert_eq!(
        ranged_keys(store, "a/", "a/b", Some("a/c")).await,
        ["a/b/one.txt", "a/b/two.txt"],
        "bounds without a trailing `/` fall between folders"
    );
    assert_eq!(
        ranged_keys(store, "a/", "", None).await,
        ["a/b/one.txt", "a/b/two.txt", "a/c/three.txt"],
        "a start before the prefix: the whole prefix"
    );
    assert_eq!(
        ranged_keys(store, "a/b/", "a/", Some("z")).await,
        ["a/b/one.txt", "a/b/two.txt"],
        "bounds outside the prefix: only the prefix"
    );
    assert_eq!(
        ranged_keys(store, "", "a/c/three.txt", None).await,
        ["z.txt"]
    );
    assert!(
        ranged_keys(store, "a/", "a/c/three.txt", None)
            .await
            .is_empty()
    );
    assert!(
        ranged_keys(store, "a/", "a/b/two.txt", Some("a/b/two.txt"))
            .await
            .is_empty()
    );
    assert!(
        ranged_keys(store, "a/", "a/c", Some("a/b"))
            .await
            .is_empty(),
        "an end before the start"
    );
}

async fn read_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let mut reader = store.open(key).await.unwrap();
    tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap()
}

/// Keys S3 takes and a path would not: empty, `.` and `..` segments, a segment longer than
/// a file name, a key near S3's 1,024-byte limit, and names with `%`, `+`, `=`, spaces and
/// non-ASCII. No key is a folder of another: a directory cannot also be a file.
fn awkward_keys() -> Vec<String> {
    let mut keys: Vec<String> = [
        "a//b",
        "/lead",
        "/",
        "trail/",
        "a/./b",
        "a/../b",
        "../up",
        "./here",
        "dots/.",
        "dots/..",
        "dots/...",
        "dots/.hidden",
        "unicode/Grüße/日本語/🎉 party.avro",
        "spaces/with space/ leading and trailing ",
        "plus/a+b+0+0000000000.avro",
        "eq/event_type=users.behaviors.CustomEvent/date=2026-11-27-12/x=y",
        "pct/100%",
        "pct/a.b",
        "pct/a%2Eb",
        "pct/a%2eb",
        "pct/%",
        "pct/%25",
        "pct/%00",
        "pct/%+",
        "pct/x%+/y",
        "pct/%tmp.1-1",
    ]
    .map(String::from)
    .to_vec();
    keys.push(format!("long/{}/tail.avro", "segment-".repeat(40)));
    let deep = format!(
        "deep/{}/{}/{}",
        "x".repeat(300),
        "é".repeat(150),
        "y".repeat(200)
    );
    keys.push(format!("{deep}/{}", "z".repeat(1000 - deep.len() - 1)));
    keys
}

/// The folders S3 reports for `prefix` with the delimiter `/`.
fn folders_of(keys: &[String], prefix: &str) -> Vec<String> {
    let folders: BTreeSet<String> = keys
        .iter()
        .filter_map(|key| key.strip_prefix(prefix))
        .filter_map(|rest| {
            rest.find('/')
                .map(|end| format!("{prefix}{}", &rest[..=end]))
        })
        .collect();
    folders.into_iter().collect()
}

async fn listed_keys(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let listed = store.list(prefix).await.unwrap();
    listed.into_iter().map(|m| m.key).collect()
}

/// Every operation round-trips the exact keys, and listings agree with S3's rules at every
/// folder of every key.
async fn awkward_conformance(store: &dyn ObjectStore) {
    let mut keys = awkward_keys();
    assert_eq!(keys.last().unwrap().len(), 1000);
    for key in &keys {
        store
            .put(key, key.as_bytes().to_vec())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    keys.sort();
    let listed = store.list("").await.unwrap();
    assert_eq!(
        listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
        keys,
        "every key, exactly, in key order"
    );
    assert!(listed.iter().all(|m| m.size == m.key.len() as u64));
    for key in &keys {
        assert_eq!(
            store.get(key).await.unwrap_or_else(|e| panic!("{e}")),
            key.as_bytes()
        );
    }
    let longest = keys.iter().max_by_key(|k| k.len()).unwrap();
    assert_eq!(read_all(store, longest).await, longest.as_bytes());

    let mut prefixes: BTreeSet<String> = BTreeSet::from([String::new()]);
    for key in &keys {
        prefixes.extend(key.match_indices('/').map(|(i, _)| key[..=i].to_string()));
    }
    for prefix in &prefixes {
        assert_eq!(
            store.list_folders(prefix).await.unwrap(),
            folders_of(&keys, prefix),
            "folders of {prefix:?}"
        );
    }
    for prefix in prefixes
        .iter()
        .map(String::as_str)
        .chain(["/l", "a/.", "pct/%", "pct/a%2"])
    {
        let expected: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(
            listed_keys(store, prefix).await,
            expected,
            "keys under {prefix:?}"
        );
    }

    // Ranges agree with the order of UTF-8 bytes (`é` and `日` after ASCII, `%` before `+`).
    for i in (0..keys.len()).step_by(4) {
        let end = keys.get(i + 6).map(String::as_str);
        let expected = &keys[i + 1..(i + 6).min(keys.len())];
        assert_eq!(
            ranged_keys(store, "", &keys[i], end).await,
            expected,
            "after {:?} up to {end:?}",
            keys[i]
        );
    }

    for key in &keys {
        store.delete(key).await.unwrap();
        let missing = store.get(key).await.unwrap_err();
        assert!(missing.not_found, "{missing}");
        assert!(missing.to_string().contains(key.as_str()), "{missing}");
    }
    assert!(store.list("").await.unwrap().is_empty());
    assert!(
        store.list_folders("").await.unwrap().is_empty(),
        "a folder lives only as long as a key below it"
    );
}

/// 1,100 keys in 1,100 folders: S3 answers at most 1,000 per page, for either listing.
async fn many_keys_conformance(store: Arc<dyn ObjectStore>) {
    const N: usize = 1100;
    // Written out of order, so a listing cannot pass by echoing the order of writes.
    let folders: Vec<String> = (0..N)
        .map(|i| format!("many/{:04}/", i * 7919 % N))
        .collect();
    let mut writers = tokio::task::JoinSet::new();
    for chunk in folders.chunks(N / 10) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        writers.spawn(async move {
            for folder in chunk {
                store
                    .put(&format!("{folder}k"), b"k".to_vec())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let mut folders = folders;
    folders.sort();
    let keys: Vec<String> = folders.iter().map(|f| format!("{f}k")).collect();
    assert_eq!(listed_keys(&*store, "many/").await, keys);
    assert_eq!(store.list_folders("many/").await.unwrap(), folders);
    assert_eq!(listed_keys(&*store, "many/10").await, keys[1000..]);
    // Ranges over more keys than a page, and ranges that end within the first page.
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[10], Some(&keys[1090])).await,
        keys[11..1090]
    );
    assert_eq!(
        ranged_keys(&*store, "many/", "many/", None).await,
        keys,
        "every key, over two pages"
    );
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[99], Some(&keys[150])).await,
        keys[100..150]
    );
    assert_eq!(
        ranged_keys(&*store, "many/", &keys[1098], None).await,
        keys[1099..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_store_passes_the_whole_suite() {
    let scratch = TempDir::new("conformance");
    let root = scratch.0.join("root");
    conformance(&LocalStore::lazy(root.join("basic"))).await;
    awkward_conformance(&LocalStore::lazy(root.join("awkward"))).await;
    many_keys_conformance(Arc::new(LocalStore::lazy(root.join("many")))).await;
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
    conformance(&S3Store::from_client(
        s3.client.clone(),
        "conformance",
        "some/prefix",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_passes_the_whole_suite() {
    let moto = Moto::start().await;
    for bucket in ["basic", "awkward", "awkward-prefixed", "many"] {
        moto.create_bucket(bucket).await;
    }
    conformance(&moto.store("basic", "some/prefix")).await;
    awkward_conformance(&moto.store("awkward", "")).await;
    awkward_conformance(&moto.store("awkward-prefixed", "some/prefix")).await;
    many_keys_conformance(Arc::new(moto.store("many", ""))).await;
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

async fn output(mut command: Command) -> (i32, String, String) {
    let output = command.output().await.unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
        .arg(state)
        .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
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
