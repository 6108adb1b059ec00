//! Secrets: the API token and the OAuth client secret, which never show in logs or messages,
//! and where each is read from (an environment variable, a file named in the config, a systemd
//! credential), in that order.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use super::{read_limited, ConfigError};

// Like MAX_CONFIG_BYTES: keeps a mistyped path (say /dev/zero) from eating all memory.
const MAX_SECRET_BYTES: u64 = 64 << 10;

/// A token or a client secret. Deliberately has no Display and a redacting Debug so that it
/// cannot end up in logs by accident; use `expose()` where it must be sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Trims surrounding whitespace; refuses an empty text or one with whitespace or control
    /// characters inside.
    pub fn parse(text: &str) -> Result<Secret, Malformed> {
        let secret = text.trim();
        if secret.is_empty() {
            return Err(Malformed::Empty);
        }
        // Anything left inside would make an invalid Authorization header or form field later,
        // with a far less helpful error.
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Malformed::Spaced);
        }
        Ok(Secret(secret.to_string()))
    }
}

/// Why a text is not a usable secret. Never quotes the text: it is the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("empty")]
    Empty,
    #[error("contains whitespace or control characters")]
    Spaced,
}

/// Where one secret may come from, in this order: an environment variable, a file named in
/// the config, a systemd credential (`LoadCredential=`).
pub(super) struct SecretSource {
    pub(super) what: &'static str,
    /// An unknown config key holding this word is taken for an attempt to write the secret there.
    pub(super) word: &'static str,
    variable: &'static str,
    key: &'static str,
    credential: &'static str,
}

pub(super) const TOKEN: SecretSource = SecretSource {
    what: "API token",
    word: "token",
    variable: "TALLYFY_ACCESS_TOKEN",
    key: "api.token_file",
    credential: "tallyfy-token",
};

pub(super) const CLIENT_SECRET: SecretSource = SecretSource {
    what: "client secret",
    word: "secret",
    variable: "TALLYFY_CLIENT_SECRET",
    key: "api.client_secret_file",
    credential: "tallyfy-client-secret",
};

impl SecretSource {
    pub(super) fn places(&self) -> String {
        format!(
            "{}, {} or the systemd credential {}",
            self.variable, self.key, self.credential
        )
    }

    fn resolve(
        &self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Secret, ConfigError> {
        let fail = |origin: &str, problem: String| ConfigError::Secret {
            what: self.what,
            origin: origin.to_string(),
            problem,
        };
        let parse = |origin: &str, text: &str| {
            Secret::parse(text).map_err(|problem| {
                let problem = match problem {
                    Malformed::Empty => problem.to_string(),
                    Malformed::Spaced => {
                        format!("{problem} (it must hold the {} alone)", self.what)
                    }
                };
                fail(origin, problem)
            })
        };
        // A variable that is set but empty is an error rather than a fall-through:
        // silently picking another secret would hide the operator's mistake.
        if let Some(value) = env(self.variable) {
            let origin = format!("environment variable {}", self.variable);
            let text = value
                .into_string()
                .map_err(|_| fail(&origin, "not valid UTF-8".to_string()))?;
            return parse(&origin, &text);
        }
        let credentials = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty());
        let (origin, file) = match (file, credentials) {
            (Some(file), _) => (
                format!("file {} ({})", file.display(), self.key),
                file.to_path_buf(),
            ),
            (None, Some(dir)) => {
                let file = Path::new(&dir).join(self.credential);
                (format!("systemd credential {}", file.display()), file)
            }
            (None, None) => return Err(fail(&self.places(), "none is set".to_string())),
        };
        let text = read_limited(&file, MAX_SECRET_BYTES)
            .map_err(|error| fail(&origin, format!("cannot read it: {error}")))?;
        parse(&origin, &text)
    }

    /// `resolve`, and the secret found known to `text::redact` from then on.
    pub(super) fn resolve_kept(
        &self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Secret, ConfigError> {
        let secret = self.resolve(file, env)?;
        crate::text::keep_secret(secret.expose());
        Ok(secret)
    }
}
