//! The control socket: how `status`, `retry`, `release-deletes`, `verify` and `reload` reach a
//! running daemon.
//! sled admits one process, so the CLI cannot read the store while the daemon holds it; it
//! sends one JSON request line over `{state_dir}/control.sock` (mode 0600) and reads one JSON
//! answer line. Owns the socket, the protocol, and the actions that work with or without a
//! daemon (on the store directly when none runs).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Folder};
use crate::status::{self, StatusReport};
use crate::store::{Dump, FileRecord, Store, StoreError};
use crate::watch::Hint;
use crate::{guard, recheck};

/// Requests longer than this are refused: the protocol has no use for them.
const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot talk to the daemon over {path}: {error}")]
    Socket {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the daemon answered {path} with something unreadable: {error}")]
    Protocol { path: PathBuf, error: String },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    Status,
    /// Failed files (all, or those at or under `path`) are tried again now.
    Retry {
        path: Option<PathBuf>,
    },
    /// A folder's held deletes may go.
    ReleaseDeletes {
        folder: PathBuf,
    },
    /// The records of the files in `folder`, for `verify`.
    Records {
        folder: PathBuf,
    },
    /// Read the config file again and apply it; answered once it is applied or refused.
    Reload,
    /// Everything in the store, for `run --dry-run`.
    Dump,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    Status(Box<StatusReport>),
    Records {
        records: Vec<(PathBuf, FileRecord)>,
    },
    Done {
        message: String,
    },
    Refused {
        message: String,
    },
    /// The reload is applied; what it changed, one line each (none: nothing changed).
    Reloaded {
        changes: Vec<String>,
    },
    /// The reload was refused and the running configuration stays: why.
    ReloadRefused {
        message: String,
    },
    Dump {
        dump: Dump,
    },
}

impl Answer {
    /// An answer the asker has no use for (a daemon of another version, say), as an error
    /// that names its kind rather than dumping its content.
    pub fn unexpected(&self) -> ControlError {
        let kind = match self {
            Answer::Status(_) => "status",
            Answer::Records { .. } => "records",
            Answer::Done { .. } => "done",
            Answer::Refused { .. } => "refused",
            Answer::Reloaded { .. } => "reloaded",
            Answer::ReloadRefused { .. } => "reload-refused",
            Answer::Dump { .. } => "dump",
        };
        ControlError::Refused(format!(
            "the daemon gave an unexpected answer ({kind}); are it and this command the same version?"
        ))
    }
}

/// What a reload came to, sent back to whoever asked for it.
pub type ReloadReply = oneshot::Sender<Answer>;

pub fn socket_path(config: &Config) -> PathBuf {
    config.state_dir.join("control.sock")
}

/// Serves the socket until shutdown. Only the daemon's user may connect (mode 0600).
pub async fn serve(
    config: Arc<Config>,
    store: Store,
    hints: mpsc::Sender<Hint>,
    reloads: mpsc::Sender<ReloadReply>,
    cancel: CancellationToken,
) {
    let path = socket_path(&config);
    // The store lock is ours, so a socket left here is a dead daemon's.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path).and_then(|listener| {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }) {
        Ok(listener) => listener,
        Err(error) => {
            warn!(socket = %path.display(), %error, "cannot open the control socket; `status`, `retry` and `release-deletes` will not reach this daemon");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "control socket accept failed");
                    continue;
                }
            },
        };
        let (config, store, hints, reloads) = (
            config.clone(),
            store.clone(),
            hints.clone(),
            reloads.clone(),
        );
        // Not tied to `cancel`: a reload's answer comes after the pipeline serving it stopped.
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &config, &store, &hints, &reloads).await {
                warn!(%error, "control request failed");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(
    stream: UnixStream,
    config: &Config,
    store: &Store,
    hints: &mpsc::Sender<Hint>,
    reloads: &mpsc::Sender<ReloadReply>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Request>(&line) {
        Err(error) => Answer::Refused {
            message: format!("unreadable request: {error}"),
        },
        Ok(Request::Reload) => reload(reloads).await,
        Ok(request) => {
            let changes_store = !matches!(
                request,
                Request::Status | Request::Records { .. } | Request::Dump
            );
            match act(request, config, store, true).await {
                Ok(answer) => {
                    // The daemon acts on what changed in the store at its next scan; make it
                    // now. A status request changes nothing and costs no scan.
                    if changes_store {
                        let _ = hints.send(Hint::Resync).await;
                    }
                    answer
                }
                Err(error) => Answer::Refused {
                    message: error.to_string(),
                },
            }
        }
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_default();
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// Hands the request to the daemon's main loop and waits for what became of it.
async fn reload(reloads: &mpsc::Sender<ReloadReply>) -> Answer {
    let (reply, outcome) = oneshot::channel();
    if reloads.send(reply).await.is_err() {
        return Answer::Refused {
            message: "the daemon is stopping".to_string(),
        };
    }
    outcome.await.unwrap_or_else(|_| Answer::Refused {
        message: "the daemon stopped before the reload was done".to_string(),
    })
}

/// Carries out a request on the store: the daemon's own, or, with no daemon, one opened here.
pub async fn act(
    request: Request,
    config: &Config,
    store: &Store,
    daemon_running: bool,
) -> Result<Answer, ControlError> {
    match request {
        Request::Status => Ok(Answer::Status(Box::new(status::build(
            config,
            store,
            daemon_running,
        )?))),
        Request::Retry { path: Some(path) } => {
            let retried = recheck::retry_path(store, &path).await?;
            let shown = crate::text::path(&path);
            let mut message = match (retried.queued, daemon_running) {
                (0, _) => format!("no file under {shown} to send: the daemon knows none that could be (a file not synced yet is sent once it settles)"),
                (n, true) => format!("{n} file(s) under {shown} queued: each is checked against its field in Tallyfy and sent if it is missing there"),
                (n, false) => format!("{n} file(s) under {shown} will be checked against their field in Tallyfy and sent if missing when the daemon starts"),
            };
            if retried.launched > 0 {
                message += &format!(
                    "; {} launched file(s) left alone (each started a process already)",
                    retried.launched
                );
            }
            if retried.gone > 0 {
                message += &format!("; {} file(s) gone locally, nothing to send", retried.gone);
            }
            info!(path = %path.display(), files = retried.queued, "retry requested");
            Ok(Answer::Done { message })
        }
        Request::Retry { path: None } => {
            let count = recheck::retry_failed(store).await?;
            let message = match (count, daemon_running) {
                (0, _) => "no failed files to retry".to_string(),
                (n, true) => format!("{n} failed file(s) queued again"),
                (n, false) => format!("{n} failed file(s) will be retried when the daemon starts"),
            };
            info!(files = count, "retry requested");
            Ok(Answer::Done { message })
        }
        Request::Records { folder } => Ok(Answer::Records {
            records: store
                .records_under(&folder)
                .filter(|record| {
                    record
                        .as_ref()
                        .map_or(true, |(_, record)| record.folder == folder)
                })
                .collect::<Result<_, _>>()?,
        }),
        Request::Dump => Ok(Answer::Dump {
            dump: store.dump()?,
        }),
        Request::Reload => Err(ControlError::Refused(
            "no daemon is running to reload".to_string(),
        )),
        Request::ReleaseDeletes { folder } => {
            let folder = configured_folder(config, &folder)?.path.clone();
            guard::release(store, &folder).await?;
            let message = if daemon_running {
                format!("held deletes of {} released", folder.display())
            } else {
                format!(
                    "held deletes of {} will go when the daemon starts",
                    folder.display()
                )
            };
            info!(folder = %folder.display(), "release of held deletes requested");
            Ok(Answer::Done { message })
        }
    }
}

/// The configured folder `folder` names (as written, or through a link), or an error listing them.
pub fn configured_folder<'a>(
    config: &'a Config,
    folder: &Path,
) -> Result<&'a Folder, ControlError> {
    let wanted = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    config
        .folders
        .iter()
        .find(|configured| configured.path == wanted)
        .ok_or_else(|| {
            let known: Vec<String> = config
                .folders
                .iter()
                .map(|folder| folder.path.display().to_string())
                .collect();
            ControlError::Refused(format!(
                "{} is not a configured folder (configured: {})",
                folder.display(),
                known.join(", ")
            ))
        })
}

/// Sends a request to the running daemon; `Ok(None)` when none is listening.
pub async fn ask(config: &Config, request: &Request) -> Result<Option<Answer>, ControlError> {
    let path = socket_path(config);
    let socket = |error| ControlError::Socket {
        path: path.clone(),
        error,
    };
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        // Only the daemon's user may connect: say so rather than fall back to a locked store.
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(socket(error))
        }
        // No daemon (or no usable state directory, which opening the store then explains).
        Err(_) => return Ok(None),
    };
    let mut text = serde_json::to_string(request).unwrap_or_default();
    text.push('\n');
    stream.write_all(text.as_bytes()).await.map_err(socket)?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(socket)?;
    let answer = serde_json::from_str(&line).map_err(|error| ControlError::Protocol {
        path: path.clone(),
        error: error.to_string(),
    })?;
    Ok(Some(answer))
}
