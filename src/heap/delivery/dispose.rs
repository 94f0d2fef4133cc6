//! One decision per mapped event: send, skip or park.
//!
//! Delivery's intake, `run --dry-run`, `replay --dry-run` and `inspect --heap` all ask
//! [`dispose`], so a dry run counts exactly what delivery would do: an event over the body
//! limit is parked there as it is here, and a timestamp Heap cannot read is never sent.

use super::super::map::{Adjustments, HeapMapper, Mapped};
use super::super::properties::PropertyConfig;
use super::super::properties::map::{Mapped as PropertyMapped, PropertyMapper};
use super::super::track::{TrackEvent, bulk_overhead};
use crate::currents::event::CustomHttpEvent;

/// What becomes of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Send it as this track event.
    Send {
        event: TrackEvent,
        /// Keys and values cut, and properties dropped on collision, while mapping.
        adjustments: Adjustments,
    },
    /// Not sent by policy: it has no identity under the configured identity fields.
    Skip,
    /// Cannot be sent as it is: parked as a dead letter with this reason.
    Park(String),
}

/// The largest request body, and the bytes every body adds around its events: together,
/// whether one mapped event can ever be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimit {
    max_body_bytes: usize,
    overhead: usize,
}

impl BodyLimit {
    /// `--max-body-bytes`, with the overhead of a bulk body for `app_id`.
    pub fn new(max_body_bytes: usize, app_id: &str) -> Self {
        BodyLimit {
            max_body_bytes,
            overhead: bulk_overhead(app_id),
        }
    }

    /// For a dry run or `inspect`, where the app id may be unknown: the overhead of a 16-digit
    /// id, longer than Heap's, so no event counted sendable here is parked by delivery.
    pub fn unknown_app(max_body_bytes: usize) -> Self {
        BodyLimit::new(max_body_bytes, "0000000000000000")
    }

    /// The largest request body.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Whether a mapped event of `len` bytes fits a request on its own.
    pub fn fits(&self, len: usize) -> bool {
        // Each event also takes one separating comma.
        self.overhead + len < self.max_body_bytes
    }
}

/// Decides what becomes of `event`: the mapping's verdict, then the body limit.
pub fn dispose(mapper: &HeapMapper, event: &CustomHttpEvent, limit: BodyLimit) -> Disposition {
    match mapper.map(event) {
        Mapped::Track { event, adjustments } => {
            if !limit.fits(event.json.len()) {
                return Disposition::Park(format!(
                    "the mapped event is {} bytes, over the {}-byte request limit (--max-body-bytes)",
                    event.json.len(),
                    limit.max_body_bytes
                ));
            }
            Disposition::Send { event, adjustments }
        }
        Mapped::NoIdentity => Disposition::Skip,
        Mapped::Unsendable(reason) => Disposition::Park(reason),
    }
}

/// A mapper with the body limit it is used under: what dry runs and `inspect --heap` hold.
pub struct Disposer {
    pub mapper: HeapMapper,
    pub limit: BodyLimit,
    /// The user-properties mapping, when that output is on.
    pub properties: Option<Box<PropertyMapper>>,
}

impl Disposer {
    pub fn new(mapper: HeapMapper, limit: BodyLimit) -> Self {
        Disposer {
            mapper,
            limit,
            properties: None,
        }
    }

    /// Also maps user-property updates (when `config` names fields), under the events'
    /// identity policy, as delivery does.
    pub fn with_user_properties(mut self, config: PropertyConfig) -> Self {
        self.properties = config.enabled().then(|| {
            Box::new(PropertyMapper::new(
                config,
                self.mapper.identity_sources().to_vec(),
            ))
        });
        self
    }

    /// The user-property update `event` makes, if that output is on.
    pub fn update(&self, event: &CustomHttpEvent) -> Option<PropertyMapped> {
        self.properties.as_ref().map(|m| m.map(event))
    }

    /// [`dispose`] under this mapper and limit.
    pub fn dispose(&self, event: &CustomHttpEvent) -> Disposition {
        dispose(&self.mapper, event, self.limit)
    }
}
