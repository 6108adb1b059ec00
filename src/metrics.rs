//! What the daemon has done, as numbers, counted by every stage through one process-wide
//! registry of atomics (no lock on the hot path but the per-endpoint request table), and the
//! Prometheus text they render to. A leaf: it only counts; the exporter serves the text, and
//! whoever owns other data (the API's pause, the store's files) renders its own gauges.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub struct Metrics {
    files_synced: AtomicU64,
    uploads_ok: AtomicU64,
    uploads_failed: AtomicU64,
    deletes_ok: AtomicU64,
    deletes_failed: AtomicU64,
    launches_ok: AtomicU64,
    launches_failed: AtomicU64,
    bytes_uploaded: AtomicU64,
    /// Uploads on the wire now (waiting for a slot or retrying included).
    uploading: AtomicU64,
    retry_waits: AtomicU64,
    retry_wait_ms: AtomicU64,
    last_success_ms: AtomicU64,
    /// Files settled and handed to the sync stage, and those it has finished.
    jobs_queued: AtomicU64,
    jobs_done: AtomicU64,
    /// Folders paused right now (gone, unreadable, unmounted).
    folders_paused: AtomicI64,
    /// 1 while the state directory cannot be written (requests are held meanwhile).
    store_unwritable: AtomicU64,
    /// Synced files found removed from their field in Tallyfy, by what was done about it.
    removals_left: AtomicU64,
    removals_restored: AtomicU64,
    /// Files found already in their field with the same content, recorded without an upload.
    adopted: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

pub static METRICS: Metrics = Metrics {
    files_synced: AtomicU64::new(0),
    uploads_ok: AtomicU64::new(0),
    uploads_failed: AtomicU64::new(0),
    deletes_ok: AtomicU64::new(0),
    deletes_failed: AtomicU64::new(0),
    launches_ok: AtomicU64::new(0),
    launches_failed: AtomicU64::new(0),
    bytes_uploaded: AtomicU64::new(0),
    uploading: AtomicU64::new(0),
    retry_waits: AtomicU64::new(0),
    retry_wait_ms: AtomicU64::new(0),
    last_success_ms: AtomicU64::new(0),
    jobs_queued: AtomicU64::new(0),
    jobs_done: AtomicU64::new(0),
    folders_paused: AtomicI64::new(0),
    store_unwritable: AtomicU64::new(0),
    removals_left: AtomicU64::new(0),
    removals_restored: AtomicU64::new(0),
    adopted: AtomicU64::new(0),
    requests: Mutex::new(BTreeMap::new()),
};

/// How far the sync stage has got, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub queued: u64,
    pub done: u64,
    pub bytes: u64,
    /// Successful uploads, and uploads in progress.
    pub uploads: u64,
    pub uploading: u64,
}

/// An upload in progress, counted until dropped.
pub struct Uploading;

impl Drop for Uploading {
    fn drop(&mut self) {
        METRICS.uploading.fetch_sub(1, Relaxed);
    }
}

impl Metrics {
    pub fn synced(&self) {
        self.files_synced.fetch_add(1, Relaxed);
        self.last_success_ms.store(unix_ms(), Relaxed);
    }

    pub fn uploaded(&self, ok: bool, bytes: u64) {
        if ok {
            self.uploads_ok.fetch_add(1, Relaxed);
            self.bytes_uploaded.fetch_add(bytes, Relaxed);
        } else {
            self.uploads_failed.fetch_add(1, Relaxed);
        }
    }

    pub fn deleted(&self, ok: bool) {
        if ok {
            self.deletes_ok.fetch_add(1, Relaxed);
            self.last_success_ms.store(unix_ms(), Relaxed);
        } else {
            self.deletes_failed.fetch_add(1, Relaxed);
        }
    }

    /// A process started from a file (or a launch refused for good).
    pub fn launched(&self, ok: bool) {
        if ok {
            self.launches_ok.fetch_add(1, Relaxed);
            self.last_success_ms.store(unix_ms(), Relaxed);
        } else {
            self.launches_failed.fetch_add(1, Relaxed);
        }
    }

    /// An upload begins; it counts as in progress until the guard is dropped.
    pub fn uploading(&self) -> Uploading {
        self.uploading.fetch_add(1, Relaxed);
        Uploading
    }

    pub fn retry_wait(&self, wait: std::time::Duration) {
        self.retry_waits.fetch_add(1, Relaxed);
        self.retry_wait_ms
            .fetch_add(wait.as_millis() as u64, Relaxed);
    }

    /// One request and its status (0: no answer, a transport error).
    pub fn request(&self, endpoint: &'static str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((endpoint, status)).or_default() += 1;
    }

    /// A synced file found removed from its field in Tallyfy: put back, or left so.
    pub fn remote_removed(&self, restored: bool) {
        match restored {
            true => &self.removals_restored,
            false => &self.removals_left,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn adopted(&self) {
        self.adopted.fetch_add(1, Relaxed);
        self.last_success_ms.store(unix_ms(), Relaxed);
    }

    pub fn job_queued(&self) {
        self.jobs_queued.fetch_add(1, Relaxed);
    }

    pub fn job_done(&self) {
        self.jobs_done.fetch_add(1, Relaxed);
    }

    pub fn folder_paused(&self, paused: bool) {
        self.folders_paused
            .fetch_add(if paused { 1 } else { -1 }, Relaxed);
    }

    pub fn store_unwritable(&self, unwritable: bool) {
        self.store_unwritable.store(u64::from(unwritable), Relaxed);
    }

    pub fn progress(&self) -> Progress {
        Progress {
            queued: self.jobs_queued.load(Relaxed),
            done: self.jobs_done.load(Relaxed),
            bytes: self.bytes_uploaded.load(Relaxed),
            uploads: self.uploads_ok.load(Relaxed),
            uploading: self.uploading.load(Relaxed),
        }
    }

    /// The counters in Prometheus text.
    pub fn render(&self, out: &mut Exposition) {
        let get = |counter: &AtomicU64| counter.load(Relaxed) as f64;
        out.metric(
            "build_info",
            "gauge",
            "Always 1; the version of the running daemon is its label.",
            &[(
                format!("{{version=\"{}\"}}", escape(env!("CARGO_PKG_VERSION"))),
                1.0,
            )],
        );
        out.one(
            "files_synced_total",
            "counter",
            "Files attached to their field (new or changed versions).",
            get(&self.files_synced),
        );
        let by_result = |ok: &AtomicU64, failed: &AtomicU64| {
            vec![
                ("{result=\"ok\"}".to_string(), get(ok)),
                ("{result=\"failed\"}".to_string(), get(failed)),
            ]
        };
        out.metric(
            "uploads_total",
            "counter",
            "Uploads by result.",
            &by_result(&self.uploads_ok, &self.uploads_failed),
        );
        out.metric(
            "deletes_total",
            "counter",
            "Remote deletes by result.",
            &by_result(&self.deletes_ok, &self.deletes_failed),
        );
        out.metric(
            "launches_total",
            "counter",
            "Processes started from files (launch folders), by result.",
            &by_result(&self.launches_ok, &self.launches_failed),
        );
        out.metric(
            "remote_removals_total",
            "counter",
            "Synced files found removed from their field in Tallyfy, by what remote_removed did.",
            &[
                ("{action=\"left\"}".to_string(), get(&self.removals_left)),
                (
                    "{action=\"restored\"}".to_string(),
                    get(&self.removals_restored),
                ),
            ],
        );
        out.one(
            "adopted_total",
            "counter",
            "Files found in their field with the same content and recorded without an upload.",
            get(&self.adopted),
        );
        out.one(
            "uploaded_bytes_total",
            "counter",
            "Bytes of file content uploaded.",
            get(&self.bytes_uploaded),
        );
        let requests: Vec<(String, f64)> = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((endpoint, status), count)| {
                (
                    format!("{{endpoint=\"{endpoint}\",status=\"{status}\"}}"),
                    *count as f64,
                )
            })
            .collect();
        out.metric(
            "api_requests_total",
            "counter",
            "API requests by endpoint and HTTP status (0: no answer).",
            &requests,
        );
        out.one(
            "retry_waits_total",
            "counter",
            "Waits before retrying a failed request.",
            get(&self.retry_waits),
        );
        out.one(
            "retry_wait_seconds_total",
            "counter",
            "Time spent waiting before retries.",
            get(&self.retry_wait_ms) / 1000.0,
        );
        let queued = self.jobs_queued.load(Relaxed);
        let done = self.jobs_done.load(Relaxed);
        out.one(
            "queue_depth",
            "gauge",
            "Settled files waiting for or in the sync stage.",
            queued.saturating_sub(done) as f64,
        );
        out.one(
            "last_success_timestamp_seconds",
            "gauge",
            "When a file was last attached or deleted (Unix time; 0: not yet).",
            get(&self.last_success_ms) / 1000.0,
        );
        out.one(
            "state_dir_unwritable",
            "gauge",
            "1 while requests are paused because the state directory is full (or not writable).",
            get(&self.store_unwritable),
        );
        out.one(
            "folders_paused",
            "gauge",
            "Folders paused because they are gone, unreadable or unmounted.",
            self.folders_paused.load(Relaxed) as f64,
        );
    }

    /// Whether any folder is paused (gone, unreadable, unmounted).
    pub fn folders_paused(&self) -> bool {
        self.folders_paused.load(Relaxed) > 0
    }
}

/// `folder_up`: 1 for each folder that syncs now, 0 for one that is paused (root gone,
/// unreadable, unmounted) or whose target cannot be used (or is not verified yet).
pub fn render_folders_up(folders: &[(PathBuf, bool)], out: &mut Exposition) {
    let samples: Vec<(String, f64)> = folders
        .iter()
        .map(|(folder, up)| {
            (
                format!("{{folder=\"{}\"}}", escape(&folder.display().to_string())),
                f64::from(u8::from(*up)),
            )
        })
        .collect();
    out.metric(
        "folder_up",
        "gauge",
        "1 while the folder syncs; 0 while it is paused or its target cannot be used.",
        &samples,
    );
}

/// Prometheus text being written: `# HELP`, `# TYPE` and the samples of each metric.
#[derive(Default)]
pub struct Exposition(String);

impl Exposition {
    /// `samples` are label sets (`{a="b"}`, or empty) with their values.
    pub fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let out = &mut self.0;
        let _ = writeln!(out, "# HELP tallyfy_sync_{name} {help}");
        let _ = writeln!(out, "# TYPE tallyfy_sync_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "tallyfy_sync_{name}{labels} {value}");
        }
    }

    /// A metric with one unlabelled sample.
    pub fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.metric(name, kind, help, &[(String::new(), value)]);
    }

    pub fn into_text(self) -> String {
        self.0
    }
}

/// A label value as Prometheus reads it.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Now, in Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
