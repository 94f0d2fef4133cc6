//! Test support for currents-heap, kept out of the production crate: tests, benchmarks and
//! examples take it as a dev-dependency, and `tests/layout.rs` checks that `src/` never
//! refers to it.
//!
//! - [`standin`]: a Heap stand-in, a real HTTP server on loopback that enforces Heap's track
//!   contract and limits and injects faults; [`standin::check_event`] is the contract alone.
//! - [`synth`]: seeded synthetic Currents files, written with apache-avro's own `Writer`
//!   (also a whole bucket of small ones, [`synth::write_custom_events`]);
//!   [`fixtures`]: the committed set under `fixtures/bucket/` made from them.
//! - [`store`]: wrappers around any [`currents_heap::store::ObjectStore`] that inject faults
//!   (failed calls, outages, a stream cut mid-object, a panic) or delay every call.
//! - [`queue`]: an in-memory SQS queue ([`queue::MemoryQueue`]) with visibility, redelivery
//!   and injected failures on tokio's clock, so the listener runs on a paused clock.
//! - [`rng`]: the seeded generator behind all of the above.
//! - [`avro`]: hand-written Currents objects, [`avro::avro_object`]: the records a test names
//!   (as JSON) under any writer schema, and the schemas of the user-property event types.

pub mod avro;
pub mod fixtures;
pub mod queue;
pub mod rng;
pub mod standin;
pub mod store;
pub mod synth;

/// apache-avro, as the generator uses it: tests name codecs (`Codec`, `DeflateSettings`) and
/// read containers with its `Reader` without depending on it themselves.
pub use apache_avro;
