//! Heap's server-side track event and the bulk request body (heap-facts §2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// One event for `POST /api/track` (bulk form). Property values are strings or numbers only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackEvent {
    /// Case-sensitive, 1..=255 characters; never truncated (that would credit another user).
    pub identity: String,
    /// 1..=1024 characters.
    pub event: String,
    /// ISO 8601 in UTC, as in Heap's examples: `2017-03-10T22:21:56+00:00`.
    pub timestamp: String,
    /// The Currents event `id`: Heap ignores repeats of a key, so redelivery is harmless.
    pub idempotency_key: String,
    pub properties: Map<String, Json>,
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
