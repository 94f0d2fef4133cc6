//! Decode throughput on one core for a 100,000-event CustomEvent file (Braze's largest files).
//!
//! `cargo bench --bench decode` prints events/s per stage, median of several runs:
//! - raw decode: container framing + datum decoding into Avro values (the floor);
//! - decode + map: the above plus mapping to the Custom HTTP event shape;
//! - decode + map + JSON: what `inspect` does per event;
//! - apache-avro `Reader` to `Value`, for reference.
//!
//! Set `BENCH_RUNS` to change the number of timed runs (default 7).

use std::hint::black_box;
use std::time::{Duration, Instant};

use currents_heap::currents::container::ContainerReader;
use currents_heap::currents::decode::EventReader;
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings};
use currents_heap_testkit::synth::{SynthOptions, synthesize};

const EVENTS: usize = 100_000;
const OBJECT: &str = "event_type=users.behaviors.CustomEvent/date=2026-11-27-13/x.avro";

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
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
