//! The Braze side: where Currents objects live, how they are encoded, and the event shape
//! they decode to.
//!
//! - [`key`]: the object key layout (`event_type=`, `date=`).
//! - [`container`]: streaming, bounded reading of Avro object container files.
//! - [`schema`] and [`datum`]: decoding driven by each file's embedded writer schema.
//! - [`event`]: the Custom HTTP connector event shape and the mapping into it.
//! - [`value`]: the value table: each value's Custom HTTP and Heap form, and lenient JSON.
//! - [`decode`]: all of the above for one object: bytes in, events out.
//!
//! Synthetic Currents files and the committed fixture set live in the testkit
//! (`currents-heap-testkit`), outside the production crate.

pub mod container;
pub mod datum;
pub mod decode;
pub mod event;
pub mod key;
pub mod schema;
pub mod value;
