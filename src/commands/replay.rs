//! `replay`: re-send dead letters once their cause is fixed (see `worker::replay`).

use clap::Args;
use serde::Serialize;

use super::MappingArgs;
use super::check::{Preflight, StateUse, preflight_until};
use super::config::{Config, DEFAULTS, HumanDuration};
use super::worker::{Exit, HeapArgs, StateArgs, open_state, output, stop_on_signals};
use crate::deadletter::DeadLetterFilter;
use crate::worker::Settings;
use tokio_util::sync::CancellationToken;

/// `replay`'s flags: only the state and Heap, since dead letters hold the events. It runs
/// with the resolved [`Config`].
#[derive(Debug, Clone, Args, Serialize)]
pub struct ReplayArgs {
    #[command(flatten)]
    #[serde(flatten)]
    state: StateArgs,
    #[command(flatten)]
    #[serde(flatten)]
    pub(super) heap: HeapArgs,
    #[command(flatten)]
    #[serde(flatten)]
    mapping: MappingArgs,
    /// Map and count what would be re-sent; send nothing, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// After a stop signal, how long the dead-letter object in hand may take to finish, 1s
    /// to 1h.
    #[arg(long, default_value_t = DEFAULTS.shutdown_timeout.clone())]
    shutdown_timeout: HumanDuration,
    /// Only dead letters of this event type, e.g. users.behaviors.CustomEvent.
    #[arg(long)]
    #[serde(skip)]
    pub event_type: Option<String>,
    /// Only dead letters from this `date=` hour (YYYY-MM-DD-HH) or day (YYYY-MM-DD).
    #[arg(long, value_parser = parse_date_filter)]
    #[serde(skip)]
    pub date: Option<String>,
}

/// `YYYY-MM-DD-HH` or `YYYY-MM-DD`, checked, so a typo is an error and not an empty replay.
fn parse_date_filter(text: &str) -> Result<String, String> {
    let text = text.trim();
    let hour = crate::currents::key::DateHour::parse(text)
        .or_else(|| crate::currents::key::DateHour::parse(&format!("{text}-00")));
    match hour {
        Some(_) => Ok(text.to_string()),
        None => Err(format!(
            "`{text}` is not a date= hour (YYYY-MM-DD-HH) or day (YYYY-MM-DD)"
        )),
    }
}

pub async fn replay(args: ReplayArgs, config: Config) -> Exit {
    let abandon = CancellationToken::new();
    let stop = stop_on_signals(abandon.clone());
    let output = match output(&config, None) {
        Ok(output) => output,
        Err(exit) => return exit,
    };
    // replay serves no /metrics: its requests are counted and dropped.
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
    // A state that cannot be written is found before any dead letter is re-sent.
    let start = Preflight {
        source: false,
        state: StateUse::Write { lease: false },
        bounded: true,
    };
    if let Err(exit) = preflight_until(&config, start, &metrics, &stop).await {
        return exit;
    }
    let state = match open_state(&config, !config.dry_run, &metrics).await {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let filter = DeadLetterFilter {
        event_type: args.event_type.clone(),
        date: args.date.clone(),
    };
    let settings = Settings {
        object_concurrency: crate::worker::scheduler::Admission::fixed(1),
        shutdown_timeout: config.shutdown_timeout.get(),
        bounded_state_retry: config.retry_max_time.get(),
        dry_run: config.dry_run,
    };
    let report = crate::worker::replay::replay(
        state,
        output,
        &filter,
        &settings,
        stop.cancelled_owned(),
        &abandon,
    )
    .await;
    print!("{}", report.render());
    report.outcome().into()
}
