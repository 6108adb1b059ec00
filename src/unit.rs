//! What the installed systemd unit says about the credentials it hands the daemon: receives a
//! credential name, emits the file its `LoadCredential=` reads (after drop-ins), so a command
//! run by hand, outside the service, finds the secret the service would get. Owns the unit
//! search path (`$SYSTEMD_UNIT_PATH`, as systemctl reads it).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

pub const UNIT: &str = "tallyfy-sync.service";

/// systemd's system unit directories, most important first.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// A credential the unit loads from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedCredential {
    /// The file systemd copies into `$CREDENTIALS_DIRECTORY`.
    pub source: PathBuf,
    /// The unit file or drop-in that says so.
    pub declared_in: PathBuf,
}

/// The file `LoadCredential=name:FILE` names in the installed unit, with drop-ins applied
/// (a later one overrides; an empty `LoadCredential=` clears those before it). None when no
/// unit is installed, or it loads no such credential from an absolute path.
pub fn load_credential(
    name: &str,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<LoadedCredential> {
    let dirs = search_path(env);
    let unit = dirs
        .iter()
        .map(|dir| dir.join(UNIT))
        .find(|file| file.is_file())?;
    // Drop-ins by file name, the one in the most important directory winning, applied in
    // name order after the unit, as systemd does.
    let mut drop_ins = BTreeMap::new();
    for dir in dirs.iter().rev() {
        let Ok(entries) = fs::read_dir(dir.join(format!("{UNIT}.d"))) else {
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            if Path::new(&file_name)
                .extension()
                .is_some_and(|ext| ext == "conf")
            {
                drop_ins.insert(file_name, entry.path());
            }
        }
    }
    let mut found = None;
    for file in std::iter::once(unit).chain(drop_ins.into_values()) {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let mut in_service = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_service = line == "[Service]";
                continue;
            }
            let Some(value) = line.strip_prefix("LoadCredential=").filter(|_| in_service) else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                found = None;
            } else if let Some((id, source)) = value.split_once(':') {
                if id == name && source.starts_with('/') {
                    found = Some(LoadedCredential {
                        source: PathBuf::from(source),
                        declared_in: file.clone(),
                    });
                }
            }
        }
    }
    found
}

/// `$SYSTEMD_UNIT_PATH` (colon-separated; an empty entry stands for the default directories)
/// or the default directories.
fn search_path(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let defaults = || UNIT_DIRS.iter().map(PathBuf::from);
    let Some(path) = env("SYSTEMD_UNIT_PATH") else {
        return defaults().collect();
    };
    let mut dirs = Vec::new();
    for entry in std::env::split_paths(&path) {
        if entry.as_os_str().is_empty() {
            dirs.extend(defaults());
        } else {
            dirs.push(entry);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Units {
        dir: tempfile::TempDir,
    }

    impl Units {
        fn new() -> Units {
            Units {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, path: &str, text: &str) -> PathBuf {
            let file = self.dir.path().join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, text).unwrap();
            file
        }

        fn find(&self, name: &str) -> Option<LoadedCredential> {
            let path = format!(
                "{}:{}",
                self.dir.path().join("etc").display(),
                self.dir.path().join("lib").display()
            );
            load_credential(name, &|key| {
                (key == "SYSTEMD_UNIT_PATH").then(|| OsString::from(&path))
            })
        }
    }

    #[test]
    fn the_unit_names_the_file_of_each_credential() {
        let units = Units::new();
        assert_eq!(units.find("tallyfy-token"), None);
        let unit = units.write(
            "lib/tallyfy-sync.service",
            "[Unit]\nLoadCredential=tallyfy-token:/not/in/service\n[Service]\nUser=x\n\
             LoadCredential=tallyfy-token:/etc/tallyfy-sync/token\n",
        );
        assert_eq!(
            units.find("tallyfy-token"),
            Some(LoadedCredential {
                source: PathBuf::from("/etc/tallyfy-sync/token"),
                declared_in: unit,
            })
        );
        assert_eq!(units.find("tallyfy-client-secret"), None);
    }

    #[test]
    fn drop_ins_override_and_clear_the_units_credentials() {
        let units = Units::new();
        units.write(
            "lib/tallyfy-sync.service",
            "[Service]\nLoadCredential=tallyfy-token:/etc/tallyfy-sync/token\n",
        );
        // Masked by the file of the same name in the more important directory.
        units.write(
            "lib/tallyfy-sync.service.d/secret.conf",
            "[Service]\nLoadCredential=tallyfy-client-secret:/lib/secret\n",
        );
        let drop_in = units.write(
            "etc/tallyfy-sync.service.d/secret.conf",
            "[Service]\nLoadCredential=\nLoadCredential=tallyfy-client-secret:/etc/secret\n",
        );
        assert_eq!(units.find("tallyfy-token"), None);
        assert_eq!(
            units.find("tallyfy-client-secret"),
            Some(LoadedCredential {
                source: PathBuf::from("/etc/secret"),
                declared_in: drop_in,
            })
        );
    }
}
