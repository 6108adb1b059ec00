//! The fake's OAuth token book, behind `POST /oauth/token` (answered in `routes`) with the client
//! credentials grant, as Laravel Passport answers it. Receives the grant's form fields; emits a
//! fresh access token or an OAuth refusal. Owns the one client it knows, the tokens it issued
//! with their expiry, and their revocation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{json, Value};

use crate::fake::mint::mix;

/// Where the endpoint listens, beside (not under) the API's `/api` prefix.
pub const TOKEN_PATH: &str = "/oauth/token";
/// `expires_in` of Tallyfy's tokens: one week.
const DEFAULT_LIFETIME_SECS: u64 = 604_800;

pub(crate) struct OAuth {
    /// (client id, client secret); without one every request is refused.
    client: Option<(String, String)>,
    lifetime_secs: u64,
    /// Issued token → when it expires.
    issued: BTreeMap<String, Instant>,
    seed: u64,
    count: u64,
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: &'static str,
}

impl OAuth {
    pub fn new(seed: u64) -> OAuth {
        OAuth {
            client: None,
            lifetime_secs: DEFAULT_LIFETIME_SECS,
            issued: BTreeMap::new(),
            seed,
            count: 0,
        }
    }

    pub fn set_client(&mut self, client_id: &str, client_secret: &str) {
        self.client = Some((client_id.to_string(), client_secret.to_string()));
    }

    pub fn set_lifetime(&mut self, seconds: u64) {
        self.lifetime_secs = seconds;
    }

    pub fn revoke_all(&mut self) {
        self.issued.clear();
    }

    /// Whether `token` was issued here, is unexpired and not revoked.
    pub fn accepts(&self, token: &str) -> bool {
        self.issued
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    /// Checks the grant in Passport's order (grant type, client id, client, scope) and issues
    /// a token.
    pub fn issue(&mut self, form: &BTreeMap<String, String>) -> Result<Value, Refusal> {
        let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
        if field("grant_type") != "client_credentials" {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "unsupported_grant_type",
                description:
                    "The authorization grant type is not supported by the authorization server.",
            });
        }
        if field("client_id").is_empty() {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: "The request is missing a required parameter, includes an invalid parameter value, includes a parameter more than once, or is otherwise malformed.",
            });
        }
        let known = self.client.as_ref().is_some_and(|(id, secret)| {
            field("client_id") == id.as_str() && field("client_secret") == secret.as_str()
        });
        if !known {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                error: "invalid_client",
                description: "Client authentication failed",
            });
        }
        if field("scope") != "*" {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_scope",
                description: "The requested scope is invalid, unknown, or malformed",
            });
        }
        self.count += 1;
        let token = format!(
            "{:016x}{:016x}{:016x}",
            mix(self.seed ^ self.count),
            mix(self.count),
            mix(self.seed.rotate_left(29) ^ self.count)
        );
        let expires = Instant::now() + Duration::from_secs(self.lifetime_secs);
        self.issued.insert(token.clone(), expires);
        Ok(json!({
            "token_type": "Bearer",
            "expires_in": self.lifetime_secs,
            "access_token": token,
        }))
    }
}
