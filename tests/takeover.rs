//! One sender per Heap app (issue 20), as an operator meets it: two `run` replicas of the
//! binary on one S3 source and state (moto, which enforces S3's conditional writes), the Heap
//! stand-in enforcing the app's limit. The replica holding the lease is SIGKILLed and started
//! again, then the one holding it is stopped with SIGTERM and started again: the standby takes
//! over each time, resuming from the checkpoints and counting its predecessor's sends, so
//! Heap answers no request with 429, every event arrives, few are sent twice, and both
//! replicas are up at the end.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use currents_heap::currents::key::DateHour;
use currents_heap::heap::pacer::RateLimits;
use currents_heap::store::ObjectStore;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};
use support::moto::Moto;
use support::{APP_ID, TempDir, signal};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const SOURCE: &str = "currents-src";
const STATE: &str = "currents-state";

/// The scenario's sizes: `objects` of `events` each, Heap's (and the replicas') limit per
/// minute, how long after the start the holder is killed, and how long after that the holder
/// then is stopped. (Times, not counts of events stored: the pacer sends a minute's budget at
/// once, so a count would land in the first seconds, before any checkpoint.)
struct Scenario {
    objects: usize,
    events: usize,
    limit: u64,
    kill_after: Duration,
    stop_after: Duration,
    deadline: Duration,
    lease_duration: &'static str,
}

struct Replica {
    child: Child,
}

fn replica(moto: &Moto, heap: &Standin, s: &Scenario) -> Replica {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(["run", "--s3-path-style", "--poll-interval", "5s"])
        .args(["--source", &format!("s3://{SOURCE}/currents")])
        .args(["--state", &format!("s3://{STATE}/state")])
        .args(["--app-rate-limit", &s.limit.to_string()])
        .args(["--lease-duration", s.lease_duration])
        .args(["--max-batch-events", "100"])
        // For a measurement of life without the lease: TAKEOVER_ARGS=--single-process.
        .args(
            std::env::var("TAKEOVER_ARGS")
                .iter()
                .flat_map(|a| a.split_whitespace()),
        );
    moto.aws_env(&mut command)
        .env("HEAP_API_URL", heap.url())
        .env("HEAP_APP_ID", APP_ID)
        .env("NO_COLOR", "1")
        .env(
            "RUST_LOG",
            std::env::var("TAKEOVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(match std::env::var("TAKEOVER_LOG_DIR") {
            // For a look at what each replica did: one file per start.
            Ok(dir) => Stdio::from(
                std::fs::File::create(format!("{dir}/replica-{}.log", fastrand::u32(..))).unwrap(),
            ),
            Err(_) => Stdio::null(),
        })
        .kill_on_drop(true);
    Replica {
        child: command.spawn().unwrap(),
    }
}

/// The pid in the lease holder's id (`<host>-<pid>-<hex>`), once the lease is held.
async fn holder_pid(state: &dyn ObjectStore) -> u32 {
    for _ in 0..600 {
        if let Ok(bytes) = state.get("state/control/lease.json").await {
            let lease: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            if lease["state"] == "held" {
                let holder = lease["holder"].as_str().unwrap();
                let parts: Vec<&str> = holder.rsplitn(3, '-').collect();
                return parts[1].parse().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nobody holds the lease");
}

/// Which of the replicas holds the lease.
async fn holder(state: &dyn ObjectStore, replicas: &[Replica]) -> usize {
    if std::env::var("TAKEOVER_ARGS").is_ok_and(|a| a.contains("--single-process")) {
        // No lease: both send; the first one is stopped.
        return 0;
    }
    let pid = holder_pid(state).await;
    replicas
        .iter()
        .position(|r| r.child.id() == Some(pid))
        .expect("the holder is one of the replicas")
}

async fn until_stored(heap: &Standin, events: usize, deadline: Instant) {
    while heap.stored().len() < events {
        assert!(
            Instant::now() < deadline,
            "only {} of {events} events stored by the deadline",
            heap.stored().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one run of the scenario measured.
struct Measured {
    duplicates: u64,
    refused: u64,
    took: Duration,
}

async fn scenario(s: &Scenario, round: usize) -> Measured {
    let moto = Moto::start().await;
    moto.create_bucket(SOURCE).await;
    moto.create_bucket(STATE).await;
    let dir = TempDir::new("takeover-source");
    // Within `run`'s lookback window.
    let hour = DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 1);
    let options = SynthOptions {
        events: s.events,
        identities: 5_000,
        null_percent: 0,
        block_size: 8_000,
        seed: round as u64 + 1,
        ..SynthOptions::default()
    };
    let ids = write_custom_events(&dir.0.join("currents"), hour, s.objects, &options).unwrap();
    support::copy_all(
        &currents_heap::store::LocalStore::new(&dir.0),
        &moto.store(SOURCE, ""),
    )
    .await;
    let state = moto.store(STATE, "");
    let heap = Standin::start(StandinConfig {
        limits: RateLimits {
            app_events: s.limit,
            identity_events: 0,
            window: Duration::from_secs(60),
        },
        ..StandinConfig::new(APP_ID)
    })
    .await
    .unwrap();
    let started = Instant::now();
    let deadline = started + s.deadline;
    let mut replicas = vec![replica(&moto, &heap, s), replica(&moto, &heap, s)];

    // The sender is killed, and started again.
    tokio::time::sleep_until(started + s.kill_after).await;
    let i = holder(&state, &replicas).await;
    eprintln!(
        "before the SIGKILL: {} sent twice",
        heap.report().duplicates
    );
    signal(&replicas[i].child, "-KILL");
    let _ = replicas[i].child.wait().await;
    replicas[i] = replica(&moto, &heap, s);

    // The sender then is stopped, and started again.
    tokio::time::sleep_until(started + s.kill_after + s.stop_after).await;
    let i = holder(&state, &replicas).await;
    eprintln!(
        "before the SIGTERM: {} sent twice",
        heap.report().duplicates
    );
    signal(&replicas[i].child, "-TERM");
    let status = replicas[i].child.wait().await.unwrap();
    eprintln!("after the SIGTERM: {} sent twice", heap.report().duplicates);
    assert!(status.success(), "a stopped replica exits 0: {status}");
    replicas[i] = replica(&moto, &heap, s);

    until_stored(&heap, ids.len(), deadline).await;
    let took = started.elapsed();
    for replica in &mut replicas {
        assert!(
            replica.child.try_wait().unwrap().is_none(),
            "both replicas are up at the end"
        );
    }
    let stored: HashSet<String> = heap.stored().into_keys().collect();
    assert_eq!(stored, ids, "every event arrives");
    let report = heap.report();
    assert_eq!(report.duplicate_mismatches, 0);
    for replica in &replicas {
        signal(&replica.child, "-TERM");
    }
    for replica in &mut replicas {
        let _ = replica.child.wait().await;
    }
    Measured {
        duplicates: report.duplicates,
        refused: report.limit_violations,
        took,
    }
}

/// The check: 9,000 events in 18 objects, 3,000/min (Heap's and each replica's),
/// the sender SIGKILLed after about 45 s and the next one SIGTERMed about 45 s later.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_survive_a_kill_and_a_stop_without_a_429() {
    let s = Scenario {
        objects: 18,
        events: 500,
        limit: 3_000,
        kill_after: Duration::from_secs(45),
        stop_after: Duration::from_secs(45),
        deadline: Duration::from_secs(330),
        lease_duration: "15s",
    };
    let m = scenario(&s, 0).await;
    eprintln!(
        "9,000 events: {} sent twice, {} requests answered 429, all in Heap after {:.0?}",
        m.duplicates, m.refused, m.took
    );
    assert_eq!(m.refused, 0, "no request answered 429");
    assert!(m.duplicates <= 2_000, "{} events sent twice", m.duplicates);
}

/// The same, smaller and repeated: the takeover's races (who sees what when) vary from round
/// to round. A minute's budget goes out in the first seconds, so both takeovers happen while
/// Heap's window is full: a successor that did not count its predecessor's sends would meet
/// 429s.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_and_stop_scenario_holds_round_after_round() {
    let s = Scenario {
        objects: 6,
        events: 300,
        limit: 1_200,
        kill_after: Duration::from_secs(8),
        stop_after: Duration::from_secs(12),
        deadline: Duration::from_secs(150),
        lease_duration: "6s",
    };
    for round in 1..=3 {
        let m = scenario(&s, round).await;
        eprintln!(
            "round {round}: 1,800 events: {} sent twice, {} answered 429, {:.0?}",
            m.duplicates, m.refused, m.took
        );
        assert_eq!(m.refused, 0, "round {round}: no request answered 429");
        assert!(
            m.duplicates <= 600,
            "round {round}: {} sent twice",
            m.duplicates
        );
    }
}
