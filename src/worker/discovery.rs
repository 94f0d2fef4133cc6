//! Discovery of unfinished work: what the source holds in the plan's window, less what the
//! ledger has finished, queued on the scheduler.
//!
//! The ledger is listed once per `date=` folder found, so the cost follows the window, not
//! the history.

use std::collections::BTreeMap;

use super::scheduler::{Scheduler, Work};
use crate::currents::key::DateHour;
use crate::ledger::Ledger;
use crate::source::{CurrentsObject, Window, discover};
use crate::store::{ObjectMeta, ObjectStore, StoreError};

/// What a poll found that is not finished: queued now or already in flight.
#[derive(Debug, Default)]
pub struct Unfinished {
    pub count: usize,
    pub oldest: Option<DateHour>,
    /// `event_type=` folders in the source.
    pub folders: usize,
}

/// Which side failed: the messages must say which location to fix.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot list the source: {0}")]
    Source(StoreError),
    #[error("cannot read the ledger in the state: {0}")]
    State(StoreError),
}

/// Discovers the window and queues what the ledger has not finished.
pub async fn queue_unfinished(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    window: &Window,
    scheduler: &mut Scheduler,
) -> Result<Unfinished, DiscoveryError> {
    let discovery = discover(source, window)
        .await
        .map_err(DiscoveryError::Source)?;
    let mut by_folder: BTreeMap<&str, Vec<&CurrentsObject>> = BTreeMap::new();
    for object in &discovery.objects {
        let folder = object.key.rsplit_once('/').map_or("", |(folder, _)| folder);
        by_folder.entry(folder).or_default().push(object);
    }
    let mut unfinished = Unfinished {
        folders: discovery.folders,
        ..Unfinished::default()
    };
    for (folder, objects) in by_folder {
        let finished = ledger
            .finished(&format!("{folder}/"))
            .await
            .map_err(DiscoveryError::State)?;
        for object in objects.into_iter().filter(|o| !finished.contains(o)) {
            scheduler.enqueue(Work::Object(ObjectMeta {
                key: object.key.clone(),
                size: object.size,
                etag: object.etag.clone(),
            }));
            unfinished.count += 1;
            unfinished.oldest = Some(
                unfinished
                    .oldest
                    .map_or(object.date, |o| o.min(object.date)),
            );
        }
    }
    for meta in discovery.outside_layout {
        let finished = ledger
            .finished(&meta.key)
            .await
            .map_err(DiscoveryError::State)?;
        if finished.outcome(&meta.key, meta.size, &meta.etag).is_none() {
            scheduler.enqueue(Work::OutsideLayout(meta));
            unfinished.count += 1;
        }
    }
    Ok(unfinished)
}
