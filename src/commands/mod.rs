//! The command line: one module per command, each a function the binary and the tests share.

pub mod backfill;
pub mod check;
pub mod config;
pub mod inspect;
pub mod replay;
pub mod run;
pub mod status;
pub mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::heap::map::IdentitySource;
use config::{DEFAULT_IDENTITY, DEFAULTS};

/// The exit codes, in `--help` as in docs/reference/exit-codes.md.
const EXIT_CODES: &str = "Exit codes:
  0  everything asked for is finished (a long-lived `run` stopped by SIGTERM/SIGINT also exits 0)
  1  fatal: the ERROR line says what to fix (e.g. Heap answered 401/403/404)
  2  usage, configuration, wiring or permission error (a missing bucket, a state that cannot
     be written, a queue the bucket does not notify), found before any event is sent;
     `currents-heap check` lists every one at once
  3  finished, but events were parked as dead letters or objects failed (see `status`)
  4  `run --once`, `backfill` or `replay` stopped before its work was done (a signal, a store
     outage, at start or later, objects left to retry; a `backfill` that handed its range to a `run` worker: the
     worker ended it incomplete, or a signal stopped the following while the worker carries
     on): it prints what remains; running it again resumes (or follows again)";

// The clap structs here and in each command's module only read flags and environment
// variables; a command runs with the resolved `config::Config`. Their option fields are
// private so that nothing reads a clap default in place of the file's value.

/// Delivers Braze Currents events to Heap's server-side track API.
#[derive(Debug, Parser, Serialize)]
#[command(name = "currents-heap", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log lines on stderr: `human` (colours on a terminal) or `json` (one object per line).
    #[arg(long, global = true, env = "CURRENTS_HEAP_LOG_FORMAT", value_enum, default_value_t = DEFAULTS.log_format)]
    log_format: LogFormat,
    /// A TOML file with any of the options but the Heap app id; flags and environment
    /// variables override it. Keys are the long flag names with `_`.
    #[arg(long, global = true, env = "CURRENTS_HEAP_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets redacted) and exit; without a
    /// command, every option as `run` would see it.
    #[arg(long, global = true)]
    #[serde(skip)]
    pub print_config: bool,
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print Currents Avro files as Braze Custom HTTP connector events, one JSON object per line.
    ///
    /// Takes files or directories (searched recursively for `.avro` files), `-` for standard
    /// input, and `s3://`, `az://`, `gs://` locations: an object, or a prefix (every `.avro`
    /// object under it), read with the worker's credentials. A file that cannot be read gets
    /// one error line on stderr; the others are still printed. Exit code 2 if an input was
    /// missing or could not be read (denied), else 1 if a file was not Currents Avro.
    Inspect {
        /// Avro files, directories to search for them, `-`, or `s3://`, `az://`, `gs://`
        /// objects or prefixes.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the Heap track events that would be sent instead (nothing is sent).
        #[arg(long)]
        heap: bool,
        #[command(flatten)]
        mapping: MappingArgs,
        #[command(flatten)]
        stores: inspect::InspectStoreArgs,
    },
    /// Poll the source and deliver new Currents objects to Heap until SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// Deliver a past range of `date=` hours; resumable. While a `run` worker is live on the
    /// same state, the range is handed to it and this command follows its progress.
    Backfill(backfill::BackfillArgs),
    /// Re-send dead letters (all, or by event type or date) once the cause is fixed.
    Replay(replay::ReplayArgs),
    /// Show pending objects, done and failed counts, dead letters by reason, and the lag.
    Status(status::StatusArgs),
    /// Check the wiring `run` depends on, one line per check (what, where, ok or the fix);
    /// sends no event. Takes `run`'s options and config. Exit 0, or 2 if any check fails.
    Check(check::CheckArgs),
}

/// How Currents events become Heap track events.
#[derive(Debug, Clone, Args, Serialize)]
pub struct MappingArgs {
    /// Braze fields to use as the Heap identity, tried in order (external_user_id, user_id).
    /// Events with none of them are not sent, and are counted per event type.
    #[arg(
        long,
        env = "CURRENTS_HEAP_IDENTITY",
        value_delimiter = ',',
        default_value = DEFAULT_IDENTITY
    )]
    #[serde(with = "config::identity_names")]
    identity: Vec<IdentitySource>,
    /// Prefix for every Heap event name, e.g. `braze-` (under 1024 characters).
    #[arg(long, env = "CURRENTS_HEAP_EVENT_PREFIX", default_value_t = DEFAULTS.event_prefix.clone())]
    event_prefix: String,
    /// Prefix for every Heap property key, e.g. `braze-` (under 1023 characters).
    #[arg(long, env = "CURRENTS_HEAP_PROPERTY_PREFIX", default_value_t = DEFAULTS.property_prefix.clone())]
    property_prefix: String,
    /// Heap event name for an event type, as TYPE=NAME (repeatable), e.g.
    /// `users.messages.email.Open=Email Opened`. In the file: a `[rename]` table.
    #[arg(long, value_name = "TYPE=NAME", value_parser = parse_rename)]
    #[serde(serialize_with = "config::renames_as_table")]
    rename: Vec<(String, String)>,
    /// Heap user properties from Braze profile and subscription events: which to send, e.g.
    /// `subscription,email_address,custom_attributes.plan` (subscription, subscription_group,
    /// random_bucket_number, first_name, last_name, email_address, phone_number, dob,
    /// home_city, archived, custom_attributes, custom_attributes.<name>). Personal data is
    /// sent only if named. Default none (off).
    #[arg(
        long,
        env = "CURRENTS_HEAP_USER_PROPERTIES",
        value_delimiter = ',',
        value_name = "FIELD"
    )]
    // Kept as text: the configuration parses every source's entries alike, so a bad name
    // is reported with the flag, variable or file key it came from.
    user_properties: Vec<String>,
    /// Prefix for every Heap user property name (under 1023 characters). With an empty
    /// prefix, names that are any casing of `id` or `user_id` are dropped and counted.
    #[arg(long, env = "CURRENTS_HEAP_USER_PROPERTY_PREFIX", default_value_t = DEFAULTS.user_property_prefix.clone())]
    user_property_prefix: String,
    /// Users per minute sent user properties at most, 1 to 1,000,000 (a ceiling of its own,
    /// lowered on 429 like the events' budget).
    #[arg(long, env = "CURRENTS_HEAP_USER_PROPERTIES_PER_MINUTE", default_value_t = DEFAULTS.user_properties_per_minute)]
    user_properties_per_minute: u64,
}

fn parse_rename(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((event_type, name)) if !event_type.trim().is_empty() && !name.trim().is_empty() => {
            Ok((event_type.trim().to_string(), name.trim().to_string()))
        }
        _ => Err(format!("`{text}` is not TYPE=NAME")),
    }
}
