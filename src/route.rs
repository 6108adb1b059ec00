//! Route folders: each subfolder stands for one active process of a template. Receives the
//! files of route folders from the sync stage; resolves each to the task of its process whose
//! step holds the capture and hands it to the task path (one field actor per task), or records
//! why it waits. Owns the cache of active processes and their capture tasks (read again on a
//! miss at most every few seconds, and every few minutes), and `create_folders`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{ApiError, Client, Run};
use crate::config::{Config, Folder, Route, RouteBy, Target};
use crate::field::{FieldHandle, Removals};
use crate::store::{DeleteJob, DeleteKind, FileMeta, FileRecord, FileState, Store};
use crate::sync::{Subject, SyncError, Syncer};
use crate::watch::Hint;

/// Why a file directly in a route folder waits.
pub const IN_ROOT: &str = "directly in the route folder; put it into the subfolder of its process";
/// The soonest the processes are read again for a file that names none of them; while such
/// files wait, the wait doubles up to the folder's `refresh_interval`.
pub const MISS_REFRESH: Duration = Duration::from_secs(5);
/// How often the refresher looks whether a folder is due (no request unless it is).
const TICK: Duration = Duration::from_secs(1);
/// Longest subfolder name made from a process name, in bytes (file systems take 255).
const MAX_FOLDER_NAME: usize = 240;

/// An active process as a route folder sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Process {
    pub id: String,
    pub name: String,
    /// Its task whose step holds the capture.
    pub capture: Capture,
}

/// A process's task that holds the capture, read once, when a file first needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Capture {
    Unread,
    /// The process has no task with the capture field.
    Missing,
    Task(CaptureTask),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CaptureTask {
    pub id: String,
    pub step_id: String,
    pub checklist_id: String,
}

impl CaptureTask {
    /// The task target the files of process `run_id` go to.
    pub fn target(&self, run_id: &str, route: &Route) -> Target {
        Target::Task {
            run_id: run_id.to_string(),
            task_id: self.id.clone(),
            capture_id: route.capture_id.clone(),
            step_id: Some(self.step_id.clone()),
            checklist_id: Some(self.checklist_id.clone()),
        }
    }
}

/// Where a subfolder's files go.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Task(Process, CaptureTask),
    /// Not now, maybe later: the reason.
    Wait(String),
    /// Never: the process ended.
    Ended(String),
}

/// One route folder's view of its template's processes.
struct Cache {
    active: Vec<Process>,
    /// Processes seen active that are no longer, with their status, by id.
    ended: HashMap<String, (Process, String)>,
    /// Processes that files' records name, read once since the start to learn whether they
    /// ended (after a restart nothing else remembers a process that completed meanwhile).
    recalled: HashSet<String>,
    refreshed: Option<Instant>,
    /// When the refresher reads the processes next.
    due: Instant,
    /// The refresher's wait while files wait for a process.
    backoff: Duration,
}

pub struct Router {
    config: Arc<Config>,
    api: Arc<Client>,
    store: Store,
    cancel: CancellationToken,
    /// Per folder (config order): the cache of a route folder, `None` for other folders.
    caches: Vec<Option<tokio::sync::Mutex<Cache>>>,
    /// One actor per target key: those of the folders, and one per task a file was routed to.
    actors: Mutex<HashMap<String, FieldHandle>>,
    actor_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where a task's actor sends files removed in Tallyfy that are to be uploaded again.
    recheck: mpsc::UnboundedSender<PathBuf>,
}

impl Router {
    pub fn new(
        config: Arc<Config>,
        api: Arc<Client>,
        store: Store,
        cancel: CancellationToken,
        recheck: mpsc::UnboundedSender<PathBuf>,
        // The actors of the folders' own targets: a task folder and a route folder whose
        // process resolves to the same task share one actor, so their writes never race.
        actors: HashMap<String, FieldHandle>,
    ) -> Router {
        let now = Instant::now();
        let caches = config
            .folders
            .iter()
            .map(|folder| {
                matches!(folder.target, Target::Route(_)).then(|| {
                    tokio::sync::Mutex::new(Cache {
                        active: Vec::new(),
                        ended: HashMap::new(),
                        recalled: HashSet::new(),
                        refreshed: None,
                        due: now,
                        backoff: MISS_REFRESH,
                    })
                })
            })
            .collect();
        Router {
            config,
            api,
            store,
            cancel,
            caches,
            actors: Mutex::new(actors),
            actor_tasks: Mutex::new(Vec::new()),
            recheck,
        }
    }

    /// The field actor of a task, started on first use; it verifies the task before its
    /// first write.
    pub fn actor(&self, target: &Target) -> FieldHandle {
        let mut actors = self.actors.lock().unwrap_or_else(|e| e.into_inner());
        actors
            .entry(target.key())
            .or_insert_with(|| {
                // Any route folder's records may name this task: each keeps its remote_removed.
                let removals = Removals {
                    folders: self
                        .config
                        .folders
                        .iter()
                        .filter(|folder| matches!(folder.target, Target::Route(_)))
                        .map(|folder| (folder.path.clone(), folder.remote_removed))
                        .collect(),
                    every: self.config.rescan_interval,
                    recheck: self.recheck.clone(),
                };
                let (handle, task) = FieldHandle::spawn(
                    target.clone(),
                    self.api.clone(),
                    self.store.clone(),
                    removals,
                    self.config.attach_delay,
                    self.cancel.clone(),
                );
                self.actor_tasks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task);
                handle
            })
            .clone()
    }

    /// The actor for a task key a route folder's record or pending delete names.
    pub fn actor_for_key(&self, key: &str) -> Option<FieldHandle> {
        let target = Target::of_task_key(key)?;
        Some(self.actor(&target))
    }

    /// The actor for a delete left pending in a route folder: the task its file was in.
    pub fn actor_for_delete(&self, job: &DeleteJob) -> Option<FieldHandle> {
        let routed =
            self.config.folders.iter().any(|folder| {
                folder.path == job.folder && matches!(folder.target, Target::Route(_))
            });
        routed.then(|| self.actor_for_key(&job.target))?
    }

    /// The actors' tasks, for the pipeline to end at stop.
    pub fn take_actor_tasks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut *self.actor_tasks.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where files of subfolder `name` of route folder `index` go. Reads the processes when
    /// the cache is stale, or on a miss when it was not read in the last `MISS_REFRESH`.
    pub async fn resolve(
        &self,
        index: usize,
        route: &Route,
        name: &str,
    ) -> Result<Resolution, ApiError> {
        let Some(Some(cache)) = self.caches.get(index) else {
            return Ok(Resolution::Wait("not a route folder".into()));
        };
        let mut cache = cache.lock().await;
        let stale = cache
            .refreshed
            .is_none_or(|at| at.elapsed() >= route.refresh_interval);
        if stale {
            self.refresh(index, route, &mut cache).await?;
        }
        let mut found = self.lookup_reading(route, &mut cache, name).await?;
        if matches!(found, Resolution::Task(..)) {
            return Ok(found);
        }
        if cache
            .refreshed
            .is_none_or(|at| at.elapsed() >= MISS_REFRESH)
        {
            self.refresh(index, route, &mut cache).await?;
            found = self.lookup_reading(route, &mut cache, name).await?;
        } else {
            // Read again soon: the refresher brings the file back when its process appears.
            cache.backoff = MISS_REFRESH;
            cache.due = cache.due.min(Instant::now() + MISS_REFRESH);
        }
        if matches!(found, Resolution::Wait(_)) && self.recall(index, &mut cache, name).await? {
            found = lookup(&cache.active, &cache.ended, route, name);
        }
        Ok(found)
    }

    /// Learns whether the processes that the records of subfolder `name` name have ended:
    /// each one not active is read once since the start. True when one has.
    async fn recall(&self, index: usize, cache: &mut Cache, name: &str) -> Result<bool, ApiError> {
        let folder = &self.config.folders[index];
        let mut unknown = HashSet::new();
        for (_, record) in self
            .store
            .records_under(&folder.path.join(name))
            .filter_map(Result::ok)
        {
            if let Some(Target::Task { run_id, .. }) = Target::of_task_key(&record.target) {
                let known = cache.recalled.contains(&run_id)
                    || cache.ended.contains_key(&run_id)
                    || cache.active.iter().any(|process| process.id == run_id);
                if !known {
                    unknown.insert(run_id);
                }
            }
        }
        let mut learned = false;
        for run_id in unknown {
            cache.recalled.insert(run_id.clone());
            let (run_name, status) = match self.api.with_retries(|| self.api.get_run(&run_id)).await
            {
                Ok(run) if is_active(&run) => continue,
                Ok(run) => (run.name, run.status),
                Err(ApiError::Cancelled) => return Err(ApiError::Cancelled),
                Err(error) if error.status() == Some(404) => (name.to_string(), "deleted".into()),
                Err(error) => {
                    debug!(run_id = %run_id, %error, "cannot read a process a file went to");
                    continue;
                }
            };
            info!(folder = %folder.path.display(), run_id = %run_id, status = %status, "process '{}' is no longer active; files for it are not uploaded", crate::text::escaped(&run_name));
            let process = Process {
                id: run_id.clone(),
                name: run_name,
                capture: Capture::Missing,
            };
            cache.ended.insert(run_id, (process, status));
            learned = true;
        }
        Ok(learned)
    }

    /// `lookup`, reading the tasks of the process found when they were not read before.
    async fn lookup_reading(
        &self,
        route: &Route,
        cache: &mut Cache,
        name: &str,
    ) -> Result<Resolution, ApiError> {
        let mut unread = cache
            .active
            .iter_mut()
            .filter(|process| stands_for(route, name, process));
        if let (Some(process), None) = (unread.next(), unread.next()) {
            if process.capture == Capture::Unread {
                process.capture = read_capture(&self.api, &process.id, route).await?;
            }
        }
        Ok(lookup(&cache.active, &cache.ended, route, name))
    }

    /// Reads the active processes; a process no
    /// longer active is looked up once to learn its status. Returns whether anything changed.
    async fn refresh(
        &self,
        index: usize,
        route: &Route,
        cache: &mut Cache,
    ) -> Result<bool, ApiError> {
        let folder = &self.config.folders[index];
        let api = &self.api;
        cache.refreshed = Some(Instant::now());
        let runs = api
            .with_retries(|| api.active_runs(&route.checklist_id))
            .await?;
        let known: HashMap<String, Process> = cache
            .active
            .drain(..)
            .map(|process| (process.id.clone(), process))
            .collect();
        let mut changed = false;
        let mut active = Vec::with_capacity(runs.len());
        for run in runs.iter().filter(|run| is_active(run)) {
            let process = match known.get(&run.id) {
                Some(process) if process.name == run.name => process.clone(),
                Some(process) => {
                    changed = true;
                    Process {
                        name: run.name.clone(),
                        ..process.clone()
                    }
                }
                None => {
                    changed = true;
                    let process = Process {
                        id: run.id.clone(),
                        name: run.name.clone(),
                        capture: Capture::Unread,
                    };
                    info!(folder = %folder.path.display(), run_id = %run.id, "active process '{}' found; its subfolder is {}", crate::text::escaped(&run.name), crate::text::escaped(&folder_name(&process, &runs_named(&runs, &run.name), route.by)));
                    process
                }
            };
            active.push(process);
        }
        let still: HashSet<&str> = active.iter().map(|process| process.id.as_str()).collect();
        for (id, process) in known {
            if still.contains(id.as_str()) {
                continue;
            }
            changed = true;
            let status = match api.with_retries(|| api.get_run(&id)).await {
                Ok(run) if !run.status.is_empty() => run.status,
                Ok(_) => "no longer active".to_string(),
                Err(ApiError::Cancelled) => return Err(ApiError::Cancelled),
                Err(error) if error.status() == Some(404) => "deleted".to_string(),
                Err(error) => {
                    debug!(run_id = %id, %error, "cannot read a process that left the active list");
                    "no longer active".to_string()
                }
            };
            info!(folder = %folder.path.display(), run_id = %id, status = %status, "process '{}' is no longer active; files for it are not uploaded", crate::text::escaped(&process.name));
            cache.ended.insert(id, (process, status));
        }
        for process in &active {
            cache.ended.remove(&process.id);
        }
        cache.active = active;
        Ok(changed)
    }

    /// Why files for process `run_id` can no longer go, if it ended: the processes are read
    /// again first, waiting out `MISS_REFRESH` since the last read.
    pub async fn ended(
        &self,
        index: usize,
        route: &Route,
        run_id: &str,
    ) -> Result<Option<String>, ApiError> {
        let Some(Some(cache)) = self.caches.get(index) else {
            return Ok(None);
        };
        let next = cache.lock().await.refreshed.map(|at| at + MISS_REFRESH);
        if let Some(next) = next {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        let mut cache = cache.lock().await;
        if cache
            .refreshed
            .is_none_or(|at| at.elapsed() >= MISS_REFRESH)
        {
            self.refresh(index, route, &mut cache).await?;
        }
        Ok(cache
            .ended
            .get(run_id)
            .map(|(process, status)| ended_reason(process, status)))
    }

    /// Every `TICK`, reads the processes of each verified route folder that is due, creates
    /// their subfolders when asked to, and brings back the files whose fate that changed.
    pub async fn run(
        self: Arc<Self>,
        verified: Vec<FieldHandle>,
        hints: mpsc::Sender<Hint>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (index, folder) in self.config.folders.iter().enumerate() {
                let (Target::Route(route), Some(Some(cache))) =
                    (&folder.target, self.caches.get(index))
                else {
                    continue;
                };
                if !matches!(verified[index].ready().now_or_never(), Some(Some(_))) {
                    continue;
                }
                let changed = {
                    let mut cache = cache.lock().await;
                    if cache.due > Instant::now() {
                        continue;
                    }
                    let changed = tokio::select! {
                        _ = cancel.cancelled() => return,
                        changed = self.refresh(index, route, &mut cache) => changed,
                    };
                    let changed = match changed {
                        Ok(changed) => changed,
                        Err(ApiError::Cancelled) => return,
                        Err(error) => {
                            warn!(folder = %folder.path.display(), %error, "cannot list the template's active processes; trying again later");
                            false
                        }
                    };
                    if route.create_folders {
                        create_folders(folder, route, &cache.active);
                    }
                    // While files wait for a process, look again sooner.
                    if self.waiting_files(folder).is_empty() {
                        cache.backoff = MISS_REFRESH;
                        cache.due = Instant::now() + route.refresh_interval;
                    } else {
                        cache.due = Instant::now() + cache.backoff;
                        cache.backoff = (cache.backoff * 2).min(route.refresh_interval);
                    }
                    changed
                };
                if changed {
                    for path in self.waiting_files(folder) {
                        if hints.send(Hint::Path(path)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Files of a route folder not yet in any process: waiting, or on their way.
    fn waiting_files(&self, folder: &Folder) -> Vec<PathBuf> {
        self.store
            .records_under(&folder.path)
            .filter_map(Result::ok)
            .filter(|(_, record)| {
                matches!(
                    record.state,
                    FileState::Waiting { .. } | FileState::Uploading | FileState::Uploaded { .. }
                )
            })
            .map(|(path, _)| path)
            .collect()
    }
}

/// A process's task that holds the capture, from the process's tasks.
async fn read_capture(api: &Client, run_id: &str, route: &Route) -> Result<Capture, ApiError> {
    let tasks = api.with_retries(|| api.run_tasks(run_id)).await?;
    let task = tasks
        .into_iter()
        .find(|task| task.fields.iter().any(|field| field.id == route.capture_id))
        .and_then(|task| {
            Some(CaptureTask {
                id: Some(task.id).filter(|id| !id.is_empty())?,
                step_id: task.step_id?,
                checklist_id: task.checklist_id.unwrap_or(route.checklist_id.clone()),
            })
        });
    Ok(task.map_or(Capture::Missing, Capture::Task))
}

/// The active processes of a route's template, read now (`check --online`, `run --dry-run`).
pub async fn active_processes(api: &Client, route: &Route) -> Result<Vec<Process>, ApiError> {
    let runs = api
        .with_retries(|| api.active_runs(&route.checklist_id))
        .await?;
    let mut processes = Vec::with_capacity(runs.len());
    for run in runs.iter().filter(|run| is_active(run)) {
        processes.push(Process {
            id: run.id.clone(),
            name: run.name.clone(),
            capture: read_capture(api, &run.id, route).await?,
        });
    }
    Ok(processes)
}

/// Listed as active (an answer without a status was asked for active ones only).
fn is_active(run: &Run) -> bool {
    run.status.is_empty() || run.status == "active"
}

/// An active process and the subfolder that stands for it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mapped {
    pub run_id: String,
    pub name: String,
    pub subfolder: String,
    /// Why files for it cannot go, when they cannot.
    pub problem: Option<String>,
}

pub fn mapped(active: &[Process], by: RouteBy) -> Vec<Mapped> {
    active
        .iter()
        .map(|process| Mapped {
            run_id: process.id.clone(),
            name: process.name.clone(),
            subfolder: folder_name(process, &same_folder(active, process), by),
            problem: (process.capture == Capture::Missing)
                .then(|| "it has no task with the capture field".to_string()),
        })
        .collect()
}

/// How many active processes share `name`.
fn runs_named(runs: &[Run], name: &str) -> usize {
    runs.iter()
        .filter(|run| safe_name(&run.name) == safe_name(name))
        .count()
}

fn same_folder(active: &[Process], process: &Process) -> usize {
    active
        .iter()
        .filter(|other| safe_name(&other.name) == safe_name(&process.name))
        .count()
}

/// The subfolder standing for a process: its id, or its name made safe for file systems and
/// shares, with the id appended when `sharing` processes (this one included) have that name.
fn folder_name(process: &Process, sharing: &usize, by: RouteBy) -> String {
    match by {
        RouteBy::Id => process.id.clone(),
        RouteBy::Name if *sharing > 1 => format!("{} ({})", safe_name(&process.name), process.id),
        RouteBy::Name => safe_name(&process.name),
    }
}

/// A process name as a directory name: no separators, control characters or characters
/// Windows shares refuse, no leading dot (hidden files are skipped), no trailing dots or
/// spaces, at most `MAX_FOLDER_NAME` bytes.
pub fn safe_name(name: &str) -> String {
    let mut safe: String = name
        .trim()
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if safe.len() > MAX_FOLDER_NAME {
        let mut end = MAX_FOLDER_NAME;
        while !safe.is_char_boundary(end) {
            end -= 1;
        }
        safe.truncate(end);
    }
    let safe = safe.trim_end_matches(['.', ' ']);
    let safe = match safe.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => safe.to_string(),
    };
    if safe.is_empty() {
        "_".to_string()
    } else {
        safe
    }
}

/// Where subfolder `name`'s files go, by the processes known to be active and those seen end.
/// Whether subfolder `name` stands for `process`: its id, or its name made safe (with its id
/// appended, which picks one of several processes with that name).
fn stands_for(route: &Route, name: &str, process: &Process) -> bool {
    match route.by {
        RouteBy::Id => process.id == name,
        RouteBy::Name => {
            let safe = safe_name(&process.name);
            safe == name || format!("{safe} ({})", process.id) == name
        }
    }
}

pub fn lookup(
    active: &[Process],
    ended: &HashMap<String, (Process, String)>,
    route: &Route,
    name: &str,
) -> Resolution {
    let named = |process: &Process| stands_for(route, name, process);
    let what = match route.by {
        RouteBy::Id => format!("with id '{}'", crate::text::escaped(name)),
        RouteBy::Name => format!("named '{}'", crate::text::escaped(name)),
    };
    let found: Vec<&Process> = active.iter().filter(|p| named(p)).collect();
    match found.as_slice() {
        [process] => match &process.capture {
            Capture::Task(task) => Resolution::Task((*process).clone(), task.clone()),
            Capture::Unread => Resolution::Wait(format!(
                "the tasks of process '{}' ({}) are not read yet",
                crate::text::escaped(&process.name),
                process.id
            )),
            Capture::Missing => Resolution::Wait(format!(
                "process '{}' ({}) has no task with field {}",
                crate::text::escaped(&process.name),
                process.id,
                route.capture_id
            )),
        },
        [] => match ended.values().find(|(process, _)| named(process)) {
            Some((process, status)) => Resolution::Ended(ended_reason(process, status)),
            None => Resolution::Wait(format!("no active process {what}")),
        },
        several => {
            let ids: Vec<&str> = several.iter().map(|p| p.id.as_str()).collect();
            Resolution::Wait(format!(
                "{} active processes are {what} ({}); name the subfolder '{} (ID)' for one of them",
                several.len(),
                ids.join(", "),
                crate::text::escaped(name)
            ))
        }
    }
}

fn ended_reason(process: &Process, status: &str) -> String {
    format!(
        "process '{}' ({}) is {status}; its files are no longer uploaded",
        crate::text::escaped(&process.name),
        process.id
    )
}

/// Creates a subfolder for each active process that has none; removes nothing.
fn create_folders(folder: &Folder, route: &Route, active: &[Process]) {
    if !folder.path.is_dir() {
        // Not there (a share not mounted): the folder itself is never created here.
        return;
    }
    for process in active {
        let name = folder_name(process, &same_folder(active, process), route.by);
        let path = folder.path.join(&name);
        if path.exists() {
            continue;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {
                info!(folder = %folder.path.display(), run_id = %process.id, "created subfolder {} for process '{}'", crate::text::escaped(&name), crate::text::escaped(&process.name))
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                error!(folder = %folder.path.display(), run_id = %process.id, %error, "cannot create the subfolder {} for process '{}' (is the folder writable for the daemon?); trying again at the next refresh", crate::text::escaped(&name), crate::text::escaped(&process.name))
            }
        }
    }
}

/// A file that goes to no task now; its record keeps naming the task its copies are in.
fn unrouted<'a>(
    folder: &'a Folder,
    field: &'a FieldHandle,
    path: &'a Path,
    record: Option<&FileRecord>,
) -> Subject<'a> {
    let subject = Subject::new(folder, field, path);
    match record {
        Some(record) => subject.bound_to(record.target.clone()),
        None => subject,
    }
}

/// The subfolder of a route folder a file is in; `None` directly in the folder.
pub fn subfolder<'a>(folder: &Path, path: &'a Path) -> Option<&'a str> {
    let relative = path.strip_prefix(folder).ok()?;
    let mut components = relative.components();
    let first = components.next()?;
    components.next()?;
    first.as_os_str().to_str()
}

impl Syncer {
    /// Brings one file of a route folder to the task of its subfolder's process, by the task
    /// path; records why when it cannot go (yet).
    pub(crate) async fn route(
        &self,
        index: usize,
        folder: &Folder,
        route: &Route,
        path: &Path,
    ) -> Result<(), SyncError> {
        let record = self.store.get(path)?;
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // Gone: its copies are in the task its record names, whatever runs now.
                let Some(record) = record else { return Ok(()) };
                let Some(field) = self.router.actor_for_key(&record.target) else {
                    return Ok(self.store.forget(path, &[]).await?);
                };
                let resolved = match field.verdict().await {
                    None => return Err(SyncError::Cancelled),
                    Some(Ok(resolved)) => resolved,
                    Some(Err(why)) => {
                        info!(folder = %folder.path.display(), file = %path.display(), %why, "removed locally; its task can no longer be changed, so the copy in Tallyfy stays");
                        return Ok(self.store.forget(path, &[]).await?);
                    }
                };
                let subject = Subject::new(folder, &field, path).bound_to(record.target);
                return self.reconcile(&subject, &resolved).await;
            }
            Err(error) => {
                return Err(SyncError::Read {
                    path: path.to_path_buf(),
                    error,
                })
            }
        };
        let meta = FileMeta::of(&metadata);
        let resolution = match subfolder(&folder.path, path) {
            None => Resolution::Wait(IN_ROOT.into()),
            Some(name) => match self.router.resolve(index, route, name).await {
                Ok(resolution) => resolution,
                Err(ApiError::Cancelled) => return Err(SyncError::Cancelled),
                Err(error) => {
                    Resolution::Wait(format!("cannot list the active processes: {error}"))
                }
            },
        };
        let (process, task) = match resolution {
            Resolution::Task(process, task) => (process, task),
            Resolution::Wait(reason) => {
                // Only recorded: no request goes to a task, so no task's actor is started.
                let subject = unrouted(folder, &self.fields[index], path, record.as_ref());
                // The refresher brings it back when the processes change.
                let state = FileState::Waiting {
                    reason: reason.clone(),
                };
                if self.record_once(&subject, meta, state, record).await? {
                    info!(folder = %folder.path.display(), file = %path.display(), %reason, "waiting; it goes once its process is there");
                }
                return Ok(());
            }
            Resolution::Ended(reason) => {
                if record.as_ref().is_some_and(|r| r.settles(&meta)) {
                    return Ok(());
                }
                let field = self.bound_field(index, record.as_ref());
                let subject = unrouted(folder, &field, path, record.as_ref());
                let failed = subject.record(
                    meta,
                    FileState::Failed {
                        error: reason.clone(),
                    },
                    record.as_ref(),
                );
                error!(folder = %folder.path.display(), file = %path.display(), error = %reason, "not uploaded; not retried until the file changes");
                // An upload that can no longer be attached would be an orphan.
                let jobs: Vec<DeleteJob> = match record.map(|record| record.state) {
                    Some(FileState::Uploaded { asset }) => {
                        vec![subject.delete_job(asset, DeleteKind::Orphan)]
                    }
                    _ => Vec::new(),
                };
                self.store.put_with_deletes(path, &failed, &jobs).await?;
                for job in jobs {
                    self.remote_delete(&subject, job).await?;
                }
                return Ok(());
            }
        };
        let target = task.target(&process.id, route);
        let key = target.key();
        let field = self.router.actor(&target);
        // A failure already recorded for this version has been explained (or needs no more).
        let failed_before = record.as_ref().is_some_and(|record| {
            record.meta == meta && matches!(record.state, FileState::Failed { .. })
        });
        if let Some(mut record) =
            record.filter(|record| record.target != key && record.target.starts_with("task:"))
        {
            // Its copy is in an earlier process, which keeps it; this process gets its own.
            info!(folder = %folder.path.display(), file = %path.display(), run_id = %process.id, "now goes to process '{}'; the copy in the earlier process stays", crate::text::escaped(&process.name));
            record.attached = None;
            record.hash = None;
            record.target = key.clone();
            record.state = FileState::Uploading;
            self.store.put(path, &record).await?;
        }
        let subject = Subject::new(folder, &field, path).bound_to(key);
        match field.verdict_again().await {
            None => return Err(SyncError::Cancelled),
            Some(Ok(resolved)) => self.reconcile(&subject, &resolved).await?,
            Some(Err(why)) => {
                let record = self.store.get(path)?;
                if record.as_ref().is_some_and(|r| r.settles(&meta)) {
                    return Ok(());
                }
                let failed = subject.record(meta, FileState::Uploading, record.as_ref());
                self.fail(&subject, failed, why).await?;
            }
        }
        if failed_before {
            return Ok(());
        }
        self.when_ended(index, route, &process, &subject).await
    }

    /// A file that failed may have failed because its process ended meanwhile (its task is
    /// then completed): the processes are read again, and if so its failure says that.
    async fn when_ended(
        &self,
        index: usize,
        route: &Route,
        process: &Process,
        subject: &Subject<'_>,
    ) -> Result<(), SyncError> {
        let Some(mut record) = self.store.get(subject.path)? else {
            return Ok(());
        };
        let FileState::Failed { error } = &record.state else {
            return Ok(());
        };
        let ended = match self.router.ended(index, route, &process.id).await {
            Ok(Some(ended)) => ended,
            Ok(None) => return Ok(()),
            Err(ApiError::Cancelled) => return Err(SyncError::Cancelled),
            Err(error) => {
                debug!(%error, "cannot list the active processes to explain a failure");
                return Ok(());
            }
        };
        let error = format!("{ended} (the API said: {error})");
        warn!(folder = %subject.folder.path.display(), file = %subject.path.display(), %error, "its process ended before the file was attached");
        record.state = FileState::Failed { error };
        Ok(self.store.put(subject.path, &record).await?)
    }

    /// The actor of the task a file's record names (its copies are there), else the folder's.
    fn bound_field(&self, index: usize, record: Option<&FileRecord>) -> FieldHandle {
        record
            .and_then(|record| self.router.actor_for_key(&record.target))
            .unwrap_or_else(|| self.fields[index].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(by: RouteBy) -> Route {
        Route {
            checklist_id: "T".into(),
            capture_id: "C".into(),
            by,
            create_folders: false,
            refresh_interval: crate::config::ROUTE_REFRESH,
        }
    }

    fn process(id: &str, name: &str) -> Process {
        Process {
            id: id.into(),
            name: name.into(),
            capture: Capture::Task(CaptureTask {
                id: format!("task-{id}"),
                step_id: "S".into(),
                checklist_id: "T".into(),
            }),
        }
    }

    #[test]
    fn process_names_become_folder_names_a_share_accepts() {
        assert_eq!(safe_name("Acme Corp"), "Acme Corp");
        assert_eq!(safe_name("a/b\\c:d*e?f\"g<h>i|j"), "a_b_c_d_e_f_g_h_i_j");
        assert_eq!(safe_name(" .hidden. "), "_hidden");
        assert_eq!(safe_name("tab\there"), "tab_here");
        assert_eq!(safe_name(".."), "_");
        assert_eq!(safe_name(""), "_");
        let long = safe_name(&"é".repeat(300));
        assert!(long.len() <= MAX_FOLDER_NAME && long.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_file_names_the_subfolder_it_is_in_at_any_depth() {
        let root = Path::new("/srv/in");
        assert_eq!(
            subfolder(root, Path::new("/srv/in/Acme/x.pdf")),
            Some("Acme")
        );
        assert_eq!(
            subfolder(root, Path::new("/srv/in/Acme/a/b/x.pdf")),
            Some("Acme")
        );
        assert_eq!(subfolder(root, Path::new("/srv/in/x.pdf")), None);
    }

    #[test]
    fn a_subfolder_resolves_to_one_process_or_says_why_not() {
        let active = vec![
            process("1", "Acme/Corp"),
            process("2", "Twin"),
            process("3", "Twin"),
        ];
        let mut ended = HashMap::new();
        ended.insert(
            "4".to_string(),
            (process("4", "Gone"), "complete".to_string()),
        );
        let by_name = route(RouteBy::Name);
        let resolve = |name: &str| lookup(&active, &ended, &by_name, name);
        assert!(matches!(resolve("Acme_Corp"), Resolution::Task(p, _) if p.id == "1"));
        assert!(matches!(resolve("Twin (3)"), Resolution::Task(p, _) if p.id == "3"));
        assert_eq!(
            resolve("Twin"),
            Resolution::Wait(
                "2 active processes are named 'Twin' (2, 3); name the subfolder 'Twin (ID)' for one of them".into()
            )
        );
        assert_eq!(
            resolve("Nobody"),
            Resolution::Wait("no active process named 'Nobody'".into())
        );
        assert_eq!(
            resolve("Gone"),
            Resolution::Ended(
                "process 'Gone' (4) is complete; its files are no longer uploaded".into()
            )
        );
        let by_id = route(RouteBy::Id);
        assert!(
            matches!(lookup(&active, &ended, &by_id, "2"), Resolution::Task(p, _) if p.id == "2")
        );
        let names: Vec<String> = mapped(&active, RouteBy::Name)
            .into_iter()
            .map(|m| m.subfolder)
            .collect();
        assert_eq!(names, ["Acme_Corp", "Twin (2)", "Twin (3)"]);
    }
}
