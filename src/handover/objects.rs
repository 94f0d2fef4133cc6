//! The control objects: what a worker and a `backfill` write to each other in the state
//! (see the protocol in [`crate::handover`]), and the range rule both sides check.

use serde::{Deserialize, Serialize};

use super::STALE_AFTER;
use crate::currents::key::DateHour;

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
    /// The worker it is addressed to (see [`super::owner`]).
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
    /// The terminal state of a range run to its end: `done`, or `done with failures` when
    /// events were parked or objects failed (which exit 3 wherever the range ran).
    pub fn finished(objects_failed: u64, events_parked: u64) -> BackfillState {
        if objects_failed > 0 || events_parked > 0 {
            BackfillState::DoneWithFailures
        } else {
            BackfillState::Done
        }
    }

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

/// The longest range one backfill takes, here or in a worker: discovery lists the whole range
/// (one ranged listing per event type, a request per 1,000 objects) and holds what it found
/// before sending, so a typo like `--to 9999-12-31` must not start that.
pub const MAX_RANGE_HOURS: i64 = 400 * 24;

/// Why a range of `date=` hours cannot be backfilled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error(
        "the range {from} to {to} is empty: its start must come before its end (which is exclusive)"
    )]
    Empty { from: DateHour, to: DateHour },
    #[error(
        "the range {from} to {to} spans {hours} hours; a backfill takes at most {MAX_RANGE_HOURS} (400 days): split the range"
    )]
    TooLong {
        from: DateHour,
        to: DateHour,
        hours: i64,
    },
}

/// The one range rule, checked by `backfill` before it starts, by [`super::Control::request`]
/// before it hands a range over, and by a worker before it runs a request (one written by hand
/// or by another version is not checked by the command): `from` before `to`, at most
/// [`MAX_RANGE_HOURS`] apart.
pub fn check_range(from: DateHour, to: DateHour) -> Result<(), RangeError> {
    let hours = to.hours_since_epoch() - from.hours_since_epoch();
    if hours <= 0 {
        Err(RangeError::Empty { from, to })
    } else if hours > MAX_RANGE_HOURS {
        Err(RangeError::TooLong { from, to, hours })
    } else {
        Ok(())
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
    /// Currents objects of the range in its first listing, finished ones included.
    pub found: u64,
    /// Objects ended: done, failed, or found already in the ledger (whoever ran them).
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
    /// Seconds left as the runner estimated them at `updated_at`: the events still to send
    /// (events per byte so far times the bytes of the objects not ended) over the rate the
    /// pacer allows the lane. Absent in progress written by older versions.
    #[serde(default)]
    pub eta_at_update: Option<u64>,
    /// Events are queued but the pacer has no room for them: the range waits for the rate
    /// limit, not for the source or Heap.
    #[serde(default)]
    pub waiting_for_rate: bool,
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
            eta_at_update: None,
            waiting_for_rate: false,
        }
    }

    /// Seconds left at `now`: the runner's estimate at `updated_at`, less the time since.
    /// Older progress (no estimate) falls back to the pace of ended objects so far. `None`
    /// while nothing tells; 0 once terminal.
    pub fn eta_secs(&self, now: i64) -> Option<u64> {
        if self.state.is_terminal() {
            return Some(0);
        }
        let since = u64::try_from(now.saturating_sub(self.updated_at)).unwrap_or(0);
        if let Some(eta) = self.eta_at_update {
            return Some(eta.saturating_sub(since));
        }
        let started = self.started_at?;
        if self.ended == 0 || self.found == 0 {
            return None;
        }
        let left = self.found.saturating_sub(self.ended);
        let elapsed = u128::from(now.saturating_sub(started).max(0).unsigned_abs());
        let eta = elapsed * u128::from(left) / u128::from(self.ended);
        Some(u64::try_from(eta).unwrap_or(u64::MAX))
    }

    /// What the range is doing, for people: its state, or "waiting for rate room".
    pub fn activity(&self) -> String {
        if self.waiting_for_rate && !self.state.is_terminal() {
            "waiting for rate room".into()
        } else {
            self.state.to_string()
        }
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
pub(super) fn random_hex() -> String {
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
            .or_else(|()| DateHour::parse_arg(&text))
            .map_err(de::Error::custom)
    }
}
