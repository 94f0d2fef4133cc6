//! What `run`, `backfill` and `replay` share: the options, opening the stores, the delivery
//! task, a scheduler for objects in flight, the summary, and the exit codes.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::MappingArgs;
use crate::deadletter::DeadLetterStore;
use crate::heap::client::HeapClient;
use crate::heap::delivery::{Delivery, DeliveryConfig, DeliveryError, DeliveryStats, Submission};
use crate::heap::map::HeapMapper;
use crate::heap::pacer::RateLimits;
use crate::heap::retry::RetryPolicy;
use crate::ledger::Ledger;
use crate::pipeline::{LedgerWriteError, ObjectResult, Pipeline, Sink};
use crate::store::{Location, ObjectMeta, ObjectStore};

/// How a command ended, as an exit code.
#[derive(Debug)]
pub enum Exit {
    /// 0: everything was delivered or skipped by policy.
    Success,
    /// 3: something was parked as a dead letter, or an object failed.
    Parked,
    /// 2: a usage or configuration error, found before any work started.
    Usage(String),
    /// 1: any other fatal error.
    Fatal(String),
}

/// Where Currents objects and state live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Currents objects: `s3://bucket/prefix`, or a local directory in the same layout.
    #[arg(long, env = "CURRENTS_HEAP_SOURCE", default_value = "fixtures/bucket")]
    pub source: Location,
    /// The ledger and dead letters: `s3://bucket/prefix`, or a local directory.
    #[arg(
        long,
        env = "CURRENTS_HEAP_STATE",
        default_value = "currents-heap-state"
    )]
    pub state: Location,
    /// Path-style S3 addressing, for S3-compatible stores (MinIO, ...).
    #[arg(long, env = "CURRENTS_HEAP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
}

/// Heap's endpoint, limits and retry behaviour.
#[derive(Debug, Clone, Args)]
pub struct HeapArgs {
    /// Heap's API base URL; EU data centre: https://c.eu.heap-api.com.
    #[arg(
        long,
        env = "HEAP_API_URL",
        default_value = "https://heapanalytics.com"
    )]
    pub heap_url: String,
    /// The Heap environment (app) id. Required unless --dry-run. Never logged.
    #[arg(long, env = "HEAP_APP_ID", hide_env_values = true)]
    pub heap_app_id: Option<String>,
    /// A file holding the Heap app id (e.g. a mounted Kubernetes secret).
    #[arg(long, env = "HEAP_APP_ID_FILE")]
    pub heap_app_id_file: Option<std::path::PathBuf>,
    /// Events per minute for the app over any sliding minute (Heap: 15,000); 0 disables.
    #[arg(long, env = "CURRENTS_HEAP_APP_RATE_LIMIT", default_value_t = 15_000)]
    pub app_rate_limit: u64,
    /// Events per minute per identity over any sliding minute (Heap: 1,000); 0 disables.
    #[arg(
        long,
        env = "CURRENTS_HEAP_IDENTITY_RATE_LIMIT",
        default_value_t = 1_000
    )]
    pub identity_rate_limit: u64,
    /// Events per bulk request (Heap allows 1 to 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_batch_events: u64,
    /// Bytes per request body; an event that cannot fit alone is parked.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests to Heap in flight at once.
    #[arg(long, env = "CURRENTS_HEAP_HEAP_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub heap_concurrency: u64,
    /// How long a failing batch is retried before its events are parked (e.g. 15m).
    #[arg(long, env = "CURRENTS_HEAP_RETRY_MAX_TIME", default_value = "15m", value_parser = parse_duration)]
    pub retry_max_time: Duration,
    /// Mapped events held in memory waiting for rate-limit room. More lets one hot identity's
    /// backlog wait without holding up others for longer; fewer uses less memory.
    #[arg(long, env = "CURRENTS_HEAP_MAX_PENDING", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1000..))]
    pub max_pending_events: u64,
    /// Timeout of one request to Heap.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
}

/// Options every delivering command takes.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub stores: StoreArgs,
    #[command(flatten)]
    pub heap: HeapArgs,
    #[command(flatten)]
    pub mapping: MappingArgs,
    /// Decode, map and count, but send nothing and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Currents objects processed at once.
    #[arg(long, env = "CURRENTS_HEAP_OBJECT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub object_concurrency: u64,
}

/// `30s`, `15m`, `2h`, `500ms`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m or 2h"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{text}` is not a duration like 30s, 15m or 2h")),
    })
}

/// The Heap app id from `--heap-app-id`/`HEAP_APP_ID` or the file named by `--heap-app-id-file`.
fn app_id(heap: &HeapArgs) -> Result<String, Exit> {
    let from_file = match &heap.heap_app_id_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Exit::Usage(format!("--heap-app-id-file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    heap.heap_app_id
        .clone()
        .or(from_file)
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            Exit::Usage(
                "the Heap app id is missing: set HEAP_APP_ID, --heap-app-id or --heap-app-id-file (or use --dry-run)".into(),
            )
        })
}

/// The opened stores and, unless dry-running, the delivery task.
pub struct Worker {
    pub source: Arc<dyn ObjectStore>,
    pub ledger: Arc<Ledger>,
    pub dead_letters: Arc<DeadLetterStore>,
    pub pipeline: Arc<Pipeline>,
    pub dry_run: bool,
    delivery: Option<JoinHandle<(DeliveryStats, Result<(), DeliveryError>)>>,
    /// Cancelled if delivery stops on its own (a fatal answer from Heap).
    pub delivery_stopped: CancellationToken,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

impl Worker {
    /// Checks the configuration and opens everything; any problem is a usage error (exit 2).
    pub async fn start(args: &WorkerArgs) -> Result<Worker, Exit> {
        if let Location::Local(path) = &args.stores.source
            && !path.is_dir()
        {
            return Err(Exit::Usage(format!(
                "--source {}: no such directory",
                path.display()
            )));
        }
        let source = args
            .stores
            .source
            .open(args.stores.s3_path_style)
            .await
            .map_err(|e| Exit::Usage(e.to_string()))?;
        let state = args
            .stores
            .state
            .open(args.stores.s3_path_style)
            .await
            .map_err(|e| Exit::Usage(e.to_string()))?;
        let ledger = Arc::new(Ledger::new(state.clone()));
        let dead_letters = Arc::new(DeadLetterStore::new(state));
        let mapper = HeapMapper::new(args.mapping.config());
        let delivery_stopped = CancellationToken::new();
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        if args.dry_run {
            let pipeline = Arc::new(Pipeline {
                source: source.clone(),
                ledger: ledger.clone(),
                sink: Sink::DryRun(Arc::new(mapper)),
            });
            return Ok(Worker {
                source,
                ledger,
                dead_letters,
                pipeline,
                dry_run: true,
                delivery: None,
                delivery_stopped,
                metrics,
            });
        }
        let app_id = app_id(&args.heap)?;
        let client = HeapClient::new(&args.heap.heap_url, args.heap.request_timeout)
            .map_err(|e| Exit::Usage(e.to_string()))?;
        let config = DeliveryConfig {
            limits: RateLimits {
                app_events: args.heap.app_rate_limit,
                identity_events: args.heap.identity_rate_limit,
                window: Duration::from_secs(60),
            },
            max_batch_events: args.heap.max_batch_events as usize,
            max_body_bytes: args.heap.max_body_bytes,
            concurrency: args.heap.heap_concurrency as usize,
            max_pending: args.heap.max_pending_events as usize,
            retry: RetryPolicy {
                max_elapsed: args.heap.retry_max_time,
                ..RetryPolicy::default()
            },
            ..DeliveryConfig::new(app_id)
        };
        // Small: a slow Heap should stop decoding soon, not fill memory with decoded events.
        let (tx, rx) = mpsc::channel(256);
        let delivery = Delivery::new(config, Arc::new(client), mapper, dead_letters.clone())
            .with_metrics(metrics.clone());
        let stopped = delivery_stopped.clone();
        let handle = tokio::spawn(async move {
            let outcome = delivery.run(rx).await;
            stopped.cancel();
            outcome
        });
        let pipeline = Arc::new(Pipeline {
            source: source.clone(),
            ledger: ledger.clone(),
            sink: Sink::Deliver(tx),
        });
        Ok(Worker {
            source,
            ledger,
            dead_letters,
            pipeline,
            dry_run: false,
            delivery: Some(handle),
            delivery_stopped,
            metrics,
        })
    }

    /// A sender for events that do not come from objects (replay).
    pub fn sender(&self) -> Option<mpsc::Sender<Submission>> {
        match &self.pipeline.sink {
            Sink::Deliver(tx) => Some(tx.clone()),
            Sink::DryRun(_) => None,
        }
    }

    /// Closes the input, lets delivery drain (or aborts it if `abandon` fires), and returns
    /// its stats and how it ended.
    pub async fn finish(
        self,
        abandon: &CancellationToken,
    ) -> (DeliveryStats, Result<(), DeliveryError>) {
        let Worker {
            pipeline, delivery, ..
        } = self;
        drop(pipeline);
        let Some(mut handle) = delivery else {
            return (DeliveryStats::default(), Ok(()));
        };
        tokio::select! {
            joined = &mut handle => joined.unwrap_or_else(|e| (DeliveryStats::default(), Err(DeliveryError::Task(e.to_string())))),
            _ = abandon.cancelled() => {
                handle.abort();
                (DeliveryStats::default(), Ok(()))
            }
        }
    }
}

/// Work for the scheduler.
pub enum Work {
    Object(ObjectMeta),
    OutsideLayout(ObjectMeta),
}

impl Work {
    fn key(&self) -> &str {
        match self {
            Work::Object(m) | Work::OutsideLayout(m) => &m.key,
        }
    }
}

/// Runs objects through the pipeline, a bounded number at a time.
pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    limit: usize,
    abandon: CancellationToken,
    queue: VecDeque<Work>,
    in_progress: HashSet<String>,
    tasks: tokio::task::JoinSet<Result<ObjectResult, LedgerWriteError>>,
}

impl Scheduler {
    pub fn new(pipeline: Arc<Pipeline>, limit: usize, abandon: CancellationToken) -> Self {
        Scheduler {
            pipeline,
            limit,
            abandon,
            queue: VecDeque::new(),
            in_progress: HashSet::new(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Queues work unless the same key is queued or in flight already.
    pub fn enqueue(&mut self, work: Work) {
        if self.in_progress.insert(work.key().to_string()) {
            self.queue.push_back(work);
            self.fill();
        }
    }

    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.tasks.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Stops starting queued work (shutdown: stop fetching).
    pub fn clear_queue(&mut self) {
        for work in self.queue.drain(..) {
            self.in_progress.remove(work.key());
        }
    }

    fn fill(&mut self) {
        while self.tasks.len() < self.limit {
            let Some(work) = self.queue.pop_front() else {
                return;
            };
            let (pipeline, abandon) = (self.pipeline.clone(), self.abandon.clone());
            self.tasks.spawn(async move {
                match work {
                    Work::Object(meta) => pipeline.process(&meta, &abandon).await,
                    Work::OutsideLayout(meta) => pipeline.record_outside_layout(&meta).await,
                }
            });
        }
    }

    /// The next finished object, or `None` when nothing is in flight.
    pub async fn next(&mut self) -> Option<Result<ObjectResult, LedgerWriteError>> {
        let joined = self.tasks.join_next().await?;
        let result = joined.unwrap_or_else(|e| {
            Ok(ObjectResult::Abandoned {
                key: format!("(task failed: {e})"),
            })
        });
        if let Ok(result) = &result {
            let key = match result {
                ObjectResult::Done(e) | ObjectResult::Failed(e) => &e.key,
                ObjectResult::Retry { key, .. } | ObjectResult::Abandoned { key } => key,
            };
            self.in_progress.remove(key);
        }
        self.fill();
        Some(result)
    }
}

/// Per event type and overall counts for the closing report.
#[derive(Debug, Default)]
pub struct Summary {
    pub objects_done: u64,
    pub objects_failed: u64,
    pub objects_retry: u64,
    pub objects_abandoned: u64,
    pub events: u64,
    pub delivered: u64,
    pub skipped: u64,
    pub parked: u64,
    pub per_type: BTreeMap<String, [u64; 4]>,
    pub failures: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, result: &ObjectResult) {
        match result {
            ObjectResult::Done(entry) | ObjectResult::Failed(entry) => {
                if matches!(result, ObjectResult::Done(_)) {
                    self.objects_done += 1;
                } else {
                    self.objects_failed += 1;
                    self.failures.push(format!(
                        "{}: {}",
                        entry.key,
                        entry.reason.as_deref().unwrap_or("failed")
                    ));
                }
                self.events += entry.events;
                self.delivered += entry.delivered;
                self.skipped += entry.skipped;
                self.parked += entry.parked;
                let event_type = crate::currents::key::CurrentsKey::parse(&entry.key)
                    .event_type
                    .unwrap_or("(outside the layout)");
                let counts = self.per_type.entry(event_type.to_string()).or_default();
                for (slot, n) in counts.iter_mut().zip([
                    entry.events,
                    entry.delivered,
                    entry.skipped,
                    entry.parked,
                ]) {
                    *slot += n;
                }
            }
            ObjectResult::Retry { key, reason } => {
                self.objects_retry += 1;
                tracing::warn!(object = %key, "could not read the object; it will be tried again: {reason}");
            }
            ObjectResult::Abandoned { .. } => self.objects_abandoned += 1,
        }
    }

    /// Prints the report on stdout.
    pub fn print(&self, dry_run: bool) {
        let sent = if dry_run { "would be sent" } else { "sent" };
        let parked = if dry_run { "would be parked" } else { "parked" };
        println!(
            "objects: {} done, {} failed, {} to retry, {} abandoned",
            self.objects_done, self.objects_failed, self.objects_retry, self.objects_abandoned
        );
        println!(
            "events: {} read, {} {sent}, {} skipped (no identity), {} {parked}",
            self.events, self.delivered, self.skipped, self.parked
        );
        for (event_type, [read, delivered, skipped, parked_n]) in &self.per_type {
            println!(
                "  {event_type}: {read} read, {delivered} {sent}, {skipped} skipped, {parked_n} {parked}"
            );
        }
        for failure in &self.failures {
            println!("failed: {failure}");
        }
    }

    pub fn exit(&self) -> Exit {
        if self.parked > 0 || self.objects_failed > 0 {
            Exit::Parked
        } else {
            Exit::Success
        }
    }
}

/// Prints what delivery did beyond the per-type counts (nothing in a dry run).
pub fn print_delivery(stats: &DeliveryStats) {
    if stats.requests.is_empty() {
        return;
    }
    let mut statuses: Vec<String> = stats
        .requests
        .iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect();
    statuses.sort();
    println!(
        "heap: {} requests ({}), {} retries, {} bisections, {} rate-limit waits ({}s), {} values cut to 1023 characters, {} colliding custom properties dropped",
        stats.requests.values().sum::<u64>(),
        statuses.join(", "),
        stats.retries,
        stats.bisections,
        stats.pacing_waits,
        stats.pacing_wait_time.as_secs(),
        stats.truncated_values,
        stats.collisions_dropped
    );
}

/// The final exit, given the summary and how delivery ended.
pub fn conclude(summary: &Summary, delivery: Result<(), DeliveryError>) -> Exit {
    match delivery {
        Err(e) => Exit::Fatal(e.to_string()),
        Ok(()) => summary.exit(),
    }
}

/// How far back `run` and `status` look, in `date=` hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    All,
    Hours(u64),
}

impl std::str::FromStr for Lookback {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "all" {
            return Ok(Lookback::All);
        }
        let duration = parse_duration(text)
            .map_err(|_| format!("`{text}` is not a lookback like 72h or `all`"))?;
        Ok(Lookback::Hours(duration.as_secs().div_ceil(3600).max(1)))
    }
}

impl Lookback {
    /// The window up to the current hour (and one ahead, for clock skew).
    pub fn window(self) -> crate::source::Window {
        use crate::currents::key::DateHour;
        match self {
            Lookback::All => crate::source::Window::All,
            Lookback::Hours(hours) => {
                let now = DateHour::now().hours_since_epoch();
                crate::source::Window::Hours {
                    from: DateHour::from_hours_since_epoch(now - hours as i64),
                    to: DateHour::from_hours_since_epoch(now + 2),
                }
            }
        }
    }
}

/// Discovers the window and queues what the ledger has not finished. The ledger is listed
/// once per `date=` folder found, so the cost follows the window, not the history.
/// What a poll found that is not finished: queued now or already in flight.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub count: usize,
    pub oldest: Option<crate::currents::key::DateHour>,
}

pub async fn queue_unfinished(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    window: &crate::source::Window,
    scheduler: &mut Scheduler,
) -> Result<Unfinished, crate::store::StoreError> {
    let discovery = crate::source::discover(source, window).await?;
    let mut by_folder: BTreeMap<&str, Vec<&crate::source::CurrentsObject>> = BTreeMap::new();
    for object in &discovery.objects {
        let folder = object.key.rsplit_once('/').map_or("", |(folder, _)| folder);
        by_folder.entry(folder).or_default().push(object);
    }
    let mut unfinished = Unfinished::default();
    for (folder, objects) in by_folder {
        let finished = ledger.finished(&format!("{folder}/")).await?;
        for object in objects.into_iter().filter(|o| !finished.contains(o)) {
            let meta = ObjectMeta {
                key: object.key.clone(),
                size: object.size,
                etag: object.etag.clone(),
            };
            scheduler.enqueue(Work::Object(meta));
            unfinished.count += 1;
            unfinished.oldest = Some(
                unfinished
                    .oldest
                    .map_or(object.date, |o| o.min(object.date)),
            );
        }
    }
    for meta in discovery.outside_layout {
        if ledger
            .finished(&meta.key)
            .await?
            .outcome(&meta.key, meta.size, &meta.etag)
            .is_none()
        {
            scheduler.enqueue(Work::OutsideLayout(meta));
            unfinished.count += 1;
        }
    }
    Ok(unfinished)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
