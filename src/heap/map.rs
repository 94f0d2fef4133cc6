//! Custom HTTP event → Heap track event.
//!
//! Rules (each documented in the README):
//! - identity: the first present, non-empty field of the configured list (default
//!   `external_user_id`). None → not sent (counted). Over 255 characters → parked, never cut.
//! - event name: `name` for CustomEvent, the event type otherwise; a per-type rename table
//!   replaces it, then the optional prefix is prepended. A CustomEvent without a `name`, or
//!   with an empty one, is parked (the prefix alone is no name; `--rename` gives one); a name
//!   over 1024 characters is parked.
//! - timestamp: `time_ms` where present, otherwise `time`; idempotency key: the event `id`
//!   (empty or over 1024 characters → parked).
//! - properties, in this order: Braze context (`braze_event_type`, `braze_event_id`,
//!   `braze_user_id`, `braze_device_id`, `braze_timezone`), then Braze's fields, then the
//!   custom/purchase properties lifted to the top level. Every value takes its Heap form from
//!   the value table ([`crate::currents::value`]), the one implementation for Avro values and
//!   JSON alike: nested objects become dotted keys, arrays are joined with `||`, nulls are
//!   dropped, values are only strings and numbers. The optional property prefix is prepended
//!   to every key; keys and strings are cut to 1023 characters (counted).
//! - collisions: Braze's names win. A custom property whose key is taken keeps its container's
//!   name as a prefix (`custom_properties.platform`); if even that is taken it is dropped and
//!   counted. Within one event the first writer of a key wins, so the result is deterministic.

use std::collections::HashMap;
use std::str::FromStr;

use serde_json::{Map, Value as Json};

use super::track::TrackEvent;
use crate::clock::iso8601_utc;
use crate::currents::event::{CUSTOM_EVENT, CustomHttpEvent, Property};
use crate::currents::value::{Number, Value, heap_item_text, heap_scalar, parse_lenient};

/// Heap limits (heap-facts §3).
pub const MAX_IDENTITY_CHARS: usize = 255;
pub const MAX_EVENT_NAME_CHARS: usize = 1024;
/// Keys and string values must be "fewer than 1024 characters".
pub const MAX_PROPERTY_CHARS: usize = 1023;
/// The idempotency key has no documented limit; the stand-in holds it to the event name's.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 1024;

/// A Braze field that can become the Heap identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    ExternalUserId,
    UserId,
}

impl FromStr for IdentitySource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "external_user_id" => Ok(IdentitySource::ExternalUserId),
            "user_id" => Ok(IdentitySource::UserId),
            other => Err(format!(
                "unknown identity field `{other}` (expected external_user_id or user_id)"
            )),
        }
    }
}

/// How Currents events become Heap track events.
#[derive(Debug, Clone)]
pub struct MappingConfig {
    /// Tried in order; the first present, non-empty one is the identity.
    pub identity: Vec<IdentitySource>,
    /// Prepended to every event name, e.g. `braze-` as Heap's own integration offers.
    pub event_prefix: String,
    /// Prepended to every property key, e.g. `braze-`; under 1023 characters.
    pub property_prefix: String,
    /// Event type → Heap event name, replacing the default name.
    pub renames: HashMap<String, String>,
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig {
            identity: vec![IdentitySource::ExternalUserId],
            event_prefix: String::new(),
            property_prefix: String::new(),
            renames: HashMap::new(),
        }
    }
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Track {
        event: TrackEvent,
        /// Keys and values cut to 1023 characters, and custom properties dropped on collision.
        adjustments: Adjustments,
    },
    /// Not sent by policy: no identity under the configured identity fields.
    NoIdentity,
    /// Cannot be sent as is: parked as a dead letter with this reason.
    Unsendable(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adjustments {
    pub truncated: u32,
    pub collisions_dropped: u32,
}

pub struct HeapMapper {
    config: MappingConfig,
}

impl HeapMapper {
    pub fn new(config: MappingConfig) -> Self {
        HeapMapper { config }
    }

    pub fn map(&self, event: &CustomHttpEvent) -> Mapped {
        let Some(identity) = self.identity(event) else {
            return Mapped::NoIdentity;
        };
        let identity_len = identity.chars().count();
        if identity_len > MAX_IDENTITY_CHARS {
            return Mapped::Unsendable(format!(
                "identity is {identity_len} characters; Heap allows at most {MAX_IDENTITY_CHARS}"
            ));
        }
        let event_name = match self.event_name(event) {
            Ok(name) => name,
            Err(reason) => return Mapped::Unsendable(reason),
        };
        let id_len = event.id.chars().count();
        if id_len == 0 || id_len > MAX_IDEMPOTENCY_KEY_CHARS {
            return Mapped::Unsendable(format!(
                "the event id (the idempotency key) is {id_len} characters; 1 to {MAX_IDEMPOTENCY_KEY_CHARS} are sent"
            ));
        }
        let millis = event
            .property("time_ms")
            .and_then(integer)
            .unwrap_or(event.time.saturating_mul(1000));
        let Some(timestamp) = iso8601_utc(millis) else {
            return Mapped::Unsendable(format!(
                "the event time ({millis} ms since 1970) is outside the years -9999 to 9999 that a timestamp can hold"
            ));
        };

        let mut flat = Flattener {
            prefix: &self.config.property_prefix,
            out: Map::new(),
            adjustments: Adjustments::default(),
        };
        let context = [
            ("braze_event_type", Some(&*event.event_type)),
            ("braze_event_id", Some(event.id.as_str())),
            ("braze_user_id", event.user.user_id.as_deref()),
            ("braze_device_id", event.user.device_id.as_deref()),
            ("braze_timezone", event.user.timezone.as_deref()),
        ];
        for (key, value) in context {
            if let Some(value) = value {
                flat.put(key.to_string(), Json::String(value.to_string()), None);
            }
        }
        let is_custom_event = &*event.event_type == CUSTOM_EVENT;
        let mut lifted = Vec::new();
        for (name, property) in &event.properties {
            match &**name {
                "name" if is_custom_event => {}
                // Lifted last whatever their form (an object, or text that was not JSON), so
                // that a dead letter's copy maps to the same key order.
                "custom_properties" | "purchase_properties" => lifted.push((name, property)),
                _ => with_value(property, |value| flat.value(name.to_string(), value, None)),
            }
        }
        for (container, property) in lifted {
            with_value(property, |value| match value {
                Value::Object(fields) => {
                    for (key, value) in fields {
                        flat.value(key.to_string(), value, Some(container));
                    }
                }
                other => flat.value(container.to_string(), other, None),
            });
        }
        Mapped::Track {
            event: TrackEvent {
                identity: identity.to_string(),
                event: event_name,
                timestamp,
                idempotency_key: event.id.clone(),
                properties: flat.out,
            },
            adjustments: flat.adjustments,
        }
    }

    fn identity<'e>(&self, event: &'e CustomHttpEvent) -> Option<&'e str> {
        self.config.identity.iter().find_map(|source| {
            let value = match source {
                IdentitySource::ExternalUserId => event.user.external_user_id.as_deref(),
                IdentitySource::UserId => event.user.user_id.as_deref(),
            };
            value.filter(|v| !v.is_empty())
        })
    }

    fn event_name(&self, event: &CustomHttpEvent) -> Result<String, String> {
        let base = match self.config.renames.get(&*event.event_type) {
            Some(renamed) => renamed.clone(),
            None if &*event.event_type == CUSTOM_EVENT => match event.property("name") {
                None => return Err("the custom event has no `name`".into()),
                Some(name) => match text(name) {
                    Some(name) if !name.is_empty() => name,
                    Some(_) => {
                        return Err(
                            "the custom event's `name` is empty (rename users.behaviors.CustomEvent to send such events)"
                                .into(),
                        );
                    }
                    None => return Err("the custom event's `name` is not a string".into()),
                },
            },
            None => event.event_type.to_string(),
        };
        let name = format!("{}{base}", self.config.event_prefix);
        let chars = name.chars().count();
        if chars == 0 {
            return Err("the event name is empty".into());
        }
        if chars > MAX_EVENT_NAME_CHARS {
            return Err(format!(
                "event name is {chars} characters; Heap allows at most {MAX_EVENT_NAME_CHARS}"
            ));
        }
        Ok(name)
    }
}

/// Runs `f` on a property's value: an Avro value as the table gives it, or JSON text read
/// leniently (text that is not JSON at all is a string, as the decoder kept it).
fn with_value(property: &Property, f: impl FnOnce(&Value)) {
    match property {
        Property::Avro(datum) => f(&Value::from_datum(datum)),
        Property::Json(raw) => match parse_lenient(raw.get()) {
            Ok((value, _)) => f(&value),
            Err(_) => f(&Value::String(raw.get().into())),
        },
    }
}

fn text(property: &Property) -> Option<String> {
    let mut out = None;
    with_value(property, |value| {
        if let Value::String(s) = value {
            out = Some(s.to_string());
        }
    });
    out
}

fn integer(property: &Property) -> Option<i64> {
    let mut out = None;
    with_value(property, |value| {
        out = match value {
            Value::Number(Number::Int(i)) => Some(*i),
            Value::Number(Number::Text(t)) => t.parse().ok(),
            _ => None,
        }
    });
    out
}

/// Builds the flat string/number property map.
struct Flattener<'p> {
    prefix: &'p str,
    out: Map<String, Json>,
    adjustments: Adjustments,
}

impl Flattener<'_> {
    /// Inserts a string or number under the prefixed key. A taken key moves under
    /// `container.` if one is given.
    fn put(&mut self, key: String, value: Json, container: Option<&str>) {
        let full = if self.prefix.is_empty() {
            key.clone()
        } else {
            format!("{}{key}", self.prefix)
        };
        let full = self.cut(full);
        let value = match value {
            Json::String(s) => Json::String(self.cut(s)),
            other => other,
        };
        if !self.out.contains_key(&full) {
            self.out.insert(full, value);
            return;
        }
        match container {
            Some(container) => self.put(format!("{container}.{key}"), value, None),
            None => self.adjustments.collisions_dropped += 1,
        }
    }

    fn cut(&mut self, s: String) -> String {
        match s.char_indices().nth(MAX_PROPERTY_CHARS) {
            Some((byte, _)) => {
                self.adjustments.truncated += 1;
                let mut s = s;
                s.truncate(byte);
                s
            }
            None => s,
        }
    }

    /// One value in its Heap form, flattened under `key`.
    fn value(&mut self, key: String, value: &Value, container: Option<&str>) {
        match value {
            Value::Null => {}
            Value::Object(fields) => {
                for (k, v) in fields {
                    self.value(format!("{key}.{k}"), v, container);
                }
            }
            Value::Array(items) => {
                let joined: Vec<String> = items.iter().filter_map(heap_item_text).collect();
                if !joined.is_empty() {
                    self.put(key, Json::String(joined.join("||")), container);
                }
            }
            scalar => {
                if let Some(json) = heap_scalar(scalar) {
                    self.put(key, json, container);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::currents::datum::Datum;
    use crate::currents::event::User;

    fn raw(json: &str) -> Property {
        Property::Json(serde_json::from_str(json).unwrap())
    }

    fn custom_event(properties: Vec<(&str, Property)>) -> CustomHttpEvent {
        CustomHttpEvent {
            event_type: Arc::from(CUSTOM_EVENT),
            id: "evt-1".into(),
            time: 1_489_184_516,
            user: User {
                user_id: Some("braze-1".into()),
                external_user_id: Some("alice".into()),
                device_id: Some("dev-1".into()),
                timezone: None,
            },
            properties: properties
                .into_iter()
                .map(|(k, v)| (Arc::from(k), v))
                .collect(),
        }
    }

    fn tracked(mapped: Mapped) -> (TrackEvent, Adjustments) {
        match mapped {
            Mapped::Track { event, adjustments } => (event, adjustments),
            other => panic!("expected a track event, got {other:?}"),
        }
    }

    #[test]
    fn maps_a_custom_event_with_flattened_properties() {
        let event = custom_event(vec![
            (
                "name",
                Property::Avro(Datum::String("Added To Cart".into())),
            ),
            ("platform", Property::Avro(Datum::String("ios".into()))),
            ("price", Property::Avro(Datum::Float(12.34))),
            ("ad_tracking_enabled", Property::Avro(Datum::Boolean(true))),
            (
                "custom_properties",
                raw(
                    r#"{"plan":"pro","seats":3,"ratio":0.5,"gift":false,"coupon":null,
                       "tags":["a",1,null,true],"cart":{"total":9.5,"items":{"n":2}},"platform":"web"}"#,
                ),
            ),
        ]);
        let (track, adjustments) = tracked(HeapMapper::new(MappingConfig::default()).map(&event));
        assert_eq!(track.identity, "alice");
        assert_eq!(track.event, "Added To Cart");
        assert_eq!(track.timestamp, "2017-03-10T22:21:56+00:00");
        assert_eq!(track.idempotency_key, "evt-1");
        assert_eq!(adjustments, Adjustments::default());
        let expected = serde_json::json!({
            "braze_event_type": "users.behaviors.CustomEvent",
            "braze_event_id": "evt-1",
            "braze_user_id": "braze-1",
            "braze_device_id": "dev-1",
            "platform": "ios",
            "price": 12.34,
            "ad_tracking_enabled": "true",
            "plan": "pro",
            "seats": 3,
            "ratio": 0.5,
            "gift": "false",
            "tags": "a||1||true",
            "cart.total": 9.5,
            "cart.items.n": 2,
            "custom_properties.platform": "web",
        });
        assert_eq!(
            serde_json::Value::Object(track.properties.clone()),
            expected
        );
        let keys: Vec<&str> = track.properties.keys().map(String::as_str).collect();
        assert_eq!(
            &keys[..2],
            ["braze_event_type", "braze_event_id"],
            "context comes first"
        );
    }

    #[test]
    fn every_value_is_a_string_or_a_number() {
        let event = custom_event(vec![
            ("name", Property::Avro(Datum::String("x".into()))),
            ("weird", Property::Avro(Datum::Double(f64::NAN))),
            ("blob", Property::Avro(Datum::Bytes(vec![104, 105]))),
            (
                "list",
                Property::Avro(Datum::Array(vec![
                    Datum::Int(1),
                    Datum::Null,
                    Datum::String("b".into()),
                ])),
            ),
            ("custom_properties", raw(r#"{"deep":[{"x":1}],"empty":[]}"#)),
        ]);
        let (track, _) = tracked(HeapMapper::new(MappingConfig::default()).map(&event));
        for (key, value) in &track.properties {
            assert!(value.is_string() || value.is_number(), "{key}: {value}");
        }
        assert_eq!(track.properties["weird"], "NaN");
        assert_eq!(track.properties["blob"], "hi");
        assert_eq!(track.properties["list"], "1||b");
        assert_eq!(track.properties["deep"], r#"{"x":1}"#);
        assert!(!track.properties.contains_key("empty"));
    }

    #[test]
    fn long_keys_and_values_are_cut_and_counted_but_identities_never_are() {
        let long = "é".repeat(2000);
        let event = custom_event(vec![
            ("name", Property::Avro(Datum::String("x".into()))),
            (
                "custom_properties",
                raw(&format!(r#"{{"{long}":"{long}","ok":"{long}"}}"#)),
            ),
        ]);
        let (track, adjustments) = tracked(HeapMapper::new(MappingConfig::default()).map(&event));
        assert_eq!(adjustments.truncated, 3);
        for (key, value) in &track.properties {
            assert!(key.chars().count() <= MAX_PROPERTY_CHARS);
            assert!(
                value
                    .as_str()
                    .is_none_or(|s| s.chars().count() <= MAX_PROPERTY_CHARS)
            );
        }
        let mut too_long = event.clone();
        too_long.user.external_user_id = Some("u".repeat(256));
        let mapped = HeapMapper::new(MappingConfig::default()).map(&too_long);
        assert!(
            matches!(mapped, Mapped::Unsendable(ref r) if r.contains("256 characters")),
            "{mapped:?}"
        );
        too_long.user.external_user_id = Some("u".repeat(255));
        assert!(matches!(
            HeapMapper::new(MappingConfig::default()).map(&too_long),
            Mapped::Track { .. }
        ));
    }

    #[test]
    fn identity_follows_the_configured_fallback_list() {
        let mut event = custom_event(vec![("name", Property::Avro(Datum::String("x".into())))]);
        event.user.external_user_id = None;
        assert_eq!(
            HeapMapper::new(MappingConfig::default()).map(&event),
            Mapped::NoIdentity
        );
        event.user.external_user_id = Some(String::new());
        assert_eq!(
            HeapMapper::new(MappingConfig::default()).map(&event),
            Mapped::NoIdentity
        );
        let fallback = MappingConfig {
            identity: vec![IdentitySource::ExternalUserId, IdentitySource::UserId],
            ..MappingConfig::default()
        };
        let (track, _) = tracked(HeapMapper::new(fallback).map(&event));
        assert_eq!(track.identity, "braze-1");
        assert_eq!("user_id".parse(), Ok(IdentitySource::UserId));
        assert!("email".parse::<IdentitySource>().is_err());
    }

    #[test]
    fn event_names_use_renames_then_the_prefix() {
        let mut open = custom_event(vec![(
            "time_ms",
            Property::Avro(Datum::Long(1_489_184_516_250)),
        )]);
        open.event_type = Arc::from("users.messages.email.Open");
        let config = MappingConfig {
            event_prefix: "braze-".into(),
            ..MappingConfig::default()
        };
        let (track, _) = tracked(HeapMapper::new(config.clone()).map(&open));
        assert_eq!(track.event, "braze-users.messages.email.Open");
        assert_eq!(
            track.timestamp, "2017-03-10T22:21:56.250+00:00",
            "time_ms wins over time"
        );
        let renamed = MappingConfig {
            renames: HashMap::from([(
                "users.messages.email.Open".to_string(),
                "Email Opened".to_string(),
            )]),
            ..config
        };
        let (track, _) = tracked(HeapMapper::new(renamed).map(&open));
        assert_eq!(track.event, "braze-Email Opened");

        let nameless = custom_event(vec![]);
        assert!(matches!(
            HeapMapper::new(MappingConfig::default()).map(&nameless),
            Mapped::Unsendable(_)
        ));
        let long_name = custom_event(vec![(
            "name",
            Property::Avro(Datum::String("n".repeat(1025))),
        )]);
        assert!(
            matches!(HeapMapper::new(MappingConfig::default()).map(&long_name), Mapped::Unsendable(ref r) if r.contains("1025"))
        );
    }

    #[test]
    fn invalid_json_custom_properties_stay_one_string() {
        let event = custom_event(vec![
            ("name", Property::Avro(Datum::String("x".into()))),
            (
                "custom_properties",
                Property::Avro(Datum::String("{broken".into())),
            ),
        ]);
        let (track, _) = tracked(HeapMapper::new(MappingConfig::default()).map(&event));
        assert_eq!(track.properties["custom_properties"], "{broken");
    }
}
