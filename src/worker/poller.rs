//! Polls and reconciliations: when the plan's window is listed again, what a long-lived run
//! keeps between listings, and what each listing tells telemetry.
//!
//! - Without notifications, a poll queues the window less the ledger
//!   ([`queue_unfinished`]). A long-lived run keeps what it read of the ledger, and what it
//!   recorded since, in a [`FinishedSet`]; a bounded run polls once and keeps nothing.
//! - With notifications, each poll is a reconciliation ([`queue_missed`]) that catches what
//!   no notification brought; it reads the ledger afresh (another replica records too) and
//!   remembers the versions it saw unrecorded ([`Sightings`]).
//!
//! Every poll emits [`PollSucceeded`] or [`PollFailed`] and logs. A failed poll of a
//! long-lived run is tried again at the next interval; a bounded run keeps the failure, and
//! ends incomplete with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::discovery::{
    DiscoveryError, STARTUP_GRACE, Sightings, Unfinished, queue_missed, queue_unfinished,
};
use super::finished::FinishedSet;
use super::pipeline::ObjectResult;
use super::scheduler::{Ended, Scheduler};
use super::settings::Plan;
use crate::clock::unix_secs_now;
use crate::currents::key::{CurrentsKey, DateHour};
use crate::ledger::Ledger;
use crate::source::{Window, hours_before};
use crate::store::ObjectStore;
use crate::telemetry::Metrics;
use crate::telemetry::events::{PendingObjects, PollFailed, PollSucceeded};

/// Lists the plan's window, now and then (see the module docs).
pub struct Poller {
    plan: Plan,
    source: Arc<dyn ObjectStore>,
    ledger: Arc<Ledger>,
    metrics: Arc<Metrics>,
    /// When the next poll is due; `None` once a bounded run has polled.
    next_poll: Option<Instant>,
    /// What a long-lived run without notifications knows finished.
    known: Option<FinishedSet>,
    /// Notifications discover new objects; polls only reconcile.
    reconciling: bool,
    /// With notifications: what the last reconciliation saw unrecorded; `None` before the
    /// first one.
    sightings: Option<Sightings>,
    /// What the last poll found unfinished, with each key's `date=` hour, less what has
    /// ended since (plus what notifications brought): `objects_pending` and `lag_seconds`
    /// follow it as objects end, not only at the next poll.
    pending: HashMap<String, Option<DateHour>>,
    /// Why a bounded run's poll failed.
    failure: Option<String>,
    /// A dry run records nothing, so its ends teach `known` nothing.
    dry_run: bool,
    /// Whether the first successful poll looked for hours before the window.
    hinted: bool,
}

impl Poller {
    /// Polls at once, then (long-lived) every poll interval. `reconciling`: notifications
    /// discover new objects, and polls only catch what they missed.
    pub fn new(
        plan: Plan,
        source: Arc<dyn ObjectStore>,
        ledger: Arc<Ledger>,
        metrics: Arc<Metrics>,
        reconciling: bool,
        dry_run: bool,
    ) -> Poller {
        // Only a long-lived run polls again, so only it keeps what the ledger said; with
        // notifications, another replica may record too, so each reconciliation reads afresh.
        let known = (!plan.is_bounded() && !reconciling).then(FinishedSet::default);
        Poller {
            plan,
            source,
            ledger,
            metrics,
            // A range is listed by its backfill lane, pass by pass, as on a worker.
            next_poll: (!matches!(plan, Plan::Range { .. })).then(Instant::now),
            known,
            reconciling,
            sightings: None,
            pending: HashMap::new(),
            failure: None,
            dry_run,
            hinted: false,
        }
    }

    /// Whether a poll is due now.
    pub fn due(&self) -> bool {
        self.next_poll.is_some_and(|at| Instant::now() >= at)
    }

    /// When the next poll is due; `None` once a bounded run has polled.
    pub fn next_wake(&self) -> Option<Instant> {
        self.next_poll
    }

    /// Whether no poll is left (a bounded run has polled).
    pub fn finished(&self) -> bool {
        self.next_poll.is_none()
    }

    /// Why a bounded run's poll failed, if it did.
    pub fn into_failure(self) -> Option<String> {
        self.failure
    }

    /// Lists the window, queues what is unfinished on `scheduler`, and schedules the next
    /// poll. Returns how many objects it found to do. Cancel-safe in the sense a stop needs:
    /// dropped mid-listing, nothing is queued.
    pub async fn poll(&mut self, scheduler: &mut Scheduler) -> u64 {
        let window = self.plan.window();
        let (source, ledger) = (&*self.source, &*self.ledger);
        let first_reconciliation = self.reconciling && self.sightings.is_none();
        let polled = if self.reconciling {
            queue_missed(source, ledger, &window, &mut self.sightings, scheduler).await
        } else {
            queue_unfinished(source, ledger, &window, self.known.as_mut(), scheduler).await
        };
        let found = match polled {
            Ok(mut unfinished) => {
                self.pending = std::mem::take(&mut unfinished.keys).into_iter().collect();
                self.succeeded(&unfinished, scheduler);
                if !self.hinted {
                    self.hinted = true;
                    self.hint_older_hours(&unfinished, &window).await;
                }
                // Beside notifications, a reconciliation's finds are mostly theirs.
                if self.reconciling {
                    0
                } else {
                    unfinished.count as u64
                }
            }
            Err(e) => {
                self.failed(&e);
                0
            }
        };
        // After the first reconciliation since the start, the next one comes after the
        // start-up grace: what was unrecorded in the newest hours then is queued there.
        let after_first = first_reconciliation && self.sightings.is_some();
        self.next_poll = match self.plan {
            Plan::Live { poll_interval, .. } if after_first => {
                Some(Instant::now() + poll_interval.min(STARTUP_GRACE))
            }
            Plan::Live { poll_interval, .. } => Some(Instant::now() + poll_interval),
            Plan::Once { .. } | Plan::Range { .. } => None,
        };
        found
    }

    /// An object ended: what was just recorded need not be read back from the ledger, and
    /// is no longer pending.
    pub fn on_ended(&mut self, ended: &Ended) {
        if let Some(known) = self.known.as_mut()
            && !self.dry_run
            && let Ended::Object(ObjectResult::Done(entry) | ObjectResult::Failed(entry)) = ended
        {
            known.insert(entry);
        }
        // What ends to be tried again is still pending.
        if let Ended::Object(
            ObjectResult::Done(_) | ObjectResult::Failed(_) | ObjectResult::Gone { .. },
        ) = ended
            && self.pending.remove(ended.key()).is_some()
        {
            self.emit_pending();
        }
    }

    /// A notification brought an object in: pending until it ends.
    pub fn on_notified(&mut self, key: &str) {
        if !self.pending.contains_key(key) {
            self.pending
                .insert(key.to_string(), CurrentsKey::parse(key).date);
            self.emit_pending();
        }
    }

    fn emit_pending(&self) {
        PendingObjects {
            pending: self.pending.len() as u64,
            lag: self.lag(unix_secs_now()),
        }
        .emit(&self.metrics);
    }

    /// The age of the oldest pending `date=` hour.
    fn lag(&self, now: i64) -> Option<Duration> {
        let oldest = self.pending.values().flatten().min()?;
        Some(Duration::from_secs(
            (now - oldest.hours_since_epoch() * 3600).max(0) as u64,
        ))
    }

    fn succeeded(&mut self, unfinished: &Unfinished, scheduler: &Scheduler) {
        let now = unix_secs_now();
        PollSucceeded {
            pending: self.pending.len() as u64,
            lag: self.lag(now),
            folders: unfinished.folders as u64,
            at_unix: now,
        }
        .emit(&self.metrics);
        if let Some(first) = unfinished.failed.first() {
            let e = format!(
                "cannot list {} of {} event_type= folders in the source (the others' objects are queued): {first}",
                unfinished.failed.len(),
                unfinished.folders
            );
            PollFailed { error: &e }.emit(&self.metrics);
            tracing::error!("{e}");
            if self.plan.is_bounded() {
                self.failure = Some(e);
            }
        }
        if unfinished.folders == 0 {
            tracing::warn!(
                "the source {} holds no event_type= folders: check --source (a wrong prefix, or a directory that moved?)",
                self.source.describe()
            );
        }
        tracing::info!(
            unfinished = unfinished.count,
            queued = scheduler.queued(),
            in_flight = scheduler.in_flight(),
            objects_pending = self.pending.len(),
            lag_secs = self.lag(now).map(|l| l.as_secs()),
            folders = unfinished.folders,
            "polled {}: {} unfinished objects, {} pending",
            self.source.describe(),
            unfinished.count,
            self.pending.len()
        );
    }

    /// Once, after the first poll: when the window held no object but the source holds
    /// older hours, says so and how to deliver them (a lookback that is too short for a new
    /// integration's first run is the usual cause). Costs the folder listings only then.
    async fn hint_older_hours(&self, unfinished: &Unfinished, window: &Window) {
        let (Window::Hours { from, .. }, Plan::Live { lookback, .. } | Plan::Once { lookback }) =
            (window, self.plan)
        else {
            return;
        };
        if unfinished.listed > 0 || unfinished.folders == 0 {
            return;
        }
        let hours = match hours_before(&*self.source, *from).await {
            Ok(hours) => hours,
            Err(e) => {
                tracing::debug!("cannot look for hours before the lookback: {e}");
                return;
            }
        };
        let (Some(oldest), Some(newest)) = (hours.first(), hours.last()) else {
            return;
        };
        let to = DateHour::from_hours_since_epoch(newest.hours_since_epoch() + 1);
        // `backfill`'s form of an hour: YYYY-MM-DDTHH.
        let arg = |hour: DateHour| {
            let text = hour.to_string();
            format!("{}T{}", &text[..10], &text[11..])
        };
        let (from_arg, to_arg) = (arg(*oldest), arg(to));
        tracing::warn!(
            older_hours = hours.len(),
            oldest_hour = %oldest,
            newest_hour = %newest,
            lookback = %lookback,
            "no object in the lookback window, but {} hours of objects older than --lookback {lookback} exist (oldest date={oldest}, newest date={newest}): if they were never delivered, `backfill --from {from_arg} --to {to_arg}` delivers them (`status --lookback all` shows what is done; a backfill skips what is)",
            hours.len()
        );
    }

    fn failed(&mut self, e: &DiscoveryError) {
        PollFailed {
            error: &e.to_string(),
        }
        .emit(&self.metrics);
        if self.plan.is_bounded() {
            tracing::error!("{e}");
            self.failure = Some(e.to_string());
        } else {
            tracing::error!("poll failed, trying again next interval: {e}");
        }
    }
}
