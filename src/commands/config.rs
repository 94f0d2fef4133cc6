//! `--config FILE`: every option in a TOML file (see `deploy/config.example.toml`).
//!
//! Precedence: flags, then environment variables, then the file, then defaults. clap resolves
//! flags and environment; a file value fills in only where clap fell back to the default.
//! Unknown keys are rejected. Secrets are never read from this file: the Heap app id comes
//! from `HEAP_APP_ID` or a file named by `heap_app_id_file`, AWS credentials from the chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use super::worker::{HeapArgs, StateArgs, StoreArgs, WorkerArgs};
use super::{Command, MappingArgs};
use crate::clock::parse_duration;
use crate::heap::map::IdentitySource;
use crate::store::Location;
use crate::worker::Lookback;

/// The file's keys: the long flag names, with `_` for `-`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    source: Option<String>,
    state: Option<String>,
    s3_path_style: Option<bool>,
    heap_url: Option<String>,
    /// Refused with a clear message: secrets do not belong in this file.
    heap_app_id: Option<toml::Value>,
    heap_app_id_file: Option<PathBuf>,
    app_rate_limit: Option<u64>,
    identity_rate_limit: Option<u64>,
    max_batch_events: Option<u64>,
    max_body_bytes: Option<usize>,
    heap_concurrency: Option<u64>,
    retry_max_time: Option<String>,
    max_pending_events: Option<u64>,
    request_timeout: Option<String>,
    identity: Option<Vec<String>>,
    event_prefix: Option<String>,
    /// Event type → Heap event name.
    renames: Option<BTreeMap<String, String>>,
    object_concurrency: Option<u64>,
    dry_run: Option<bool>,
    poll_interval: Option<String>,
    lookback: Option<String>,
    shutdown_timeout: Option<String>,
    listen: Option<String>,
}

/// Reads and checks a config file; every error names the file and the key.
pub fn load(path: &Path) -> Result<FileConfig, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let config: FileConfig =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    if config.heap_app_id.is_some() {
        return Err(format!(
            "--config {}: heap_app_id is a secret and is not read from this file; set HEAP_APP_ID or heap_app_id_file",
            path.display()
        ));
    }
    Ok(config)
}

/// True where clap used the default, so the file may fill in.
fn unset(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        None | Some(ValueSource::DefaultValue)
    )
}

fn invalid(key: &str, e: impl std::fmt::Display) -> String {
    format!("config key `{key}`: {e}")
}

/// Fills in what flags and environment left at the default.
pub fn apply(file: &FileConfig, command: &mut Command, matches: &ArgMatches) -> Result<(), String> {
    let Some((_, sub)) = matches.subcommand() else {
        return Ok(());
    };
    match command {
        Command::Inspect { mapping, .. } => apply_mapping(file, mapping, sub),
        Command::Run(args) => {
            apply_worker(file, &mut args.worker, sub)?;
            if let (Some(v), true) = (&file.poll_interval, unset(sub, "poll_interval")) {
                args.poll_interval = parse_duration(v).map_err(|e| invalid("poll_interval", e))?;
            }
            if let (Some(v), true) = (&file.lookback, unset(sub, "lookback")) {
                args.lookback = v.parse().map_err(|e| invalid("lookback", e))?;
            }
            if let (Some(v), true) = (&file.shutdown_timeout, unset(sub, "shutdown_timeout")) {
                args.shutdown_timeout =
                    parse_duration(v).map_err(|e| invalid("shutdown_timeout", e))?;
            }
            if let (Some(v), true) = (&file.listen, unset(sub, "listen")) {
                args.listen = Some(v.parse().map_err(|e| invalid("listen", e))?);
            }
            Ok(())
        }
        Command::Backfill(args) => {
            apply_worker(file, &mut args.worker, sub)?;
            if let (Some(v), true) = (&file.shutdown_timeout, unset(sub, "shutdown_timeout")) {
                args.shutdown_timeout =
                    parse_duration(v).map_err(|e| invalid("shutdown_timeout", e))?;
            }
            Ok(())
        }
        Command::Replay(args) => {
            apply_state(file, &mut args.state, sub)?;
            apply_heap(file, &mut args.heap, sub)?;
            apply_mapping(file, &mut args.mapping, sub)?;
            if let (Some(v), true) = (file.dry_run, unset(sub, "dry_run")) {
                args.dry_run = v;
            }
            Ok(())
        }
        Command::Status(args) => {
            apply_stores(file, &mut args.stores, sub)?;
            if let (Some(v), true) = (&file.lookback, unset(sub, "lookback")) {
                args.lookback = v.parse::<Lookback>().map_err(|e| invalid("lookback", e))?;
            }
            Ok(())
        }
    }
}

fn apply_stores(file: &FileConfig, stores: &mut StoreArgs, m: &ArgMatches) -> Result<(), String> {
    if let (Some(v), true) = (&file.source, unset(m, "source")) {
        stores.source = v.parse::<Location>().map_err(|e| invalid("source", e))?;
    }
    apply_state(file, &mut stores.state, m)
}

fn apply_state(file: &FileConfig, state: &mut StateArgs, m: &ArgMatches) -> Result<(), String> {
    if let (Some(v), true) = (&file.state, unset(m, "state")) {
        state.state = v.parse::<Location>().map_err(|e| invalid("state", e))?;
    }
    if let (Some(v), true) = (file.s3_path_style, unset(m, "s3_path_style")) {
        state.s3_path_style = v;
    }
    Ok(())
}

fn apply_heap(file: &FileConfig, heap: &mut HeapArgs, m: &ArgMatches) -> Result<(), String> {
    if let (Some(v), true) = (&file.heap_url, unset(m, "heap_url")) {
        heap.heap_url = v.clone();
    }
    if let (Some(v), true) = (&file.heap_app_id_file, unset(m, "heap_app_id_file")) {
        heap.heap_app_id_file = Some(v.clone());
    }
    let numbers: [(&str, Option<u64>, &mut u64); 5] = [
        (
            "app_rate_limit",
            file.app_rate_limit,
            &mut heap.app_rate_limit,
        ),
        (
            "identity_rate_limit",
            file.identity_rate_limit,
            &mut heap.identity_rate_limit,
        ),
        (
            "max_batch_events",
            file.max_batch_events,
            &mut heap.max_batch_events,
        ),
        (
            "heap_concurrency",
            file.heap_concurrency,
            &mut heap.heap_concurrency,
        ),
        (
            "max_pending_events",
            file.max_pending_events,
            &mut heap.max_pending_events,
        ),
    ];
    for (key, value, target) in numbers {
        if let (Some(v), true) = (value, unset(m, key)) {
            *target = v;
        }
    }
    if !(1..=1000).contains(&heap.max_batch_events) {
        return Err(invalid("max_batch_events", "must be 1 to 1000"));
    }
    if heap.heap_concurrency == 0 || heap.max_pending_events < 1000 {
        return Err(invalid(
            "heap_concurrency / max_pending_events",
            "heap_concurrency ≥ 1, max_pending_events ≥ 1000",
        ));
    }
    if let (Some(v), true) = (file.max_body_bytes, unset(m, "max_body_bytes")) {
        heap.max_body_bytes = v;
    }
    if let (Some(v), true) = (&file.retry_max_time, unset(m, "retry_max_time")) {
        heap.retry_max_time = parse_duration(v).map_err(|e| invalid("retry_max_time", e))?;
    }
    if let (Some(v), true) = (&file.request_timeout, unset(m, "request_timeout")) {
        heap.request_timeout = parse_duration(v).map_err(|e| invalid("request_timeout", e))?;
    }
    Ok(())
}

fn apply_mapping(
    file: &FileConfig,
    mapping: &mut MappingArgs,
    m: &ArgMatches,
) -> Result<(), String> {
    if let (Some(v), true) = (&file.identity, unset(m, "identity")) {
        mapping.identity = v
            .iter()
            .map(|s| s.parse::<IdentitySource>())
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("identity", e))?;
    }
    if let (Some(v), true) = (&file.event_prefix, unset(m, "event_prefix")) {
        mapping.event_prefix = v.clone();
    }
    if let (Some(v), true) = (&file.renames, unset(m, "renames")) {
        mapping.renames = v.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    Ok(())
}

fn apply_worker(file: &FileConfig, worker: &mut WorkerArgs, m: &ArgMatches) -> Result<(), String> {
    apply_stores(file, &mut worker.stores, m)?;
    apply_heap(file, &mut worker.heap, m)?;
    apply_mapping(file, &mut worker.mapping, m)?;
    if let (Some(v), true) = (file.object_concurrency, unset(m, "object_concurrency")) {
        worker.object_concurrency = v.max(1);
    }
    if let (Some(v), true) = (file.dry_run, unset(m, "dry_run")) {
        worker.dry_run = v;
    }
    Ok(())
}

/// The effective configuration as TOML, secrets redacted, for `--print-config`.
pub fn render(command: &Command) -> String {
    let mut lines: Vec<String> = Vec::new();
    match command {
        Command::Inspect { mapping: m, .. } => mapping(m, &mut lines),
        Command::Run(args) => {
            worker(&args.worker, &mut lines);
            lines.push(format!("poll_interval = {}", duration(args.poll_interval)));
            lines.push(format!("lookback = {}", quote(&args.lookback.to_string())));
            lines.push(format!(
                "shutdown_timeout = {}",
                duration(args.shutdown_timeout)
            ));
            if let Some(listen) = args.listen {
                lines.push(format!("listen = {}", quote(&listen.to_string())));
            }
        }
        Command::Backfill(args) => {
            worker(&args.worker, &mut lines);
            lines.push(format!(
                "shutdown_timeout = {}",
                duration(args.shutdown_timeout)
            ));
        }
        Command::Replay(args) => {
            state(&args.state, &mut lines);
            heap(&args.heap, &mut lines);
            lines.push(format!("dry_run = {}", args.dry_run));
            mapping(&args.mapping, &mut lines);
        }
        Command::Status(args) => {
            stores(&args.stores, &mut lines);
            lines.push(format!("lookback = {}", quote(&args.lookback.to_string())));
        }
    }
    // Tables come last in TOML.
    lines.sort_by_key(|l| l.starts_with('['));
    lines.join("\n") + "\n"
}

fn stores(s: &StoreArgs, lines: &mut Vec<String>) {
    lines.push(format!("source = {}", quote(&s.source.to_string())));
    state(&s.state, lines);
}

fn state(s: &StateArgs, lines: &mut Vec<String>) {
    lines.push(format!("state = {}", quote(&s.state.to_string())));
    lines.push(format!("s3_path_style = {}", s.s3_path_style));
}

fn heap(h: &HeapArgs, lines: &mut Vec<String>) {
    lines.push(format!("heap_url = {}", quote(&h.heap_url)));
    lines.push(format!(
        "# heap_app_id = {}",
        if h.heap_app_id.is_some() || h.heap_app_id_file.is_some() {
            "<redacted>"
        } else {
            "<unset>"
        }
    ));
    if let Some(file) = &h.heap_app_id_file {
        lines.push(format!(
            "heap_app_id_file = {}",
            quote(&file.display().to_string())
        ));
    }
    lines.push(format!("app_rate_limit = {}", h.app_rate_limit));
    lines.push(format!("identity_rate_limit = {}", h.identity_rate_limit));
    lines.push(format!("max_batch_events = {}", h.max_batch_events));
    lines.push(format!("max_body_bytes = {}", h.max_body_bytes));
    lines.push(format!("heap_concurrency = {}", h.heap_concurrency));
    lines.push(format!("retry_max_time = {}", duration(h.retry_max_time)));
    lines.push(format!("max_pending_events = {}", h.max_pending_events));
    lines.push(format!("request_timeout = {}", duration(h.request_timeout)));
}

fn worker(w: &WorkerArgs, lines: &mut Vec<String>) {
    stores(&w.stores, lines);
    heap(&w.heap, lines);
    lines.push(format!("object_concurrency = {}", w.object_concurrency));
    lines.push(format!("dry_run = {}", w.dry_run));
    mapping(&w.mapping, lines);
}

/// A duration as `parse_duration` reads it back, exactly: `500ms` stays `500ms`.
fn duration(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("\"{}s\"", d.as_secs())
    } else {
        format!("\"{}ms\"", d.as_millis())
    }
}

fn mapping(m: &MappingArgs, lines: &mut Vec<String>) {
    let identity: Vec<&str> = m
        .identity
        .iter()
        .map(|i| match i {
            IdentitySource::ExternalUserId => "\"external_user_id\"",
            IdentitySource::UserId => "\"user_id\"",
        })
        .collect();
    lines.push(format!("identity = [{}]", identity.join(", ")));
    lines.push(format!("event_prefix = {}", quote(&m.event_prefix)));
    if !m.renames.is_empty() {
        let mut table = String::from("[renames]");
        for (event_type, name) in &m.renames {
            table.push_str(&format!("\n{} = {}", quote(event_type), quote(name)));
        }
        lines.push(table);
    }
}

/// A TOML basic string: JSON's escapes are a subset of TOML's.
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}
