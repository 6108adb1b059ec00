//! Secrets: the API token and the OAuth client secret, which never show in logs or messages,
//! and where each is read from (an environment variable, a file named in the config, a systemd
//! credential), in that order.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use super::{read_limited, ConfigError};
use crate::unit;

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

    /// The secret and where it came from.
    fn resolve(
        &self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<(Secret, String), ConfigError> {
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
        let file = file.map(|file| Place {
            origin: format!("file {} ({})", file.display(), self.key),
            path: file.to_path_buf(),
            from_unit: false,
        });
        let credential = self.credential(env);
        let read = |place: &Place| {
            read_limited(&place.path, MAX_SECRET_BYTES).map_err(|error| {
                let hint = if place.from_unit {
                    format!(
                        "; the service reads it as root: run this command with sudo, or set {}",
                        self.variable
                    )
                } else {
                    String::new()
                };
                fail(&place.origin, format!("cannot read it: {error}{hint}"))
            })
        };
        // A variable that is set but empty is an error rather than a fall-through:
        // silently picking another secret would hide the operator's mistake.
        if let Some(value) = env(self.variable) {
            let origin = format!("environment variable {}", self.variable);
            let text = value
                .into_string()
                .map_err(|_| fail(&origin, "not valid UTF-8".to_string()))?;
            let secret = parse(&origin, &text)?;
            if let Some(hidden) = file.or(credential) {
                self.warn_if_hidden(&secret, &hidden);
            }
            return Ok((secret, origin));
        }
        let place = match (file, credential) {
            (Some(file), credential) => match read_limited(&file.path, MAX_SECRET_BYTES) {
                Ok(text) => return Ok((parse(&file.origin, &text)?, file.origin)),
                Err(error) => match credential {
                    Some(credential) if credential.path.is_file() => {
                        tracing::warn!(
                            file = %file.path.display(),
                            credential = %credential.path.display(),
                            %error,
                            "cannot read the {} {}; using the {} instead",
                            self.what,
                            file.origin,
                            credential.origin,
                        );
                        credential
                    }
                    _ => return Err(fail(&file.origin, format!("cannot read it: {error}"))),
                },
            },
            (None, Some(credential)) => credential,
            (None, None) => return Err(fail(&self.places(), "none is set".to_string())),
        };
        let text = read(&place)?;
        Ok((parse(&place.origin, &text)?, place.origin))
    }

    /// `resolve`, and the secret found known to `text::redact` from then on.
    pub(super) fn resolve_kept(
        &self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<(Secret, String), ConfigError> {
        let (secret, source) = self.resolve(file, env)?;
        crate::text::keep_secret(secret.expose());
        Ok((secret, source))
    }

    /// The systemd credential: in `$CREDENTIALS_DIRECTORY` under the service, else (a command
    /// run by hand) the file the installed unit loads it from.
    fn credential(&self, env: &dyn Fn(&str) -> Option<OsString>) -> Option<Place> {
        if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty()) {
            let path = Path::new(&dir).join(self.credential);
            return Some(Place {
                origin: format!("systemd credential {}", path.display()),
                path,
                from_unit: false,
            });
        }
        let loaded = unit::load_credential(self.credential, env)?;
        Some(Place {
            origin: format!(
                "file {} (LoadCredential={} in {})",
                loaded.source.display(),
                self.credential,
                loaded.declared_in.display()
            ),
            path: loaded.source,
            from_unit: true,
        })
    }

    /// One WARN when the variable hides a file or credential that holds another secret, or
    /// that the config or systemd names but cannot be read: a stale variable in a shell or a
    /// unit is otherwise invisible. The unit's file unreadable to a user without root is no
    /// sign of one.
    fn warn_if_hidden(&self, secret: &Secret, hidden: &Place) {
        let what = match read_limited(&hidden.path, MAX_SECRET_BYTES) {
            Ok(text) => match Secret::parse(&text) {
                Ok(other) if other == *secret => return,
                _ => format!("holds another {}", self.word),
            },
            Err(_) if hidden.from_unit => return,
            Err(error) => format!("cannot be read ({error}) to tell whether it holds another"),
        };
        tracing::warn!(
            variable = self.variable,
            file = %hidden.path.display(),
            "{} from environment variable {} is used; the {} {what}: unset {} to use that one",
            self.what,
            self.variable,
            hidden.origin,
            self.variable,
        );
    }
}

/// A file a secret may be read from, and how to name it.
struct Place {
    origin: String,
    path: PathBuf,
    /// Named by the installed unit's `LoadCredential=`, read outside the service.
    from_unit: bool,
}
