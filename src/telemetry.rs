//! Metrics: one method per outcome, rendered in the Prometheus text format for `/metrics`.
//!
//! A small registry of our own rather than a global recorder: the counters are few and fixed,
//! tests can hold their own instance, and rendering needs no extra crates.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    /// metric → event type → count, for the per-type event counters. Looked up by `&str`, so
    /// counting an event allocates nothing once its type has been seen.
    events: Mutex<BTreeMap<&'static str, BTreeMap<String, u64>>>,
    requests_by_status: Mutex<BTreeMap<String, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    retries: AtomicU64,
    pacing_waits: AtomicU64,
    objects_done: AtomicU64,
    objects_failed: AtomicU64,
    objects_pending: AtomicI64,
    lag_seconds: AtomicI64,
    last_poll_unix: AtomicI64,
    /// `event_type=` folders the last poll found; -1 before the first poll.
    source_folders: AtomicI64,
    objects_panicked: AtomicU64,
    state_write_failures: AtomicU64,
    /// Since when (Unix seconds) state writes fail, and the last error; `None` while they work.
    state_outage: Mutex<Option<(i64, String)>>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            source_folders: AtomicI64::new(-1),
            ..Metrics::default()
        }
    }

    fn event(&self, metric: &'static str, event_type: &str, n: u64) {
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let by_type = events.entry(metric).or_default();
        match by_type.get_mut(event_type) {
            Some(count) => *count += n,
            None => {
                by_type.insert(event_type.to_string(), n);
            }
        }
    }

    pub fn events_read(&self, event_type: &str) {
        self.event("currents_heap_events_read_total", event_type, 1);
    }
    pub fn events_sent(&self, event_type: &str) {
        self.event("currents_heap_events_sent_total", event_type, 1);
    }
    pub fn events_skipped(&self, event_type: &str) {
        self.event("currents_heap_events_skipped_total", event_type, 1);
    }
    pub fn events_dead_lettered(&self, event_type: &str) {
        self.event("currents_heap_events_dead_lettered_total", event_type, 1);
    }

    /// One request to Heap: its status (or `none`) and how long it took.
    pub fn heap_request(&self, status: &str, latency: Duration) {
        *self
            .requests_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.to_string())
            .or_insert(0) += 1;
        let seconds = latency.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn heap_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn pacing_wait(&self) {
        self.pacing_waits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn object_done(&self) {
        self.objects_done.fetch_add(1, Ordering::Relaxed);
    }
    pub fn object_failed(&self) {
        self.objects_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub fn object_panicked(&self) {
        self.objects_panicked.fetch_add(1, Ordering::Relaxed);
    }

    /// A ledger or dead-letter write failed: readiness reports the outage until one succeeds.
    pub fn state_write_failed(&self, error: &str) {
        self.state_write_failures.fetch_add(1, Ordering::Relaxed);
        let mut outage = self.state_outage.lock().unwrap_or_else(|p| p.into_inner());
        let since = outage
            .as_ref()
            .map_or_else(crate::clock::unix_secs_now, |(since, _)| *since);
        *outage = Some((since, error.to_string()));
    }

    pub fn state_write_succeeded(&self) {
        *self.state_outage.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Why the worker is not ready, or `None` if it is: a poll succeeded within
    /// `ready_within`, it found `event_type=` folders, and state writes are not failing.
    pub fn not_ready(&self, now_unix: i64, ready_within: Duration) -> Option<String> {
        if let Some((since, error)) = &*self.state_outage.lock().unwrap_or_else(|p| p.into_inner())
        {
            return Some(format!(
                "state writes have failed for {}s: {error}",
                now_unix - since
            ));
        }
        let last = self.last_poll_unix();
        if last == 0 {
            return Some("no successful poll yet".into());
        }
        if now_unix - last > ready_within.as_secs() as i64 {
            return Some(format!("last successful poll was {}s ago", now_unix - last));
        }
        if self.source_folders.load(Ordering::Relaxed) == 0 {
            return Some(
                "the source holds no event_type= folders: check --source / CURRENTS_HEAP_SOURCE"
                    .into(),
            );
        }
        None
    }

    /// After a poll: objects waiting or in flight, and the age of the oldest pending hour.
    pub fn poll_succeeded(&self, pending: u64, lag: Option<Duration>, folders: u64, at_unix: i64) {
        self.source_folders.store(folders as i64, Ordering::Relaxed);
        self.objects_pending
            .store(pending as i64, Ordering::Relaxed);
        self.lag_seconds
            .store(lag.map_or(0, |l| l.as_secs() as i64), Ordering::Relaxed);
        self.last_poll_unix.store(at_unix, Ordering::Relaxed);
    }

    pub fn last_poll_unix(&self) -> i64 {
        self.last_poll_unix.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let events = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (metric, help) in [
            (
                "currents_heap_events_read_total",
                "Currents events read, per event type.",
            ),
            (
                "currents_heap_events_sent_total",
                "Events Heap accepted, per event type.",
            ),
            (
                "currents_heap_events_skipped_total",
                "Events not sent by policy (no identity), per event type.",
            ),
            (
                "currents_heap_events_dead_lettered_total",
                "Events parked as dead letters, per event type.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (event_type, n) in events.get(metric).into_iter().flatten() {
                let _ = writeln!(out, "{metric}{{event_type=\"{}\"}} {n}", escape(event_type));
            }
        }
        let _ = writeln!(
            out,
            "# HELP currents_heap_heap_requests_total Requests to Heap by HTTP status (none: no response).\n# TYPE currents_heap_heap_requests_total counter"
        );
        for (status, n) in self
            .requests_by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "currents_heap_heap_requests_total{{status=\"{}\"}} {n}",
                escape(status)
            );
        }
        let _ = writeln!(
            out,
            "# HELP currents_heap_heap_request_duration_seconds Latency of requests to Heap.\n# TYPE currents_heap_heap_request_duration_seconds histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "currents_heap_heap_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "currents_heap_heap_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "currents_heap_heap_request_duration_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "currents_heap_heap_request_duration_seconds_count {count}"
        );
        let state_failing = i64::from(
            self.state_outage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
        );
        let scalars: [(&str, &str, &str, i64); 11] = [
            (
                "currents_heap_objects_panicked_total",
                "counter",
                "Object tasks that panicked; each object is tried again at the next poll.",
                self.objects_panicked.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_state_write_failures_total",
                "counter",
                "Ledger and dead-letter writes that failed (each is retried).",
                self.state_write_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_state_write_failing",
                "gauge",
                "1 while the last state write failed, else 0.",
                state_failing,
            ),
            (
                "currents_heap_source_event_type_folders",
                "gauge",
                "event_type= folders the last poll found in the source (-1: no poll yet).",
                self.source_folders.load(Ordering::Relaxed),
            ),
            (
                "currents_heap_heap_retries_total",
                "counter",
                "Requests to Heap that will be retried.",
                self.retries.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_rate_limit_waits_total",
                "counter",
                "Times sending waited for rate-limit room.",
                self.pacing_waits.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_objects_done_total",
                "counter",
                "Currents objects recorded done.",
                self.objects_done.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_objects_failed_total",
                "counter",
                "Currents objects recorded failed (unreadable).",
                self.objects_failed.load(Ordering::Relaxed) as i64,
            ),
            (
                "currents_heap_objects_pending",
                "gauge",
                "Currents objects queued or in flight after the last poll.",
                self.objects_pending.load(Ordering::Relaxed),
            ),
            (
                "currents_heap_lag_seconds",
                "gauge",
                "Age of the oldest pending date= hour at the last poll.",
                self.lag_seconds.load(Ordering::Relaxed),
            ),
            (
                "currents_heap_last_successful_poll_timestamp_seconds",
                "gauge",
                "Unix time of the last successful poll.",
                self.last_poll_unix.load(Ordering::Relaxed),
            ),
        ];
        for (metric, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let metrics = Metrics::new();
        metrics.events_read("users.behaviors.CustomEvent");
        metrics.events_read("users.behaviors.CustomEvent");
        metrics.events_sent("users.behaviors.CustomEvent");
        metrics.heap_request("200", Duration::from_millis(30));
        metrics.heap_request("429", Duration::from_secs(3));
        metrics.poll_succeeded(4, Some(Duration::from_secs(7200)), 3, 1_800_000_000);
        let text = metrics.render();
        assert!(text.contains(
            "currents_heap_events_read_total{event_type=\"users.behaviors.CustomEvent\"} 2"
        ));
        assert!(text.contains("currents_heap_heap_requests_total{status=\"429\"} 1"));
        assert!(text.contains("currents_heap_heap_request_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("currents_heap_heap_request_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("currents_heap_heap_request_duration_seconds_count 2"));
        assert!(text.contains("currents_heap_objects_pending 4"));
        assert!(text.contains("currents_heap_lag_seconds 7200"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
        }
    }
}
