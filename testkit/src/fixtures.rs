//! The committed fixture set: which synthetic files live under `fixtures/bucket/`, and how
//! each is made. `examples/gen_fixtures.rs` writes them; `tests/fixtures.rs` checks that the
//! committed files are exactly what this produces and that they decode to their `.json`.
//!
//! Paths here are relative to the currents-heap package root (the workspace root), where
//! `fixtures/` and `schemas/` live.

use apache_avro::Codec;
use apache_avro::DeflateSettings;
use apache_avro::ZstandardSettings;

use crate::synth::{SynthFile, SynthOptions, synthesize};
use currents_heap::currents::key::{DateHour, KeyLayout};

/// Where fixtures live, relative to the package root: a local "bucket" holding the `currents`
/// prefix in Braze's key layout, usable as a local source.
pub const FIXTURE_ROOT: &str = "fixtures/bucket";

/// The Braze-side names used by every fixture key.
pub const LAYOUT: KeyLayout<'static> = KeyLayout {
    prefix: "currents",
    cluster: "prod-03",
    connector: "S3",
    integration_id: "5f0c2a9e8b7d6c5b4a392817",
    schema_id: 0,
    zone: "zone-a",
};

/// One fixture file.
pub struct FixtureSpec {
    /// The `.avsc` file, relative to the package root.
    pub schema_path: String,
    pub event_type: String,
    pub date: &'static str,
    pub schema_id: u32,
    pub offset: u64,
    pub options: SynthOptions,
}

impl FixtureSpec {
    /// The object key, relative to [`FIXTURE_ROOT`].
    pub fn key(&self) -> String {
        let date = DateHour::parse(self.date).expect("fixture dates are valid");
        KeyLayout {
            schema_id: self.schema_id,
            ..LAYOUT
        }
        .object_key(&self.event_type, date, 0, self.offset)
    }

    /// Generates the file from the schema at `crate_root/schema_path` (the package root).
    pub fn generate(&self, crate_root: &std::path::Path) -> Result<SynthFile, String> {
        let path = crate_root.join(&self.schema_path);
        let schema =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        synthesize(&schema, &self.event_type, &self.options)
    }
}

/// The 13 `users.behaviors.*` types with today's schemas, plus files that exercise codecs,
/// several blocks, the 2018 CustomEvent schema, invalid JSON properties and every Avro type.
pub fn fixture_specs() -> Vec<FixtureSpec> {
    let mut specs = Vec::new();
    for (i, event_type) in BEHAVIOR_TYPES.iter().enumerate() {
        specs.push(FixtureSpec {
            schema_path: format!("schemas/{event_type}.avsc"),
            event_type: event_type.to_string(),
            date: "2026-11-27-13",
            schema_id: 612 + i as u32,
            offset: 1200,
            options: SynthOptions {
                events: 6,
                seed: 1000 + i as u64,
                ..SynthOptions::default()
            },
        });
    }
    let custom_event = |date, schema_id, offset, options| FixtureSpec {
        schema_path: "schemas/users.behaviors.CustomEvent.avsc".into(),
        event_type: "users.behaviors.CustomEvent".into(),
        date,
        schema_id,
        offset,
        options,
    };
    let codecs = [
        Codec::Deflate(DeflateSettings::default()),
        Codec::Snappy,
        Codec::Zstandard(ZstandardSettings::default()),
    ];
    for (i, codec) in codecs.into_iter().enumerate() {
        // Small blocks, so each of these files has several.
        specs.push(custom_event(
            "2026-11-27-14",
            612,
            3000 + 40 * i as u64,
            SynthOptions {
                events: 40,
                codec,
                block_size: 2048,
                seed: 2000 + i as u64,
                ..SynthOptions::default()
            },
        ));
    }
    specs.push(custom_event(
        "2026-11-27-15",
        612,
        4000,
        SynthOptions {
            events: 6,
            seed: 3000,
            invalid_json_every: Some(3),
            ..SynthOptions::default()
        },
    ));
    specs.push(FixtureSpec {
        schema_path: "schemas/legacy/users.behaviors.CustomEvent.2018.avsc".into(),
        ..custom_event(
            "2026-11-27-12",
            48,
            100,
            SynthOptions {
                events: 4,
                seed: 4000,
                ..SynthOptions::default()
            },
        )
    });
    specs.push(FixtureSpec {
        schema_path: "schemas/test-only/users.future.KitchenSink.avsc".into(),
        event_type: "users.future.KitchenSink".into(),
        date: "2026-11-27-13",
        schema_id: 999,
        offset: 0,
        options: SynthOptions {
            events: 8,
            seed: 5000,
            null_percent: 30,
            ..SynthOptions::default()
        },
    });
    specs
}

pub const BEHAVIOR_TYPES: [&str; 13] = [
    "users.behaviors.CustomEvent",
    "users.behaviors.InstallAttribution",
    "users.behaviors.Location",
    "users.behaviors.Purchase",
    "users.behaviors.Uninstall",
    "users.behaviors.app.FirstSession",
    "users.behaviors.app.SessionEnd",
    "users.behaviors.app.SessionStart",
    "users.behaviors.liveactivity.PushToStartTokenChange",
    "users.behaviors.liveactivity.UpdateTokenChange",
    "users.behaviors.pushnotification.TokenStateChange",
    "users.behaviors.subscription.GlobalStateChange",
    "users.behaviors.subscriptiongroup.StateChange",
];

/// Whether two container files hold the same thing: the same blocks byte for byte, and
/// headers with the same writer schema and metadata. apache-avro writes the header's metadata
/// from a HashMap, so its entry order (and so the header's bytes) varies between runs of the
/// generator; everything after the header does not. `Err` says what differs.
pub fn same_container(committed: &[u8], generated: &[u8]) -> Result<(), String> {
    if generated.len() < 16 {
        return Err("the generated file is too short to hold a sync marker".into());
    }
    let marker = &generated[generated.len() - 16..];
    let header_end = |bytes: &[u8]| {
        bytes
            .windows(16)
            .position(|w| w == marker)
            .map(|p| p + 16)
            .ok_or("sync marker differs from the generator's")
    };
    let (c, g) = (header_end(committed)?, header_end(generated)?);
    if c != g {
        return Err(format!("header length {c}, the generator's {g}"));
    }
    if committed[c..] != generated[g..] {
        return Err("blocks differ from the generator's".into());
    }
    let header = |bytes: &[u8]| {
        apache_avro::Reader::new(bytes)
            .map(|reader| {
                (
                    reader.writer_schema().canonical_form(),
                    format!("{:?}", reader.user_metadata()),
                )
            })
            .map_err(|e| format!("header: {e}"))
    };
    if header(committed)? != header(generated)? {
        return Err("header differs from the generator's".into());
    }
    Ok(())
}
