//! `tallyfy-sync verify [PATH] [--download] [--json]`: does Tallyfy hold what the folders hold?
//! Receives the config, each folder's records (from the running daemon over the control socket,
//! or from the store when none runs) and each field's value (one GET per field); emits one
//! verdict per file, the field's files no local file accounts for, and a summary per folder.
//! Sends only GETs and writes nothing; `--download` also compares the bytes Tallyfy serves.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::api::{ApiError, Client, Hashing, Sink};
use crate::config::{Config, Credentials, Folder, Target};
use crate::control::{self, Answer, ControlError, Request};
use crate::field;
use crate::oneshot;
use crate::open;
use crate::progress::Bar;
use crate::settle;
use crate::store::{asset_filename, asset_id, FileMeta, FileRecord, FileState};
use crate::sync;
use crate::text;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path} is not in any configured folder (configured: {known})")]
    NotConfigured { path: PathBuf, known: String },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] ApiError),
    #[error("{differ} of {total} checked files or folders differ from Tallyfy (see above)")]
    Differs { differ: usize, total: usize },
}

/// What a file, or a file in the field, looks like from both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The field holds the file's asset, and the file is the version that was sent.
    InSync,
    /// New or changed since it was last sent: the daemon has not synced it yet.
    ChangedLocally,
    /// Gone from the folder; the field still holds it until the daemon deletes it.
    DeletedLocally,
    /// Its asset exists, but someone took it out of the field.
    RemovedInTallyfy,
    /// Its asset is gone (metadata 404).
    DeletedInTallyfy,
    /// A launch folder's file: the process it started is gone from Tallyfy.
    ProcessDeleted,
    /// With `--download`: the bytes Tallyfy serves are not the file's.
    ContentDiffers,
    /// In the field, but no local file accounts for it.
    AttachedByHand,
    /// Not synced by design (extension, size, hidden, ignored...): nothing to compare.
    Skipped,
    /// Could not be compared (unreadable file, failed download).
    Unchecked,
}

impl Verdict {
    fn agrees(self) -> bool {
        matches!(self, Verdict::InSync | Verdict::Skipped)
    }

    fn words(self) -> &'static str {
        match self {
            Verdict::InSync => "in sync",
            Verdict::ChangedLocally => "changed locally (not yet synced)",
            Verdict::DeletedLocally => "deleted locally (not yet synced)",
            Verdict::RemovedInTallyfy => "removed from the field in Tallyfy",
            Verdict::DeletedInTallyfy => "deleted in Tallyfy",
            Verdict::ProcessDeleted => "its process was deleted in Tallyfy",
            Verdict::ContentDiffers => "content in Tallyfy differs",
            Verdict::AttachedByHand => "in the field only (attached by hand)",
            Verdict::Skipped => "skipped",
            Verdict::Unchecked => "not checked",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    /// Relative to the folder; for a file only in the field, its name there.
    pub name: String,
    pub verdict: Verdict,
    pub asset_id: Option<String>,
    /// Why, where there is more to say.
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FolderCheck {
    pub folder: PathBuf,
    pub target: String,
    /// Why the folder could not be compared at all (the field could not be read...).
    pub problem: Option<String>,
    pub files: Vec<FileCheck>,
    pub in_sync: usize,
    pub differ: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub folders: Vec<FolderCheck>,
    pub in_sync: usize,
    pub differ: usize,
}

/// Runs the check; `Ok` only when everything agrees (the report is printed either way).
pub fn run(
    config: &Config,
    credentials: Credentials,
    path: Option<&Path>,
    download: bool,
    json: bool,
) -> Result<(), VerifyError> {
    let scopes = scopes(config, path)?;
    let runtime = oneshot::runtime().map_err(|error| ControlError::Refused(error.to_string()))?;
    let report = runtime.block_on(async {
        // Every folder's records: a field may be fed by folders out of scope, and their files
        // are not "attached by hand".
        let everywhere: Vec<(&Folder, PathBuf)> = config
            .folders
            .iter()
            .map(|folder| (folder, folder.path.clone()))
            .collect();
        let records: HashMap<PathBuf, Vec<(PathBuf, FileRecord)>> = everywhere
            .iter()
            .map(|(folder, _)| folder.path.clone())
            .zip(records(config, &everywhere).await?)
            .collect();
        let (api, _stop_renewals) = oneshot::client(&config.api, credentials)?;
        let progress = Bar::new("downloading", download);
        let mut folders = Vec::new();
        for (folder, scope) in &scopes {
            let key = folder.target.key();
            let elsewhere: HashSet<String> = config
                .folders
                .iter()
                .filter(|other| other.path != folder.path && other.target.key() == key)
                .flat_map(|other| records.get(&other.path).into_iter().flatten())
                .flat_map(|(_, record)| sync::remote_assets(record))
                .filter_map(|asset| asset.id())
                .collect();
            let own = records.get(&folder.path).cloned().unwrap_or_default();
            folders.push(check(&api, folder, scope, own, &elsewhere, download, &progress).await);
        }
        progress.clear();
        Ok::<_, VerifyError>(Report {
            in_sync: folders.iter().map(|folder| folder.in_sync).sum(),
            differ: folders.iter().map(|folder| folder.differ).sum(),
            folders,
        })
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report));
    }
    if report.differ > 0 {
        return Err(VerifyError::Differs {
            differ: report.differ,
            total: report.differ + report.in_sync,
        });
    }
    Ok(())
}

/// The folders to check, each with the directory within it that is in scope.
fn scopes<'a>(
    config: &'a Config,
    path: Option<&Path>,
) -> Result<Vec<(&'a Folder, PathBuf)>, VerifyError> {
    let Some(path) = path else {
        return Ok(config
            .folders
            .iter()
            .map(|folder| (folder, folder.path.clone()))
            .collect());
    };
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let scopes: Vec<(&Folder, PathBuf)> = config
        .folders
        .iter()
        .filter_map(|folder| {
            if folder.path.starts_with(&wanted) {
                Some((folder, folder.path.clone()))
            } else if wanted.starts_with(&folder.path) {
                Some((folder, wanted.clone()))
            } else {
                None
            }
        })
        .collect();
    if scopes.is_empty() {
        return Err(VerifyError::NotConfigured {
            path: path.to_path_buf(),
            known: config
                .folders
                .iter()
                .map(|folder| folder.path.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(scopes)
}

/// Each folder's records: from the running daemon, or from the store (which the daemon, when
/// it runs, holds locked).
async fn records(
    config: &Config,
    scopes: &[(&Folder, PathBuf)],
) -> Result<Vec<Vec<(PathBuf, FileRecord)>>, VerifyError> {
    let mut all = Vec::with_capacity(scopes.len());
    let mut store = None;
    for (folder, _) in scopes {
        let request = Request::Records {
            folder: folder.path.clone(),
        };
        let answer = match &store {
            None => match control::ask(config, &request).await? {
                Some(answer) => answer,
                None => {
                    let opened =
                        store.insert(oneshot::open_store(config).map_err(ControlError::from)?);
                    control::act(request, config, opened, false).await?
                }
            },
            Some(store) => control::act(request, config, store, false).await?,
        };
        match answer {
            Answer::Records { records } => all.push(records),
            Answer::Refused { message } => return Err(ControlError::Refused(message).into()),
            other => return Err(other.unexpected().into()),
        }
    }
    Ok(all)
}

async fn check(
    api: &Client,
    folder: &Folder,
    scope: &Path,
    records: Vec<(PathBuf, FileRecord)>,
    // Assets the records of other folders feeding the same field claim.
    elsewhere: &HashSet<String>,
    download: bool,
    progress: &Bar,
) -> FolderCheck {
    let mut report = FolderCheck {
        folder: folder.path.clone(),
        target: folder.target.to_string(),
        problem: None,
        files: Vec::new(),
        in_sync: 0,
        differ: 0,
    };
    let remote = match Remote::read(api, folder, &records).await {
        Ok(remote) => remote,
        Err(error) => {
            report.problem = Some(format!("cannot read the field: {error}"));
            report.differ = 1;
            return report;
        }
    };
    let mut on_disk = Vec::new();
    let listed = match std::fs::symlink_metadata(scope) {
        Ok(metadata) if !metadata.is_dir() => {
            on_disk.push((scope.to_path_buf(), FileMeta::of(&metadata)));
            Ok(())
        }
        // A file deleted locally: its record says what it was.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && scope != folder.path => {
            Ok(())
        }
        _ => settle::walk(folder, scope, &mut on_disk),
    };
    if let Err(error) = listed {
        report.problem = Some(crate::guard::unreadable(scope, &error));
        report.differ = 1;
        return report;
    }
    if !folder.recursive && scope != folder.path {
        on_disk.retain(|(path, _)| path.parent() == Some(folder.path.as_path()));
    }
    on_disk.sort_by(|a, b| a.0.cmp(&b.0));
    let records: HashMap<PathBuf, FileRecord> = records.into_iter().collect();
    let claimed: HashSet<String> = records
        .values()
        .flat_map(sync::remote_assets)
        .filter_map(|asset| asset.id())
        .collect();
    let name = |path: &Path| {
        path.strip_prefix(&folder.path)
            .unwrap_or(path)
            .display()
            .to_string()
    };
    let mut seen = HashSet::new();
    let mut to_download = Vec::new();
    for (path, meta) in &on_disk {
        seen.insert(path.clone());
        let record = records.get(path);
        let (verdict, asset, detail) = judge(api, folder, path, *meta, record, &remote).await;
        if verdict == Verdict::InSync && download {
            to_download.push(report.files.len());
        }
        report.files.push(FileCheck {
            name: name(path),
            verdict,
            asset_id: asset,
            detail,
        });
    }
    for (path, record) in &records {
        if seen.contains(path) || !path.starts_with(scope) {
            continue;
        }
        let key = field_key(folder, record);
        if !record
            .attached
            .as_ref()
            .is_some_and(|asset| asset.id().is_some_and(|id| remote.holds(&key, &id)))
        {
            continue; // gone on both sides: nothing left to differ
        }
        report.files.push(FileCheck {
            name: name(path),
            verdict: Verdict::DeletedLocally,
            asset_id: record.attached.as_ref().and_then(|asset| asset.id()),
            detail: None,
        });
    }
    progress.add_total(to_download.len());
    for index in to_download {
        let file = &mut report.files[index];
        let path = folder.path.join(&file.name);
        let Some(id) = file.asset_id.clone() else {
            continue;
        };
        progress.start(&file.name);
        let recorded = records
            .get(&path)
            .filter(|record| {
                std::fs::symlink_metadata(&path)
                    .is_ok_and(|metadata| FileMeta::of(&metadata) == record.meta)
            })
            .and_then(|record| record.hash.clone());
        let expected = match recorded {
            Some(hash) => Some(hash),
            None => open::hash_async(&folder.path, &path).await.ok(),
        };
        let sink = Mutex::new(Counting {
            hashing: Hashing::default(),
            bar: progress,
        });
        let downloaded = api.with_retries(|| api.download(&id, &sink)).await;
        progress.finish();
        match downloaded {
            Ok(_) => {
                let remote = sink.lock().unwrap_or_else(|p| p.into_inner()).hashing.hex();
                if expected.as_deref() != Some(remote.as_str()) {
                    file.verdict = Verdict::ContentDiffers;
                    file.detail = Some(format!("blake3 in Tallyfy {remote}"));
                }
            }
            Err(error) => {
                file.verdict = Verdict::Unchecked;
                file.detail = Some(format!("cannot download it: {error}"));
            }
        }
    }
    // Files attached by hand only count when the whole folder is in scope.
    if scope == folder.path {
        for (id, asset) in remote.fields.values().flatten() {
            if claimed.contains(id) || elsewhere.contains(id) {
                continue;
            }
            report.files.push(FileCheck {
                name: asset_filename(asset).unwrap_or_default().to_string(),
                verdict: Verdict::AttachedByHand,
                asset_id: Some(id.clone()),
                detail: None,
            });
        }
    }
    for file in &report.files {
        if file.verdict.agrees() {
            report.in_sync += usize::from(file.verdict == Verdict::InSync);
        } else {
            report.differ += 1;
        }
    }
    report
}

/// What Tallyfy holds for a folder: the value of each field its files go to (one for a task
/// or kick-off folder, one per process with files for a route folder), and for a launch folder
/// which of the processes its files started still exist.
struct Remote {
    /// Field key → asset id → asset.
    fields: HashMap<String, HashMap<String, serde_json::Value>>,
    runs: HashSet<String>,
}

impl Remote {
    /// One GET per field; for a launch folder, one list of the template's processes, and one
    /// GET for each process missing from it (the list may leave out archived ones).
    async fn read(
        api: &Client,
        folder: &Folder,
        records: &[(PathBuf, FileRecord)],
    ) -> Result<Remote, ApiError> {
        let mut remote = Remote {
            fields: HashMap::new(),
            runs: HashSet::new(),
        };
        let targets: Vec<(String, Target)> = match &folder.target {
            Target::Route(_) => records
                .iter()
                .filter_map(|(_, record)| {
                    Some((record.target.clone(), Target::of_task_key(&record.target)?))
                })
                .collect::<HashMap<_, _>>()
                .into_iter()
                .collect(),
            Target::Launch(launch) => {
                let launched: Vec<&str> = records
                    .iter()
                    .filter_map(|(_, record)| match &record.state {
                        FileState::Launched { run } => Some(run.id.as_str()),
                        _ => None,
                    })
                    .collect();
                if !launched.is_empty() {
                    let listed = api
                        .with_retries(|| api.template_runs(&launch.checklist_id))
                        .await?;
                    remote.runs = listed.into_iter().map(|run| run.id).collect();
                }
                for id in launched {
                    if remote.runs.contains(id) {
                        continue;
                    }
                    match api.with_retries(|| api.get_run(id)).await {
                        Ok(_) => {
                            remote.runs.insert(id.to_string());
                        }
                        Err(error) if error.status() == Some(404) => {}
                        Err(error) => return Err(error),
                    }
                }
                Vec::new()
            }
            target => vec![(target.key(), target.clone())],
        };
        for (key, target) in targets {
            let list = match api.with_retries(|| field::read(&target, api)).await {
                Ok(snapshot) => snapshot.values(),
                // A route folder's process deleted: none of its files is in a field any more.
                Err(error) if error.status() == Some(404) && key != folder.target.key() => {
                    Vec::new()
                }
                Err(error) => return Err(error),
            };
            let assets = list
                .into_iter()
                .filter_map(|asset| Some((asset_id(&asset)?, asset)))
                .collect();
            remote.fields.insert(key, assets);
        }
        Ok(remote)
    }

    fn holds(&self, key: &str, id: &str) -> bool {
        self.fields
            .get(key)
            .is_some_and(|assets| assets.contains_key(id))
    }
}

/// The field a record's file is in: a route folder's records name their process's task.
fn field_key(folder: &Folder, record: &FileRecord) -> String {
    match folder.target {
        Target::Route(_) => record.target.clone(),
        _ => folder.target.key(),
    }
}

/// One local file's verdict, by its record and the field; asks the API only about an asset
/// missing from the field.
async fn judge(
    api: &Client,
    folder: &Folder,
    path: &Path,
    meta: FileMeta,
    record: Option<&FileRecord>,
    remote: &Remote,
) -> (Verdict, Option<String>, Option<String>) {
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        if let Err(rejection) = sync::eligible(folder, path, &metadata) {
            return (Verdict::Skipped, None, Some(rejection.to_string()));
        }
    }
    // A launched file is a record of its process; what became of the file since does not count.
    match record.map(|record| &record.state) {
        Some(FileState::Launched { run }) => {
            let name = text::escaped(&run.name);
            return if remote.runs.contains(&run.id) {
                let detail = format!("started process '{name}' ({})", run.id);
                (Verdict::InSync, None, Some(detail))
            } else {
                let detail = format!("process '{name}' ({}) is gone", run.id);
                (Verdict::ProcessDeleted, None, Some(detail))
            };
        }
        Some(FileState::Duplicate { of, .. }) => {
            let of = text::path(of.strip_prefix(&folder.path).unwrap_or(of));
            let detail = format!("same content as {of}; nothing launched");
            return (Verdict::Skipped, None, Some(detail));
        }
        _ => {}
    }
    let synced =
        record.filter(|record| matches!(record.state, FileState::Synced | FileState::Removed));
    let Some(record) = synced else {
        let detail = record.map(|record| match &record.state {
            FileState::Failed { error } => format!("failed: {error}"),
            FileState::Uploading | FileState::Uploaded { .. } => "being uploaded".to_string(),
            _ => String::new(),
        });
        return (
            Verdict::ChangedLocally,
            None,
            detail.filter(|detail| !detail.is_empty()),
        );
    };
    let Some(id) = record.attached.as_ref().and_then(|asset| asset.id()) else {
        return (Verdict::ChangedLocally, None, None);
    };
    if !remote.holds(&field_key(folder, record), &id) {
        let verdict = match api.with_retries(|| api.get_asset(&id)).await {
            Ok(Some(_)) => Verdict::RemovedInTallyfy,
            Ok(None) => Verdict::DeletedInTallyfy,
            Err(error) => {
                let detail = format!("cannot ask the API about the asset: {error}");
                return (Verdict::Unchecked, Some(id), Some(detail));
            }
        };
        return (verdict, Some(id), None);
    }
    if record.meta != meta {
        // Touched or rewritten: only different bytes make it a change.
        let same = open::hash_async(&folder.path, path)
            .await
            .ok()
            .is_some_and(|hash| record.hash.as_deref() == Some(hash.as_str()));
        if !same {
            return (Verdict::ChangedLocally, Some(id), None);
        }
    }
    (Verdict::InSync, Some(id), None)
}

/// A download that only hashes, counted on the progress bar as it arrives.
struct Counting<'a> {
    hashing: Hashing,
    bar: &'a Bar,
}

impl Sink for Counting<'_> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.hashing.restart()
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.bar.add_bytes(chunk.len());
        self.hashing.write(chunk)
    }
}

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for folder in &report.folders {
        let _ = writeln!(out, "{} → {}", text::path(&folder.folder), folder.target);
        if let Some(problem) = &folder.problem {
            let _ = writeln!(out, "  NOT CHECKED: {}", text::escaped(problem));
        }
        for file in &folder.files {
            let mut line = format!(
                "  {:<34} {}",
                file.verdict.words(),
                text::escaped(&file.name)
            );
            if let Some(id) = &file.asset_id {
                let _ = write!(line, "  asset {}", text::escaped(id));
            }
            if let Some(detail) = &file.detail {
                let _ = write!(line, "  ({})", text::escaped(detail));
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "  {}: {} in sync, {} differ\n",
            if folder.differ == 0 { "OK" } else { "DIFFERS" },
            folder.in_sync,
            folder.differ
        );
    }
    let _ = writeln!(out, "{} in sync, {} differ", report.in_sync, report.differ);
    out
}
