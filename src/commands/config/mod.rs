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

pub mod limits;
mod render;
mod resolve;
mod validate;
mod values;

#[cfg(test)]
mod tests;

pub use render::render;
pub use resolve::{Resolved, from_file, refused_value, resolve};
pub use validate::{Invalid, ranges};
pub use values::{
    HumanDuration, Secret, as_text, heap_app_id, identity_names, property_fields, renames_as_table,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use serde::{Deserialize, Deserializer, Serialize};

use super::LogFormat;
use crate::heap::map::{IdentitySource, MappingConfig};
use crate::heap::properties::{DEFAULT_PREFIX, DEFAULT_USERS_PER_MINUTE, Field, PropertyConfig};
use crate::store::Location;
use crate::worker::Lookback;

/// Every option with its default. Field names are the file keys and clap's argument ids.
///
/// `Default` is the one place defaults are written: clap shows them in `--help` through
/// [`DEFAULTS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Braze Currents writes: `s3://bucket/prefix`, `az://container/prefix` (or
    /// `https://<account>.blob.core.windows.net/container/prefix`), `gs://bucket/prefix`, or a
    /// local directory in the same layout. Default `fixtures/bucket`.
    #[serde(with = "as_text")]
    pub source: Location,
    /// Where the ledger and dead letters live: an `s3://`, `az://` or `gs://` location, or a
    /// local directory. Default `currents-heap-state`.
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
    /// `run` and `backfill`: how long events that cannot fill a request wait for more (from
    /// the oldest), so that small objects share requests, 0s to 5s; 0 sends at once.
    /// Default 100ms.
    pub batch_linger: HumanDuration,
    /// Braze fields tried in order as the Heap identity (`external_user_id`, `user_id`); at
    /// least one. Default `["external_user_id"]`.
    #[serde(with = "identity_names")]
    pub identity: Vec<IdentitySource>,
    /// Prefix for every Heap event name, e.g. `braze-`; under 1024 characters. Default empty.
    pub event_prefix: String,
    /// Prefix for every Heap property key, e.g. `braze-`; under 1023 characters. Default
    /// empty.
    pub property_prefix: String,
    /// Heap user properties from Braze profile and subscription events: which to send
    /// (`subscription`, `subscription_group`, `random_bucket_number`, `first_name`,
    /// `last_name`, `email_address`, `phone_number`, `dob`, `home_city`, `archived`,
    /// `custom_attributes`, `custom_attributes.<name>`); duplicates count once. Personal data
    /// is sent only if named. Default empty (off).
    #[serde(with = "property_fields")]
    pub user_properties: Vec<Field>,
    /// Prefix for every Heap user property name; under 1023 characters. Empty is allowed:
    /// names that are then any casing of `id` or `user_id` (Heap's own) are dropped and
    /// counted. Default `braze_`.
    pub user_property_prefix: String,
    /// Users per minute sent user properties at most, 1 to 1,000,000. Default 5,000.
    pub user_properties_per_minute: u64,
    /// Currents objects processed at once whatever their size, 1 to 256. Default 4.
    pub object_concurrency: u64,
    /// Bytes: more objects than `object_concurrency`, up to 256, are processed at once while
    /// the stored sizes of all in flight stay within this, 0 to 268,435,456 (256 MiB); 0
    /// turns it off. Default 16,777,216 (16 MiB).
    pub small_object_budget: u64,
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
    /// `run`, `backfill`: how long standbys wait, after they last saw the lease change,
    /// before they take it over from a holder that stopped renewing, 3s to 5m; the holder
    /// renews every third of it and stops sending two thirds after a renewal that failed to
    /// follow. Default 15s.
    pub lease_duration: HumanDuration,
    /// `run`, `backfill`: only ever one process sends to this Heap app, so no lease is used
    /// (for a state store that does not honour conditional writes). Default false.
    pub single_process: bool,
    /// `run`: receive the source bucket's S3 event notifications from this SQS queue URL
    /// instead of listing every poll interval; needs an `s3://` source. Default none
    /// (listing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqs_queue_url: Option<String>,
    /// `run` with `sqs_queue_url`: how often a listing pass over the lookback window finds
    /// objects whose notification was lost, 1s to 168h (7 days). Default 1h.
    pub reconcile_interval: HumanDuration,
    /// `run` with `sqs_queue_url`: how long a received message stays hidden from other
    /// receivers, renewed every third of it while its object is in flight, 5s to 12h.
    /// Default 60s.
    pub sqs_visibility_timeout: HumanDuration,
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
            batch_linger: HumanDuration::millis(100),
            identity: vec![IdentitySource::ExternalUserId],
            event_prefix: String::new(),
            property_prefix: String::new(),
            user_properties: Vec::new(),
            user_property_prefix: DEFAULT_PREFIX.to_string(),
            user_properties_per_minute: DEFAULT_USERS_PER_MINUTE,
            object_concurrency: 4,
            small_object_budget: crate::worker::scheduler::SMALL_OBJECT_BUDGET,
            dry_run: false,
            poll_interval: HumanDuration::seconds(60),
            lookback: Lookback::Hours(72),
            shutdown_timeout: HumanDuration::seconds(30),
            lease_duration: HumanDuration::seconds(15),
            single_process: false,
            sqs_queue_url: None,
            reconcile_interval: HumanDuration::hours(1),
            sqs_visibility_timeout: HumanDuration::seconds(60),
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

impl Config {
    /// How Currents events become Heap track events.
    pub fn mapping(&self) -> MappingConfig {
        MappingConfig {
            identity: self.identity.clone(),
            event_prefix: self.event_prefix.clone(),
            property_prefix: self.property_prefix.clone(),
            renames: self
                .rename
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The user-properties output: off unless `user_properties` names a field.
    pub fn properties(&self) -> PropertyConfig {
        PropertyConfig {
            fields: self.user_properties.clone(),
            prefix: self.user_property_prefix.clone(),
            users_per_minute: self.user_properties_per_minute,
        }
    }
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
