//! Waits until files are quiet before they are taken.
//! Receives `Hint`s from the watcher and rescan requests (start-up, overflow, periodic); emits a
//! `Job` for a path once its size and mtime have not changed for the settle time (or once it
//! has stayed gone that long). Owns the candidates still settling, and the folder scans that
//! compare the disk with the store, which cost no request for unchanged files.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::config::{Config, Folder};
use crate::service::Heartbeat;
use crate::store::{FileMeta, FileState, Store};
use crate::watch::Hint;

/// A path for the sync stage to bring in line with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub folder: usize,
    pub path: PathBuf,
}

/// How often every folder is compared with the store even when the watcher saw nothing.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(600);

struct Candidate {
    folder: usize,
    seen: Option<FileMeta>,
    due: Instant,
}

pub struct Settle {
    config: Arc<Config>,
    store: Store,
    candidates: HashMap<PathBuf, Candidate>,
    deadlines: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    heartbeat: Heartbeat,
}

impl Settle {
    pub fn new(config: Arc<Config>, store: Store) -> Settle {
        Settle {
            config,
            store,
            candidates: HashMap::new(),
            deadlines: BinaryHeap::new(),
            heartbeat: Heartbeat::off(),
        }
    }

    /// Beats `heartbeat` for the service watchdog while the loop runs.
    pub fn with_heartbeat(mut self, heartbeat: Heartbeat) -> Settle {
        self.heartbeat = heartbeat;
        self
    }

    pub async fn run(
        mut self,
        mut hints: mpsc::Receiver<Hint>,
        overflow: Arc<AtomicBool>,
        jobs: mpsc::Sender<Job>,
        cancel: CancellationToken,
    ) {
        self.rescan_all().await;
        let mut rescan =
            tokio::time::interval_at(Instant::now() + RESCAN_INTERVAL, RESCAN_INTERVAL);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = self.heartbeat.clone();
        loop {
            heartbeat.beat();
            let next_due = self.deadlines.peek().map(|Reverse((due, _))| *due);
            tokio::select! {
                _ = cancel.cancelled() => return,
                hint = hints.recv() => match hint {
                    Some(Hint::Path(path)) => self.hint(&path).await,
                    Some(Hint::RescanAll) => self.rescan_all().await,
                    None => return,
                },
                _ = rescan.tick() => {
                    debug!("periodic rescan");
                    self.rescan_all().await;
                }
                _ = heartbeat.due() => {}
                _ = sleep_until(next_due) => {
                    for job in self.take_settled() {
                        if heartbeat.during(jobs.send(job)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if overflow.swap(false, Ordering::AcqRel) {
                info!(
                    "the file watcher dropped events (too many at once); rescanning every folder"
                );
                self.rescan_all().await;
            }
        }
    }

    fn folder_of(&self, path: &Path) -> Option<(usize, &Folder)> {
        self.config
            .folders
            .iter()
            .enumerate()
            .find(|(_, folder)| path.starts_with(&folder.path))
    }

    async fn hint(&mut self, path: &Path) {
        let Some((index, folder)) = self.folder_of(path) else {
            return;
        };
        if path == folder.path {
            // The folder itself was touched (replaced, moved, permissions): look at all of it.
            self.rescan(index).await;
            return;
        }
        if !folder.recursive && path.parent() != Some(folder.path.as_path()) {
            return;
        }
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                if folder.recursive {
                    self.scan_into(index, path.to_path_buf()).await;
                }
            }
            Ok(metadata) => {
                self.candidate(index, path.to_path_buf(), Some(FileMeta::of(&metadata)))
            }
            Err(_) => {
                // Gone: a file, or a whole directory with everything the store knows under it.
                self.candidate(index, path.to_path_buf(), None);
                let under: Vec<PathBuf> = self
                    .store
                    .records_under(path)
                    .filter_map(|r| r.ok())
                    .map(|(p, _)| p)
                    .collect();
                for path in under {
                    self.candidate(index, path, None);
                }
            }
        }
    }

    fn candidate(&mut self, folder: usize, path: PathBuf, seen: Option<FileMeta>) {
        let due = Instant::now() + self.config.settle;
        self.candidates
            .insert(path.clone(), Candidate { folder, seen, due });
        self.deadlines.push(Reverse((due, path)));
    }

    /// Pops the candidates whose quiet time is over; those that changed meanwhile wait again.
    fn take_settled(&mut self) -> Vec<Job> {
        let now = Instant::now();
        let mut settled = Vec::new();
        while let Some(Reverse((due, _))) = self.deadlines.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, path))) = self.deadlines.pop() else {
                break;
            };
            let Some(candidate) = self.candidates.get(&path) else {
                continue;
            };
            if candidate.due != due {
                continue; // superseded by a later hint
            }
            let current = std::fs::symlink_metadata(&path)
                .ok()
                .map(|m| FileMeta::of(&m));
            if current == candidate.seen {
                let folder = candidate.folder;
                self.candidates.remove(&path);
                settled.push(Job { folder, path });
            } else {
                let folder = candidate.folder;
                self.candidate(folder, path, current);
            }
        }
        settled
    }

    async fn rescan_all(&mut self) {
        for index in 0..self.config.folders.len() {
            self.rescan(index).await;
        }
    }

    async fn rescan(&mut self, index: usize) {
        let root = self.config.folders[index].path.clone();
        self.scan_into(index, root).await;
    }

    /// Compares a folder (or a directory inside one) with the store and makes candidates of
    /// what differs. Runs on a blocking thread: a folder can hold a hundred thousand files.
    async fn scan_into(&mut self, index: usize, dir: PathBuf) {
        let folder = self.config.folders[index].clone();
        let store = self.store.clone();
        let scan = tokio::task::spawn_blocking(move || scan(&folder, &dir, &store));
        let scanned = self.heartbeat.during(scan).await;
        match scanned {
            Ok(Ok(found)) => {
                for (path, seen) in found {
                    self.candidate(index, path, seen);
                }
            }
            Ok(Err(problem)) => error!(
                folder = %self.config.folders[index].path.display(),
                "{problem}; nothing in this folder is uploaded or deleted until it can be read again"
            ),
            Err(error) => error!(%error, "folder scan stopped unexpectedly"),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// The paths under `dir` that differ from what the store says, with what is on disk now
/// (`None`: in the store but gone from disk).
pub fn scan(
    folder: &Folder,
    dir: &Path,
    store: &Store,
) -> Result<Vec<(PathBuf, Option<FileMeta>)>, String> {
    let mut on_disk = Vec::new();
    walk(dir, folder.recursive, &mut on_disk)
        .map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    let mut seen = HashSet::with_capacity(on_disk.len());
    let mut found = Vec::new();
    for (path, meta) in on_disk {
        let settled = match store.get(&path) {
            Ok(Some(record)) => {
                record.meta == meta
                    && matches!(
                        record.state,
                        FileState::Synced | FileState::Rejected { .. } | FileState::Failed { .. }
                    )
            }
            _ => false,
        };
        if !settled {
            found.push((path.clone(), Some(meta)));
        }
        seen.insert(path);
    }
    for record in store.records_under(dir) {
        let (path, _) = record.map_err(|error| error.to_string())?;
        if !seen.contains(&path) && (folder.recursive || path.parent() == Some(dir)) {
            found.push((path, None));
        }
    }
    Ok(found)
}

/// Lists files (anything but directories) under `dir`, never following symbolic links and never
/// entering hidden directories. An unreadable subdirectory is skipped; an unreadable root is an error.
fn walk(dir: &Path, recursive: bool, out: &mut Vec<(PathBuf, FileMeta)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        let path = entry.path();
        if metadata.is_dir() {
            let hidden = entry.file_name().as_encoded_bytes().first() == Some(&b'.');
            if recursive && !hidden {
                if let Err(error) = walk(&path, true, out) {
                    debug!(dir = %path.display(), %error, "skipping unreadable directory");
                }
            }
            continue;
        }
        out.push((path, FileMeta::of(&metadata)));
    }
    Ok(())
}
