//! What the engine is asked to do, and how: the plan (which `date=` hours, once or polling)
//! and the settings that bound it.

use std::time::Duration;

use super::scheduler::Admission;
use crate::clock::parse_duration;
use crate::currents::key::DateHour;
use crate::source::Window;

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which Currents objects are processed at once: `--object-concurrency` (1 to 256)
    /// whatever their size, and more while they are small (`--small-object-budget`).
    pub object_concurrency: Admission,
    /// After the shutdown future resolves, how long objects in flight may take to finish
    /// before they are abandoned (never recorded).
    pub shutdown_timeout: Duration,
    /// Bounded runs only (`run --once`, `backfill`): how long a failing state write (ledger
    /// or dead letters) is retried before its object is left unrecorded for the next run.
    /// A long-lived `run` retries state writes until they succeed or it is stopped.
    pub bounded_state_retry: Duration,
    /// Decode, map and count; send nothing, record nothing.
    pub dry_run: bool,
}

/// Which work the engine does, and when it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// `run`: poll the lookback window every `poll_interval` until shut down.
    Live {
        lookback: Lookback,
        poll_interval: Duration,
    },
    /// `run --once`: one pass over the lookback window.
    Once { lookback: Lookback },
    /// `backfill`: `from` (inclusive) to `to` (exclusive), run by the backfill lane as a
    /// worker runs a handed-over range: up to [`super::backfills::MAX_PASSES`] passes.
    Range { from: DateHour, to: DateHour },
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::Live {
                lookback,
                poll_interval,
            } => write!(
                f,
                "polling every {poll_interval:?} over a lookback of {lookback}"
            ),
            Plan::Once { lookback } => write!(f, "one pass over a lookback of {lookback}"),
            Plan::Range { from, to } => write!(f, "backfill of date={from} up to date={to}"),
        }
    }
}

impl Plan {
    /// A bounded plan ends by itself, and its exit code is its result.
    pub fn is_bounded(&self) -> bool {
        !matches!(self, Plan::Live { .. })
    }

    /// The `date=` hours to look at now.
    pub fn window(&self) -> Window {
        match *self {
            Plan::Live { lookback, .. } | Plan::Once { lookback } => lookback.window(),
            Plan::Range { from, to } => Window::Hours { from, to },
        }
    }
}

/// How far back `run` and `status` look, in `date=` hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookback {
    All,
    /// 1 hour up to [`crate::clock::MAX_DURATION`].
    Hours(u64),
}

impl std::str::FromStr for Lookback {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "all" {
            return Ok(Lookback::All);
        }
        let duration =
            parse_duration(text).map_err(|e| format!("{e}; a lookback is like 72h, or `all`"))?;
        if duration < Duration::from_secs(3600) {
            return Err(format!(
                "`{text}` looks at no `date=` hour: a lookback is at least 1h, or `all`"
            ));
        }
        Ok(Lookback::Hours(duration.as_secs().div_ceil(3600)))
    }
}

impl std::fmt::Display for Lookback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookback::All => f.write_str("all"),
            Lookback::Hours(h) => write!(f, "{h}h"),
        }
    }
}

impl Lookback {
    /// The window up to the current hour (and one ahead, for clock skew). `Hours` is bounded
    /// by the longest duration, so the arithmetic cannot overflow.
    pub fn window(self) -> Window {
        match self {
            Lookback::All => Window::All,
            Lookback::Hours(hours) => {
                let now = DateHour::now().hours_since_epoch();
                let hours = i64::try_from(hours).unwrap_or(i64::MAX);
                Window::Hours {
                    from: DateHour::from_hours_since_epoch(now.saturating_sub(hours)),
                    to: DateHour::from_hours_since_epoch(now.saturating_add(2)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookbacks_are_whole_hours_and_at_least_one() {
        assert_eq!("72h".parse(), Ok(Lookback::Hours(72)));
        assert_eq!("90m".parse(), Ok(Lookback::Hours(2)));
        assert_eq!("all".parse(), Ok(Lookback::All));
        assert!(
            "0h".parse::<Lookback>()
                .unwrap_err()
                .contains("at least 1h")
        );
        assert!("59m".parse::<Lookback>().is_err());
        assert!("soon".parse::<Lookback>().is_err());
        assert!(
            "99999h"
                .parse::<Lookback>()
                .unwrap_err()
                .contains("longest")
        );
        let Window::Hours { from, to } = Lookback::Hours(72).window() else {
            panic!("hours give an hour window");
        };
        assert_eq!(to.hours_since_epoch() - from.hours_since_epoch(), 74);
    }
}
