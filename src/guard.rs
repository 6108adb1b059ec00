//! Decides whether a folder's local deletes may become remote deletes.
//! Receives folder scans from `settle`; answers "pause this folder" (its root vanished, cannot
//! be read, or now lies on another filesystem: an unmounted share) or "hold these deletes"
//! (one scan would delete more than `max_delete` of the folder's synced files). Owns each
//! folder's recorded device and hold, saved in the store so that a restart keeps them.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::config::{Config, Folder, MAX_DELETE_MIN_FILES};
use crate::metrics::METRICS;
use crate::store::{now_unix, Store, StoreError};

/// Deletes a folder holds until `release-deletes`, as saved in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// Files gone from the folder whose remote copies are kept for now.
    pub count: usize,
    /// Of this many synced files.
    pub synced: usize,
    /// Unix seconds when the hold began.
    pub since: u64,
}

fn device_key(folder: &Path) -> String {
    format!("device:{}", folder.display())
}

pub fn held_key(folder: &Path) -> String {
    format!("held:{}", folder.display())
}

pub fn paused_key(folder: &Path) -> String {
    format!("paused:{}", folder.display())
}

pub fn release_key(folder: &Path) -> String {
    format!("release:{}", folder.display())
}

/// Lets a folder's held deletes go at its next check (the command `release-deletes`).
pub async fn release(store: &Store, folder: &Path) -> Result<(), StoreError> {
    store.set_meta(&release_key(folder), Some(&true)).await
}

/// The device a folder's root was first seen on, as saved in the store.
pub fn recorded_device(store: &Store, folder: &Path) -> Option<u64> {
    store.meta(&device_key(folder)).ok().flatten()
}

/// Whether `release-deletes` asked to let the folder's held deletes go.
pub fn is_released(store: &Store, folder: &Path) -> bool {
    store.meta::<bool>(&release_key(folder)).ok().flatten() == Some(true)
}

/// Why a folder whose root is missing cannot sync: at boot a share mounted later is the usual cause.
pub const NOT_THERE: &str = "not there (not mounted?)";

/// What is wrong with a folder (or a directory in it) that cannot be listed.
pub fn unreadable(dir: &Path, error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::NotFound {
        NOT_THERE.to_string()
    } else {
        format!("cannot read {}: {error}", dir.display())
    }
}

/// Why a folder must pause, from its root as a scan found it (`Err`: unreadable) and the
/// device it was first seen on (`None`: never seen, so anything goes); `None` when it may sync.
pub fn root_problem(known: Option<u64>, device: &Result<u64, String>) -> Option<String> {
    match (device, known) {
        (Err(problem), _) => Some(problem.clone()),
        (Ok(_), None) => None,
        (Ok(device), Some(known)) if known == *device => None,
        (Ok(device), Some(known)) => Some(format!(
            "it is now on another filesystem (device {device:#x}, was {known:#x}): was a share unmounted?"
        )),
    }
}

/// Whether one scan finding `vanished` of the folder's `synced` files gone deletes more than
/// `max_delete` lets through, so that the deletes are held (unless `released`).
pub fn holds(folder: &Folder, vanished: usize, synced: usize, released: bool) -> bool {
    let too_many = synced >= MAX_DELETE_MIN_FILES
        && vanished * 100 > synced * usize::from(folder.max_delete_percent);
    too_many && !released && folder.delete_remote
}

struct FolderGuard {
    /// The filesystem the root was on when first seen; a change means it was unmounted or
    /// replaced.
    device: Option<u64>,
    paused: Option<String>,
    held: Option<Held>,
}

pub struct Guard {
    store: Store,
    folders: Vec<(Folder, FolderGuard)>,
}

impl Guard {
    pub fn new(config: &Config, store: Store) -> Guard {
        let folders = config
            .folders
            .iter()
            .map(|folder| {
                let saved = FolderGuard {
                    device: recorded_device(&store, &folder.path),
                    // As the last run left it, so that `status` tells until the first check.
                    paused: store.meta(&paused_key(&folder.path)).ok().flatten(),
                    held: store.meta(&held_key(&folder.path)).ok().flatten(),
                };
                if saved.paused.is_some() {
                    METRICS.folder_paused(true);
                }
                (folder.clone(), saved)
            })
            .collect();
        Guard { store, folders }
    }

    /// Whether `device` is the one the folder's root was seen on (true before the first scan).
    pub fn is_known_device(&self, index: usize, device: Option<u64>) -> bool {
        match (self.folders[index].1.device, device) {
            (None, _) => true,
            (Some(known), Some(device)) => known == device,
            (Some(_), None) => false,
        }
    }

    pub fn is_paused(&self, index: usize) -> bool {
        self.folders[index].1.paused.is_some()
    }

    /// Checks a folder's root as a scan found it (`Err`: the scan could not read it); says
    /// whether the folder may be synced. Logs when a folder pauses or resumes.
    pub async fn check_root(&mut self, index: usize, device: Result<u64, String>) -> bool {
        let (folder, state) = &mut self.folders[index];
        let problem = root_problem(state.device, &device);
        if let (None, Ok(device)) = (state.device, device) {
            state.device = Some(device);
            if let Err(error) = self
                .store
                .set_meta(&device_key(&folder.path), Some(&device))
                .await
            {
                warn!(folder = %folder.path.display(), %error, "cannot save the folder's device");
            }
        }
        let was = state.paused.take();
        let open = problem.is_none();
        if problem.is_some() != was.is_some() {
            METRICS.folder_paused(problem.is_some());
        }
        if problem != was {
            match &problem {
                Some(problem) => {
                    error!(folder = %folder.path.display(), "folder paused: {problem}; nothing in it is uploaded or deleted until it is back (checked every few seconds)")
                }
                None => info!(folder = %folder.path.display(), "folder is back; syncing it again"),
            }
            if let Err(error) = self
                .store
                .set_meta(&paused_key(&folder.path), problem.as_ref())
                .await
            {
                warn!(folder = %folder.path.display(), %error, "cannot save whether the folder is paused");
            }
        }
        state.paused = problem;
        open
    }

    /// Whether `vanished` of the folder's `synced` files may be deleted remotely now.
    pub async fn allow_deletes(&mut self, index: usize, vanished: usize, synced: usize) -> bool {
        let (folder, state) = &mut self.folders[index];
        let release = release_key(&folder.path);
        let released = is_released(&self.store, &folder.path);
        let hold = holds(folder, vanished, synced, released);
        let saved = if hold {
            if state.held.as_ref().map(|held| held.count) == Some(vanished) {
                return false;
            }
            error!(
                folder = %folder.path.display(),
                held = vanished,
                synced,
                "{vanished} of {synced} synced files are gone from the folder at once, more than max_delete ({}%); their remote copies are kept and nothing is deleted until you run `tallyfy-sync release-deletes {}`",
                folder.max_delete_percent,
                folder.path.display()
            );
            let held = Held {
                count: vanished,
                synced,
                since: state.held.as_ref().map_or_else(now_unix, |held| held.since),
            };
            state.held = Some(held.clone());
            self.store
                .set_meta(&held_key(&folder.path), Some(&held))
                .await
        } else if state.held.take().is_some() {
            if released {
                warn!(folder = %folder.path.display(), deletes = vanished, "releasing the held deletes as asked");
                let _ = self.store.set_meta::<bool>(&release, None).await;
            }
            self.store
                .set_meta::<Held>(&held_key(&folder.path), None)
                .await
        } else if released {
            self.store.set_meta::<bool>(&release, None).await
        } else {
            Ok(())
        };
        if let Err(error) = saved {
            warn!(folder = %folder.path.display(), %error, "cannot save the state of held deletes");
        }
        !hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_on_another_device_or_unreadable_pauses_and_a_first_sighting_does_not() {
        assert_eq!(root_problem(None, &Ok(7)), None);
        assert_eq!(root_problem(Some(7), &Ok(7)), None);
        let moved = root_problem(Some(7), &Ok(8)).unwrap();
        assert!(moved.contains("device 0x8, was 0x7"), "{moved}");
        assert_eq!(
            root_problem(Some(7), &Err("cannot read /f".into())),
            Some("cannot read /f".into())
        );
    }

    #[test]
    fn deletes_are_held_above_max_delete_in_a_folder_of_ten_or_more_unless_released() {
        let folder = &crate::filter::tests::folder(&[]);
        assert!(!holds(folder, 5, 10, false), "exactly half goes");
        assert!(holds(folder, 6, 10, false));
        assert!(!holds(folder, 6, 10, true), "released");
        assert!(!holds(folder, 9, 9, false), "fewer than ten synced files");
        let local_only = Folder {
            delete_remote: false,
            ..folder.clone()
        };
        assert!(!holds(&local_only, 6, 10, false), "nothing remote to hold");
    }
}
