//! The writer schema embedded in a Currents file, compiled into the shape the datum decoder walks.
//!
//! Every Currents object carries its own writer schema, and Braze adds fields and event types
//! without notice. So nothing here knows an event type: any valid Avro schema whose top level is
//! a record with a string `id` and an int/long `time` decodes. Logical types (`date`,
//! `timestamp-millis`, ...) decode as their underlying physical type, which is also how Braze's
//! Custom HTTP connector would print them.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

/// How one Avro value is laid out in the binary encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Enum(Arc<[Arc<str>]>),
    Fixed(usize),
    Array(Box<Shape>),
    Map(Box<Shape>),
    Union(Vec<Shape>),
    Record(Arc<RecordShape>),
}

/// A record: its full name and its fields in writer order.
#[derive(Debug, PartialEq)]
pub struct RecordShape {
    pub namespace: Option<String>,
    pub name: String,
    pub fields: Vec<FieldShape>,
}

#[derive(Debug, PartialEq)]
pub struct FieldShape {
    /// Shared so that decoded records and mapped events can name fields without copying.
    pub name: Arc<str>,
    pub shape: Shape,
}

impl RecordShape {
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| &*f.name == name)
    }

    /// `namespace.name`, or just `name` without a namespace.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) if !ns.is_empty() => format!("{ns}.{}", self.name),
            _ => self.name.clone(),
        }
    }
}

impl Shape {
    /// The fewest bytes one value of this shape can take. Used to reject array and map blocks
    /// that claim more items than the remaining bytes could hold.
    pub fn min_encoded_len(&self) -> usize {
        match self {
            Shape::Null => 0,
            Shape::Boolean | Shape::Int | Shape::Long | Shape::Bytes | Shape::String => 1,
            Shape::Enum(_) | Shape::Array(_) | Shape::Map(_) | Shape::Union(_) => 1,
            Shape::Float => 4,
            Shape::Double => 8,
            Shape::Fixed(n) => *n,
            Shape::Record(r) => r.fields.iter().map(|f| f.shape.min_encoded_len()).sum(),
        }
    }
}

/// Why a writer schema cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemaError {
    #[error("writer schema is not valid JSON: {0}")]
    NotJson(String),
    #[error("writer schema is invalid: {0}")]
    Invalid(String),
    #[error("writer schema is not a Currents event: {0}")]
    NotAnEvent(String),
}

/// Compiles the `avro.schema` header text into the top-level record shape, and checks that it
/// looks like a Currents event (a record with a string `id` and an int or long `time`).
pub fn compile_event_schema(text: &str) -> Result<Arc<RecordShape>, SchemaError> {
    let json: Json = serde_json::from_str(text).map_err(|e| SchemaError::NotJson(e.to_string()))?;
    let mut compiler = Compiler::default();
    let shape = compiler.compile(&json, None)?;
    let Shape::Record(record) = shape else {
        return Err(SchemaError::NotAnEvent(
            "the top-level type is not a record".into(),
        ));
    };
    let field = |name: &str| record.field_index(name).map(|i| &record.fields[i].shape);
    if field("id") != Some(&Shape::String) {
        return Err(SchemaError::NotAnEvent(
            "it has no required string field `id`".into(),
        ));
    }
    if !matches!(field("time"), Some(Shape::Int | Shape::Long)) {
        return Err(SchemaError::NotAnEvent(
            "it has no required int field `time`".into(),
        ));
    }
    Ok(record)
}

/// Named types seen so far, by full name, so later fields can refer to them.
#[derive(Default)]
struct Compiler {
    named: HashMap<String, Shape>,
    /// Records being compiled: a reference to one of them would be a recursive type.
    open_records: Vec<String>,
}

impl Compiler {
    fn compile(&mut self, json: &Json, namespace: Option<&str>) -> Result<Shape, SchemaError> {
        match json {
            Json::String(name) => self.named_or_primitive(name, namespace),
            Json::Array(branches) => {
                if branches.is_empty() {
                    return Err(SchemaError::Invalid("a union has no branches".into()));
                }
                let shapes = branches
                    .iter()
                    .map(|b| self.compile(b, namespace))
                    .collect::<Result<Vec<_>, _>>()?;
                if shapes.iter().any(|s| matches!(s, Shape::Union(_))) {
                    return Err(SchemaError::Invalid(
                        "a union directly contains a union".into(),
                    ));
                }
                Ok(Shape::Union(shapes))
            }
            Json::Object(obj) => {
                let ty = obj.get("type").ok_or_else(|| {
                    SchemaError::Invalid(format!("a type has no \"type\": {json}"))
                })?;
                match ty.as_str() {
                    Some("record") | Some("error") => self.record(obj, namespace),
                    Some("enum") => self.enumeration(obj, namespace),
                    Some("fixed") => self.fixed(obj, namespace),
                    Some("array") => Ok(Shape::Array(Box::new(
                        self.compile(required(obj, "items")?, namespace)?,
                    ))),
                    Some("map") => Ok(Shape::Map(Box::new(
                        self.compile(required(obj, "values")?, namespace)?,
                    ))),
                    // `{"type": "int", "logicalType": ...}` and friends: the physical type.
                    _ => self.compile(ty, namespace),
                }
            }
            other => Err(SchemaError::Invalid(format!(
                "unexpected schema value {other}"
            ))),
        }
    }

    fn named_or_primitive(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Shape, SchemaError> {
        Ok(match name {
            "null" => Shape::Null,
            "boolean" => Shape::Boolean,
            "int" => Shape::Int,
            "long" => Shape::Long,
            "float" => Shape::Float,
            "double" => Shape::Double,
            "bytes" => Shape::Bytes,
            "string" => Shape::String,
            _ => {
                let full = full_name(name, namespace);
                if self.open_records.contains(&full) || self.open_records.iter().any(|r| r == name)
                {
                    return Err(SchemaError::Invalid(format!(
                        "recursive type `{full}` is not supported"
                    )));
                }
                self.named
                    .get(&full)
                    .or_else(|| self.named.get(name))
                    .cloned()
                    .ok_or_else(|| SchemaError::Invalid(format!("unknown type `{name}`")))?
            }
        })
    }

    fn record(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        namespace: Option<&str>,
    ) -> Result<Shape, SchemaError> {
        let (name, ns) = name_and_namespace(obj, namespace)?;
        let full = full_name(&name, ns.as_deref());
        let fields_json = required(obj, "fields")?.as_array().ok_or_else(|| {
            SchemaError::Invalid(format!("record `{full}`: fields is not a list"))
        })?;
        self.open_records.push(full.clone());
        let mut fields = Vec::with_capacity(fields_json.len());
        for field in fields_json {
            let fname = field.get("name").and_then(Json::as_str).ok_or_else(|| {
                SchemaError::Invalid(format!("record `{full}`: a field has no name"))
            })?;
            if fields.iter().any(|f: &FieldShape| &*f.name == fname) {
                return Err(SchemaError::Invalid(format!(
                    "record `{full}`: field `{fname}` appears twice"
                )));
            }
            let ftype = field.get("type").ok_or_else(|| {
                SchemaError::Invalid(format!("record `{full}`: field `{fname}` has no type"))
            })?;
            let shape = self.compile(ftype, ns.as_deref())?;
            fields.push(FieldShape {
                name: Arc::from(fname),
                shape,
            });
        }
        self.open_records.pop();
        let shape = Shape::Record(Arc::new(RecordShape {
            namespace: ns,
            name,
            fields,
        }));
        self.define(full, shape.clone())?;
        Ok(shape)
    }

    fn enumeration(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        namespace: Option<&str>,
    ) -> Result<Shape, SchemaError> {
        self.named_type(obj, namespace, |full| {
            let symbols = required(obj, "symbols")?
                .as_array()
                .and_then(|s| {
                    s.iter()
                        .map(|v| v.as_str().map(Arc::from))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    SchemaError::Invalid(format!("enum `{full}`: symbols must be strings"))
                })?;
            Ok(Shape::Enum(symbols.into()))
        })
    }

    fn fixed(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        namespace: Option<&str>,
    ) -> Result<Shape, SchemaError> {
        self.named_type(obj, namespace, |full| {
            let size = required(obj, "size")?
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| {
                    SchemaError::Invalid(format!("fixed `{full}`: size is not a count"))
                })?;
            Ok(Shape::Fixed(size))
        })
    }

    /// Builds a named type that has no fields (enum, fixed) and records it for references.
    fn named_type(
        &mut self,
        obj: &serde_json::Map<String, Json>,
        namespace: Option<&str>,
        build: impl FnOnce(&str) -> Result<Shape, SchemaError>,
    ) -> Result<Shape, SchemaError> {
        let (name, ns) = name_and_namespace(obj, namespace)?;
        let full = full_name(&name, ns.as_deref());
        let shape = build(&full)?;
        self.define(full, shape.clone())?;
        Ok(shape)
    }

    fn define(&mut self, full: String, shape: Shape) -> Result<(), SchemaError> {
        if self.named.insert(full.clone(), shape).is_some() {
            return Err(SchemaError::Invalid(format!(
                "type `{full}` is defined twice"
            )));
        }
        Ok(())
    }
}

fn required<'a>(
    obj: &'a serde_json::Map<String, Json>,
    key: &str,
) -> Result<&'a Json, SchemaError> {
    obj.get(key)
        .ok_or_else(|| SchemaError::Invalid(format!("a type has no \"{key}\"")))
}

/// Avro's naming rule: a dotted name carries its own namespace; otherwise an explicit
/// `namespace` wins over the enclosing one.
fn name_and_namespace(
    obj: &serde_json::Map<String, Json>,
    enclosing: Option<&str>,
) -> Result<(String, Option<String>), SchemaError> {
    let name = obj
        .get("name")
        .and_then(Json::as_str)
        .ok_or_else(|| SchemaError::Invalid("a named type has no name".into()))?;
    if let Some((ns, short)) = name.rsplit_once('.') {
        return Ok((short.to_string(), Some(ns.to_string())));
    }
    let ns = obj
        .get("namespace")
        .and_then(Json::as_str)
        .or(enclosing)
        .filter(|ns| !ns.is_empty())
        .map(str::to_string);
    Ok((name.to_string(), ns))
}

fn full_name(name: &str, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_named_references_in_the_enclosing_namespace() {
        let record = compile_event_schema(
            r#"{"type":"record","name":"E","namespace":"a.b","fields":[
                {"name":"id","type":"string"},{"name":"time","type":"int"},
                {"name":"k","type":{"type":"enum","name":"K","symbols":["X","Y"]}},
                {"name":"k2","type":["null","K"]},
                {"name":"k3","type":"a.b.K"}]}"#,
        )
        .unwrap();
        assert_eq!(record.full_name(), "a.b.E");
        let enum_shape = Shape::Enum(vec![Arc::from("X"), Arc::from("Y")].into());
        assert_eq!(record.fields[2].shape, enum_shape);
        assert_eq!(
            record.fields[3].shape,
            Shape::Union(vec![Shape::Null, enum_shape.clone()])
        );
        assert_eq!(record.fields[4].shape, enum_shape);
    }

    #[test]
    fn rejects_schemas_that_are_not_currents_events() {
        let no_id = r#"{"type":"record","name":"E","fields":[{"name":"time","type":"int"}]}"#;
        assert!(matches!(
            compile_event_schema(no_id),
            Err(SchemaError::NotAnEvent(_))
        ));
        let not_record = r#""string""#;
        assert!(matches!(
            compile_event_schema(not_record),
            Err(SchemaError::NotAnEvent(_))
        ));
        let bad_time = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"time","type":"string"}]}"#;
        assert!(matches!(
            compile_event_schema(bad_time),
            Err(SchemaError::NotAnEvent(_))
        ));
    }

    #[test]
    fn rejects_recursive_unknown_and_duplicate_types() {
        let recursive = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"time","type":"int"},{"name":"next","type":["null","E"]}]}"#;
        let err = compile_event_schema(recursive).unwrap_err();
        assert!(err.to_string().contains("recursive"), "{err}");
        let unknown = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"Nope"}]}"#;
        assert!(
            compile_event_schema(unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown type `Nope`")
        );
        let twice = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"id","type":"string"}]}"#;
        assert!(
            compile_event_schema(twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(matches!(
            compile_event_schema("{"),
            Err(SchemaError::NotJson(_))
        ));
    }
}
