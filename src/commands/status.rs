//! `status`: what is pending, done and failed, the dead letters by reason, and the lag.
//!
//! The source and the ledger are read over the `--lookback` hours only: one ranged listing
//! of each per `event_type=` folder (plus a read per failed object), so `status` costs about
//! what a poll does. `--lookback all` lists both whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;

use super::config::{Config, DEFAULTS, as_text};
use super::worker::{Exit, StoreArgs, open_stores};
use crate::currents::key::DateHour;
use crate::deadletter::{DeadLetterFilter, DeadLetterStore};
use crate::ledger::{FailedEntries, Finished, Ledger, Outcome};
use crate::source::{Discovery, LISTING_CONCURRENCY, Window, discover};
use crate::store::StoreError;
use crate::telemetry::Metrics;
use crate::worker::Lookback;

/// `status`'s flags: the stores and the lookback. It runs with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct StatusArgs {
    #[command(flatten)]
    #[serde(flatten)]
    stores: StoreArgs,
    /// Which `date=` hours count as pending: 1h to 400 days (e.g. 72h), or `all`.
    #[arg(long, env = "CURRENTS_HEAP_LOOKBACK", default_value_t = DEFAULTS.lookback)]
    #[serde(with = "as_text")]
    lookback: Lookback,
}

pub async fn status(config: Config) -> Exit {
    match report(&config).await {
        Ok(text) => {
            print!("{text}");
            Exit::Success
        }
        Err(e) => Exit::Fatal(e),
    }
}

/// Dead letters grouped by cause: numbers (attempts, seconds, lengths) are left out, so the
/// same cause with different counts is one line. Each dead letter keeps its exact reason.
fn reason_group(reason: &str) -> String {
    let mut group = String::with_capacity(reason.len());
    let mut in_number = false;
    for c in reason.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                group.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            group.push(c);
        }
    }
    group
}

async fn report(config: &Config) -> Result<String, String> {
    // status serves no /metrics: its requests are counted and dropped.
    let metrics = Arc::new(Metrics::new());
    let (source, state) = open_stores(config, false, &metrics)
        .await
        .map_err(|e| match e {
            Exit::Usage(message) | Exit::Fatal(message) => message,
            other => format!("{other:?}"),
        })?;
    let ledger = Ledger::new(state.clone());
    let dead_letters = DeadLetterStore::new(state);

    let window = config.lookback.window();
    let discovery = discover(&*source, &window)
        .await
        .map_err(|e| format!("cannot list the source: {e}"))?;
    let state_error = |e: StoreError| format!("cannot read the state: {e}");
    let (finished, failed) = read_ledger(&ledger, &window, &discovery)
        .await
        .map_err(state_error)?;
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    let mut oldest: Option<DateHour> = None;
    for object in discovery.objects.iter().filter(|o| !finished.contains(o)) {
        *pending.entry(&object.event_type).or_insert(0) += 1;
        oldest = Some(oldest.map_or(object.date, |o| o.min(object.date)));
    }
    let mut out = String::new();
    out.push_str(&format!(
        "source: {}\nstate:  {}\n",
        source.describe(),
        ledger.describe()
    ));
    // The counts below cover these hours only.
    match window {
        Window::All => out.push_str("hours:  every date= hour (--lookback all)\n"),
        Window::Hours { from, to } => out.push_str(&format!(
            "hours:  date={from} up to date={to} (--lookback {})\n",
            config.lookback
        )),
    }
    out.push_str(&format!(
        "objects pending: {}\n",
        pending.values().sum::<u64>()
            + discovery
                .outside_layout
                .iter()
                .filter(|m| finished.outcome(&m.key, m.size, &m.etag).is_none())
                .count() as u64
    ));
    for (event_type, n) in &pending {
        out.push_str(&format!("  {event_type}: {n}\n"));
    }
    match oldest {
        Some(hour) => {
            let lag = DateHour::now().hours_since_epoch() - hour.hours_since_epoch();
            out.push_str(&format!("oldest pending hour: date={hour} (lag {lag}h)\n"));
        }
        None => out.push_str("oldest pending hour: none (caught up)\n"),
    }
    out.push_str(&format!(
        "objects done: {}\n",
        finished.count(Outcome::Done)
    ));
    // A failed version that a good upload replaced is history, not a current failure.
    let replaced = finished.count(Outcome::Failed) - finished.count_failed_unreplaced();
    out.push_str(&format!(
        "objects failed: {}{}\n",
        finished.count_failed_unreplaced(),
        if replaced > 0 {
            format!(" ({replaced} more failed versions were since replaced by a good upload)")
        } else {
            String::new()
        }
    ));
    for entry in failed
        .entries
        .into_iter()
        .filter(|e| !finished.has_done_version(&e.key))
    {
        out.push_str(&format!(
            "  {}: {}\n",
            entry.key,
            entry.reason.unwrap_or_default()
        ));
    }
    for (key, reason) in failed.unreadable {
        out.push_str(&format!("  (unreadable ledger entry {key}: {reason})\n"));
    }
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut letters_total = 0;
    for file in dead_letters
        .list(&DeadLetterFilter::default())
        .await
        .map_err(state_error)?
    {
        match dead_letters.read_lenient(&file.key).await {
            Ok(read) => {
                for letter in read.letters {
                    letters_total += 1;
                    *reasons.entry(reason_group(&letter.reason)).or_insert(0) += 1;
                }
                for bad in read.unreadable {
                    let what = format!(
                        "(unreadable line {} of {}: {})",
                        bad.line, file.key, bad.reason
                    );
                    *reasons.entry(what).or_insert(0) += 1;
                }
            }
            Err(e) => *reasons.entry(format!("(unreadable: {e})")).or_insert(0) += 1,
        }
    }
    out.push_str(&format!("dead letters: {letters_total}\n"));
    for (reason, n) in &reasons {
        out.push_str(&format!("  {n}: {reason}\n"));
    }
    Ok(out)
}

/// The ledger over the window's hours: one ranged listing per `event_type=` folder of the
/// source, 8 at once (then a read per failed object); with `Window::All`, all of it.
async fn read_ledger(
    ledger: &Ledger,
    window: &Window,
    discovery: &Discovery,
) -> Result<(Finished, FailedEntries), StoreError> {
    let Window::Hours { from, to } = *window else {
        return ledger.read_all().await;
    };
    let mut reads = futures_util::stream::iter(&discovery.folders)
        .map(|folder| ledger.read_hours(folder, from, to))
        .buffered(LISTING_CONCURRENCY);
    let (mut finished, mut failed) = (Finished::default(), FailedEntries::default());
    while let Some(read) = reads.next().await {
        let (more_finished, more_failed) = read?;
        finished.extend(more_finished);
        failed.entries.extend(more_failed.entries);
        failed.unreadable.extend(more_failed.unreadable);
    }
    Ok((finished, failed))
}

#[cfg(test)]
mod tests {
    use super::reason_group;

    #[test]
    fn groups_reasons_without_their_numbers() {
        assert_eq!(
            reason_group("gave up after 4 attempts over 12s: Heap answered 503"),
            reason_group("gave up after 2 attempts over 0s: Heap answered 503")
        );
        assert_eq!(
            reason_group("identity is 300 characters"),
            "identity is N characters"
        );
    }
}
