//! currents-heap delivers Braze Currents events to Heap's server-side track API.
//!
//! Data flows one way:
//!
//! ```text
//! object store ──► currents (decode Avro ──► Custom HTTP events) ──► heap (map ──► bulk track)
//!                                   ledger (what is done) · dead letters (what failed)
//! ```
//!
//! - [`currents`]: the object key layout, streaming Avro decoding, the Custom HTTP event shape.
//! - [`commands`]: the command-line entry points.
//! - [`handover`]: how a `backfill` hands its range to a live `run` worker on the same state.

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
