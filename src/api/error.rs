//! Typed failures of API calls (the token endpoint's included), and which of them are worth
//! another attempt.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Which call failed, for messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Upload,
    GetTask,
    PutTask,
    /// A one-off task (one in no process), at its own route.
    GetOneOffTask,
    PutOneOffTask,
    GetChecklist,
    PutChecklist,
    DeleteFile,
    LaunchRun,
    ListRuns,
    GetAsset,
    Download,
    GetRun,
    ListTasks,
    ListTemplates,
    ListSteps,
    /// The OAuth token endpoint (`api.token_url`).
    Token,
}

impl Endpoint {
    /// A short name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Upload => "upload",
            // One series for every task: a one-off task is read and written like any other.
            Endpoint::GetTask | Endpoint::GetOneOffTask => "get_task",
            Endpoint::PutTask | Endpoint::PutOneOffTask => "put_task",
            Endpoint::GetChecklist => "get_checklist",
            Endpoint::PutChecklist => "put_checklist",
            Endpoint::DeleteFile => "delete_file",
            Endpoint::LaunchRun => "launch_run",
            Endpoint::ListRuns => "list_runs",
            Endpoint::GetAsset => "get_asset",
            Endpoint::Download => "download",
            Endpoint::GetRun => "get_run",
            Endpoint::ListTasks => "list_tasks",
            Endpoint::ListTemplates => "list_templates",
            Endpoint::ListSteps => "list_steps",
            Endpoint::Token => "token",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Upload => "upload (POST /file)",
            Endpoint::GetTask => "read task (GET /runs/…/tasks/…)",
            Endpoint::PutTask => "update task (PUT /runs/…/tasks/…)",
            Endpoint::GetOneOffTask => "read one-off task (GET /tasks/…)",
            Endpoint::PutOneOffTask => "update one-off task (PUT /tasks/…)",
            Endpoint::GetChecklist => "read template (GET /checklists/…)",
            Endpoint::PutChecklist => "update template (PUT /checklists/…)",
            Endpoint::DeleteFile => "delete file (DELETE /file/…)",
            Endpoint::LaunchRun => "launch process (POST /runs)",
            Endpoint::ListRuns => "list processes (GET /runs)",
            Endpoint::GetAsset => "read asset (GET /assets/…)",
            Endpoint::Download => "download (GET /file/…/dl)",
            Endpoint::GetRun => "read process (GET /runs/…)",
            Endpoint::ListTasks => "list a process's tasks (GET /runs/…/tasks)",
            Endpoint::ListTemplates => "list templates (GET /checklists)",
            Endpoint::ListSteps => "list a template's steps (GET /checklists/…/steps)",
            Endpoint::Token => "get an access token (POST api.token_url)",
        })
    }
}

/// Clone, because the requests that share one token fetch share its failure too.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{endpoint}: {detail}")]
    Transport { endpoint: Endpoint, detail: String },
    #[error("{endpoint}: HTTP {status}: {message}")]
    Status {
        endpoint: Endpoint,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint}: unexpected answer: {detail}")]
    Decode { endpoint: Endpoint, detail: String },
    /// The token endpoint issued no token: the client id or secret is wrong, or the URL is not
    /// a token endpoint. Nothing works until that is fixed, like a refused token.
    #[error(
        "the token endpoint {token_url} issued no access token for client {client_id}: {detail}"
    )]
    NoToken {
        token_url: String,
        client_id: String,
        detail: String,
    },
    /// The server's certificate is not trusted (an unknown authority, expired, another name):
    /// nothing gets through until an administrator fixes the trust store or the URL.
    #[error("{endpoint}: cannot trust {host}: {reason}")]
    Untrusted {
        endpoint: Endpoint,
        /// Host and port as the URL names them.
        host: String,
        reason: String,
    },
    /// The proxy wants credentials, or refused the ones in its URL (407): like an untrusted
    /// certificate, nothing gets through until an administrator fixes them.
    #[error("{endpoint}: the proxy {proxy} refused the credentials (HTTP 407 Proxy Authentication Required): check the user name and password of api.proxy or HTTPS_PROXY")]
    ProxyRefused { endpoint: Endpoint, proxy: String },
    /// The HTTP client could not be set up, e.g. the certificate store is unusable.
    #[error("cannot set up the HTTPS client: {detail}")]
    Setup { detail: String },
    #[error("reading {path} during upload: {detail}")]
    File { path: PathBuf, detail: String },
    /// What a download was written to failed (a full disk, say): not the API's doing.
    #[error("download of asset {asset}: {detail}")]
    Sink { asset: String, detail: String },
    /// A download larger than it can be: abandoned before it fills the disk.
    #[error("download of asset {asset}: larger than {limit} bytes, more than the file can be; abandoned")]
    TooLarge { asset: String, limit: u64 },
    #[error("shutting down")]
    Cancelled,
}

impl ApiError {
    /// Transient failures: the same request may well succeed later. An answer that is not
    /// the API's (a proxy's page, a body cut short) is one: it says nothing about the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Decode { .. } => true,
            ApiError::Status { status, .. } => {
                matches!(status, 408 | 425 | 429 | 500 | 502 | 503 | 504)
            }
            _ => false,
        }
    }

    /// The token was refused, or none could be had: nothing will work until that is fixed, so
    /// wait rather than fail.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(401) || matches!(self, ApiError::NoToken { .. })
    }

    /// A sign that the service as a whole is unreachable or overloaded, not that this request is bad.
    /// Every transient answer of the token endpoint but 429 counts: no request can go without a token.
    pub fn is_outage(&self) -> bool {
        match self {
            ApiError::Transport { .. } | ApiError::Decode { .. } => true,
            ApiError::Status {
                endpoint: Endpoint::Token,
                status,
                ..
            } => *status != 429,
            ApiError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The server's certificate, or the proxy our credentials, was refused: like a refused
    /// token, nothing works until an operator acts, so requests wait rather than fail.
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            ApiError::Untrusted { .. } | ApiError::ProxyRefused { .. }
        )
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Longest Retry-After we honour: a broken header must not park the daemon for days.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(RETRY_AFTER_CAP))
}

/// The operator-facing message from one of the API's several error body shapes, with every
/// secret in use redacted: a server may echo the request, its credentials included.
pub fn error_message(body: &[u8]) -> String {
    crate::text::redact(&message_of(body)).into_owned()
}

fn message_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
        return excerpt(&text);
    };
    if let Some(message) = json.get("message").and_then(|m| m.as_str()) {
        let code = json.get("code").and_then(|c| c.as_str());
        return match code {
            Some(code) => format!("{message} ({code})"),
            None => message.to_string(),
        };
    }
    if let Some(errors) = json.get("errors").and_then(|e| e.as_object()) {
        let parts: Vec<String> = errors
            .iter()
            .map(|(field, problems)| match problems.as_array() {
                Some(list) => format!(
                    "{field}: {}",
                    list.iter()
                        .filter_map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => format!("{field}: {problems}"),
            })
            .collect();
        return parts.join("; ");
    }
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        return error.to_string();
    }
    excerpt(&text)
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_come_from_every_error_body_shape() {
        assert_eq!(
            error_message(br#"{"error": true, "message": "Task is completed"}"#),
            "Task is completed"
        );
        assert_eq!(
            error_message(br#"{"message": "Too many", "code": "RATE_LIMIT_EXCEEDED"}"#),
            "Too many (RATE_LIMIT_EXCEEDED)"
        );
        assert_eq!(
            error_message(
                br#"{"error": true, "errors": {"name": ["The name field is required."]}}"#
            ),
            "name: The name field is required."
        );
        assert_eq!(
            error_message(br#"{"error": "Unauthenticated."}"#),
            "Unauthenticated."
        );
        assert_eq!(
            error_message(b"<html>Bad Gateway</html>"),
            "<html>Bad Gateway</html>"
        );
        assert_eq!(error_message(b""), "(empty body)");
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let soon = SystemTime::now() + Duration::from_secs(30);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(soon)).unwrap();
        assert!(
            parsed <= Duration::from_secs(30) && parsed >= Duration::from_secs(28),
            "{parsed:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("999999999"), Some(RETRY_AFTER_CAP));
    }

    #[test]
    fn transient_and_permanent_statuses_are_told_apart() {
        let status = |status| ApiError::Status {
            endpoint: Endpoint::Upload,
            status,
            message: String::new(),
            retry_after: None,
        };
        for code in [408, 425, 429, 500, 502, 503, 504] {
            assert!(status(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert!(!status(code).is_retryable(), "{code}");
        }
        assert!(status(401).is_unauthorized());
    }
}
