//! What a poll costs in S3 requests, measured on moto (a real S3 server, see
//! `support::moto`) with the request counters `/metrics` serves: a Currents bucket of 40
//! `event_type=` folders, a few objects in a 72 h window and many outside it, older and
//! newer. A bounded run (`run --once`) costs the folder listings, one ranged listing per
//! folder and one ranged ledger listing per folder with objects in the window; a long-lived
//! run's idle poll reads nothing from the state.
//!
//! Run with `--nocapture` to see the counts (they are in docs/design/costs.md).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use currents_heap::currents::key::{DateHour, KeyLayout};
use currents_heap::ledger::{Entry, Ledger, Outcome as Recorded};
use currents_heap::store::{
    ObjectMeta, ObjectStore, Opened, PutCondition, ReadRange, S3Store, StoreFuture, Versioned,
};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan, Report, Settings};
use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::moto::Moto;
use tokio::sync::watch;

const APP_ID: &str = "63";
/// `event_type=` folders in the source.
const FOLDERS: usize = 40;
/// Folders with objects in the window; the first holds two, the others one.
const IN_WINDOW_FOLDERS: usize = 4;
const IN_WINDOW_OBJECTS: u64 = 5;
/// More than one page of a listing: were they listed, a folder would cost two requests.
const PADDING: usize = 1001;
/// Delimiter listings that find the folders: the source root, then `dataexport.../`.
const FOLDER_LISTINGS: u64 = 2;

/// Requests by operation, of one service.
type Requests = BTreeMap<String, u64>;

fn s3_requests(metrics: &Metrics) -> Requests {
    metrics
        .counts()
        .aws_requests
        .into_iter()
        .filter(|((service, _), _)| service == "s3")
        .map(|((_, operation), n)| (operation, n))
        .collect()
}

/// What was counted between two readings.
fn since(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .map(|(op, n)| (op.clone(), n - before.get(op).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn requests(pairs: &[(&str, u64)]) -> Requests {
    pairs.iter().map(|(op, n)| (op.to_string(), *n)).collect()
}

fn total(requests: &Requests) -> u64 {
    requests.values().sum()
}

fn settings() -> Settings {
    support::engine_settings(Admission::fixed(4))
}

fn heap(standin: &Standin) -> Output {
    support::heap_output(standin, APP_ID, Duration::from_secs(30))
}

const LAYOUT: KeyLayout<'static> = KeyLayout {
    prefix: "",
    cluster: "prod-03",
    connector: "S3",
    integration_id: "5f0c2a9e8b7d6c5b4a392817",
    schema_id: 612,
    zone: "zone-a",
};

/// The source bucket: what it holds in the window, by key.
struct Source {
    in_window: BTreeSet<String>,
}

/// Uploads the source under `currents/` in bucket `currents`: 40 folders, each with an
/// object 100 hours old; four with objects inside the 72 h window (real Currents files) and
/// one 10 hours ahead; 1,001 more old keys in one of them and 1,001 future keys in another.
async fn seed(moto: &Moto, now: i64) -> Source {
    moto.create_bucket("currents").await;
    moto.create_bucket("state").await;
    let specs = fixture_specs();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE_ROOT);
    let real: Vec<(String, Vec<u8>)> = specs
        .iter()
        .take(IN_WINDOW_FOLDERS)
        .map(|spec| {
            (
                spec.event_type.clone(),
                std::fs::read(root.join(spec.key())).unwrap(),
            )
        })
        .collect();
    let mut event_types: Vec<String> = real.iter().map(|(t, _)| t.clone()).collect();
    event_types.extend((event_types.len()..FOLDERS).map(|i| format!("users.synthetic.Type{i:02}")));
    assert_eq!(event_types.iter().collect::<BTreeSet<_>>().len(), FOLDERS);

    let hour = |offset: i64| DateHour::from_hours_since_epoch(now + offset);
    let junk = b"not read: outside the window".to_vec();
    let mut uploads: Vec<(String, Vec<u8>)> = Vec::new();
    let mut in_window = BTreeSet::new();
    for (i, event_type) in event_types.iter().enumerate() {
        uploads.push((
            LAYOUT.object_key(event_type, hour(-100), 0, 1),
            junk.clone(),
        ));
        if let Some((_, bytes)) = real.get(i) {
            let mut inside = vec![LAYOUT.object_key(event_type, hour(-5), 0, 2)];
            if i == 0 {
                inside.push(LAYOUT.object_key(event_type, hour(-30), 0, 3));
            }
            for key in inside {
                in_window.insert(key.clone());
                uploads.push((key, bytes.clone()));
            }
            uploads.push((LAYOUT.object_key(event_type, hour(10), 0, 4), junk.clone()));
        }
    }
    for n in 0..PADDING as u64 {
        uploads.push((
            LAYOUT.object_key(&event_types[0], hour(-90), 1, n),
            junk.clone(),
        ));
        uploads.push((
            LAYOUT.object_key(&event_types[1], hour(20), 1, n),
            junk.clone(),
        ));
    }
    assert_eq!(in_window.len() as u64, IN_WINDOW_OBJECTS);

    let store = Arc::new(moto.store("currents", "currents"));
    let mut writers = tokio::task::JoinSet::new();
    for chunk in uploads.chunks(uploads.len().div_ceil(16)) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        writers.spawn(async move {
            for (key, bytes) in chunk {
                store.put(&key, bytes).await.unwrap();
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    Source { in_window }
}

/// The object keys the ledger under `prefix` records done, and how many markers it holds.
async fn ledger(moto: &Moto, prefix: &str) -> (BTreeSet<String>, usize) {
    let markers = moto.store("state", prefix).list("ledger/").await.unwrap();
    let done = markers
        .iter()
        .filter(|m| m.key.ends_with(".done"))
        .map(|m| {
            let key = m.key.strip_prefix("ledger/").unwrap();
            key.rsplit_once('/').unwrap().0.to_string()
        })
        .collect();
    (done, markers.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_bounded_run_lists_each_folder_once_and_the_ledger_once_per_folder_with_objects() {
    let moto = Moto::start().await;
    let now = DateHour::now().hours_since_epoch();
    let seeded = seed(&moto, now).await;
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (source_metrics, state_metrics) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let source: Arc<dyn ObjectStore> =
        Arc::new(moto.counted_store("currents", "currents", source_metrics.clone()));
    let state: Arc<dyn ObjectStore> =
        Arc::new(moto.counted_store("state", "once", state_metrics.clone()));
    let once = Plan::Once {
        lookback: Lookback::Hours(72),
    };
    let run = || {
        Engine::start(
            settings(),
            once,
            source.clone(),
            state.clone(),
            heap(&standin),
            Arc::new(Metrics::new()),
        )
        .drive(std::future::pending())
    };

    let report = run().await;
    let first = (s3_requests(&source_metrics), s3_requests(&state_metrics));
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(
        report.counts.objects_done,
        IN_WINDOW_OBJECTS,
        "{}",
        report.render()
    );
    assert_eq!(
        report.counts.objects_failed, 0,
        "nothing outside the window was read"
    );
    let listings = FOLDER_LISTINGS + FOLDERS as u64;
    assert_eq!(
        first.0,
        requests(&[
            ("GetObject", IN_WINDOW_OBJECTS),
            ("ListObjectsV2", listings)
        ]),
        "one page per folder: the keys before and after the window were not listed"
    );
    assert_eq!(
        first.1,
        requests(&[
            ("ListObjectsV2", IN_WINDOW_FOLDERS as u64),
            ("PutObject", IN_WINDOW_OBJECTS)
        ])
    );
    assert_eq!(ledger(&moto, "once").await, (seeded.in_window.clone(), 5));

    let report: Report = run().await;
    let second = (
        since(&first.0, &s3_requests(&source_metrics)),
        since(&first.1, &s3_requests(&state_metrics)),
    );
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(report.counts.objects_ended(), 0, "everything was done");
    // The formula: 2 folder listings + 1 per folder + 1 ledger listing per folder with
    // objects in the window.
    assert_eq!(second.0, requests(&[("ListObjectsV2", listings)]));
    assert_eq!(
        second.1,
        requests(&[("ListObjectsV2", IN_WINDOW_FOLDERS as u64)])
    );
    println!(
        "run --once, {FOLDERS} folders, 72 h lookback: first run source {:?} state {:?}; \
         idle run {} requests (source {:?}, state {:?})",
        first.0,
        first.1,
        total(&second.0) + total(&second.1),
        second.0,
        second.1
    );
    assert!(total(&second.0) + total(&second.1) <= 2 + 40 + 40);

    // `status` reads the ledger over its lookback only: a marker of an hour before it is
    // not counted (nor read), unless with `--lookback all`.
    let old = moto
        .store("currents", "currents")
        .list("")
        .await
        .unwrap()
        .into_iter()
        .find(|m| !seeded.in_window.contains(&m.key))
        .unwrap();
    Ledger::new(Arc::new(moto.store("state", "once")))
        .record(&Entry::new(&old, Recorded::Done))
        .await
        .unwrap();
    let bounded = status(&moto, "72h").await;
    assert!(
        bounded.contains("objects pending: 0\n") && bounded.contains("objects done: 5\n"),
        "{bounded}"
    );
    let all = status(&moto, "all").await;
    assert!(all.contains("objects done: 6\n"), "{all}");
}

/// `status --lookback <lookback>` on the source and the state `once`, as a process.
async fn status(moto: &Moto, lookback: &str) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args(["status", "--lookback", lookback, "--s3-path-style"])
        .args([
            "--source",
            "s3://currents/currents",
            "--state",
            "s3://state/once",
        ])
        .env("AWS_ACCESS_KEY_ID", support::moto::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", support::moto::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The counters at the start of one poll.
#[derive(Debug, Clone)]
struct Mark {
    source: Requests,
    state: Requests,
    done: u64,
}

/// The source, marking the start of each poll: discovery begins with the delimiter listing
/// of the source's root.
struct MarkPolls {
    inner: S3Store,
    source: Arc<Metrics>,
    state: Arc<Metrics>,
    engine: Arc<Metrics>,
    marks: watch::Sender<Vec<Mark>>,
}

impl ObjectStore for MarkPolls {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_range<'a>(
        &'a self,
        prefix: &'a str,
        start_after: &'a str,
        end: Option<&'a str>,
    ) -> StoreFuture<'a, Vec<ObjectMeta>> {
        self.inner.list_range(prefix, start_after, end)
    }
    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        if prefix.is_empty() {
            let mark = Mark {
                source: s3_requests(&self.source),
                state: s3_requests(&self.state),
                done: self.engine.counts().objects_done,
            };
            self.marks.send_modify(|marks| marks.push(mark));
        }
        self.inner.list_folders(prefix)
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        self.inner.get(key)
    }
    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        self.inner.open_range(key, range)
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        self.inner.put(key, bytes)
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.inner.delete(key)
    }
    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        self.inner.get_versioned(key)
    }
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        self.inner.put_if(key, bytes, condition)
    }
}

/// The first poll that began with every object done and was followed by two more: from
/// its start to the next one's, the engine did nothing but that poll.
fn first_idle(marks: &[Mark]) -> Option<usize> {
    (0..marks.len().saturating_sub(2)).find(|&k| marks[k].done == IN_WINDOW_OBJECTS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_poll_of_a_long_lived_run_reads_nothing_from_the_state() {
    let moto = Moto::start().await;
    let now = DateHour::now().hours_since_epoch();
    let seeded = seed(&moto, now).await;
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (source_metrics, state_metrics, engine_metrics) = (
        Arc::new(Metrics::new()),
        Arc::new(Metrics::new()),
        Arc::new(Metrics::new()),
    );
    let (marks, mut watching) = watch::channel(Vec::new());
    let recorded = watching.clone();
    let source = Arc::new(MarkPolls {
        inner: moto.counted_store("currents", "currents", source_metrics.clone()),
        source: source_metrics.clone(),
        state: state_metrics.clone(),
        engine: engine_metrics.clone(),
        marks,
    });
    let state = Arc::new(moto.counted_store("state", "live", state_metrics.clone()));
    let engine = Engine::start(
        settings(),
        Plan::Live {
            lookback: Lookback::Hours(72),
            poll_interval: Duration::from_millis(100),
        },
        source,
        state,
        heap(&standin),
        engine_metrics.clone(),
    )
    // The poll's requests alone: the heartbeat's (a PUT and two listings every 30 s) are
    // counted in the cost table of docs/design/costs.md.
    .without_handover();
    let stop = async move {
        watching
            .wait_for(|marks| first_idle(marks).is_some())
            .await
            .unwrap();
    };
    let report = tokio::time::timeout(Duration::from_secs(300), engine.drive(stop))
        .await
        .expect("two idle polls within 5 minutes");
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(
        report.counts.objects_done,
        IN_WINDOW_OBJECTS,
        "each object in the window once, however many polls: {}",
        report.render()
    );
    assert_eq!(report.counts.objects_ended(), IN_WINDOW_OBJECTS);
    assert_eq!(ledger(&moto, "live").await, (seeded.in_window.clone(), 5));

    let marks = recorded.borrow().clone();
    let idle = first_idle(&marks).unwrap();
    let first = (
        since(&marks[0].source, &marks[1].source),
        since(&marks[0].state, &marks[1].state),
    );
    // The first poll reads what the bounded run reads; its objects are processed after it.
    assert_eq!(
        first.0.get("ListObjectsV2"),
        Some(&(FOLDER_LISTINGS + FOLDERS as u64))
    );
    assert_eq!(
        first.1.get("ListObjectsV2"),
        Some(&(IN_WINDOW_FOLDERS as u64))
    );
    for k in [idle, idle + 1] {
        let source = since(&marks[k].source, &marks[k + 1].source);
        let state = since(&marks[k].state, &marks[k + 1].state);
        assert_eq!(
            source,
            requests(&[("ListObjectsV2", FOLDER_LISTINGS + FOLDERS as u64)]),
            "poll {k}"
        );
        assert_eq!(state, Requests::new(), "poll {k} read the state");
        assert!(total(&source) + total(&state) <= 50);
    }
    println!(
        "run, {FOLDERS} folders, 72 h lookback: first poll {} listings of the source, {} of \
         the state; idle poll {:?} of the source, nothing of the state ({} polls in all)",
        first.0["ListObjectsV2"],
        first.1["ListObjectsV2"],
        since(&marks[idle].source, &marks[idle + 1].source),
        marks.len()
    );
}
