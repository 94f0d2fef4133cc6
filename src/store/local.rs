//! A local directory as an object store: the embedded default source and state location.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ObjectMeta, ObjectReader, ObjectStore, StoreError, StoreFuture};

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
}

/// Distinguishes temporary files of concurrent writers within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, operation: &'static str, key: &str) -> Result<PathBuf, StoreError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if bad {
            return Err(self.error(operation, key, "not a valid relative key".into()));
        }
        Ok(self.root.join(key))
    }

    fn error(&self, operation: &'static str, key: &str, reason: String) -> StoreError {
        StoreError {
            operation,
            location: self.root.join(key).display().to_string(),
            reason,
            not_found: false,
        }
    }

    fn io_error(&self, operation: &'static str, key: &str, e: io::Error) -> StoreError {
        StoreError {
            not_found: e.kind() == io::ErrorKind::NotFound,
            ..self.error(operation, key, e.to_string())
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // Walk only the deepest directory the prefix names, then filter by the full prefix.
        let dir_part = prefix.rsplit_once('/').map_or("", |(dir, _)| dir);
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path("list", dir_part)?
        };
        let mut found = Vec::new();
        let mut dirs = vec![start];
        while let Some(dir) = dirs.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io_error("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                let path = entry.path();
                let meta = entry
                    .metadata()
                    .map_err(|e| self.io_error("list", prefix, e))?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Some(key) = relative_key(&self.root, &path) else {
                    continue;
                };
                if key.starts_with(prefix) && !is_temporary(&key) {
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos());
                    found.push(ObjectMeta {
                        etag: format!("{}-{modified}", meta.len()),
                        size: meta.len(),
                        key,
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn put_sync(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path("put", key)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io_error("put", key, e))?;
        }
        // Write aside, fsync, then rename: readers never see a half-written object.
        let temp = path.with_file_name(format!(
            ".{}.{}-{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object"),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            self.io_error("put", key, e)
        })
    }
}

fn relative_key(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect();
    Some(parts?.join("/"))
}

fn is_temporary(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with('.') && name.ends_with(".tmp"))
}

/// Runs file-system work off the async threads: an fsync or a deep walk must not stall them.
async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    operation: &'static str,
    key: &str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| store.error(operation, key, format!("worker thread failed: {e}")))?
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        let (store, owned_prefix) = (self.clone(), prefix.to_string());
        Box::pin(blocking(self, "list", prefix, move || {
            store.list_sync(&owned_prefix)
        }))
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            let dir = if prefix.is_empty() {
                self.root.clone()
            } else {
                self.path("list", prefix.trim_end_matches('/'))?
            };
            let mut folders = Vec::new();
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(folders),
                Err(e) => return Err(self.io_error("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Some(name) = entry.file_name().to_str()
                {
                    folders.push(format!("{prefix}{name}/"));
                }
            }
            folders.sort();
            Ok(folders)
        })
    }

    fn open<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectReader> {
        Box::pin(async move {
            let path = self.path("get", key)?;
            let file = std::fs::File::open(&path).map_err(|e| self.io_error("get", key, e))?;
            Ok(Box::new(file) as ObjectReader)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let path = self.path("get", key)?;
            tokio::fs::read(&path)
                .await
                .map_err(|e| self.io_error("get", key, e))
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        let (store, owned_key) = (self.clone(), key.to_string());
        Box::pin(blocking(self, "put", key, move || {
            store.put_sync(&owned_key, &bytes)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let path = self.path("delete", key)?;
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(self.io_error("delete", key, e))
                }
                _ => Ok(()),
            }
        })
    }
}
