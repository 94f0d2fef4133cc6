//! State writes that fail mid-run, seen as an operator sees them: the log and `/readyz`. The
//! engine runs in process on a paused clock; the state is a local store wrapped by the
//! testkit's `FaultyStore`, Heap the stand-in over real HTTP.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use currents_heap::ledger::{Ledger, Outcome as Recorded};
use currents_heap::store::{LocalStore, ObjectStore, StoreErrorKind};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Lookback, Outcome, Plan, Settings};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::store::{FaultyStore, Ops};
use support::{TempDir, copy_tree, fixtures, until};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

const APP_ID: &str = "91";
const OBJECTS: usize = 19;

/// The warning and error lines written, as text.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() <= tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
}

fn settings() -> Settings {
    Settings {
        // Every object of the fixture bucket in flight at once.
        object_concurrency: Admission::new(OBJECTS, SMALL_OBJECT_BUDGET),
        shutdown_timeout: Duration::from_secs(30),
        bounded_state_retry: Duration::from_secs(15 * 60),
        dry_run: false,
    }
}

/// Runs a live engine over the fixture bucket whose state store fails writes with `kind`
/// for `outage`, until every object is recorded; returns the warnings logged, and every
/// `/readyz` reason seen while it ran.
async fn run_through_outage(kind: StoreErrorKind, outage: Duration) -> (Vec<String>, Vec<String>) {
    let warnings = Warnings::default();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let standin = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();
    let (source, state) = (
        TempDir::new("state-writes-source"),
        TempDir::new("state-writes-state"),
    );
    copy_tree(&fixtures(), &source.0);
    let faulty = Arc::new(FaultyStore::new(Arc::new(LocalStore::new(&state.0))));
    let start = Instant::now();
    faulty.outage_of(start, start + outage, Ops::Writes, kind);
    let metrics = Arc::new(Metrics::new());
    let engine = Engine::start(
        settings(),
        Plan::Live {
            lookback: Lookback::All,
            poll_interval: Duration::from_secs(10),
        },
        Arc::new(LocalStore::new(&source.0)),
        faulty.clone(),
        support::heap_output(&standin, APP_ID, Duration::from_secs(30)),
        metrics.clone(),
    );
    let ledger = Ledger::new(Arc::new(LocalStore::new(&state.0)) as Arc<dyn ObjectStore>);
    let readiness = Arc::new(Mutex::new(Vec::new()));
    let stopped = Arc::new(AtomicBool::new(false));
    let (seen, flag) = (readiness.clone(), stopped.clone());
    let report = engine
        .drive(async move {
            until(|| {
                let reason = metrics.not_ready(
                    currents_heap::clock::unix_secs_now(),
                    Duration::from_secs(3600),
                );
                let mut seen = seen.lock().unwrap();
                if reason.is_some() && seen.last() != reason.as_ref() {
                    seen.extend(reason);
                }
                drop(seen);
                let ledger = &ledger;
                async move { ledger.finished("").await.unwrap().count(Recorded::Done) == OBJECTS }
            })
            .await;
            flag.store(true, Ordering::SeqCst);
        })
        .await;
    assert!(stopped.load(Ordering::SeqCst), "{}", report.render());
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    assert!(
        faulty.failures() > 100,
        "the outage hit: {}",
        faulty.failures()
    );
    assert!(
        Instant::now() >= start + outage,
        "recorded once the store was back"
    );
    let seen = readiness.lock().unwrap().clone();
    (warnings.lines(), seen)
}

/// 19 objects in flight through a ten-minute outage used to log one warning per object per
/// retry (about 25 each, 470 lines); now the first failure, one summary a minute, and a line
/// when it heals.
#[tokio::test(start_paused = true)]
async fn a_state_outage_is_logged_once_and_then_once_a_minute_not_per_object() {
    let outage = Duration::from_secs(600);
    let (warnings, readiness) = run_through_outage(StoreErrorKind::Unavailable, outage).await;
    let about_state: Vec<&String> = warnings
        .iter()
        // The heartbeat has its own warning every 30 s (not a state write of this retry).
        .filter(|w| !w.contains("heartbeat"))
        .collect();
    assert!(!about_state.is_empty(), "the outage is logged");
    assert!(
        about_state.len() <= 1 + 10 + 2,
        "{} warning lines for one ten-minute outage:\n{}",
        about_state.len(),
        about_state
            .iter()
            .take(30)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        readiness
            .iter()
            .any(|r| r.contains("state writes have failed")),
        "{readiness:?}"
    );
}

/// A role that lost its permission to write the state is reported as that, in the log and
/// on `/readyz`, not as an outage; it is retried, so the run heals once the role is fixed.
#[tokio::test(start_paused = true)]
async fn a_denied_state_write_says_to_check_the_credentials_not_outage() {
    let (warnings, readiness) =
        run_through_outage(StoreErrorKind::Denied, Duration::from_secs(120)).await;
    let denied = "permission denied writing the state at";
    assert!(
        readiness
            .iter()
            .any(|r| r.contains(denied) && r.contains("check the credentials/role")),
        "{readiness:?}"
    );
    assert!(
        readiness
            .iter()
            .all(|r| !r.contains("state writes have failed")),
        "{:?}",
        readiness
            .iter()
            .find(|r| r.contains("state writes have failed"))
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(denied) && w.contains("check the credentials/role")),
        "{warnings:?}"
    );
    let about_state: Vec<&String> = warnings
        .iter()
        .filter(|w| !w.contains("heartbeat"))
        .collect();
    assert!(about_state.len() <= 4, "{about_state:#?}");
}
