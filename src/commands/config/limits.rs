//! The bounds [`Config::validate`](super::Config::validate) enforces, whatever the source;
//! `--help`, docs/reference/config.md and `deploy/config.example.toml` state them (a test checks `--help`
//! and the example).

use std::ops::RangeInclusive;
use std::time::Duration;

/// Events per sliding minute; 0 disables the limit. Heap's own limits are far below the top.
pub const RATE_LIMIT: RangeInclusive<u64> = 0..=1_000_000;
/// Users per minute sent user properties. Heap states no limit for the bulk endpoint; at
/// least 1 so that the output, once on, always moves; the top as for events.
pub const USERS_PER_MINUTE: RangeInclusive<u64> = 1..=1_000_000;
/// Heap takes 1 to 1000 events per bulk request.
pub const MAX_BATCH_EVENTS: RangeInclusive<u64> = 1..=1000;
/// Below 16 KiB ordinary events (mostly short Braze fields, a few hundred bytes to a few
/// KiB mapped) would start to be parked as too large to send alone; at 0 every one was.
/// Heap documents no body limit: 16 MiB is far above a full batch of ordinary events and
/// keeps one request's memory bounded.
pub const MAX_BODY_BYTES: RangeInclusive<u64> = 16 * 1024..=16 * 1024 * 1024;
pub const HEAP_CONCURRENCY: RangeInclusive<u64> = 1..=64;
/// At least a full batch, so that pending room never keeps batches short; every pending
/// event is held in memory, hence the top.
pub const MAX_PENDING_EVENTS: RangeInclusive<u64> = 1000..=1_000_000;
pub const OBJECT_CONCURRENCY: RangeInclusive<u64> = 1..=256;
/// Stored bytes of the objects in flight up to which more than `--object-concurrency` start;
/// each holds an Avro block while it decodes, so 256 MiB (a block of many MiB each, for up to
/// 256 objects) is already far more than small objects need. 0 turns it off.
pub const SMALL_OBJECT_BUDGET: RangeInclusive<u64> = 0..=256 * 1024 * 1024;
/// An object is recorded only after its events were sent, so it waits out the linger too:
/// beyond a few seconds a linger only adds latency, since the objects in flight, not time,
/// bound how many events can gather. 0 sends at once.
pub const BATCH_LINGER: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(5);
/// Also how long bounded runs retry a failing state store.
pub const RETRY_MAX_TIME: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// Under a second, Heap may store a batch and still be reported as not answering.
pub const REQUEST_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(600);
/// Under a second, `run` would list the source in a busy loop.
pub const POLL_INTERVAL: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
/// Under a second a reconciliation would list in a busy loop; past a week, a lost
/// notification would wait past S3's own notification retries by far.
pub const RECONCILE_INTERVAL: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);
/// SQS takes 0 s to 12 h; under 5 s the heartbeat (every third) would be near-continuous.
pub const SQS_VISIBILITY_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(12 * 3600);
/// Under 3 s a renewal every second leaves no room for a slow store; over 5 minutes a
/// killed holder leaves the app without a sender for too long.
pub const LEASE_DURATION: RangeInclusive<Duration> =
    Duration::from_secs(3)..=crate::handover::lease::MAX_DURATION;
/// Kubernetes' grace period must outlast it; an hour is already generous.
pub const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);
