//! The worker binary under load, measured from outside the process:
//! - peak memory (VmHWM) with 8 objects of 100,000 events in flight, delivering to the
//!   stand-in with rate limits off;
//! - how long a new object takes to reach Heap when `run` polls every 5 seconds;
//! - a bucket of 10,000 small objects (5 events each) delivered to the stand-in with rate
//!   limits off and default settings otherwise: objects/s, events/s, requests, events per
//!   request and peak memory.
//!
//! `cargo bench --bench worker` (Linux: reads /proc). The stand-in runs in this process, so
//! its memory does not count against the worker's. The worker inherits this environment, so
//! e.g. `CURRENTS_HEAP_MAX_PENDING=5000` tunes it, and `CURRENTS_HEAP_BATCH_LINGER=0
//! CURRENTS_HEAP_SMALL_OBJECT_BUDGET=0` runs the small objects as before either existed.
//! `BENCH_CASES=memory,latency,small` picks cases (default: all); `BENCH_MEMORY_ONLY=1` skips
//! the latency part; `BENCH_HEAP_DELAY_MS=50` makes the stand-in answer the small objects'
//! requests after 50 ms, like Heap over the internet rather than loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use currents_heap::currents::key::{DateHour, KeyLayout};
use currents_heap::heap::pacer::RateLimits;
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings};
use currents_heap_testkit::fixtures::LAYOUT;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, synthesize, write_custom_events};

const OBJECTS: usize = 8;
const EVENTS: usize = 100_000;
/// The bucket of issue 10: many objects of a few events each.
const SMALL_OBJECTS: usize = 10_000;
const SMALL_EVENTS: usize = 5;

fn main() {
    let cases = std::env::var("BENCH_CASES").unwrap_or_else(|_| "memory,latency,small".into());
    let wanted = |case: &str| cases.split(',').any(|c| c.trim() == case);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if wanted("memory") {
            peak_memory().await;
        }
        if wanted("latency") && std::env::var_os("BENCH_MEMORY_ONLY").is_none() {
            new_object_latency().await;
        }
        if wanted("small") {
            small_objects().await;
        }
    });
}

fn rate_limits_off() -> RateLimits {
    RateLimits {
        app_events: 0,
        identity_events: 0,
        window: Duration::from_secs(60),
    }
}

/// Waits for the worker to exit, sampling its peak RSS; returns its status, the peak in KiB
/// and how long it ran.
async fn measure(mut child: std::process::Child) -> (std::process::ExitStatus, u64, Duration) {
    let started = Instant::now();
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (status, peak, started.elapsed())
}

fn schema() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/users.behaviors.CustomEvent.avsc"
    ))
    .unwrap()
}

/// Writes a CustomEvent object of `events` events into `root` in Braze's layout.
fn write_object(
    root: &Path,
    hour: DateHour,
    offset: u64,
    events: usize,
    seed: u64,
) -> (PathBuf, usize) {
    let options = SynthOptions {
        events,
        seed,
        identities: 20_000,
        codec: Codec::Deflate(DeflateSettings::default()),
        ..SynthOptions::default()
    };
    let file = synthesize(&schema(), "users.behaviors.CustomEvent", &options).unwrap();
    let sendable = file
        .expected
        .iter()
        .filter(|e| e["user"]["external_user_id"].is_string())
        .count();
    let key = KeyLayout {
        schema_id: 612,
        ..LAYOUT
    }
    .object_key("users.behaviors.CustomEvent", hour, 0, offset);
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Write aside and rename, as an uploader would: the worker never sees half a file.
    let temp = path.with_extension("tmp-upload");
    std::fs::write(&temp, &file.avro).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    (path, sendable)
}

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "currents-heap-bench-{label}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn worker(source: &Path, state: &Path, heap_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command
        .args(args)
        .arg("--source")
        .arg(source)
        .arg("--state")
        .arg(state)
        .args(["--app-rate-limit", "0", "--identity-rate-limit", "0"])
        .env("HEAP_API_URL", heap_url)
        .env("HEAP_APP_ID", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
}

async fn peak_memory() {
    let (source, state) = (temp_dir("source"), temp_dir("state"));
    let hour = DateHour::parse("2026-11-27-13").unwrap();
    let mut sendable = 0;
    let mut bytes = 0;
    for i in 0..OBJECTS {
        let (path, n) = write_object(
            &source,
            hour,
            i as u64 * EVENTS as u64,
            EVENTS,
            100 + i as u64,
        );
        sendable += n;
        bytes += std::fs::metadata(path).unwrap().len();
    }
    let heap = Standin::start(StandinConfig {
        limits: rate_limits_off(),
        ..StandinConfig::new("1")
    })
    .await
    .unwrap();
    let args = [
        "run",
        "--once",
        "--lookback",
        "all",
        "--object-concurrency",
        "8",
        "--heap-concurrency",
        "4",
    ];
    let child = worker(&source, &state, &heap.url(), &args).spawn().unwrap();
    let (status, peak, elapsed) = measure(child).await;
    assert!(status.success(), "the worker failed: {status}");
    assert_eq!(
        heap.stored().len(),
        sendable,
        "every sendable event arrived"
    );
    println!(
        "{OBJECTS} objects x {EVENTS} events ({:.1} MB deflate), 8 in flight: peak RSS {:.1} MiB, {:.1} s, {:.0} events/s delivered",
        bytes as f64 / 1e6,
        peak as f64 / 1024.0,
        elapsed.as_secs_f64(),
        sendable as f64 / elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&state);
}

async fn new_object_latency() {
    let (source, state) = (temp_dir("poll-source"), temp_dir("poll-state"));
    let heap = Standin::start(StandinConfig::new("1")).await.unwrap();
    let poll = Duration::from_secs(5);
    let mut child = worker(
        &source,
        &state,
        &heap.url(),
        &["run", "--poll-interval", "5s", "--lookback", "2h"],
    )
    .spawn()
    .unwrap();
    // Let the first (empty) poll happen, then drop objects at different points of the cycle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    let mut delivered = 0;
    for (i, pause) in [0u64, 1_700, 3_900].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let dropped = Instant::now();
        let (_, sendable) = write_object(
            &source,
            DateHour::now(),
            10_000_000 + i as u64,
            500,
            900 + i as u64,
        );
        delivered += sendable;
        heap.wait_until_stored(delivered).await;
        let latency = dropped.elapsed();
        worst = worst.max(latency);
        println!(
            "  new object {i}: delivered {:.2} s after it landed",
            latency.as_secs_f64()
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "new object latency with a {}s poll interval: worst {:.2} s (goal: under poll interval + 5 s = {} s)",
        poll.as_secs(),
        worst.as_secs_f64(),
        poll.as_secs() + 5
    );
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&state);
}

async fn small_objects() {
    let (source, state) = (temp_dir("small-source"), temp_dir("small-state"));
    let hour = DateHour::parse("2026-11-27-13").unwrap();
    let options = SynthOptions {
        events: SMALL_EVENTS,
        seed: 10_000,
        ..SynthOptions::default()
    };
    let sendable = write_custom_events(&source, hour, SMALL_OBJECTS, &options).unwrap();
    let delay = Duration::from_millis(
        std::env::var("BENCH_HEAP_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0),
    );
    let heap = Standin::start(StandinConfig {
        limits: rate_limits_off(),
        response_delay: delay,
        ..StandinConfig::new("1")
    })
    .await
    .unwrap();
    let args = ["run", "--once", "--lookback", "all"];
    let child = worker(&source, &state, &heap.url(), &args).spawn().unwrap();
    let (status, peak, elapsed) = measure(child).await;
    assert!(status.success(), "the worker failed: {status}");
    assert_eq!(
        heap.stored().len(),
        sendable.len(),
        "every sendable event arrived"
    );
    let requests = heap.report().requests;
    let seconds = elapsed.as_secs_f64();
    let chosen = |var: &str| std::env::var(var).unwrap_or_else(|_| "default".into());
    println!(
        "{SMALL_OBJECTS} objects x {SMALL_EVENTS} events, limits off, Heap answering after {delay:?} (batch linger {}, small-object budget {}): {:.1} s, {:.0} objects/s, {:.0} events/s, {requests} requests, {:.0} events/request, peak RSS {:.1} MiB (goals: >= 300 objects/s, >= 500 events/request)",
        chosen("CURRENTS_HEAP_BATCH_LINGER"),
        chosen("CURRENTS_HEAP_SMALL_OBJECT_BUDGET"),
        seconds,
        SMALL_OBJECTS as f64 / seconds,
        sendable.len() as f64 / seconds,
        sendable.len() as f64 / requests as f64,
        peak as f64 / 1024.0,
    );
    let _ = std::fs::remove_dir_all(&source);
    let _ = std::fs::remove_dir_all(&state);
}
