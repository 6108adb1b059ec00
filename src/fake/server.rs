//! Accept loop, per-connection HTTP/1.1 serving and the per-request pipeline.
//! Receives TCP connections and raw hyper requests; emits complete responses, or an error
//! that makes hyper close the connection without writing anything (injected drops).
//! Owns the connection tasks (in a `JoinSet`, so aborting the accept task closes them all),
//! body reading with its size limit, the header/token check and fault application.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::fake::oauth::{self, TOKEN_PATH};
use crate::fake::routes::{self, json_response, RequestBody};
use crate::fake::state::Shared;
use crate::fake::{FaultKind, MAX_BODY_BYTES};

/// Why no response is written. Returning it from the service makes hyper drop the
/// connection, which the client sees as a connection error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoResponse {
    #[error("connection dropped by an injected fault")]
    Injected,
    #[error("reading the request body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Without TCP_NODELAY a keep-alive response written in two pieces waits
                    // ~40 ms for the client's delayed ACK, and benchmarks measure that stall.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::warn!(%error, "fake Tallyfy could not set TCP_NODELAY");
                    }
                    connections.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(%error, "fake Tallyfy accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
    let result = http1::Builder::new()
        .keep_alive(true)
        // hyper's default 30 s header timeout needs a timer and would log a warning per
        // connection without one; idle keep-alive connections are the client's business.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%error, "fake Tallyfy connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, NoResponse> {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    // Logged on arrival so the log keeps arrival order; if this future is dropped (client
    // gone) the status stays 0, which is also what the client got.
    let index = shared.lock().begin_request(&method, &path, query);
    let outcome = process(&shared, request).await;
    let status = match &outcome {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    };
    shared.lock().finish_request(index, status);
    tracing::debug!(%method, %path, status, "fake Tallyfy answered");
    outcome
}

/// Read the body (limit 101 MiB) → check the three headers and the token (401) → apply the
/// first matching injected fault → route (404/405) → organization check (403) → handler.
/// Faults come after the credential check so that a faulted request has also proven its
/// headers, and a test's fault is never spent on a request that would have failed anyway.
/// The token endpoint needs no headers or token: it checks its own form fields.
async fn process(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, NoResponse> {
    let (parts, body) = request.into_parts();
    // Like PHP behind a web server, the whole body is read before anything is decided, so a
    // client that sends a complete request always gets to read the answer.
    let body = read_body(&parts.headers, body).await?;
    let token_endpoint = parts.uri.path() == TOKEN_PATH;
    if !token_endpoint {
        if let Some(refusal) = check_credentials(shared, &parts.headers) {
            return Ok(refusal);
        }
    }
    let respond = |body| {
        if token_endpoint {
            oauth::respond(shared, &parts, body)
        } else {
            routes::dispatch(shared, &parts, body)
        }
    };
    let fault = shared
        .lock()
        .take_fault(parts.method.as_str(), parts.uri.path());
    match fault {
        None => {}
        Some(FaultKind::Status {
            status,
            body,
            retry_after,
        }) => return Ok(fault_response(status, body, retry_after)),
        Some(FaultKind::DropBeforeAct) => return Err(NoResponse::Injected),
        Some(FaultKind::DropAfterAct) => {
            let response = respond(body);
            tracing::debug!(status = %response.status(), "fake Tallyfy acted, now dropping");
            return Err(NoResponse::Injected);
        }
        Some(FaultKind::Latency(delay)) => tokio::time::sleep(delay).await,
        Some(FaultKind::HtmlPage) => {
            return Ok(routes::raw_response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(MAINTENANCE_PAGE.as_bytes()),
            ))
        }
        Some(FaultKind::Redirect { status, location }) => {
            let mut response = fault_response(status, String::new(), None);
            if let Ok(location) = hyper::header::HeaderValue::from_str(&location) {
                response
                    .headers_mut()
                    .insert(hyper::header::LOCATION, location);
            }
            return Ok(response);
        }
        Some(FaultKind::CutShort) => {
            let response = respond(body);
            let status = response.status();
            let full = response
                .into_body()
                .collect()
                .await
                .map(|collected| collected.to_bytes())
                .unwrap_or_default();
            return Ok(routes::raw_response(
                status,
                "application/json",
                full.slice(..full.len() / 2),
            ));
        }
    }
    Ok(respond(body))
}

async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<RequestBody, NoResponse> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    // Refusing before reading, as a proxy does; the client may see the 413 or, if it is
    // still sending, a reset connection.
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Ok(RequestBody::TooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(RequestBody::Complete(collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Ok(RequestBody::TooLarge),
        Err(error) => Err(NoResponse::Body(error)),
    }
}

/// The real API refuses requests without its three headers with 401.
fn check_credentials(shared: &Shared, headers: &HeaderMap) -> Option<Response<Full<Bytes>>> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
    };
    let client_ok = text("x-tallyfy-client") == Some("APIClient");
    let accepts_json = text(ACCEPT.as_str()).is_some_and(|accept| {
        accept.split(',').any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
        })
    });
    let token_ok = text(AUTHORIZATION.as_str())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|token| token == shared.token || shared.lock().oauth.accepts(token));
    let message = if !token_ok {
        None
    } else if !client_ok {
        Some("Every API request needs the header X-Tallyfy-Client: APIClient.")
    } else if !accepts_json {
        Some("Every API request needs the header Accept: application/json.")
    } else {
        return None;
    };
    let body = match message {
        None => json!({"error": "Unauthenticated."}),
        Some(message) => json!({"error": "Unauthenticated.", "message": message}),
    };
    Some(json_response(StatusCode::UNAUTHORIZED, &body))
}

const MAINTENANCE_PAGE: &str = "<!DOCTYPE html>\n<html><head><title>Down for maintenance</title></head>\n<body><h1>We'll be back soon</h1></body></html>\n";

fn fault_response(status: u16, body: String, retry_after: Option<String>) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = routes::raw_response(status, "application/json", Bytes::from(body));
    if let Some(value) = retry_after.and_then(|value| HeaderValue::from_str(&value).ok()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}
