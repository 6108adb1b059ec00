//! Another chance for files the API refused for good (400, 403, 404, 422), so that a task
//! reopened or a permission fixed in Tallyfy heals without `tallyfy-sync retry`.
//! Receives the config and the store; every `failed_retry_interval`, for each target that has
//! failed files, sends one verification GET and only when it passes marks those files for
//! another upload and hints the settle stage. Owns that schedule, saved in the store for `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{unix_ms, Client};
use crate::config::{Config, Target};
use crate::field::{self, FieldError};
use crate::store::{FileMeta, FileRecord, FileState, Store, StoreError};
use crate::watch::Hint;

/// Where the next check of a target is saved (Unix milliseconds).
pub fn key(target: &str) -> String {
    format!("recheck:{target}")
}

/// Checks the targets of `config` on their schedule until shutdown.
pub async fn run(
    config: Arc<Config>,
    store: Store,
    api: Arc<Client>,
    hints: mpsc::Sender<Hint>,
    cancel: CancellationToken,
) {
    let interval_ms = config.failed_retry_interval.as_millis() as u64;
    loop {
        let targets = targets(&config, &store);
        let mut schedule = Vec::with_capacity(targets.len());
        for target_key in targets.keys() {
            let saved: Option<u64> = store.meta(&key(target_key)).ok().flatten();
            schedule.push((target_key, saved));
        }
        let due: Vec<&String> = schedule
            .iter()
            .filter(|(_, saved)| saved.is_some_and(|next| next <= unix_ms()))
            .map(|(target_key, _)| *target_key)
            .collect();
        // One pass over the store for every target due, not one each.
        let mut failed_by_target: BTreeMap<String, Vec<(PathBuf, FileRecord)>> = BTreeMap::new();
        if !due.is_empty() {
            match failed(&store, |_, record| due.contains(&&record.target)) {
                Ok(failed) => {
                    for (path, record) in failed {
                        failed_by_target
                            .entry(record.target.clone())
                            .or_default()
                            .push((path, record));
                    }
                }
                Err(error) => warn!(%error, "cannot look for failed files to try again"),
            }
        }
        let mut soonest = u64::MAX;
        for (target_key, saved) in schedule {
            let mut next = saved.unwrap_or(unix_ms() + interval_ms);
            if due.contains(&target_key) {
                let target = &targets[target_key];
                let files = failed_by_target.remove(target_key).unwrap_or_default();
                let checked = tokio::select! {
                    _ = cancel.cancelled() => return,
                    checked = check(&store, &api, target, files, &hints) => checked,
                };
                if let Err(error) = checked {
                    warn!(target = %target, %error, "cannot mark failed files to try again");
                }
                next = unix_ms() + interval_ms;
            }
            if saved != Some(next) {
                if let Err(error) = store.set_meta(&key(target_key), Some(&next)).await {
                    warn!(target = %targets[target_key], %error, "cannot save when failed files are tried again");
                }
            }
            soonest = soonest.min(next);
        }
        let wait = Duration::from_millis(soonest.saturating_sub(unix_ms()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The targets that may hold failed files: the folders', and the tasks route folders sent
/// files to (their records name the task, not the folder's target).
fn targets(config: &Config, store: &Store) -> BTreeMap<String, Target> {
    let mut targets: BTreeMap<String, Target> = config
        .folders
        .iter()
        .map(|folder| (folder.target.key(), folder.target.clone()))
        .collect();
    for folder in &config.folders {
        if !matches!(folder.target, Target::Route(_)) {
            continue;
        }
        for (_, record) in store.records_under(&folder.path).filter_map(Result::ok) {
            if !matches!(record.state, FileState::Failed { .. }) {
                continue;
            }
            if let Some(task) = Target::of_task_key(&record.target) {
                targets.entry(record.target).or_insert(task);
            }
        }
    }
    targets
}

/// One GET of the target decides whether its failed files get another try.
async fn check(
    store: &Store,
    api: &Client,
    target: &Target,
    failed: Vec<(PathBuf, FileRecord)>,
    hints: &mpsc::Sender<Hint>,
) -> Result<(), StoreError> {
    if failed.is_empty() {
        return Ok(());
    }
    match field::verify(target, api).await {
        Ok(_) => {
            info!(target = %target, files = failed.len(), "the target checks out; trying the files it refused once more");
            for path in retry(store, failed).await? {
                let _ = hints.send(Hint::Path(path)).await;
            }
        }
        Err(FieldError::Cancelled) => {}
        Err(error) => {
            info!(target = %target, files = failed.len(), %error, "the target still refuses files; its failed files wait for the next check")
        }
    }
    Ok(())
}

/// Marks every failed file to be uploaded again; the next scan takes them. Returns how many.
pub async fn retry_failed(store: &Store) -> Result<usize, StoreError> {
    let failed = failed(store, |_, _| true)?;
    Ok(retry(store, failed).await?.len())
}

/// What `retry PATH` did with the files the store knows at or under PATH.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Retried {
    /// Checked against their field at their next turn and sent if missing there.
    pub queued: usize,
    /// Launch folders: files that started a process are never sent twice.
    pub launched: usize,
    /// Gone locally: nothing to send.
    pub gone: usize,
}

/// `retry PATH`: makes every file the store knows at or under `path` be in Tallyfy, whatever
/// its state. A file unchanged since it synced (or since it was removed in Tallyfy) forgets
/// its asset, so that its next turn looks for it in the field, adopts it when it is there with
/// the same content, and uploads it when it is not; a failed or rejected file is tried again.
/// One read of the records under `path`.
pub async fn retry_path(store: &Store, path: &Path) -> Result<Retried, StoreError> {
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut found: Vec<(PathBuf, FileRecord)> = store
        .get(&wanted)?
        .map(|record| (wanted.clone(), record))
        .into_iter()
        .collect();
    for record in store.records_under(&wanted) {
        found.push(record?);
    }
    let mut retried = Retried::default();
    for (file, mut record) in found {
        let on_disk = FileMeta::read(&file);
        match record.state {
            FileState::Launched { .. } | FileState::Duplicate { .. } => {
                retried.launched += 1;
                continue;
            }
            _ if on_disk.is_none() => {
                retried.gone += 1;
                continue;
            }
            // On their way already: the next scan takes them.
            FileState::Uploading
            | FileState::Uploaded { .. }
            | FileState::Launching { .. }
            | FileState::Waiting { .. } => {}
            FileState::Synced | FileState::Removed => {
                // Changed since: its next upload replaces the asset it holds, as usual.
                if on_disk == Some(record.meta) {
                    record.attached = None;
                }
                record.state = FileState::Uploading;
                record.attempts = 0;
                store.put(&file, &record).await?;
            }
            FileState::Rejected { .. } | FileState::Failed { .. } => {
                record.state = FileState::Uploading;
                record.attempts = 0;
                store.put(&file, &record).await?;
            }
        }
        retried.queued += 1;
    }
    Ok(retried)
}

fn failed(
    store: &Store,
    wanted: impl Fn(&Path, &FileRecord) -> bool,
) -> Result<Vec<(PathBuf, FileRecord)>, StoreError> {
    let mut failed = Vec::new();
    for record in store.records() {
        let (file, record) = record?;
        if matches!(record.state, FileState::Failed { .. }) && wanted(&file, &record) {
            failed.push((file, record));
        }
    }
    Ok(failed)
}

async fn retry(
    store: &Store,
    failed: Vec<(PathBuf, FileRecord)>,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut paths = Vec::with_capacity(failed.len());
    for (file, mut record) in failed {
        record.state = FileState::Uploading;
        record.attempts = 0;
        store.put(&file, &record).await?;
        paths.push(file);
    }
    Ok(paths)
}
