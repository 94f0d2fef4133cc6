//! Writes synthetic CustomEvent objects into a local source in Braze's layout, for load runs:
//! `cargo run --release --example make_load -- DIR OBJECTS EVENTS`.

use std::path::PathBuf;

use currents_heap::currents::key::{DateHour, KeyLayout};
use currents_heap_testkit::apache_avro::{Codec, DeflateSettings};
use currents_heap_testkit::fixtures::LAYOUT;
use currents_heap_testkit::synth::{SynthOptions, synthesize};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, objects, events] = &args[..] else {
        eprintln!("usage: make_load DIR OBJECTS EVENTS");
        std::process::exit(2);
    };
    let (objects, events): (u64, usize) = (
        objects.parse().expect("OBJECTS"),
        events.parse().expect("EVENTS"),
    );
    let schema = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/users.behaviors.CustomEvent.avsc"
    ))
    .unwrap();
    let hour = DateHour::parse("2026-11-27-13").unwrap();
    for i in 0..objects {
        let options = SynthOptions {
            events,
            seed: 100 + i,
            identities: 20_000,
            codec: Codec::Deflate(DeflateSettings::default()),
            ..SynthOptions::default()
        };
        let file = synthesize(&schema, "users.behaviors.CustomEvent", &options).unwrap();
        let key = KeyLayout {
            schema_id: 612,
            ..LAYOUT
        }
        .object_key("users.behaviors.CustomEvent", hour, 0, i * events as u64);
        let path = PathBuf::from(dir).join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.avro).unwrap();
    }
}
