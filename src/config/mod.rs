//! Configuration: receives the YAML config file (plus the environment, for
//! defaults and the secrets) and emits a validated, typed `Config`, or one
//! error listing every problem by key path and value. It owns the config
//! schema, its defaults and where the API token or the OAuth client secret
//! comes from (`Credentials`); serde_yaml stays here.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use reqwest::Url;
use serde_yaml::{Mapping, Value};

use crate::logging::LogFormat;

const DEFAULT_BASE_URL: &str = "https://go.tallyfy.com/api";
const DEFAULT_STATE_DIR: &str = "/var/lib/tallyfy-sync";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CONCURRENCY: usize = 4;
const MAX_CONCURRENCY: u64 = 64;
const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(600);
const DEFAULT_ATTACH_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_FAILED_RETRY_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;
const DEFAULT_TOKEN_URL: &str = "https://go.tallyfy.com/oauth/token";
// Limits keep a mistyped path (say /dev/zero) from eating all memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
const MAX_SECRET_BYTES: u64 = 64 << 10;
// Every public root in one bundle is well under 1 MiB.
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug)]
pub struct Config {
    /// The config file as given on the command line.
    pub file: PathBuf,
    pub api: ApiConfig,
    pub state_dir: PathBuf,
    /// Quiet time before a new or changed file is taken.
    pub settle: Duration,
    /// How often every folder is compared with the store even when nothing was seen to change.
    pub rescan_interval: Duration,
    /// Longest a field waits for more of its uploads in flight or queued before it attaches
    /// what it has (`attach_delay`).
    pub attach_delay: Duration,
    /// How often a target with files the API refused for good is checked (one GET) and, when
    /// it passes, those files tried again (`failed_retry_interval`).
    pub failed_retry_interval: Duration,
    /// Where `/metrics` and `/healthz` are served (`metrics.listen`); off when `None`.
    pub metrics_listen: Option<SocketAddr>,
    pub folders: Vec<Folder>,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

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

/// How a folder learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, unless the folder is on a network or FUSE filesystem, which is polled.
    Auto,
    Inotify,
    /// Scanned every `interval`: for shares where inotify sees nothing.
    Poll {
        interval: Duration,
    },
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

#[derive(Clone, Debug)]
pub struct Folder {
    /// Canonical and absolute.
    pub path: PathBuf,
    pub target: Target,
    pub recursive: bool,
    pub delete_remote: bool,
    /// What happens to a synced file someone removed from the field in Tallyfy.
    pub remote_removed: RemoteRemoved,
    /// The patterns as written, for messages.
    pub ignore: Vec<String>,
    /// `ignore` compiled; match it against the file name, not the whole path.
    pub ignore_set: GlobSet,
    pub watch: WatchMode,
    /// Deletes held when one scan would delete more than this percentage of the folder's
    /// synced files (folders with fewer than `MAX_DELETE_MIN_FILES` synced files are exempt).
    pub max_delete_percent: u8,
}

impl Folder {
    /// Whether `path` lies in the directory a launch folder moves its launched files to, when
    /// that is inside the folder: those files are done and never taken again.
    pub fn excludes(&self, path: &Path) -> bool {
        match &self.target {
            Target::Launch(Launch {
                after: After::Move { to },
                ..
            }) => to.starts_with(&self.path) && path.starts_with(to),
            _ => false,
        }
    }
}

/// `remote_removed`: what to do when a synced file's asset leaves the field in Tallyfy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RemoteRemoved {
    /// Warn, show it in `status`, and upload it again only when the local file changes.
    #[default]
    Leave,
    /// Put it back (the same asset if it still exists, else upload it again): the folder
    /// stays the source of truth.
    Restore,
}

impl std::fmt::Display for RemoteRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteRemoved::Leave => "leave",
            RemoteRemoved::Restore => "restore",
        })
    }
}

/// Below this many synced files a folder's deletes are never held: a share of a handful of
/// files says little.
pub const MAX_DELETE_MIN_FILES: usize = 10;

/// The remote file field a folder feeds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A form field of a task in a process run.
    Task {
        run_id: String,
        task_id: String,
        capture_id: String,
        step_id: Option<String>,
        checklist_id: Option<String>,
    },
    /// A form field of a one-off task: a task that belongs to no process (`task` without
    /// `run_id`). It differs from a task in a process only in where the task is read and written
    /// and in what an upload names as its subject.
    OneOff { task_id: String, capture_id: String },
    /// A kick-off (prerun) field of a template.
    Kickoff {
        checklist_id: String,
        field_id: String,
    },
    /// Every new file starts a process of a template, with the file in a kick-off field.
    Launch(Launch),
    /// Each subfolder stands for one running process of a template; its files go to the
    /// file field of that process's task.
    Route(Route),
}

/// `folders[].route`: a subfolder per running process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The template whose active processes the subfolders stand for.
    pub checklist_id: String,
    /// The file field (of one of the template's steps) files go to, in every process.
    pub capture_id: String,
    pub by: RouteBy,
    /// Keep a subfolder for every active process (the daemon then writes the folder).
    pub create_folders: bool,
    /// How often the active processes are read when no file asks for one (`refresh_interval`).
    pub refresh_interval: Duration,
}

/// `route.refresh_interval` by default: a new process needs no file to be found sooner than
/// this, unless its subfolder is to be created, which people wait for.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(180);
pub const ROUTE_REFRESH_CREATING: Duration = Duration::from_secs(30);
/// The shortest `route.refresh_interval`: the list costs a request per page each time.
pub const ROUTE_REFRESH_MIN: Duration = Duration::from_secs(5);

/// What a route folder's subfolder names (`route.by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteBy {
    /// The process name (the default).
    Name,
    /// The process id.
    Id,
}

/// `folders[].launch`: one process per file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Launch {
    /// The template (blueprint) launched.
    pub checklist_id: String,
    /// The kick-off file field that gets the file.
    pub field_id: String,
    /// The process name (`name`, default `{stem}`).
    pub name: Template,
    /// Other kick-off fields by id, filled from the file's path (`fields`), in config order.
    pub fields: Vec<(String, Template)>,
    pub after: After,
    pub dedupe: Dedupe,
}

/// What happens to a file once its process is started and recorded (`launch.after`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum After {
    Keep,
    Delete,
    /// Moved into `to` (`launch.move_to`, default FOLDER/processed), keeping its path
    /// relative to the folder.
    Move {
        to: PathBuf,
    },
}

/// Whether the same content dropped again starts another process (`dedupe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dedupe {
    /// Content already launched from this folder launches nothing (the default).
    Content,
    None,
}

/// A value with placeholders (`{stem}`), parsed once: `{{` and `}}` stand for braces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// What a placeholder stands for; the launch stage supplies the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// The file name with its extension.
    Filename,
    /// The file name without its last extension.
    Stem,
    /// The last extension, without the dot (empty when there is none).
    Ext,
    /// The name of the directory the file is in (the folder's own name at its top level).
    Parent,
    /// The path relative to the folder.
    Relpath,
    /// Today's local date, YYYY-MM-DD.
    Date,
    /// The file's modification time, local, YYYY-MM-DD HH:MM.
    Mtime,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 7] = [
        ("filename", Placeholder::Filename),
        ("stem", Placeholder::Stem),
        ("ext", Placeholder::Ext),
        ("parent", Placeholder::Parent),
        ("relpath", Placeholder::Relpath),
        ("date", Placeholder::Date),
        ("mtime", Placeholder::Mtime),
    ];
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                literal.push_str(&tail[..1]);
                rest = after;
                continue;
            }
            if tail.starts_with('}') {
                return Err("a } without its { (write }} for a brace)".into());
            }
            let Some(end) = tail.find('}') else {
                return Err("a { without its } (write {{ for a brace)".into());
            };
            let name = &tail[1..end];
            let Some((_, placeholder)) = Placeholder::ALL.iter().find(|(known, _)| *known == name)
            else {
                let known: Vec<String> = Placeholder::ALL
                    .iter()
                    .map(|(known, _)| format!("{{{known}}}"))
                    .collect();
                return Err(format!(
                    "unknown placeholder {{{name}}} (expected one of {})",
                    known.join(", ")
                ));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Value(*placeholder));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The text with each placeholder replaced by `value` of it.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Value(placeholder) => value(*placeholder),
            })
            .collect()
    }

    /// The bytes the template adds whatever the file: a lower bound of every rendering.
    pub fn literal_len(&self) -> usize {
        self.render(|_| String::new()).len()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Value(placeholder) => {
                    let name = Placeholder::ALL
                        .iter()
                        .find(|(_, known)| known == placeholder)
                        .map_or("", |(name, _)| name);
                    write!(f, "{{{name}}}")?
                }
            }
        }
        Ok(())
    }
}

impl Target {
    /// Stable short key naming the remote field, e.g. "task:RUN/TASK/CAPTURE" or "kickoff:CHECKLIST/FIELD".
    /// The task target a key "task:RUN/TASK/CAPTURE" names: where a route folder's record says
    /// its file went.
    pub fn of_task_key(key: &str) -> Option<Target> {
        let rest = key.strip_prefix("task:")?;
        let mut parts = rest.splitn(3, '/');
        Some(Target::Task {
            run_id: parts.next()?.to_string(),
            task_id: parts.next()?.to_string(),
            capture_id: parts.next()?.to_string(),
            step_id: None,
            checklist_id: None,
        })
    }

    /// The process a task target's task belongs to: `None` for a one-off task (and for
    /// targets that are not one task).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Target::Task { run_id, .. } => Some(run_id),
            _ => None,
        }
    }

    pub fn key(&self) -> String {
        match self {
            Target::Task {
                run_id,
                task_id,
                capture_id,
                ..
            } => format!("task:{run_id}/{task_id}/{capture_id}"),
            Target::OneOff {
                task_id,
                capture_id,
            } => format!("oneoff:{task_id}/{capture_id}"),
            Target::Kickoff {
                checklist_id,
                field_id,
            } => format!("kickoff:{checklist_id}/{field_id}"),
            // Folders launching the same template with different names or fields are verified
            // and served apart, so the rest of the launch settings is part of the key.
            Target::Launch(launch) => format!(
                "launch:{}/{}/{}",
                launch.checklist_id,
                launch.field_id,
                &blake3::hash(format!("{launch:?}").as_bytes()).to_hex()[..12]
            ),
            Target::Route(route) => format!(
                "route:{}/{}/{}",
                route.checklist_id,
                route.capture_id,
                match route.by {
                    RouteBy::Name => "name",
                    RouteBy::Id => "id",
                }
            ),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Task {
                run_id,
                task_id,
                capture_id,
                ..
            } => write!(f, "task {task_id} in run {run_id}, field {capture_id}"),
            Target::OneOff {
                task_id,
                capture_id,
            } => write!(f, "one-off task {task_id}, field {capture_id}"),
            Target::Kickoff {
                checklist_id,
                field_id,
            } => write!(f, "kick-off field {field_id} of template {checklist_id}"),
            Target::Launch(launch) => write!(
                f,
                "a process of template {} per file, in kick-off field {}",
                launch.checklist_id, launch.field_id
            ),
            Target::Route(route) => write!(
                f,
                "field {} of the active processes of template {}, a subfolder per process {}",
                route.capture_id,
                route.checklist_id,
                match route.by {
                    RouteBy::Name => "name",
                    RouteBy::Id => "id",
                }
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", .path.display(), .error)]
    Read { path: PathBuf, error: io::Error },
    #[error("config file {} has {}", .path.display(), list_problems(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// `what` is "API token" or "client secret"; `origin` names the variable or file; the
    /// secret itself is never included.
    #[error("{what} from {origin}: {problem}")]
    Secret {
        what: &'static str,
        origin: String,
        problem: String,
    },
}

fn list_problems(problems: &[String]) -> String {
    let count = match problems.len() {
        1 => "1 problem".to_string(),
        n => format!("{n} problems"),
    };
    problems
        .iter()
        .fold(count + ":", |text, problem| text + "\n  - " + problem)
}

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

impl Credentials {
    /// With `auth: token`: TALLYFY_ACCESS_TOKEN, else api.token_file, else the systemd
    /// credential tallyfy-token. With `auth: client_credentials` the client secret the same
    /// way: TALLYFY_CLIENT_SECRET, else api.client_secret_file, else tallyfy-client-secret.
    /// Errors name the source (variable or file path) but NEVER contain the secret.
    pub fn resolve(
        api: &ApiConfig,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Credentials, ConfigError> {
        match &api.auth {
            Auth::Token { token_file } => TOKEN
                .resolve_kept(token_file.as_deref(), env)
                .map(Credentials::Token),
            Auth::ClientCredentials {
                token_url,
                client_id,
                client_secret_file,
            } => Ok(Credentials::ClientCredentials {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: CLIENT_SECRET.resolve_kept(client_secret_file.as_deref(), env)?,
            }),
        }
    }
}

/// Where one secret may come from, in this order: an environment variable, a file named in
/// the config, a systemd credential (`LoadCredential=`).
struct SecretSource {
    what: &'static str,
    /// An unknown config key holding this word is taken for an attempt to write the secret there.
    word: &'static str,
    variable: &'static str,
    key: &'static str,
    credential: &'static str,
}

const TOKEN: SecretSource = SecretSource {
    what: "API token",
    word: "token",
    variable: "TALLYFY_ACCESS_TOKEN",
    key: "api.token_file",
    credential: "tallyfy-token",
};

const CLIENT_SECRET: SecretSource = SecretSource {
    what: "client secret",
    word: "secret",
    variable: "TALLYFY_CLIENT_SECRET",
    key: "api.client_secret_file",
    credential: "tallyfy-client-secret",
};

impl SecretSource {
    fn places(&self) -> String {
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
    fn resolve_kept(
        &self,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Secret, ConfigError> {
        let secret = self.resolve(file, env)?;
        crate::text::keep_secret(secret.expose());
        Ok(secret)
    }
}

fn read_limited(path: &Path, limit: u64) -> io::Result<String> {
    String::from_utf8(read_bytes_limited(path, limit)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

fn read_bytes_limited(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

impl Config {
    /// Reads the file, then `from_yaml` with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_yaml(&text, path, &|name| std::env::var_os(name))
    }

    /// `file` anchors relative paths and names the file in messages; `env` is
    /// consulted only for STATE_DIRECTORY.
    pub fn from_yaml(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let problems = Problems::default();
        let label = file
            .file_name()
            .unwrap_or(file.as_os_str())
            .to_string_lossy();
        let config = match serde_yaml::from_str::<Value>(text) {
            Err(error) => {
                problems.add(syntax_problem(&label, &error));
                None
            }
            Ok(Value::Null) => {
                problems.add(format!(
                    "{label}: is empty (it needs at least api.org_id and folders)"
                ));
                None
            }
            Ok(Value::Mapping(map)) => walk(Section::new(String::new(), map, &problems), file, env),
            Ok(other) => {
                problems.add(format!(
                    "{label}: expected a mapping of settings, found {}",
                    kind(&other)
                ));
                None
            }
        };
        let mut problems = problems.0.into_inner();
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                if problems.is_empty() {
                    problems.push(format!("{label}: incomplete configuration"));
                }
                Err(ConfigError::Invalid {
                    path: file.to_path_buf(),
                    problems,
                })
            }
        }
    }
}

fn syntax_problem(label: &str, error: &serde_yaml::Error) -> String {
    let message = error.to_string();
    match error.location() {
        Some(at) => {
            // serde_yaml appends the location to its message; it is moved to the front.
            let suffix = format!(" at line {} column {}", at.line(), at.column());
            let message = message.replacen(&suffix, "", 1);
            format!(
                "{label} line {} column {}: {message}",
                at.line(),
                at.column()
            )
        }
        None => format!("{label}: {message}"),
    }
}

fn walk(
    mut root: Section<'_>,
    file: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<Config> {
    let base = config_dir(file);
    let api = match root.get("api", mapping) {
        Ok(map) => api_config(root.child("api", map.unwrap_or_default()), &base),
        Err(()) => None,
    };
    let state_dir = root
        .opt("state_dir", path_in(&base))
        .unwrap_or_else(|| default_state_dir(env, &base));
    let settle = root.opt("settle", duration).unwrap_or(DEFAULT_SETTLE);
    let rescan_interval = root
        .opt("rescan_interval", positive_duration)
        .unwrap_or(DEFAULT_RESCAN_INTERVAL);
    let attach_delay = root
        .opt("attach_delay", duration)
        .unwrap_or(DEFAULT_ATTACH_DELAY);
    let failed_retry_interval = root
        .opt("failed_retry_interval", positive_duration)
        .unwrap_or(DEFAULT_FAILED_RETRY_INTERVAL);
    let max_delete = root
        .opt("max_delete", percentage)
        .unwrap_or(DEFAULT_MAX_DELETE_PERCENT);
    let metrics_listen = match root.get("metrics", mapping) {
        Ok(Some(map)) => {
            let mut s = root.child("metrics", map);
            let listen = s.req("listen", listen_address);
            s.finish();
            listen
        }
        _ => None,
    };
    let log = match root.get("log", mapping) {
        Ok(map) => log_config(root.child("log", map.unwrap_or_default())),
        Err(()) => None,
    };
    let folders = root.req("folders", |value| match value {
        Value::Sequence(items) if items.is_empty() => invalid("must list at least one folder"),
        _ => list(value),
    });
    let mut claimed = Vec::new();
    let folders: Option<Vec<Folder>> = folders.and_then(|items| {
        // Collected into a Vec first so that every folder is checked, not just
        // those before the first bad one.
        let parsed: Vec<Option<Folder>> = items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                let path = format!("folders[{index}]");
                let map = root.problems.check(&path, item, mapping)?;
                folder(
                    Section::new(path, map, root.problems),
                    &base,
                    &mut claimed,
                    max_delete,
                )
            })
            .collect();
        parsed.into_iter().collect()
    });
    state_apart(&state_dir, &claimed, root.problems);
    root.finish();
    Some(Config {
        file: file.to_path_buf(),
        api: api?,
        state_dir,
        settle,
        rescan_interval,
        attach_delay,
        failed_retry_interval,
        metrics_listen,
        folders: folders?,
        log: log?,
    })
}

/// A folder that is, holds or lies inside the state directory would sync the store's own
/// files, which change all the time, and could be made to overwrite them.
fn state_apart(state_dir: &Path, claimed: &Claimed, problems: &Problems) {
    let state = resolved(state_dir);
    for (key, written, folder) in claimed {
        let relation = if *folder == state {
            "is"
        } else if state.starts_with(folder) {
            "contains"
        } else if folder.starts_with(&state) {
            "lies inside"
        } else {
            continue;
        };
        problems.add(format!(
            "{key} {written:?}: {relation} the state directory {} (state_dir), whose files the daemon keeps changing; keep the two apart",
            state.display()
        ));
    }
}

/// Relative paths in the config mean "next to the config file": the daemon's
/// working directory says nothing about what the operator meant.
fn config_dir(file: &Path) -> PathBuf {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn default_state_dir(env: &dyn Fn(&str) -> Option<OsString>, base: &Path) -> PathBuf {
    // systemd passes one entry per StateDirectory=, separated by colons.
    env("STATE_DIRECTORY")
        .and_then(|dirs| std::env::split_paths(&dirs).next())
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), |dir| base.join(dir))
}

fn api_config(mut s: Section<'_>, base: &Path) -> Option<ApiConfig> {
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

fn log_config(mut s: Section<'_>) -> Option<LogConfig> {
    let format = s.opt("format", log_format).unwrap_or_default();
    s.finish();
    Some(LogConfig { format })
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

/// Path, written form and canonical form of every folder seen so far, to catch overlaps.
type Claimed = Vec<(String, String, PathBuf)>;

fn folder(
    mut s: Section<'_>,
    base: &Path,
    claimed: &mut Claimed,
    max_delete: u8,
) -> Option<Folder> {
    let path = s.req("path", |value| directory(value, base));
    if let Some((written, canonical)) = &path {
        let key = s.at("path");
        // Nested folders would upload the inner folder's files twice.
        for (other_key, other_written, other) in claimed.iter() {
            if canonical.starts_with(other) || other.starts_with(canonical) {
                s.problems.add(format!(
                    "{key} {written:?}: overlaps {other_key} {other_written:?}"
                ));
            }
        }
        claimed.push((key, written.clone(), canonical.clone()));
    }
    let task = s
        .get("task", mapping)
        .map(|map| map.map(|map| task_target(s.child("task", map))));
    let kickoff = s
        .get("kickoff", mapping)
        .map(|map| map.map(|map| kickoff_target(s.child("kickoff", map))));
    let folder_path = path.as_ref().map(|(_, canonical)| canonical.as_path());
    let launch = s
        .get("launch", mapping)
        .map(|map| map.map(|map| launch_target(s.child("launch", map), base, folder_path)));
    let route = s
        .get("route", mapping)
        .map(|map| map.map(|map| route_target(s.child("route", map))));
    let dedupe = s.get("dedupe", dedupe);
    let given: Vec<&str> = [
        ("task", matches!(task, Ok(Some(_)))),
        ("kickoff", matches!(kickoff, Ok(Some(_)))),
        ("launch", matches!(launch, Ok(Some(_)))),
        ("route", matches!(route, Ok(Some(_)))),
    ]
    .into_iter()
    .filter(|(_, found)| *found)
    .map(|(name, _)| name)
    .collect();
    let target = match (task, kickoff, launch, route) {
        _ if given.len() > 1 => {
            let found = match given.len() {
                2 => "both".to_string(),
                _ => given.join(", "),
            };
            let problem = format!(
                "{}: needs exactly one of task, kickoff, launch or route (found {found})",
                s.path
            );
            s.problems.add(problem);
            None
        }
        (Ok(Some(target)), _, _, _) | (_, Ok(Some(target)), _, _) | (_, _, _, Ok(Some(target))) => {
            target
        }
        (_, _, Ok(Some(launch)), _) => launch.map(|mut launch| {
            match dedupe {
                Ok(Some(folder_level)) if launch.dedupe_given => {
                    let problem = format!(
                        "{}: dedupe is set both here and in launch; keep one",
                        s.at("dedupe")
                    );
                    s.problems.add(problem);
                    launch.launch.dedupe = folder_level;
                }
                Ok(Some(folder_level)) => launch.launch.dedupe = folder_level,
                _ => {}
            }
            Target::Launch(launch.launch)
        }),
        (Ok(None), Ok(None), Ok(None), Ok(None)) => {
            let problem = format!(
                "{}: needs exactly one of task, kickoff, launch or route (found neither)",
                s.path
            );
            s.problems.add(problem);
            None
        }
        _ => None,
    };
    if matches!(dedupe, Ok(Some(_))) && !matches!(target, Some(Target::Launch(_)) | None) {
        let problem = format!("{}: only applies to launch folders", s.at("dedupe"));
        s.problems.add(problem);
    }
    let routed = matches!(target, Some(Target::Route(_)));
    let recursive = s.opt("recursive", boolean);
    if routed && recursive == Some(false) {
        let problem = format!(
            "{}: a route folder always watches its subfolders (each stands for a process); remove recursive",
            s.at("recursive")
        );
        s.problems.add(problem);
    }
    let recursive = routed || recursive.unwrap_or(false);
    let delete_remote = s.opt("delete_remote", boolean).unwrap_or(true);
    let remote_removed = s
        .opt("remote_removed", |value| {
            one_of(
                value,
                &[
                    ("leave", RemoteRemoved::Leave),
                    ("restore", RemoteRemoved::Restore),
                ],
            )
        })
        .unwrap_or_default();
    let max_delete_percent = s.opt("max_delete", percentage).unwrap_or(max_delete);
    let watch = watch_mode(&mut s);
    let ignore_key = s.at("ignore");
    let globs: Vec<Glob> = s
        .opt("ignore", list)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(index, value)| {
            s.problems
                .check(&format!("{ignore_key}[{index}]"), value, glob)
        })
        .collect();
    let mut set = GlobSetBuilder::new();
    for glob in &globs {
        set.add(glob.clone());
    }
    let ignore_set = set
        .build()
        .map_err(|error| {
            s.problems
                .add(format!("{ignore_key}: cannot compile: {error}"))
        })
        .ok();
    s.finish();
    Some(Folder {
        path: path?.1,
        target: target?,
        recursive,
        delete_remote,
        remote_removed,
        ignore: globs.iter().map(|glob| glob.glob().to_string()).collect(),
        ignore_set: ignore_set?,
        watch: watch?,
        max_delete_percent,
    })
}

/// `watch: auto | inotify | poll` and `poll: 30s` (which implies `watch: poll`).
fn watch_mode(s: &mut Section<'_>) -> Option<WatchMode> {
    let watch = s.get("watch", |value| {
        one_of(
            value,
            &[("auto", "auto"), ("inotify", "inotify"), ("poll", "poll")],
        )
    });
    let poll = s.get("poll", positive_duration);
    match (watch, poll) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(None | Some("auto")), Ok(None)) => Some(WatchMode::Auto),
        (Ok(Some("inotify")), Ok(None)) => Some(WatchMode::Inotify),
        (Ok(Some("inotify")), Ok(Some(_))) => {
            let problem = format!("{}: watch: inotify cannot be combined with poll", s.path);
            s.problems.add(problem);
            None
        }
        (Ok(_), Ok(interval)) => Some(WatchMode::Poll {
            interval: interval.unwrap_or(DEFAULT_POLL_INTERVAL),
        }),
    }
}

/// A task in a process (`run_id` given) or a one-off task (no `run_id`, or `one_off: true`).
fn task_target(mut s: Section<'_>) -> Option<Target> {
    let run_id = s.get("run_id", id);
    let task_id = s.req("task_id", id);
    let capture_id = s.req("capture_id", id);
    let step_id = s.opt("step_id", id);
    let checklist_id = s.opt("checklist_id", id);
    let one_off = s.get("one_off", boolean);
    let run_id = match (run_id, one_off) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(Some(_)), Ok(Some(true))) => {
            let problem = format!(
                "{}: a one-off task belongs to no process, yet run_id is set; remove one_off for a task in a process, or run_id for a one-off task",
                s.at("one_off")
            );
            s.problems.add(problem);
            None
        }
        (Ok(None), Ok(Some(false))) => {
            let problem = format!(
                "{}: required (one_off is false: the task belongs to a process)",
                s.at("run_id")
            );
            s.problems.add(problem);
            None
        }
        (Ok(run_id), Ok(_)) => Some(run_id),
    };
    // A one-off upload carrying either is refused: the task has no step and no template.
    if let Some(None) = run_id {
        let given = [
            ("step_id", "step", step_id.is_some()),
            ("checklist_id", "template", checklist_id.is_some()),
        ];
        for (key, what, _) in given.into_iter().filter(|(_, _, given)| *given) {
            let problem = format!(
                "{}: a one-off task has no {what}; remove it (or set run_id for a task in a process)",
                s.at(key)
            );
            s.problems.add(problem);
        }
    }
    s.finish();
    match run_id? {
        Some(run_id) => Some(Target::Task {
            run_id,
            task_id: task_id?,
            capture_id: capture_id?,
            step_id,
            checklist_id,
        }),
        None if step_id.is_some() || checklist_id.is_some() => None,
        None => Some(Target::OneOff {
            task_id: task_id?,
            capture_id: capture_id?,
        }),
    }
}

fn kickoff_target(mut s: Section<'_>) -> Option<Target> {
    let checklist_id = s.req("checklist_id", id);
    let field_id = s.req("field_id", id);
    s.finish();
    Some(Target::Kickoff {
        checklist_id: checklist_id?,
        field_id: field_id?,
    })
}

fn route_target(mut s: Section<'_>) -> Option<Target> {
    let checklist_id = s.req("checklist_id", id);
    let capture_id = s.req("capture_id", id);
    let by = s.opt("by", |value| {
        one_of(value, &[("name", RouteBy::Name), ("id", RouteBy::Id)])
    });
    let create_folders = s.opt("create_folders", boolean).unwrap_or(false);
    let refresh_interval = s.opt("refresh_interval", |value| match duration(value)? {
        short if short < ROUTE_REFRESH_MIN => {
            invalid("must be at least 5s: every refresh lists the template's processes again")
        }
        interval => Ok(interval),
    });
    s.finish();
    Some(Target::Route(Route {
        checklist_id: checklist_id?,
        capture_id: capture_id?,
        by: by.unwrap_or(RouteBy::Name),
        create_folders,
        refresh_interval: refresh_interval.unwrap_or(if create_folders {
            ROUTE_REFRESH_CREATING
        } else {
            ROUTE_REFRESH
        }),
    }))
}

/// A launch as parsed, with whether it set `dedupe` itself (it may also be set on the folder).
struct ParsedLaunch {
    launch: Launch,
    dedupe_given: bool,
}

fn launch_target(mut s: Section<'_>, base: &Path, folder: Option<&Path>) -> Option<ParsedLaunch> {
    let checklist_id = s.req("checklist_id", id);
    let field_id = s.req("field_id", id);
    let name = s.opt("name", template);
    let fields = s.get("fields", mapping).ok().flatten().map(|map| {
        let fields_key = s.at("fields");
        map.iter()
            .filter_map(|(key, value)| {
                let shown = scalar(key).unwrap_or_else(|| format!("<{}>", kind(key)));
                let field = s
                    .problems
                    .check(&format!("{fields_key}.{shown}"), key, id)?;
                let value = s
                    .problems
                    .check(&format!("{fields_key}.{field}"), value, template)?;
                Some((field, value))
            })
            .collect::<Vec<_>>()
    });
    let after = s.get("after", |value| {
        one_of(
            value,
            &[("keep", "keep"), ("delete", "delete"), ("move", "move")],
        )
    });
    let move_to = s.get("move_to", |value| {
        path_in(base)(value).map(|to| resolved(&to))
    });
    let dedupe = s.get("dedupe", dedupe);
    let after = match (after, move_to) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(Some("move")), Ok(to)) => match (to, folder) {
            (Some(to), Some(folder)) if to == folder => {
                let problem = format!(
                    "{} {:?}: is the watched folder itself",
                    s.at("move_to"),
                    to.display()
                );
                s.problems.add(problem);
                None
            }
            (Some(to), _) => Some(After::Move { to }),
            (None, Some(folder)) => Some(After::Move {
                to: folder.join("processed"),
            }),
            (None, None) => None,
        },
        (Ok(after), Ok(Some(_))) => {
            let problem = format!(
                "{}: only applies with after: move (after is {})",
                s.at("move_to"),
                after.unwrap_or("keep")
            );
            s.problems.add(problem);
            None
        }
        (Ok(Some("delete")), Ok(None)) => Some(After::Delete),
        (Ok(_), Ok(None)) => Some(After::Keep),
    };
    if let Some((field, _)) = fields
        .iter()
        .flatten()
        .find(|(field, _)| Some(field) == field_id.as_ref())
    {
        let problem = format!(
            "{}.{field}: is the file field (field_id) itself; it gets the file",
            s.at("fields")
        );
        s.problems.add(problem);
    }
    s.finish();
    Some(ParsedLaunch {
        launch: Launch {
            checklist_id: checklist_id?,
            field_id: field_id?,
            name: name.unwrap_or_else(|| Template {
                pieces: vec![Piece::Value(Placeholder::Stem)],
            }),
            fields: fields.unwrap_or_default(),
            after: after?,
            dedupe: dedupe.ok()?.unwrap_or(Dedupe::Content),
        },
        dedupe_given: matches!(dedupe, Ok(Some(_))),
    })
}

/// Every problem found so far. Shared by reference between nested sections so
/// that one walk collects all of them.
#[derive(Default)]
struct Problems(RefCell<Vec<String>>);

impl Problems {
    fn add(&self, problem: String) {
        self.0.borrow_mut().push(problem);
    }

    /// Parses `value`, reporting a rejection as `path value: why`.
    fn check<T>(
        &self,
        path: &str,
        value: &Value,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let bad = match parse(value) {
            Ok(parsed) => return Some(parsed),
            Err(bad) => bad,
        };
        let shown = match (&bad, scalar(value)) {
            (Bad::Secret(_), _) | (_, None) => path.to_string(),
            (Bad::Url(_), Some(_)) => {
                let text = value.as_str().unwrap_or_default();
                format!("{path} {:?}", crate::text::without_userinfo(text))
            }
            (_, Some(text)) => format!("{path} {text}"),
        };
        self.add(match bad {
            Bad::Type(expected) => format!("{shown}: expected {expected}, found {}", kind(value)),
            Bad::Invalid(why) | Bad::Url(why) | Bad::Secret(why) => format!("{shown}: {why}"),
        });
        None
    }
}

/// Why a value was rejected.
enum Bad {
    /// The YAML type is wrong; names what was expected, e.g. "a duration string".
    Type(&'static str),
    /// The type is right but the value is not acceptable.
    Invalid(String),
    /// A URL that is not acceptable: shown without what may be a user name and password.
    Url(String),
    /// The value holds a secret where none belongs: not shown at all.
    Secret(String),
}

fn invalid<T>(why: impl Into<String>) -> Result<T, Bad> {
    Err(Bad::Invalid(why.into()))
}

/// One YAML mapping being taken apart. Keys are removed as they are read, so
/// whatever is left at `finish` is unknown, and the keys asked for are the
/// ones the error lists as expected.
struct Section<'p> {
    path: String,
    map: Mapping,
    known: Vec<&'static str>,
    problems: &'p Problems,
}

impl<'p> Section<'p> {
    fn new(path: String, map: Mapping, problems: &'p Problems) -> Self {
        Section {
            path,
            map,
            known: Vec::new(),
            problems,
        }
    }

    fn child(&self, key: &str, map: Mapping) -> Section<'p> {
        Section::new(self.at(key), map, self.problems)
    }

    fn at(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// `Ok(None)` when absent; an explicit null (`key:` with nothing after it)
    /// counts as absent. `Err(())` when present but rejected (already reported).
    fn get<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Result<Option<T>, ()> {
        self.known.push(key);
        match self.map.shift_remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self
                .problems
                .check(&self.at(key), &value, parse)
                .map(Some)
                .ok_or(()),
        }
    }

    fn opt<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        self.get(key, parse).ok().flatten()
    }

    fn req<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&Value) -> Result<T, Bad>,
    ) -> Option<T> {
        let got = self.get(key, parse);
        if let Ok(None) = got {
            self.problems.add(format!("{}: required", self.at(key)));
        }
        got.ok().flatten()
    }

    fn finish(self) {
        for key in self.map.keys() {
            let name = match key {
                Value::String(name) => name.clone(),
                other => scalar(other).unwrap_or_else(|| format!("<{}>", kind(other))),
            };
            // The value is never shown: a misplaced secret must not be echoed.
            let why = if let Some(source) = [&CLIENT_SECRET, &TOKEN]
                .into_iter()
                .find(|source| name.contains(source.word))
            {
                format!(
                    "the {} is never read from the config file; it comes from {}",
                    source.what,
                    source.places()
                )
            } else {
                format!("expected one of {}", self.known.join(", "))
            };
            self.problems
                .add(format!("{}: unknown key ({why})", self.at(&name)));
        }
    }
}

/// A scalar as it appears in a problem; strings are quoted and escaped so
/// that every problem stays on one line.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(format!("{s:?}")),
        _ => None,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn mapping(value: &Value) -> Result<Mapping, Bad> {
    match value {
        Value::Mapping(map) => Ok(map.clone()),
        _ => Err(Bad::Type("a mapping")),
    }
}

fn list(value: &Value) -> Result<Vec<Value>, Bad> {
    match value {
        Value::Sequence(items) => Ok(items.clone()),
        _ => Err(Bad::Type("a list")),
    }
}

fn boolean(value: &Value) -> Result<bool, Bad> {
    match value {
        Value::Bool(b) => Ok(*b),
        _ => Err(Bad::Type("true or false")),
    }
}

/// Ids go into URL paths, hence the narrow alphabet.
fn id(value: &Value) -> Result<String, Bad> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    match value {
        Value::String(s) if s.is_empty() => invalid("must not be empty"),
        Value::String(s) if !s.bytes().all(allowed) => {
            invalid("may only contain ASCII letters, digits, - and _")
        }
        Value::String(s) => Ok(s.clone()),
        // YAML would already have mangled it (0123 is 123, 12e4 is a float).
        Value::Number(_) => invalid("expected a string, found a number (put the id in quotes)"),
        _ => Err(Bad::Type("a string")),
    }
}

fn duration(value: &Value) -> Result<Duration, Bad> {
    let hint = "not a duration (use e.g. 500ms, 2s, 5m)";
    match value {
        Value::String(s) => humantime::parse_duration(s).or_else(|_| invalid(hint)),
        Value::Number(_) => invalid(hint),
        _ => Err(Bad::Type("a duration string")),
    }
}

fn positive_duration(value: &Value) -> Result<Duration, Bad> {
    match duration(value)? {
        zero if zero.is_zero() => invalid("must be greater than 0"),
        positive => Ok(positive),
    }
}

/// `127.0.0.1:9464`, or a bare port (`9464`, `:9464`), which means loopback: metrics say what
/// the daemon uploads where, so they are not published to the network unless asked.
fn listen_address(value: &Value) -> Result<SocketAddr, Bad> {
    let hint = "expected HOST:PORT such as 127.0.0.1:9464, or a port";
    let text = match value {
        Value::String(text) => text.trim().to_string(),
        Value::Number(port) => port.to_string(),
        _ => return Err(Bad::Type("an address such as 127.0.0.1:9464")),
    };
    let port_only = text.strip_prefix(':').unwrap_or(&text);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse::<SocketAddr>().or_else(|_| invalid(hint))
}

/// `50%` (or a bare number of percent).
fn percentage(value: &Value) -> Result<u8, Bad> {
    let hint = "expected a percentage between 0% and 100%, e.g. 50%";
    let number = match value {
        Value::String(s) => s
            .trim()
            .strip_suffix('%')
            .unwrap_or(s)
            .trim()
            .parse::<u64>()
            .ok(),
        Value::Number(n) => n.as_u64(),
        _ => return Err(Bad::Type("a percentage such as 50%")),
    };
    match number {
        Some(percent @ 0..=100) => Ok(percent as u8),
        _ => invalid(hint),
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

fn path_in(base: &Path) -> impl Fn(&Value) -> Result<PathBuf, Bad> + '_ {
    move |value| match value {
        Value::String(s) if s.is_empty() => invalid("must not be empty"),
        Value::String(s) => Ok(base.join(s)),
        _ => Err(Bad::Type("a path string")),
    }
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

/// The path as written (for messages) and canonicalized (so overlaps and
/// symlinks are judged on what is really watched). A folder not there yet (a share not
/// mounted at boot) is no config error: the daemon shows it as not syncing and waits for it.
fn directory(value: &Value, base: &Path) -> Result<(String, PathBuf), Bad> {
    let path = path_in(base)(value)?;
    let written = value.as_str().unwrap_or_default().to_string();
    match fs::metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok((written, resolved(&path))),
        Err(error) => invalid(format!("cannot access: {error}")),
        Ok(meta) if !meta.is_dir() => invalid("not a directory"),
        Ok(_) => match fs::canonicalize(&path) {
            Ok(canonical) => Ok((written, canonical)),
            Err(error) => invalid(format!("cannot access: {error}")),
        },
    }
}

/// `path` with the symbolic links of the part that exists resolved, so that it compares with
/// the canonical folder paths; a directory not made yet is created when first needed.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = fs::canonicalize(existing) {
            return missing
                .iter()
                .rev()
                .fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// A text with placeholders; numbers and booleans count as their text.
fn template(value: &Value) -> Result<Template, Bad> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        _ => return Err(Bad::Type("a text")),
    };
    Template::parse(&text).or_else(invalid)
}

fn dedupe(value: &Value) -> Result<Dedupe, Bad> {
    one_of(
        value,
        &[("content", Dedupe::Content), ("none", Dedupe::None)],
    )
}

/// The choice `value` names, from `choices`; the error lists them ("expected name or id").
fn one_of<T: Copy>(value: &Value, choices: &[(&str, T)]) -> Result<T, Bad> {
    let chosen = value
        .as_str()
        .and_then(|text| choices.iter().find(|(name, _)| *name == text));
    if let Some((_, choice)) = chosen {
        return Ok(*choice);
    }
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    let listed = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    invalid(format!("expected {listed}"))
}

fn log_format(value: &Value) -> Result<LogFormat, Bad> {
    match value {
        Value::String(name) => LogFormat::parse(name)
            .map_or_else(|| invalid(format!("expected {}", LogFormat::NAMES)), Ok),
        _ => Err(Bad::Type(LogFormat::NAMES)),
    }
}

fn glob(value: &Value) -> Result<Glob, Bad> {
    let Value::String(pattern) = value else {
        return Err(Bad::Type("a glob string"));
    };
    // Matched against bare file names, so `*` may as well cross `/`.
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .or_else(|error| invalid(format!("not a valid glob: {}", error.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    /// A temporary config directory with a few folders to point at.
    struct Fixture {
        _dir: TempDir,
        root: PathBuf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = fs::canonicalize(dir.path()).unwrap();
            for sub in ["in", "in/sub", "out", "state"] {
                fs::create_dir(root.join(sub)).unwrap();
            }
            fs::write(root.join("file.txt"), "x").unwrap();
            Fixture { _dir: dir, root }
        }

        fn file(&self) -> PathBuf {
            self.root.join("config.yaml")
        }

        /// `{dir}` in the YAML stands for the fixture directory.
        fn parse_env(&self, yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
            let yaml = yaml.replace("{dir}", &self.root.display().to_string());
            let env = |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            };
            Config::from_yaml(&yaml, &self.file(), &env)
        }

        fn parse(&self, yaml: &str) -> Config {
            self.parse_env(yaml, &[]).unwrap()
        }

        /// The problems, with the fixture directory written back as `{dir}`.
        fn problems(&self, yaml: &str) -> Vec<String> {
            match self.parse_env(yaml, &[]) {
                Err(ConfigError::Invalid { path, problems }) => {
                    assert_eq!(path, self.file());
                    let root = self.root.display().to_string();
                    problems.iter().map(|p| p.replace(&root, "{dir}")).collect()
                }
                other => panic!("expected problems, got {other:?}"),
            }
        }
    }

    /// A valid config with extra lines in `api` (indented 2) and in the first folder (indented 4).
    fn yaml(api: &str, folder: &str) -> String {
        format!(
            "api:\n  org_id: ORG\n{api}folders:\n  - path: {{dir}}/in\n    task: {{run_id: RUN, task_id: TASK, capture_id: CAP}}\n{folder}"
        )
    }

    fn minimal() -> String {
        yaml("", "")
    }

    #[test]
    fn a_minimal_config_parses_with_defaults_applied() {
        let fx = Fixture::new();
        let config = fx.parse(&minimal());
        assert_eq!(config.file, fx.file());
        assert_eq!(config.api.base_url.as_str(), "https://go.tallyfy.com/api");
        assert_eq!(config.api.org_id, "ORG");
        assert_eq!(config.api.auth, Auth::Token { token_file: None });
        assert_eq!(config.api.timeout, Duration::from_secs(60));
        assert_eq!(config.api.concurrency, 4);
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/tallyfy-sync"));
        assert_eq!(config.settle, Duration::from_secs(2));
        assert_eq!(config.rescan_interval, Duration::from_secs(600));
        assert_eq!(config.attach_delay, Duration::from_secs(1));
        assert_eq!(config.failed_retry_interval, Duration::from_secs(3600));
        assert_eq!(config.metrics_listen, None);
        assert_eq!(config.api.rate_limit, None);
        assert_eq!(config.folders.len(), 1);
        let folder = &config.folders[0];
        assert_eq!(folder.path, fx.root.join("in"));
        assert_eq!(
            folder.target,
            Target::Task {
                run_id: "RUN".into(),
                task_id: "TASK".into(),
                capture_id: "CAP".into(),
                step_id: None,
                checklist_id: None,
            }
        );
        assert!(!folder.recursive);
        assert!(folder.delete_remote);
        assert!(folder.ignore.is_empty());
        assert!(!folder.ignore_set.is_match("anything.pdf"));
        assert_eq!(folder.watch, WatchMode::Auto);
        assert_eq!(folder.max_delete_percent, 50);
    }

    #[test]
    fn a_full_config_parses_every_key() {
        let fx = Fixture::new();
        let config = fx.parse(
            "\
api:
  base_url: https://example.com/api/
  org_id: ORG-1_a
  token_file: secrets/token
  timeout: 500ms
  concurrency: 64
  rate_limit: 100/min
state_dir: state
settle: 0s
rescan_interval: 1h
attach_delay: 250ms
failed_retry_interval: 10m
max_delete: 20%
metrics:
  listen: 0.0.0.0:9100
folders:
  - path: {dir}/in
    task:
      run_id: RUN
      task_id: TASK
      capture_id: CAP
      step_id: STEP
      checklist_id: TPL
    recursive: true
    delete_remote: false
    max_delete: 100%
    watch: inotify
    ignore: [\"*.bak\", \"~*\"]
  - path: out
    poll: 5s
    kickoff:
      checklist_id: TPL
      field_id: FIELD
",
        );
        assert_eq!(config.api.base_url.as_str(), "https://example.com/api");
        assert_eq!(config.api.org_id, "ORG-1_a");
        assert_eq!(
            config.api.auth,
            Auth::Token {
                token_file: Some(fx.root.join("secrets/token"))
            }
        );
        assert_eq!(config.api.timeout, Duration::from_millis(500));
        assert_eq!(config.api.concurrency, 64);
        assert_eq!(config.state_dir, fx.root.join("state"));
        assert_eq!(config.settle, Duration::ZERO);
        assert_eq!(config.rescan_interval, Duration::from_secs(3600));
        assert_eq!(config.attach_delay, Duration::from_millis(250));
        assert_eq!(config.failed_retry_interval, Duration::from_secs(600));
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
        assert_eq!(
            config.api.rate_limit,
            Some(RateLimit {
                requests: 100,
                per: Duration::from_secs(60)
            })
        );
        let [invoices, contracts] = &config.folders[..] else {
            panic!("expected two folders: {:?}", config.folders);
        };
        assert_eq!(
            invoices.target,
            Target::Task {
                run_id: "RUN".into(),
                task_id: "TASK".into(),
                capture_id: "CAP".into(),
                step_id: Some("STEP".into()),
                checklist_id: Some("TPL".into()),
            }
        );
        assert!(invoices.recursive);
        assert!(!invoices.delete_remote);
        assert_eq!(invoices.ignore, ["*.bak", "~*"]);
        assert!(invoices.ignore_set.is_match("report.bak"));
        assert!(invoices.ignore_set.is_match("~lock.docx"));
        assert!(!invoices.ignore_set.is_match("report.pdf"));
        assert_eq!(invoices.watch, WatchMode::Inotify);
        assert_eq!(invoices.max_delete_percent, 100);
        assert_eq!(contracts.path, fx.root.join("out"));
        assert_eq!(
            contracts.watch,
            WatchMode::Poll {
                interval: Duration::from_secs(5)
            }
        );
        assert_eq!(contracts.max_delete_percent, 20);
        assert_eq!(
            contracts.target,
            Target::Kickoff {
                checklist_id: "TPL".into(),
                field_id: "FIELD".into(),
            }
        );
    }

    #[test]
    fn watch_mode_rate_limit_and_max_delete_name_the_bad_value() {
        let fx = Fixture::new();
        let problems = fx.problems(
            &(yaml(
                "  rate_limit: 100/fortnight\n",
                "    watch: inotify\n    poll: 10s\n    max_delete: 150%\n",
            ) + "rescan_interval: 0s\n"),
        );
        assert_eq!(
            problems,
            [
                "api.rate_limit \"100/fortnight\": expected requests per period, e.g. 100/min, 10/s or 1000/hour",
                "rescan_interval \"0s\": must be greater than 0",
                "folders[0].max_delete \"150%\": expected a percentage between 0% and 100%, e.g. 50%",
                "folders[0]: watch: inotify cannot be combined with poll",
            ]
        );
        let config = fx.parse(&(yaml("", "    watch: poll\n") + "metrics: {listen: 9464}\n"));
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap()),
            "a bare port means loopback"
        );
        assert_eq!(
            config.folders[0].watch,
            WatchMode::Poll {
                interval: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn reports_every_problem_not_only_the_first() {
        let fx = Fixture::new();
        let problems = fx.problems(
            "\
api:
  timeout: abc
  concurrency: 0
settle: [1s]
folders:
  - path: {dir}/missing
    task: {run_id: RUN, task_id: TASK}
  - path: {dir}/file.txt
",
        );
        assert_eq!(
            problems,
            [
                "api.org_id: required",
                "api.timeout \"abc\": not a duration (use e.g. 500ms, 2s, 5m)",
                "api.concurrency 0: must be between 1 and 64",
                "settle: expected a duration string, found a list",
                "folders[0].task.capture_id: required",
                "folders[1].path \"{dir}/file.txt\": not a directory",
                "folders[1]: needs exactly one of task, kickoff, launch or route (found neither)",
            ]
        );
    }

    #[test]
    fn the_error_message_lists_each_problem_on_its_own_line() {
        let fx = Fixture::new();
        let error = fx.parse_env("settle: 1s\n", &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "config file {} has 2 problems:\n  - api.org_id: required\n  - folders: required",
                fx.file().display()
            )
        );
        let error = fx.parse_env(&(minimal() + "settle: x\n"), &[]).unwrap_err();
        assert!(error
            .to_string()
            .contains(" has 1 problem:\n  - settle \"x\": "));
    }

    #[test]
    fn a_syntax_error_names_line_and_column() {
        let fx = Fixture::new();
        let problems = fx.problems("api:\n  org_id: ORG\n  timeout: 1s\n   concurrency: 4\n");
        assert_eq!(
            problems,
            ["config.yaml line 4 column 15: mapping values are not allowed in this context"]
        );
    }

    #[test]
    fn an_empty_document_is_one_problem() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems("# nothing yet\n"),
            ["config.yaml: is empty (it needs at least api.org_id and folders)"]
        );
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_one_problem() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems("- api\n- folders\n"),
            ["config.yaml: expected a mapping of settings, found a list"]
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_the_keys_expected_there() {
        let fx = Fixture::new();
        let problems = fx.problems(
            &(yaml("  tokn: x\n", "    recursve: true\n")
                + "  - path: {dir}/out\n    kickoff: {checklist_id: T, field_id: F, extra: 1}\n"
                + "foldrs: []\n"),
        );
        assert_eq!(
            problems,
            [
                "api.tokn: unknown key (expected one of base_url, org_id, auth, token_file, token_url, client_id, client_secret_file, timeout, concurrency, rate_limit, ca_file, proxy)",
                "folders[0].recursve: unknown key (expected one of path, task, kickoff, launch, route, dedupe, recursive, delete_remote, remote_removed, max_delete, watch, poll, ignore)",
                "folders[1].kickoff.extra: unknown key (expected one of checklist_id, field_id)",
                "foldrs: unknown key (expected one of api, state_dir, settle, rescan_interval, attach_delay, failed_retry_interval, max_delete, metrics, log, folders)",
            ]
        );
    }

    #[test]
    fn a_token_key_explains_where_the_token_comes_from_without_echoing_it() {
        let fx = Fixture::new();
        let problems =
            fx.problems(&(yaml("  token: s3cr3t-value\n", "") + "token: s3cr3t-value\n"));
        let why = "unknown key (the API token is never read from the config file; it comes from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token)";
        assert_eq!(
            problems,
            [format!("api.token: {why}"), format!("token: {why}")]
        );
    }

    #[test]
    fn org_id_is_required_even_without_an_api_section() {
        let fx = Fixture::new();
        let without_api = minimal().replace("api:\n  org_id: ORG\n", "");
        assert_eq!(fx.problems(&without_api), ["api.org_id: required"]);
        let null_org = minimal().replace("org_id: ORG", "org_id:");
        assert_eq!(fx.problems(&null_org), ["api.org_id: required"]);
        let api_string = minimal().replace("api:\n  org_id: ORG\n", "api: ORG\n");
        assert_eq!(
            fx.problems(&api_string),
            ["api \"ORG\": expected a mapping, found a string"]
        );
    }

    #[test]
    fn ids_must_be_url_safe_non_empty_strings() {
        let fx = Fixture::new();
        let text = yaml("", "")
            .replace("org_id: ORG", "org_id: \"\"")
            .replace("run_id: RUN", "run_id: a/b")
            .replace("task_id: TASK", "task_id: 12345")
            .replace("capture_id: CAP", "capture_id: [x], step_id: \"é\"");
        assert_eq!(
            fx.problems(&text),
            [
                "api.org_id \"\": must not be empty",
                "folders[0].task.run_id \"a/b\": may only contain ASCII letters, digits, - and _",
                "folders[0].task.task_id 12345: expected a string, found a number (put the id in quotes)",
                "folders[0].task.capture_id: expected a string, found a list",
                "folders[0].task.step_id \"é\": may only contain ASCII letters, digits, - and _",
            ]
        );
    }

    #[test]
    fn durations_must_be_humantime_strings_and_timeout_must_be_positive() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&(yaml("  timeout: 0s\n", "") + "settle: 5\n")),
            [
                "api.timeout \"0s\": must be greater than 0",
                "settle 5: not a duration (use e.g. 500ms, 2s, 5m)",
            ]
        );
        assert_eq!(
            fx.problems(&yaml("  timeout: true\n", "")),
            ["api.timeout true: expected a duration string, found a boolean"]
        );
        let config = fx.parse(&(yaml("  timeout: 5m\n", "") + "settle: 0s\n"));
        assert_eq!(config.api.timeout, Duration::from_secs(300));
        assert_eq!(config.settle, Duration::ZERO);
    }

    #[test]
    fn concurrency_must_be_an_integer_from_1_to_64() {
        let fx = Fixture::new();
        for (written, problem) in [
            ("0", "api.concurrency 0: must be between 1 and 64"),
            ("65", "api.concurrency 65: must be between 1 and 64"),
            ("-1", "api.concurrency -1: must be between 1 and 64"),
            ("2.5", "api.concurrency 2.5: must be between 1 and 64"),
            (
                "\"4\"",
                "api.concurrency \"4\": expected an integer, found a string",
            ),
        ] {
            let text = yaml(&format!("  concurrency: {written}\n"), "");
            assert_eq!(fx.problems(&text), [problem]);
        }
        assert_eq!(fx.parse(&yaml("  concurrency: 1\n", "")).api.concurrency, 1);
    }

    #[test]
    fn base_url_must_be_https_unless_the_host_is_loopback() {
        let fx = Fixture::new();
        let https =
            "must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)";
        for (url, problem) in [
            (
                "http://example.com/api",
                format!("\"http://example.com/api\": {https}"),
            ),
            (
                "ftp://127.0.0.1/api",
                format!("\"ftp://127.0.0.1/api\": {https}"),
            ),
            (
                "http://127.0.0.1.example.com/",
                format!("\"http://127.0.0.1.example.com/\": {https}"),
            ),
            (
                "go.tallyfy.com/api",
                "\"go.tallyfy.com/api\": not a valid URL: relative URL without a base".to_string(),
            ),
        ] {
            let text = yaml(&format!("  base_url: {url}\n"), "");
            assert_eq!(fx.problems(&text), [format!("api.base_url {problem}")]);
        }
        for (url, parsed) in [
            ("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api"),
            ("http://127.1.2.3/", "http://127.1.2.3/"),
            ("http://LocalHost:9000/api", "http://localhost:9000/api"),
            ("http://[::1]:9000/api//", "http://[::1]:9000/api/"),
            ("https://go.tallyfy.com/api", "https://go.tallyfy.com/api"),
            ("https://127.0.0.1:8443/api", "https://127.0.0.1:8443/api"),
            ("https://localhost:8443/api", "https://localhost:8443/api"),
        ] {
            let config = fx.parse(&yaml(&format!("  base_url: \"{url}\"\n"), ""));
            assert_eq!(config.api.base_url.as_str(), parsed);
        }
    }

    #[test]
    fn ca_file_takes_a_pem_bundle_and_names_the_key_when_it_cannot() {
        let fx = Fixture::new();
        let authority = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.self_signed(&key).unwrap().pem()
        };
        let bundle = authority("Company Root CA") + &authority("Company Proxy CA");
        fs::write(fx.root.join("company-ca.pem"), bundle).unwrap();
        let config = fx.parse(&yaml(
            "  ca_file: company-ca.pem
",
            "",
        ));
        let ca_file = config.api.ca_file.expect("ca_file is set");
        assert_eq!(ca_file.path, fx.root.join("company-ca.pem"));
        assert_eq!(ca_file.certificates.len(), 2);

        fs::write(
            fx.root.join("key.pem"),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        fs::write(fx.root.join("ca.der"), [0x30, 0x82, 0x01, 0x0a]).unwrap();
        fs::write(
            fx.root.join("broken.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let no_certificate = "holds no certificate (expected PEM blocks \"-----BEGIN CERTIFICATE-----\"; convert a binary DER file with: openssl x509 -inform der -in FILE -out FILE.pem)";
        for (file, problem) in [
            (
                "missing.pem",
                "cannot read: No such file or directory (os error 2)",
            ),
            ("in", "cannot read: Is a directory (os error 21)"),
            ("key.pem", no_certificate),
            ("ca.der", no_certificate),
        ] {
            assert_eq!(
                fx.problems(&yaml(&format!("  ca_file: {file}\n"), "")),
                [format!("api.ca_file \"{file}\": {problem}")]
            );
        }
        let broken = fx.problems(&yaml("  ca_file: broken.pem\n", ""));
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].starts_with("api.ca_file \"broken.pem\": holds a certificate that cannot be used as an authority: "),
            "{broken:?}"
        );
        assert_eq!(
            fx.problems(&yaml("  ca_file: [a.pem]\n", "")),
            ["api.ca_file: expected a path string, found a list"]
        );
    }

    #[test]
    fn folder_paths_must_be_directories_and_a_missing_one_is_accepted() {
        let fx = Fixture::new();
        let text = minimal()
            + "  - path: file.txt\n    kickoff: {checklist_id: T, field_id: F}\n"
            + "  - path: \"\"\n    kickoff: {checklist_id: T, field_id: F}\n"
            + "  - kickoff: {checklist_id: T, field_id: F}\n"
            + "  - path: [a]\n    kickoff: {checklist_id: T, field_id: F}\n";
        assert_eq!(
            fx.problems(&text),
            [
                "folders[1].path \"file.txt\": not a directory",
                "folders[2].path \"\": must not be empty",
                "folders[3].path: required",
                "folders[4].path: expected a path string, found a list",
            ]
        );
    }

    #[test]
    fn a_folder_not_there_yet_is_accepted_with_the_links_above_it_resolved() {
        let fx = Fixture::new();
        std::os::unix::fs::symlink(&fx.root, fx.root.join("link")).unwrap();
        let text = yaml("", "").replace("{dir}/in", "{dir}/link/share/scans");
        let config = fx.parse(&text);
        assert_eq!(config.folders[0].path, fx.root.join("share/scans"));
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_directory() {
        let fx = Fixture::new();
        let text = yaml("  token_file: ../token\n", "").replace("{dir}/in", "in/./sub/..")
            + "state_dir: state\n";
        let config = fx.parse(&text);
        assert_eq!(config.folders[0].path, fx.root.join("in"));
        assert_eq!(config.state_dir, fx.root.join("state"));
        assert_eq!(
            config.api.auth,
            Auth::Token {
                token_file: Some(fx.root.join("../token"))
            }
        );
    }

    #[test]
    fn folders_must_be_a_non_empty_list_of_mappings() {
        let fx = Fixture::new();
        assert_eq!(fx.problems("api: {org_id: ORG}\n"), ["folders: required"]);
        assert_eq!(
            fx.problems("api: {org_id: ORG}\nfolders: []\n"),
            ["folders: must list at least one folder"]
        );
        assert_eq!(
            fx.problems("api: {org_id: ORG}\nfolders: {dir}/in\n"),
            ["folders \"{dir}/in\": expected a list, found a string"]
        );
        assert_eq!(
            fx.problems("api: {org_id: ORG}\nfolders: [{dir}/in]\n"),
            ["folders[0] \"{dir}/in\": expected a mapping, found a string"]
        );
    }

    #[test]
    fn a_folder_needs_exactly_one_of_task_or_kickoff() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&yaml("", "    kickoff: {checklist_id: T, field_id: F}\n")),
            ["folders[0]: needs exactly one of task, kickoff, launch or route (found both)"]
        );
        assert_eq!(
            fx.problems("api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n"),
            ["folders[0]: needs exactly one of task, kickoff, launch or route (found neither)"]
        );
        assert_eq!(
            fx.problems("api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    kickoff: TPL\n"),
            ["folders[0].kickoff \"TPL\": expected a mapping, found a string"]
        );
    }

    #[test]
    fn a_launch_folder_parses_with_its_defaults_and_every_key() {
        let fx = Fixture::new();
        let config = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    launch: {checklist_id: T, field_id: F}\n  - path: {dir}/out\n    dedupe: none\n    launch:\n      checklist_id: T\n      field_id: F\n      name: \"Invoice {stem} {{x}}\"\n      fields: {V: \"{parent}\", N: 42}\n      after: move\n      move_to: done\n",
        );
        let [plain, full] = &config.folders[..] else {
            panic!("{:?}", config.folders);
        };
        let Target::Launch(plain) = &plain.target else {
            panic!("{plain:?}")
        };
        assert_eq!(plain.name.to_string(), "{stem}");
        assert!(plain.fields.is_empty());
        assert_eq!(plain.after, After::Keep);
        assert_eq!(plain.dedupe, Dedupe::Content);
        let Target::Launch(full) = &full.target else {
            panic!("{full:?}")
        };
        assert_eq!(full.dedupe, Dedupe::None);
        assert_eq!(
            full.after,
            After::Move {
                to: fx.root.canonicalize().unwrap().join("done")
            }
        );
        let rendered = full.name.render(|placeholder| match placeholder {
            Placeholder::Stem => "2041".into(),
            _ => "?".into(),
        });
        assert_eq!(rendered, "Invoice 2041 {x}");
        assert_eq!(full.name.literal_len(), "Invoice  {x}".len());
        let fields: Vec<(String, String)> = full
            .fields
            .iter()
            .map(|(id, value)| (id.clone(), value.to_string()))
            .collect();
        assert_eq!(
            fields,
            [("V".into(), "{parent}".into()), ("N".into(), "42".into())]
        );
    }

    #[test]
    fn a_route_folder_parses_with_its_defaults_and_always_watches_subfolders() {
        let fx = Fixture::new();
        let config = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, capture_id: C}\n  - path: {dir}/out\n    route: {checklist_id: T, capture_id: C, by: id, create_folders: true}\n",
        );
        assert_eq!(
            config.folders[0].target,
            Target::Route(Route {
                checklist_id: "T".into(),
                capture_id: "C".into(),
                by: RouteBy::Name,
                create_folders: false,
                refresh_interval: Duration::from_secs(180),
            })
        );
        assert!(config.folders[0].recursive);
        let route = |config: &Config, index: usize| match &config.folders[index].target {
            Target::Route(route) => route.clone(),
            other => panic!("not a route: {other:?}"),
        };
        let by_id = route(&config, 1);
        assert_eq!((by_id.by, by_id.create_folders), (RouteBy::Id, true));
        // Folders people wait for are looked for more often.
        assert_eq!(by_id.refresh_interval, Duration::from_secs(30));
        let set = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, capture_id: C, create_folders: true, refresh_interval: 10m}\n",
        );
        assert_eq!(route(&set, 0).refresh_interval, Duration::from_secs(600));
    }

    #[test]
    fn route_problems_name_their_key() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(
                "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, by: title, create_folders: maybe, refresh_interval: 1s}\n  - path: {dir}/out\n    route: {checklist_id: T, capture_id: C}\n    task: {run_id: R, task_id: K, capture_id: C}\n  - path: {dir}/state\n    recursive: false\n    route: {checklist_id: T, capture_id: C}\n",
            ),
            [
                "folders[0].route.capture_id: required",
                "folders[0].route.by \"title\": expected name or id",
                "folders[0].route.create_folders \"maybe\": expected true or false, found a string",
                "folders[0].route.refresh_interval \"1s\": must be at least 5s: every refresh lists the template's processes again",
                "folders[1]: needs exactly one of task, kickoff, launch or route (found both)",
                "folders[2].recursive: a route folder always watches its subfolders (each stands for a process); remove recursive",
            ]
        );
    }

    #[test]
    fn launch_problems_name_their_key() {
        let fx = Fixture::new();
        let problems = fx.problems(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    launch:\n      checklist_id: T\n      field_id: F\n      name: \"{nope}\"\n      fields: {F: x, V: \"}\"}\n      after: later\n  - path: {dir}/out\n    dedupe: sometimes\n    kickoff: {checklist_id: T, field_id: F}\n",
        );
        assert_eq!(
            problems,
            [
                "folders[0].launch.name \"{nope}\": unknown placeholder {nope} (expected one of {filename}, {stem}, {ext}, {parent}, {relpath}, {date}, {mtime})",
                "folders[0].launch.fields.V \"}\": a } without its { (write }} for a brace)",
                "folders[0].launch.after \"later\": expected keep, delete or move",
                "folders[0].launch.fields.F: is the file field (field_id) itself; it gets the file",
                "folders[1].dedupe \"sometimes\": expected content or none",
            ]
        );
        let problems = fx.problems(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    dedupe: none\n    kickoff: {checklist_id: T, field_id: F}\n  - path: {dir}/out\n    launch: {checklist_id: T, field_id: F, after: move, move_to: out}\n",
        );
        assert_eq!(
            problems,
            [
                "folders[0].dedupe: only applies to launch folders",
                "folders[1].launch.move_to \"{dir}/out\": is the watched folder itself",
            ]
        );
    }

    #[test]
    fn task_and_kickoff_need_their_ids_and_no_other_keys() {
        let fx = Fixture::new();
        let text = "api: {org_id: ORG}\nfolders:\n".to_string()
            + "  - path: {dir}/in\n    task: {run_id: R, step: S}\n"
            + "  - path: {dir}/out\n    kickoff: {}\n";
        assert_eq!(
            fx.problems(&text),
            [
                "folders[0].task.task_id: required",
                "folders[0].task.capture_id: required",
                "folders[0].task.step: unknown key (expected one of run_id, task_id, capture_id, step_id, checklist_id, one_off)",
                "folders[1].kickoff.checklist_id: required",
                "folders[1].kickoff.field_id: required",
            ]
        );
    }

    #[test]
    fn recursive_and_delete_remote_must_be_booleans() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&yaml("", "    recursive: yes\n    delete_remote: 1\n")),
            [
                "folders[0].recursive \"yes\": expected true or false, found a string",
                "folders[0].delete_remote 1: expected true or false, found a number",
            ]
        );
    }

    #[test]
    fn ignore_must_be_a_list_of_valid_globs() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&yaml("", "    ignore: [\"*.bak\", \"[abc\", 7]\n")),
            [
                "folders[0].ignore[1] \"[abc\": not a valid glob: unclosed character class; missing ']'",
                "folders[0].ignore[2] 7: expected a glob string, found a number",
            ]
        );
        assert_eq!(
            fx.problems(&yaml("", "    ignore: \"*.bak\"\n")),
            ["folders[0].ignore \"*.bak\": expected a list, found a string"]
        );
    }

    #[test]
    fn folders_may_not_overlap() {
        let fx = Fixture::new();
        std::os::unix::fs::symlink(fx.root.join("out"), fx.root.join("link")).unwrap();
        let kickoff = "    kickoff: {checklist_id: T, field_id: F}\n";
        let text = minimal()
            + "  - path: {dir}/in/sub\n"
            + kickoff
            + "  - path: {dir}\n"
            + kickoff
            + "  - path: {dir}/out\n"
            + kickoff
            + "  - path: link\n"
            + kickoff;
        assert_eq!(
            fx.problems(&text),
            [
                "folders[1].path \"{dir}/in/sub\": overlaps folders[0].path \"{dir}/in\"",
                "folders[2].path \"{dir}\": overlaps folders[0].path \"{dir}/in\"",
                "folders[2].path \"{dir}\": overlaps folders[1].path \"{dir}/in/sub\"",
                "folders[3].path \"{dir}/out\": overlaps folders[2].path \"{dir}\"",
                "folders[4].path \"link\": overlaps folders[2].path \"{dir}\"",
                "folders[4].path \"link\": overlaps folders[3].path \"{dir}/out\"",
            ]
        );
    }

    #[test]
    fn two_folders_may_feed_the_same_target() {
        let fx = Fixture::new();
        let text = minimal()
            + "  - path: {dir}/out\n    task: {run_id: RUN, task_id: TASK, capture_id: CAP}\n";
        let config = fx.parse(&text);
        assert_eq!(
            config.folders[0].target.key(),
            config.folders[1].target.key()
        );
    }

    #[test]
    fn state_dir_defaults_to_the_first_state_directory_from_systemd() {
        let fx = Fixture::new();
        let env = [("STATE_DIRECTORY", "/var/lib/one:/var/lib/two")];
        let config = fx.parse_env(&minimal(), &env).unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/one"));
        let config = fx
            .parse_env(&minimal(), &[("STATE_DIRECTORY", "")])
            .unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/tallyfy-sync"));
        let config = fx
            .parse_env(&(minimal() + "state_dir: /srv/state\n"), &env)
            .unwrap();
        assert_eq!(config.state_dir, PathBuf::from("/srv/state"));
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_it_cannot() {
        let fx = Fixture::new();
        let text = minimal().replace("{dir}", &fx.root.display().to_string());
        fs::write(fx.file(), text).unwrap();
        let config = Config::load(&fx.file()).unwrap();
        assert_eq!(config.folders[0].path, fx.root.join("in"));
        let missing = fx.root.join("missing.yaml");
        let error = Config::load(&missing).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error
            .to_string()
            .starts_with(&format!("cannot read config file {}: ", missing.display())));
    }

    #[test]
    fn targets_have_a_stable_key_and_a_readable_name() {
        let task = Target::Task {
            run_id: "RUN".into(),
            task_id: "TASK".into(),
            capture_id: "CAP".into(),
            step_id: Some("STEP".into()),
            checklist_id: None,
        };
        let kickoff = Target::Kickoff {
            checklist_id: "TPL".into(),
            field_id: "FIELD".into(),
        };
        assert_eq!(task.key(), "task:RUN/TASK/CAP");
        assert_eq!(task.to_string(), "task TASK in run RUN, field CAP");
        assert_eq!(kickoff.key(), "kickoff:TPL/FIELD");
        assert_eq!(kickoff.to_string(), "kick-off field FIELD of template TPL");
        let one_off = Target::OneOff {
            task_id: "TASK".into(),
            capture_id: "CAP".into(),
        };
        assert_eq!(one_off.key(), "oneoff:TASK/CAP");
        assert_eq!(one_off.to_string(), "one-off task TASK, field CAP");
        assert_eq!(one_off.run_id(), None);
        assert_eq!(task.run_id(), Some("RUN"));
    }

    #[test]
    fn a_task_without_run_id_is_a_one_off_task() {
        let fx = Fixture::new();
        let one_off = Target::OneOff {
            task_id: "TASK".into(),
            capture_id: "CAP".into(),
        };
        let config = fx.parse(&minimal().replace("run_id: RUN, ", ""));
        assert_eq!(config.folders[0].target, one_off);
        let config = fx.parse(&minimal().replace("run_id: RUN", "one_off: true"));
        assert_eq!(
            config.folders[0].target, one_off,
            "one_off: true says the same"
        );
        let config = fx.parse(&minimal().replace("CAP}", "CAP, one_off: false}"));
        assert!(matches!(config.folders[0].target, Target::Task { .. }));
    }

    #[test]
    fn a_one_off_task_with_a_process_step_or_template_is_refused_naming_the_key() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&minimal().replace("CAP}", "CAP, one_off: true}")),
            ["folders[0].task.one_off: a one-off task belongs to no process, yet run_id is set; remove one_off for a task in a process, or run_id for a one-off task"]
        );
        assert_eq!(
            fx.problems(&minimal().replace("run_id: RUN", "one_off: false")),
            ["folders[0].task.run_id: required (one_off is false: the task belongs to a process)"]
        );
        assert_eq!(
            fx.problems(&minimal().replace("run_id: RUN", "step_id: S, checklist_id: T")),
            [
                "folders[0].task.step_id: a one-off task has no step; remove it (or set run_id for a task in a process)",
                "folders[0].task.checklist_id: a one-off task has no template; remove it (or set run_id for a task in a process)",
            ]
        );
        assert_eq!(
            fx.problems(&minimal().replace("run_id: RUN", "one_off: yes")),
            ["folders[0].task.one_off \"yes\": expected true or false, found a string"]
        );
    }

    fn api(token_file: Option<PathBuf>) -> ApiConfig {
        with_auth(Auth::Token { token_file })
    }

    fn client_api(client_secret_file: Option<PathBuf>) -> ApiConfig {
        with_auth(Auth::ClientCredentials {
            token_url: Url::parse(DEFAULT_TOKEN_URL).unwrap(),
            client_id: "CLIENT".into(),
            client_secret_file,
        })
    }

    fn with_auth(auth: Auth) -> ApiConfig {
        ApiConfig {
            base_url: Url::parse(DEFAULT_BASE_URL).unwrap(),
            org_id: "ORG".into(),
            auth,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            rate_limit: None,
            ca_file: None,
            proxy: None,
        }
    }

    /// The token, or the client secret, that `Credentials::resolve` finds.
    fn resolve(api: &ApiConfig, vars: &[(&str, &Path)]) -> Result<Secret, ConfigError> {
        let env = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.as_os_str().to_owned())
        };
        Ok(match Credentials::resolve(api, &env)? {
            Credentials::Token(token) => token,
            Credentials::ClientCredentials { client_secret, .. } => client_secret,
        })
    }

    #[test]
    fn the_token_comes_from_the_environment_then_the_file_then_the_credential() {
        let fx = Fixture::new();
        let file = fx.root.join("token");
        fs::write(&file, "from-file\n").unwrap();
        fs::write(fx.root.join("tallyfy-token"), "  from-credential\r\n").unwrap();
        let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
        let var = ("TALLYFY_ACCESS_TOKEN", Path::new(" from-env\n"));
        let with_file = api(Some(file));

        let token = resolve(&with_file, &[var, creds]).unwrap();
        assert_eq!(token.expose(), "from-env");
        let token = resolve(&with_file, &[creds]).unwrap();
        assert_eq!(token.expose(), "from-file");
        let token = resolve(&api(None), &[creds]).unwrap();
        assert_eq!(token.expose(), "from-credential");
    }

    #[test]
    fn an_empty_token_is_rejected_naming_its_source() {
        let fx = Fixture::new();
        let file = fx.root.join("token");
        fs::write(&file, " \n").unwrap();
        let error = resolve(&api(None), &[("TALLYFY_ACCESS_TOKEN", Path::new(""))]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "API token from environment variable TALLYFY_ACCESS_TOKEN: empty"
        );
        let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "API token from file {} (api.token_file): empty",
                file.display()
            )
        );
    }

    #[test]
    fn a_missing_token_file_is_named() {
        let fx = Fixture::new();
        let file = fx.root.join("nope");
        let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "API token from file {} (api.token_file): cannot read it: No such file or directory (os error 2)",
                file.display()
            )
        );
        let error = resolve(
            &api(None),
            &[("CREDENTIALS_DIRECTORY", &fx.root.join("creds"))],
        )
        .unwrap_err();
        assert!(error.to_string().starts_with(&format!(
            "API token from systemd credential {}: cannot read it: ",
            fx.root.join("creds/tallyfy-token").display()
        )));
        let error = resolve(&api(None), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "API token from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token: none is set"
        );
    }

    #[test]
    fn token_errors_and_debug_never_show_the_token() {
        let fx = Fixture::new();
        let file = fx.root.join("token");
        fs::write(&file, "Bearer s3cr3t\n").unwrap();
        let error = resolve(&api(Some(file)), &[]).unwrap_err();
        assert!(error.to_string().ends_with(
            ": contains whitespace or control characters (it must hold the API token alone)"
        ));
        assert!(!format!("{error} {error:?}").contains("s3cr3t"));

        let var = ("TALLYFY_ACCESS_TOKEN", Path::new("s3cr3t"));
        let token = resolve(&api(None), &[var]).unwrap();
        assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn api_proxy_is_checked_and_its_password_never_shown() {
        let fx = Fixture::new();
        let config = fx.parse(&yaml(
            "  proxy: http://operator:s3cr3t@proxy.example.com:3128\n",
            "",
        ));
        let proxy = config.api.proxy.as_ref().expect("api.proxy");
        assert_eq!(proxy.0.password(), Some("s3cr3t"));
        assert_eq!(proxy.shown(), "http://proxy.example.com:3128");
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let hint = "expected a proxy URL such as http://proxy.example.com:3128";
        for bad in ["ftp://proxy.example.com", "proxy.example.com:3128"] {
            let problems = fx.problems(&yaml(&format!("  proxy: {bad}\n"), ""));
            assert!(
                problems
                    .iter()
                    .any(|problem| problem.starts_with(&format!("api.proxy \"{bad}\": {hint}"))),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn a_config_debug_holds_no_token() {
        let fx = Fixture::new();
        fs::write(fx.root.join("token"), "s3cr3t").unwrap();
        let config = fx.parse(&yaml("  token_file: token\n", ""));
        let var = ("TALLYFY_ACCESS_TOKEN", Path::new("env-s3cr3t"));
        let token = resolve(&config.api, &[var]).unwrap();
        assert_eq!(token.expose(), "env-s3cr3t");
        let debug = format!("{config:?}");
        assert!(debug.contains("token_file"));
        assert!(!debug.contains("s3cr3t"));
    }

    #[test]
    fn client_credentials_parse_with_the_default_token_url() {
        let fx = Fixture::new();
        let config = fx.parse(&yaml("  auth: client_credentials\n  client_id: 7\n", ""));
        assert_eq!(
            config.api.auth,
            Auth::ClientCredentials {
                token_url: Url::parse("https://go.tallyfy.com/oauth/token").unwrap(),
                client_id: "7".into(),
                client_secret_file: None,
            }
        );
        let config = fx.parse(&yaml(
            "  auth: client_credentials\n  token_url: http://127.0.0.1:9000/oauth/token\n  client_id: a-b\n  client_secret_file: secret\n",
            "",
        ));
        assert_eq!(
            config.api.auth,
            Auth::ClientCredentials {
                token_url: Url::parse("http://127.0.0.1:9000/oauth/token").unwrap(),
                client_id: "a-b".into(),
                client_secret_file: Some(fx.root.join("secret")),
            }
        );
        let config = fx.parse(&yaml("  auth: token\n", ""));
        assert_eq!(config.api.auth, Auth::Token { token_file: None });
    }

    #[test]
    fn client_credentials_need_a_client_id_and_an_https_token_url() {
        let fx = Fixture::new();
        let text = yaml(
            "  auth: client_credentials\n  token_url: http://example.com/oauth/token\n",
            "",
        );
        assert_eq!(
            fx.problems(&text),
            [
                "api.token_url \"http://example.com/oauth/token\": must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)",
                "api.client_id: required with api.auth: client_credentials",
            ]
        );
        let text = yaml("  auth: client_credentials\n  client_id: \"a b\"\n", "");
        assert_eq!(
            fx.problems(&text),
            ["api.client_id \"a b\": must not contain whitespace or control characters"]
        );
    }

    #[test]
    fn keys_of_the_auth_not_chosen_are_errors_naming_the_key() {
        let fx = Fixture::new();
        let client_keys = "  token_url: https://example.com/oauth/token\n  client_id: C\n  client_secret_file: secret\n";
        assert_eq!(
            fx.problems(&yaml(client_keys, "")),
            [
                "api.token_url: only applies with api.auth: client_credentials",
                "api.client_id: only applies with api.auth: client_credentials",
                "api.client_secret_file: only applies with api.auth: client_credentials",
            ]
        );
        let text = yaml(
            "  auth: client_credentials\n  client_id: C\n  token_file: token\n",
            "",
        );
        assert_eq!(
            fx.problems(&text),
            ["api.token_file: only applies with api.auth: token (the client secret comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
    }

    #[test]
    fn auth_must_be_token_or_client_credentials() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&yaml("  auth: oauth\n  client_id: C\n", "")),
            ["api.auth \"oauth\": expected token or client_credentials"]
        );
        assert_eq!(
            fx.problems(&yaml("  auth: [token]\n", "")),
            ["api.auth: expected token or client_credentials, found a list"]
        );
    }

    #[test]
    fn the_client_secret_comes_from_the_environment_then_the_file_then_the_credential() {
        let fx = Fixture::new();
        let file = fx.root.join("secret");
        fs::write(&file, "from-file\n").unwrap();
        fs::write(fx.root.join("tallyfy-client-secret"), "from-credential\n").unwrap();
        let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
        let var = ("TALLYFY_CLIENT_SECRET", Path::new("from-env"));
        let token = ("TALLYFY_ACCESS_TOKEN", Path::new("a-token"));
        let with_file = client_api(Some(file));

        let secret = resolve(&with_file, &[token, var, creds]).unwrap();
        assert_eq!(secret.expose(), "from-env");
        let secret = resolve(&with_file, &[token, creds]).unwrap();
        assert_eq!(secret.expose(), "from-file");
        let secret = resolve(&client_api(None), &[token, creds]).unwrap();
        assert_eq!(secret.expose(), "from-credential");
        // The personal access token is no stand-in for the secret.
        let error = resolve(&client_api(None), &[token]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "client secret from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret: none is set"
        );
    }

    #[test]
    fn client_secret_errors_and_debug_never_show_the_secret() {
        let fx = Fixture::new();
        let file = fx.root.join("secret");
        fs::write(&file, "s3cr3t and more\n").unwrap();
        let error = resolve(&client_api(Some(file.clone())), &[]).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "client secret from file {} (api.client_secret_file): contains whitespace or control characters (it must hold the client secret alone)",
                file.display()
            )
        );
        assert!(!format!("{error:?}").contains("s3cr3t"));

        let env = |name: &str| (name == "TALLYFY_CLIENT_SECRET").then(|| OsString::from("s3cr3t"));
        let credentials = Credentials::resolve(&client_api(None), &env).unwrap();
        let debug = format!("{credentials:?}");
        assert!(debug.contains("CLIENT") && debug.contains("<redacted>"));
        assert!(!debug.contains("s3cr3t"));

        let problems = fx.problems(&yaml(
            "  auth: client_credentials\n  client_id: C\n  client_secret: s3cr3t\n",
            "",
        ));
        assert_eq!(
            problems,
            ["api.client_secret: unknown key (the client secret is never read from the config file; it comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
    }

    #[test]
    fn odd_yaml_never_panics() {
        let fx = Fixture::new();
        for text in [
            "",
            "~",
            "42",
            "? [a]\n: b\n",
            "api: !tag {org_id: ORG}\nfolders: [~, [], {}]\n",
            "api:\n  org_id: &a ORG\nfolders: *a\n",
            "a: 1\na: 2\n",
            "---\na: 1\n---\nb: 2\n",
            "api: {org_id: \"\\u0000\"}\nfolders: [{path: \"\\u0000\"}]\n",
            "settle: 99999999999999999999999999y\n",
        ] {
            assert!(fx.parse_env(text, &[]).is_err(), "{text:?}");
        }
    }

    #[test]
    fn log_format_defaults_to_auto_and_takes_each_named_format() {
        let fx = Fixture::new();
        assert_eq!(fx.parse(&minimal()).log.format, LogFormat::Auto);
        for (name, format) in [
            ("auto", LogFormat::Auto),
            ("text", LogFormat::Text),
            ("json", LogFormat::Json),
            ("journald", LogFormat::Journald),
        ] {
            let config = fx.parse(&(minimal() + &format!("log:\n  format: {name}\n")));
            assert_eq!(config.log.format, format, "{name}");
        }
        assert_eq!(
            fx.parse(&(minimal() + "log:\n")).log.format,
            LogFormat::Auto
        );
    }

    #[test]
    fn a_bad_log_format_is_named_with_its_key_path() {
        let fx = Fixture::new();
        assert_eq!(
            fx.problems(&(minimal() + "log:\n  format: xml\n  level: debug\n")),
            [
                "log.format \"xml\": expected auto, text, json or journald",
                "log.level: unknown key (expected one of format)",
            ]
        );
        assert_eq!(
            fx.problems(&(minimal() + "log:\n  format: [json]\n")),
            ["log.format: expected auto, text, json or journald, found a list"]
        );
        assert_eq!(
            fx.problems(&(minimal() + "log: json\n")),
            ["log \"json\": expected a mapping, found a string"]
        );
    }
}
