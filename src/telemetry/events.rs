//! One typed event per outcome. Each `emit` updates its metric, and most write their log line
//! too, so the two cannot drift apart; nothing else counts outcomes. A few only count
//! (`PollFailed`, `StateWriteFailed`): their callers log, because the line depends on
//! context the event does not hold (a poll's plan, an outage's first failure or summary).
//!
//! Logging policy: what an operator must act on is `error`/`warn`, once per occurrence of the
//! cause, never once per event. Parked events are logged once per dead-letter write, with
//! the count and the reasons, not once per event: a two-minute outage used to write 16,000
//! warning lines. Per-event detail is at `debug`.

use std::time::Duration;

use super::Metrics;
use crate::currents::event::MappingWarning;

/// Events decoded from a Currents object and handed to delivery (or counted, dry-run).
pub struct EventsRead<'a> {
    pub event_type: &'a str,
    pub count: u64,
}

impl EventsRead<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.with_type(self.event_type, |c| {
            c.read.inc_by(self.count);
        });
    }
}

/// Events Heap accepted (a 2xx); in a dry run, events that would be sent.
pub struct EventsSent<'a> {
    pub event_type: &'a str,
    pub count: u64,
}

impl EventsSent<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.with_type(self.event_type, |c| {
            c.sent.inc_by(self.count);
        });
    }
}

/// Events not sent by policy: none of the identity fields is set.
pub struct EventsSkipped<'a> {
    pub event_type: &'a str,
    pub count: u64,
}

impl EventsSkipped<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.with_type(self.event_type, |c| {
            c.skipped.inc_by(self.count);
        });
    }
}

/// Events parked as dead letters by one write (in a dry run: that would be parked). `reasons`
/// holds each distinct reason with its count.
pub struct EventsParked<'a> {
    pub event_type: &'a str,
    pub count: u64,
    pub reasons: &'a [(String, u64)],
    pub dry_run: bool,
}

impl EventsParked<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.with_type(self.event_type, |c| {
            c.parked.inc_by(self.count);
        });
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{n}× {reason}"))
            .collect();
        let verb = if self.dry_run {
            "would be parked"
        } else {
            "parked as dead letters"
        };
        tracing::warn!(
            event_type = self.event_type,
            events = self.count,
            "{} events {verb}: {}",
            self.count,
            reasons.join("; ")
        );
    }
}

/// One request to Heap and its answer's status (`None`: no response came).
pub struct HeapRequest {
    pub status: Option<u16>,
    pub latency: Duration,
}

impl HeapRequest {
    pub fn emit(&self, metrics: &Metrics) {
        let status = self
            .status
            .map_or_else(|| "none".to_string(), |s| s.to_string());
        metrics.of_status(&status).inc();
        metrics
            .heap_request_duration
            .observe(self.latency.as_secs_f64());
    }
}

/// User-property updates that ended as `outcome` (one of [`super::UPDATE_OUTCOMES`]).
pub struct UserPropertyUpdates {
    pub outcome: &'static str,
    pub count: u64,
}

impl UserPropertyUpdates {
    pub fn emit(&self, metrics: &Metrics) {
        if let Some(counter) = metrics.user_property_update(self.outcome) {
            counter.inc_by(self.count);
        }
    }
}

/// One request to `add_user_properties` answered (or not: `status` `None`).
pub struct UserPropertyRequest {
    pub status: Option<u16>,
    /// The lane's budget after the answer, users per minute.
    pub budget: u64,
}

impl UserPropertyRequest {
    pub fn emit(&self, metrics: &Metrics) {
        let status = self
            .status
            .map_or_else(|| "none".to_string(), |s| s.to_string());
        metrics.user_property_status(&status).inc();
        metrics.set_user_property_budget(self.budget);
    }
}

/// One HTTP attempt to a cloud service, retries included: S3 and SQS (see [`crate::aws`]),
/// Azure Blob Storage and GCS (see [`crate::store::cloud`]).
pub struct StoreRequest<'a> {
    /// `s3`, `sqs`, `azure`, `gcs`.
    pub service: &'a str,
    /// The API operation, e.g. `ListObjectsV2`, `GetObject`; `unknown` if the SDK named none.
    pub operation: &'a str,
}

impl StoreRequest<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.of_operation(self.service, self.operation).inc();
    }
}

/// A batch that will be sent again after `delay`.
/// From which attempt a failing batch is worth a warning.
const PERSISTENT_FROM: u32 = 3;

pub struct HeapRetry<'a> {
    pub events: usize,
    pub attempt: u32,
    pub delay: Duration,
    pub reason: &'a str,
}

impl HeapRetry<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.heap_retries.inc();
        // A first or second retry is everyday (a 429, a blip); a batch still failing on its
        // third is an outage the operator should hear of, at most once a minute.
        if self.attempt >= PERSISTENT_FROM && metrics.heap_warning_due() {
            tracing::warn!(
                events = self.events,
                attempt = self.attempt,
                "requests to Heap keep failing ({}); retrying until --retry-max-time, then the events are parked",
                self.reason
            );
            return;
        }
        tracing::debug!(
            events = self.events,
            attempt = self.attempt,
            delay = ?self.delay,
            "{}; retrying",
            self.reason
        );
    }
}

/// A rejected batch split in halves to find the offending events.
pub struct BatchBisected {
    pub events: usize,
}

impl BatchBisected {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.heap_bisections.inc();
        tracing::debug!(
            events = self.events,
            "Heap rejected a batch: splitting it in halves"
        );
    }
}

/// Sending began waiting for rate-limit room.
pub struct RateLimitWait;

impl RateLimitWait {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.rate_limit_waits.inc();
    }

    /// Whether delivery is waiting for rate room now (for backfill progress).
    pub fn waiting(waiting: bool, metrics: &Metrics) {
        metrics.rate_blocked.set(i64::from(waiting));
    }
}

/// Events Heap accepted in one request, by lane.
pub struct LaneEventsSent {
    pub live: u64,
    pub backfill: u64,
}

impl LaneEventsSent {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.lane_sent[0].inc_by(self.live);
        metrics.lane_sent[1].inc_by(self.backfill);
    }
}

/// The pacer's budgets after an answer from Heap.
pub struct RateBudget {
    /// Events per window (`u64::MAX` without an app limit: exported as -1).
    pub app_events: u64,
    pub lowered_identities: usize,
}

impl RateBudget {
    pub fn emit(&self, metrics: &Metrics) {
        let app = i64::try_from(self.app_events).unwrap_or(-1);
        metrics.rate_budget_app.set(app);
        metrics
            .rate_budget_lowered_identities
            .set(self.lowered_identities as i64);
    }
}

/// What mapping changed to fit Heap's contract, for one event.
pub struct MappingAdjusted {
    pub truncated: u64,
    pub collisions_dropped: u64,
}

impl MappingAdjusted {
    pub fn emit(&self, metrics: &Metrics) {
        if self.truncated > 0 {
            metrics.values_truncated.inc_by(self.truncated);
        }
        if self.collisions_dropped > 0 {
            metrics.collisions_dropped.inc_by(self.collisions_dropped);
        }
    }
}

/// An odd value in an event's JSON `properties`, repaired by the value table
/// ([`crate::currents::value`]). Counted always; logged when `log` (the caller logs the
/// first few of an object, so one bad object cannot flood the log).
pub struct OddPropertyValue<'a> {
    pub object: &'a str,
    pub warning: &'a MappingWarning,
    pub log: bool,
}

impl OddPropertyValue<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.odd_value(self.warning.kind()).inc();
        // Past the first few of an object, at debug: still findable, without a flood.
        if self.log {
            tracing::warn!(object = %self.object, "{}", self.warning);
        } else {
            tracing::debug!(object = %self.object, "{}", self.warning);
        }
    }
}

/// How an object ended.
pub enum ObjectEnded<'a> {
    Done,
    /// Unreadable as Currents data: recorded failed.
    Failed {
        key: &'a str,
        reason: &'a str,
    },
    /// A source or state error: left unrecorded, to be tried again.
    Retried {
        key: &'a str,
        reason: &'a str,
    },
    Abandoned,
    Panicked {
        key: &'a str,
        message: &'a str,
    },
}

impl ObjectEnded<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        match self {
            ObjectEnded::Done => {
                metrics.objects_done.inc();
            }
            ObjectEnded::Failed { key, reason } => {
                metrics.objects_failed.inc();
                tracing::error!(object = %key, "object failed: {reason}");
            }
            ObjectEnded::Retried { key, reason } => {
                metrics.objects_retried.inc();
                tracing::warn!(object = %key, "the object will be tried again: {reason}");
            }
            ObjectEnded::Abandoned => {
                metrics.objects_abandoned.inc();
            }
            ObjectEnded::Panicked { key, message } => {
                metrics.objects_panicked.inc();
                tracing::error!(object = %key, "processing the object panicked; it will be tried again at the next poll: {message}");
            }
        }
    }
}

/// A poll that listed the source and the ledger.
pub struct PollSucceeded {
    /// Objects queued or in flight.
    pub pending: u64,
    /// Age of the oldest pending `date=` hour.
    pub lag: Option<Duration>,
    /// `event_type=` folders found in the source.
    pub folders: u64,
    pub at_unix: i64,
}

impl PollSucceeded {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.polls.inc();
        metrics.objects_pending.set(self.pending as i64);
        metrics
            .lag_seconds
            .set(self.lag.map_or(0, |l| l.as_secs() as i64));
        metrics.source_folders.set(self.folders as i64);
        metrics.last_poll_unix.set(self.at_unix);
        *metrics
            .poll_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A poll that could not list the source or read the ledger: readiness says so at once,
/// instead of after the last success grows stale.
pub struct PollFailed<'a> {
    pub error: &'a str,
}

impl PollFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.poll_failures.inc();
        *metrics
            .poll_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(self.error.to_string());
    }
}

/// A ledger or dead-letter write failed: counted every time; readiness reports it, by its
/// cause, until one succeeds. Its log lines are the retry's, once per cause
/// ([`crate::store::retry`]), not one per failure.
pub struct StateWriteFailed<'a> {
    /// What the operator reads first: "state writes have failed" for an outage, or the
    /// cause to fix ("permission denied writing the state at …: check the credentials/role").
    pub cause: &'a str,
    pub error: &'a str,
}

impl StateWriteFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.state_write_failures.inc();
        metrics.state_write_failing.set(1);
        let mut outage = metrics
            .state_outage
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let since = outage
            .as_ref()
            .map_or_else(crate::clock::unix_secs_now, |failing| failing.since);
        *outage = Some(super::StateFailing {
            since,
            cause: self.cause.to_string(),
            error: self.error.to_string(),
        });
    }
}

/// A ledger or dead-letter write succeeded.
pub struct StateWriteSucceeded;

impl StateWriteSucceeded {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.state_write_failing.set(0);
        *metrics
            .state_outage
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Messages received from the notification queue; a successful receive also ends a queue
/// outage for `/readyz`.
pub struct NotificationsReceived {
    pub messages: u64,
}

impl NotificationsReceived {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.notifications_received.inc_by(self.messages);
        *metrics
            .queue_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Objects a notification named that are now queued.
pub struct NotificationObjectsQueued {
    pub objects: u64,
}

impl NotificationObjectsQueued {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.notification_objects.inc_by(self.objects);
    }
}

/// Why a message was deleted without queueing anything.
#[derive(Debug, Clone, Copy)]
pub enum NotificationDropped<'a> {
    /// `s3:TestEvent`, sent when notifications are configured.
    TestEvent,
    /// Nothing new: other buckets or prefixes, not `.avro`, or recorded already.
    NothingNew,
    /// Not an S3 notification; the reconciliation finds any object it stood for.
    Unreadable { message: &'a str, error: &'a str },
    /// Nothing new, and some records could not be read (each reported on its own by
    /// [`NotificationRecordUnreadable`]): counted as unreadable.
    UnreadableRecords,
}

impl NotificationDropped<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        let reason = match self {
            NotificationDropped::TestEvent => "test_event",
            NotificationDropped::NothingNew => "nothing_new",
            NotificationDropped::Unreadable { message, error } => {
                tracing::warn!(
                    message_id = %message,
                    "deleting a message that is not an S3 notification (the reconciliation finds any object it stood for): {error}"
                );
                "unreadable"
            }
            NotificationDropped::UnreadableRecords => "unreadable",
        };
        metrics
            .notifications_dropped
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }
}

/// A record of a notification names a created object but cannot be read; the records
/// beside it are queued. Emitted once per message, not at every receipt.
pub struct NotificationRecordUnreadable<'a> {
    pub message: &'a str,
    pub error: &'a str,
}

impl NotificationRecordUnreadable<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::warn!(
            message_id = %self.message,
            "skipping a notification record that cannot be read (the reconciliation finds its object): {}",
            self.error
        );
        metrics.notification_records_unreadable.inc();
    }
}

/// A receive from the queue failed: `/readyz` reports it until a receive succeeds.
pub struct QueueFailed<'a> {
    pub error: &'a str,
    pub retry_in: Duration,
}

impl QueueFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        tracing::error!(
            "cannot receive notifications, trying again in {:?}: {}",
            self.retry_in,
            self.error
        );
        *metrics
            .queue_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(self.error.to_string());
    }
}

/// Objects found unfinished that have not ended since, and the age of the oldest one's
/// `date=` hour: kept true as objects end, between polls.
pub struct PendingObjects {
    pub pending: u64,
    pub lag: Option<Duration>,
}

impl PendingObjects {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.objects_pending.set(self.pending as i64);
        metrics
            .lag_seconds
            .set(self.lag.map_or(0, |l| l.as_secs() as i64));
    }
}

/// The worker receives S3 notifications from a queue: new objects come without a listing,
/// so a source without `event_type=` folders yet (a new integration) is no reason to be
/// unready.
pub struct ListeningToQueue;

impl ListeningToQueue {
    pub fn emit(&self, metrics: &Metrics) {
        metrics
            .listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A checkpoint inside an object was written (see [`crate::worker::checkpoint`]).
pub struct ProgressWritten;

impl ProgressWritten {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.progress_writes.inc();
    }
}

/// A checkpoint inside an object could not be written: the object goes on, and a stop would
/// send again what ended since its last checkpoint. Counted; logged at debug once per object
/// (`log`): a state outage is reported once by the ledger's own writes and readiness, not
/// once per object in flight.
pub struct ProgressWriteFailed<'a> {
    pub object: &'a str,
    pub error: &'a str,
    pub log: bool,
}

impl ProgressWriteFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.progress_write_failures.inc();
        if self.log {
            tracing::debug!(
                object = %self.object,
                "cannot write the object's checkpoint (it goes on; a stop would send again what ended since the last one): {}",
                self.error
            );
        }
    }
}

/// An object resumed from its checkpoint at record `at`, reading `bytes_skipped` fewer bytes.
pub struct ObjectResumed<'a> {
    pub object: &'a str,
    pub at: u64,
    pub bytes_skipped: u64,
}

impl ObjectResumed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.objects_resumed.inc();
        metrics.events_resumed_past.inc_by(self.at);
        tracing::info!(
            object = %self.object,
            record = self.at,
            bytes_skipped = self.bytes_skipped,
            "resuming the object at its checkpoint: the events before it ended in an earlier run"
        );
    }
}
