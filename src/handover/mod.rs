//! Handing a backfill over to a live `run` worker on the same state, so that the two never
//! pace against Heap's limit separately: the control objects in the state store.
//!
//! # Why
//! Heap's rate limit belongs to the Heap app, not to a process. A `backfill` running beside a
//! `run` worker on the same app would pace itself to the whole limit too, and together they
//! would send up to twice it. So a `backfill` that finds a live worker does not send: it
//! writes a request, the worker runs the range beside its live work, and the command follows
//! the progress the worker writes.
//!
//! # Objects
//! Under `control/` in the state (the ledger is under `ledger/`, dead letters under
//! `dead-letters/`; neither lists this prefix). JSON bodies; times are Unix seconds.
//!
//! | key | written by | when |
//! |---|---|---|
//! | `control/workers/<worker>.json` ([`Heartbeat`]) | each `run` worker | at start, then every [`HEARTBEAT_INTERVAL`]; deleted at a clean stop, or by a live worker once stale for a day (see Retention) |
//! | `control/backfills/<id>/request.json` ([`BackfillRequest`]) | `backfill` | once, when it hands a range over; a worker that adopts it rewrites only its `worker` ([`Control::adopt`]) |
//! | `control/backfills/<id>/progress.json` ([`BackfillProgress`]) | `backfill` (queued), then the worker running it | before the request; then as the worker makes progress, at most every few seconds, and once in a terminal state |
//!
//! A worker id is `<host>-<pid>-<8 random hex>`, new at every start: a restarted worker is a
//! new worker, so nothing waits for a dead one to come back. A request id is
//! `<unix seconds>-<8 random hex>`.
//!
//! # Protocol
//! 1. `run` writes its heartbeat when it starts and rewrites it every 30 s with `beat_at` set
//!    to now. A reader may conclude that a worker is live while its `beat_at` is at most
//!    [`STALE_AFTER`] (90 s, three missed beats) from the reader's clock, in either direction
//!    (hosts' clocks must agree within that; NTP does far better). At a clean stop the worker
//!    deletes its heartbeat ([`Control::retire`]), so a rollout hands over at once rather than
//!    after 90 s.
//! 2. `backfill` (without `--dry-run` or `--no-handover`) lists the heartbeats. With none live
//!    it runs the range itself, and checks again every [`HEARTBEAT_INTERVAL`]; when a worker
//!    becomes live it stops as on a signal (objects in flight finish, the ledger keeps what is
//!    done) and hands the rest over. With a worker live it hands the range over: unless a
//!    request for the same range is still open (not terminal), which it follows instead (a
//!    Job restarted by Kubernetes must not queue the range twice), it writes `progress.json`
//!    in state `queued` and then `request.json`, addressed to [`owner`]'s choice. Writing the
//!    progress first means a worker never sees a request whose queued progress could still
//!    overwrite its own.
//! 3. Each worker lists the requests ([`Control::requests`]) at every heartbeat, and runs those that
//!    are not terminal and whose [`owner`] among the live heartbeats is itself. It writes
//!    `running` with its id as `worker` when it starts, the counts as it goes, and a terminal
//!    state at the end: `done`, `done_with_failures` (events parked or objects failed) or
//!    `incomplete` (it gave up on the range; `message` says why). A worker that runs a request
//!    addressed to another worker first re-addresses it to itself ([`Control::adopt`]), so
//!    that a worker starting later with a lower id does not take it over.
//! 4. `backfill` reads `progress.json` every 2 s until the state is terminal and exits by it
//!    (0, 3 or 4). `--detach` exits after step 2. A signal stops only the following: the
//!    request stays, and `status` shows it.
//!
//! # Retention
//! The live workers delete what no one needs any more, so that the control objects every
//! worker, `backfill` and `status` lists do not grow with history. Each worker applies the rule
//! once at its start and then every [`PRUNE_EVERY`] (1 h), on a task of its own so that a long
//! history never delays its heartbeat ([`Control::prune`]):
//! - a heartbeat stale for over [`HEARTBEAT_RETENTION`] (1 day; a live one never is): its
//!   worker was killed without a clean stop, and a worker is never reborn under the same id;
//! - a request that ended (terminal progress) over [`REQUEST_RETENTION`] (14 days) ago,
//!   except the [`FINISHED_KEPT`] (20) most recent finished ones, which `status` lists;
//!   `request.json` goes first, so that a deletion cut short never leaves a request that looks
//!   open. An open request, or one whose progress is missing or unreadable, is never deleted;
//!   a progress left without its request for 14 days is.
//!
//! Two workers pruning at once delete the same objects; a deletion of what is gone is not an
//! error.
//!
//! # Guarantee
//! While a worker is live, a `backfill` sends nothing itself, so the app's events go through
//! one process's pacer. Nothing is lost whatever stops where: which objects are done is the
//! ledger's business, not these objects'; a range that is run again (by another worker, or by
//! a new request) skips what the ledger has, and the idempotency keys make the objects in
//! flight at a crash harmless to send again.
//!
//! # Failure cases
//! - **Stale heartbeat** (a worker killed without a clean stop, or partitioned from the
//!   state): after 90 s no reader counts it live. A new `backfill` runs itself (or hands over
//!   to another live worker); an open request addressed to it passes to the live worker with
//!   the lowest id, which resumes the range by the ledger. A follower logs that the worker's
//!   heartbeat is stale and keeps following.
//! - **The worker dies mid-range:** its request stays `running` with its last counts until
//!   another live worker adopts it, or until a worker starts again (with a new id) and adopts
//!   it. Objects it had in flight are unrecorded and run again.
//! - **Two workers live on one state** (a rollout's overlap, or a mistake): the addressee
//!   runs the request while it is live; otherwise every worker computes the same [`owner`]
//!   (the lowest live id) from the same heartbeats, so only one adopts it. Two workers whose
//!   views of the heartbeats differ (one read just before a beat, one just after) may both
//!   run it until their next poll: the ledger skips finished objects, so only objects in
//!   flight are sent twice, and Heap drops the repeats by idempotency key.
//! - **Two `backfill`s of the same range started at the same moment** may both write a
//!   request; the worker runs both, and the second finds the first's objects done.
//! - **A control object that cannot be read** (corrupt, or written by a newer version) is
//!   skipped with a warning naming its key; it never stops a worker or a backfill.
//!
//! # Layout
//! - `objects`: the control objects ([`Heartbeat`], [`BackfillRequest`], [`BackfillProgress`],
//!   [`BackfillState`]) and the one range rule, [`check_range`].
//! - `control`: [`Control`], the client of the objects in one state store, and the one owner
//!   rule, [`owner`] (with [`addressee`] for a request with no live addressee).
//! - `follow`: the `backfill` side: [`worker_comes_up`], [`hand_over`], [`follow`] and the
//!   exit a terminal state means, [`final_exit`]. The worker side is `crate::worker::backfills`.

mod control;
mod follow;
pub mod lease;
mod objects;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use control::{Control, HandoverError, Pruned, addressee, owner};
pub use follow::{
    FOLLOW_POLL, FollowExit, Followed, HERE, final_exit, follow, hand_over, render_final,
    worker_comes_up, worker_label,
};
pub use objects::{
    BackfillProgress, BackfillRequest, BackfillState, Heartbeat, MAX_RANGE_HOURS, RangeError,
    check_range,
};

pub const CONTROL_PREFIX: &str = "control/";
/// How often a live worker rewrites its heartbeat; a heartbeat older than STALE_AFTER is not live.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
pub const STALE_AFTER: Duration = Duration::from_secs(90);
/// How often the live worker applies the retention rule (and once at its start).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A heartbeat stale for longer than this is deleted: its worker is gone.
pub const HEARTBEAT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// A request that ended longer ago than this is deleted, beyond the [`FINISHED_KEPT`] most
/// recent finished ones.
pub const REQUEST_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// Finished requests kept whatever their age: the ones `status` lists.
pub const FINISHED_KEPT: usize = 20;
