//! currents-heap delivers Braze Currents events to Heap's server-side track API.
//!
//! Data flows one way, and so do the imports (a test in `tests/layout.rs` keeps them so):
//!
//! ```text
//!                 notifications (SQS) ─┐
//! object store ──► source (discovery) ─┴► worker: scheduler ► pipeline ──► heap (map ► paced bulk track)
//!                                              │  currents: decode Avro ► Custom HTTP events
//!                                              └► ledger (what is done) · deadletter (what failed)
//!                      handover (backfills handed to a live worker) · telemetry · server
//! ```
//!
//! - [`commands`]: the command-line entry points; they build the engine and print its report.
//! - [`worker`]: the engine `run`, `backfill` and `replay` share: polling, the backfill lane,
//!   the scheduler, the per-object pipeline, stopping.
//! - [`handover`]: how a `backfill` hands its range to a live `run` worker on the same state.
//! - [`heap`]: the Heap side: mapping, pacing, the client, delivery and its guarantee.
//! - [`ledger`]: which objects are finished (its guarantee is stated there).
//! - [`deadletter`]: parked events, kept for `replay`.
//! - [`source`]: discovery: `event_type=` folders and `date=` hours of a window.
//! - [`notifications`]: S3 event notifications (and EventBridge events) read from SQS.
//! - [`store`]: one small object-store trait over a local directory, S3, Azure and GCS; typed
//!   errors and the state-write retry.
//! - [`aws`]: the SDK interceptor that counts requests; [`server`]: `/metrics`, `/healthz`,
//!   `/readyz`; [`telemetry`]: the metrics and the typed events that feed them.
//! - [`currents`]: the object key layout, streaming Avro decoding, the Custom HTTP event shape.
//! - [`clock`]: wall clock, calendar, durations.

pub mod aws;
pub mod clock;
pub mod commands;
pub mod currents;
pub mod deadletter;
pub mod handover;
pub mod heap;
pub mod ledger;
pub mod notifications;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod worker;
