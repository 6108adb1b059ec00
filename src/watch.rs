//! Watches the configured folders with notify.
//! Emits `Hint`s (a path that may have changed, or a request to rescan) into a bounded channel
//! and never blocks the notify thread: when the channel is full it raises the overflow flag and
//! the settle stage rescans instead. Events are only hints; the rescan is the safety net.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::config::Folder;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// Something happened at this path (a file or a directory; it may be gone).
    Path(PathBuf),
    /// Events were lost: compare every folder with the store.
    RescanAll,
}

/// Keeps the watches alive; dropping it stops them.
pub struct Watch {
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Starts watching; a folder that cannot be watched is logged and left to the periodic rescan.
pub fn start(folders: &[Folder], hints: mpsc::Sender<Hint>, overflow: Arc<AtomicBool>) -> Watch {
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
    let mut watcher = match notify::RecommendedWatcher::new(handler, config) {
        Ok(watcher) => watcher,
        Err(error) => {
            error!(%error, "cannot start the file watcher; changes are found by the periodic rescan only");
            return Watch { _watcher: None };
        }
    };
    for folder in folders {
        let mode = if folder.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(error) = watcher.watch(&folder.path, mode) {
            let hint = match error.kind {
                notify::ErrorKind::MaxFilesWatch => {
                    " (the inotify watch limit is reached: raise it with `sysctl fs.inotify.max_user_watches=524288`)"
                }
                _ => "",
            };
            error!(folder = %folder.path.display(), %error, "cannot watch folder{hint}; its changes are found by the periodic rescan only");
        }
    }
    Watch {
        _watcher: Some(watcher),
    }
}

fn forward(hints: &mpsc::Sender<Hint>, overflow: &AtomicBool, hint: Hint) {
    if hints.try_send(hint).is_err() {
        overflow.store(true, Ordering::Release);
    }
}
