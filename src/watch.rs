//! Watches the configured folders with notify, and says which folders must be polled instead.
//! Emits `Hint`s (a path that may have changed, or a request to rescan) into a bounded channel
//! and never blocks the notify thread: when the channel is full it raises the overflow flag and
//! the settle stage rescans instead. Events are only hints; the rescan is the safety net.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::config::{Folder, WatchMode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something happened at this path (a file or a directory; it may be gone).
    Path(PathBuf),
    /// Events were lost: compare every folder with the store.
    RescanAll,
    /// The store changed under the folders (files it could not record meanwhile, a `retry`,
    /// a `release-deletes`): compare every folder with the store, quietly.
    Resync,
}

/// Keeps the watches alive; dropping it stops them.
pub struct Watch {
    watcher: Option<notify::RecommendedWatcher>,
}

/// Starts the watcher with no folders yet; without one (say inotify is unavailable) every
/// folder is polled.
pub fn start(hints: mpsc::Sender<Hint>, overflow: Arc<AtomicBool>) -> Watch {
    let handler = move |result: notify::Result<notify::Event>| {
        let event = match result {
            Ok(event) => event,
            Err(error) => {
                warn!(%error, "file watcher error; rescanning the folders");
                forward(&hints, &overflow, Hint::RescanAll);
                return;
            }
        };
        if event.need_rescan() {
            forward(&hints, &overflow, Hint::RescanAll);
            return;
        }
        // Opening a file to read it says nothing about its content.
        if matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        {
            return;
        }
        for path in event.paths {
            forward(&hints, &overflow, Hint::Path(path));
        }
    };
    let config = notify::Config::default().with_follow_symlinks(false);
    match notify::RecommendedWatcher::new(handler, config) {
        Ok(watcher) => Watch {
            watcher: Some(watcher),
        },
        Err(error) => {
            error!(%error, "cannot start the file watcher; every folder is polled instead");
            Watch { watcher: None }
        }
    }
}

impl Watch {
    /// Watches a folder (again: a watch on a folder that was removed and came back is dead).
    /// The error says why not and what to do.
    pub fn add(&mut self, folder: &Folder) -> Result<(), String> {
        let Some(watcher) = self.watcher.as_mut() else {
            return Err("the file watcher is not running".into());
        };
        let _ = watcher.unwatch(&folder.path);
        let mode = if folder.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let watched = watcher.watch(&folder.path, mode);
        if watched.is_err() {
            // A recursive watch that ran out of the limit half-way keeps the watches it got on
            // the folder's first subdirectories: the folder is polled instead, so give them back
            // to the user's budget rather than hold them for nothing.
            let _ = watcher.unwatch(&folder.path);
        }
        watched.map_err(|error| {
            let raise = "raise the limit with `sysctl fs.inotify.max_user_watches=524288` (and in /etc/sysctl.d/ to keep it)";
            match error.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    format!("the inotify watch limit is reached: {raise}")
                }
                notify::ErrorKind::Io(ref io) if io.raw_os_error() == Some(libc::ENOSPC) => {
                    format!("the inotify watch limit is reached ({io}): {raise}")
                }
                _ => error.to_string(),
            }
        })
    }
}

/// Whether a folder is polled, and why: configured so, or on a filesystem whose changes
/// inotify cannot see (those made by other machines on a network share, or inside FUSE).
pub fn poll_interval(folder: &Folder) -> Option<(Duration, String)> {
    match folder.watch {
        WatchMode::Poll { interval } => Some((interval, "as configured".into())),
        WatchMode::Inotify => None,
        WatchMode::Auto => remote_filesystem(&folder.path).map(|kind| {
            (
                AUTO_POLL_INTERVAL,
                format!("it is on {kind}, where inotify misses changes made elsewhere (set `watch: inotify` to override)"),
            )
        }),
    }
}

/// Folders on network or FUSE filesystems found without `poll:` are polled this often.
pub const AUTO_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// The kind of network or FUSE filesystem `path` is on, if it is on one.
fn remote_filesystem(path: &Path) -> Option<&'static str> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a valid C string and `stat` is a properly sized out-buffer.
    if unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let kind = unsafe { stat.assume_init() }.f_type as u64;
    Some(match kind {
        0x6969 => "NFS",
        0x517b => "SMB",
        0xff53_4d42 => "CIFS",
        0xfe53_4d42 => "SMB2",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9P",
        0x00c3_6400 => "CephFS",
        0x5346_414f => "AFS",
        0x7375_7245 => "Coda",
        0x0bd0_0bd0 => "Lustre",
        0x4750_4653 => "GPFS",
        _ => return None,
    })
}

fn forward(hints: &mpsc::Sender<Hint>, overflow: &AtomicBool, hint: Hint) {
    if hints.try_send(hint).is_err() {
        overflow.store(true, Ordering::Release);
    }
}
