//! A stop ends within `--shutdown-timeout` plus a small margin, however rate-bound delivery is
//! (issue 18).
//!
//! On the real clock, scaled down: a paused clock cannot run this, because a decoding thread
//! waiting for room in delivery's channel is a running `spawn_blocking` task, and tokio does
//! not auto-advance a paused clock while one runs, so the pacer's timer would never fire.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use currents_heap::currents::key::DateHour;
use currents_heap::heap::client::HeapClient;
use currents_heap::heap::delivery::DeliveryConfig;
use currents_heap::heap::map::{HeapMapper, MappingConfig};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::HeapOutput;
use currents_heap::worker::scheduler::Admission;
use currents_heap::worker::{Engine, Lookback, Output, Plan};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::{TempDir, engine_settings, until};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const APP_ID: &str = "93";
/// The bound this test holds the stop to: the shutdown timeout plus this margin.
const MARGIN: Duration = Duration::from_secs(1);

/// Per 5-second window: a minute's worth of pacing, twelve times faster.
fn limits(app_events: u64) -> RateLimits {
    RateLimits {
        app_events,
        identity_events: 0,
        window: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_rate_bound_ends_within_the_timeout_and_sends_nothing_after_the_abandon() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("currents_heap=info")
        .try_init();
    let source = TempDir::new("stop-bound-source");
    let options = SynthOptions {
        events: 300,
        ..SynthOptions::default()
    };
    write_custom_events(&source.0, DateHour::now(), 8, &options).unwrap();
    for round in 0..4u64 {
        // Heap allows 20 events a window; delivery starts out believing in 200: a 429 storm
        // first, then the adaptive budget, and always far more events than room.
        let standin = Arc::new(
            Standin::start(StandinConfig {
                limits: limits(20),
                seed: round,
                ..StandinConfig::new(APP_ID)
            })
            .await
            .unwrap(),
        );
        let state = TempDir::new("stop-bound-state");
        let output = Output::Heap(Box::new(HeapOutput {
            client: HeapClient::new(&standin.url(), Duration::from_secs(30)).unwrap(),
            config: DeliveryConfig {
                jitter_seed: Some(round),
                limits: limits(200),
                max_pending: 100 + 50 * round as usize,
                ..DeliveryConfig::new(APP_ID)
            },
            mapper: HeapMapper::new(MappingConfig::default()),
        }));
        let timeout = Duration::from_millis(1_500 + 500 * (round % 3));
        let settings = currents_heap::worker::Settings {
            shutdown_timeout: timeout,
            ..engine_settings(Admission::fixed(4))
        };
        let abandon = CancellationToken::new();
        let engine = Engine::start(
            settings,
            Plan::Live {
                lookback: Lookback::All,
                poll_interval: Duration::from_secs(10),
            },
            Arc::new(LocalStore::new(&source.0)) as Arc<dyn ObjectStore>,
            Arc::new(LocalStore::new(&state.0)) as Arc<dyn ObjectStore>,
            output,
            Arc::new(Metrics::new()),
        )
        .with_abandon(abandon.clone());
        // What Heap had received when the objects in flight were abandoned.
        let at_abandon = Arc::new(Mutex::new(None));
        let watcher = {
            let (abandon, at_abandon, standin) =
                (abandon.clone(), at_abandon.clone(), standin.clone());
            tokio::spawn(async move {
                abandon.cancelled().await;
                *at_abandon.lock().unwrap() = Some(standin.report().requests);
            })
        };
        let stopped_at = Arc::new(Mutex::new(None));
        let (stop, flag) = (10 + 5 * round as usize, stopped_at.clone());
        let report = engine
            .drive(async {
                until(|| async { standin.stored().len() >= stop }).await;
                *flag.lock().unwrap() = Some(Instant::now());
            })
            .await;
        let stopped_at = stopped_at.lock().unwrap().expect("the engine was stopped");
        let took = stopped_at.elapsed();
        assert!(
            took <= timeout + MARGIN,
            "round {round}: the stop took {took:?}, over the {timeout:?} timeout plus {MARGIN:?}\n{}",
            report.render()
        );
        watcher.await.unwrap();
        let at_abandon = at_abandon.lock().unwrap().expect("objects were abandoned");
        let requests = standin.report().requests;
        assert!(
            requests <= at_abandon + 2,
            "round {round}: after the abandon Heap received {} requests; at most the 2 on the wire may arrive",
            requests - at_abandon
        );
        assert!(report.counts.objects_abandoned > 0, "{}", report.render());
        assert_eq!(report.counts.objects_done, 0, "{}", report.render());
    }
}
