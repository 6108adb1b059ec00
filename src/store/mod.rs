//! The daemon's durable memory, and the only module that knows sled.
//! Receives state changes from `sync` (one record per local file, one tombstone per remote
//! asset still to delete) and writes each one durably before the side effect it guards.
//! Owns the on-disk layout: tree `files` (path bytes → `FileRecord`, see `record`) and tree
//! `deletes` (asset id → `DeleteJob` as JSON), tree `meta` (name → JSON: the API pause
//! schedule, each folder's device, held deletes) and tree `launches` (folder, NUL, content
//! hash → `ContentClaim`: which file of a launch folder launched that content). A write that
//! fails (a full or read-only disk) marks the store unwritable until `probe` finds it can write
//! again, reopening the database, since sled refuses every write after one I/O error.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

mod record;

/// How long the flush thread waits for more requests to flush together.
const GATHER: std::time::Duration = std::time::Duration::from_micros(300);
/// The longest a flush waits for company, so that a steady stream still gets flushed.
const MAX_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// sled's default cache is 1 GiB. The records are small and each is read about once per
/// change of its file, from the system's page cache when not from this one; the cache's own
/// overhead makes its memory a few times this figure, which a folder of 20,000 files fills.
const CACHE_BYTES: u64 = 2 * 1024 * 1024;

/// Why requests pause while the store cannot be written, as logs, `status` and systemd say it.
pub const UNWRITABLE: &str = "state directory full (or not writable)";
/// What `probe` writes: a few bytes beside the database, then a record in it.
const PROBE_FILE: &str = "write-probe";
const PROBE_KEY: &str = "write-probe";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state directory {path} is in use by another running tallyfy-sync (only one process may open it; stop the daemon or use another state_dir)")]
    Locked { path: PathBuf },
    #[error("cannot open state directory {path}: {error}")]
    Open { path: PathBuf, error: String },
    /// A full or read-only file system: a passing condition, unlike a wrong path or mode.
    #[error("cannot write state directory {path} (the file system is full or read-only): {error}")]
    Unwritable { path: PathBuf, error: String },
    /// sled found its files damaged (a disk that lost recently written data, say).
    #[error("the state store in {path} is damaged and cannot be opened: {error}")]
    Damaged { path: PathBuf, error: String },
    #[error("state store at {path}: {error}")]
    Io { path: PathBuf, error: String },
    #[error("state store at {path} holds an unreadable record for {key}: {error}")]
    Corrupt {
        path: PathBuf,
        key: String,
        error: String,
    },
}

/// Where the daemon notes, in the new store, that it replaced a damaged one.
pub const REBUILT_KEY: &str = "store-rebuilt";

/// A damaged store moved aside and replaced by an empty one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rebuilt {
    /// Unix seconds.
    pub at: u64,
    /// Where the damaged store was kept for inspection.
    pub moved_to: PathBuf,
    /// What sled said.
    pub error: String,
}

/// What identifies one version of a file on disk without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// Changes with permissions too, so a file that could not be read is tried again once
    /// someone fixes its mode (which leaves size and mtime alone).
    #[serde(default)]
    pub ctime_ns: i64,
}

impl FileMeta {
    /// The file at `path` as it is now, without following a link; `None` when it cannot be
    /// read (gone, say).
    pub fn read(path: &Path) -> Option<FileMeta> {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|metadata| FileMeta::of(&metadata))
    }

    pub fn of(metadata: &std::fs::Metadata) -> FileMeta {
        use std::os::unix::fs::MetadataExt;
        FileMeta {
            size: metadata.len(),
            mtime_ns: metadata.mtime().saturating_mul(1_000_000_000) + metadata.mtime_nsec(),
            inode: metadata.ino(),
            ctime_ns: metadata.ctime().saturating_mul(1_000_000_000) + metadata.ctime_nsec(),
        }
    }
}

/// The asset object exactly as the upload answered it: this whole object is what gets attached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Asset(pub serde_json::Value);

impl Asset {
    /// The asset's id; `None` for an object without a string or numeric `id`.
    pub fn id(&self) -> Option<String> {
        asset_id(&self.0)
    }

    /// The file name Tallyfy stored, as the upload answered it.
    pub fn filename(&self) -> Option<String> {
        asset_filename(&self.0).map(str::to_owned)
    }
}

/// The file name of an asset object as found in a field's value.
pub fn asset_filename(value: &serde_json::Value) -> Option<&str> {
    value.get("filename")?.as_str()
}

/// The id of an asset object as found in a field's value.
pub fn asset_id(value: &serde_json::Value) -> Option<String> {
    match value.get("id")? {
        serde_json::Value::String(id) => Some(id.clone()),
        serde_json::Value::Number(id) => Some(id.to_string()),
        _ => None,
    }
}

/// Where a file's sync stands. Each state is durable before the request that leaves it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FileState {
    /// An upload may be in flight; after a crash it is sent again.
    Uploading,
    /// Stored remotely, not yet in the field: attach it, never upload it again.
    Uploaded { asset: Asset },
    /// `attached` holds this version.
    Synced,
    /// Synced, then someone removed `attached` from the field in Tallyfy, and the folder says
    /// `remote_removed: leave`: not uploaded again until the local file changes.
    Removed,
    /// Not eligible (extension, size, name...); looked at again only when the file changes.
    Rejected { reason: String },
    /// The API refused it for good; looked at again when the file changes.
    Failed { error: String },
    /// Launch folders: uploaded, and the process may be being started. After a crash the
    /// process is looked up by `name` and `summary` (or the asset) before it is started again.
    Launching {
        asset: Asset,
        name: String,
        summary: String,
    },
    /// Launch folders: the process this file started. A process is a record: whatever then
    /// happens to the file starts or deletes nothing.
    Launched { run: RunRef },
    /// Launch folders: the same content as `of`, which launched (or is launching) `run`.
    Duplicate { of: PathBuf, run: Option<RunRef> },
    /// Route folders: no process to go to yet (`reason` says why); looked at again whenever
    /// the active processes change.
    Waiting { reason: String },
}

/// A process as the store remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    pub id: String,
    pub name: String,
}

/// Who launched a content in a launch folder: the file, and its process once recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentClaim {
    pub path: PathBuf,
    pub run: Option<RunRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub folder: PathBuf,
    pub target: String,
    pub meta: FileMeta,
    /// blake3 of the content last uploaded (hex).
    pub hash: Option<String>,
    /// The asset in the field for this file now, if any: replaced when a new version attaches.
    pub attached: Option<Asset>,
    pub state: FileState,
    /// Unix seconds of the last state change.
    pub updated: u64,
    /// Uploads started for this version of the file.
    #[serde(default)]
    pub attempts: u32,
}

impl FileRecord {
    /// Whether this record settles the file as it is on disk (`meta`): synced, rejected or
    /// failed in this very version, so neither a scan nor a worker has anything to do for it.
    pub fn settles(&self, meta: &FileMeta) -> bool {
        self.meta == *meta
            && matches!(
                self.state,
                FileState::Synced
                    | FileState::Removed
                    | FileState::Rejected { .. }
                    | FileState::Failed { .. }
                    | FileState::Launched { .. }
                    | FileState::Duplicate { .. }
            )
    }
}

/// A remote asset that must be deleted; durable so that a crash between the local change and
/// the DELETE does not leave the old file in Tallyfy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteJob {
    pub folder: PathBuf,
    pub target: String,
    pub path: PathBuf,
    pub asset: Asset,
    /// Why it goes, for the log; jobs saved before this was recorded are `Removed`.
    #[serde(default)]
    pub kind: DeleteKind,
}

/// Why a remote asset is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteKind {
    /// The local file was removed.
    #[default]
    Removed,
    /// An earlier version of a file that changed.
    Replaced,
    /// An upload never attached (it could not be, or its file changed meanwhile).
    Orphan,
}

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    /// The open database; `probe` swaps in a fresh one after a failed write. `None` only when
    /// closing the failed one succeeded and opening its successor did not (yet).
    db: Arc<RwLock<Option<Arc<Db>>>>,
    /// The last write failure, until `probe` succeeds.
    unwritable: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// A temporary store is never reopened: its file goes with its last handle.
    temporary: bool,
}

struct Db {
    files: sled::Tree,
    deletes: sled::Tree,
    meta: sled::Tree,
    launches: sled::Tree,
    flusher: Flusher,
}

type FlushRequest = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The flush thread; dropping the last handle stops it and waits, so the database (and its
/// lock on the directory) is released by the time the last `Store` clone is gone.
struct Flusher {
    requests: Option<std::sync::mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn spawn_flusher(db: sled::Db) -> std::io::Result<Flusher> {
    let (requests, inbox) = std::sync::mpsc::channel::<FlushRequest>();
    let thread = std::thread::Builder::new()
        .name("store-flush".into())
        .spawn(move || {
            while let Ok(first) = inbox.recv() {
                let mut waiting = vec![first];
                // Group commit: during a burst, state changes of other files arrive within
                // moments; one flush for all of them costs a fraction of the latency it adds.
                let until = std::time::Instant::now() + MAX_GATHER;
                while let Some(wait) = until
                    .checked_duration_since(std::time::Instant::now())
                    .map(|left| left.min(GATHER))
                {
                    match inbox.recv_timeout(wait) {
                        Ok(next) => waiting.push(next),
                        Err(_) => break,
                    }
                }
                let result = db.flush().map(|_| ()).map_err(|error| error.to_string());
                for waiter in waiting {
                    let _ = waiter.send(result.clone());
                }
            }
        })?;
    Ok(Flusher {
        requests: Some(requests),
        thread: Some(thread),
    })
}

/// Opens the sled database in `dir`, creating both if need be.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let open_error = |error: &dyn std::fmt::Display| {
        let error = error.to_string();
        let path = dir.to_path_buf();
        StoreError::Open { path, error }
    };
    let unwritable = |error: &std::io::Error| StoreError::Unwritable {
        path: dir.to_path_buf(),
        error: error.to_string(),
    };
    let damaged = |error: String| StoreError::Damaged {
        path: dir.to_path_buf(),
        error,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| match is_unwritable(&error) {
            true => unwritable(&error),
            false => open_error(&error),
        })?;
    make_private(dir);
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(dir.join("store"))
            .cache_capacity(CACHE_BYTES)
            // Durability comes from explicit flushes after each state change, not a timer.
            .flush_every_ms(None)
            .open()
    });
    // sled made its files as the umask says.
    make_private(dir);
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(io))) if io.to_string().contains("could not acquire lock") => {
            Err(StoreError::Locked {
                path: dir.to_path_buf(),
            })
        }
        Ok(Err(sled::Error::Io(io))) if is_unwritable(&io) => Err(unwritable(&io)),
        Ok(Err(sled::Error::Io(io)))
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Err(damaged(io.to_string()))
        }
        Ok(Err(error @ sled::Error::Io(_))) => Err(open_error(&error)),
        Ok(Err(sled::Error::Corruption { at, .. })) => Err(damaged(match at {
            Some(at) => format!("corrupted data at {at:?}"),
            None => "corrupted data (the log ends before what its snapshot records)".into(),
        })),
        Ok(Err(other)) => Err(damaged(other.to_string())),
        // sled panics on some damage it does not expect; that is damage all the same.
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|why| why.to_string()))
                .unwrap_or_else(|| "sled panicked while reading it".into());
            Err(damaged(why))
        }
    }
}

/// Makes the state directory private to the daemon's user whatever the umask (every path and
/// asset id is in there): the directory and the database (`store`, and damaged ones moved
/// aside as `store.corrupt-*`) lose their group and other bits: directories 0700, files 0600.
/// Files sled makes later are out of reach all the same, inside a 0700 directory. Only what
/// this user owns is changed, and a failure (a read-only disk) leaves it as it was: the store
/// works the same either way.
fn make_private(dir: &Path) {
    restrict(dir);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| entry.file_name().as_bytes().starts_with(b"store"))
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.path())
        .collect();
    while let Some(dir) = dirs.pop() {
        restrict(&dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => dirs.push(entry.path()),
                Ok(kind) if kind.is_file() => restrict(&entry.path()),
                _ => {}
            }
        }
    }
}

/// Takes group and other permissions from a file or directory this user owns.
fn restrict(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return;
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = metadata.mode() & 0o7777;
    if metadata.uid() == me && !metadata.file_type().is_symlink() && mode & 0o077 != 0 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & !0o077));
    }
}

/// A full disk, an exceeded quota or a read-only file system, as opposed to a wrong path or
/// permissions. sled sometimes wraps the OS error in one of its own with the same kind.
fn is_unwritable(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, ReadOnlyFilesystem, StorageFull};
    matches!(
        error.kind(),
        StorageFull | ReadOnlyFilesystem | QuotaExceeded
    ) || matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS)
    )
}

impl Db {
    fn new(dir: &Path, db: sled::Db) -> Result<Db, StoreError> {
        let open_error = |error: String| StoreError::Open {
            path: dir.to_path_buf(),
            error,
        };
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|error| open_error(error.to_string()))
        };
        Ok(Db {
            files: tree("files")?,
            deletes: tree("deletes")?,
            meta: tree("meta")?,
            launches: tree("launches")?,
            flusher: spawn_flusher(db.clone()).map_err(|error| open_error(error.to_string()))?,
        })
    }
}

/// sled hands out copies of its first I/O error with the original's debug text in place of its
/// message (`Os { code: 28, kind: StorageFull, message: "No space left on device" }`); this
/// puts back the words an `io::Error` shows (`No space left on device (os error 28)`).
fn readable(text: String) -> String {
    const START: &str = "Os { code: ";
    let Some(at) = text.find(START) else {
        return text;
    };
    let tail = &text[at..];
    let parsed = (|| {
        let close = tail.find("\" }")?;
        let (code, rest) = tail[START.len()..close].split_once(',')?;
        let code: i32 = code.parse().ok()?;
        let (_, message) = rest.split_once("message: \"")?;
        Some((
            format!("{message} (os error {code})"),
            at + close + "\" }".len(),
        ))
    })();
    match parsed {
        Some((words, end)) => format!(
            "{}{words}{}",
            &text[..at],
            readable(text[end..].to_string())
        ),
        None => text,
    }
}

/// What a failed transaction says to a person: the storage error's own words (no transaction
/// here aborts on purpose).
fn transaction_failure(error: TransactionError<()>) -> String {
    match error {
        TransactionError::Storage(error) => error.to_string(),
        TransactionError::Abort(()) => "the write was abandoned".to_string(),
    }
}

/// Every entry of the store, for a process that cannot open it while the daemon holds its lock
/// (`run --dry-run`): per tree, each key (hex, since paths need not be UTF-8) and its value.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dump {
    trees: Vec<(String, Vec<(String, serde_json::Value)>)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

impl Db {
    fn trees(&self) -> [(&'static str, &sled::Tree); 4] {
        [
            ("files", &self.files),
            ("deletes", &self.deletes),
            ("meta", &self.meta),
            ("launches", &self.launches),
        ]
    }
}

impl Store {
    /// A copy of every entry, read entry by entry (no snapshot: a write meanwhile may or may
    /// not be in it, as for any reader).
    pub fn dump(&self) -> Result<Dump, StoreError> {
        let db = self.db()?;
        let mut dump = Dump::default();
        for (name, tree) in db.trees() {
            let mut entries = Vec::with_capacity(tree.len());
            for entry in tree.iter() {
                let (key, value) = entry.map_err(|error| self.io(error))?;
                let value = match name {
                    "files" => serde_json::to_value(self.record(&key, &value)?)
                        .map_err(|error| self.corrupt(&key, error.to_string()))?,
                    _ => self.decode(&key, &value)?,
                };
                entries.push((hex(&key), value));
            }
            dump.trees.push((name.to_string(), entries));
        }
        Ok(dump)
    }

    /// A temporary store holding `dump`, to read as if it were the one in `dir`.
    pub fn from_dump(dir: &Path, dump: Dump) -> Result<Store, StoreError> {
        let store = Store::empty(dir)?;
        let db = store.db()?;
        for (name, entries) in dump.trees {
            let Some((_, tree)) = db.trees().into_iter().find(|(known, _)| *known == name) else {
                continue;
            };
            for (key, value) in entries {
                let key = unhex(&key).ok_or_else(|| store.io(format!("not hex: {key}")))?;
                let value = match name.as_str() {
                    "files" => record::encode(
                        &key,
                        &serde_json::from_value(value)
                            .map_err(|error| store.corrupt(&key, error.to_string()))?,
                    ),
                    _ => encode(&value),
                };
                tree.insert(key, value).map_err(|error| store.io(error))?;
            }
        }
        drop(db);
        Ok(store)
    }

    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Ok(Store::with_db(dir, Db::new(dir, open_db(dir)?)?, false))
    }

    /// Like `open`, but a damaged store is moved aside (`store.corrupt-<timestamp>`, kept for
    /// inspection) and replaced by an empty one, which notes the rebuild under `REBUILT_KEY`.
    /// A locked or unusable directory stays an error: only damage is repaired.
    pub async fn open_or_rebuild(dir: &Path) -> Result<(Store, Option<Rebuilt>), StoreError> {
        let error = match Store::open(dir) {
            Ok(store) => return Ok((store, None)),
            Err(StoreError::Damaged { error, .. }) => error,
            Err(other) => return Err(other),
        };
        let at = now_unix();
        let moved_to = dir.join(format!("store.corrupt-{}", timestamp(at)));
        std::fs::rename(dir.join("store"), &moved_to).map_err(|rename| StoreError::Damaged {
            path: dir.to_path_buf(),
            error: format!(
                "{error}; and it cannot be moved aside to {}: {rename}",
                moved_to.display()
            ),
        })?;
        let store = Store::open(dir)?;
        let rebuilt = Rebuilt {
            at,
            moved_to,
            error,
        };
        store.set_meta(REBUILT_KEY, Some(&rebuilt)).await?;
        Ok((store, Some(rebuilt)))
    }

    /// A store that holds nothing, in a temporary file removed with its last handle: what a
    /// first run starts from, for planning one without creating the state directory.
    pub fn empty(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| StoreError::Open {
                path: dir.to_path_buf(),
                error: format!("cannot make an empty temporary store: {error}"),
            })?;
        Ok(Store::with_db(dir, Db::new(dir, db)?, true))
    }

    fn with_db(dir: &Path, db: Db, temporary: bool) -> Store {
        Store {
            path: dir.to_path_buf(),
            db: Arc::new(RwLock::new(Some(Arc::new(db)))),
            unwritable: Arc::new(tokio::sync::watch::channel(None).0),
            temporary,
        }
    }

    /// The open database, or why there is none.
    fn db(&self) -> Result<Arc<Db>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or_else(|| self.io("the store is closed until its directory can be written again"))
    }

    /// Why writes fail, while they do (a full or read-only disk, until `probe` succeeds).
    pub fn unwritable(&self) -> Option<String> {
        self.unwritable.borrow().clone()
    }

    /// Sees every change of `unwritable`.
    pub fn watch_unwritable(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.unwritable.subscribe()
    }

    /// Resolves once the store can be written (at once when no write has failed).
    pub async fn writable(&self) {
        let _ = self.watch_unwritable().wait_for(Option::is_none).await;
    }

    /// A write failed: from now on the store counts as unwritable, until `probe` succeeds.
    fn write_failed(&self, error: impl ToString) -> StoreError {
        let error = self.io(error);
        self.unwritable.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(error.to_string());
            }
            first
        });
        error
    }

    /// Whether the store can be written again, proven by writing: first a few bytes beside the
    /// database (so a still-full disk costs no reopen), then, when an earlier write failed, a
    /// fresh database in place of the failed one (sled refuses every write after an I/O
    /// error), then a record flushed into it. Clears `unwritable` on success.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let file = self.path.join(PROBE_FILE);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut probe| {
                std::io::Write::write_all(&mut probe, &unix_nanos().to_le_bytes())?;
                probe.sync_all()
            })
            .map_err(|error| self.io(format!("cannot write {}: {error}", file.display())));
        let _ = std::fs::remove_file(&file);
        written?;
        if self.unwritable().is_some() && !self.temporary {
            self.reopen()?;
        }
        let db = self.db()?;
        db.meta
            .insert(PROBE_KEY, &unix_nanos().to_le_bytes())
            .map_err(|error| self.io(error))?;
        drop(db);
        self.flush().await?;
        self.unwritable.send_replace(None);
        Ok(())
    }

    /// Closes the database and opens it again from what was flushed.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut current = self.db.write().unwrap_or_else(|poison| poison.into_inner());
        // Closing releases sled's lock on the directory once no one else holds the old
        // database; a reader still at it makes the open fail as locked, and the next probe
        // tries again.
        *current = None;
        *current = Some(Arc::new(Db::new(&self.path, open_db(&self.path)?)?));
        Ok(())
    }

    /// Whether `dir` holds a store (`open` would create one).
    pub fn exists(dir: &Path) -> bool {
        dir.join("store").exists()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, error: impl ToString) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            error: readable(error.to_string()),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|error| self.corrupt(key, error.to_string()))
    }

    /// A file's record, in the `files` tree.
    fn record(&self, key: &[u8], bytes: &[u8]) -> Result<FileRecord, StoreError> {
        record::decode(key, bytes).map_err(|error| self.corrupt(key, error))
    }

    fn corrupt(&self, key: &[u8], error: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            error,
        }
    }

    pub fn get(&self, path: &Path) -> Result<Option<FileRecord>, StoreError> {
        let key = path.as_os_str().as_bytes();
        match self.db()?.files.get(key).map_err(|error| self.io(error))? {
            Some(bytes) => Ok(Some(self.record(key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records a file's new state and makes it durable before returning.
    pub async fn put(&self, path: &Path, record: &FileRecord) -> Result<(), StoreError> {
        self.db()?
            .files
            .insert(
                path.as_os_str().as_bytes(),
                record::encode(path.as_os_str().as_bytes(), record),
            )
            .map_err(|error| self.write_failed(error))?;
        self.flush().await
    }

    /// Forgets a file and queues deletes of its remote assets in one atomic, durable step.
    pub async fn forget(&self, path: &Path, deletes: &[DeleteJob]) -> Result<(), StoreError> {
        self.replace_with_tombstones(path, None, deletes).await
    }

    /// Records a file's new state and queues deletes of the assets it replaced, atomically.
    pub async fn put_with_deletes(
        &self,
        path: &Path,
        record: &FileRecord,
        deletes: &[DeleteJob],
    ) -> Result<(), StoreError> {
        self.replace_with_tombstones(path, Some(record), deletes)
            .await
    }

    async fn replace_with_tombstones(
        &self,
        path: &Path,
        record: Option<&FileRecord>,
        deletes: &[DeleteJob],
    ) -> Result<(), StoreError> {
        let key = path.as_os_str().as_bytes();
        let value = record.map(|record| record::encode(key, record));
        let jobs: Vec<(String, Vec<u8>)> = deletes
            .iter()
            .filter_map(|job| Some((job.asset.id()?, encode(job))))
            .collect();
        let db = self.db()?;
        (&db.files, &db.deletes)
            .transaction(|(files, tombstones)| {
                match &value {
                    Some(value) => files.insert(key, value.as_slice())?,
                    None => files.remove(key)?,
                };
                for (id, job) in &jobs {
                    tombstones.insert(id.as_bytes(), job.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|error: TransactionError<()>| self.write_failed(transaction_failure(error)))?;
        drop(db);
        self.flush().await
    }

    /// Who launched `hash` in `folder`, if anyone has or is about to.
    pub fn content_claim(
        &self,
        folder: &Path,
        hash: &str,
    ) -> Result<Option<ContentClaim>, StoreError> {
        let key = claim_key(folder, hash);
        match self
            .db()?
            .launches
            .get(&key)
            .map_err(|error| self.io(error))?
        {
            Some(bytes) => Ok(Some(self.decode(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Claims `hash` in `folder` for `path`, atomically, so two copies settling together
    /// cannot both launch: `None` when `path` holds the claim now, else the claim of the file
    /// that was first (or of `path` itself, when it launched that content before). Made
    /// durable with the next flush, which comes before any launch.
    pub fn claim_content(
        &self,
        folder: &Path,
        hash: &str,
        path: &Path,
    ) -> Result<Option<ContentClaim>, StoreError> {
        let key = claim_key(folder, hash);
        let ours = ContentClaim {
            path: path.to_path_buf(),
            run: None,
        };
        let db = self.db()?;
        loop {
            let current = db.launches.get(&key).map_err(|error| self.io(error))?;
            if let Some(bytes) = &current {
                let claim: ContentClaim = self.decode(&key, bytes)?;
                return Ok((claim != ours).then_some(claim));
            }
            let swapped = db
                .launches
                .compare_and_swap(&key, None::<&[u8]>, Some(encode(&ours)))
                .map_err(|error| self.write_failed(error))?;
            if swapped.is_ok() {
                return Ok(None);
            }
        }
    }

    /// Lets go of a claim `path` holds on content it did not launch.
    pub async fn release_content(
        &self,
        folder: &Path,
        hash: &str,
        path: &Path,
    ) -> Result<(), StoreError> {
        let key = claim_key(folder, hash);
        if let Some(claim) = self.content_claim(folder, hash)? {
            if claim.path == path && claim.run.is_none() {
                self.db()?
                    .launches
                    .remove(&key)
                    .map_err(|error| self.write_failed(error))?;
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Records a launched file (`record`) and, for a folder that dedupes, its process as the
    /// one its content started (`content`: folder and hash), in one atomic, durable step.
    pub async fn put_launched(
        &self,
        path: &Path,
        record: &FileRecord,
        content: Option<(&Path, &str)>,
        run: &RunRef,
    ) -> Result<(), StoreError> {
        let key = path.as_os_str().as_bytes();
        let value = record::encode(key, record);
        let claim = content.map(|(folder, hash)| {
            let claim = ContentClaim {
                path: path.to_path_buf(),
                run: Some(run.clone()),
            };
            (claim_key(folder, hash), encode(&claim))
        });
        let db = self.db()?;
        (&db.files, &db.launches)
            .transaction(|(files, launches)| {
                files.insert(key, value.as_slice())?;
                if let Some((key, claim)) = &claim {
                    launches.insert(key.as_slice(), claim.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|error: TransactionError<()>| self.write_failed(transaction_failure(error)))?;
        drop(db);
        self.flush().await
    }

    /// A named value of the daemon's own (not a file's), if set.
    pub fn meta<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.db()?.meta.get(name).map_err(|error| self.io(error))? {
            Some(bytes) => Ok(Some(self.decode(name.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets (or with `None` clears) a named value and makes it durable.
    pub async fn set_meta<T: Serialize>(
        &self,
        name: &str,
        value: Option<&T>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        match value {
            Some(value) => db.meta.insert(name, encode(value)),
            None => db.meta.remove(name),
        }
        .map_err(|error| self.write_failed(error))?;
        drop(db);
        self.flush().await
    }

    pub async fn finish_delete(&self, asset_id: &str) -> Result<(), StoreError> {
        self.db()?
            .deletes
            .remove(asset_id.as_bytes())
            .map_err(|error| self.write_failed(error))?;
        self.flush().await
    }

    pub fn pending_deletes(&self) -> Result<Vec<DeleteJob>, StoreError> {
        self.db()?
            .deletes
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(|error| self.io(error))?;
                self.decode(&key, &value)
            })
            .collect()
    }

    /// Every record whose path lies inside `folder`, in path order.
    pub fn records_under(
        &self,
        folder: &Path,
    ) -> impl Iterator<Item = Result<(PathBuf, FileRecord), StoreError>> + '_ {
        let mut prefix = folder.as_os_str().as_bytes().to_vec();
        if prefix.last() != Some(&b'/') {
            prefix.push(b'/');
        }
        let (scan, closed) = match self.db() {
            Ok(db) => (Some(db.files.scan_prefix(prefix)), None),
            Err(error) => (None, Some(Err(error))),
        };
        closed
            .into_iter()
            .chain(scan.into_iter().flatten().map(move |item| {
                let (key, value) = item.map_err(|error| self.io(error))?;
                let path = PathBuf::from(std::ffi::OsStr::from_bytes(&key));
                Ok((path, self.record(&key, &value)?))
            }))
    }

    /// Every record, in path order.
    pub fn records(&self) -> impl Iterator<Item = Result<(PathBuf, FileRecord), StoreError>> + '_ {
        self.records_under(Path::new("/"))
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        // Only the sender is kept, not the database, so that `probe` can close it meanwhile.
        let requests = self
            .db()?
            .flusher
            .requests
            .clone()
            .ok_or_else(|| self.io("the flush thread has stopped"))?;
        requests
            .send(done)
            .map_err(|_| self.io("the flush thread has stopped"))?;
        drop(requests);
        match answer.await {
            Ok(result) => result.map_err(|error| self.write_failed(error)),
            Err(_) => Err(self.io("the flush thread has stopped")),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs to JSON cannot fail: no maps with non-string keys.
    serde_json::to_vec(value).unwrap_or_default()
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos())
}

/// Bytes free for an unprivileged writer on the file system holding `dir` (or its nearest
/// existing parent), for messages about a full disk.
pub fn free_space(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|path| path.exists())?;
    let path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` is a properly sized out-buffer.
    if unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn claim_key(folder: &Path, hash: &str) -> Vec<u8> {
    let mut key = folder.as_os_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(hash.as_bytes());
    key
}

/// `2026-01-02T030405Z` for Unix seconds `at` (UTC): sorts by time, no `:` in file names.
fn timestamp(at: u64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_secs(at);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace(':', "")
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: FileState) -> FileRecord {
        FileRecord {
            folder: "/f".into(),
            target: "task:r/t/c".into(),
            meta: FileMeta {
                size: 1,
                mtime_ns: 2,
                inode: 3,
                ctime_ns: 4,
            },
            hash: None,
            attached: None,
            state,
            updated: 0,
            attempts: 0,
        }
    }

    /// A store in a directory that lives as long as the returned guard.
    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .put(Path::new("/f/a.pdf"), &record(FileState::Synced))
                .await
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.get(Path::new("/f/a.pdf")).unwrap(),
            Some(record(FileState::Synced))
        );
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_directory_is_reported_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let error = Store::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
        assert!(error
            .to_string()
            .contains(&dir.path().display().to_string()));
    }

    #[tokio::test]
    async fn a_dump_read_into_a_temporary_store_holds_the_same_entries() {
        use std::os::unix::ffi::OsStrExt;
        let (dir, store) = temp_store();
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/f/caf\xe9.pdf"));
        store.put(odd, &record(FileState::Synced)).await.unwrap();
        store.set_meta("held:/f", Some(&7u32)).await.unwrap();
        let dump: Dump =
            serde_json::from_str(&serde_json::to_string(&store.dump().unwrap()).unwrap()).unwrap();
        let copy = Store::from_dump(dir.path(), dump).unwrap();
        assert_eq!(copy.get(odd).unwrap(), store.get(odd).unwrap());
        assert_eq!(copy.meta::<u32>("held:/f").unwrap(), Some(7));
        assert_eq!(unhex(&hex(b"\x00\xffa")), Some(b"\x00\xffa".to_vec()));
        assert_eq!(unhex("abc"), None);
    }

    #[test]
    fn sleds_debug_text_of_an_io_error_becomes_its_words() {
        let cloned = sled::Error::Io(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("{:?}", std::io::Error::from_raw_os_error(28)),
        ));
        assert_eq!(
            readable(cloned.to_string()),
            format!("IO error: {}", std::io::Error::from_raw_os_error(28))
        );
        assert_eq!(readable("plain words".into()), "plain words");
        assert_eq!(readable("Os { code: x".into()), "Os { code: x");
    }

    /// Modes of the state directory and of everything under it, beside their paths.
    fn modes(dir: &Path) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::MetadataExt;
        let mut modes = vec![(
            dir.to_path_buf(),
            std::fs::metadata(dir).unwrap().mode() & 0o777,
        )];
        let mut dirs = vec![dir.join("store")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let metadata = entry.metadata().unwrap();
                if metadata.is_dir() {
                    dirs.push(entry.path());
                }
                modes.push((entry.path(), metadata.mode() & 0o777));
            }
        }
        modes
    }

    #[tokio::test]
    async fn the_state_directory_and_the_store_files_are_private_even_when_made_public_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        store
            .put(Path::new("/f/a.pdf"), &record(FileState::Synced))
            .await
            .unwrap();
        drop(store);
        let made = modes(&state);
        assert!(made.len() > 2, "{made:?}");
        for (path, mode) in &made {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        }
        assert_eq!(made[0].1, 0o700);
        // As an earlier version left them under umask 022.
        for (path, _) in &made {
            let public = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(public)).unwrap();
        }
        let store = Store::open(&state).unwrap();
        assert!(store.get(Path::new("/f/a.pdf")).unwrap().is_some());
        for (path, mode) in modes(&state) {
            let private = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, private, "{}", path.display());
        }
    }

    #[test]
    fn timestamps_are_utc_and_sort_by_time() {
        assert_eq!(timestamp(0), "1970-01-01T000000Z");
        assert_eq!(timestamp(1_764_100_000), "2025-11-25T194640Z");
    }

    #[tokio::test]
    async fn forget_removes_the_record_and_queues_its_delete_atomically() {
        let (_dir, store) = temp_store();
        let path = Path::new("/f/a.pdf");
        store.put(path, &record(FileState::Synced)).await.unwrap();
        let job = DeleteJob {
            folder: "/f".into(),
            target: "task:r/t/c".into(),
            path: path.into(),
            asset: Asset(serde_json::json!({"id": "a1"})),
            kind: DeleteKind::Removed,
        };
        store
            .forget(path, std::slice::from_ref(&job))
            .await
            .unwrap();
        assert_eq!(store.get(path).unwrap(), None);
        assert_eq!(store.pending_deletes().unwrap(), vec![job]);
        store.finish_delete("a1").await.unwrap();
        assert!(store.pending_deletes().unwrap().is_empty());
    }

    #[tokio::test]
    async fn content_is_claimed_by_the_first_file_and_kept_once_launched() {
        let (_dir, store) = temp_store();
        let (folder, first, copy) = (
            Path::new("/f"),
            Path::new("/f/a.pdf"),
            Path::new("/f/b.pdf"),
        );
        assert_eq!(store.claim_content(folder, "h1", first).unwrap(), None);
        assert_eq!(store.claim_content(folder, "h1", first).unwrap(), None);
        let held = store.claim_content(folder, "h1", copy).unwrap().unwrap();
        assert_eq!(held.path, first);
        store.release_content(folder, "h1", copy).await.unwrap();
        assert!(store.content_claim(folder, "h1").unwrap().is_some());
        let run = RunRef {
            id: "r1".into(),
            name: "Invoice a".into(),
        };
        let launched = record(FileState::Launched { run: run.clone() });
        store
            .put_launched(first, &launched, Some((folder, "h1")), &run)
            .await
            .unwrap();
        store.release_content(folder, "h1", first).await.unwrap();
        let claim = store.claim_content(folder, "h1", first).unwrap().unwrap();
        assert_eq!(claim.run, Some(run));
        assert_eq!(store.get(first).unwrap(), Some(launched));
        assert_eq!(
            store.claim_content(Path::new("/g"), "h1", copy).unwrap(),
            None
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_writers_all_get_their_flush() {
        let (_dir, store) = temp_store();
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let path = PathBuf::from(format!("/f/{i}.pdf"));
                    store.put(&path, &record(FileState::Synced)).await.unwrap();
                })
            })
            .collect();
        let all = async {
            for writer in writers {
                writer.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all)
            .await
            .expect("no flush deadlock");
        assert_eq!(store.records().count(), 64);
    }

    #[test]
    fn a_full_or_read_only_disk_is_told_apart_from_a_wrong_path_or_mode() {
        for code in [libc::ENOSPC, libc::EDQUOT, libc::EROFS] {
            assert!(is_unwritable(&std::io::Error::from_raw_os_error(code)));
        }
        for code in [libc::EACCES, libc::ENOENT, libc::ENOTDIR, libc::EIO] {
            assert!(!is_unwritable(&std::io::Error::from_raw_os_error(code)));
        }
        // How sled reports a failed flush: the OS error wrapped in one of the same kind.
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            std::io::Error::from_raw_os_error(libc::ENOSPC).to_string(),
        );
        assert!(is_unwritable(&wrapped));
    }

    #[tokio::test]
    async fn a_probe_after_a_failed_write_reopens_the_store_with_its_records() {
        let (dir, store) = temp_store();
        let path = Path::new("/f/a.pdf");
        store.put(path, &record(FileState::Synced)).await.unwrap();
        let watching = store.clone();
        let unwritable = watching.watch_unwritable();
        let _ = store.write_failed("No space left on device");
        assert!(unwritable.has_changed().unwrap());
        assert!(store
            .unwritable()
            .unwrap()
            .contains("No space left on device"));
        store.probe().await.unwrap();
        assert_eq!(watching.unwritable(), None);
        assert!(!dir.path().join(PROBE_FILE).exists());
        // Every clone sees the reopened database, with what was flushed before.
        assert_eq!(watching.get(path).unwrap(), Some(record(FileState::Synced)));
        watching
            .put(path, &record(FileState::Uploading))
            .await
            .unwrap();
        assert_eq!(store.get(path).unwrap(), Some(record(FileState::Uploading)));
    }

    #[tokio::test]
    async fn records_under_a_folder_exclude_its_siblings_with_a_common_prefix() {
        let (_dir, store) = temp_store();
        store
            .put(Path::new("/f/a.pdf"), &record(FileState::Synced))
            .await
            .unwrap();
        store
            .put(Path::new("/fx/b.pdf"), &record(FileState::Synced))
            .await
            .unwrap();
        let under: Vec<PathBuf> = store
            .records_under(Path::new("/f"))
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(under, vec![PathBuf::from("/f/a.pdf")]);
    }
}
