//! What the one-shot commands (`status`, `retry`, `release-deletes`, `check --online`,
//! `run --dry-run`, `restore`, `verify`) share: the runtime each runs its async work on, a
//! request to the running daemon that falls back to the store when none runs, the store as `run`
//! would find it, and an API client that gives up soon. Sits below the command line and the
//! commands, so that they need not import each other.

use tokio::runtime::Runtime;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::api::{ApiError, Client};
use crate::config::{ApiConfig, Config, Credentials};
use crate::control::{self, Answer, ControlError, Request};
use crate::store::{Store, StoreError};

/// Tries per request: one attempt and two retries, which the shared gate spaces about 1 and
/// 2 seconds apart when the API is down.
pub const ATTEMPTS: u32 = 3;

/// A runtime for one command (or for the daemon, which runs as one long command).
pub fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Asks the running daemon, or with none running carries the request out on the store.
pub fn control(config: &Config, request: Request) -> Result<Answer, ControlError> {
    let runtime = runtime().map_err(|error| ControlError::Refused(error.to_string()))?;
    runtime.block_on(async {
        if let Some(answer) = control::ask(config, &request).await? {
            return Ok(answer);
        }
        let store = Store::open(&config.state_dir)?;
        control::act(request, config, &store, false).await
    })
}

/// The state store as `run` would find it: the daemon's, or before the first run an empty
/// one, so that a dry run creates no state directory.
pub fn open_store(config: &Config) -> Result<Store, StoreError> {
    if Store::exists(&config.state_dir) {
        Store::open(&config.state_dir)
    } else {
        Store::empty(&config.state_dir)
    }
}

/// A client for a command that must answer soon: `ATTEMPTS` tries per request. Token renewals
/// run until the guard is dropped.
pub fn client(
    config: &ApiConfig,
    credentials: Credentials,
) -> Result<(Client, DropGuard), ApiError> {
    let cancel = CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let api = Client::new(config, credentials, cancel)?.give_up_after(ATTEMPTS);
    Ok((api, guard))
}
