//! The value types and serde adapters behind [`Config`](super::Config)'s fields, shared with
//! the clap structs so that a value reads and prints the same in a flag, a variable and the
//! file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration kept as it was written (`500ms`, `15m`, `1h 30m`), so that `--print-config`
/// prints exactly what was given and it reads back the same. Parsed by
/// [`crate::clock::parse_duration`] (humantime's units, at most 400 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    duration: Duration,
    text: String,
}

impl HumanDuration {
    pub fn get(&self) -> Duration {
        self.duration
    }

    pub(super) fn millis(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_millis(n),
            text: format!("{n}ms"),
        }
    }

    pub(super) fn seconds(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_secs(n),
            text: format!("{n}s"),
        }
    }

    pub(super) fn hours(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_secs(n * 3600),
            text: format!("{n}h"),
        }
    }

    pub(super) fn minutes(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_secs(n * 60),
            text: format!("{n}m"),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(HumanDuration {
            duration: crate::clock::parse_duration(text)?,
            text: text.trim().to_string(),
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        as_text::deserialize(d)
    }
}

/// A value that is never shown: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The longest Heap environment id taken: ids are up to about 10 digits; 20 holds any u64.
const APP_ID_MAX_DIGITS: usize = 20;

/// The Heap environment (app) id in `text`, from `origin` (`HEAP_APP_ID`, `--heap-app-id` or
/// the file): a UTF-8 byte order mark (Notepad, PowerShell) and surrounding whitespace are
/// dropped; `None` if nothing is left. Anything but digits is refused, so that a line copied
/// from a .env file (`HEAP_APP_ID=…`) is not sent as the id; the error never holds the value,
/// which is a secret.
pub fn heap_app_id(text: &str, origin: &str) -> Result<Option<Secret>, String> {
    let id = text.trim_start_matches('\u{feff}').trim();
    if id.is_empty() {
        return Ok(None);
    }
    if id.len() <= APP_ID_MAX_DIGITS && id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Some(Secret(id.to_string())));
    }
    let hint = if id.contains('=') {
        "; it looks like a NAME=VALUE line: give the id alone"
    } else {
        ""
    };
    Err(format!(
        "{origin}: not a Heap environment id, which is digits only (the value is not shown){hint}"
    ))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serde through `Display` and `FromStr`: locations, lookbacks and durations are strings in
/// the file exactly as on the command line.
pub mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// `identity` as the Braze field names.
pub mod identity_names {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::heap::map::IdentitySource;

    pub fn name(source: &IdentitySource) -> &'static str {
        match source {
            IdentitySource::ExternalUserId => "external_user_id",
            IdentitySource::UserId => "user_id",
        }
    }

    pub fn serialize<S: Serializer>(sources: &[IdentitySource], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(sources.iter().map(name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IdentitySource>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(de::Error::custom))
            .collect()
    }
}

/// `user_properties` as the allowlist names. Reading skips blank entries (an empty
/// variable, a trailing comma: the output stays off) and keeps the first of duplicates; an
/// unknown name is an error that quotes it and lists the names.
pub mod property_fields {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::heap::properties::Field;

    pub fn serialize<S: Serializer>(fields: &[Field], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(fields.iter().map(|f| f.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Field>, D::Error> {
        let mut fields: Vec<Field> = Vec::new();
        for text in Vec::<String>::deserialize(d)? {
            if text.trim().is_empty() {
                continue;
            }
            let field: Field = text.parse().map_err(de::Error::custom)?;
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        Ok(fields)
    }
}

/// `--rename` pairs as the `[rename]` table.
pub fn renames_as_table<S: Serializer>(
    pairs: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}
