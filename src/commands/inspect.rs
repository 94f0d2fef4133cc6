//! `inspect FILE...`: print Currents Avro files as Custom HTTP connector events, one JSON
//! object per line. A bad file gets one error line naming it and the reason; the rest are
//! still printed, and the command fails at the end.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use crate::currents::decode::EventReader;
use crate::heap::delivery::{Disposer, Disposition};

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
    /// With `--heap`: events not sent because they have no identity, per event type.
    pub skipped_no_identity: BTreeMap<String, u64>,
    /// With `--heap`: events that would be parked, per reason.
    pub unsendable: BTreeMap<String, u64>,
}

/// Prints every event of every `.avro` file under `paths` (files, or directories searched
/// recursively in name order) to `out`.
pub fn inspect(
    paths: &[PathBuf],
    output: &Output,
    out: &mut impl Write,
) -> io::Result<InspectReport> {
    let mut report = InspectReport::default();
    for path in paths {
        let files = match avro_files(path) {
            Ok(files) => files,
            Err(e) => {
                fail(&mut report, format!("{}: {e}", path.display()));
                continue;
            }
        };
        for file in files {
            inspect_file(&file, output, out, &mut report)?;
        }
    }
    out.flush()?;
    Ok(report)
}

fn inspect_file(
    path: &Path,
    output: &Output,
    out: &mut impl Write,
    report: &mut InspectReport,
) -> io::Result<()> {
    let name = path.display().to_string();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) => {
            fail(report, format!("{name}: cannot open: {e}"));
            return Ok(());
        }
    };
    let mut reader = match EventReader::open(file, &name) {
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
                    Output::CustomHttp => serde_json::to_writer(&mut *out, &event)?,
                    Output::Heap(disposer) => match disposer.dispose(&event) {
                        Disposition::Send { event, .. } => out.write_all(&event.json)?,
                        Disposition::Skip => {
                            *report
                                .skipped_no_identity
                                .entry(event.event_type.to_string())
                                .or_insert(0) += 1;
                            continue;
                        }
                        Disposition::Park(reason) => {
                            tracing::warn!(object = %name, event_id = %event.id, "would be parked: {reason}");
                            *report.unsendable.entry(reason).or_insert(0) += 1;
                            continue;
                        }
                    },
                }
                out.write_all(b"\n")?;
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
