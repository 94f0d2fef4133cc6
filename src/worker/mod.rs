//! The worker engine: what `run`, `run --once` and `backfill` share.
//!
//! ```text
//! listener (SQS) ─┐
//! discovery ──────┴► scheduler ──► pipeline, one object at a time ──► delivery task ──► Heap
//! (source less ledger)  (bounded; panics give the key back)      ledger · dead letters
//! ```
//!
//! - [`settings`]: the plan (which hours, once or polling) and the bounds of a run.
//! - [`poller`]: when the window is polled (or reconciled), and what each poll reports.
//! - [`discovery`]: unfinished objects in the window, queued on the scheduler.
//! - [`finished`]: what a long-lived run knows finished between polls.
//! - [`listener`]: objects from S3 notifications in an SQS queue, with [`inbox`] deciding
//!   when a message may be deleted.
//! - [`scheduler`]: objects in flight, a bounded number at a time.
//! - [`pipeline`]: one object from the source through decoding and mapping to delivery, then
//!   the ledger; it resumes an object at its checkpoint.
//! - [`checkpoint`]: how far an object in flight has ended, written to the ledger as it
//!   goes (the protocol is stated there).
//! - [`delivery_task`]: delivery on its own task; how it ended is never lost.
//! - [`engine`]: the one drive loop (a `select!` over the poller, the backfill lane, the
//!   listener, the scheduler and the stop), with shutdown passed in as a future.
//! - [`summary`]: what failed, what remains, and the outcome that is the exit code.
//! - [`replay`]: dead letters re-sent through the same delivery.
//! - [`backfills`]: a long-lived run's heartbeat, and the backfills handed to it
//!   ([`crate::handover`]), run by the [`backfills::BackfillLane`] on the scheduler's and
//!   delivery's backfill lane.
//!
//! Nothing here reads arguments or prints: `commands` builds an [`Engine`] (or calls
//! [`replay::replay`]) and prints its report.

pub mod backfills;
pub mod checkpoint;
pub mod delivery_task;
pub mod discovery;
pub mod engine;
pub mod finished;
pub mod inbox;
pub mod listener;
pub mod pipeline;
pub mod poller;
pub mod replay;
pub mod scheduler;
pub mod settings;
pub mod summary;

pub use engine::{Engine, Output};
pub use settings::{Lookback, Plan, Settings};
pub use summary::{Outcome, Report, Summary};
