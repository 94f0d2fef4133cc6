//! Heap-side throughput on one core, for 100,000 CustomEvents decoded from a synthetic file:
//! - map + serialize: Custom HTTP event → Heap track event JSON bytes (the mapper writes them);
//! - delivery: the whole delivery loop posting bulk requests over loopback HTTP to the
//!   stand-in (rate limits off), client and stand-in sharing one thread.
//!
//! `cargo bench --bench heap`; `BENCH_RUNS` sets the number of timed runs (default 5).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use currents_heap::currents::decode::EventReader;
use currents_heap::currents::event::CustomHttpEvent;
use currents_heap::deadletter::DeadLetterStore;
use currents_heap::heap::client::HeapClient;
use currents_heap::heap::delivery::{Delivery, DeliveryConfig, Submission, Tracker};
use currents_heap::heap::map::{HeapMapper, Mapped, MappingConfig};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::store::LocalStore;
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, synthesize};

const EVENTS: usize = 100_000;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let events = decoded_events();
    let mapper = HeapMapper::new(MappingConfig::default());
    let sendable = events
        .iter()
        .filter(|e| matches!(mapper.map(e), Mapped::Track { .. }))
        .count();
    println!("{EVENTS} CustomEvents, {sendable} with an identity");

    let map_time = median(runs, || {
        let mut bytes = 0;
        for event in &events {
            if let Mapped::Track { event, .. } = mapper.map(event) {
                bytes += black_box(event.json).len();
            }
        }
        bytes
    });
    println!(
        "  map + serialize              {:>9.0} events/s  {:>7.1} ms",
        EVENTS as f64 / map_time.as_secs_f64(),
        ms(map_time)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let delivery_time = median(runs, || runtime.block_on(deliver(&events)));
    println!(
        "  delivery to the stand-in     {:>9.0} events/s  {:>7.1} ms  (limits off, one thread for client and server)",
        sendable as f64 / delivery_time.as_secs_f64(),
        ms(delivery_time)
    );
}

fn decoded_events() -> Vec<CustomHttpEvent> {
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/users.behaviors.CustomEvent.avsc"
    ))
    .unwrap();
    let options = SynthOptions {
        events: EVENTS,
        seed: 9,
        identities: 5_000,
        ..SynthOptions::default()
    };
    let file = synthesize(&schema, "users.behaviors.CustomEvent", &options).unwrap();
    let mut reader = EventReader::open(
        &file.avro[..],
        "event_type=users.behaviors.CustomEvent/x.avro",
    )
    .unwrap();
    let mut events = Vec::with_capacity(EVENTS);
    while let Some((event, _)) = reader.next_event().unwrap() {
        events.push(event);
    }
    events
}

async fn deliver(events: &[CustomHttpEvent]) -> usize {
    let off = RateLimits {
        app_events: 0,
        identity_events: 0,
        window: Duration::from_secs(60),
    };
    let standin = Standin::start(StandinConfig {
        limits: off,
        ..StandinConfig::new("1")
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("currents-heap-bench-{}", std::process::id()));
    let dead_letters = Arc::new(DeadLetterStore::new(Arc::new(LocalStore::lazy(&dir))));
    let client = Arc::new(HeapClient::new(&standin.url(), Duration::from_secs(30)).unwrap());
    let config = DeliveryConfig {
        limits: off,
        concurrency: 4,
        ..DeliveryConfig::new("1")
    };
    let delivery = Delivery::new(
        config,
        client,
        HeapMapper::new(MappingConfig::default()),
        dead_letters,
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let tracker = Arc::new(Tracker::default());
    let owned: Vec<CustomHttpEvent> = events.to_vec();
    let feeder_tracker = tracker.clone();
    let feeder = tokio::spawn(async move {
        let object: Arc<str> = Arc::from("bench.avro");
        for (record, event) in (0u64..).zip(owned) {
            let _ = tx
                .send(Submission {
                    event,
                    object: object.clone(),
                    tracker: feeder_tracker.clone(),
                    record,
                    parts: currents_heap::heap::delivery::Parts::EventAndUpdate,
                })
                .await;
        }
    });
    let metrics = delivery.metrics();
    delivery.run(rx).await.unwrap();
    feeder.await.unwrap();
    assert_eq!(metrics.counts().total().parked, 0);
    assert_eq!(standin.stored().len() as u64, tracker.delivered());
    let _ = std::fs::remove_dir_all(&dir);
    EVENTS
}

fn median(runs: usize, mut f: impl FnMut() -> usize) -> Duration {
    black_box(f());
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
