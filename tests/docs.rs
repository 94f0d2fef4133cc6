//! The docs cannot drift from the code: the reference pages are checked against it (the
//! configuration against the config keys, the validation's ranges, `--print-config`'s
//! defaults and clap's flags; the metrics against the registry; the exit codes against
//! `Exit::code`), and every relative link in README.md and docs/ points to a file that exists
//! and, with a `#anchor`, to a heading in it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use currents_heap::commands::config;
use currents_heap::commands::worker::Exit;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn page(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The rows of every Markdown table in `text`, as trimmed cells (`\|` inside a cell kept as
/// `|`). Separator rows are left out.
fn table_rows(text: &str) -> Vec<Vec<String>> {
    let mut in_code = false;
    let mut rows = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('|') || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<String> = line
            .replace("\\|", "\u{1}")
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().replace('\u{1}', "|"))
            .collect();
        rows.push(cells);
    }
    rows
}

/// The text inside the first pair of backticks of a cell.
fn code_in(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

// --- configuration -----------------------------------------------------------------------

/// Every long flag clap knows, on any command, with its environment variable.
fn flags() -> BTreeMap<String, Option<String>> {
    use clap::CommandFactory;
    let mut found = BTreeMap::new();
    let top = currents_heap::commands::Cli::command();
    for command in std::iter::once(&top).chain(top.get_subcommands()) {
        for arg in command.get_arguments() {
            if let Some(long) = arg.get_long() {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                found.insert(format!("--{long}"), env);
            }
        }
    }
    found
}

/// The config reference's rows, by flag: (environment, default, range and meaning).
fn config_rows() -> BTreeMap<String, (String, String, String)> {
    let text = page("docs/reference/config.md");
    let mut rows = BTreeMap::new();
    for cells in table_rows(&text) {
        let Some(flag) = code_in(&cells[0]) else {
            continue;
        };
        if cells.len() != 4 || !flag.starts_with("--") {
            continue;
        }
        // `--rename TYPE=NAME`: the flag is the first word.
        let flag = flag.split(' ').next().unwrap().to_string();
        let previous = rows.insert(
            flag.clone(),
            (cells[1].clone(), cells[2].clone(), cells[3].clone()),
        );
        assert!(previous.is_none(), "two rows for {flag}");
    }
    assert!(rows.len() >= 30, "the table was not found: {rows:?}");
    rows
}

/// `currents-heap --print-config` with none of this machine's variables: the defaults.
fn printed_defaults() -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command.arg("--print-config").env("NO_COLOR", "1");
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CURRENTS_HEAP_") || name.starts_with("HEAP_") {
            command.env_remove(&key);
        }
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// The default a row states, in `--print-config`'s words: "off" is `false`, "on" `true`,
/// a cell that is empty or in parentheses ("(none)", "(off: listing)") is unset.
fn stated_default(cell: &str) -> Option<String> {
    let cell = cell.trim();
    if cell.is_empty() || cell.starts_with('(') {
        return None;
    }
    Some(match cell {
        "off" => "false".into(),
        "on" => "true".into(),
        other => other.trim_matches('`').to_string(),
    })
}

/// The default `--print-config` shows for `key`, in the same words; None when unset.
fn printed_default(printed: &str, key: &str) -> Option<String> {
    if printed.lines().any(|l| l == format!("# {key} is unset")) {
        return None;
    }
    if printed.lines().any(|l| l == format!("[{key}]")) {
        // A table (`[rename]`): empty by default.
        return None;
    }
    let value = printed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("--print-config has no {key}:\n{printed}"));
    Some(
        match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            // An empty list (`user_properties`) is unset, as an empty string is.
            Some("") => return None,
            // A list (`identity`): its items as the flag takes them, comma-separated.
            Some(items) => items
                .split(", ")
                .map(|i| i.trim_matches('"'))
                .collect::<Vec<_>>()
                .join(","),
            None if value == "\"\"" => return None,
            None => value.trim_matches('"').to_string(),
        },
    )
}

#[test]
fn the_config_reference_has_every_key_with_its_range_and_default() {
    let rows = config_rows();
    let printed = printed_defaults();
    let ranges: BTreeMap<&str, String> = config::ranges().into_iter().collect();
    assert!(ranges.len() >= 10, "{ranges:?}");
    for key in config::keys() {
        let flag = format!("--{}", key.replace('_', "-"));
        let (_, default, meaning) = rows
            .get(&flag)
            .unwrap_or_else(|| panic!("docs/reference/config.md has no row for {flag}"));
        if let Some(range) = ranges.get(key) {
            assert!(
                meaning.contains(range.as_str()),
                "{flag}: the row does not state the range {range}: {meaning}"
            );
        }
        assert_eq!(
            stated_default(default),
            printed_default(&printed, key),
            "{flag}: the row's default `{default}` is not what --print-config shows"
        );
    }
}

#[test]
fn the_config_reference_names_only_flags_that_exist_with_their_variables() {
    let rows = config_rows();
    let flags = flags();
    for (flag, (env, _, _)) in &rows {
        let declared = flags.get(flag).unwrap_or_else(|| {
            panic!("docs/reference/config.md names {flag}, which no command has")
        });
        let stated = code_in(env).map(str::to_string);
        assert_eq!(
            &stated, declared,
            "{flag}: the row's environment variable is not the one clap reads"
        );
    }
    // Every option a variable can set is an option of the configuration: it has a row.
    for (flag, env) in &flags {
        if env.is_some() {
            assert!(
                rows.contains_key(flag),
                "{flag} ({env:?}) has no row in docs/reference/config.md"
            );
        }
    }
}

// --- metrics -----------------------------------------------------------------------------

/// Every metric the registry exports, as Prometheus scrapes it: a counter's name with
/// `_total`, others as declared (from the `# TYPE` lines). A family is encoded only once it
/// has a series, so one of each labelled family is counted first, as the dashboard's test
/// does.
fn exported_metrics() -> BTreeSet<String> {
    support::exported_metric_families()
        .into_iter()
        .map(|(name, kind)| match kind.as_str() {
            "counter" => format!("{name}_total"),
            _ => name,
        })
        .collect()
}

#[test]
fn the_metrics_reference_names_exactly_the_exported_metrics() {
    let exported = exported_metrics();
    assert!(exported.len() >= 40, "{exported:?}");
    let documented: BTreeSet<String> = table_rows(&page("docs/reference/metrics.md"))
        .iter()
        .filter_map(|cells| code_in(&cells[0]))
        .filter(|name| name.starts_with("currents_heap_"))
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = exported.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "docs/reference/metrics.md has no row for {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/reference/metrics.md names metrics the registry does not export: {unknown:?}"
    );
    // A family nothing above counted would be missing from both sides: every name
    // registered in src/telemetry/ is documented too.
    let mut registered = Vec::new();
    for entry in std::fs::read_dir(root().join("src/telemetry")).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for literal in source.split('"').skip(1).step_by(2) {
            if literal.starts_with("currents_heap_")
                && literal.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                registered.push(literal.to_string());
            }
        }
    }
    assert!(registered.len() >= 40, "{registered:?}");
    for name in registered {
        assert!(
            documented.contains(&name) || documented.contains(&format!("{name}_total")),
            "{name} is registered in src/telemetry/ but not in docs/reference/metrics.md"
        );
    }
}

// --- exit codes --------------------------------------------------------------------------

/// One of each variant. The match has no wildcard, so a new variant does not compile until
/// it is added here (and then to the page).
fn every_exit() -> Vec<Exit> {
    let all = vec![
        Exit::Success,
        Exit::Fatal(String::new()),
        Exit::Usage(String::new()),
        Exit::Parked,
        Exit::Incomplete(String::new()),
    ];
    for exit in &all {
        match exit {
            Exit::Success
            | Exit::Fatal(_)
            | Exit::Usage(_)
            | Exit::Parked
            | Exit::Incomplete(_) => {}
        }
    }
    all
}

#[test]
fn the_exit_codes_page_lists_exactly_the_codes() {
    let codes: BTreeSet<u8> = every_exit().iter().map(Exit::code).collect();
    let mut listed = BTreeSet::new();
    for cells in table_rows(&page("docs/reference/exit-codes.md")) {
        if let Ok(code) = cells[0].parse::<u8>() {
            assert!(listed.insert(code), "code {code} is listed twice");
            assert!(
                cells.len() == 3 && cells.iter().all(|c| !c.is_empty()),
                "code {code}: a meaning and what to do: {cells:?}"
            );
        }
    }
    assert_eq!(listed, codes, "docs/reference/exit-codes.md");
}

// --- links -------------------------------------------------------------------------------

/// Pages other branches of issue 21 write; linked from here before they exist.
// MERGE: remove once merged
const PENDING: &[&str] = &[];

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut files);
    files
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped but `-` and `_`,
/// spaces as `-`; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut found = BTreeSet::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        found.insert(if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        });
        *count += 1;
    }
    found
}

/// The targets of `[text](target)` links outside code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_code = false;
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if in_code {
            continue;
        }
        // Inline code may show link syntax without being a link.
        let outside_code: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        for part in outside_code.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                found.push((number + 1, part[..end].to_string()));
            }
        }
    }
    found
}

/// `a/./b/../c` as `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                normalize(&file.parent().unwrap().join(path))
            };
            let relative = resolved
                .strip_prefix(root())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if PENDING.contains(&relative.as_str()) {
                continue;
            }
            if !resolved.exists() {
                broken.push(format!("{name}:{line}: {target}: no such file"));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{name}:{line}: {target}: no such heading"));
                }
            }
        }
    }
    assert!(checked >= 50, "only {checked} links were found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_anchors_are_githubs() {
    let found = anchors(
        "# A `code` title: with, punctuation\n## Replay: dead letters\n## Replay: dead letters\n```\n# not a heading\n```\n",
    );
    assert_eq!(
        found,
        BTreeSet::from([
            "a-code-title-with-punctuation".to_string(),
            "replay-dead-letters".to_string(),
            "replay-dead-letters-1".to_string(),
        ])
    );
}

// --- the index and the commands page ------------------------------------------------------

/// A page nobody links from the index is a page nobody finds: docs/README.md links every
/// Markdown file under docs/.
#[test]
fn the_index_links_every_page() {
    let index = page("docs/README.md");
    let linked: BTreeSet<String> = links(&index)
        .into_iter()
        .map(|(_, target)| target.split('#').next().unwrap_or_default().to_string())
        .collect();
    let docs = root().join("docs");
    let missing: Vec<String> = markdown_files()
        .iter()
        .filter_map(|file| file.strip_prefix(&docs).ok())
        .map(|relative| relative.display().to_string())
        .filter(|relative| relative != "README.md" && !linked.contains(relative))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/README.md does not link: {missing:?}"
    );
}

/// docs/reference/commands.md has a row for every command clap knows, so a new command
/// (as `check` was) cannot ship without its reference.
#[test]
fn the_commands_page_has_a_row_per_command() {
    use clap::CommandFactory;
    let rows = table_rows(&page("docs/reference/commands.md"));
    let documented: BTreeSet<String> = rows
        .iter()
        .filter_map(|row| row.first())
        .filter_map(|cell| code_in(cell))
        .filter_map(|code| code.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<String> = currents_heap::commands::Cli::command()
        .get_subcommands()
        .map(|command| command.get_name().to_string())
        .filter(|name| name != "help" && !documented.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference/commands.md has no row for: {missing:?}"
    );
}
