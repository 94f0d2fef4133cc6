//! The Custom HTTP connector event: the JSON shape Braze posts to HTTP endpoints
//! (currents-facts §5), which `inspect` prints and every later stage consumes.
//!
//! `event_type`, `id` and `time` sit at the top; `user` holds whichever of `user_id`,
//! `external_user_id`, `device_id` and `timezone` are present; `properties` holds every other
//! non-null field in writer order. The JSON string `properties` of `CustomEvent` and `Purchase`
//! becomes the object `custom_properties` / `purchase_properties`, as in Braze's payloads.

use std::sync::Arc;

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use super::datum::Datum;
use super::schema::RecordShape;
use super::value::{Oddity, Value, parse_lenient};

pub const CUSTOM_EVENT: &str = "users.behaviors.CustomEvent";
pub const PURCHASE: &str = "users.behaviors.Purchase";

/// One Currents event in Braze's Custom HTTP connector shape.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomHttpEvent {
    pub event_type: Arc<str>,
    /// Braze's globally unique event ID: the dedupe key across at-least-once deliveries.
    pub id: String,
    /// Unix seconds, UTC.
    pub time: i64,
    pub user: User,
    pub properties: Vec<(Arc<str>, Property)>,
}

/// The identifiers Braze puts under `user`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

/// A property value: an Avro value as decoded, or a JSON-encoded string field read by the
/// value table's lenient rules ([`super::value::parse_lenient`]). The JSON is kept as text,
/// with every odd value already in its table form, so that `serde_json` and every later stage
/// read it: printing it needs no parse, and the Heap mapping parses it once.
#[derive(Debug, Clone)]
pub enum Property {
    Avro(Datum),
    Json(Box<RawValue>),
}

impl PartialEq for Property {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Property::Avro(a), Property::Avro(b)) => a == b,
            (Property::Json(a), Property::Json(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl CustomHttpEvent {
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v)
    }
}

/// Something odd about one event that did not stop it from being mapped. Each follows a rule
/// of the value table ([`super::value`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MappingWarning {
    #[error("event {event_id}: field `{field}` is not valid JSON ({reason}); kept as a string")]
    PropertiesNotJson {
        event_id: String,
        field: &'static str,
        reason: String,
    },
    #[error("event {event_id}: property `{property}` in field `{field}` holds {} (`{text}`)", .kind.rule())]
    OddValue {
        event_id: String,
        field: &'static str,
        /// Where in the JSON: `title`, `cart.items[2]`.
        property: String,
        kind: Oddity,
        /// The value as written (at most 64 characters).
        text: String,
    },
}

impl MappingWarning {
    /// The kind it is counted under.
    pub fn kind(&self) -> Oddity {
        match self {
            MappingWarning::PropertiesNotJson { .. } => Oddity::NotJson,
            MappingWarning::OddValue { kind, .. } => *kind,
        }
    }
}

/// What each writer-schema field becomes in the Custom HTTP shape, decided once per file.
#[derive(Debug, Clone, Copy)]
enum Role {
    Id,
    Time,
    UserId,
    ExternalUserId,
    DeviceId,
    Timezone,
    /// A JSON-encoded string that becomes an object under [`EventMapper::json_target`].
    JsonProperties,
    Property,
}

/// Maps decoded records of one file (one event type, one writer schema) to Custom HTTP events.
pub struct EventMapper {
    event_type: Arc<str>,
    fields: Vec<(Arc<str>, Role)>,
    /// `custom_properties` or `purchase_properties`, allocated once rather than per event.
    json_target: Option<Arc<str>>,
}

impl EventMapper {
    pub fn new(event_type: Arc<str>, schema: &RecordShape) -> Self {
        let json_properties = match &*event_type {
            CUSTOM_EVENT => Some("custom_properties"),
            PURCHASE => Some("purchase_properties"),
            _ => None,
        };
        let fields = schema
            .fields
            .iter()
            .map(|f| {
                let role = match (&*f.name, json_properties.is_some()) {
                    ("id", _) => Role::Id,
                    ("time", _) => Role::Time,
                    ("user_id", _) => Role::UserId,
                    ("external_user_id", _) => Role::ExternalUserId,
                    ("device_id", _) => Role::DeviceId,
                    ("timezone", _) => Role::Timezone,
                    ("properties", true) => Role::JsonProperties,
                    _ => Role::Property,
                };
                (f.name.clone(), role)
            })
            .collect();
        EventMapper {
            event_type,
            fields,
            json_target: json_properties.map(Arc::from),
        }
    }

    pub fn event_type(&self) -> &Arc<str> {
        &self.event_type
    }

    /// Maps one record (field values in writer order). The schema was checked to have a string
    /// `id` and an int `time` when the file was opened. Warnings name each odd value of the
    /// JSON `properties` and the rule applied to it.
    pub fn map(&self, record: Vec<Datum>) -> (CustomHttpEvent, Vec<MappingWarning>) {
        let mut event = CustomHttpEvent {
            event_type: self.event_type.clone(),
            id: String::new(),
            time: 0,
            user: User::default(),
            properties: Vec::with_capacity(record.len()),
        };
        let mut json_field = None;
        for ((name, role), value) in self.fields.iter().zip(record) {
            if matches!(value, Datum::Null) {
                continue;
            }
            match (role, value) {
                (Role::Id, Datum::String(s)) => event.id = s,
                (Role::Time, Datum::Int(t)) => event.time = i64::from(t),
                (Role::Time, Datum::Long(t)) => event.time = t,
                (Role::UserId, Datum::String(s)) => event.user.user_id = Some(s),
                (Role::ExternalUserId, Datum::String(s)) => event.user.external_user_id = Some(s),
                (Role::DeviceId, Datum::String(s)) => event.user.device_id = Some(s),
                (Role::Timezone, Datum::String(s)) => event.user.timezone = Some(s),
                (Role::JsonProperties, Datum::String(s)) => json_field = Some(s),
                // A user field of an unexpected type stays visible as a property.
                (_, value) => event.properties.push((name.clone(), Property::Avro(value))),
            }
        }
        let mut warnings = Vec::new();
        if let (Some(text), Some(target)) = (json_field, &self.json_target) {
            let value = match json_property(text) {
                Ok((json, odd)) => {
                    warnings.extend(odd.into_iter().map(|odd| MappingWarning::OddValue {
                        event_id: event.id.clone(),
                        field: "properties",
                        property: odd.path,
                        kind: odd.kind,
                        text: odd.text,
                    }));
                    Property::Json(json)
                }
                Err((text, reason)) => {
                    warnings.push(MappingWarning::PropertiesNotJson {
                        event_id: event.id.clone(),
                        field: "properties",
                        reason,
                    });
                    Property::Avro(Datum::String(text))
                }
            };
            event.properties.push((target.clone(), value));
        }
        (event, warnings)
    }
}

/// JSON text read leniently: the text itself when nothing in it is odd, otherwise its table
/// form (`\ud83d` → `�`, `1e400` → `"1e400"`). `Err` gives the text back with the reason.
fn json_property(
    text: String,
) -> Result<(Box<RawValue>, Vec<super::value::Odd>), (String, String)> {
    let normalized = match parse_lenient(&text) {
        Ok((_, odd)) if odd.is_empty() => None,
        Ok((value, odd)) => Some((value.to_json(), odd)),
        Err(reason) => return Err((text, reason)),
    };
    let (json, odd) = match normalized {
        Some((json, odd)) => (json, odd),
        // Kept as written, on one line: `inspect` prints and dead letters store one event
        // per line. A raw line break in valid JSON can only be whitespace (inside a string
        // it must be escaped), so a space in its place changes no value.
        None if text.contains(['\n', '\r']) => (text.replace(['\n', '\r'], " "), Vec::new()),
        None => (text, Vec::new()),
    };
    // The table form is JSON serde_json reads (a test holds it to that); never panic on it.
    match serde_json::from_str::<Box<RawValue>>(&json) {
        Ok(raw) => Ok((raw, odd)),
        Err(e) => Err((json, e.to_string())),
    }
}

/// The event type named by the writer schema: its namespace and name without Braze's
/// `dataexport.<connector>.inner.` prefix (`dataexport.S3.inner.users.behaviors` +
/// `CustomEvent` gives `users.behaviors.CustomEvent`).
pub fn event_type_from_schema(schema: &RecordShape) -> String {
    let full = schema.full_name();
    let mut parts = full.splitn(4, '.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("dataexport"), Some(_connector), Some("inner"), Some(rest)) => rest.to_string(),
        _ => full,
    }
}

impl Serialize for CustomHttpEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("event_type", &*self.event_type)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("user", &self.user)?;
        map.serialize_entry("properties", &Properties(&self.properties))?;
        map.end()
    }
}

/// Reads the JSON this module prints, e.g. back from a dead letter. Every property comes back
/// as JSON text, which the Heap mapping handles exactly like decoded Avro values.
impl<'de> Deserialize<'de> for CustomHttpEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            event_type: String,
            id: String,
            time: i64,
            #[serde(default)]
            user: User,
            #[serde(default)]
            properties: indexmap::IndexMap<String, Box<RawValue>>,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(CustomHttpEvent {
            event_type: Arc::from(wire.event_type),
            id: wire.id,
            time: wire.time,
            user: wire.user,
            properties: wire
                .properties
                .into_iter()
                .map(|(k, v)| (Arc::from(k), Property::Json(v)))
                .collect(),
        })
    }
}

struct Properties<'a>(&'a [(Arc<str>, Property)]);

impl Serialize for Properties<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match value {
                Property::Avro(datum) => map.serialize_entry(&**name, datum)?,
                Property::Json(json) => map.serialize_entry(&**name, json)?,
            }
        }
        map.end()
    }
}

/// The Custom HTTP form of the value table ([`super::value`]).
impl Serialize for Datum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Value::from_datum(self).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::currents::schema::compile_event_schema;

    #[test]
    fn properties_kept_as_written_stay_on_one_line() {
        let (raw, odd) =
            json_property("{\"a\":\n1,\r\n\"b\":\t[1,\n2],\"s\":\"x\\ny\"}".into()).unwrap();
        assert!(odd.is_empty());
        assert!(!raw.get().contains(['\n', '\r']), "{}", raw.get());
        let value: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"a": 1, "b": [1, 2], "s": "x\ny"}),
            "only whitespace changed; an escaped line break in a string stays"
        );
    }

    fn custom_event_schema() -> Arc<RecordShape> {
        compile_event_schema(
            r#"{"type":"record","name":"CustomEvent","namespace":"dataexport.S3.inner.users.behaviors","fields":[
            {"name":"id","type":"string"},{"name":"user_id","type":"string"},
            {"name":"external_user_id","type":["null","string"]},{"name":"time","type":"int"},
            {"name":"price","type":"float"},{"name":"properties","type":"string"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn event_type_comes_from_the_schema_without_the_connector_prefix() {
        assert_eq!(event_type_from_schema(&custom_event_schema()), CUSTOM_EVENT);
        let internal = compile_event_schema(
            r#"{"type":"record","name":"Purchase","namespace":"users.behaviors","fields":[{"name":"id","type":"string"},{"name":"time","type":"int"}]}"#,
        )
        .unwrap();
        assert_eq!(event_type_from_schema(&internal), PURCHASE);
    }

    #[test]
    fn maps_user_fields_floats_and_json_properties() {
        let schema = custom_event_schema();
        let mapper = EventMapper::new(Arc::from(CUSTOM_EVENT), &schema);
        let (event, warning) = mapper.map(vec![
            Datum::String("e1".into()),
            Datum::String("u1".into()),
            Datum::Null,
            Datum::Int(1_700_000_000),
            Datum::Float(12.34),
            Datum::String(r#"{"a":[1,"b"],"n":{"x":true}}"#.into()),
        ]);
        assert_eq!(warning, []);
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"event_type":"users.behaviors.CustomEvent","id":"e1","time":1700000000,"user":{"user_id":"u1"},"properties":{"price":12.34,"custom_properties":{"a":[1,"b"],"n":{"x":true}}}}"#
        );
    }

    #[test]
    fn invalid_json_properties_are_kept_as_a_string_with_a_warning() {
        let schema = custom_event_schema();
        let mapper = EventMapper::new(Arc::from(CUSTOM_EVENT), &schema);
        let (event, warning) = mapper.map(vec![
            Datum::String("e2".into()),
            Datum::String("u1".into()),
            Datum::String("ext".into()),
            Datum::Int(5),
            Datum::Float(1.0),
            Datum::String("{not json".into()),
        ]);
        assert!(
            matches!(&warning[..], [MappingWarning::PropertiesNotJson { event_id, .. }] if event_id == "e2")
        );
        assert_eq!(
            event.property("custom_properties"),
            Some(&Property::Avro(Datum::String("{not json".into())))
        );
        assert_eq!(event.user.external_user_id.as_deref(), Some("ext"));
    }

    #[test]
    fn other_event_types_keep_properties_as_a_plain_field() {
        let schema = custom_event_schema();
        let mapper = EventMapper::new(Arc::from("users.messages.email.Open"), &schema);
        let (event, warning) = mapper.map(vec![
            Datum::String("e3".into()),
            Datum::String("u1".into()),
            Datum::Null,
            Datum::Int(5),
            Datum::Float(0.5),
            Datum::String("{}".into()),
        ]);
        assert_eq!(warning, []);
        assert_eq!(
            event.property("properties"),
            Some(&Property::Avro(Datum::String("{}".into())))
        );
    }
}
