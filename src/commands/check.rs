//! `check`: every part of the wiring `run` depends on, each checked once and said in one
//! line (what, where, `ok`/`warn`/`fail` and the fix), without sending an event to Heap; and
//! [`preflight`], the cheap part of it that every command runs before its first send.
//!
//! # The checks (`check`)
//! - **source**: lists, and holds `event_type=` folders (none: a warning, as for a new
//!   export); a missing bucket/container/directory or a refused listing fails, naming the
//!   permission.
//! - **state**: a probe object under `control/` is written, read back and deleted.
//! - **lease**: the state honours the conditional writes the lease needs
//!   ([`probe_conditions`], on the same probe object); skipped with `--single-process`.
//! - **heap**: the Heap URL answers a plain GET of its base (no event sent); `http://` is a
//!   warning (only for a local stand-in).
//! - **app id**: given, and digits, as a Heap environment id is (the rule of
//!   [`super::config::heap_app_id`], through [`app_id`]).
//! - **clock**: this host's clock against the store's `Date` header (see [`CLOCK_WARN`] and
//!   [`CLOCK_FAIL`] for the tolerance and why).
//! - **sqs**: with `--sqs-queue-url`, the queue and the bucket's notification.
//!
//! # The rules (one place)
//! A store error at start is either **wiring** (not found, denied, invalid: someone must
//! change the configuration or a permission; exit 2) or an **outage** (unavailable,
//! throttled: it may pass; a bounded command exits 4, a long-lived `run` waits it out):
//! [`cause`]. [`fix`] says what to do, naming the permission per back-end.
//!
//! # Guarantee
//! Neither `check` nor [`preflight`] sends an event. Both write only the probe object, and
//! delete it (a failed delete leaves one small object under `control/`). A `--dry-run` writes
//! nothing: its preflight only lists.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::config::Config;
use super::run::RunArgs;
use super::worker::{Exit, app_id, open_source, open_state};
use crate::clock::unix_secs_now;
use crate::handover::Heartbeat;
use crate::notifications::wiring;
use crate::source::event_type_folders;
use crate::store::{
    Location, ObjectStore, ProbeFailure, StoreError, StoreErrorKind, probe_conditions, read_back,
};
use crate::telemetry::Metrics;

/// `check`'s flags: `run`'s, and `--json`. It runs with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct CheckArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) run: RunArgs,
    /// Print one JSON document, an array of {check, target, status, detail, fix}, instead
    /// of one line per check.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

/// How a check came out. Only `fail` makes `check` exit 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Not checked, and why (`--single-process`, no `--sqs-queue-url`, local stores): a
    /// script tells it from a check that passed.
    Skip,
    Warn,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One check's outcome: one line, or one element of `--json`'s array.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub check: &'static str,
    /// Where: a location, a URL, a variable.
    pub target: String,
    pub status: Status,
    /// What was found, or what went wrong.
    pub detail: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Line {
    /// Not checked: `why` says why.
    fn skip(check: &'static str, target: impl Into<String>, why: impl Into<String>) -> Line {
        Line {
            status: Status::Skip,
            ..Line::ok(check, target, why)
        }
    }

    fn ok(check: &'static str, target: impl Into<String>, detail: impl Into<String>) -> Line {
        Line {
            check,
            target: target.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(
        check: &'static str,
        target: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Line::ok(check, target, detail)
        }
    }

    fn fail(
        check: &'static str,
        target: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Line {
        Line {
            status: Status::Fail,
            ..Line::warn(check, target, detail, fix)
        }
    }

    /// A store error, by the shared rules: an outage fails too (`check` runs once, and could
    /// not check), with its fix.
    fn store(check: &'static str, flag: &str, configured: &Location, e: &StoreError) -> Line {
        let fix = fix(e, flag, configured);
        Line::fail(check, configured.to_string(), e.to_string(), fix)
    }

    /// The human form: `check  status  target: detail; fix: …`.
    pub fn render(&self) -> String {
        let fix = self
            .fix
            .as_ref()
            .map_or_else(String::new, |fix| format!("; fix: {fix}"));
        format!(
            "{:<7} {:<4} {}: {}{fix}",
            self.check,
            self.status.to_string(),
            self.target,
            self.detail
        )
    }
}

/// Runs every check, prints them, and exits 0 (no failure) or 2.
pub async fn check(args: CheckArgs, config: Config) -> Exit {
    // check serves no /metrics: its requests are counted and dropped.
    let metrics = Arc::new(Metrics::new());
    let mut lines = vec![source_line(&config, &metrics).await];
    lines.extend(state_lines(&config, &metrics).await);
    lines.push(heap_line(&config).await);
    lines.push(app_id_line(&config));
    lines.push(clock_line(&config).await);
    lines.push(sqs_line(&config, &metrics).await);
    if args.json {
        match serde_json::to_string_pretty(&lines) {
            Ok(json) => println!("{json}"),
            Err(e) => return Exit::Fatal(format!("cannot write the checks as JSON: {e}")),
        }
    } else {
        for line in &lines {
            println!("{}", line.render());
        }
    }
    let failed = lines.iter().filter(|l| l.status == Status::Fail).count();
    if failed == 0 {
        Exit::Success
    } else {
        Exit::Usage(format!(
            "{failed} of {} checks failed: each line says its fix",
            lines.len()
        ))
    }
}

// ---- The shared rules: what a store error at start means, and its fix. ----

/// What a store error at start asks of the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The configuration or a permission must change: exit 2, before any send.
    Wiring,
    /// It may pass by itself: a bounded command exits 4, a long-lived `run` waits.
    Outage,
}

/// The one rule: an error that may pass by itself is an outage, any other is wiring.
pub fn cause(kind: StoreErrorKind) -> Cause {
    if kind.may_pass() {
        Cause::Outage
    } else {
        Cause::Wiring
    }
}

/// Which kind of store a configured location is: it decides the permission's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    S3,
    Azure,
    Gcs,
    Local,
}

fn backend(location: &Location) -> Backend {
    match location {
        Location::S3 { .. } => Backend::S3,
        Location::Azure { .. } => Backend::Azure,
        Location::Gcs { .. } => Backend::Gcs,
        Location::Local(_) => Backend::Local,
    }
}

/// What must exist for a location to be used: its bucket or container (`s3://bucket/`, as
/// [`Location`]'s own form writes it, without the prefix), or the directory itself.
fn root_of(location: &Location) -> String {
    let without_prefix = match location {
        Location::Local(_) => return location.to_string(),
        Location::S3 { bucket, .. } => Location::S3 {
            bucket: bucket.clone(),
            prefix: String::new(),
        },
        Location::Azure {
            account, container, ..
        } => Location::Azure {
            account: account.clone(),
            container: container.clone(),
            prefix: String::new(),
        },
        Location::Gcs { bucket, .. } => Location::Gcs {
            bucket: bucket.clone(),
            prefix: String::new(),
        },
    };
    without_prefix.to_string()
}

/// The permission an operation (`list`, `get`, `put`, `delete`) needs on a back-end.
fn permission(backend: Backend, operation: &str) -> &'static str {
    let writes = matches!(operation, "put" | "delete");
    match (backend, operation) {
        (Backend::S3, "list") => "s3:ListBucket",
        (Backend::S3, "get") => "s3:GetObject",
        (Backend::S3, "put") => "s3:PutObject",
        (Backend::S3, "delete") => "s3:DeleteObject",
        (Backend::S3, _) => "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject",
        (Backend::Azure, _) if writes => "the Storage Blob Data Contributor role",
        (Backend::Azure, _) => {
            "the Storage Blob Data Reader role (Storage Blob Data Contributor for the state)"
        }
        (Backend::Gcs, "list") => "storage.objects.list",
        (Backend::Gcs, "get") => "storage.objects.get",
        (Backend::Gcs, "put") => "storage.objects.create (and storage.objects.delete, to replace)",
        (Backend::Gcs, "delete") => "storage.objects.delete",
        (Backend::Gcs, _) => "roles/storage.objectUser",
        (Backend::Local, _) if writes => "write permission (on a writable mount)",
        (Backend::Local, _) => "read permission",
    }
}

/// What to do about `e`, met on the store of `flag` (`--source`, `--state`) configured as
/// `configured`.
pub fn fix(e: &StoreError, flag: &str, configured: &Location) -> String {
    let backend = backend(configured);
    let root = root_of(configured);
    match e.kind {
        StoreErrorKind::NotFound if matches!(e.operation, "list" | "put") => {
            let what = match backend {
                Backend::S3 | Backend::Gcs => "the bucket",
                Backend::Azure => "the container",
                Backend::Local => "the directory",
            };
            format!(
                "{what} {root} does not exist (or is in another account or region): create it, or correct {flag}"
            )
        }
        StoreErrorKind::NotFound => format!(
            "{} was missing just after it was written: check that nothing else deletes under {flag} (a lifecycle rule, another tool)",
            e.location
        ),
        StoreErrorKind::Denied if refused_credentials(&e.reason) => format!(
            "the credentials were refused (not a missing permission): check the key, secret or token this process finds ({}), and that they belong to {root}'s account",
            match backend {
                Backend::S3 =>
                    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, the pod's role",
                Backend::Azure => "the SAS token, the account key or the workload identity",
                Backend::Gcs => "GOOGLE_APPLICATION_CREDENTIALS or the workload identity",
                Backend::Local => "the process's user",
            }
        ),
        StoreErrorKind::Denied => format!(
            "the credentials lack {} on {root}: grant it to this process's identity (or fix the credentials it finds)",
            permission(backend, e.operation)
        ),
        StoreErrorKind::Invalid => format!(
            "the store refused the request: check {flag}, the region and the endpoint ({})",
            match backend {
                Backend::S3 => "AWS_REGION, AWS_ENDPOINT_URL, --s3-path-style",
                Backend::Azure => "AZURE_STORAGE_ACCOUNT_NAME or the connection string",
                Backend::Gcs => "GOOGLE_BASE_URL for an emulator",
                Backend::Local => "the path",
            }
        ),
        StoreErrorKind::Throttled
        | StoreErrorKind::Unavailable
        | StoreErrorKind::PreconditionFailed => format!(
            "the store did not answer (an outage, or the path to it: endpoint, DNS, proxy, network policy): run again once {root} answers"
        ),
    }
}

/// Whether a denial says the credentials themselves are wrong (an unknown key, a bad
/// signature, an expired token) rather than short of a permission: S3's and Azure's error
/// codes for it.
fn refused_credentials(reason: &str) -> bool {
    [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AuthenticationFailed",
    ]
    .iter()
    .any(|code| reason.contains(code))
}

/// The text of a store that ignores conditional writes, and its way out.
fn ignored_conditions(failure: &ProbeFailure) -> String {
    format!(
        "--state: {failure}. The lease that keeps two processes from sending to one Heap app needs conditional writes; if only ever one process sends to this app, pass --single-process"
    )
}

/// What a store error at a command's start does: wiring is exit 2, naming the location and
/// the fix; an outage is exit 4 for a bounded command, and waited out by a long-lived one.
fn at_start(flag: &str, configured: &Location, e: StoreError, bounded: bool) -> Result<(), Exit> {
    match cause(e.kind) {
        Cause::Wiring => Err(Exit::Usage(format!(
            "{flag} {configured}: {e}. Fix: {}",
            fix(&e, flag, configured)
        ))),
        Cause::Outage if bounded => Err(Exit::Incomplete(format!(
            "{flag}: {e}: the store did not answer at start; nothing was sent"
        ))),
        Cause::Outage => {
            tracing::warn!(
                "{flag}: cannot check the store yet, carrying on as through any outage: {e}"
            );
            Ok(())
        }
    }
}

// ---- The preflight every command runs. ----

/// How a command uses the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateUse {
    /// Reads only (`status`, any `--dry-run`): listed once.
    Read,
    /// Writes: the probe writes, reads back and deletes an object under `control/`; with
    /// `lease` (and no `--single-process`), also checks the conditional writes.
    Write { lease: bool },
}

/// What a command checks at its start, before anything is sent.
#[derive(Debug, Clone, Copy)]
pub struct Preflight {
    /// List the source once (one request).
    pub source: bool,
    pub state: StateUse,
    /// `run --once`, `backfill`, `replay`: an outage at start exits 4. A long-lived `run`
    /// (and `status`) carries on, as through an outage later.
    pub bounded: bool,
}

/// [`preflight`] until a stop signal: a listing of a store that takes the connection and
/// never answers lasts until then, and the signal handlers are already installed (the
/// default action no longer ends the process). A stop ends a bounded command as
/// incomplete (4), a long-lived `run` cleanly (0); nothing was sent either way.
pub async fn preflight_until(
    config: &Config,
    what: Preflight,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<(), Exit> {
    tracing::info!("checking the source and the state before anything is sent");
    tokio::select! {
        checked = preflight(config, what, metrics) => checked,
        () = stop.cancelled() => Err(if what.bounded {
            Exit::Incomplete("stopped during the start-up check; nothing was sent".into())
        } else {
            Exit::Success
        }),
    }
}

/// The cheap checks of a command's start: the source lists (1 request), the state can be
/// written, read and deleted (with the lease's conditional writes: the one probe a command
/// pays, 6 requests; a dry run only lists it). A wiring or permission error is
/// `Exit::Usage` (2), naming the location and the fix; an outage is `Exit::Incomplete` (4)
/// for a bounded command.
pub async fn preflight(
    config: &Config,
    what: Preflight,
    metrics: &Arc<Metrics>,
) -> Result<(), Exit> {
    let writes = matches!(what.state, StateUse::Write { .. }) && !config.dry_run;
    if writes {
        // Nothing is written for a command that could not send anyway.
        app_id(config)?;
    }
    if what.source {
        let source = open_source(config, metrics).await?;
        if let Err(e) = source.list_folders("").await {
            at_start("--source", &config.source, e, what.bounded)?;
        }
    }
    let state = open_state(config, writes, metrics).await?;
    let probed = match what.state {
        StateUse::Write { lease } if writes => {
            probe_state(state.as_ref(), lease && !config.single_process).await
        }
        _ => state
            .list_folders("")
            .await
            .map(drop)
            .map_err(ProbeFailure::Store),
    };
    match probed {
        Ok(()) if writes => heap_at_start(config, what.bounded).await,
        Ok(()) => Ok(()),
        Err(ProbeFailure::Store(e)) => at_start("--state", &config.state, e, what.bounded),
        Err(failure @ ProbeFailure::Ignored { .. }) => {
            Err(Exit::Usage(ignored_conditions(&failure)))
        }
    }
}

/// What the probe writes when conditional writes are not checked.
const PROBE: &[u8] = b"{\"probe\":\"currents-heap\"}";

/// Writes, reads back and deletes a probe object under `control/` (a name of its own, so
/// that processes starting together never meet); with `conditions`, the lease's probe
/// ([`probe_conditions`]) on it, which reads and deletes as well.
pub async fn probe_state(store: &dyn ObjectStore, conditions: bool) -> Result<(), ProbeFailure> {
    let me = Heartbeat::new_worker(unix_secs_now()).worker;
    let key = format!("control/probe-{me}.json");
    if conditions {
        return probe_conditions(store, &key).await;
    }
    store.put(&key, PROBE.to_vec()).await?;
    let read = read_back(store, &key, PROBE).await;
    let deleted = store.delete(&key).await;
    read?;
    deleted?;
    Ok(())
}

// ---- The checks of `check`, each one line. ----

async fn source_line(config: &Config, metrics: &Arc<Metrics>) -> Line {
    let target = config.source.to_string();
    let source = match open_source(config, metrics).await {
        Ok(source) => source,
        Err(exit) => return exit_line("source", target, exit, "--source"),
    };
    match event_type_folders(source.as_ref()).await {
        Ok(folders) if folders.is_empty() => Line::warn(
            "source",
            target,
            "lists, but holds no event_type= folders yet",
            "a new Currents export writes its first files within minutes; if none come, check that --source is the prefix Braze writes to (the folder above dataexport.*)",
        ),
        Ok(folders) => Line::ok(
            "source",
            target,
            format!("lists; {} event_type= folders", folders.len()),
        ),
        Err(e) => Line::store("source", "--source", &config.source, &e),
    }
}

/// The `state` and `lease` lines: one probe for both.
async fn state_lines(config: &Config, metrics: &Arc<Metrics>) -> [Line; 2] {
    let target = config.state.to_string();
    let state = match open_state(config, !config.dry_run, metrics).await {
        Ok(state) => state,
        Err(exit) => {
            return [
                exit_line("state", target.clone(), exit, "--state"),
                not_checked_lease(target),
            ];
        }
    };
    if config.dry_run {
        let listed = match state.list_folders("").await {
            Ok(_) => Line::ok(
                "state",
                target.clone(),
                "lists (--dry-run: nothing written)",
            ),
            Err(e) => Line::store("state", "--state", &config.state, &e),
        };
        return [
            listed,
            Line::skip("lease", target, "--dry-run takes no lease"),
        ];
    }
    let conditions = !config.single_process;
    let written = "a probe object under control/ was written, read back and deleted";
    match probe_state(state.as_ref(), conditions).await {
        Ok(()) if conditions => [
            Line::ok("state", target.clone(), written),
            Line::ok(
                "lease",
                target,
                "honours conditional writes (create-only and version conditions)",
            ),
        ],
        Ok(()) => [
            Line::ok("state", target.clone(), written),
            Line::skip("lease", target, "--single-process takes no lease"),
        ],
        Err(ProbeFailure::Store(e)) => [
            Line::store("state", "--state", &config.state, &e),
            not_checked_lease(target),
        ],
        Err(failure @ ProbeFailure::Ignored { .. }) => [
            Line::ok("state", target.clone(), written),
            Line::fail(
                "lease",
                target,
                failure.to_string(),
                "use a store that honours conditional writes (AWS S3, Azure Blob Storage, GCS, a local directory), or pass --single-process if only ever one process sends to this Heap app",
            ),
        ],
    }
}

/// The lease's conditions are tested on the state's probe object: with no probe there is
/// nothing to test, which the state's own line has already failed.
fn not_checked_lease(target: String) -> Line {
    Line::skip(
        "lease",
        target,
        "not checked: the state's probe failed (fix the state line first)",
    )
}

/// A line from an error that ended a store's opening (a missing local source, no region).
fn exit_line(check: &'static str, target: String, exit: Exit, flag: &str) -> Line {
    let detail = match exit {
        Exit::Usage(m) | Exit::Fatal(m) | Exit::Incomplete(m) => m,
        Exit::Success | Exit::Parked => String::new(),
    };
    Line::fail(check, target, detail, format!("correct {flag}"))
}

/// One plain GET of `--heap-url` (no event, no app id): the HTTP status it answered, or
/// why it did not answer (the error and its causes, one line).
async fn reach_heap(config: &Config) -> Result<u16, String> {
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout.get().min(Duration::from_secs(30)))
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("currents-heap/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))?;
    match client.get(&config.heap_url).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// What to check when Heap does not answer.
const HEAP_FIX: &str = "check --heap-url (https://heapanalytics.com; EU: https://c.eu.heap-api.com), DNS, and the egress path (proxy, network policy, firewall)";

/// Heap's URL: one plain GET of its base; any HTTP answer means it is reachable (Heap's base
/// answers a GET without an app id; no event is sent).
async fn heap_line(config: &Config) -> Line {
    let url = config.heap_url.clone();
    match reach_heap(config).await {
        Ok(status) if url.starts_with("http://") => Line::warn(
            "heap",
            url,
            format!(
                "answers (HTTP {status} to a GET; no event sent); not TLS: only for a local stand-in (which answers 404 here)"
            ),
            "Heap's URL is https://heapanalytics.com (EU: https://c.eu.heap-api.com)",
        ),
        Ok(status) => Line::ok(
            "heap",
            url,
            format!("answers over TLS (HTTP {status} to a GET; no event sent)"),
        ),
        Err(why) => Line::fail("heap", url, format!("cannot reach it: {why}"), HEAP_FIX),
    }
}

/// At the start of a command that sends: Heap answers. A name that does not resolve is
/// wiring (2); anything else may be an outage: a bounded command exits 4 with nothing sent
/// (instead of retrying every batch for `--retry-max-time` and parking them), a long-lived
/// `run` warns and starts (its deliveries retry as through any outage).
async fn heap_at_start(config: &Config, bounded: bool) -> Result<(), Exit> {
    let Err(why) = reach_heap(config).await else {
        return Ok(());
    };
    let url = &config.heap_url;
    if why.contains("dns error") {
        return Err(Exit::Usage(format!(
            "--heap-url {url}: cannot reach it: {why}. Fix: {HEAP_FIX}"
        )));
    }
    if bounded {
        return Err(Exit::Incomplete(format!(
            "--heap-url {url}: Heap did not answer at start ({why}); nothing was sent. Fix: {HEAP_FIX}"
        )));
    }
    tracing::warn!(
        "--heap-url {url}: Heap did not answer at start ({why}); starting anyway: deliveries retry"
    );
    Ok(())
}

/// An error and its causes, one line (reqwest's own display omits the TLS or DNS cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The app id: given, and digits (the rule of `config::heap_app_id`, applied by [`app_id`]).
fn app_id_line(config: &Config) -> Line {
    let target = match &config.heap_app_id_file {
        Some(path) if config.heap_app_id.is_none() => path.display().to_string(),
        _ => "HEAP_APP_ID / --heap-app-id".to_string(),
    };
    match app_id(config) {
        Ok(_) => Line::ok(
            "app id",
            target,
            "given, and digits as a Heap environment id is (not shown)",
        ),
        Err(_) if config.dry_run => Line::ok(
            "app id",
            target,
            "not given (--dry-run sends nothing, so needs none)",
        ),
        Err(exit) => exit_line(
            "app id",
            target,
            exit,
            "HEAP_APP_ID, --heap-app-id or --heap-app-id-file",
        ),
    }
}

/// A clock within this of the store's is `ok`. What depends on agreeing wall clocks: not the
/// lease (expiry is judged on each process's monotonic clock, and only rates must agree, see
/// `handover::lease`), but the heartbeats a `backfill` and the workers read
/// (`handover`): a worker is live while its `beat_at`, rewritten every 30 s, is within 90 s
/// of the reader's clock, so two hosts may differ by up to 60 s; each within 30 s of the
/// store's clock keeps them within that. The lookback's hours move by as much as the clock
/// is off: seconds against whole hours.
pub const CLOCK_WARN: Duration = Duration::from_secs(30);
/// Beyond this the stores refuse signed requests outright: S3 (SigV4,
/// `RequestTimeTooSkewed`), Azure (Shared Key, SAS) and GCS allow 15 minutes.
pub const CLOCK_FAIL: Duration = Duration::from_secs(15 * 60);

/// This host's clock against the `Date` header of a plain HEAD to the state's endpoint (the
/// source's if the state is local): any status will do, unsigned.
async fn clock_line(config: &Config) -> Line {
    let Some(endpoint) = endpoint(&config.state).or_else(|| endpoint(&config.source)) else {
        return Line::skip(
            "clock",
            "local stores",
            "both stores are local directories, on this host's clock",
        );
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let sent_at = SystemTime::now();
    let started = Instant::now();
    let answered = match client {
        Ok(client) => client.head(&endpoint).send().await,
        Err(e) => return Line::warn("clock", endpoint, e.to_string(), "report this"),
    };
    let round_trip = started.elapsed();
    let response = match answered {
        Ok(response) => response,
        Err(e) => {
            return Line::warn(
                "clock",
                endpoint,
                format!("not checked: no answer ({})", error_chain(&e)),
                "see the source and state lines",
            );
        }
    };
    let date = response
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok());
    let Some(date) = date else {
        return Line::warn(
            "clock",
            endpoint,
            "not checked: the answer carries no Date header",
            "compare this host's clock with NTP by hand",
        );
    };
    // The store stamped its Date somewhere in the round trip, in whole seconds.
    let local = sent_at + round_trip / 2;
    let offset = match date.duration_since(local) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    };
    let slack = round_trip.as_secs_f64() / 2.0 + 1.0;
    clock_verdict(endpoint, offset, slack)
}

/// The line for a store clock `offset` seconds ahead of this host's (measured within
/// `slack` seconds).
fn clock_verdict(endpoint: String, offset: f64, slack: f64) -> Line {
    let off = (offset.abs() - slack).max(0.0);
    let said = if offset >= 0.0 {
        format!("this host's clock is {:.0} s behind the store's", offset)
    } else {
        format!("this host's clock is {:.0} s ahead of the store's", -offset)
    };
    let fix = "synchronise this host's clock (NTP, chrony; on Kubernetes, the node's)";
    if off > CLOCK_FAIL.as_secs_f64() {
        Line::fail(
            "clock",
            endpoint,
            format!("{said}: the stores refuse signed requests beyond 15 minutes"),
            fix,
        )
    } else if off > CLOCK_WARN.as_secs_f64() {
        Line::warn(
            "clock",
            endpoint,
            format!("{said}: over 30 s, workers' heartbeats may be judged stale or live wrongly"),
            fix,
        )
    } else {
        Line::ok(
            "clock",
            endpoint,
            format!("{said} (within {:.0} s; 30 s tolerated)", slack),
        )
    }
}

/// The HTTP endpoint a location's requests go to, as its client finds it in the
/// environment; `None` for a local directory.
fn endpoint(location: &Location) -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match location {
        Location::Local(_) => None,
        Location::S3 { .. } => Some(
            var("AWS_ENDPOINT_URL_S3")
                .or_else(|| var("AWS_ENDPOINT_URL"))
                .unwrap_or_else(
                    || match var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
                        Some(region) => format!("https://s3.{region}.amazonaws.com"),
                        None => "https://s3.amazonaws.com".into(),
                    },
                ),
        ),
        Location::Azure { account, .. } => {
            let connection = var("AZURE_STORAGE_CONNECTION_STRING").unwrap_or_default();
            let field = |wanted: &str| {
                connection.split(';').find_map(|field| {
                    let (name, value) = field.trim().split_once('=')?;
                    (name == wanted).then(|| value.trim().to_string())
                })
            };
            let emulator = var("AZURE_STORAGE_USE_EMULATOR").is_some_and(|v| v == "true")
                || field("UseDevelopmentStorage").is_some_and(|v| v == "true");
            if let Some(blob) = field("BlobEndpoint") {
                Some(blob)
            } else if emulator {
                Some(
                    var("AZURITE_BLOB_STORAGE_URL")
                        .unwrap_or_else(|| "http://127.0.0.1:10000".into()),
                )
            } else {
                account
                    .clone()
                    .or_else(|| field("AccountName"))
                    .or_else(|| var("AZURE_STORAGE_ACCOUNT_NAME"))
                    .map(|account| format!("https://{account}.blob.core.windows.net"))
            }
        }
        Location::Gcs { .. } => {
            Some(var("GOOGLE_BASE_URL").unwrap_or_else(|| "https://storage.googleapis.com".into()))
        }
    }
}

/// With `--sqs-queue-url`: the queue and the bucket's notification covering `--source`.
async fn sqs_line(config: &Config, metrics: &Arc<Metrics>) -> Line {
    let Some(url) = &config.sqs_queue_url else {
        return Line::skip(
            "sqs",
            "-",
            "no --sqs-queue-url (the source is listed every --poll-interval)",
        );
    };
    let Location::S3 { bucket, prefix } = &config.source else {
        return Line::fail(
            "sqs",
            url.clone(),
            "--sqs-queue-url needs an s3:// source",
            "drop --sqs-queue-url, or use an s3:// --source",
        );
    };
    match wiring::check(url, bucket, prefix, config.s3_path_style, metrics.clone()).await {
        Ok(ok) if ok.warnings.is_empty() => Line::ok("sqs", url.clone(), ok.found),
        Ok(ok) => Line::warn("sqs", url.clone(), ok.found, ok.warnings.join("; ")),
        Err(e) if e.is_outage() => Line::fail(
            "sqs",
            url.clone(),
            e.to_string(),
            "run check again once SQS answers",
        ),
        // Each wiring error ends with its own fix (after the colon), naming the queue, the
        // bucket and the prefix; the line's fix points at the page that lists them all.
        Err(e) => Line::fail(
            "sqs",
            url.clone(),
            e.to_string(),
            "as the reason says after its colon (each error and its fix: docs/notifications.md#errors-and-their-fixes)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_verdict_by_offset() {
        let at = |offset| clock_verdict("e".into(), offset, 1.0).status;
        assert_eq!(at(0.0), Status::Ok);
        assert_eq!(at(-31.0), Status::Ok, "within the slack");
        assert_eq!(at(-32.5), Status::Warn);
        assert_eq!(at(120.0), Status::Warn);
        assert_eq!(at(15.0 * 60.0 + 2.0), Status::Fail);
    }

    #[test]
    fn the_fix_names_the_bucket_and_the_permission() {
        use StoreErrorKind::{Denied, NotFound};
        // (where the error was met, the operation, its kind, the flag, as configured, the fix says)
        #[rustfmt::skip]
        let cases = [
            ("s3://gone/currents/", "list", NotFound, "--source", "s3://gone/currents/", "the bucket s3://gone/ does not exist"),
            ("s3://state-bucket/control/p", "put", Denied, "--state", "s3://state-bucket/", "s3:PutObject on s3://state-bucket/"),
            ("az://c0n/x", "list", Denied, "--source", "az://c0n/", "Storage Blob Data Reader"),
            ("gs://gcs-bucket/x", "list", Denied, "--source", "gs://gcs-bucket/", "storage.objects.list"),
            ("/sys/kernel/control/p", "put", Denied, "--state", "/sys/kernel", "write permission (on a writable mount) on /sys/kernel:"),
        ];
        for (location, operation, kind, flag, configured, says) in cases {
            let configured: Location = configured.parse().unwrap();
            let text = fix(
                &StoreError::new(operation, location, kind, "x"),
                flag,
                &configured,
            );
            assert!(text.contains(says), "{location} {operation} {kind}: {text}");
        }
        let https = root_of(
            &"https://acct.blob.core.windows.net/cont/a/b"
                .parse()
                .unwrap(),
        );
        assert_eq!(https, "https://acct.blob.core.windows.net/cont/");
        assert_eq!(cause(StoreErrorKind::Unavailable), Cause::Outage);
        assert_eq!(cause(StoreErrorKind::Denied), Cause::Wiring);
    }
}
