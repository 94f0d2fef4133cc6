//! Golden tests: the committed fixtures are exactly what the generator makes, and every one
//! decodes to exactly the Custom HTTP JSON lines committed next to it.

use std::path::Path;
use std::process::Command;

use currents_heap::commands::inspect::{Output, inspect};
use currents_heap_testkit::fixtures::{FIXTURE_ROOT, fixture_specs, same_container};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_fixtures_are_what_the_generator_makes() {
    for spec in fixture_specs() {
        let path = root().join(FIXTURE_ROOT).join(spec.key());
        let file = spec.generate(root()).unwrap();
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run --example gen_fixtures`",
                path.display()
            )
        });
        assert_same_container(&committed, &file.avro, &path);
        let expected: Vec<String> = file.expected.iter().map(|e| e.to_string()).collect();
        let committed_json = std::fs::read_to_string(path.with_extension("json")).unwrap();
        assert_eq!(
            committed_json.lines().collect::<Vec<_>>(),
            expected,
            "{}",
            path.display()
        );
    }
}

fn assert_same_container(committed: &[u8], generated: &[u8], path: &Path) {
    if let Err(difference) = same_container(committed, generated) {
        panic!("{}: {difference}", path.display());
    }
}

#[test]
fn every_fixture_decodes_to_its_expected_json() {
    let mut total = 0;
    for spec in fixture_specs() {
        let path = root().join(FIXTURE_ROOT).join(spec.key());
        let mut out = Vec::new();
        let report = inspect(std::slice::from_ref(&path), &Output::CustomHttp, &mut out).unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let expected = std::fs::read_to_string(path.with_extension("json")).unwrap();
        let actual = String::from_utf8(out).unwrap();
        assert_eq!(actual, expected, "{}", path.display());
        assert_eq!(report.events as usize, spec.options.events);
        total += spec.options.events;
    }
    assert!(total > 200, "the fixture set shrank to {total} events");
}

#[test]
fn the_whole_fixture_tree_inspects_cleanly() {
    let mut out = Vec::new();
    let report = inspect(&[root().join(FIXTURE_ROOT)], &Output::CustomHttp, &mut out).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let expected: usize = fixture_specs().iter().map(|s| s.options.events).sum();
    assert_eq!(report.events as usize, expected);
    assert_eq!(report.files_read, fixture_specs().len());
}

#[test]
fn invalid_json_properties_are_kept_as_strings_and_counted() {
    let spec = fixture_specs()
        .into_iter()
        .find(|s| s.options.invalid_json_every.is_some())
        .unwrap();
    let path = root().join(FIXTURE_ROOT).join(spec.key());
    let mut out = Vec::new();
    let report = inspect(&[path], &Output::CustomHttp, &mut out).unwrap();
    assert_eq!(report.warnings, 2);
    assert_eq!(report.events, 6, "no event is dropped");
    let broken = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["properties"]["custom_properties"].is_string())
        .count();
    assert_eq!(broken, 2);
}

#[test]
fn the_binary_prints_good_files_and_names_each_bad_one() {
    let dir = std::env::temp_dir().join(format!("currents-heap-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = &fixture_specs()[0];
    let good = root().join(FIXTURE_ROOT).join(spec.key());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.avro");
    std::fs::write(&truncated, &bytes[..bytes.len() - 20]).unwrap();
    let empty = dir.join("empty.avro");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.join("notes.avro");
    std::fs::write(&text, b"hello, this is not avro").unwrap();
    let missing = dir.join("missing.avro");

    let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .arg("inspect")
        .args([&truncated, &good, &empty, &text, &missing])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // A missing input is wiring to fix (2), which outranks files that are not Avro (1).
    assert_eq!(output.status.code(), Some(2));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    // The truncated copy (one block) yields nothing; the good file yields all its events.
    assert_eq!(stdout.lines().count(), spec.options.events, "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 5, "{stderr}");
    for (file, reason) in [
        ("truncated.avro", "truncated"),
        ("empty.avro", "empty"),
        ("notes.avro", "not an Avro object container file"),
        ("missing.avro", "No such file"),
    ] {
        assert!(
            errors
                .iter()
                .any(|l| l.contains(file) && l.contains(reason)),
            "no error line names {file} with `{reason}`:\n{stderr}"
        );
    }
    assert!(
        errors.last().unwrap().contains("4 of 5 files failed"),
        "{stderr}"
    );
}
