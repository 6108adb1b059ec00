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
use crate::filter;
use crate::metrics::METRICS;
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

/// `[#########···········]  45%`
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {:>3}% ",
        "#".repeat(filled),
        "·".repeat(WIDTH as usize - filled),
        done.min(total) * 100 / total
    )
}

/// Files handled since the queue was last empty, for progress lines.
struct Batch {
    started: Instant,
    next_report: Instant,
    received: u64,
    done: u64,
    bytes_before: u64,
    reported: bool,
}

impl Batch {
    fn new() -> Batch {
        let now = Instant::now();
        Batch {
            started: now,
            next_report: now + progress_every(),
            received: 0,
            done: 0,
            bytes_before: METRICS.progress().bytes,
            reported: false,
        }
    }

    /// "120/1,240 files, 3.1 MiB/s, about 2m left", with `waiting` files not yet started.
    fn report(&mut self, waiting: usize) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let total = self.received + waiting as u64;
        let bytes = METRICS.progress().bytes.saturating_sub(self.bytes_before);
        let rate = self.done as f64 / elapsed;
        let left = if rate > 0.0 {
            let secs = (total.saturating_sub(self.done)) as f64 / rate;
            format!(
                "about {} left",
                humantime::format_duration(Duration::from_secs(secs.ceil() as u64))
            )
        } else {
            "nothing finished yet".to_string()
        };
        let bar = if *ON_TERMINAL {
            bar(self.done, total)
        } else {
            String::new()
        };
        info!(
            done = self.done,
            total,
            "progress: {bar}{}/{total} files, {:.1} files/s, {}/s; {left}",
            self.done,
            rate,
            filter::humansize((bytes as f64 / elapsed) as u64),
        );
        self.reported = true;
        self.next_report = Instant::now() + progress_every();
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
    let mut batch: Option<Batch> = None;
    share_arenas();
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
            _ = sleep_until(batch.as_ref().map(|batch| batch.next_report)) => {
                if let Some(batch) = batch.as_mut() {
                    batch.report(jobs.len());
                }
            }
            place = places.clone().acquire_owned(), if free.is_none() => {
                free = place.ok();
            }
            job = jobs.recv(), if free.is_some() && tasks.len() < most => {
                let Some(job) = job else { break };
                batch.get_or_insert_with(Batch::new).received += 1;
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
                if let Some(current) = batch.as_mut() {
                    current.done += 1;
                    if tasks.is_empty() && jobs.is_empty() {
                        if current.reported {
                            info!(
                                files = current.done,
                                "caught up: {} files in {}",
                                current.done,
                                humantime::format_duration(Duration::from_secs(current.started.elapsed().as_secs()))
                            );
                        }
                        batch = None;
                        give_back_memory();
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

/// Keeps the heap in two glibc arenas: by default each thread that allocates may get its own,
/// and a field's value, read and written by whichever worker runs its actor, then grows to its
/// peak in each of them.
fn share_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator setting; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the heap a burst of files used to the system: glibc keeps freed memory in each
/// thread's arena otherwise, and a daemon that synced 20,000 files would hold the peak for good.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_share_done() {
        assert_eq!(bar(0, 10), format!("[{}]   0% ", "·".repeat(24)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}]  50% ", "#".repeat(12), "·".repeat(12))
        );
        assert_eq!(bar(12, 10), format!("[{}] 100% ", "#".repeat(24)));
    }
}
