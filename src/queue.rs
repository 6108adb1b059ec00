//! Runs settled jobs through `sync`, many files at once but one job per path at a time.
//! Receives `Job`s from the settle stage; a job for a path already in progress marks it to run
//! again when the current one ends, so no two workers ever handle the same file. Owns the
//! in-flight set and the bounded drain at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::metrics::METRICS;
use crate::settle::Job;
use crate::sync::Syncer;

/// How long in-flight work may run on after a shutdown request.
pub const DRAIN: Duration = Duration::from_secs(10);

pub async fn run(
    mut jobs: mpsc::Receiver<Job>,
    syncer: Arc<Syncer>,
    limit: usize,
    cancel: CancellationToken,
) {
    // path → whether another job for it arrived while it ran
    let mut in_flight: HashMap<PathBuf, (Job, bool)> = HashMap::new();
    let mut ids: HashMap<tokio::task::Id, PathBuf> = HashMap::new();
    let mut tasks = JoinSet::new();
    let spawn = |tasks: &mut JoinSet<()>, ids: &mut HashMap<tokio::task::Id, PathBuf>, job: Job| {
        let syncer = syncer.clone();
        let path = job.path.clone();
        let handle = tasks.spawn(async move { syncer.process(&job).await });
        ids.insert(handle.id(), path);
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            job = jobs.recv(), if tasks.len() < limit => {
                let Some(job) = job else { break };
                match in_flight.get_mut(&job.path) {
                    Some((_, again)) => *again = true,
                    None => {
                        in_flight.insert(job.path.clone(), (job.clone(), false));
                        spawn(&mut tasks, &mut ids, job);
                    }
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                METRICS.job_done();
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => {
                        error!(%error, "a sync task failed unexpectedly; the file is retried at the next rescan");
                        error.id()
                    }
                };
                let Some(path) = ids.remove(&id) else { continue };
                if let Some((job, true)) = in_flight.remove(&path) {
                    in_flight.insert(path, (job.clone(), false));
                    spawn(&mut tasks, &mut ids, job);
                }
            }
        }
    }
    if !tasks.is_empty() {
        let left = tasks.len();
        if tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            warn!(
                files = left,
                "stopped waiting for in-flight uploads; they resume at the next start"
            );
            tasks.abort_all();
        }
    }
}
