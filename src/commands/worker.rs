//! The options `run`, `backfill` and `replay` share, and building the engine from them.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::MappingArgs;
use crate::clock::parse_duration;
use crate::heap::client::HeapClient;
use crate::heap::delivery::DeliveryConfig;
use crate::heap::map::HeapMapper;
use crate::heap::pacer::RateLimits;
use crate::heap::retry::RetryPolicy;
use crate::store::{Location, ObjectStore};
use crate::telemetry::Metrics;
use crate::worker::engine::HeapOutput;
use crate::worker::{Engine, Outcome, Output, Plan, Settings};

/// How a command ended, as an exit code (the README and `--help` list them).
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

/// Where Currents objects and state live.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Currents objects: `s3://bucket/prefix`, or a local directory in the same layout.
    #[arg(long, env = "CURRENTS_HEAP_SOURCE", default_value = "fixtures/bucket")]
    pub source: Location,
    #[command(flatten)]
    pub state: StateArgs,
}

/// Where the ledger and dead letters live (all `replay` needs besides Heap).
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
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

impl StateArgs {
    pub async fn open(&self) -> Result<Arc<dyn ObjectStore>, Exit> {
        self.state
            .open(self.s3_path_style)
            .await
            .map_err(|e| Exit::Usage(format!("--state: {e}")))
    }
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

/// Opens the source and the state, each named in its error.
pub async fn open_stores(
    stores: &StoreArgs,
) -> Result<(Arc<dyn ObjectStore>, Arc<dyn ObjectStore>), Exit> {
    let source = stores
        .source
        .open(stores.state.s3_path_style)
        .await
        .map_err(|e| Exit::Usage(format!("--source: {e}")))?;
    Ok((source, stores.state.open().await?))
}

/// Where events go: nowhere in a dry run, else Heap with the configured limits.
pub fn output(heap: &HeapArgs, mapping: &MappingArgs, dry_run: bool) -> Result<Output, Exit> {
    let mapper = HeapMapper::new(mapping.config());
    if dry_run {
        return Ok(Output::DryRun(mapper));
    }
    let app_id = app_id(heap)?;
    let client = HeapClient::new(&heap.heap_url, heap.request_timeout)
        .map_err(|e| Exit::Usage(e.to_string()))?;
    let config = DeliveryConfig {
        limits: RateLimits {
            app_events: heap.app_rate_limit,
            identity_events: heap.identity_rate_limit,
            window: Duration::from_secs(60),
        },
        max_batch_events: heap.max_batch_events as usize,
        max_body_bytes: heap.max_body_bytes,
        concurrency: heap.heap_concurrency as usize,
        max_pending: heap.max_pending_events as usize,
        retry: RetryPolicy {
            max_elapsed: heap.retry_max_time,
            ..RetryPolicy::default()
        },
        ..DeliveryConfig::new(app_id)
    };
    Ok(Output::Heap(Box::new(HeapOutput {
        client,
        config,
        mapper,
    })))
}

/// Builds the engine for `run` or `backfill`.
pub async fn engine(
    args: &WorkerArgs,
    plan: Plan,
    shutdown_timeout: Duration,
) -> Result<Engine, Exit> {
    let output = output(&args.heap, &args.mapping, args.dry_run)?;
    let (source, state) = open_stores(&args.stores).await?;
    let settings = Settings {
        object_concurrency: args.object_concurrency as usize,
        shutdown_timeout,
        bounded_state_retry: args.heap.retry_max_time,
        dry_run: args.dry_run,
    };
    Ok(Engine::start(
        settings,
        plan,
        source,
        state,
        output,
        Arc::new(Metrics::new()),
    ))
}

/// The shutdown future for [`Engine::drive`]: the first SIGTERM/SIGINT stops the engine, and a
/// second one abandons objects in flight at once.
pub fn shutdown_on_signals(engine: &Engine) -> impl std::future::Future<Output = ()> + use<> {
    let abandon = engine.abandon_token();
    async move {
        shutdown_signal().await;
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::warn!("second signal: abandoning objects in flight");
            abandon.cancel();
        });
    }
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
