//! Serves `/metrics` (Prometheus text) and `/healthz` on `metrics.listen`.
//! Receives the counters, the API client and ways to build the status report and each folder's
//! state; emits the exposition, each part rendered by the module that owns its data, and the
//! health answer. Owns the HTTP listener, bound once at start so that a taken port is a
//! configuration error.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::Client;
use crate::metrics::{self, Exposition, METRICS};
use crate::status::{self, FolderState, StatusReport};

/// Builds the store's view for the files gauge; `None` when the store cannot be read.
pub type StatusSource = Arc<dyn Fn() -> Option<StatusReport> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (metrics.listen): {error}; another process (another tallyfy-sync?) may hold the port: stop it or choose another port in metrics.listen")]
pub struct BindError {
    pub addr: SocketAddr,
    pub error: std::io::Error,
}

/// The metrics port, bound for the daemon's whole life: a reload hands each pipeline a copy,
/// so scrapers never meet a closed port or, worse, another process on it.
pub struct Listener {
    /// As configured (port 0 stays 0), to tell whether a reload changed it.
    pub configured: SocketAddr,
    socket: StdListener,
}

impl Listener {
    pub fn bind(addr: SocketAddr) -> Result<Listener, BindError> {
        let bound = || -> std::io::Result<StdListener> {
            let socket = StdListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        };
        bound()
            .map(|socket| Listener {
                configured: addr,
                socket,
            })
            .map_err(|error| BindError { addr, error })
    }

    fn copy(&self) -> std::io::Result<TcpListener> {
        TcpListener::from_std(self.socket.try_clone()?)
    }
}

/// Each configured folder's state, cheap enough to read on every health check.
pub type HealthSource = Arc<dyn Fn() -> Vec<(PathBuf, FolderState)> + Send + Sync>;

/// Serves until shutdown.
pub async fn serve(
    listener: Arc<Listener>,
    api: Arc<Client>,
    status: StatusSource,
    health: HealthSource,
    cancel: CancellationToken,
) {
    let listener = match listener.copy() {
        Ok(listener) => listener,
        Err(error) => {
            warn!(addr = %listener.configured, %error, "cannot serve metrics; carrying on without them");
            return;
        }
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    info!(%addr, "serving metrics at /metrics and health at /healthz");
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let (api, status, health) = (api.clone(), status.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (api, status, health) = (api.clone(), status.clone(), health.clone());
                async move {
                    let (code, body) = match request.uri().path() {
                        "/metrics" => (StatusCode::OK, exposition(&api, status, health).await),
                        "/healthz" => match degraded(&api, health).await {
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

async fn exposition(api: &Client, status: StatusSource, health: HealthSource) -> String {
    let report = tokio::task::spawn_blocking(move || status())
        .await
        .ok()
        .flatten();
    let folders = tokio::task::spawn_blocking(move || health())
        .await
        .unwrap_or_default();
    let up: Vec<(PathBuf, bool)> = folders
        .into_iter()
        .map(|(path, state)| (path, state == FolderState::Syncing))
        .collect();
    let mut out = Exposition::default();
    METRICS.render(&mut out);
    metrics::render_folders_up(&up, &mut out);
    api.render_gauges(&mut out);
    if let Some(report) = &report {
        status::render_gauges(report, &mut out);
    }
    out.into_text()
}

/// `None` when healthy (requests flow and every folder syncs), else what is wrong.
async fn degraded(api: &Client, health: HealthSource) -> Option<String> {
    let mut reasons = Vec::new();
    if let Some(reason) = api.held() {
        reasons.push(format!("paused: {reason}"));
    } else if api.is_paused() {
        reasons.push("requests are paused".to_string());
    }
    let folders = tokio::task::spawn_blocking(move || health())
        .await
        .unwrap_or_default();
    for (path, state) in folders {
        if state != FolderState::Syncing {
            let line = state.line();
            reasons.push(format!(
                "{}: {}",
                crate::text::path(&path),
                crate::text::escaped(&line)
            ));
        }
    }
    if reasons.is_empty() && METRICS.folders_paused() {
        reasons.push("folders are paused".to_string());
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}
