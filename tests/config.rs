//! The config file: precedence (flags > environment > file > defaults), unknown keys and
//! secrets rejected, and the printed effective config redacted and re-readable.

mod support;

use std::process::Command;

use support::TempDir;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.example.toml");

fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
    command.args(args).env("NO_COLOR", "1");
    for key in [
        "HEAP_APP_ID",
        "CURRENTS_HEAP_POLL_INTERVAL",
        "CURRENTS_HEAP_CONFIG",
        "CURRENTS_HEAP_SOURCE",
    ] {
        command.env_remove(key);
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
        ("CURRENTS_HEAP_SOURCE", "/data/currents"),
    ];
    let (_, from_env, _) = cli(&["run", "--config", EXAMPLE, "--print-config"], &env);
    assert_eq!(value(&from_env, "poll_interval"), "\"90s\"");
    assert_eq!(value(&from_env, "source"), "\"/data/currents\"");

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
    let secret = "app-id-4f9c2e";
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
