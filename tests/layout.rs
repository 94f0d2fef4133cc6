//! Test support stays out of the production crate: nothing under `src/` refers to the testkit
//! (`currents-heap-testkit`) or to the modules that moved there (`standin`, `synth`,
//! `fixtures`), and the package's normal dependencies do not include it, so
//! `cargo tree -e normal -p currents-heap` never lists it.
//!
//! The module tree shows the data flow, and no import runs back up it: each top-level module
//! of `src/` has a layer, and code (not comments) may name `crate::m` only for a module of a
//! lower layer ([`LAYERS`]).

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Identifiers that name test support: the testkit crate and the modules it holds.
const FORBIDDEN: &[&str] = &["currents_heap_testkit", "standin", "synth", "fixtures"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What a lexer pass found in a file: identifiers in code and string literals, with lines.
#[derive(Default)]
struct Tokens {
    identifiers: Vec<(usize, String)>,
    strings: Vec<(usize, String)>,
}

/// A small Rust lexer: enough to skip comments (nested ones too), string, byte-string and
/// raw-string literals and char literals, so only code is searched for names.
fn tokens(text: &str) -> Tokens {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Tokens::default();
    let (mut i, mut line) = (0, 1);
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"'
            || ((c == 'r' || c == 'b') && matches!(at(i + 1), '"' | '#'))
            || (c == 'b' && at(i + 1) == 'r' && matches!(at(i + 2), '"' | '#'))
        {
            // Strings: "..." with escapes, or r#"..."# with as many hashes as it opened with.
            let start_line = line;
            while chars[i] != '"' && chars[i] != '#' {
                i += 1;
            }
            let mut hashes = 0;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            if chars[i] != '"' {
                // `r#ident`: a raw identifier, not a string.
                continue;
            }
            let raw = hashes > 0 || chars[i - 1] == 'r';
            i += 1;
            let mut value = String::new();
            while i < chars.len() {
                let c = chars[i];
                if c == '\\' && !raw {
                    value.push(c);
                    value.push(at(i + 1));
                    line += usize::from(at(i + 1) == '\n');
                    i += 2;
                    continue;
                }
                if c == '"' && (0..hashes).all(|h| at(i + 1 + h) == '#') {
                    i += 1 + hashes;
                    break;
                }
                line += usize::from(c == '\n');
                value.push(c);
                i += 1;
            }
            out.strings.push((start_line, value));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if at(i + 1) == '\\' {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(i + 2) == '\'' {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.identifiers
                .push((line, chars[start..i].iter().collect()));
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_lexer_sees_only_code() {
    let found = tokens(
        "use a::synth; // standin::x\n/* fixtures /* nested */ standin */ let s = \"synth::y\";\nlet r = r#\"a \"fixtures\" b\"#; let c = '\"'; fn f<'a>(x: &'a str) { fixtures::z(); }\n",
    );
    let names: Vec<(usize, &str)> = found
        .identifiers
        .iter()
        .filter(|(_, id)| FORBIDDEN.contains(&id.as_str()))
        .map(|(line, id)| (*line, id.as_str()))
        .collect();
    assert_eq!(names, [(1, "synth"), (3, "fixtures")]);
    assert_eq!(found.strings.len(), 2);
}

#[test]
fn src_never_refers_to_test_support() {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut found = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).unwrap();
        let tokens = tokens(&text);
        for (line, id) in &tokens.identifiers {
            if FORBIDDEN.contains(&id.as_str()) {
                found.push(format!("{relative}:{line}: `{id}`"));
            }
        }
        // `#[path = "...testkit..."] mod x;` compiles a testkit file into the crate.
        for (line, value) in &tokens.strings {
            let source_line = text.lines().nth(line - 1).unwrap_or_default();
            if value.contains("testkit") && source_line.contains("path") {
                found.push(format!("{relative}:{line}: includes {value:?}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "src/ refers to test support, which lives in testkit/ (currents-heap-testkit):\n{}",
        found.join("\n")
    );
}

/// Dependency tables of a manifest that end up in the production build.
fn production_dependencies(manifest: &toml::Table) -> Vec<(String, &toml::Table)> {
    let mut tables = Vec::new();
    for name in ["dependencies", "build-dependencies"] {
        if let Some(table) = manifest.get(name).and_then(toml::Value::as_table) {
            tables.push((name.to_string(), table));
        }
    }
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        for (target, spec) in targets {
            for name in ["dependencies", "build-dependencies"] {
                if let Some(table) = spec.get(name).and_then(toml::Value::as_table) {
                    tables.push((format!("target.{target}.{name}"), table));
                }
            }
        }
    }
    tables
}

#[test]
fn the_testkit_is_a_dev_dependency_only() {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    for (table, dependencies) in production_dependencies(&manifest) {
        for (name, spec) in dependencies {
            let package = spec
                .get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(name);
            let path = spec.get("path").and_then(toml::Value::as_str);
            assert!(
                package != "currents-heap-testkit" && !path.is_some_and(|p| p.contains("testkit")),
                "[{table}] {name}: the testkit must never be a normal dependency"
            );
        }
    }
    let dev = manifest["dev-dependencies"].as_table().unwrap();
    assert!(
        dev.contains_key("currents-heap-testkit"),
        "tests, benches and examples take the testkit as a dev-dependency"
    );
    // The workspace runs the testkit's own tests with the root's `cargo test`.
    let workspace = manifest["workspace"].as_table().unwrap();
    for key in ["members", "default-members"] {
        let members: Vec<&str> = workspace[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(
            members.contains(&".") && members.contains(&"testkit"),
            "workspace.{key}: {members:?}"
        );
    }
}

/// The top-level modules of `src/`, from the top of the data flow down: the command line
/// builds the engine, the engine joins the Braze side to the Heap side, and both stand on
/// the stores, telemetry, the Currents format and the clock. Modules on one line are
/// siblings and import neither each other nor anything above them.
const LAYERS: &[&[&str]] = &[
    &["commands"],
    &["worker"],
    &["handover", "heap"],
    &["ledger", "deadletter"],
    &["source"],
    &["notifications", "store"],
    &["aws", "server"],
    &["telemetry"],
    &["currents"],
    &["clock"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `module -> crate::other` arrows of the code under `src`, as (where, from, to).
fn upward_imports(src: &Path) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let top = relative
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        let Some(own) = layer(&top) else {
            unplaced.push(relative);
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let ids = tokens(&text).identifiers;
        for pair in ids.windows(2) {
            let ((line, first), (_, module)) = (&pair[0], &pair[1]);
            // `pub(crate) fn`: a visibility, not a path.
            const KEYWORDS: &[&str] = &[
                "fn", "struct", "enum", "mod", "use", "type", "const", "static", "trait", "impl",
                "async", "unsafe",
            ];
            if first != "crate" || *module == top || KEYWORDS.contains(&module.as_str()) {
                continue;
            }
            match layer(module) {
                Some(theirs) if theirs > own => {}
                Some(_) => upward.push(format!("{relative}:{line}: {top} -> {module}")),
                None => unplaced.push(format!("{relative}:{line}: crate::{module}")),
            }
        }
    }
    (unplaced, upward)
}

#[test]
fn no_import_runs_back_up_the_tree() {
    let (unplaced, upward) = upward_imports(&root().join("src"));
    assert!(
        unplaced.is_empty(),
        "modules without a layer in LAYERS: {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that run back up (or across) the tree:\n{}",
        upward.join("\n")
    );
}

#[test]
fn an_upward_import_is_found_and_a_doc_link_is_not() {
    let dir = std::env::temp_dir().join(format!("layout-probe-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("heap")).unwrap();
    std::fs::write(
        dir.join("heap/x.rs"),
        "//! See [`crate::worker`].\nuse crate::store::Thing;\nfn f() { crate::worker::go(); }\n",
    )
    .unwrap();
    let (unplaced, upward) = upward_imports(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(unplaced.is_empty(), "{unplaced:?}");
    assert_eq!(upward, ["heap/x.rs:3: heap -> worker"]);
}

/// The Layout block (docs/design/layout.md) names every file of `src/` (by its name in its
/// folder) and every folder, so the map a reader is given cannot fall behind the tree.
#[test]
fn the_layout_page_names_every_source_file() {
    let readme = std::fs::read_to_string(root().join("docs/design/layout.md")).unwrap();
    let start = readme.find("# Layout").expect("a Layout section");
    let block = &readme[start..];
    let block = &block[..block.find("\n```\n").expect("the Layout code block ends")];
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let mut missing = Vec::new();
    for path in files {
        let relative = path.strip_prefix(root().join("src")).unwrap();
        let name = relative.file_name().unwrap().to_string_lossy().to_string();
        let named = match name.as_str() {
            // A folder's root and its tests: the folder itself must be named.
            "mod.rs" | "tests.rs" => {
                let folder = relative
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy();
                block.contains(&format!("{folder}/"))
            }
            "lib.rs" | "main.rs" => true,
            _ => block.contains(&name),
        };
        if !named {
            missing.push(relative.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "docs/design/layout.md's Layout does not name: {missing:?}"
    );
}
