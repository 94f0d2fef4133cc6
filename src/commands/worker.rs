//! The options `run`, `backfill` and `replay` share, and building the engine from the
//! resolved configuration: the one place where it becomes `worker::Settings` and
//! `DeliveryConfig`.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::MappingArgs;
use super::config::{Config, DEFAULTS, HumanDuration, as_text, heap_app_id};
use crate::clock::unix_secs_now;
use crate::handover::Heartbeat;
use crate::handover::lease::{LeaseClient, LeaseTimings, Role, Takeover};
use crate::heap::client::HeapClient;
use crate::heap::delivery::HistoryTap;
use crate::heap::delivery::{BodyLimit, DeliveryConfig, Disposer};
use crate::heap::map::HeapMapper;
use crate::heap::pacer::{RateLimits, Seed, SentHistory};
use crate::heap::retry::RetryPolicy;
use crate::notifications::sqs::SqsQueue;
use crate::store::{LocalStore, Location, ObjectStore};
use crate::telemetry::Metrics;
use crate::worker::engine::{HeapOutput, Notifications};
use crate::worker::listener::ListenerSettings;
use crate::worker::scheduler::Admission;
use crate::worker::{Engine, Outcome, Output, Plan, Settings};

/// How a command ended, as an exit code (docs/reference/exit-codes.md and `--help` list them). [`Exit::code`]
/// is the one place the codes are written; an engine's [`Outcome`] becomes an `Exit` by
/// `From`.
#[derive(Debug)]
pub enum Exit {
    /// 0: everything asked for is finished (or a long-lived `run` was stopped).
    Success,
    /// 3: something was parked as a dead letter, or an object failed.
    Parked,
    /// 2: a usage or configuration error, found before any work started.
    Usage(String),
    /// 1: fatal; the message says what to fix.
    Fatal(String),
    /// 4: a bounded run stopped before its work was done; running it again resumes.
    Incomplete(String),
}

impl Exit {
    /// The process's exit code. When several apply, the documented precedence (1, then 4, then
    /// 3) is decided before: the engine's outcome and a handed-over range's final state each
    /// name one.
    pub fn code(&self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Fatal(_) => 1,
            Exit::Usage(_) => 2,
            Exit::Parked => 3,
            Exit::Incomplete(_) => 4,
        }
    }
}

// Each option's help states its range: `Config::validate` enforces it for flags, environment
// variables and the file alike (a unit test checks that the help and the bounds agree).

/// Where Currents objects and state live.
#[derive(Debug, Clone, Args, Serialize)]
pub struct StoreArgs {
    /// Currents objects: `s3://bucket/prefix`, `az://container/prefix`, `gs://bucket/prefix`,
    /// or a local directory in the same layout.
    #[arg(long, env = "CURRENTS_HEAP_SOURCE", default_value_t = DEFAULTS.source.clone())]
    #[serde(with = "as_text")]
    source: Location,
    #[command(flatten)]
    #[serde(flatten)]
    state: StateArgs,
}

/// Where the ledger and dead letters live (all `replay` needs besides Heap).
#[derive(Debug, Clone, Args, Serialize)]
pub struct StateArgs {
    /// The ledger and dead letters: `s3://`, `az://` or `gs://` `bucket/prefix`, or a local
    /// directory.
    #[arg(long, env = "CURRENTS_HEAP_STATE", default_value_t = DEFAULTS.state.clone())]
    #[serde(with = "as_text")]
    state: Location,
    /// Path-style S3 addressing, for S3-compatible stores (MinIO, ...).
    #[arg(long, env = "CURRENTS_HEAP_S3_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    s3_path_style: bool,
}

/// Heap's endpoint, limits and retry behaviour.
#[derive(Debug, Clone, Args, Serialize)]
pub struct HeapArgs {
    /// Heap's API base URL; EU data centre: https://c.eu.heap-api.com.
    #[arg(long, env = "HEAP_API_URL", default_value_t = DEFAULTS.heap_url.clone())]
    heap_url: String,
    /// The Heap environment (app) id. Required unless --dry-run. Never logged, never read
    /// from the config file.
    #[arg(long, env = "HEAP_APP_ID", hide_env_values = true)]
    #[serde(skip)]
    pub(super) heap_app_id: Option<String>,
    /// A file holding the Heap app id (e.g. a mounted Kubernetes secret).
    #[arg(long, env = "HEAP_APP_ID_FILE")]
    heap_app_id_file: Option<std::path::PathBuf>,
    /// Events per minute for the app over any sliding minute (Heap: 15,000), 0 to 1,000,000;
    /// 0 disables the limit.
    #[arg(long, env = "CURRENTS_HEAP_APP_RATE_LIMIT", default_value_t = DEFAULTS.app_rate_limit)]
    app_rate_limit: u64,
    /// Events per minute per identity over any sliding minute (Heap: 1,000), 0 to 1,000,000;
    /// 0 disables the limit.
    #[arg(long, env = "CURRENTS_HEAP_IDENTITY_RATE_LIMIT", default_value_t = DEFAULTS.identity_rate_limit)]
    identity_rate_limit: u64,
    /// Events per bulk request, 1 to 1,000 (Heap's limit).
    #[arg(long, default_value_t = DEFAULTS.max_batch_events)]
    max_batch_events: u64,
    /// Bytes per request body, 16,384 to 16,777,216 (16 KiB to 16 MiB); an event that cannot
    /// fit alone is parked.
    #[arg(long, default_value_t = DEFAULTS.max_body_bytes)]
    max_body_bytes: u64,
    /// Requests to Heap in flight at once, 1 to 64.
    #[arg(long, env = "CURRENTS_HEAP_HEAP_CONCURRENCY", default_value_t = DEFAULTS.heap_concurrency)]
    heap_concurrency: u64,
    /// How long a failing batch is retried before its events are parked, 1s to 24h (e.g.
    /// 15m, 1h 30m); `run --once` and `backfill` also give up on a failing state store after it.
    #[arg(long, env = "CURRENTS_HEAP_RETRY_MAX_TIME", default_value_t = DEFAULTS.retry_max_time.clone())]
    retry_max_time: HumanDuration,
    /// Mapped events held in memory waiting for rate-limit room, 1,000 to 1,000,000. More
    /// lets one hot identity's backlog wait without holding up others for longer; fewer uses
    /// less memory.
    #[arg(long, env = "CURRENTS_HEAP_MAX_PENDING", default_value_t = DEFAULTS.max_pending_events)]
    max_pending_events: u64,
    /// Timeout of one request to Heap, 1s to 10m.
    #[arg(long, default_value_t = DEFAULTS.request_timeout.clone())]
    request_timeout: HumanDuration,
}

/// Options every delivering command takes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct WorkerArgs {
    #[command(flatten)]
    #[serde(flatten)]
    stores: StoreArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) heap: HeapArgs,
    #[command(flatten)]
    #[serde(flatten)]
    mapping: MappingArgs,
    /// Decode, map and count, but send nothing and record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Currents objects processed at once whatever their size, 1 to 256.
    #[arg(long, env = "CURRENTS_HEAP_OBJECT_CONCURRENCY", default_value_t = DEFAULTS.object_concurrency)]
    object_concurrency: u64,
    /// Bytes, 0 to 268,435,456 (256 MiB): more objects than --object-concurrency, up to 256,
    /// are processed at once while the stored sizes of all in flight stay within this, so
    /// that many small objects are not held up by Heap's round trips; 0 turns it off.
    #[arg(long, env = "CURRENTS_HEAP_SMALL_OBJECT_BUDGET", default_value_t = DEFAULTS.small_object_budget)]
    small_object_budget: u64,
    /// How long events that cannot fill a request wait for more, from the oldest, 0s to 5s
    /// (e.g. 100ms), so that small objects share requests; 0 sends them at once.
    #[arg(long, env = "CURRENTS_HEAP_BATCH_LINGER", default_value_t = DEFAULTS.batch_linger.clone())]
    batch_linger: HumanDuration,
    /// How long a standby waits, after it last saw the lease change, before it takes over
    /// from a holder that stopped renewing, 3s to 5m.
    #[arg(long, env = "CURRENTS_HEAP_LEASE_DURATION", default_value_t = DEFAULTS.lease_duration.clone())]
    lease_duration: HumanDuration,
    /// Only ever one process sends to this Heap app: use no lease (for a state store that
    /// does not honour conditional writes). Two processes with this flag both send.
    #[arg(long, env = "CURRENTS_HEAP_SINGLE_PROCESS", value_parser = clap::builder::BoolishValueParser::new())]
    single_process: bool,
}

/// The Heap app id from `--heap-app-id`/`HEAP_APP_ID` (checked when the configuration was
/// resolved) or the file named by `heap_app_id_file`, checked by the same rule.
pub fn app_id(config: &Config) -> Result<String, Exit> {
    if let Some(id) = &config.heap_app_id {
        return Ok(id.expose().to_string());
    }
    let from_file = match &config.heap_app_id_file {
        Some(path) => {
            let name = format!("the Heap app id file {}", path.display());
            let text =
                std::fs::read_to_string(path).map_err(|e| Exit::Usage(format!("{name}: {e}")))?;
            // Given but empty (a secret mounted before it was filled): name the file, not
            // the ways to give an id, one of which was used.
            let id = heap_app_id(&text, &name).map_err(Exit::Usage)?;
            if id.is_none() {
                return Err(Exit::Usage(format!(
                    "{name} is empty: it must hold the Heap app id (digits)"
                )));
            }
            id
        }
        None => None,
    };
    from_file.map(|id| id.expose().to_string()).ok_or_else(|| {
        Exit::Usage(
            "the Heap app id is missing: set HEAP_APP_ID, --heap-app-id or --heap-app-id-file (or use --dry-run)".into(),
        )
    })
}

/// Opens the state store, named in its error; its S3 requests are counted in `metrics`.
pub async fn open_state(
    config: &Config,
    create: bool,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn ObjectStore>, Exit> {
    if let Location::Local(path) = &config.state {
        // A local state must exist once the worker runs, so that one deleted or replaced
        // mid-run is an error and not an empty ledger; a dry run or `status` creates nothing.
        if create {
            std::fs::create_dir_all(path).map_err(|e| {
                Exit::Usage(format!(
                    "--state {}: cannot create the directory: {e}. Fix: run as a user with write permission on its parent (on a writable mount), or point --state at a writable directory or a bucket",
                    path.display()
                ))
            })?;
        } else if !path.exists() {
            return Ok(Arc::new(LocalStore::lazy(path)));
        }
    }
    config
        .state
        .open(config.s3_path_style, metrics)
        .await
        .map_err(|e| Exit::Usage(format!("--state: {e}")))
}

/// Opens the source and the state, each named in its error. `create`: make a local state
/// directory that does not exist yet. S3 requests of both are counted in `metrics`.
pub async fn open_stores(
    config: &Config,
    create: bool,
    metrics: &Arc<Metrics>,
) -> Result<(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>), Exit> {
    let source = open_source(config, metrics).await?;
    Ok((source, open_state(config, create, metrics).await?))
}

/// Opens the source, named in its error (a local one must be a directory).
pub async fn open_source(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn ObjectStore>, Exit> {
    if let Location::Local(path) = &config.source
        && !path.is_dir()
    {
        return Err(Exit::Usage(format!(
            "--source {}: no such directory (a local source is a directory laid out like a Currents bucket)",
            path.display()
        )));
    }
    config
        .source
        .open(config.s3_path_style, metrics)
        .await
        .map_err(|e| Exit::Usage(format!("--source: {e}")))
}

/// What the engine of a lease holder needs: the deadline its requests to Heap keep to (the
/// lease's fence), and what its predecessor sent in the last window.
pub struct Leased {
    pub fence: watch::Receiver<Instant>,
    pub seed: Option<Seed>,
}

impl Leased {
    /// For the engine of a new holder: `fence` from its keeper, and the predecessor's sends
    /// as the lease carried them (a record this version cannot read counts as none, with a
    /// warning: after an expiry the pacer still assumes the predecessor's whole budget).
    /// `own`: what this very process sent before, as an earlier holder (it lost the lease and
    /// took it again): Heap's window still holds it, whoever held the lease meanwhile.
    pub fn new(
        fence: watch::Receiver<Instant>,
        takeover: &Takeover,
        own: Option<SentHistory>,
    ) -> Self {
        let seed = takeover
            .predecessor()
            .map(|(sent, observed_at, unknown_until)| {
                let history = match serde_json::from_value::<SentHistory>(sent.clone()) {
                    Ok(history) => history,
                    Err(_) if sent.is_null() => SentHistory::default(),
                    Err(e) => {
                        tracing::warn!("the lease's record of what was sent cannot be read: {e}");
                        SentHistory::default()
                    }
                };
                Seed {
                    history,
                    observed_at,
                    unknown_until,
                }
            });
        let now = Instant::now();
        let seed = match (seed, own) {
            (seed, None) => seed,
            (None, Some(own)) => Some(Seed {
                history: own,
                observed_at: now,
                unknown_until: None,
            }),
            (Some(seed), Some(own)) => Some(with_own(seed, own, now)),
        };
        Leased { fence, seed }
    }
}

/// A predecessor's seed and this process's own earlier sends (ages from `now`) as one: the
/// predecessor's ages move on by the time since it was read, and both logs are kept.
fn with_own(seed: Seed, own: SentHistory, now: Instant) -> Seed {
    let later = now.saturating_duration_since(seed.observed_at).as_millis() as u64;
    let mut sent: Vec<(u64, u64)> = seed
        .history
        .sent
        .iter()
        .map(|&(age, events)| (age + later, events))
        .chain(own.sent)
        .collect();
    sent.sort_by_key(|&(age, _)| std::cmp::Reverse(age));
    let app_budget = match (seed.history.app_budget, own.app_budget) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Seed {
        history: SentHistory { sent, app_budget },
        observed_at: now,
        unknown_until: seed.unknown_until,
    }
}

/// At a stop, objects in flight may finish within `--shutdown-timeout`; but once delivery
/// only waits for rate room, waiting longer sends nothing more: the work in flight is cut
/// short at once (checkpoints are written within a second), the lease released, and the
/// next holder resumes it with the same budget. A rollout hands over in about a second
/// instead of the whole timeout.
pub fn hand_over_when_rate_bound(
    metrics: &Arc<Metrics>,
    cut: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (metrics, cut) = (metrics.clone(), cut.clone());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            if metrics.waiting_for_rate() {
                tracing::info!(
                    "stopping while events wait for rate room: handing the work in flight over now (it resumes from its checkpoints)"
                );
                cut.cancel();
                return;
            }
        }
    })
}

/// What a holder writes into the lease at each renewal: what its delivery sent in the last
/// window (nothing before its engine is built).
pub fn sent_record(
    tap: Arc<std::sync::OnceLock<HistoryTap>>,
) -> impl Fn(Instant) -> serde_json::Value + Send + Sync + 'static {
    move |now| {
        tap.get()
            .and_then(|tap| serde_json::to_value(tap.snapshot(now)).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// The lease for a command that sends (`role`); `None` with `--single-process` or
/// `--dry-run`. The command's preflight ([`super::check::preflight`]) has already shown that
/// the state can be written and honours conditional writes (a store that ignores them, or
/// refuses the probe, is a configuration error, exit 2): the one probe a command pays.
pub async fn lease(
    config: &Config,
    role: Role,
    metrics: &Arc<Metrics>,
) -> Result<Option<LeaseClient>, Exit> {
    if config.dry_run || config.single_process {
        return Ok(None);
    }
    // A missing app id is found before anything is written (the URL was checked with the
    // configuration).
    app_id(config)?;
    let state = open_state(config, true, metrics).await?;
    let me = Heartbeat::new_worker(unix_secs_now()).worker;
    let timings = LeaseTimings::of(config.lease_duration.get());
    Ok(Some(
        LeaseClient::new(state, me, role, timings).with_metrics(metrics.clone()),
    ))
}

/// Where events go: nowhere in a dry run, else Heap with the configured limits (and, for
/// a lease holder, its fence and its predecessor's sends).
pub fn output(config: &Config, leased: Option<Leased>) -> Result<Output, Exit> {
    let mapper = HeapMapper::new(config.mapping());
    if config.dry_run {
        let limit = match app_id(config) {
            Ok(app_id) => BodyLimit::new(config.max_body_bytes as usize, &app_id),
            Err(_) => BodyLimit::unknown_app(config.max_body_bytes as usize),
        };
        return Ok(Output::DryRun(
            Disposer::new(mapper, limit).with_user_properties(config.properties()),
        ));
    }
    let app_id = app_id(config)?;
    let client = HeapClient::new(&config.heap_url, config.request_timeout.get())
        .map_err(|e| Exit::Usage(e.to_string()))?;
    // `Config::validate` bounds every number far below `usize::MAX`.
    let delivery = DeliveryConfig {
        limits: RateLimits {
            app_events: config.app_rate_limit,
            identity_events: config.identity_rate_limit,
            window: Duration::from_secs(60),
        },
        max_batch_events: config.max_batch_events as usize,
        max_body_bytes: config.max_body_bytes as usize,
        concurrency: config.heap_concurrency as usize,
        max_pending: config.max_pending_events as usize,
        batch_linger: config.batch_linger.get(),
        fence: leased.as_ref().map(|l| l.fence.clone()),
        seed: leased.and_then(|l| l.seed),
        retry: RetryPolicy {
            max_elapsed: config.retry_max_time.get(),
            ..RetryPolicy::default()
        },
        properties: config.properties(),
        ..DeliveryConfig::new(app_id)
    };
    Ok(Output::Heap(Box::new(HeapOutput {
        client,
        config: delivery,
        mapper,
    })))
}

/// Builds the engine for `run` or `backfill`; the stores count their requests into
/// `metrics` (what `/metrics` serves).
pub async fn engine(
    config: &Config,
    plan: Plan,
    metrics: Arc<Metrics>,
    leased: Option<Leased>,
) -> Result<Engine, Exit> {
    let output = output(config, leased)?;
    let (source, state) = open_stores(config, !config.dry_run, &metrics).await?;
    let settings = Settings {
        object_concurrency: Admission::new(
            config.object_concurrency as usize,
            config.small_object_budget,
        ),
        shutdown_timeout: config.shutdown_timeout.get(),
        bounded_state_retry: config.retry_max_time.get(),
        dry_run: config.dry_run,
    };
    // A bounded plan (`backfill`, `run --once`) lists its range: the queue tells only of
    // objects uploaded from now on, and its old hours would never come. The Deployment and
    // the backfill Job share one config file, so a queue named there is no mistake here.
    let live = matches!(plan, Plan::Live { .. });
    let engine = Engine::start(settings, plan, source, state, output, metrics.clone());
    let (Some(url), Location::S3 { bucket, prefix }) = (&config.sqs_queue_url, &config.source)
    else {
        return Ok(engine);
    };
    if !live {
        tracing::info!(
            "the SQS queue is not used: a bounded run lists its range (the queue is for `run`)"
        );
        return Ok(engine);
    }
    let queue = SqsQueue::connect(url, metrics)
        .await
        .map_err(|e| Exit::Usage(format!("--sqs-queue-url: {e}")))?;
    match queue.check().await {
        Ok(()) => {}
        Err(e) if e.is_configuration() => {
            return Err(Exit::Usage(format!("--sqs-queue-url: {e}")));
        }
        // An outage at start is waited out like one later: /readyz reports it.
        Err(e) => tracing::warn!("cannot check the queue yet, receiving anyway: {e}"),
    }
    Ok(engine.with_notifications(Notifications {
        queue: Arc::new(queue),
        settings: ListenerSettings {
            bucket: bucket.clone(),
            prefix: prefix.clone(),
            visibility: config.sqs_visibility_timeout.get(),
            // An object that could not be finished comes back as a listed one would: at the
            // next poll interval.
            retry_after: config.poll_interval.get(),
            // Room for every object the scheduler may hold, queued or in flight, and more.
            max_held: 512,
        },
    }))
}

/// The shutdown future for [`Engine::drive`]: the first SIGTERM/SIGINT stops the engine, and a
/// second one abandons objects in flight at once. The handlers are installed now, before the
/// first poll, so a signal during a long first listing is not the default (killing) action.
pub fn shutdown_on_signals(
    abandon: tokio_util::sync::CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    let mut signals = Signals::install();
    async move {
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: abandoning work in flight");
            abandon.cancel();
        });
    }
}

/// A token cancelled by the first SIGTERM/SIGINT; a second one cancels `abandon` (objects in
/// flight are abandoned). The handlers are installed now.
pub fn stop_on_signals(abandon: CancellationToken) -> CancellationToken {
    let stop = CancellationToken::new();
    let signal = shutdown_on_signals(abandon);
    let cancel = stop.clone();
    tokio::spawn(async move {
        signal.await;
        cancel.cancel();
    });
    stop
}

impl From<Outcome> for Exit {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Finished => Exit::Success,
            Outcome::FinishedWithFailures => Exit::Parked,
            Outcome::Incomplete { reason } => Exit::Incomplete(reason),
            Outcome::Fatal(reason) => Exit::Fatal(reason),
        }
    }
}

/// SIGTERM and SIGINT, listened to from the moment of [`Signals::install`].
struct Signals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::terminate())
                .and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
                .map_err(|e| tracing::warn!("cannot listen for SIGTERM/SIGINT: {e}"))
                .ok();
            Signals { streams }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or SIGINT (never, if the handlers could not be installed).
    async fn next(&mut self) {
        #[cfg(unix)]
        match &mut self.streams {
            Some((term, interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_process_that_holds_again_counts_its_own_sends_and_its_predecessors() {
        let read_at = Instant::now();
        let seed = Seed {
            history: SentHistory {
                sent: vec![(30_000, 100), (0, 50)],
                app_budget: Some(900),
            },
            observed_at: read_at,
            unknown_until: Some(read_at),
        };
        tokio::time::advance(Duration::from_secs(10)).await;
        let own = SentHistory {
            sent: vec![(20_000, 7)],
            app_budget: Some(1_000),
        };
        let merged = with_own(seed, own, Instant::now());
        // The predecessor's entries are 10 s older now; all kept, oldest first.
        assert_eq!(
            merged.history.sent,
            vec![(40_000, 100), (20_000, 7), (10_000, 50)]
        );
        assert_eq!(merged.history.app_budget, Some(900));
        assert_eq!(merged.observed_at, Instant::now());
        assert_eq!(merged.unknown_until, Some(read_at));
    }
}
