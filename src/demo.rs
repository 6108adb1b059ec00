//! placeholder
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
pub async fn run(_dir: PathBuf, _cancel: CancellationToken) -> anyhow::Result<()> {
    Ok(())
}
