//! `tallyfy-sync restore FOLDER [--to DIR]`: gets a folder's files back from its field.
//! Receives the config and a configured folder; reads the field (one GET), downloads each file
//! not already in DIR with the same bytes, writes it under a safe name without overwriting
//! anything (temporary file in the same directory, fsync, link into place), and records it as
//! synced when DIR is the folder and no daemon runs (a running daemon adopts them itself).

use std::io::{Seek, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::Value;
use tracing::warn;

use crate::api::{ApiError, Client, Sink};
use crate::config::{Config, Credentials, Folder, Target};
use crate::control::{self, ControlError, Request};
use crate::field;
use crate::oneshot;
use crate::open;
use crate::progress::Bar;
use crate::route;
use crate::store::{
    asset_filename, asset_id, now_unix, Asset, FileMeta, FileRecord, FileState, Store, StoreError,
};
use crate::text;

/// Longest file name most Linux filesystems take, in bytes.
const NAME_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] ApiError),
    #[error("cannot read the field of {folder}: {error}")]
    Field { folder: PathBuf, error: ApiError },
    #[error("cannot create {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("{folder} is a launch folder: each of its files started a process and stays in it; open the process in Tallyfy to get a file back")]
    Launch { folder: PathBuf },
    #[error("{failed} of {total} files could not be restored (see above)")]
    Failed { failed: usize, total: usize },
    #[error(
        "{folder} is not there (not mounted?); mount it first, or restore elsewhere with --to DIR"
    )]
    NotThere { folder: PathBuf },
}

/// What happened to one file of the field.
enum Outcome {
    Restored(PathBuf),
    AlreadyThere(PathBuf),
}

pub fn run(
    config: &Config,
    credentials: Credentials,
    folder: &Path,
    to: Option<&Path>,
) -> Result<(), RestoreError> {
    let folder = control::configured_folder(config, folder)?;
    if matches!(folder.target, Target::Launch(_)) {
        return Err(RestoreError::Launch {
            folder: folder.path.clone(),
        });
    }
    if to.is_none() && !folder.path.exists() {
        // Creating it would put the files on the mount point, under the share.
        return Err(RestoreError::NotThere {
            folder: folder.path.clone(),
        });
    }
    let dir = to.map_or_else(|| folder.path.clone(), Path::to_path_buf);
    std::fs::create_dir_all(&dir).map_err(|error| RestoreError::Dir {
        dir: dir.clone(),
        error,
    })?;
    let dir = std::fs::canonicalize(&dir).map_err(|error| RestoreError::Dir {
        dir: dir.clone(),
        error,
    })?;
    let runtime = oneshot::runtime().map_err(|error| ControlError::Refused(error.to_string()))?;
    runtime.block_on(async {
        let (api, _stop_renewals) = oneshot::client(&config.api, credentials)?;
        let fields = fields(&api, folder, &dir)
            .await
            .map_err(|error| RestoreError::Field {
                folder: folder.path.clone(),
                error,
            })?;
        // Recorded only when the files land where the daemon looks for them, and the daemon is
        // not running (it holds the store, and adopts new files by itself).
        let records = dir == folder.path
            && control::ask(config, &Request::Status).await?.is_none();
        let store = if records {
            Some(Store::open(&config.state_dir).map_err(ControlError::from)?)
        } else {
            None
        };
        let mut failed = 0;
        let total: usize = fields.iter().map(|field| field.list.len()).sum();
        let bar = Bar::new("downloading", true);
        bar.add_total(total);
        let assets = fields
            .iter()
            .flat_map(|field| field.list.iter().map(move |asset| (field, asset)));
        for (field, asset) in assets {
            let id = asset_id(asset).unwrap_or_default();
            let raw = asset_filename(asset).unwrap_or_default();
            let name = safe_name(raw, &id);
            bar.start(&name);
            if name != raw {
                bar.clear();
                warn!(asset_id = %id, name_in_tallyfy = %raw, name = %name, "the name in Tallyfy cannot be used as it is; restoring it under a safe name");
            }
            if let Err(error) = std::fs::create_dir_all(&field.dir) {
                failed += 1;
                bar.finish();
                bar.clear();
                println!("FAILED         {}  asset {}: cannot create {}: {}", text::escaped(&name), text::escaped(&id), text::path(&field.dir), text::escaped(&error.to_string()));
                continue;
            }
            let restored =
                restore_one(&api, &field.dir, &id, &name, stated_size(asset), &bar).await;
            bar.finish();
            bar.clear();
            match restored {
                Ok(outcome) => {
                    let (path, words) = match &outcome {
                        Outcome::Restored(path) => (path, "restored"),
                        Outcome::AlreadyThere(path) => (path, "already there"),
                    };
                    println!("{words:<14} {}  asset {}", text::path(path), text::escaped(&id));
                    if let Some(store) = &store {
                        record(store, folder, &field.target, path, asset)
                            .await
                            .map_err(ControlError::from)?;
                    }
                }
                Err(error) => {
                    failed += 1;
                    println!("FAILED         {}  asset {}: {}", text::escaped(&name), text::escaped(&id), text::escaped(&error));
                }
            }
        }
        bar.clear();
        let done = total - failed;
        println!("{done} of {total} files in {}", text::path(&dir));
        if store.is_none() && dir == folder.path {
            println!("the running daemon matches them against the field and records them without uploading");
        }
        if failed > 0 {
            return Err(RestoreError::Failed { failed, total });
        }
        Ok(())
    })
}

/// One field's files and where they go back to.
struct Field {
    /// The directory its files are restored into.
    dir: PathBuf,
    /// The target key their records name.
    target: String,
    list: Vec<Value>,
}

/// The fields a folder's files are in: its target's, or for a route folder the capture field of
/// each active process, going to that process's subfolder.
async fn fields(api: &Client, folder: &Folder, dir: &Path) -> Result<Vec<Field>, ApiError> {
    let Target::Route(route) = &folder.target else {
        let list = api
            .with_retries(|| field::read(&folder.target, api))
            .await?
            .values();
        return Ok(vec![Field {
            dir: dir.to_path_buf(),
            target: folder.target.key(),
            list,
        }]);
    };
    let processes = route::active_processes(api, route).await?;
    let mut fields = Vec::with_capacity(processes.len());
    for (process, mapped) in processes.iter().zip(route::mapped(&processes, route.by)) {
        let route::Capture::Task(task) = &process.capture else {
            continue;
        };
        let target = task.target(&process.id, route);
        let list = api
            .with_retries(|| field::read(&target, api))
            .await?
            .values();
        fields.push(Field {
            dir: dir.join(&mapped.subfolder),
            target: target.key(),
            list,
        });
    }
    Ok(fields)
}

/// A name from the server made safe as one file name in a directory: only what follows the
/// last `/` or `\`, control characters and NUL as `_`, no leading dot (so never `.` or `..`
/// and never hidden), at most `NAME_MAX` bytes with the extension kept.
pub fn safe_name(raw: &str, asset_id: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let mut name = cleaned
        .trim_start_matches(['.', ' '])
        .trim_end()
        .to_string();
    if name.is_empty() {
        name = format!("asset-{asset_id}");
    }
    if name.len() > NAME_MAX {
        let extension = name
            .rfind('.')
            .map(|at| name[at..].to_string())
            .filter(|extension| extension.len() < 16)
            .unwrap_or_default();
        let mut stem_end = NAME_MAX - extension.len();
        while !name.is_char_boundary(stem_end) {
            stem_end -= 1;
        }
        name = format!("{}{extension}", &name[..stem_end]);
    }
    name
}

/// `name`, `name (2).ext`, `name (3).ext`, ...
fn numbered(name: &str, n: usize) -> String {
    if n == 1 {
        return name.to_string();
    }
    match name.rfind('.').filter(|at| *at > 0) {
        Some(at) => format!("{} ({n}){}", &name[..at], &name[at..]),
        None => format!("{name} ({n})"),
    }
}

/// A download going to a temporary file, hashed as it is written and counted on the bar.
struct FileSink<'a> {
    file: std::fs::File,
    hasher: blake3::Hasher,
    bar: &'a Bar,
}

impl Sink for FileSink<'_> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.hasher.reset();
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bar.add_bytes(chunk.len());
        self.hasher.update(chunk);
        self.file.write_all(chunk)
    }
}

/// Removes the temporary file unless it was linked into place.
struct Temporary(PathBuf);

impl Drop for Temporary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The size the asset's metadata states, when it states one: a download may not exceed it.
fn stated_size(asset: &Value) -> u64 {
    asset
        .get("size")
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX)
}

async fn restore_one(
    api: &Client,
    dir: &Path,
    id: &str,
    name: &str,
    limit: u64,
    bar: &Bar,
) -> Result<Outcome, String> {
    // Hidden and `.part`: the daemon never takes it for a file to sync.
    let temporary =
        Temporary(dir.join(format!(".tallyfy-restore-{id}-{}.part", std::process::id())));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary.0)
        .map_err(|error| format!("cannot create {}: {error}", temporary.0.display()))?;
    let sink = Mutex::new(FileSink {
        file,
        hasher: blake3::Hasher::new(),
        bar,
    });
    api.with_retries(|| api.download_at_most(id, limit, &sink))
        .await
        .map_err(|error| error.to_string())?;
    let sink = sink
        .into_inner()
        .unwrap_or_else(|poison| poison.into_inner());
    sink.file
        .sync_all()
        .map_err(|error| format!("cannot write {}: {error}", temporary.0.display()))?;
    let hash = sink.hasher.finalize().to_hex().to_string();
    for n in 1.. {
        let path = dir.join(numbered(name, n));
        match std::fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.is_file() => {
                if open::hash_async(dir, &path).await.ok().as_deref() == Some(hash.as_str()) {
                    return Ok(Outcome::AlreadyThere(path));
                }
                continue;
            }
            Ok(_) => continue,
            Err(_) => {}
        }
        // A link never replaces an existing file, even one that appeared a moment ago.
        match std::fs::hard_link(&temporary.0, &path) {
            Ok(()) => {
                if let Ok(dir) = std::fs::File::open(dir) {
                    let _ = dir.sync_all();
                }
                return Ok(Outcome::Restored(path));
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(format!("cannot write {}: {error}", path.display())),
        }
    }
    unreachable!("an unbounded range always yields")
}

/// Records a restored file as synced with its asset, so the daemon sends nothing for it.
async fn record(
    store: &Store,
    folder: &Folder,
    target: &str,
    path: &Path,
    asset: &Value,
) -> Result<(), StoreError> {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let record = FileRecord {
        folder: folder.path.clone(),
        target: target.to_string(),
        meta: FileMeta::of(&metadata),
        hash: open::hash_async(&folder.path, path).await.ok(),
        attached: Some(Asset(asset.clone())),
        state: FileState::Synced,
        updated: now_unix(),
        attempts: 0,
    };
    store.put(path, &record).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_server_become_one_safe_file_name() {
        assert_eq!(safe_name("../../escape.pdf", "a1"), "escape.pdf");
        assert_eq!(safe_name("..\\evil.pdf", "a1"), "evil.pdf");
        assert_eq!(safe_name(".bashrc", "a1"), "bashrc");
        assert_eq!(safe_name("..", "a1"), "asset-a1");
        assert_eq!(safe_name("", "a1"), "asset-a1");
        assert_eq!(safe_name("a\nb\0c.pdf", "a1"), "a_b_c.pdf");
        assert_eq!(
            safe_name("Vertrag „Müller\".pdf", "a1"),
            "Vertrag „Müller\".pdf"
        );
        let long = format!("{}.pdf", "é".repeat(200));
        let safe = safe_name(&long, "a1");
        assert!(safe.len() <= NAME_MAX && safe.ends_with(".pdf"), "{safe}");
    }

    #[test]
    fn a_taken_name_gets_a_number_before_its_extension() {
        assert_eq!(numbered("a.pdf", 1), "a.pdf");
        assert_eq!(numbered("a.pdf", 2), "a (2).pdf");
        assert_eq!(numbered("README", 3), "README (3)");
    }
}
