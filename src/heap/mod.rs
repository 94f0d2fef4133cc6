//! The Heap side: mapping Custom HTTP events to track events and delivering them.
//!
//! - [`track`]: Heap's track event and bulk request body.
//! - [`map`]: Custom HTTP event → track event (identity, name, flattened properties).
pub mod client;
pub mod delivery;
pub mod map;
pub mod pacer;
pub mod retry;
pub mod track;
