//! Serves `/metrics` (Prometheus text) and `/healthz` on `metrics.listen`.
//! Receives the counters, the API client and a way to build the status report; emits the
//! exposition, each part rendered by the module that owns its data. Owns the HTTP listener.

use std::net::SocketAddr;
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
use crate::metrics::{Exposition, METRICS};
use crate::status::{self, StatusReport};

/// Builds the store's view for the files gauge; `None` when the store cannot be read.
pub type StatusSource = Arc<dyn Fn() -> Option<StatusReport> + Send + Sync>;

/// Serves until shutdown.
pub async fn serve(
    addr: SocketAddr,
    api: Arc<Client>,
    status: StatusSource,
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
                        "/metrics" => (StatusCode::OK, exposition(&api, status).await),
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

async fn exposition(api: &Client, status: StatusSource) -> String {
    let report = tokio::task::spawn_blocking(move || status())
        .await
        .ok()
        .flatten();
    let mut out = Exposition::default();
    METRICS.render(&mut out);
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
