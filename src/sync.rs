//! Brings one path in line with its remote field: upload → attach → record; delete; replace.
//! Receives settled `Job`s from the queue; emits API calls, field requests and store records.
//! Owns the per-file decisions: what is new, changed, unchanged, rejected or gone, and the
//! order of durable writes that lets a restart resume from the last state recorded.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use crate::api::{ApiError, Client};
use crate::config::{Config, Folder};
use crate::field::{FieldError, FieldHandle, OnItsWay, Resolved};
use crate::filter;
use crate::metrics::METRICS;
use crate::settle::Job;
use crate::store::{
    now_unix, Asset, DeleteJob, FileMeta, FileRecord, FileState, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("shutting down")]
    Cancelled,
}

pub struct Syncer {
    config: Arc<Config>,
    store: Store,
    api: Arc<Client>,
    /// One handle per folder, in config order (folders with the same target share an actor).
    fields: Vec<FieldHandle>,
}

/// A file as it is being handled, for logs and records.
struct Subject<'a> {
    folder: &'a Folder,
    field: &'a FieldHandle,
    path: &'a Path,
    /// Counts this file as on its way to the field until it gets there or gives up.
    on_its_way: OnItsWay,
}

impl Subject<'_> {
    fn record(
        &self,
        meta: FileMeta,
        state: FileState,
        previous: Option<&FileRecord>,
    ) -> FileRecord {
        FileRecord {
            folder: self.folder.path.clone(),
            target: self.folder.target.key(),
            meta,
            hash: previous.and_then(|record| record.hash.clone()),
            attached: previous.and_then(|record| record.attached.clone()),
            state,
            updated: now_unix(),
            attempts: previous
                .filter(|record| record.meta == meta)
                .map_or(0, |record| record.attempts),
        }
    }

    fn delete_job(&self, asset: Asset) -> DeleteJob {
        DeleteJob {
            folder: self.folder.path.clone(),
            target: self.folder.target.key(),
            path: self.path.to_path_buf(),
            asset,
        }
    }
}

impl Syncer {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        api: Arc<Client>,
        fields: Vec<FieldHandle>,
    ) -> Syncer {
        Syncer {
            config,
            store,
            api,
            fields,
        }
    }

    /// Handles one settled path; failures are logged and recorded, never raised.
    pub async fn process(&self, job: &Job) {
        let folder = &self.config.folders[job.folder];
        let field = &self.fields[job.folder];
        let on_its_way = field.expect();
        let Some(target) = field.ready().await else {
            return;
        };
        let subject = Subject {
            folder,
            field,
            path: &job.path,
            on_its_way,
        };
        match self.reconcile(&subject, &target).await {
            Ok(()) | Err(SyncError::Cancelled) => {}
            Err(error) => {
                error!(folder = %folder.path.display(), file = %subject.path.display(), %error, "could not sync; will try again when the file changes")
            }
        }
    }

    async fn reconcile(&self, subject: &Subject<'_>, target: &Resolved) -> Result<(), SyncError> {
        let path = subject.path;
        let record = self.store.get(path)?;
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return self.vanished(subject, record).await
            }
            Err(error) => {
                return Err(SyncError::Read {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        let meta = FileMeta::of(&metadata);
        if let Err(rejection) = eligible(subject.folder, path, &metadata) {
            return self
                .reject(subject, meta, rejection.to_string(), record)
                .await;
        }
        match next(record, meta) {
            Next::Nothing => Ok(()),
            Next::Attach { record, asset } => self.attach(subject, record, asset).await,
            Next::CompareContent { record, hash } => {
                // Touched or rewritten with the same bytes: no upload, just remember the new metadata.
                if hash_file(path).await.ok().as_ref() == Some(&hash) {
                    debug!(file = %subject.path.display(), "content unchanged");
                    let mut unchanged = record;
                    unchanged.meta = meta;
                    return Ok(self.store.put(path, &unchanged).await?);
                }
                self.upload(subject, target, meta, Some(record)).await
            }
            Next::Upload { previous } => self.upload(subject, target, meta, previous).await,
        }
    }

    async fn reject(
        &self,
        subject: &Subject<'_>,
        meta: FileMeta,
        reason: String,
        record: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        if record.as_ref().is_some_and(|r| {
            r.meta == meta
                && matches!(&r.state, FileState::Rejected { reason: old } if *old == reason)
        }) {
            return Ok(());
        }
        warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), %reason, "skipped; not retried until the file changes");
        let rejected = subject.record(meta, FileState::Rejected { reason }, record.as_ref());
        Ok(self.store.put(subject.path, &rejected).await?)
    }

    async fn upload(
        &self,
        subject: &Subject<'_>,
        target: &Resolved,
        meta: FileMeta,
        previous: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        let path = subject.path;
        let mut record = subject.record(meta, FileState::Uploading, previous.as_ref());
        record.attempts += 1;
        // A crash from here on sends the file again: the store never claims an upload it did not see.
        self.store.put(path, &record).await?;
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        info!(
            folder = %subject.folder.path.display(),
            file = %subject.path.display(),
            size = meta.size,
            "{} {}",
            if record.attached.is_some() { "changed; uploading the new version" } else { "uploading" },
            filter::humansize(meta.size)
        );
        let uploaded = self
            .api
            .with_retries(|| async {
                let file = open_unchanged(path, &meta).map_err(|detail| ApiError::File {
                    path: path.to_path_buf(),
                    detail,
                })?;
                self.api
                    .upload(path, file, &file_name, meta.size, &target.upload)
                    .await
            })
            .await;
        let uploaded = match uploaded {
            Ok(uploaded) => uploaded,
            Err(ApiError::Cancelled) => return Err(SyncError::Cancelled),
            Err(ApiError::File { detail, .. }) => {
                let now = std::fs::symlink_metadata(path)
                    .ok()
                    .map(|m| FileMeta::of(&m));
                if now == Some(meta) {
                    // Unreadable as it stands (permissions, I/O error): wait for it to change.
                    return self
                        .fail(subject, record, format!("cannot read the file: {detail}"))
                        .await;
                }
                // It changed or vanished under us; its next event brings it back here once settled.
                warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), %detail, "file changed while being uploaded; will upload it once it settles");
                return Ok(());
            }
            Err(error) => {
                METRICS.uploaded(false, 0);
                return self.fail(subject, record, error.to_string()).await;
            }
        };
        let asset = uploaded.asset;
        let id = asset.id().unwrap_or_default();
        record.hash = Some(uploaded.hash);
        record.state = FileState::Uploaded {
            asset: asset.clone(),
        };
        record.updated = now_unix();
        self.store.put(path, &record).await?;
        METRICS.uploaded(true, meta.size);
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, "uploaded");
        let now = std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileMeta::of(&m));
        if now != Some(meta) {
            // Sent complete, but it is already out of date: drop that asset, upload again later.
            warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, "file changed during the upload; discarding that copy");
            record.state = FileState::Uploading;
            let job = subject.delete_job(asset);
            self.store
                .put_with_deletes(path, &record, std::slice::from_ref(&job))
                .await?;
            return self.remote_delete(subject, job).await;
        }
        self.attach(subject, record, asset).await
    }

    async fn attach(
        &self,
        subject: &Subject<'_>,
        mut record: FileRecord,
        asset: Asset,
    ) -> Result<(), SyncError> {
        let path = subject.path;
        let id = asset.id().unwrap_or_default();
        let replaces = record
            .attached
            .as_ref()
            .and_then(Asset::id)
            .filter(|old| *old != id);
        match subject
            .field
            .attach(asset.clone(), replaces, &subject.on_its_way)
            .await
        {
            Ok(()) => {}
            Err(FieldError::Cancelled) => return Err(SyncError::Cancelled),
            Err(error) => {
                // The upload is useless if it cannot be attached: delete it rather than leave an orphan.
                let message = error.to_string();
                record.state = FileState::Failed {
                    error: message.clone(),
                };
                record.updated = now_unix();
                let job = subject.delete_job(asset);
                self.store
                    .put_with_deletes(path, &record, std::slice::from_ref(&job))
                    .await?;
                error!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, error = %message, "could not attach; not retried until the file changes or a check of the target passes");
                return self.remote_delete(subject, job).await;
            }
        }
        let old = record
            .attached
            .replace(asset)
            .filter(|old| old.id().as_deref() != Some(id.as_str()));
        record.state = FileState::Synced;
        METRICS.synced();
        record.updated = now_unix();
        let deletes: Vec<DeleteJob> = old.into_iter().map(|old| subject.delete_job(old)).collect();
        self.store.put_with_deletes(path, &record, &deletes).await?;
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, target = %subject.folder.target, "attached");
        for job in deletes {
            self.remote_delete(subject, job).await?;
        }
        Ok(())
    }

    async fn fail(
        &self,
        subject: &Subject<'_>,
        mut record: FileRecord,
        error: String,
    ) -> Result<(), SyncError> {
        error!(folder = %subject.folder.path.display(), file = %subject.path.display(), %error, "upload failed; not retried until the file changes or a check of the target passes");
        record.state = FileState::Failed { error };
        record.updated = now_unix();
        Ok(self.store.put(subject.path, &record).await?)
    }

    /// The file is gone locally: delete its assets remotely (unless told not to) and forget it.
    async fn vanished(
        &self,
        subject: &Subject<'_>,
        record: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        let Some(record) = record else { return Ok(()) };
        if std::fs::metadata(&subject.folder.path)
            .map(|m| !m.is_dir())
            .unwrap_or(true)
        {
            error!(folder = %subject.folder.path.display(), file = %subject.path.display(), "the folder itself is gone; not deleting anything until it is back");
            return Ok(());
        }
        let assets = remote_assets(&record);
        if assets.is_empty() || !subject.folder.delete_remote {
            if !assets.is_empty() {
                info!(folder = %subject.folder.path.display(), file = %subject.path.display(), "removed locally; the copy in Tallyfy stays (delete_remote is off)");
            }
            return Ok(self.store.forget(subject.path, &[]).await?);
        }
        let jobs: Vec<DeleteJob> = assets
            .into_iter()
            .map(|asset| subject.delete_job(asset))
            .collect();
        self.store.forget(subject.path, &jobs).await?;
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), "removed locally; deleting it from Tallyfy");
        for job in jobs {
            self.remote_delete(subject, job).await?;
        }
        Ok(())
    }

    async fn remote_delete(&self, subject: &Subject<'_>, job: DeleteJob) -> Result<(), SyncError> {
        match subject.field.delete(job, &subject.on_its_way).await {
            Err(FieldError::Cancelled) => Err(SyncError::Cancelled),
            // The actor logs a failed delete; the file's own state is settled either way.
            _ => Ok(()),
        }
    }
}

/// Whether a file may be sent at all: the filter's checks, and for a file in a subdirectory,
/// that the directory really lies inside the folder (not reached through a symbolic link).
pub fn eligible(
    folder: &Folder,
    path: &Path,
    metadata: &std::fs::Metadata,
) -> Result<(), filter::Rejection> {
    filter::check(folder, path, metadata)?;
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    if parent == folder.path {
        return Ok(());
    }
    match parent.canonicalize() {
        Ok(real) if real.starts_with(&folder.path) => Ok(()),
        _ => Err(filter::Rejection::Symlink),
    }
}

/// What an eligible file's version on disk needs, given its record.
#[derive(Debug)]
pub enum Next {
    /// This version is settled: synced, rejected or failed as it is.
    Nothing,
    /// This version was uploaded but is not in the field yet (a stop came between).
    Attach { record: FileRecord, asset: Asset },
    /// A synced file whose metadata changed: it needs an upload only if its content differs
    /// from `hash`, the content last uploaded.
    CompareContent { record: FileRecord, hash: String },
    /// New, changed, or interrupted during its upload.
    Upload { previous: Option<FileRecord> },
}

pub fn next(record: Option<FileRecord>, meta: FileMeta) -> Next {
    let Some(record) = record else {
        return Next::Upload { previous: None };
    };
    if record.settles(&meta) {
        return Next::Nothing;
    }
    if record.meta == meta {
        if let FileState::Uploaded { asset } = &record.state {
            let asset = asset.clone();
            return Next::Attach { record, asset };
        }
        // Uploading: interrupted, nothing was recorded, so it is sent again below.
    }
    match (&record.state, record.hash.clone()) {
        (FileState::Synced, Some(hash)) => Next::CompareContent { record, hash },
        _ => Next::Upload {
            previous: Some(record),
        },
    }
}

/// The remote assets a file's record holds: the attached one and one uploaded but not yet
/// attached; deleting the file locally deletes these.
pub fn remote_assets(record: &FileRecord) -> Vec<Asset> {
    let mut assets: Vec<Asset> = record.attached.clone().into_iter().collect();
    if let FileState::Uploaded { asset } = &record.state {
        assets.push(asset.clone());
    }
    assets
}

/// Opens the file without following a link, and checks it is still the version that settled.
fn open_unchanged(path: &Path, meta: &FileMeta) -> Result<tokio::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|error| error.to_string())?;
    let opened = file.metadata().map_err(|error| error.to_string())?;
    if opened.ino() != meta.inode || opened.len() != meta.size {
        return Err("the file was replaced or resized after it settled".into());
    }
    Ok(tokio::fs::File::from_std(file))
}

async fn hash_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || content_hash(&path))
        .await
        .map_err(std::io::Error::other)?
}

/// blake3 of a file's content (hex), as recorded for what was uploaded.
pub fn content_hash(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}
