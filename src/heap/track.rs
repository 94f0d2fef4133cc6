//! Heap's server-side track event and the bulk request body (heap-facts §2).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::currents::key::civil_from_days;

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

/// Formats Unix milliseconds as Heap's ISO 8601 form, with milliseconds only when non-zero.
pub fn iso8601_utc(unix_millis: i64) -> String {
    let secs = unix_millis.div_euclid(1000);
    let millis = unix_millis.rem_euclid(1000);
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    if millis == 0 {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}+00:00")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}+00:00")
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
    fn formats_heap_timestamps() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601_utc(1_489_184_516_000), "2017-03-10T22:21:56+00:00");
        assert_eq!(
            iso8601_utc(1_709_210_096_789),
            "2024-02-29T12:34:56.789+00:00"
        );
        assert_eq!(iso8601_utc(-1), "1969-12-31T23:59:59.999+00:00");
        assert_eq!(
            iso8601_utc(253_402_300_799_000),
            "9999-12-31T23:59:59+00:00"
        );
    }

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
