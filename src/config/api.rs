//! The `api` section: where the API is, how the daemon proves who it is (and the `Credentials`
//! resolved from that and the environment at start), the limits on requests, the certificate
//! authorities it trusts and the proxy it goes through.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde_yaml::Value;

use super::raw::{id, invalid, path_in, positive_duration, Bad, Section};
use super::secret::{Secret, CLIENT_SECRET, TOKEN};
use super::{read_bytes_limited, ConfigError};

pub const DEFAULT_BASE_URL: &str = "https://go.tallyfy.com/api";
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
pub(super) const DEFAULT_CONCURRENCY: usize = 4;
const MAX_CONCURRENCY: u64 = 64;
pub(super) const DEFAULT_TOKEN_URL: &str = "https://go.tallyfy.com/oauth/token";
// Every public root in one bundle is well under 1 MiB.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Without a trailing `/`.
    pub base_url: Url,
    pub org_id: String,
    pub auth: Auth,
    /// Per request.
    pub timeout: Duration,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// A ceiling on requests, paced evenly, so a backlog never earns 429s.
    pub rate_limit: Option<RateLimit>,
    /// Certificates trusted on top of the system's store (`api.ca_file`).
    pub ca_file: Option<CaFile>,
    /// `api.proxy`: every request goes through it instead of HTTPS_PROXY or HTTP_PROXY
    /// (NO_PROXY still applies).
    pub proxy: Option<ProxyUrl>,
}

/// A proxy's URL, which may carry a user name and password: never shown with them.
#[derive(Clone)]
pub struct ProxyUrl(pub Url);

impl ProxyUrl {
    /// The URL without user name or password, for logs and `check`.
    pub fn shown(&self) -> String {
        let mut shown = self.0.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.as_str().trim_end_matches('/').to_string()
    }

    /// The password, if any: known to `text::redact` from now on, as written and decoded.
    pub fn keep_password_secret(&self) {
        if let Some(password) = self.0.password() {
            crate::text::keep_secret(password);
            crate::text::keep_secret(&percent_decoded(password));
        }
    }
}

/// `%XX` sequences as the bytes they stand for (a URL keeps its password encoded).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `api.ca_file`: a PEM bundle of certificate authorities this daemon alone trusts, such as a
/// company's TLS-inspecting proxy.
#[derive(Clone, Debug)]
pub struct CaFile {
    pub path: PathBuf,
    /// At least one, each usable as a trust anchor.
    pub certificates: Vec<reqwest::Certificate>,
}

/// `requests` per `per`, as written in `api.rate_limit: 100/min`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.requests,
            humantime::format_duration(self.per)
        )
    }
}

/// How the daemon proves who it is (`api.auth`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// A personal access token, sent as it is (`auth: token`, the default).
    Token { token_file: Option<PathBuf> },
    /// OAuth client credentials, exchanged at `token_url` for access tokens that expire
    /// (`auth: client_credentials`): nothing to replace by hand every few months.
    ClientCredentials {
        token_url: Url,
        client_id: String,
        client_secret_file: Option<PathBuf>,
    },
}

/// What the daemon authenticates with, secrets included: resolved from `api.auth` and the
/// environment once at start.
#[derive(Clone, Debug)]
pub enum Credentials {
    Token(Secret),
    ClientCredentials {
        token_url: Url,
        client_id: String,
        client_secret: Secret,
    },
}

/// Credentials and where their secret came from, for `check` to show.
#[derive(Debug)]
pub struct Located {
    pub credentials: Credentials,
    /// Such as "environment variable TALLYFY_ACCESS_TOKEN" or "file /etc/t/token (api.token_file)".
    pub source: String,
}

impl Credentials {
    /// With `auth: token`: TALLYFY_ACCESS_TOKEN, else api.token_file, else the systemd
    /// credential tallyfy-token. With `auth: client_credentials` the client secret the same
    /// way: TALLYFY_CLIENT_SECRET, else api.client_secret_file, else tallyfy-client-secret.
    /// Errors name the source (variable or file path) but NEVER contain the secret.
    pub fn resolve(
        api: &ApiConfig,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Credentials, ConfigError> {
        Credentials::locate(api, env).map(|located| located.credentials)
    }

    /// `resolve`, also saying where the secret came from. Outside systemd (no
    /// `$CREDENTIALS_DIRECTORY`) the credential is read from the file the installed unit's
    /// `LoadCredential=` names, so that a command run with sudo uses the service's secret. A
    /// WARN says when the variable hides a file or credential that holds another secret, and
    /// when an unreadable file gives way to the credential.
    pub fn locate(
        api: &ApiConfig,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Located, ConfigError> {
        match &api.auth {
            Auth::Token { token_file } => {
                let (token, source) = TOKEN.resolve_kept(token_file.as_deref(), env)?;
                Ok(Located {
                    credentials: Credentials::Token(token),
                    source,
                })
            }
            Auth::ClientCredentials {
                token_url,
                client_id,
                client_secret_file,
            } => {
                let (client_secret, source) =
                    CLIENT_SECRET.resolve_kept(client_secret_file.as_deref(), env)?;
                Ok(Located {
                    credentials: Credentials::ClientCredentials {
                        token_url: token_url.clone(),
                        client_id: client_id.clone(),
                        client_secret,
                    },
                    source,
                })
            }
        }
    }
}

pub(super) fn api_config(mut s: Section<'_>, base: &Path) -> Option<ApiConfig> {
    let base_url = s.opt("base_url", https_url);
    let org_id = s.req("org_id", id);
    let auth = auth(&mut s, base);
    let timeout = s
        .opt("timeout", positive_duration)
        .unwrap_or(DEFAULT_TIMEOUT);
    let concurrency = s
        .opt("concurrency", concurrency)
        .unwrap_or(DEFAULT_CONCURRENCY);
    let rate_limit = s.opt("rate_limit", rate_limit);
    let ca_file = s.get("ca_file", ca_file(base));
    let proxy = s.opt("proxy", proxy_url);
    let default_url = || https_url_from(DEFAULT_BASE_URL).ok();
    s.finish();
    Some(ApiConfig {
        base_url: base_url.or_else(default_url)?,
        org_id: org_id?,
        auth: auth?,
        timeout,
        concurrency,
        rate_limit,
        ca_file: ca_file.ok()?,
        proxy,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Token,
    ClientCredentials,
}

/// `api.auth` and the keys of both kinds. A key of the kind not chosen is a problem of its
/// own: a config switched half-way from one kind to the other would otherwise fail later, or
/// quietly use a secret the operator meant to retire.
fn auth(s: &mut Section<'_>, base: &Path) -> Option<Auth> {
    let kind = s.get("auth", auth_kind);
    let token_file = s.get("token_file", path_in(base));
    let token_url = s.get("token_url", https_url);
    let client_id = s.get("client_id", client_id);
    let client_secret_file = s.get("client_secret_file", path_in(base));
    let kind = kind.ok()?.unwrap_or(AuthKind::Token);
    let misplaced = |key: &str, present: bool, why: &str| {
        if present {
            s.problems.add(format!("{}: {why}", s.at(key)));
        }
    };
    fn is_set<T>(value: &Result<Option<T>, ()>) -> bool {
        matches!(value, Ok(Some(_)))
    }
    match kind {
        AuthKind::Token => {
            let why = "only applies with api.auth: client_credentials";
            misplaced("token_url", is_set(&token_url), why);
            misplaced("client_id", is_set(&client_id), why);
            misplaced("client_secret_file", is_set(&client_secret_file), why);
            Some(Auth::Token {
                token_file: token_file.ok()?,
            })
        }
        AuthKind::ClientCredentials => {
            misplaced(
                "token_file",
                is_set(&token_file),
                &format!(
                    "only applies with api.auth: token (the client secret comes from {})",
                    CLIENT_SECRET.places()
                ),
            );
            if matches!(client_id, Ok(None)) {
                s.problems.add(format!(
                    "{}: required with api.auth: client_credentials",
                    s.at("client_id")
                ));
            }
            let default_url = || https_url_from(DEFAULT_TOKEN_URL).ok();
            Some(Auth::ClientCredentials {
                token_url: token_url.ok()?.or_else(default_url)?,
                client_id: client_id.ok()??,
                client_secret_file: client_secret_file.ok()?,
            })
        }
    }
}

/// `100/min`: requests per second, minute or hour.
fn rate_limit(value: &Value) -> Result<RateLimit, Bad> {
    let hint = "expected requests per period, e.g. 100/min, 10/s or 1000/hour";
    let Value::String(text) = value else {
        return Err(Bad::Type("a rate such as 100/min"));
    };
    let Some((count, period)) = text.split_once('/') else {
        return invalid(hint);
    };
    let per = match period.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return invalid(hint),
    };
    match count.trim().parse::<u32>() {
        Ok(requests) if requests > 0 => Ok(RateLimit { requests, per }),
        _ => invalid(hint),
    }
}

fn concurrency(value: &Value) -> Result<usize, Bad> {
    let Value::Number(n) = value else {
        return Err(Bad::Type("an integer"));
    };
    match n.as_u64() {
        Some(count @ 1..=MAX_CONCURRENCY) => Ok(count as usize),
        _ => invalid(format!("must be between 1 and {MAX_CONCURRENCY}")),
    }
}

fn auth_kind(value: &Value) -> Result<AuthKind, Bad> {
    match value {
        Value::String(s) if s == "token" => Ok(AuthKind::Token),
        Value::String(s) if s == "client_credentials" => Ok(AuthKind::ClientCredentials),
        Value::String(_) => invalid("expected token or client_credentials"),
        _ => Err(Bad::Type("token or client_credentials")),
    }
}

/// OAuth client ids are often plain numbers (Laravel Passport's are), so a number is taken
/// as written.
fn client_id(value: &Value) -> Result<String, Bad> {
    match value {
        Value::String(s) if s.is_empty() => invalid("must not be empty"),
        Value::String(s) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            invalid("must not contain whitespace or control characters")
        }
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        Value::Number(_) => invalid("expected a string or a whole number"),
        _ => Err(Bad::Type("a string")),
    }
}

fn https_url(value: &Value) -> Result<Url, Bad> {
    let Value::String(text) = value else {
        return Err(Bad::Type("a URL string"));
    };
    let url = https_url_from(text).map_err(|bad| match bad {
        Bad::Invalid(why) => Bad::Url(why),
        other => other,
    })?;
    // The token and the client secret go in their own headers and fields; a password here
    // would be printed wherever the URL is, and sent as a second credential.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Bad::Secret(
            "must not hold a user name or password (user:password@); the token or client secret goes in its own file".into(),
        ));
    }
    Ok(url)
}

/// The token travels with every API request and the client secret to the token endpoint, so
/// either may go in clear only to this machine.
fn https_url_from(text: &str) -> Result<Url, Bad> {
    let mut url = Url::parse(text).or_else(|error| invalid(format!("not a valid URL: {error}")))?;
    let loopback = url.host_str().is_some_and(|host| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return invalid(
            "must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)",
        );
    }
    if let Some(path) = url.path().strip_suffix('/').map(str::to_string) {
        url.set_path(&path);
    }
    Ok(url)
}

/// `http://proxy.example.com:3128`, optionally with `user:password@`.
fn proxy_url(value: &Value) -> Result<ProxyUrl, Bad> {
    let hint = "expected a proxy URL such as http://proxy.example.com:3128";
    let Value::String(text) = value else {
        return Err(Bad::Type("a URL string"));
    };
    let url = Url::parse(text.trim()).map_err(|error| Bad::Url(format!("{hint} ({error})")))?;
    let usable = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|host| !host.is_empty())
        && reqwest::Proxy::all(url.as_str()).is_ok();
    if !usable {
        return Err(Bad::Url(hint.to_string()));
    }
    let proxy = ProxyUrl(url);
    proxy.keep_password_secret();
    Ok(proxy)
}

/// A PEM bundle of CA certificates. Each is tried as a trust anchor here, so that a broken
/// file stops the config with the key's name rather than the daemon with a TLS error.
fn ca_file(base: &Path) -> impl Fn(&Value) -> Result<CaFile, Bad> + '_ {
    move |value| {
        let path = path_in(base)(value)?;
        let pem = read_bytes_limited(&path, MAX_CA_FILE_BYTES)
            .or_else(|error| invalid(format!("cannot read: {error}")))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).or_else(|error| {
            invalid(format!(
                "not a PEM certificate bundle: {}",
                crate::text::with_causes(error.to_string(), &error)
            ))
        })?;
        if certificates.is_empty() {
            return invalid(
                "holds no certificate (expected PEM blocks \"-----BEGIN CERTIFICATE-----\"; \
                 convert a binary DER file with: openssl x509 -inform der -in FILE -out FILE.pem)",
            );
        }
        certificates
            .iter()
            .cloned()
            .fold(
                reqwest::Client::builder().tls_built_in_root_certs(false),
                reqwest::ClientBuilder::add_root_certificate,
            )
            .build()
            .or_else(|error| {
                invalid(format!(
                    "holds a certificate that cannot be used as an authority: {}",
                    crate::text::with_causes(error.to_string(), &error)
                ))
            })?;
        Ok(CaFile { path, certificates })
    }
}
