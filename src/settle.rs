//! Waits until files are quiet before they are taken, and decides when folders are scanned.
//! Receives `Hint`s from the watcher and scan requests (start-up, overflow, polling, the safety
//! rescan); emits a `Job` for a path once its size and mtime have not changed for the settle
//! time (or once it has stayed gone that long and the `guard` lets the delete go). Owns the
//! candidates still settling, each folder's scan schedule, the watches, and the longer quiet
//! time of files that keep changing.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{After, Config, Folder, Target};
use crate::filter;
use crate::guard::{self, Guard};
use crate::metrics::METRICS;
use crate::service::Heartbeat;
use crate::store::{now_unix, FileMeta, FileRecord, FileState, Store};
use crate::watch::{self, Hint, Watch};

/// A path for the sync stage to bring in line with the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub folder: usize,
    pub path: PathBuf,
}

/// How often a paused folder (gone, unreadable, unmounted) is looked at again.
const PAUSED_RECHECK: Duration = Duration::from_secs(5);
/// How often each folder's root is looked at (one stat): unmounting a share or replacing the
/// folder sends the watcher nothing, and a delete must never be judged on the wrong directory.
const ROOT_CHECK: Duration = Duration::from_secs(5);

/// A file settled again within this long after its last upload was replaced: one that keeps
/// changing (a log, an export written in pieces) waits longer each time.
const CHANGING_WINDOW: Duration = Duration::from_secs(300);
/// The quiet time after a file's first replacement within the window (or `settle`, if longer);
/// it doubles with each further one...
const CHANGING_FIRST: Duration = Duration::from_millis(500);
/// ...up to this (or `settle`, if longer), so that its final version still arrives soon after
/// its last change.
const CHANGING_MOST: Duration = Duration::from_secs(15);
/// Where the daemon keeps the files that keep changing, for `status`.
pub const CHANGING_KEY: &str = "changing";

/// A file that keeps changing, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changing {
    pub path: PathBuf,
    /// Times it was replaced, each within `CHANGING_WINDOW` of the one before.
    pub replaced: u32,
    /// The quiet time it waits before its next upload.
    pub quiet_ms: u64,
    /// Unix seconds after which, unless it changes again, it counts as a file like any other.
    pub until: u64,
}

/// How often a file was replaced in a row, and when last.
struct Churn {
    replaced: u32,
    last: Instant,
    /// Whether the log has said it waits longer than `settle`.
    said: bool,
}

struct Candidate {
    folder: usize,
    seen: Option<FileMeta>,
    due: Instant,
}

pub struct Settle {
    config: Arc<Config>,
    store: Store,
    watch: Watch,
    guard: Guard,
    /// Per folder: `Some(interval)` when it is polled rather than watched.
    polls: Vec<Option<Duration>>,
    /// Per folder: when it is next scanned even if nothing was heard from it.
    next_scan: Vec<Instant>,
    candidates: HashMap<PathBuf, Candidate>,
    deadlines: BinaryHeap<Reverse<(Instant, PathBuf)>>,
    /// Files replaced again within `CHANGING_WINDOW` of their last upload; only those.
    churn: HashMap<PathBuf, Churn>,
    heartbeat: Heartbeat,
}

impl Settle {
    /// Watches each folder, or polls it when configured so, when it is on a network
    /// filesystem, or when the watch fails (the inotify limit, say): a folder is never blind.
    pub fn new(config: Arc<Config>, store: Store, mut watch: Watch) -> Settle {
        let polls = config
            .folders
            .iter()
            .map(|folder| {
                if !folder.path.exists() {
                    // Not there (a share not mounted yet): the guard pauses it, and it is
                    // watched or polled once it appears.
                    return None;
                }
                if let Some((interval, why)) = watch::poll_interval(folder) {
                    info!(folder = %folder.path.display(), "polling every {} because {why}", humantime::format_duration(interval));
                    return Some(interval);
                }
                match watch.add(folder) {
                    Ok(()) => None,
                    Err(problem) => {
                        error!(folder = %folder.path.display(), "cannot watch the folder: {problem}; polling it every {} instead", humantime::format_duration(watch::AUTO_POLL_INTERVAL));
                        Some(watch::AUTO_POLL_INTERVAL)
                    }
                }
            })
            .collect();
        let guard = Guard::new(&config, store.clone());
        let now = Instant::now();
        Settle {
            next_scan: vec![now; config.folders.len()],
            config,
            store,
            watch,
            guard,
            polls,
            candidates: HashMap::new(),
            deadlines: BinaryHeap::new(),
            churn: HashMap::new(),
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
        let started = std::time::Instant::now();
        self.rescan_all().await;
        let gone = self
            .candidates
            .values()
            .filter(|candidate| candidate.seen.is_none())
            .count();
        info!(
            new_or_changed = self.candidates.len() - gone,
            gone,
            "initial scan done in {} ms: {} new or changed files to check and upload, {gone} gone; unchanged files need no request",
            started.elapsed().as_millis(),
            self.candidates.len() - gone
        );
        let mut root_check = tokio::time::interval(ROOT_CHECK);
        root_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let heartbeat = self.heartbeat.clone();
        loop {
            heartbeat.beat();
            let next_due = self.deadlines.peek().map(|Reverse((due, _))| *due);
            let next_scan = self.next_scan.iter().min().copied();
            tokio::select! {
                _ = cancel.cancelled() => return,
                hint = hints.recv() => match hint {
                    Some(Hint::Path(path)) => self.hint(&path).await,
                    Some(Hint::RescanAll) => self.lost_events().await,
                    Some(Hint::Resync) => self.rescan_all().await,
                    None => return,
                },
                _ = sleep_until(next_scan) => {
                    let now = Instant::now();
                    for index in 0..self.next_scan.len() {
                        if self.next_scan[index] <= now {
                            debug!(folder = %self.config.folders[index].path.display(), "scheduled scan");
                            self.rescan(index).await;
                        }
                    }
                }
                _ = root_check.tick() => {
                    self.forget_calmed().await;
                    for index in 0..self.config.folders.len() {
                        let root = &self.config.folders[index].path;
                        let device = std::fs::metadata(root).map(|metadata| metadata.dev()).ok();
                        if !self.guard.is_paused(index) && !self.guard.is_known_device(index, device) {
                            self.rescan(index).await;
                        }
                    }
                }
                _ = heartbeat.due() => {}
                _ = sleep_until(next_due) => {
                    for job in self.take_settled().await {
                        if heartbeat.during(jobs.send(job)).await.is_err() {
                            return;
                        }
                        METRICS.job_queued();
                    }
                }
            }
            if overflow.swap(false, Ordering::AcqRel) {
                self.lost_events().await;
            }
        }
    }

    async fn lost_events(&mut self) {
        info!("the file watcher dropped events (too many at once); rescanning every folder");
        self.rescan_all().await;
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
        if (!folder.recursive && path.parent() != Some(folder.path.as_path()))
            || folder.excludes(path)
            || path
                .parent()
                .is_some_and(|dir| filter::hidden_dir(folder, dir))
        {
            return;
        }
        if path.file_name().is_some_and(filter::is_system_file) {
            passed_over(path);
            return;
        }
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.is_dir() => {
                if folder.recursive && !filter::hidden_dir(folder, path) {
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

    /// Starts (or restarts) a path's quiet time; seeing it again unchanged keeps the clock.
    fn candidate(&mut self, folder: usize, path: PathBuf, seen: Option<FileMeta>) {
        if self
            .candidates
            .get(&path)
            .is_some_and(|candidate| candidate.seen == seen)
        {
            return;
        }
        let due = Instant::now() + self.quiet(&path);
        self.candidates
            .insert(path.clone(), Candidate { folder, seen, due });
        self.deadlines.push(Reverse((due, path)));
    }

    /// Pops the candidates whose quiet time is over; those that changed meanwhile wait again.
    /// Files still there go straight to the queue; gone ones only as far as the guard allows.
    async fn take_settled(&mut self) -> Vec<Job> {
        let now = Instant::now();
        let mut settled = Vec::new();
        let mut gone: HashMap<usize, Vec<PathBuf>> = HashMap::new();
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
            let folder = candidate.folder;
            let current = std::fs::symlink_metadata(&path)
                .ok()
                .map(|m| FileMeta::of(&m));
            let changed = current != candidate.seen;
            self.candidates.remove(&path);
            if changed {
                self.candidate(folder, path, current);
            } else if self.guard.is_paused(folder) {
                // Dropped: the paused folder's next check finds it again.
            } else if current.is_none() {
                gone.entry(folder).or_default().push(path);
            } else if let Some(current) = current {
                self.count_replacement(&path, &current).await;
                settled.push(Job { folder, path });
            }
        }
        for (folder, paths) in gone {
            for path in self.allowed_deletes(folder, paths).await {
                settled.push(Job { folder, path });
            }
        }
        // A first scan of a big archive makes both as large as the archive; once it has
        // settled, that room would stay taken for good.
        if self.candidates.is_empty() {
            self.candidates.shrink_to_fit();
            self.deadlines.shrink_to_fit();
        }
        settled
    }

    /// How long `path` must stay unchanged before it is taken: `settle`, or for a file that
    /// keeps changing, doubled with each replacement in a row, up to `CHANGING_MOST`.
    fn quiet(&self, path: &Path) -> Duration {
        let settle = self.config.settle;
        match self.churn.get(path) {
            Some(churn) if churn.last.elapsed() < CHANGING_WINDOW => {
                let doubled = CHANGING_FIRST.saturating_mul(1 << (churn.replaced - 1).min(16));
                doubled.min(CHANGING_MOST).max(settle)
            }
            _ => settle,
        }
    }

    /// A settled file other than its record says, whose record was brought up to date within
    /// `CHANGING_WINDOW`, is a replacement: it counts towards the file's longer quiet time,
    /// said once in the log when that time first exceeds `settle` and shown by `status` while
    /// it does. A file settled again as it is (a retry, a rescan) is no replacement.
    async fn count_replacement(&mut self, path: &Path, current: &FileMeta) {
        let replaced = matches!(
            self.store.get(path),
            Ok(Some(record)) if matches!(record.state, FileState::Synced | FileState::Uploading | FileState::Uploaded { .. })
                && record.meta != *current
                && now_unix().saturating_sub(record.updated) < CHANGING_WINDOW.as_secs()
        );
        if !replaced {
            if self.churn.remove(path).is_some() {
                self.save_changing().await;
            }
            return;
        }
        let churn = self.churn.entry(path.to_path_buf()).or_insert(Churn {
            replaced: 0,
            last: Instant::now(),
            said: false,
        });
        churn.replaced = churn.replaced.saturating_add(1);
        churn.last = Instant::now();
        let quiet = self.quiet(path);
        let longer = quiet > self.config.settle;
        let say = match self.churn.get_mut(path) {
            Some(churn) if longer && !churn.said => {
                churn.said = true;
                true
            }
            _ => false,
        };
        if say {
            info!(file = %path.display(), quiet = %humantime::format_duration(quiet), "the file keeps changing: replaced again within {} of its last upload; it now waits {} of quiet before each upload, twice as long after each further change (at most {}), until it has been left alone for {}",
                humantime::format_duration(CHANGING_WINDOW),
                humantime::format_duration(quiet),
                humantime::format_duration(CHANGING_MOST.max(self.config.settle)),
                humantime::format_duration(CHANGING_WINDOW));
        }
        self.save_changing().await;
    }

    /// Files left alone for `CHANGING_WINDOW` wait `settle` again.
    async fn forget_calmed(&mut self) {
        let before = self.churn.len();
        self.churn
            .retain(|_, churn| churn.last.elapsed() < CHANGING_WINDOW);
        if self.churn.len() != before {
            self.save_changing().await;
        }
    }

    /// Saves the files that keep changing for `status`: a handful at most, written only when
    /// one starts, changes again or calms down.
    async fn save_changing(&self) {
        let now = now_unix();
        let changing: Vec<Changing> = self
            .churn
            .iter()
            .filter(|(path, _)| self.quiet(path) > self.config.settle)
            .map(|(path, churn)| Changing {
                path: path.clone(),
                replaced: churn.replaced,
                quiet_ms: self.quiet(path).as_millis() as u64,
                until: now
                    + CHANGING_WINDOW
                        .saturating_sub(churn.last.elapsed())
                        .as_secs(),
            })
            .collect();
        let saved = match changing.is_empty() {
            true => {
                self.store
                    .set_meta::<Vec<Changing>>(CHANGING_KEY, None)
                    .await
            }
            false => self.store.set_meta(CHANGING_KEY, Some(&changing)).await,
        };
        if let Err(error) = saved {
            debug!(%error, "cannot save the files that keep changing for status");
        }
    }

    /// The gone files of a folder that may be deleted remotely now: none while the folder is
    /// paused or its deletes are held; with a release, every file the hold kept.
    async fn allowed_deletes(&mut self, index: usize, paths: Vec<PathBuf>) -> Vec<PathBuf> {
        let root = self.config.folders[index].path.clone();
        let scanned = self.scan_folder(index, root).await;
        let device = scanned
            .as_ref()
            .map(|scan| scan.device)
            .map_err(Clone::clone);
        if !self.guard.check_root(index, device).await {
            self.schedule(index);
            return Vec::new();
        }
        let Ok(scan) = scanned else {
            return Vec::new();
        };
        if scan.vanished.is_empty() {
            // Back already (a rename, an atomic save): the sync stage looks at each again.
            return paths;
        }
        if !self
            .guard
            .allow_deletes(index, scan.vanished.len(), scan.synced)
            .await
        {
            return Vec::new();
        }
        let mut allowed: HashSet<PathBuf> = scan.vanished.into_iter().collect();
        allowed.extend(paths);
        allowed.into_iter().collect()
    }

    async fn rescan_all(&mut self) {
        for index in 0..self.config.folders.len() {
            self.rescan(index).await;
        }
    }

    /// Compares a whole folder with the store (first checking that it is the folder it was)
    /// and makes candidates of what differs.
    async fn rescan(&mut self, index: usize) {
        let root = self.config.folders[index].path.clone();
        let scanned = self.scan_folder(index, root.clone()).await;
        let was_paused = self.guard.is_paused(index);
        let device = scanned
            .as_ref()
            .map(|scan| scan.device)
            .map_err(Clone::clone);
        if self.guard.check_root(index, device).await {
            let scanned = if was_paused && self.polls[index].is_none() {
                self.rewatch(index);
                // A file made between the scan above and the new watch is seen by neither:
                // the folder is looked at again now that the watch is in place.
                self.scan_folder(index, root).await
            } else {
                scanned
            };
            if let Ok(scan) = scanned {
                self.add_candidates(index, scan);
            }
        }
        self.schedule(index);
    }

    /// A folder that was removed and came back lost its watch with its old directory.
    fn rewatch(&mut self, index: usize) {
        let folder = &self.config.folders[index];
        // A folder first seen now (not there at start) may be on a network filesystem.
        if let Some((interval, why)) = watch::poll_interval(folder) {
            info!(folder = %folder.path.display(), "polling every {} because {why}", humantime::format_duration(interval));
            self.polls[index] = Some(interval);
            return;
        }
        if let Err(problem) = self.watch.add(folder) {
            warn!(folder = %folder.path.display(), "cannot watch the folder again: {problem}; polling it instead");
            self.polls[index] = Some(watch::AUTO_POLL_INTERVAL);
        }
    }

    fn schedule(&mut self, index: usize) {
        let every = if self.guard.is_paused(index) {
            PAUSED_RECHECK
        } else {
            self.polls[index].map_or(self.config.rescan_interval, |poll| {
                poll.min(self.config.rescan_interval)
            })
        };
        self.next_scan[index] = Instant::now() + every;
    }

    /// A directory that appeared inside a recursive folder: take in what it holds.
    async fn scan_into(&mut self, index: usize, dir: PathBuf) {
        if let Ok(scan) = self.scan_folder(index, dir).await {
            self.add_candidates(index, scan);
        }
    }

    fn add_candidates(&mut self, index: usize, scan: Scan) {
        for (path, seen) in scan.changed {
            self.candidate(index, path, Some(seen));
        }
        for path in scan.vanished {
            self.candidate(index, path, None);
        }
    }

    /// Runs `scan` on a blocking thread: a folder can hold a hundred thousand files.
    async fn scan_folder(&self, index: usize, dir: PathBuf) -> Result<Scan, String> {
        let folder = self.config.folders[index].clone();
        let store = self.store.clone();
        let scan = tokio::task::spawn_blocking(move || scan(&folder, &dir, &store));
        match self.heartbeat.during(scan).await {
            Ok(scanned) => scanned,
            Err(error) => Err(format!("the scan stopped unexpectedly: {error}")),
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// How a directory compares with the store.
#[derive(Debug, Default)]
pub struct Scan {
    /// The filesystem the directory is on.
    pub device: u64,
    /// Files on disk that are new or differ from their record, with what is on disk now.
    pub changed: Vec<(PathBuf, FileMeta)>,
    /// Files the store knows that are gone from disk.
    pub vanished: Vec<PathBuf>,
    /// Files under the directory recorded as synced (gone ones included).
    pub synced: usize,
}

/// Compares `dir` (a folder or a directory inside one) with the store, reading no file.
pub fn scan(folder: &Folder, dir: &Path, store: &Store) -> Result<Scan, String> {
    let unreadable = |error: std::io::Error| guard::unreadable(dir, &error);
    let device = std::fs::metadata(dir).map_err(unreadable)?.dev();
    let mut on_disk = Vec::new();
    walk(folder, dir, &mut on_disk).map_err(unreadable)?;
    let mut scan = Scan {
        device,
        ..Scan::default()
    };
    let mut seen = HashSet::with_capacity(on_disk.len());
    for (path, meta) in on_disk {
        let settled = matches!(
            store.get(&path),
            Ok(Some(record)) if record.settles(&meta) && !leaves_after_launch(folder, &record)
        );
        if !settled {
            scan.changed.push((path.clone(), meta));
        }
        seen.insert(path);
    }
    for record in store.records_under(dir) {
        let (path, record) = record.map_err(|error| error.to_string())?;
        if !folder.recursive && path.parent() != Some(dir) {
            continue;
        }
        if record.state == FileState::Synced {
            scan.synced += 1;
        }
        if !seen.contains(&path) {
            scan.vanished.push(path);
        }
    }
    Ok(scan)
}

/// A launched file still in a folder that deletes or moves launched files: a stop came
/// between its launch and its removal, which the sync stage does now.
fn leaves_after_launch(folder: &Folder, record: &FileRecord) -> bool {
    matches!(record.state, FileState::Launched { .. })
        && matches!(&folder.target, Target::Launch(launch) if launch.after != After::Keep)
}

fn passed_over(path: &Path) {
    debug!(file = %path.display(), "ignored: a file the system or an office program keeps (Thumbs.db, desktop.ini, .DS_Store, ~$ lock file)");
}

/// Lists files (anything but directories) under `dir`, never following symbolic links and never
/// entering hidden directories or where a launch folder moves its launched files. An unreadable
/// subdirectory is skipped; an unreadable root is an error.
pub fn walk(
    folder: &Folder,
    dir: &Path,
    out: &mut Vec<(PathBuf, FileMeta)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let Ok(entry) = entry else { continue };
        let Ok(metadata) = entry.path().symlink_metadata() else {
            continue;
        };
        let path = entry.path();
        if filter::is_system_file(&entry.file_name()) && !metadata.is_dir() {
            passed_over(&path);
            continue;
        }
        if metadata.is_dir() {
            if folder.recursive && !filter::hidden_dir(folder, &path) && !folder.excludes(&path) {
                if let Err(error) = walk(folder, &path, out) {
                    debug!(dir = %path.display(), %error, "skipping unreadable directory");
                }
            }
            continue;
        }
        out.push((path, FileMeta::of(&metadata)));
    }
    Ok(())
}
