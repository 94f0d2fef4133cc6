//! The command line: one module per command, each a function the binary and the tests share.

pub mod backfill;
pub mod config;
pub mod inspect;
pub mod replay;
pub mod run;
pub mod status;
pub mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::heap::map::{IdentitySource, MappingConfig};

/// The exit codes, in `--help` as in the README.
const EXIT_CODES: &str = "Exit codes:
  0  everything asked for is finished (a long-lived `run` stopped by SIGTERM/SIGINT also exits 0)
  1  fatal: the ERROR line says what to fix (e.g. Heap answered 401/403/404)
  2  usage or configuration error, reported before any work starts
  3  finished, but events were parked as dead letters or objects failed (see `status`)
  4  `run --once`, `backfill` or `replay` stopped before its work was done (a signal, store
     errors, objects left to retry): it prints what remains; running it again resumes";

/// Delivers Braze Currents events to Heap's server-side track API.
#[derive(Debug, Parser)]
#[command(name = "currents-heap", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log lines on stderr: `human` (colours on a terminal) or `json` (one object per line).
    #[arg(long, global = true, env = "CURRENTS_HEAP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// A TOML file with any of the options (flags and environment variables override it).
    #[arg(long, global = true, env = "CURRENTS_HEAP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print Currents Avro files as Braze Custom HTTP connector events, one JSON object per line.
    ///
    /// Takes files or directories (searched recursively for `.avro` files). A file that cannot
    /// be read gets one error line on stderr; the others are still printed, and the exit code
    /// is 1 if any file failed.
    Inspect {
        /// Avro files, or directories to search for them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print the Heap track events that would be sent instead (nothing is sent).
        #[arg(long)]
        heap: bool,
        #[command(flatten)]
        mapping: MappingArgs,
    },
    /// Poll the source and deliver new Currents objects to Heap until SIGTERM/SIGINT.
    Run(run::RunArgs),
    /// Deliver a past range of `date=` hours; resumable.
    Backfill(backfill::BackfillArgs),
    /// Re-send dead letters (all, or by event type or date) once the cause is fixed.
    Replay(replay::ReplayArgs),
    /// Show pending objects, done and failed counts, dead letters by reason, and the lag.
    Status(status::StatusArgs),
}

/// How Currents events become Heap track events.
#[derive(Debug, Clone, Args)]
pub struct MappingArgs {
    /// Braze fields to use as the Heap identity, tried in order (external_user_id, user_id).
    /// Events with none of them are not sent, and are counted per event type.
    #[arg(
        long,
        env = "CURRENTS_HEAP_IDENTITY",
        value_delimiter = ',',
        default_value = "external_user_id"
    )]
    pub identity: Vec<IdentitySource>,
    /// Prefix for every Heap event name, e.g. `braze-`.
    #[arg(long, env = "CURRENTS_HEAP_EVENT_PREFIX", default_value = "")]
    pub event_prefix: String,
    /// Heap event name for an event type, as TYPE=NAME (repeatable), e.g.
    /// `users.messages.email.Open=Email Opened`.
    #[arg(long = "rename", value_name = "TYPE=NAME", value_parser = parse_rename)]
    pub renames: Vec<(String, String)>,
}

impl MappingArgs {
    pub fn config(&self) -> MappingConfig {
        MappingConfig {
            identity: self.identity.clone(),
            event_prefix: self.event_prefix.clone(),
            renames: self.renames.iter().cloned().collect(),
        }
    }
}

fn parse_rename(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((event_type, name)) if !event_type.trim().is_empty() && !name.trim().is_empty() => {
            Ok((event_type.trim().to_string(), name.trim().to_string()))
        }
        _ => Err(format!("`{text}` is not TYPE=NAME")),
    }
}
