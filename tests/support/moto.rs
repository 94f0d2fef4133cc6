//! moto, a real S3 protocol server (Python), for tests that need S3's key semantics: s3s-fs
//! stores each key as a file path, so it cannot hold `a//b`, `.` or `..` segments or keys
//! over about 150 bytes, all of which S3 takes.
//!
//! The executable is `MOTO_SERVER` if set, else `<target dir>/moto-venv/bin/moto_server`
//! (where `.ci/run` installs it), else the tests make that venv themselves with
//! `python3 -m venv` and pip, once, so `cargo test` works on a fresh machine that can reach
//! PyPI.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use currents_heap::aws::CountRequests;
use currents_heap::store::S3Store;
use currents_heap::telemetry::Metrics;
use tokio::process::{Child, Command};

use super::install;

/// What pip installs; `.ci/run` installs the same.
pub const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";
/// moto accepts any credentials; these are only checked for leaks.
pub const ACCESS_KEY: &str = "AKIDMOTOCURRENTSHEAP";
pub const SECRET_KEY: &str = "moto-secret-that-must-never-be-logged";

use install::STARTUP_DEADLINE;

/// A moto server on a loopback port of its own, killed when dropped.
pub struct Moto {
    pub endpoint: String,
    pub client: aws_sdk_s3::Client,
    _child: Child,
}

impl Moto {
    pub async fn start() -> Moto {
        let exe = tokio::task::spawn_blocking(moto_server).await.unwrap();
        // `-p 0` lets the kernel pick a free port, and moto prints the address it got: no
        // window in which another process could take a port chosen in advance.
        let (child, endpoint) = install::launch(
            Command::new(&exe).args(["-H", "127.0.0.1", "-p", "0"]),
            listening_url,
        )
        .await;
        wait_until_answering(&endpoint).await;
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .build();
        Moto {
            endpoint,
            client: aws_sdk_s3::Client::from_conf(config),
            _child: child,
        }
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    }

    pub fn store(&self, bucket: &str, prefix: &str) -> S3Store {
        S3Store::from_client(self.client.clone(), bucket, prefix)
    }

    /// A store on a client of its own whose requests are counted in `metrics`, as the
    /// worker's are (`S3Store::connect`).
    pub fn counted_store(&self, bucket: &str, prefix: &str, metrics: Arc<Metrics>) -> S3Store {
        let config = self
            .client
            .config()
            .to_builder()
            .interceptor(CountRequests::new("s3", metrics))
            .build();
        S3Store::from_client(aws_sdk_s3::Client::from_conf(config), bucket, prefix)
    }
}

/// The URL in werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn listening_url(line: &str) -> Option<String> {
    let rest = &line[line.find("Running on http://")? + "Running on ".len()..];
    let url: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.'))
        .collect();
    Some(url.trim_end_matches('/').to_string())
}

/// Polls until moto answers HTTP; the address line can come a moment before it serves.
async fn wait_until_answering(endpoint: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http.get(format!("{endpoint}/moto-api/")).send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => last = format!("status {}", response.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("moto at {endpoint} did not answer within {STARTUP_DEADLINE:?}: {last}");
}

/// The moto_server executable, installing it first if needed.
pub fn moto_server() -> PathBuf {
    install::installed(&install::Tool {
        name: "moto",
        override_variable: "MOTO_SERVER",
        dir: "moto-venv",
        executable: "bin/moto_server",
        install: |venv| install::pip(venv, MOTO_REQUIREMENT),
    })
}

impl Moto {
    /// Points the binary's AWS clients at this moto, with its fixed credentials and nothing
    /// read from the host's AWS configuration.
    pub fn aws_env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE")
    }
}
