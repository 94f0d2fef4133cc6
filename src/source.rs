//! Finding Currents objects in the source store.
//!
//! Braze writes `<prefix>/dataexport.<...>/event_type=<type>/date=<YYYY-MM-DD-HH>/...avro`.
//! Discovery finds the `event_type=` folders with delimiter listings (one call per level,
//! about 2 in all), then lists each folder once over the window's hours with
//! [`ObjectStore::list_range`]: `date=` folders sort by hour, so the window is one slice of
//! the folder's keys. A poll costs about 2 + one listing per event type (per 1,000 objects
//! in the window), however much history the bucket holds and however long the window.
//! A listing of everything (`Window::All`) also reports `.avro` keys outside the layout.
//! Objects that are not `.avro` are ignored; last-modified times are never used.

use std::collections::BTreeSet;

use futures_util::StreamExt;

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
    /// The `event_type=` folders found, each ending in `/` (with `Window::All`: those holding
    /// objects). None means the source is empty or not a Currents bucket (a wrong prefix, a
    /// directory that moved): callers warn.
    pub folders: Vec<String>,
    /// Folders whose listing failed, each with the error (which names the folder): the
    /// others' objects are still found, so one folder a store cannot list (an Azure blob name
    /// object_store refuses, an access error on one prefix) stops only itself.
    pub failed: Vec<StoreError>,
}

type BoxedListing<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<(&'a str, Vec<ObjectMeta>), StoreError>>
            + Send
            + 'a,
    >,
>;

/// How deep below the source prefix `event_type=` folders are searched for.
const MAX_DEPTH: usize = 4;

/// Folders listed at once: enough to hide S3's latency behind each other, few enough not to
/// be throttled or to hold many listings in memory.
pub const LISTING_CONCURRENCY: usize = 8;

/// Finds the objects of the window. `Window::Hours` costs the folder listings plus one ranged
/// listing per `event_type=` folder (a request per 1,000 keys in the window); `Window::All`
/// lists everything. Errors name the store and the prefix that failed.
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
                .filter_map(|o| event_type_folder(&o.key))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(str::to_string)
                .collect();
        }
        Window::Hours { from, to } => {
            let folders = event_type_folders(store).await?;
            // Boxed as `dyn Send` futures: a closure returning an async block here makes the
            // caller's future fail to be `Send` for all lifetimes (rust-lang/rust#102211), and
            // `Engine::drive` must be spawnable.
            let listings: Vec<BoxedListing<'_>> = folders
                .iter()
                .map(|folder| {
                    Box::pin(async move {
                        let listed = store
                            .list_range(
                                folder,
                                &hour_bound(folder, *from),
                                Some(&hour_bound(folder, *to)),
                            )
                            .await?;
                        Ok::<_, StoreError>((folder.as_str(), listed))
                    }) as BoxedListing<'_>
                })
                .collect();
            let mut listings = futures_util::stream::iter(listings).buffered(LISTING_CONCURRENCY);
            while let Some(listed) = listings.next().await {
                let (folder, listed) = match listed {
                    Ok(listed) => listed,
                    Err(e) => {
                        discovery.failed.push(e);
                        continue;
                    }
                };
                for meta in listed {
                    // What sorts between two hours but is not in a `date=` hour of the
                    // window (`date=2026-11-27-13x/`, a key beside the hours) is no
                    // Currents object of the window.
                    if folder_hour(folder, &meta.key).is_some_and(|h| *from <= h && h < *to) {
                        classify(meta, &mut discovery);
                    }
                }
            }
            drop(listings);
            discovery.folders = folders;
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

/// The bound of a ranged listing of `folder` (ending in `/`) at `hour`: `{folder}date={hour}`.
/// Without a trailing `/` it sorts before every key of that hour and after every key of the
/// hours before it, so it serves both as a start (exclusive) and as an end (exclusive).
pub fn hour_bound(folder: &str, hour: DateHour) -> String {
    format!("{folder}date={hour}")
}

/// The `event_type=` folder of a key: the key up to and including its first segment that
/// starts with `event_type=`, and the `/` after it; `None` if it has none. For every key
/// [`discover`] finds in a window, this is the folder it was listed in: discovery does not
/// look inside an `event_type=` folder for another one.
pub fn event_type_folder(key: &str) -> Option<&str> {
    let mut start = 0;
    for segment in key.split('/') {
        let end = start + segment.len();
        if segment.starts_with("event_type=") && end < key.len() {
            return Some(&key[..=end]);
        }
        start = end + 1;
    }
    None
}

/// The `date=` hour of a key directly below `folder` (`{folder}date=YYYY-MM-DD-HH/...`), or
/// `None` if the key is not in such an hour.
pub fn folder_hour(folder: &str, key: &str) -> Option<DateHour> {
    let (segment, _) = key.strip_prefix(folder)?.split_once('/')?;
    DateHour::parse(segment.strip_prefix("date=")?)
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

/// The `date=` hours before `from` that the source's `event_type=` folders hold, found by
/// one delimited listing per folder (a request per 1,000 hours, never a listing of the
/// objects): what a window that found nothing would have found with a longer lookback.
pub async fn hours_before(
    store: &dyn ObjectStore,
    from: DateHour,
) -> Result<BTreeSet<DateHour>, StoreError> {
    let mut hours = BTreeSet::new();
    for folder in event_type_folders(store).await? {
        for below in store.list_folders(&folder).await? {
            if let Some(hour) = folder_hour(&folder, &below)
                && hour < from
            {
                hours.insert(hour);
            }
        }
    }
    Ok(hours)
}

/// Every hour from `from` (inclusive) to `to` (exclusive).
pub fn hours_between(from: DateHour, to: DateHour) -> Vec<DateHour> {
    (from.hours_since_epoch()..to.hours_since_epoch())
        .map(DateHour::from_hours_since_epoch)
        .collect()
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
    fn keys_know_their_folder_and_hour() {
        let folder = "c/d/event_type=users.behaviors.CustomEvent/";
        let key = format!("{folder}date=2026-11-27-13/612/z/x.avro");
        assert_eq!(event_type_folder(&key), Some(folder));
        assert_eq!(folder_hour(folder, &key), DateHour::parse("2026-11-27-13"));
        assert_eq!(
            event_type_folder("c/event_type=T"),
            None,
            "a file, not a folder"
        );
        assert_eq!(event_type_folder("c/xevent_type=T/a"), None);
        assert_eq!(
            event_type_folder("event_type=A/date=x/event_type=B/y"),
            Some("event_type=A/")
        );
        assert_eq!(
            folder_hour(folder, &format!("{folder}date=2026-11-27-13x/a")),
            None
        );
        assert_eq!(
            folder_hour(folder, &format!("{folder}date=2026-11-27-13")),
            None
        );
        assert_eq!(folder_hour(folder, "elsewhere/date=2026-11-27-13/a"), None);
        // The bounds of a ranged listing fall between the hours, whatever follows them.
        let hour = |s| DateHour::parse(s).unwrap();
        let start = hour_bound(folder, hour("2026-11-27-13"));
        let end = hour_bound(folder, hour("2026-11-27-14"));
        assert!(start.as_str() < key.as_str() && key.as_str() < end.as_str());
        assert!(format!("{folder}date=2026-11-27-12/~").as_str() < start.as_str());
        assert!(format!("{folder}date=2026-11-27-14/ ").as_str() > end.as_str());
    }
}
