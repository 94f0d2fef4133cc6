//! The worker engine in process, on a paused clock: shutdown passed in as a future, the
//! abandon-at-timeout path, a panicking object, state-store outages, single failed ledger and
//! dead-letter writes, a source stream cut mid-object, a source that is not there, and many
//! small objects sharing requests. The
//! source and state are real local stores (wrapped by the testkit's `FaultyStore` to inject
//! faults); Heap is the stand-in over real HTTP.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use currents_heap::commands::worker::Exit;
use currents_heap::deadletter::{DeadLetterFilter, DeadLetterStore};
use currents_heap::ledger::{Ledger, Outcome as Recorded};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan, Report, Settings};
use currents_heap_testkit::apache_avro::Codec;
use currents_heap_testkit::fixtures::fixture_specs;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Keys, Ops};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{TempDir, all_sendable, copy_tree, fixtures, until};
use tokio::time::Instant;

const APP_ID: &str = "91";
const OBJECTS: usize = 19;

/// The defaults `run` starts with ([`support::settings`]), with `--retry-max-time`'s default
/// as a bounded run's patience with a failing state.
fn settings() -> Settings {
    Settings {
        bounded_state_retry: Duration::from_secs(15 * 60),
        ..support::settings()
    }
}

fn heap(standin: &Standin, request_timeout: Duration) -> Output {
    support::heap_output(standin, APP_ID, request_timeout)
}

fn live() -> Plan {
    Plan::Live {
        lookback: Lookback::All,
        poll_interval: Duration::from_secs(10),
    }
}

/// A copy of the fixture bucket and an empty state directory.
struct Dirs {
    source: TempDir,
    state: TempDir,
}

impl Dirs {
    fn new() -> Self {
        let source = TempDir::new("engine-source");
        copy_tree(&fixtures(), &source.0);
        Dirs {
            source,
            state: TempDir::new("engine-state"),
        }
    }

    fn source(&self) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(&self.source.0))
    }

    fn state(&self) -> Arc<dyn ObjectStore> {
        Arc::new(LocalStore::new(&self.state.0))
    }

    /// Objects the ledger records as done, read past any fault wrapper.
    async fn recorded_done(&self) -> usize {
        Ledger::new(self.state())
            .finished("")
            .await
            .unwrap()
            .count(Recorded::Done)
    }
}

fn stored(standin: &Standin) -> HashSet<String> {
    standin.stored().into_keys().collect()
}

/// Drives the engine; the shutdown future first waits for `condition`, and the test can
/// check that the engine returned only after it was asked to stop.
async fn drive_until<F: std::future::Future<Output = bool>>(
    engine: Engine,
    condition: impl FnMut() -> F,
) -> Report {
    let asked = Arc::new(AtomicBool::new(false));
    let flag = asked.clone();
    let report = engine
        .drive(async move {
            until(condition).await;
            flag.store(true, Ordering::SeqCst);
        })
        .await;
    assert!(
        asked.load(Ordering::SeqCst),
        "the engine returned before it was stopped: {:?}\n{}",
        report.outcome,
        report.render()
    );
    report
}

#[tokio::test(start_paused = true)]
async fn objects_in_flight_at_the_shutdown_timeout_are_abandoned_and_never_recorded() {
    // Heap stores the events but answers only after ten minutes: nothing can finish.
    let standin = Standin::start(StandinConfig {
        response_delay: Duration::from_secs(600),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    // Exactly four at a time, so that some objects are still queued when the stop comes.
    let settings = Settings {
        object_concurrency: Admission::fixed(4),
        ..settings()
    };
    for plan in [
        live(),
        Plan::Once {
            lookback: Lookback::All,
        },
    ] {
        let dirs = Dirs::new();
        let engine = Engine::start(
            settings.clone(),
            plan,
            dirs.source(),
            dirs.state(),
            heap(&standin, Duration::from_secs(3600)),
            Arc::new(Metrics::new()),
        );
        let started = Instant::now();
        let report = engine
            .drive(tokio::time::sleep(Duration::from_secs(5)))
            .await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(35) && took < Duration::from_secs(36),
            "stop at 5 s plus the 30 s shutdown timeout, then abandon: took {took:?}"
        );
        let counts = &report.counts;
        assert_eq!(counts.objects_done, 0, "{}", report.render());
        assert_eq!(
            counts.objects_abandoned,
            4,
            "the four objects in flight: {}",
            report.render()
        );
        assert_eq!(report.summary.not_started_count(), OBJECTS - 4);
        assert_eq!(
            dirs.recorded_done().await,
            0,
            "nothing abandoned is recorded"
        );
        match plan {
            Plan::Live { .. } => assert_eq!(report.outcome, Outcome::Finished),
            _ => {
                assert!(
                    matches!(&report.outcome, Outcome::Incomplete { reason } if reason.contains("stopped")),
                    "{:?}",
                    report.outcome
                );
                assert_eq!(Exit::from(report.outcome.clone()).code(), 4);
                assert!(report.render().contains("Run the same command again"));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_object_is_given_back_and_retried_at_the_next_poll() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dirs = Dirs::new();
    let source = Arc::new(FaultyStore::new(dirs.source()));
    let victim = dirs
        .source()
        .list("")
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.key.ends_with(".avro"))
        .unwrap()
        .key;
    source.panic_once_on_open(&victim);
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        settings(),
        live(),
        source,
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        metrics.clone(),
    );
    let report = drive_until(engine, || async { dirs.recorded_done().await == OBJECTS }).await;
    assert_eq!(report.counts.objects_panicked, 1, "{}", report.render());
    assert_eq!(report.counts.objects_done, OBJECTS as u64);
    assert!(
        Ledger::new(dirs.state())
            .finished("")
            .await
            .unwrap()
            .outcome(
                &victim,
                std::fs::metadata(dirs.source.0.join(&victim))
                    .unwrap()
                    .len(),
                &dirs
                    .source()
                    .list(&victim)
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
                    .etag
            )
            == Some(Recorded::Done),
        "the panicked object was processed at the next poll"
    );
    assert_eq!(stored(&standin), all_sendable());
    assert!(
        metrics
            .render()
            .contains("currents_heap_objects_panicked_total 1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_twenty_second_state_outage_does_not_end_run_and_everything_is_recorded_after() {
    for ops in [Ops::Writes, Ops::Reads] {
        // Slow answers keep objects in flight when the outage begins.
        let standin = Standin::start(StandinConfig {
            response_delay: Duration::from_millis(300),
            ..StandinConfig::new(APP_ID)
        })
        .await
        .unwrap();
        let dirs = Dirs::new();
        let state = Arc::new(FaultyStore::new(dirs.state()));
        let start = Instant::now();
        // Writes fail once objects are in flight; reads fail from the first poll, the only
        // time state is read (the ledger listing).
        let from = match ops {
            Ops::Writes => start + Duration::from_millis(1),
            Ops::Reads => start,
        };
        state.outage(from, start + Duration::from_secs(20), ops);
        let metrics = Arc::new(Metrics::new());
        let mut settings = settings();
        settings.object_concurrency.objects = 8;
        let engine = Engine::start(
            settings,
            live(),
            dirs.source(),
            state.clone(),
            heap(&standin, Duration::from_secs(30)),
            metrics.clone(),
        );
        let mut saw_outage = false;
        let report = drive_until(engine, || {
            let (dirs, metrics) = (&dirs, &metrics);
            let not_ready = metrics.not_ready(
                currents_heap::clock::unix_secs_now(),
                Duration::from_secs(3600),
            );
            saw_outage |= not_ready
                .as_deref()
                .is_some_and(|r| r.contains("state writes have failed"));
            async move { dirs.recorded_done().await == OBJECTS }
        })
        .await;
        assert!(state.failures() > 0, "{ops:?}: the outage hit");
        assert!(
            Instant::now() >= start + Duration::from_secs(20),
            "recorded only once the store was back"
        );
        assert_eq!(report.outcome, Outcome::Finished, "{ops:?}");
        assert_eq!(stored(&standin), all_sendable(), "{ops:?}");
        assert_eq!(
            dirs.recorded_done().await,
            OBJECTS,
            "{ops:?}: {}",
            report.render()
        );
        if ops == Ops::Writes {
            assert!(saw_outage, "/readyz reported the failing state writes");
            assert_eq!(
                standin.report().duplicates,
                0,
                "ledger writes were retried, not the objects"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_missing_or_empty_source_is_reported_not_taken_for_an_idle_one() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let state = TempDir::new("engine-state");
    let missing = state.0.join("no-such-bucket");
    let engine = Engine::start(
        settings(),
        Plan::Once {
            lookback: Lookback::Hours(72),
        },
        Arc::new(LocalStore::new(&missing)),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    );
    let report = engine.drive(std::future::pending()).await;
    match &report.outcome {
        Outcome::Incomplete { reason } => {
            assert!(reason.contains("cannot list the source"), "{reason}");
            assert!(reason.contains("no-such-bucket"), "{reason}");
        }
        other => panic!("a missing source directory is an error, not an idle poll: {other:?}"),
    }

    let empty = TempDir::new("engine-empty-source");
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        settings(),
        live(),
        Arc::new(LocalStore::new(&empty.0)),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin, Duration::from_secs(30)),
        metrics.clone(),
    );
    let polled = metrics.clone();
    let report = drive_until(engine, move || {
        let polled = polled.clone();
        async move { polled.last_poll_unix() > 0 }
    })
    .await;
    assert_eq!(report.outcome, Outcome::Finished);
    let reason = metrics
        .not_ready(
            currents_heap::clock::unix_secs_now(),
            Duration::from_secs(3600),
        )
        .expect("an empty source is not ready");
    assert!(reason.contains("no event_type= folders"), "{reason}");
    assert!(
        metrics
            .render()
            .contains("currents_heap_source_event_type_folders 0")
    );
}

#[tokio::test(start_paused = true)]
async fn a_bounded_run_gives_up_on_a_long_outage_with_exit_4_and_the_next_run_resumes() {
    // One poisoned event, so a dead letter must be written as well as the ledger.
    let poisoned = all_sendable().into_iter().min().unwrap();
    let standin = Standin::start(StandinConfig {
        poison_keys: HashSet::from([poisoned.clone()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let once = Plan::Once {
        lookback: Lookback::All,
    };
    let mut settings = settings();
    settings.bounded_state_retry = Duration::from_secs(60);

    // The state refuses writes for an hour: longer than the run will wait.
    let dirs = Dirs::new();
    let state = Arc::new(FaultyStore::new(dirs.state()));
    let start = Instant::now();
    state.outage(start, start + Duration::from_secs(3600), Ops::Writes);
    let report = Engine::start(
        settings.clone(),
        once,
        dirs.source(),
        state,
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    assert_eq!(
        Exit::from(report.outcome.clone()).code(),
        4,
        "{}",
        report.render()
    );
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "gave up after about --retry-max-time, not the outage: {:?}",
        start.elapsed()
    );
    assert_eq!(dirs.recorded_done().await, 0);
    let rendered = report.render();
    assert!(
        rendered.contains("cannot record it in the state's ledger")
            && rendered.contains("could not be written as dead letters"),
        "both the ledger and the dead-letter paths gave up: {rendered}"
    );

    // The source fails reads for an hour: every object is left to retry.
    let source = Arc::new(FaultyStore::new(dirs.source()));
    let start = Instant::now();
    source.outage(start, start + Duration::from_secs(3600), Ops::Reads);
    let report = Engine::start(
        settings.clone(),
        once,
        source,
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    assert!(
        matches!(&report.outcome, Outcome::Incomplete { reason } if reason.contains("cannot list the source")),
        "{:?}",
        report.outcome
    );

    // Once the stores are back, the same run finishes: exit 3 for the one parked event.
    let report = Engine::start(
        settings,
        once,
        dirs.source(),
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    assert_eq!(
        report.outcome,
        Outcome::FinishedWithFailures,
        "{}",
        report.render()
    );
    assert_eq!(dirs.recorded_done().await, OBJECTS);
    let mut expected = all_sendable();
    expected.remove(&poisoned);
    assert_eq!(stored(&standin), expected);
}

fn once() -> Plan {
    Plan::Once {
        lookback: Lookback::All,
    }
}

/// Ids of the events in one fixture object a run should deliver (a non-empty
/// `external_user_id`, the default identity), from the expected JSON beside it.
fn sendable_in(dirs: &Dirs, key: &str) -> HashSet<String> {
    let json = dirs.source.0.join(key).with_extension("json");
    std::fs::read_to_string(json)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|e| {
            e["user"]["external_user_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_read_error_mid_object_leaves_it_to_retry_and_the_next_run_delivers_every_event_once() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dirs = Dirs::new();
    // The deflate fixture: 40 events in small blocks, so a cut halfway through its bytes
    // falls after whole blocks whose events are already on their way to Heap.
    let victim = fixture_specs()
        .into_iter()
        .find(|s| matches!(s.options.codec, Codec::Deflate(_)))
        .unwrap()
        .key();
    let victim_events = sendable_in(&dirs, &victim);
    let size = std::fs::metadata(dirs.source.0.join(&victim))
        .unwrap()
        .len();
    let source = Arc::new(FaultyStore::new(dirs.source()));
    // What an S3 GetObject body does when the connection drops: bytes, then an I/O error.
    source.cut_next_open(Keys::exact(&victim), size / 2);

    let report = Engine::start(
        settings(),
        once(),
        source.clone(),
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    let rendered = report.render();
    assert_eq!(source.failures(), 1, "{:?}", source.injected());
    assert!(
        matches!(&report.outcome, Outcome::Incomplete { reason } if reason.contains("1 objects are left to retry")),
        "{:?}\n{rendered}",
        report.outcome
    );
    assert_eq!(Exit::from(report.outcome.clone()).code(), 4);
    assert_eq!(report.counts.objects_retried, 1, "{rendered}");
    assert_eq!(report.counts.objects_done, OBJECTS as u64 - 1, "{rendered}");
    assert_eq!(
        report.counts.objects_failed, 0,
        "a read error is not damage: {rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "remaining: {victim}: cannot read the source object"
        )) && rendered.contains("connection reset"),
        "the report names the object and the read error: {rendered}"
    );
    let finished = Ledger::new(dirs.state()).finished("").await.unwrap();
    assert_eq!(finished.count(Recorded::Done), OBJECTS - 1);
    assert_eq!(finished.count(Recorded::Failed), 0);
    assert_eq!(
        finished.outcome(
            &victim,
            size,
            &dirs.source().list(&victim).await.unwrap()[0].etag
        ),
        None,
        "the cut object is not recorded"
    );
    let first = stored(&standin);
    let others: HashSet<String> = all_sendable().difference(&victim_events).cloned().collect();
    assert!(
        first.is_superset(&others),
        "every other object was delivered"
    );
    let accepted_early: HashSet<String> = first.intersection(&victim_events).cloned().collect();
    // The events read before the cut were handed over, then withdrawn when the read failed
    // (issue 18): none was sent, so none is pending when the object is read again.
    assert!(
        accepted_early.is_empty(),
        "the cut object's {} events read before the cut were withdrawn unsent, yet {} reached Heap",
        victim_events.len(),
        accepted_early.len()
    );
    assert_eq!(standin.report().duplicates, 0);

    // The next run reads the object again from its start; Heap ignores the repeats.
    let report = Engine::start(
        settings(),
        once(),
        dirs.source(),
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(
        report.counts.objects_done, 1,
        "only the cut object was left"
    );
    assert_eq!(dirs.recorded_done().await, OBJECTS);
    assert_eq!(stored(&standin), all_sendable(), "no event is lost");
    let heap_saw = standin.report();
    assert_eq!(
        heap_saw.duplicates,
        accepted_early.len() as u64,
        "sent twice: exactly the events Heap accepted before the cut (none)"
    );
    assert_eq!(heap_saw.duplicate_mismatches, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_ledger_write_is_retried_and_the_object_recorded_without_resending() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dirs = Dirs::new();
    let state = Arc::new(FaultyStore::new(dirs.state()));
    state.fail_nth(Ops::Writes, Keys::prefix("ledger/"), 3);
    let metrics = Arc::new(Metrics::new());
    let start = Instant::now();
    let report = Engine::start(
        settings(),
        once(),
        dirs.source(),
        state.clone(),
        heap(&standin, Duration::from_secs(30)),
        metrics.clone(),
    )
    .drive(std::future::pending())
    .await;
    let injected = state.injected();
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert!(injected[0].starts_with("put ") && injected[0].contains("/ledger/"));
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(report.counts.objects_done, OBJECTS as u64);
    assert_eq!(
        report.counts.objects_retried, 0,
        "the write was retried, not the object"
    );
    assert_eq!(
        dirs.recorded_done().await,
        OBJECTS,
        "the failed write's object too"
    );
    assert_eq!(
        state.calls(Ops::Writes),
        OBJECTS as u64,
        "one put per object"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "tried again after its backoff"
    );
    assert_eq!(stored(&standin), all_sendable());
    assert_eq!(standin.report().duplicates, 0, "nothing was sent twice");
    let page = metrics.render();
    assert!(
        page.contains("currents_heap_state_write_failures_total 1"),
        "{page}"
    );
    assert!(
        page.contains("currents_heap_state_write_failing 0"),
        "{page}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_write_is_retried_and_the_event_parked_once() {
    let poisoned = all_sendable().into_iter().min().unwrap();
    let standin = Standin::start(StandinConfig {
        poison_keys: HashSet::from([poisoned.clone()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let dirs = Dirs::new();
    let state = Arc::new(FaultyStore::new(dirs.state()));
    state.fail_nth(Ops::Writes, Keys::prefix("dead-letters/"), 1);
    let metrics = Arc::new(Metrics::new());
    let report = Engine::start(
        settings(),
        once(),
        dirs.source(),
        state.clone(),
        heap(&standin, Duration::from_secs(30)),
        metrics.clone(),
    )
    .drive(std::future::pending())
    .await;
    let injected = state.injected();
    assert_eq!(injected.len(), 1, "{injected:?}");
    assert!(injected[0].starts_with("put ") && injected[0].contains("/dead-letters/"));
    assert_eq!(
        report.outcome,
        Outcome::FinishedWithFailures,
        "exit 3 for the parked event: {}",
        report.render()
    );
    assert_eq!(report.counts.total().parked, 1);
    assert_eq!(report.counts.objects_retried, 0, "{}", report.render());
    assert_eq!(
        dirs.recorded_done().await,
        OBJECTS,
        "its object is recorded"
    );
    let dead_letters = DeadLetterStore::new(dirs.state());
    let objects = dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(
        objects.len(),
        1,
        "one dead-letter object, written once: {objects:?}"
    );
    let letters = dead_letters.read(&objects[0].key).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].event.id, poisoned);
    let mut expected = all_sendable();
    expected.remove(&poisoned);
    assert_eq!(stored(&standin), expected);
    let page = metrics.render();
    assert!(
        page.contains("currents_heap_state_write_failures_total 1"),
        "{page}"
    );
    assert!(
        page.contains("currents_heap_state_write_failing 0"),
        "{page}"
    );
}

#[tokio::test(start_paused = true)]
async fn many_small_objects_share_requests_and_every_event_arrives_once() {
    const SMALL: usize = 200;
    let hour = currents_heap::currents::key::DateHour::parse("2026-11-27-13").unwrap();
    let options = SynthOptions {
        events: 5,
        seed: 5_000,
        ..SynthOptions::default()
    };
    // Each object alone would send its few events as soon as they arrive: about one request
    // per object, 5.7 events each (measured), whichever of the two rules is missing.
    for (admission, at_least, why) in [
        (
            settings().object_concurrency,
            100.0,
            "the default: many small objects in flight, lingering batches",
        ),
        (
            Admission::fixed(4),
            10.0,
            "four at a time: the linger alone lets their events share a request",
        ),
    ] {
        let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
        let (source, state) = (TempDir::new("small-source"), TempDir::new("small-state"));
        let sendable = write_custom_events(&source.0, hour, SMALL, &options).unwrap();
        let report = Engine::start(
            Settings {
                object_concurrency: admission,
                ..settings()
            },
            once(),
            Arc::new(LocalStore::new(&source.0)),
            Arc::new(LocalStore::new(&state.0)),
            heap(&standin, Duration::from_secs(30)),
            Arc::new(Metrics::new()),
        )
        .drive(std::future::pending())
        .await;
        assert_eq!(
            report.outcome,
            Outcome::Finished,
            "{why}: {}",
            report.render()
        );
        assert_eq!(report.counts.objects_done, SMALL as u64, "{why}");
        let finished = Ledger::new(Arc::new(LocalStore::new(&state.0)))
            .finished("")
            .await
            .unwrap();
        assert_eq!(
            finished.count(Recorded::Done),
            SMALL,
            "{why}: every object recorded"
        );
        assert_eq!(stored(&standin), sendable, "{why}: every event delivered");
        let heap_saw = standin.report();
        assert_eq!(heap_saw.duplicates, 0, "{why}: and only once");
        let per_request = sendable.len() as f64 / heap_saw.requests as f64;
        assert!(
            per_request >= at_least,
            "{why}: {} events in {} requests",
            sendable.len(),
            heap_saw.requests
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_folder_that_cannot_be_listed_stops_only_itself() {
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let dirs = Dirs::new();
    // As an Azure blob name object_store refuses fails the whole listing of its folder.
    let source = Arc::new(FaultyStore::new(dirs.source()));
    source.fail_always(
        Ops::Reads,
        Keys::containing("event_type=users.behaviors.Uninstall/"),
    );
    let report = Engine::start(
        settings(),
        Plan::Once {
            lookback: Lookback::Hours(24 * 3_650),
        },
        source,
        dirs.state(),
        heap(&standin, Duration::from_secs(30)),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    let Outcome::Incomplete { reason } = &report.outcome else {
        panic!("{}", report.render());
    };
    assert!(
        reason.contains("1 of 14 event_type= folders") && reason.contains("Uninstall"),
        "{reason}"
    );
    assert_eq!(
        report.counts.objects_done,
        OBJECTS as u64 - 1,
        "every other folder's objects are delivered: {}",
        report.render()
    );
}

/// Dead letters in the state holding the event with this id.
async fn dead_letters_of(state: Arc<dyn ObjectStore>, id: &str) -> usize {
    let store = DeadLetterStore::new(state);
    let mut n = 0;
    for file in store.list(&DeadLetterFilter::default()).await.unwrap() {
        let read = store.read_lenient(&file.key).await.unwrap();
        n += read.letters.iter().filter(|l| l.event.id == id).count();
    }
    n
}

#[tokio::test(start_paused = true)]
async fn a_read_error_mid_object_ends_it_only_after_its_events_so_none_is_parked_twice() {
    let dirs = Dirs::new();
    let victim = fixture_specs()
        .into_iter()
        .find(|s| matches!(s.options.codec, Codec::Deflate(_)))
        .unwrap()
        .key();
    // Heap refuses the object's first sendable event (in the bytes read before the cut), so
    // it is parked: once, although the object is read twice.
    let json = dirs.source.0.join(&victim).with_extension("json");
    let poisoned = std::fs::read_to_string(json)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|e| {
            e["user"]["external_user_id"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        })
        .map(|e| e["id"].as_str().unwrap().to_string())
        .unwrap();
    let standin = Standin::start(StandinConfig {
        poison_keys: HashSet::from([poisoned.clone()]),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let size = std::fs::metadata(dirs.source.0.join(&victim))
        .unwrap()
        .len();
    let source = Arc::new(FaultyStore::new(dirs.source()));
    source.cut_next_open(Keys::exact(&victim), size / 2);
    // A live run: the next poll reads the cut object again, whole.
    let report = drive_until(
        Engine::start(
            settings(),
            live(),
            source.clone(),
            dirs.state(),
            heap(&standin, Duration::from_secs(30)),
            Arc::new(Metrics::new()),
        ),
        || async { dirs.recorded_done().await == OBJECTS },
    )
    .await;
    assert_eq!(source.failures(), 1, "{:?}", source.injected());
    assert_eq!(report.counts.objects_retried, 1, "{}", report.render());
    assert_eq!(
        dead_letters_of(dirs.state(), &poisoned).await,
        1,
        "the refused event is parked once: {}",
        report.render()
    );
    assert_eq!(
        report.counts.total().parked,
        1,
        "and counted once: {}",
        report.render()
    );
    assert_eq!(stored(&standin), {
        let mut expected = all_sendable();
        expected.remove(&poisoned);
        expected
    });
}
