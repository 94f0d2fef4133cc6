//! The periodic summary line: every [`SUMMARY_EVERY`] (one minute) a running engine logs,
//! at info, what it did in that minute and where it stands, as Filebeat's "Non-zero metrics
//! in the last 30s" does, with every number a structured field (see docs/reference/logs.md):
//!
//! `activity: last 1m: 1200 events sent in 3 requests (0 answered 429), 4 objects ended; 2
//! objects pending, lag 3600s; budget 15000 events per window`
//!
//! Everything is read back from the [`Metrics`] registry (the same counters `/metrics`
//! shows): the line keeps no bookkeeping of its own but the previous reading.
//!
//! A minute in which nothing happened and nothing is pending is not logged, except every
//! [`IDLE_EVERY`]-th one (every 10 minutes): a healthy idle worker still says it is alive.
//! The engine logs a last line when it ends, whatever the minute held.

use std::sync::Arc;
use std::time::Duration;

use super::{Counts, Metrics};

/// How often the summary line is logged. Fixed: a minute is what an operator reads "in the
/// last minute" as, and what the alert rules' rates are over.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// An idle worker (nothing sent, nothing pending) logs every this many intervals.
pub const IDLE_EVERY: u32 = 10;

/// What happened since the previous reading, and the gauges now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// The time the deltas cover.
    pub interval: Duration,
    pub events_sent: u64,
    pub events_parked: u64,
    pub requests: u64,
    /// Requests Heap answered 429 (too many requests).
    pub throttled: u64,
    pub objects_ended: u64,
    pub objects_failed: u64,
    pub objects_pending: u64,
    /// The age of the oldest pending object's `date=` hour, in seconds (0 with none pending).
    pub lag_secs: u64,
    /// The app's current rate budget (events per the rate limit's window; 0 before Heap has
    /// answered).
    pub budget_events: u64,
    /// A dry run: `events_sent` counts events that would have been sent, and there is no
    /// budget (nothing is sent).
    pub dry_run: bool,
}

impl Activity {
    /// Nothing happened and nothing waits.
    pub fn idle(&self) -> bool {
        self.events_sent + self.events_parked + self.requests + self.objects_ended == 0
            && self.objects_pending == 0
    }

    /// Logs the line at info, every number a field.
    pub fn log(&self, last: bool) {
        let span =
            humantime::format_duration(Duration::from_secs(self.interval.as_secs())).to_string();
        let when = if last { "until the end" } else { "last" };
        tracing::info!(
            interval_secs = self.interval.as_secs(),
            events_sent = self.events_sent,
            events_parked = self.events_parked,
            requests = self.requests,
            throttled = self.throttled,
            objects_ended = self.objects_ended,
            objects_failed = self.objects_failed,
            objects_pending = self.objects_pending,
            lag_secs = self.lag_secs,
            budget_events = self.budget_events,
            dry_run = self.dry_run,
            "activity: {when} {span}: {}, {} parked, {} objects ended; {} objects pending, lag {}s{}",
            self.sent_text(),
            self.events_parked,
            self.objects_ended,
            self.objects_pending,
            self.lag_secs,
            self.budget_text(),
        );
    }

    /// What went to Heap, or (a dry run) what would have gone.
    fn sent_text(&self) -> String {
        if self.dry_run {
            return format!(
                "{} events would be sent (dry run: nothing sent)",
                self.events_sent
            );
        }
        format!(
            "{} events sent in {} requests ({} answered 429)",
            self.events_sent, self.requests, self.throttled
        )
    }

    fn budget_text(&self) -> String {
        if self.dry_run {
            return String::new();
        }
        format!("; budget {} events per window", self.budget_events)
    }
}

/// Reads the registry at each interval and gives the difference from the previous reading.
pub struct ActivityMeter {
    metrics: Arc<Metrics>,
    previous: Counts,
    /// Idle intervals not logged since the last line.
    quiet: u32,
    dry_run: bool,
}

impl ActivityMeter {
    /// `dry_run`: the engine sends nothing, and its lines say what would have been sent.
    pub fn new(metrics: Arc<Metrics>, dry_run: bool) -> Self {
        let previous = metrics.counts();
        ActivityMeter {
            metrics,
            previous,
            quiet: 0,
            dry_run,
        }
    }

    /// What happened over `interval`, since the previous reading.
    pub fn read(&mut self, interval: Duration) -> Activity {
        let now = self.metrics.counts();
        let (was, is) = (self.previous.total(), now.total());
        let requests = |c: &Counts| c.requests.values().sum::<u64>();
        let throttled = |c: &Counts| c.requests.get("429").copied().unwrap_or(0);
        let activity = Activity {
            interval,
            events_sent: is.sent.saturating_sub(was.sent),
            events_parked: is.parked.saturating_sub(was.parked),
            requests: requests(&now).saturating_sub(requests(&self.previous)),
            throttled: throttled(&now).saturating_sub(throttled(&self.previous)),
            objects_ended: now
                .objects_ended()
                .saturating_sub(self.previous.objects_ended()),
            objects_failed: now
                .objects_failed
                .saturating_sub(self.previous.objects_failed),
            objects_pending: self.metrics.objects_pending(),
            lag_secs: self.metrics.lag_secs(),
            budget_events: now.rate_budget_app,
            dry_run: self.dry_run,
        };
        self.previous = now;
        activity
    }

    /// The interval's line, unless it was idle and an idle line is not due.
    pub fn tick(&mut self, interval: Duration) -> Option<Activity> {
        let activity = self.read(interval);
        if activity.idle() && self.quiet + 1 < IDLE_EVERY {
            self.quiet += 1;
            return None;
        }
        self.quiet = 0;
        Some(activity)
    }
}

/// Logs the summary line every `every` until `stop` is cancelled, then a last line over what
/// remained of the interval. `dry_run` as for [`ActivityMeter::new`].
pub fn spawn(
    metrics: Arc<Metrics>,
    every: Duration,
    dry_run: bool,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut meter = ActivityMeter::new(metrics, dry_run);
        let mut since = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval_at(since + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                at = ticks.tick() => {
                    if let Some(activity) = meter.tick(at - since) {
                        activity.log(false);
                    }
                    since = at;
                }
                _ = stop.cancelled() => {
                    meter.read(since.elapsed()).log(true);
                    return;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::events::{HeapRequest, PendingObjects};

    #[test]
    fn an_interval_gives_what_changed_since_the_last_and_the_gauges_now() {
        let metrics = Arc::new(Metrics::new());
        let mut meter = ActivityMeter::new(metrics.clone(), false);
        let minute = Duration::from_secs(60);
        assert_eq!(meter.tick(minute), None, "idle: not logged");
        for status in [200, 429] {
            HeapRequest {
                status: Some(status),
                latency: Duration::from_millis(5),
            }
            .emit(&metrics);
        }
        PendingObjects {
            pending: 3,
            lag: Some(Duration::from_secs(7200)),
        }
        .emit(&metrics);
        let first = meter.tick(minute).expect("activity is logged");
        assert_eq!((first.requests, first.throttled), (2, 1));
        assert_eq!((first.objects_pending, first.lag_secs), (3, 7200));
        let second = meter.tick(minute).expect("pending objects are logged");
        assert_eq!((second.requests, second.throttled), (0, 0), "deltas");
        PendingObjects {
            pending: 0,
            lag: None,
        }
        .emit(&metrics);
        // Idle: silent, but for one line every IDLE_EVERY intervals.
        let lines = (0..IDLE_EVERY * 3)
            .filter(|_| meter.tick(minute).is_some())
            .count();
        assert_eq!(lines, 3);
    }

    #[test]
    fn a_dry_run_says_what_would_be_sent_and_no_budget() {
        let activity = |dry_run| Activity {
            interval: Duration::from_secs(60),
            events_sent: 172,
            events_parked: 0,
            requests: 0,
            throttled: 0,
            objects_ended: 19,
            objects_failed: 0,
            objects_pending: 0,
            lag_secs: 0,
            budget_events: 0,
            dry_run,
        };
        let dry = activity(true);
        assert_eq!(
            (dry.sent_text(), dry.budget_text()),
            (
                "172 events would be sent (dry run: nothing sent)".to_string(),
                String::new()
            )
        );
        let real = activity(false);
        assert_eq!(
            (real.sent_text(), real.budget_text()),
            (
                "172 events sent in 0 requests (0 answered 429)".to_string(),
                "; budget 0 events per window".to_string()
            )
        );
    }
}
