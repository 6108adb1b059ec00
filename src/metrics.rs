//! What the daemon has done, as numbers: for `/metrics` (Prometheus text), `/healthz`, and the
//! progress lines of long work. Receives increments from every stage through one process-wide
//! registry of atomics (no lock on the hot path but the per-endpoint request table); emits the
//! exposition on `metrics.listen`. Owns that HTTP listener.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Client;
use crate::status::StatusReport;

pub struct Metrics {
    files_synced: AtomicU64,
    uploads_ok: AtomicU64,
    uploads_failed: AtomicU64,
    deletes_ok: AtomicU64,
    deletes_failed: AtomicU64,
    launches_ok: AtomicU64,
    launches_failed: AtomicU64,
    bytes_uploaded: AtomicU64,
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
}

impl Metrics {
    pub fn synced(&self) {
        self.files_synced.fetch_add(1, Relaxed);
        self.last_success_ms.store(crate::api::unix_ms(), Relaxed);
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
            self.last_success_ms.store(crate::api::unix_ms(), Relaxed);
        } else {
            self.deletes_failed.fetch_add(1, Relaxed);
        }
    }

    /// A process started from a file (or a launch refused for good).
    pub fn launched(&self, ok: bool) {
        if ok {
            self.launches_ok.fetch_add(1, Relaxed);
            self.last_success_ms.store(crate::api::unix_ms(), Relaxed);
        } else {
            self.launches_failed.fetch_add(1, Relaxed);
        }
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

    pub fn remote_removed(&self, policy: crate::config::RemoteRemoved) {
        match policy {
            crate::config::RemoteRemoved::Leave => &self.removals_left,
            crate::config::RemoteRemoved::Restore => &self.removals_restored,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn adopted(&self) {
        self.adopted.fetch_add(1, Relaxed);
        self.last_success_ms.store(crate::api::unix_ms(), Relaxed);
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
        }
    }

    /// The Prometheus text exposition; `status` adds the store's view (pending, failed...).
    pub fn render(&self, status: Option<&StatusReport>, api: &Client) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP tallyfy_sync_{name} {help}");
            let _ = writeln!(out, "# TYPE tallyfy_sync_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "tallyfy_sync_{name}{labels} {value}");
            }
        };
        let get = |counter: &AtomicU64| counter.load(Relaxed) as f64;
        let one = |value: f64| vec![(String::new(), value)];
        metric(
            "files_synced_total",
            "counter",
            "Files attached to their field (new or changed versions).",
            &one(get(&self.files_synced)),
        );
        let by_result = |ok: &AtomicU64, failed: &AtomicU64| {
            vec![
                ("{result=\"ok\"}".to_string(), get(ok)),
                ("{result=\"failed\"}".to_string(), get(failed)),
            ]
        };
        metric(
            "uploads_total",
            "counter",
            "Uploads by result.",
            &by_result(&self.uploads_ok, &self.uploads_failed),
        );
        metric(
            "deletes_total",
            "counter",
            "Remote deletes by result.",
            &by_result(&self.deletes_ok, &self.deletes_failed),
        );
        metric(
            "launches_total",
            "counter",
            "Processes started from files (launch folders), by result.",
            &by_result(&self.launches_ok, &self.launches_failed),
        );
        metric(
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
        metric(
            "adopted_total",
            "counter",
            "Files found in their field with the same content and recorded without an upload.",
            &one(get(&self.adopted)),
        );
        metric(
            "uploaded_bytes_total",
            "counter",
            "Bytes of file content uploaded.",
            &one(get(&self.bytes_uploaded)),
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
        metric(
            "api_requests_total",
            "counter",
            "API requests by endpoint and HTTP status (0: no answer).",
            &requests,
        );
        metric(
            "retry_waits_total",
            "counter",
            "Waits before retrying a failed request.",
            &one(get(&self.retry_waits)),
        );
        metric(
            "retry_wait_seconds_total",
            "counter",
            "Time spent waiting before retries.",
            &one(get(&self.retry_wait_ms) / 1000.0),
        );
        let queued = self.jobs_queued.load(Relaxed);
        let done = self.jobs_done.load(Relaxed);
        metric(
            "queue_depth",
            "gauge",
            "Settled files waiting for or in the sync stage.",
            &one(queued.saturating_sub(done) as f64),
        );
        metric(
            "last_success_timestamp_seconds",
            "gauge",
            "When a file was last attached or deleted (Unix time; 0: not yet).",
            &one(get(&self.last_success_ms) / 1000.0),
        );
        metric(
            "api_paused",
            "gauge",
            "1 while requests are paused by an outage, a rate limit, a refused token or a state directory that cannot be written.",
            &one(if api.is_paused() { 1.0 } else { 0.0 }),
        );
        metric(
            "state_dir_unwritable",
            "gauge",
            "1 while requests are paused because the state directory is full (or not writable).",
            &one(get(&self.store_unwritable)),
        );
        metric(
            "folders_paused",
            "gauge",
            "Folders paused because they are gone, unreadable or unmounted.",
            &one(self.folders_paused.load(Relaxed) as f64),
        );
        if let Some(status) = status {
            let mut files = Vec::new();
            for folder in &status.folders {
                let c = &folder.counts;
                for (state, count) in [
                    ("synced", c.synced),
                    ("pending", c.pending),
                    ("held", c.held),
                    ("removed", c.removed),
                    ("rejected", c.rejected),
                    ("failed", c.failed),
                ] {
                    files.push((
                        format!(
                            "{{folder=\"{}\",state=\"{state}\"}}",
                            escape(&folder.path.display().to_string())
                        ),
                        count as f64,
                    ));
                }
            }
            metric(
                "files",
                "gauge",
                "Files known to the daemon by folder and state.",
                &files,
            );
        }
        out
    }

    /// `None` when healthy (requests flow and no folder is paused), else what is wrong.
    pub fn degraded(&self, api: &Client) -> Option<String> {
        if let Some(reason) = api.held() {
            return Some(format!("paused: {reason}"));
        }
        (api.is_paused() || self.folders_paused.load(Relaxed) > 0)
            .then(|| "requests or folders are paused".to_string())
    }
}

/// A label value as Prometheus reads it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` and `/healthz` on `addr` until shutdown. `status` builds the store's view.
pub async fn serve(
    addr: SocketAddr,
    api: Arc<Client>,
    status: Arc<dyn Fn() -> Option<StatusReport> + Send + Sync>,
    cancel: CancellationToken,
) {
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            warn!(%addr, %error, "cannot serve metrics; carrying on without them");
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(addr);
    info!(%addr, "serving metrics at /metrics and health at /healthz");
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (api, status) = (api.clone(), status.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (api, status) = (api.clone(), status.clone());
                async move {
                    let (code, body) = match request.uri().path() {
                        "/metrics" => {
                            let report = tokio::task::spawn_blocking(move || status())
                                .await
                                .ok()
                                .flatten();
                            (StatusCode::OK, METRICS.render(report.as_ref(), &api))
                        }
                        "/healthz" => match METRICS.degraded(&api) {
                            None => (StatusCode::OK, "ok\n".into()),
                            Some(why) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                format!("degraded: {why} (see tallyfy-sync status)\n"),
                            ),
                        },
                        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
                    };
                    Response::builder()
                        .status(code)
                        .header("Content-Type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
