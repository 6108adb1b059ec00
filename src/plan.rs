//! What `run` would do now, without doing it: `check --online` and `run --dry-run`.
//! Receives the config, the credentials and the state store; verifies each target with GETs
//! only (the daemon's own `field::verify`), then compares one scan of each folder with the store
//! by the daemon's own rules (`sync::eligible`, `sync::next`, the guard's `root_problem` and
//! `holds`); emits the verdicts and the plan. Sends nothing that changes anything, writes nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{stored_name, ApiError, Client};
use crate::config::{After, Config, Credentials, Dedupe, Folder, Launch, Route, Target};
use crate::diagnose;
use crate::field::{self, FieldError, Names};
use crate::filter::humansize;
use crate::guard;
use crate::launch;
use crate::open;
use crate::route;
use crate::settle;
use crate::store::{Asset, FileMeta, FileRecord, FileState, Store, StoreError};
use crate::sync::{self, Next};
use crate::text;

/// Longest the verification of all targets waits for the API.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Tries per request: one attempt and two retries, which the shared gate spaces about 1 and
/// 2 seconds apart when the API is down.
pub const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{wrong} of {total} targets are wrong (see above); fix them in {}", text::path(.file))]
    WrongTargets {
        wrong: usize,
        total: usize,
        file: PathBuf,
    },
    #[error("{}", text::escaped(.problem))]
    Refused { problem: String },
    #[error("could not verify the targets: {}", text::escaped(.problem))]
    Unreachable { problem: String },
}

impl PlanError {
    /// Whether the operator must change the config (or the credentials) to get past it.
    pub fn is_config(&self) -> bool {
        !matches!(self, PlanError::Unreachable { .. })
    }
}

/// One folder's target as the API showed it.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub folder: PathBuf,
    pub target: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// What the API calls the target's parts, when it was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Names>,
    /// Route folders: the active processes and the subfolder each maps to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<route::Mapped>>,
    /// The same processes, for the plan to route files by.
    #[serde(skip)]
    pub active: Vec<route::Process>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "problem", rename_all = "snake_case")]
pub enum Verdict {
    Ok,
    /// The target is wrong: missing, completed, not a file field...
    Wrong(String),
    /// The API refused the credentials, so no target could be checked.
    Refused(String),
    /// The server's certificate is not trusted, so no target could be checked.
    Untrusted(String),
    /// The API could not be reached, or did not answer usefully.
    Unverified(String),
}

/// Verifies every folder's target with GETs (each distinct target once), giving up on the API
/// after `ATTEMPTS` tries per request or `DEADLINE` in all.
pub async fn verify_targets(
    config: &Config,
    credentials: Credentials,
) -> Result<Vec<TargetCheck>, ApiError> {
    let (api, _stop_renewals) = client(&config.api, credentials)?;
    let deadline = Instant::now() + DEADLINE;
    let mut verdicts: HashMap<String, (Verdict, Option<Names>)> = HashMap::new();
    // Once the API is down or refuses the token, asking about more targets only adds waiting.
    let mut given_up: Option<Verdict> = None;
    let mut checks = Vec::with_capacity(config.folders.len());
    for (index, folder) in config.folders.iter().enumerate() {
        let key = folder.target.key();
        let (verdict, names) = match (verdicts.get(&key), &given_up) {
            (Some(known), _) => known.clone(),
            (None, Some(verdict)) => (verdict.clone(), None),
            (None, None) => {
                let verified =
                    tokio::time::timeout_at(deadline, field::verify(&folder.target, &api)).await;
                let names = match &verified {
                    Ok(Ok(resolved)) => {
                        Some(process_named(&api, &folder.target, resolved.names.clone()).await)
                    }
                    _ => None,
                };
                let (mut verdict, mut give_up) = judge(verified, config, &api);
                if let Verdict::Wrong(problem) = &verdict {
                    let diagnosed =
                        tokio::time::timeout_at(deadline, diagnosed(&api, index, folder, problem))
                            .await;
                    if let Ok(Some(diagnosed)) = diagnosed {
                        give_up = matches!(diagnosed, Verdict::Refused(_));
                        verdict = diagnosed;
                    }
                }
                given_up = match (&verdict, give_up) {
                    (Verdict::Refused(problem), true) if problem.starts_with("api.") => {
                        Some(Verdict::Refused(format!(
                            "the API was not asked, as {} is wrong (see above)",
                            problem.split(' ').next().unwrap_or_default()
                        )))
                    }
                    (Verdict::Refused(_), true) => Some(Verdict::Refused(
                        "the API was not asked, as it refused the credentials (see above)".into(),
                    )),
                    (Verdict::Untrusted(_), true) => Some(Verdict::Untrusted(
                        "the API was not asked, as its certificate is not trusted (see above)"
                            .into(),
                    )),
                    (_, true) => Some(Verdict::Unverified(
                        "the API was not asked, as it could not be reached (see above)".into(),
                    )),
                    (_, false) => None,
                };
                verdicts.insert(key, (verdict.clone(), names.clone()));
                (verdict, names)
            }
        };
        let mut check = TargetCheck {
            folder: folder.path.clone(),
            target: folder.target.to_string(),
            verdict,
            names,
            processes: None,
            active: Vec::new(),
        };
        if let (Target::Route(route), Verdict::Ok) = (&folder.target, &check.verdict) {
            match tokio::time::timeout_at(deadline, route::active_processes(&api, route)).await {
                Ok(Ok(active)) => {
                    check.processes = Some(route::mapped(&active, route.by));
                    check.active = active;
                }
                Ok(Err(error)) => {
                    check.verdict = Verdict::Unverified(format!(
                        "cannot list the template's active processes: {error}"
                    ))
                }
                Err(_) => {
                    check.verdict = Verdict::Unverified(format!(
                        "no list of the template's active processes within {}",
                        humantime::format_duration(DEADLINE)
                    ))
                }
            }
        }
        checks.push(check);
    }
    Ok(checks)
}

/// A better verdict for a target the API did not find or refused (`problem`): the organization
/// (asked about once) or the base URL named as wrong, or an id of the wrong kind named with its
/// key; `None` when the first verdict stands.
async fn diagnosed(api: &Client, index: usize, folder: &Folder, problem: &str) -> Option<Verdict> {
    // Found but unfit: the verdict already says what is wrong with it.
    if !field::missing_or_forbidden(problem) {
        return None;
    }
    if let (Some(problem), _) = diagnose::organization(api).await {
        return Some(Verdict::Refused(problem));
    }
    diagnose::target(api, index, &folder.target)
        .await
        .map(|diagnosis| Verdict::Wrong(format!("{diagnosis} ({problem})")))
}

/// `names` with the process's name for a task target, when one GET gives it (a report can do
/// without it).
async fn process_named(api: &Client, target: &Target, mut names: Names) -> Names {
    if let Target::Task { run_id, .. } = target {
        if let Ok(Ok(run)) = tokio::time::timeout(DEADLINE, api.get_run(run_id)).await {
            names.process = Some(run.name).filter(|name| !name.is_empty());
        }
    }
    names
}

/// A client for a command that must answer soon: `ATTEMPTS` tries per request. Token renewals
/// run until the guard is dropped.
pub fn client(
    config: &crate::config::ApiConfig,
    credentials: Credentials,
) -> Result<(Client, tokio_util::sync::DropGuard), ApiError> {
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let api = Client::new(config, credentials, cancel)?.give_up_after(ATTEMPTS);
    Ok((api, guard))
}

/// The verdict on one verification, and whether the API is in no state to be asked more.
fn judge(
    verified: Result<Result<field::Resolved, FieldError>, tokio::time::error::Elapsed>,
    config: &Config,
    api: &Client,
) -> (Verdict, bool) {
    let error = match verified {
        Ok(Ok(_)) => return (Verdict::Ok, false),
        Ok(Err(FieldError::Invalid(problem))) => return (Verdict::Wrong(problem), false),
        Ok(Err(FieldError::Api(error))) => error,
        Ok(Err(other)) => return (Verdict::Unverified(other.to_string()), false),
        Err(_) => {
            let why = api
                .pause()
                .map(|pause| format!(": {}", pause.reason))
                .unwrap_or_default();
            let problem = format!(
                "no answer from the Tallyfy API at {} within {}{why}",
                config.api.base_url,
                humantime::format_duration(DEADLINE)
            );
            return (Verdict::Unverified(problem), true);
        }
    };
    if error.is_untrusted() {
        return (Verdict::Untrusted(error.to_string()), true);
    }
    if error.is_unauthorized() {
        let problem = format!("the API refused the credentials: {error}");
        return (Verdict::Refused(problem), true);
    }
    if error.is_retryable() {
        let hint = match error {
            ApiError::Decode { .. } => diagnose::base_url_hint(config.api.base_url.as_str()),
            _ => "",
        };
        let problem = format!(
            "cannot reach the Tallyfy API at {} (gave up after {ATTEMPTS} attempts): {error}{hint}",
            config.api.base_url
        );
        return (Verdict::Unverified(problem), true);
    }
    (
        Verdict::Unverified(format!("the API answered with an error: {error}")),
        false,
    )
}

/// One line per folder: "target OK" or the problem.
pub fn render_checks(checks: &[TargetCheck]) -> String {
    let mut out = String::from("targets (asked the Tallyfy API, read only):\n");
    for check in checks {
        let verdict = match &check.verdict {
            Verdict::Ok => "target OK".to_string(),
            Verdict::Wrong(problem) => format!("target wrong: {problem}"),
            Verdict::Refused(problem)
            | Verdict::Untrusted(problem)
            | Verdict::Unverified(problem) => {
                format!("not verified: {problem}")
            }
        };
        // The names go next to the ids, so the line still ends with its verdict.
        let names = match &check.names {
            Some(names) if *names != Names::default() => format!(" ({names})"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} → {}{names}: {}",
            text::path(&check.folder),
            check.target,
            text::escaped(&verdict)
        );
        match check.processes.as_deref() {
            None => {}
            Some([]) => out.push_str("    no active process; files wait in their subfolders\n"),
            Some(processes) => {
                for process in processes {
                    let _ = writeln!(
                        out,
                        "    process '{}' ({}) ← subfolder {}{}",
                        crate::text::escaped(&process.name),
                        process.run_id,
                        crate::text::escaped(&process.subfolder),
                        process
                            .problem
                            .as_ref()
                            .map(|problem| format!(": {problem}; its files wait"))
                            .unwrap_or_default()
                    );
                }
            }
        }
    }
    out
}

/// Success when every target is fine; a wrong target or refused credentials come first (the
/// config must change), then an API that could not be asked.
pub fn verdict(checks: &[TargetCheck], config: &Config) -> Result<(), PlanError> {
    let wrong = checks
        .iter()
        .filter(|check| matches!(check.verdict, Verdict::Wrong(_)))
        .count();
    if wrong > 0 {
        return Err(PlanError::WrongTargets {
            wrong,
            total: checks.len(),
            file: config.file.clone(),
        });
    }
    for check in checks {
        match &check.verdict {
            Verdict::Refused(problem) | Verdict::Untrusted(problem) => {
                return Err(PlanError::Refused {
                    problem: problem.clone(),
                })
            }
            Verdict::Unverified(problem) => {
                return Err(PlanError::Unreachable {
                    problem: problem.clone(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// What `run` would do now, folder by folder.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    pub folders: Vec<FolderPlan>,
    /// Remote deletes still pending for a target no longer in the config: `run` keeps them
    /// queued until it is back.
    pub stranded: Vec<Action>,
    pub summary: Summary,
}

#[derive(Debug, Serialize)]
pub struct FolderPlan {
    pub folder: PathBuf,
    pub target: String,
    /// Why the folder would be paused: nothing in it is uploaded or deleted.
    pub paused: Option<String>,
    /// Set when `max_delete` would hold the folder's deletes.
    pub hold: Option<Hold>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Serialize)]
pub struct Hold {
    pub gone: usize,
    pub synced: usize,
    pub max_delete_percent: u8,
}

/// One thing `run` would do about one file.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// A file new to the field; `stored_as` is the name Tallyfy would store when it differs
    /// from the local one.
    Upload {
        path: PathBuf,
        size: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        stored_as: Option<String>,
    },
    /// A new version of a file, whose upload takes the place of asset `replaces`.
    Replace {
        path: PathBuf,
        size: u64,
        replaces: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        stored_as: Option<String>,
    },
    /// Uploaded before a stop but not in the field yet: attached without another upload.
    Attach {
        path: PathBuf,
        asset: String,
        replaces: Option<String>,
    },
    /// Touched or rewritten with the same content: nothing is sent.
    Unchanged { path: PathBuf },
    /// Not eligible; never sent.
    Skip { path: PathBuf, reason: String },
    /// Removed locally: its assets are deleted from Tallyfy.
    Delete { path: PathBuf, assets: Vec<String> },
    /// Removed locally, but `max_delete` holds the remote delete.
    Hold { path: PathBuf, assets: Vec<String> },
    /// Removed locally; its assets stay in Tallyfy (`delete_remote` is off).
    Keep { path: PathBuf, assets: Vec<String> },
    /// A remote delete recorded before a stop and not confirmed: sent again.
    PendingDelete { path: PathBuf, asset: String },
    /// Launch folders: a new file, uploaded to start process `name` of template `template`.
    Launch {
        path: PathBuf,
        size: u64,
        name: String,
        template: String,
    },
    /// Launch folders: a launch a stop interrupted; its process is looked up, then started
    /// if it is not there.
    Resume { path: PathBuf, name: String },
    /// Launch folders: content that `of` launched already (as process `run`, if recorded).
    Duplicate {
        path: PathBuf,
        of: PathBuf,
        run: Option<String>,
    },
    /// Launch folders: a launched file still in the inbox, deleted or moved away (`after`).
    Clear { path: PathBuf, how: String },
    /// Route folders: a new file, uploaded to the task of process `process` (`run_id`).
    Route {
        path: PathBuf,
        size: u64,
        process: String,
        run_id: String,
    },
    /// Route folders: a file that goes nowhere yet, and why.
    Wait { path: PathBuf, reason: String },
}

impl Action {
    fn path(&self) -> &Path {
        match self {
            Action::Upload { path, .. }
            | Action::Replace { path, .. }
            | Action::Attach { path, .. }
            | Action::Unchanged { path }
            | Action::Skip { path, .. }
            | Action::Delete { path, .. }
            | Action::Hold { path, .. }
            | Action::Keep { path, .. }
            | Action::PendingDelete { path, .. }
            | Action::Launch { path, .. }
            | Action::Resume { path, .. }
            | Action::Duplicate { path, .. }
            | Action::Clear { path, .. }
            | Action::Route { path, .. }
            | Action::Wait { path, .. } => path,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub upload: usize,
    pub upload_bytes: u64,
    pub replace: usize,
    pub replace_bytes: u64,
    pub attach: usize,
    pub unchanged: usize,
    pub skip: usize,
    pub delete: usize,
    pub hold: usize,
    pub keep: usize,
    pub pending_deletes: usize,
    pub paused_folders: usize,
    pub launch: usize,
    pub duplicate: usize,
    pub wait: usize,
}

impl Summary {
    fn count(&mut self, action: &Action) {
        match action {
            Action::Upload { size, .. } => {
                self.upload += 1;
                self.upload_bytes += size;
            }
            Action::Replace { size, .. } => {
                self.replace += 1;
                self.replace_bytes += size;
            }
            Action::Attach { .. } => self.attach += 1,
            Action::Unchanged { .. } => self.unchanged += 1,
            Action::Skip { .. } => self.skip += 1,
            Action::Delete { .. } => self.delete += 1,
            Action::Hold { .. } => self.hold += 1,
            Action::Keep { .. } => self.keep += 1,
            Action::PendingDelete { .. } => self.pending_deletes += 1,
            Action::Launch { size, .. } => {
                self.launch += 1;
                self.upload += 1;
                self.upload_bytes += size;
            }
            Action::Resume { .. } => self.launch += 1,
            Action::Duplicate { .. } => self.duplicate += 1,
            Action::Clear { .. } => {}
            Action::Route { size, .. } => {
                self.upload += 1;
                self.upload_bytes += size;
            }
            Action::Wait { .. } => self.wait += 1,
        }
    }
}

/// Scans each folder once and says what `run` would do about what differs from the store,
/// reading files (their metadata; their content where only a hash tells a change) and never
/// writing.
pub fn plan(config: &Config, store: &Store, checks: &[TargetCheck]) -> Result<Plan, StoreError> {
    let mut pending: HashMap<PathBuf, Vec<Action>> = HashMap::new();
    let mut stranded = Vec::new();
    for job in store.pending_deletes()? {
        let action = Action::PendingDelete {
            path: job.path.clone(),
            asset: job.asset.id().unwrap_or_default(),
        };
        // `run` sends a tombstone to whichever actor serves its target.
        let serving = config
            .folders
            .iter()
            .filter(|folder| folder.target.key() == job.target)
            .min_by_key(|folder| folder.path != job.folder);
        match serving {
            Some(folder) => pending.entry(folder.path.clone()).or_default().push(action),
            None => stranded.push(action),
        }
    }
    let mut plan = Plan::default();
    for folder in &config.folders {
        let active = checks
            .iter()
            .find(|check| check.folder == folder.path)
            .map_or(&[][..], |check| check.active.as_slice());
        let mut planned = plan_folder(folder, store, active)?;
        planned
            .actions
            .extend(pending.remove(&folder.path).unwrap_or_default());
        planned.actions.sort_by(|a, b| a.path().cmp(b.path()));
        for action in &planned.actions {
            plan.summary.count(action);
        }
        if planned.paused.is_some() {
            plan.summary.paused_folders += 1;
        }
        plan.folders.push(planned);
    }
    for action in &stranded {
        plan.summary.count(action);
    }
    plan.stranded = stranded;
    Ok(plan)
}

fn plan_folder(
    folder: &Folder,
    store: &Store,
    active: &[route::Process],
) -> Result<FolderPlan, StoreError> {
    let mut planned = FolderPlan {
        folder: folder.path.clone(),
        target: folder.target.to_string(),
        paused: None,
        hold: None,
        actions: Vec::new(),
    };
    let scanned = settle::scan(folder, &folder.path, store);
    let device = scanned
        .as_ref()
        .map(|scan| scan.device)
        .map_err(Clone::clone);
    let known = guard::recorded_device(store, &folder.path);
    if let Some(problem) = guard::root_problem(known, &device) {
        planned.paused = Some(problem);
        return Ok(planned);
    }
    let Ok(scan) = scanned else {
        return Ok(planned);
    };
    for (path, _) in scan.changed {
        // Gone or changed since the scan: `run` would look at it once it settles.
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if let Err(rejection) = sync::eligible(folder, &path, &metadata) {
            let reason = rejection.to_string();
            planned.actions.push(Action::Skip { path, reason });
            continue;
        }
        let meta = FileMeta::of(&metadata);
        if let Target::Launch(launch) = &folder.target {
            if let Some(action) = launch_action(folder, launch, store, path, meta)? {
                planned.actions.push(action);
            }
            continue;
        }
        let action = match sync::next(store.get(&path)?, meta) {
            Next::Nothing => continue,
            Next::Attach { record, asset } => {
                let asset = asset.id().unwrap_or_default();
                let replaces = attached_id(Some(&record)).filter(|old| *old != asset);
                Action::Attach {
                    path,
                    asset,
                    replaces,
                }
            }
            Next::CompareContent { record, hash } => {
                if open::hash(&folder.path, &path).ok().as_ref() == Some(&hash) {
                    Action::Unchanged { path }
                } else {
                    upload(path, meta, Some(&record))
                }
            }
            Next::Upload { previous } => upload(path, meta, previous.as_ref()),
        };
        let action = match &folder.target {
            Target::Route(route) => routed(folder, route, active, action),
            _ => action,
        };
        planned.actions.push(action);
    }
    if scan.vanished.is_empty() {
        return Ok(planned);
    }
    let released = guard::is_released(store, &folder.path);
    let hold = guard::holds(folder, scan.vanished.len(), scan.synced, released);
    if hold {
        planned.hold = Some(Hold {
            gone: scan.vanished.len(),
            synced: scan.synced,
            max_delete_percent: folder.max_delete_percent,
        });
    }
    for path in scan.vanished {
        let Some(record) = store.get(&path)? else {
            continue;
        };
        let assets: Vec<String> = sync::remote_assets(&record)
            .iter()
            .filter_map(Asset::id)
            .collect();
        if assets.is_empty() {
            continue; // nothing in Tallyfy: `run` only forgets it
        }
        planned.actions.push(if !folder.delete_remote {
            Action::Keep { path, assets }
        } else if hold {
            Action::Hold { path, assets }
        } else {
            Action::Delete { path, assets }
        });
    }
    Ok(planned)
}

/// What `run` would do about a changed or new file of a launch folder, by the launch stage's
/// rules: a launched file is only taken out of the inbox, known content launches nothing.
fn launch_action(
    folder: &Folder,
    launch: &Launch,
    store: &Store,
    path: PathBuf,
    meta: FileMeta,
) -> Result<Option<Action>, StoreError> {
    let record = store.get(&path)?;
    match record.map(|record| record.state) {
        Some(FileState::Launching { name, .. }) => return Ok(Some(Action::Resume { path, name })),
        Some(FileState::Launched { .. }) => {
            let how = match &launch.after {
                After::Keep => return Ok(None),
                After::Delete => "deleted".to_string(),
                After::Move { to } => format!("moved to {}", crate::text::path(to)),
            };
            return Ok(Some(Action::Clear { path, how }));
        }
        _ => {}
    }
    if launch.dedupe == Dedupe::Content {
        if let Ok(hash) = open::hash(&folder.path, &path) {
            if let Some(claim) = store.content_claim(&folder.path, &hash)? {
                if claim.path != path || claim.run.is_some() {
                    let run = claim.run.map(|run| run.name);
                    return Ok(Some(Action::Duplicate {
                        path,
                        of: claim.path,
                        run,
                    }));
                }
            }
        }
    }
    let name = launch
        .name
        .render(|placeholder| launch::placeholder_value(folder, &path, &meta, placeholder));
    Ok(Some(Action::Launch {
        path,
        size: meta.size,
        name,
        template: launch.checklist_id.clone(),
    }))
}

/// Where a route folder's file would go: a new file names its process, a file that would go
/// nowhere says why; the rest goes as it would in a task folder.
fn routed(folder: &Folder, route: &Route, active: &[route::Process], action: Action) -> Action {
    let path = action.path().to_path_buf();
    let resolution = match route::subfolder(&folder.path, &path) {
        None => route::Resolution::Wait(route::IN_ROOT.into()),
        Some(name) => route::lookup(active, &HashMap::new(), route, name),
    };
    match (resolution, action) {
        (route::Resolution::Wait(reason) | route::Resolution::Ended(reason), _) => {
            Action::Wait { path, reason }
        }
        (route::Resolution::Task(process, _), Action::Upload { size, .. }) => Action::Route {
            path,
            size,
            process: process.name,
            run_id: process.id,
        },
        (_, action) => action,
    }
}

fn attached_id(record: Option<&FileRecord>) -> Option<String> {
    record
        .and_then(|record| record.attached.as_ref())
        .and_then(Asset::id)
}

fn upload(path: PathBuf, meta: FileMeta, previous: Option<&FileRecord>) -> Action {
    // Eligible files have UTF-8 names.
    let local = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    let stored_as = Some(stored_name(local)).filter(|stored| stored != local);
    match attached_id(previous) {
        Some(replaces) => Action::Replace {
            path,
            size: meta.size,
            replaces,
            stored_as,
        },
        None => Action::Upload {
            path,
            size: meta.size,
            stored_as,
        },
    }
}

/// The plan as text: per folder one line per file, then the summary.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for folder in &plan.folders {
        let _ = writeln!(out, "{} → {}", text::path(&folder.folder), folder.target);
        if let Some(problem) = &folder.paused {
            let _ = writeln!(
                out,
                "  paused: {}; nothing in it would be uploaded or deleted",
                text::escaped(problem)
            );
        }
        if let Some(hold) = &folder.hold {
            let _ = writeln!(
                out,
                "  max_delete holds the deletes: {} of {} synced files are gone, more than {}%; `tallyfy-sync release-deletes {}` lets them go",
                hold.gone,
                hold.synced,
                hold.max_delete_percent,
                text::path(&folder.folder)
            );
        }
        for action in &folder.actions {
            out.push_str(&line(action, &folder.folder));
        }
        if folder.actions.is_empty() && folder.paused.is_none() {
            out.push_str("  nothing to do\n");
        }
    }
    if !plan.stranded.is_empty() {
        out.push_str(
            "remote deletes for targets no longer in the config (kept until they are back):\n",
        );
        for action in &plan.stranded {
            out.push_str(&line(action, Path::new("/")));
        }
    }
    out.push_str(&summary(&plan.summary));
    out
}

fn line(action: &Action, root: &Path) -> String {
    let name = |path: &Path| text::path(path.strip_prefix(root).unwrap_or(path)).to_string();
    let stored = |stored_as: &Option<String>| {
        stored_as
            .as_deref()
            .map(|stored| format!("; stored in Tallyfy as {}", text::escaped(stored)))
            .unwrap_or_default()
    };
    let list = |assets: &[String]| {
        let noun = if assets.len() == 1 { "asset" } else { "assets" };
        format!("{noun} {}", assets.join(", "))
    };
    let (verb, what) = match action {
        Action::Upload {
            path,
            size,
            stored_as,
        } => (
            "upload",
            format!("{} ({}){}", name(path), humansize(*size), stored(stored_as)),
        ),
        Action::Replace {
            path,
            size,
            replaces,
            stored_as,
        } => (
            "replace",
            format!(
                "{} ({}), in place of asset {replaces}{}",
                name(path),
                humansize(*size),
                stored(stored_as)
            ),
        ),
        Action::Attach {
            path,
            asset,
            replaces,
        } => (
            "attach",
            format!(
                "{}: asset {asset}, uploaded before the last stop{}",
                name(path),
                replaces
                    .as_ref()
                    .map(|old| format!(", in place of asset {old}"))
                    .unwrap_or_default()
            ),
        ),
        Action::Unchanged { path } => (
            "unchanged",
            format!("{}: touched, same content; nothing to send", name(path)),
        ),
        Action::Skip { path, reason } => {
            ("skip", format!("{}: {}", name(path), text::escaped(reason)))
        }
        Action::Delete { path, assets } => ("delete", format!("{}: {}", name(path), list(assets))),
        Action::Hold { path, assets } => (
            "hold",
            format!("{}: {} (held by max_delete)", name(path), list(assets)),
        ),
        Action::Keep { path, assets } => (
            "keep",
            format!(
                "{}: removed locally; {} stays in Tallyfy (delete_remote is off)",
                name(path),
                list(assets)
            ),
        ),
        Action::PendingDelete { path, asset } => (
            "pending",
            format!(
                "{}: delete of asset {asset} not confirmed before the last stop; sent again",
                name(path)
            ),
        ),
        Action::Launch {
            path,
            size,
            name: process,
            template,
        } => (
            "launch",
            format!(
                "{} ({}): would launch '{}' from template {template}",
                name(path),
                humansize(*size),
                crate::text::escaped(process)
            ),
        ),
        Action::Resume {
            path,
            name: process,
        } => (
            "resume",
            format!(
                "{}: the launch of '{}' was interrupted by a stop; its process is looked up, and launched only if it is not there",
                name(path),
                crate::text::escaped(process)
            ),
        ),
        Action::Duplicate { path, of, run } => (
            "duplicate",
            format!(
                "{}: same content as {}{}; would launch nothing",
                name(path),
                name(of),
                run.as_ref()
                    .map(|run| format!(", which started process '{}'", crate::text::escaped(run)))
                    .unwrap_or_default()
            ),
        ),
        Action::Clear { path, how } => (
            "clear",
            format!("{}: its process was started; would be {how}", name(path)),
        ),
        Action::Route {
            path,
            size,
            process,
            run_id,
        } => (
            "upload",
            format!(
                "{} ({}) to process '{}' ({run_id})",
                name(path),
                humansize(*size),
                crate::text::escaped(process)
            ),
        ),
        Action::Wait { path, reason } => ("wait", format!("{}: {reason}", name(path))),
    };
    format!("  {verb:<9} {what}\n")
}

fn summary(summary: &Summary) -> String {
    let mut line = format!(
        "would upload {} new ({}), replace {} ({}), attach {}, delete {}, skip {}; hold {}",
        summary.upload,
        humansize(summary.upload_bytes),
        summary.replace,
        humansize(summary.replace_bytes),
        summary.attach,
        summary.delete,
        summary.skip,
        summary.hold
    );
    if summary.launch > 0 {
        let _ = write!(line, "; launch {} processes", summary.launch);
    }
    if summary.duplicate > 0 {
        let _ = write!(line, "; duplicates {}", summary.duplicate);
    }
    if summary.wait > 0 {
        let _ = write!(line, "; waiting for a process {}", summary.wait);
    }
    if summary.pending_deletes > 0 {
        let _ = write!(line, "; pending deletes {}", summary.pending_deletes);
    }
    if summary.paused_folders > 0 {
        let _ = write!(line, "; paused folders {}", summary.paused_folders);
    }
    line.push('\n');
    line
}

/// The verdicts and the plan as one JSON document.
pub fn to_json(checks: &[TargetCheck], plan: &Plan) -> serde_json::Value {
    serde_json::json!({
        "targets": checks,
        "folders": plan.folders,
        "stranded": plan.stranded,
        "summary": plan.summary,
    })
}

/// The state store as `run` would find it: the daemon's, or before the first run an empty
/// one, so that a dry run creates no state directory.
pub fn open_store(config: &Config) -> Result<Store, StoreError> {
    if Store::exists(&config.state_dir) {
        Store::open(&config.state_dir)
    } else {
        Store::empty(&config.state_dir)
    }
}
