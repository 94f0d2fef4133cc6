//! Laying the sources over the defaults: the `--config` file, then environment variables,
//! then flags. Each value keeps its origin, so that an error names the flag, variable or file
//! key the user has to fix.

use std::collections::BTreeMap;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::{Config, heap_app_id, keys};
use crate::commands::run::RunArgs;
use crate::commands::{Cli, Command};

/// Where a value came from, to name it in an error.
#[derive(Debug, Clone)]
enum Origin {
    /// The file as the user named it: `--config PATH` or `CURRENTS_HEAP_CONFIG=PATH`.
    File(String),
    Env(String),
    Flag(String),
}

impl Origin {
    fn name(&self, key: &str) -> String {
        match self {
            Origin::File(file) => format!("{file}: config key `{key}`"),
            Origin::Env(var) => format!("environment variable {var}"),
            Origin::Flag(flag) => flag.clone(),
        }
    }
}

/// Each key that was set, with its value and where it came from; later layers replace
/// earlier ones.
type Layers = BTreeMap<String, (Json, Origin)>;

/// The effective configuration, and warnings to log once logging is set up.
#[derive(Debug)]
pub struct Resolved {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Builds the effective configuration from the defaults, the `--config` file, environment
/// variables and flags, and validates it. Without a command (`currents-heap --print-config`)
/// the environment is read as `run` would read it, since `run` takes every option.
pub fn resolve(cli: &Cli, matches: &ArgMatches) -> Result<Resolved, String> {
    let mut layers = Layers::new();
    let mut warnings = Vec::new();
    if let Some(path) = &cli.config {
        let name = match matches.value_source("config") {
            Some(ValueSource::EnvVariable) => format!("CURRENTS_HEAP_CONFIG={}", path.display()),
            _ => format!("--config {}", path.display()),
        };
        read_file(path, name, &mut layers, &mut warnings)?;
    }
    let top = Cli::command();
    given(cli, matches, &top, &mut layers)?;
    let app_id = match (&cli.command, matches.subcommand()) {
        (Some(command), Some((name, sub))) => {
            let definition = top
                .find_subcommand(name)
                .ok_or_else(|| format!("no command `{name}`"))?;
            command_given(command, sub, definition, &mut layers)?
        }
        _ => {
            let definition = top
                .find_subcommand("run")
                .ok_or("no command `run`")?
                .clone();
            let env_only = definition
                .clone()
                .try_get_matches_from(["run"])
                .map_err(|e| {
                    // No argument but `run`: whatever clap refused came from a variable.
                    let message = refused_value(&e, &[]).unwrap_or_else(|| e.to_string());
                    let message = message.trim_start_matches("error: ").trim_end();
                    message.lines().next().unwrap_or_default().to_string()
                })?;
            let run = RunArgs::from_arg_matches(&env_only).map_err(|e| e.to_string())?;
            given(&run, &env_only, &definition, &mut layers)?;
            run.worker.heap.heap_app_id.map(|id| (id, "HEAP_APP_ID"))
        }
    };

    let mut config = settle(&layers)?;
    config.heap_app_id = match app_id {
        Some((id, origin)) => heap_app_id(&id, origin)?,
        None => None,
    };
    Ok(Resolved { config, warnings })
}

/// The defaults with `layers` laid over them, validated; errors name where the value came from.
fn settle(layers: &Layers) -> Result<Config, String> {
    for (key, (value, origin)) in layers {
        if !keys().contains(&key.as_str()) {
            let prefix = match origin {
                Origin::File(file) => file.clone(),
                other => other.name(key),
            };
            return Err(format!(
                "{prefix}: unknown field `{key}`{}; the keys are the long flag names with `_`, as in deploy/config.example.toml",
                suggestion(key)
            ));
        }
        // One key at a time, so that a type error names its key.
        let single = Json::Object(Map::from_iter([(key.clone(), value.clone())]));
        if let Err(e) = serde_json::from_value::<Config>(single) {
            return Err(format!("{}: {e}", origin.name(key)));
        }
    }
    let all = layers
        .iter()
        .map(|(key, (value, _))| (key.clone(), value.clone()))
        .collect();
    let config: Config =
        serde_json::from_value(Json::Object(all)).map_err(|e| format!("configuration: {e}"))?;
    config.validate().map_err(|invalid| {
        let name = match layers.get(invalid.key) {
            Some((_, origin)) => origin.name(invalid.key),
            None => format!("the default of `{}`", invalid.key),
        };
        format!("{name}: {}", invalid.reason)
    })?;
    Ok(config)
}

/// clap's error for a value it refused, naming the environment variable the value came from
/// when no flag in `args` (the command line, without the program) gave it; `None` when clap's
/// own message names the right thing.
///
/// clap names the flag even for a value read from its variable (`invalid value '' for
/// '--listen <LISTEN>'` for `CURRENTS_HEAP_LISTEN=""`), a flag the user never passed; and
/// Kubernetes and Helm set a variable to "" when a template value is missing.
pub fn refused_value(error: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    // What clap wrote about the value, and what it becomes once the variable is named.
    let (refused, named) = match (error.kind(), error.get(ContextKind::InvalidValue)) {
        // clap's wording for an empty value it refuses outright.
        (ErrorKind::InvalidValue, Some(ContextValue::String(v))) if v.is_empty() => (
            format!("a value is required for '{arg}' but none was supplied"),
            "a value is required, but the variable is empty".to_string(),
        ),
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(ContextValue::String(v))) => (
            format!("invalid value '{v}' for '{arg}'"),
            format!("invalid value '{v}'"),
        ),
        _ => return None,
    };
    // `--listen <LISTEN>`, `--identity <IDENTITY>...`
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    if args
        .iter()
        .any(|a| *a == flag || a.strip_prefix(&flag).is_some_and(|v| v.starts_with('=')))
    {
        return None;
    }
    let top = Cli::command();
    let var = std::iter::once(&top)
        .chain(top.get_subcommands())
        .flat_map(|command| command.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())?
        .to_string_lossy()
        .into_owned();
    std::env::var_os(&var)?;
    let message = error.render().to_string();
    message
        .contains(&refused)
        .then(|| message.replacen(&refused, &format!("{var}: {named}"), 1))
}

/// Lays what clap was given for a command over `layers`; returns the Heap app id, if given,
/// with the flag or variable it came from.
fn command_given(
    command: &Command,
    matches: &ArgMatches,
    definition: &clap::Command,
    layers: &mut Layers,
) -> Result<Option<(String, &'static str)>, String> {
    match command {
        Command::Inspect {
            mapping, stores, ..
        } => {
            given(mapping, matches, definition, layers)?;
            given(stores, matches, definition, layers)?
        }
        Command::Run(args) => given(args, matches, definition, layers)?,
        Command::Backfill(args) => given(args, matches, definition, layers)?,
        Command::Replay(args) => given(args, matches, definition, layers)?,
        Command::Status(args) => given(args, matches, definition, layers)?,
        Command::Check(args) => given(&args.run, matches, definition, layers)?,
    }
    let id = match command {
        Command::Run(args) => args.worker.heap.heap_app_id.clone(),
        Command::Backfill(args) => args.worker.heap.heap_app_id.clone(),
        Command::Replay(args) => args.heap.heap_app_id.clone(),
        Command::Check(args) => args.run.worker.heap.heap_app_id.clone(),
        Command::Inspect { .. } | Command::Status(_) => None,
    };
    // Asked only with an id: clap panics when asked of an argument the command lacks.
    Ok(id.map(|id| match matches.value_source("heap_app_id") {
        Some(ValueSource::CommandLine) => (id, "--heap-app-id"),
        _ => (id, "HEAP_APP_ID"),
    }))
}

/// Lays over `layers` each of `args`' values that came from a flag or the environment, not
/// from clap's default.
fn given(
    args: &impl Serialize,
    matches: &ArgMatches,
    definition: &clap::Command,
    layers: &mut Layers,
) -> Result<(), String> {
    let values = match serde_json::to_value(args) {
        Ok(Json::Object(values)) => values,
        Ok(_) => return Ok(()),
        Err(e) => return Err(format!("a flag or environment variable: {e}")),
    };
    for (key, value) in values {
        let origin = match matches.value_source(&key) {
            Some(ValueSource::CommandLine) => Origin::Flag(format!("--{}", key.replace('_', "-"))),
            Some(ValueSource::EnvVariable) => Origin::Env(
                definition
                    .get_arguments()
                    .find(|a| a.get_id() == key.as_str())
                    .and_then(|a| a.get_env())
                    .map_or_else(|| key.to_uppercase(), |v| v.to_string_lossy().into_owned()),
            ),
            _ => continue,
        };
        layers.insert(key, (value, origin));
    }
    Ok(())
}

/// Reads the `--config` file into `layers`. Errors name the file and give the line, but never
/// quote it: a mistyped line could hold a secret.
/// `name` says how the user named the file.
fn read_file(
    path: &Path,
    name: String,
    layers: &mut Layers,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|span| {
            let end = span.start.min(text.len());
            text.as_bytes()[..end]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        match line {
            Some(line) => format!("{name}: line {line}: {}", e.message().trim_end()),
            None => format!("{name}: {}", e.message().trim_end()),
        }
    })?;
    if table.contains_key("heap_app_id") {
        return Err(format!(
            "{name}: heap_app_id is a secret and is not read from this file; set HEAP_APP_ID, --heap-app-id or heap_app_id_file"
        ));
    }
    // The table was `[renames]` before its key followed the flag (`--rename`).
    if let Some(old) = table.remove("renames") {
        if table.contains_key("rename") {
            return Err(format!(
                "{name}: both [rename] and [renames]; [renames] is the old name of [rename]: merge them into [rename]"
            ));
        }
        warnings.push(format!(
            "{name}: [renames] is deprecated; call the table [rename], after the --rename flag"
        ));
        table.insert("rename".into(), old);
    }
    for (key, value) in table {
        let value = serde_json::to_value(&value).map_err(|e| format!("{name}: `{key}`: {e}"))?;
        layers.insert(key, (value, Origin::File(name.clone())));
    }
    Ok(())
}

/// ` (did you mean `poll_interval`?)` for a key one or two edits from a real one.
pub(super) fn suggestion(key: &str) -> String {
    keys()
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map_or_else(String::new, |(_, k)| format!(" (did you mean `{k}`?)"))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// What `--config FILE` alone yields: the defaults with the file laid over them, validated.
pub fn from_file(path: &Path) -> Result<Config, String> {
    let mut layers = Layers::new();
    let name = format!("--config {}", path.display());
    read_file(path, name, &mut layers, &mut Vec::new())?;
    settle(&layers)
}
