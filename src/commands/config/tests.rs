//! Unit tests of the configuration: the defaults clap shows, precedence, error wording and
//! the `--print-config` round trip, all without the machine's environment.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde_json::Value as Json;

use super::resolve::suggestion;
use super::validate::{short, thousands};
use super::*;
use crate::commands::{Cli, Command, LogFormat};
use crate::heap::map::IdentitySource;
use crate::worker::Lookback;

/// The command line with no environment, so the machine's variables do not leak in.
fn cli_without_env() -> clap::Command {
    Cli::command()
        .mut_args(|a| a.env(None))
        .mut_subcommands(|s| s.mut_args(|a| a.env(None)))
}

fn parse(args: &[&str]) -> (Cli, ArgMatches) {
    let matches = cli_without_env()
        .try_get_matches_from(args)
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    (Cli::from_arg_matches(&matches).unwrap(), matches)
}

const COMMANDS: [&[&str]; 6] = [
    &["currents-heap", "inspect", "x.avro"],
    &["currents-heap", "run"],
    &[
        "currents-heap",
        "backfill",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
    ],
    &["currents-heap", "replay"],
    &["currents-heap", "status"],
    &["currents-heap", "check"],
];

#[test]
fn the_defaults_are_valid_and_clap_shows_the_same_ones() {
    DEFAULTS.validate().unwrap();
    let defaults = serde_json::to_value(&*DEFAULTS).unwrap();
    for args in COMMANDS {
        let (cli, matches) = parse(args);
        let shown = match cli.command.as_ref().unwrap() {
            Command::Inspect { mapping, .. } => serde_json::to_value(mapping),
            Command::Run(a) => serde_json::to_value(a),
            Command::Backfill(a) => serde_json::to_value(a),
            Command::Replay(a) => serde_json::to_value(a),
            Command::Status(a) => serde_json::to_value(a),
            Command::Check(a) => serde_json::to_value(&a.run),
        }
        .unwrap();
        let Json::Object(shown) = shown else {
            panic!("{shown}")
        };
        assert!(!shown.is_empty());
        for (key, value) in shown {
            assert!(keys().contains(&key.as_str()), "{key} is not a file key");
            if value.is_null() {
                assert!(defaults.get(&key).is_none(), "{args:?} {key}");
            } else {
                assert_eq!(Some(&value), defaults.get(&key), "{args:?} {key}");
            }
        }
        assert_eq!(
            serde_json::to_value(&cli).unwrap()["log_format"],
            defaults["log_format"]
        );
        let resolved = resolve(&cli, &matches).unwrap();
        assert_eq!(resolved.config, *DEFAULTS, "{args:?}");
    }
    assert_eq!(defaults["identity"], serde_json::json!([DEFAULT_IDENTITY]));
}

#[test]
fn help_states_every_range() {
    let mut command = Cli::command();
    command.build();
    for (key, range) in ranges() {
        let mut found = 0;
        for sub in command.get_subcommands() {
            for arg in sub.get_arguments().filter(|a| a.get_id() == key) {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(help.contains(&range), "--{key}: `{help}` lacks `{range}`");
                found += 1;
            }
        }
        assert!(found > 0, "{key} is no flag");
    }
}

#[test]
fn flags_override_only_what_they_were_given() {
    let (cli, matches) = parse(&[
        "currents-heap",
        "run",
        "--poll-interval",
        "1h 30m",
        "--rename",
        "a=b",
        "--identity",
        "user_id,external_user_id",
    ]);
    let config = resolve(&cli, &matches).unwrap().config;
    assert_eq!(config.poll_interval.to_string(), "1h 30m");
    assert_eq!(config.poll_interval.get(), Duration::from_secs(5400));
    assert_eq!(config.rename["a"], "b");
    assert_eq!(
        config.identity,
        [IdentitySource::UserId, IdentitySource::ExternalUserId]
    );
    assert_eq!(
        Config {
            poll_interval: DEFAULTS.poll_interval.clone(),
            rename: BTreeMap::new(),
            identity: DEFAULTS.identity.clone(),
            ..config
        },
        *DEFAULTS
    );
}

#[test]
fn errors_name_the_flag_and_the_bound() {
    for (args, expected) in [
        (
            &["x", "run", "--heap-concurrency", "65"][..],
            "--heap-concurrency: must be 1 to 64, not 65",
        ),
        (
            &["x", "run", "--max-body-bytes", "100"],
            "--max-body-bytes: must be 16,384 to 16,777,216, not 100",
        ),
        (
            &["x", "run", "--request-timeout", "500ms"],
            "--request-timeout: must be 1s to 10m, not 500ms",
        ),
        (
            &["x", "run", "--batch-linger", "6s"],
            "--batch-linger: must be 0s to 5s, not 6s",
        ),
        (
            &[
                "x",
                "backfill",
                "--from",
                "2026-11-01",
                "--to",
                "2026-11-02",
                "--small-object-budget",
                "268435457",
            ],
            "--small-object-budget: must be 0 to 268,435,456, not 268,435,457",
        ),
        (
            &["x", "replay", "--identity-rate-limit", "1000001"],
            "--identity-rate-limit: must be 0 to 1,000,000, not 1,000,001",
        ),
        (&["x", "run", "--heap-url", "nope"], "--heap-url: `nope`"),
        (&["x", "run", "--rename", "a= "], "`a= ` is not TYPE=NAME"),
    ] {
        let error = match cli_without_env().try_get_matches_from(args) {
            Ok(matches) => {
                let cli = Cli::from_arg_matches(&matches).unwrap();
                resolve(&cli, &matches).unwrap_err()
            }
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}

#[test]
fn what_is_printed_reads_back_the_same() {
    let config = Config {
        heap_app_id: Some(Secret("app-id-4f9c2e".into())),
        heap_app_id_file: Some("/run/secrets/heap app id".into()),
        source: "s3://bucket/a/b".parse().unwrap(),
        retry_max_time: "1h 30m".parse().unwrap(),
        request_timeout: "2500ms".parse().unwrap(),
        batch_linger: "0".parse().unwrap(),
        small_object_budget: 0,
        lookback: Lookback::All,
        listen: Some("[::1]:9090".parse().unwrap()),
        event_prefix: "a \"quoted\"\\ \u{7f}\n\tprefix ✓".into(),
        property_prefix: "braze-".into(),
        identity: vec![IdentitySource::UserId, IdentitySource::ExternalUserId],
        rename: BTreeMap::from([
            ("users.behaviors.CustomEvent".into(), "Custom".into()),
            ("with \"quotes\" = and ]".into(), "x".into()),
        ]),
        log_format: LogFormat::Json,
        dry_run: true,
        user_properties: vec![
            "custom_attributes.a \"b\"".parse().unwrap(),
            "subscription".parse().unwrap(),
        ],
        user_property_prefix: String::new(),
        user_properties_per_minute: 1,
        ..Config::default()
    };
    config.validate().unwrap();
    let printed = render(&config).unwrap();
    assert!(!printed.contains("app-id-4f9c2e"), "{printed}");
    assert!(printed.contains("# heap_app_id = <redacted>"));
    assert!(
        printed.contains("request_timeout = \"2500ms\""),
        "{printed}"
    );
    assert!(printed.contains("retry_max_time = \"1h 30m\""), "{printed}");
    assert!(printed.contains("batch_linger = \"0\""), "{printed}");
    assert!(printed.contains("small_object_budget = 0"), "{printed}");
    let dir = std::env::temp_dir().join(format!("currents-heap-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("printed.toml");
    std::fs::write(&path, &printed).unwrap();
    let read = from_file(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        read.unwrap(),
        Config {
            heap_app_id: None,
            ..config
        }
    );
    let defaults = render(&DEFAULTS).unwrap();
    for key in keys() {
        assert!(
            defaults.lines().any(|l| l.starts_with(&format!("{key} = "))
                || l == format!("[{key}]")
                || l == format!("# {key} is unset")),
            "{key}: {defaults}"
        );
    }
}

#[test]
fn keys_are_the_fields() {
    assert_eq!(keys().len(), 34);
    assert!(keys().contains(&"rename") && keys().contains(&"log_format"));
    assert!(!keys().contains(&"heap_app_id"));
    assert_eq!(
        suggestion("pol_interval"),
        " (did you mean `poll_interval`?)"
    );
    assert_eq!(suggestion("renames"), " (did you mean `rename`?)");
    assert_eq!(suggestion("something"), "");
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(thousands(999), "999");
    assert_eq!(short(Duration::from_secs(86_400)), "24h");
    assert_eq!(short(Duration::ZERO), "0s");
}

#[test]
fn secrets_stay_out_of_debug() {
    let config = Config {
        heap_app_id: Some(Secret("app-id-4f9c2e".into())),
        ..Config::default()
    };
    assert!(!format!("{config:?}").contains("app-id-4f9c2e"));
}

#[test]
fn an_app_id_is_digits_with_a_byte_order_mark_and_whitespace_dropped() {
    use super::heap_app_id;
    let id = |text: &str| heap_app_id(text, "HEAP_APP_ID").map(|s| s.map(|s| s.0));
    assert_eq!(id("\u{feff}77\r\n"), Ok(Some("77".into())));
    assert_eq!(id("  1234567890 "), Ok(Some("1234567890".into())));
    assert_eq!(id(" \n"), Ok(None));
    for bad in ["HEAP_APP_ID=42", "42 43", "４２", "-42", &"4".repeat(21)] {
        let error = id(bad).unwrap_err();
        assert!(error.starts_with("HEAP_APP_ID: "), "{error}");
        assert!(!error.contains("42") && !error.contains("444"), "{error}");
    }
    assert!(id("HEAP_APP_ID=42").unwrap_err().contains("NAME=VALUE"));
}

#[test]
fn user_properties_parse_dedupe_and_name_their_source_when_wrong() {
    use crate::heap::properties::{DEFAULT_PREFIX, DEFAULT_USERS_PER_MINUTE, Field};
    // Off by default, with the module's defaults.
    let defaults = DEFAULTS.properties();
    assert!(!defaults.enabled());
    assert_eq!(defaults.prefix, DEFAULT_PREFIX);
    assert_eq!(defaults.users_per_minute, DEFAULT_USERS_PER_MINUTE);

    for command in [
        &["currents-heap", "run"][..],
        &["currents-heap", "replay"],
        &["currents-heap", "check"],
        &["currents-heap", "inspect", "x.avro", "--heap"],
        &[
            "currents-heap",
            "backfill",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
        ],
    ] {
        let mut args = command.to_vec();
        args.extend([
            "--user-properties",
            "dob, subscription,dob,,custom_attributes.plan",
            "--user-properties",
            "subscription",
            "--user-property-prefix",
            "",
            "--user-properties-per-minute",
            "1000000",
        ]);
        let (cli, matches) = parse(&args);
        let properties = resolve(&cli, &matches).unwrap().config.properties();
        assert_eq!(
            properties.fields,
            [
                Field::Profile("dob"),
                Field::Subscription,
                Field::CustomAttribute("plan".into())
            ],
            "{command:?}"
        );
        assert_eq!(properties.prefix, "");
        assert_eq!(properties.users_per_minute, 1_000_000);
    }

    for (args, expected) in [
        (
            &["x", "run", "--user-properties", "dob,email"][..],
            "--user-properties: unknown user property field `email` (expected",
        ),
        (
            &["x", "replay", "--user-properties-per-minute", "0"],
            "--user-properties-per-minute: must be 1 to 1,000,000, not 0",
        ),
        (
            &["x", "run", "--user-properties-per-minute", "1000001"],
            "--user-properties-per-minute: must be 1 to 1,000,000, not 1,000,001",
        ),
    ] {
        let (cli, matches) = parse(args);
        let error = resolve(&cli, &matches).unwrap_err();
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    let long = "p".repeat(1023);
    let (cli, matches) = parse(&["x", "run", "--user-property-prefix", &long]);
    let error = resolve(&cli, &matches).unwrap_err();
    assert!(
        error.starts_with("--user-property-prefix: is 1023 characters"),
        "{error}"
    );
}

#[test]
fn delivery_gets_the_resolved_user_properties() {
    let (cli, matches) = parse(&[
        "currents-heap",
        "run",
        "--heap-app-id",
        "77",
        "--user-properties",
        "subscription_group",
        "--user-property-prefix",
        "b_",
        "--user-properties-per-minute",
        "42",
    ]);
    let config = resolve(&cli, &matches).unwrap().config;
    let crate::worker::Output::Heap(output) =
        crate::commands::worker::output(&config, None).unwrap_or_else(|e| panic!("{e:?}"))
    else {
        panic!("not a delivering output")
    };
    assert_eq!(output.config.properties, config.properties());
    assert_eq!(
        output.config.properties.fields,
        [crate::heap::properties::Field::SubscriptionGroup]
    );
    assert_eq!(output.config.properties.prefix, "b_");
    assert_eq!(output.config.properties.users_per_minute, 42);
}
