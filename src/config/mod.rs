//! Configuration: receives the YAML config file (plus the environment, for defaults and the
//! secrets) and emits a validated, typed `Config`, or one error listing every problem by key
//! path and value. It owns the config schema and its defaults, read section by section (`api`,
//! `folder`, `target`) over the key-by-key walk in `raw`, and where the API token or the OAuth
//! client secret comes from (`secret`, `Credentials`); serde_yaml stays in this module.

mod api;
mod folder;
mod raw;
mod secret;
mod target;
#[cfg(test)]
mod tests;

pub use api::{
    ApiConfig, Auth, CaFile, Credentials, Located, ProxyUrl, RateLimit, DEFAULT_BASE_URL,
};
pub use folder::{Folder, RemoteRemoved, WatchMode, MAX_DELETE_MIN_FILES};
pub use secret::{Malformed, Secret};
pub use target::{
    After, Dedupe, Launch, Placeholder, Route, RouteBy, Target, Template, ROUTE_REFRESH,
    ROUTE_REFRESH_CREATING, ROUTE_REFRESH_MIN,
};

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::logging::LogFormat;
use api::api_config;
use folder::{folder, Claimed};
use raw::{
    duration, invalid, kind, list, mapping, path_in, percentage, positive_duration, resolved, Bad,
    Problems, Section,
};

const DEFAULT_STATE_DIR: &str = "/var/lib/tallyfy-sync";
const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(600);
const DEFAULT_ATTACH_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_FAILED_RETRY_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;
// Limits keep a mistyped path (say /dev/zero) from eating all memory.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

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
        Config::load_with(path, Folders::Required)
    }

    /// Like `load`, but `folders` is not read at all (it may be absent, empty or not yet
    /// right): for `targets`, which helps write it.
    pub fn load_api_only(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, Folders::Ignored)
    }

    /// Like `from_yaml`, but `folders` is not read (see `load_api_only`).
    pub fn from_yaml_api_only(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        Config::parse(text, file, env, Folders::Ignored)
    }

    fn load_with(path: &Path, folders: Folders) -> Result<Config, ConfigError> {
        let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path, &|name| std::env::var_os(name), folders)
    }

    /// `log.format` as written in a config file that may be wrong elsewhere, so that the
    /// errors of a config that cannot be used are reported in the format its reader expects;
    /// `None` when the file cannot be read as YAML or names no valid format.
    pub fn log_format_of(path: &Path) -> Option<LogFormat> {
        let text = read_limited(path, MAX_CONFIG_BYTES).ok()?;
        let root = serde_yaml::from_str::<Value>(&text).ok()?;
        LogFormat::parse(root.get("log")?.get("format")?.as_str()?)
    }

    /// `file` anchors relative paths and names the file in messages; `env` is
    /// consulted only for STATE_DIRECTORY.
    pub fn from_yaml(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        Config::parse(text, file, env, Folders::Required)
    }

    fn parse(
        text: &str,
        file: &Path,
        env: &dyn Fn(&str) -> Option<OsString>,
        folders: Folders,
    ) -> Result<Config, ConfigError> {
        let problems = Problems::default();
        let label = file
            .file_name()
            .unwrap_or(file.as_os_str())
            .to_string_lossy();
        let config = match serde_yaml::from_str::<Value>(text) {
            Err(error) => {
                problems.add(syntax_problem(&label, &error, text));
                None
            }
            Ok(Value::Null) => {
                problems.add(format!(
                    "{label}: is empty (it needs at least api.org_id and folders)"
                ));
                None
            }
            Ok(Value::Mapping(map)) => walk(
                Section::new(String::new(), map, &problems),
                file,
                env,
                folders,
            ),
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

fn syntax_problem(label: &str, error: &serde_yaml::Error, text: &str) -> String {
    let message = error.to_string();
    let problem = match error.location() {
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
    };
    match indentation_hint(text, error.location().map(|at| at.line())) {
        Some(hint) => format!("{problem} ({hint})"),
        None => problem,
    }
}

/// The parser's words on a tab or a misplaced indent rarely say so: the likely cause, named
/// with its line. A tab in a line's indentation is the first suspect (editors insert them
/// unseen); short of one, an error on an indented line points at its indentation.
fn indentation_hint(text: &str, line: Option<usize>) -> Option<String> {
    let tabbed = text.lines().position(|line| {
        line.chars()
            .take_while(|c| c.is_whitespace())
            .any(|c| c == '\t')
    });
    if let Some(index) = tabbed {
        return Some(format!(
            "YAML uses spaces, not tabs: line {} is indented with a tab",
            index + 1
        ));
    }
    let line = line?;
    let indented = text
        .lines()
        .nth(line.checked_sub(1)?)
        .is_some_and(|text| text.starts_with(' '));
    indented.then(|| {
        format!(
            "check the indentation of line {line} and the lines above it: YAML uses spaces, not tabs, and the keys of one mapping line up"
        )
    })
}

/// Whether a config must list its folders.
#[derive(Clone, Copy, PartialEq)]
enum Folders {
    Required,
    /// Not read: a command that needs only `api` (and `state_dir`, `log`).
    Ignored,
}

fn walk(
    mut root: Section<'_>,
    file: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
    wanted: Folders,
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
    let folders = match wanted {
        Folders::Required => root.req("folders", |value| match value {
            Value::Sequence(items) if items.is_empty() => invalid("must list at least one folder"),
            _ => list(value),
        }),
        Folders::Ignored => {
            root.known.push("folders");
            root.map.shift_remove("folders");
            Some(Vec::new())
        }
    };
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

fn log_config(mut s: Section<'_>) -> Option<LogConfig> {
    let format = s.opt("format", log_format).unwrap_or_default();
    s.finish();
    Some(LogConfig { format })
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

fn log_format(value: &Value) -> Result<LogFormat, Bad> {
    match value {
        Value::String(name) => LogFormat::parse(name)
            .map_or_else(|| invalid(format!("expected {}", LogFormat::NAMES)), Ok),
        _ => Err(Bad::Type(LogFormat::NAMES)),
    }
}
