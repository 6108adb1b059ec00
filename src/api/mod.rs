//! The Tallyfy HTTP client: one keep-alive connection pool shared by every worker.
//! Receives typed calls (upload a file, read or update a field, delete an asset) and emits
//! typed results or an `ApiError` that says whether another attempt makes sense.
//! Owns the headers every request needs, the token source (a static token, or OAuth client
//! credentials renewed as they expire), the trust in servers' certificates, and the `Gate`
//! that pauses all requests during an outage, a rate limit, a refused token or an untrusted
//! certificate, or while a caller holds them (a full state disk).

mod auth;
mod error;
mod gate;
mod limit;
mod multipart;
mod network;
pub mod raw;

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use auth::{Refusal, TokenSource};
pub use error::{ApiError, Endpoint};
pub use gate::{unix_ms, Pause};
use gate::{Gate, Outcome, Pass, Transition};
use limit::Pace;
pub use multipart::stored_name;
pub use network::{environment_proxy_problems, proxy_for};
pub use raw::RawList;

use crate::config::{ApiConfig, Credentials};
use crate::metrics::{Exposition, METRICS};
use crate::retry::Backoff;
use crate::store::Asset;

/// Uploads get extra time beyond `api.timeout` at this floor rate, so a large file on a slow
/// link is not cut off while it is still moving.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 256 * 1024;
/// Tallyfy takes files up to 100 MB, so no download is larger; it gets the time such a file
/// needs at the floor rate above.
const MAX_DOWNLOAD_BYTES: u64 = 100 * 1024 * 1024;

/// Where a download's bytes go, chunk by chunk: a hasher, a file.
pub trait Sink: Send {
    /// Forgets what was written so far: the download starts again from the first byte.
    fn restart(&mut self) -> std::io::Result<()>;
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
}

/// A sink that only hashes (blake3, as the store records content), for comparing without
/// writing anything to disk.
#[derive(Default)]
pub struct Hashing(blake3::Hasher);

impl Hashing {
    /// The hash of what was written (hex).
    pub fn hex(&self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

impl Sink for Hashing {
    fn restart(&mut self) -> std::io::Result<()> {
        self.0.reset();
        Ok(())
    }

    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.0.update(chunk);
        Ok(())
    }
}

/// Where an upload goes: the fields the file endpoint needs for a task field or a kick-off field.
#[derive(Debug, Clone)]
pub enum UploadTarget {
    Task {
        run_id: String,
        capture_id: String,
        step_id: String,
        checklist_id: String,
    },
    /// A field of a one-off task: the task itself is the subject, with no step or template.
    OneOff {
        task_id: String,
        capture_id: String,
    },
    Kickoff {
        checklist_id: String,
    },
}

#[derive(Debug)]
pub struct Uploaded<'a> {
    pub asset: Asset,
    /// blake3 of exactly the bytes sent.
    pub hash: String,
    /// The upload's slot of `api.concurrency`, for the caller to hold until the asset is
    /// recorded: so at most that many uploads are ever sent but not recorded, which bounds the
    /// orphans a crash or a full state disk can leave.
    pub slot: tokio::sync::SemaphorePermit<'a>,
}

#[derive(Debug, Clone)]
pub struct FormField {
    pub id: String,
    pub label: String,
    pub field_type: String,
    /// As the API wrote it: a file field's value lists every asset in it.
    pub value: Box<RawValue>,
}

#[derive(Debug, Clone)]
pub struct Task {
    /// "" when the answer does not say (a task read by its id).
    pub id: String,
    pub title: String,
    pub status: String,
    /// The process the task belongs to; `None` for a one-off task.
    pub run_id: Option<String>,
    pub step_id: Option<String>,
    pub checklist_id: Option<String>,
    pub fields: Vec<FormField>,
}

#[derive(Debug, Clone)]
pub struct Checklist {
    pub title: String,
    /// The kick-off fields as read, each without its `value` (kept as text in `values`): sent
    /// back whole so no field is lost.
    pub prerun: Vec<Value>,
    /// Each kick-off field's value, as the API wrote it, by its position in `prerun`: a file
    /// field's lists every asset in it.
    pub values: Vec<Option<Box<RawValue>>>,
}

impl Checklist {
    /// Where the kick-off field `field_id` is in `prerun` (and `values`).
    pub fn position(&self, field_id: &str) -> Option<usize> {
        (self.prerun.iter()).position(|field| text(field, "id").as_deref() == Some(field_id))
    }

    /// The value of the kick-off field `field_id`; `None` when there is no such field.
    pub fn value_of(&self, field_id: &str) -> Option<&RawValue> {
        let index = self.position(field_id)?;
        Some(self.values[index].as_deref().unwrap_or(RawValue::NULL))
    }
}

/// A process (run), as launched or listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub name: String,
    /// `active`, `complete`, `problem`, `archived`, ... ("" when the answer does not say).
    pub status: String,
    pub summary: String,
    /// The template it was started from ("" when the answer does not say).
    pub checklist_id: String,
    /// The kick-off values by field id, when the answer carries them (`null` otherwise).
    pub prerun: Value,
}

/// Items asked for per page of a list: the most the API gives.
const PER_PAGE: u32 = 100;
/// Pages followed at most in one list, so a server that never says "last page" cannot loop us.
const MAX_PAGES: u32 = 1000;

/// A template (blueprint), as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub id: String,
    pub title: String,
}

/// A step of a template, with the form fields (captures) its tasks carry.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub title: String,
    pub captures: Vec<FormField>,
}

pub struct Client {
    http: reqwest::Client,
    /// The proxy requests to the API go through, as shown to people.
    proxy: Option<String>,
    base: String,
    org: String,
    tokens: TokenSource,
    timeout: Duration,
    gate: Gate,
    /// `api.concurrency`: uploads in progress at once, whatever else is in flight.
    uploads: tokio::sync::Semaphore,
    pace: Option<Pace>,
    /// The gate's current pause, for `status` and for saving across restarts.
    pause: std::sync::Mutex<Option<Pause>>,
    on_pause: Option<PauseHook>,
    /// Most attempts `with_retries` makes; `None` for the daemon, which waits out any outage.
    attempts: Option<u32>,
    /// What is wrong with `api.base_url` or `api.org_id` (`None`: nothing), once asked: every
    /// target fails alike when they are wrong, and it is said once, not per folder.
    organization: tokio::sync::OnceCell<Option<String>>,
    cancel: CancellationToken,
}

/// Told of every change of the pause (`None`: requests flow again).
pub type PauseHook = Box<dyn Fn(Option<&Pause>) + Send + Sync>;

impl Client {
    /// Must be called within a tokio runtime (client credentials start a renewal task).
    pub fn new(
        config: &ApiConfig,
        credentials: Credentials,
        cancel: CancellationToken,
    ) -> Result<Client, ApiError> {
        // Proxies come from `api.proxy`, or from HTTPS_PROXY, HTTP_PROXY and NO_PROXY, which
        // reqwest reads unless told not to: what a company network's administrator expects.
        let builder = || {
            network::proxy(network::trust(reqwest::Client::builder(), config), config)
                .user_agent(concat!("tallyfy-sync/", env!("CARGO_PKG_VERSION")))
                .timeout(config.timeout)
                .connect_timeout(config.timeout.min(Duration::from_secs(10)))
                .tcp_nodelay(true)
        };
        let setup = |error: reqwest::Error| ApiError::Setup {
            detail: describe(&error),
        };
        let http = builder().build().map_err(setup)?;
        // A redirect would post the client secret to wherever it points: the token endpoint
        // is asked at the URL configured and nowhere else.
        let token_http = builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(setup)?;
        let token_proxy = match &credentials {
            Credentials::ClientCredentials { token_url, .. } => {
                network::proxy_for(token_url, config)
            }
            Credentials::Token(_) => None,
        };
        let tokens = TokenSource::new(credentials, token_http, token_proxy, cancel.clone());
        Ok(Client {
            proxy: network::proxy_for(&config.base_url, config),
            http,
            base: config.base_url.as_str().trim_end_matches('/').to_string(),
            org: config.org_id.clone(),
            tokens,
            timeout: config.timeout,
            gate: Gate::new(Backoff::default()),
            uploads: tokio::sync::Semaphore::new(config.concurrency),
            pace: config.rate_limit.map(Pace::new),
            pause: std::sync::Mutex::new(None),
            on_pause: None,
            attempts: None,
            organization: tokio::sync::OnceCell::new(),
            cancel,
        })
    }

    /// `api.base_url` as used, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn org_id(&self) -> &str {
        &self.org
    }

    /// What `ask` finds wrong with the organization, asked at most once per client however
    /// many callers want it; true for the caller whose `ask` ran (the one to report it).
    pub async fn organization_problem<F, Fut>(&self, ask: F) -> (Option<String>, bool)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<String>>,
    {
        let mut asked = false;
        let problem = self
            .organization
            .get_or_init(|| {
                asked = true;
                ask()
            })
            .await;
        (problem.clone(), asked)
    }

    /// Calls `hook` whenever requests pause or resume, so the schedule can be saved.
    pub fn on_pause_change(mut self, hook: PauseHook) -> Client {
        self.on_pause = Some(hook);
        self
    }

    /// Makes `with_retries` give up after `attempts` tries, for a command that must answer
    /// soon rather than wait for the API to come back.
    pub fn give_up_after(mut self, attempts: u32) -> Client {
        self.attempts = Some(attempts);
        self
    }

    /// Continues a pause saved before a restart instead of sending at once.
    pub fn resume_pause(&self, pause: Pause) {
        let left = Duration::from_millis(pause.until_ms.saturating_sub(unix_ms()));
        warn!(
            reason = %pause.reason,
            "requests were paused before the restart; the next probe goes in {}",
            humantime::format_duration(round(left))
        );
        self.gate.resume(&pause);
        *self.lock_pause() = Some(pause);
    }

    /// Why requests wait and until when, while they do.
    pub fn pause(&self) -> Option<Pause> {
        self.lock_pause().clone()
    }

    fn lock_pause(&self) -> std::sync::MutexGuard<'_, Option<Pause>> {
        self.pause
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn set_pause(&self, pause: Option<Pause>) {
        if let Some(hook) = &self.on_pause {
            hook(pause.as_ref());
        }
        *self.lock_pause() = pause;
    }

    fn url(&self, path: &str) -> String {
        format!("{}/organizations/{}/{path}", self.base, self.org)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("Accept", "application/json")
            .header("X-Tallyfy-Client", "APIClient")
    }

    /// Sends one request through the gate, with the current token, and returns the `data`
    /// member of a 2xx answer checked to be the API's (`null` for a delete, whose answer has
    /// none).
    async fn send(&self, endpoint: Endpoint, request: RequestBuilder) -> Result<Value, ApiError> {
        self.send_with(endpoint, request, || None).await
    }

    /// Like `send`; `local_failure` names a local cause (the file being read) for a failed send.
    async fn send_with(
        &self,
        endpoint: Endpoint,
        request: RequestBuilder,
        local_failure: impl Fn() -> Option<ApiError>,
    ) -> Result<Value, ApiError> {
        self.answer(endpoint, request, local_failure)
            .await
            .map(data)
    }

    /// Like `send_with`, but the whole answer (with `meta`, for lists).
    async fn answer(
        &self,
        endpoint: Endpoint,
        request: RequestBuilder,
        local_failure: impl Fn() -> Option<ApiError>,
    ) -> Result<Value, ApiError> {
        self.exchange(endpoint, request, local_failure, |response| async move {
            let body = whole(response).await.map_err(Body::Transport)?;
            checked_answer(endpoint, &body).map_err(Body::Strange)
        })
        .await
    }

    /// Like `send`, but the answer's `data` is handed to `take` as text, never parsed whole:
    /// for the answers that carry a field's value.
    async fn send_raw<T>(
        &self,
        endpoint: Endpoint,
        request: RequestBuilder,
        take: impl FnOnce(&RawValue) -> T,
    ) -> Result<T, ApiError> {
        self.exchange(
            endpoint,
            request,
            || None,
            |response| async move {
                let body = whole(response).await.map_err(Body::Transport)?;
                let data = checked(endpoint, &body).map_err(Body::Strange)?;
                Ok(take(data.unwrap_or(RawValue::NULL)))
            },
        )
        .await
    }

    /// Sends one request through the gate, with the current token, and hands the response of
    /// a 2xx answer to `read`; the body of any other answer becomes the error's message.
    async fn exchange<T, F, Fut>(
        &self,
        endpoint: Endpoint,
        request: RequestBuilder,
        local_failure: impl Fn() -> Option<ApiError>,
        read: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(reqwest::Response) -> Fut,
        Fut: std::future::Future<Output = Result<T, Body>>,
    {
        if let Some(pace) = &self.pace {
            if !pace.acquire(&self.cancel).await {
                return Err(ApiError::Cancelled);
            }
        }
        let ticket = self
            .gate
            .enter(&self.cancel)
            .await
            .ok_or(ApiError::Cancelled)?;
        let pass = ticket.pass;
        let bearer = match self.tokens.bearer().await {
            Ok(bearer) => bearer,
            Err(error) => {
                let outcome = match error.status() {
                    Some(429) => Outcome::RateLimited(error.retry_after()),
                    _ if error.is_unauthorized() => Outcome::Unauthorized,
                    _ if error.is_untrusted() => Outcome::Untrusted,
                    _ => Outcome::Outage,
                };
                self.report(pass, outcome, Some(&error));
                return Err(error);
            }
        };
        let transport = |pass: Pass, error: reqwest::Error| {
            METRICS.request(endpoint.label(), 0);
            if let Some(local) = local_failure() {
                self.report(pass, Outcome::Inconclusive, None);
                return local;
            }
            let error = network::failed(endpoint, &error, self.proxy.as_deref());
            let outcome = if error.is_untrusted() {
                Outcome::Untrusted
            } else {
                Outcome::Outage
            };
            self.report(pass, outcome, Some(&error));
            error
        };
        let response = match request.bearer_auth(bearer.expose()).send().await {
            Ok(response) => response,
            Err(error) => return Err(transport(pass, error)),
        };
        let status = response.status();
        let retry_after = retry_after(&response);
        if status.is_success() {
            return match read(response).await {
                Ok(value) => {
                    METRICS.request(endpoint.label(), status.as_u16());
                    self.tokens.accepted(&bearer);
                    self.report(pass, Outcome::Answered, None);
                    Ok(value)
                }
                Err(Body::Transport(error)) => Err(transport(pass, error)),
                // A 2xx that is not the API's answer (a proxy's or captive portal's page)
                // says nothing about the request: it is retried like an outage.
                Err(Body::Strange(error)) => {
                    METRICS.request(endpoint.label(), status.as_u16());
                    self.report(pass, Outcome::Outage, Some(&error));
                    Err(error)
                }
                Err(Body::Local(error)) => {
                    METRICS.request(endpoint.label(), status.as_u16());
                    self.report(pass, Outcome::Inconclusive, None);
                    Err(error)
                }
            };
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return Err(transport(pass, error)),
        };
        METRICS.request(endpoint.label(), status.as_u16());
        if status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            let error = network::proxy_refusal(endpoint, self.proxy.as_deref());
            self.report(pass, Outcome::Untrusted, Some(&error));
            return Err(error);
        }
        let error = ApiError::Status {
            endpoint,
            status: status.as_u16(),
            message: error::error_message(&body),
            retry_after,
        };
        let outcome = match status {
            // A replaced token says nothing yet: `with_retries` sends the request again at once.
            StatusCode::UNAUTHORIZED => match self.tokens.refused(&bearer) {
                Refusal::Retry => Outcome::Inconclusive,
                Refusal::Final => Outcome::Unauthorized,
            },
            StatusCode::TOO_MANY_REQUESTS => Outcome::RateLimited(retry_after),
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Outcome::Outage,
            _ => Outcome::Answered,
        };
        self.report(pass, outcome, Some(&error));
        Err(error)
    }

    /// Tells the gate how a request went (`cause`: the failure, if it failed), and logs a
    /// change of the gate once, where it happens, rather than once per waiting file.
    fn report(&self, pass: Pass, outcome: Outcome, cause: Option<&ApiError>) {
        let transition = self.gate.report(pass, outcome);
        let unauthorized = cause.is_some_and(ApiError::is_unauthorized);
        let rate_limited = cause.and_then(ApiError::status) == Some(429);
        let no_token = matches!(cause, Some(ApiError::NoToken { .. }));
        let untrusted = match cause {
            Some(ApiError::Untrusted { host, reason, .. }) => Some((host, reason)),
            _ => None,
        };
        let proxy_refused = cause.filter(|cause| matches!(cause, ApiError::ProxyRefused { .. }));
        match transition {
            Some(Transition::Closed(pause)) => self.set_pause(Some(Pause {
                until_ms: unix_ms() + pause.as_millis() as u64,
                delay_ms: pause.as_millis() as u64,
                reason: if let Some((host, reason)) = untrusted {
                    format!("cannot trust {host}: {reason}")
                } else if let Some(refused) = proxy_refused {
                    refused.to_string()
                } else if no_token {
                    "cannot get an access token from api.token_url".to_string()
                } else if unauthorized {
                    "the API refused the token (401)".to_string()
                } else if rate_limited {
                    "rate limited by the API (429)".to_string()
                } else {
                    format!(
                        "the API is unreachable: {}",
                        cause.map(ToString::to_string).unwrap_or_default()
                    )
                },
            })),
            Some(Transition::Reopened) => self.set_pause(None),
            None => {}
        }
        match transition {
            Some(Transition::Closed(pause)) if untrusted.is_some() => {
                if let Some((host, reason)) = untrusted {
                    error!(
                        host = %host,
                        next_probe_secs = pause.as_secs_f64().ceil(),
                        "cannot trust {host}: {reason}; pausing all requests and probing again in {}",
                        humantime::format_duration(round(pause))
                    )
                }
            }
            Some(Transition::Closed(pause)) if proxy_refused.is_some() => error!(
                http_status = 407,
                next_probe_secs = pause.as_secs_f64().ceil(),
                "{}; pausing all requests and probing again in {}",
                proxy_refused.map(ToString::to_string).unwrap_or_default(),
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Closed(pause)) if no_token => error!(
                error = %cause.map(ToString::to_string).unwrap_or_default(),
                next_probe_secs = pause.as_secs_f64().ceil(),
                "cannot get an access token: check api.client_id, the client secret and api.token_url; pausing all requests and trying again in {}",
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Closed(pause)) if unauthorized && self.tokens.renews() => error!(
                next_probe_secs = pause.as_secs_f64().ceil(),
                "the API refused a newly issued access token (401): the client may have no access to organization {}, or api.token_url may belong to another Tallyfy than api.base_url; pausing all requests and probing again with a new token in {}",
                self.org,
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Closed(pause)) if unauthorized => error!(
                http_status = 401,
                next_probe_secs = pause.as_secs_f64().ceil(),
                "the API refused the token (401): it is wrong, expired or revoked (a personal access token is deleted when its user logs out); pausing all requests and probing again in {}",
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Closed(pause)) if rate_limited => warn!(
                http_status = 429,
                "rate limited by the API (429); pausing all requests for {}",
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Closed(pause)) => warn!(
                http_status = cause.and_then(ApiError::status),
                error = %cause.map(ToString::to_string).unwrap_or_default(),
                "the API is unreachable; pausing all requests and probing again in {}",
                humantime::format_duration(round(pause))
            ),
            Some(Transition::Reopened) => info!("the API answers again; resuming requests"),
            None => {}
        }
    }

    /// Runs `op` until it succeeds, fails for good, runs out of attempts (`give_up_after`), or
    /// we shut down. Failures that close the gate (outage, rate limit, refused token) are
    /// retried at once: the gate does the waiting, for every worker together. Other transient
    /// failures back off per call.
    pub async fn with_retries<T, F, Fut>(&self, mut op: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = Backoff::default();
        let mut strange_answers: Option<Backoff> = None;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let error = match op().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if matches!(error, ApiError::Decode { .. }) {
                let schedule = strange_answers.get_or_insert_with(|| {
                    Backoff::giving_up_after(
                        crate::retry::INITIAL,
                        crate::retry::MAX,
                        crate::retry::STRANGE_ANSWERS_FOR,
                    )
                });
                if schedule.next_delay_or_give_up().is_none() {
                    return Err(error);
                }
            }
            let waits_for_operator = error.is_unauthorized() || error.is_untrusted();
            // An outage the gate did not close for (a passing failure) backs off here.
            let paced_by_gate = (error.is_outage() && self.gate.is_closed())
                || waits_for_operator
                || error.status() == Some(429);
            let out_of_attempts = self.attempts.is_some_and(|most| attempt >= most);
            if !(error.is_retryable() || waits_for_operator)
                || self.cancel.is_cancelled()
                || out_of_attempts
            {
                return Err(error);
            }
            if paced_by_gate {
                debug!(%error, http_status = error.status(), attempt, "waiting for the API before trying again");
                continue;
            }
            let delay = backoff.next_delay();
            METRICS.retry_wait(delay);
            warn!(%error, http_status = error.status(), attempt, "request failed; retrying in {}", humantime::format_duration(round(delay)));
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Whether requests are currently paused by an outage, a rate limit, a refused token, an
    /// untrusted certificate or a `hold`.
    pub fn is_paused(&self) -> bool {
        self.gate.is_closed()
    }

    /// Pauses every request, probes included, for a cause outside the API (`reason` says
    /// which) until `release`; true when they were not held already.
    pub fn hold(&self, reason: &str) -> bool {
        self.gate.hold(reason)
    }

    /// Lets requests go again after a `hold` (an API pause in force carries on).
    pub fn release(&self) -> bool {
        self.gate.release()
    }

    /// Why requests are held, while they are.
    pub fn held(&self) -> Option<String> {
        self.gate.held()
    }

    /// The client's gauges in Prometheus text.
    pub fn render_gauges(&self, out: &mut Exposition) {
        out.one(
            "api_paused",
            "gauge",
            "1 while requests are paused by an outage, a rate limit, a refused token, an untrusted certificate or a state directory that cannot be written.",
            if self.is_paused() { 1.0 } else { 0.0 },
        );
    }

    /// Uploads an opened file of `size` bytes, streamed from disk, and returns the asset and
    /// the hash of what was sent. `path` only names the file in errors.
    pub async fn upload(
        &self,
        path: &Path,
        file: tokio::fs::File,
        file_name: &str,
        size: u64,
        target: &UploadTarget,
    ) -> Result<Uploaded<'_>, ApiError> {
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(6);
        match target {
            UploadTarget::Task {
                run_id,
                capture_id,
                step_id,
                checklist_id,
            } => fields.extend([
                ("subject_type", "Run"),
                ("subject_id", run_id.as_str()),
                ("uploaded_from", capture_id.as_str()),
                ("step_id", step_id.as_str()),
                ("checklist_id", checklist_id.as_str()),
            ]),
            UploadTarget::OneOff {
                task_id,
                capture_id,
            } => fields.extend([
                ("subject_type", "Task"),
                ("subject_id", task_id.as_str()),
                ("uploaded_from", capture_id.as_str()),
            ]),
            UploadTarget::Kickoff { checklist_id } => fields.extend([
                ("subject_type", "Checklist"),
                ("subject_id", checklist_id.as_str()),
                ("uploaded_from", "ko_field"),
            ]),
        }
        fields.push(("source", "local"));
        let body = multipart::build(&fields, path, file_name, file, size)
            .await
            .map_err(|detail| ApiError::File {
                path: path.to_path_buf(),
                detail,
            })?;
        // Taken once the body is ready, so a slot is only ever held by a request on the wire.
        let slot = tokio::select! {
            _ = self.cancel.cancelled() => return Err(ApiError::Cancelled),
            slot = self.uploads.acquire() => slot.map_err(|_| ApiError::Cancelled)?,
        };
        let tracker = body.tracker.clone();
        let request = self
            .request(Method::POST, "file")
            .timeout(self.timeout + Duration::from_secs(size / SLOWEST_UPLOAD_BYTES_PER_SEC))
            .header(reqwest::header::CONTENT_TYPE, body.content_type)
            .header(reqwest::header::CONTENT_LENGTH, body.length)
            .body(reqwest::Body::wrap_stream(body.stream));
        let data = self
            .send_with(Endpoint::Upload, request, || {
                tracker.failure().map(|detail| ApiError::File {
                    path: path.to_path_buf(),
                    detail,
                })
            })
            .await?;
        if crate::store::asset_id(&data).is_none() {
            return Err(ApiError::Decode {
                endpoint: Endpoint::Upload,
                detail: "the asset has no id".into(),
            });
        }
        Ok(Uploaded {
            asset: Asset(data),
            hash: tracker.hash(),
            slot,
        })
    }

    /// Reads a task of process `run_id`, or with `None` a one-off task (one in no process).
    pub async fn get_task(&self, run_id: Option<&str>, task_id: &str) -> Result<Task, ApiError> {
        let (path, read, _) = task_route(run_id, task_id);
        let request = self
            .request(Method::GET, &path)
            .query(&[("with", "form_fields")]);
        self.send_raw(read, request, parse_task).await
    }

    /// The value of one field of a task, as a list; empty when the task does not show it.
    pub async fn task_field(
        &self,
        run_id: Option<&str>,
        task_id: &str,
        capture_id: &str,
    ) -> Result<RawList, ApiError> {
        let (path, read, _) = task_route(run_id, task_id);
        let request = self
            .request(Method::GET, &path)
            .query(&[("with", "form_fields")]);
        #[derive(serde::Deserialize)]
        struct Field<'a> {
            #[serde(borrow, default)]
            id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            value: Option<&'a RawValue>,
        }
        self.send_raw(read, request, |data| {
            let task: TaskValues = raw::object(data)?;
            let field = task.form_fields.and_then(|fields| {
                let fields = serde_json::from_str::<Vec<&RawValue>>(raw::relation(fields).get());
                fields.ok()?.into_iter().find_map(|field| {
                    let field: Field = raw::object(field)?;
                    let id = field.id.and_then(raw::text)?;
                    (id == capture_id).then_some(field.value)?
                })
            });
            // An update's answer carries `taskdata`; a read may carry it too.
            let value = field.or_else(|| raw::members(task.taskdata?)?.remove(capture_id))?;
            Some(raw::items(value))
        })
        .await
        .map(Option::unwrap_or_default)
    }

    /// Replaces a task field's value; returns the field's value as the answer shows it, or
    /// `None` when the answer does not list the field (the API drops unknown keys silently).
    pub async fn put_task_field(
        &self,
        run_id: Option<&str>,
        task_id: &str,
        capture_id: &str,
        value: RawList,
    ) -> Result<Option<RawList>, ApiError> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            taskdata: std::collections::BTreeMap<&'a str, &'a [Box<RawValue>]>,
        }
        let (path, _, write) = task_route(run_id, task_id);
        let body = Body {
            taskdata: [(capture_id, value.as_slice())].into(),
        };
        let request = self.request(Method::PUT, &path).json(&body);
        // The request holds the value as JSON now: no second copy while the answer is awaited.
        drop(body);
        drop(value);
        self.send_raw(write, request, |data| {
            let task: TaskValues = raw::object(data)?;
            let value = raw::members(task.taskdata?)?.remove(capture_id)?;
            Some(raw::items(value))
        })
        .await
    }

    pub async fn get_checklist(&self, checklist_id: &str) -> Result<Checklist, ApiError> {
        let request = self.request(Method::GET, &format!("checklists/{checklist_id}"));
        self.send_raw(Endpoint::GetChecklist, request, |data| {
            parse_checklist(Endpoint::GetChecklist, data)
        })
        .await?
    }

    /// Sends the title unchanged and the whole prerun array (the API needs both).
    pub async fn put_checklist(
        &self,
        checklist_id: &str,
        checklist: &Checklist,
    ) -> Result<Checklist, ApiError> {
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Field<'a> {
            WithValue {
                #[serde(flatten)]
                members: &'a Value,
                value: &'a RawValue,
            },
            AsRead(&'a Value),
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            title: &'a str,
            prerun: Vec<Field<'a>>,
        }
        let body = Body {
            title: &checklist.title,
            prerun: (checklist.prerun.iter().zip(&checklist.values))
                .map(|(members, value)| match value {
                    Some(value) => Field::WithValue { members, value },
                    None => Field::AsRead(members),
                })
                .collect(),
        };
        let request = self
            .request(Method::PUT, &format!("checklists/{checklist_id}"))
            .json(&body);
        self.send_raw(Endpoint::PutChecklist, request, |data| {
            parse_checklist(Endpoint::PutChecklist, data)
        })
        .await?
    }

    /// Deletes an asset and its stored file; an asset already gone counts as deleted.
    pub async fn delete_file(&self, asset_id: &str) -> Result<(), ApiError> {
        match self
            .send(
                Endpoint::DeleteFile,
                self.request(Method::DELETE, &format!("file/{asset_id}")),
            )
            .await
        {
            Err(ApiError::Status { status: 404, .. }) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// An asset's metadata (`id`, `filename`, ...); `None` when the API says it is gone or not
    /// ours (404 or 403).
    pub async fn get_asset(&self, asset_id: &str) -> Result<Option<Value>, ApiError> {
        let request = self.request(Method::GET, &format!("assets/{asset_id}"));
        match self.send(Endpoint::GetAsset, request).await {
            Ok(data) => Ok(into_list(data).into_iter().next()),
            Err(ApiError::Status {
                status: 403 | 404, ..
            }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Streams an asset's content into `sink`, chunk by chunk, and returns its size. Each
    /// attempt starts the sink again (`Sink::restart`), so `with_retries` can repeat it; the
    /// sink sits behind a lock only so that repeated attempts can share it.
    pub async fn download(
        &self,
        asset_id: &str,
        sink: &std::sync::Mutex<impl Sink>,
    ) -> Result<u64, ApiError> {
        self.download_at_most(asset_id, MAX_DOWNLOAD_BYTES, sink)
            .await
    }

    /// Like `download`, abandoned as soon as the answer says or turns out to be larger than
    /// `limit` (at most the 100 MiB Tallyfy stores): an endless body must not fill the disk.
    /// An HTML page in place of the file (a proxy's or portal's) is a strange answer, not the
    /// file.
    pub async fn download_at_most(
        &self,
        asset_id: &str,
        limit: u64,
        sink: &std::sync::Mutex<impl Sink>,
    ) -> Result<u64, ApiError> {
        let limit = limit.min(MAX_DOWNLOAD_BYTES);
        let too_large = || {
            Body::Local(ApiError::TooLarge {
                asset: asset_id.to_string(),
                limit,
            })
        };
        let sink = |use_it: &mut dyn FnMut(&mut dyn Sink) -> std::io::Result<()>| {
            let mut sink = sink.lock().unwrap_or_else(|poison| poison.into_inner());
            use_it(&mut *sink)
        };
        sink(&mut |sink| sink.restart()).map_err(|error| ApiError::Sink {
            asset: asset_id.to_string(),
            detail: error.to_string(),
        })?;
        let request = self
            .request(Method::GET, &format!("file/{asset_id}/dl"))
            .timeout(
                self.timeout
                    + Duration::from_secs(MAX_DOWNLOAD_BYTES / SLOWEST_UPLOAD_BYTES_PER_SEC),
            );
        self.exchange(
            Endpoint::Download,
            request,
            || None,
            |mut response| async move {
                if let Some(kind) = page_type(&response) {
                    return Err(Body::Strange(ApiError::Decode {
                        endpoint: Endpoint::Download,
                        detail: format!(
                            "a page ({kind}) came in place of the file: a proxy's or a login portal's?"
                        ),
                    }));
                }
                if response.content_length().is_some_and(|length| length > limit) {
                    return Err(too_large());
                }
                let mut size = 0u64;
                while let Some(chunk) = response.chunk().await.map_err(Body::Transport)? {
                    size += chunk.len() as u64;
                    if size > limit {
                        return Err(too_large());
                    }
                    sink(&mut |sink| sink.write(&chunk)).map_err(|error| {
                        Body::Local(ApiError::Sink {
                            asset: asset_id.to_string(),
                            detail: error.to_string(),
                        })
                    })?;
                }
                Ok(size)
            },
        )
        .await
    }
}

/// The content type of an answer that is a web page rather than a file: no file Tallyfy takes
/// is HTML.
fn page_type(response: &reqwest::Response) -> Option<String> {
    let kind = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let essence = kind.split(';').next().unwrap_or_default().trim();
    ["text/html", "application/xhtml+xml"]
        .iter()
        .any(|page| essence.eq_ignore_ascii_case(page))
        .then(|| crate::text::escape(essence))
}

/// Why reading a 2xx answer's body failed: the connection (an outage), or where the body went.
pub(crate) enum Body {
    Transport(reqwest::Error),
    /// The body came whole but is not what the API answers.
    Strange(ApiError),
    Local(ApiError),
}

impl Client {
    /// Starts one process of a template. Not idempotent: every call starts another.
    pub async fn launch_run(
        &self,
        checklist_id: &str,
        name: &str,
        summary: &str,
        prerun: &serde_json::Map<String, Value>,
    ) -> Result<Run, ApiError> {
        let request = self.request(Method::POST, "runs").json(&json!({
            "checklist_id": checklist_id,
            "name": name,
            "summary": summary,
            "prerun": prerun,
        }));
        let answer = self.send(Endpoint::LaunchRun, request).await?;
        parse_run(Endpoint::LaunchRun, &answer)
    }

    /// Every process of a template whose name matches the search `q`, of any status, all
    /// pages followed.
    pub async fn find_runs(&self, checklist_id: &str, q: &str) -> Result<Vec<Run>, ApiError> {
        self.runs(&[("checklist_id", checklist_id), ("q", q)]).await
    }

    /// Every process of a template, of any status the list shows, all pages followed.
    pub async fn template_runs(&self, checklist_id: &str) -> Result<Vec<Run>, ApiError> {
        self.runs(&[("checklist_id", checklist_id)]).await
    }

    /// Every active process of a template, all pages followed.
    pub async fn active_runs(&self, checklist_id: &str) -> Result<Vec<Run>, ApiError> {
        self.runs(&[("checklist_id", checklist_id), ("status", "active")])
            .await
    }

    async fn runs(&self, query: &[(&str, &str)]) -> Result<Vec<Run>, ApiError> {
        self.all_pages(Endpoint::ListRuns, "runs", query)
            .await?
            .iter()
            .map(|item| parse_run(Endpoint::ListRuns, item))
            .collect()
    }

    pub async fn get_run(&self, run_id: &str) -> Result<Run, ApiError> {
        let request = self.request(Method::GET, &format!("runs/{run_id}"));
        let answer = self.send(Endpoint::GetRun, request).await?;
        parse_run(Endpoint::GetRun, &answer)
    }

    /// Every task of a process with its form fields, all pages followed.
    pub async fn run_tasks(&self, run_id: &str) -> Result<Vec<Task>, ApiError> {
        let query = [("with", "form_fields")];
        self.all_pages(Endpoint::ListTasks, &format!("runs/{run_id}/tasks"), &query)
            .await?
            .iter()
            .map(|task| Ok(parse_task(&raw::of(task))))
            .collect()
    }

    /// A template's steps with their form fields, or `None` when the answer does not carry
    /// them (then a running process's tasks are the only way to learn them).
    pub async fn template_steps(&self, checklist_id: &str) -> Result<Option<Vec<Step>>, ApiError> {
        let request = self
            .request(Method::GET, &format!("checklists/{checklist_id}"))
            .query(&[("with", "steps,steps.captures")]);
        self.send_raw(Endpoint::GetChecklist, request, |data| {
            let steps = raw::members(data)?.remove("steps")?;
            let steps: Vec<&RawValue> = serde_json::from_str(raw::relation(steps).get()).ok()?;
            Some(steps.into_iter().filter_map(parse_step).collect())
        })
        .await
    }

    /// Every template of the organization (id and title), all pages followed.
    pub async fn templates(&self) -> Result<Vec<Template>, ApiError> {
        Ok(self
            .all_pages(Endpoint::ListTemplates, "checklists", &[])
            .await?
            .iter()
            .filter_map(|item| {
                Some(Template {
                    id: text(item, "id")?,
                    title: text(item, "title").unwrap_or_default(),
                })
            })
            .collect())
    }

    /// A template's steps with their form fields from `GET /checklists/{id}/steps`, all pages
    /// followed (the route's default page holds only 10 steps).
    pub async fn step_list(&self, checklist_id: &str) -> Result<Vec<Step>, ApiError> {
        Ok(self
            .all_pages(
                Endpoint::ListSteps,
                &format!("checklists/{checklist_id}/steps"),
                &[("with", "captures")],
            )
            .await?
            .iter()
            .filter_map(|step| parse_step(&raw::of(step)))
            .collect())
    }

    /// Every active process of the organization, all pages followed.
    pub async fn all_active_runs(&self) -> Result<Vec<Run>, ApiError> {
        self.runs(&[("status", "active")]).await
    }

    /// One page of the template list, to learn whether `api.base_url` and `api.org_id` lead
    /// to an organization this token may read, at the cost of one small GET.
    pub async fn probe_organization(&self) -> Result<(), ApiError> {
        let request = self
            .request(Method::GET, "checklists")
            .query(&[("page", 1), ("per_page", 1)]);
        self.answer(Endpoint::ListTemplates, request, || None)
            .await
            .map(|_| ())
    }

    /// The `data` items of every page of a paginated list.
    async fn all_pages(
        &self,
        endpoint: Endpoint,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<Value>, ApiError> {
        let mut all = Vec::new();
        for page in 1..=MAX_PAGES {
            let request = self
                .request(Method::GET, path)
                .query(query)
                .query(&[("page", page), ("per_page", PER_PAGE)]);
            // `answer` checked that `data` is a list.
            let mut json = self.answer(endpoint, request, || None).await?;
            let Some(Value::Array(items)) = json.get_mut("data").map(Value::take) else {
                break;
            };
            let empty = items.is_empty();
            all.extend(items);
            let pagination = &json["meta"]["pagination"];
            let number = |key: &str| pagination.get(key).and_then(Value::as_u64);
            match (number("current_page"), number("total_pages")) {
                (Some(current), Some(total)) if current < total && !empty => {}
                _ => break,
            }
        }
        Ok(all)
    }
}

fn parse_step(step: &RawValue) -> Option<Step> {
    let step = raw::members(step)?;
    let text = |key: &str| step.get(key).copied().and_then(raw::text);
    Some(Step {
        id: text("id")?,
        title: text("title").unwrap_or_default(),
        captures: step
            .get("captures")
            .map(|c| form_fields(c))
            .unwrap_or_default(),
    })
}

fn parse_run(endpoint: Endpoint, data: &Value) -> Result<Run, ApiError> {
    let id = text(data, "id").ok_or_else(|| ApiError::Decode {
        endpoint,
        detail: "the process has no id".into(),
    })?;
    Ok(Run {
        id,
        name: text(data, "name").unwrap_or_default(),
        status: text(data, "status").unwrap_or_default(),
        summary: text(data, "summary").unwrap_or_default(),
        checklist_id: text(data, "checklist_id").unwrap_or_default(),
        prerun: data.get("prerun").cloned().unwrap_or(Value::Null),
    })
}

/// `Retry-After` of an answer, as a delay.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(error::parse_retry_after)
}

fn round(pause: Duration) -> Duration {
    Duration::from_secs(pause.as_secs_f64().ceil() as u64)
}

/// A field's value as a list of assets (`null` is an empty field; a field with one file may
/// hold it bare).
pub fn into_list(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// A 2xx answer's body, read into one buffer of the size the answer announces: collecting its
/// pieces first and joining them (`Response::bytes`) holds a field's value twice.
async fn whole(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    // The announced size is the server's word: what is reserved up front stays bounded.
    const RESERVE_AT_MOST: u64 = 16 * 1024 * 1024;
    let announced = response.content_length().unwrap_or(0).min(RESERVE_AT_MOST);
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A 2xx answer's JSON, checked to be the API's: an object whose `data` is an object (a list,
/// for the endpoints that answer lists; a delete's answer may be empty: `null`). Anything else,
/// such as an HTML page from a proxy or a captive portal, is an error to retry, not a verdict.
fn checked_answer(endpoint: Endpoint, body: &[u8]) -> Result<Value, ApiError> {
    let Some(answer) = parsed::<Value>(endpoint, body)? else {
        return Ok(Value::Null);
    };
    let kind = answer.get("data").map(|data| match data {
        Value::Object(_) => b'{',
        Value::Array(_) => b'[',
        _ => b' ',
    });
    check_data(endpoint, kind)?;
    Ok(answer)
}

/// `checked_answer`, in one pass over the body that parses nothing but finds `data`: that as
/// text (`None` for a delete's answer).
fn checked(endpoint: Endpoint, body: &[u8]) -> Result<Option<&RawValue>, ApiError> {
    let Some(answer) = parsed::<raw::Data>(endpoint, body)? else {
        return Ok(None);
    };
    // serde reads an array into a struct by position: only an object has a `data` member.
    let object = body.iter().find(|byte| !byte.is_ascii_whitespace()) == Some(&b'{');
    let data = answer.data.filter(|_| object);
    check_data(endpoint, data.and_then(|data| data.get().bytes().next()))?;
    Ok(data)
}

/// A 2xx body read as `T`; `None` for a delete's answer, which may be empty.
fn parsed<'a, T: serde::Deserialize<'a>>(
    endpoint: Endpoint,
    body: &'a [u8],
) -> Result<Option<T>, ApiError> {
    if endpoint == Endpoint::DeleteFile && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let answer = serde_json::from_slice(body).map_err(|error| ApiError::Decode {
        endpoint,
        detail: format!(
            "not JSON ({error}), starting {:?}",
            error::error_message(body)
        ),
    })?;
    Ok((endpoint != Endpoint::DeleteFile).then_some(answer))
}

/// Whether `data` (by its first character; `None`: no such member) is what `endpoint` answers.
fn check_data(endpoint: Endpoint, first: Option<u8>) -> Result<(), ApiError> {
    let decode = |detail: &str| {
        Err(ApiError::Decode {
            endpoint,
            detail: detail.into(),
        })
    };
    let lists = matches!(
        endpoint,
        Endpoint::ListRuns | Endpoint::ListTasks | Endpoint::ListTemplates | Endpoint::ListSteps
    );
    match first {
        Some(b'{') if !lists => Ok(()),
        Some(b'[') if lists || endpoint == Endpoint::GetAsset => Ok(()),
        Some(_) if lists => decode("`data` is not a list"),
        Some(_) => decode("`data` is not an object"),
        None => decode("no `data` member"),
    }
}

/// The `data` member of a checked answer.
fn data(mut answer: Value) -> Value {
    answer
        .get_mut("data")
        .map(Value::take)
        .unwrap_or(Value::Null)
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// The members of a task that hold field values, found in one pass over its text.
#[derive(serde::Deserialize)]
struct TaskValues<'a> {
    #[serde(borrow, default)]
    form_fields: Option<&'a RawValue>,
    #[serde(borrow, default)]
    taskdata: Option<&'a RawValue>,
}

/// Where a task is read and written (under its process, or on its own for a one-off task),
/// with the endpoints of its read and of its write.
fn task_route(run_id: Option<&str>, task_id: &str) -> (String, Endpoint, Endpoint) {
    match run_id {
        Some(run_id) => (
            format!("runs/{run_id}/tasks/{task_id}"),
            Endpoint::GetTask,
            Endpoint::PutTask,
        ),
        None => (
            format!("tasks/{task_id}"),
            Endpoint::GetOneOffTask,
            Endpoint::PutOneOffTask,
        ),
    }
}

/// Takes the task apart from its text: a field's value can list thousands of assets, and
/// stays text.
fn parse_task(data: &RawValue) -> Task {
    let members = raw::members(data).unwrap_or_default();
    let text = |key: &str| members.get(key).copied().and_then(raw::text);
    Task {
        id: text("id").unwrap_or_default(),
        title: text("title").unwrap_or_default(),
        status: text("status").unwrap_or_default(),
        run_id: text("run_id").filter(|run_id| !run_id.is_empty()),
        step_id: text("step_id"),
        checklist_id: text("checklist_id"),
        fields: members
            .get("form_fields")
            .map(|fields| form_fields(fields))
            .unwrap_or_default(),
    }
}

/// Form fields as a task (`form_fields`) or a step (`captures`) lists them.
fn form_fields(value: &RawValue) -> Vec<FormField> {
    let Ok(fields) = serde_json::from_str::<Vec<&RawValue>>(raw::relation(value).get()) else {
        return Vec::new();
    };
    fields
        .into_iter()
        .filter_map(|field| {
            let field = raw::members(field)?;
            let text = |key: &str| field.get(key).copied().and_then(raw::text);
            Some(FormField {
                id: text("id")?,
                label: text("label").unwrap_or_default(),
                field_type: text("field_type").unwrap_or_default(),
                value: field
                    .get("value")
                    .copied()
                    .unwrap_or(RawValue::NULL)
                    .to_owned(),
            })
        })
        .collect()
}

/// A template from its text, each kick-off field's value left as text: a kick-off file field
/// can list thousands of assets.
fn parse_checklist(endpoint: Endpoint, data: &RawValue) -> Result<Checklist, ApiError> {
    let members = raw::members(data).unwrap_or_default();
    let title = members
        .get("title")
        .copied()
        .and_then(raw::text)
        .ok_or_else(|| ApiError::Decode {
            endpoint,
            detail: "the template has no title".into(),
        })?;
    let fields: Vec<&RawValue> = members
        .get("prerun")
        .and_then(|prerun| serde_json::from_str(prerun.get()).ok())
        .unwrap_or_default();
    let (mut prerun, mut values) = (Vec::new(), Vec::new());
    for field in fields {
        let Some(mut field) = raw::members(field) else {
            prerun.push(raw::value(field));
            values.push(None);
            continue;
        };
        values.push(field.remove("value").map(ToOwned::to_owned));
        let field: serde_json::Map<String, Value> = field
            .into_iter()
            .map(|(key, member)| (key, raw::value(member)))
            .collect();
        prerun.push(Value::Object(field));
    }
    Ok(Checklist {
        title,
        prerun,
        values,
    })
}

/// A transport error with its causes, e.g. "error sending request: connection refused".
fn describe(error: &reqwest::Error) -> String {
    // reqwest puts the URL in its message; the logs already name the endpoint.
    let head = if error.is_timeout() {
        "timed out".to_string()
    } else {
        let full = error.to_string();
        full.find(" for url (")
            .map_or(full.clone(), |at| full[..at].to_string())
    };
    crate::text::redact(&crate::text::with_causes(head, error)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Auth, Secret};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with a chunked body that never ends, as a broken
    /// or hostile server can: no Content-Length gives it away.
    async fn endless_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buffer[..read]),
                        }
                    }
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if socket.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = [b'x'; 65536];
                    loop {
                        let frame = [b"10000\r\n".as_slice(), &chunk, b"\r\n"].concat();
                        if socket.write_all(&frame).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_endless_download_is_abandoned_past_its_limit() {
        let addr = endless_server().await;
        let config = ApiConfig {
            base_url: reqwest::Url::parse(&format!("http://{addr}/api")).unwrap(),
            org_id: "org".into(),
            auth: Auth::Token { token_file: None },
            timeout: Duration::from_secs(10),
            concurrency: 1,
            rate_limit: None,
            ca_file: None,
            proxy: None,
        };
        let credentials = Credentials::Token(Secret::parse("token").unwrap());
        let api = Client::new(&config, credentials, CancellationToken::new()).unwrap();
        let sink = std::sync::Mutex::new(Hashing::default());
        let error = api
            .download_at_most("a1", 1 << 20, &sink)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ApiError::TooLarge { limit, .. } if limit == 1 << 20),
            "{error}"
        );
        assert!(!error.is_retryable());
    }
}
