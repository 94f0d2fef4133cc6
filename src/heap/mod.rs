//! The Heap side: mapping Custom HTTP events to track events and delivering them.
//!
//! - [`track`]: Heap's track event, its timestamp and the bulk request body.
//! - [`map`]: Custom HTTP event → track event (identity, name, flattened properties).
//! - [`pacer`]: adaptive sliding-window budgets per app and per identity.
//! - [`retry`]: full-jitter backoff for Heap's retryable answers.
//! - [`client`]: the HTTP call and what each answer means, behind a `Transport` seam.
//! - [`delivery`]: pending events → paced batches → retries, bisection, dead letters; where
//!   every event ends is stated in its `outcome` module.
//! - [`properties`]: Heap user properties from Braze's profile and subscription events (opt-in):
//!   the mapping rule and the delivery lane.
pub mod client;
pub mod delivery;
pub mod map;
pub mod pacer;
pub mod properties;
pub mod retry;
pub mod track;
