//! Client-side pacing for Heap's rate limits: at most N events per app and M events per
//! identity in any sliding window (60 s by default), where N and M adapt to Heap's answers
//! below the configured ceilings.
//!
//! # The window log
//! A token bucket whose burst is a whole minute's allowance would let nearly twice the limit
//! through some 60-second window, so this keeps an exact log instead: how many events were
//! sent when. Events in flight count until their response arrives, and are then logged at the
//! time the response arrived, if Heap may have counted them ([`Counted`]). Heap received them
//! no later than that, so an event sent after the log entry expires reaches Heap a full window
//! after the earlier ones: Heap never sees more than the budget in any window, whatever the
//! network latency. A request Heap did not store (refused with 429, 4xx or 5xx, or never
//! connected) takes no room: during an outage, retries are paced by the retry policy alone,
//! not by a window filled with attempts Heap never counted.
//!
//! # Adaptive budgets (AIMD)
//! The configured limits are ceilings: Heap's real limit may be lower, or shared with other
//! server-side senders to the same app. Each limit has a current budget:
//! - **Decrease**: on a 429, the budget becomes [`DECREASE`] (0.9) times the smaller of the
//!   budget and the events this process had in the window when the 429 came (logged plus in
//!   flight): that is what Heap let through, so one 429 brings a budget far above the real
//!   limit down to just under it. But never less than half the budget: after a restart, or
//!   beside another sender, Heap's window holds events this process never saw, and its own
//!   count would drop the budget to the floor. At most one decrease per round trip: a 429 for
//!   a request sent before the last decrease says nothing new. Never below [`FLOOR_SHARE`] of
//!   the ceiling (1 %).
//! - **Increase**: after each whole window without a decrease, the budget grows by
//!   [`INCREASE_SHARE`] of the ceiling (4 %), up to the ceiling.
//!
//! Against a real limit of 9,000/min under a ceiling of 15,000/min, the budget settles
//! between about 8,100 and 9,300: a 429 every few minutes, above 90 % of the real limit
//! (`tests/adaptive_pacing.rs` measures it).
//!
//! Which limit a 429 is about is not documented (heap-facts §5, UNVERIFIED). A 429 whose body
//! names the identity limit lowers the budgets of the batch's identities, one that names the
//! app's lowers the app's (the client reads the scope from the whole body). Any other is
//! taken to be about the limit the refused request came closest to filling: the app's, or
//! its fullest identity's (then every identity of the batch is lowered).
//!
//! Memory: one log per identity with events in the window or a lowered budget; the batcher
//! forgets idle ones beyond a bound. Every method takes `now`, so the pacer is deterministic
//! under any clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Heap's documented limits (heap-facts §4); 0 disables a limit. With adaptive pacing these
/// are ceilings.
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

/// A 429 multiplies the budget by this (see the module docs).
pub const DECREASE: f64 = 0.9;
/// Each window without a 429 adds this share of the ceiling to the budget.
pub const INCREASE_SHARE: f64 = 0.04;
/// The budget never falls below this share of the ceiling (and never below 1 event).
pub const FLOOR_SHARE: f64 = 0.01;

/// What Heap's answer to a request means for its rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Heap may have stored the events (2xx, or no answer to a request that was sent): they
    /// take room in the window.
    Stored,
    /// Heap refused the request for its rate (429): no room taken, and the budget shrinks.
    /// `scope`: the limit the answer named, if it named one (else the pacer infers it).
    Throttled { scope: Option<Scope> },
    /// Heap did not store the events (another 4xx, a 5xx, or no connection): no room taken.
    NotStored,
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

    /// Events Heap may have counted in the window ending `now`, and those on their way.
    fn used(&mut self, now: Instant, span: Duration) -> u64 {
        self.expire(now, span);
        self.logged + self.in_flight
    }

    fn log(&mut self, n: u64, at: Instant) {
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

/// The current budget under one ceiling: additive increase, multiplicative decrease.
#[derive(Debug, Clone, Copy)]
struct Budget {
    current: u64,
    /// Since when the budget has gone without a change; whole windows from here add steps.
    /// `None` until first looked at, or while at the ceiling.
    steady_since: Option<Instant>,
    /// The last decrease: 429s for requests sent before it are not counted again.
    last_decrease: Option<Instant>,
}

impl Budget {
    fn at(ceiling: u64) -> Self {
        Budget {
            current: ceiling,
            steady_since: None,
            last_decrease: None,
        }
    }

    fn current(&mut self, ceiling: u64, span: Duration, now: Instant) -> u64 {
        if self.current >= ceiling {
            self.current = ceiling;
            self.steady_since = None;
            return ceiling;
        }
        let since = *self.steady_since.get_or_insert(now);
        if now > since && !span.is_zero() {
            let windows = ((now - since).as_nanos() / span.as_nanos()) as u32;
            if windows > 0 {
                let step = ((ceiling as f64 * INCREASE_SHARE) as u64).max(1);
                self.current = self
                    .current
                    .saturating_add(step.saturating_mul(u64::from(windows)))
                    .min(ceiling);
                self.steady_since = Some(since + span * windows);
            }
        }
        self.current
    }

    /// A 429 for a request sent at `sent_at`, with `counted` events in Heap's window then.
    /// Returns whether the budget went down.
    fn decrease(&mut self, ceiling: u64, counted: u64, sent_at: Instant, now: Instant) -> bool {
        if self.last_decrease.is_some_and(|last| sent_at < last) {
            return false;
        }
        let floor = ((ceiling as f64 * FLOOR_SHARE) as u64).max(1);
        // What this process counted is all it knows of Heap's window; after a restart, or
        // beside another sender, it may be far less than Heap counted, so one 429 never takes
        // more than half.
        let toward_counted = (self.current.min(counted) as f64 * DECREASE) as u64;
        let halved = self.current / 2;
        self.current = toward_counted.max(halved).clamp(floor, ceiling);
        self.last_decrease = Some(now);
        self.steady_since = Some(now);
        true
    }

    fn is_lowered(&self, ceiling: u64) -> bool {
        self.current < ceiling
    }
}

/// Which of Heap's rate limits a 429 is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The app's events per window.
    App,
    /// One identity's events per window.
    Identity,
}

#[derive(Debug)]
struct Identity {
    window: Window,
    budget: Budget,
}

pub struct Pacer {
    limits: RateLimits,
    app: Window,
    app_budget: Budget,
    identities: HashMap<Arc<str>, Identity>,
}

impl Pacer {
    pub fn new(limits: RateLimits) -> Self {
        Pacer {
            limits,
            app: Window::default(),
            app_budget: Budget::at(limits.app_events),
            identities: HashMap::new(),
        }
    }

    /// The configured ceilings.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// The app's current budget, events per window (`u64::MAX` without an app limit).
    pub fn app_budget(&mut self, now: Instant) -> u64 {
        match self.limits.app_events {
            0 => u64::MAX,
            ceiling => self.app_budget.current(ceiling, self.limits.window, now),
        }
    }

    /// Identities whose budget is below the ceiling now.
    pub fn lowered_identities(&self) -> usize {
        let ceiling = self.limits.identity_events;
        self.identities
            .values()
            .filter(|i| i.budget.is_lowered(ceiling))
            .count()
    }

    /// Events the app may send now (`u64::MAX` without an app limit).
    pub fn app_room(&mut self, now: Instant) -> u64 {
        match self.limits.app_events {
            0 => u64::MAX,
            ceiling => {
                let budget = self.app_budget.current(ceiling, self.limits.window, now);
                budget.saturating_sub(self.app.used(now, self.limits.window))
            }
        }
    }

    /// Events this identity may send now (`u64::MAX` without an identity limit).
    pub fn identity_room(&mut self, identity: &str, now: Instant) -> u64 {
        let (ceiling, span) = (self.limits.identity_events, self.limits.window);
        match ceiling {
            0 => u64::MAX,
            _ => match self.identities.get_mut(identity) {
                Some(tracked) => {
                    let budget = tracked.budget.current(ceiling, span, now);
                    budget.saturating_sub(tracked.window.used(now, span))
                }
                None => ceiling,
            },
        }
    }

    /// Counts a request's events as in flight; `per_identity` sums to the request's size.
    pub fn start(&mut self, per_identity: &HashMap<Arc<str>, u64>) {
        let total: u64 = per_identity.values().sum();
        self.app.in_flight += total;
        if self.limits.identity_events > 0 {
            let ceiling = self.limits.identity_events;
            for (identity, n) in per_identity {
                self.identities
                    .entry(identity.clone())
                    .or_insert_with(|| Identity {
                        window: Window::default(),
                        budget: Budget::at(ceiling),
                    })
                    .window
                    .in_flight += n;
            }
        }
    }

    /// A request sent at `sent_at` was answered at `now`: its events leave the in-flight
    /// count, and are logged at `now` if Heap may have counted them; a 429 lowers a budget.
    pub fn finish(
        &mut self,
        per_identity: &HashMap<Arc<str>, u64>,
        counted: Counted,
        sent_at: Instant,
        now: Instant,
    ) {
        let (span, limits) = (self.limits.window, self.limits);
        let total: u64 = per_identity.values().sum();
        self.app.in_flight = self.app.in_flight.saturating_sub(total);
        if counted == Counted::Stored {
            self.app.log(total, now);
        }
        let throttled = matches!(counted, Counted::Throttled { .. });
        let scope = match counted {
            Counted::Throttled { scope: Some(scope) } => scope,
            Counted::Throttled { scope: None } => self.likely_scope(per_identity, now),
            _ => Scope::App,
        };
        if throttled && scope == Scope::App && limits.app_events > 0 {
            let heap_counted = self.app.used(now, span);
            if self
                .app_budget
                .decrease(limits.app_events, heap_counted, sent_at, now)
            {
                tracing::debug!(
                    budget = self.app_budget.current,
                    "Heap answered 429: the app's rate budget is lowered"
                );
            }
        }
        if limits.identity_events == 0 {
            return;
        }
        for (identity, n) in per_identity {
            let Some(tracked) = self.identities.get_mut(identity) else {
                continue;
            };
            tracked.window.in_flight = tracked.window.in_flight.saturating_sub(*n);
            if counted == Counted::Stored {
                tracked.window.log(*n, now);
            }
            if throttled && scope == Scope::Identity {
                let heap_counted = tracked.window.used(now, span);
                tracked
                    .budget
                    .decrease(limits.identity_events, heap_counted, sent_at, now);
            }
        }
    }

    /// Which limit a 429 that does not say was most likely about: the one the refused request
    /// would have filled the larger share of (events counted in the window plus the request's,
    /// over the budget). A hot identity near its limit in a quiet app is an identity 429; an
    /// app near its budget (or far over Heap's real limit) with many identities is an app 429.
    fn likely_scope(&mut self, per_identity: &HashMap<Arc<str>, u64>, now: Instant) -> Scope {
        let span = self.limits.window;
        let total: u64 = per_identity.values().sum();
        let share = |used: u64, n: u64, budget: u64| (used + n) as f64 / budget.max(1) as f64;
        let app = match self.limits.app_events {
            0 => 0.0,
            ceiling => {
                let budget = self.app_budget.current(ceiling, span, now);
                share(self.app.used(now, span), total, budget)
            }
        };
        let ceiling = self.limits.identity_events;
        let identity = per_identity
            .iter()
            .filter(|_| ceiling > 0)
            .filter_map(|(id, n)| {
                let tracked = self.identities.get_mut(id)?;
                let budget = tracked.budget.current(ceiling, span, now);
                Some(share(tracked.window.used(now, span), *n, budget))
            })
            .fold(0.0, f64::max);
        if identity > app {
            Scope::Identity
        } else {
            Scope::App
        }
    }

    /// The next time after `now` that some room frees up or a budget grows, to sleep until
    /// when nothing can be sent. Windows not looked at lately may hold expired entries:
    /// those are skipped.
    pub fn next_expiry(&self, now: Instant) -> Option<Instant> {
        let span = self.limits.window;
        // The end of the first whole window after `since` that ends after `now`.
        let growth = |budget: &Budget| {
            let since = budget.steady_since.filter(|_| !span.is_zero())?;
            let windows = now.saturating_duration_since(since).as_nanos() / span.as_nanos() + 1;
            Some(since + span * u32::try_from(windows).unwrap_or(u32::MAX))
        };
        let app_growth = (self.limits.app_events > 0
            && self.app_budget.is_lowered(self.limits.app_events))
        .then(|| growth(&self.app_budget))
        .flatten();
        self.identities
            .values()
            .filter_map(|i| i.window.next_expiry(now, span))
            .chain(self.app.next_expiry(now, span))
            .chain(app_growth)
            .min()
    }

    /// Drops the logs of identities with nothing in their window, keeping lowered budgets
    /// unless more than `keep` identities would remain.
    pub fn forget_idle(&mut self, now: Instant, keep: usize) {
        let (span, ceiling) = (self.limits.window, self.limits.identity_events);
        self.identities.retain(|_, i| {
            i.window.expire(now, span);
            !i.window.is_idle() || i.budget.current(ceiling, span, now) < ceiling
        });
        if self.identities.len() > keep {
            self.identities.retain(|_, i| !i.window.is_idle());
        }
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
        pacer.finish(&batch, Counted::Stored, t0, t0 + Duration::from_secs(5));
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
                pacer.finish(&batch, Counted::Stored, now, now);
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
        pacer.finish(&batch, Counted::Stored, t0, t0);
        assert_eq!(pacer.identity_room("hot", t0), 0);
        assert_eq!(pacer.identity_room("cold", t0), 2);
        assert_eq!(pacer.identity_room("new", t0), 3);
        assert_eq!(pacer.app_room(t0), u64::MAX);
        pacer.forget_idle(t0 + Duration::from_secs(61), 0);
        assert_eq!(pacer.tracked_identities(), 0);
    }

    fn limits(app: u64, identity: u64) -> RateLimits {
        RateLimits {
            app_events: app,
            identity_events: identity,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_429_lowers_the_budget_to_just_under_what_heap_let_through() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(15_000, 0));
        let stored = counts(&[("a", 9_000)]);
        pacer.start(&stored);
        pacer.finish(&stored, Counted::Stored, t0, t0);
        let refused = counts(&[("b", 1_000)]);
        let t1 = t0 + Duration::from_secs(10);
        pacer.start(&refused);
        pacer.finish(&refused, Counted::Throttled { scope: None }, t1, t1);
        assert_eq!(pacer.app_budget(t1), 8_100, "0.9 of the 9,000 Heap counted");
        assert_eq!(pacer.app_room(t1), 0, "the refused events took no room");
        // A 429 for a request sent before the decrease says nothing new.
        pacer.start(&refused);
        pacer.finish(&refused, Counted::Throttled { scope: None }, t0, t1);
        assert_eq!(pacer.app_budget(t1), 8_100);
        // Each whole window without a 429 adds 4 % of the ceiling (600), up to the ceiling.
        assert_eq!(pacer.app_budget(t1 + Duration::from_secs(59)), 8_100);
        assert_eq!(pacer.app_budget(t1 + Duration::from_secs(60)), 8_700);
        assert_eq!(
            pacer.next_expiry(t1 + Duration::from_secs(61)),
            Some(t1 + Duration::from_secs(120)),
            "a blocked sender wakes when the budget grows"
        );
        assert_eq!(pacer.app_budget(t1 + Duration::from_secs(600)), 14_100);
        assert_eq!(pacer.app_budget(t1 + Duration::from_secs(3_600)), 15_000);
    }

    #[test]
    fn one_429_never_takes_more_than_half() {
        // A restarted process: Heap's window is full of its predecessor's events.
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(1_200, 0));
        let refused = counts(&[("a", 100)]);
        pacer.start(&refused);
        pacer.finish(&refused, Counted::Throttled { scope: None }, t0, t0);
        assert_eq!(pacer.app_budget(t0), 600);
    }

    #[test]
    fn the_budget_never_falls_below_the_floor() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(15_000, 0));
        let refused = counts(&[("a", 10)]);
        for i in 0..50 {
            let at = t0 + Duration::from_secs(i);
            pacer.start(&refused);
            pacer.finish(&refused, Counted::Throttled { scope: None }, at, at);
        }
        assert_eq!(pacer.app_budget(t0 + Duration::from_secs(50)), 150);
    }

    #[test]
    fn failed_requests_take_no_room_but_unanswered_ones_do() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(100, 0));
        let batch = counts(&[("a", 60)]);
        for _ in 0..5 {
            pacer.start(&batch);
            pacer.finish(&batch, Counted::NotStored, t0, t0);
        }
        assert_eq!(pacer.app_room(t0), 100, "an outage leaves the window empty");
        assert_eq!(pacer.app_budget(t0), 100, "and the budget whole");
        pacer.start(&batch);
        pacer.finish(&batch, Counted::Stored, t0, t0);
        assert_eq!(pacer.app_room(t0), 40);
    }

    #[test]
    fn identity_budgets_adapt_on_their_own() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(15_000, 1_000));
        let hot = counts(&[("hot", 500)]);
        pacer.start(&hot);
        pacer.finish(&hot, Counted::Stored, t0, t0);
        let more = counts(&[("hot", 100)]);
        pacer.start(&more);
        pacer.finish(&more, Counted::Throttled { scope: None }, t0, t0);
        assert_eq!(pacer.identity_room("hot", t0), 0, "budget 450 < 500 used");
        assert_eq!(pacer.lowered_identities(), 1);
        assert_eq!(pacer.identity_room("cold", t0), 1_000);
        // A 429 naming the identity limit leaves the app budget alone.
        let mixed = counts(&[("x", 10), ("y", 10)]);
        pacer.start(&mixed);
        pacer.finish(
            &mixed,
            Counted::Throttled {
                scope: Some(Scope::Identity),
            },
            t0,
            t0,
        );
        assert_eq!(pacer.lowered_identities(), 3);
        assert_eq!(
            pacer.app_budget(t0),
            15_000,
            "a hot identity in a quiet app: not the app's limit"
        );
        // Lowered budgets are kept while idle, unless the bound needs the room.
        let later = t0 + Duration::from_secs(61);
        pacer.forget_idle(later, 10);
        assert_eq!(pacer.tracked_identities(), 3);
        pacer.forget_idle(later, 1);
        assert_eq!(pacer.tracked_identities(), 0);
    }
}
