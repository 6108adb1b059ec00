//! Brings one path in line with its remote field: upload → attach → record; delete; replace.
//! Receives settled `Job`s from the queue (those of launch folders go on to `launch`, those of
//! route folders to `route` through the `Routing` it implements); emits API calls, field
//! requests and store records.
//! Owns the per-file decisions: what is new, changed, unchanged, rejected or gone, and the
//! order of durable writes that lets a restart resume from the last state recorded. A file
//! with no record is first matched against its field: a copy already there with the same
//! content is adopted (recorded, not uploaded), so a lost store never doubles a field.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tracing::{debug, error, info, warn};

use crate::api::{stored_name, ApiError, Client, Hashing, Uploaded};
use crate::config::{Config, Folder, Route, Target};
use crate::field::{FieldError, FieldHandle, OnItsWay, Resolved};
use crate::filter;
use crate::logging;
use crate::metrics::METRICS;
use crate::open::{self, Identity};
use crate::settle::Job;
use crate::store::{
    asset_id, now_unix, Asset, DeleteJob, DeleteKind, FileMeta, FileRecord, FileState, Store,
    StoreError, UNWRITABLE,
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

/// How a file of a route folder reaches the task of its process. `route` implements it, so
/// that this stage hands such files over without knowing processes.
pub trait Routing: Send + Sync {
    /// Brings one file of route folder `index` to its process's task, or records why it
    /// cannot go (yet).
    fn route<'a>(
        &'a self,
        syncer: &'a Syncer,
        index: usize,
        folder: &'a Folder,
        route: &'a Route,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<(), SyncError>>;
}

pub struct Syncer {
    config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) api: Arc<Client>,
    /// One handle per folder, in config order (folders with the same target share an actor).
    pub(crate) fields: Vec<FieldHandle>,
    router: Arc<dyn Routing>,
    /// Assets adopted or being compared for adoption, so two local files never adopt one asset.
    adopting: Mutex<HashSet<String>>,
    /// When this pipeline started (Unix nanoseconds): a file changed before then without a
    /// record may have been handled by a store that is lost.
    pub(crate) started_ns: i64,
}

/// A file as it is being handled, for logs and records.
pub(crate) struct Subject<'a> {
    pub folder: &'a Folder,
    pub field: &'a FieldHandle,
    pub path: &'a Path,
    /// The key of the target its records and deletes name: the folder's, or for a route
    /// folder the task the file goes to.
    pub key: String,
    /// Counts this file as on its way to the field until it gets there or gives up.
    pub on_its_way: OnItsWay,
}

impl<'a> Subject<'a> {
    pub(crate) fn new(folder: &'a Folder, field: &'a FieldHandle, path: &'a Path) -> Subject<'a> {
        Subject {
            folder,
            field,
            path,
            key: folder.target.key(),
            on_its_way: match folder.target {
                Target::Launch(_) => field.uncounted(),
                _ => field.expect(),
            },
        }
    }

    pub(crate) fn bound_to(mut self, key: String) -> Subject<'a> {
        self.key = key;
        self
    }

    pub(crate) fn record(
        &self,
        meta: FileMeta,
        state: FileState,
        previous: Option<&FileRecord>,
    ) -> FileRecord {
        FileRecord {
            folder: self.folder.path.clone(),
            target: self.key.clone(),
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

    pub(crate) fn delete_job(&self, asset: Asset, kind: DeleteKind) -> DeleteJob {
        DeleteJob {
            folder: self.folder.path.clone(),
            target: self.key.clone(),
            path: self.path.to_path_buf(),
            asset,
            kind,
        }
    }
}

impl Syncer {
    pub fn new(
        config: Arc<Config>,
        store: Store,
        api: Arc<Client>,
        fields: Vec<FieldHandle>,
        router: Arc<dyn Routing>,
    ) -> Syncer {
        Syncer {
            config,
            store,
            api,
            fields,
            router,
            adopting: Mutex::new(HashSet::new()),
            started_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
                }),
        }
    }

    /// Handles one settled path; failures are logged and recorded, never raised.
    pub async fn process(&self, job: &Job) {
        let folder = &self.config.folders[job.folder];
        let field = &self.fields[job.folder];
        // Counted from here, so a batch of its field waits for it while the target is verified.
        // A route folder's file goes to its process's task, whose actor `route` counts it for.
        let subject = match folder.target {
            Target::Route(_) => None,
            _ => Some(Subject::new(folder, field, &job.path)),
        };
        let Some(target) = field.ready().await else {
            return;
        };
        let outcome = match (&folder.target, &subject) {
            (Target::Route(route), _) => {
                self.router
                    .route(self, job.folder, folder, route, &job.path)
                    .await
            }
            (Target::Launch(launch), Some(subject)) => self.launch(subject, launch, &target).await,
            (_, Some(subject)) => self.reconcile(subject, &target).await,
            (_, None) => Ok(()),
        };
        let file = job.path.display();
        match outcome {
            Ok(()) | Err(SyncError::Cancelled) => {}
            // Said once for all files where it is noticed; the rescan after it ends takes them.
            Err(SyncError::Store(error)) if self.store.unwritable().is_some() => {
                debug!(folder = %folder.path.display(), %file, %error, "cannot record the file's state; it is tried again once the state directory can be written")
            }
            Err(error) => {
                error!(folder = %folder.path.display(), %file, %error, "could not sync; will try again when the file changes")
            }
        }
    }

    pub(crate) async fn reconcile(
        &self,
        subject: &Subject<'_>,
        target: &Resolved,
    ) -> Result<(), SyncError> {
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
                let now = open::hash_async(&subject.folder.path, path).await;
                if now.ok().as_ref() == Some(&hash) {
                    debug!(file = %subject.path.display(), "content unchanged");
                    let mut unchanged = record;
                    unchanged.meta = meta;
                    return Ok(self.store.put(path, &unchanged).await?);
                }
                let seen = Identity::of(&metadata);
                self.upload(subject, target, meta, seen, Some(record)).await
            }
            Next::Upload { previous } => {
                let seen = Identity::of(&metadata);
                self.upload(subject, target, meta, seen, previous).await
            }
        }
    }

    /// Before any upload: looks in the field for assets of the same stored name that no record
    /// claims, downloads each (hashing, writing nothing) and, on the first with the same
    /// content, records the file as synced with it. `false`: nothing matched, upload it.
    /// This is what keeps a lost or partly lost store (records missing, or older than the
    /// field) from putting a second copy of a file into its field.
    async fn adopt(
        &self,
        subject: &Subject<'_>,
        meta: FileMeta,
        previous: Option<&FileRecord>,
    ) -> Result<bool, SyncError> {
        let path = subject.path;
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            return Ok(false);
        };
        let stored = stored_name(name);
        let value = match subject.field.read().await {
            Ok(value) => value,
            Err(FieldError::Cancelled) => return Err(SyncError::Cancelled),
            Err(error) => {
                warn!(folder = %subject.folder.path.display(), file = %path.display(), %error, "cannot read the field to look for a copy already there; uploading");
                return Ok(false);
            }
        };
        let own: HashSet<String> = previous
            .map(remote_assets)
            .unwrap_or_default()
            .iter()
            .filter_map(Asset::id)
            .collect();
        // A changed file's own earlier version has its name too: that one is never a match.
        let same_name: Vec<serde_json::Value> = value
            .named(&stored)
            .filter(|asset| asset_id(asset).is_some_and(|id| !own.contains(&id)))
            .collect();
        if same_name.is_empty() {
            return Ok(false);
        }
        let claimed = value.claimed(|| self.claimed(subject))?;
        let mut local: Option<String> = None;
        for candidate in same_name {
            let Some(id) = asset_id(&candidate) else {
                continue;
            };
            if claimed.contains(&id) || !self.claim_adoption(&id) {
                continue;
            }
            let adopted = self
                .compare(subject, meta, &id, &mut local)
                .await
                .map(|same| same.then_some(candidate));
            let outcome = match adopted {
                Ok(Some(asset)) => {
                    let record = FileRecord {
                        hash: local.clone(),
                        attached: Some(Asset(asset)),
                        ..subject.record(meta, FileState::Synced, previous)
                    };
                    // What the record held before is an earlier version of ours: replaced.
                    let replaced: Vec<DeleteJob> = previous
                        .map(remote_assets)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|old| subject.delete_job(old, DeleteKind::Replaced))
                        .collect();
                    let put = self.store.put_with_deletes(path, &record, &replaced).await;
                    match &put {
                        // Stays claimed: another file may have read the records before this one.
                        Ok(()) => {
                            METRICS.adopted();
                            info!(folder = %subject.folder.path.display(), file = %path.display(), asset_id = %id, "already in its field in Tallyfy with the same content; recorded as synced without uploading");
                        }
                        Err(_) => self.release_adoption(&id),
                    }
                    put?;
                    for job in replaced {
                        self.remote_delete(subject, job).await?;
                    }
                    return Ok(true);
                }
                Ok(None) => {
                    info!(folder = %subject.folder.path.display(), file = %path.display(), asset_id = %id, "the field holds a file of the same name with other content; it stays, and this one is uploaded beside it");
                    Ok(())
                }
                Err(error) => Err(error),
            };
            self.release_adoption(&id);
            match outcome {
                Ok(()) => continue,
                Err(SyncError::Read { .. }) => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }

    /// Whether asset `id` holds the same bytes as the file; `local` caches the file's hash.
    pub(crate) async fn compare(
        &self,
        subject: &Subject<'_>,
        meta: FileMeta,
        id: &str,
        local: &mut Option<String>,
    ) -> Result<bool, SyncError> {
        if local.is_none() {
            let read = |error| SyncError::Read {
                path: subject.path.to_path_buf(),
                error,
            };
            let hash = open::hash_async(&subject.folder.path, subject.path)
                .await
                .map_err(|error| read(error.into()))?;
            // Hashed while it changed: compare nothing; its next event brings it back.
            let now = std::fs::symlink_metadata(subject.path).map_err(read)?;
            if FileMeta::of(&now) != meta {
                return Err(read(std::io::Error::other("changed while being read")));
            }
            *local = Some(hash);
        }
        let sink = Mutex::new(Hashing::default());
        match self.api.with_retries(|| self.api.download(id, &sink)).await {
            Ok(_) => {
                let remote = sink.lock().unwrap_or_else(|p| p.into_inner()).hex();
                Ok(local.as_deref() == Some(remote.as_str()))
            }
            Err(ApiError::Cancelled) => Err(SyncError::Cancelled),
            Err(error) => {
                warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, %error, "cannot download a file of the same name to compare it; treating it as other content");
                Ok(false)
            }
        }
    }

    /// The asset ids the records of the subject's target hold (attached, or uploaded and not
    /// yet attached), and those waiting to be deleted: assets that are not free to adopt. Only
    /// the folders that can hold such records are read: the subject's, and any other mapped to
    /// the same target.
    fn claimed(&self, subject: &Subject<'_>) -> Result<HashSet<String>, StoreError> {
        let mut claimed: HashSet<String> = self
            .store
            .pending_deletes()?
            .iter()
            .filter_map(|job| job.asset.id())
            .collect();
        let folders: HashSet<&Path> = self
            .config
            .folders
            .iter()
            .filter(|folder| folder.target.key() == subject.key)
            .map(|folder| folder.path.as_path())
            .chain([subject.folder.path.as_path()])
            .collect();
        for folder in folders {
            for record in self.store.records_under(folder) {
                let (_, record) = record?;
                if record.target == subject.key {
                    claimed.extend(remote_assets(&record).iter().filter_map(Asset::id));
                }
            }
        }
        Ok(claimed)
    }

    fn claim_adoption(&self, id: &str) -> bool {
        self.adopting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
    }

    fn release_adoption(&self, id: &str) {
        self.adopting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub(crate) async fn reject(
        &self,
        subject: &Subject<'_>,
        meta: FileMeta,
        reason: String,
        record: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        let state = FileState::Rejected {
            reason: reason.clone(),
        };
        if self.record_once(subject, meta, state, record).await? {
            warn!(folder = %subject.folder.path.display(), file = %logging::exact(subject.path), %reason, "skipped; not retried until the file changes");
        }
        Ok(())
    }

    /// Records this version of the file in `state`; false when it already was (nothing to
    /// write or say again).
    pub(crate) async fn record_once(
        &self,
        subject: &Subject<'_>,
        meta: FileMeta,
        state: FileState,
        record: Option<FileRecord>,
    ) -> Result<bool, SyncError> {
        if record
            .as_ref()
            .is_some_and(|r| r.meta == meta && r.state == state)
        {
            return Ok(false);
        }
        let next = subject.record(meta, state, record.as_ref());
        self.store.put(subject.path, &next).await?;
        Ok(true)
    }

    async fn upload(
        &self,
        subject: &Subject<'_>,
        target: &Resolved,
        meta: FileMeta,
        seen: Identity,
        previous: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        if self.adopt(subject, meta, previous.as_ref()).await? {
            return Ok(());
        }
        let mut record = subject.record(meta, FileState::Uploading, previous.as_ref());
        // An earlier version uploaded but never recorded as attached may be in the field all the
        // same (a stop came between the PUT and its record): this version replaces it as it
        // would an attached one, or, beside another attached version, it goes as an orphan.
        if let Some(FileState::Uploaded { asset }) = previous.as_ref().map(|p| &p.state) {
            match record.attached.as_ref().map(Asset::id) {
                None => record.attached = Some(asset.clone()),
                Some(attached) if attached != asset.id() => {
                    let job = subject.delete_job(asset.clone(), DeleteKind::Orphan);
                    self.store
                        .put_with_deletes(subject.path, &record, std::slice::from_ref(&job))
                        .await?;
                    self.remote_delete(subject, job).await?;
                }
                Some(_) => {}
            }
        }
        let sent = self.send(subject, target, meta, seen, record).await?;
        let Some((mut record, uploaded)) = sent else {
            return Ok(());
        };
        let path = subject.path;
        let asset = uploaded.asset;
        let id = asset.id().unwrap_or_default();
        record.hash = Some(uploaded.hash);
        record.state = FileState::Uploaded {
            asset: asset.clone(),
        };
        record.updated = now_unix();
        if let Err(error) = self.record_sent(path, &record, Some(uploaded.slot)).await {
            warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, %error, "uploaded, but recording the asset failed: unless the record reached the disk all the same, the asset stays in Tallyfy unattached (an orphan) and the file is uploaded again once the state directory can be written");
            return Err(error.into());
        }
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, "uploaded");
        renamed(subject, &record, &file_name(path), &asset);
        if !unchanged(path, &meta) {
            // Sent complete, but it is already out of date: drop that asset, upload again later.
            warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, "file changed during the upload; discarding that copy");
            record.state = FileState::Uploading;
            let job = subject.delete_job(asset, DeleteKind::Orphan);
            self.store
                .put_with_deletes(path, &record, std::slice::from_ref(&job))
                .await?;
            return self.remote_delete(subject, job).await;
        }
        self.attach(subject, record, asset).await
    }

    /// Uploads the settled version `meta` of the file (`seen` as it was found then), with
    /// `record` (its next state) made `Uploading` durably first. `None` when it was not sent
    /// and that is dealt with: recorded as failed, or left for the file's next change.
    pub(crate) async fn send(
        &self,
        subject: &Subject<'_>,
        target: &Resolved,
        meta: FileMeta,
        seen: Identity,
        mut record: FileRecord,
    ) -> Result<Option<(FileRecord, Uploaded<'_>)>, SyncError> {
        let path = subject.path;
        record.state = FileState::Uploading;
        record.attempts += 1;
        // A crash from here on sends the file again: the store never claims an upload it did not see.
        self.store.put(path, &record).await?;
        let file_name = file_name(path);
        info!(
            folder = %subject.folder.path.display(),
            file = %subject.path.display(),
            size = meta.size,
            "{} {}",
            if record.attached.is_some() { "changed; uploading the new version" } else { "uploading" },
            filter::humansize(meta.size)
        );
        let uploading = METRICS.uploading();
        let uploaded = self
            .api
            .with_retries(|| async {
                let file =
                    open_unchanged(subject, seen)
                        .await
                        .map_err(|detail| ApiError::File {
                            path: path.to_path_buf(),
                            detail,
                        })?;
                self.api
                    .upload(path, file, &file_name, meta.size, &target.upload)
                    .await
            })
            .await;
        drop(uploading);
        match uploaded {
            Ok(uploaded) => {
                METRICS.uploaded(true, meta.size);
                Ok(Some((record, uploaded)))
            }
            Err(ApiError::Cancelled) => Err(SyncError::Cancelled),
            Err(ApiError::File { detail, .. }) => {
                if unchanged(path, &meta) {
                    // Unreadable as it stands (permissions, I/O error): wait for it to change.
                    self.fail(subject, record, format!("cannot read the file: {detail}"))
                        .await?;
                    return Ok(None);
                }
                // It changed or vanished under us; its next event brings it back here once settled.
                warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), %detail, "file changed while being uploaded; will upload it once it settles");
                Ok(None)
            }
            Err(error) => {
                METRICS.uploaded(false, 0);
                self.fail(subject, record, error.to_string()).await?;
                Ok(None)
            }
        }
    }

    /// Records what an upload led to while its slot is still held, so at most `api.concurrency`
    /// uploads are ever sent but not recorded (the orphans a crash or a full state disk can
    /// leave). A store that cannot be written holds every request before the slot goes to the
    /// next upload: the daemon holds them too (and releases them once it can write), but only
    /// when its own task hears of it.
    pub(crate) async fn record_sent(
        &self,
        path: &Path,
        record: &FileRecord,
        slot: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<(), StoreError> {
        let recorded = self.store.put(path, record).await;
        if recorded.is_err() && self.store.unwritable().is_some() {
            self.api.hold(UNWRITABLE);
            // The daemon's probe may have found the store writable and released the requests
            // between the check and the hold: a hold nobody will release would stop them all.
            if self.store.unwritable().is_none() {
                self.api.release();
            }
        }
        drop(slot);
        recorded
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
                let job = subject.delete_job(asset, DeleteKind::Orphan);
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
        let deletes: Vec<DeleteJob> = old
            .into_iter()
            .map(|old| subject.delete_job(old, DeleteKind::Replaced))
            .collect();
        self.store.put_with_deletes(path, &record, &deletes).await?;
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, target = %subject.folder.target, "attached");
        for job in deletes {
            self.remote_delete(subject, job).await?;
        }
        Ok(())
    }

    pub(crate) async fn fail(
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
            .map(|asset| subject.delete_job(asset, DeleteKind::Removed))
            .collect();
        self.store.forget(subject.path, &jobs).await?;
        info!(folder = %subject.folder.path.display(), file = %subject.path.display(), "removed locally; deleting it from Tallyfy");
        for job in jobs {
            self.remote_delete(subject, job).await?;
        }
        Ok(())
    }

    pub(crate) async fn remote_delete(
        &self,
        subject: &Subject<'_>,
        job: DeleteJob,
    ) -> Result<(), SyncError> {
        match subject.field.delete(job, &subject.on_its_way).await {
            Err(FieldError::Cancelled) => Err(SyncError::Cancelled),
            // The actor logs a failed delete; the file's own state is settled either way.
            _ => Ok(()),
        }
    }
}

/// Says once per file, at its first upload under the name, that Tallyfy stores it under another
/// name (what the upload answered, else what PHP makes of it): people look for it by that name.
/// WARN, not INFO: the file is synced, but someone may want to rename it, and a control character
/// in a file name is worth a look.
/// The file's name as a string: names that are not UTF-8 are rejected before any upload.
fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_string()
}

fn renamed(subject: &Subject<'_>, record: &FileRecord, local: &str, asset: &Asset) {
    let stored = asset.filename().unwrap_or_else(|| stored_name(local));
    let known = record.attached.as_ref().and_then(Asset::filename);
    if stored == local || known.as_deref() == Some(stored.as_str()) {
        return;
    }
    let why = if stored == stored_name(local) {
        "backslashes and control characters cannot be stored and became _"
    } else {
        "the upload was answered with that name"
    };
    warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), name = %local, stored_as = %stored, "its name in Tallyfy differs ({why}); it is synced under that name");
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
        (FileState::Synced | FileState::Removed, Some(hash)) => {
            Next::CompareContent { record, hash }
        }
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

/// Whether the file on disk is still the version `meta` describes.
pub(crate) fn unchanged(path: &Path, meta: &FileMeta) -> bool {
    FileMeta::read(path).as_ref() == Some(meta)
}

/// Opens the file as `open` does (every time, retries too: a FIFO or a link can be swapped
/// in between two attempts), and checks it is still the version that settled.
async fn open_unchanged(subject: &Subject<'_>, seen: Identity) -> Result<tokio::fs::File, String> {
    let opened = open::file_async(&subject.folder.path, subject.path)
        .await
        .map_err(|error| error.to_string())?;
    if Identity::of(&opened.metadata) != seen {
        return Err("the file was replaced or changed after it settled".into());
    }
    Ok(tokio::fs::File::from_std(opened.file))
}
