//! Regenerates `fixtures/bucket/`: synthetic Currents files in Braze's key layout, each with
//! the Custom HTTP JSON it must decode to next to it (`.json`, one event per line).
//!
//! Run from the crate root: `cargo run --example gen_fixtures`.
//!
//! A file whose committed version holds the same thing is left as it is: apache-avro orders
//! the header's metadata at random, and a rerun should not rewrite files that did not change.

use std::path::Path;

use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs, same_container};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join(FIXTURE_ROOT);
    // What is there now, read before the tree is cleared of files no spec makes any more.
    let committed: Vec<Option<Vec<u8>>> = fixture_specs()
        .iter()
        .map(|spec| std::fs::read(out_dir.join(spec.key())).ok())
        .collect();
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)?;
    }
    for (spec, committed) in fixture_specs().into_iter().zip(committed) {
        let file = spec.generate(root)?;
        let path = out_dir.join(spec.key());
        std::fs::create_dir_all(path.parent().expect("keys have folders"))?;
        let avro = match committed {
            Some(committed) if same_container(&committed, &file.avro).is_ok() => committed,
            _ => file.avro,
        };
        std::fs::write(&path, &avro)?;
        let mut lines = String::new();
        for event in &file.expected {
            lines.push_str(&serde_json::to_string(event)?);
            lines.push('\n');
        }
        std::fs::write(path.with_extension("json"), lines)?;
        println!("{} ({} events)", path.display(), file.expected.len());
    }
    Ok(())
}
