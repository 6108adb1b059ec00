//! Serves `/metrics` (Prometheus text) and `/healthz` on `metrics.listen`.
//! Receives the counters, the API client, a way to build the status report and each folder's
//! state; emits the exposition, each part rendered by the module that owns its data. Owns the
//! HTTP listener, bound once at start so that a taken port is a configuration error.

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
use crate::status::{self, StatusReport};

/// Builds the store's view for the files gauge; `None` when the store cannot be read.
pub type StatusSource = Arc<dyn Fn() -> Option<StatusReport> + Send + Sync>;
/// Each configured folder and whether it syncs now (its root is there and its target valid).
pub type FoldersUp = Arc<dyn Fn() -> Vec<(PathBuf, bool)> + Send + Sync>;

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

/// Serves until shutdown.
pub async fn serve(
    listener: Arc<Listener>,
    api: Arc<Client>,
    status: StatusSource,
    folders_up: FoldersUp,
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
        let (api, status, folders_up) = (api.clone(), status.clone(), folders_up.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let (api, status, folders_up) = (api.clone(), status.clone(), folders_up.clone());
                async move {
                    let (code, body) = match request.uri().path() {
                        "/metrics" => (StatusCode::OK, exposition(&api, status, &folders_up).await),
                        "/healthz" => match degraded(&api) {
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

async fn exposition(api: &Client, status: StatusSource, folders_up: &FoldersUp) -> String {
    let report = tokio::task::spawn_blocking(move || status())
        .await
        .ok()
        .flatten();
    let mut out = Exposition::default();
    METRICS.render(&mut out);
    metrics::render_folders_up(&folders_up(), &mut out);
    api.render_gauges(&mut out);
    if let Some(report) = &report {
        status::render_gauges(report, &mut out);
    }
    out.into_text()
}

/// `None` when healthy (requests flow and no folder is paused), else what is wrong.
fn degraded(api: &Client) -> Option<String> {
    if let Some(reason) = api.held() {
        return Some(format!("paused: {reason}"));
    }
    (api.is_paused() || METRICS.folders_paused())
        .then(|| "requests or folders are paused".to_string())
}
