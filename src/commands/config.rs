//! The configuration: one model, [`Config`], for flags, environment variables and the
//! `--config FILE` (`CURRENTS_HEAP_CONFIG`) TOML file.
//!
//! Each file key is the long flag name with `_` (`--poll-interval` is `poll_interval`,
//! `--rename A=B` is a `[rename]` table); `deploy/config.example.toml` documents every key.
//! [`resolve`] lays the sources over the defaults, lowest first: the file, then environment
//! variables, then flags. Only what clap was actually given counts: clap's defaults exist for
//! `--help` and come from [`DEFAULTS`]. [`Config::validate`] then checks the result once, so a
//! bound is the same whether a value came from a flag, a variable or the file, and an error
//! names the flag, variable or file key it came from.
//!
//! Secrets are never read from the file and never printed: the Heap app id comes only from
//! `HEAP_APP_ID`/`--heap-app-id` or the file named by `heap_app_id_file`; AWS credentials come
//! from the AWS chain.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value as Json};

use super::run::RunArgs;
use super::{Cli, Command, LogFormat};
use crate::heap::map::{IdentitySource, MAX_EVENT_NAME_CHARS, MappingConfig};
use crate::store::Location;
use crate::worker::Lookback;

/// The bounds [`Config::validate`] enforces, whatever the source; `--help`, the README and
/// `deploy/config.example.toml` state them (a test checks `--help` and the example).
pub mod limits {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// Events per sliding minute; 0 disables the limit. Heap's own limits are far below the top.
    pub const RATE_LIMIT: RangeInclusive<u64> = 0..=1_000_000;
    /// Heap takes 1 to 1000 events per bulk request.
    pub const MAX_BATCH_EVENTS: RangeInclusive<u64> = 1..=1000;
    /// Below 16 KiB ordinary events (mostly short Braze fields, a few hundred bytes to a few
    /// KiB mapped) would start to be parked as too large to send alone; at 0 every one was.
    /// Heap documents no body limit: 16 MiB is far above a full batch of ordinary events and
    /// keeps one request's memory bounded.
    pub const MAX_BODY_BYTES: RangeInclusive<u64> = 16 * 1024..=16 * 1024 * 1024;
    pub const HEAP_CONCURRENCY: RangeInclusive<u64> = 1..=64;
    /// At least a full batch, so that pending room never keeps batches short; every pending
    /// event is held in memory, hence the top.
    pub const MAX_PENDING_EVENTS: RangeInclusive<u64> = 1000..=1_000_000;
    pub const OBJECT_CONCURRENCY: RangeInclusive<u64> = 1..=256;
    /// Also how long bounded runs retry a failing state store.
    pub const RETRY_MAX_TIME: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
    /// Under a second, Heap may store a batch and still be reported as not answering.
    pub const REQUEST_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(600);
    /// Under a second, `run` would list the source in a busy loop.
    pub const POLL_INTERVAL: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(24 * 3600);
    /// Kubernetes' grace period must outlast it; an hour is already generous.
    pub const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_secs(1)..=Duration::from_secs(3600);
}

/// Every option with its default. Field names are the file keys and clap's argument ids.
///
/// `Default` is the one place defaults are written: clap shows them in `--help` through
/// [`DEFAULTS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Braze Currents writes: `s3://bucket/prefix`, or a local directory in the same
    /// layout. Default `fixtures/bucket`.
    #[serde(with = "as_text")]
    pub source: Location,
    /// Where the ledger and dead letters live: `s3://bucket/prefix`, or a local directory.
    /// Default `currents-heap-state`.
    #[serde(with = "as_text")]
    pub state: Location,
    /// Path-style S3 addressing, for S3-compatible stores (MinIO, ...). Default false.
    pub s3_path_style: bool,
    /// Heap's API base URL: http:// or https:// with a host. Default
    /// `https://heapanalytics.com`; EU data centre: `https://c.eu.heap-api.com`.
    pub heap_url: String,
    /// The Heap app (environment) id: only from `--heap-app-id`/`HEAP_APP_ID`, never from
    /// the file, never printed. Required unless `dry_run` or `heap_app_id_file`.
    #[serde(skip)]
    pub heap_app_id: Option<Secret>,
    /// A file holding the Heap app id, e.g. a mounted Kubernetes secret; read when delivery
    /// starts. Default none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_app_id_file: Option<PathBuf>,
    /// Events per sliding minute for the app, 0 to 1,000,000; 0 disables the limit.
    /// Default 15,000 (Heap's limit).
    pub app_rate_limit: u64,
    /// Events per sliding minute per identity, 0 to 1,000,000; 0 disables the limit.
    /// Default 1,000 (Heap's limit).
    pub identity_rate_limit: u64,
    /// Events per bulk request, 1 to 1,000. Default 1,000.
    pub max_batch_events: u64,
    /// Bytes per request body, 16,384 to 16,777,216 (16 KiB to 16 MiB); an event that
    /// cannot fit alone is parked. Default 1,048,576 (1 MiB).
    pub max_body_bytes: u64,
    /// Requests to Heap in flight at once, 1 to 64. Default 2.
    pub heap_concurrency: u64,
    /// How long a failing batch is retried before its events are parked, 1s to 24h; bounded
    /// runs also give up on a failing state store after it. Default 15m.
    pub retry_max_time: HumanDuration,
    /// Mapped events held in memory waiting for rate-limit room, 1,000 to 1,000,000.
    /// Default 5,000.
    pub max_pending_events: u64,
    /// Timeout of one request to Heap, 1s to 10m. Default 30s.
    pub request_timeout: HumanDuration,
    /// Braze fields tried in order as the Heap identity (`external_user_id`, `user_id`); at
    /// least one. Default `["external_user_id"]`.
    #[serde(with = "identity_names")]
    pub identity: Vec<IdentitySource>,
    /// Prefix for every Heap event name, e.g. `braze-`; under 1024 characters. Default empty.
    pub event_prefix: String,
    /// Currents objects processed at once, 1 to 256. Default 4.
    pub object_concurrency: u64,
    /// Decode, map and count, but send nothing and record nothing. Default false.
    pub dry_run: bool,
    /// `run`: how often to list the source for new objects, 1s to 24h. Default 60s.
    pub poll_interval: HumanDuration,
    /// `run` and `status`: which `date=` hours to look at, 1h to 400 days, or `all` (lists the
    /// whole source). Default 72h.
    #[serde(with = "as_text")]
    pub lookback: Lookback,
    /// `run` and `backfill`: after a stop signal, how long objects in flight may take to
    /// finish, 1s to 1h. Default 30s.
    pub shutdown_timeout: HumanDuration,
    /// `run`: serve /metrics, /healthz and /readyz on this address, e.g. `0.0.0.0:9090`.
    /// Default none (off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Log lines on stderr: `human` (colours on a terminal) or `json`. Default `human`.
    pub log_format: LogFormat,
    /// Event type → Heap event name, replacing the default name (`--rename TYPE=NAME`).
    /// Default empty.
    pub rename: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: Location::Local(PathBuf::from("fixtures/bucket")),
            state: Location::Local(PathBuf::from("currents-heap-state")),
            s3_path_style: false,
            heap_url: "https://heapanalytics.com".into(),
            heap_app_id: None,
            heap_app_id_file: None,
            app_rate_limit: 15_000,
            identity_rate_limit: 1_000,
            max_batch_events: 1000,
            max_body_bytes: 1024 * 1024,
            heap_concurrency: 2,
            retry_max_time: HumanDuration::minutes(15),
            max_pending_events: 5_000,
            request_timeout: HumanDuration::seconds(30),
            identity: vec![IdentitySource::ExternalUserId],
            event_prefix: String::new(),
            object_concurrency: 4,
            dry_run: false,
            poll_interval: HumanDuration::seconds(60),
            lookback: Lookback::Hours(72),
            shutdown_timeout: HumanDuration::seconds(30),
            listen: None,
            log_format: LogFormat::Human,
            rename: BTreeMap::new(),
        }
    }
}

/// The defaults, for clap's `default_value_t` (so `--help` shows them).
pub static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);

/// `--identity`'s default as clap reads it (a unit test checks it against [`Config::default`]).
pub const DEFAULT_IDENTITY: &str = "external_user_id";

/// A setting that is out of bounds or malformed, by its file key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub reason: String,
}

/// One bounded setting: its key, whether it is within bounds, and both as people write them.
struct Bound {
    key: &'static str,
    within: bool,
    range: String,
    value: String,
}

impl Config {
    /// Checks every bound and rule; the error names the file key and the reason.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key, reason: String| Err(Invalid { key, reason });
        if let Some(bound) = self.bounds().into_iter().find(|b| !b.within) {
            return invalid(
                bound.key,
                format!("must be {}, not {}", bound.range, bound.value),
            );
        }
        match reqwest::Url::parse(&self.heap_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return invalid(
                    "heap_url",
                    format!(
                        "`{}` is not an http:// or https:// URL with a host",
                        self.heap_url
                    ),
                );
            }
        }
        if self.identity.is_empty() {
            return invalid(
                "identity",
                "names no field: give external_user_id, user_id or both".into(),
            );
        }
        if self.event_prefix.chars().count() >= MAX_EVENT_NAME_CHARS {
            return invalid(
                "event_prefix",
                format!(
                    "is {} characters: every event name would exceed Heap's {MAX_EVENT_NAME_CHARS}",
                    self.event_prefix.chars().count()
                ),
            );
        }
        if let Some((event_type, name)) = self
            .rename
            .iter()
            .find(|(t, n)| t.trim().is_empty() || n.trim().is_empty())
        {
            return invalid(
                "rename",
                format!("`{event_type}` = `{name}`: both the event type and the name are needed"),
            );
        }
        Ok(())
    }

    fn bounds(&self) -> [Bound; 11] {
        use limits::*;
        [
            count("app_rate_limit", self.app_rate_limit, RATE_LIMIT),
            count("identity_rate_limit", self.identity_rate_limit, RATE_LIMIT),
            count("max_batch_events", self.max_batch_events, MAX_BATCH_EVENTS),
            count("max_body_bytes", self.max_body_bytes, MAX_BODY_BYTES),
            count("heap_concurrency", self.heap_concurrency, HEAP_CONCURRENCY),
            count(
                "max_pending_events",
                self.max_pending_events,
                MAX_PENDING_EVENTS,
            ),
            count(
                "object_concurrency",
                self.object_concurrency,
                OBJECT_CONCURRENCY,
            ),
            span("retry_max_time", &self.retry_max_time, RETRY_MAX_TIME),
            span("request_timeout", &self.request_timeout, REQUEST_TIMEOUT),
            span("poll_interval", &self.poll_interval, POLL_INTERVAL),
            span("shutdown_timeout", &self.shutdown_timeout, SHUTDOWN_TIMEOUT),
        ]
    }

    /// How Currents events become Heap track events.
    pub fn mapping(&self) -> MappingConfig {
        MappingConfig {
            identity: self.identity.clone(),
            event_prefix: self.event_prefix.clone(),
            renames: self
                .rename
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Each bounded setting with its range as `--help` and the docs state it, e.g.
/// (`heap_concurrency`, `1 to 64`).
pub fn ranges() -> Vec<(&'static str, String)> {
    DEFAULTS
        .bounds()
        .into_iter()
        .map(|b| (b.key, b.range))
        .collect()
}

fn count(key: &'static str, value: u64, range: RangeInclusive<u64>) -> Bound {
    Bound {
        key,
        within: range.contains(&value),
        range: format!(
            "{} to {}",
            thousands(*range.start()),
            thousands(*range.end())
        ),
        value: thousands(value),
    }
}

fn span(key: &'static str, value: &HumanDuration, range: RangeInclusive<Duration>) -> Bound {
    Bound {
        key,
        within: range.contains(&value.get()),
        range: format!("{} to {}", short(*range.start()), short(*range.end())),
        value: value.to_string(),
    }
}

/// `1000000` as `1,000,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A bound in its largest whole unit: `24h`, not humantime's `1day`.
fn short(d: Duration) -> String {
    match d.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A duration kept as it was written (`500ms`, `15m`, `1h 30m`), so that `--print-config`
/// prints exactly what was given and it reads back the same. Parsed by
/// [`crate::clock::parse_duration`] (humantime's units, at most 400 days).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    duration: Duration,
    text: String,
}

impl HumanDuration {
    pub fn get(&self) -> Duration {
        self.duration
    }

    fn seconds(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_secs(n),
            text: format!("{n}s"),
        }
    }

    fn minutes(n: u64) -> Self {
        HumanDuration {
            duration: Duration::from_secs(n * 60),
            text: format!("{n}m"),
        }
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(HumanDuration {
            duration: crate::clock::parse_duration(text)?,
            text: text.trim().to_string(),
        })
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        as_text::deserialize(d)
    }
}

/// A value that is never shown: `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Serde through `Display` and `FromStr`: locations, lookbacks and durations are strings in
/// the file exactly as on the command line.
pub mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// `identity` as the Braze field names.
pub mod identity_names {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use crate::heap::map::IdentitySource;

    pub fn name(source: &IdentitySource) -> &'static str {
        match source {
            IdentitySource::ExternalUserId => "external_user_id",
            IdentitySource::UserId => "user_id",
        }
    }

    pub fn serialize<S: Serializer>(sources: &[IdentitySource], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(sources.iter().map(name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IdentitySource>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(de::Error::custom))
            .collect()
    }
}

/// `--rename` pairs as the `[rename]` table.
pub fn renames_as_table<S: Serializer>(
    pairs: &[(String, String)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// The file keys, in the struct's order: serde's own list, so it cannot drift.
pub fn keys() -> &'static [&'static str] {
    use serde::de::value::Error;

    /// Answers serde's request for a struct by remembering its field names.
    struct Fields(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Fields {
        type Error = Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(serde::de::Error::custom("only the field names are wanted"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            self.0 = fields;
            Err(serde::de::Error::custom("only the field names are wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    static KEYS: LazyLock<&'static [&'static str]> = LazyLock::new(|| {
        let mut fields = Fields(&[]);
        let _ = Config::deserialize(&mut fields);
        fields.0
    });
    &KEYS
}

/// Where a value came from, to name it in an error.
#[derive(Debug, Clone)]
enum Origin {
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl Origin {
    fn name(&self, key: &str) -> String {
        match self {
            Origin::File(path) => format!("--config {}: config key `{key}`", path.display()),
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
        read_file(path, &mut layers, &mut warnings)?;
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
                    let message = e.to_string();
                    let message = message.trim_start_matches("error: ").trim_end();
                    message.lines().next().unwrap_or_default().to_string()
                })?;
            let run = RunArgs::from_arg_matches(&env_only).map_err(|e| e.to_string())?;
            given(&run, &env_only, &definition, &mut layers)?;
            run.worker.heap.heap_app_id
        }
    };

    let mut config = settle(&layers)?;
    config.heap_app_id = app_id
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
        .map(Secret);
    Ok(Resolved { config, warnings })
}

/// The defaults with `layers` laid over them, validated; errors name where the value came from.
fn settle(layers: &Layers) -> Result<Config, String> {
    for (key, (value, origin)) in layers {
        if !keys().contains(&key.as_str()) {
            let prefix = match origin {
                Origin::File(path) => format!("--config {}", path.display()),
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

/// Lays what clap was given for a command over `layers`; returns the Heap app id, if given.
fn command_given(
    command: &Command,
    matches: &ArgMatches,
    definition: &clap::Command,
    layers: &mut Layers,
) -> Result<Option<String>, String> {
    match command {
        Command::Inspect { mapping, .. } => given(mapping, matches, definition, layers)?,
        Command::Run(args) => given(args, matches, definition, layers)?,
        Command::Backfill(args) => given(args, matches, definition, layers)?,
        Command::Replay(args) => given(args, matches, definition, layers)?,
        Command::Status(args) => given(args, matches, definition, layers)?,
    }
    Ok(match command {
        Command::Run(args) => args.worker.heap.heap_app_id.clone(),
        Command::Backfill(args) => args.worker.heap.heap_app_id.clone(),
        Command::Replay(args) => args.heap.heap_app_id.clone(),
        Command::Inspect { .. } | Command::Status(_) => None,
    })
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
fn read_file(path: &Path, layers: &mut Layers, warnings: &mut Vec<String>) -> Result<(), String> {
    let name = format!("--config {}", path.display());
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
        layers.insert(key, (value, Origin::File(path.to_path_buf())));
    }
    Ok(())
}

/// ` (did you mean `poll_interval`?)` for a key one or two edits from a real one.
fn suggestion(key: &str) -> String {
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
    read_file(path, &mut layers, &mut Vec::new())?;
    settle(&layers)
}

/// The effective configuration as TOML for `--print-config`: every key, unset ones as
/// comments, the Heap app id only as `<redacted>`/`<unset>`. It reads back unchanged.
pub fn render(config: &Config) -> Result<String, String> {
    let Json::Object(values) = serde_json::to_value(config).map_err(|e| e.to_string())? else {
        return Err("the configuration is not a table".into());
    };
    let mut out = String::from(
        "# The effective configuration: flags, then environment variables, then --config FILE,\n# then defaults.\n",
    );
    let app_id = if config.heap_app_id.is_some() || config.heap_app_id_file.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    };
    out.push_str(&format!("# heap_app_id = {app_id}\n"));
    for key in keys().iter().filter(|k| !values.contains_key(**k)) {
        out.push_str(&format!("# {key} is unset\n"));
    }
    let mut tables = String::new();
    for (key, value) in &values {
        match value {
            Json::Object(table) => {
                tables.push_str(&format!("\n[{key}]\n"));
                for (k, v) in table {
                    tables.push_str(&format!("{} = {}\n", toml_string(k), toml_value(v)?));
                }
            }
            other => out.push_str(&format!("{key} = {}\n", toml_value(other)?)),
        }
    }
    Ok(out + &tables)
}

fn toml_value(value: &Json) -> Result<String, String> {
    match value {
        Json::String(s) => Ok(toml_string(s)),
        Json::Number(_) | Json::Bool(_) => Ok(value.to_string()),
        Json::Array(items) => Ok(format!(
            "[{}]",
            items
                .iter()
                .map(toml_value)
                .collect::<Result<Vec<_>, _>>()?
                .join(", ")
        )),
        Json::Null | Json::Object(_) => Err(format!("`{value}` has no TOML form here")),
    }
}

/// A TOML basic string: JSON's escapes are TOML's, except that TOML also escapes DEL.
fn toml_string(s: &str) -> String {
    Json::String(s.to_string())
        .to_string()
        .replace('\u{7f}', "\\u007F")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line with no environment, so the machine's variables do not leak in.
    fn cli_without_env() -> clap::Command {
        Cli::command()
            .mut_args(|a| a.env(None))
            .mut_subcommands(|s| s.mut_args(|a| a.env(None)))
    }

    fn parse(args: &[&str]) -> (Cli, ArgMatches) {
        let matches = cli_without_env()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        (Cli::from_arg_matches(&matches).unwrap(), matches)
    }

    const COMMANDS: [&[&str]; 5] = [
        &["currents-heap", "inspect", "x.avro"],
        &["currents-heap", "run"],
        &[
            "currents-heap",
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
        ],
        &["currents-heap", "replay"],
        &["currents-heap", "status"],
    ];

    #[test]
    fn the_defaults_are_valid_and_clap_shows_the_same_ones() {
        DEFAULTS.validate().unwrap();
        let defaults = serde_json::to_value(&*DEFAULTS).unwrap();
        for args in COMMANDS {
            let (cli, matches) = parse(args);
            let shown = match cli.command.as_ref().unwrap() {
                Command::Inspect { mapping, .. } => serde_json::to_value(mapping),
                Command::Run(a) => serde_json::to_value(a),
                Command::Backfill(a) => serde_json::to_value(a),
                Command::Replay(a) => serde_json::to_value(a),
                Command::Status(a) => serde_json::to_value(a),
            }
            .unwrap();
            let Json::Object(shown) = shown else {
                panic!("{shown}")
            };
            assert!(!shown.is_empty());
            for (key, value) in shown {
                assert!(keys().contains(&key.as_str()), "{key} is not a file key");
                if value.is_null() {
                    assert!(defaults.get(&key).is_none(), "{args:?} {key}");
                } else {
                    assert_eq!(Some(&value), defaults.get(&key), "{args:?} {key}");
                }
            }
            assert_eq!(
                serde_json::to_value(&cli).unwrap()["log_format"],
                defaults["log_format"]
            );
            let resolved = resolve(&cli, &matches).unwrap();
            assert_eq!(resolved.config, *DEFAULTS, "{args:?}");
        }
        assert_eq!(defaults["identity"], serde_json::json!([DEFAULT_IDENTITY]));
    }

    #[test]
    fn help_states_every_range() {
        let mut command = Cli::command();
        command.build();
        for (key, range) in ranges() {
            let mut found = 0;
            for sub in command.get_subcommands() {
                for arg in sub.get_arguments().filter(|a| a.get_id() == key) {
                    let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                    assert!(help.contains(&range), "--{key}: `{help}` lacks `{range}`");
                    found += 1;
                }
            }
            assert!(found > 0, "{key} is no flag");
        }
    }

    #[test]
    fn flags_override_only_what_they_were_given() {
        let (cli, matches) = parse(&[
            "currents-heap",
            "run",
            "--poll-interval",
            "1h 30m",
            "--rename",
            "a=b",
            "--identity",
            "user_id,external_user_id",
        ]);
        let config = resolve(&cli, &matches).unwrap().config;
        assert_eq!(config.poll_interval.to_string(), "1h 30m");
        assert_eq!(config.poll_interval.get(), Duration::from_secs(5400));
        assert_eq!(config.rename["a"], "b");
        assert_eq!(
            config.identity,
            [IdentitySource::UserId, IdentitySource::ExternalUserId]
        );
        assert_eq!(
            Config {
                poll_interval: DEFAULTS.poll_interval.clone(),
                rename: BTreeMap::new(),
                identity: DEFAULTS.identity.clone(),
                ..config
            },
            *DEFAULTS
        );
    }

    #[test]
    fn errors_name_the_flag_and_the_bound() {
        for (args, expected) in [
            (
                &["x", "run", "--heap-concurrency", "65"][..],
                "--heap-concurrency: must be 1 to 64, not 65",
            ),
            (
                &["x", "run", "--max-body-bytes", "100"],
                "--max-body-bytes: must be 16,384 to 16,777,216, not 100",
            ),
            (
                &["x", "run", "--request-timeout", "500ms"],
                "--request-timeout: must be 1s to 10m, not 500ms",
            ),
            (
                &["x", "replay", "--identity-rate-limit", "1000001"],
                "--identity-rate-limit: must be 0 to 1,000,000, not 1,000,001",
            ),
            (&["x", "run", "--heap-url", "nope"], "--heap-url: `nope`"),
            (&["x", "run", "--rename", "a= "], "`a= ` is not TYPE=NAME"),
        ] {
            let error = match cli_without_env().try_get_matches_from(args) {
                Ok(matches) => {
                    let cli = Cli::from_arg_matches(&matches).unwrap();
                    resolve(&cli, &matches).unwrap_err()
                }
                Err(e) => e.to_string(),
            };
            assert!(error.contains(expected), "{args:?}: {error}");
        }
    }

    #[test]
    fn what_is_printed_reads_back_the_same() {
        let config = Config {
            heap_app_id: Some(Secret("app-id-4f9c2e".into())),
            heap_app_id_file: Some("/run/secrets/heap app id".into()),
            source: "s3://bucket/a/b".parse().unwrap(),
            retry_max_time: "1h 30m".parse().unwrap(),
            request_timeout: "2500ms".parse().unwrap(),
            lookback: Lookback::All,
            listen: Some("[::1]:9090".parse().unwrap()),
            event_prefix: "a \"quoted\"\\ \u{7f}\n\tprefix ✓".into(),
            identity: vec![IdentitySource::UserId, IdentitySource::ExternalUserId],
            rename: BTreeMap::from([
                ("users.behaviors.CustomEvent".into(), "Custom".into()),
                ("with \"quotes\" = and ]".into(), "x".into()),
            ]),
            log_format: LogFormat::Json,
            dry_run: true,
            ..Config::default()
        };
        config.validate().unwrap();
        let printed = render(&config).unwrap();
        assert!(!printed.contains("app-id-4f9c2e"), "{printed}");
        assert!(printed.contains("# heap_app_id = <redacted>"));
        assert!(
            printed.contains("request_timeout = \"2500ms\""),
            "{printed}"
        );
        assert!(printed.contains("retry_max_time = \"1h 30m\""), "{printed}");
        let dir = std::env::temp_dir().join(format!("currents-heap-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("printed.toml");
        std::fs::write(&path, &printed).unwrap();
        let read = from_file(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            read.unwrap(),
            Config {
                heap_app_id: None,
                ..config
            }
        );
        let defaults = render(&DEFAULTS).unwrap();
        for key in keys() {
            assert!(
                defaults.lines().any(|l| l.starts_with(&format!("{key} = "))
                    || l == format!("[{key}]")
                    || l == format!("# {key} is unset")),
                "{key}: {defaults}"
            );
        }
    }

    #[test]
    fn keys_are_the_fields() {
        assert_eq!(keys().len(), 23);
        assert!(keys().contains(&"rename") && keys().contains(&"log_format"));
        assert!(!keys().contains(&"heap_app_id"));
        assert_eq!(
            suggestion("pol_interval"),
            " (did you mean `poll_interval`?)"
        );
        assert_eq!(suggestion("renames"), " (did you mean `rename`?)");
        assert_eq!(suggestion("something"), "");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(short(Duration::from_secs(86_400)), "24h");
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let config = Config {
            heap_app_id: Some(Secret("app-id-4f9c2e".into())),
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("app-id-4f9c2e"));
    }
}
