//! Finding Currents objects in the source store.
//!
//! Braze writes `<prefix>/dataexport.<...>/event_type=<type>/date=<YYYY-MM-DD-HH>/...avro`.
//! Discovery finds the `event_type=` folders with delimiter listings (one call per level),
//! then lists only the `date=` hours of the window asked for, so a poll costs
//! event types × hours listings however much history the bucket holds. A listing of
//! everything (`Window::All`) also reports `.avro` keys outside the layout. Objects that are
//! not `.avro` are ignored; last-modified times are never used.

use std::collections::BTreeSet;

use crate::currents::key::{CurrentsKey, DateHour};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// A Currents object to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentsObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub event_type: String,
    pub date: DateHour,
}

/// Which `date=` partitions to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    /// Every object under the source.
    All,
    /// `from` inclusive, `to` exclusive, by `date=` hour.
    Hours { from: DateHour, to: DateHour },
}

/// What a discovery found.
#[derive(Debug, Default)]
pub struct Discovery {
    pub objects: Vec<CurrentsObject>,
    /// `.avro` keys outside the Currents layout, to be reported and recorded as failed.
    pub outside_layout: Vec<ObjectMeta>,
    /// `event_type=` folders found. None means the source is empty or not a Currents bucket
    /// (a wrong prefix, a directory that moved): callers warn.
    pub folders: usize,
}

/// How deep below the source prefix `event_type=` folders are searched for.
const MAX_DEPTH: usize = 4;

pub async fn discover(store: &dyn ObjectStore, window: &Window) -> Result<Discovery, StoreError> {
    let mut discovery = Discovery::default();
    match window {
        Window::All => {
            for meta in store.list("").await? {
                classify(meta, &mut discovery);
            }
            discovery.folders = discovery
                .objects
                .iter()
                .filter_map(|o| o.key.split_once("/date=").map(|(folder, _)| folder))
                .collect::<BTreeSet<_>>()
                .len();
        }
        Window::Hours { from, to } => {
            let hours = hours_between(*from, *to);
            let folders = event_type_folders(store).await?;
            discovery.folders = folders.len();
            for folder in folders {
                for hour in &hours {
                    for meta in store.list(&format!("{folder}date={hour}/")).await? {
                        classify(meta, &mut discovery);
                    }
                }
            }
        }
    }
    discovery
        .objects
        .sort_by(|a, b| (a.date, &a.key).cmp(&(b.date, &b.key)));
    Ok(discovery)
}

fn classify(meta: ObjectMeta, discovery: &mut Discovery) {
    if !meta.key.ends_with(".avro") {
        return;
    }
    let parsed = CurrentsKey::parse(&meta.key);
    match (parsed.event_type, parsed.date) {
        (Some(event_type), Some(date)) => discovery.objects.push(CurrentsObject {
            event_type: event_type.to_string(),
            date,
            key: meta.key,
            size: meta.size,
            etag: meta.etag,
        }),
        _ => discovery.outside_layout.push(meta),
    }
}

/// The `.../event_type=<type>/` folders under the source, found breadth-first.
pub async fn event_type_folders(store: &dyn ObjectStore) -> Result<Vec<String>, StoreError> {
    let mut found = BTreeSet::new();
    let mut level = vec![String::new()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for prefix in level {
            for folder in store.list_folders(&prefix).await? {
                let name = folder
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default();
                if name.starts_with("event_type=") {
                    found.insert(folder);
                } else if !name.starts_with("date=") {
                    next.push(folder);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Ok(found.into_iter().collect())
}

/// Every hour from `from` (inclusive) to `to` (exclusive).
pub fn hours_between(from: DateHour, to: DateHour) -> Vec<DateHour> {
    (from.hours_since_epoch()..to.hours_since_epoch())
        .map(DateHour::from_hours_since_epoch)
        .collect()
}

/// Parses a `--from`/`--to` date: `YYYY-MM-DD` (hour 00) or `YYYY-MM-DDTHH`.
pub fn parse_date_arg(text: &str) -> Result<DateHour, String> {
    let text = text.trim();
    let candidate = match text.split_once('T') {
        Some((day, hour)) => format!("{day}-{hour}"),
        None => format!("{text}-00"),
    };
    DateHour::parse(&candidate)
        .ok_or_else(|| format!("`{text}` is not a date: expected YYYY-MM-DD or YYYY-MM-DDTHH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_arithmetic_round_trips_across_months_and_leap_days() {
        let d = DateHour::parse("2024-02-28-23").unwrap();
        let hours = hours_between(d, DateHour::parse("2024-03-01-01").unwrap());
        assert_eq!(hours.len(), 26);
        assert_eq!(hours[1].to_string(), "2024-02-29-00");
        assert_eq!(hours[25].to_string(), "2024-03-01-00");
        for n in [0, 1, 400_000, 500_000] {
            assert_eq!(DateHour::from_hours_since_epoch(n).hours_since_epoch(), n);
        }
    }

    #[test]
    fn parses_backfill_dates() {
        assert_eq!(
            parse_date_arg("2026-11-27").unwrap().to_string(),
            "2026-11-27-00"
        );
        assert_eq!(
            parse_date_arg("2026-11-27T13").unwrap().to_string(),
            "2026-11-27-13"
        );
        assert!(parse_date_arg("2026-11-27T24").is_err());
        assert!(
            parse_date_arg("27/11/2026")
                .unwrap_err()
                .contains("YYYY-MM-DD")
        );
    }
}
