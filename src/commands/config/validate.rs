//! Checking a [`Config`] once it is assembled: one `validate()` whatever the source, so a
//! bound reads the same in an error, in `--help` and in the docs.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::{Config, DEFAULTS, HumanDuration, limits};
use crate::heap::map::{MAX_EVENT_NAME_CHARS, MAX_PROPERTY_CHARS};

/// A setting that is out of bounds or malformed, by its file key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub reason: String,
}

/// One bounded setting: its key, whether it is within bounds, and both as people write them.
struct Bound {
    key: &'static str,
    within: bool,
    range: String,
    value: String,
}

impl Config {
    /// Checks every bound and rule; the error names the file key and the reason.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key, reason: String| Err(Invalid { key, reason });
        if let Some(bound) = self.bounds().into_iter().find(|b| !b.within) {
            return invalid(
                bound.key,
                format!("must be {}, not {}", bound.range, bound.value),
            );
        }
        match reqwest::Url::parse(&self.heap_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return invalid(
                    "heap_url",
                    format!(
                        "`{}` is not an http:// or https:// URL with a host",
                        self.heap_url
                    ),
                );
            }
        }
        if let Some(url) = &self.sqs_queue_url {
            match reqwest::Url::parse(url) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
                _ => {
                    return invalid(
                        "sqs_queue_url",
                        "is not an http:// or https:// queue URL, e.g. https://sqs.us-east-1.amazonaws.com/123456789012/currents-heap".into(),
                    );
                }
            }
            if !matches!(self.source, crate::store::Location::S3 { .. }) {
                return invalid(
                    "sqs_queue_url",
                    "needs an s3:// source: notifications come from an S3 bucket".into(),
                );
            }
        }
        if self.identity.is_empty() {
            return invalid(
                "identity",
                "names no field: give external_user_id, user_id or both".into(),
            );
        }
        if self.event_prefix.chars().count() >= MAX_EVENT_NAME_CHARS {
            return invalid(
                "event_prefix",
                format!(
                    "is {} characters: every event name would exceed Heap's {MAX_EVENT_NAME_CHARS}",
                    self.event_prefix.chars().count()
                ),
            );
        }
        if self.property_prefix.chars().count() >= MAX_PROPERTY_CHARS {
            return invalid(
                "property_prefix",
                format!(
                    "is {} characters: every property key would reach Heap's limit of {MAX_PROPERTY_CHARS}",
                    self.property_prefix.chars().count()
                ),
            );
        }
        // An empty prefix is allowed although it can yield Heap's own `id`/`user_id` (from a
        // custom attribute): the mapping drops and counts those, as documented.
        if self.user_property_prefix.chars().count() >= MAX_PROPERTY_CHARS {
            return invalid(
                "user_property_prefix",
                format!(
                    "is {} characters: every user property name would reach Heap's limit of {MAX_PROPERTY_CHARS}",
                    self.user_property_prefix.chars().count()
                ),
            );
        }
        if let Some((event_type, name)) = self
            .rename
            .iter()
            .find(|(t, n)| t.trim().is_empty() || n.trim().is_empty())
        {
            return invalid(
                "rename",
                format!("`{event_type}` = `{name}`: both the event type and the name are needed"),
            );
        }
        Ok(())
    }

    fn bounds(&self) -> [Bound; 17] {
        use limits::*;
        [
            count("app_rate_limit", self.app_rate_limit, RATE_LIMIT),
            count("identity_rate_limit", self.identity_rate_limit, RATE_LIMIT),
            count("max_batch_events", self.max_batch_events, MAX_BATCH_EVENTS),
            count(
                "user_properties_per_minute",
                self.user_properties_per_minute,
                USERS_PER_MINUTE,
            ),
            count("max_body_bytes", self.max_body_bytes, MAX_BODY_BYTES),
            count("heap_concurrency", self.heap_concurrency, HEAP_CONCURRENCY),
            count(
                "max_pending_events",
                self.max_pending_events,
                MAX_PENDING_EVENTS,
            ),
            count(
                "object_concurrency",
                self.object_concurrency,
                OBJECT_CONCURRENCY,
            ),
            count(
                "small_object_budget",
                self.small_object_budget,
                SMALL_OBJECT_BUDGET,
            ),
            span("batch_linger", &self.batch_linger, BATCH_LINGER),
            span("retry_max_time", &self.retry_max_time, RETRY_MAX_TIME),
            span("request_timeout", &self.request_timeout, REQUEST_TIMEOUT),
            span("poll_interval", &self.poll_interval, POLL_INTERVAL),
            span("shutdown_timeout", &self.shutdown_timeout, SHUTDOWN_TIMEOUT),
            span("lease_duration", &self.lease_duration, LEASE_DURATION),
            span(
                "reconcile_interval",
                &self.reconcile_interval,
                RECONCILE_INTERVAL,
            ),
            span(
                "sqs_visibility_timeout",
                &self.sqs_visibility_timeout,
                SQS_VISIBILITY_TIMEOUT,
            ),
        ]
    }
}

/// Each bounded setting with its range as `--help` and the docs state it, e.g.
/// (`heap_concurrency`, `1 to 64`).
pub fn ranges() -> Vec<(&'static str, String)> {
    DEFAULTS
        .bounds()
        .into_iter()
        .map(|b| (b.key, b.range))
        .collect()
}

fn count(key: &'static str, value: u64, range: RangeInclusive<u64>) -> Bound {
    Bound {
        key,
        within: range.contains(&value),
        range: format!(
            "{} to {}",
            thousands(*range.start()),
            thousands(*range.end())
        ),
        value: thousands(value),
    }
}

fn span(key: &'static str, value: &HumanDuration, range: RangeInclusive<Duration>) -> Bound {
    Bound {
        key,
        within: range.contains(&value.get()),
        range: format!("{} to {}", short(*range.start()), short(*range.end())),
        value: value.to_string(),
    }
}

/// `1000000` as `1,000,000`.
pub(super) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bound in its largest whole unit: `24h`, not humantime's `1day`.
pub(super) fn short(d: Duration) -> String {
    match d.as_secs() {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
