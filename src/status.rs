//! `tallyfy-sync status`: where every folder and file stands.
//! Receives the config, a store (the daemon's own, asked over the control socket, or opened
//! directly when no daemon runs) and one listing of each folder; emits a `StatusReport` that
//! renders as text or JSON. Owns each folder's state (syncing, paused, not syncing) and the
//! per-file wording: state, asset, attempts, next attempt and why a file waits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{unix_ms, Pause};
use crate::config::{Config, Folder};
use crate::field::{names_key, Names};
use crate::guard::{self, Held};
use crate::metrics::{self, Exposition};
use crate::progress::{self, Backlog};
use crate::settle::{Changing, CHANGING_KEY};
use crate::store::{
    now_unix, FileMeta, FileRecord, FileState, Rebuilt, Store, StoreError, REBUILT_KEY, UNWRITABLE,
};
use crate::{recheck, settle, text};

/// Where the daemon saves the request pause in the store.
pub const PAUSE_KEY: &str = "api-pause";

/// Where the daemon saves what is wrong with a target (absent while it checks out).
pub fn target_key(target: &str) -> String {
    format!("target-problem:{target}")
}

/// Where a folder stands as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderState {
    Syncing,
    /// Waits by itself: an outage, a rate limit, a refused token, a state directory that cannot
    /// be written, deletes held by `max_delete`. The text says why.
    Paused(String),
    /// Needs someone: the folder is not there, or its target is wrong. The text says why and
    /// what fixes it.
    NotSyncing(String),
}

impl FolderState {
    /// "syncing", "paused" or "not syncing".
    pub fn label(&self) -> &'static str {
        match self {
            FolderState::Syncing => "syncing",
            FolderState::Paused(_) => "paused",
            FolderState::NotSyncing(_) => "not syncing",
        }
    }

    pub fn why(&self) -> Option<&str> {
        match self {
            FolderState::Syncing => None,
            FolderState::Paused(why) | FolderState::NotSyncing(why) => Some(why),
        }
    }

    /// "syncing", "paused: why" or "not syncing: why".
    pub fn line(&self) -> String {
        match self.why() {
            None => self.label().to_string(),
            Some(why) => format!("{}: {why}", self.label()),
        }
    }
}

/// What holds every folder at once.
struct Overall {
    unwritable: Option<String>,
    api_pause: Option<Pause>,
}

impl Overall {
    fn read(store: &Store, daemon_running: bool) -> Result<Overall, StoreError> {
        Ok(Overall {
            unwritable: store.unwritable(),
            api_pause: store
                .meta::<Pause>(PAUSE_KEY)?
                .filter(|pause| pause.until_ms > unix_ms() || daemon_running),
        })
    }
}

/// How often the daemon looks for a folder that is not there, as the fix says.
const LOOKED_FOR: &str = "looked for every 5 s";

/// A configured folder's state, from what the daemon saved (one read per key, no file).
fn folder_state(
    folder: &Folder,
    store: &Store,
    overall: &Overall,
) -> Result<FolderState, StoreError> {
    let root: Option<String> = if folder.path.exists() {
        store.meta(&guard::paused_key(&folder.path))?
    } else {
        Some(guard::NOT_THERE.to_string())
    };
    if let Some(problem) = root {
        let fix = if problem == guard::NOT_THERE {
            format!("mount the share or create the folder; it is synced as soon as it appears ({LOOKED_FOR})")
        } else {
            format!("it syncs again once the folder is back as it was ({LOOKED_FOR})")
        };
        return Ok(FolderState::NotSyncing(format!("{problem}; {fix}")));
    }
    if let Some(problem) = store.meta::<String>(&target_key(&folder.target.key()))? {
        return Ok(FolderState::NotSyncing(format!(
            "{problem}; fix the target in the config or in Tallyfy, then run `systemctl reload tallyfy-sync` (a fix in Tallyfy alone is also found by itself within rescan_interval)"
        )));
    }
    if let Some(error) = &overall.unwritable {
        return Ok(FolderState::Paused(format!(
            "{UNWRITABLE} ({error}); resumes once a write succeeds"
        )));
    }
    if let Some(pause) = &overall.api_pause {
        return Ok(FolderState::Paused(format!(
            "{}; next attempt {}",
            pause.reason,
            when(pause.until_ms)
        )));
    }
    if let Some(held) = store.meta::<Held>(&guard::held_key(&folder.path))? {
        return Ok(FolderState::Paused(format!(
            "deletes held: {} of {} synced files are gone; uploads go on",
            held.count, held.synced
        )));
    }
    Ok(FolderState::Syncing)
}

/// Every configured folder's state, reading no file record: for `/healthz` and the service
/// manager's status line.
pub fn folder_states(
    config: &Config,
    store: &Store,
) -> Result<Vec<(PathBuf, FolderState)>, StoreError> {
    let overall = Overall::read(store, true)?;
    config
        .folders
        .iter()
        .map(|folder| Ok((folder.path.clone(), folder_state(folder, store, &overall)?)))
        .collect()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    pub state_dir: PathBuf,
    /// Whether a running daemon answered (otherwise the store was read directly).
    pub daemon_running: bool,
    /// Requests paused by an outage, a rate limit or a refused token.
    pub api_pause: Option<Pause>,
    /// Requests paused because the state directory cannot be written: the write error.
    #[serde(default)]
    pub state_dir_unwritable: Option<String>,
    pub folders: Vec<FolderReport>,
    /// Remote assets still to delete.
    pub deletes_pending: Vec<PendingDelete>,
    /// When the store was found damaged and rebuilt from the fields, if it was.
    #[serde(default)]
    pub store_rebuilt: Option<Rebuilt>,
    /// The running daemon's backlog while it works through one (an initial import, a burst).
    #[serde(default)]
    pub progress: Option<Box<Backlog>>,
    /// Files that keep changing, which wait longer before each upload.
    #[serde(default)]
    pub changing: Vec<Changing>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub synced: usize,
    pub pending: usize,
    pub held: usize,
    pub rejected: usize,
    pub failed: usize,
    /// Launch folders: files that started a process, and copies of content that already had.
    #[serde(default)]
    pub launched: usize,
    #[serde(default)]
    pub duplicates: usize,
    /// Synced files someone removed from the field in Tallyfy (`remote_removed: leave`).
    #[serde(default)]
    pub removed: usize,
    /// Route folders: files waiting for their process.
    #[serde(default)]
    pub waiting: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderReport {
    pub path: PathBuf,
    /// The target as configured, or a note that the folder left the config.
    pub target: String,
    /// syncing, paused or not syncing.
    #[serde(default)]
    pub state: String,
    /// Why it is paused or not syncing, and what fixes it.
    #[serde(default)]
    pub why: Option<String>,
    pub counts: Counts,
    /// Unix seconds of the latest file synced (or process started).
    #[serde(default)]
    pub last_success: Option<u64>,
    /// The file that has waited longest (pending or failed), by name, and since when.
    #[serde(default)]
    pub oldest_waiting: Option<Waited>,
    /// What the API called the target's parts when the daemon last verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Names>,
    /// Why the folder is paused (gone, unreadable, unmounted), if it is.
    pub paused: Option<String>,
    /// Deletes kept back by `max_delete` until `release-deletes`.
    pub held: Option<Held>,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Waited {
    pub name: String,
    /// Unix seconds.
    pub since: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileReport {
    /// Relative to the folder.
    pub name: String,
    /// synced, pending, held, removed, rejected or failed; in launch folders also launching,
    /// launched or duplicate.
    pub state: String,
    pub asset_id: Option<String>,
    /// The process the file started (or, for a duplicate, the one its content started).
    #[serde(default)]
    pub run_id: Option<String>,
    /// Uploads of this version so far.
    pub attempts: u32,
    /// What happened or what it waits for.
    pub detail: String,
    /// Unix milliseconds of the next attempt, when one is scheduled.
    pub next_attempt_ms: Option<u64>,
    /// The name Tallyfy stored, when it is not the file's own (see docs/file-names.md).
    #[serde(default)]
    pub stored_as: Option<String>,
    /// Unix seconds since the file is in this state (for a file not recorded yet, its
    /// modification time).
    #[serde(default)]
    pub since: Option<u64>,
}

impl FileReport {
    /// Whether the default view lists it: anything but a file in sync or a process started.
    pub fn needs_attention(&self) -> bool {
        !matches!(self.state.as_str(), "synced" | "launched")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingDelete {
    pub path: PathBuf,
    pub asset_id: String,
}

/// Builds the report from the store. `daemon_running` says who asks.
pub fn build(
    config: &Config,
    store: &Store,
    daemon_running: bool,
) -> Result<StatusReport, StoreError> {
    match from_store(config, store, daemon_running) {
        // sled may refuse reads too after a failed write, until it is reopened: the pause is
        // what matters then, and the files are listed again once it can be written.
        Err(error) if store.unwritable().is_some() => Ok(StatusReport {
            state_dir: store.path().to_path_buf(),
            daemon_running,
            state_dir_unwritable: store
                .unwritable()
                .map(|unwritable| format!("{unwritable}; the files cannot be listed until it can be written again: {error}")),
            ..StatusReport::default()
        }),
        built => built,
    }
}

fn from_store(
    config: &Config,
    store: &Store,
    daemon_running: bool,
) -> Result<StatusReport, StoreError> {
    let overall = Overall::read(store, daemon_running)?;
    let mut by_folder: BTreeMap<PathBuf, Vec<(PathBuf, FileRecord)>> = BTreeMap::new();
    for record in store.records() {
        let (path, record) = record?;
        by_folder
            .entry(record.folder.clone())
            .or_default()
            .push((path, record));
    }
    let mut folders = Vec::new();
    for folder in &config.folders {
        let records = by_folder.remove(&folder.path).unwrap_or_default();
        let state = folder_state(folder, store, &overall)?;
        // One listing of the folder: what is there and not yet done is pending. Not of a
        // folder whose root is in doubt: a bare mount point's files are not the share's.
        let mut on_disk = Vec::new();
        let root_in_doubt = store
            .meta::<String>(&guard::paused_key(&folder.path))?
            .is_some();
        if !root_in_doubt {
            let _ = settle::walk(folder, &folder.path, &mut on_disk);
        }
        let waiting_for = waiting_for(&state, &overall, daemon_running);
        let mut report = folder_report(
            store,
            &folder.path,
            folder.target.to_string(),
            &records,
            on_disk,
            &waiting_for,
        )?;
        report.state = state.label().to_string();
        report.why = state.why().map(str::to_string);
        // Names are a courtesy: an unreadable record of them leaves the ids alone.
        report.names = store.meta(&names_key(&folder.target)).unwrap_or(None);
        folders.push(report);
    }
    for (folder, records) in by_folder {
        let target = "no longer in the config".to_string();
        let waiting_for = Waiting {
            reason: "the folder is no longer in the config".to_string(),
            until_ms: None,
        };
        let mut report = folder_report(store, &folder, target, &records, Vec::new(), &waiting_for)?;
        report.state = "not syncing".to_string();
        report.why = Some("no longer in the config; its files stay as they are".to_string());
        folders.push(report);
    }
    let deletes_pending = store
        .pending_deletes()?
        .into_iter()
        .map(|job| PendingDelete {
            asset_id: job.asset.id().unwrap_or_default(),
            path: job.path,
        })
        .collect();
    Ok(StatusReport {
        state_dir: store.path().to_path_buf(),
        daemon_running,
        api_pause: overall.api_pause,
        state_dir_unwritable: overall.unwritable,
        folders,
        deletes_pending,
        // Shown until the operator has dealt with the damaged copy it points to.
        store_rebuilt: store
            .meta::<Rebuilt>(REBUILT_KEY)?
            .filter(|rebuilt| rebuilt.moved_to.exists()),
        progress: daemon_running
            .then(progress::current)
            .flatten()
            .map(Box::new),
        // Only a running daemon holds files back.
        changing: match daemon_running {
            true => store
                .meta::<Vec<Changing>>(CHANGING_KEY)?
                .unwrap_or_default(),
            false => Vec::new(),
        }
        .into_iter()
        .filter(|changing| changing.until > now_unix())
        .collect(),
    })
}

/// What an unfinished file of a syncing folder is doing.
const IN_PROGRESS: &str = "in progress";

/// Why a folder's unfinished files wait, and until when if that is known.
struct Waiting {
    reason: String,
    until_ms: Option<u64>,
}

/// What a folder's unfinished files wait for: what stops the folder first (a state directory
/// that cannot be written holds requests even when the API answers), else their turn.
fn waiting_for(state: &FolderState, overall: &Overall, daemon_running: bool) -> Waiting {
    let (reason, until_ms) = match (state, &overall.unwritable, &overall.api_pause) {
        (FolderState::NotSyncing(_), _, _) => {
            ("the folder is not syncing (see above)".to_string(), None)
        }
        (_, Some(_), _) => (UNWRITABLE.to_string(), None),
        (_, None, Some(pause)) => (pause.reason.clone(), Some(pause.until_ms)),
        _ if daemon_running => {
            return Waiting {
                reason: IN_PROGRESS.to_string(),
                until_ms: None,
            }
        }
        _ => ("the daemon to run".to_string(), None),
    };
    Waiting {
        reason: format!("waiting: {reason}"),
        until_ms,
    }
}

fn folder_report(
    store: &Store,
    folder: &Path,
    target: String,
    records: &[(PathBuf, FileRecord)],
    on_disk: Vec<(PathBuf, FileMeta)>,
    waiting: &Waiting,
) -> Result<FolderReport, StoreError> {
    let held: Option<Held> = store.meta(&guard::held_key(folder))?;
    let paused: Option<String> = store.meta(&guard::paused_key(folder))?;
    let mut counts = Counts::default();
    let mut files = Vec::with_capacity(records.len());
    let mut on_disk: std::collections::HashMap<PathBuf, FileMeta> = on_disk.into_iter().collect();
    let mut last_success: Option<u64> = None;
    // When each target is next checked for its failed files, read once per target.
    let mut checks: BTreeMap<String, Option<u64>> = BTreeMap::new();
    let name_of = |path: &Path| {
        path.strip_prefix(folder)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    for (path, record) in records {
        let name = name_of(path);
        let attached = record.attached.as_ref().and_then(|asset| asset.id());
        let pending = || (waiting.reason.clone(), waiting.until_ms);
        let gone = held.is_some() && std::fs::symlink_metadata(path).is_err();
        let disk = on_disk.remove(path);
        // Changed on disk since it was last handled: it is looked at again.
        let changed = disk.is_some_and(|meta| meta != record.meta)
            && matches!(
                record.state,
                FileState::Synced
                    | FileState::Removed
                    | FileState::Rejected { .. }
                    | FileState::Failed { .. }
            );
        let mut run_id = None;
        let (state, asset_id, detail, next_attempt_ms) = match &record.state {
            _ if changed => {
                counts.pending += 1;
                let (why, next) = pending();
                ("pending", attached, format!("changed; {why}"), next)
            }
            FileState::Synced if gone => {
                counts.held += 1;
                let detail = "gone locally; remote copy kept until release-deletes".to_string();
                ("held", attached, detail, None)
            }
            FileState::Synced => {
                counts.synced += 1;
                last_success = last_success.max(Some(record.updated));
                ("synced", attached, String::new(), None)
            }
            FileState::Removed => {
                counts.removed += 1;
                let detail =
                    "removed in Tallyfy; not uploaded again unless the file changes or `tallyfy-sync retry PATH` asks".to_string();
                ("removed", attached, detail, None)
            }
            FileState::Uploading => {
                counts.pending += 1;
                let (why, next) = pending();
                ("pending", None, format!("uploading; {why}"), next)
            }
            FileState::Uploaded { asset } => {
                counts.pending += 1;
                let (why, next) = pending();
                let detail = format!("uploaded, not yet attached; {why}");
                ("pending", asset.id(), detail, next)
            }
            FileState::Rejected { reason } => {
                counts.rejected += 1;
                ("rejected", None, reason.clone(), None)
            }
            FileState::Failed { error } => {
                counts.failed += 1;
                let detail = format!("{error}; retried when the file or the config changes, after `tallyfy-sync retry`, or at the next check of the target if it passes");
                let next = match checks.get(&record.target) {
                    Some(next) => *next,
                    None => {
                        let next: Option<u64> = store.meta(&recheck::key(&record.target))?;
                        *checks.entry(record.target.clone()).or_insert(next)
                    }
                };
                ("failed", attached, detail, next)
            }
            FileState::Launching { asset, name, .. } => {
                counts.pending += 1;
                let (why, next) = pending();
                let detail = format!("starting process '{}'; {why}", crate::text::escaped(name));
                ("launching", asset.id(), detail, next)
            }
            FileState::Launched { run } => {
                counts.launched += 1;
                last_success = last_success.max(Some(record.updated));
                run_id = Some(run.id.clone());
                let detail = format!("started process '{}'", crate::text::escaped(&run.name));
                ("launched", None, detail, None)
            }
            FileState::Waiting { reason } => {
                counts.waiting += 1;
                ("waiting", attached, reason.clone(), None)
            }
            FileState::Duplicate { of, run } => {
                counts.duplicates += 1;
                // The original may have been launching when this copy came; it may be done now.
                let claimed = match (run, &record.hash) {
                    (None, Some(hash)) => store.content_claim(folder, hash)?.and_then(|c| c.run),
                    _ => None,
                };
                let run = run.as_ref().or(claimed.as_ref());
                run_id = run.map(|run| run.id.clone());
                let of = crate::text::path(of.strip_prefix(folder).unwrap_or(of));
                let detail = match run {
                    Some(run) => format!(
                        "same content as {of}, which already started process '{}'; nothing launched",
                        crate::text::escaped(&run.name)
                    ),
                    None => format!("same content as {of}, which is starting a process; nothing launched"),
                };
                ("duplicate", None, detail, None)
            }
        };
        let uploaded = match &record.state {
            FileState::Uploaded { asset } | FileState::Launching { asset, .. } => Some(asset),
            _ => record.attached.as_ref(),
        };
        let own = path.file_name().map(|own| own.to_string_lossy());
        let stored_as = uploaded
            .and_then(|asset| asset.filename())
            .filter(|stored| own.as_deref() != Some(stored.as_str()));
        files.push(FileReport {
            name,
            state: state.to_string(),
            asset_id,
            run_id,
            attempts: record.attempts,
            detail,
            next_attempt_ms,
            stored_as,
            since: Some(record.updated),
        });
    }
    // On disk and never recorded: new files, settling, queued, or held back with the folder.
    let mut new: Vec<(PathBuf, FileMeta)> = on_disk.into_iter().collect();
    new.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, meta) in new {
        counts.pending += 1;
        files.push(FileReport {
            name: name_of(&path),
            state: "pending".to_string(),
            asset_id: None,
            run_id: None,
            attempts: 0,
            detail: match waiting.reason.as_str() {
                IN_PROGRESS => "new; settling, then uploaded".to_string(),
                why => format!("new; {why}"),
            },
            next_attempt_ms: waiting.until_ms,
            stored_as: None,
            since: u64::try_from(meta.mtime_ns / 1_000_000_000).ok(),
        });
    }
    let oldest_waiting = files
        .iter()
        .filter(|file| matches!(file.state.as_str(), "pending" | "launching" | "failed"))
        .filter_map(|file| Some((file.since?, &file.name)))
        .min()
        .map(|(since, name)| Waited {
            name: name.clone(),
            since,
        });
    Ok(FolderReport {
        path: folder.to_path_buf(),
        target,
        state: String::new(),
        why: None,
        counts,
        last_success,
        oldest_waiting,
        names: None,
        paused,
        held,
        files,
    })
}

/// The files gauge (by folder and state) in Prometheus text.
pub fn render_gauges(report: &StatusReport, out: &mut Exposition) {
    let mut files = Vec::new();
    for folder in &report.folders {
        let c = &folder.counts;
        for (state, count) in [
            ("synced", c.synced),
            ("pending", c.pending),
            ("held", c.held),
            ("removed", c.removed),
            ("rejected", c.rejected),
            ("failed", c.failed),
            ("launched", c.launched),
            ("duplicate", c.duplicates),
            ("waiting", c.waiting),
        ] {
            files.push((
                format!(
                    "{{folder=\"{}\",state=\"{state}\"}}",
                    metrics::escape(&folder.path.display().to_string())
                ),
                count as f64,
            ));
        }
    }
    out.metric(
        "files",
        "gauge",
        "Files known to the daemon by folder and state.",
        &files,
    );
}

/// Keeps only the folder or files at or under `path` (as given, or through a link); true when
/// that narrowed a folder to some of its files. An error names the configured folders when
/// `path` is in none of them.
pub fn keep_only(report: &mut StatusReport, path: &Path) -> Result<bool, String> {
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let known: Vec<String> = report
        .folders
        .iter()
        .map(|folder| text::path(&folder.path).to_string())
        .collect();
    report
        .folders
        .retain(|folder| folder.path.starts_with(&wanted) || wanted.starts_with(&folder.path));
    if report.folders.is_empty() {
        return Err(format!(
            "{} is in no configured folder (configured: {})",
            text::path(path),
            known.join(", ")
        ));
    }
    let mut narrowed = false;
    for folder in &mut report.folders {
        if let Ok(inside) = wanted.strip_prefix(&folder.path) {
            if !inside.as_os_str().is_empty() {
                narrowed = true;
                folder
                    .files
                    .retain(|file| Path::new(&file.name).starts_with(inside));
            }
        }
    }
    report
        .deletes_pending
        .retain(|job| job.path.starts_with(&wanted));
    Ok(narrowed)
}

/// The report as people read it: each folder's state and counts first, then per folder the
/// files that need attention (all of them with `all`, or when a file was asked for by path).
pub fn render(report: &StatusReport, all: bool) -> String {
    let mut out = String::new();
    let source = if report.daemon_running {
        "daemon running"
    } else {
        "daemon not running; read from the store"
    };
    let _ = writeln!(out, "state: {} ({source})", text::path(&report.state_dir));
    if let Some(backlog) = &report.progress {
        let _ = writeln!(out, "progress: {}", backlog.line());
    }
    if let Some(error) = &report.state_dir_unwritable {
        let _ = writeln!(
            out,
            "paused: {UNWRITABLE} ({}); requests wait until a write succeeds again",
            text::escaped(error)
        );
    }
    if let Some(rebuilt) = &report.store_rebuilt {
        let _ = writeln!(
            out,
            "store rebuilt at {}: the old one was damaged ({}) and is kept in {}; files were matched against their fields and adopted where Tallyfy already held them",
            at(rebuilt.at),
            text::escaped(&rebuilt.error),
            text::path(&rebuilt.moved_to)
        );
    }
    for changing in &report.changing {
        let _ = writeln!(
            out,
            "keeps changing: {} (replaced {} times in a row); each upload waits for {} of quiet",
            text::path(&changing.path),
            changing.replaced,
            humantime::format_duration(std::time::Duration::from_millis(changing.quiet_ms))
        );
    }
    if let Some(pause) = &report.api_pause {
        let _ = writeln!(
            out,
            "requests paused: {}; next attempt {}",
            text::escaped(&pause.reason),
            when(pause.until_ms)
        );
    }
    let _ = writeln!(out, "folders:");
    for folder in &report.folders {
        let c = &folder.counts;
        let _ = writeln!(
            out,
            "  {}: {} ({} synced, {} pending, {} failed)",
            text::path(&folder.path),
            folder.state,
            c.synced + c.launched,
            c.pending,
            c.failed
        );
    }
    for folder in &report.folders {
        let c = &folder.counts;
        let _ = writeln!(
            out,
            "\n{} → {}\n  {} synced, {} pending, {} held, {} rejected, {} failed",
            text::path(&folder.path),
            folder.target,
            c.synced,
            c.pending,
            c.held,
            c.rejected,
            c.failed
        );
        if let Some(names) = &folder.names {
            let _ = writeln!(out, "  in Tallyfy: {names}");
        }
        let state = match &folder.why {
            Some(why) => format!("{}: {}", folder.state, text::escaped(why)),
            None => folder.state.clone(),
        };
        let _ = writeln!(out, "  state: {state}");
        if c.launched + c.duplicates > 0 {
            let _ = writeln!(
                out,
                "  {} launched, {} duplicates",
                c.launched, c.duplicates
            );
        }
        if c.removed > 0 {
            let _ = writeln!(out, "  {} removed in Tallyfy", c.removed);
        }
        if c.waiting > 0 {
            let _ = writeln!(out, "  {} waiting for their process", c.waiting);
        }
        if let Some(held) = &folder.held {
            let _ = writeln!(
                out,
                "  DELETES HELD: {} of {} synced files are gone; run `tallyfy-sync release-deletes {}` to delete them remotely",
                held.count,
                held.synced,
                text::path(&folder.path)
            );
        }
        let mut unlisted = 0;
        for file in &folder.files {
            if !all && !file.needs_attention() {
                unlisted += 1;
                continue;
            }
            let mut line = format!("  {:<9} {}", file.state, text::escaped(&file.name));
            if let Some(asset) = &file.asset_id {
                let _ = write!(line, "  asset {asset}");
            }
            if let Some(run) = &file.run_id {
                let _ = write!(line, "  run {run}");
            }
            if let Some(stored) = &file.stored_as {
                let _ = write!(line, "  stored in Tallyfy as {}", text::escaped(stored));
            }
            if !file.detail.is_empty() {
                let _ = write!(line, "  {}", text::escaped(&file.detail));
            }
            if file.attempts > 1 {
                let _ = write!(line, " (attempt {})", file.attempts);
            }
            if let Some(next) = file.next_attempt_ms {
                let _ = write!(line, "; next attempt {}", when(next));
            }
            if let Some(since) = file.since.filter(|_| file.needs_attention()) {
                let _ = write!(line, "; since {}", at(since));
            }
            let _ = writeln!(out, "{line}");
        }
        // After the files, so that a file's first line in the report is its own.
        let mut times = Vec::new();
        if let Some(last) = folder.last_success {
            times.push(format!("last success {}", at(last)));
        }
        if let Some(oldest) = &folder.oldest_waiting {
            times.push(format!(
                "oldest waiting {} since {}",
                text::escaped(&oldest.name),
                at(oldest.since)
            ));
        }
        if !times.is_empty() {
            let _ = writeln!(out, "  {}", times.join("; "));
        }
        if unlisted > 0 {
            let files = if unlisted == 1 { "file" } else { "files" };
            let _ = writeln!(
                out,
                "  ({unlisted} {files} in sync not listed; `tallyfy-sync status --all` lists them)"
            );
        }
    }
    if !report.deletes_pending.is_empty() {
        let _ = writeln!(
            out,
            "\nremote deletes pending: {}",
            report.deletes_pending.len()
        );
        for job in &report.deletes_pending {
            let _ = writeln!(
                out,
                "  {}  asset {}",
                text::path(&job.path),
                text::escaped(&job.asset_id)
            );
        }
    }
    out
}

/// "2026-12-07 14:03:22 UTC (5m ago)", from Unix seconds.
fn at(unix: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    let stamp = humantime::format_rfc3339_seconds(time)
        .to_string()
        .replacen('T', " ", 1)
        .replace('Z', " UTC");
    let ago = std::time::SystemTime::now()
        .duration_since(time)
        .map_or(0, |ago| ago.as_secs());
    let ago = humantime::format_duration(std::time::Duration::from_secs(ago));
    format!("{stamp} ({ago} ago)")
}

/// "in 42s" or "now", from Unix milliseconds.
fn when(unix: u64) -> String {
    let left = std::time::Duration::from_secs(unix.saturating_sub(unix_ms()).div_ceil(1000));
    if left.is_zero() {
        "now".to_string()
    } else {
        format!("in {}", humantime::format_duration(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_not_there_or_with_a_wrong_target_is_not_syncing_before_it_is_paused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let folder = Folder {
            path: dir.path().join("in"),
            ..crate::filter::tests::folder(&[])
        };
        let pause = Pause {
            until_ms: unix_ms() + 60_000,
            delay_ms: 60_000,
            reason: "the API is unreachable".into(),
        };
        let outage = Overall {
            unwritable: None,
            api_pause: Some(pause),
        };
        let state = |overall: &Overall| folder_state(&folder, &store, overall).unwrap();
        let missing = state(&outage);
        assert_eq!(missing.label(), "not syncing");
        assert!(
            missing
                .line()
                .starts_with("not syncing: not there (not mounted?); mount the share"),
            "{}",
            missing.line()
        );

        std::fs::create_dir(&folder.path).unwrap();
        let wrong = "task T of run R does not exist (404)".to_string();
        let key = target_key(&folder.target.key());
        store.set_meta(&key, Some(&wrong)).await.unwrap();
        let bad_target = state(&outage);
        assert!(
            bad_target
                .line()
                .starts_with(&format!("not syncing: {wrong}; fix the target")),
            "{}",
            bad_target.line()
        );

        store.set_meta::<String>(&key, None).await.unwrap();
        assert!(state(&outage)
            .line()
            .starts_with("paused: the API is unreachable; next attempt in "));
        let calm = Overall {
            unwritable: None,
            api_pause: None,
        };
        assert_eq!(state(&calm), FolderState::Syncing);
        let held = Held {
            count: 7,
            synced: 12,
            since: 0,
        };
        let held_key = guard::held_key(&folder.path);
        store.set_meta(&held_key, Some(&held)).await.unwrap();
        assert_eq!(
            state(&calm).line(),
            "paused: deletes held: 7 of 12 synced files are gone; uploads go on"
        );
    }
}
