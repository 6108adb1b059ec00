//! Settings that work but expose something or invite trouble. Receives a loaded config (and
//! the environment's proxy variables); emits one warning per finding, naming the key and what
//! to do, for `check` to print and `run` to log at start. Refusals belong to `config`; these
//! are left to the operator's judgement.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::api;
use crate::config::{Auth, Config};

/// Directories the system keeps its own files in: a folder there uploads them, and with
/// `after: move` or `restore` could change them.
const SYSTEM_DIRECTORIES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/lib",
    "/var/log",
    "/var/cache",
    "/var/spool",
];

pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for (index, folder) in config.folders.iter().enumerate() {
        if let Some(system) = system_directory(&folder.path) {
            warnings.push(format!(
                "folders[{index}].path {}: {system}; every file there would be uploaded to Tallyfy. Point the folder at a directory of its own",
                crate::text::path(&folder.path)
            ));
        }
    }
    let secret_files = match &config.api.auth {
        Auth::Token { token_file } => token_file.as_deref().map(|file| ("api.token_file", file)),
        Auth::ClientCredentials {
            client_secret_file, ..
        } => client_secret_file
            .as_deref()
            .map(|file| ("api.client_secret_file", file)),
    };
    if let Some((key, file)) = secret_files {
        if let Some(mode) = readable_by_others(file) {
            warnings.push(format!(
                "{key} {}: readable by other users (mode {mode:04o}) though it holds a secret; chmod 600 it",
                crate::text::path(file)
            ));
        }
    }
    let proxy_password = config
        .api
        .proxy
        .as_ref()
        .is_some_and(|proxy| proxy.0.password().is_some());
    if proxy_password {
        if let Some(mode) = readable_by_others(&config.file) {
            warnings.push(format!(
                "config file {}: readable by other users (mode {mode:04o}) though api.proxy holds a password; chmod 600 it, or give the proxy in HTTPS_PROXY from a file only the service reads",
                crate::text::path(&config.file)
            ));
        }
    }
    if let Some(listen) = config
        .metrics_listen
        .filter(|listen| !listen.ip().is_loopback())
    {
        warnings.push(format!(
            "metrics.listen {listen}: reachable from other machines, and /metrics names the watched folders; listen on 127.0.0.1 unless a firewall keeps others out"
        ));
    }
    warnings.extend(api::environment_proxy_problems(&config.api));
    warnings
}

/// What makes `path` a system directory, if it is one or lies in one.
fn system_directory(path: &Path) -> Option<String> {
    if path == Path::new("/") {
        return Some("the root directory".to_string());
    }
    SYSTEM_DIRECTORIES
        .iter()
        .find(|system| path.starts_with(system))
        .map(|system| format!("in the system directory {system}"))
}

/// The permission bits of `file` when its group or others may read it.
fn readable_by_others(file: &Path) -> Option<u32> {
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}
