//! Wires the stages together and runs them until shutdown:
//! watch → settle → queue → sync, with one field actor per remote field.
//! Receives a validated config and the credentials; owns the channels between stages, the
//! start-up order (store, targets, leftover deletes, watches, first scan, readiness) and the
//! orderly stop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{ApiError, Client, Pause, PauseHook};
use crate::config::{Config, ConfigError, Credentials, Folder, Target};
use crate::control::{Answer, ReloadReply};
use crate::field::{FieldHandle, Removals};
use crate::metrics::METRICS;
use crate::retry::Backoff;
use crate::route::Router;
use crate::service::Reloads;
use crate::settle::Settle;
use crate::status::{FolderState, PAUSE_KEY};
use crate::store::{self, Rebuilt, Store, StoreError, UNWRITABLE};
use crate::sync::Syncer;
use crate::watch::Hint;
use crate::{control, exporter, filter, queue, recheck, service, status, watch};

/// Watcher hints waiting for the settle stage; beyond this the watcher asks for a rescan,
/// which costs a folder listing and no request.
const HINT_CAPACITY: usize = 1024;
/// Settled files waiting for a worker.
const JOB_CAPACITY: usize = 1024;
/// Files in progress at once per upload slot (`api.concurrency` bounds the uploads themselves):
/// most of a file's time after its upload is spent waiting for its field's next batch, so
/// many files must be in flight for batches to be large and PUTs few.
const FILES_PER_UPLOAD_SLOT: usize = 64;
/// Longest wait for the targets' verification before start-up is reported complete anyway:
/// an API that is down at boot must not make systemd's start timeout kill the daemon.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How often the one-line status for `systemctl status` is brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How soon, and at most how far apart, a state directory that cannot be written is tried
/// again: often enough to resume soon after space is freed, at a cost of one small write.
const STORE_PROBE_FIRST: Duration = Duration::from_secs(1);
const STORE_PROBE_MAX: Duration = Duration::from_secs(30);
/// How long a starting daemon waits for the store's lock: a command that reads the store
/// while no daemon answers (`status`, `verify`) holds it for a moment, and a daemon starting
/// just then must not exit as if a second daemon were running.
const LOCK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ApiError),
    #[error(transparent)]
    Metrics(#[from] exporter::BindError),
}

pub async fn run(
    config: Config,
    credentials: Credentials,
    cancel: CancellationToken,
    reloads: Reloads,
) -> Result<(), DaemonError> {
    let mut config = Arc::new(config);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.file.display(),
        state_dir = %config.state_dir.display(),
        "tallyfy-sync starting"
    );
    let Some((store, rebuilt)) = open_store(&config.state_dir, &cancel).await? else {
        info!("stopped before the state directory could be opened");
        return Ok(());
    };
    if let Some(rebuilt) = rebuilt {
        error!(
            state_dir = %config.state_dir.display(),
            moved_to = %rebuilt.moved_to.display(),
            error = %rebuilt.error,
            "the state store was damaged and could not be opened; moved it aside to {} (kept for inspection) and started a new one. Lost with it: remote deletes still pending (those files stay in Tallyfy), \"removed in Tallyfy\" marks (those files are uploaded again) and held deletes. Rebuilding by matching every file against its field: files already there with the same content are adopted, not uploaded again",
            crate::text::path(&rebuilt.moved_to)
        );
    }
    // Bound once the store is ours (a second daemon is told of the lock, not the port).
    let mut metrics = config
        .metrics_listen
        .map(exporter::Listener::bind)
        .transpose()?
        .map(Arc::new);
    let mut api = client(&config, credentials, &store, &cancel)?;
    // `tallyfy-sync reload` over the control socket; SIGHUP comes through `reloads`.
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadReply>(4);
    let mut pipeline = Pipeline::ready(&config, &store, &api, &metrics, &reload_tx, &cancel).await;
    loop {
        let reply = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = reloads.requested() => None,
            Some(reply) = reload_rx.recv() => Some(reply),
        };
        let (new_config, credentials, new_metrics) = match reload(&config, metrics.as_deref()) {
            Ok(reloaded) => reloaded,
            Err(error) => {
                error!("reload refused, the running configuration stays: {error:#}");
                if let Some(reply) = reply {
                    let _ = reply.send(Answer::ReloadRefused {
                        message: format!("{error:#}"),
                    });
                }
                continue;
            }
        };
        service::notify_reloading();
        let changes = log_changes(&config, &new_config);
        // In-flight files finish (or stop at a durable state); what was only queued in memory
        // is found again by the new pipeline's first scan, and the pause is in the store.
        pipeline.stop().await;
        config = Arc::new(new_config);
        if let Some(listener) = new_metrics {
            metrics = listener.map(Arc::new);
        }
        api = client(&config, credentials, &store, &cancel)?;
        pipeline = Pipeline::ready(&config, &store, &api, &metrics, &reload_tx, &cancel).await;
        info!(folders = config.folders.len(), "reloaded the configuration");
        if let Some(reply) = reply {
            let _ = reply.send(Answer::Reloaded { changes });
        }
    }
    service::notify_stopping("stopping: finishing in-flight work (up to 10 s)");
    pipeline.stop().await;
    drop(api);
    if let Some(error) = store.unwritable() {
        // Each state was flushed before the request it guards, or that request never went:
        // what could not be recorded is found again by the next start's scan.
        warn!(%error, "stopped; the state directory still cannot be written, so the files that could not be recorded are synced after the next start");
        return Ok(());
    }
    store.flush().await?;
    info!("stopped; state saved");
    Ok(())
}

/// Opens the store, waiting up to `LOCK_WAIT` while another process holds its lock; still
/// locked after that, a second daemon runs on the same state directory.
async fn open_when_unlocked(dir: &std::path::Path) -> Result<(Store, Option<Rebuilt>), StoreError> {
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        match Store::open_or_rebuild(dir).await {
            Err(StoreError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            opened => return opened,
        }
    }
}

/// Opens the store; a full or read-only file system is waited out (probing with backoff up to
/// `STORE_PROBE_MAX`) rather than reported as a configuration error, so that the service comes
/// back by itself once the disk has space. `None` when stopped meanwhile.
async fn open_store(
    dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<Option<(Store, Option<Rebuilt>)>, StoreError> {
    let first = match open_when_unlocked(dir).await {
        Err(StoreError::Unwritable { error, .. }) => error,
        opened => return opened.map(Some),
    };
    let free = store::free_space(dir);
    error!(
        state_dir = %dir.display(),
        free_bytes = free,
        error = %first,
        "cannot open the state directory {}: {UNWRITABLE} ({} free); waiting, and trying again every few seconds (at most {} apart) until it can be written",
        crate::text::path(dir),
        size(free),
        humantime::format_duration(STORE_PROBE_MAX)
    );
    let waiting = format!("waiting: {UNWRITABLE} ({})", crate::text::path(dir));
    service::notify_status(&waiting);
    // Ready (with the status saying what it waits for) rather than killed by the start
    // timeout and restarted into the same full disk; the watchdog is fed while it waits.
    let heartbeat = service::Heartbeat::from_env();
    let watchdog = cancel.child_token();
    let _stop_watchdog = watchdog.clone().drop_guard();
    let mut ready_at = Some(tokio::time::Instant::now() + READY_WAIT);
    let mut backoff = Backoff::new(STORE_PROBE_FIRST, STORE_PROBE_MAX);
    loop {
        let delay = backoff.next_delay();
        if ready_at.is_some_and(|at| tokio::time::Instant::now() + delay >= at) {
            ready_at = None;
            service::notify_ready(&waiting);
            tokio::spawn(service::run_watchdog(heartbeat.clone(), watchdog.clone()));
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = heartbeat.during(tokio::time::sleep(delay)) => {}
        }
        match open_when_unlocked(dir).await {
            Err(StoreError::Unwritable { error, .. }) => {
                debug!(state_dir = %dir.display(), %error, "the state directory still cannot be written")
            }
            Ok(store) => {
                info!(state_dir = %dir.display(), "the state directory can be written again; starting");
                return Ok(Some(store));
            }
            Err(error) => return Err(error),
        }
    }
}

/// While the store cannot be written, holds every request, so that no upload starts whose
/// result could not be recorded (only those already on the wire can become orphans); probes
/// with backoff; once a write succeeds, releases the requests and rescans every folder, so
/// that the files that could not be recorded meanwhile are tried again.
async fn hold_while_unwritable(
    store: Store,
    api: Arc<Client>,
    hints: mpsc::Sender<Hint>,
    cancel: CancellationToken,
) {
    let mut unwritable = store.watch_unwritable();
    // A pause an earlier pipeline announced is not announced again after a reload.
    let mut announced = store.unwritable().is_some();
    loop {
        let error = tokio::select! {
            _ = cancel.cancelled() => return,
            changed = unwritable.wait_for(Option::is_some) => match changed {
                Ok(error) => error.clone().unwrap_or_default(),
                Err(_) => return,
            },
        };
        METRICS.store_unwritable(true);
        let dir = store.path();
        let since = tokio::time::Instant::now();
        api.hold(UNWRITABLE);
        if !std::mem::replace(&mut announced, true) {
            let free = store::free_space(dir);
            error!(
                state_dir = %dir.display(),
                free_bytes = free,
                %error,
                "cannot write the state directory {}: {UNWRITABLE} ({} free); pausing all requests so that no upload goes unrecorded, and trying a small write every few seconds (at most {} apart) until it works",
                crate::text::path(dir),
                size(free),
                humantime::format_duration(STORE_PROBE_MAX)
            );
        }
        let mut backoff = Backoff::new(STORE_PROBE_FIRST, STORE_PROBE_MAX);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
            match store.probe().await {
                Ok(()) => break,
                Err(error) => debug!(%error, "the state directory still cannot be written"),
            }
        }
        api.release();
        announced = false;
        METRICS.store_unwritable(false);
        info!(
            state_dir = %dir.display(),
            paused_secs = since.elapsed().as_secs(),
            "the state directory can be written again; resuming requests and retrying the files that could not be recorded"
        );
        let _ = hints.send(Hint::Resync).await;
    }
}

/// "1.2 MiB", or "unknown" when it could not be found out.
fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "unknown".to_string(), filter::humansize)
}

/// The API client, with a pause saved by an earlier run (or pipeline) carried on.
fn client(
    config: &Config,
    credentials: Credentials,
    store: &Store,
    cancel: &CancellationToken,
) -> Result<Arc<Client>, DaemonError> {
    let api = Client::new(&config.api, credentials, cancel.child_token())?
        .on_pause_change(save_pauses(store));
    match store.meta::<Pause>(PAUSE_KEY) {
        Ok(Some(pause)) => api.resume_pause(pause),
        Ok(None) => {}
        Err(error) => warn!(%error, "cannot read the saved request pause; starting without it"),
    }
    Ok(Arc::new(api))
}

#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state_dir changed from {from} to {to}; that takes a restart")]
    StateDir { from: PathBuf, to: PathBuf },
    #[error(transparent)]
    Metrics(#[from] exporter::BindError),
}

/// A reloaded config, its credentials, and the metrics port when `metrics.listen` changed
/// (`Some(None)`: turned off).
type Reloaded = (Config, Credentials, Option<Option<exporter::Listener>>);

/// Reads the config file again; the credentials too, as a rotated token comes with a reload.
/// A new `metrics.listen` is bound here, so that a taken port refuses the reload.
fn reload(running: &Config, metrics: Option<&exporter::Listener>) -> Result<Reloaded, ReloadError> {
    info!(config = %running.file.display(), "reload requested; reading the configuration again");
    let config = Config::load(&running.file)?;
    if config.state_dir != running.state_dir {
        return Err(ReloadError::StateDir {
            from: running.state_dir.clone(),
            to: config.state_dir,
        });
    }
    let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
    let listening = metrics.map(|listener| listener.configured);
    let metrics = if config.metrics_listen == listening {
        None
    } else {
        Some(
            config
                .metrics_listen
                .map(exporter::Listener::bind)
                .transpose()?,
        )
    };
    Ok((config, credentials, metrics))
}

/// Says which folders a reload adds, removes or maps elsewhere, in the log and as the lines
/// `tallyfy-sync reload` prints.
fn log_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    for folder in &new.folders {
        let path = crate::text::path(&folder.path);
        match old.folders.iter().find(|known| known.path == folder.path) {
            None => {
                info!(folder = %folder.path.display(), target = %folder.target, "reload: folder added");
                changes.push(format!("folder added: {path} → {}", folder.target));
            }
            Some(known) if known.target != folder.target => {
                info!(
                    folder = %folder.path.display(),
                    target = %folder.target,
                    "reload: folder now maps to another target; files synced before stay where they are"
                );
                changes.push(format!(
                    "folder changed: {path} now → {} (was {})",
                    folder.target, known.target
                ));
            }
            Some(known) if settings_differ(known, folder) => {
                info!(folder = %folder.path.display(), "reload: folder settings changed");
                changes.push(format!("folder changed: {path} (settings)"));
            }
            Some(_) => {}
        }
    }
    for folder in &old.folders {
        if !new.folders.iter().any(|kept| kept.path == folder.path) {
            info!(folder = %folder.path.display(), "reload: folder removed; it is no longer watched and its remote files stay");
            changes.push(format!(
                "folder removed: {}",
                crate::text::path(&folder.path)
            ));
        }
    }
    if old.metrics_listen != new.metrics_listen {
        changes.push(match new.metrics_listen {
            Some(addr) => format!("metrics.listen: now {addr}"),
            None => "metrics.listen: metrics are off".to_string(),
        });
    }
    changes
}

/// Whether a folder kept across a reload has other settings than before (its target aside).
fn settings_differ(old: &Folder, new: &Folder) -> bool {
    (
        old.recursive,
        old.delete_remote,
        old.remote_removed,
        &old.ignore,
        old.watch,
        old.max_delete_percent,
    ) != (
        new.recursive,
        new.delete_remote,
        new.remote_removed,
        &new.ignore,
        new.watch,
        new.max_delete_percent,
    )
}

/// Everything that runs for one configuration: field actors, watcher, settle, queue, control
/// socket and metrics. A reload stops it and starts another; the store and the saved pause
/// outlive it.
struct Pipeline {
    cancel: CancellationToken,
    status: Status,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    queue: tokio::task::JoinHandle<()>,
    actors: Vec<tokio::task::JoinHandle<()>>,
    /// Starts the actors of the tasks route folders send files to.
    router: Arc<Router>,
    heartbeat: service::Heartbeat,
}

impl Pipeline {
    /// Starts a pipeline and reports it ready once its targets are verified (or after
    /// `READY_WAIT`), with the watchdog and the status line running.
    async fn ready(
        config: &Arc<Config>,
        store: &Store,
        api: &Arc<Client>,
        metrics: &Option<Arc<exporter::Listener>>,
        reloads: &mpsc::Sender<ReloadReply>,
        cancel: &CancellationToken,
    ) -> Pipeline {
        let mut pipeline = Pipeline::start(
            config.clone(),
            store.clone(),
            api.clone(),
            metrics.clone(),
            reloads.clone(),
            cancel,
        )
        .await;
        announce_ready(&pipeline.status, cancel).await;
        pipeline.report_status();
        pipeline
    }

    async fn start(
        config: Arc<Config>,
        store: Store,
        api: Arc<Client>,
        metrics: Option<Arc<exporter::Listener>>,
        reloads: mpsc::Sender<ReloadReply>,
        parent: &CancellationToken,
    ) -> Pipeline {
        let cancel = parent.child_token();
        let (hint_tx, hint_rx) = mpsc::channel(HINT_CAPACITY);
        // A file the field actor found deleted in Tallyfy and wants uploaded again.
        let (recheck_tx, mut recheck_rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut tasks = Vec::new();
        {
            let (hints, cancel) = (hint_tx.clone(), cancel.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let path = tokio::select! {
                        _ = cancel.cancelled() => return,
                        path = recheck_rx.recv() => match path {
                            Some(path) => path,
                            None => return,
                        },
                    };
                    if hints.send(watch::Hint::Path(path)).await.is_err() {
                        return;
                    }
                }
            }));
        }
        // Folders mapped to the same field share one actor, so their PUTs cannot race either.
        let mut actors: HashMap<String, FieldHandle> = HashMap::new();
        let mut actor_tasks = Vec::new();
        let fields: Vec<FieldHandle> = config
            .folders
            .iter()
            .map(|folder| {
                info!(folder = %folder.path.display(), target = %folder.target, recursive = folder.recursive, delete_remote = folder.delete_remote, remote_removed = %folder.remote_removed, "watching folder");
                actors
                    .entry(folder.target.key())
                    .or_insert_with(|| {
                        let removals = Removals {
                            folders: config
                                .folders
                                .iter()
                                .filter(|other| other.target.key() == folder.target.key())
                                // Launch and route folders keep no files in their own field.
                                .filter(|other| {
                                    !matches!(other.target, Target::Launch(_) | Target::Route(_))
                                })
                                .map(|other| (other.path.clone(), other.remote_removed))
                                .collect(),
                            every: config.rescan_interval,
                            recheck: recheck_tx.clone(),
                        };
                        let (handle, task) = FieldHandle::spawn(folder.target.clone(), api.clone(), store.clone(), removals, config.attach_delay, cancel.clone());
                        actor_tasks.push(task);
                        handle
                    })
                    .clone()
            })
            .collect();
        let router = Arc::new(Router::new(
            config.clone(),
            api.clone(),
            store.clone(),
            cancel.clone(),
            recheck_tx,
            actors.clone(),
        ));
        resume_deletes(&store, &actors, &router).await;
        retry_after_config_change(&config, &store).await;

        tasks.push(tokio::spawn(router.clone().run(
            fields.clone(),
            hint_tx.clone(),
            cancel.clone(),
        )));
        let syncer = Arc::new(Syncer::new(
            config.clone(),
            store.clone(),
            api.clone(),
            fields.clone(),
            router.clone(),
        ));
        let (job_tx, job_rx) = mpsc::channel(JOB_CAPACITY);
        let overflow = Arc::new(AtomicBool::new(false));
        // Held before any worker starts, when an earlier pipeline left the store unwritable.
        if store.unwritable().is_some() {
            api.hold(UNWRITABLE);
        }
        tasks.push(tokio::spawn(hold_while_unwritable(
            store.clone(),
            api.clone(),
            hint_tx.clone(),
            cancel.clone(),
        )));
        if let Some(listener) = metrics {
            let (config, store) = (config.clone(), store.clone());
            let health = {
                let (config, store) = (config.clone(), store.clone());
                Arc::new(move || status::folder_states(&config, &store).unwrap_or_default())
            };
            let status = Arc::new(move || status::build(&config, &store, true).ok());
            tasks.push(tokio::spawn(exporter::serve(
                listener,
                api.clone(),
                status,
                health,
                cancel.clone(),
            )));
        }
        tasks.push(tokio::spawn(recheck::run(
            config.clone(),
            store.clone(),
            api.clone(),
            hint_tx.clone(),
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(control::serve(
            config.clone(),
            store.clone(),
            hint_tx.clone(),
            reloads,
            cancel.clone(),
        )));
        let watch = watch::start(hint_tx, overflow.clone());
        let heartbeat = service::Heartbeat::from_env();
        tasks.push(tokio::spawn(
            Settle::new(config.clone(), store.clone(), watch)
                .with_heartbeat(heartbeat.clone())
                .run(hint_rx, overflow, job_tx, cancel.clone()),
        ));
        let limit = config.api.concurrency * FILES_PER_UPLOAD_SLOT;
        let queue = tokio::spawn(queue::run(job_rx, syncer, limit, cancel.clone()));
        info!(folders = config.folders.len(), settle = %humantime::format_duration(config.settle), "running; initial scan started");
        Pipeline {
            status: Status {
                config,
                store,
                targets: actors.into_iter().collect(),
                api,
            },
            cancel,
            tasks,
            queue,
            actors: actor_tasks,
            router,
            heartbeat,
        }
    }

    /// Starts the watchdog and the `systemctl status` line, once start-up is announced.
    fn report_status(&mut self) {
        self.tasks.push(tokio::spawn(service::run_watchdog(
            self.heartbeat.clone(),
            self.cancel.clone(),
        )));
        self.tasks.push(tokio::spawn(
            self.status.clone().report_until(self.cancel.clone()),
        ));
    }

    /// Takes no new work, lets in-flight work finish (bounded by the queue's drain time), and
    /// waits until every task is gone, so the socket and the metrics port are free again.
    async fn stop(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Err(error) = self.queue.await {
            error!(%error, "the work queue stopped unexpectedly");
        }
        for task in self
            .actors
            .into_iter()
            .chain(self.router.take_actor_tasks())
        {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Tells the service manager that start-up is done once every target is verified (valid or
/// not), or after `READY_WAIT` with a status saying what is still awaited.
async fn announce_ready(status: &Status, cancel: &CancellationToken) {
    let verified =
        futures_util::future::join_all(status.targets.iter().map(|(_, target)| target.ready()));
    tokio::select! {
        _ = cancel.cancelled() => return,
        waited = tokio::time::timeout(READY_WAIT, verified) => if waited.is_err() {
            warn!(wait_secs = READY_WAIT.as_secs(), "the Tallyfy API has not confirmed every target yet; reporting ready anyway, their files wait until it does");
        },
    }
    status.save_targets(&mut HashMap::new()).await;
    service::notify_ready(&status.line());
}

/// What the daemon tells `systemctl status` and saves for `status`, from state that costs
/// nothing to read.
#[derive(Clone)]
struct Status {
    config: Arc<Config>,
    store: Store,
    /// One handle per remote field, by target key.
    targets: Vec<(String, FieldHandle)>,
    api: Arc<Client>,
}

impl Status {
    fn line(&self) -> String {
        let verifying = self
            .targets
            .iter()
            .filter(|(_, target)| target.ready().now_or_never().is_none())
            .count();
        let mut line = format!("watching {}", count(self.config.folders.len(), "folder"));
        if verifying > 0 {
            line += &format!(
                "; waiting for the Tallyfy API to verify {verifying} of {}",
                count(self.targets.len(), "target")
            );
        }
        let states = status::folder_states(&self.config, &self.store).unwrap_or_default();
        let not_syncing: Vec<String> = states
            .iter()
            .filter(|(_, state)| matches!(state, FolderState::NotSyncing(_)))
            .map(|(path, state)| {
                let why = state.why().unwrap_or_default();
                // The reason, without the fix: the line must stay short.
                let reason = why.split("; ").next().unwrap_or(why);
                format!(
                    "{} ({})",
                    crate::text::path(path),
                    crate::text::escaped(reason)
                )
            })
            .collect();
        if !not_syncing.is_empty() {
            line += &format!(
                "; {} not syncing: {} (see tallyfy-sync status)",
                count(not_syncing.len(), "folder"),
                not_syncing.join(", ")
            );
        }
        if let Some(reason) = self.api.held() {
            line += &format!("; paused: {reason}");
        }
        if self.api.pause().is_some() {
            line += "; requests paused (API unreachable, rate limited, refusing the token, or its certificate not trusted)";
        }
        line
    }

    /// Saves what is wrong with each target whose verification changed since `saved` (for
    /// `status` and `/healthz`), leaving those still being verified as they were.
    async fn save_targets(&self, saved: &mut HashMap<String, Option<String>>) {
        for (key, target) in &self.targets {
            let problem = match target.verdict().now_or_never() {
                Some(Some(Ok(_))) => None,
                Some(Some(Err(why))) => Some(why),
                _ => continue,
            };
            if saved.get(key) == Some(&problem) {
                continue;
            }
            match self
                .store
                .set_meta(&status::target_key(key), problem.as_ref())
                .await
            {
                Ok(()) => {
                    saved.insert(key.clone(), problem);
                }
                Err(error) => debug!(%error, "cannot save whether a target checks out"),
            }
        }
    }

    /// Saves the targets' state and sends the line whenever it changes.
    async fn report_until(self, cancel: CancellationToken) {
        let mut saved = HashMap::new();
        let mut sent = self.line();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(STATUS_EVERY) => {}
            }
            self.save_targets(&mut saved).await;
            if !service::notify_enabled() {
                continue;
            }
            let line = self.line();
            if line != sent {
                service::notify_status(&line);
                sent = line;
            }
        }
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Saves each change of the request pause, latest first: a write superseded before it started
/// is skipped, and writes never reorder.
fn save_pauses(store: &Store) -> PauseHook {
    let (changes, mut latest) = tokio::sync::watch::channel(None::<Pause>);
    let store = store.clone();
    tokio::spawn(async move {
        while latest.changed().await.is_ok() {
            let pause = latest.borrow_and_update().clone();
            if let Err(error) = store.set_meta(PAUSE_KEY, pause.as_ref()).await {
                warn!(%error, "cannot save the request pause; a restart would probe at once");
            }
        }
    });
    Box::new(move |pause| {
        changes.send_replace(pause.cloned());
    })
}

/// A permanent failure may have come from the config (a wrong field, say): when the config
/// file changed since the last run, failed files get another chance.
async fn retry_after_config_change(config: &Config, store: &Store) {
    const KEY: &str = "config-fingerprint";
    let Ok(text) = std::fs::read(&config.file) else {
        return;
    };
    let fingerprint = blake3::hash(&text).to_hex().to_string();
    let previous: Option<String> = store.meta(KEY).ok().flatten();
    if previous.as_ref() == Some(&fingerprint) {
        return;
    }
    if previous.is_some() {
        match recheck::retry_failed(store).await {
            Ok(0) => {}
            Ok(files) => info!(
                files,
                "the config changed since the last run; retrying the failed files"
            ),
            Err(error) => warn!(%error, "cannot mark the failed files for another try"),
        }
    }
    if let Err(error) = store.set_meta(KEY, Some(&fingerprint)).await {
        warn!(%error, "cannot save the config fingerprint");
    }
}

/// Deletes recorded before a stop but not confirmed: send them again (404 counts as done).
async fn resume_deletes(store: &Store, actors: &HashMap<String, FieldHandle>, router: &Router) {
    let jobs = match store.pending_deletes() {
        Ok(jobs) => jobs,
        Err(error) => {
            error!(%error, "cannot read the pending deletes");
            return;
        }
    };
    for job in jobs {
        // A route folder's files were in the tasks of their processes.
        let actor = actors
            .get(&job.target)
            .cloned()
            .or_else(|| router.actor_for_delete(&job));
        match actor {
            Some(actor) => actor.delete_later(job).await,
            None => warn!(
                file = %job.path.display(),
                asset_id = %job.asset.id().unwrap_or_default(),
                "a delete is pending for a target no longer in the config; it stays queued until the target is back"
            ),
        }
    }
}
