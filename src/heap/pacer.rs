//! Client-side pacing for Heap's rate limits: at most N events per app and M events per
//! identity in any sliding window (60 s by default).
//!
//! A token bucket whose burst is a whole minute's allowance would let nearly twice the limit
//! through some 60-second window, so this keeps an exact log instead: how many events were
//! sent when. Events in flight count until their response arrives, and are then logged at the
//! time the response arrived. Heap received them no later than that, so an event sent after
//! the log entry expires reaches Heap a full window after the earlier ones: Heap can never
//! see more than the limit in any window, whatever the network latency.
//!
//! Every method takes `now`, so the pacer is deterministic under any clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Heap's documented limits (heap-facts §4); 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub app_events: u64,
    pub identity_events: u64,
    pub window: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            app_events: 15_000,
            identity_events: 1_000,
            window: Duration::from_secs(60),
        }
    }
}

/// A sliding-window log for one limit.
#[derive(Debug, Default)]
struct Window {
    entries: VecDeque<(Instant, u64)>,
    logged: u64,
    in_flight: u64,
}

impl Window {
    fn expire(&mut self, now: Instant, span: Duration) {
        while let Some(&(at, n)) = self.entries.front() {
            if at + span > now {
                break;
            }
            self.entries.pop_front();
            self.logged -= n;
        }
    }

    fn room(&mut self, limit: u64, now: Instant, span: Duration) -> u64 {
        self.expire(now, span);
        limit.saturating_sub(self.logged + self.in_flight)
    }

    fn complete(&mut self, n: u64, at: Instant) {
        self.in_flight = self.in_flight.saturating_sub(n);
        match self.entries.back_mut() {
            Some((last, count)) if *last == at => *count += n,
            // Completions arrive in time order; guard against equal-or-earlier anyway.
            Some((last, _)) if *last > at => {
                let last = *last;
                self.entries.push_back((last, n));
            }
            _ => self.entries.push_back((at, n)),
        }
        self.logged += n;
    }

    fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.in_flight == 0
    }

    /// When the oldest entry still in the window expires, if any.
    fn next_expiry(&self, now: Instant, span: Duration) -> Option<Instant> {
        self.entries
            .iter()
            .map(|&(at, _)| at + span)
            .find(|expiry| *expiry > now)
    }
}

pub struct Pacer {
    limits: RateLimits,
    app: Window,
    identities: HashMap<Arc<str>, Window>,
}

impl Pacer {
    pub fn new(limits: RateLimits) -> Self {
        Pacer {
            limits,
            app: Window::default(),
            identities: HashMap::new(),
        }
    }

    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// Events the app may send now (`u64::MAX` without an app limit).
    pub fn app_room(&mut self, now: Instant) -> u64 {
        match self.limits.app_events {
            0 => u64::MAX,
            limit => self.app.room(limit, now, self.limits.window),
        }
    }

    /// Events this identity may send now (`u64::MAX` without an identity limit).
    pub fn identity_room(&mut self, identity: &str, now: Instant) -> u64 {
        match self.limits.identity_events {
            0 => u64::MAX,
            limit => match self.identities.get_mut(identity) {
                Some(window) => window.room(limit, now, self.limits.window),
                None => limit,
            },
        }
    }

    /// Counts a request's events as in flight; `per_identity` sums to the request's size.
    pub fn start(&mut self, per_identity: &HashMap<Arc<str>, u64>) {
        let total: u64 = per_identity.values().sum();
        self.app.in_flight += total;
        if self.limits.identity_events > 0 {
            for (identity, n) in per_identity {
                self.identities
                    .entry(identity.clone())
                    .or_default()
                    .in_flight += n;
            }
        }
    }

    /// Logs a finished request's events at `now`, whatever the outcome: a failed request may
    /// still have counted against Heap's limits.
    pub fn finish(&mut self, per_identity: &HashMap<Arc<str>, u64>, now: Instant) {
        let total: u64 = per_identity.values().sum();
        self.app.complete(total, now);
        if self.limits.identity_events > 0 {
            for (identity, n) in per_identity {
                if let Some(window) = self.identities.get_mut(identity) {
                    window.complete(*n, now);
                }
            }
        }
    }

    /// The next time after `now` that some room frees up, to sleep until when nothing can
    /// be sent. Windows not looked at lately may hold expired entries: those are skipped.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let span = self.limits.window;
        self.identities
            .values()
            .filter_map(|w| w.next_expiry(now, span))
            .chain(self.app.next_expiry(now, span))
            .min()
    }

    /// Drops the logs of identities that have nothing in their window any more.
    pub fn forget_idle(&mut self, now: Instant) {
        let span = self.limits.window;
        self.identities.retain(|_, w| {
            w.expire(now, span);
            !w.is_idle()
        });
    }

    pub fn tracked_identities(&self) -> usize {
        self.identities.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> HashMap<Arc<str>, u64> {
        pairs.iter().map(|(k, n)| (Arc::from(*k), *n)).collect()
    }

    #[test]
    fn the_window_slides_from_the_completion_time() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(RateLimits {
            app_events: 10,
            identity_events: 0,
            window: Duration::from_secs(60),
        });
        let batch = counts(&[("a", 10)]);
        pacer.start(&batch);
        assert_eq!(pacer.app_room(t0), 0, "in-flight events count");
        pacer.finish(&batch, t0 + Duration::from_secs(5));
        assert_eq!(pacer.app_room(t0 + Duration::from_secs(64)), 0);
        assert_eq!(pacer.next_expiry(t0), Some(t0 + Duration::from_secs(65)));
        assert_eq!(pacer.next_expiry(t0 + Duration::from_secs(65)), None);
        assert_eq!(pacer.app_room(t0 + Duration::from_secs(65)), 10);
    }

    #[test]
    fn a_minute_of_allowance_is_never_exceeded_in_any_window() {
        // Send as fast as the pacer allows for five virtual minutes; check every window.
        let t0 = Instant::now();
        let limits = RateLimits {
            app_events: 250,
            identity_events: 0,
            window: Duration::from_secs(60),
        };
        let mut pacer = Pacer::new(limits);
        let mut sent: Vec<(Instant, u64)> = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(300) {
            let n = pacer.app_room(now).min(40);
            if n > 0 {
                let batch = counts(&[("x", n)]);
                pacer.start(&batch);
                pacer.finish(&batch, now);
                sent.push((now, n));
            }
            now += Duration::from_millis(250);
        }
        for &(start, _) in &sent {
            let in_window: u64 = sent
                .iter()
                .filter(|(t, _)| *t >= start && *t < start + limits.window)
                .map(|(_, n)| n)
                .sum();
            assert!(
                in_window <= 250,
                "{in_window} events in the window from {:?}",
                start - t0
            );
        }
        let total: u64 = sent.iter().map(|(_, n)| n).sum();
        assert!(total >= 250 * 5, "throughput fell to {total} in 5 minutes");
    }

    #[test]
    fn identities_are_limited_separately() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(RateLimits {
            app_events: 0,
            identity_events: 3,
            window: Duration::from_secs(60),
        });
        let batch = counts(&[("hot", 3), ("cold", 1)]);
        pacer.start(&batch);
        pacer.finish(&batch, t0);
        assert_eq!(pacer.identity_room("hot", t0), 0);
        assert_eq!(pacer.identity_room("cold", t0), 2);
        assert_eq!(pacer.identity_room("new", t0), 3);
        assert_eq!(pacer.app_room(t0), u64::MAX);
        pacer.forget_idle(t0 + Duration::from_secs(61));
        assert_eq!(pacer.tracked_identities(), 0);
    }
}
