//! Hand-written Currents objects: an Avro container of exactly the records a test names, as
//! JSON, for any writer schema (where [`crate::synth`] generates seeded random records).
//!
//! Records are converted by walking apache-avro's parse of the schema, never our decoder's, so
//! a test that decodes the result checks the production decoder against an independent
//! writer. The conversion is strict, so a typo in a test fails loudly instead of writing
//! something else: an unknown field is an error, a missing field takes the schema's default
//! (a `["null", T]` field: null) or is an error when it has none, and a number must fit its
//! Avro type. One affordance: a JSON object or array given for a `string` field is written as
//! its JSON text, as Braze writes `custom_attributes` and `properties`.
//!
//! The schemas of the user-property types (issue 22) are here as constants, read from
//! `schemas/`.

/// The codecs [`avro_object`] writes with.
pub use apache_avro::Codec;
use apache_avro::Writer;
use apache_avro::schema::Schema;
use apache_avro::types::Value;
use serde_json::Value as Json;

/// `users.profile.Update`, as committed under `schemas/`.
pub const PROFILE_UPDATE_SCHEMA: &str = include_str!("../../schemas/users.profile.Update.avsc");
/// `users.behaviors.subscription.GlobalStateChange`, as committed under `schemas/`.
pub const GLOBAL_SUBSCRIPTION_SCHEMA: &str =
    include_str!("../../schemas/users.behaviors.subscription.GlobalStateChange.avsc");
/// `users.behaviors.subscriptiongroup.StateChange`, as committed under `schemas/`.
pub const GROUP_SUBSCRIPTION_SCHEMA: &str =
    include_str!("../../schemas/users.behaviors.subscriptiongroup.StateChange.avsc");
/// `users.RandomBucketNumberUpdate`, as committed under `schemas/`.
pub const RANDOM_BUCKET_SCHEMA: &str =
    include_str!("../../schemas/users.RandomBucketNumberUpdate.avsc");

/// The committed schema of a user-property event type (`users.profile.Update`,
/// `users.behaviors.subscription.GlobalStateChange`,
/// `users.behaviors.subscriptiongroup.StateChange`, `users.RandomBucketNumberUpdate`).
pub fn user_property_schema(event_type: &str) -> Option<&'static str> {
    match event_type {
        "users.profile.Update" => Some(PROFILE_UPDATE_SCHEMA),
        "users.behaviors.subscription.GlobalStateChange" => Some(GLOBAL_SUBSCRIPTION_SCHEMA),
        "users.behaviors.subscriptiongroup.StateChange" => Some(GROUP_SUBSCRIPTION_SCHEMA),
        "users.RandomBucketNumberUpdate" => Some(RANDOM_BUCKET_SCHEMA),
        _ => None,
    }
}

/// Writes `records` (JSON objects keyed by field name) as one Avro container with the writer
/// schema `schema_json`, compressed with `codec`, all in one block. `Err` names the record and
/// field that does not fit the schema.
pub fn avro_object(schema_json: &str, records: &[Json], codec: Codec) -> Result<Vec<u8>, String> {
    let schema = Schema::parse_str(schema_json).map_err(|e| format!("schema: {e}"))?;
    if !matches!(schema, Schema::Record(_)) {
        return Err("the schema is not a record".into());
    }
    let mut writer = Writer::builder()
        .schema(&schema)
        .writer(Vec::new())
        .codec(codec)
        .build()
        .map_err(|e| format!("writer: {e}"))?;
    for (i, record) in records.iter().enumerate() {
        let value = to_avro(record, &schema).map_err(|e| format!("record {i}: {e}"))?;
        writer
            .append_value(value)
            .map_err(|e| format!("record {i}: write: {e}"))?;
    }
    writer.into_inner().map_err(|e| format!("flush: {e}"))
}

/// One JSON value as the Avro value of `schema`; `Err` says where it does not fit.
pub fn to_avro(json: &Json, schema: &Schema) -> Result<Value, String> {
    let mismatch = || format!("{json} is not a {}", schema_name(schema));
    Ok(match schema {
        Schema::Null if json.is_null() => Value::Null,
        Schema::Boolean => Value::Boolean(json.as_bool().ok_or_else(mismatch)?),
        Schema::Int => {
            let n = json.as_i64().ok_or_else(mismatch)?;
            Value::Int(i32::try_from(n).map_err(|_| format!("{n} does not fit an int"))?)
        }
        Schema::Long => Value::Long(json.as_i64().ok_or_else(mismatch)?),
        Schema::Float => Value::Float(json.as_f64().ok_or_else(mismatch)? as f32),
        Schema::Double => Value::Double(json.as_f64().ok_or_else(mismatch)?),
        Schema::String => match json {
            Json::String(s) => Value::String(s.clone()),
            Json::Object(_) | Json::Array(_) => Value::String(json.to_string()),
            _ => return Err(mismatch()),
        },
        Schema::Bytes => Value::Bytes(json.as_str().ok_or_else(mismatch)?.as_bytes().to_vec()),
        Schema::Enum(e) => {
            let symbol = json.as_str().ok_or_else(mismatch)?;
            let index = e
                .symbols
                .iter()
                .position(|s| s == symbol)
                .ok_or_else(|| format!("{symbol:?} is not a symbol of {}", e.name))?;
            Value::Enum(index as u32, symbol.to_string())
        }
        Schema::Array(array) => Value::Array(
            json.as_array()
                .ok_or_else(mismatch)?
                .iter()
                .enumerate()
                .map(|(i, item)| to_avro(item, &array.items).map_err(|e| format!("[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        Schema::Map(map) => Value::Map(
            json.as_object()
                .ok_or_else(mismatch)?
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        to_avro(v, &map.types).map_err(|e| format!("{k}: {e}"))?,
                    ))
                })
                .collect::<Result<_, String>>()?,
        ),
        Schema::Union(union) => {
            let variants = union.variants();
            let mut why = Vec::new();
            for (i, variant) in variants.iter().enumerate() {
                match to_avro(json, variant) {
                    Ok(value) => return Ok(Value::Union(i as u32, Box::new(value))),
                    Err(e) => why.push(e),
                }
            }
            return Err(format!(
                "no branch of the union takes it ({})",
                why.join("; ")
            ));
        }
        Schema::Record(record) => {
            let object = json.as_object().ok_or_else(mismatch)?;
            if let Some(unknown) = object
                .keys()
                .find(|k| !record.fields.iter().any(|f| &f.name == *k))
            {
                return Err(format!("`{unknown}` is not a field of {}", record.name));
            }
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let given = match (object.get(&field.name), &field.default) {
                    (Some(value), _) => value,
                    (None, Some(default)) => default,
                    (None, None) => {
                        return Err(format!("`{}` is required and missing", field.name));
                    }
                };
                let value =
                    to_avro(given, &field.schema).map_err(|e| format!("`{}`: {e}", field.name))?;
                fields.push((field.name.clone(), value));
            }
            Value::Record(fields)
        }
        _ => return Err(mismatch()),
    })
}

fn schema_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_what_apache_avro_reads_back_and_refuses_what_does_not_fit() {
        let records = [json!({
            "id": "e1", "user_id": "u1", "time": 1_795_784_400,
            "random_bucket_number": 42, "prev_random_bucket_number": 7
        })];
        let avro = avro_object(RANDOM_BUCKET_SCHEMA, &records, Codec::Null).unwrap();
        let read: Vec<Value> = apache_avro::Reader::new(&avro[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let Value::Record(fields) = &read[0] else {
            panic!("{read:?}")
        };
        assert_eq!(
            fields[2],
            (
                "external_user_id".into(),
                Value::Union(0, Box::new(Value::Null))
            )
        );
        assert_eq!(fields[5], ("random_bucket_number".into(), Value::Int(42)));

        let typo = json!({"id": "e1", "user_id": "u1", "time": 1, "random_bucket_numbr": 4});
        let err = avro_object(RANDOM_BUCKET_SCHEMA, &[typo], Codec::Null).unwrap_err();
        assert!(
            err.contains("`random_bucket_numbr` is not a field"),
            "{err}"
        );
        let missing = json!({"id": "e1", "user_id": "u1", "time": 1});
        let err = avro_object(RANDOM_BUCKET_SCHEMA, &[missing], Codec::Null).unwrap_err();
        assert!(err.contains("`random_bucket_number` is required"), "{err}");
        let too_big =
            json!({"id": "e1", "user_id": "u1", "time": 1i64 << 40, "random_bucket_number": 4});
        let err = avro_object(RANDOM_BUCKET_SCHEMA, &[too_big], Codec::Null).unwrap_err();
        assert!(err.contains("does not fit an int"), "{err}");
    }

    #[test]
    fn the_user_property_schemas_parse_with_braze_field_counts() {
        for (event_type, fields) in [
            ("users.profile.Update", 20),
            ("users.behaviors.subscription.GlobalStateChange", 22),
            ("users.behaviors.subscriptiongroup.StateChange", 26),
            ("users.RandomBucketNumberUpdate", 7),
        ] {
            let schema = Schema::parse_str(user_property_schema(event_type).unwrap()).unwrap();
            let Schema::Record(record) = schema else {
                panic!("{event_type}")
            };
            assert_eq!(record.fields.len(), fields, "{event_type}");
            assert_eq!(
                record.name.fullname(None),
                format!("dataexport.S3.inner.{event_type}")
            );
        }
    }
}
