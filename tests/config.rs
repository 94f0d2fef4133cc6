//! The configuration: precedence (flags > environment > file > defaults), unknown keys and
//! secrets rejected, the same bounds for flags, variables and the file, and the printed
//! effective config redacted and re-readable.

mod support;

use std::process::Command;

use currents_heap::commands::config;
use support::TempDir;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.example.toml");
const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference/config.md");

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command.args(args).env("NO_COLOR", "1");
    // Only the variables a test sets: none of the machine's.
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("CURRENTS_HEAP_") || name.starts_with("HEAP_") {
            command.env_remove(&key);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn value<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in\n{printed}"))
}

#[test]
fn flags_beat_environment_beats_file_beats_defaults() {
    let (code, defaults, _) = cli(&["run", "--print-config"], &[]);
    assert_eq!(code, 0);
    assert_eq!(value(&defaults, "poll_interval"), "\"60s\"");
    assert_eq!(value(&defaults, "source"), "\"fixtures/bucket\"");

    let (_, from_file, _) = cli(&["run", "--config", EXAMPLE, "--print-config"], &[]);
    assert_eq!(
        value(&from_file, "source"),
        "\"s3://my-braze-currents/currents/\""
    );
    assert_eq!(value(&from_file, "poll_interval"), "\"60s\"");
    assert_eq!(value(&from_file, "listen"), "\"0.0.0.0:9090\"");
    assert!(
        from_file.contains("\"users.messages.email.Open\" = \"Email Opened\""),
        "{from_file}"
    );

    let env = [
        ("CURRENTS_HEAP_POLL_INTERVAL", "90s"),
        ("CURRENTS_HEAP_SOURCE", "s3://other-currents/data"),
    ];
    let (_, from_env, _) = cli(&["run", "--config", EXAMPLE, "--print-config"], &env);
    assert_eq!(value(&from_env, "poll_interval"), "\"90s\"");
    assert_eq!(value(&from_env, "source"), "\"s3://other-currents/data/\"");

    let (_, from_flag, _) = cli(
        &[
            "run",
            "--config",
            EXAMPLE,
            "--poll-interval",
            "5s",
            "--print-config",
        ],
        &env,
    );
    assert_eq!(value(&from_flag, "poll_interval"), "\"5s\"");
}

#[test]
fn the_printed_config_reads_back_the_same() {
    let (_, printed, _) = cli(&["run", "--config", EXAMPLE, "--print-config"], &[]);
    let dir = TempDir::new("config");
    let path = dir.0.join("effective.toml");
    std::fs::write(&path, &printed).unwrap();
    let (code, again, stderr) = cli(
        &["run", "--config", path.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again, printed);
}

#[test]
fn unknown_keys_and_secrets_in_the_file_are_rejected() {
    let dir = TempDir::new("config");
    for (text, expected) in [
        ("pol_interval = \"5s\"", "unknown field `pol_interval`"),
        ("heap_app_id = \"123\"", "heap_app_id is a secret"),
        ("lookback = \"soon\"", "config key `lookback`"),
        ("max_batch_events = 5000", "config key `max_batch_events`"),
    ] {
        let path = dir.0.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = cli(
            &["run", "--config", path.to_str().unwrap(), "--print-config"],
            &[],
        );
        assert_eq!(code, 2, "{text}");
        assert!(
            stderr.contains(expected) && stderr.contains("bad.toml"),
            "{text}: {stderr}"
        );
    }
}

#[test]
fn secrets_are_never_printed() {
    // A Heap environment id: digits.
    let secret = "4096172835";
    let (code, printed, _) = cli(&["run", "--print-config"], &[("HEAP_APP_ID", secret)]);
    assert_eq!(code, 0);
    assert!(!printed.contains(secret), "{printed}");
    assert!(printed.contains("<redacted>"));
    let (_, help, _) = cli(&["run", "--help"], &[("HEAP_APP_ID", secret)]);
    assert!(
        help.contains("--heap-app-id") && !help.contains(secret),
        "{help}"
    );
    // A run that fails on configuration does not echo it either.
    let (code, _, stderr) = cli(
        &["run", "--once", "--heap-url", "nope"],
        &[("HEAP_APP_ID", secret)],
    );
    assert_eq!(code, 2);
    assert!(!stderr.contains(secret), "{stderr}");
}

/// Runs `args` with a config file holding `file` (and an empty source and state), expecting
/// exit 2 with every one of `expected` in the error, and nothing started: no state written.
fn refused(args: &[&str], file: &str, env: &[(&str, &str)], expected: &[&str]) {
    let dir = TempDir::new("config");
    let path = dir.0.join("settings.toml");
    std::fs::create_dir_all(dir.0.join("source")).unwrap();
    let stores = format!(
        "source = {:?}\nstate = {:?}\n",
        dir.0.join("source"),
        dir.0.join("state")
    );
    std::fs::write(&path, stores + file).unwrap();
    let mut all = args.to_vec();
    all.extend(["--config", path.to_str().unwrap()]);
    // A port nothing listens on, should a refused setting be let through.
    let mut env = env.to_vec();
    env.extend([
        ("HEAP_API_URL", "http://127.0.0.1:9"),
        ("HEAP_APP_ID", "77"),
    ]);
    let (code, stdout, stderr) = cli(&all, &env);
    assert_eq!(code, 2, "{args:?} {file}: {stdout}\n{stderr}");
    for text in expected {
        assert!(
            stderr.contains(text),
            "{args:?} {file}: no `{text}` in {stderr}"
        );
    }
    assert!(
        !dir.0.join("state").exists(),
        "{args:?} {file}: the state was touched"
    );
}

#[test]
fn the_file_has_the_flags_bounds() {
    // The file took heap_concurrency = 1000 and object_concurrency = 100000, which the flags
    // refused, and clamped object_concurrency = 0 to 1 silently.
    for (file, key) in [
        (
            "heap_concurrency = 1000",
            "config key `heap_concurrency`: must be 1 to 64",
        ),
        (
            "object_concurrency = 100000",
            "config key `object_concurrency`: must be 1 to 256",
        ),
        (
            "object_concurrency = 0",
            "config key `object_concurrency`: must be 1 to 256, not 0",
        ),
        (
            "max_pending_events = 10",
            "config key `max_pending_events`: must be 1,000 to 1,000,000",
        ),
        (
            "app_rate_limit = 2000000",
            "config key `app_rate_limit`: must be 0 to 1,000,000",
        ),
        (
            "max_batch_events = 0",
            "config key `max_batch_events`: must be 1 to 1,000",
        ),
        (
            "poll_interval = \"0s\"",
            "config key `poll_interval`: must be 1s to 24h",
        ),
        ("lookback = \"0h\"", "config key `lookback`"),
        ("heap_concurrency = -1", "config key `heap_concurrency`"),
    ] {
        refused(&["run", "--once"], file, &[], &[key, "settings.toml"]);
    }
    // The same value is refused the same way from each source, which is named.
    refused(
        &["run", "--once", "--heap-concurrency", "1000"],
        "",
        &[],
        &["--heap-concurrency: must be 1 to 64, not 1,000"],
    );
    refused(
        &["backfill", "--from", "2026-11-01", "--to", "2026-11-02"],
        "",
        &[("CURRENTS_HEAP_HEAP_CONCURRENCY", "1000")],
        &["CURRENTS_HEAP_HEAP_CONCURRENCY: must be 1 to 64, not 1,000"],
    );
    refused(
        &["replay"],
        "",
        &[("CURRENTS_HEAP_IDENTITY_RATE_LIMIT", "1000001")],
        &["CURRENTS_HEAP_IDENTITY_RATE_LIMIT: must be 0 to 1,000,000"],
    );
    let (code, printed, stderr) = cli(
        &[
            "run",
            "--app-rate-limit",
            "0",
            "--identity-rate-limit",
            "0",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "0 turns a rate limit off: {stderr}");
    assert_eq!(value(&printed, "app_rate_limit"), "0");
}

#[test]
fn a_body_limit_holds_at_least_one_real_event() {
    // At 0 or 100 bytes every event was parked.
    refused(
        &["run", "--once", "--max-body-bytes", "100"],
        "",
        &[],
        &["--max-body-bytes: must be 16,384 to 16,777,216, not 100"],
    );
    refused(
        &["run", "--once"],
        "max_body_bytes = 0",
        &[],
        &["config key `max_body_bytes`"],
    );
    refused(
        &["run", "--once", "--max-body-bytes", "16777217"],
        "",
        &[],
        &["--max-body-bytes"],
    );
    let (code, printed, _) = cli(&["run", "--max-body-bytes", "16384", "--print-config"], &[]);
    assert_eq!(code, 0);
    assert_eq!(value(&printed, "max_body_bytes"), "16384");
}

#[test]
fn durations_have_sane_bounds() {
    for (args, expected) in [
        // A busy loop listing the source.
        (
            &["run", "--poll-interval", "0s"][..],
            "--poll-interval: must be 1s to 24h, not 0s",
        ),
        // Every request reported as "no response", although Heap stored the events.
        (
            &["run", "--request-timeout", "0s"],
            "--request-timeout: must be 1s to 10m, not 0s",
        ),
        (
            &["run", "--request-timeout", "500ms"],
            "--request-timeout: must be 1s to 10m",
        ),
        (
            &["replay", "--request-timeout", "11m"],
            "--request-timeout: must be 1s to 10m",
        ),
        (
            &["run", "--shutdown-timeout", "0s"],
            "--shutdown-timeout: must be 1s to 1h",
        ),
        (
            &[
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
                "--shutdown-timeout",
                "2h",
            ],
            "--shutdown-timeout: must be 1s to 1h",
        ),
        (
            &["run", "--retry-max-time", "0s"],
            "--retry-max-time: must be 1s to 24h",
        ),
        (
            &["run", "--retry-max-time", "25h"],
            "--retry-max-time: must be 1s to 24h",
        ),
        (
            &["run", "--retry-max-time", "401d"],
            "longest allowed duration",
        ),
        (
            &["run", "--poll-interval", "soon"],
            "`soon` is not a duration",
        ),
    ] {
        refused(args, "", &[], &[expected]);
    }
    refused(
        &["run"],
        "",
        &[("CURRENTS_HEAP_POLL_INTERVAL", "0s")],
        &["CURRENTS_HEAP_POLL_INTERVAL: must be 1s to 24h, not 0s"],
    );
}

#[test]
fn durations_print_exactly_as_given() {
    // `--request-timeout 500ms --print-config` printed "0s" (500ms is now below the bound).
    let (code, printed, stderr) = cli(
        &[
            "run",
            "--request-timeout",
            "2500ms",
            "--retry-max-time",
            "1h 30m",
            "--poll-interval",
            "90s",
            "--shutdown-timeout",
            "15m",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value(&printed, "request_timeout"), "\"2500ms\"");
    assert_eq!(value(&printed, "retry_max_time"), "\"1h 30m\"");
    assert_eq!(value(&printed, "poll_interval"), "\"90s\"");
    assert_eq!(value(&printed, "shutdown_timeout"), "\"15m\"");
}

#[test]
fn bad_lookbacks_and_dates_exit_2() {
    refused(
        &["run", "--once", "--lookback", "0h"],
        "",
        &[],
        &["--lookback", "at least 1h"],
    );
    refused(&["status", "--lookback", "0h"], "", &[], &["--lookback"]);
    refused(
        &["replay", "--date", "garbage"],
        "",
        &[],
        &["--date", "garbage"],
    );
}

#[test]
fn max_pending_events_documents_its_range() {
    refused(
        &["run", "--once", "--max-pending-events", "999"],
        "",
        &[],
        &["--max-pending-events: must be 1,000 to 1,000,000, not 999"],
    );
    let (_, help, _) = cli(&["run", "--help"], &[]);
    let line = help
        .split("--max-pending-events")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .unwrap_or_default();
    assert!(
        line.contains("1,000 to 1,000,000") && line.contains("[default: 5000]"),
        "{line}"
    );
}

#[test]
fn help_shows_defaults_and_ranges() {
    let (code, help, _) = cli(&["run", "--help"], &[]);
    assert_eq!(code, 0);
    for text in [
        "[default: 60s]",
        "[default: 15m]",
        "[default: 30s]",
        "[default: 1048576]",
        "[default: 72h]",
        "[default: fixtures/bucket]",
        "[default: external_user_id]",
        "[default: human]",
    ] {
        assert!(help.contains(text), "no {text} in\n{help}");
    }
    for (key, range) in config::ranges() {
        assert!(help.contains(&range), "--{key}: no {range} in\n{help}");
    }
}

#[test]
fn the_reference_states_every_range() {
    let reference = std::fs::read_to_string(REFERENCE).unwrap();
    for (key, range) in config::ranges() {
        let flag = format!("`--{}`", key.replace('_', "-"));
        let row = reference
            .lines()
            .find(|l| l.starts_with(&format!("| {flag}")))
            .unwrap_or_else(|| panic!("no row for {flag}"));
        assert!(row.contains(&range), "{flag}: no {range} in {row}");
    }
}

#[test]
fn log_format_can_live_in_the_file() {
    // The file refused log_format as an unknown field. Logging starts after the file is read,
    // so the file's format applies: here to the warning about the old [renames] table.
    let dir = TempDir::new("config");
    let path = dir.0.join("json.toml");
    std::fs::write(&path, "log_format = \"json\"\n[renames]\n\"a.b\" = \"C\"\n").unwrap();
    let (code, printed, stderr) = cli(
        &[
            "status",
            "--config",
            path.to_str().unwrap(),
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value(&printed, "log_format"), "\"json\"");
    let warning: serde_json::Value = serde_json::from_str(stderr.lines().next().unwrap())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(warning["level"], "WARN");
    assert!(
        warning["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("[renames]")
    );
    // The table is printed, and read back, under the flag's name.
    assert!(
        printed.contains("\n[rename]\n\"a.b\" = \"C\"\n"),
        "{printed}"
    );
    // A flag still overrides the file.
    let (_, printed, stderr) = cli(
        &[
            "status",
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "human",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(value(&printed, "log_format"), "\"human\"");
    assert!(stderr.contains(" WARN "), "{stderr}");
}

#[test]
fn renames_follow_the_flag_name() {
    let (code, printed, _) = cli(
        &[
            "run",
            "--rename",
            "users.messages.email.Open=Email Opened",
            "--print-config",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        printed.contains("\n[rename]\n\"users.messages.email.Open\" = \"Email Opened\"\n"),
        "{printed}"
    );
    refused(
        &["run", "--once"],
        "[rename]\n\"a\" = \"b\"\n[renames]\n\"c\" = \"d\"\n",
        &[],
        &["[renames]", "[rename]"],
    );
    refused(
        &["run", "--once"],
        "[rename]\n\"a\" = \"\"\n",
        &[],
        &["config key `rename`"],
    );
}

#[test]
fn print_config_alone_prints_every_key() {
    // It failed for want of a command, although the top-level help lists it.
    let (code, printed, stderr) = cli(&["--print-config"], &[("CURRENTS_HEAP_LOOKBACK", "all")]);
    assert_eq!(code, 0, "{stderr}");
    for key in config::keys() {
        assert!(
            printed.lines().any(|l| l.starts_with(&format!("{key} = "))
                || l == format!("[{key}]")
                || l == format!("# {key} is unset")),
            "no {key} in\n{printed}"
        );
    }
    assert_eq!(
        value(&printed, "lookback"),
        "\"all\"",
        "the environment applies too"
    );
    let (code, _, stderr) = cli(&[], &[]);
    assert_eq!(
        code, 2,
        "without --print-config a command is still needed: {stderr}"
    );
}

#[test]
fn the_example_documents_every_key() {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    for key in config::keys() {
        assert!(table.contains_key(*key), "the example does not set `{key}`");
        let documented = text
            .split(&format!("\n{key} = "))
            .next()
            .and_then(|before| before.lines().last())
            .is_some_and(|l| l.starts_with('#'));
        assert!(
            documented || text.contains(&format!("\n[{key}]")),
            "`{key}` has no comment line above it"
        );
    }
    for (key, range) in config::ranges() {
        assert!(
            text.contains(&range),
            "the example does not state `{key}`'s {range}"
        );
    }
    // It parses with unknown keys refused, and every value is within its bounds.
    let example = config::from_file(std::path::Path::new(EXAMPLE)).unwrap();
    assert!(example.listen.is_some() && example.heap_app_id_file.is_some());
}

#[test]
fn notification_settings_are_checked_before_anything_starts() {
    // A local source: notifications come only from an S3 bucket.
    refused(
        &[
            "run",
            "--sqs-queue-url",
            "https://sqs.us-east-1.amazonaws.com/1/q",
        ],
        "",
        &[],
        &["--sqs-queue-url: needs an s3:// source"],
    );
    refused(
        &["run", "--source", "s3://currents/prefix"],
        "",
        &[("CURRENTS_HEAP_SQS_QUEUE_URL", "currents-heap")],
        &["CURRENTS_HEAP_SQS_QUEUE_URL: is not an http:// or https:// queue URL"],
    );
    for (file, key) in [
        (
            "reconcile_interval = \"0s\"",
            "config key `reconcile_interval`: must be 1s to 168h",
        ),
        (
            "sqs_visibility_timeout = \"13h\"",
            "config key `sqs_visibility_timeout`: must be 5s to 12h",
        ),
    ] {
        refused(&["run"], file, &[], &[key]);
    }
    // The combinations that cannot work: one listing pass, or a run that records nothing
    // and so could never delete a message.
    for flag in ["--once", "--dry-run"] {
        refused(
            &[
                "run",
                flag,
                "--source",
                "s3://currents/prefix",
                "--sqs-queue-url",
                "https://sqs.us-east-1.amazonaws.com/1/q",
            ],
            "",
            &[("AWS_REGION", "us-east-1")],
            &["--sqs-queue-url: not with", flag],
        );
    }
}

#[test]
fn a_sas_url_as_a_location_is_refused_without_its_signature() {
    let sas = "https://acct.blob.core.windows.net/c0n/p?sv=2022&sig=SECRETSIG";
    let flag = format!("--source={sas}");
    for (args, env) in [
        (vec!["run", "--once", "--source", sas], vec![]),
        (vec!["status", "--state", sas], vec![]),
        (vec!["run", "--once", flag.as_str()], vec![]),
        (vec!["run", "--once"], vec![("CURRENTS_HEAP_SOURCE", sas)]),
        (vec!["--print-config"], vec![("CURRENTS_HEAP_STATE", sas)]),
    ] {
        let (code, stdout, stderr) = cli(&args, &env);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            !stdout.contains("SECRETSIG") && !stderr.contains("SECRETSIG"),
            "{args:?} printed the signature: {stderr}"
        );
        assert!(stderr.contains("query string"), "{args:?}: {stderr}");
    }
}

/// Every option an environment variable can set, as clap declares them: (variable, flag).
fn env_backed() -> Vec<(String, String)> {
    use clap::CommandFactory;
    let mut found = std::collections::BTreeMap::new();
    let top = currents_heap::commands::Cli::command();
    for command in std::iter::once(&top).chain(top.get_subcommands()) {
        for arg in command.get_arguments() {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                found.insert(env.to_string_lossy().into_owned(), format!("--{long}"));
            }
        }
    }
    found.into_iter().collect()
}

/// Kubernetes and Helm set a variable to "" when a template value is missing: the error
/// names the variable that holds the value, never a flag that was not passed.
#[test]
fn a_bad_environment_value_names_its_variable() {
    let vars = env_backed();
    assert!(vars.len() >= 20, "{vars:?}");
    let mut refused = 0;
    for (var, flag) in &vars {
        for bad in ["", "garbage ☃"] {
            let (code, _, stderr) = cli(&["run", "--print-config"], &[(var, bad)]);
            if code == 0 {
                // Some values are fine: an empty prefix, a file name.
                continue;
            }
            refused += 1;
            assert_eq!(code, 2, "{var}={bad:?}: {stderr}");
            let first = stderr.lines().next().unwrap_or_default();
            assert!(
                first.contains(var.as_str()) && !first.contains(flag.as_str()),
                "{var}={bad:?} must be named, not {flag}: {stderr}"
            );
        }
    }
    // The listen address, the numbers, durations, locations, enums, ...
    assert!(refused >= 25, "only {refused} values were refused");

    // The same value from a flag names the flag.
    let (code, _, stderr) = cli(&["run", "--listen", "", "--print-config"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
    let (code, _, stderr) = cli(
        &["run", "--listen=nope", "--print-config"],
        &[("CURRENTS_HEAP_LISTEN", "")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--listen") && !stderr.contains("CURRENTS_HEAP_LISTEN"),
        "{stderr}"
    );
    // Without a command, `--print-config` reads the environment as `run` would.
    let (code, _, stderr) = cli(&["--print-config"], &[("CURRENTS_HEAP_LISTEN", "")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("CURRENTS_HEAP_LISTEN"), "{stderr}");
}

#[test]
fn user_properties_settings_layer_like_the_others() {
    let dir = TempDir::new("config");
    let path = dir.0.join("properties.toml");
    std::fs::write(
        &path,
        "user_properties = [\"dob\", \"subscription\"]\nuser_property_prefix = \"file_\"\nuser_properties_per_minute = 100\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    for command in [&["run"][..], &["replay"], &["inspect", "x.avro", "--heap"]] {
        let (code, defaults, stderr) = cli(&[command, &["--print-config"]].concat(), &[]);
        assert_eq!(code, 0, "{command:?}: {stderr}");
        assert_eq!(value(&defaults, "user_properties"), "[]");
        assert_eq!(value(&defaults, "user_property_prefix"), "\"braze_\"");
        assert_eq!(value(&defaults, "user_properties_per_minute"), "5000");

        let (_, from_file, _) = cli(
            &[command, &["--config", file, "--print-config"]].concat(),
            &[],
        );
        assert_eq!(
            value(&from_file, "user_properties"),
            "[\"dob\", \"subscription\"]"
        );
        assert_eq!(value(&from_file, "user_property_prefix"), "\"file_\"");
        assert_eq!(value(&from_file, "user_properties_per_minute"), "100");

        let env = [
            (
                "CURRENTS_HEAP_USER_PROPERTIES",
                "email_address,email_address",
            ),
            ("CURRENTS_HEAP_USER_PROPERTY_PREFIX", "env_"),
            ("CURRENTS_HEAP_USER_PROPERTIES_PER_MINUTE", "200"),
        ];
        let with_file = [command, &["--config", file, "--print-config"]].concat();
        let (_, from_env, _) = cli(&with_file, &env);
        assert_eq!(value(&from_env, "user_properties"), "[\"email_address\"]");
        assert_eq!(value(&from_env, "user_property_prefix"), "\"env_\"");
        assert_eq!(value(&from_env, "user_properties_per_minute"), "200");

        let flags = [
            "--user-properties",
            "custom_attributes",
            "--user-property-prefix",
            "",
            "--user-properties-per-minute",
            "300",
        ];
        let (_, from_flag, _) = cli(&[&with_file[..], &flags].concat(), &env);
        assert_eq!(
            value(&from_flag, "user_properties"),
            "[\"custom_attributes\"]"
        );
        assert_eq!(value(&from_flag, "user_property_prefix"), "\"\"");
        assert_eq!(value(&from_flag, "user_properties_per_minute"), "300");

        // An empty variable (Helm's missing value) turns the file's allowlist off: it is
        // given, and names nothing.
        let (code, emptied, stderr) = cli(&with_file, &[("CURRENTS_HEAP_USER_PROPERTIES", "")]);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(value(&emptied, "user_properties"), "[]");
    }
}

#[test]
fn a_bad_user_property_or_ceiling_is_refused_by_name() {
    refused(
        &["run", "--once"],
        "user_properties = [\"subscription\", \"email\"]",
        &[],
        &[
            "config key `user_properties`: unknown user property field `email`",
            "email_address",
        ],
    );
    refused(
        &["run", "--once"],
        "",
        &[("CURRENTS_HEAP_USER_PROPERTIES", "dob,birthday")],
        &[
            "environment variable CURRENTS_HEAP_USER_PROPERTIES: unknown user property field `birthday`",
        ],
    );
    refused(
        &[
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
            "--user-properties",
            "custom_attributes.",
        ],
        "",
        &[],
        &["--user-properties: unknown user property field `custom_attributes.`"],
    );
    refused(
        &["replay"],
        "user_properties_per_minute = 0",
        &[],
        &["config key `user_properties_per_minute`: must be 1 to 1,000,000, not 0"],
    );
    refused(
        &["run", "--once"],
        "",
        &[("CURRENTS_HEAP_USER_PROPERTIES_PER_MINUTE", "1000001")],
        &["CURRENTS_HEAP_USER_PROPERTIES_PER_MINUTE: must be 1 to 1,000,000, not 1,000,001"],
    );
}

/// An on/off variable takes the spellings operators write in manifests and .env files
/// (`CURRENTS_HEAP_S3_PATH_STYLE=1` was refused: only `true`/`false` were).
#[test]
fn on_off_variables_take_1_yes_on_and_their_opposites() {
    for (variable, key) in [
        ("CURRENTS_HEAP_S3_PATH_STYLE", "s3_path_style"),
        ("CURRENTS_HEAP_SINGLE_PROCESS", "single_process"),
    ] {
        for (given, expected) in [
            ("1", "true"),
            ("yes", "true"),
            ("on", "true"),
            ("true", "true"),
            ("0", "false"),
            ("no", "false"),
            ("off", "false"),
        ] {
            let (code, printed, stderr) = cli(&["run", "--print-config"], &[(variable, given)]);
            assert_eq!(code, 0, "{variable}={given}: {stderr}");
            assert_eq!(value(&printed, key), expected, "{variable}={given}");
        }
        let (code, _, stderr) = cli(&["run", "--print-config"], &[(variable, "maybe")]);
        assert_eq!(code, 2, "{variable}=maybe: {stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}
