//! What the one-shot commands (`status`, `retry`, `release-deletes`, `check --online`,
//! `restore`, `verify`, the demo) share: the runtime each runs its async work on, and a request
//! to the running daemon that falls back to the store when none runs. Sits below the command
//! line and the commands, so that they need not import each other.

use tokio::runtime::Runtime;

use crate::config::Config;
use crate::control::{self, Answer, ControlError, Request};
use crate::store::Store;

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
