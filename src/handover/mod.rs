//! Handing a backfill over to a live `run` worker on the same state, so that the two never
//! pace against Heap's limit separately: the control objects in the state store.
//!
//! # Why
//! Heap's rate limit belongs to the Heap app, not to a process. A `backfill` running beside a
//! `run` worker on the same app would pace itself to the whole limit too, and together they
//! would send up to twice it. So a `backfill` that finds a live worker does not send: it
//! writes a request, the worker runs the range beside its live work, and the command follows
//! the progress the worker writes.
//!
//! # Objects
//! Under `control/` in the state (the ledger is under `ledger/`, dead letters under
//! `dead-letters/`; neither lists this prefix). JSON bodies; times are Unix seconds.
//!
//! | key | written by | when |
//! |---|---|---|
//! | `control/workers/<worker>.json` ([`Heartbeat`]) | each `run` worker | at start, then every [`HEARTBEAT_INTERVAL`]; deleted at a clean stop |
//! | `control/backfills/<id>/request.json` ([`BackfillRequest`]) | `backfill` | once, when it hands a range over; a worker that adopts it rewrites only its `worker` ([`Control::adopt`]) |
//! | `control/backfills/<id>/progress.json` ([`BackfillProgress`]) | `backfill` (queued), then the worker running it | before the request; then as the worker makes progress, at most every few seconds, and once in a terminal state |
//!
//! A worker id is `<host>-<pid>-<8 random hex>`, new at every start: a restarted worker is a
//! new worker, so nothing waits for a dead one to come back. A request id is
//! `<unix seconds>-<8 random hex>`.
//!
//! # Protocol
//! 1. `run` writes its heartbeat when it starts and rewrites it every 30 s with `beat_at` set
//!    to now. A reader may conclude that a worker is live while its `beat_at` is at most
//!    [`STALE_AFTER`] (90 s, three missed beats) from the reader's clock, in either direction
//!    (hosts' clocks must agree within that; NTP does far better). At a clean stop the worker
//!    deletes its heartbeat ([`Control::retire`]), so a rollout hands over at once rather than
//!    after 90 s.
//! 2. `backfill` (without `--dry-run` or `--no-handover`) lists the heartbeats. With none live
//!    it runs the range itself, and checks again every [`HEARTBEAT_INTERVAL`]; when a worker
//!    becomes live it stops as on a signal (objects in flight finish, the ledger keeps what is
//!    done) and hands the rest over. With a worker live it hands the range over: unless a
//!    request for the same range is still open (not terminal), which it follows instead (a
//!    Job restarted by Kubernetes must not queue the range twice), it writes `progress.json`
//!    in state `queued` and then `request.json`, addressed to [`owner`]'s choice. Writing the
//!    progress first means a worker never sees a request whose queued progress could still
//!    overwrite its own.
//! 3. Each worker lists the requests ([`Control::requests`]) at every heartbeat, and runs those that
//!    are not terminal and whose [`owner`] among the live heartbeats is itself. It writes
//!    `running` with its id as `worker` when it starts, the counts as it goes, and a terminal
//!    state at the end: `done`, `done_with_failures` (events parked or objects failed) or
//!    `incomplete` (it gave up on the range; `message` says why). A worker that runs a request
//!    addressed to another worker first re-addresses it to itself ([`Control::adopt`]), so
//!    that a worker starting later with a lower id does not take it over.
//! 4. `backfill` reads `progress.json` every 2 s until the state is terminal and exits by it
//!    (0, 3 or 4). `--detach` exits after step 2. A signal stops only the following: the
//!    request stays, and `status` shows it.
//!
//! # Guarantee
//! While a worker is live, a `backfill` sends nothing itself, so the app's events go through
//! one process's pacer. Nothing is lost whatever stops where: which objects are done is the
//! ledger's business, not these objects'; a range that is run again (by another worker, or by
//! a new request) skips what the ledger has, and the idempotency keys make the objects in
//! flight at a crash harmless to send again.
//!
//! # Failure cases
//! - **Stale heartbeat** (a worker killed without a clean stop, or partitioned from the
//!   state): after 90 s no reader counts it live. A new `backfill` runs itself (or hands over
//!   to another live worker); an open request addressed to it passes to the live worker with
//!   the lowest id, which resumes the range by the ledger. A follower logs that the worker's
//!   heartbeat is stale and keeps following.
//! - **The worker dies mid-range:** its request stays `running` with its last counts until
//!   another live worker adopts it, or until a worker starts again (with a new id) and adopts
//!   it. Objects it had in flight are unrecorded and run again.
//! - **Two workers live on one state** (a rollout's overlap, or a mistake): the addressee
//!   runs the request while it is live; otherwise every worker computes the same [`owner`]
//!   (the lowest live id) from the same heartbeats, so only one adopts it. Two workers whose
//!   views of the heartbeats differ (one read just before a beat, one just after) may both
//!   run it until their next poll: the ledger skips finished objects, so only objects in
//!   flight are sent twice, and Heap drops the repeats by idempotency key.
//! - **Two `backfill`s of the same range started at the same moment** may both write a
//!   request; the worker runs both, and the second finds the first's objects done.
//! - **A control object that cannot be read** (corrupt, or written by a newer version) is
//!   skipped with a warning naming its key; it never stops a worker or a backfill.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::currents::key::DateHour;
use crate::store::{ObjectStore, StoreError};

pub const CONTROL_PREFIX: &str = "control/";
/// How often a live worker rewrites its heartbeat; a heartbeat older than STALE_AFTER is not live.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// Heartbeats under here, one per worker.
const WORKERS: &str = "control/workers/";
/// Backfill requests under here, one folder per request.
const BACKFILLS: &str = "control/backfills/";
/// Control objects read at once when listing requests.
const READ_CONCURRENCY: usize = 8;

/// A `run` worker's sign of life: `control/workers/<worker>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `<host>-<pid>-<8 random hex>`, new at every start.
    pub worker: String,
    pub host: String,
    pub pid: u32,
    /// When the worker started (Unix seconds).
    pub started_at: i64,
    /// When this heartbeat was written (Unix seconds).
    pub beat_at: i64,
}

impl Heartbeat {
    /// A new worker's first heartbeat, with a new id.
    pub fn new_worker(now: i64) -> Heartbeat {
        let host = host_name();
        let pid = std::process::id();
        Heartbeat {
            worker: format!("{host}-{pid}-{}", random_hex()),
            host,
            pid,
            started_at: now,
            beat_at: now,
        }
    }

    /// Whether `beat_at` is within [`STALE_AFTER`] of `now`, either way (clocks differ).
    pub fn is_live(&self, now: i64) -> bool {
        now.saturating_sub(self.beat_at).unsigned_abs() <= STALE_AFTER.as_secs()
    }

    /// Seconds since the beat (negative if the writer's clock is ahead).
    pub fn age_secs(&self, now: i64) -> i64 {
        now.saturating_sub(self.beat_at)
    }
}

/// A range handed to a worker: `control/backfills/<id>/request.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRequest {
    /// `<unix seconds>-<8 random hex>`.
    pub id: String,
    /// First `date=` hour, inclusive; stored as `YYYY-MM-DD-HH`.
    #[serde(with = "hour_text")]
    pub from: DateHour,
    /// End of the range, exclusive.
    #[serde(with = "hour_text")]
    pub to: DateHour,
    /// The worker it is addressed to (see [`owner`]).
    pub worker: String,
    pub requested_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Written by `backfill`; no worker has started it yet.
    Queued,
    Running,
    /// Every object done, nothing parked, nothing failed.
    Done,
    /// Finished, but events were parked as dead letters or objects failed (exit 3).
    DoneWithFailures,
    /// The worker gave up on the range before its end (exit 4); `message` says why.
    Incomplete,
}

impl BackfillState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            BackfillState::Done | BackfillState::DoneWithFailures | BackfillState::Incomplete
        )
    }

    /// As people read it: `queued`, `running`, `done`, `done with failures`, `incomplete`.
    pub fn label(self) -> &'static str {
        match self {
            BackfillState::Queued => "queued",
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::DoneWithFailures => "done with failures",
            BackfillState::Incomplete => "incomplete",
        }
    }
}

impl std::fmt::Display for BackfillState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// How far a request is: `control/backfills/<id>/progress.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillProgress {
    /// The request's id.
    pub id: String,
    pub state: BackfillState,
    /// The worker running it (the addressee while queued).
    pub worker: String,
    /// Currents objects found in the range so far.
    pub found: u64,
    /// Objects ended: done, failed, or skipped as already done.
    pub ended: u64,
    /// Objects that could not be read as Currents data.
    pub failed: u64,
    pub events_sent: u64,
    pub events_parked: u64,
    /// When the worker started the range.
    pub started_at: Option<i64>,
    pub updated_at: i64,
    /// Why it is incomplete, or anything else a reader should know.
    pub message: Option<String>,
}

impl BackfillProgress {
    pub fn queued(req: &BackfillRequest, now: i64) -> Self {
        BackfillProgress {
            id: req.id.clone(),
            state: BackfillState::Queued,
            worker: req.worker.clone(),
            found: 0,
            ended: 0,
            failed: 0,
            events_sent: 0,
            events_parked: 0,
            started_at: None,
            updated_at: now,
            message: None,
        }
    }

    /// Seconds left at the pace so far: the time since `started_at` times the objects left
    /// over those ended. `None` before the first object ends; 0 once all found have ended.
    pub fn eta_secs(&self, now: i64) -> Option<u64> {
        let started = self.started_at?;
        if self.ended == 0 || self.found == 0 {
            return None;
        }
        let left = self.found.saturating_sub(self.ended);
        let elapsed = u128::from(now.saturating_sub(started).max(0).unsigned_abs());
        let eta = elapsed * u128::from(left) / u128::from(self.ended);
        Some(u64::try_from(eta).unwrap_or(u64::MAX))
    }
}

/// Why a control object could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The store failed; `source` names the store and the key.
    #[error("cannot {operation}: {source}")]
    Store {
        operation: &'static str,
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("control object {key} is not valid: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode control object {key}: {reason}")]
    Encode { key: String, reason: String },
    #[error(
        "{what} `{name}` cannot name a control object: use 1 to 200 letters, digits, `.`, `_` or `-`"
    )]
    InvalidName { what: &'static str, name: String },
    #[error("the range {from} to {to} is empty: its start must come before its end")]
    EmptyRange { from: DateHour, to: DateHour },
}

impl HandoverError {
    /// The control object's key, where one is concerned.
    pub fn key(&self) -> Option<&str> {
        match self {
            HandoverError::Store { key, .. }
            | HandoverError::Corrupt { key, .. }
            | HandoverError::Encode { key, .. } => Some(key),
            HandoverError::InvalidName { .. } | HandoverError::EmptyRange { .. } => None,
        }
    }
}

/// The control objects of one state store.
#[derive(Clone)]
pub struct Control {
    store: Arc<dyn ObjectStore>,
}

impl Control {
    pub fn new(state: Arc<dyn ObjectStore>) -> Self {
        Control { store: state }
    }

    /// Writes the worker's heartbeat: `control/workers/<worker>.json`.
    pub async fn beat(&self, hb: &Heartbeat) -> Result<(), HandoverError> {
        check_name("worker id", &hb.worker)?;
        self.put_json("write the heartbeat", &worker_key(&hb.worker), hb)
            .await
    }

    /// Deletes the worker's heartbeat, at a clean stop.
    pub async fn retire(&self, worker: &str) -> Result<(), HandoverError> {
        check_name("worker id", worker)?;
        let key = worker_key(worker);
        self.store
            .delete(&key)
            .await
            .map_err(|source| HandoverError::Store {
                operation: "delete the heartbeat",
                key,
                source,
            })
    }

    /// Every readable heartbeat, live or not, sorted by worker id; unreadable ones are skipped
    /// with a warning.
    pub async fn workers(&self) -> Result<Vec<Heartbeat>, HandoverError> {
        let listed = self.list("list the worker heartbeats", WORKERS).await?;
        let keys: Vec<String> = listed
            .into_iter()
            .filter(|key| key.ends_with(".json"))
            .collect();
        let mut workers: Vec<Heartbeat> = futures_util::stream::iter(keys)
            .map(|key| async move {
                self.get_json::<Heartbeat>("read a heartbeat", &key)
                    .await
                    .map_err(|e| tracing::warn!("skipping a heartbeat: {e}"))
                    .ok()
                    .flatten()
            })
            .buffered(READ_CONCURRENCY)
            .filter_map(|hb| async move { hb })
            .collect()
            .await;
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(workers)
    }

    /// The live workers (see [`Heartbeat::is_live`]), sorted by worker id; unreadable
    /// heartbeats are skipped with a warning.
    pub async fn live_workers(&self, now: i64) -> Result<Vec<Heartbeat>, HandoverError> {
        let mut workers = self.workers().await?;
        workers.retain(|hb| hb.is_live(now));
        Ok(workers)
    }

    /// Deletes the heartbeats not live for longer than `older_than` (workers killed without a
    /// clean stop leave theirs); returns how many. For a worker to call now and then.
    pub async fn prune_workers(
        &self,
        now: i64,
        older_than: Duration,
    ) -> Result<usize, HandoverError> {
        let limit = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let mut pruned = 0;
        for hb in self.workers().await? {
            if hb.age_secs(now) > limit && check_name("worker id", &hb.worker).is_ok() {
                self.retire(&hb.worker).await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Hands `from`..`to` over to `worker`: writes `progress.json` (queued), then
    /// `request.json`, and returns the request.
    pub async fn request(
        &self,
        from: DateHour,
        to: DateHour,
        worker: &str,
        now: i64,
    ) -> Result<BackfillRequest, HandoverError> {
        if from >= to {
            return Err(HandoverError::EmptyRange { from, to });
        }
        let request = BackfillRequest {
            id: format!("{now}-{}", random_hex()),
            from,
            to,
            worker: worker.to_string(),
            requested_at: now,
        };
        // Progress first: a worker finds requests by `request.json`, so it never starts one
        // whose queued progress could still overwrite what it writes.
        self.report(&BackfillProgress::queued(&request, now))
            .await?;
        self.put_json(
            "write the backfill request",
            &request_key(&request.id),
            &request,
        )
        .await?;
        Ok(request)
    }

    /// Re-addresses `request` to `worker` (a worker adopting a request whose addressee is no
    /// longer live), so that [`owner`] keeps naming it; returns the request as written.
    pub async fn adopt(
        &self,
        request: &BackfillRequest,
        worker: &str,
    ) -> Result<BackfillRequest, HandoverError> {
        check_name("backfill request id", &request.id)?;
        let adopted = BackfillRequest {
            worker: worker.to_string(),
            ..request.clone()
        };
        self.put_json(
            "re-address the backfill request",
            &request_key(&adopted.id),
            &adopted,
        )
        .await?;
        Ok(adopted)
    }

    /// Every request with its progress (`None` if it has none, or it is unreadable), oldest
    /// first. Unreadable requests are skipped with a warning.
    pub async fn requests(
        &self,
    ) -> Result<Vec<(BackfillRequest, Option<BackfillProgress>)>, HandoverError> {
        self.requests_except(&std::collections::HashSet::new())
            .await
    }

    /// [`Control::requests`] without reading the requests whose ids are in `skip` (a worker
    /// skips those it has seen end: two reads per request ever made, every 30 s, would grow
    /// with the history).
    pub async fn requests_except(
        &self,
        skip: &std::collections::HashSet<String>,
    ) -> Result<Vec<(BackfillRequest, Option<BackfillProgress>)>, HandoverError> {
        let listed = self.list("list the backfill requests", BACKFILLS).await?;
        let mut with_progress = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for key in &listed {
            let Some((id, file)) = key
                .strip_prefix(BACKFILLS)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            match file {
                "request.json" if skip.contains(id) => {}
                "request.json" => ids.push(id.to_string()),
                "progress.json" => {
                    with_progress.insert(id.to_string());
                }
                _ => {}
            }
        }
        let with_progress = &with_progress;
        let mut requests: Vec<_> = futures_util::stream::iter(ids)
            .map(|id| async move {
                let request = match self
                    .get_json::<BackfillRequest>("read a backfill request", &request_key(&id))
                    .await
                {
                    // Its progress is written under its id: one that is not its folder's name
                    // (or not a plain name) could never report, or would report elsewhere.
                    Ok(Some(request)) if request.id != id => {
                        tracing::warn!(
                            "skipping the backfill request {}: its id `{}` is not its folder's name",
                            request_key(&id),
                            request.id.escape_debug()
                        );
                        return None;
                    }
                    Ok(Some(request)) => request,
                    // Deleted since the listing.
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!("skipping a backfill request: {e}");
                        return None;
                    }
                };
                let progress = if with_progress.contains(&id) {
                    self.progress(&id)
                        .await
                        .map_err(|e| tracing::warn!("backfill {id}: {e}"))
                        .ok()
                        .flatten()
                } else {
                    None
                };
                Some((request, progress))
            })
            .buffered(READ_CONCURRENCY)
            .filter_map(|read| async move { read })
            .collect()
            .await;
        requests.sort_by(|(a, _), (b, _)| (a.requested_at, &a.id).cmp(&(b.requested_at, &b.id)));
        Ok(requests)
    }

    /// One request, if it exists.
    pub async fn get_request(&self, id: &str) -> Result<Option<BackfillRequest>, HandoverError> {
        check_name("backfill request id", id)?;
        self.get_json("read the backfill request", &request_key(id))
            .await
    }

    /// One request's progress, if it has any.
    pub async fn progress(&self, id: &str) -> Result<Option<BackfillProgress>, HandoverError> {
        check_name("backfill request id", id)?;
        self.get_json("read the backfill progress", &progress_key(id))
            .await
    }

    /// Writes a request's progress.
    pub async fn report(&self, progress: &BackfillProgress) -> Result<(), HandoverError> {
        check_name("backfill request id", &progress.id)?;
        self.put_json(
            "write the backfill progress",
            &progress_key(&progress.id),
            progress,
        )
        .await
    }

    async fn list(
        &self,
        operation: &'static str,
        prefix: &str,
    ) -> Result<Vec<String>, HandoverError> {
        let listed = self
            .store
            .list(prefix)
            .await
            .map_err(|source| HandoverError::Store {
                operation,
                key: prefix.to_string(),
                source,
            })?;
        Ok(listed.into_iter().map(|meta| meta.key).collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        key: &str,
    ) -> Result<Option<T>, HandoverError> {
        let bytes = match self.store.get(key).await {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(source) => {
                return Err(HandoverError::Store {
                    operation,
                    key: key.to_string(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HandoverError::Corrupt {
                key: key.to_string(),
                reason: e.to_string(),
            })
    }

    async fn put_json<T: Serialize>(
        &self,
        operation: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), HandoverError> {
        let body = serde_json::to_vec_pretty(value).map_err(|e| HandoverError::Encode {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        self.store
            .put(key, body)
            .await
            .map_err(|source| HandoverError::Store {
                operation,
                key: key.to_string(),
                source,
            })
    }
}

/// Which live worker runs a request: its addressee if live, else the live worker with the lowest id (so two workers never both adopt it), else None.
pub fn owner<'a>(request: &BackfillRequest, live: &'a [Heartbeat]) -> Option<&'a str> {
    live.iter()
        .find(|hb| hb.worker == request.worker)
        .or_else(|| live.iter().min_by(|a, b| a.worker.cmp(&b.worker)))
        .map(|hb| hb.worker.as_str())
}

fn worker_key(worker: &str) -> String {
    format!("{WORKERS}{worker}.json")
}

fn request_key(id: &str) -> String {
    format!("{BACKFILLS}{id}/request.json")
}

fn progress_key(id: &str) -> String {
    format!("{BACKFILLS}{id}/progress.json")
}

/// Ids become one key segment: plain characters only, so that every store takes them as
/// they are and none steps outside its folder.
fn check_name(what: &'static str, name: &str) -> Result<(), HandoverError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=200).contains(&name.len()) && name.chars().all(plain) && name != "." && name != ".." {
        Ok(())
    } else {
        Err(HandoverError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// This host's name (the pod's, in Kubernetes) as a worker id takes it: `unknown` if none can
/// be read, characters other than letters, digits, `.`, `_` and `-` as `_`, at most 63.
fn host_name() -> String {
    let read = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into());
    read.chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// 32 random bits as 8 hex digits: from the operating system, else from fastrand (ids need
/// only be unlikely to collide).
fn random_hex() -> String {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = fastrand::u32(..).to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A [`DateHour`] as its `YYYY-MM-DD-HH` text; read back also as `YYYY-MM-DDTHH` or a day.
mod hour_text {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::currents::key::DateHour;

    pub fn serialize<S: Serializer>(hour: &DateHour, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(hour)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateHour, D::Error> {
        let text = String::deserialize(d)?;
        DateHour::parse(&text)
            .ok_or(())
            .or_else(|()| crate::source::parse_date_arg(&text))
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadletter::{DeadLetterFilter, DeadLetterStore};
    use crate::ledger::Ledger;
    use crate::store::LocalStore;

    /// A state directory that does not exist yet, removed when dropped.
    struct State(std::path::PathBuf);

    impl State {
        fn new(label: &str) -> (State, Control, Arc<dyn ObjectStore>) {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "currents-heap-handover-{label}-{}-{}",
                std::process::id(),
                N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let store: Arc<dyn ObjectStore> = Arc::new(LocalStore::lazy(&dir));
            (State(dir), Control::new(store.clone()), store)
        }
    }

    impl Drop for State {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn hour(text: &str) -> DateHour {
        DateHour::parse(text).unwrap()
    }

    fn beat(worker: &str, beat_at: i64) -> Heartbeat {
        Heartbeat {
            worker: worker.into(),
            host: "h".into(),
            pid: 1,
            started_at: 0,
            beat_at,
        }
    }

    const NOW: i64 = 1_764_248_400;

    #[test]
    fn a_new_worker_has_a_fresh_id_of_host_pid_and_random_hex() {
        let a = Heartbeat::new_worker(NOW);
        let b = Heartbeat::new_worker(NOW);
        assert_ne!(a.worker, b.worker, "a restarted worker is a new worker");
        let (rest, hex) = a.worker.rsplit_once('-').unwrap();
        assert_eq!(hex.len(), 8);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(rest, format!("{}-{}", a.host, std::process::id()));
        assert_eq!(
            (a.started_at, a.beat_at, a.pid),
            (NOW, NOW, std::process::id())
        );
        check_name("worker id", &a.worker).unwrap();
    }

    #[test]
    fn a_heartbeat_is_live_within_stale_after_either_way() {
        let stale = STALE_AFTER.as_secs() as i64;
        let hb = beat("w", NOW);
        assert!(hb.is_live(NOW));
        assert!(hb.is_live(NOW + stale));
        assert!(!hb.is_live(NOW + stale + 1));
        assert!(hb.is_live(NOW - stale), "a writer's clock a little ahead");
        assert!(!hb.is_live(NOW - stale - 1));
        assert!(!beat("w", i64::MIN).is_live(i64::MAX));
        assert!(HEARTBEAT_INTERVAL * 3 <= STALE_AFTER, "three missed beats");
    }

    #[tokio::test]
    async fn live_workers_are_the_fresh_readable_ones_sorted_by_id() {
        let (_dir, control, store) = State::new("live");
        assert!(
            control.live_workers(NOW).await.unwrap().is_empty(),
            "no state yet"
        );
        control.beat(&beat("w-b", NOW - 10)).await.unwrap();
        control.beat(&beat("w-a", NOW)).await.unwrap();
        control.beat(&beat("w-old", NOW - 91)).await.unwrap();
        store
            .put("control/workers/w-bad.json", b"{not json".to_vec())
            .await
            .unwrap();
        let live = control.live_workers(NOW).await.unwrap();
        let ids: Vec<&str> = live.iter().map(|hb| hb.worker.as_str()).collect();
        assert_eq!(ids, ["w-a", "w-b"]);
        assert_eq!(control.workers().await.unwrap().len(), 3);

        control.retire("w-a").await.unwrap();
        control.retire("w-a").await.unwrap();
        let live = control.live_workers(NOW).await.unwrap();
        assert_eq!(live, [beat("w-b", NOW - 10)]);

        assert_eq!(
            control
                .prune_workers(NOW, Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            control
                .prune_workers(NOW + 3580, Duration::from_secs(3600))
                .await
                .unwrap(),
            1,
            "w-old, stale for over an hour"
        );
        assert_eq!(control.workers().await.unwrap(), [beat("w-b", NOW - 10)]);
    }

    #[tokio::test]
    async fn a_request_writes_queued_progress_and_is_listed_oldest_first() {
        let (_dir, control, store) = State::new("request");
        let (from, to) = (hour("2026-11-01-00"), hour("2026-11-08-00"));
        let second = control.request(from, to, "w-a", NOW + 5).await.unwrap();
        let first = control
            .request(hour("2026-10-01-05"), hour("2026-10-02-00"), "w-b", NOW)
            .await
            .unwrap();
        let (unix, hex) = second.id.split_once('-').unwrap();
        assert_eq!(unix, (NOW + 5).to_string());
        assert!(hex.len() == 8 && hex.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!((second.from, second.to), (from, to));
        assert_eq!(
            (second.worker.as_str(), second.requested_at),
            ("w-a", NOW + 5)
        );

        let text = String::from_utf8(
            store
                .get(&format!("control/backfills/{}/request.json", second.id))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(text.contains("\"from\": \"2026-11-01-00\""), "{text}");

        let listed = control.requests().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].0, first);
        assert_eq!(listed[1].0, second);
        let queued = listed[1].1.clone().unwrap();
        assert_eq!(queued, BackfillProgress::queued(&second, NOW + 5));
        assert_eq!(queued.state, BackfillState::Queued);
        assert_eq!(queued.worker, "w-a");

        let running = BackfillProgress {
            state: BackfillState::Running,
            worker: "w-a".into(),
            found: 10,
            ended: 4,
            events_sent: 400,
            started_at: Some(NOW + 10),
            updated_at: NOW + 30,
            ..queued
        };
        control.report(&running).await.unwrap();
        assert_eq!(control.progress(&second.id).await.unwrap(), Some(running));
        assert_eq!(control.progress("1-00000000").await.unwrap(), None);
        assert_eq!(
            control.get_request(&first.id).await.unwrap(),
            Some(first.clone())
        );

        let adopted = control.adopt(&first, "w-c").await.unwrap();
        assert_eq!(adopted.worker, "w-c");
        assert_eq!(control.get_request(&first.id).await.unwrap(), Some(adopted));

        assert!(matches!(
            control.request(to, from, "w-a", NOW).await,
            Err(HandoverError::EmptyRange { .. })
        ));
        assert!(matches!(
            control.request(from, from, "w-a", NOW).await,
            Err(HandoverError::EmptyRange { .. })
        ));
    }

    #[tokio::test]
    async fn unreadable_control_objects_are_skipped_or_named() {
        let (_dir, control, store) = State::new("corrupt");
        let good = control
            .request(hour("2026-11-01-00"), hour("2026-11-02-00"), "w", NOW)
            .await
            .unwrap();
        store
            .put("control/backfills/2-bad/request.json", b"[]".to_vec())
            .await
            .unwrap();
        // Progress alone: a backfill that stopped between its two writes.
        store
            .put("control/backfills/3-orphan/progress.json", b"{}".to_vec())
            .await
            .unwrap();
        store
            .put(
                &format!("control/backfills/{}/progress.json", good.id),
                b"{\"id\": 1}".to_vec(),
            )
            .await
            .unwrap();
        let listed = control.requests().await.unwrap();
        assert_eq!(listed, [(good.clone(), None)]);
        let error = control.progress(&good.id).await.unwrap_err();
        let key = format!("control/backfills/{}/progress.json", good.id);
        assert_eq!(error.key(), Some(key.as_str()));
        assert!(error.to_string().contains(&key), "{error}");
    }

    #[tokio::test]
    async fn ids_that_are_not_one_plain_key_segment_are_refused() {
        let (dir, control, _) = State::new("names");
        for bad in ["", ".", "..", "a/b", "../x", "a b", &"x".repeat(201)] {
            assert!(
                matches!(
                    control.beat(&beat(bad, NOW)).await,
                    Err(HandoverError::InvalidName { .. })
                ),
                "{bad:?}"
            );
            assert!(control.retire(bad).await.is_err(), "{bad:?}");
            assert!(control.progress(bad).await.is_err(), "{bad:?}");
        }
        assert!(!dir.0.exists(), "nothing was written");
    }

    #[tokio::test]
    async fn the_ledger_and_dead_letters_do_not_see_control_objects() {
        let (_dir, control, store) = State::new("apart");
        control.beat(&beat("w", NOW)).await.unwrap();
        control
            .request(hour("2026-11-01-00"), hour("2026-11-02-00"), "w", NOW)
            .await
            .unwrap();
        let dead_letters = DeadLetterStore::new(store.clone());
        assert!(
            dead_letters
                .list(&DeadLetterFilter::default())
                .await
                .unwrap()
                .is_empty()
        );
        let (finished, failed) = Ledger::new(store).read_all().await.unwrap();
        assert!(finished.is_empty() && failed.entries.is_empty() && failed.unreadable.is_empty());
    }

    #[test]
    fn the_owner_is_the_live_addressee_else_the_lowest_live_id() {
        let request = BackfillRequest {
            id: "1-00000000".into(),
            from: hour("2026-11-01-00"),
            to: hour("2026-11-02-00"),
            worker: "w-m".into(),
            requested_at: NOW,
        };
        let live = [beat("w-a", NOW), beat("w-m", NOW), beat("w-z", NOW)];
        assert_eq!(owner(&request, &live), Some("w-m"));
        let unsorted = [beat("w-z", NOW), beat("w-b", NOW)];
        assert_eq!(owner(&request, &unsorted), Some("w-b"));
        assert_eq!(owner(&request, &[]), None);
    }

    #[test]
    fn eta_follows_the_pace_so_far() {
        let request = BackfillRequest {
            id: "1-00000000".into(),
            from: hour("2026-11-01-00"),
            to: hour("2026-11-02-00"),
            worker: "w".into(),
            requested_at: NOW,
        };
        let mut progress = BackfillProgress::queued(&request, NOW);
        assert_eq!(progress.eta_secs(NOW), None, "not started");
        progress.started_at = Some(NOW);
        progress.found = 100;
        assert_eq!(progress.eta_secs(NOW + 60), None, "nothing ended yet");
        progress.ended = 25;
        assert_eq!(progress.eta_secs(NOW + 60), Some(180));
        progress.ended = 100;
        assert_eq!(progress.eta_secs(NOW + 60), Some(0));
        progress.ended = 1;
        progress.found = u64::MAX;
        assert_eq!(progress.eta_secs(i64::MAX), Some(u64::MAX), "saturates");
        assert!(!BackfillState::Queued.is_terminal() && !BackfillState::Running.is_terminal());
        assert!(BackfillState::Done.is_terminal() && BackfillState::Incomplete.is_terminal());
        assert!(BackfillState::DoneWithFailures.is_terminal());
    }

    #[test]
    fn states_and_hours_read_back_as_written() {
        let json = serde_json::to_string(&BackfillState::DoneWithFailures).unwrap();
        assert_eq!(json, "\"done_with_failures\"");
        let request: BackfillRequest = serde_json::from_str(
            r#"{"id":"1-0","from":"2026-11-01T05","to":"2026-11-02","worker":"w","requested_at":1}"#,
        )
        .unwrap();
        assert_eq!(request.from, hour("2026-11-01-05"));
        assert_eq!(request.to, hour("2026-11-02-00"));
        let back: BackfillRequest =
            serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(back, request);
        assert!(
            serde_json::from_str::<BackfillRequest>(
                r#"{"id":"1-0","from":"2026-13-01","to":"2026-11-02","worker":"w","requested_at":1}"#
            )
            .is_err()
        );
    }
}
