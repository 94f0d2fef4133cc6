//! Discovery of unfinished work: what the source holds in the plan's window, less what the
//! ledger has finished, queued on the scheduler.
//!
//! The ledger is read per `event_type=` folder that holds objects in the window, with one
//! ranged listing over the window's hours ([`Ledger::finished_in_hours`]), so the cost
//! follows the window, not the history. A long-lived run keeps what it read in a
//! [`FinishedSet`] and reads only hours it has not loaded yet: after its first poll, an idle
//! poll reads nothing from the state. A bounded run polls once and keeps nothing.

use std::collections::BTreeMap;

use futures_util::StreamExt;

use super::finished::{FinishedSet, Hours};
use super::scheduler::{Scheduler, Work};
use crate::currents::key::{CurrentsKey, DateHour};
use crate::ledger::Ledger;
use crate::source::{LISTING_CONCURRENCY, Window, discover, event_type_folder};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// What a poll found that is not finished: queued now or already in flight (or, beside
/// notifications, left to them).
#[derive(Debug, Default)]
pub struct Unfinished {
    pub count: usize,
    /// The keys found, each with its `date=` hour (none outside the layout).
    pub keys: Vec<(String, Option<DateHour>)>,
    /// Objects the listing found in the window, finished ones included.
    pub listed: usize,
    pub oldest: Option<DateHour>,
    /// `event_type=` folders in the source.
    pub folders: usize,
    /// Folders that could not be listed, with why; their objects wait for a later poll.
    pub failed: Vec<StoreError>,
}

/// Which side failed: the messages must say which location to fix.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot list the source: {0}")]
    Source(StoreError),
    #[error("cannot read the ledger in the state: {0}")]
    State(StoreError),
}

/// Discovers the window and queues what the ledger has not finished. `known`: what a
/// long-lived run knows finished from earlier polls, brought up to date here; `None` for a
/// bounded run, which reads what this poll needs and keeps nothing.
pub async fn queue_unfinished(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    window: &Window,
    known: Option<&mut FinishedSet>,
    scheduler: &mut Scheduler,
) -> Result<Unfinished, DiscoveryError> {
    let (unfinished, work) = find_unfinished(source, ledger, window, known).await?;
    for work in work {
        scheduler.enqueue(work);
    }
    Ok(unfinished)
}

/// How long after the first reconciliation since a start the second one runs: long enough
/// for a notification in flight at the start (S3 delivers them within seconds, rarely a
/// minute) to bring its object in and record it, short enough that objects of the newest
/// hours that predate the start (uploaded before the queue existed, or while no worker ran)
/// are not left for a whole reconcile interval. Queueing one that a notification brings in
/// anyway costs nothing: the scheduler never queues a key already queued or in flight, and
/// the ledger check below skips a recorded one.
pub const STARTUP_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// The object versions a reconciliation saw unrecorded: (key, size, ETag without quotes).
pub type Sightings = std::collections::HashSet<(String, u64, String)>;

/// A reconciliation beside event-driven discovery: the window less the ledger, as read now
/// (another replica's records count), queueing what no notification can still bring in:
/// - what the previous reconciliation saw unrecorded too, at the same version. An object a
///   notification brought in is recorded well within one reconcile interval, on this
///   replica or another, so what is still unrecorded a whole interval later is one whose
///   notification was lost or expired: queueing it cannot race a replica processing it.
/// - at the first reconciliation after a start (`seen` is `None`), also what lies in a
///   `date=` hour older than the previous one: such an object predates this worker's
///   notifications (or their loss). The newest two hours may still have a notification in
///   flight, so they keep the rule above; but the poller runs the second reconciliation
///   [`STARTUP_GRACE`] after the first, not a whole interval later, so an object of those
///   hours that existed before the start is queued within that grace (a pod restarted more
///   often than the reconcile interval would otherwise defer it after every restart).
///
/// Each object is checked once more against its own ledger prefix just before it is
/// queued, and the scheduler never queues a key already queued or in flight (the listener
/// may have queued it). `seen` is replaced with this pass's sightings. The count returned
/// is every object found unrecorded, queued or not; `keys` lists them with their hours.
pub async fn queue_missed(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    window: &Window,
    seen: &mut Option<Sightings>,
    scheduler: &mut Scheduler,
) -> Result<Unfinished, DiscoveryError> {
    let (unfinished, work) = find_unfinished(source, ledger, window, None).await?;
    let settled_before = DateHour::now().hours_since_epoch() - 1;
    let mut sightings = Sightings::new();
    for work in work {
        let meta = meta_of(&work);
        let version = (
            meta.key.clone(),
            meta.size,
            meta.etag.trim_matches('"').to_string(),
        );
        let due = match seen.as_ref() {
            Some(seen) => seen.contains(&version),
            None => CurrentsKey::parse(&meta.key)
                .date
                .is_none_or(|date| date.hours_since_epoch() < settled_before),
        };
        if !due {
            sightings.insert(version);
            continue;
        }
        let recorded = ledger
            .finished(&format!("{}/", meta.key))
            .await
            .map_err(DiscoveryError::State)?
            .outcome(&meta.key, meta.size, &meta.etag)
            .is_some();
        if !recorded {
            if seen.is_some() {
                tracing::warn!(
                    object = %meta.key,
                    "no notification brought this object in since the previous reconciliation: processing it now"
                );
            } else {
                tracing::info!(object = %meta.key, "unrecorded at the first reconciliation: processing it now");
            }
            scheduler.enqueue(work);
        }
    }
    *seen = Some(sightings);
    Ok(unfinished)
}

/// [`queue_unfinished`] without the queueing: the work found, in the order to queue it
/// (oldest hour first, then keys outside the layout).
pub async fn find_unfinished(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    window: &Window,
    known: Option<&mut FinishedSet>,
) -> Result<(Unfinished, Vec<Work>), DiscoveryError> {
    let mut discovery = discover(source, window)
        .await
        .map_err(DiscoveryError::Source)?;
    let mut unfinished = Unfinished {
        folders: discovery.folders.len(),
        failed: std::mem::take(&mut discovery.failed),
        ..Unfinished::default()
    };
    // Each with the hour the lag is measured from (objects in the layout only).
    let candidates: Vec<(Work, Option<DateHour>)> = discovery
        .objects
        .into_iter()
        .map(|object| {
            let meta = ObjectMeta {
                key: object.key,
                size: object.size,
                etag: object.etag,
            };
            (Work::Object(meta), Some(object.date))
        })
        .chain(
            discovery
                .outside_layout
                .into_iter()
                .map(|meta| (Work::OutsideLayout(meta), None)),
        )
        .collect();
    unfinished.listed = candidates.len();
    let mut this_poll = FinishedSet::default();
    let known = known.unwrap_or(&mut this_poll);
    load(ledger, window, known, &candidates)
        .await
        .map_err(DiscoveryError::State)?;
    let mut work = Vec::new();
    for (candidate, date) in candidates {
        if known.contains(meta_of(&candidate)) {
            continue;
        }
        let candidate = match candidate {
            Work::Object(meta) if known.has_checkpoint(&meta) => Work::Resume(meta),
            other => other,
        };
        unfinished
            .keys
            .push((meta_of(&candidate).key.clone(), date));
        work.push(candidate);
        unfinished.count += 1;
        if let Some(date) = date {
            unfinished.oldest = Some(unfinished.oldest.map_or(date, |o| o.min(date)));
        }
    }
    Ok((unfinished, work))
}

fn meta_of(work: &Work) -> &ObjectMeta {
    let (Work::Object(meta) | Work::Resume(meta) | Work::OutsideLayout(meta)) = work;
    meta
}

type BoxedRead<'a> = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<(&'a str, Hours, crate::ledger::Finished), StoreError>,
            > + Send
            + 'a,
    >,
>;

/// Reads into `known` what it lacks to tell the candidates apart: for an hour window, the
/// hours not loaded yet of each folder with a candidate there not known finished, 8 folders
/// at once; for `Window::All`, the whole ledger, once. A failed read leaves `known` as it
/// was for that folder, so the next poll reads it again.
async fn load(
    ledger: &Ledger,
    window: &Window,
    known: &mut FinishedSet,
    candidates: &[(Work, Option<DateHour>)],
) -> Result<(), StoreError> {
    match *window {
        Window::All => {
            if !candidates.is_empty() && !known.has_everything() {
                known.loaded_everything(ledger.finished("").await?);
            }
        }
        Window::Hours { from, to } => {
            known.forget_before(from);
            let mut by_folder: BTreeMap<&str, Vec<&ObjectMeta>> = BTreeMap::new();
            for (work, _) in candidates {
                let meta = meta_of(work);
                if let Some(folder) = event_type_folder(&meta.key) {
                    by_folder.entry(folder).or_default().push(meta);
                }
            }
            let window = Hours { from, to };
            let wanted: Vec<(&str, Hours)> = by_folder
                .into_iter()
                .filter_map(|(folder, metas)| {
                    known
                        .to_load(folder, window, metas)
                        .map(|hours| (folder, hours))
                })
                .collect();
            // Boxed as `dyn Send`: see `source::discover`.
            let reads: Vec<BoxedRead<'_>> = wanted
                .into_iter()
                .map(|(folder, hours)| {
                    Box::pin(async move {
                        let finished = ledger
                            .finished_in_hours(folder, hours.from, hours.to)
                            .await?;
                        Ok::<_, StoreError>((folder, hours, finished))
                    }) as BoxedRead<'_>
                })
                .collect();
            let mut reads = futures_util::stream::iter(reads).buffered(LISTING_CONCURRENCY);
            while let Some(read) = reads.next().await {
                let (folder, hours, finished) = read?;
                known.loaded(folder, hours, finished);
            }
        }
    }
    Ok(())
}
