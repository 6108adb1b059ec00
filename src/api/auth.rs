//! The bearer token each request carries. Receives the credentials from the config, and from
//! the client whether the API took or refused a token; hands every request the token to send.
//! Owns, for OAuth client credentials, the current access token and its expiry, the one fetch
//! at the token endpoint that concurrent requests share, and renewal ahead of expiry.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::{self, ApiError, Endpoint};
use crate::config::{Credentials, Secret};
use crate::metrics::METRICS;
use crate::retry::Backoff;

/// Lifetime assumed when the token endpoint does not say: a guess on the short side costs one
/// token request an hour.
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(3600);
/// A token is renewed when 1/RENEW_AHEAD of its lifetime is left: about 17 hours ahead for
/// Tallyfy's week-long tokens, so that an outage of the token endpoint has time to pass, and
/// 0.3 s ahead for a 3-second token in a test.
const RENEW_AHEAD: u32 = 10;

/// The token one request was sent with.
#[derive(Clone, Debug)]
pub struct Bearer {
    token: Secret,
    /// Which fetch issued it (0 for a static token), to tell a refused token from its successor.
    generation: u64,
}

impl Bearer {
    pub fn expose(&self) -> &str {
        self.token.expose()
    }
}

/// What to make of a request the API answered with 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Send it again at once: the token it carried is being replaced.
    Retry,
    /// The refusal stands: the token cannot be replaced, or its replacement was refused too.
    Final,
}

pub enum TokenSource {
    /// A personal access token: sent as it is, replaced only by the operator.
    Static(Bearer),
    ClientCredentials(Arc<Issuer>),
}

impl TokenSource {
    /// Must be called within a tokio runtime: for client credentials it starts the task that
    /// renews tokens ahead of their expiry, until `cancel`.
    /// `proxy`: the proxy the token endpoint is reached through, as shown to people.
    pub fn new(
        credentials: Credentials,
        http: reqwest::Client,
        proxy: Option<String>,
        cancel: CancellationToken,
    ) -> TokenSource {
        match credentials {
            Credentials::Token(token) => TokenSource::Static(Bearer {
                token,
                generation: 0,
            }),
            Credentials::ClientCredentials {
                token_url,
                client_id,
                client_secret,
            } => {
                let issuer = Arc::new(Issuer {
                    http,
                    proxy,
                    token_url,
                    client_id,
                    client_secret,
                    cache: Mutex::new(Cache {
                        token: None,
                        fetches: 0,
                        failure: None,
                        replacing_refused: false,
                        retry: Backoff::default(),
                    }),
                    fetching: tokio::sync::Mutex::new(()),
                    renew_at: watch::Sender::new(None),
                });
                tokio::spawn(Arc::clone(&issuer).keep_fresh(cancel));
                TokenSource::ClientCredentials(issuer)
            }
        }
    }

    /// Whether tokens come from a token endpoint (and so can be replaced without the operator).
    pub fn renews(&self) -> bool {
        matches!(self, TokenSource::ClientCredentials(_))
    }

    /// The token to send now; for client credentials fetched first when there is no valid one.
    pub async fn bearer(&self) -> Result<Bearer, ApiError> {
        match self {
            TokenSource::Static(bearer) => Ok(bearer.clone()),
            TokenSource::ClientCredentials(issuer) => issuer.bearer().await,
        }
    }

    /// The API answered a request sent with `used` with success.
    pub fn accepted(&self, used: &Bearer) {
        if let TokenSource::ClientCredentials(issuer) = self {
            issuer.accepted(used);
        }
    }

    /// The API refused `used` with 401.
    pub fn refused(&self, used: &Bearer) -> Refusal {
        match self {
            TokenSource::Static(_) => Refusal::Final,
            TokenSource::ClientCredentials(issuer) => issuer.refused(used),
        }
    }
}

pub struct Issuer {
    http: reqwest::Client,
    proxy: Option<String>,
    token_url: Url,
    client_id: String,
    client_secret: Secret,
    cache: Mutex<Cache>,
    /// Held while a fetch is in flight: concurrent requests wait for it and share its outcome.
    fetching: tokio::sync::Mutex<()>,
    /// When to renew the current token; `None` while there is none to renew ahead of expiry.
    renew_at: watch::Sender<Option<Instant>>,
}

struct Cache {
    token: Option<Issued>,
    /// Fetches finished so far, so a request that waited for a fetch can tell it is over.
    fetches: u64,
    /// Why the latest fetch failed, for the requests that waited for it.
    failure: Option<ApiError>,
    /// A token was refused; its successor is on probation.
    replacing_refused: bool,
    /// Paces renewals that fail while the current token still works.
    retry: Backoff,
}

impl Cache {
    fn valid(&self) -> Option<Bearer> {
        self.token
            .as_ref()
            .filter(|issued| Instant::now() < issued.expires_at)
            .map(|issued| issued.bearer.clone())
    }

    fn current(&mut self, used: &Bearer) -> Option<&mut Issued> {
        self.token
            .as_mut()
            .filter(|issued| issued.bearer.generation == used.generation)
    }
}

struct Issued {
    bearer: Bearer,
    expires_at: Instant,
    /// Fetched to replace a refused token and not yet taken by the API: should the API refuse
    /// this one too, the refusal stands rather than starting a loop of fetches.
    on_probation: bool,
}

impl Issuer {
    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    async fn bearer(&self) -> Result<Bearer, ApiError> {
        let seen = {
            let cache = self.lock();
            // Past its renewal time a token still works: the renewal task is replacing it.
            if let Some(bearer) = cache.valid() {
                return Ok(bearer);
            }
            cache.fetches
        };
        self.fetch_once(seen).await
    }

    /// Fetches a token, unless a fetch finished since `seen`: then that one's outcome is used.
    async fn fetch_once(&self, seen: u64) -> Result<Bearer, ApiError> {
        let _fetching = self.fetching.lock().await;
        {
            let cache = self.lock();
            if cache.fetches != seen {
                if let Some(bearer) = cache.valid() {
                    return Ok(bearer);
                }
                if let Some(error) = &cache.failure {
                    return Err(error.clone());
                }
            }
        }
        let sent = Instant::now();
        let outcome = self.request().await;
        self.store(sent, outcome)
    }

    fn store(
        &self,
        sent: Instant,
        outcome: Result<(Secret, Duration), ApiError>,
    ) -> Result<Bearer, ApiError> {
        let mut cache = self.lock();
        cache.fetches += 1;
        let now = Instant::now();
        let (token, lifetime) = match outcome {
            Ok(issued) => issued,
            Err(error) => {
                let Some((bearer, expires_at)) = cache
                    .token
                    .as_ref()
                    .filter(|issued| now < issued.expires_at)
                    .map(|issued| (issued.bearer.clone(), issued.expires_at))
                else {
                    cache.failure = Some(error.clone());
                    self.renew_at.send_replace(None);
                    return Err(error);
                };
                // Renewing ahead failed, but the current token still works for a while.
                let left = expires_at - now;
                let delay = cache.retry.next_delay();
                let next = if delay < left {
                    format!("trying again in {}", seconds(delay))
                } else {
                    "requests fetch a new one when it expires".to_string()
                };
                self.renew_at
                    .send_replace((delay < left).then_some(now + delay));
                warn!(%error, "cannot renew the access token; the current one is valid for another {}; {next}", seconds(left));
                return Ok(bearer);
            }
        };
        // Counted from the request: the server started its clock no earlier.
        let expires_at = sent + lifetime;
        let renew_at = expires_at - lifetime / RENEW_AHEAD;
        crate::text::keep_secret(token.expose());
        let bearer = Bearer {
            token,
            generation: cache.fetches,
        };
        let on_probation = cache.replacing_refused;
        cache.token = Some(Issued {
            bearer: bearer.clone(),
            expires_at,
            on_probation,
        });
        cache.failure = None;
        cache.retry.reset();
        // An answer slower than the margin leaves nothing to renew ahead: requests fetch a new
        // token once this one has expired.
        self.renew_at
            .send_replace((renew_at > now).then_some(renew_at));
        info!(
            token_url = %self.token_url,
            client_id = %self.client_id,
            expires_in_secs = lifetime.as_secs(),
            "got an access token; renewing it in {}",
            seconds(renew_at.saturating_duration_since(now))
        );
        Ok(bearer)
    }

    fn accepted(&self, used: &Bearer) {
        let mut cache = self.lock();
        if let Some(issued) = cache.current(used) {
            if issued.on_probation {
                issued.on_probation = false;
                cache.replacing_refused = false;
            }
        }
    }

    fn refused(&self, used: &Bearer) -> Refusal {
        let mut cache = self.lock();
        let Some(issued) = cache.current(used) else {
            // An older token: it has been replaced, or is being replaced, already.
            return Refusal::Retry;
        };
        let on_probation = issued.on_probation;
        cache.token = None;
        cache.replacing_refused = true;
        self.renew_at.send_replace(None);
        if on_probation {
            return Refusal::Final;
        }
        warn!(
            token_url = %self.token_url,
            client_id = %self.client_id,
            "the API refused the access token (401) before it expired (revoked?); fetching a new one and sending the request again"
        );
        Refusal::Retry
    }

    /// Renews the token when it is due, until `cancel`. Only a token that still works is
    /// renewed here; once none does, requests fetch one through the gate, which paces them.
    async fn keep_fresh(self: Arc<Self>, cancel: CancellationToken) {
        let mut schedule = self.renew_at.subscribe();
        loop {
            let due = *schedule.borrow_and_update();
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = schedule.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = async {
                    match due {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    let seen = self.lock().fetches;
                    // The outcome is logged where it is stored.
                    let _ = self.fetch_once(seen).await;
                }
            }
        }
    }

    /// `POST token_url` with the client credentials grant.
    async fn request(&self) -> Result<(Secret, Duration), ApiError> {
        let transport = |error: reqwest::Error| {
            super::network::failed(Endpoint::Token, &error, self.proxy.as_deref())
        };
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.client_id.as_str()),
                ("client_secret", self.client_secret.expose()),
                ("scope", "*"),
            ])
            .send()
            .await
            .inspect_err(|_| METRICS.request(Endpoint::Token.label(), 0))
            .map_err(transport)?;
        let status = response.status().as_u16();
        METRICS.request(Endpoint::Token.label(), status);
        if response.status().is_redirection() {
            return Err(self.redirected(status, &response));
        }
        if response.status() == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err(super::network::proxy_refusal(
                Endpoint::Token,
                self.proxy.as_deref(),
            ));
        }
        let retry_after = super::retry_after(&response);
        let body = response.bytes().await.map_err(transport)?;
        match status {
            200..=299 => self.parse(&body),
            408 | 425 | 429 | 500..=599 => Err(ApiError::Status {
                endpoint: Endpoint::Token,
                status,
                message: error::error_message(&body),
                retry_after,
            }),
            _ => Err(self.no_token(format!("HTTP {status}: {}", oauth_message(&body)))),
        }
    }

    fn parse(&self, body: &[u8]) -> Result<(Secret, Duration), ApiError> {
        let json: Value = serde_json::from_slice(body)
            .map_err(|error| self.no_token(format!("the answer is not JSON ({error})")))?;
        let token = json
            .get("access_token")
            .and_then(Value::as_str)
            .ok_or_else(|| self.no_token("the answer has no access_token".to_string()))?;
        let token = Secret::parse(token)
            .map_err(|problem| self.no_token(format!("its access_token is {problem}")))?;
        if let Some(kind) = json.get("token_type").and_then(Value::as_str) {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(self.no_token(format!("its token_type is {kind:?}, not Bearer")));
            }
        }
        let lifetime = match json.get("expires_in") {
            None | Some(Value::Null) => UNKNOWN_LIFETIME,
            Some(value) => value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.parse().ok()))
                .filter(|seconds| *seconds > 0)
                .map(Duration::from_secs)
                .ok_or_else(|| {
                    self.no_token(format!(
                        "its expires_in {value} is not a positive number of seconds"
                    ))
                })?,
        };
        Ok((token, lifetime))
    }

    /// A redirect is never followed (the client credentials would go with it): the error
    /// says where it points, by origin only (the rest of a URL may carry anything).
    fn redirected(&self, status: u16, response: &reqwest::Response) -> ApiError {
        let target = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|location| location.to_str().ok())
            .and_then(|location| self.token_url.join(location).ok())
            .map(|target| target.origin().ascii_serialization());
        let detail = match target {
            Some(origin) => format!(
                "HTTP {status}: it redirects to {origin}; redirects of the token endpoint are not followed, so that the client secret goes nowhere else: set api.token_url to the final URL"
            ),
            None => format!(
                "HTTP {status}: it redirects; redirects of the token endpoint are not followed, so that the client secret goes nowhere else: set api.token_url to the final URL"
            ),
        };
        self.no_token(detail)
    }

    fn no_token(&self, detail: String) -> ApiError {
        ApiError::NoToken {
            token_url: self.token_url.to_string(),
            client_id: self.client_id.clone(),
            detail,
        }
    }
}

/// An OAuth error body (RFC 6749 §5.2) as "description (code)", else the API's usual shapes.
fn oauth_message(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |key| json.get(key).and_then(Value::as_str);
    match (text("error"), text("error_description").or(text("message"))) {
        (Some(code), Some(description)) => {
            crate::text::redact(&format!("{description} ({code})")).into_owned()
        }
        _ => error::error_message(body),
    }
}

fn seconds(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(super::round(duration))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeTallyfy, Fault, FaultKind};

    const CLIENT_ID: &str = "client-7";
    const CLIENT_SECRET: &str = "client-s3cr3t";

    async fn fake(lifetime_secs: u64) -> FakeTallyfy {
        let fake = FakeTallyfy::start("org", "static-token").await.unwrap();
        fake.set_client(CLIENT_ID, CLIENT_SECRET);
        fake.set_token_lifetime(lifetime_secs);
        fake
    }

    fn source(token_url: &str, secret: &str) -> TokenSource {
        let credentials = Credentials::ClientCredentials {
            token_url: Url::parse(token_url).unwrap(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::parse(secret).unwrap(),
        };
        TokenSource::new(
            credentials,
            reqwest::Client::new(),
            None,
            CancellationToken::new(),
        )
    }

    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_token_fetch() {
        let fake = fake(604_800).await;
        let tokens = source(&fake.token_url(), CLIENT_SECRET);
        let bearers = futures_util::future::join_all((0..20).map(|_| tokens.bearer())).await;
        let first = bearers[0].as_ref().unwrap().expose().to_string();
        assert!(bearers
            .iter()
            .all(|b| b.as_ref().unwrap().expose() == first));
        assert_eq!(fake.token_requests().len(), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_names_the_token_url_and_the_client_but_never_the_secret() {
        let fake = fake(604_800).await;
        let tokens = source(&fake.token_url(), "wrong-s3cr3t");
        let outcomes = futures_util::future::join_all((0..5).map(|_| tokens.bearer())).await;
        assert_eq!(fake.token_requests().len(), 1, "the failure is shared too");
        let error = outcomes[0].as_ref().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "the token endpoint {} issued no access token for client {CLIENT_ID}: HTTP 401: Client authentication failed (invalid_client)",
                fake.token_url()
            )
        );
        assert!(error.is_unauthorized() && !error.is_retryable());
        assert!(!format!("{error} {error:?}").contains("s3cr3t"));
    }

    #[tokio::test]
    async fn an_unreachable_token_endpoint_is_an_outage() {
        let fake = fake(604_800).await;
        let url = fake.token_url();
        fake.shutdown().await;
        let error = source(&url, CLIENT_SECRET).bearer().await.unwrap_err();
        assert!(
            matches!(
                error,
                ApiError::Transport {
                    endpoint: Endpoint::Token,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.is_outage());
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_once_and_a_refused_replacement_stands() {
        let fake = fake(604_800).await;
        let tokens = source(&fake.token_url(), CLIENT_SECRET);
        let first = tokens.bearer().await.unwrap();
        tokens.accepted(&first);
        assert_eq!(tokens.refused(&first), Refusal::Retry);
        let second = tokens.bearer().await.unwrap();
        assert_ne!(second.expose(), first.expose());
        // A request still carrying the old token just goes again, without another fetch.
        assert_eq!(tokens.refused(&first), Refusal::Retry);
        assert_eq!(tokens.refused(&second), Refusal::Final);
        assert_eq!(fake.token_requests().len(), 2);
        // Once the API takes a replacement, a later refusal is worth a new token again.
        let third = tokens.bearer().await.unwrap();
        tokens.accepted(&third);
        assert_eq!(tokens.refused(&third), Refusal::Retry);
    }

    #[tokio::test]
    async fn a_static_token_is_sent_as_it_is_and_its_refusal_stands() {
        let token = Secret::parse("static-token").unwrap();
        let tokens = TokenSource::new(
            Credentials::Token(token),
            reqwest::Client::new(),
            None,
            CancellationToken::new(),
        );
        let bearer = tokens.bearer().await.unwrap();
        assert_eq!(bearer.expose(), "static-token");
        assert_eq!(tokens.refused(&bearer), Refusal::Final);
        assert!(!tokens.renews());
    }

    #[tokio::test]
    async fn a_token_is_renewed_in_the_background_before_it_expires() {
        let fake = fake(2).await;
        let tokens = source(&fake.token_url(), CLIENT_SECRET);
        let TokenSource::ClientCredentials(issuer) = &tokens else {
            panic!("client credentials make an issuer");
        };
        let first = tokens.bearer().await.unwrap();
        // Checked against the issuer's own instants rather than a window of wall-clock time,
        // which a loaded machine can miss without anything being wrong.
        let renew_at = issuer.renew_at.borrow().expect("a renewal is scheduled");
        let expires_at = issuer.lock().token.as_ref().unwrap().expires_at;
        assert_eq!(expires_at - renew_at, Duration::from_millis(200));
        // Nothing asks for a token meanwhile: the second one is fetched in the background.
        // The fake counts the request when it arrives, before its answer is taken in: wait
        // for the fetch to finish.
        eventually("a second token is fetched", || issuer.lock().fetches == 2).await;
        assert_eq!(fake.token_requests().len(), 2);
        let renewed = fake.token_requests()[1].at;
        assert!(
            renewed >= renew_at.into_std(),
            "renewed {:?} before its time",
            renew_at.into_std() - renewed
        );
        let second = tokens.bearer().await.unwrap();
        assert_ne!(second.expose(), first.expose());
    }

    #[tokio::test]
    async fn a_failed_renewal_keeps_the_current_token_until_it_expires() {
        let fake = fake(2).await;
        let unavailable = FaultKind::Status {
            status: 503,
            body: "{}".into(),
            retry_after: None,
        };
        let tokens = source(&fake.token_url(), CLIENT_SECRET);
        let first = tokens.bearer().await.unwrap();
        let issued = std::time::Instant::now();
        fake.inject(Fault::once("POST", "/oauth/token", unavailable));
        eventually("the renewal fails", || fake.pending_faults().is_empty()).await;
        if issued.elapsed() < Duration::from_millis(1900) {
            let still = tokens.bearer().await.unwrap();
            assert_eq!(still.expose(), first.expose());
        }
        // After its expiry the next request fetches a new one.
        tokio::time::sleep_until(Instant::from_std(issued + Duration::from_secs(2))).await;
        let next = tokens.bearer().await.unwrap();
        assert_ne!(next.expose(), first.expose());
        assert_eq!(fake.token_requests().len(), 3);
    }
}
