//! The control client: reads and writes the control objects of one state store, and the
//! owner rule that decides which live worker runs a request.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;

use super::objects::random_hex;
use super::{
    BackfillProgress, BackfillRequest, FINISHED_KEPT, HEARTBEAT_RETENTION, Heartbeat,
    REQUEST_RETENTION, RangeError, STALE_AFTER, check_range,
};
use crate::currents::key::DateHour;
use crate::store::{ObjectStore, StoreError};

/// Heartbeats under here, one per worker.
const WORKERS: &str = "control/workers/";
/// Backfill requests under here, one folder per request.
const BACKFILLS: &str = "control/backfills/";
/// Control objects read at once when listing requests.
const READ_CONCURRENCY: usize = 8;

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
    #[error(transparent)]
    Range(#[from] RangeError),
}

impl HandoverError {
    /// The control object's key, where one is concerned.
    pub fn key(&self) -> Option<&str> {
        match self {
            HandoverError::Store { key, .. }
            | HandoverError::Corrupt { key, .. }
            | HandoverError::Encode { key, .. } => Some(key),
            HandoverError::InvalidName { .. } | HandoverError::Range(_) => None,
        }
    }
}

/// What one [`Control::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub heartbeats: usize,
    pub requests: usize,
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

    /// Applies the retention rule (see [`crate::handover`]): deletes the heartbeats stale for
    /// over [`HEARTBEAT_RETENTION`] and the requests that ended over [`REQUEST_RETENTION`] ago
    /// beyond the [`FINISHED_KEPT`] most recent. The live worker's desk calls it every
    /// [`super::PRUNE_EVERY`]. A failure is logged: the next turn tries again.
    pub async fn prune(&self, now: i64) -> Pruned {
        let heartbeats = self
            .prune_workers(now, HEARTBEAT_RETENTION)
            .await
            .map_err(|e| tracing::warn!("cannot delete stale heartbeats: {e}"))
            .unwrap_or(0);
        let requests = self
            .prune_requests(now, REQUEST_RETENTION, FINISHED_KEPT)
            .await
            .map_err(|e| tracing::warn!("cannot delete old backfill requests: {e}"))
            .unwrap_or(0);
        if heartbeats + requests > 0 {
            tracing::info!(
                heartbeats,
                requests,
                "deleted control objects past their retention"
            );
        }
        Pruned {
            heartbeats,
            requests,
        }
    }

    /// Deletes the heartbeats not live for longer than `older_than` (never less than
    /// [`STALE_AFTER`], so a live worker's stays), either way (a writer whose clock ran far
    /// ahead left one dated in the future); returns how many.
    pub async fn prune_workers(
        &self,
        now: i64,
        older_than: Duration,
    ) -> Result<usize, HandoverError> {
        let limit = older_than.max(STALE_AFTER).as_secs();
        let mut pruned = 0;
        for hb in self.workers().await? {
            if hb.age_secs(now).unsigned_abs() > limit
                && check_name("worker id", &hb.worker).is_ok()
            {
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
        check_range(from, to)?;
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

    /// Deletes the requests that ended (terminal progress) more than `older_than` before
    /// `now`, except the `keep` most recent finished ones (those `status` lists); an open
    /// request, or one whose progress is missing or unreadable, is never deleted. Also
    /// deletes a progress left without its request for longer than `older_than` (a deletion
    /// interrupted, or a `backfill` stopped between its two writes). Returns how many.
    pub async fn prune_requests(
        &self,
        now: i64,
        older_than: Duration,
        keep: usize,
    ) -> Result<usize, HandoverError> {
        let limit = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let old = |p: &BackfillProgress| now.saturating_sub(p.updated_at) > limit;
        let requests = self.requests().await?;
        // Oldest first, as `status` orders them.
        let finished: Vec<&BackfillProgress> = requests
            .iter()
            .filter_map(|(_, p)| p.as_ref().filter(|p| p.state.is_terminal()))
            .collect();
        let kept_from = finished.len().saturating_sub(keep);
        let mut pruned = 0;
        for progress in finished[..kept_from].iter().filter(|p| old(p)) {
            self.delete_request(&progress.id).await?;
            pruned += 1;
        }
        let with_request: std::collections::HashSet<&str> =
            requests.iter().map(|(r, _)| r.id.as_str()).collect();
        for key in self.list("list the backfill requests", BACKFILLS).await? {
            let Some(id) = key
                .strip_prefix(BACKFILLS)
                .and_then(|rest| rest.strip_suffix("/progress.json"))
            else {
                continue;
            };
            if with_request.contains(id) || check_name("backfill request id", id).is_err() {
                continue;
            }
            // The request may have been written since the listing: only an old progress goes.
            if let Ok(Some(progress)) = self.progress(id).await
                && old(&progress)
                && self.get_request(id).await?.is_none()
            {
                self.delete_object("delete an orphaned backfill progress", &key)
                    .await?;
                pruned += 1;
            }
        }
        Ok(pruned)
    }

    /// Deletes a request: `request.json` first, so that no worker finds a request without
    /// its terminal progress (and runs it again) if the second deletion never happens.
    async fn delete_request(&self, id: &str) -> Result<(), HandoverError> {
        check_name("backfill request id", id)?;
        self.delete_object("delete a backfill request", &request_key(id))
            .await?;
        self.delete_object("delete a backfill progress", &progress_key(id))
            .await
    }

    async fn delete_object(&self, operation: &'static str, key: &str) -> Result<(), HandoverError> {
        self.store
            .delete(key)
            .await
            .map_err(|source| HandoverError::Store {
                operation,
                key: key.to_string(),
                source,
            })
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

/// Which live worker runs a request: its addressee if live, else [`addressee`]'s choice (so
/// two workers never both adopt it), else None.
pub fn owner<'a>(request: &BackfillRequest, live: &'a [Heartbeat]) -> Option<&'a str> {
    live.iter()
        .find(|hb| hb.worker == request.worker)
        .map(|hb| hb.worker.as_str())
        .or_else(|| addressee(live))
}

/// The live worker a new request is addressed to, and the one that adopts a request whose
/// addressee is not live: the lowest live id, which every reader of the same heartbeats
/// computes alike. None with no worker live.
pub fn addressee(live: &[Heartbeat]) -> Option<&str> {
    live.iter().map(|hb| hb.worker.as_str()).min()
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
pub(super) fn check_name(what: &'static str, name: &str) -> Result<(), HandoverError> {
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
