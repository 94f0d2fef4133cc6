//! The value table: what every Avro or JSON value becomes in the Custom HTTP form (`inspect`,
//! dead letters) and in the Heap form (`inspect --heap`, delivery, `replay`). This module is
//! its only implementation; docs/design/mapping.md ("Value table") copies it.
//!
//! Every value, whether decoded from Avro ([`Value::from_datum`]) or read from JSON text
//! ([`parse_lenient`]: the `properties` string of CustomEvent and Purchase, or a dead letter),
//! becomes a [`Value`]. Its Custom HTTP form is [`Value::write_json`] (and `Serialize`); its
//! Heap form is [`heap_form`] (a [`HeapScalar`], which writes its own JSON) and
//! [`write_heap_item_text`] for array items. The Heap form of an Avro value is the
//! Heap form of its Custom HTTP form, so an event read back from a dead letter maps to the
//! same bytes as the event decoded from Avro: replay sends what direct delivery would have.
//!
//! | Value | Custom HTTP form | Heap form |
//! |---|---|---|
//! | null (Avro, JSON) | field left out (in records and at the top), `null` inside arrays and JSON objects | dropped; skipped in arrays |
//! | boolean | `true` / `false` | `"true"` / `"false"` |
//! | Avro int, long; JSON integer with \|n\| ≤ 2^53−1 | the integer | the number |
//! | Avro long, JSON integer with \|n\| > 2^53−1 (any size in JSON) | the exact integer, digit for digit | a string of its digits (a double cannot hold it exactly) |
//! | Avro float (32-bit) | shortest digits that read back as the same f32: `3.14` | that decimal as a number: `3.14` |
//! | Avro double; JSON number with fraction or exponent | shortest round-trip digits (JSON text: as written) | the nearest double, printed shortest |
//! | −0.0 | `-0.0` (sign kept) | `0.0` (Heap gets one zero) |
//! | NaN, +Inf, −Inf (float, double) | the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (JSON has no such numbers) | the same strings |
//! | JSON number beyond the double range (`1e400`, `1e-400`) | a string of its original text, `"1e400"`; counted `number_out_of_range` | the same string |
//! | string | the string | the string, cut to 1023 characters (counted) |
//! | JSON escaped lone surrogate (`"\ud83d"`, `"\udc00"`) | U+FFFD `�` in its place; counted `lone_surrogate` | the same |
//! | other invalid escapes (`\x`, `\u12`), raw control characters, trailing text | the whole text is not JSON: kept as one string; counted `not_json` | one string property named after the field, cut to 1023 |
//! | bytes, fixed | a string with one code point per byte (U+0000–U+00FF; Avro's JSON encoding) | the same string |
//! | enum | its symbol | its symbol |
//! | logical types (decimal, uuid, date, time-*, timestamp-*, duration) | not interpreted: their underlying type (decimal → bytes, timestamp-millis → long, …) | as that type |
//! | array | an array | items' Heap text joined with `\|\|` (nested arrays and objects as their JSON text); empty → dropped |
//! | record, map, JSON object | an object (null record fields left out) | one property per leaf, keys joined with `.` |
//! | JSON nested deeper than [`MAX_DEPTH`] levels | the deeper part as a string of its JSON text; counted `too_deep` | the same string |
//!
//! Strings in Avro are UTF-8 checked by the decoder (invalid UTF-8 fails the object), so
//! surrogates can only arrive as JSON escapes.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::ser::{Error as _, SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;

use super::datum::Datum;

/// JSON containers nested deeper than this (counted from the text's top value) are kept as
/// their JSON text. Real custom properties nest a few levels; the limit bounds recursion.
pub const MAX_DEPTH: usize = 32;

/// Odd values of one text that are reported with their path and text; the rest are
/// counted only.
pub const ODD_DETAILED: usize = 16;
/// A reported path is cut to this many characters (with `…`).
const ODD_PATH_CHARS: usize = 200;

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Integers above this (in magnitude) cannot be held exactly by a double.
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A value on its way to either form: see the module table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Number(Number<'a>),
    String(Cow<'a, str>),
    Array(Vec<Value<'a>>),
    /// Keys in their order; a repeated key is kept (the Heap mapping treats the repeat as
    /// a taken key: see the collision rule in `heap::map`).
    Object(Vec<(Cow<'a, str>, Value<'a>)>),
}

/// A finite number.
#[derive(Debug, Clone, PartialEq)]
pub enum Number<'a> {
    Int(i64),
    F32(f32),
    F64(f64),
    /// JSON number text as written, checked to be within the double range.
    Text(Cow<'a, str>),
}

/// An odd value met while reading JSON text leniently: each has one rule (see the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Oddity {
    LoneSurrogate,
    NumberOutOfRange,
    TooDeep,
    /// The text is not JSON at all: kept whole, as one string.
    NotJson,
}

impl Oddity {
    pub const ALL: [Oddity; 4] = [
        Oddity::LoneSurrogate,
        Oddity::NumberOutOfRange,
        Oddity::TooDeep,
        Oddity::NotJson,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Oddity::LoneSurrogate => "lone_surrogate",
            Oddity::NumberOutOfRange => "number_out_of_range",
            Oddity::TooDeep => "too_deep",
            Oddity::NotJson => "not_json",
        }
    }

    /// What happened to the value, for warnings and reports.
    pub fn rule(self) -> &'static str {
        match self {
            Oddity::LoneSurrogate => "an escaped lone surrogate, replaced by U+FFFD",
            Oddity::NumberOutOfRange => {
                "a number beyond the double range, kept as a string of its text"
            }
            Oddity::TooDeep => "nesting deeper than 32 levels, kept as a string of its JSON text",
            Oddity::NotJson => "not JSON, kept whole as one string",
        }
    }
}

/// One odd value: its kind, where it is (`title`, `cart.items[2]`) and its text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Odd {
    pub kind: Oddity,
    pub path: String,
    pub text: String,
}

/// The Custom HTTP and Heap string for a non-finite float; `None` for a finite one.
pub fn non_finite_name(value: f64) -> Option<&'static str> {
    if value.is_nan() {
        Some("NaN")
    } else if value == f64::INFINITY {
        Some("Infinity")
    } else if value == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

impl<'a> Value<'a> {
    /// The Custom HTTP value of a decoded Avro value.
    pub fn from_datum(datum: &'a Datum) -> Value<'a> {
        match datum {
            Datum::Null => Value::Null,
            Datum::Boolean(b) => Value::Bool(*b),
            Datum::Int(i) => Value::Number(Number::Int(i64::from(*i))),
            Datum::Long(l) => Value::Number(Number::Int(*l)),
            Datum::Float(f) => match non_finite_name(f64::from(*f)) {
                Some(name) => Value::String(Cow::Borrowed(name)),
                None => Value::Number(Number::F32(*f)),
            },
            Datum::Double(d) => match non_finite_name(*d) {
                Some(name) => Value::String(Cow::Borrowed(name)),
                None => Value::Number(Number::F64(*d)),
            },
            Datum::Bytes(b) => {
                Value::String(Cow::Owned(b.iter().map(|&c| char::from(c)).collect()))
            }
            Datum::String(s) => Value::String(Cow::Borrowed(s)),
            Datum::Enum(s) => Value::String(Cow::Borrowed(s)),
            Datum::Array(items) => Value::Array(items.iter().map(Value::from_datum).collect()),
            Datum::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Value::from_datum(v)))
                    .collect(),
            ),
            Datum::Record(shape, values) => Value::Object(
                shape
                    .fields
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| !matches!(v, Datum::Null))
                    .map(|(f, v)| (Cow::Borrowed(&*f.name), Value::from_datum(v)))
                    .collect(),
            ),
        }
    }

    /// The compact Custom HTTP JSON text, byte for byte what `serde_json` prints for it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => n.write_json(out),
            Value::String(s) => write_str(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_json(out);
                }
                out.push(b']');
            }
            Value::Object(fields) => {
                out.push(b'{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(out, key);
                    out.push(b':');
                    value.write_json(out);
                }
                out.push(b'}');
            }
        }
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        self.write_json(&mut out);
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping, so that both printers agree byte for byte.
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

/// Writes what `serde_json` prints for a number (ryu's shortest digits for floats, itoa for
/// integers): the printer behind both forms, so that they agree byte for byte.
fn write_number(out: &mut Vec<u8>, number: &impl Serialize) {
    serde_json::to_writer(out, number).expect("finite numbers print");
}

impl Number<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Number::Int(i) => write_number(out, i),
            Number::F32(f) => write_number(out, f),
            Number::F64(d) => write_number(out, d),
            Number::Text(t) => out.extend_from_slice(t.as_bytes()),
        }
    }

    /// The Heap form: a number, or the exact digits of an integer a double cannot hold.
    pub fn heap(&self) -> HeapScalar<'_> {
        match self {
            Number::Int(i) => heap_integer(*i, None),
            // The decimal printed for the f32 (`12.34`), read as a double: not 12.3400001.
            // Printed on the stack: this runs for every float field of every event.
            Number::F32(f) => {
                let mut buf = [0u8; 32];
                let mut rest = &mut buf[..];
                serde_json::to_writer(&mut rest, f).expect("an f32 prints in 32 bytes");
                let len = 32 - rest.len();
                let text = std::str::from_utf8(&buf[..len]).expect("digits are ASCII");
                let value = text.parse().unwrap_or(f64::from(*f));
                heap_double(value).unwrap_or_else(|| HeapScalar::String(text.to_string().into()))
            }
            Number::F64(d) => heap_double(*d).unwrap_or(HeapScalar::String(Cow::Borrowed(""))),
            Number::Text(t) => heap_number_text(t),
        }
    }
}

/// A scalar's Heap form (see the module table): a string or a number. Borrowed from the
/// value where it can be, and written straight into the bulk body by the Heap mapper.
#[derive(Debug, Clone, PartialEq)]
pub enum HeapScalar<'a> {
    /// An integer a double holds exactly: |n| ≤ 2^53−1.
    Int(i64),
    /// A finite double; zero is always +0.0.
    Double(f64),
    String(Cow<'a, str>),
}

impl HeapScalar<'_> {
    /// Its JSON text, byte for byte what `serde_json` prints for [`HeapScalar::to_json`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            HeapScalar::Int(i) => write_number(out, i),
            HeapScalar::Double(d) => write_number(out, d),
            HeapScalar::String(s) => write_str(out, s),
        }
    }

    /// As text to join array items with: a string as it is, a number as its JSON text.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        match self {
            HeapScalar::String(s) => out.extend_from_slice(s.as_bytes()),
            number => number.write_json(out),
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            HeapScalar::Int(i) => Json::from(*i),
            HeapScalar::Double(d) => Json::from(*d),
            HeapScalar::String(s) => Json::String(s.to_string()),
        }
    }
}

fn heap_integer(value: i64, text: Option<&str>) -> HeapScalar<'_> {
    if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&value) {
        HeapScalar::Int(value)
    } else {
        HeapScalar::String(text.map_or_else(|| Cow::Owned(value.to_string()), Cow::Borrowed))
    }
}

/// A finite double's Heap form, with one zero; `None` for NaN and ±Inf.
fn heap_double(value: f64) -> Option<HeapScalar<'static>> {
    match value {
        // −0.0 too: Heap gets one zero.
        _ if value == 0.0 => Some(HeapScalar::Double(0.0)),
        _ if value.is_finite() => Some(HeapScalar::Double(value)),
        _ => None,
    }
}

/// JSON number text (grammar already checked) in its Heap form.
fn heap_number_text(text: &str) -> HeapScalar<'_> {
    let is_integer = !text.contains(['.', 'e', 'E']);
    if is_integer {
        // "-0" is zero; anything beyond i64 is beyond 2^53 as well.
        return match text.parse::<i64>() {
            Ok(value) => heap_integer(value, Some(text)),
            Err(_) => HeapScalar::String(Cow::Borrowed(text)),
        };
    }
    match text.parse::<f64>() {
        Ok(value) if value != 0.0 || !nonzero_mantissa(text) => {
            heap_double(value).unwrap_or(HeapScalar::String(Cow::Borrowed(text)))
        }
        _ => HeapScalar::String(Cow::Borrowed(text)),
    }
}

fn nonzero_mantissa(text: &str) -> bool {
    text.bytes()
        .take_while(|b| !matches!(b, b'e' | b'E'))
        .any(|b| matches!(b, b'1'..=b'9'))
}

/// A scalar's Heap form; `None` for null. Arrays and objects are flattened by the Heap
/// mapper and have no scalar form.
pub fn heap_form<'v>(value: &'v Value<'_>) -> Option<HeapScalar<'v>> {
    match value {
        Value::Null | Value::Array(_) | Value::Object(_) => None,
        Value::Bool(b) => Some(HeapScalar::String(Cow::Borrowed(if *b {
            "true"
        } else {
            "false"
        }))),
        Value::Number(n) => Some(n.heap()),
        Value::String(s) => Some(HeapScalar::String(Cow::Borrowed(s))),
    }
}

/// Appends an array item as text for `||` joining: a scalar's Heap form as text, a nested
/// array or object as its JSON text. `false` (nothing written) for null.
pub fn write_heap_item_text(value: &Value, out: &mut Vec<u8>) -> bool {
    match value {
        Value::Null => false,
        Value::Array(_) | Value::Object(_) => {
            value.write_json(out);
            true
        }
        scalar => match heap_form(scalar) {
            Some(form) => {
                form.write_text(out);
                true
            }
            None => false,
        },
    }
}

/// Serializes the Custom HTTP form. Number text is passed through as a raw JSON value, so
/// this prints exactly with `serde_json`, the only serializer the crate uses.
impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(Number::Int(i)) => serializer.serialize_i64(*i),
            Value::Number(Number::F32(f)) => serializer.serialize_f32(*f),
            Value::Number(Number::F64(d)) => serializer.serialize_f64(*d),
            Value::Number(Number::Text(t)) => {
                serde_json::value::RawValue::from_string(t.to_string())
                    .map_err(S::Error::custom)?
                    .serialize(serializer)
            }
            Value::String(s) => serializer.serialize_str(s),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Reads JSON text by RFC 8259's grammar, applying the table's rule to each odd value
/// instead of refusing the text as `serde_json` does. `Err` (with the reason) only when the
/// text is not JSON at all.
pub fn parse_lenient(text: &str) -> Result<(Value<'_>, Vec<Odd>), String> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        odd: Vec::new(),
        path: String::new(),
    };
    parser.whitespace();
    let value = parser.value(0)?;
    parser.whitespace();
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("trailing characters after the JSON value"));
    }
    Ok((value, parser.odd))
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    odd: Vec<Odd>,
    /// Where the parser is, as a dotted key with `[i]` for array items.
    path: String,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &str) -> String {
        format!(
            "{what} at character {}",
            self.text[..self.pos.min(self.text.len())].chars().count() + 1
        )
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Notes an odd value. Only the first [`ODD_DETAILED`] of a text keep their path and
    /// text, each cut short: a crafted text with thousands of odd values under long keys
    /// would otherwise copy its whole path into every one (4 GB from a 382 KB object).
    fn odd(&mut self, kind: Oddity, text: &str) {
        let detailed = self.odd.len() < ODD_DETAILED;
        self.odd.push(Odd {
            kind,
            path: if detailed {
                shorten(&self.path, ODD_PATH_CHARS)
            } else {
                String::new()
            },
            text: if detailed {
                text.chars().take(64).collect()
            } else {
                String::new()
            },
        });
    }

    fn literal(&mut self, word: &str, value: Value<'a>) -> Result<Value<'a>, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("unexpected character"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, String> {
        match self.peek() {
            None => Err(self.error("unexpected end of text")),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[' | b'{') if depth >= MAX_DEPTH => {
                let start = self.pos;
                self.skip_container()?;
                let raw = &self.text[start..self.pos];
                self.odd(Oddity::TooDeep, raw);
                Ok(Value::String(Cow::Borrowed(raw)))
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.whitespace();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                loop {
                    let len = self.path.len();
                    // Written in place: a `format!` here allocated once per array item.
                    let _ = write!(self.path, "[{}]", items.len());
                    self.whitespace();
                    items.push(self.value(depth + 1)?);
                    self.path.truncate(len);
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        _ => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            Some(b'{') => {
                self.pos += 1;
                let mut fields = Vec::new();
                self.whitespace();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(Value::Object(fields));
                }
                loop {
                    self.whitespace();
                    if self.peek() != Some(b'"') {
                        return Err(self.error("expected a key"));
                    }
                    let key = self.string()?;
                    self.whitespace();
                    if self.peek() != Some(b':') {
                        return Err(self.error("expected `:`"));
                    }
                    self.pos += 1;
                    self.whitespace();
                    let len = self.path.len();
                    if len > 0 {
                        self.path.push('.');
                    }
                    self.path.push_str(&key);
                    let value = self.value(depth + 1)?;
                    self.path.truncate(len);
                    fields.push((key, value));
                    self.whitespace();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(Value::Object(fields));
                        }
                        _ => return Err(self.error("expected `,` or `}`")),
                    }
                }
            }
            Some(_) => Err(self.error("unexpected character")),
        }
    }

    /// Skips a balanced array or object without recursion (strings respected).
    fn skip_container(&mut self) -> Result<(), String> {
        let mut open = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'[' | b'{' => open += 1,
                b']' | b'}' => {
                    open -= 1;
                    if open == 0 {
                        self.pos += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.pos += 1;
        }
        Err(self.error("unexpected end of text"))
    }

    fn number(&mut self) -> Result<Value<'a>, String> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while let Some(b'0'..=b'9') = p.peek() {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.error("invalid number"));
            }
        }
        let text = &self.text[start..self.pos];
        if !integer {
            let in_range = text
                .parse::<f64>()
                .is_ok_and(|v| v.is_finite() && (v != 0.0 || !nonzero_mantissa(text)));
            if !in_range {
                self.odd(Oddity::NumberOutOfRange, text);
                return Ok(Value::String(Cow::Borrowed(text)));
            }
        }
        Ok(Value::Number(Number::Text(Cow::Borrowed(text))))
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let digits = self.bytes.get(at..at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(text, 16).ok()
    }

    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        self.pos += 1;
        let start = self.pos;
        // Fast path: no escapes, borrowed.
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    let escape_at = self.pos;
                    self.pos += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let Some(unit) = self.hex4(self.pos + 1) else {
                                return Err(self.error("invalid \\u escape"));
                            };
                            self.pos += 4;
                            match unit {
                                0xD800..=0xDBFF => {
                                    let low = (self.bytes.get(self.pos + 1..self.pos + 3)
                                        == Some(b"\\u"))
                                    .then(|| self.hex4(self.pos + 3))
                                    .flatten()
                                    .filter(|low| (0xDC00..=0xDFFF).contains(low));
                                    match low {
                                        Some(low) => {
                                            self.pos += 6;
                                            char::from_u32(
                                                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00),
                                            )
                                            .expect("a surrogate pair is a code point")
                                        }
                                        None => {
                                            let raw = &self.text[escape_at..self.pos + 1];
                                            self.odd(Oddity::LoneSurrogate, raw);
                                            char::REPLACEMENT_CHARACTER
                                        }
                                    }
                                }
                                0xDC00..=0xDFFF => {
                                    let raw = &self.text[escape_at..self.pos + 1];
                                    self.odd(Oddity::LoneSurrogate, raw);
                                    char::REPLACEMENT_CHARACTER
                                }
                                _ => char::from_u32(unit).expect("not a surrogate"),
                            }
                        }
                        _ => return Err(self.error("invalid escape")),
                    };
                    out.push(c);
                    self.pos += 1;
                }
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => {
                    // Copy a run of plain characters at once (UTF-8 boundaries are safe: the
                    // run stops only at ASCII bytes).
                    let run = self.pos;
                    while let Some(b) = self.peek() {
                        if b == b'"' || b == b'\\' || b < 0x20 {
                            break;
                        }
                        self.pos += 1;
                    }
                    out.push_str(&self.text[run..self.pos]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`heap_form`] as a `serde_json` value, to compare with expected values.
    fn heap_scalar(value: &Value) -> Option<Json> {
        heap_form(value).map(|form| form.to_json())
    }

    #[test]
    fn many_odd_values_under_long_keys_keep_memory_bounded() {
        let key = "k".repeat(20_000);
        let mut text = String::new();
        for _ in 0..10 {
            text.push_str(&format!("{{\"{key}\":"));
        }
        text.push('[');
        text.push_str(&vec!["\"\\ud800\""; 20_000].join(","));
        text.push(']');
        text.push_str(&"}".repeat(10));
        let (_, odd) = parse_lenient(&text).unwrap();
        assert_eq!(odd.len(), 20_000, "every odd value is counted");
        let kept: usize = odd.iter().map(|o| o.path.len() + o.text.len()).sum();
        assert!(kept < ODD_DETAILED * 1_000, "{kept} bytes of paths kept");
        assert!(odd[0].path.ends_with('…') && odd[ODD_DETAILED].path.is_empty());
    }

    fn kinds(odd: &[Odd]) -> Vec<(Oddity, &str)> {
        odd.iter().map(|o| (o.kind, o.path.as_str())).collect()
    }

    #[test]
    fn lone_surrogates_become_the_replacement_character() {
        let (value, odd) = parse_lenient(
            r#"{"plan":"pro","title":"Cafe \ud83d","ok":"\ud83d\ude00","low":"\udc00x"}"#,
        )
        .unwrap();
        assert_eq!(
            value.to_json(),
            r#"{"plan":"pro","title":"Cafe �","ok":"😀","low":"�x"}"#
        );
        assert_eq!(
            kinds(&odd),
            [
                (Oddity::LoneSurrogate, "title"),
                (Oddity::LoneSurrogate, "low")
            ]
        );
        assert_eq!(odd[0].text, r"\ud83d");
        // A high surrogate followed by an escape that is not a low one: both kept apart.
        let (value, odd) = parse_lenient(r#"["\ud83d\u0041"]"#).unwrap();
        assert_eq!(value.to_json(), r#"["�A"]"#);
        assert_eq!(kinds(&odd), [(Oddity::LoneSurrogate, "[0]")]);
    }

    #[test]
    fn numbers_beyond_the_double_range_become_their_text() {
        let (value, odd) =
            parse_lenient(r#"{"seats":2,"ratio":1e400,"tiny":-1e-400,"zero":0e-999,"big":123456789012345678901234567890}"#)
                .unwrap();
        assert_eq!(
            value.to_json(),
            r#"{"seats":2,"ratio":"1e400","tiny":"-1e-400","zero":0e-999,"big":123456789012345678901234567890}"#
        );
        assert_eq!(
            kinds(&odd),
            [
                (Oddity::NumberOutOfRange, "ratio"),
                (Oddity::NumberOutOfRange, "tiny")
            ]
        );
        let Value::Object(fields) = value else {
            panic!()
        };
        assert_eq!(heap_scalar(&fields[3].1), Some(Json::from(0.0)));
        assert_eq!(
            heap_scalar(&fields[4].1),
            Some(Json::from("123456789012345678901234567890"))
        );
    }

    #[test]
    fn deep_nesting_is_kept_as_text_and_bad_grammar_is_not_json() {
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let (value, odd) = parse_lenient(&deep).unwrap();
        assert_eq!(kinds(&odd).len(), 1);
        assert_eq!(odd[0].kind, Oddity::TooDeep);
        let kept = format!("\"{}1{}\"", "[".repeat(8), "]".repeat(8));
        let expected = format!("{}{kept}{}", "[".repeat(32), "]".repeat(32));
        assert_eq!(value.to_json(), expected);
        for bad in [
            "{not json",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{} x",
            "",
            "[1,]",
            "01",
            "\"a\u{1}\"",
        ] {
            assert!(parse_lenient(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_table_for_avro_values() {
        let cases: Vec<(Datum, &str, Json)> = vec![
            (Datum::Float(f32::NAN), r#""NaN""#, Json::from("NaN")),
            (
                Datum::Double(f64::INFINITY),
                r#""Infinity""#,
                Json::from("Infinity"),
            ),
            (
                Datum::Float(f32::NEG_INFINITY),
                r#""-Infinity""#,
                Json::from("-Infinity"),
            ),
            (Datum::Float(12.34), "12.34", serde_json::json!(12.34)),
            (Datum::Double(-0.0), "-0.0", serde_json::json!(0.0)),
            (
                Datum::Long(1 << 53),
                "9007199254740992",
                Json::from("9007199254740992"),
            ),
            (
                Datum::Long((1 << 53) - 1),
                "9007199254740991",
                Json::from(9007199254740991i64),
            ),
            (Datum::Bytes(vec![104, 0xff]), r#""hÿ""#, Json::from("hÿ")),
        ];
        for (datum, custom_http, heap) in cases {
            let value = Value::from_datum(&datum);
            assert_eq!(value.to_json(), custom_http, "{datum:?}");
            assert_eq!(serde_json::to_string(&value).unwrap(), custom_http);
            assert_eq!(heap_scalar(&value), Some(heap.clone()), "{datum:?}");
            // Read back from the Custom HTTP text, the Heap form is the same.
            let (back, odd) = parse_lenient(custom_http).unwrap();
            assert!(odd.is_empty());
            assert_eq!(heap_scalar(&back), Some(heap), "{datum:?} read back");
        }
    }
}
