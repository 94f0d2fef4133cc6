//! Telemetry: every outcome is counted once, here, and read back from here by `/metrics`, the
//! run report and the backfill progress.
//!
//! Code that observes an outcome emits a typed event from [`events`] (as Vector's
//! `internal_events` do): the event updates its metric and writes its log line in one place.
//! Metrics are kept in a `prometheus-client` registry (the Prometheus project's Rust client)
//! and exposed in the OpenMetrics text format. [`Metrics::counts`] reads the same counters
//! back for reports, so a report cannot disagree with `/metrics`.

pub mod activity;
pub mod events;
mod lease;

pub use lease::LeaseRole;

use crate::currents::value::Oddity;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

type Labels = Vec<(&'static str, String)>;

/// The four per-event-type counters, cloned once out of their families (a clone shares the
/// value), so that counting an event of a known type is a map lookup by `&str`.
#[derive(Clone)]
struct TypeCounters {
    read: Counter,
    sent: Counter,
    skipped: Counter,
    parked: Counter,
}

/// Failing state writes, for `/readyz`.
struct StateFailing {
    /// Unix seconds of the first failure.
    since: i64,
    /// What to fix or wait for ([`events::StateWriteFailed::cause`]).
    cause: String,
    error: String,
}

/// The registry and every metric in it. One per process (or per test).
pub struct Metrics {
    registry: Registry,
    events_read: Family<Labels, Counter>,
    events_sent: Family<Labels, Counter>,
    events_skipped: Family<Labels, Counter>,
    events_parked: Family<Labels, Counter>,
    by_type: Mutex<HashMap<Arc<str>, TypeCounters>>,
    heap_requests: Family<Labels, Counter>,
    /// The status counters cloned out of `heap_requests`, to read them back by status.
    statuses: Mutex<BTreeMap<String, Counter>>,
    heap_request_duration: Histogram,
    /// Requests to the cloud (S3, SQS, Azure, GCS) by service and operation: what the worker costs.
    aws_requests: Family<Labels, Counter>,
    /// The counters cloned out of `aws_requests`, to read them back.
    aws_operations: Mutex<BTreeMap<(String, String), Counter>>,
    heap_retries: Counter,
    heap_bisections: Counter,
    rate_limit_waits: Counter,
    values_truncated: Counter,
    collisions_dropped: Counter,
    /// Odd values of JSON `properties` repaired by the value table: one counter per kind,
    /// cloned out of the registered `currents_heap_odd_property_values` family.
    odd_value_kinds: Vec<(Oddity, Counter)>,
    objects_done: Counter,
    objects_failed: Counter,
    objects_retried: Counter,
    objects_abandoned: Counter,
    objects_panicked: Counter,
    progress_writes: Counter,
    progress_write_failures: Counter,
    events_resumed_past: Counter,
    objects_resumed: Counter,
    objects_pending: Gauge,
    lag_seconds: Gauge,
    last_poll_unix: Gauge,
    source_folders: Gauge,
    state_write_failures: Counter,
    state_write_failing: Gauge,
    /// Since when state writes fail, why, and the last error; `None` while they work.
    state_outage: Mutex<Option<StateFailing>>,
    /// When a persistent Heap failure was last logged at warn (at most once a minute).
    heap_warned_at: Mutex<Option<std::time::Instant>>,
    polls: Counter,
    poll_failures: Counter,
    /// Why the last poll failed; `None` after a poll succeeds.
    poll_failure: Mutex<Option<String>>,
    notifications_received: Counter,
    notifications_dropped: Family<Labels, Counter>,
    notification_objects: Counter,
    notification_records_unreadable: Counter,
    /// Why the last receive from the queue failed; `None` after one succeeds.
    queue_failure: Mutex<Option<String>>,
    /// Whether notifications bring new objects in (see [`events::ListeningToQueue`]).
    listening: std::sync::atomic::AtomicBool,
    /// Events Heap accepted per lane (live, backfill), cloned out of their family.
    lane_sent: [Counter; 2],
    rate_budget_app: Gauge,
    /// 1 while delivery holds events the pacer has no room for.
    rate_blocked: Gauge,
    rate_budget_lowered_identities: Gauge,
    lease: lease::LeaseMetrics,
    /// User-property updates by how they ended, every outcome present from the start.
    user_property_updates: Vec<(&'static str, Counter)>,
    user_property_requests: Family<Labels, Counter>,
    /// The status counters cloned out of `user_property_requests`.
    user_property_statuses: Mutex<BTreeMap<String, Counter>>,
    user_property_budget: Gauge,
}

/// How a user-property update can end (the `outcome` label of
/// `currents_heap_user_property_updates_total`).
pub const UPDATE_OUTCOMES: [&str; 4] = ["accepted", "no_identity", "superseded", "parked"];

/// Counts per event type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TypeCounts {
    pub read: u64,
    pub sent: u64,
    pub skipped_no_identity: u64,
    pub parked: u64,
}

/// The counters, read back for reports and tests.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub per_type: BTreeMap<String, TypeCounts>,
    /// Requests to Heap by status: `"200"`, `"429"`, ..., or `"none"` (no response).
    pub requests: BTreeMap<String, u64>,
    pub retries: u64,
    pub bisections: u64,
    pub rate_limit_waits: u64,
    pub values_truncated: u64,
    pub collisions_dropped: u64,
    /// Odd values of JSON `properties` by kind label (`lone_surrogate`, `number_out_of_range`,
    /// `too_deep`, `not_json`), every kind present.
    pub odd_values: BTreeMap<&'static str, u64>,
    pub objects_done: u64,
    pub objects_failed: u64,
    pub objects_retried: u64,
    pub objects_abandoned: u64,
    pub objects_panicked: u64,
    /// Checkpoints written inside objects ([`crate::worker::checkpoint`]), and those that failed.
    pub progress_writes: u64,
    pub progress_write_failures: u64,
    /// Objects resumed from a checkpoint, and the events their resumes did not send again.
    pub objects_resumed: u64,
    pub events_resumed_past: u64,
    /// Polls that succeeded.
    pub polls: u64,
    /// Requests to cloud services by (service, operation), e.g. `("s3", "ListObjectsV2")`: every HTTP
    /// attempt, retries included.
    pub aws_requests: BTreeMap<(String, String), u64>,
    /// Events Heap accepted from live objects and from backfills handed to the worker.
    pub sent_live: u64,
    pub sent_backfill: u64,
    /// The app's rate budget after the last answer from Heap (events per window; 0 before).
    pub rate_budget_app: u64,
    /// Whether delivery holds events the pacer has no room for right now.
    pub waiting_for_rate: bool,
    /// User-property updates by outcome (every one of [`UPDATE_OUTCOMES`]).
    pub user_property_updates: BTreeMap<&'static str, u64>,
    /// Requests to `add_user_properties` by status, as `requests`.
    pub user_property_requests: BTreeMap<String, u64>,
}

impl Counts {
    /// The odd-value line of a run report (nothing when there were none): what the value
    /// table repaired in JSON `properties`, by kind.
    pub fn render_odd_values(&self) -> String {
        if self.odd_values.values().all(|n| *n == 0) {
            return String::new();
        }
        let kinds: Vec<String> = self
            .odd_values
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        format!(
            "odd property values repaired (see docs/design/mapping.md, Value table): {}\n",
            kinds.join(", ")
        )
    }

    /// Requests to the cloud service `service` (e.g. `s3`), every operation together.
    pub fn aws_requests_of(&self, service: &str) -> u64 {
        self.aws_requests
            .iter()
            .filter(|((s, _), _)| s == service)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn total(&self) -> TypeCounts {
        self.per_type
            .values()
            .fold(TypeCounts::default(), |a, c| TypeCounts {
                read: a.read + c.read,
                sent: a.sent + c.sent,
                skipped_no_identity: a.skipped_no_identity + c.skipped_no_identity,
                parked: a.parked + c.parked,
            })
    }

    /// Objects that ended one way or another.
    pub fn objects_ended(&self) -> u64 {
        self.objects_done
            + self.objects_failed
            + self.objects_retried
            + self.objects_abandoned
            + self.objects_panicked
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let heap_retries = counter(
            "currents_heap_heap_retries",
            "Requests to Heap that will be retried",
        );
        let heap_bisections = counter(
            "currents_heap_heap_bisections",
            "Batches Heap rejected that were split in halves to find the offending events",
        );
        let rate_limit_waits = counter(
            "currents_heap_rate_limit_waits",
            "Times sending waited for rate-limit room",
        );
        let values_truncated = counter(
            "currents_heap_values_truncated",
            "Property values cut to Heap's 1023 characters",
        );
        let collisions_dropped = counter(
            "currents_heap_custom_property_collisions",
            "Custom properties dropped because their name collided twice",
        );
        let objects_done = counter(
            "currents_heap_objects_done",
            "Currents objects recorded done",
        );
        let objects_failed = counter(
            "currents_heap_objects_failed",
            "Currents objects recorded failed (unreadable)",
        );
        let objects_retried = counter(
            "currents_heap_objects_retried",
            "Currents objects left unrecorded after a source or state error, to be tried again",
        );
        let objects_abandoned = counter(
            "currents_heap_objects_abandoned",
            "Currents objects abandoned in flight at shutdown (not recorded)",
        );
        let objects_panicked = counter(
            "currents_heap_objects_panicked",
            "Object tasks that panicked; each object is tried again at the next poll",
        );
        let progress_writes = counter(
            "currents_heap_progress_writes",
            "Checkpoints written inside objects in flight (one PUT each)",
        );
        let progress_write_failures = counter(
            "currents_heap_progress_write_failures",
            "Checkpoints inside objects that could not be written (the object goes on)",
        );
        let objects_resumed = counter(
            "currents_heap_objects_resumed",
            "Currents objects resumed from a checkpoint instead of their first event",
        );
        let events_resumed_past = counter(
            "currents_heap_events_resumed_past",
            "Events a resume did not read or send again: they had ended before the checkpoint",
        );
        let state_write_failures = counter(
            "currents_heap_state_write_failures",
            "Ledger and dead-letter writes that failed (each is retried)",
        );
        let poll_failures = counter(
            "currents_heap_poll_failures",
            "Polls that could not list the source or read the ledger",
        );
        let notifications_received = counter(
            "currents_heap_notifications_received",
            "Messages received from the SQS queue",
        );
        let notification_objects = counter(
            "currents_heap_notification_objects",
            "Objects named by notifications and queued (not yet recorded)",
        );
        let notification_records_unreadable = counter(
            "currents_heap_notification_records_unreadable",
            "Records of notifications that name a created object but cannot be read, each counted once; the reconciliation finds their objects",
        );
        let polls = counter(
            "currents_heap_polls",
            "Polls that listed the source and read what they needed of the ledger",
        );
        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let objects_pending = gauge(
            "currents_heap_objects_pending",
            "Currents objects queued or in flight after the last poll",
        );
        let lag_seconds = gauge(
            "currents_heap_lag_seconds",
            "Age of the oldest pending date= hour at the last poll",
        );
        let last_poll_unix = gauge(
            "currents_heap_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful poll",
        );
        let source_folders = gauge(
            "currents_heap_source_event_type_folders",
            "event_type= folders the last poll found in the source (-1: no poll yet)",
        );
        source_folders.set(-1);
        let state_write_failing = gauge(
            "currents_heap_state_write_failing",
            "1 while the last state write failed, else 0",
        );
        let mut family = |name: &str, help: &str| {
            let family = Family::<Labels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let events_read = family(
            "currents_heap_events_read",
            "Currents events read, per event type",
        );
        let events_sent = family(
            "currents_heap_events_sent",
            "Events Heap accepted, per event type",
        );
        let events_skipped = family(
            "currents_heap_events_skipped",
            "Events not sent by policy (no identity), per event type",
        );
        let events_parked = family(
            "currents_heap_events_dead_lettered",
            "Events parked as dead letters, per event type",
        );
        let heap_requests = family(
            "currents_heap_heap_requests",
            "Requests to Heap by HTTP status (none: no response)",
        );
        let aws_requests = family(
            "currents_heap_requests",
            "Requests to cloud services (S3, SQS, Azure Blob Storage, GCS) by service and operation, every attempt",
        );
        let notifications_dropped = family(
            "currents_heap_notifications_dropped",
            "Messages deleted with nothing to do, by reason (test_event, unreadable, nothing_new)",
        );
        let odd_values = family(
            "currents_heap_odd_property_values",
            "Odd values in the JSON properties of CustomEvent and Purchase, repaired by the value table, by kind (lone_surrogate, number_out_of_range, too_deep, not_json)",
        );
        let odd_value_kinds = Oddity::ALL
            .iter()
            .map(|kind| {
                let counter = odd_values
                    .get_or_create(&vec![("kind", kind.label().to_string())])
                    .clone();
                (*kind, counter)
            })
            .collect();
        let lane_family = family(
            "currents_heap_lane_events_sent",
            "Events Heap accepted, per lane (live: the live window; backfill: ranges handed to the worker)",
        );
        let lane_sent = ["live", "backfill"].map(|lane| {
            lane_family
                .get_or_create(&vec![("lane", lane.to_string())])
                .clone()
        });
        let rate_budget_app = Gauge::default();
        registry.register(
            "currents_heap_rate_budget_app_events",
            "The app's current rate budget, events per window: the configured limit lowered by 429s, growing back without them",
            rate_budget_app.clone(),
        );
        let rate_blocked = Gauge::default();
        registry.register(
            "currents_heap_waiting_for_rate_room",
            "1 while events wait because the rate limit leaves no room for them, else 0",
            rate_blocked.clone(),
        );
        let rate_budget_lowered_identities = Gauge::default();
        registry.register(
            "currents_heap_rate_budget_lowered_identities",
            "Identities whose rate budget is below the configured per-identity limit",
            rate_budget_lowered_identities.clone(),
        );
        let heap_request_duration = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "currents_heap_heap_request_duration_seconds",
            "Latency of requests to Heap",
            heap_request_duration.clone(),
        );
        let lease = lease::LeaseMetrics::register(&mut registry);
        let updates = Family::<Labels, Counter>::default();
        registry.register(
            "currents_heap_user_property_updates",
            "User-property updates from Braze profile and subscription events, by outcome (accepted, no_identity, superseded, parked)",
            updates.clone(),
        );
        let user_property_updates = UPDATE_OUTCOMES
            .iter()
            .map(|o| {
                (
                    *o,
                    updates.get_or_create_owned(&vec![("outcome", o.to_string())]),
                )
            })
            .collect();
        let user_property_requests = Family::<Labels, Counter>::default();
        registry.register(
            "currents_heap_user_property_requests",
            "Requests to Heap's add_user_properties by HTTP status (none: no response)",
            user_property_requests.clone(),
        );
        let user_property_budget = Gauge::default();
        registry.register(
            "currents_heap_user_property_budget",
            "Users per minute the user-property lane may send now (its adaptive budget under --user-properties-per-minute)",
            user_property_budget.clone(),
        );
        Metrics {
            user_property_updates,
            user_property_requests,
            user_property_statuses: Mutex::new(BTreeMap::new()),
            user_property_budget,
            lease,
            lane_sent,
            rate_budget_app,
            rate_blocked,
            rate_budget_lowered_identities,
            registry,
            events_read,
            events_sent,
            events_skipped,
            events_parked,
            by_type: Mutex::new(HashMap::new()),
            heap_requests,
            statuses: Mutex::new(BTreeMap::new()),
            heap_request_duration,
            aws_requests,
            aws_operations: Mutex::new(BTreeMap::new()),
            heap_retries,
            heap_bisections,
            rate_limit_waits,
            values_truncated,
            collisions_dropped,
            odd_value_kinds,
            objects_done,
            objects_failed,
            objects_retried,
            objects_abandoned,
            objects_panicked,
            progress_writes,
            progress_write_failures,
            events_resumed_past,
            objects_resumed,
            objects_pending,
            lag_seconds,
            last_poll_unix,
            source_folders,
            state_write_failures,
            state_write_failing,
            state_outage: Mutex::new(None),
            heap_warned_at: Mutex::new(None),
            polls,
            poll_failures,
            poll_failure: Mutex::new(None),
            notifications_received,
            notifications_dropped,
            notification_objects,
            notification_records_unreadable,
            queue_failure: Mutex::new(None),
            listening: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs `count` on the per-type counters of `event_type`, created on first use. Once a
    /// type is known this is one lock and one lookup by `&str`: no allocation, no clone.
    fn with_type(&self, event_type: &str, count: impl FnOnce(&TypeCounters)) {
        let mut by_type = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counters) = by_type.get(event_type) {
            return count(counters);
        }
        let labels = vec![("event_type", event_type.to_string())];
        let counters = TypeCounters {
            read: self.events_read.get_or_create_owned(&labels),
            sent: self.events_sent.get_or_create_owned(&labels),
            skipped: self.events_skipped.get_or_create_owned(&labels),
            parked: self.events_parked.get_or_create_owned(&labels),
        };
        count(&counters);
        by_type.insert(Arc::from(event_type), counters);
    }

    /// The request counter of one status, created on first use.
    /// The counter of user-property updates that ended as `outcome` (one of
    /// [`UPDATE_OUTCOMES`]).
    pub(crate) fn user_property_update(&self, outcome: &str) -> Option<&Counter> {
        self.user_property_updates
            .iter()
            .find(|(o, _)| *o == outcome)
            .map(|(_, c)| c)
    }

    pub(crate) fn user_property_status(&self, status: &str) -> Counter {
        let mut statuses = self
            .user_property_statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        statuses
            .entry(status.to_string())
            .or_insert_with(|| {
                self.user_property_requests
                    .get_or_create_owned(&vec![("status", status.to_string())])
            })
            .clone()
    }

    pub(crate) fn set_user_property_budget(&self, users: u64) {
        self.user_property_budget
            .set(i64::try_from(users).unwrap_or(i64::MAX));
    }

    fn of_status(&self, status: &str) -> Counter {
        let mut statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = statuses.get(status) {
            return counter.clone();
        }
        let counter = self
            .heap_requests
            .get_or_create_owned(&vec![("status", status.to_string())]);
        statuses.insert(status.to_string(), counter.clone());
        counter
    }

    /// The request counter of one AWS service and operation, created on first use.
    fn of_operation(&self, service: &str, operation: &str) -> Counter {
        let mut operations = self
            .aws_operations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Looked up by reference first: counting a known operation allocates nothing.
        if let Some((_, counter)) = operations
            .iter()
            .find(|((s, o), _)| s == service && o == operation)
        {
            return counter.clone();
        }
        let counter = self.aws_requests.get_or_create_owned(&vec![
            ("service", service.to_string()),
            ("operation", operation.to_string()),
        ]);
        operations.insert(
            (service.to_string(), operation.to_string()),
            counter.clone(),
        );
        counter
    }

    /// Objects found and not yet ended (the `currents_heap_objects_pending` gauge).
    pub fn objects_pending(&self) -> u64 {
        self.objects_pending.get().max(0) as u64
    }

    /// The age of the oldest pending object's hour, seconds (`currents_heap_lag_seconds`).
    pub fn lag_secs(&self) -> u64 {
        self.lag_seconds.get().max(0) as u64
    }

    pub fn last_poll_unix(&self) -> i64 {
        self.last_poll_unix.get()
    }

    /// Why the worker is not ready, or `None` if it is: the last poll succeeded, within
    /// `ready_within`, it found `event_type=` folders (unless notifications bring objects
    /// in: a new integration has none yet, and the worker can still receive), and state
    /// writes are not failing.
    pub fn not_ready(&self, now_unix: i64, ready_within: Duration) -> Option<String> {
        // A standby does not poll: it is ready while it can read the lease.
        if let Some(verdict) = self.lease.readiness(ready_within) {
            return verdict;
        }
        if let Some(failing) = &*self.state_outage.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(format!(
                "{}; failing for {}s: {}",
                failing.cause,
                now_unix - failing.since,
                failing.error
            ));
        }
        if let Some(error) = &*self.poll_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(format!("the last poll failed: {error}"));
        }
        if let Some(error) = &*self.queue_failure.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(format!("the last receive from the queue failed: {error}"));
        }
        let last = self.last_poll_unix();
        if last == 0 {
            return Some("no successful poll yet".into());
        }
        if now_unix - last > ready_within.as_secs() as i64 {
            return Some(format!("last successful poll was {}s ago", now_unix - last));
        }
        if self.source_folders.get() == 0
            && !self.listening.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Some(
                "the source holds no event_type= folders: check --source / CURRENTS_HEAP_SOURCE"
                    .into(),
            );
        }
        None
    }

    /// Whether a persistent Heap failure may be logged at warn now (once a minute); if so,
    /// the minute starts now.
    pub fn heap_warning_due(&self) -> bool {
        let mut last = self
            .heap_warned_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Whether delivery holds events the rate limit has no room for right now.
    pub fn waiting_for_rate(&self) -> bool {
        self.rate_blocked.get() > 0
    }

    /// This process's part in the lease changed (counted in the transitions).
    pub fn lease_role(&self, role: LeaseRole) {
        self.lease.set_role(role);
    }

    /// The lease was renewed (holder) or read (standby) just now.
    pub fn lease_touched(&self) {
        self.lease.touched();
    }

    pub fn current_lease_role(&self) -> LeaseRole {
        self.lease.role()
    }

    /// The counter of one kind of odd property value.
    fn odd_value(&self, kind: Oddity) -> &Counter {
        &self
            .odd_value_kinds
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind has a counter")
            .1
    }

    /// The counters as they are now.
    /// The app's rate budget after the last answer from Heap (events per window; 0 before):
    /// [`Counts::rate_budget_app`] without reading every counter.
    pub fn rate_budget_app(&self) -> u64 {
        self.rate_budget_app.get().max(0) as u64
    }

    pub fn counts(&self) -> Counts {
        let by_type = self.by_type.lock().unwrap_or_else(|p| p.into_inner());
        let per_type = by_type
            .iter()
            .map(|(event_type, c)| {
                let counts = TypeCounts {
                    read: c.read.get(),
                    sent: c.sent.get(),
                    skipped_no_identity: c.skipped.get(),
                    parked: c.parked.get(),
                };
                (event_type.to_string(), counts)
            })
            .collect();
        let requests = self
            .statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(status, counter)| (status.clone(), counter.get()))
            .collect();
        let aws_requests = self
            .aws_operations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(key, counter)| (key.clone(), counter.get()))
            .collect();
        let user_property_updates = self
            .user_property_updates
            .iter()
            .map(|(o, c)| (*o, c.get()))
            .collect();
        let user_property_requests = self
            .user_property_statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(status, counter)| (status.clone(), counter.get()))
            .collect();
        Counts {
            user_property_updates,
            user_property_requests,
            per_type,
            requests,
            retries: self.heap_retries.get(),
            bisections: self.heap_bisections.get(),
            rate_limit_waits: self.rate_limit_waits.get(),
            values_truncated: self.values_truncated.get(),
            collisions_dropped: self.collisions_dropped.get(),
            odd_values: self
                .odd_value_kinds
                .iter()
                .map(|(kind, counter)| (kind.label(), counter.get()))
                .collect(),
            objects_done: self.objects_done.get(),
            objects_failed: self.objects_failed.get(),
            objects_retried: self.objects_retried.get(),
            objects_abandoned: self.objects_abandoned.get(),
            objects_panicked: self.objects_panicked.get(),
            progress_writes: self.progress_writes.get(),
            progress_write_failures: self.progress_write_failures.get(),
            objects_resumed: self.objects_resumed.get(),
            events_resumed_past: self.events_resumed_past.get(),
            polls: self.polls.get(),
            sent_live: self.lane_sent[0].get(),
            sent_backfill: self.lane_sent[1].get(),
            rate_budget_app: self.rate_budget_app.get().max(0) as u64,
            waiting_for_rate: self.rate_blocked.get() > 0,
            aws_requests,
        }
    }

    /// The OpenMetrics text exposition, for `/metrics`.
    pub fn render(&self) -> String {
        self.lease.refresh();
        let mut out = String::new();
        // Writing into a String cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::events::*;
    use super::*;

    #[test]
    fn a_persistent_heap_failure_is_warned_of_once_a_minute() {
        let metrics = Metrics::new();
        assert!(metrics.heap_warning_due());
        assert!(!metrics.heap_warning_due(), "not twice in a minute");
    }

    #[test]
    fn renders_counters_histogram_and_gauges_and_reads_them_back() {
        let metrics = Metrics::new();
        EventsRead {
            event_type: "users.behaviors.CustomEvent",
            count: 2,
        }
        .emit(&metrics);
        EventsSent {
            event_type: "users.behaviors.CustomEvent",
            count: 1,
        }
        .emit(&metrics);
        HeapRequest {
            status: Some(200),
            latency: Duration::from_millis(30),
        }
        .emit(&metrics);
        HeapRequest {
            status: None,
            latency: Duration::from_secs(3),
        }
        .emit(&metrics);
        PollSucceeded {
            pending: 4,
            lag: Some(Duration::from_secs(7200)),
            folders: 3,
            at_unix: 1_800_000_000,
        }
        .emit(&metrics);
        for operation in ["ListObjectsV2", "ListObjectsV2", "GetObject"] {
            StoreRequest {
                service: "s3",
                operation,
            }
            .emit(&metrics);
        }
        StoreRequest {
            service: "sqs",
            operation: "ReceiveMessage",
        }
        .emit(&metrics);
        let text = metrics.render();
        for expected in [
            "currents_heap_events_read_total{event_type=\"users.behaviors.CustomEvent\"} 2",
            "currents_heap_heap_requests_total{status=\"none\"} 1",
            "currents_heap_heap_requests_total{status=\"200\"} 1",
            "currents_heap_heap_request_duration_seconds_bucket{le=\"0.05\"} 1",
            "currents_heap_heap_request_duration_seconds_bucket{le=\"5.0\"} 2",
            "currents_heap_heap_request_duration_seconds_count 2",
            "currents_heap_objects_pending 4",
            "currents_heap_lag_seconds 7200",
            "currents_heap_polls_total 1",
            "currents_heap_requests_total{service=\"s3\",operation=\"ListObjectsV2\"} 2",
            "currents_heap_requests_total{service=\"s3\",operation=\"GetObject\"} 1",
            "currents_heap_requests_total{service=\"sqs\",operation=\"ReceiveMessage\"} 1",
        ] {
            assert!(text.contains(expected), "no `{expected}` in\n{text}");
        }
        assert_eq!(
            metrics.not_ready(1_800_000_010, Duration::from_secs(60)),
            None
        );
        PollFailed {
            error: "cannot list the source: list /gone/: the directory does not exist",
        }
        .emit(&metrics);
        let reason = metrics
            .not_ready(1_800_000_010, Duration::from_secs(60))
            .expect("a failed poll is not ready at once");
        assert!(reason.contains("does not exist"), "{reason}");
        PollSucceeded {
            pending: 0,
            lag: None,
            folders: 3,
            at_unix: 1_800_000_020,
        }
        .emit(&metrics);
        assert_eq!(
            metrics.not_ready(1_800_000_030, Duration::from_secs(60)),
            None
        );
        let counts = metrics.counts();
        assert_eq!(counts.total().read, 2);
        assert_eq!(counts.total().sent, 1);
        assert_eq!(counts.requests.get("none"), Some(&1));
        assert_eq!(
            counts
                .aws_requests
                .get(&("s3".to_string(), "ListObjectsV2".to_string())),
            Some(&2)
        );
        assert_eq!((counts.aws_requests_of("s3"), counts.polls), (3, 2));
    }
}
