//! Wires the stages together and runs them until shutdown:
//! watch → settle → queue → sync, with one field actor per remote field.
//! Receives a validated config and a token; owns the channels between stages, the start-up
//! order (store, targets, leftover deletes, watches, first scan) and the orderly stop.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{ApiError, Client, Pause, PauseHook};
use crate::config::{Config, Token};
use crate::field::FieldHandle;
use crate::settle::Settle;
use crate::status::PAUSE_KEY;
use crate::store::{Store, StoreError};
use crate::sync::Syncer;
use crate::{control, queue, watch};

/// Watcher hints waiting for the settle stage; beyond this the watcher asks for a rescan.
const HINT_CAPACITY: usize = 8192;
/// Settled files waiting for a worker.
const JOB_CAPACITY: usize = 1024;
/// Files in progress at once per upload slot: the rest of a file's work (attach, record) waits
/// on its field actor, not on the network, so more files than uploads can be in flight.
const FILES_PER_UPLOAD_SLOT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(#[from] ApiError),
}

pub async fn run(
    config: Config,
    token: Token,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.file.display(),
        state_dir = %config.state_dir.display(),
        "tallyfy-sync starting"
    );
    let store = Store::open(&config.state_dir)?;
    let api = Arc::new(
        Client::new(&config.api, token, cancel.child_token())?.on_pause_change(save_pauses(&store)),
    );
    match store.meta::<Pause>(PAUSE_KEY) {
        Ok(Some(pause)) => api.resume_pause(pause),
        Ok(None) => {}
        Err(error) => warn!(%error, "cannot read the saved request pause; starting without it"),
    }

    // Folders mapped to the same field share one actor, so their PUTs cannot race either.
    let mut actors: HashMap<String, FieldHandle> = HashMap::new();
    let mut actor_tasks = Vec::new();
    let fields: Vec<FieldHandle> = config
        .folders
        .iter()
        .map(|folder| {
            info!(folder = %folder.path.display(), target = %folder.target, recursive = folder.recursive, delete_remote = folder.delete_remote, "watching folder");
            actors
                .entry(folder.target.key())
                .or_insert_with(|| {
                    let (handle, task) = FieldHandle::spawn(folder.target.clone(), api.clone(), store.clone(), cancel.clone());
                    actor_tasks.push(task);
                    handle
                })
                .clone()
        })
        .collect();

    resume_deletes(&store, &actors).await;
    retry_after_config_change(&config, &store).await;

    let syncer = Arc::new(Syncer::new(
        config.clone(),
        store.clone(),
        api.clone(),
        fields,
    ));
    let (hint_tx, hint_rx) = mpsc::channel(HINT_CAPACITY);
    let (job_tx, job_rx) = mpsc::channel(JOB_CAPACITY);
    let overflow = Arc::new(AtomicBool::new(false));
    let control = tokio::spawn(control::serve(
        config.clone(),
        store.clone(),
        hint_tx.clone(),
        cancel.clone(),
    ));
    let watch = watch::start(hint_tx, overflow.clone());
    let settle = tokio::spawn(Settle::new(config.clone(), store.clone(), watch).run(
        hint_rx,
        overflow,
        job_tx,
        cancel.clone(),
    ));
    let limit = config.api.concurrency * FILES_PER_UPLOAD_SLOT;
    let queue = tokio::spawn(queue::run(job_rx, syncer, limit, cancel.clone()));
    info!(folders = config.folders.len(), settle = %humantime::format_duration(config.settle), "running; initial scan started");

    cancel.cancelled().await;
    let _ = settle.await;
    let _ = control.await;
    if let Err(error) = queue.await {
        error!(%error, "the work queue stopped unexpectedly");
    }
    for task in actor_tasks {
        task.abort();
    }
    store.flush().await?;
    info!("stopped; state saved");
    Ok(())
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
        match control::retry_failed(store, None).await {
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
async fn resume_deletes(store: &Store, actors: &HashMap<String, FieldHandle>) {
    let jobs = match store.pending_deletes() {
        Ok(jobs) => jobs,
        Err(error) => {
            error!(%error, "cannot read the pending deletes");
            return;
        }
    };
    for job in jobs {
        match actors.get(&job.target) {
            Some(actor) => actor.delete_later(job).await,
            None => warn!(
                file = %job.path.display(),
                asset = %job.asset.id().unwrap_or_default(),
                "a delete is pending for a target no longer in the config; it stays queued until the target is back"
            ),
        }
    }
}
