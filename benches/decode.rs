//! Decode throughput on one core for a 100,000-event CustomEvent file (Braze's largest files).
//!
//! `cargo bench --bench decode` prints events/s per stage, median of several runs:
//! - raw decode: container framing + datum decoding into Avro values (the floor);
//! - decode + map: the above plus mapping to the Custom HTTP event shape;
//! - decode + map + JSON: what `inspect` does per event;
//! - apache-avro `Reader` to `Value`, for reference.
//!
//! Then, over the same ~200,000 mixed events (all 13 `users.behaviors.*` types, written as
//! files), in one run so the ratio is not skewed by the machine's mood:
//! - `inspect`: decode + Custom HTTP JSON line, through the command's own function;
//! - `inspect --heap`: decode + Heap mapping + track event JSON line, likewise;
//! - delivery's intake per event, on events decoded beforehand: map to the track event's JSON,
//!   and (as intake did before it deferred it) serialize the original for dead letters.
//!
//! Set `BENCH_RUNS` to change the number of timed runs (default 7). Pass a word to run only
//! the sections whose name contains it: `cargo bench --bench decode -- mixed`.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use currents_heap::commands::inspect::{Output, inspect};
use currents_heap::currents::container::ContainerReader;
use currents_heap::currents::decode::EventReader;
use currents_heap::currents::event::CustomHttpEvent;
use currents_heap::heap::delivery::{BodyLimit, Disposer};
use currents_heap::heap::map::{HeapMapper, Mapped, MappingConfig};
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings};
use currents_heap_testkit::fixtures::BEHAVIOR_TYPES;
use currents_heap_testkit::synth::{SynthOptions, synthesize};

const EVENTS: usize = 100_000;
const OBJECT: &str = "event_type=users.behaviors.CustomEvent/date=2026-11-27-13/x.avro";

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|w| section.contains(w));
    if wanted("customevent") {
        custom_event_file(runs);
    }
    if wanted("mixed") {
        mixed(runs);
    }
}

fn custom_event_file(runs: usize) {
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/users.behaviors.CustomEvent.avsc"
    ))
    .unwrap();
    for (label, codec) in [
        ("null", Codec::Null),
        ("deflate", Codec::Deflate(DeflateSettings::default())),
    ] {
        let file = synthesize(
            &schema,
            "users.behaviors.CustomEvent",
            &SynthOptions {
                events: EVENTS,
                codec,
                seed: 7,
                ..SynthOptions::default()
            },
        )
        .unwrap();
        let avro = file.avro;
        println!(
            "CustomEvent x {EVENTS}, codec {label}, {} bytes ({} B/event)",
            avro.len(),
            avro.len() / EVENTS
        );
        let raw = measure(runs, || {
            let mut reader = ContainerReader::open(&avro[..]).unwrap();
            let mut n = 0;
            while let Some(record) = reader.next_record().unwrap() {
                black_box(record);
                n += 1;
            }
            n
        });
        let mapped = measure(runs, || {
            let mut reader = EventReader::open(&avro[..], OBJECT).unwrap();
            let mut n = 0;
            while let Some(event) = reader.next_event().unwrap() {
                black_box(event);
                n += 1;
            }
            n
        });
        let mut out = Vec::with_capacity(avro.len() * 4);
        let json = measure(runs, || {
            out.clear();
            let mut reader = EventReader::open(&avro[..], OBJECT).unwrap();
            let mut n = 0;
            while let Some((event, _)) = reader.next_event().unwrap() {
                serde_json::to_writer(&mut out, &event).unwrap();
                out.push(b'\n');
                n += 1;
            }
            n
        });
        let reference = measure(runs, || {
            let mut n = 0;
            for value in currents_heap_testkit::apache_avro::Reader::new(&avro[..]).unwrap() {
                black_box(value.unwrap());
                n += 1;
            }
            n
        });
        report("raw decode (floor)", raw, raw);
        report("decode + map to Custom HTTP", mapped, raw);
        report("decode + map + JSON line", json, raw);
        report("apache-avro Reader -> Value", reference, raw);
        println!();
    }
}

/// Events per type in the mixed set (~200,000 in all): the JSON-properties types and the
/// session events dominate, as in a typical app's export.
fn mixed_count(event_type: &str) -> usize {
    match event_type {
        "users.behaviors.CustomEvent" => 66_000,
        "users.behaviors.app.SessionStart" | "users.behaviors.app.SessionEnd" => 30_000,
        "users.behaviors.Purchase" => 20_000,
        _ => 6_000,
    }
}

/// Writes the mixed set as one file per type under `dir`, in Braze's `event_type=` layout.
fn write_mixed(dir: &Path) -> (usize, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (mut events, mut bytes) = (0, 0);
    for (i, event_type) in BEHAVIOR_TYPES.iter().enumerate() {
        let schema = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{event_type}.avsc")),
        )
        .unwrap();
        let count = mixed_count(event_type);
        let file = synthesize(
            &schema,
            event_type,
            &SynthOptions {
                events: count,
                seed: 100 + i as u64,
                identities: 5_000,
                ..SynthOptions::default()
            },
        )
        .unwrap();
        let path = dir.join(format!("event_type={event_type}/date=2026-11-27-13/x.avro"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.avro).unwrap();
        events += count;
        bytes += file.avro.len() as u64;
    }
    (events, bytes)
}

/// `inspect` against `inspect --heap` on the same files, and delivery's per-event work.
fn mixed(runs: usize) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-mixed");
    let (events, bytes) = write_mixed(&dir);
    println!(
        "mixed: {events} events of {} types, null codec, {bytes} bytes",
        BEHAVIOR_TYPES.len()
    );
    let paths = [dir.clone()];
    let custom_http = Output::CustomHttp;
    let heap = Output::Heap(Disposer::new(
        HeapMapper::new(MappingConfig::default()),
        BodyLimit::unknown_app(1 << 20),
    ));
    let mut out = Vec::with_capacity(bytes as usize * 3);
    let mut printed = 0;
    let mut run_inspect = |output: &Output| {
        out.clear();
        let report = inspect(&paths, output, &mut out).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        printed = out.iter().filter(|&&b| b == b'\n').count();
        report.events as usize
    };
    // Interleaved, so that both see the same machine.
    let mut inspect_times = Vec::new();
    let mut heap_times = Vec::new();
    run_inspect(&custom_http);
    run_inspect(&heap);
    for _ in 0..runs {
        inspect_times.push(timed(events, || run_inspect(&custom_http)));
        heap_times.push(timed(events, || run_inspect(&heap)));
    }
    let sent = printed;
    let (a, b) = (median_of(inspect_times), median_of(heap_times));
    report_mixed("inspect (decode + JSON)", events, a, a);
    report_mixed("inspect --heap (decode + map + JSON)", events, b, a);
    println!(
        "  inspect --heap / inspect = {:.2} ({sent} of {events} events have an identity)",
        b.as_secs_f64() / a.as_secs_f64()
    );

    // Delivery's intake, per event, timed one decoded file at a time (not all in memory).
    let mapper = HeapMapper::new(MappingConfig::default());
    let mut intake = vec![Duration::ZERO; runs];
    let mut intake_with_original = vec![Duration::ZERO; runs];
    for file in avro_files(&dir) {
        let avro = std::fs::read(&file).unwrap();
        let name = file.display().to_string();
        let mut reader = EventReader::open(&avro[..], &name).unwrap();
        let mut decoded: Vec<CustomHttpEvent> = Vec::new();
        while let Some((event, _)) = reader.next_event().unwrap() {
            decoded.push(event);
        }
        for run in 0..runs {
            // What `Delivery::intake` does: the mapper writes the JSON that is queued.
            intake[run] += timed_once(|| {
                let mut bytes = 0;
                for event in &decoded {
                    if let Mapped::Track { event, .. } = mapper.map(event) {
                        bytes += black_box(event.json).len();
                    }
                }
                bytes
            });
            // What it did before: the original was also serialized, for a dead letter.
            intake_with_original[run] += timed_once(|| {
                let mut bytes = 0;
                for event in &decoded {
                    if let Mapped::Track { event: track, .. } = mapper.map(event) {
                        bytes += black_box(track.json).len();
                        bytes += black_box(serde_json::to_vec(event).unwrap()).len();
                    }
                }
                bytes
            });
        }
    }
    report_mixed("delivery intake: map to JSON", events, median_of(intake), a);
    report_mixed(
        "  + serialize the original (before)",
        events,
        median_of(intake_with_original),
        a,
    );
    println!();
    // The files stay under target/tmp, for profiling: `inspect --heap target/tmp/bench-mixed`.
}

fn avro_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(avro_files(&path));
        } else if path.extension().is_some_and(|e| e == "avro") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn timed(expected: usize, f: impl FnOnce() -> usize) -> Duration {
    let start = Instant::now();
    assert_eq!(f(), expected);
    start.elapsed()
}

fn timed_once(f: impl FnOnce() -> usize) -> Duration {
    let start = Instant::now();
    black_box(f());
    start.elapsed()
}

fn median_of(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn report_mixed(stage: &str, events: usize, time: Duration, inspect: Duration) {
    println!(
        "  {stage:<38} {:>10.0} events/s  {:>7.1} ms  {:>5.2}x inspect",
        events as f64 / time.as_secs_f64(),
        time.as_secs_f64() * 1000.0,
        time.as_secs_f64() / inspect.as_secs_f64()
    );
}

/// Median wall time of `runs` timed runs, after one warm-up run.
fn measure(runs: usize, mut f: impl FnMut() -> usize) -> Duration {
    assert_eq!(f(), EVENTS);
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            assert_eq!(f(), EVENTS);
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn report(stage: &str, time: Duration, floor: Duration) {
    println!(
        "  {stage:<30} {:>10.0} events/s  {:>7.1} ms  {:>5.2}x floor",
        EVENTS as f64 / time.as_secs_f64(),
        time.as_secs_f64() * 1000.0,
        time.as_secs_f64() / floor.as_secs_f64()
    );
}
