//! Every path that starts an object resumes it at its checkpoint (issue 19): `run --once`,
//! `backfill` run here, `run` polling, and a range handed over to a live worker. And a
//! checkpoint of another version is never applied. In process, on a paused clock; local
//! stores; Heap is the stand-in over HTTP.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::container::{BlockStart, ContainerReader};
use currents_heap::currents::decode::EventReader;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::Control;
use currents_heap::ledger::{Ledger, Progress};
use currents_heap::store::{LocalStore, ObjectMeta, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::HeapOutput;
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{APP_ID, TempDir, until};

const EVENTS: usize = 1_000;
const AT: u64 = 600;

fn old_hour() -> DateHour {
    DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 24 * 30)
}

fn next(hour: DateHour) -> DateHour {
    DateHour::from_hours_since_epoch(hour.hours_since_epoch() + 1)
}

fn heap(standin: &Standin) -> Output {
    let Output::Heap(mut heap) = support::heap(standin) else {
        unreachable!()
    };
    let HeapOutput { config, .. } = &mut *heap;
    // Room for every event: a decoder blocked on a full delivery channel is a blocking task,
    // which stops the paused clock from advancing.
    config.max_pending = 50_000;
    Output::Heap(heap)
}

/// One object of [`EVENTS`] events in many blocks; returns it and its event ids in order.
async fn one_object(source: &Path, hour: DateHour, seed: u64) -> (ObjectMeta, Vec<String>) {
    let options = SynthOptions {
        events: EVENTS,
        identities: 2_000,
        null_percent: 0,
        block_size: 4_000,
        seed,
        ..SynthOptions::default()
    };
    write_custom_events(source, hour, 1, &options).unwrap();
    let meta = LocalStore::new(source).list("").await.unwrap().remove(0);
    let path = source.join(&meta.key);
    let mut events = EventReader::open(std::fs::File::open(&path).unwrap(), &meta.key).unwrap();
    let mut ids = Vec::new();
    while let Some((event, _)) = events.next_event().unwrap() {
        ids.push(event.id.to_string());
    }
    (meta, ids)
}

/// Writes the checkpoint a worker stopped at record [`AT`] would have written, naming
/// `version`'s size and ETag.
async fn checkpoint(source: &Path, state: &Path, meta: &ObjectMeta, version: &ObjectMeta) {
    let file = std::fs::File::open(source.join(&meta.key)).unwrap();
    let mut reader = ContainerReader::open(std::io::BufReader::new(file)).unwrap();
    let mut holding = BlockStart::default();
    while reader.next_index() <= AT {
        reader.next_record().unwrap().unwrap();
        holding = reader.block_start();
    }
    assert!(
        holding.offset > reader.header_len(),
        "the record is past the first block"
    );
    Ledger::new(Arc::new(LocalStore::new(state)))
        .record_progress(&Progress {
            key: meta.key.clone(),
            size: version.size,
            etag: version.etag.clone(),
            records: AT,
            header_len: reader.header_len(),
            block_offset: holding.offset,
            block_first_record: holding.first_record,
            updated_at: "2026-12-04T00:00:00Z".into(),
        })
        .await
        .unwrap();
}

/// Files under `dir` whose name ends in `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path.to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[derive(Debug, Clone, Copy)]
enum Path_ {
    Once,
    Range,
    Polling,
    HandedOver,
}

/// Runs `path` over the source until the object is recorded; returns the metrics.
async fn run(
    path: Path_,
    source: &Path,
    state: &Path,
    standin: &Standin,
    hour: DateHour,
) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::new());
    let plan = match path {
        Path_::Once => Plan::Once {
            lookback: Lookback::All,
        },
        Path_::Range => Plan::Range {
            from: hour,
            to: next(hour),
        },
        Path_::Polling => Plan::Live {
            lookback: Lookback::All,
            poll_interval: Duration::from_secs(10),
        },
        // The live worker's window leaves the old hour out: only the handed range has it.
        Path_::HandedOver => Plan::Live {
            lookback: Lookback::Hours(2),
            poll_interval: Duration::from_secs(10),
        },
    };
    let engine = Engine::start(
        support::settings(),
        plan,
        Arc::new(LocalStore::new(source)),
        Arc::new(LocalStore::new(state)),
        heap(standin),
        metrics.clone(),
    )
    .with_heartbeat_interval(Duration::from_secs(1));
    let done = || files_ending(state, ".done").len() == 1;
    let report = match path {
        Path_::Once | Path_::Range => engine.drive(std::future::pending()).await,
        Path_::Polling | Path_::HandedOver => {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let worker = tokio::spawn(engine.drive(async move {
                let _ = stopped.await;
            }));
            if let Path_::HandedOver = path {
                let control = Control::new(Arc::new(LocalStore::new(state)));
                let live = loop {
                    let live = control.live_workers(unix_secs_now()).await.unwrap();
                    if !live.is_empty() {
                        break live;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                control
                    .request(hour, next(hour), &live[0].worker, unix_secs_now())
                    .await
                    .unwrap();
            }
            until(|| async { done() }).await;
            stop.send(()).unwrap();
            worker.await.unwrap()
        }
    };
    assert_eq!(
        report.outcome,
        Outcome::Finished,
        "{path:?}: {}",
        report.render()
    );
    metrics
}

#[tokio::test(start_paused = true)]
async fn every_path_resumes_an_object_at_its_checkpoint() {
    for path in [Path_::Once, Path_::Range, Path_::Polling, Path_::HandedOver] {
        let (source, state) = (TempDir::new("paths-source"), TempDir::new("paths-state"));
        let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
        let hour = old_hour();
        let (meta, ids) = one_object(&source.0, hour, 7).await;
        checkpoint(&source.0, &state.0, &meta, &meta).await;

        let metrics = run(path, &source.0, &state.0, &standin, hour).await;
        let stored: HashSet<String> = standin.stored().into_keys().collect();
        let after: HashSet<String> = ids[AT as usize..].iter().cloned().collect();
        assert_eq!(
            stored.len(),
            after.len(),
            "{path:?}: only the events from the checkpoint on are sent"
        );
        assert_eq!(stored, after, "{path:?}");
        let counts = metrics.counts();
        assert_eq!(
            (counts.objects_resumed, counts.events_resumed_past),
            (1, AT),
            "{path:?}"
        );
        let done = files_ending(&state.0, ".done");
        let entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&done[0]).unwrap()).unwrap();
        assert_eq!(
            (entry["events"].as_u64(), entry["resumed_at"].as_u64()),
            (Some(EVENTS as u64), Some(AT)),
            "{path:?}: {entry}"
        );
        assert!(
            files_ending(&state.0, ".progress").is_empty(),
            "{path:?}: the done record replaces the checkpoint"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_checkpoint_of_another_version_is_never_applied() {
    let (source, state) = (
        TempDir::new("version-source"),
        TempDir::new("version-state"),
    );
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let hour = old_hour();
    let (meta, _) = one_object(&source.0, hour, 7).await;
    // The checkpoint names a version of another size: the object was uploaded again since.
    let other = ObjectMeta {
        size: meta.size + 1,
        ..meta.clone()
    };
    checkpoint(&source.0, &state.0, &meta, &other).await;
    let metrics = run(Path_::Range, &source.0, &state.0, &standin, hour).await;
    assert_eq!(standin.stored().len(), EVENTS, "the whole object is sent");
    assert_eq!(metrics.counts().events_resumed_past, 0);

    // The checkpoint names the version read then, and the object is uploaded again with
    // other events before the next run: the new version is read from its start.
    let (source, state) = (
        TempDir::new("changed-source"),
        TempDir::new("changed-state"),
    );
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (meta, _) = one_object(&source.0, hour, 7).await;
    checkpoint(&source.0, &state.0, &meta, &meta).await;
    let (_, ids) = one_object(&source.0, hour, 8).await;
    let metrics = run(Path_::Range, &source.0, &state.0, &standin, hour).await;
    let stored: HashSet<String> = standin.stored().into_keys().collect();
    assert_eq!(
        stored,
        ids.into_iter().collect::<HashSet<_>>(),
        "every event of the new version"
    );
    assert_eq!(metrics.counts().events_resumed_past, 0);
}

/// Checkpoints damaged or written by hand (a fresh-user tester's cases): none may panic or
/// skip an event; each object is delivered whole, read from its start.
#[tokio::test(start_paused = true)]
async fn a_checkpoint_that_cannot_be_applied_is_ignored_and_nothing_is_skipped() {
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 5] = [
        ("a block before the header's end", |p| {
            p["block_offset"] = 0.into()
        }),
        ("more records than the object holds", |p| {
            p["records"] = 5_000.into()
        }),
        ("a block that is not a block", |p| {
            p["block_offset"] = (p["block_offset"].as_u64().unwrap() + 7).into()
        }),
        ("a block starting after its record", |p| {
            p["block_first_record"] = 900.into()
        }),
        ("a header length that is not the header's", |p| {
            p["header_len"] = 100.into()
        }),
    ];
    for (case, edit) in edits {
        let (source, state) = (TempDir::new("bad-source"), TempDir::new("bad-state"));
        let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
        let hour = old_hour();
        let (meta, ids) = one_object(&source.0, hour, 7).await;
        checkpoint(&source.0, &state.0, &meta, &meta).await;
        let file = &files_ending(&state.0, ".progress")[0];
        let mut progress: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        edit(&mut progress);
        std::fs::write(file, serde_json::to_vec(&progress).unwrap()).unwrap();

        let metrics = run(Path_::Range, &source.0, &state.0, &standin, hour).await;
        let stored: HashSet<String> = standin.stored().into_keys().collect();
        assert_eq!(
            stored,
            ids.into_iter().collect::<HashSet<_>>(),
            "{case}: every event is sent"
        );
        assert_eq!(metrics.counts().objects_panicked, 0, "{case}");
    }
}

/// On S3 (moto), a resume reads the header and the rest from the checkpoint's block with two
/// ranged GETs (`If-Match` the listed ETag), and sends only the events after the
/// checkpoint; an object never cut short costs no lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_a_resume_reads_two_ranges_and_sends_the_rest() {
    let moto = support::moto::Moto::start().await;
    moto.create_bucket("src").await;
    moto.create_bucket("sta").await;
    let local = TempDir::new("s3-resume-source");
    let hour = old_hour();
    let (meta, ids) = one_object(&local.0, hour, 7).await;
    let source = moto.store("src", "c");
    source
        .put(&meta.key, std::fs::read(local.0.join(&meta.key)).unwrap())
        .await
        .unwrap();
    let listed = source.list("").await.unwrap().remove(0);
    // The checkpoint names the version S3 lists (its ETag), the block as the local copy has it.
    let scratch = TempDir::new("s3-resume-scratch");
    checkpoint(&local.0, &scratch.0, &meta, &listed).await;
    let state = moto.store("sta", "p");
    let ledger_dir = scratch.0.join("ledger");
    for file in files_ending(&ledger_dir, ".progress") {
        let key = file
            .strip_prefix(&*scratch.0.to_string_lossy())
            .unwrap()
            .trim_start_matches('/')
            .to_string();
        state
            .put(&key, std::fs::read(&file).unwrap())
            .await
            .unwrap();
    }

    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        support::settings(),
        Plan::Range {
            from: hour,
            to: next(hour),
        },
        Arc::new(moto.counted_store("src", "c", metrics.clone())),
        Arc::new(moto.store("sta", "p")),
        support::heap(&standin),
        metrics.clone(),
    );
    let report = engine.drive(std::future::pending()).await;
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    let stored: HashSet<String> = standin.stored().into_keys().collect();
    assert_eq!(
        stored,
        ids[AT as usize..].iter().cloned().collect::<HashSet<_>>()
    );
    let counts = metrics.counts();
    assert_eq!(counts.events_resumed_past, AT);
    assert_eq!(
        counts
            .aws_requests
            .get(&("s3".to_string(), "GetObject".to_string()))
            .copied(),
        Some(2),
        "the header and the rest, each a ranged GET: {:?}",
        counts.aws_requests
    );
    let left = state.list("ledger/").await.unwrap();
    assert!(
        left.iter().all(|m| !m.key.ends_with(".progress")) && left.len() == 1,
        "the done record replaced the checkpoint: {left:?}"
    );
}
