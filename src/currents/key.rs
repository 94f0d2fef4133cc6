//! The Currents object key layout (currents-facts §1):
//!
//! ```text
//! <prefix>/dataexport.<cluster>.<connector>.integration.<id>/event_type=<type>/date=<YYYY-MM-DD-HH>/<schema-id>/<zone>/<name>+<partition>+<offset>.avro
//! ```
//!
//! Braze warns that file naming may change, so only the `event_type=` and `date=` segments are
//! interpreted; every other segment is opaque.

use std::fmt;

use crate::clock::{civil_from_days, days_from_civil};

/// The parts of an object key that carry meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentsKey<'a> {
    /// From the `event_type=` segment, e.g. `users.behaviors.CustomEvent`.
    pub event_type: Option<&'a str>,
    /// From the `date=` segment: the UTC hour Braze queued the events, not their event time.
    pub date: Option<DateHour>,
}

impl<'a> CurrentsKey<'a> {
    /// Reads the meaningful segments of a key or local path (either separator).
    pub fn parse(key: &'a str) -> Self {
        let mut parsed = CurrentsKey {
            event_type: None,
            date: None,
        };
        for segment in key.split(['/', '\\']) {
            if let Some(event_type) = segment.strip_prefix("event_type=") {
                parsed.event_type = Some(event_type).filter(|t| !t.is_empty());
            } else if let Some(date) = segment.strip_prefix("date=") {
                parsed.date = DateHour::parse(date);
            }
        }
        parsed
    }
}

/// Why a key is outside the Currents layout, as the failed record's reason says it: what is
/// actually wrong (no `event_type=` segment, an empty one, no `date=` segment, or a `date=`
/// segment that is not an hour), not a blanket "no event_type= and date= segments". `None`
/// for a key in the layout. Segments are quoted as they are: keys are not secrets.
pub fn layout_problem(key: &str) -> Option<String> {
    let mut event_type = None;
    let mut date = None;
    for segment in key.split(['/', '\\']) {
        if let Some(value) = segment.strip_prefix("event_type=") {
            event_type = Some(value);
        } else if let Some(value) = segment.strip_prefix("date=") {
            date = Some(value);
        }
    }
    let problems: Vec<String> = [
        match event_type {
            None => Some("it has no event_type= segment".to_string()),
            Some("") => Some("its event_type= segment is empty".to_string()),
            Some(_) => None,
        },
        match date {
            None => Some("it has no date= segment".to_string()),
            Some(value) if DateHour::parse(value).is_none() => Some(format!(
                "its date= segment `{value}` is not a date=YYYY-MM-DD-HH hour"
            )),
            Some(_) => None,
        },
    ]
    .into_iter()
    .flatten()
    .collect();
    (!problems.is_empty()).then(|| {
        format!(
            "the key is outside the Currents layout: {}",
            problems.join(", and ")
        )
    })
}

/// One `date=` partition: a UTC hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DateHour {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
}

impl DateHour {
    /// Parses `YYYY-MM-DD-HH`; anything else (including impossible dates) is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('-');
        let mut next = |len: usize| {
            parts
                .next()
                .filter(|p| p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u16>().ok())
        };
        let (year, month, day, hour) = (next(4)?, next(2)?, next(2)?, next(2)?);
        if parts.next().is_some() {
            return None;
        }
        let date = DateHour {
            year,
            month: month as u8,
            day: day as u8,
            hour: hour as u8,
        };
        let exists = days_from_civil(i32::from(year), date.month, date.day).is_some();
        (exists && date.hour < 24).then_some(date)
    }

    /// Parses a date as people type it (`backfill --from`/`--to`): `YYYY-MM-DD` (hour 00) or
    /// `YYYY-MM-DDTHH`; the error says which forms are taken.
    pub fn parse_arg(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let candidate = match text.split_once('T') {
            Some((day, hour)) => format!("{day}-{hour}"),
            None => format!("{text}-00"),
        };
        DateHour::parse(&candidate)
            .ok_or_else(|| format!("`{text}` is not a date: expected YYYY-MM-DD or YYYY-MM-DDTHH"))
    }
}

impl DateHour {
    /// Hours since 1970-01-01T00 UTC, for hour arithmetic.
    pub fn hours_since_epoch(self) -> i64 {
        // Only `parse` and `from_hours_since_epoch` make a DateHour, so the date exists.
        days_from_civil(i32::from(self.year), self.month, self.day).unwrap_or_default() * 24
            + i64::from(self.hour)
    }

    /// The hour `hours` after 1970-01-01T00, saturating at the years 0 and 9999.
    pub fn from_hours_since_epoch(hours: i64) -> Self {
        let (year, month, day) = civil_from_days(hours.div_euclid(24));
        DateHour {
            year: year.clamp(0, 9999) as u16,
            month,
            day,
            hour: hours.rem_euclid(24) as u8,
        }
    }

    /// The current UTC hour.
    pub fn now() -> Self {
        DateHour::from_hours_since_epoch(crate::clock::unix_secs_now().div_euclid(3600))
    }
}

impl fmt::Display for DateHour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}-{:02}",
            self.year, self.month, self.day, self.hour
        )
    }
}

/// The parts of a key Braze generates; used to lay out fixtures and test buckets.
#[derive(Debug, Clone)]
pub struct KeyLayout<'a> {
    pub prefix: &'a str,
    pub cluster: &'a str,
    pub connector: &'a str,
    pub integration_id: &'a str,
    pub schema_id: u32,
    pub zone: &'a str,
}

impl KeyLayout<'_> {
    pub fn object_key(
        &self,
        event_type: &str,
        date: DateHour,
        partition: u32,
        offset: u64,
    ) -> String {
        let integration = format!(
            "dataexport.{}.{}.integration.{}",
            self.cluster, self.connector, self.integration_id
        );
        let prefix = self.prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        format!(
            "{prefix}{integration}/event_type={event_type}/date={date}/{}/{}/{integration}+{partition}+{offset:010}.avro",
            self.schema_id, self.zone
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_layout_and_round_trips_it() {
        let layout = KeyLayout {
            prefix: "currents",
            cluster: "prod-03",
            connector: "S3",
            integration_id: "5f0c2a9e8b7d6c5b4a392817",
            schema_id: 612,
            zone: "zone-a",
        };
        let date = DateHour::parse("2026-11-27-13").unwrap();
        let key = layout.object_key("users.behaviors.CustomEvent", date, 2, 35465);
        assert_eq!(
            key,
            "currents/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817/event_type=users.behaviors.CustomEvent/date=2026-11-27-13/612/zone-a/dataexport.prod-03.S3.integration.5f0c2a9e8b7d6c5b4a392817+2+0000035465.avro"
        );
        let parsed = CurrentsKey::parse(&key);
        assert_eq!(parsed.event_type, Some("users.behaviors.CustomEvent"));
        assert_eq!(parsed.date, Some(date));
        assert_eq!(date.to_string(), "2026-11-27-13");
    }

    #[test]
    fn keys_outside_the_layout_have_no_meaning() {
        let parsed = CurrentsKey::parse(
            "dataexport.S3.integration.599f118afbe76a01c513c63c+2+0000035465.avro",
        );
        assert_eq!(
            parsed,
            CurrentsKey {
                event_type: None,
                date: None
            }
        );
        assert_eq!(CurrentsKey::parse("a/event_type=/b").event_type, None);
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "2026-02-29-00",
            "2024-13-01-00",
            "2024-01-01-24",
            "2024-1-01-00",
            "2024-01-01",
            "2024-01-01-00-00",
            "x",
        ] {
            assert_eq!(DateHour::parse(bad), None, "{bad}");
        }
        assert!(DateHour::parse("2024-02-29-23").is_some());
    }

    #[test]
    fn parses_backfill_dates() {
        assert_eq!(
            DateHour::parse_arg("2026-11-27").unwrap().to_string(),
            "2026-11-27-00"
        );
        assert_eq!(
            DateHour::parse_arg("2026-11-27T13").unwrap().to_string(),
            "2026-11-27-13"
        );
        assert!(DateHour::parse_arg("2026-11-27T24").is_err());
        assert!(
            DateHour::parse_arg("27/11/2026")
                .unwrap_err()
                .contains("YYYY-MM-DD")
        );
    }

    #[test]
    fn layout_problem_says_what_is_wrong() {
        assert_eq!(
            super::layout_problem("p/event_type=X/date=garbage/x.avro").as_deref(),
            Some(
                "the key is outside the Currents layout: its date= segment `garbage` is not a date=YYYY-MM-DD-HH hour"
            )
        );
        assert_eq!(
            super::layout_problem("p/date=2026-11-27-13/x.avro").as_deref(),
            Some("the key is outside the Currents layout: it has no event_type= segment")
        );
        assert_eq!(
            super::layout_problem("p/event_type=/x.avro").as_deref(),
            Some(
                "the key is outside the Currents layout: its event_type= segment is empty, and it has no date= segment"
            )
        );
        assert_eq!(
            super::layout_problem("p/event_type=X/date=2026-11-27-13/612/x.avro"),
            None
        );
        // Exactly the keys `CurrentsKey::parse` finds outside the layout.
        for key in [
            "a/event_type=X/date=2026-02-30-01/x",
            "event_type=X/date=2026-11-27-24/x",
        ] {
            let parsed = super::CurrentsKey::parse(key);
            assert!(parsed.event_type.is_none() || parsed.date.is_none());
            assert!(super::layout_problem(key).is_some(), "{key}");
        }
    }
}
