//! A local directory as an object store: the embedded default source and state location.
//!
//! # Keys on disk
//! Every key that is legal in S3 can be stored, including empty segments (`a//b`, `/lead`,
//! `trail/`), `.` and `..` segments and segments longer than a file name may be: the state
//! keeps `ledger/<source key>/...`, and a Braze prefix set with a trailing `/` gives source
//! keys with an empty segment. Each `/`-separated segment of a key becomes one file-system
//! name, or several nested ones when it is too long, by a reversible encoding. Ordinary names
//! (Braze's `...+0+0000000000.avro`, a hand-made local bucket) map to themselves.
//!
//! `%` is the escape character. Decoding a name recognises exactly:
//! - `%25` → `%`, `%2E` → `.`, `%00` → NUL, anywhere in a name;
//! - a name that is exactly `%` → the empty segment;
//! - a directory name ending in `%+` → the segment continues in the next name below it.
//!
//! Every other `%` is itself. Encoding a segment:
//! - the empty segment → `%`; `.` → `%2E`; `..` → `%2E%2E`;
//! - NUL → `%00`;
//! - a `%` becomes `%25` only where decoding would otherwise misread it: before `25`, `2E`,
//!   `2e` or `00`, before a `+` that ends the name, when it is the whole name, and at the
//!   start of a name before `tmp.` (the prefix of temporary files, see below). `2e` is
//!   escaped although decoding does not recognise it, so that on a case-insensitive file
//!   system a segment `%2e` cannot land on the file of a `.` segment (`%2E`);
//! - a segment whose encoding is longer than 255 bytes is cut at character boundaries into
//!   pieces, each encoded on its own; every piece but the last gets the suffix `%+` and
//!   becomes a directory, and the encoded piece plus suffix stays within 255 bytes.
//!
//! So every name is non-empty, at most 255 bytes, never `.` or `..`, and holds no `/` or NUL:
//! no key reaches outside the root. Decoding is not onto: `a%2Eb` decodes to `a.b`, whose
//! name is `a.b`. A listing therefore reports a name only if it is exactly what its decoded
//! key encodes to; any other name (only a hand-made one can be like that) is skipped with a
//! warning, so a listing never repeats a key nor reports one that cannot be read.
//!
//! Temporary files of unfinished writes are named `%tmp.<pid>-<n>`, which no key encodes
//! to, and listings skip them.
//!
//! # Conditional writes
//! [`ObjectStore::put_if`] holds an exclusive lock (`flock`, through `File::lock`) on a lock
//! file beside the object, `%tmp.lock.<hash of its name>` (a temporary file's prefix, so
//! listings skip it), for its whole check and write, so conditional writes of several
//! processes on one machine's file system are serialised. A create writes a temporary file
//! and `link`s it to the name, which fails with `EEXIST` if the name exists (POSIX
//! `link(2)`), atomic even against a plain `put`; a replace compares the version under the
//! lock, then renames a temporary file over the name. A delete takes the same lock and
//! removes the lock file with the object; a lock taken on a lock file that was removed
//! meanwhile is taken again on the new one. Not for network file systems whose `flock` is
//! local to one client.
//!
//! The version token is the file's device, inode, modification time (nanoseconds) and size,
//! read from the open handle. A conditional write sets the modification time itself, from
//! the system clock at full precision, so two versions written under the lock one after the
//! other differ in it even within one tick of the file system's own timestamps, and the
//! new file's inode differs from the one it replaces (both exist while it is written).
//!
//! One limit remains from the file system: a key cannot be both an object and a prefix of
//! other keys (`a` and `a/b`), since a name is either a file or a directory.
//!
//! # A missing root
//! The root must exist for any listing: a source directory that moved away, or a state
//! directory deleted or replaced by a file mid-run, must not read as an empty bucket or an
//! empty ledger (which would send everything again), and a write must not create it again
//! (the next listing would read an empty ledger). The state's root is created when the
//! worker starts; [`LocalStore::lazy`] is for a state that may not exist yet: a dry run's,
//! or one a test writes into first.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    ObjectMeta, ObjectStore, Opened, PutCondition, ReadRange, StoreError, StoreErrorKind,
    StoreFuture, Versioned,
};

#[derive(Clone)]
pub struct LocalStore {
    root: PathBuf,
    /// Whether a root that does not exist lists as empty instead of failing.
    missing_root_is_empty: bool,
}

/// Distinguishes temporary files of concurrent writers within this process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The longest file name most Linux and macOS file systems accept, in bytes.
const NAME_MAX: usize = 255;
/// Ends a directory name that holds a piece of a segment too long for one name.
const CONTINUES: &str = "%+";
/// Starts the name of a temporary file; no key encodes to such a name.
const TEMP_PREFIX: &str = "%tmp.";
/// How often `put` starts over when a concurrent `delete` removed the directory it had just
/// created (see `delete_sync`); more than two in a row means something else is wrong.
const PUT_ATTEMPTS: usize = 3;

/// The file-system names for one key segment: one, or a chain of `%+` directories and a
/// last name when the segment is too long for one name.
fn encode_segment(segment: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = segment;
    loop {
        let whole = encode_piece(rest);
        if whole.len() <= NAME_MAX {
            names.push(whole);
            return names;
        }
        // Budget each character at its escaped size, so the piece fits whatever escaping its
        // own end needs; pieces a few bytes short of the limit cost nothing.
        let mut cut = 0;
        let mut budget = NAME_MAX - CONTINUES.len();
        for (i, c) in rest.char_indices() {
            let cost = match c {
                '\0' | '%' => 3,
                c => c.len_utf8(),
            };
            if cost > budget {
                break;
            }
            budget -= cost;
            cut = i + c.len_utf8();
        }
        names.push(encode_piece(&rest[..cut]) + CONTINUES);
        rest = &rest[cut..];
    }
}

fn encode_piece(piece: &str) -> String {
    match piece {
        "" => return "%".into(),
        "." => return "%2E".into(),
        ".." => return "%2E%2E".into(),
        _ => {}
    }
    let mut out = String::with_capacity(piece.len());
    for (i, c) in piece.char_indices() {
        match c {
            '\0' => out.push_str("%00"),
            '%' if percent_needs_escape(piece, i) => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

/// Whether the `%` at byte `i` of `piece`, left as it is, would decode as something else.
/// The characters that follow it are never changed by encoding, so looking at the raw text
/// is looking at the encoded one.
fn percent_needs_escape(piece: &str, i: usize) -> bool {
    let after = &piece[i + 1..];
    ["25", "2E", "2e", "00"]
        .iter()
        .any(|s| after.starts_with(s))
        || after == "+"
        || piece == "%"
        || (i == 0 && after.starts_with(&TEMP_PREFIX[1..]))
}

fn decode_piece(name: &str) -> String {
    if name == "%" {
        return String::new();
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (decoded, len) = if after.starts_with("25") {
            ('%', 3)
        } else if after.starts_with("2E") {
            ('.', 3)
        } else if after.starts_with("00") {
            ('\0', 3)
        } else {
            ('%', 1)
        };
        out.push(decoded);
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    out
}

/// Where a walk is in the key space: the complete segments above (each followed by `/`),
/// and the pieces so far of a segment that continues below.
#[derive(Debug, Clone, Default)]
struct KeyPath {
    base: String,
    partial: String,
    pieces: Vec<String>,
}

/// What one name in a directory stands for.
#[derive(Debug)]
enum Step {
    /// A `%+` directory: the segment goes on below it.
    Continues(KeyPath),
    /// A whole segment, ending this key (for a file) or starting a folder (for a directory):
    /// the key up to and including it.
    Segment(String),
    /// Not a name this store writes.
    Foreign,
}

impl KeyPath {
    fn folder(key: String) -> Self {
        KeyPath {
            base: key + "/",
            ..KeyPath::default()
        }
    }

    /// Every key below this point starts with this.
    fn key_prefix(&self) -> String {
        format!("{}{}", self.base, self.partial)
    }

    fn step(&self, name: &str, is_dir: bool) -> Step {
        if is_dir && let Some(piece) = name.strip_suffix(CONTINUES) {
            let mut pieces = self.pieces.clone();
            pieces.push(name.to_string());
            return Step::Continues(KeyPath {
                base: self.base.clone(),
                partial: self.partial.clone() + &decode_piece(piece),
                pieces,
            });
        }
        let segment = self.partial.clone() + &decode_piece(name);
        let canonical = encode_segment(&segment);
        let same = canonical.len() == self.pieces.len() + 1
            && canonical.iter().zip(&self.pieces).all(|(a, b)| a == b)
            && canonical.last().is_some_and(|last| last == name);
        if same {
            Step::Segment(format!("{}{segment}", self.base))
        } else {
            Step::Foreign
        }
    }
}

/// Whether keys below `key_prefix` can start with `prefix`.
fn may_match(key_prefix: &str, prefix: &str) -> bool {
    key_prefix.starts_with(prefix) || prefix.starts_with(key_prefix)
}

/// A directory entry, with symbolic links to files followed.
enum Kind {
    File(fs::Metadata),
    Dir,
    Skip,
}

fn kind(entry: &fs::DirEntry, path: &Path) -> io::Result<Kind> {
    let file_type = entry.file_type()?;
    if file_type.is_dir() {
        return Ok(Kind::Dir);
    }
    // `fs::metadata` follows a link, so a linked file lists with the size it reads with.
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if file_type.is_symlink() {
                tracing::warn!(path = %path.display(), "skipped a dangling symbolic link");
            }
            return Ok(Kind::Skip);
        }
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        Ok(Kind::File(meta))
    } else {
        if meta.is_dir() {
            // A linked directory could lead back up the tree and make a walk endless.
            tracing::warn!(path = %path.display(), "skipped a symbolic link to a directory");
        }
        Ok(Kind::Skip)
    }
}

fn utf8_name(entry: &fs::DirEntry) -> Option<String> {
    let name = entry.file_name().into_string().ok();
    if name.is_none() {
        tracing::warn!(path = %entry.path().display(), "skipped a name that is not UTF-8");
    }
    name
}

fn foreign(path: &Path) {
    tracing::warn!(
        path = %path.display(),
        "skipped a name that the local store never writes for any key (see the encoding \
         in store/local.rs; e.g. a `%25` that does not need escaping)"
    );
}

/// Whether an error on a read path means "no such key": S3 answers NoSuchKey for a key that
/// is a folder here or that runs through an object.
fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

/// The kind of a file-system error. A full disk or a read-only mount may be fixed while the
/// worker waits, as an outage may pass, so they count as unavailable; a permission does not
/// change by itself.
fn io_kind(kind: io::ErrorKind) -> StoreErrorKind {
    match kind {
        io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        // A read-only mount needs the configuration changed, as a permission does.
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreErrorKind::Denied
        }
        io::ErrorKind::AlreadyExists => StoreErrorKind::PreconditionFailed,
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => StoreErrorKind::Invalid,
        _ => StoreErrorKind::Unavailable,
    }
}

/// Makes a directory's entries durable: a renamed or created name survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// `create_dir_all` that also makes each new directory durable in its parent.
fn create_dirs(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut current = dir;
    while !current.as_os_str().is_empty() {
        match fs::metadata(current) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(current),
            Err(e) => return Err(e),
        }
        match current.parent() {
            Some(parent) => current = parent,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("")))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl LocalStore {
    /// A store whose root must exist for listings (see the module doc).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            missing_root_is_empty: false,
        }
    }

    /// A store whose root may not exist yet: until something is written, it lists as empty.
    pub fn lazy(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            missing_root_is_empty: true,
            ..LocalStore::new(root)
        }
    }

    /// `root/key`, for messages: the key exactly as given, not its encoded path.
    fn location(&self, key: &str) -> String {
        let root = self.root.display().to_string();
        format!("{}/{key}", root.trim_end_matches('/'))
    }

    fn error(
        &self,
        operation: &'static str,
        key: &str,
        kind: StoreErrorKind,
        reason: String,
    ) -> StoreError {
        StoreError::new(operation, self.location(key), kind, reason)
    }

    fn io_error(&self, operation: &'static str, key: &str, e: io::Error) -> StoreError {
        self.error(operation, key, io_kind(e.kind()), e.to_string())
    }

    fn read_error(&self, operation: &'static str, key: &str, e: io::Error) -> StoreError {
        let kind = if is_missing(&e) {
            StoreErrorKind::NotFound
        } else {
            io_kind(e.kind())
        };
        self.error(operation, key, kind, e.to_string())
    }

    /// The path of the folder `dir` (a key without its trailing `/`; empty is the one empty
    /// segment, not the root).
    fn folder_path(&self, dir: &str) -> PathBuf {
        let mut path = self.root.clone();
        for segment in dir.split('/') {
            path.extend(encode_segment(segment));
        }
        path
    }

    fn path(&self, operation: &'static str, key: &str) -> Result<PathBuf, StoreError> {
        if key.is_empty() {
            return Err(self.error(
                operation,
                key,
                StoreErrorKind::Invalid,
                "the empty key names the store's root, not an object".into(),
            ));
        }
        Ok(self.folder_path(key))
    }

    /// Where a listing of `prefix` starts: the deepest folder the prefix names whole.
    fn start(&self, prefix: &str) -> (PathBuf, KeyPath) {
        match prefix.rsplit_once('/') {
            None => (self.root.clone(), KeyPath::default()),
            Some((dir, _)) => (self.folder_path(dir), KeyPath::folder(dir.to_string())),
        }
    }

    /// Reads a directory of a walk; `None` when it does not exist (any more).
    fn read_dir(&self, dir: &Path, prefix: &str) -> Result<Option<fs::ReadDir>, StoreError> {
        match fs::read_dir(dir) {
            Ok(entries) => Ok(Some(entries)),
            Err(e) if is_missing(&e) => {
                // A moved-away source, or a state deleted mid-run, must not look empty.
                match fs::metadata(&self.root) {
                    Ok(root) if root.is_dir() => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound && self.missing_root_is_empty => {
                        return Ok(None);
                    }
                    Ok(_) => {
                        return Err(self.error(
                            "list",
                            prefix,
                            StoreErrorKind::Invalid,
                            "the root is not a directory".into(),
                        ));
                    }
                    Err(_) => {
                        return Err(self.error(
                            "list",
                            prefix,
                            StoreErrorKind::NotFound,
                            "the directory does not exist".into(),
                        ));
                    }
                }
                // Folders are created lazily (`ledger/` may not exist yet), and a walk can
                // race a delete that removes emptied folders.
                Ok(None)
            }
            Err(e) => Err(self.io_error("list", prefix, e)),
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut found = Vec::new();
        let mut dirs = vec![self.start(prefix)];
        while let Some((dir, at)) = dirs.pop() {
            let entries = self.read_dir(&dir, prefix)?;
            for entry in entries.into_iter().flatten() {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                let path = entry.path();
                let Some(name) = utf8_name(&entry) else {
                    continue;
                };
                let kind = kind(&entry, &path).map_err(|e| self.io_error("list", prefix, e))?;
                match kind {
                    Kind::Skip => {}
                    // Foreign too, but an unfinished write is no reason for a warning.
                    Kind::File(_) if name.starts_with(TEMP_PREFIX) => {}
                    Kind::File(meta) => match at.step(&name, false) {
                        Step::Segment(key) if key.starts_with(prefix) => {
                            found.push(ObjectMeta {
                                etag: version_tag(&meta),
                                size: meta.len(),
                                key,
                            });
                        }
                        Step::Segment(_) | Step::Continues(_) => {}
                        Step::Foreign => foreign(&path),
                    },
                    Kind::Dir => {
                        let below = match at.step(&name, true) {
                            Step::Continues(below) => below,
                            Step::Segment(key) => KeyPath::folder(key),
                            Step::Foreign => {
                                foreign(&path);
                                continue;
                            }
                        };
                        if may_match(&below.key_prefix(), prefix) {
                            dirs.push((path, below));
                        }
                    }
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    fn list_folders_sync(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut folders = Vec::new();
        // Only `%+` directories are descended into: they continue a segment of this level.
        let mut dirs = vec![self.start(prefix)];
        while let Some((dir, at)) = dirs.pop() {
            let entries = self.read_dir(&dir, prefix)?;
            for entry in entries.into_iter().flatten() {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                let path = entry.path();
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = utf8_name(&entry) else {
                    continue;
                };
                match at.step(&name, true) {
                    Step::Continues(below) => {
                        if may_match(&below.key_prefix(), prefix) {
                            dirs.push((path, below));
                        }
                    }
                    Step::Segment(key) => {
                        let folder = key + "/";
                        if folder.starts_with(prefix) {
                            folders.push(folder);
                        }
                    }
                    Step::Foreign => foreign(&path),
                }
            }
        }
        folders.sort();
        Ok(folders)
    }

    /// `range` of the file, with the version of the file opened: its metadata is read from
    /// the open handle, and a write replaces the file by a rename, so the bytes read are
    /// always those of that version.
    fn open_sync(&self, key: &str, range: &ReadRange) -> Result<Opened, StoreError> {
        let path = self.path("get", key)?;
        let fail = |kind, why: String| {
            let why = if range.is_whole() {
                why
            } else {
                format!("{why} (reading {})", range.header())
            };
            self.error("get", key, kind, why)
        };
        if let Some(why) = range.refusal() {
            return Err(fail(StoreErrorKind::Invalid, why));
        }
        let mut file = File::open(&path).map_err(|e| self.read_error("get", key, e))?;
        // Opening a directory succeeds; it is a folder of other keys, not this one.
        let meta = file
            .metadata()
            .map_err(|e| self.read_error("get", key, e))?;
        if meta.is_dir() {
            return Err(self.read_error("get", key, io::ErrorKind::IsADirectory.into()));
        }
        let version = ObjectMeta {
            key: key.to_string(),
            size: meta.len(),
            etag: version_tag(&meta),
        };
        if !range.admits(&version.etag) {
            return Err(fail(
                StoreErrorKind::PreconditionFailed,
                format!(
                    "the object is version {}, not {}",
                    version.etag,
                    range.if_etag.as_deref().unwrap_or_default()
                ),
            ));
        }
        if !range.is_whole() && range.start >= version.size {
            return Err(fail(
                StoreErrorKind::Invalid,
                format!(
                    "the range starts at or past the end of the object ({} bytes)",
                    version.size
                ),
            ));
        }
        file.seek(SeekFrom::Start(range.start))
            .map_err(|e| self.read_error("get", key, e))?;
        let length = range.end.map_or(u64::MAX, |end| end - range.start);
        Ok(Opened {
            reader: Box::new(file.take(length)),
            version,
        })
    }

    fn put_sync(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.path("put", key)?;
        let parent = self.writable_parent(key, &path)?;
        let mut attempt = 1;
        loop {
            match write_atomically(parent, &path, bytes) {
                // A concurrent delete removed the folder between its creation and the write.
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PUT_ATTEMPTS => {
                    attempt += 1;
                }
                result => return result.map_err(|e| self.io_error("put", key, e)),
            }
        }
    }

    fn delete_sync(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path("delete", key)?;
        // An object written by `put_if` has a lock file beside it: it goes with the object,
        // under its lock, so a conditional write never races the delete and the folder
        // can be removed below.
        let lock = match lock_path(&path).try_exists() {
            Ok(true) => Some(lock_beside(&path).map_err(|e| self.io_error("delete", key, e))?),
            _ => None,
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if is_missing(&e) && lock.is_none() => return Ok(()),
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(self.io_error("delete", key, e)),
        }
        if lock.is_some() {
            let _ = fs::remove_file(lock_path(&path));
        }
        drop(lock);
        // S3 has no folders, only keys with a common prefix: once the last key under a folder
        // is gone, `list_folders` must stop naming it. Removing a folder that is not empty
        // fails, which ends the climb.
        let mut dir = path.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) {
                break;
            }
            if fs::remove_dir(current).is_err() {
                break;
            }
            dir = current.parent();
        }
        Ok(())
    }
}

/// Starts the name of the lock file beside an object written by `put_if` (see the module
/// doc); a temporary file's prefix, so listings skip it.
const LOCK_PREFIX: &str = "%tmp.lock.";

impl LocalStore {
    /// The parent directory a write of `key` (at `path`) goes into, or why none may be
    /// written: a state deleted mid-run must not come back empty under a write, as the next
    /// poll would read an empty ledger and send everything again.
    fn writable_parent<'p>(&self, key: &str, path: &'p Path) -> Result<&'p Path, StoreError> {
        if !self.missing_root_is_empty && !self.root.is_dir() {
            return Err(self.error(
                "put",
                key,
                StoreErrorKind::NotFound,
                format!(
                    "the directory {} is gone (deleted or moved while running?); it is not created again, since an empty one would forget what is finished",
                    self.root.display()
                ),
            ));
        }
        path.parent().ok_or_else(|| {
            self.error(
                "put",
                key,
                StoreErrorKind::Invalid,
                "the key has no parent directory".into(),
            )
        })
    }

    /// The whole file and its [`version_token`], both from one open handle: a write replaces
    /// the file by a rename, so the bytes are those of the version named.
    fn get_versioned_sync(&self, key: &str) -> Result<Versioned, StoreError> {
        let path = self.path("get", key)?;
        let mut file = File::open(&path).map_err(|e| self.read_error("get", key, e))?;
        let meta = file
            .metadata()
            .map_err(|e| self.read_error("get", key, e))?;
        if meta.is_dir() {
            return Err(self.read_error("get", key, io::ErrorKind::IsADirectory.into()));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        file.read_to_end(&mut bytes)
            .map_err(|e| self.read_error("get", key, e))?;
        Ok(Versioned {
            bytes,
            version: version_token(&meta),
        })
    }

    /// See the module doc, "Conditional writes". Starts over (as `put_sync`) when a
    /// concurrent delete removed the folder it had just created.
    fn put_if_sync(
        &self,
        key: &str,
        bytes: &[u8],
        condition: &PutCondition,
    ) -> Result<String, StoreError> {
        let path = self.path("put", key)?;
        let parent = self.writable_parent(key, &path)?;
        let mut attempt = 1;
        loop {
            match self.put_if_locked(key, parent, &path, bytes, condition) {
                Err(Conditional::Io(e))
                    if e.kind() == io::ErrorKind::NotFound && attempt < PUT_ATTEMPTS =>
                {
                    attempt += 1;
                }
                Err(Conditional::Io(e)) => return Err(self.io_error("put", key, e)),
                Err(Conditional::Refused(why)) => {
                    return Err(self.error("put", key, StoreErrorKind::PreconditionFailed, why));
                }
                Ok(token) => return Ok(token),
            }
        }
    }

    fn put_if_locked(
        &self,
        key: &str,
        parent: &Path,
        path: &Path,
        bytes: &[u8],
        condition: &PutCondition,
    ) -> Result<String, Conditional> {
        create_dirs(parent)?;
        // Released when dropped (closing the file ends its `flock`).
        let _lock = lock_beside(path)?;
        if let PutCondition::Version(wanted) = condition {
            let current = match fs::metadata(path) {
                Ok(meta) if meta.is_file() => version_token(&meta),
                Ok(_) => return Err(Conditional::Refused("a folder of other keys".into())),
                Err(e) if is_missing(&e) => {
                    return Err(Conditional::Refused(format!(
                        "the object is missing, not version {wanted}"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            if &current != wanted {
                return Err(Conditional::Refused(format!(
                    "the object is version {current}, not {wanted}"
                )));
            }
        }
        let temp = temp_path(parent);
        let written = (|| -> io::Result<String> {
            let mut file = File::create_new(&temp)?;
            file.write_all(bytes)?;
            file.set_modified(std::time::SystemTime::now())?;
            file.sync_all()?;
            let token = version_token(&file.metadata()?);
            match condition {
                PutCondition::Absent => fs::hard_link(&temp, path)?,
                PutCondition::Version(_) => fs::rename(&temp, path)?,
            }
            Ok(token)
        })();
        // After a link the temporary name goes; after a rename it is gone already.
        let _ = fs::remove_file(&temp);
        let token = match written {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Conditional::Refused(format!(
                    "{key:?} exists already (a create-only write)"
                )));
            }
            written => written?,
        };
        sync_dir(parent)?;
        Ok(token)
    }
}

/// Why a conditional write of a local file did not happen.
enum Conditional {
    /// The condition did not hold: what was found.
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for Conditional {
    fn from(e: io::Error) -> Self {
        Conditional::Io(e)
    }
}

/// The name of a new temporary file in `parent`, unique among this process's writers (the
/// counter) and other processes' (the pid).
fn temp_path(parent: &Path) -> PathBuf {
    parent.join(format!(
        "{TEMP_PREFIX}{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The lock file guarding the object at `path`: beside it, named by a hash of its name
/// (FNV-1a, stable across builds, so every version of this program takes the same file).
/// A name hash keeps the lock's name within the file system's limit for any object name;
/// two objects whose names collide merely share a lock.
fn lock_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or(b"");
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    path.with_file_name(format!("{LOCK_PREFIX}{hash:016x}"))
}

/// Takes the exclusive lock beside `path`, creating its file if needed. A delete removes
/// the lock file while holding the lock, so a lock won on a file no longer at its name
/// guards nothing: then it is taken again on the file that is.
fn lock_beside(path: &Path) -> io::Result<File> {
    let lock_path = lock_path(path);
    loop {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        file.lock()?;
        match fs::metadata(&lock_path) {
            Ok(now) if same_file(&now, &file.metadata()?) => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(unix)]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.created().ok() == b.created().ok()
}

/// The version token of a local object (see the module doc): device, inode, modification
/// time in nanoseconds and size.
fn version_token(meta: &fs::Metadata) -> String {
    #[cfg(unix)]
    let file = {
        use std::os::unix::fs::MetadataExt;
        format!("{}.{}", meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let file = "0.0";
    format!("v{file}-{}", version_tag(meta))
}

/// Writes aside, fsyncs, renames over the target and fsyncs the directory: readers see the
/// old or the new content, and a finished put survives a crash.
fn write_atomically(parent: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    create_dirs(parent)?;
    let temp = temp_path(parent);
    let write = || -> io::Result<()> {
        let mut file = File::create_new(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(parent)
}

/// A file's version: its length and modification time (nanoseconds since the epoch), which
/// change with every write, as a write replaces the file.
fn version_tag(meta: &fs::Metadata) -> String {
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}-{modified}", meta.len())
}

/// Runs file-system work off the async threads: an fsync or a deep walk must not stall them.
async fn blocking<T: Send + 'static>(
    store: &LocalStore,
    operation: &'static str,
    key: &str,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        store.error(
            operation,
            key,
            StoreErrorKind::Unavailable,
            format!("worker thread failed: {e}"),
        )
    })?
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<ObjectMeta>> {
        let (store, owned) = (self.clone(), prefix.to_string());
        Box::pin(blocking(self, "list", prefix, move || {
            store.list_sync(&owned)
        }))
    }

    fn list_folders<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<String>> {
        let (store, owned) = (self.clone(), prefix.to_string());
        Box::pin(blocking(self, "list", prefix, move || {
            store.list_folders_sync(&owned)
        }))
    }

    fn open_range<'a>(&'a self, key: &'a str, range: &'a ReadRange) -> StoreFuture<'a, Opened> {
        let (store, owned, range) = (self.clone(), key.to_string(), range.clone());
        Box::pin(blocking(self, "get", key, move || {
            store.open_sync(&owned, &range)
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let path = self.path("get", key)?;
            tokio::fs::read(&path)
                .await
                .map_err(|e| self.read_error("get", key, e))
        })
    }

    fn put<'a>(&'a self, key: &'a str, bytes: Vec<u8>) -> StoreFuture<'a, ()> {
        let (store, owned) = (self.clone(), key.to_string());
        Box::pin(blocking(self, "put", key, move || {
            store.put_sync(&owned, &bytes)
        }))
    }

    fn get_versioned<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Versioned> {
        let (store, owned) = (self.clone(), key.to_string());
        Box::pin(blocking(self, "get", key, move || {
            store.get_versioned_sync(&owned)
        }))
    }

    fn put_if<'a>(
        &'a self,
        key: &'a str,
        bytes: Vec<u8>,
        condition: &'a PutCondition,
    ) -> StoreFuture<'a, String> {
        let (store, owned, condition) = (self.clone(), key.to_string(), condition.clone());
        Box::pin(blocking(self, "put", key, move || {
            store.put_if_sync(&owned, &bytes, &condition)
        }))
    }

    fn delete<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let (store, owned) = (self.clone(), key.to_string());
        Box::pin(blocking(self, "delete", key, move || {
            store.delete_sync(&owned)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The names a key is stored under, in path order.
    fn encode_key(key: &str) -> Vec<String> {
        key.split('/').flat_map(encode_segment).collect()
    }

    /// The key that the names of a stored file stand for, read the way a listing reads them.
    fn decode_names(names: &[String]) -> Option<String> {
        let mut at = KeyPath::default();
        for (i, name) in names.iter().enumerate() {
            let is_dir = i + 1 < names.len();
            match at.step(name, is_dir) {
                Step::Continues(below) => at = below,
                Step::Segment(key) if is_dir => at = KeyPath::folder(key),
                Step::Segment(key) => return Some(key),
                Step::Foreign => return None,
            }
        }
        None
    }

    fn assert_valid_name(name: &str) {
        assert!(!name.is_empty() && name != "." && name != "..", "{name:?}");
        assert!(name.len() <= NAME_MAX, "{} bytes: {name:?}", name.len());
        assert!(!name.contains(['/', '\0']), "{name:?}");
        assert!(!name.starts_with(TEMP_PREFIX), "{name:?}");
    }

    /// Characters that exercise every rule: escape sequences, the suffix, the temp prefix,
    /// multi-byte characters at cut points.
    fn tricky_char() -> impl Strategy<Value = char> {
        prop_oneof![
            4 => Just('%'),
            2 => Just('2'),
            1 => Just('5'),
            1 => Just('E'),
            1 => Just('e'),
            2 => Just('0'),
            1 => Just('+'),
            2 => Just('.'),
            1 => Just('t'),
            1 => Just('m'),
            1 => Just('p'),
            1 => Just('\0'),
            1 => Just('€'),
            1 => Just('𝄞'),
            2 => any::<char>().prop_filter("no separator", |c| *c != '/'),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => Just(String::new()),
            1 => Just(".".to_string()),
            1 => Just("..".to_string()),
            1 => Just("%".to_string()),
            1 => Just("%tmp.1-2".to_string()),
            6 => proptest::collection::vec(tricky_char(), 1..12)
                .prop_map(|c| c.into_iter().collect()),
            2 => long_segment(TRICKY),
            1 => long_segment(ORDINARY),
        ]
    }

    /// Pieces of long segments: escapes and near-escapes...
    const TRICKY: &[&str] = &[
        "%", "%25", "%2E", "%2e", "%00", "%+", "\0", "€", "𝄞", ".", "+0+", "tmp.", "event",
    ];
    /// ...and text that needs no escaping, which fills a name to the last byte.
    const ORDINARY: &[&str] = &["a", "€", "𝄞", "+0+", "event", "0000000000"];

    /// 300 to about 1,000 bytes drawn from a seed: proptest building a thousand-element
    /// vector per case made the test take seconds, and shrinking such a segment piece by
    /// piece would not make a failure clearer than its seed does.
    fn long_segment(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
        (any::<u64>(), 300..=1000usize).prop_map(move |(seed, len)| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut segment = String::new();
            while segment.len() < len {
                segment.push_str(pieces[rng.usize(..pieces.len())]);
            }
            segment
        })
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 1..6)
            .prop_map(|segments| segments.join("/"))
            .prop_filter("the empty key is the root", |k| !k.is_empty())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_key_encodes_to_valid_names_and_decodes_back(key in key()) {
            let names = encode_key(&key);
            for name in &names {
                assert_valid_name(name);
            }
            prop_assert_eq!(decode_names(&names), Some(key));
        }

        #[test]
        fn ordinary_segments_are_their_own_names(
            segment in "[^%/\u{0}]{1,80}".prop_filter("not a dot segment", |s| s != "." && s != "..")
        ) {
            prop_assert_eq!(encode_segment(&segment), vec![segment.clone()]);
        }
    }

    #[test]
    fn the_documented_rules() {
        let cases = [
            ("", "%"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            (".hidden", ".hidden"),
            ("%", "%25"),
            ("100%", "100%"),
            ("%x", "%x"),
            ("a%2Eb", "a%252Eb"),
            ("a%2eb", "a%252eb"),
            ("%25", "%2525"),
            ("%00", "%2500"),
            ("nul\0", "nul%00"),
            ("a%+", "a%25+"),
            ("a%+b", "a%+b"),
            ("%tmp.1", "%25tmp.1"),
            ("x%tmp.1", "x%tmp.1"),
            (
                "5f0c2a9e8b7d6c5b4a392817+0+0000000000.avro",
                "5f0c2a9e8b7d6c5b4a392817+0+0000000000.avro",
            ),
            (
                "event_type=users.behaviors.CustomEvent",
                "event_type=users.behaviors.CustomEvent",
            ),
        ];
        for (segment, name) in cases {
            assert_eq!(encode_segment(segment), [name], "{segment:?}");
            assert_eq!(decode_piece(name), segment, "{name:?}");
        }
    }

    #[test]
    fn a_long_segment_becomes_a_chain_of_names_that_fill_the_limit() {
        let segment = "€".repeat(400);
        let names = encode_segment(&segment);
        assert_eq!(names.len(), 5, "{names:?}");
        for name in &names {
            assert_valid_name(name);
        }
        for name in &names[..4] {
            assert!(name.ends_with(CONTINUES));
            assert!(name.len() > NAME_MAX - 4, "{}", name.len());
        }
        assert_eq!(names.concat().replace(CONTINUES, ""), segment);
    }

    #[test]
    fn names_no_key_encodes_to_are_not_read_as_keys() {
        // Each would repeat or shadow a key that encodes differently.
        for names in [
            vec!["a%2Eb"],
            vec!["%25x"],
            vec!["x%2e"],
            vec!["%2E%+", "b"],
            vec!["short%+", "tail"],
            vec!["a%+"],
        ] {
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            assert_eq!(decode_names(&names), None, "{names:?}");
        }
    }

    /// A directory of its own under the system temp dir, removed when dropped.
    #[test]
    fn file_errors_map_to_kinds() {
        let cases = [
            (io::ErrorKind::NotFound, StoreErrorKind::NotFound),
            (io::ErrorKind::PermissionDenied, StoreErrorKind::Denied),
            (io::ErrorKind::ReadOnlyFilesystem, StoreErrorKind::Denied),
            (io::ErrorKind::InvalidInput, StoreErrorKind::Invalid),
            (io::ErrorKind::StorageFull, StoreErrorKind::Unavailable),
            (io::ErrorKind::TimedOut, StoreErrorKind::Unavailable),
        ];
        for (io, kind) in cases {
            assert_eq!(io_kind(io), kind, "{io:?}");
        }
    }

    #[tokio::test]
    async fn errors_carry_their_kind() {
        let scratch = Scratch::new("kinds");
        let store = LocalStore::new(&scratch.0);
        let empty = store.put("", b"x".to_vec()).await.unwrap_err();
        assert_eq!(empty.kind, StoreErrorKind::Invalid, "{empty}");
        let missing = store.get("no/such").await.unwrap_err();
        assert_eq!(missing.kind, StoreErrorKind::NotFound, "{missing}");
        let gone = LocalStore::new(scratch.0.join("gone"));
        let error = gone.put("ledger/a", b"x".to_vec()).await.unwrap_err();
        assert_eq!(error.kind, StoreErrorKind::NotFound, "{error}");
    }

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(label: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "currents-heap-local-{label}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Every file below `dir`, relative to it.
    fn files_below(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        files.sort();
        files
    }

    #[tokio::test]
    async fn a_write_never_creates_a_deleted_root_again() {
        let scratch = Scratch::new("gone");
        let root = scratch.0.join("state");
        fs::create_dir_all(&root).unwrap();
        let store = LocalStore::new(&root);
        store.put("ledger/a/1.done", b"{}".to_vec()).await.unwrap();
        fs::remove_dir_all(&root).unwrap();
        let error = store
            .put("ledger/b/1.done", b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(error.reason.contains("is gone"), "{error}");
        assert!(!root.exists(), "the root was created again");
        assert!(
            store.list("ledger/").await.is_err(),
            "and reads stay errors"
        );
        // A lazy store (a dry run's state) creates it at its first write.
        let lazy = LocalStore::lazy(&root);
        lazy.put("ledger/b/1.done", b"{}".to_vec()).await.unwrap();
        assert!(root.is_dir());
    }

    #[tokio::test]
    async fn dot_segments_stay_inside_the_root() {
        let scratch = Scratch::new("dots");
        let root = scratch.0.join("root");
        let store = LocalStore::lazy(&root);
        let keys = [
            "d/..",
            "../escaped",
            "a/../b",
            "a/./b",
            "./c",
            "../../etc/passwd",
        ];
        for key in keys {
            store.put(key, key.as_bytes().to_vec()).await.unwrap();
        }
        let outside: Vec<_> = files_below(&scratch.0)
            .into_iter()
            .filter(|f| !f.starts_with("root"))
            .collect();
        assert!(outside.is_empty(), "written outside the root: {outside:?}");
        let listed: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        let mut expected: Vec<&str> = keys.to_vec();
        expected.sort();
        assert_eq!(listed, expected);
        for key in keys {
            assert_eq!(store.get(key).await.unwrap(), key.as_bytes());
        }
        assert_eq!(
            store.list_folders("").await.unwrap(),
            ["../", "./", "a/", "d/"]
        );
        assert_eq!(store.list_folders("a/").await.unwrap(), ["a/../", "a/./"]);
    }

    #[tokio::test]
    async fn a_missing_root_is_an_error_but_a_missing_folder_is_empty() {
        let scratch = Scratch::new("missing");
        let store = LocalStore::new(scratch.0.join("moved-away"));
        for error in [
            store.list("").await.unwrap_err(),
            store.list("currents").await.unwrap_err(),
            store.list_folders("").await.unwrap_err(),
        ] {
            assert!(error.is_not_found(), "{error}");
            assert!(error.to_string().contains("does not exist"), "{error}");
            assert!(error.to_string().contains("moved-away"), "{error}");
        }
        // A state deleted mid-run is not an empty ledger.
        let ledger = store.list("ledger/").await.unwrap_err();
        assert!(ledger.to_string().contains("does not exist"), "{ledger}");
        assert!(store.list_folders("ledger/").await.is_err());
        let lazy = LocalStore::lazy(scratch.0.join("moved-away"));
        assert!(lazy.list("ledger/").await.unwrap().is_empty());
        lazy.put("ledger/x", b"1".to_vec()).await.unwrap();
        assert!(store.list("dead-letters/").await.unwrap().is_empty());
        assert_eq!(store.list("").await.unwrap().len(), 1);
        // A root replaced by a file is an error too, not an empty listing.
        fs::remove_dir_all(scratch.0.join("moved-away")).unwrap();
        fs::write(scratch.0.join("moved-away"), b"x").unwrap();
        let file = store.list("ledger/").await.unwrap_err();
        assert!(file.to_string().contains("not a directory"), "{file}");
    }

    #[tokio::test]
    async fn temporary_files_are_skipped_but_keys_that_look_like_old_ones_are_not() {
        let scratch = Scratch::new("temp");
        let store = LocalStore::new(&scratch.0);
        store.put("a/.b.123-4.tmp", b"1".to_vec()).await.unwrap();
        fs::write(scratch.0.join("a/%tmp.99-1"), b"half").unwrap();
        let listed: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(listed, ["a/.b.123-4.tmp"]);
        store.put("%tmp.1-1", b"2".to_vec()).await.unwrap();
        assert!(scratch.0.join("%25tmp.1-1").is_file());
        assert_eq!(store.list("%").await.unwrap()[0].key, "%tmp.1-1");
    }

    #[tokio::test]
    async fn hand_made_names_are_read_as_themselves_and_foreign_ones_skipped() {
        let scratch = Scratch::new("hand-made");
        let dir = scratch.0.join("currents/event_type=T/date=2026-11-27-13");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("i+0+0000000000.avro"), b"avro").unwrap();
        fs::write(dir.join("100% sure.txt"), b"x").unwrap();
        fs::write(dir.join("a.b"), b"kept").unwrap();
        fs::write(dir.join("a%2Eb"), b"would shadow a.b").unwrap();
        let store = LocalStore::new(&scratch.0);
        let listed: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        let base = "currents/event_type=T/date=2026-11-27-13/";
        assert_eq!(
            listed,
            [
                format!("{base}100% sure.txt"),
                format!("{base}a.b"),
                format!("{base}i+0+0000000000.avro")
            ]
        );
        for key in &listed {
            store.get(key).await.unwrap();
        }
        assert_eq!(store.get(&format!("{base}a.b")).await.unwrap(), b"kept");
    }

    #[tokio::test]
    async fn long_segments_that_share_their_first_piece_list_apart() {
        let scratch = Scratch::new("long");
        let store = LocalStore::new(&scratch.0);
        let long = "a".repeat(300);
        let keys = [
            format!("p/{long}1/x"),
            format!("p/{long}2/x"),
            format!("p/{long}2/y"),
            format!("p/{long}"),
        ];
        for key in &keys {
            store.put(key, b"1".to_vec()).await.unwrap();
        }
        assert_eq!(
            store.list_folders("p/").await.unwrap(),
            [format!("p/{long}1/"), format!("p/{long}2/")]
        );
        let mut sorted = keys.to_vec();
        sorted.sort();
        // Prefixes that end inside the first piece, inside the second, and at its end.
        for prefix in [
            &format!("p/{}", "a".repeat(260))[..],
            &format!("p/{long}")[..],
            &keys[1][..],
        ] {
            let listed: Vec<String> = store
                .list(prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect();
            let expected: Vec<String> = sorted
                .iter()
                .filter(|k| k.starts_with(prefix))
                .cloned()
                .collect();
            assert_eq!(listed, expected, "{prefix}");
        }
        assert_eq!(
            store.list_folders(&format!("p/{long}2/")).await.unwrap(),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn deleting_the_last_key_of_a_folder_removes_the_folder_but_never_the_root() {
        let scratch = Scratch::new("prune");
        let store = LocalStore::new(&scratch.0);
        store.put("a/b/c/one", b"1".to_vec()).await.unwrap();
        store.put("a/two", b"2".to_vec()).await.unwrap();
        store.delete("a/b/c/one").await.unwrap();
        assert!(store.list_folders("a/").await.unwrap().is_empty());
        assert_eq!(store.list_folders("").await.unwrap(), ["a/"]);
        store.delete("a/two").await.unwrap();
        assert!(store.list_folders("").await.unwrap().is_empty());
        assert!(scratch.0.is_dir());
        assert!(store.list("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_empty_key_and_folders_are_not_objects() {
        let scratch = Scratch::new("not-objects");
        let store = LocalStore::new(&scratch.0);
        let error = store.put("", b"x".to_vec()).await.unwrap_err();
        assert!(error.to_string().contains("empty key"), "{error}");
        assert!(error.location.ends_with('/'), "{error}");
        store.put("a/b", b"1".to_vec()).await.unwrap();
        for key in ["a", "a/b/c"] {
            let error = store.get(key).await.unwrap_err();
            assert!(error.is_not_found(), "{error}");
            let error = store.open(key).await.err().unwrap();
            assert!(error.is_not_found(), "{error}");
            assert!(error.location.ends_with(key), "{error}");
            store.delete(key).await.unwrap();
        }
        assert_eq!(store.get("a/b").await.unwrap(), b"1");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn awkward_keys_round_trip_through_the_file_system(
            keys in proptest::collection::btree_set(key(), 1..6)
        ) {
            let scratch = Scratch::new("prop");
            let store = LocalStore::new(&scratch.0);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let mut stored = Vec::new();
                for key in &keys {
                    // A key that is also a prefix of another cannot be a file here.
                    if store.put(key, key.as_bytes().to_vec()).await.is_ok() {
                        stored.push(key.clone());
                    }
                }
                let listed: Vec<String> =
                    store.list("").await.unwrap().into_iter().map(|m| m.key).collect();
                assert_eq!(listed, stored);
                for key in &stored {
                    assert_eq!(&store.get(key).await.unwrap(), key.as_bytes());
                }
            });
        }
    }
}
