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
//! # Adaptive budgets
//! The configured limits are ceilings: Heap's real limit may be lower, or shared with other
//! server-side senders to the same app, or its window may still hold a predecessor's events
//! (a handover, a restart). Each limit has a current budget.
//! - **Hold**: a 429 for the app holds *every* request to the app until its `Retry-After`
//!   (without one, 1/60 of the window), doubled for each 429 in a row up to 1/8 of the
//!   window. Then one small request at a time ([`PROBE_SHARE`] of the ceiling) probes
//!   Heap's window until Heap takes one: a window full of another sender's events costs a 429
//!   every few seconds, not one per request (1,254 before, 10 now, in the test below).
//! - **Decrease**: on a 429, the budget becomes [`DECREASE`] (0.9) times the smaller of the
//!   budget and the events this process had in the window when the 429 came (logged plus in
//!   flight): that is what Heap let through. Never less than half the budget, never below
//!   [`FLOOR_SHARE`] of the ceiling, and at most once per round of evidence: a 429 for a
//!   request sent before the last decrease says nothing new; when this process's own events
//!   explain the 429 (at least half the budget in its window), a round is the `Retry-After`
//!   period; when they do not (Heap's window holds someone else's events, gone a window
//!   later), a round is a whole window. One burst never takes the budget to the floor.
//! - **Increase by probing**: once the budget is spent within a window and is below the
//!   ceiling, one small request above it (1 % of the ceiling, doubling while Heap takes them,
//!   up to a quarter of the ceiling) asks Heap for more; each one Heap takes raises the budget
//!   to what Heap took in the window. A refused probe lowers nothing and pauses probing for
//!   1, 2, 4, then 8 windows. So refused requests above the real limit are small ones, and
//!   the budget returns to a raised limit within a round trip of a window, not at 4 % of the
//!   ceiling a minute. Identity budgets keep additive increase ([`INCREASE_SHARE`] per window).
//!
//! Measured on a paused clock against the stand-in (`tests/adaptive_pacing.rs`): a real
//! limit of 9,000/min under 15,000: 5 429s in nine minutes, 99.5 % of the real limit.
//!
//! # Across a takeover
//! [`Pacer::history`] gives what this process sent in the last window (the lease carries it);
//! a successor counts it with [`Pacer::seed`] before its first request (see [`Seed`] for why
//! Heap then never sees more than the budget in a window).
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
/// A probe of Heap's window is a request of this share of the app's ceiling (at least 1).
pub const PROBE_SHARE: f64 = 0.01;
/// The longest hold after repeated 429s without `Retry-After`, as a share of the window
/// (a longer `Retry-After` is honoured whole).
pub const MAX_HOLD_SHARE: f64 = 0.125;

/// What Heap's answer to a request means for its rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Heap may have stored the events (2xx, or no answer to a request that was sent): they
    /// take room in the window.
    Stored,
    /// Heap refused the request for its rate (429): no room taken, and the budget shrinks.
    /// `scope`: the limit the answer named, if it named one (else the pacer infers it).
    /// `retry_after`: Heap's `Retry-After`, which holds every request to the app.
    Throttled {
        scope: Option<Scope>,
        retry_after: Option<Duration>,
    },
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
    /// Whether whole windows without a 429 add [`INCREASE_SHARE`] (identities). The app's
    /// budget grows by probes instead (see the module docs).
    additive: bool,
}

impl Budget {
    fn at(ceiling: u64) -> Self {
        Budget {
            current: ceiling,
            steady_since: None,
            last_decrease: None,
            additive: true,
        }
    }

    fn current(&mut self, ceiling: u64, span: Duration, now: Instant) -> u64 {
        if self.current >= ceiling {
            self.current = ceiling;
            self.steady_since = None;
            return ceiling;
        }
        let since = *self.steady_since.get_or_insert(now);
        if self.additive && now > since && !span.is_zero() {
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
    /// `round`: how long after the last decrease new evidence may lower it again.
    fn decrease(
        &mut self,
        ceiling: u64,
        counted: u64,
        sent_at: Instant,
        now: Instant,
        round: Duration,
    ) -> bool {
        if self
            .last_decrease
            .is_some_and(|last| sent_at < last || now < last + round)
        {
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

/// What this process sent to the app recently, for the lease body (serde, JSON): a successor's pacer counts it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SentHistory {
    /// (milliseconds before the snapshot, events), oldest first, bucketed to whole seconds, only within the last window; events in flight at the snapshot count at age 0.
    pub sent: Vec<(u64, u64)>,
    /// The app budget (events per window) this process was using, if below the ceiling.
    pub app_budget: Option<u64>,
}

/// A predecessor's history, placed on this process's clock.
///
/// # Why a successor stays within Heap's limit
/// Each entry is logged at `observed_at − age`, and ages are rounded *down* to whole
/// seconds, so an entry sits at or after the moment its events reached Heap and expires no
/// sooner than Heap's copy. After an expiry the predecessor may have sent more, unrecorded,
/// until `unknown_until` (the moment it stopped itself: its self-fence). Its own pacer kept
/// every window within its budget, so in the window ending at `unknown_until` it sent at
/// most that budget; what the history logs in `(unknown_until − window, observed_at]` is
/// part of it, and the rest was sent at or before `unknown_until`. An entry of (the budget −
/// the logged part) at `unknown_until` therefore covers everything unrecorded, and expires no
/// sooner than it does in Heap's window.
#[derive(Debug, Clone)]
pub struct Seed {
    pub history: SentHistory,
    /// When this process read that history (its ages count back from here).
    pub observed_at: Instant,
    /// After an expiry (not a clean release): the predecessor may have sent, unrecorded, until this moment; the pacer assumes it used the rest of its budget then: an entry of (app ceiling-or-budget − what the history logs in (unknown_until − window, observed_at]) at `unknown_until` (clamped to ≤ now).
    pub unknown_until: Option<Instant>,
}

/// The app window's raw state, for a [`SentHistory`] taken later or on another task.
#[derive(Debug, Clone, Default)]
pub struct AppView {
    entries: Vec<(Instant, u64)>,
    in_flight: u64,
    app_budget: Option<u64>,
    window: Duration,
}

impl AppView {
    /// The history as of `now`: entries aged from `now`; events in flight count at age 0.
    pub fn history(&self, now: Instant) -> SentHistory {
        let mut buckets: Vec<(u64, u64)> = Vec::new();
        for &(at, n) in &self.entries {
            let age = now.saturating_duration_since(at);
            if age >= self.window {
                continue;
            }
            // Rounded down: the successor places the events no earlier than they were sent.
            let age_ms = age.as_secs() * 1000;
            match buckets.last_mut() {
                Some((last, count)) if *last == age_ms => *count += n,
                _ => buckets.push((age_ms, n)),
            }
        }
        if self.in_flight > 0 {
            match buckets.last_mut() {
                Some((0, count)) => *count += self.in_flight,
                _ => buckets.push((0, self.in_flight)),
            }
        }
        SentHistory {
            sent: buckets,
            app_budget: self.app_budget,
        }
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
    /// The app's probing state after 429s (see the module docs).
    probe: Probe,
    identities: HashMap<Arc<str>, Identity>,
}

/// What the app's 429s taught, and how requests go until Heap accepts one again.
#[derive(Debug, Clone, Copy, Default)]
struct Probe {
    /// No request to the app starts before this (`Retry-After`, or a probe's pause).
    hold_until: Option<Instant>,
    /// A request within the budget was refused and none accepted since: one small request
    /// at a time, at most once per hold, until Heap takes one.
    unconfirmed: bool,
    /// 429s in a row while unconfirmed: each doubles the hold (up to [`MAX_HOLD_SHARE`]).
    refusals: u32,
    /// Probes above the budget wait until then after one was refused.
    above_paused_until: Option<Instant>,
    /// Refused probes above the budget in a row: each doubles the pause, up to 8 windows.
    above_refusals: u32,
    /// Events in the next probe above the budget: doubles while Heap accepts them.
    above_size: u64,
}

impl Pacer {
    pub fn new(limits: RateLimits) -> Self {
        Pacer {
            limits,
            app: Window::default(),
            app_budget: Budget {
                additive: false,
                ..Budget::at(limits.app_events)
            },
            probe: Probe::default(),
            identities: HashMap::new(),
        }
    }

    /// The app window as it is now, for a [`HistoryTap`](crate::heap::delivery::HistoryTap).
    pub fn app_view(&mut self, now: Instant) -> AppView {
        let span = self.limits.window;
        self.app.expire(now, span);
        let ceiling = self.limits.app_events;
        let budget = self.app_budget(now);
        AppView {
            entries: self.app.entries.iter().copied().collect(),
            in_flight: self.app.in_flight,
            app_budget: (ceiling > 0 && budget < ceiling).then_some(budget),
            window: span,
        }
    }

    /// What this process sent to the app in the window ending `now` (see [`SentHistory`]).
    pub fn history(&mut self, now: Instant) -> SentHistory {
        self.app_view(now).history(now)
    }

    /// Counts a predecessor's sends (see [`Seed`]): each entry at `observed_at − age`, never
    /// later than `now`, and its budget if lower than this one.
    pub fn seed(&mut self, seed: &Seed, now: Instant) {
        let span = self.limits.window;
        let place = |at: Instant| at.min(now);
        let mut entries: Vec<(Instant, u64)> = seed
            .history
            .sent
            .iter()
            .map(|&(age_ms, n)| {
                let age = Duration::from_millis(age_ms);
                // Before this clock's epoch: it cannot be earlier than that, so the epoch
                // (later than the truth) is the safe place.
                let at = seed
                    .observed_at
                    .checked_sub(age)
                    .unwrap_or(seed.observed_at);
                (place(at), n)
            })
            .collect();
        let ceiling = self.limits.app_events;
        if let Some(until) = seed.unknown_until {
            let budget = seed.history.app_budget.map_or(ceiling, |b| b.min(ceiling));
            let from = until.checked_sub(span);
            let logged: u64 = entries
                .iter()
                .filter(|(at, _)| from.is_none_or(|from| *at > from))
                .map(|(_, n)| n)
                .sum();
            let unknown = budget.saturating_sub(logged);
            if unknown > 0 {
                entries.push((place(until), unknown));
            }
        }
        entries.sort_by_key(|(at, _)| *at);
        for (at, n) in entries {
            self.app.log(n, at);
        }
        self.app.expire(now, span);
        if let Some(budget) = seed.history.app_budget
            && ceiling > 0
            && budget < self.app_budget(now)
        {
            let floor = ((ceiling as f64 * FLOOR_SHARE) as u64).max(1);
            self.app_budget.current = budget.max(floor);
            self.app_budget.steady_since = Some(now);
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
        let ceiling = self.limits.app_events;
        if ceiling == 0 {
            return u64::MAX;
        }
        if self.probe.hold_until.is_some_and(|until| now < until) {
            return 0;
        }
        let span = self.limits.window;
        let budget = self.app_budget.current(ceiling, span, now);
        let used = self.app.used(now, span);
        let room = budget.saturating_sub(used);
        let probe = self.probe_size(ceiling);
        if self.probe.unconfirmed {
            // Heap refused a request within the budget: its window may hold events this
            // process never saw. One small request at a time finds out when it has room.
            return if self.app.in_flight == 0 {
                room.min(probe)
            } else {
                0
            };
        }
        if room > 0 || budget >= ceiling || self.app.in_flight > 0 {
            return room;
        }
        if self
            .probe
            .above_paused_until
            .is_some_and(|until| now < until)
        {
            return 0;
        }
        // The budget is spent but below the ceiling: a small request above it learns whether
        // Heap allows more, without waiting a window for the budget to grow.
        self.probe
            .above_size
            .max(probe)
            .min(ceiling.saturating_sub(used))
    }

    /// The size of a request that probes Heap's window: 1 % of the ceiling.
    fn probe_size(&self, ceiling: u64) -> u64 {
        ((ceiling as f64 * PROBE_SHARE) as u64).max(1)
    }

    /// Heap stored a request to the app: the app is confirmed, and a request above the budget
    /// raises it to what Heap took in the window.
    fn app_stored(&mut self, sent_at: Instant, now: Instant) {
        let (ceiling, span) = (self.limits.app_events, self.limits.window);
        self.probe.unconfirmed = false;
        self.probe.refusals = 0;
        let used = self.app.used(now, span);
        let budget = self.app_budget.current(ceiling, span, now);
        let sent_under_this_budget = self
            .app_budget
            .last_decrease
            .is_none_or(|last| sent_at >= last);
        if used > budget && sent_under_this_budget {
            self.app_budget.current = used.min(ceiling);
            self.app_budget.steady_since = Some(now);
            self.probe.above_refusals = 0;
            let base = self.probe_size(ceiling);
            self.probe.above_size = (self.probe.above_size.max(base) * 2)
                .min(ceiling / 4)
                .max(base);
            tracing::debug!(
                budget = self.app_budget.current,
                "Heap took a request above the app's budget: the budget grows"
            );
        }
    }

    /// Heap refused a request to the app for its rate.
    fn app_throttled(
        &mut self,
        n: u64,
        retry_after: Option<Duration>,
        sent_at: Instant,
        now: Instant,
    ) {
        let (ceiling, span) = (self.limits.app_events, self.limits.window);
        let retry_after = retry_after.unwrap_or_default();
        let heap_counted = self.app.used(now, span);
        let budget = self.app_budget.current(ceiling, span, now);
        if heap_counted + n > budget && !self.probe.unconfirmed {
            // A probe above the budget was refused: the budget stands; probe again later.
            let windows = 1u32 << self.probe.above_refusals.min(3);
            self.probe.above_paused_until = Some(now + span * windows);
            self.probe.above_refusals += 1;
            self.probe.above_size = self.probe_size(ceiling);
            self.hold(now + retry_after);
            return;
        }
        // Hold every request: Heap's Retry-After, or else a short pause; doubled for each
        // refusal in a row, so a window full of another sender's events costs a 429 every
        // few seconds at most, not one per request.
        let base = if retry_after.is_zero() {
            span / 60
        } else {
            retry_after
        };
        let backoff = base * (1u32 << self.probe.refusals.min(6));
        let hold = backoff.min(span.mul_f64(MAX_HOLD_SHARE)).max(retry_after);
        self.hold(now + hold);
        self.probe.unconfirmed = true;
        self.probe.refusals += 1;
        // One decrease per round of evidence: a Retry-After period when this process's own
        // events explain the 429, a whole window when they do not (Heap's window then holds
        // another sender's events, which are gone a window later).
        let explained = heap_counted >= budget / 2;
        let round = if explained { retry_after } else { span };
        if self
            .app_budget
            .decrease(ceiling, heap_counted, sent_at, now, round)
        {
            tracing::debug!(
                budget = self.app_budget.current,
                "Heap answered 429: the app's rate budget is lowered"
            );
        }
    }

    fn hold(&mut self, until: Instant) {
        self.probe.hold_until = Some(self.probe.hold_until.map_or(until, |h| h.max(until)));
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
            Counted::Throttled {
                scope: Some(scope), ..
            } => scope,
            Counted::Throttled { scope: None, .. } => self.likely_scope(per_identity, now),
            _ => Scope::App,
        };
        if limits.app_events > 0 {
            match counted {
                Counted::Stored => self.app_stored(sent_at, now),
                Counted::Throttled { retry_after, .. } if scope == Scope::App => {
                    self.app_throttled(total, retry_after, sent_at, now)
                }
                _ => {}
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
                tracked.budget.decrease(
                    limits.identity_events,
                    heap_counted,
                    sent_at,
                    now,
                    Duration::ZERO,
                );
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
            let since = budget
                .steady_since
                .filter(|_| !span.is_zero() && budget.additive)?;
            let windows = now.saturating_duration_since(since).as_nanos() / span.as_nanos() + 1;
            Some(since + span * u32::try_from(windows).unwrap_or(u32::MAX))
        };
        let app_growth = (self.limits.app_events > 0
            && self.app_budget.is_lowered(self.limits.app_events))
        .then(|| growth(&self.app_budget))
        .flatten();
        let probe = [self.probe.hold_until, self.probe.above_paused_until]
            .into_iter()
            .flatten()
            .filter(|at| *at > now);
        self.identities
            .values()
            .filter_map(|i| i.window.next_expiry(now, span))
            .chain(self.app.next_expiry(now, span))
            .chain(app_growth)
            .chain(probe)
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
        send_flat_out(&mut pacer, t0, t0 + Duration::from_secs(300), &mut sent);
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
        pacer.finish(
            &refused,
            Counted::Throttled {
                scope: None,
                retry_after: None,
            },
            t1,
            t1,
        );
        assert_eq!(pacer.app_budget(t1), 8_100, "0.9 of the 9,000 Heap counted");
        assert_eq!(pacer.app_room(t1), 0, "the refused events took no room");
        // A 429 for a request sent before the decrease says nothing new.
        pacer.start(&refused);
        pacer.finish(
            &refused,
            Counted::Throttled {
                scope: None,
                retry_after: None,
            },
            t0,
            t1,
        );
        assert_eq!(pacer.app_budget(t1), 8_100);
        // The app's budget does not grow blindly: once the window is spent, a small request
        // above the budget probes Heap (1 % of the ceiling, doubling while Heap takes them).
        let t2 = t1 + Duration::from_secs(61);
        assert_eq!(pacer.app_budget(t2), 8_100);
        let fill = counts(&[("c", 8_100)]);
        pacer.start(&fill);
        pacer.finish(&fill, Counted::Stored, t2, t2);
        assert_eq!(pacer.app_room(t2), 150, "a probe above the budget");
        let probe = counts(&[("d", 150)]);
        pacer.start(&probe);
        pacer.finish(&probe, Counted::Stored, t2, t2);
        assert_eq!(
            pacer.app_budget(t2),
            8_250,
            "Heap took it: the budget grows"
        );
        assert_eq!(pacer.app_room(t2), 300, "and the next probe doubles");
        let probe = counts(&[("e", 300)]);
        pacer.start(&probe);
        pacer.finish(
            &probe,
            Counted::Throttled {
                scope: None,
                retry_after: None,
            },
            t2,
            t2,
        );
        assert_eq!(
            pacer.app_budget(t2),
            8_250,
            "a refused probe lowers nothing"
        );
        assert_eq!(pacer.app_room(t2), 0, "and probing pauses for a window");
        assert_eq!(pacer.app_room(t2 + Duration::from_secs(60)), 8_250);
    }

    #[test]
    fn one_429_never_takes_more_than_half() {
        // A restarted process: Heap's window is full of its predecessor's events.
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(1_200, 0));
        let refused = counts(&[("a", 100)]);
        pacer.start(&refused);
        pacer.finish(
            &refused,
            Counted::Throttled {
                scope: None,
                retry_after: None,
            },
            t0,
            t0,
        );
        assert_eq!(pacer.app_budget(t0), 600);
    }

    #[test]
    fn a_burst_of_429s_lowers_the_budget_once_per_round_never_to_the_floor() {
        // Heap's window is full of another sender's events: 50 429s in 50 s, this process's
        // own window empty. Before: each halved the budget, to the floor (150) in seconds.
        let t0 = Instant::now();
        let mut pacer = Pacer::new(limits(15_000, 0));
        let refused = counts(&[("a", 10)]);
        let throttled = Counted::Throttled {
            scope: None,
            retry_after: Some(Duration::from_secs(1)),
        };
        for i in 0..50 {
            let at = t0 + Duration::from_secs(i);
            pacer.start(&refused);
            pacer.finish(&refused, throttled, at, at);
        }
        assert_eq!(pacer.app_budget(t0 + Duration::from_secs(50)), 7_500);
        // Retry-After holds every request to the app, and the next goes alone and small.
        let last = t0 + Duration::from_secs(49);
        assert_eq!(pacer.app_room(last + Duration::from_millis(999)), 0);
        assert!(pacer.next_expiry(last).is_some_and(|at| at > last));
        let after = last + Duration::from_secs(60);
        assert_eq!(
            pacer.app_room(after),
            150,
            "one probe of 1 % of the ceiling"
        );
        let probe = counts(&[("p", 150)]);
        pacer.start(&probe);
        assert_eq!(pacer.app_room(after), 0, "one probe at a time");
        pacer.finish(&probe, Counted::Stored, after, after);
        assert_eq!(
            pacer.app_room(after),
            7_350,
            "Heap took it: the budget is open again"
        );
        // Decreases go on, once a window, but never below the floor.
        for i in 0..40 {
            let at = after + Duration::from_secs(61 * (i + 1));
            pacer.start(&refused);
            pacer.finish(&refused, throttled, at, at);
        }
        assert_eq!(pacer.app_budget(after + Duration::from_secs(61 * 41)), 150);
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
        pacer.finish(
            &more,
            Counted::Throttled {
                scope: None,
                retry_after: None,
            },
            t0,
            t0,
        );
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
                retry_after: None,
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

    /// Every 60 s window of `log` (time, events) holds at most `limit` events.
    fn assert_windows_within(log: &[(Instant, u64)], limit: u64, t0: Instant) {
        for &(start, _) in log {
            let in_window: u64 = log
                .iter()
                .filter(|(t, _)| *t >= start && *t < start + Duration::from_secs(60))
                .map(|(_, n)| n)
                .sum();
            assert!(
                in_window <= limit,
                "{in_window} events in the window from {:?}",
                start - t0
            );
        }
    }

    /// Sends as fast as `pacer` allows from `from` to `to`, each request answered at once
    /// and stored, in steps of 250 ms; appends to `log`.
    fn send_flat_out(pacer: &mut Pacer, from: Instant, to: Instant, log: &mut Vec<(Instant, u64)>) {
        let mut now = from;
        while now < to {
            let n = pacer.app_room(now).min(40);
            if n > 0 {
                let batch = counts(&[("x", n)]);
                pacer.start(&batch);
                pacer.finish(&batch, Counted::Stored, now, now);
                log.push((now, n));
            }
            now += Duration::from_millis(250);
        }
    }

    #[test]
    fn a_seed_from_a_full_window_sends_nothing_until_it_expires() {
        let t0 = Instant::now();
        let mut a = Pacer::new(limits(600, 0));
        let mut log = Vec::new();
        send_flat_out(&mut a, t0, t0 + Duration::from_secs(5), &mut log);
        let snapshot_at = t0 + Duration::from_secs(5);
        let history = a.history(snapshot_at);
        assert_eq!(history.sent.iter().map(|(_, n)| n).sum::<u64>(), 600);
        assert_eq!(history.app_budget, None, "at the ceiling");
        let json = serde_json::to_string(&history).unwrap();
        let history: SentHistory = serde_json::from_str(&json).unwrap();
        let mut b = Pacer::new(limits(600, 0));
        let now = snapshot_at + Duration::from_secs(2);
        b.seed(
            &Seed {
                history,
                observed_at: snapshot_at,
                unknown_until: None,
            },
            now,
        );
        assert_eq!(b.app_room(now), 0);
        let first_expiry = b.next_expiry(now).unwrap();
        assert!(
            first_expiry <= t0 + Duration::from_secs(61),
            "{:?}",
            first_expiry - t0
        );
        assert!(first_expiry >= t0 + Duration::from_secs(60));
        assert_eq!(b.app_room(t0 + Duration::from_secs(66)), 600, "all expired");
    }

    #[test]
    fn heap_never_sees_more_than_the_limit_across_a_handover() {
        for (gap, unknown) in [(0, false), (3, false), (0, true), (7, true), (20, true)] {
            let t0 = Instant::now();
            let limit = 600;
            let mut a = Pacer::new(limits(limit, 0));
            let mut log = Vec::new();
            // A sends at full rate for 90 s; its last snapshot (the lease body) is at 80 s, and
            // it goes on sending, unrecorded, until it fences itself at 90 s.
            send_flat_out(&mut a, t0, t0 + Duration::from_secs(80), &mut log);
            let snapshot_at = t0 + Duration::from_secs(80);
            let history = a.history(snapshot_at);
            let fenced_at = t0 + Duration::from_secs(90);
            if unknown {
                send_flat_out(&mut a, snapshot_at, fenced_at, &mut log);
            }
            let mut b = Pacer::new(limits(limit, 0));
            let start = fenced_at + Duration::from_secs(gap);
            b.seed(
                &Seed {
                    history,
                    observed_at: snapshot_at,
                    unknown_until: unknown.then_some(fenced_at),
                },
                start,
            );
            send_flat_out(&mut b, start, start + Duration::from_secs(180), &mut log);
            log.sort_by_key(|(t, _)| *t);
            assert_windows_within(&log, limit, t0);
            let total: u64 = log.iter().map(|(_, n)| n).sum();
            assert!(
                total >= limit * 4,
                "gap {gap}: only {total} sent in 4.5 windows"
            );
        }
    }
}
