//! A bounded plan lists its range even when the configuration names an SQS queue.
//!
//! The Deployment and the backfill Job share one ConfigMap, so a `backfill` reads the
//! `sqs_queue_url` meant for the long-lived `run`. The queue only tells of objects uploaded
//! from now on; a range of past hours is found by listing. Here the shipped example config
//! (`deploy/config.example.toml`, which sets `sqs_queue_url`) runs against moto, with only
//! the endpoints that moto serves swapped in.

mod support;

use std::path::Path;
use std::process::Stdio;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use currents_heap::store::{LocalStore, ObjectStore};
use currents_heap_testkit::standin::{Standin, StandinConfig};
use support::moto::{self, Moto};
use support::{APP_ID, TempDir, all_sendable, fixtures, output, stored_ids};
use tokio::process::Command;

/// The buckets the shipped config names.
const SOURCE_BUCKET: &str = "my-braze-currents";
const STATE_BUCKET: &str = "my-currents-heap-state";

/// moto holding the fixture objects under the shipped source, an empty state bucket and a
/// queue; the shipped config with the queue's URL and a local app id file.
struct Shipped {
    moto: Moto,
    config: TempDir,
    objects: usize,
}

async fn shipped() -> Shipped {
    let moto = Moto::start().await;
    moto.create_bucket(SOURCE_BUCKET).await;
    moto.create_bucket(STATE_BUCKET).await;
    // The fixture keys start with `currents/`, the shipped source's prefix.
    let source = moto.store(SOURCE_BUCKET, "");
    let local = LocalStore::new(fixtures());
    let mut objects = 0;
    for meta in local.list("").await.unwrap() {
        objects += usize::from(meta.key.ends_with(".avro"));
        source
            .put(&meta.key, local.get(&meta.key).await.unwrap())
            .await
            .unwrap();
    }
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(Credentials::new(
                moto::ACCESS_KEY,
                moto::SECRET_KEY,
                None,
                None,
                "test",
            ))
            .build(),
    );
    let queue_url = sqs
        .create_queue()
        .queue_name("currents-heap")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();

    let dir = TempDir::new("shipped-config");
    let app_id_file = dir.0.join("app-id");
    std::fs::write(&app_id_file, APP_ID).unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let mut config = String::new();
    let mut swapped = 0;
    for line in text.lines() {
        let line = match line.split_once(" = ").map(|(key, _)| key) {
            Some("sqs_queue_url") => format!("sqs_queue_url = \"{queue_url}\""),
            Some("heap_app_id_file") => format!("heap_app_id_file = \"{}\"", app_id_file.display()),
            _ => line.to_string(),
        };
        swapped +=
            usize::from(line.starts_with("sqs_queue_url") || line.starts_with("heap_app_id_file"));
        config += &line;
        config.push('\n');
    }
    assert_eq!(
        swapped, 2,
        "the shipped config sets sqs_queue_url and heap_app_id_file"
    );
    assert!(config.contains(&format!("source = \"s3://{SOURCE_BUCKET}/currents\"")));
    std::fs::write(dir.0.join("config.toml"), config).unwrap();
    Shipped {
        moto,
        config: dir,
        objects,
    }
}

impl Shipped {
    /// `backfill` over the fixtures' hours with the shipped config, as the Job runs it.
    fn backfill(&self, heap: &Standin, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_currents-heap"));
        command
            .args(["backfill", "--from", "2026-11-27", "--to", "2026-11-28"])
            // moto serves buckets by path only.
            .arg("--s3-path-style")
            .args(args)
            .arg("--config")
            .arg(self.config.0.join("config.toml"))
            .env("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", moto::SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.moto.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE")
            .env_remove("HEAP_APP_ID")
            .env("HEAP_API_URL", heap.url())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_with_the_shipped_config_lists_its_range_and_ignores_the_queue() {
    let shipped = shipped().await;
    assert!(shipped.objects > 10, "{} fixture objects", shipped.objects);
    let heap = Standin::start(StandinConfig::new(APP_ID)).await.unwrap();

    // A dry run counts every object of the range.
    let (code, stdout, stderr) = output(shipped.backfill(&heap, &["--dry-run"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("objects: {} done", shipped.objects)),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{} would be sent", all_sendable().len())),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("the SQS queue is not used"),
        "the log says why the queue is not read: {stderr}"
    );
    assert_eq!(heap.report().requests, 0, "a dry run sends nothing");

    // Run here, it delivers every object of the range.
    let (code, stdout, stderr) = output(shipped.backfill(&heap, &["--no-handover"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("objects: {} done", shipped.objects)),
        "{stdout}\n{stderr}"
    );
    assert_eq!(stored_ids(&heap), all_sendable(), "{stdout}\n{stderr}");
    assert!(!stderr.contains(moto::SECRET_KEY));
}
