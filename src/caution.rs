//! Settings that work but expose something or invite trouble. Receives a loaded config (and
//! the environment's proxy variables); emits one warning per finding, naming the key and what
//! to do, for `check` to print and `run` to log at start. Refusals belong to `config`; these
//! are left to the operator's judgement.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
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

/// The service's own group, which the README has own the config (mode 0640).
const SERVICE_GROUP: &str = "tallyfy-sync";

/// The permission bits of `file` when a user other than the daemon's may read it: anyone
/// (others), or a group that is neither the process's own nor the service's.
fn readable_by_others(file: &Path) -> Option<u32> {
    let metadata = std::fs::metadata(file).ok()?;
    let mode = metadata.permissions().mode() & 0o7777;
    let own_group = || {
        std::fs::metadata("/proc/self").is_ok_and(|me| me.gid() == metadata.gid())
            || group_id(SERVICE_GROUP) == Some(metadata.gid())
    };
    (mode & 0o004 != 0 || (mode & 0o040 != 0 && !own_group())).then_some(mode)
}

/// The id of the group `name` in /etc/group.
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}
