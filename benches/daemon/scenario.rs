//! The three scenarios that need a watcher (burst, latency, big file), run the same way for the
//! daemon and the baseline script: move staged files into a watched folder, then poll the fake's
//! task field until they are listed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tallyfy_sync::fake::RequestRecord;

use crate::procfs;
use crate::world::{count, move_into, until, upload_secs, TaskRef, World};

/// Long enough for the baseline at a few files per second, or the daemon under valgrind.
const TIMEOUT: Duration = Duration::from_secs(900);
/// Between two latency samples, so that one file's work never overlaps the next.
const GAP: Duration = Duration::from_millis(100);

pub struct Burst {
    pub files: usize,
    pub secs: f64,
    pub requests: Vec<RequestRecord>,
    /// CPU the participant used for the burst (not the fake's).
    pub cpu: Option<Duration>,
    /// Wall-clock time of the first move, to line it up with the daemon's log.
    pub started_at: std::time::SystemTime,
    /// Most uploads the server had in progress at once, as polled.
    pub max_uploads: usize,
}

impl Burst {
    pub fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.secs
    }

    pub fn puts(&self) -> usize {
        count(&self.requests, "PUT")
    }
}

pub struct Big {
    pub bytes: u64,
    /// Drop → listed in the field.
    pub secs: f64,
    /// Upload arrival → PUT arrival, as the server saw them.
    pub upload_secs: Option<f64>,
    /// Highest sampled VmRSS minus VmRSS before the drop, in KiB.
    pub rss_rise_kib: Option<u64>,
    /// VmHWM after (reset at the drop) minus VmRSS before, in KiB.
    pub hwm_rise_kib: Option<u64>,
}

impl Big {
    /// MiB/s over the upload as the server saw it.
    pub fn mib_per_sec(&self) -> Option<f64> {
        self.upload_secs
            .map(|secs| self.bytes as f64 / (1024.0 * 1024.0) / secs)
    }
}

/// Moves every staged file into `into` at once and waits until the field lists them all.
pub async fn burst(
    world: &World,
    staged: &[PathBuf],
    into: &Path,
    task: &TaskRef,
    cpu: &dyn Fn() -> Duration,
) -> anyhow::Result<Burst> {
    let before = cpu();
    let started_at = std::time::SystemTime::now();
    let start = Instant::now();
    move_into(staged, into)?;
    let mut max_uploads = 0;
    let done = until(
        &format!("{} files are attached to {}", staged.len(), task.task),
        TIMEOUT,
        Duration::from_millis(5),
        || {
            max_uploads = max_uploads.max(uploads_in_progress(world));
            world.attached(task) >= staged.len()
        },
    )
    .await?;
    Ok(Burst {
        files: staged.len(),
        secs: done.duration_since(start).as_secs_f64(),
        requests: world.requests_since(start),
        cpu: Some(cpu().saturating_sub(before)),
        started_at,
        max_uploads,
    })
}

/// Uploads the server has received the head of but not answered yet.
pub fn uploads_in_progress(world: &World) -> usize {
    world
        .fake
        .requests()
        .iter()
        .filter(|request| request.method == "POST" && request.status == 0)
        .count()
}

/// Moves the files in one at a time, each once the one before is listed; drop → listed.
pub async fn latency(
    world: &World,
    staged: &[PathBuf],
    into: &Path,
    task: &TaskRef,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(staged.len());
    for (index, file) in staged.iter().enumerate() {
        let start = Instant::now();
        move_into(std::slice::from_ref(file), into)?;
        let done = world
            .wait_attached(task, index + 1, TIMEOUT, Duration::from_millis(1))
            .await?;
        samples.push(done.duration_since(start));
        tokio::time::sleep(GAP).await;
    }
    Ok(samples)
}

/// Moves one big file in; with a pid, follows that process's memory while it is sent.
pub async fn big(
    world: &World,
    staged: &Path,
    into: &Path,
    task: &TaskRef,
    pid: Option<i32>,
) -> anyhow::Result<Big> {
    let bytes = std::fs::metadata(staged)?.len();
    let sampler = pid.map(Sampler::start).transpose()?;
    let start = Instant::now();
    move_into(&[staged.to_path_buf()], into)?;
    let done = world
        .wait_attached(task, 1, TIMEOUT, Duration::from_millis(2))
        .await?;
    let requests = world.requests_since(start);
    let (rss_rise_kib, hwm_rise_kib) = match sampler {
        Some(sampler) => {
            let (rss, hwm) = sampler.stop();
            (Some(rss), Some(hwm))
        }
        None => (None, None),
    };
    Ok(Big {
        bytes,
        secs: done.duration_since(start).as_secs_f64(),
        upload_secs: upload_secs(&requests, task),
        rss_rise_kib,
        hwm_rise_kib,
    })
}

/// Samples a process's VmRSS every 2 ms on a thread of its own.
struct Sampler {
    pid: i32,
    before: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: i32) -> anyhow::Result<Sampler> {
        procfs::reset_peak(pid)?;
        let before = procfs::status_kib(pid, "VmRSS").unwrap_or_default();
        let peak = Arc::new(AtomicU64::new(before));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Some(rss) = procfs::status_kib(pid, "VmRSS") {
                    seen.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(Sampler {
            pid,
            before,
            peak,
            stop,
            thread,
        })
    }

    /// (sampled peak − before, VmHWM − before), in KiB.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let hwm = procfs::status_kib(self.pid, "VmHWM").unwrap_or_default();
        (
            self.peak
                .load(Ordering::Relaxed)
                .saturating_sub(self.before),
            hwm.saturating_sub(self.before),
        )
    }
}
