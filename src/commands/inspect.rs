//! `inspect INPUT...`: print Currents Avro files as Custom HTTP connector events, one JSON
//! object per line. An input is a local file or directory, `-` (standard input), or a
//! location in object storage (`s3://`, `az://`, `https://<account>.blob.core.windows.net/`,
//! `gs://`): one object, or every `.avro` object under a prefix, read through the same stores
//! (and the same credentials and `--s3-path-style`) as the worker, streamed as the decoder
//! asks for bytes, never copied to disk.
//!
//! A bad file gets one error line naming it and the reason; the rest are still printed, and
//! the command fails at the end: exit 2 if an input could not be found or read at all (a
//! missing object, bucket or file, a denied read: the wiring to fix), else 1 if one was not
//! Currents Avro.
//!
//! Remote reads are blocking reads over the async store (`ObjectReader`): they are made on
//! the calling thread, which must not be inside the runtime `Remote` hands requests to.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::collections::BTreeMap;

use clap::Args;
use serde::Serialize;

use crate::currents::decode::EventReader;
use crate::heap::delivery::{Disposer, Disposition};
use crate::heap::properties::map::Mapped as PropertyMapped;
use crate::store::{Location, StoreError};
use crate::telemetry::Metrics;

/// `inspect`'s store flag (the rest of what a store needs comes from the environment, as
/// for the worker).
#[derive(Debug, Clone, Args, Serialize)]
pub struct InspectStoreArgs {
    /// Path-style S3 addressing, for S3-compatible stores (MinIO, ...).
    #[arg(long, env = "CURRENTS_HEAP_S3_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    s3_path_style: bool,
}

/// One input as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A local file, or a directory searched recursively for `.avro` files.
    Path(PathBuf),
    /// `-`: one Avro file on standard input.
    Stdin,
    /// An object, or a prefix (every `.avro` object under it), in object storage.
    Remote(Location),
}

impl Input {
    /// `-`, a URL, or a local path. A URL that is not a valid location is a usage error.
    pub fn parse(arg: &Path) -> Result<Input, String> {
        let Some(text) = arg.to_str() else {
            return Ok(Input::Path(arg.to_path_buf()));
        };
        if text == "-" {
            return Ok(Input::Stdin);
        }
        if !text.contains("://") {
            return Ok(Input::Path(arg.to_path_buf()));
        }
        match text.parse::<Location>()? {
            Location::Local(_) => Ok(Input::Path(arg.to_path_buf())),
            location => Ok(Input::Remote(location)),
        }
    }
}

/// How remote inputs are reached: a runtime for the store's requests (the caller's thread
/// must not be one of its workers), and the worker's store options.
pub struct Remote {
    pub runtime: tokio::runtime::Handle,
    pub path_style: bool,
    pub metrics: Arc<Metrics>,
}

/// What to print for each event.
pub enum Output {
    /// Braze's Custom HTTP connector shape.
    CustomHttp,
    /// The Heap track event that would be sent, under the body limit delivery applies.
    Heap(Disposer),
}

/// What one `inspect` run did.
#[derive(Debug, Default)]
pub struct InspectReport {
    pub files_read: usize,
    pub events: u64,
    pub warnings: u64,
    /// Odd values of JSON `properties` repaired by the value table, by kind label
    /// (`lone_surrogate`, `number_out_of_range`, `too_deep`, `not_json`).
    pub odd_values: BTreeMap<&'static str, u64>,
    /// One line per file that failed: its path and the reason.
    pub failures: Vec<String>,
    /// How many of `failures` are inputs that could not be found or read at all (a missing
    /// file, object or bucket; a denied read), rather than files that are not Currents Avro.
    pub unreachable: usize,
    /// With `--heap`: events not sent because they have no identity, per event type.
    pub skipped_no_identity: BTreeMap<String, u64>,
    /// With `--heap`: events (and user-property updates) that would be parked, per reason.
    pub unsendable: BTreeMap<String, u64>,
    /// With `--heap` and `--user-properties`: updates printed, and updates without an
    /// identity (not sent).
    pub user_property_updates: u64,
    pub user_property_updates_skipped: u64,
}

/// Prints every event of every `.avro` file under `paths` (files, or directories searched
/// recursively in name order) to `out`.
pub fn inspect(
    paths: &[PathBuf],
    output: &Output,
    out: &mut impl Write,
) -> io::Result<InspectReport> {
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::Path).collect();
    inspect_inputs(&inputs, None, io::empty(), output, out)
}

/// Prints every event of every input to `out`, in the order given: local files and
/// directories, `stdin` for `-`, and remote locations through `remote` (without it, a remote
/// input is an error line). Each object is named by its location in messages.
pub fn inspect_inputs(
    inputs: &[Input],
    remote: Option<&Remote>,
    mut stdin: impl Read,
    output: &Output,
    out: &mut impl Write,
) -> io::Result<InspectReport> {
    let mut report = InspectReport::default();
    for input in inputs {
        match input {
            Input::Path(path) => {
                let files = match avro_files(path) {
                    Ok(files) => files,
                    Err(e) => {
                        unreachable(&mut report, format!("{}: {e}", path.display()));
                        continue;
                    }
                };
                for file in files {
                    let name = file.display().to_string();
                    match File::open(&file) {
                        Ok(reader) => inspect_reader(reader, &name, output, out, &mut report)?,
                        Err(e) => unreachable(&mut report, format!("{name}: cannot open: {e}")),
                    }
                }
            }
            Input::Stdin => inspect_reader(&mut stdin, "-", output, out, &mut report)?,
            Input::Remote(location) => match remote {
                Some(remote) => inspect_remote(location, remote, output, out, &mut report)?,
                None => unreachable(
                    &mut report,
                    format!("{location}: remote locations are not read here"),
                ),
            },
        }
    }
    out.flush()?;
    Ok(report)
}

/// A location as a store at its bucket's (container's) root and the key under it, without
/// the trailing `/` that parsing gives every prefix.
fn root_and_key(location: &Location) -> (Location, String) {
    let (root, prefix) = match location {
        Location::Local(_) => return (location.clone(), String::new()),
        Location::S3 { bucket, prefix } => (
            Location::S3 {
                bucket: bucket.clone(),
                prefix: String::new(),
            },
            prefix,
        ),
        Location::Azure {
            account,
            container,
            prefix,
        } => (
            Location::Azure {
                account: account.clone(),
                container: container.clone(),
                prefix: String::new(),
            },
            prefix,
        ),
        Location::Gcs { bucket, prefix } => (
            Location::Gcs {
                bucket: bucket.clone(),
                prefix: String::new(),
            },
            prefix,
        ),
    };
    (root, prefix.trim_end_matches('/').to_string())
}

/// One remote input: the object the location names, if there is one (a read needs only the
/// read permission), else every `.avro` object under it as a prefix, in key order.
fn inspect_remote(
    location: &Location,
    remote: &Remote,
    output: &Output,
    out: &mut impl Write,
    report: &mut InspectReport,
) -> io::Result<()> {
    let (root, key) = root_and_key(location);
    let store = match remote
        .runtime
        .block_on(root.open(remote.path_style, &remote.metrics))
    {
        Ok(store) => store,
        Err(e) => {
            unreachable(report, store_failure(location, &e));
            return Ok(());
        }
    };
    let name = |key: &str| format!("{root}{key}");
    if !key.is_empty() {
        match remote.runtime.block_on(store.open(&key)) {
            Ok(reader) => return inspect_reader(reader, &name(&key), output, out, report),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                unreachable(report, store_failure(location, &e));
                return Ok(());
            }
        }
    }
    let prefix = if key.is_empty() {
        key
    } else {
        format!("{key}/")
    };
    let objects = match remote.runtime.block_on(store.list(&prefix)) {
        Ok(found) => found,
        Err(e) => {
            unreachable(report, store_failure(location, &e));
            return Ok(());
        }
    };
    let objects: Vec<String> = objects
        .into_iter()
        .map(|meta| meta.key)
        .filter(|key| key.ends_with(".avro"))
        .collect();
    if objects.is_empty() {
        unreachable(
            report,
            format!("{location}: not found: no such object, and no .avro object under it"),
        );
    }
    for key in objects {
        match remote.runtime.block_on(store.open(&key)) {
            Ok(reader) => inspect_reader(reader, &name(&key), output, out, report)?,
            // Gone since the listing, or denied: this one is named, the others go on.
            Err(e) => unreachable(report, format!("{}: {e}", name(&key))),
        }
    }
    Ok(())
}

/// A store error for an input, naming the input as given and the store's words (which name
/// the bucket or key, and say whether it was missing or denied).
fn store_failure(location: &Location, e: &StoreError) -> String {
    format!("{location}: {} ({e})", e.kind)
}

fn inspect_reader(
    reader: impl Read,
    name: &str,
    output: &Output,
    out: &mut impl Write,
    report: &mut InspectReport,
) -> io::Result<()> {
    let mut reader = match EventReader::open(reader, name) {
        Ok(reader) => reader,
        Err(e) => {
            fail(report, e.to_string());
            return Ok(());
        }
    };
    loop {
        match reader.next_event() {
            Ok(Some((event, warnings))) => {
                for warning in warnings {
                    report.warnings += 1;
                    *report.odd_values.entry(warning.kind().label()).or_insert(0) += 1;
                    tracing::warn!(object = %name, "{warning}");
                }
                report.events += 1;
                match output {
                    Output::CustomHttp => {
                        serde_json::to_writer(&mut *out, &event)?;
                        out.write_all(b"\n")?;
                    }
                    Output::Heap(disposer) => write_heap(disposer, &event, out, report, name)?,
                }
            }
            Ok(None) => break,
            Err(e) => {
                fail(
                    report,
                    format!("{e} (after {} events)", reader.events_read()),
                );
                return Ok(());
            }
        }
    }
    report.files_read += 1;
    Ok(())
}

/// What Heap would receive for `event`: its track event (a line), then the user-property
/// update it makes, if that output is on (a line `{"user_properties":{"identity":…,
/// "properties":{…}}}`), each counted where it is not sent.
fn write_heap(
    disposer: &Disposer,
    event: &crate::currents::event::CustomHttpEvent,
    out: &mut dyn Write,
    report: &mut InspectReport,
    name: &str,
) -> io::Result<()> {
    match disposer.dispose(event) {
        Disposition::Send { event, .. } => {
            out.write_all(&event.json)?;
            out.write_all(b"\n")?;
        }
        Disposition::Skip => {
            *report
                .skipped_no_identity
                .entry(event.event_type.to_string())
                .or_insert(0) += 1;
        }
        Disposition::Park(reason) => {
            tracing::warn!(object = %name, event_id = %event.id, "would be parked: {reason}");
            *report.unsendable.entry(reason).or_insert(0) += 1;
        }
    }
    match disposer.update(event) {
        Some(PropertyMapped::Update(update)) => {
            report.user_property_updates += 1;
            serde_json::to_writer(
                &mut *out,
                &serde_json::json!({"user_properties": {
                    "identity": &*update.identity,
                    "properties": update.properties,
                }}),
            )?;
            out.write_all(b"\n")?;
        }
        Some(PropertyMapped::NoIdentity) => report.user_property_updates_skipped += 1,
        Some(PropertyMapped::Unsendable(reason)) => {
            tracing::warn!(object = %name, event_id = %event.id, "its user-property update would be parked: {reason}");
            *report.unsendable.entry(reason).or_insert(0) += 1;
        }
        Some(PropertyMapped::Nothing) | None => {}
    }
    Ok(())
}

/// An input that could not be found or read at all: a wiring error (exit 2).
fn unreachable(report: &mut InspectReport, line: String) {
    report.unreachable += 1;
    fail(report, line);
}

fn fail(report: &mut InspectReport, line: String) {
    tracing::error!("{line}");
    report.failures.push(line);
}

/// The `.avro` files at `path`: the path itself if it is a file, else every `.avro` file
/// below it, sorted so output is reproducible.
fn avro_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry_path = entry?.path();
            if entry_path.is_dir() {
                dirs.push(entry_path);
            } else if entry_path.extension().is_some_and(|e| e == "avro") {
                files.push(entry_path);
            }
        }
    }
    files.sort();
    Ok(files)
}
