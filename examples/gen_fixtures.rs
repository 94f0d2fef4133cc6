//! Regenerates `fixtures/bucket/`: synthetic Currents files in Braze's key layout, each with
//! the Custom HTTP JSON it must decode to next to it (`.json`, one event per line).
//!
//! Run from the crate root: `cargo run --example gen_fixtures`.

use std::path::Path;

use currents_heap::currents::fixtures::{FIXTURE_ROOT, fixture_specs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join(FIXTURE_ROOT);
    if out_dir.exists() {
        std::fs::remove_dir_all(&out_dir)?;
    }
    for spec in fixture_specs() {
        let file = spec.generate(root)?;
        let path = out_dir.join(spec.key());
        std::fs::create_dir_all(path.parent().expect("keys have folders"))?;
        std::fs::write(&path, &file.avro)?;
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
