//! Heap's server-side track event and the bulk request body (heap-facts §2).

use std::fmt;
use std::sync::Arc;

use serde::ser::Error as _;
use serde::{Serialize, Serializer};
use serde_json::Value as Json;
use serde_json::value::RawValue;

/// One event for `POST /api/track` (bulk form), as the JSON text the mapper wrote for it
/// ([`super::map`]): `identity`, `event`, `timestamp`, `idempotency_key` and `properties`, in
/// that order. Property values are strings or numbers only.
///
/// The text is written once, straight from the decoded event, and sent as it is: building
/// a `serde_json` map per event and serializing it cost more than decoding the event did.
#[derive(Clone, PartialEq)]
pub struct TrackEvent {
    /// Case-sensitive, 1..=255 characters; never truncated (that would credit another user).
    /// Also in `json`; kept apart for the pacer's per-identity limit.
    pub identity: Arc<str>,
    /// Compact JSON text (UTF-8).
    pub json: Vec<u8>,
}

impl TrackEvent {
    /// The event as a `serde_json` value (tests, reports; never on the hot path).
    pub fn to_value(&self) -> Json {
        serde_json::from_slice(&self.json).expect("the mapper writes JSON")
    }
}

impl fmt::Debug for TrackEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// Prints the JSON text as it is (`serde_json::to_string` gives exactly `json`).
impl Serialize for TrackEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_slice(&self.json).map_err(S::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Builds `{"app_id":…,"events":[…]}` from events serialized once, when they were queued.
pub fn bulk_body<'a>(app_id: &str, events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 * 1024);
    body.extend_from_slice(b"{\"app_id\":");
    body.extend_from_slice(Json::String(app_id.to_string()).to_string().as_bytes());
    body.extend_from_slice(b",\"events\":[");
    for (i, event) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(b"]}");
    body
}

/// The bytes `bulk_body` adds around the events of a request, plus one comma per event.
pub fn bulk_overhead(app_id: &str) -> usize {
    bulk_body(app_id, []).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bulk_body_is_valid_json_with_every_event() {
        let events = [br#"{"a":1}"#.as_slice(), br#"{"b":"x"}"#.as_slice()];
        let body = bulk_body("app \"1\"", events);
        let json: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["app_id"], "app \"1\"");
        assert_eq!(json["events"][1]["b"], "x");
        assert_eq!(bulk_overhead("7"), br#"{"app_id":"7","events":[]}"#.len());
    }
}
