//! Runs settled jobs through `sync`, many files at once but one job per path at a time.
//! Receives `Job`s from the settle stage; a job for a path already in progress marks it to run
//! again when the current one ends, so no two workers ever handle the same file. Owns the
//! in-flight set, the places of files at work (a file waiting for its field's batch gives its
//! place to the next one) and the bounded drain at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::field::{Place, PLACE};
use crate::metrics::METRICS;
use crate::progress;
use crate::settle::Job;
use crate::sync::Syncer;

/// Files in progress at most, per place at work: those beyond `limit` wait for their field's
/// batch, which holds at most 500.
const IN_PROGRESS_PER_PLACE: usize = 4;
/// How long in-flight work may run on after a shutdown request.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Long work (an initial sync, a scanner's burst) logs its progress this often; on a terminal
/// (`run` in a shell, `demo`) every second, with a bar.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const PROGRESS_EVERY_ON_TERMINAL: Duration = Duration::from_secs(1);
static ON_TERMINAL: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::io::IsTerminal::is_terminal(&std::io::stderr()));

fn progress_every() -> Duration {
    if *ON_TERMINAL {
        PROGRESS_EVERY_ON_TERMINAL
    } else {
        PROGRESS_EVERY
    }
}

/// When the current backlog's progress is next logged, and whether it has been at all (a
/// backlog that drains before the first line says nothing when it ends either).
struct Reports {
    next: Instant,
    made: bool,
}

impl Reports {
    fn new() -> Reports {
        Reports {
            next: Instant::now() + progress_every(),
            made: false,
        }
    }

    fn report(&mut self) {
        if let Some(backlog) = progress::current() {
            let bar = if *ON_TERMINAL {
                progress::bar(backlog.files_done, backlog.files_total)
            } else {
                String::new()
            };
            info!(
                done = backlog.files_done,
                total = backlog.files_total,
                uploaded = backlog.uploaded,
                uploading = backlog.uploading,
                bytes_done = backlog.bytes_done,
                bytes_total = backlog.bytes_total,
                eta_secs = backlog.eta_secs,
                "progress: {bar}{}",
                backlog.line()
            );
            self.made = true;
        }
        self.next = Instant::now() + progress_every();
    }
}

/// Runs the jobs, at most `limit` files at work at once (reading, uploading, recording); files
/// that wait for their field's batch do not count, up to `IN_PROGRESS_PER_PLACE` × `limit`.
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
    let mut reports: Option<Reports> = None;
    let places = Arc::new(Semaphore::new(limit.max(1)));
    let most = limit.max(1) * IN_PROGRESS_PER_PLACE;
    // A place taken for the next job, so that a job is only received once it can start.
    let mut free: Option<OwnedSemaphorePermit> = None;
    let spawn = |tasks: &mut JoinSet<()>,
                 ids: &mut HashMap<tokio::task::Id, PathBuf>,
                 job: Job,
                 place: Option<OwnedSemaphorePermit>| {
        let syncer = syncer.clone();
        let path = job.path.clone();
        let work = PLACE.scope(Place::new(place), async move { syncer.process(&job).await });
        let handle = tasks.spawn(work);
        ids.insert(handle.id(), path);
    };
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = sleep_until(reports.as_ref().map(|reports| reports.next)) => {
                if let Some(reports) = reports.as_mut() {
                    reports.report();
                }
            }
            place = places.clone().acquire_owned(), if free.is_none() => {
                free = place.ok();
            }
            job = jobs.recv(), if free.is_some() && tasks.len() < most => {
                let Some(job) = job else { break };
                reports.get_or_insert_with(Reports::new);
                // One lstat per file, for the bytes of the backlog.
                let size = std::fs::symlink_metadata(&job.path).map_or(0, |metadata| metadata.len());
                progress::taken(size, jobs.len());
                match in_flight.get_mut(&job.path) {
                    Some((_, again)) => *again = true,
                    None => {
                        in_flight.insert(job.path.clone(), (job.clone(), false));
                        spawn(&mut tasks, &mut ids, job, free.take());
                    }
                }
            }
            Some(done) = tasks.join_next_with_id() => {
                METRICS.job_done();
                let caught_up = tasks.is_empty() && jobs.is_empty();
                if let Some(ended) = progress::finished(jobs.len(), caught_up) {
                    if reports.take().is_some_and(|reports| reports.made) {
                        info!(
                            files = ended.files_done,
                            uploaded = ended.uploaded,
                            bytes = ended.bytes_done,
                            "caught up: {} files ({} uploaded, {}) in {}",
                            ended.files_done,
                            ended.uploaded,
                            progress::size(ended.bytes_done),
                            humantime::format_duration(Duration::from_secs(ended.elapsed_secs))
                        );
                    }
                }
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
                    // It takes the place of the task that ended, so it is not kept waiting.
                    let place = free.take().or_else(|| places.clone().try_acquire_owned().ok());
                    spawn(&mut tasks, &mut ids, job, place);
                }
            }
        }
    }
    progress::abandoned();
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

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
