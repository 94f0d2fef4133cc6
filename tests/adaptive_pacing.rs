//! Adaptive pacing against a Heap stand-in whose real limit differs from the configured one,
//! on a paused clock (issue 12): the configured limits are ceilings, the budget follows 429s
//! down and grows back without them, and nothing is lost on the way.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use currents_heap::currents::event::CustomHttpEvent;
use currents_heap::deadletter::DeadLetterStore;
use currents_heap::heap::client::HeapClient;
use currents_heap::heap::delivery::{Delivery, DeliveryConfig};
use currents_heap::heap::map::{HeapMapper, MappingConfig};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::heap::retry::RetryPolicy;
use currents_heap::store::LocalStore;
use currents_heap::telemetry::Metrics;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::{TempDir, custom_event};
use tokio::time::Instant;

const APP_ID: &str = "4242";
const OBJECT: &str =
    "currents/x/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/1/z/f+0+0000000000.avro";
const MINUTE: Duration = Duration::from_secs(60);

fn limits(app_events: u64) -> RateLimits {
    RateLimits {
        app_events,
        identity_events: 0,
        window: MINUTE,
    }
}

fn config(ceiling: u64, max_batch_events: usize) -> DeliveryConfig {
    DeliveryConfig {
        limits: limits(ceiling),
        max_batch_events,
        jitter_seed: Some(7),
        retry: RetryPolicy {
            initial: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(60 * 60),
        },
        ..DeliveryConfig::new(APP_ID)
    }
}

/// What one minute of a run looked like.
#[derive(Debug, Clone, Copy)]
struct Minute {
    requests_429: u64,
    budget: u64,
}

struct Run {
    minutes: Vec<Minute>,
    stored_at: Vec<Duration>,
    events: usize,
    parked: u64,
}

/// Delivers `events` to the stand-in, sampling the 429 count and the budget at the end of
/// every virtual minute; `at_minute` changes the stand-in's limit as the run goes.
async fn run(
    standin: &Standin,
    config: DeliveryConfig,
    events: Vec<CustomHttpEvent>,
    at_minute: impl Fn(usize) -> Option<RateLimits> + Send + 'static,
) -> Run {
    let dir = TempDir::new("adaptive");
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::new(&dir.0))));
    let client = Arc::new(HeapClient::new(&standin.url(), Duration::from_secs(10)).unwrap());
    let metrics = Arc::new(Metrics::new());
    let delivery = Delivery::new(
        config,
        client,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    )
    .with_metrics(metrics.clone());
    let count = events.len();
    let (rx, _tracker, _feeder) = support::feed(events, OBJECT);
    let minutes = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (minutes, metrics) = (minutes.clone(), metrics.clone());
        let limits_at = at_minute;
        let standin_limits = standin.limits_handle();
        tokio::spawn(async move {
            let start = Instant::now();
            for minute in 1.. {
                tokio::time::sleep_until(start + MINUTE * minute as u32).await;
                let counts = metrics.counts();
                minutes.lock().unwrap().push(Minute {
                    requests_429: counts.requests.get("429").copied().unwrap_or(0),
                    budget: counts.rate_budget_app,
                });
                if let Some(limits) = limits_at(minute) {
                    standin_limits(limits);
                }
            }
        })
    };
    let start = Instant::now();
    delivery.run(rx).await.unwrap();
    sampler.abort();
    let stored_at = standin
        .stored()
        .values()
        .map(|s| s.received_at - start)
        .collect();
    let parked = metrics.counts().total().parked;
    let minutes = minutes.lock().unwrap().clone();
    Run {
        minutes,
        stored_at,
        events: count,
        parked,
    }
}

fn events(n: usize) -> Vec<CustomHttpEvent> {
    (0..n)
        .map(|i| custom_event(i, &format!("user-{}", i % 5_000)))
        .collect()
}

fn stored_between(run: &Run, from: Duration, to: Duration) -> usize {
    run.stored_at
        .iter()
        .filter(|at| **at >= from && **at < to)
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_ceiling_above_heaps_real_limit_costs_few_429s_and_little_throughput() {
    let standin = Standin::start(StandinConfig {
        limits: limits(9_000),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    // More than ten minutes' worth at the real limit, so the pipe stays full throughout.
    let events = events(100_000);
    let ids: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    let run = run(&standin, config(15_000, 1_000), events, |_| None).await;

    assert_eq!(run.parked, 0);
    let stored = standin.stored();
    assert_eq!(stored.len(), run.events, "every event arrived");
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), ids);
    assert_eq!(standin.report().duplicates, 0);

    let after_first_minute = run.minutes[9].requests_429 - run.minutes[0].requests_429;
    let in_ten_minutes = stored_between(&run, Duration::ZERO, 10 * MINUTE);
    let share = in_ten_minutes as f64 / 90_000.0;
    eprintln!(
        "429s: {} in the first minute, {after_first_minute} in the next nine; {in_ten_minutes} events in 10 min ({:.1} % of 9,000/min); budgets {:?}",
        run.minutes[0].requests_429,
        share * 100.0,
        run.minutes.iter().map(|m| m.budget).collect::<Vec<_>>()
    );
    assert!(
        after_first_minute <= 10,
        "{after_first_minute} requests answered 429 after the first minute"
    );
    assert!(
        share >= 0.85,
        "throughput {:.1} % of the real limit",
        share * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_follows_heaps_limit_down_and_back_up() {
    // A tenth of Heap's scale, so the run stays short: the rule works in shares of the ceiling.
    let standin = Standin::start(StandinConfig {
        limits: limits(1_500),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let run = run(
        &standin,
        config(1_500, 100),
        events(40_000),
        |minute| match minute {
            3 => Some(limits(600)),
            8 => Some(limits(1_500)),
            _ => None,
        },
    )
    .await;
    assert_eq!(run.parked, 0);
    assert_eq!(standin.stored().len(), run.events, "every event arrived");
    let budgets: Vec<u64> = run.minutes.iter().map(|m| m.budget).collect();
    eprintln!("budgets by minute: {budgets:?}");
    assert_eq!(budgets[2], 1_500, "at the ceiling while Heap takes it");
    assert!(
        budgets[7] <= 600,
        "the budget came down to Heap's lowered limit: {budgets:?}"
    );
    let recovered = budgets[8..].iter().position(|b| *b >= 1_400);
    assert!(
        recovered.is_some_and(|m| m <= 20),
        "the budget grew back within 20 minutes: {budgets:?}"
    );
    // While Heap's limit was 600, about that much a minute still arrived.
    let low = stored_between(&run, 4 * MINUTE, 8 * MINUTE);
    assert!(
        low >= 4 * 500,
        "{low} events in four minutes at a 600/min limit"
    );
}

#[tokio::test(start_paused = true)]
async fn attempts_heap_did_not_store_take_no_rate_room() {
    use currents_heap_testkit::standin::Fault;
    // Heap answers every request 503: nothing is stored, so nothing counts against its
    // limit, and `--retry-max-time 2s` gives up after about 2 s, not after a window.
    let standin = Standin::start(StandinConfig {
        limits: limits(15_000),
        fault_percent: 100,
        random_faults: vec![Fault::Unavailable],
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let mut config = config(15_000, 1_000);
    config.retry.max_elapsed = Duration::from_secs(2);
    let start = Instant::now();
    let run = run(&standin, config, events(20_000), |_| None).await;
    let elapsed = start.elapsed();
    assert_eq!(run.parked, 20_000, "every event parked after its retries");
    assert!(standin.stored().is_empty());
    assert!(
        elapsed < Duration::from_secs(10),
        "a 2 s retry budget took {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn batches_larger_than_the_lowered_budget_still_flow() {
    // A reviewer's case: 1,000-event batches, a ceiling of 1,500/min and Heap at 600/min.
    // The refused batch of 1,000 must go in parts under the lowered budget, not wait for
    // the budget to grow back to 1,000 (and be parked at --retry-max-time meanwhile).
    let standin = Standin::start(StandinConfig {
        limits: limits(600),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let mut config = config(1_500, 1_000);
    config.retry.max_elapsed = Duration::from_secs(120);
    let run = run(&standin, config, events(6_000), |_| None).await;
    assert_eq!(run.parked, 0, "nothing parked while Heap had room");
    assert_eq!(standin.stored().len(), 6_000);
    let steady = stored_between(&run, 2 * MINUTE, 8 * MINUTE);
    eprintln!("{steady} events in minutes 2 to 8 at a 600/min limit");
    assert!(
        steady >= 6 * 360,
        "{steady} events in six minutes at 600/min"
    );
}

// Issue 20: spend the budget well. Each scenario is one of the checks.

fn last_stored(run: &Run) -> Duration {
    run.stored_at.iter().copied().max().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn heaps_real_limit_at_half_the_ceiling_is_learnt_without_a_slow_recovery() {
    // Heap allows 1,500/min against a configured 3,000/min, no Retry-After: the real limit
    // lets 4,500 events through in about 121 s.
    let standin = Standin::start(StandinConfig {
        limits: limits(1_500),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let run = run(&standin, config(3_000, 1_000), events(4_500), |_| None).await;
    let report = standin.report();
    let done = last_stored(&run);
    eprintln!(
        "real limit 1,500 vs 3,000: {} requests answered 429 ({} events), all stored after {done:?}",
        report.limit_violations, report.limit_violation_events
    );
    assert_eq!(run.parked, 0);
    assert_eq!(standin.stored().len(), 4_500, "every event arrived");
    assert!(done <= Duration::from_secs(200), "done after {done:?}");
    assert!(
        report.limit_violation_events <= 1_500,
        "{} events answered 429",
        report.limit_violation_events
    );
}

#[tokio::test(start_paused = true)]
async fn a_window_full_at_start_costs_few_429s_and_no_collapse() {
    // Another sender (a predecessor) just filled Heap's window: Heap has room from +60 s.
    let standin = Standin::start(StandinConfig {
        limits: limits(6_000),
        limit_retry_after: Some(2),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    standin.fill_app_window(6_000);
    let run = run(&standin, config(6_000, 1_000), events(4_000), |_| None).await;
    let report = standin.report();
    let done = last_stored(&run);
    eprintln!(
        "window full at start: {} requests answered 429 ({} events), all stored after {done:?}, budgets {:?}",
        report.limit_violations,
        report.limit_violation_events,
        run.minutes.iter().map(|m| m.budget).collect::<Vec<_>>()
    );
    assert_eq!(run.parked, 0);
    assert_eq!(standin.stored().len(), 4_000, "every event arrived");
    assert!(
        report.limit_violations <= 40,
        "{} requests answered 429",
        report.limit_violations
    );
    assert!(done <= Duration::from_secs(100), "done after {done:?}");
}

#[tokio::test(start_paused = true)]
async fn a_413_lowers_the_body_limit_for_the_rest_of_the_run() {
    // A proxy in front of Heap refuses bodies over 100 KB; --max-body-bytes is 1 MiB.
    let standin = Standin::start(StandinConfig {
        limits: limits(0),
        max_body_bytes: Some(100_000),
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let run = run(&standin, config(0, 1_000), events(6_000), |_| None).await;
    let report = standin.report();
    eprintln!(
        "413 proxy at 100 KB: {} of {} requests answered 413",
        report.bodies_too_large, report.requests
    );
    assert_eq!(run.parked, 0, "no event is too large alone");
    assert_eq!(standin.stored().len(), 6_000, "every event arrived");
    assert!(report.bodies_too_large >= 1, "the proxy refused a body");
    assert!(
        report.bodies_too_large <= 4,
        "{} requests answered 413: after the first, the limit is learnt",
        report.bodies_too_large
    );
}
