//! One meaning for "a backfill" (issue 18): a range run by `backfill` itself makes the same
//! passes, reports the same progress and ends in the same states as one handed to a worker;
//! progress counts events as Heap accepts them, and its ETA follows the rate limit. In
//! process, on a paused clock; local stores; Heap is the stand-in over HTTP.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use currents_heap::clock::unix_secs_now;
use currents_heap::currents::key::DateHour;
use currents_heap::handover::{BackfillProgress, BackfillState, Control};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::HeapOutput;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Lookback, Outcome, Output, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Keys, Ops};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::TempDir;
use tokio::time::Instant;

const APP_ID: &str = "77";

fn heap(standin: &Standin, limits: RateLimits) -> Output {
    let Output::Heap(mut heap) = support::heap_output(standin, APP_ID, Duration::from_secs(30))
    else {
        unreachable!()
    };
    let HeapOutput { config, .. } = &mut *heap;
    config.limits = limits;
    // Room for every event: a decoder blocked on a full delivery channel is a blocking task,
    // which stops the paused clock from advancing while delivery waits for rate room.
    config.max_pending = 50_000;
    Output::Heap(heap)
}

fn old_hour() -> DateHour {
    DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 24 * 30)
}

fn next(hour: DateHour) -> DateHour {
    DateHour::from_hours_since_epoch(hour.hours_since_epoch() + 1)
}

/// The source's object keys, sorted.
fn keys(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn options(events: usize) -> SynthOptions {
    SynthOptions {
        events,
        identities: 2_000,
        null_percent: 0,
        ..SynthOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_range_run_here_gives_an_object_that_ends_retry_later_another_pass() {
    for round in 0..3 {
        let source = TempDir::new(&format!("passes-source-{round}"));
        let state = TempDir::new(&format!("passes-state-{round}"));
        let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
        let hour = old_hour();
        let ids = write_custom_events(&source.0, hour, 3, &options(20)).unwrap();
        let keys = keys(&source.0);
        assert_eq!(keys.len(), 3);
        // The first read of one object fails: it ends "retry later".
        let faulty = FaultyStore::new(Arc::new(LocalStore::new(&source.0)));
        faulty.fail_nth(Ops::Reads, Keys::exact(keys[round].clone()), 1);
        let engine = Engine::start(
            support::engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET)),
            Plan::Range {
                from: hour,
                to: next(hour),
            },
            Arc::new(faulty),
            Arc::new(LocalStore::new(&state.0)),
            heap(&standin, RateLimits::default()),
            Arc::new(Metrics::new()),
        );
        let report = engine.drive(std::future::pending()).await;
        assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
        let stored: HashSet<String> = standin.stored().into_keys().collect();
        assert_eq!(
            stored, ids,
            "the second pass sent the object the first left"
        );
        assert!(
            !report.render().contains("remaining:"),
            "{}",
            report.render()
        );
    }
}

/// Six objects of 700 events, one at a time, under a limit of 600 events a minute: about
/// seven minutes, and the first object cannot end in the first minute.
#[tokio::test(start_paused = true)]
async fn a_range_run_here_reports_events_as_heap_accepts_them_and_a_sane_eta() {
    let source = TempDir::new("progress-source");
    let state = TempDir::new("progress-state");
    let limits = RateLimits {
        app_events: 600,
        identity_events: 1_000,
        window: Duration::from_secs(60),
    };
    let standin = Standin::start(StandinConfig {
        limits,
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let hour = old_hour();
    let ids = write_custom_events(&source.0, hour, 6, &options(700)).unwrap();
    let engine = Engine::start(
        support::engine_settings(Admission::new(1, 0)),
        Plan::Range {
            from: hour,
            to: next(hour),
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin, limits),
        Arc::new(Metrics::new()),
    );
    let (_, mut reports) = engine.range_progress().expect("a range reports progress");
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(Instant, BackfillProgress)> = Vec::new();
        while reports.changed().await.is_ok() {
            let latest = reports.borrow_and_update().clone();
            if let Some(progress) = latest {
                seen.push((Instant::now(), progress));
            }
        }
        seen
    });
    let started = Instant::now();
    let report = engine.drive(std::future::pending()).await;
    let ended = Instant::now();
    let seen = watcher.await.unwrap();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert_eq!(standin.stored().len(), ids.len());
    let last = &report.backfill.as_ref().unwrap();
    assert_eq!(last.state, BackfillState::Done);
    assert_eq!((last.found, last.ended), (6, 6));
    assert_eq!(last.events_sent, 4_200);

    // Events count before any object ends, and reports come every few seconds.
    assert!(
        seen.iter().any(|(_, p)| p.ended == 0 && p.events_sent > 0),
        "no report counted events before an object ended: {:?}",
        seen.iter()
            .map(|(_, p)| (p.ended, p.events_sent))
            .collect::<Vec<_>>()
    );
    let gaps = seen.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap();
    assert!(gaps <= Duration::from_secs(3), "a report gap of {gaps:?}");
    assert!(
        seen.iter().any(|(_, p)| p.waiting_for_rate),
        "the range waited for rate room, and said so"
    );

    // The ETA, once an object has ended, is within a window (the pacer lets events go in
    // bursts of a window's budget) plus a report's interval, or a fifth, of the real time
    // left.
    let total = ended - started;
    assert!(total >= Duration::from_secs(200), "{total:?}");
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for (at, p) in seen.iter().filter(|(_, p)| !p.state.is_terminal()) {
        let Some(eta) = p.eta_at_update else {
            assert_eq!(p.ended, 0, "an ETA once an object ended: {p:?}");
            continue;
        };
        let real = (ended - *at).as_secs_f64();
        let slack = (real * 0.2).max(65.0);
        assert!(
            (eta as f64 - real).abs() <= slack,
            "ETA {eta}s with {real:.0}s left ({p:?})"
        );
        checked += 1;
        worst = worst.max((eta as f64 - real).abs());
    }
    eprintln!("{checked} ETAs checked over {total:?}, the worst {worst:.0}s off");
    assert!(checked >= 10, "{checked} ETAs checked");
}

/// A range handed to a worker, part of which an earlier `backfill --no-handover` finished:
/// the worker's report counts every object of the range, not only those it queued.
#[tokio::test(start_paused = true)]
async fn an_adopted_range_ends_with_every_object_of_the_range_found() {
    let source = TempDir::new("adopted-source");
    let state = TempDir::new("adopted-state");
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let hour = old_hour();
    let ids = write_custom_events(&source.0, hour, 5, &options(10)).unwrap();
    let keys = keys(&source.0);
    // An earlier run here finished 3 of the 5 (the other two could not be read).
    let faulty = FaultyStore::new(Arc::new(LocalStore::new(&source.0)));
    for key in &keys[..2] {
        faulty.fail_always(Ops::Reads, Keys::exact(key.clone()));
    }
    let range = Plan::Range {
        from: hour,
        to: next(hour),
    };
    let settings = support::engine_settings(Admission::new(4, SMALL_OBJECT_BUDGET));
    let earlier = Engine::start(
        settings.clone(),
        range,
        Arc::new(faulty),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin, RateLimits::default()),
        Arc::new(Metrics::new()),
    )
    .drive(std::future::pending())
    .await;
    assert!(
        matches!(earlier.outcome, Outcome::Incomplete { .. }),
        "{}",
        earlier.render()
    );

    // The rest is handed to a worker that is gone; the live worker adopts it.
    let state_store: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&state.0));
    let control = Control::new(state_store);
    let request = control
        .request(hour, next(hour), "gone-worker", unix_secs_now())
        .await
        .unwrap();
    let engine = Engine::start(
        settings,
        Plan::Live {
            lookback: Lookback::Hours(2),
            poll_interval: Duration::from_secs(10),
        },
        Arc::new(LocalStore::new(&source.0)),
        Arc::new(LocalStore::new(&state.0)),
        heap(&standin, RateLimits::default()),
        Arc::new(Metrics::new()),
    )
    .with_heartbeat_interval(Duration::from_secs(1));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(engine.drive(async move {
        let _ = stopped.await;
    }));
    support::until(|| async {
        let progress = control.progress(&request.id).await.unwrap();
        progress.is_some_and(|p| p.state.is_terminal())
    })
    .await;
    let progress = control.progress(&request.id).await.unwrap().unwrap();
    stop.send(()).unwrap();
    worker.await.unwrap();
    assert_eq!(progress.state, BackfillState::Done, "{progress:?}");
    assert_eq!(
        (progress.found, progress.ended),
        (5, 5),
        "every object of the range: {progress:?}"
    );
    let stored: HashSet<String> = standin.stored().into_keys().collect();
    assert_eq!(stored, ids);
}
