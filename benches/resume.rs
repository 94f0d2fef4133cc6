//! What a resume costs (issue 19): one object of 100,000 CustomEvents (deflate, 64 KB
//! blocks) stopped at 90 %, run again by `backfill` in process against the stand-in (limits
//! off) three ways:
//! - **no checkpoint** (before issue 19): read and sent from its first event;
//! - **skip in the stream**: a checkpoint at record 90,000 naming the first block, so the
//!   whole object is read and the blocks before the record are skipped by their counts,
//!   never decompressed;
//! - **ranged** (what the worker writes): a checkpoint naming the block that holds record
//!   90,000, so the header and that block onwards are read with two ranged GETs.
//!
//! Measured: bytes read from the source (a counting store around the local one), the time
//! from the start of the run to the first event Heap stores, the events of the first 90 %
//! sent again (Heap had them), and the whole run's time. Median of `BENCH_RUNS` (default 5).
//! `cargo bench --bench resume`.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use currents_heap::currents::container::{BlockStart, ContainerReader};
use currents_heap::currents::key::DateHour;
use currents_heap::heap::client::HeapClient;
use currents_heap::heap::delivery::DeliveryConfig;
use currents_heap::heap::map::{HeapMapper, MappingConfig};
use currents_heap::heap::pacer::RateLimits;
use currents_heap::ledger::{Ledger, Progress};
use currents_heap::store::{
    LocalStore, ObjectMeta, ObjectReader, ObjectStore, Opened, PutCondition, ReadRange,
    StoreFuture, Versioned,
};
use currents_heap::telemetry::Metrics;
use currents_heap::worker::engine::HeapOutput;
use currents_heap::worker::scheduler::{Admission, SMALL_OBJECT_BUDGET};
use currents_heap::worker::{Engine, Outcome, Output, Plan, Settings};
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use currents_heap_testkit::synth::{SynthOptions, write_custom_events};

const EVENTS: usize = 100_000;
const STOPPED_AT: u64 = 90_000;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("currents-heap-resume-{}", std::process::id()));
    let source = dir.join("source");
    let hour = DateHour::from_hours_since_epoch(DateHour::now().hours_since_epoch() - 24 * 30);
    let options = SynthOptions {
        events: EVENTS,
        identities: 20_000,
        null_percent: 0,
        codec: Codec::Deflate(DeflateSettings::default()),
        ..SynthOptions::default()
    };
    write_custom_events(&source, hour, 1, &options).unwrap();
    let object = runtime
        .block_on(LocalStore::new(&source).list(""))
        .unwrap()
        .remove(0);
    let (header_len, holding, before) = layout(&source.join(&object.key));
    println!(
        "one object: {EVENTS} events, {} bytes, header {header_len} bytes; record {STOPPED_AT} is in the block at byte {} (first record {})",
        object.size, holding.offset, holding.first_record
    );
    println!("| resume | bytes read | first event in Heap after | events sent again | run |");
    println!("|---|---:|---:|---:|---:|");
    for (name, checkpoint) in [
        ("none (before issue 19)", None),
        (
            "skip in the stream",
            Some(BlockStart {
                offset: header_len,
                first_record: 0,
            }),
        ),
        ("ranged GETs (the worker's)", Some(holding)),
    ] {
        let mut results = Vec::new();
        for run in 0..runs {
            let state = dir.join(format!("state-{run}-{}", name.len()));
            let _ = std::fs::remove_dir_all(&state);
            std::fs::create_dir_all(&state).unwrap();
            results.push(runtime.block_on(resume(
                &source,
                &state,
                &object,
                hour,
                checkpoint.map(|block| (header_len, block)),
                &before,
            )));
        }
        results.sort_by_key(|r| r.first_event);
        let median = &results[results.len() / 2];
        println!(
            "| {name} | {} | {:.1} ms | {} | {:.2} s |",
            median.bytes,
            median.first_event.as_secs_f64() * 1_000.0,
            median.sent_again,
            median.total.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The header's length, the block that holds record [`STOPPED_AT`], and the ids of the
/// records before it.
fn layout(path: &Path) -> (u64, BlockStart, HashSet<String>) {
    let file = std::fs::File::open(path).unwrap();
    let mut reader = ContainerReader::open(std::io::BufReader::new(file)).unwrap();
    let header_len = reader.header_len();
    let mut before = HashSet::new();
    let mut holding = None;
    let events = currents_heap::currents::decode::EventReader::open(
        std::fs::File::open(path).unwrap(),
        &path.to_string_lossy(),
    );
    let mut events = events.unwrap();
    while events.next_index() < STOPPED_AT {
        let (event, _) = events.next_event().unwrap().unwrap();
        before.insert(event.id.to_string());
    }
    while reader.next_index() <= STOPPED_AT {
        reader.next_record().unwrap().unwrap();
        holding = Some(reader.block_start());
    }
    (header_len, holding.unwrap(), before)
}

struct Measured {
    bytes: u64,
    first_event: Duration,
    sent_again: usize,
    total: Duration,
}

async fn resume(
    source: &Path,
    state: &Path,
    object: &ObjectMeta,
    hour: DateHour,
    checkpoint: Option<(u64, BlockStart)>,
    before: &HashSet<String>,
) -> Measured {
    let state_store = Arc::new(LocalStore::new(state));
    if let Some((header_len, block)) = checkpoint {
        Ledger::new(state_store.clone())
            .record_progress(&Progress {
                key: object.key.clone(),
                size: object.size,
                etag: object.etag.clone(),
                records: STOPPED_AT,
                header_len,
                block_offset: block.offset,
                block_first_record: block.first_record,
                updated_at: "2026-12-04T00:00:00Z".into(),
            })
            .await
            .unwrap();
    }
    let mut config = StandinConfig::new("1");
    config.limits = RateLimits {
        app_events: 0,
        identity_events: 0,
        window: Duration::from_secs(60),
    };
    let standin = Standin::start(config).await.unwrap();
    let counted = Arc::new(Counting {
        inner: LocalStore::new(source),
        bytes: Arc::new(AtomicU64::new(0)),
    });
    let mut delivery = DeliveryConfig::new("1");
    delivery.limits = RateLimits {
        app_events: 0,
        identity_events: 0,
        window: Duration::from_secs(60),
    };
    let output = Output::Heap(Box::new(HeapOutput {
        client: HeapClient::new(&standin.url(), Duration::from_secs(30)).unwrap(),
        config: delivery,
        mapper: HeapMapper::new(MappingConfig::default()),
    }));
    let settings = Settings {
        object_concurrency: Admission::new(4, SMALL_OBJECT_BUDGET),
        shutdown_timeout: Duration::from_secs(30),
        bounded_state_retry: Duration::from_secs(60),
        dry_run: false,
    };
    let next = DateHour::from_hours_since_epoch(hour.hours_since_epoch() + 1);
    let started = Instant::now();
    let engine = Engine::start(
        settings,
        Plan::Range {
            from: hour,
            to: next,
        },
        counted.clone(),
        state_store,
        output,
        Arc::new(Metrics::new()),
    );
    let report = engine.drive(std::future::pending()).await;
    let total = started.elapsed();
    assert_eq!(report.outcome, Outcome::Finished, "{}", report.render());
    let stored = standin.stored();
    let first = stored
        .values()
        .map(|e| e.received_at)
        .min()
        .expect("events reached Heap");
    Measured {
        bytes: counted.bytes.load(Ordering::Relaxed),
        first_event: first.into_std().saturating_duration_since(started),
        sent_again: stored.keys().filter(|id| before.contains(*id)).count(),
        total,
    }
}

/// The local store, counting the bytes its readers hand out.
struct Counting {
    inner: LocalStore,
    bytes: Arc<AtomicU64>,
}

struct CountingReader {
    inner: ObjectReader,
    bytes: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl ObjectStore for Counting {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        self.inner.list(prefix)
    }
    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        self.inner.list_folders(prefix)
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        self.inner.get(key)
    }
    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        Box::pin(async move {
            let opened = self.inner.open_range(key, range).await?;
            Ok(Opened {
                reader: Box::new(CountingReader {
                    inner: opened.reader,
                    bytes: self.bytes.clone(),
                }),
                version: opened.version,
            })
        })
    }
    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        self.inner.put(key, bytes)
    }
    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.inner.delete(key)
    }
    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        self.inner.get_versioned(key)
    }
    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        self.inner.put_if(key, bytes, condition)
    }
}
