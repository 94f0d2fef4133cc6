//! `status`: what is pending, done and failed, the dead letters by reason, and the lag.
//!
//! The source and the ledger are read over the `--lookback` hours only: one ranged listing
//! of each per `event_type=` folder (plus a read per failed object), so `status` costs about
//! what a poll does; and two more ranged listings of the source per folder for the keys
//! outside the layout, which have no hour, with their ledger (`outside_hours`).
//! `--lookback all` lists both whole. Then who sends (the lease, read twice a renewal period
//! apart, see [`crate::handover::lease`]), the live `run` workers and the backfills handed to
//! them (see [`crate::handover`]): a listing of `control/` and a read per heartbeat and per
//! request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use super::check::{Preflight, StateUse, preflight};
use super::config::{Config, DEFAULTS, as_text};
use super::worker::{Exit, StoreArgs, open_stores};
use crate::currents::key::{DateHour, layout_problem};
use crate::deadletter::{DeadLetterFilter, DeadLetterStore};
use crate::handover::lease::{LEASE_KEY, LeaseBody, LeaseState, LeaseTimings};
use crate::handover::{BackfillProgress, BackfillRequest, BackfillState, Control, Heartbeat};
use crate::ledger::{FailedEntries, Finished, InProgress, Ledger, Outcome};
use crate::source::{Discovery, LISTING_CONCURRENCY, Window, discover};
use crate::store::{ObjectStore, StoreError, Versioned};
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
    /// Print the same facts as one JSON document (fields in docs/tools.md) instead of text.
    #[arg(long)]
    #[serde(skip)]
    json: bool,
}

impl StatusArgs {
    pub fn json(&self) -> bool {
        self.json
    }
}

/// Prints the report: as text, or with `json` as one JSON document holding the same facts
/// under stable field names (documented in docs/tools.md; a field is added, never renamed).
pub async fn status(config: Config, json: bool) -> Exit {
    // A missing bucket or a refused listing is wiring (exit 2), said with its fix; an
    // outage is left to the report, which says what it could not read.
    let start = Preflight {
        source: true,
        state: StateUse::Read,
        bounded: false,
    };
    if let Err(exit) = preflight(&config, start, &Arc::new(Metrics::new())).await {
        return exit;
    }
    match report(&config).await {
        Ok((text, document)) if json => {
            let _ = text;
            println!(
                "{}",
                serde_json::to_string_pretty(&document).unwrap_or_default()
            );
            Exit::Success
        }
        Ok((text, _)) => {
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

/// The report as text, and the same facts as a JSON document, built side by side so that
/// the text stays as it was.
async fn report(config: &Config) -> Result<(String, serde_json::Value), String> {
    // status serves no /metrics: its requests are counted and dropped.
    let metrics = Arc::new(Metrics::new());
    let (source, state) = open_stores(config, false, &metrics)
        .await
        .map_err(|e| match e {
            Exit::Usage(message) | Exit::Fatal(message) => message,
            other => format!("{other:?}"),
        })?;
    let ledger = Ledger::new(state.clone());
    let dead_letters = DeadLetterStore::new(state.clone());
    // The first look at the lease; the last one, after the rest, tells whether it renews.
    let lease_seen = (
        state.get_versioned(LEASE_KEY).await,
        tokio::time::Instant::now(),
    );
    let control = Control::new(state.clone());

    let window = config.lookback.window();
    let mut discovery = discover(&*source, &window)
        .await
        .map_err(|e| format!("cannot list the source: {e}"))?;
    if let Some(e) = discovery.failed.first() {
        return Err(format!(
            "cannot list {} event_type= folders of the source: {e}",
            discovery.failed.len()
        ));
    }
    let state_error = |e: StoreError| format!("cannot read the state: {e}");
    let (mut finished, mut failed) = read_ledger(&ledger, &window, &discovery)
        .await
        .map_err(state_error)?;
    if let Window::Hours { .. } = window {
        let (more_finished, more_failed) =
            outside_hours(&*source, &ledger, &mut discovery)
                .await
                .map_err(|e| format!("cannot read the source or the state: {e}"))?;
        finished.extend(more_finished);
        failed.entries.extend(more_failed.entries);
        failed.unreadable.extend(more_failed.unreadable);
    }
    let mut pending: BTreeMap<&str, u64> = BTreeMap::new();
    let mut oldest: Option<DateHour> = None;
    for object in discovery.objects.iter().filter(|o| !finished.contains(o)) {
        *pending.entry(&object.event_type).or_insert(0) += 1;
        oldest = Some(oldest.map_or(object.date, |o| o.min(object.date)));
    }
    let in_progress = read_in_progress(&ledger, &window, &discovery)
        .await
        .map_err(state_error)?;
    let mut doc = serde_json::Map::new();
    doc.insert("source".into(), json!(source.describe()));
    // The state as configured (`--state`), not the ledger's folder inside it.
    doc.insert("state".into(), json!(state.describe()));
    doc.insert("lookback".into(), json!(config.lookback.to_string()));
    let mut out = String::new();
    out.push_str(&format!(
        "source: {}\nstate:  {}\n",
        source.describe(),
        state.describe()
    ));
    // The counts below cover these hours only.
    let (hours_from, hours_to) = match window {
        Window::All => (None, None),
        Window::Hours { from, to } => (Some(from.to_string()), Some(to.to_string())),
    };
    doc.insert("hours_from".into(), json!(hours_from));
    doc.insert("hours_to".into(), json!(hours_to));
    match window {
        Window::All => out.push_str("hours:  every date= hour (--lookback all)\n"),
        Window::Hours { from, to } => out.push_str(&format!(
            "hours:  date={from} up to date={to} (--lookback {})\n",
            config.lookback
        )),
    }
    let objects_pending = pending.values().sum::<u64>()
        + discovery
            .outside_layout
            .iter()
            .filter(|m| finished.outcome(&m.key, m.size, &m.etag).is_none())
            .count() as u64;
    doc.insert("objects_pending".into(), json!(objects_pending));
    doc.insert("pending_by_event_type".into(), json!(pending));
    out.push_str(&format!("objects pending: {objects_pending}\n"));
    for (event_type, n) in &pending {
        out.push_str(&format!("  {event_type}: {n}\n"));
    }
    out.push_str(&render_in_progress(&in_progress));
    doc.insert("objects_in_progress".into(), json!(in_progress.entries));
    doc.insert(
        "unreadable_checkpoints".into(),
        json!(key_reasons(&in_progress.unreadable)),
    );
    doc.insert(
        "oldest_pending_hour".into(),
        json!(oldest.map(|h| h.to_string())),
    );
    doc.insert(
        "lag_hours".into(),
        json!(oldest.map(|h| DateHour::now().hours_since_epoch() - h.hours_since_epoch())),
    );
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
    doc.insert("objects_done".into(), json!(finished.count(Outcome::Done)));
    doc.insert(
        "objects_failed".into(),
        json!(finished.count_failed_unreplaced()),
    );
    doc.insert("failed_versions_replaced".into(), json!(replaced));
    let mut failed_objects = Vec::new();
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
            entry.reason.as_deref().unwrap_or_default()
        ));
        failed_objects.push(json!({"key": entry.key, "reason": entry.reason}));
    }
    doc.insert("failed".into(), json!(failed_objects));
    doc.insert(
        "unreadable_ledger_entries".into(),
        json!(key_reasons(&failed.unreadable)),
    );
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
    doc.insert("dead_letters".into(), json!(letters_total));
    doc.insert("dead_letters_by_reason".into(), json!(reasons));
    for (reason, n) in &reasons {
        out.push_str(&format!("  {n}: {reason}\n"));
    }
    let sender = sender(state.as_ref(), lease_seen).await;
    out.push_str(&sender.line);
    out.push('\n');
    doc.insert("sender".into(), json!(sender));
    let handover_error = |e| format!("cannot read the state: {e}");
    let workers = control.workers().await.map_err(handover_error)?;
    let requests = control.requests().await.map_err(handover_error)?;
    let now = crate::clock::unix_secs_now();
    out.push_str(&render_handovers(&workers, &requests, now));
    doc.insert(
        "workers".into(),
        json!(
            workers
                .iter()
                .map(|hb| json!({"heartbeat": hb, "live": hb.is_live(now)}))
                .collect::<Vec<_>>()
        ),
    );
    doc.insert(
        "backfills".into(),
        json!(
            requests
                .iter()
                .map(|(request, progress)| json!({
                    "request": request,
                    "progress": progress,
                    "eta_secs": progress.as_ref().and_then(|p| p.eta_secs(now)),
                }))
                .collect::<Vec<_>>()
        ),
    );
    Ok((out, serde_json::Value::Object(doc)))
}

/// `(key, reason)` pairs as `{"key", "reason"}` objects.
fn key_reasons(pairs: &[(String, String)]) -> Vec<serde_json::Value> {
    pairs
        .iter()
        .map(|(key, reason)| json!({"key": key, "reason": reason}))
        .collect()
}

/// Who sends: the `sender:` line, and its facts for `--json`.
#[derive(Debug, Serialize)]
struct Sender {
    /// `none`, `live`, `took_over`, `not_renewing`, `released` or `unknown`.
    state: &'static str,
    /// The lease holder's worker id, when the lease names one.
    holder: Option<String>,
    /// Its role (`run` or `backfill`).
    role: Option<crate::handover::lease::Role>,
    /// The text line, as printed.
    line: String,
}

impl Sender {
    fn new(state: &'static str, body: Option<&LeaseBody>, line: String) -> Self {
        Sender {
            state,
            holder: body.map(|b| b.holder.clone()),
            role: body.map(|b| b.role),
            // The JSON field holds the line without the text report's line break.
            line: line.trim_end().to_string(),
        }
    }
}

/// Who sends, from the lease: its holder, and whether it renews, judged as standbys judge it,
/// by whether the lease changed between two reads a renewal period apart (waiting for the
/// rest of that period if the report took less), never by comparing clocks.
async fn sender(
    state: &dyn ObjectStore,
    (first, at): (Result<Versioned, StoreError>, tokio::time::Instant),
) -> Sender {
    let first = match first {
        Ok(first) => first,
        Err(e) if e.is_not_found() => {
            return Sender::new(
                "none",
                None,
                "sender: none (no process has held the lease on this state)\n".into(),
            );
        }
        Err(e) => {
            return Sender::new(
                "unknown",
                None,
                format!("sender: unknown (cannot read the lease: {e})\n"),
            );
        }
    };
    let Ok(body) = serde_json::from_slice::<LeaseBody>(&first.bytes) else {
        return Sender::new(
            "unknown",
            None,
            format!("sender: unknown ({LEASE_KEY} cannot be read as a lease)\n"),
        );
    };
    // Ids keep their case: they name hosts.
    let who = format!("{} ({})", body.holder, body.role);
    if body.state == LeaseState::Released {
        return Sender::new(
            "released",
            Some(&body),
            format!("sender: none (the lease was released by {who})\n"),
        );
    }
    let renews_every = LeaseTimings::of(Duration::from_millis(body.duration_ms)).renew_every;
    tokio::time::sleep_until(at + renews_every + Duration::from_millis(500)).await;
    match state.get_versioned(LEASE_KEY).await {
        Ok(second) if second.version != first.version => {
            let now: Option<LeaseBody> = serde_json::from_slice(&second.bytes).ok();
            match now {
                Some(now) if now.holder != body.holder => Sender::new(
                    "took_over",
                    Some(&now),
                    format!(
                        "sender: {} ({}), which just took over from {who}\n",
                        now.holder, now.role
                    ),
                ),
                Some(now) if now.state == LeaseState::Released => Sender::new(
                    "released",
                    Some(&body),
                    format!("sender: none (the lease was just released by {who})\n"),
                ),
                _ => Sender::new(
                    "live",
                    Some(&body),
                    format!("sender: {who}, live (it renewed the lease)\n"),
                ),
            }
        }
        Ok(_) => Sender::new(
            "not_renewing",
            Some(&body),
            format!(
                "sender: {who} holds the lease but did not renew it within {renews_every:?}: it may have stopped; a standby takes over {:?} after it last renewed\n",
                Duration::from_millis(body.duration_ms)
            ),
        ),
        Err(e) => Sender::new(
            "unknown",
            Some(&body),
            format!("sender: {who}, not known whether live (cannot read the lease again: {e})\n"),
        ),
    }
}

/// How many finished backfills `status` lists; older ones are counted. The live workers keep
/// at least these (the retention rule in [`crate::handover`]).
const FINISHED_SHOWN: usize = crate::handover::FINISHED_KEPT;

/// The live workers, and the backfills handed to them: every open one, and the most recent
/// [`FINISHED_SHOWN`] finished ones. `requests` is oldest first.
fn render_handovers(
    workers: &[Heartbeat],
    requests: &[(BackfillRequest, Option<BackfillProgress>)],
    now: i64,
) -> String {
    let live: Vec<&Heartbeat> = workers.iter().filter(|hb| hb.is_live(now)).collect();
    let stale = workers.len() - live.len();
    let mut out = match (live.len(), stale) {
        (0, 0) => "workers: none live\n".to_string(),
        (n, 0) => format!("workers: {n} live\n"),
        (n, stale) => format!(
            "workers: {n} live ({stale} stale heartbeats of workers that stopped without a clean stop)\n"
        ),
    };
    for hb in &live {
        out.push_str(&format!(
            "  {}: host {}, pid {}, last heartbeat {}s ago, up since {}\n",
            hb.worker,
            hb.host,
            hb.pid,
            hb.age_secs(now).max(0),
            crate::clock::iso8601_utc(hb.started_at.saturating_mul(1000))
                .unwrap_or_else(|| hb.started_at.to_string())
        ));
    }
    let is_finished =
        |p: &Option<BackfillProgress>| p.as_ref().is_some_and(|p| p.state.is_terminal());
    let finished = requests.iter().filter(|(_, p)| is_finished(p)).count();
    let open = requests.len() - finished;
    let hidden = finished.saturating_sub(FINISHED_SHOWN);
    out.push_str(&match (open, finished) {
        (0, 0) => "backfills: none\n".to_string(),
        _ if hidden > 0 => format!(
            "backfills: {open} open, {finished} finished ({hidden} older finished ones not shown)\n"
        ),
        _ => format!("backfills: {open} open, {finished} finished\n"),
    });
    let mut finished_seen = 0;
    for (request, progress) in requests {
        if is_finished(progress) {
            finished_seen += 1;
            if finished_seen <= hidden {
                continue;
            }
        }
        out.push_str(&render_request(request, progress.as_ref(), &live, now));
    }
    out
}

/// One backfill on one line: id, range, state, worker, objects, events, ETA.
fn render_request(
    request: &BackfillRequest,
    progress: Option<&BackfillProgress>,
    live: &[&Heartbeat],
    now: i64,
) -> String {
    let queued;
    let p = match progress {
        Some(p) => p,
        None => {
            queued = BackfillProgress::queued(request, request.requested_at);
            &queued
        }
    };
    let runner_live = live.iter().any(|hb| hb.worker == p.worker);
    let worker = match p.worker.as_str() {
        "" => "the next worker to start".to_string(),
        w if p.state.is_terminal() || runner_live => format!("worker {w}"),
        w => format!("worker {w} (not live)"),
    };
    let preposition = if p.state == BackfillState::Queued {
        "for"
    } else {
        "on"
    };
    let mut line = format!(
        "  {}: date={} up to date={}, {} {preposition} {worker}, {}/{} objects ended",
        request.id, request.from, request.to, p.state, p.ended, p.found
    );
    if p.failed > 0 {
        line.push_str(&format!(" ({} failed)", p.failed));
    }
    line.push_str(&format!(", {} events sent", p.events_sent));
    if p.events_parked > 0 {
        line.push_str(&format!(", {} parked", p.events_parked));
    }
    // A worker killed mid-range leaves its last progress behind: its ETA and rate wait
    // were true then, not now; say when it last moved instead.
    if p.state == BackfillState::Running && !runner_live {
        let at = crate::clock::iso8601_utc(p.updated_at.saturating_mul(1000))
            .unwrap_or_else(|| p.updated_at.to_string());
        line.push_str(&format!(", last progress at {at}"));
    } else if p.state == BackfillState::Running {
        let eta = p.eta_secs(now).map_or_else(
            || "unknown".to_string(),
            |s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string(),
        );
        line.push_str(&format!(", ETA {eta}"));
        if p.waiting_for_rate {
            line.push_str(", waiting for rate room");
        }
    }
    if let Some(message) = &p.message {
        line.push_str(&format!(": {message}"));
    }
    line.push('\n');
    line
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

/// The objects part way through, with their checkpoints, over the same hours as the ledger.
async fn read_in_progress(
    ledger: &Ledger,
    window: &Window,
    discovery: &Discovery,
) -> Result<InProgress, StoreError> {
    let Window::Hours { from, to } = *window else {
        return ledger.in_progress("").await;
    };
    let mut reads = futures_util::stream::iter(&discovery.folders)
        .map(|folder| ledger.in_progress_in_hours(folder, from, to))
        .buffered(LISTING_CONCURRENCY);
    let mut all = InProgress::default();
    while let Some(read) = reads.next().await {
        let read = read?;
        all.entries.extend(read.entries);
        all.unreadable.extend(read.unreadable);
    }
    Ok(all)
}

/// `objects in progress: N` and a line per object: how far it has ended, and when.
fn render_in_progress(in_progress: &InProgress) -> String {
    let mut out = String::new();
    if in_progress.entries.is_empty() && in_progress.unreadable.is_empty() {
        return out;
    }
    out.push_str(&format!(
        "objects in progress: {} (each resumes at its checkpoint)\n",
        in_progress.entries.len()
    ));
    for p in &in_progress.entries {
        let percent = (p.block_offset as f64 * 100.0 / p.size.max(1) as f64).floor();
        out.push_str(&format!(
            "  {}: {} events ended (read up to byte {} of {}, {percent}%), checkpoint at {}\n",
            p.key, p.records, p.block_offset, p.size, p.updated_at
        ));
    }
    for (key, reason) in &in_progress.unreadable {
        out.push_str(&format!("  (unreadable checkpoint {key}: {reason})\n"));
    }
    out
}

/// Objects outside the layout have no `date=` hour, so no window of hours holds them, yet a
/// misplaced object recorded failed must show whatever the lookback. Found in each
/// `event_type=` folder by two ranged listings of the source, of the keys that sort before
/// `date=0` and after every `date=<digits>` (where a `date=` that is not an hour lands; one
/// inside the digits, `date=2026-02-30-01`, shows with `--lookback all` only), and added to
/// `discovery.outside_layout`; then the ledger of each of those objects, one listing each
/// (and a read per failed version): few, since Braze writes none.
async fn outside_hours(
    source: &dyn ObjectStore,
    ledger: &Ledger,
    discovery: &mut Discovery,
) -> Result<(Finished, FailedEntries), StoreError> {
    for folder in &discovery.folders {
        let (before, after) = (format!("{folder}date=0"), format!("{folder}date=:"));
        let mut found = source.list_range(folder, folder, Some(&before)).await?;
        found.extend(source.list_range(folder, &after, None).await?);
        discovery.outside_layout.extend(
            found
                .into_iter()
                .filter(|meta| meta.key.ends_with(".avro") && layout_problem(&meta.key).is_some()),
        );
    }
    let mut reads = futures_util::stream::iter(&discovery.outside_layout)
        .map(|meta| async move {
            let prefix = format!("{}/", meta.key);
            Ok::<_, StoreError>((
                ledger.finished(&prefix).await?,
                ledger.failed_entries(&prefix).await?,
            ))
        })
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
    use super::*;

    /// `status`'s `sender:` line, against a real (local) state: no lease, a live holder, a
    /// holder that stopped renewing, a released lease. On a paused clock: on a real one, a
    /// local write slower than the 1 s left before this short lease's renew deadline (a
    /// loaded CI disk) made the holder give the lease up before the test released it.
    #[tokio::test(start_paused = true)]
    async fn the_sender_line_says_who_sends_and_whether_it_renews() {
        use crate::handover::lease::{Acquired, LeaseClient, Role};
        use crate::store::LocalStore;
        let dir = std::env::temp_dir().join(format!("status-sender-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state: Arc<dyn ObjectStore> = Arc::new(LocalStore::new(&dir));
        let line = |state: Arc<dyn ObjectStore>| async move {
            let first = state.get_versioned(LEASE_KEY).await;
            sender(state.as_ref(), (first, tokio::time::Instant::now()))
                .await
                .line
        };
        assert!(
            line(state.clone())
                .await
                .starts_with("sender: none (no process")
        );

        // The shortest lease: renewed every second.
        let timings = LeaseTimings::of(Duration::from_secs(3));
        let lease = LeaseClient::new(state.clone(), "Host-A-1-ab".into(), Role::Run, timings);
        let Acquired::Held(holding, _) = lease
            .acquire(&tokio_util::sync::CancellationToken::new(), |_, _| false)
            .await
        else {
            panic!("the lease is free");
        };
        let (fence, _rx) = tokio::sync::watch::channel(tokio::time::Instant::now());
        let keeper = lease.keep(holding, |_| serde_json::Value::Null, fence);
        let live = line(state.clone()).await;
        assert_eq!(
            live,
            "sender: Host-A-1-ab (`run`), live (it renewed the lease)"
        );

        assert!(keeper.release(Duration::from_secs(5)).await);
        let released = line(state.clone()).await;
        assert!(
            released.starts_with("sender: none (the lease was released by Host-A-1-ab"),
            "{released}"
        );

        // Held, but nobody renews it (its holder was killed).
        let mut stale: LeaseBody =
            serde_json::from_slice(&state.get(LEASE_KEY).await.unwrap()).unwrap();
        stale.state = LeaseState::Held;
        state
            .put(LEASE_KEY, serde_json::to_vec(&stale).unwrap())
            .await
            .unwrap();
        let stopped = line(state.clone()).await;
        assert!(stopped.contains("did not renew it"), "{stopped}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn request(id: &str, requested_at: i64, worker: &str) -> BackfillRequest {
        BackfillRequest {
            id: id.into(),
            from: DateHour::parse("2026-11-01-00").unwrap(),
            to: DateHour::parse("2026-11-08-00").unwrap(),
            worker: worker.into(),
            requested_at,
        }
    }

    fn beat(worker: &str, beat_at: i64) -> Heartbeat {
        Heartbeat {
            worker: worker.into(),
            host: "pod-1".into(),
            pid: 1,
            started_at: 1_764_248_400,
            beat_at,
        }
    }

    #[test]
    fn shows_live_workers_open_backfills_and_the_recent_finished_ones() {
        let now = 1_764_250_000;
        assert_eq!(
            render_handovers(&[], &[], now),
            "workers: none live\nbackfills: none\n"
        );
        let workers = [beat("w-a", now - 12), beat("w-dead", now - 600)];
        let mut requests = Vec::new();
        for n in 0..25 {
            let r = request(&format!("{n}-0000000{}", n % 10), n, "w-a");
            let mut p = BackfillProgress::queued(&r, n);
            p.state = BackfillState::Done;
            requests.push((r, Some(p)));
        }
        let running = request("100-aaaaaaaa", 100, "w-a");
        let mut p = BackfillProgress::queued(&running, 100);
        p.state = BackfillState::Running;
        (p.found, p.ended, p.failed, p.events_sent, p.events_parked) = (40, 10, 1, 3400, 7);
        p.started_at = Some(now - 100);
        requests.push((running, Some(p)));
        requests.push((request("101-bbbbbbbb", 101, "w-gone"), None));
        let text = render_handovers(&workers, &requests, now);
        assert!(
            text.contains("workers: 1 live (1 stale heartbeats"),
            "{text}"
        );
        assert!(
            text.contains("  w-a: host pod-1, pid 1, last heartbeat 12s ago, up since 2025-11-27T13:00:00+00:00\n"),
            "{text}"
        );
        assert!(!text.contains("w-dead:"), "{text}");
        assert!(
            text.contains("backfills: 2 open, 25 finished (5 older finished ones not shown)\n"),
            "{text}"
        );
        assert!(
            text.contains("  100-aaaaaaaa: date=2026-11-01-00 up to date=2026-11-08-00, running on worker w-a, 10/40 objects ended (1 failed), 3400 events sent, 7 parked, ETA 5m\n"),
            "{text}"
        );
        assert!(
            text.contains("  101-bbbbbbbb: date=2026-11-01-00 up to date=2026-11-08-00, queued for worker w-gone (not live), 0/0 objects ended, 0 events sent\n"),
            "{text}"
        );
        assert!(
            !text.contains("  4-00000004:"),
            "the oldest finished are not shown: {text}"
        );
        assert!(text.contains("  5-00000005:"), "{text}");
        assert!(
            text.contains(
                "  24-00000004: date=2026-11-01-00 up to date=2026-11-08-00, done on worker w-a"
            ),
            "{text}"
        );
    }

    #[test]
    fn objects_in_progress_show_how_far_they_ended() {
        assert_eq!(render_in_progress(&InProgress::default()), "");
        let progress = crate::ledger::Progress {
            key: "c/event_type=T/date=2026-11-27-13/a.avro".into(),
            size: 2_000,
            etag: "e".into(),
            records: 600,
            header_len: 100,
            block_offset: 1_230,
            block_first_record: 580,
            updated_at: "2026-12-04T15:18:07.164+00:00".into(),
        };
        let shown = render_in_progress(&InProgress {
            entries: vec![progress],
            unreadable: vec![("ledger/x.progress".into(), "not JSON".into())],
        });
        assert_eq!(
            shown,
            "objects in progress: 1 (each resumes at its checkpoint)\n  c/event_type=T/date=2026-11-27-13/a.avro: 600 events ended (read up to byte 1230 of 2000, 61%), checkpoint at 2026-12-04T15:18:07.164+00:00\n  (unreadable checkpoint ledger/x.progress: not JSON)\n"
        );
    }

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
