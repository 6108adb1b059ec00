//! `tallyfy-sync status`: where every folder and file stands.
//! Receives the config and a store (the daemon's own, asked over the control socket, or opened
//! directly when no daemon runs); emits a `StatusReport` that renders as text or JSON. Owns the
//! per-file wording: state, asset, attempts, next attempt and why a file waits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::{unix_ms, Pause};
use crate::config::Config;
use crate::guard::{self, Held};
use crate::metrics::{self, Exposition};
use crate::recheck;
use crate::settle::{Changing, CHANGING_KEY};
use crate::store::{
    now_unix, FileRecord, FileState, Rebuilt, Store, StoreError, REBUILT_KEY, UNWRITABLE,
};
use crate::text;

/// Where the daemon saves the request pause in the store.
pub const PAUSE_KEY: &str = "api-pause";

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
    pub counts: Counts,
    /// Why the folder is paused (gone, unreadable, unmounted), if it is.
    pub paused: Option<String>,
    /// Deletes kept back by `max_delete` until `release-deletes`.
    pub held: Option<Held>,
    pub files: Vec<FileReport>,
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
    /// The name Tallyfy stored, when it is not the file's own (see "Filenames" in the README).
    #[serde(default)]
    pub stored_as: Option<String>,
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
    let api_pause = store
        .meta::<Pause>(PAUSE_KEY)?
        .filter(|pause| pause.until_ms > unix_ms() || daemon_running);
    let state_dir_unwritable = store.unwritable();
    // What files wait for: a state directory that cannot be written comes first, since it
    // holds requests even when the API answers.
    let waiting_for = match (&state_dir_unwritable, &api_pause) {
        (Some(_), _) => Some(Waiting {
            reason: UNWRITABLE,
            until_ms: None,
        }),
        (None, Some(pause)) => Some(Waiting {
            reason: &pause.reason,
            until_ms: Some(pause.until_ms),
        }),
        (None, None) => None,
    };
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
        folders.push(folder_report(
            store,
            &folder.path,
            folder.target.to_string(),
            &records,
            waiting_for.as_ref(),
        )?);
    }
    for (folder, records) in by_folder {
        let target = "no longer in the config".to_string();
        folders.push(folder_report(
            store,
            &folder,
            target,
            &records,
            waiting_for.as_ref(),
        )?);
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
        api_pause,
        state_dir_unwritable,
        folders,
        deletes_pending,
        // Shown until the operator has dealt with the damaged copy it points to.
        store_rebuilt: store
            .meta::<Rebuilt>(REBUILT_KEY)?
            .filter(|rebuilt| rebuilt.moved_to.exists()),
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

/// Why unfinished files wait, and until when if that is known.
struct Waiting<'a> {
    reason: &'a str,
    until_ms: Option<u64>,
}

fn folder_report(
    store: &Store,
    folder: &Path,
    target: String,
    records: &[(PathBuf, FileRecord)],
    waiting_for: Option<&Waiting>,
) -> Result<FolderReport, StoreError> {
    let held: Option<Held> = store.meta(&guard::held_key(folder))?;
    let paused: Option<String> = store.meta(&guard::paused_key(folder))?;
    let mut counts = Counts::default();
    let mut files = Vec::with_capacity(records.len());
    // When each target is next checked for its failed files, read once per target.
    let mut checks: BTreeMap<String, Option<u64>> = BTreeMap::new();
    for (path, record) in records {
        let name = path
            .strip_prefix(folder)
            .unwrap_or(path)
            .display()
            .to_string();
        let attached = record.attached.as_ref().and_then(|asset| asset.id());
        let waiting = || match waiting_for {
            Some(waiting) => (format!("waiting: {}", waiting.reason), waiting.until_ms),
            None => ("in progress".to_string(), None),
        };
        let gone = held.is_some() && std::fs::symlink_metadata(path).is_err();
        let mut run_id = None;
        let (state, asset_id, detail, next_attempt_ms) = match &record.state {
            FileState::Synced if gone => {
                counts.held += 1;
                let detail = "gone locally; remote copy kept until release-deletes".to_string();
                ("held", attached, detail, None)
            }
            FileState::Synced => {
                counts.synced += 1;
                ("synced", attached, String::new(), None)
            }
            FileState::Removed => {
                counts.removed += 1;
                let detail =
                    "removed in Tallyfy; not uploaded again unless the file changes".to_string();
                ("removed", attached, detail, None)
            }
            FileState::Uploading => {
                counts.pending += 1;
                let (why, next) = waiting();
                ("pending", None, format!("uploading; {why}"), next)
            }
            FileState::Uploaded { asset } => {
                counts.pending += 1;
                let (why, next) = waiting();
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
                let (why, next) = waiting();
                let detail = format!("starting process '{}'; {why}", crate::text::escaped(name));
                ("launching", asset.id(), detail, next)
            }
            FileState::Launched { run } => {
                counts.launched += 1;
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
        });
    }
    Ok(FolderReport {
        path: folder.to_path_buf(),
        target,
        counts,
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

/// The report as people read it.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let source = if report.daemon_running {
        "daemon running"
    } else {
        "daemon not running; read from the store"
    };
    let _ = writeln!(out, "state: {} ({source})", text::path(&report.state_dir));
    if let Some(error) = &report.state_dir_unwritable {
        let _ = writeln!(
            out,
            "paused: {UNWRITABLE} ({}); requests wait until a write succeeds again",
            text::escaped(error)
        );
    }
    if let Some(rebuilt) = &report.store_rebuilt {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(rebuilt.at);
        let _ = writeln!(
            out,
            "store rebuilt at {}: the old one was damaged ({}) and is kept in {}; files were matched against their fields and adopted where Tallyfy already held them",
            humantime::format_rfc3339_seconds(at),
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
        if let Some(paused) = &folder.paused {
            let _ = writeln!(out, "  PAUSED: {}", text::escaped(paused));
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
        for file in &folder.files {
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
            let _ = writeln!(out, "{line}");
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

/// "in 42s" or "now", from Unix milliseconds.
fn when(unix: u64) -> String {
    let left = std::time::Duration::from_secs(unix.saturating_sub(unix_ms()).div_ceil(1000));
    if left.is_zero() {
        "now".to_string()
    } else {
        format!("in {}", humantime::format_duration(left))
    }
}
