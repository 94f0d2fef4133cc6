//! Seeded synthetic Currents files, for fixtures, tests and benchmarks.
//!
//! Braze's sample files may not be redistributed, so every Avro file in this repository is made
//! here from the reference schemas in `schemas/`. The generator deliberately shares nothing with
//! the decoder: it walks apache-avro's own parse of the schema, writes with apache-avro's
//! `Writer`, and builds the expected Custom HTTP JSON straight from the values it generated.
//! A test that compares our decoder's output with that expectation therefore checks two
//! independent implementations against each other.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use apache_avro::schema::{Name, Schema};
use apache_avro::types::Value;
use apache_avro::{Codec, Writer};
use serde_json::{Map, Value as Json, json};

use crate::fixtures::LAYOUT;
use crate::rng::Rng;
use currents_heap::currents::event::{CUSTOM_EVENT, PURCHASE};
use currents_heap::currents::key::{DateHour, KeyLayout};

/// Today's `users.behaviors.CustomEvent` schema, as committed under `schemas/`.
pub const CUSTOM_EVENT_SCHEMA: &str =
    include_str!("../../schemas/users.behaviors.CustomEvent.avsc");

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub events: usize,
    pub codec: Codec,
    /// Uncompressed bytes per Avro block; small values make multi-block files.
    pub block_size: usize,
    pub seed: u64,
    /// `time` of the first event, Unix seconds.
    pub base_time: i64,
    /// Distinct `external_user_id`s to draw from.
    pub identities: u64,
    /// Percent of optional fields left null.
    pub null_percent: u64,
    /// Make the JSON `properties` of every n-th event invalid (CustomEvent and Purchase only).
    pub invalid_json_every: Option<usize>,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            events: 5,
            codec: Codec::Null,
            block_size: 64_000,
            seed: 42,
            base_time: 1_795_784_400,
            identities: 50,
            null_percent: 20,
            invalid_json_every: None,
        }
    }
}

/// A generated Avro container file and the Custom HTTP JSON each record should decode to.
pub struct SynthFile {
    pub avro: Vec<u8>,
    pub expected: Vec<Json>,
}

/// Generates `options.events` records for the schema and writes them as one container file.
pub fn synthesize(
    schema_text: &str,
    event_type: &str,
    options: &SynthOptions,
) -> Result<SynthFile, String> {
    let schema = Schema::parse_str(schema_text).map_err(|e| format!("schema: {e}"))?;
    let Schema::Record(record) = &schema else {
        return Err("the schema is not a record".into());
    };
    let mut generator = Generator {
        rng: Rng::new(options.seed),
        options,
        named: HashMap::new(),
        json_properties: matches!(event_type, CUSTOM_EVENT | PURCHASE),
    };
    let mut marker = [0u8; 16];
    marker
        .iter_mut()
        .for_each(|b| *b = generator.rng.below(256) as u8);
    let mut writer = Writer::builder()
        .schema(&schema)
        .writer(Vec::new())
        .codec(options.codec)
        .block_size(options.block_size)
        .marker(marker)
        .build()
        .map_err(|e| format!("writer: {e}"))?;
    let mut expected = Vec::with_capacity(options.events);
    for index in 0..options.events {
        let fields = record
            .fields
            .iter()
            .map(|f| Ok((f.name.clone(), generator.field(index, &f.name, &f.schema)?)))
            .collect::<Result<Vec<_>, String>>()?;
        expected.push(expected_custom_http(event_type, &fields));
        writer
            .append_value(Value::Record(fields))
            .map_err(|e| format!("write: {e}"))?;
    }
    let avro = writer.into_inner().map_err(|e| format!("flush: {e}"))?;
    Ok(SynthFile { avro, expected })
}

/// Writes `objects` CustomEvent objects of `options.events` events each into `root`, in
/// Braze's key layout under one `date=` hour: a bucket of many small files. Object `i` is
/// synthesized with seed `options.seed + i`, so the whole bucket is reproducible.
///
/// Returns the ids of the events a run delivers with the default identity (those with an
/// `external_user_id`); the rest are skipped for want of one.
pub fn write_custom_events(
    root: &Path,
    hour: DateHour,
    objects: usize,
    options: &SynthOptions,
) -> Result<HashSet<String>, String> {
    let layout = KeyLayout {
        schema_id: 612,
        ..LAYOUT
    };
    let mut sendable = HashSet::new();
    for i in 0..objects {
        let file = synthesize(
            CUSTOM_EVENT_SCHEMA,
            CUSTOM_EVENT,
            &SynthOptions {
                seed: options.seed + i as u64,
                ..options.clone()
            },
        )?;
        sendable.extend(
            file.expected
                .iter()
                .filter(|e| e["user"]["external_user_id"].is_string())
                .filter_map(|e| e["id"].as_str().map(str::to_string)),
        );
        let offset = (i * options.events) as u64;
        let path = root.join(layout.object_key(CUSTOM_EVENT, hour, 0, offset));
        let write = || {
            std::fs::create_dir_all(path.parent().expect("keys have folders"))?;
            std::fs::write(&path, &file.avro)
        };
        write().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(sendable)
}

struct Generator<'a> {
    rng: Rng,
    options: &'a SynthOptions,
    named: HashMap<Name, Schema>,
    json_properties: bool,
}

const PLATFORMS: &[&str] = &["ios", "android", "web", "kindle", "tvos", "roku"];
const TIMEZONES: &[&str] = &["America/Chicago", "Europe/Berlin", "Asia/Tokyo", "UTC"];
const EVENT_NAMES: &[&str] = &[
    "Added To Cart",
    "Viewed Product",
    "Completed Onboarding",
    "shared_link",
];
const CURRENCIES: &[&str] = &["USD", "EUR", "AED", "JPY"];

impl Generator<'_> {
    /// A value for one field, shaped by its name where Braze's meaning is known.
    fn field(&mut self, index: usize, name: &str, schema: &Schema) -> Result<Value, String> {
        if let Schema::Union(union) = schema {
            let variants = union.variants();
            let null_at = variants.iter().position(|v| matches!(v, Schema::Null));
            if let Some(null_at) = null_at
                && self.rng.percent(self.options.null_percent)
            {
                return Ok(Value::Union(null_at as u32, Box::new(Value::Null)));
            }
            let choices: Vec<usize> = (0..variants.len())
                .filter(|i| Some(*i) != null_at)
                .collect();
            let Some(&branch) = choices.first().map(|_| self.rng.pick(&choices)) else {
                return Ok(Value::Union(0, Box::new(Value::Null)));
            };
            let value = self.field(index, name, &variants[branch])?;
            return Ok(Value::Union(branch as u32, Box::new(value)));
        }
        let time = self.options.base_time + index as i64 * 7;
        Ok(match (name, schema) {
            ("id", Schema::String) => Value::String(uuid(&mut self.rng)),
            ("user_id", Schema::String) => Value::String(hex(&mut self.rng, 24)),
            ("external_user_id", Schema::String) => {
                Value::String(format!("user-{}", self.rng.below(self.options.identities)))
            }
            ("device_id", Schema::String) | ("session_id", Schema::String) => {
                Value::String(uuid(&mut self.rng))
            }
            ("time", Schema::Int) => Value::Int(time as i32),
            ("time_ms", Schema::Long) => Value::Long(time * 1000 + self.rng.below(1000) as i64),
            ("timezone", Schema::String) => Value::String(self.rng.pick(TIMEZONES).to_string()),
            ("platform", Schema::String) => Value::String(self.rng.pick(PLATFORMS).to_string()),
            ("name", Schema::String) => Value::String(self.rng.pick(EVENT_NAMES).to_string()),
            ("currency", Schema::String) => Value::String(self.rng.pick(CURRENCIES).to_string()),
            ("properties", Schema::String) if self.json_properties => {
                Value::String(self.properties_json(index))
            }
            (_, Schema::Float) => Value::Float(self.rng.below(100_000) as f32 / 100.0),
            (_, schema) => self.any(name, schema)?,
        })
    }

    /// A JSON object like the custom properties customers send: scalars, a list, a nested object.
    fn properties_json(&mut self, index: usize) -> String {
        if let Some(every) = self.options.invalid_json_every
            && index % every == every - 1
        {
            return r#"{"plan": "pro", "seats": "#.to_string();
        }
        let mut props = Map::new();
        props.insert(
            "plan".into(),
            json!(self.rng.pick(&["free", "pro", "team"])),
        );
        props.insert("seats".into(), json!(self.rng.below(500)));
        if self.rng.percent(50) {
            props.insert("ratio".into(), json!(self.rng.below(1000) as f64 / 8.0));
        }
        if self.rng.percent(50) {
            props.insert(
                "tags".into(),
                json!(["a", "b", format!("t{}", self.rng.below(9))]),
            );
        }
        if self.rng.percent(40) {
            props.insert(
                "cart".into(),
                json!({"total": self.rng.below(10_000) as f64 / 4.0, "items": self.rng.below(9), "gift": self.rng.percent(30)}),
            );
        }
        if self.rng.percent(20) {
            props.insert("coupon".into(), Json::Null);
        }
        Json::Object(props).to_string()
    }

    fn any(&mut self, name: &str, schema: &Schema) -> Result<Value, String> {
        Ok(match schema {
            Schema::Null => Value::Null,
            Schema::Boolean => Value::Boolean(self.rng.percent(50)),
            Schema::Int => Value::Int(self.rng.below(1000) as i32),
            Schema::Long => Value::Long(self.rng.below(1 << 40) as i64),
            Schema::Float => Value::Float(self.rng.below(100_000) as f32 / 100.0),
            Schema::Double => Value::Double(self.rng.below(1_000_000) as f64 / 1000.0),
            Schema::Bytes => Value::Bytes(
                (0..self.rng.below(6))
                    .map(|_| self.rng.below(256) as u8)
                    .collect(),
            ),
            Schema::String => Value::String(format!("{name}-{}", self.rng.below(1000))),
            Schema::Date => Value::Date(20_000 + self.rng.below(400) as i32),
            Schema::Enum(e) => {
                self.named.insert(e.name.clone(), schema.clone());
                let i = self.rng.below(e.symbols.len() as u64) as usize;
                Value::Enum(i as u32, e.symbols[i].clone())
            }
            Schema::Fixed(f) => {
                self.named.insert(f.name.clone(), schema.clone());
                Value::Fixed(
                    f.size,
                    (0..f.size).map(|_| self.rng.below(256) as u8).collect(),
                )
            }
            Schema::Array(a) => {
                let n = self.rng.below(4);
                Value::Array(
                    (0..n)
                        .map(|_| self.field(0, name, &a.items))
                        .collect::<Result<_, _>>()?,
                )
            }
            // At most one entry: a HashMap's order is random, and fixtures must be reproducible.
            Schema::Map(m) => {
                let mut map = HashMap::new();
                if self.rng.percent(70) {
                    map.insert(
                        format!("k{}", self.rng.below(10)),
                        self.field(0, name, &m.types)?,
                    );
                }
                Value::Map(map)
            }
            Schema::Record(r) => {
                self.named.insert(r.name.clone(), schema.clone());
                Value::Record(
                    r.fields
                        .iter()
                        .map(|f| Ok((f.name.clone(), self.field(0, &f.name, &f.schema)?)))
                        .collect::<Result<_, String>>()?,
                )
            }
            Schema::Ref { name: ref_name } => {
                let target = self
                    .named
                    .get(ref_name)
                    .cloned()
                    .ok_or_else(|| format!("unknown reference {ref_name:?}"))?;
                self.field(0, name, &target)?
            }
            Schema::Union(_) => self.field(0, name, schema)?,
            other => return Err(format!("synth does not generate {other:?}")),
        })
    }
}

/// The Custom HTTP event a record should decode to, derived from the generated values alone.
fn expected_custom_http(event_type: &str, fields: &[(String, Value)]) -> Json {
    let mut top = Map::new();
    let mut user = Map::new();
    let mut properties = Map::new();
    let mut json_properties = None;
    for (name, value) in fields {
        let Some(json) = to_json(value) else { continue };
        match name.as_str() {
            "id" | "time" => {
                top.insert(name.clone(), json);
            }
            "user_id" | "external_user_id" | "device_id" | "timezone" if json.is_string() => {
                user.insert(name.clone(), json);
            }
            "properties" if matches!(event_type, CUSTOM_EVENT | PURCHASE) => {
                let key = if event_type == CUSTOM_EVENT {
                    "custom_properties"
                } else {
                    "purchase_properties"
                };
                let text = json.as_str().unwrap_or_default();
                json_properties = Some((key, serde_json::from_str(text).unwrap_or(json)));
            }
            _ => {
                properties.insert(name.clone(), json);
            }
        }
    }
    if let Some((key, value)) = json_properties {
        properties.insert(key.into(), value);
    }
    // Braze's own field order: user fields in the order the connector documents them.
    let mut ordered_user = Map::new();
    for key in ["user_id", "external_user_id", "device_id", "timezone"] {
        if let Some(v) = user.remove(key) {
            ordered_user.insert(key.into(), v);
        }
    }
    json!({
        "event_type": event_type,
        "id": top.remove("id").unwrap_or(Json::Null),
        "time": top.remove("time").unwrap_or(Json::Null),
        "user": ordered_user,
        "properties": properties,
    })
}

/// Avro value to JSON as Braze prints it; `None` for null (omitted).
fn to_json(value: &Value) -> Option<Json> {
    Some(match value {
        Value::Null => return None,
        Value::Union(_, inner) => return to_json(inner),
        Value::Boolean(b) => json!(b),
        Value::Int(i) | Value::Date(i) => json!(i),
        Value::Long(l) => json!(l),
        // Rust's `Display` for f32 prints the shortest decimal that reads back as the same f32.
        Value::Float(f) => json!(format!("{f}").parse::<f64>().ok()?),
        Value::Double(d) => json!(d),
        Value::String(s) | Value::Enum(_, s) => json!(s),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            json!(b.iter().map(|&c| char::from(c)).collect::<String>())
        }
        Value::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| to_json(v).unwrap_or(Json::Null))
                .collect(),
        ),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v).unwrap_or(Json::Null)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), to_json(v)?)))
                .collect(),
        ),
        _ => return None,
    })
}

fn hex(rng: &mut Rng, digits: usize) -> String {
    (0..digits)
        .map(|_| char::from_digit(rng.below(16) as u32, 16).unwrap_or('0'))
        .collect()
}

fn uuid(rng: &mut Rng) -> String {
    format!(
        "{}-{}-4{}-{}{}-{}",
        hex(rng, 8),
        hex(rng, 4),
        hex(rng, 3),
        rng.pick(&['8', '9', 'a', 'b']),
        hex(rng, 3),
        hex(rng, 12)
    )
}
