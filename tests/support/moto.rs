//! moto, a real S3 protocol server (Python), for tests that need S3's key semantics: s3s-fs
//! stores each key as a file path, so it cannot hold `a//b`, `.` or `..` segments or keys
//! over about 150 bytes, all of which S3 takes.
//!
//! The executable is `MOTO_SERVER` if set, else `<target dir>/moto-venv/bin/moto_server`
//! (where `.ci/run` installs it), else the tests make that venv themselves with
//! `python3 -m venv` and pip, once, so `cargo test` works on a fresh machine that can reach
//! PyPI.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use currents_heap::aws::CountRequests;
use currents_heap::store::S3Store;
use currents_heap::telemetry::Metrics;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What pip installs; `.ci/run` installs the same.
pub const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";
/// moto accepts any credentials; these are only checked for leaks.
pub const ACCESS_KEY: &str = "AKIDMOTOCURRENTSHEAP";
pub const SECRET_KEY: &str = "moto-secret-that-must-never-be-logged";

/// Generous: a pip install on a slow mirror takes minutes.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// moto is up in about half a second; a loaded CI machine may take far longer.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

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
        let mut child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = child.stderr.take().unwrap();
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            let mut seen = Vec::new();
            let mut address_tx = Some(address_tx);
            // Read to the end: moto logs every request here and would block on a full pipe.
            while let Ok(Some(line)) = lines.next_line().await {
                if address_tx.is_none() {
                    continue;
                }
                if let Some(url) = listening_url(&line) {
                    if let Some(tx) = address_tx.take() {
                        let _ = tx.send(Ok(url));
                    }
                } else {
                    seen.push(line);
                }
            }
            if let Some(tx) = address_tx {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let endpoint = match tokio::time::timeout(STARTUP_DEADLINE, address_rx).await {
            Ok(Ok(Ok(url))) => url,
            Ok(Ok(Err(output))) => panic!("{} exited before listening:\n{output}", exe.display()),
            Ok(Err(_)) => panic!("{}: its output reader stopped", exe.display()),
            Err(_) => panic!(
                "{} did not report a listening address within {STARTUP_DEADLINE:?}",
                exe.display()
            ),
        };
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
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let target = target_dir();
    let exe = target.join("moto-venv/bin/moto_server");
    let lock = target.join("moto-venv.lock");
    // Threads of this test binary wait here; other processes (another test binary, a second
    // cargo) on the lock file. A bootstrap in progress holds the lock, so an executable seen
    // without the lock is a finished install.
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(PoisonError::into_inner);
    if exe.is_file() && !lock.exists() {
        return exe;
    }
    let _lock = LockFile::acquire(lock);
    if !exe.is_file() {
        bootstrap(&target.join("moto-venv"), &exe);
    }
    exe
}

/// Where `.ci/run` installs moto too: `$CARGO_TARGET_DIR` (relative to the package, as
/// cargo runs from there) or `target`.
fn target_dir() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => package.join(dir),
        None => package.join("target"),
    }
}

fn bootstrap(venv: &Path, exe: &Path) {
    eprintln!(
        "installing {MOTO_REQUIREMENT} into {} (once; set MOTO_SERVER to use another)",
        venv.display()
    );
    let started = Instant::now();
    // What an interrupted bootstrap left behind.
    let _ = fs::remove_dir_all(venv);
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv));
    run(std::process::Command::new(venv.join("bin/pip")).args([
        "install",
        "--disable-pip-version-check",
        "--quiet",
        MOTO_REQUIREMENT,
    ]));
    assert!(
        exe.is_file(),
        "pip installed {MOTO_REQUIREMENT} but {} is missing",
        exe.display()
    );
    eprintln!("installed moto in {:.1?}", started.elapsed());
}

fn run(command: &mut std::process::Command) {
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {command:?} (moto needs python3 with venv, or set MOTO_SERVER): {e}")
    });
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A lock file holding the owner's process id, removed when dropped. A lock whose owner
/// is gone (killed mid-bootstrap) is taken over.
struct LockFile(PathBuf);

impl LockFile {
    fn acquire(path: PathBuf) -> LockFile {
        let deadline = Instant::now() + BOOTSTRAP_DEADLINE;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let _ = write!(file, "{}", std::process::id());
                    return LockFile(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if owner_is_gone(&path) {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "waited {BOOTSTRAP_DEADLINE:?} for another moto install holding {}; \
                         if none is running, delete that file",
                        path.display()
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Only a readable process id of a process that no longer exists counts as gone: an empty
/// file is an owner that has not written its id yet.
fn owner_is_gone(lock: &Path) -> bool {
    let Ok(text) = fs::read_to_string(lock) else {
        return false;
    };
    match text.trim().parse::<u32>() {
        Ok(pid) => Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}
