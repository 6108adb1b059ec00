//! Launch folders: every new file starts one process. Receives settled files of folders with a
//! `launch` target from the sync stage; emits an upload for the template's kick-off form, one
//! `POST /runs`, store records and, on request, the file's removal or move out of the inbox.
//! Owns exactly-once launching (the intent is durable before the POST; an interrupted launch is
//! looked up before it is sent again), content dedupe, and the placeholders' values.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tracing::{debug, error, info, warn};

use crate::api::{ApiError, Run};
use crate::config::{After, Dedupe, Folder, Launch, Placeholder};
use crate::field::{LaunchForm, Resolved, MAX_RUN_NAME};
use crate::metrics::METRICS;
use crate::open::{self, Identity};
use crate::store::{
    asset_id, now_unix, Asset, DeleteKind, FileMeta, FileRecord, FileState, RunRef,
};
use crate::sync::{self, Subject, SyncError, Syncer};

/// What a file's launch is called and carries, worked out before anything is sent.
struct Intent {
    name: String,
    summary: String,
    fields: Map<String, Value>,
}

impl Syncer {
    /// Brings one file of a launch folder to its process: start one for a new file, finish an
    /// interrupted launch, take a launched file out of the inbox; nothing for anything else.
    pub(crate) async fn launch(
        &self,
        subject: &Subject<'_>,
        launch: &Launch,
        target: &Resolved,
    ) -> Result<(), SyncError> {
        let path = subject.path;
        let Some(form) = &target.launch else {
            return Ok(());
        };
        let record = self.store.get(path)?;
        // The content is uploaded and the intent recorded: the launch is finished even if the
        // file has gone meanwhile.
        if let Some(record) = record.clone() {
            if let FileState::Launching {
                asset,
                name,
                summary,
            } = record.state.clone()
            {
                let meta = FileMeta::read(path).unwrap_or(record.meta);
                return match intent(subject.folder, launch, form, path, &meta, name, summary) {
                    Ok(intent) => {
                        self.start(subject, launch, record, asset, intent, None)
                            .await
                    }
                    // The config changed under the interrupted launch; the upload stays with it.
                    Err(problem) => self.cannot_launch(subject, record, problem).await,
                };
            }
        }
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return self.launch_vanished(subject, launch, record).await
            }
            Err(error) => {
                return Err(SyncError::Read {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        let meta = FileMeta::of(&metadata);
        if let Err(rejection) = sync::eligible(subject.folder, path, &metadata) {
            return self
                .reject(subject, meta, rejection.to_string(), record)
                .await;
        }
        match &record {
            // Where launched files leave the inbox, another version at the same path is a new
            // file that arrived before the old one's removal was seen.
            Some(record)
                if matches!(record.state, FileState::Launched { .. })
                    && (launch.after == After::Keep || record.meta == meta) =>
            {
                return self
                    .after_launch(subject, launch, record.clone(), meta)
                    .await;
            }
            Some(record) if record.settles(&meta) => return Ok(()),
            _ => {}
        }
        let intent = match intent(
            subject.folder,
            launch,
            form,
            path,
            &meta,
            String::new(),
            String::new(),
        ) {
            Ok(intent) => intent,
            Err(problem) => {
                let failed = subject.record(meta, FileState::Uploading, record.as_ref());
                return self.cannot_launch(subject, failed, problem).await;
            }
        };
        let mut next = subject.record(meta, FileState::Uploading, record.as_ref());
        // Only this version's content counts: what an earlier one at this path sent does not.
        next.hash = None;
        if launch.dedupe == Dedupe::Content {
            let hash = open::hash_async(&subject.folder.path, path)
                .await
                .map_err(|error| SyncError::Read {
                    path: path.to_path_buf(),
                    error: error.into(),
                })?;
            let claim = self
                .store
                .claim_content(&subject.folder.path, &hash, path)?;
            next.hash = Some(hash);
            if let Some(claim) = claim {
                return self.duplicate(subject, next, claim.path, claim.run).await;
            }
        }
        let claimed = next.hash.clone();
        if record.is_none() && meta.ctime_ns < self.started_ns {
            let mut local = next.hash.clone();
            if let Some(run) = self
                .launched_before(subject, launch, &intent, meta, &mut local)
                .await?
            {
                let run = RunRef {
                    id: run.id,
                    name: run.name,
                };
                next.hash = local;
                next.state = FileState::Launched { run: run.clone() };
                let content = claimed
                    .as_deref()
                    .map(|hash| (subject.folder.path.as_path(), hash));
                self.store.put_launched(path, &next, content, &run).await?;
                METRICS.adopted();
                info!(folder = %subject.folder.path.display(), file = %path.display(), run_id = %run.id, "already started process '{}' before its record was lost (same name, same kick-off file); recorded without launching again", crate::text::escaped(&run.name));
                return self.after_launch(subject, launch, next, meta).await;
            }
        }
        let seen = Identity::of(&metadata);
        let sent = self.send(subject, target, meta, seen, next).await?;
        let Some((mut record, uploaded)) = sent else {
            return self.release(subject, claimed.as_deref()).await;
        };
        let id = uploaded.asset.id().unwrap_or_default();
        let changed = claimed.as_ref().is_some_and(|hash| *hash != uploaded.hash)
            || !sync::unchanged(path, &meta);
        if changed {
            warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), asset_id = %id, "file changed during the upload; discarding that copy and launching once it settles");
            let job = subject.delete_job(uploaded.asset, DeleteKind::Orphan);
            self.store
                .put_with_deletes(path, &record, std::slice::from_ref(&job))
                .await?;
            drop(uploaded.slot);
            self.release(subject, claimed.as_deref()).await?;
            return self.remote_delete(subject, job).await;
        }
        record.hash = Some(uploaded.hash);
        let slot = Some(uploaded.slot);
        self.start(subject, launch, record, uploaded.asset, intent, slot)
            .await
    }

    /// Records the intent, sends the launch (looking the process up first when an earlier
    /// send may have started it), records the process, then applies `after`.
    async fn start(
        &self,
        subject: &Subject<'_>,
        launch: &Launch,
        mut record: FileRecord,
        asset: Asset,
        intent: Intent,
        // The upload's slot, for an upload just sent; `None` when resuming a recorded one.
        slot: Option<tokio::sync::SemaphorePermit<'_>>,
    ) -> Result<(), SyncError> {
        let resumed = slot.is_none();
        let path = subject.path;
        let asset_id = asset.id().unwrap_or_default();
        record.state = FileState::Launching {
            asset: asset.clone(),
            name: intent.name.clone(),
            summary: intent.summary.clone(),
        };
        record.updated = now_unix();
        // Durable before the POST: after a crash the process is looked for, not started again.
        self.record_sent(path, &record, slot).await?;
        if resumed {
            info!(folder = %subject.folder.path.display(), file = %path.display(), name = %intent.name, "finishing a launch interrupted by a stop; looking for its process first");
        }
        let mut prerun = intent.fields;
        prerun.insert(launch.field_id.clone(), Value::Array(vec![asset.0.clone()]));
        let sent = std::sync::atomic::AtomicBool::new(resumed);
        let api = &self.api;
        let outcome = api
            .with_retries(|| async {
                // A send that failed may still have started the process (an answer lost on
                // the way back): look before sending again.
                if sent.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    let runs = api.find_runs(&launch.checklist_id, &intent.name).await?;
                    if let Some(run) = runs.into_iter().find(|run| {
                        started_by(run, launch, &intent.name, &intent.summary, &asset_id)
                    }) {
                        info!(file = %path.display(), run_id = %run.id, "found the process an interrupted launch started");
                        return Ok(run);
                    }
                }
                api.launch_run(&launch.checklist_id, &intent.name, &intent.summary, &prerun)
                    .await
            })
            .await;
        let run = match outcome {
            Ok(run) => run,
            Err(ApiError::Cancelled) => return Err(SyncError::Cancelled),
            Err(error) => {
                METRICS.launched(false);
                let claimed = record
                    .hash
                    .clone()
                    .filter(|_| launch.dedupe == Dedupe::Content);
                let message = error.to_string();
                error!(folder = %subject.folder.path.display(), file = %path.display(), http_status = error.status(), error = %message, "could not start a process; not retried until the file changes");
                record.state = FileState::Failed { error: message };
                record.updated = now_unix();
                // The upload is useless without its process: delete it rather than leave an orphan.
                let job = subject.delete_job(asset, DeleteKind::Orphan);
                self.store
                    .put_with_deletes(path, &record, std::slice::from_ref(&job))
                    .await?;
                self.release(subject, claimed.as_deref()).await?;
                return self.remote_delete(subject, job).await;
            }
        };
        let run = RunRef {
            id: run.id,
            name: if run.name.is_empty() {
                intent.name
            } else {
                run.name
            },
        };
        record.state = FileState::Launched { run: run.clone() };
        record.updated = now_unix();
        let content = match (&record.hash, launch.dedupe) {
            (Some(hash), Dedupe::Content) => Some((subject.folder.path.as_path(), hash.as_str())),
            _ => None,
        };
        self.store
            .put_launched(path, &record, content, &run)
            .await?;
        METRICS.launched(true);
        info!(folder = %subject.folder.path.display(), file = %path.display(), run_id = %run.id, asset_id = %asset_id, "started process '{}'", crate::text::escaped(&run.name));
        let meta = record.meta;
        self.after_launch(subject, launch, record, meta).await
    }

    /// A launched file is a record of its process: it only leaves the inbox, if asked to.
    async fn after_launch(
        &self,
        subject: &Subject<'_>,
        launch: &Launch,
        mut record: FileRecord,
        meta: FileMeta,
    ) -> Result<(), SyncError> {
        let path = subject.path;
        if !path.exists() {
            return Ok(());
        }
        let done = match &launch.after {
            After::Keep => {
                if record.meta != meta {
                    info!(folder = %subject.folder.path.display(), file = %path.display(), "changed after it started its process; that starts nothing");
                    record.meta = meta;
                    self.store.put(path, &record).await?;
                }
                return Ok(());
            }
            After::Delete => open::remove(&subject.folder.path, path)
                .map(|()| "deleted it".to_string())
                .map_err(std::io::Error::from),
            After::Move { to } => {
                let (folder, from, to) =
                    (subject.folder.path.clone(), path.to_path_buf(), to.clone());
                // A copy to another file system takes as long as the file is big.
                tokio::task::spawn_blocking(move || move_into(&folder, &from, &to))
                    .await
                    .unwrap_or_else(|error| Err(std::io::Error::other(error)))
                    .map(|moved| format!("moved it to {}", crate::text::path(&moved)))
            }
        };
        match done {
            Ok(what) => {
                info!(folder = %subject.folder.path.display(), file = %path.display(), "process started; {what}")
            }
            Err(error) => {
                error!(folder = %subject.folder.path.display(), file = %path.display(), %error, "process started, but the file cannot be taken out of the folder (is it writable for the daemon?); tried again at the next scan")
            }
        }
        Ok(())
    }

    /// What the file would launch does not fit the template: failed until the file or the
    /// config changes.
    async fn cannot_launch(
        &self,
        subject: &Subject<'_>,
        mut record: FileRecord,
        problem: String,
    ) -> Result<(), SyncError> {
        error!(folder = %subject.folder.path.display(), file = %subject.path.display(), error = %problem, "cannot start a process for this file; not retried until the file or the config changes");
        record.state = FileState::Failed { error: problem };
        record.updated = now_unix();
        Ok(self.store.put(subject.path, &record).await?)
    }

    async fn duplicate(
        &self,
        subject: &Subject<'_>,
        mut record: FileRecord,
        of: PathBuf,
        run: Option<RunRef>,
    ) -> Result<(), SyncError> {
        match &run {
            Some(run) => {
                info!(folder = %subject.folder.path.display(), file = %subject.path.display(), original = %of.display(), run_id = %run.id, "same content as {}, which already started process '{}'; launching nothing", crate::text::path(&of), crate::text::escaped(&run.name))
            }
            None => {
                info!(folder = %subject.folder.path.display(), file = %subject.path.display(), original = %of.display(), "same content as {}, which is starting a process; launching nothing", crate::text::path(&of))
            }
        }
        record.state = FileState::Duplicate { of, run };
        record.updated = now_unix();
        Ok(self.store.put(subject.path, &record).await?)
    }

    /// Gone locally: nothing happens remotely (a process is a record); the file is forgotten,
    /// and content it claimed without launching is free for another copy.
    async fn launch_vanished(
        &self,
        subject: &Subject<'_>,
        launch: &Launch,
        record: Option<FileRecord>,
    ) -> Result<(), SyncError> {
        let Some(record) = record else { return Ok(()) };
        if let (FileState::Launched { run }, After::Keep) = (&record.state, &launch.after) {
            info!(folder = %subject.folder.path.display(), file = %subject.path.display(), run_id = %run.id, "removed locally; the process it started stays");
        }
        self.store.forget(subject.path, &[]).await?;
        if !matches!(record.state, FileState::Launched { .. }) {
            self.release(subject, record.hash.as_deref()).await?;
        }
        Ok(())
    }

    async fn release(&self, subject: &Subject<'_>, hash: Option<&str>) -> Result<(), SyncError> {
        if let Some(hash) = hash {
            self.store
                .release_content(&subject.folder.path, hash, subject.path)
                .await?;
        }
        Ok(())
    }

    /// The process a file without a record started before its record was lost (a deleted or
    /// damaged state directory): one of the template's processes with the name this file gives,
    /// whose kick-off file field holds the same bytes. One list GET, and a download per
    /// candidate; `None` launches the file as new.
    async fn launched_before(
        &self,
        subject: &Subject<'_>,
        launch: &Launch,
        intent: &Intent,
        meta: FileMeta,
        local: &mut Option<String>,
    ) -> Result<Option<Run>, SyncError> {
        let api = &self.api;
        let runs = match api
            .with_retries(|| api.find_runs(&launch.checklist_id, &intent.name))
            .await
        {
            Ok(runs) => runs,
            Err(ApiError::Cancelled) => return Err(SyncError::Cancelled),
            Err(error) => {
                warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), %error, "cannot look for a process this file may have started before; launching it");
                return Ok(None);
            }
        };
        for run in runs.into_iter().filter(|run| run.name == intent.name) {
            let Some(value) = run.prerun.get(&launch.field_id) else {
                continue;
            };
            for asset in crate::api::into_list(value.clone()) {
                let Some(id) = asset_id(&asset) else {
                    continue;
                };
                match self.compare(subject, meta, &id, local).await {
                    Ok(true) => return Ok(Some(run)),
                    Ok(false) => {}
                    // Changed while being read: its next event brings it back.
                    Err(SyncError::Read { .. }) => return Ok(None),
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(None)
    }
}

/// Whether `run` is the process this launch started: the same name, and the kick-off file
/// field holding this upload (or, where the answer does not show the field, the same summary).
fn started_by(run: &Run, launch: &Launch, name: &str, summary: &str, asset: &str) -> bool {
    if run.name != name {
        return false;
    }
    match run.prerun.get(&launch.field_id) {
        Some(value) => crate::api::into_list(value.clone())
            .iter()
            .any(|item| asset_id(item).as_deref() == Some(asset)),
        None => run.summary == summary,
    }
}

/// Name, summary and kick-off values of a file's process, checked against the template's limits.
/// `name` and `summary` are kept when given (an interrupted launch resumes with what it recorded).
fn intent(
    folder: &Folder,
    launch: &Launch,
    form: &LaunchForm,
    path: &Path,
    meta: &FileMeta,
    name: String,
    summary: String,
) -> Result<Intent, String> {
    let value = |placeholder| placeholder_value(folder, path, meta, placeholder);
    let name = if name.is_empty() {
        launch.name.render(value)
    } else {
        name
    };
    if name.chars().count() > MAX_RUN_NAME {
        return Err(format!(
            "the process name would be {} characters long; Tallyfy takes at most {MAX_RUN_NAME} (launch.name)",
            name.chars().count()
        ));
    }
    if name.trim().is_empty() {
        return Err("the process name would be empty (launch.name)".into());
    }
    let summary = if summary.is_empty() {
        format!("Started by tallyfy-sync from {}", path.display())
    } else {
        summary
    };
    let mut fields = Map::new();
    for (id, template) in &launch.fields {
        let text = template.render(value);
        if let Some((label, limit)) = form.limits.get(id) {
            if text.len() > *limit {
                return Err(format!(
                    "kick-off field {id} ({label:?}) would get {} bytes from launch.fields.{id}; it takes at most {limit}",
                    text.len()
                ));
            }
        }
        fields.insert(id.clone(), Value::String(text));
    }
    Ok(Intent {
        name,
        summary,
        fields,
    })
}

/// What a placeholder stands for, for the file `path` of `folder`.
pub fn placeholder_value(
    folder: &Folder,
    path: &Path,
    meta: &FileMeta,
    placeholder: Placeholder,
) -> String {
    let lossy = |part: Option<&std::ffi::OsStr>| {
        part.map(|part| part.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    match placeholder {
        Placeholder::Filename => lossy(path.file_name()),
        Placeholder::Stem => lossy(path.file_stem()),
        Placeholder::Ext => lossy(path.extension()),
        Placeholder::Parent => lossy(path.parent().and_then(Path::file_name)),
        Placeholder::Relpath => path
            .strip_prefix(&folder.path)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned(),
        Placeholder::Date => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs() as i64);
            let (year, month, day, _, _) = local_time(now);
            format!("{year:04}-{month:02}-{day:02}")
        }
        Placeholder::Mtime => {
            let (year, month, day, hour, minute) =
                local_time(meta.mtime_ns.div_euclid(1_000_000_000));
            format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
        }
    }
}

/// Year, month, day, hour and minute of a Unix time in the local time zone (`TZ`, else
/// /etc/localtime, as the C library decides).
fn local_time(unix: i64) -> (i32, u32, u32, u32, u32) {
    let time = unix as libc::time_t;
    // SAFETY: localtime_r only writes the tm we own; a zeroed tm is a valid value to start from.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&time, &mut tm) }.is_null() {
        return (1970, 1, 1, 0, 0);
    }
    (
        tm.tm_year + 1900,
        (tm.tm_mon + 1) as u32,
        tm.tm_mday as u32,
        tm.tm_hour as u32,
        tm.tm_min as u32,
    )
}

/// Moves a launched file into `to`, keeping its path relative to the folder; a name already
/// taken there gets " (2)", " (3)"... before its extension. Returns where it went.
fn move_into(folder: &Path, path: &Path, to: &Path) -> std::io::Result<PathBuf> {
    let relative = path.strip_prefix(folder).unwrap_or(path);
    let wanted = to.join(relative);
    if let Some(parent) = wanted.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let stem = wanted.file_stem().unwrap_or_default().to_string_lossy();
    let extension = wanted
        .extension()
        .map(|extension| format!(".{}", extension.to_string_lossy()))
        .unwrap_or_default();
    for number in 1..10_000 {
        let candidate = match number {
            1 => wanted.clone(),
            n => wanted.with_file_name(format!("{stem} ({n}){extension}")),
        };
        if candidate.symlink_metadata().is_ok() {
            continue;
        }
        match open::rename(folder, path, &candidate).map_err(std::io::Error::from) {
            Ok(()) => return Ok(candidate),
            // Taken a moment ago: the next number.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) if error.raw_os_error() == Some(libc::EXDEV) => {
                // Another filesystem: copy under a hidden name, so a crash never leaves a
                // partial copy under the real one, then put it in place and remove the original.
                let name = candidate.file_name().unwrap_or_default().to_string_lossy();
                let partial = candidate.with_file_name(format!(".{name}.part"));
                copy(folder, path, &partial)?;
                std::fs::rename(&partial, &candidate)?;
                open::remove(folder, path)?;
                return Ok(candidate);
            }
            Err(error) => return Err(error),
        }
    }
    debug!(file = %path.display(), "every numbered name is taken");
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        format!(
            "{} and its numbered variants are all taken",
            wanted.display()
        ),
    ))
}

/// Copies a launched file as `open` reads it, keeping its permissions as `std::fs::copy` does.
fn copy(folder: &Path, path: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut source = open::file(folder, path)?;
    let mut copy = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(source.metadata.permissions().mode() & 0o7777)
        .open(to)?;
    std::io::copy(&mut source.file, &mut copy)?;
    copy.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_file_keeps_its_subfolder_and_a_taken_name_gets_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, to) = (dir.path().join("in"), dir.path().join("done"));
        std::fs::create_dir_all(folder.join("acme")).unwrap();
        let file = folder.join("acme/2041.pdf");
        std::fs::write(&file, "first").unwrap();
        assert_eq!(
            move_into(&folder, &file, &to).unwrap(),
            to.join("acme/2041.pdf")
        );
        std::fs::write(&file, "second").unwrap();
        assert_eq!(
            move_into(&folder, &file, &to).unwrap(),
            to.join("acme/2041 (2).pdf")
        );
        assert!(!file.exists());
        assert_eq!(std::fs::read(to.join("acme/2041.pdf")).unwrap(), b"first");
        assert_eq!(
            std::fs::read(to.join("acme/2041 (2).pdf")).unwrap(),
            b"second"
        );
    }
}
