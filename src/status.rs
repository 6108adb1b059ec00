//! `tallyfy-sync status`: what the store says about every folder and file.
//! Receives the config and reads the store directly (sled admits one process, so this works
//! only while no daemon runs); emits a per-folder summary and one line per file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::store::{FileRecord, FileState, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the daemon is running and holds the store in {path}; stop it (systemctl stop tallyfy-sync) to read the store, or read the daemon's log with journalctl -u tallyfy-sync")]
    DaemonRunning { path: PathBuf },
    #[error(transparent)]
    Store(StoreError),
}

#[derive(Default)]
struct Counts {
    synced: usize,
    pending: usize,
    rejected: usize,
    failed: usize,
}

pub fn report(config: &Config) -> Result<String, StatusError> {
    let store = Store::open(&config.state_dir).map_err(|error| match error {
        StoreError::Locked { path } => StatusError::DaemonRunning { path },
        other => StatusError::Store(other),
    })?;
    let mut by_folder: BTreeMap<PathBuf, Vec<(PathBuf, FileRecord)>> = BTreeMap::new();
    for record in store.records() {
        let (path, record) = record.map_err(StatusError::Store)?;
        by_folder
            .entry(record.folder.clone())
            .or_default()
            .push((path, record));
    }
    let mut out = String::new();
    let _ = writeln!(out, "state: {}", store.path().display());
    for folder in &config.folders {
        let records = by_folder.remove(&folder.path).unwrap_or_default();
        section(&mut out, &folder.path, &folder.target.to_string(), &records);
    }
    for (folder, records) in by_folder {
        section(&mut out, &folder, "no longer in the config", &records);
    }
    let deletes = store.pending_deletes().map_err(StatusError::Store)?;
    if !deletes.is_empty() {
        let _ = writeln!(out, "\nremote deletes pending: {}", deletes.len());
        for job in deletes {
            let _ = writeln!(
                out,
                "  {}  asset {}",
                job.path.display(),
                job.asset.id().unwrap_or_default()
            );
        }
    }
    Ok(out)
}

fn section(out: &mut String, folder: &Path, target: &str, records: &[(PathBuf, FileRecord)]) {
    let mut counts = Counts::default();
    let mut lines = String::new();
    for (path, record) in records {
        let name = path.strip_prefix(folder).unwrap_or(path).display();
        let asset = record.attached.as_ref().and_then(|a| a.id());
        let (label, detail) = match &record.state {
            FileState::Synced => {
                counts.synced += 1;
                ("synced", format!("asset {}", asset.unwrap_or_default()))
            }
            FileState::Uploading => {
                counts.pending += 1;
                ("pending", "upload not yet confirmed".to_string())
            }
            FileState::Uploaded { asset } => {
                counts.pending += 1;
                (
                    "pending",
                    format!(
                        "uploaded as asset {}, not yet attached",
                        asset.id().unwrap_or_default()
                    ),
                )
            }
            FileState::Rejected { reason } => {
                counts.rejected += 1;
                ("rejected", reason.clone())
            }
            FileState::Failed { error } => {
                counts.failed += 1;
                ("failed", error.clone())
            }
        };
        let _ = writeln!(lines, "  {label:<9} {name}  {detail}");
    }
    let _ = writeln!(
        out,
        "\n{} → {target}\n  {} synced, {} pending, {} rejected, {} failed",
        folder.display(),
        counts.synced,
        counts.pending,
        counts.rejected,
        counts.failed
    );
    out.push_str(&lines);
}
