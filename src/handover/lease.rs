//! The lease: at most one process sends to the Heap app of a state at a time.
//!
//! # Why
//! Heap's rate limit belongs to the app, not to a process. Two replicas (or a `run` and a
//! `backfill`) pacing themselves separately send up to twice the limit, and Heap answers
//! 429. So one process holds a lease in the state store, and only the holder discovers
//! objects, runs backfill requests, sends to Heap and writes checkpoints. Other `run`
//! replicas are hot standbys: ready, watching the lease, taking over within seconds.
//!
//! # The object
//! `control/lease.json` in the state ([`LEASE_KEY`]), a [`LeaseBody`] in JSON: the holder's
//! id and role, `held` or `released`, a write counter (so every write changes the object),
//! the holder's lease duration, and what the holder sent to Heap in the last window
//! (`sent`: opaque here, delivery writes and reads it). Every write is conditional, with the store's own compare-and-swap
//! ([`ObjectStore::put_if`]): create only if absent, or replace only the version last read.
//! Of two processes writing on the same version, exactly one succeeds.
//!
//! # Timings ([`LeaseTimings`], after client-go's leader election)
//! Lease duration D (15 s), renew deadline 2D/3 (10 s), renewal every D/3 (5 s), standbys
//! read the lease every `watch_every` (2 s).
//!
//! # Protocol
//! 1. **Acquire.** A candidate reads the lease. Absent: it creates it. `released`: it replaces
//!    that version at once. Held by another: it notes the version and when it first saw it,
//!    **on its own monotonic clock**; when it has seen the same version for D, the lease has
//!    expired and it replaces that version. Wall clocks are never compared across hosts: the
//!    `written_at` field is for people. A lost race (the condition failed) means another
//!    candidate won: back to watching.
//! 2. **Renew.** The holder rewrites its version every D/3 with its recent sends (after a
//!    failed try, every `watch_every` until one succeeds or the deadline passes). A renewal
//!    that started at `t` and succeeded lets it start Heap requests until `t + 2D/3`
//!    ([`Holding::may_send_until`]); delivery checks that deadline itself before every
//!    request (a fence), so a holder cut off from the store, or stuck, stops sending
//!    **before** anyone may take over: a candidate saw the renewal's version no earlier than
//!    `t`, and waits D after that. A renewal refused by the condition means the lease was
//!    taken: the holder stops at once.
//! 3. **Release.** A clean stop drains, writes its checkpoints, and replaces its version with
//!    `released` and its final sends: a standby takes over within `watch_every`, not D.
//! 4. **The budget crosses over.** The new holder counts its predecessor's sends in its pacer
//!    before its first request ([`Takeover::predecessor`]): after a release, exactly what the lease
//!    says; after an expiry, also the rest of the budget as if spent at the moment of the
//!    takeover, since the predecessor may have sent after its last renewal (see
//!    `heap::pacer::Seed` for why that is safe). Heap never sees more than the budget in a
//!    window because of a takeover.
//!
//! # Failure cases
//! - **Holder killed:** its lease stays `held`; standbys take over D after they last saw it
//!   change (15–17 s), resuming its objects from their checkpoints.
//! - **State unreachable for the holder:** it cannot renew; at `t + 2D/3` it stops starting
//!   requests, says so in the log and `/readyz`, and goes back to watching.
//! - **State unreachable for everyone:** nobody can take over, and nobody sends.
//! - **A store that ignores the conditions** would let two holders in: `run` and `backfill`
//!   probe the store at start ([`crate::store::probe_conditions`]) and refuse it, unless told
//!   there is one process (`--single-process`).
//! - **Clock rates:** the rule needs the holder's 2D/3 to end before a candidate's D, measured
//!   on two clocks: rates may differ by a third before that breaks, far beyond any real
//!   clock's drift.
//! - **An unreadable lease** (corrupt, or written by a newer version) is treated as held by
//!   someone unknown, with a warning naming it: it expires after [`MAX_DURATION`] unchanged
//!   (the holder's own D is unknown), and is then replaced. A live holder finds its next
//!   renewal refused, reads the object, and writes its lease over it (on that version, so a
//!   standby that did so first wins): the usual case, a hand edit, costs no gap.
//! - **A deleted lease** (a cleanup rule, a hand): the holder's renewal is refused; it reads
//!   the lease, finds it missing and creates it again, keeping its place and its record of
//!   what it sent; a standby that creates it first wins, and the old holder stops at once.
//! - **A renewal that landed but answered an error** (a 500 or a reset connection after the
//!   store committed it): the next renewal is refused, because the version moved. The holder
//!   reads the lease, finds its own id in it (no other process writes that id, and any
//!   takeover replaces it), and renews on that version instead of giving the lease up.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_secs_now;
use crate::store::{ObjectStore, PutCondition, StoreError, StoreErrorKind};
use crate::telemetry::Metrics;

/// The lease object, in the state.
pub const LEASE_KEY: &str = "control/lease.json";

/// The longest lease duration a holder may have (`--lease-duration`'s bound): how long an
/// unreadable lease is waited for.
pub const MAX_DURATION: Duration = Duration::from_secs(300);

/// The lease's durations (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// D: how long a candidate must see the lease unchanged before it may take it.
    pub duration: Duration,
    /// 2D/3: how long after a renewal started the holder may start Heap requests.
    pub renew_deadline: Duration,
    /// D/3: how often the holder renews.
    pub renew_every: Duration,
    /// How often a standby reads the lease.
    pub watch_every: Duration,
}

impl LeaseTimings {
    /// The timings for a lease duration `duration`: client-go's 15 s / 10 s proportions;
    /// standbys read every 2 s, or D/5 for a shorter D.
    pub fn of(duration: Duration) -> Self {
        LeaseTimings {
            duration,
            renew_deadline: duration * 2 / 3,
            renew_every: duration / 3,
            watch_every: (duration / 5).min(Duration::from_secs(2)),
        }
    }
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings::of(Duration::from_secs(15))
    }
}

/// Which command holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A `run` worker: it takes backfill requests.
    Run,
    /// A `backfill` running its range itself: it hands over to a `run` worker that waits.
    Backfill,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Run => "`run`",
            Role::Backfill => "`backfill`",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Held,
    Released,
}

/// The lease object's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseBody {
    /// The holder's worker id (`<host>-<pid>-<8 hex>`).
    pub holder: String,
    pub role: Role,
    pub state: LeaseState,
    /// Writes since the lease was created: every write changes the object's bytes.
    pub writes: u64,
    /// The holder's D, in milliseconds: candidates wait the longer of theirs and this.
    pub duration_ms: u64,
    /// When this was written, Unix seconds by the holder's clock: for people, never for
    /// expiry.
    pub written_at: i64,
    /// What the holder sent to the app in the last window, as of this write: delivery's
    /// record (`heap::pacer::SentHistory`), carried as it is.
    #[serde(default)]
    pub sent: serde_json::Value,
}

/// What a read of the lease found.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Absent,
    /// `body` is `None` when the object cannot be read as a lease.
    Present {
        version: String,
        body: Option<LeaseBody>,
    },
}

/// What a candidate does after a read ([`Watch::judge`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Write the lease under this condition; on success it holds it.
    Take {
        condition: PutCondition,
        takeover: Takeover,
    },
    /// Someone else holds it: `live` once this candidate has seen it change.
    Held { body: Option<LeaseBody>, live: bool },
}

/// How a lease was taken, and what the predecessor sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Takeover {
    /// There was no lease.
    Fresh,
    /// The predecessor released it: its history is complete.
    Released {
        history: serde_json::Value,
        observed_at: Instant,
    },
    /// The predecessor stopped renewing: it may have sent after its last renewal, until
    /// `unknown_until`.
    Expired {
        history: serde_json::Value,
        observed_at: Instant,
        unknown_until: Instant,
    },
}

impl Takeover {
    /// The predecessor's record of its sends, when this process read it (its ages count
    /// back from there), and, after an expiry, until when it may have sent unrecorded.
    /// `None`: there was no predecessor.
    pub fn predecessor(&self) -> Option<(&serde_json::Value, Instant, Option<Instant>)> {
        match self {
            Takeover::Fresh => None,
            Takeover::Released {
                history,
                observed_at,
            } => Some((history, *observed_at, None)),
            Takeover::Expired {
                history,
                observed_at,
                unknown_until,
            } => Some((history, *observed_at, Some(*unknown_until))),
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Takeover::Fresh => "no lease before",
            Takeover::Released { .. } => "released by its holder",
            Takeover::Expired { .. } => "expired",
        }
    }
}

/// A candidate's memory of the lease: the version it last saw and since when, on its own
/// clock. The pure rule of step 1.
#[derive(Debug, Default)]
pub struct Watch {
    seen: Option<(String, Instant)>,
    /// Whether this candidate has seen the version change (the holder renews).
    changed: bool,
}

impl Watch {
    /// What to do after `read` at `now`, as the candidate `me` with timings `timings`.
    pub fn judge(
        &mut self,
        read: &Read,
        me: &str,
        timings: &LeaseTimings,
        now: Instant,
    ) -> Verdict {
        let (version, body) = match read {
            Read::Absent => {
                self.seen = None;
                return Verdict::Take {
                    condition: PutCondition::Absent,
                    takeover: Takeover::Fresh,
                };
            }
            Read::Present { version, body } => (version, body),
        };
        let since = match &self.seen {
            Some((seen, since)) if seen == version => *since,
            previous => {
                self.changed |= previous.is_some();
                self.seen = Some((version.clone(), now));
                now
            }
        };
        let condition = PutCondition::Version(version.clone());
        let history = || body.as_ref().map(|b| b.sent.clone()).unwrap_or_default();
        match body {
            Some(b) if b.state == LeaseState::Released || b.holder == me => {
                // Released, or written by this very process (a renewal whose answer was
                // lost): its history is complete.
                return Verdict::Take {
                    condition,
                    takeover: Takeover::Released {
                        history: history(),
                        observed_at: since,
                    },
                };
            }
            _ => {}
        }
        // An unreadable lease says nothing of its holder's duration: wait the longest one a
        // holder may have, so that a holder with a longer one is never overlapped.
        let duration = body.as_ref().map_or(MAX_DURATION, |b| {
            timings.duration.max(Duration::from_millis(b.duration_ms))
        });
        if now.duration_since(since) >= duration {
            return Verdict::Take {
                condition,
                takeover: Takeover::Expired {
                    history: history(),
                    observed_at: since,
                    // The holder stopped starting requests by `since + 2D/3`; its last
                    // requests reached Heap within the rest of D.
                    unknown_until: now,
                },
            };
        }
        Verdict::Held {
            body: body.clone(),
            live: self.changed,
        }
    }

    /// Forget what was seen (after a lost race, or on becoming a candidate again).
    pub fn reset(&mut self) {
        *self = Watch::default();
    }
}

/// The holder's side of the rule: its version, and until when it may start requests.
#[derive(Debug, Clone)]
pub struct Holding {
    pub version: String,
    pub body: LeaseBody,
    /// The start of the last successful write plus the renew deadline.
    pub may_send_until: Instant,
}

impl Holding {
    fn after_write(version: String, body: LeaseBody, started: Instant, t: &LeaseTimings) -> Self {
        Holding {
            version,
            body,
            may_send_until: started + t.renew_deadline,
        }
    }

    pub fn may_send(&self, now: Instant) -> bool {
        now < self.may_send_until
    }

    /// The next body to write: the same holder, one more write, the latest sends.
    fn next(&self, state: LeaseState, sent: serde_json::Value) -> LeaseBody {
        LeaseBody {
            state,
            writes: self.body.writes + 1,
            written_at: unix_secs_now(),
            sent,
            ..self.body.clone()
        }
    }
}

/// Why the lease could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot read the lease: {0}")]
    Read(#[source] StoreError),
    #[error("cannot write the lease: {0}")]
    Write(#[source] StoreError),
    #[error("cannot encode the lease: {0}")]
    Encode(String),
}

/// The lease in one state store, for one process.
#[derive(Clone)]
pub struct LeaseClient {
    store: Arc<dyn ObjectStore>,
    me: String,
    role: Role,
    pub timings: LeaseTimings,
    /// Told of every successful read (standby) and renewal (holder).
    metrics: Option<Arc<Metrics>>,
}

/// How [`LeaseClient::acquire`] ended.
pub enum Acquired {
    /// This process holds the lease.
    Held(Holding, Takeover),
    /// The stop token was cancelled first.
    Stopped,
    /// `give_up` said so about the live holder.
    GaveUp(LeaseBody),
}

impl LeaseClient {
    pub fn new(store: Arc<dyn ObjectStore>, me: String, role: Role, timings: LeaseTimings) -> Self {
        LeaseClient {
            store,
            me,
            role,
            timings,
            metrics: None,
        }
    }

    /// Reports reads and renewals to `metrics` (the lease's age, `/readyz`).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        LeaseClient {
            metrics: Some(metrics),
            ..self
        }
    }

    fn touched(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.lease_touched();
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The state store the lease lives in (for the other control objects).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// One read of the lease.
    pub async fn read(&self) -> Result<Read, LeaseError> {
        match self.store.get_versioned(LEASE_KEY).await {
            Ok(found) => Ok(Read::Present {
                version: found.version,
                body: serde_json::from_slice(&found.bytes).ok(),
            }),
            Err(e) if e.is_not_found() => Ok(Read::Absent),
            Err(e) => Err(LeaseError::Read(e)),
        }
    }

    async fn write(
        &self,
        condition: &PutCondition,
        body: &LeaseBody,
    ) -> Result<String, LeaseError> {
        let bytes =
            serde_json::to_vec_pretty(body).map_err(|e| LeaseError::Encode(e.to_string()))?;
        self.store
            .put_if(LEASE_KEY, bytes, condition)
            .await
            .map_err(LeaseError::Write)
    }

    fn fresh_body(&self) -> LeaseBody {
        LeaseBody {
            holder: self.me.clone(),
            role: self.role,
            state: LeaseState::Held,
            writes: 0,
            duration_ms: self.timings.duration.as_millis() as u64,
            written_at: unix_secs_now(),
            sent: serde_json::Value::Null,
        }
    }

    /// Watches the lease until this process holds it, `stop` is cancelled, or `give_up`
    /// returns true for a holder seen (`live`: seen renewing). Read errors are logged and
    /// retried (a standby outlasts a state outage).
    pub async fn acquire(
        &self,
        stop: &CancellationToken,
        mut give_up: impl FnMut(&LeaseBody, bool) -> bool,
    ) -> Acquired {
        let mut watch = Watch::default();
        let mut complained = false;
        let mut warned_unreadable = false;
        loop {
            let verdict = match self.read().await {
                Ok(read) => {
                    complained = false;
                    self.touched();
                    if let Read::Present { body: None, .. } = &read
                        && !warned_unreadable
                    {
                        warned_unreadable = true;
                        tracing::warn!(
                            "{LEASE_KEY} cannot be read as a lease: it is taken over if unchanged for {MAX_DURATION:?}; delete it only if no process holds it"
                        );
                    }
                    watch.judge(&read, &self.me, &self.timings, Instant::now())
                }
                Err(e) => {
                    if !complained {
                        tracing::warn!("{e}; retrying every {:?}", self.timings.watch_every);
                        complained = true;
                    }
                    Verdict::Held {
                        body: None,
                        live: false,
                    }
                }
            };
            match verdict {
                Verdict::Take {
                    condition,
                    takeover,
                } => {
                    let body = self.fresh_body();
                    let started = Instant::now();
                    match self.write(&condition, &body).await {
                        Ok(version) => {
                            return Acquired::Held(
                                Holding::after_write(version, body, started, &self.timings),
                                takeover,
                            );
                        }
                        Err(LeaseError::Write(e))
                            if e.kind == StoreErrorKind::PreconditionFailed =>
                        {
                            tracing::debug!("another process took the lease first");
                            watch.reset();
                        }
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                Verdict::Held {
                    body: Some(body),
                    live,
                } if give_up(&body, live) => return Acquired::GaveUp(body),
                Verdict::Held { .. } => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return Acquired::Stopped,
                _ = tokio::time::sleep(self.timings.watch_every) => {}
            }
        }
    }

    /// Keeps `holding` renewed on a task of its own until [`Keeper::release`] or until the
    /// lease is lost. `sent` gives the sends to write at each renewal. `fence` is set to
    /// the deadline after every successful renewal (delivery starts requests only before
    /// it).
    pub fn keep(
        &self,
        holding: Holding,
        sent: impl Fn(Instant) -> serde_json::Value + Send + Sync + 'static,
        fence: watch::Sender<Instant>,
    ) -> Keeper {
        let lost = CancellationToken::new();
        let stop = CancellationToken::new();
        fence.send_replace(holding.may_send_until);
        let task = tokio::spawn(renew(
            self.clone(),
            holding,
            Box::new(sent),
            fence,
            lost.clone(),
            stop.clone(),
        ));
        Keeper { lost, stop, task }
    }
}

/// The renewing task's handle.
pub struct Keeper {
    lost: CancellationToken,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<(LeaseClient, Holding, Box<SentFn>)>>,
}

type SentFn = dyn Fn(Instant) -> serde_json::Value + Send + Sync;

impl Keeper {
    /// Cancelled when the lease is lost (taken, or not renewed within the renew deadline).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and releases the lease with the final sends, within `within`. A lost
    /// lease is not released. Returns whether the release was written.
    pub async fn release(self, within: Duration) -> bool {
        self.stop.cancel();
        let Ok(Some((client, holding, sent))) = self.task.await else {
            return false;
        };
        let body = holding.next(LeaseState::Released, sent(Instant::now()));
        let condition = PutCondition::Version(holding.version.clone());
        match tokio::time::timeout(within, client.write(&condition, &body)).await {
            Ok(Ok(_)) => {
                tracing::info!("released the lease: a standby takes over now");
                true
            }
            Ok(Err(e)) => {
                tracing::warn!("{e}: a standby takes over when the lease expires");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "the lease's release did not finish within {within:?}: a standby takes over when it expires"
                );
                false
            }
        }
    }
}

/// Why a refused renewal found the lease still naming this holder.
const OWN_RENEWAL: &str = "renewed by this process's own earlier renewal, which answered an error";

/// After a renewal was refused: whether the lease was deleted, overwritten by something
/// that is not a lease, or moved on by this holder's own earlier renewal whose answer was
/// lost (then this holder writes it again, under the same condition a standby would, and
/// the new version and body are returned) or taken by another process (logged; `None`).
async fn recreate_if_deleted(
    client: &LeaseClient,
    holding: &Holding,
    sent: serde_json::Value,
) -> Option<(String, LeaseBody)> {
    let (condition, what) = match client.read().await {
        Ok(Read::Absent) => (PutCondition::Absent, "deleted"),
        Ok(Read::Present {
            version,
            body: None,
        }) => (
            PutCondition::Version(version),
            "overwritten with what is not a lease",
        ),
        // Only this process writes its id, and a takeover replaces it: the version moved
        // because a renewal that answered an error had landed.
        Ok(Read::Present {
            version,
            body: Some(b),
        }) if b.holder == client.me && b.state == LeaseState::Held => {
            (PutCondition::Version(version), OWN_RENEWAL)
        }
        Ok(Read::Present { body: Some(b), .. }) => {
            tracing::error!(
                "the lease was taken by {} ({}): this process stopped all requests to Heap",
                b.holder,
                b.role
            );
            return None;
        }
        Err(e) => {
            tracing::error!(
                "the lease was changed and cannot be read again ({e}): this process stopped all requests to Heap"
            );
            return None;
        }
    };
    let body = holding.next(LeaseState::Held, sent);
    let taken_by = match client.write(&condition, &body).await {
        Ok(version) => {
            if what == OWN_RENEWAL {
                tracing::info!("{LEASE_KEY} was {what}: renewed it on that version");
            } else {
                tracing::warn!(
                    "{LEASE_KEY} was {what} while this process held it: wrote it again (keep `control/` out of cleanup rules and hand edits)"
                );
            }
            return Some((version, body));
        }
        Err(e) => format!("a standby that wrote it first after it was {what} ({e})"),
    };
    tracing::error!("the lease was taken by {taken_by}: this process stopped all requests to Heap");
    None
}

/// Renews every `renew_every` until stopped (returns what a release needs) or lost
/// (returns `None`, having cancelled `lost`).
async fn renew(
    client: LeaseClient,
    mut holding: Holding,
    sent: Box<SentFn>,
    fence: watch::Sender<Instant>,
    lost: CancellationToken,
    stop: CancellationToken,
) -> Option<(LeaseClient, Holding, Box<SentFn>)> {
    let t = client.timings;
    let mut complained = false;
    loop {
        // After a failed renewal, retry every `watch_every` (as Kubernetes' leader election
        // retries every retryPeriod): waiting `renew_every` again would start the next try
        // at the renew deadline, so one transient error would cost the lease.
        let wait = if complained {
            t.watch_every.min(t.renew_every)
        } else {
            t.renew_every
        };
        // Never sleeps past the deadline: losing it is noticed when it passes.
        let until = (Instant::now() + wait).min(holding.may_send_until);
        tokio::select! {
            _ = stop.cancelled() => return Some((client, holding, sent)),
            _ = tokio::time::sleep_until(until) => {}
        }
        let started = Instant::now();
        // Checked before a write starts: a write started past the deadline could land
        // after a candidate took over.
        if !holding.may_send(started) {
            tracing::error!(
                "the lease was not renewed within its renew deadline ({:?}): this process stopped sending to Heap (self-fenced) before another may take over",
                t.renew_deadline
            );
            lost.cancel();
            return None;
        }
        let body = holding.next(LeaseState::Held, sent(started));
        let condition = PutCondition::Version(holding.version.clone());
        // A write may not outlast the fence: past it, this process may no longer send, and
        // a renewal that lands later would be a surprise to the candidate that waited.
        let left = holding.may_send_until.saturating_duration_since(started);
        let written = tokio::time::timeout(left, client.write(&condition, &body)).await;
        match written {
            Ok(Ok(version)) => {
                holding = Holding::after_write(version, body, started, &t);
                fence.send_replace(holding.may_send_until);
                client.touched();
                if complained {
                    tracing::info!("the lease is renewed again");
                    complained = false;
                }
            }
            Ok(Err(LeaseError::Write(e))) if e.kind == StoreErrorKind::PreconditionFailed => {
                // The deadline counts from the refused renewal's start: earlier than the
                // re-creation's, so never later than it should be.
                match recreate_if_deleted(&client, &holding, sent(started)).await {
                    Some((version, body)) => {
                        holding = Holding::after_write(version, body, started, &t);
                        fence.send_replace(holding.may_send_until);
                        client.touched();
                        continue;
                    }
                    None => {
                        fence.send_replace(Instant::now());
                        lost.cancel();
                        return None;
                    }
                }
            }
            failed if !complained => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the store did not answer before the renew deadline".into(),
                };
                tracing::warn!(
                    "cannot renew the lease ({why}); Heap requests stop in {:?} unless a renewal succeeds",
                    holding
                        .may_send_until
                        .saturating_duration_since(Instant::now())
                );
                complained = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
