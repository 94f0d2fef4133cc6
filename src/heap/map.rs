//! Custom HTTP event → Heap track event.
//!
//! Rules (each documented in docs/design/mapping.md):
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use super::track::TrackEvent;
use crate::clock::iso8601_utc;
use crate::currents::event::{CUSTOM_EVENT, CustomHttpEvent, Property};
use crate::currents::value::{
    HeapScalar, Number, Value, heap_form, parse_lenient, write_heap_item_text,
};

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

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z in milliseconds since 1970: the span
/// of RFC 3339 timestamps.
const RFC3339_FIRST_MS: i64 = -62_167_219_200_000;
const RFC3339_LAST_MS: i64 = 253_402_300_799_999;

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
        if let Some(identity_len) = over(identity, MAX_IDENTITY_CHARS) {
            return Mapped::Unsendable(format!(
                "identity is {identity_len} characters; Heap allows at most {MAX_IDENTITY_CHARS}"
            ));
        }
        let event_name = match self.event_name(event) {
            Ok(name) => name,
            Err(reason) => return Mapped::Unsendable(reason),
        };
        let id_len = match event.id.len() {
            0 => Some(0),
            _ => over(&event.id, MAX_IDEMPOTENCY_KEY_CHARS),
        };
        if let Some(id_len) = id_len {
            return Mapped::Unsendable(format!(
                "the event id (the idempotency key) is {id_len} characters; 1 to {MAX_IDEMPOTENCY_KEY_CHARS} are sent"
            ));
        }
        let millis = event_millis(event);
        // RFC 3339 has four-digit years and no sign: a year before 0000 or after 9999 would
        // go out in a form a strict ISO 8601 parser refuses, so it is parked before sending.
        let timestamp = match iso8601_utc(millis) {
            Some(timestamp) if (RFC3339_FIRST_MS..=RFC3339_LAST_MS).contains(&millis) => timestamp,
            _ => {
                return Mapped::Unsendable(format!(
                    "the event time ({millis} ms since 1970) is outside the years 0000 to 9999 that an RFC 3339 timestamp can hold"
                ));
            }
        };

        // The event's JSON is written here, once, in `TrackEvent`'s field order; the
        // properties follow straight from the decoded values, with no map in between.
        let mut out = Vec::with_capacity(1024);
        for (name, value) in [
            ("{\"identity\":", identity),
            (",\"event\":", &event_name),
            (",\"timestamp\":", &timestamp),
            (",\"idempotency_key\":", &event.id),
        ] {
            out.extend_from_slice(name.as_bytes());
            write_str(&mut out, value);
        }
        out.extend_from_slice(b",\"properties\":{");
        let mut props = Properties {
            prefix: &self.config.property_prefix,
            out,
            keys: KeySet::with_capacity(32),
            path: String::with_capacity(64),
            key: String::new(),
            joined: Vec::new(),
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
                props.at(key);
                props.put(HeapScalar::String(Cow::Borrowed(value)), None);
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
                _ => with_value(property, |value| {
                    props.at(name);
                    props.value(value, None);
                }),
            }
        }
        for (container, property) in lifted {
            with_value(property, |value| match value {
                Value::Object(fields) => {
                    for (key, value) in fields {
                        props.at(key);
                        props.value(value, Some(container));
                    }
                }
                other => {
                    props.at(container);
                    props.value(other, None);
                }
            });
        }
        let Properties {
            mut out,
            adjustments,
            ..
        } = props;
        out.extend_from_slice(b"}}");
        Mapped::Track {
            event: TrackEvent {
                identity: Arc::from(identity),
                json: out,
            },
            adjustments,
        }
    }

    /// The identity policy: Braze fields tried in order.
    pub fn identity_sources(&self) -> &[IdentitySource] {
        &self.config.identity
    }

    fn identity<'e>(&self, event: &'e CustomHttpEvent) -> Option<&'e str> {
        identity_of(&self.config.identity, event)
    }

    fn event_name(&self, event: &CustomHttpEvent) -> Result<String, String> {
        let base = match self.config.renames.get(&*event.event_type) {
            Some(renamed) => renamed.clone(),
            None if &*event.event_type == CUSTOM_EVENT => match event.property("name") {
                None => return Err("the custom event has no `name`".into()),
                Some(name) => match text(name) {
                    // A blank name is no name either, as for `--rename`.
                    Some(name) if !name.trim().is_empty() => name,
                    Some(_) => {
                        return Err(
                            "the custom event's `name` is empty or blank (rename users.behaviors.CustomEvent to send such events)"
                                .into(),
                        );
                    }
                    None => return Err("the custom event's `name` is not a string".into()),
                },
            },
            None => event.event_type.to_string(),
        };
        let name = format!("{}{base}", self.config.event_prefix);
        if name.is_empty() {
            return Err("the event name is empty".into());
        }
        if let Some(chars) = over(&name, MAX_EVENT_NAME_CHARS) {
            return Err(format!(
                "event name is {chars} characters; Heap allows at most {MAX_EVENT_NAME_CHARS}"
            ));
        }
        Ok(name)
    }
}

/// The identity policy, one rule for events and user properties: the first of `sources`
/// present and non-empty on the event.
pub fn identity_of<'e>(sources: &[IdentitySource], event: &'e CustomHttpEvent) -> Option<&'e str> {
    sources.iter().find_map(|source| {
        let value = match source {
            IdentitySource::ExternalUserId => event.user.external_user_id.as_deref(),
            IdentitySource::UserId => event.user.user_id.as_deref(),
        };
        value.filter(|v| !v.is_empty())
    })
}

/// A flat Heap property object written by the events' value rules (strings and numbers,
/// nested keys joined with `.`, arrays joined with `||`, keys and values cut to 1023
/// characters, the first of two equal keys kept): what user properties are written with.
pub struct FlatObject<'p>(Properties<'p>);

impl<'p> FlatObject<'p> {
    /// An empty object whose keys all start with `prefix`.
    pub fn new(prefix: &'p str) -> Self {
        FlatObject(Properties {
            prefix,
            out: b"{".to_vec(),
            keys: KeySet::with_capacity(8),
            path: String::with_capacity(64),
            key: String::new(),
            joined: Vec::new(),
            adjustments: Adjustments::default(),
        })
    }

    /// Writes `value` under `key` (flattened if it is an object); nulls write nothing.
    pub fn put(&mut self, key: &str, value: &Value) {
        self.0.at(key);
        self.0.value(value, None);
    }

    /// Writes a property's value (Avro, or JSON text read leniently) under `key`.
    pub fn put_property(&mut self, key: &str, property: &Property) {
        with_value(property, |value| self.put(key, value));
    }

    /// The object's JSON text and what was cut or dropped on the way.
    pub fn finish(self) -> (Vec<u8>, Adjustments) {
        let Properties {
            mut out,
            adjustments,
            ..
        } = self.0;
        out.push(b'}');
        (out, adjustments)
    }
}

/// Runs `f` on a property's value: an Avro value as the table gives it, or JSON text read
/// leniently (text that is not JSON at all is a string, as the decoder kept it).
pub fn with_value(property: &Property, f: impl FnOnce(&Value)) {
    match property {
        Property::Avro(datum) => f(&Value::from_datum(datum)),
        Property::Json(raw) => match parse_lenient(raw.get()) {
            Ok((value, _)) => f(&value),
            Err(_) => f(&Value::String(raw.get().into())),
        },
    }
}

pub(crate) fn text(property: &Property) -> Option<String> {
    let mut out = None;
    with_value(property, |value| {
        if let Value::String(s) = value {
            out = Some(s.to_string());
        }
    });
    out
}

/// When `event` happened, in milliseconds since the Unix epoch: its `time_ms` property where
/// Braze gives one (profile updates and some other types carry it), else its `time` (whole
/// seconds, every event has it) times 1,000. Events and user-property stamps both use it.
pub(crate) fn event_millis(event: &CustomHttpEvent) -> i64 {
    event
        .property("time_ms")
        .and_then(integer)
        .unwrap_or(event.time.saturating_mul(1000))
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

/// The character count of `s` if it is over `max`. Only text longer than `max` bytes can be
/// over `max` characters, so the characters of short text (nearly all) are never counted.
fn over(s: &str, max: usize) -> Option<usize> {
    if s.len() <= max {
        return None;
    }
    let chars = s.chars().count();
    (chars > max).then_some(chars)
}

/// `s` cut to Heap's 1023 characters, and whether it was cut.
fn cut(s: &str) -> (&str, bool) {
    if s.len() <= MAX_PROPERTY_CHARS {
        return (s, false);
    }
    match s.char_indices().nth(MAX_PROPERTY_CHARS) {
        Some((byte, _)) => (&s[..byte], true),
        None => (s, false),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// Writes the flat string/number property object into the event's JSON text.
struct Properties<'p> {
    prefix: &'p str,
    out: Vec<u8>,
    keys: KeySet,
    /// The key being flattened, before the prefix: `cart.items.n`.
    path: String,
    /// Scratch for a key with the prefix or the container in front.
    key: String,
    /// Scratch for an array's items joined with `||`.
    joined: Vec<u8>,
    adjustments: Adjustments,
}

impl Properties<'_> {
    /// Starts a top-level key.
    fn at(&mut self, key: &str) {
        self.path.clear();
        self.path.push_str(key);
    }

    /// One value in its Heap form, flattened under the current key.
    fn value(&mut self, value: &Value, container: Option<&str>) {
        match value {
            Value::Null => {}
            Value::Object(fields) => {
                for (key, value) in fields {
                    let len = self.path.len();
                    self.path.push('.');
                    self.path.push_str(key);
                    self.value(value, container);
                    self.path.truncate(len);
                }
            }
            Value::Array(items) => {
                let mut joined = std::mem::take(&mut self.joined);
                joined.clear();
                let mut any = false;
                for item in items {
                    let mark = joined.len();
                    if any {
                        joined.extend_from_slice(b"||");
                    }
                    if write_heap_item_text(item, &mut joined) {
                        any = true;
                    } else {
                        joined.truncate(mark);
                    }
                }
                if any {
                    let text = std::str::from_utf8(&joined).expect("the table writes UTF-8");
                    self.put(HeapScalar::String(Cow::Borrowed(text)), container);
                }
                self.joined = joined;
            }
            scalar => {
                if let Some(form) = heap_form(scalar) {
                    self.put(form, container);
                }
            }
        }
    }

    /// Writes the value under the current key, or under `container.` + key if that is taken,
    /// or drops it. The value is cut (and counted) before any key is tried, as every cut is
    /// counted whether or not the property is then written.
    fn put(&mut self, value: HeapScalar, container: Option<&str>) {
        let cut_value;
        let value = match &value {
            HeapScalar::String(s) => {
                let (text, was_cut) = cut(s);
                self.adjustments.truncated += u32::from(was_cut);
                cut_value = HeapScalar::String(Cow::Borrowed(text));
                &cut_value
            }
            number => number,
        };
        let written = self.write(None, value)
            || container.is_some_and(|container| self.write(Some(container), value));
        if !written {
            self.adjustments.collisions_dropped += 1;
        }
    }

    /// Writes `"key":value` unless the key (prefixed, cut to 1023 characters) was written
    /// before in this event; `false` then.
    fn write(&mut self, container: Option<&str>, value: &HeapScalar) -> bool {
        let key = if self.prefix.is_empty() && container.is_none() {
            &self.path
        } else {
            self.key.clear();
            self.key.push_str(self.prefix);
            if let Some(container) = container {
                self.key.push_str(container);
                self.key.push('.');
            }
            self.key.push_str(&self.path);
            &self.key
        };
        let (key, was_cut) = cut(key);
        self.adjustments.truncated += u32::from(was_cut);
        let mark = self.out.len();
        if !self.keys.is_empty() {
            self.out.push(b',');
        }
        let start = self.out.len();
        write_str(&mut self.out, key);
        if !self.keys.insert(&self.out, start..self.out.len()) {
            self.out.truncate(mark);
            return false;
        }
        self.out.push(b':');
        value.write_json(&mut self.out);
        true
    }
}

/// The keys written so far into one event's properties, as spans of the output holding their
/// JSON text (escaping is one-to-one, so equal texts are equal keys). Compared by a cheap hash,
/// then byte for byte. Events have tens of keys, for which scanning the hashes is fastest;
/// past [`KeySet::SCAN`] keys an index keeps a huge custom-properties object linear.
struct KeySet {
    keys: Vec<(u64, Range<usize>)>,
    /// Hash → positions in `keys`; built once there are more than `SCAN` keys.
    index: HashMap<u64, Vec<usize>>,
}

impl KeySet {
    const SCAN: usize = 32;

    fn with_capacity(keys: usize) -> Self {
        KeySet {
            keys: Vec::with_capacity(keys),
            index: HashMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds the key at `span` of `out`; `false` if it is there already.
    fn insert(&mut self, out: &[u8], span: Range<usize>) -> bool {
        let key = &out[span.clone()];
        let hash = hash(key);
        let same = |&i: &usize| {
            let (h, span) = &self.keys[i];
            *h == hash && &out[span.clone()] == key
        };
        let taken = if self.keys.len() <= Self::SCAN {
            (0..self.keys.len()).any(|i| same(&i))
        } else {
            self.index.get(&hash).is_some_and(|at| at.iter().any(same))
        };
        if taken {
            return false;
        }
        self.keys.push((hash, span));
        if self.keys.len() == Self::SCAN + 1 {
            for (i, (h, _)) in self.keys.iter().enumerate() {
                self.index.entry(*h).or_default().push(i);
            }
        } else if self.keys.len() > Self::SCAN + 1 {
            self.index
                .entry(hash)
                .or_default()
                .push(self.keys.len() - 1);
        }
        true
    }
}

/// FxHash's step over 8-byte words: a few cycles for a short key. A collision only costs a
/// byte comparison.
fn hash(bytes: &[u8]) -> u64 {
    let mut hash = bytes.len() as u64;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash = (hash.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    hash
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

    /// The fields of a track event's JSON, read back.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sent {
        identity: String,
        event: String,
        timestamp: String,
        idempotency_key: String,
        properties: serde_json::Map<String, serde_json::Value>,
    }

    fn tracked(mapped: Mapped) -> (Sent, Adjustments) {
        match mapped {
            Mapped::Track { event, adjustments } => {
                let sent: Sent = serde_json::from_slice(&event.json).unwrap();
                assert_eq!(sent.identity, &*event.identity);
                assert_eq!(serde_json::to_vec(&event).unwrap(), event.json);
                (sent, adjustments)
            }
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
    fn collisions_follow_the_rules_past_the_scanned_keys() {
        // Over 32 keys, so the key set's index (not its scan) finds the taken ones.
        let mut properties = vec![("name", Property::Avro(Datum::String("x".into())))];
        let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            properties.push((name, Property::Avro(Datum::Int(i as i32))));
        }
        let custom: Vec<String> = names.iter().map(|k| format!(r#""{k}":"a""#)).collect();
        let custom = format!(r#"{{{},"k0":"b","k40":"c","k40":"d"}}"#, custom.join(","));
        properties.push(("custom_properties", raw(&custom)));
        let (track, adjustments) =
            tracked(HeapMapper::new(MappingConfig::default()).map(&custom_event(properties)));
        // Context (4), 40 Braze fields, 40 moved under `custom_properties.`, both k40s.
        assert_eq!(track.properties.len(), 86);
        assert_eq!(track.properties["k39"], 39);
        assert_eq!(track.properties["custom_properties.k39"], "a");
        assert_eq!(
            track.properties["custom_properties.k0"], "a",
            "first writer wins"
        );
        assert_eq!(track.properties["k40"], "c");
        assert_eq!(track.properties["custom_properties.k40"], "d");
        assert_eq!(adjustments.collisions_dropped, 1, "the second k0");
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
