//! Start-up with many files already synced: the files are written to disk and their records put
//! in the state store through the library (`Store::put`, state Synced, meta read from the file),
//! as a daemon that had uploaded them would have left it. Then the real daemon starts on it.
//!
//! "Scan done" is the daemon's "initial scan done" log line; also measured, and used for builds
//! without that line, is when its CPU time stops growing (no tick for `QUIET`) after it logged
//! that the initial scan started: the scan is the only work there is, and it sends nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tallyfy_sync::config::Config;
use tallyfy_sync::store::{now_unix, Asset, FileMeta, FileRecord, FileState, Store};

use crate::child::{Daemon, Startup};
use crate::procfs::status_kib;
use crate::timeline;
use crate::world::{by_method, count, until, Rng, World};

const QUIET: Duration = Duration::from_millis(500);
/// The daemon's log line at the end of its first scan (builds without it fall back on `QUIET`).
const SCAN_DONE: &str = "initial scan done";
/// After the scan, before the memory is read: what the daemon holds when it has nothing to do.
const REST: Duration = Duration::from_secs(2);

pub struct Restart {
    pub files: usize,
    pub populate_secs: f64,
    pub startup: Startup,
    /// Spawn → the scan's last CPU tick.
    pub scan_quiet: Duration,
    /// Spawn → the daemon's "initial scan done" log line, when it writes one.
    pub scan_logged: Option<Duration>,
    pub requests: String,
    pub total_requests: usize,
    pub uploads: usize,
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub hwm_kib: u64,
    pub notifications: Vec<(Duration, String)>,
}

pub async fn run(
    world: &World,
    name: &str,
    files: usize,
    folders: usize,
) -> anyhow::Result<Restart> {
    let mapping = (0..folders)
        .map(|index| {
            let id = format!("{name}-{index}");
            Ok((world.dir(&id)?, world.task(&id)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config_path = world.write_config(name, &mapping)?;
    let config = Config::load(&config_path)?;
    let start = Instant::now();
    populate(&config, files).await?;
    let populate_secs = start.elapsed().as_secs_f64();

    let mut daemon = Daemon::spawn(&config_path, world.path(), name)?;
    let mut startup = daemon.wait_ready(folders).await?;
    let scan_quiet = quiet(&daemon).await?;
    startup.notified = daemon.notified();
    let scan_logged = timeline::logged_at(&daemon.log(), SCAN_DONE, daemon.started_at);
    tokio::time::sleep(REST).await;
    let requests = world.requests_since(daemon.started);
    let result = Restart {
        files,
        populate_secs,
        startup,
        scan_quiet,
        scan_logged,
        requests: by_method(&requests),
        total_requests: requests.len(),
        uploads: count(&requests, "POST"),
        rss_kib: daemon.rss_kib(),
        anon_kib: status_kib(daemon.pid, "RssAnon").unwrap_or_default(),
        file_kib: status_kib(daemon.pid, "RssFile").unwrap_or_default(),
        hwm_kib: status_kib(daemon.pid, "VmHWM").unwrap_or_default(),
        notifications: daemon.notifications(),
    };
    daemon.stop().await?;
    Ok(result)
}

/// Waits until the daemon has used no CPU for `QUIET`; returns when it last did, since the spawn.
async fn quiet(daemon: &Daemon) -> anyhow::Result<Duration> {
    let mut last = daemon.cpu();
    let mut changed = Instant::now();
    until(
        "the daemon goes quiet after its scan",
        Duration::from_secs(300),
        Duration::from_millis(5),
        || {
            let now = daemon.cpu();
            if now != last {
                last = now;
                changed = Instant::now();
            }
            changed.elapsed() >= QUIET
        },
    )
    .await?;
    Ok(changed.duration_since(daemon.started))
}

/// Writes `files` files spread over the config's folders, each recorded as synced.
async fn populate(config: &Config, files: usize) -> anyhow::Result<()> {
    let folders = config.folders.clone();
    let records = tokio::task::spawn_blocking(move || {
        let mut rng = Rng::new(7);
        let mut records = Vec::with_capacity(files);
        for index in 0..files {
            let folder = &folders[index % folders.len()];
            let name = format!("kept-{index:07}.pdf");
            let path = folder.path.join(&name);
            let len = 512 + (rng.next() as usize) % 1536;
            let content = rng.bytes(len);
            std::fs::write(&path, &content)?;
            let record = FileRecord {
                folder: folder.path.clone(),
                target: folder.target.key(),
                meta: FileMeta::of(&std::fs::symlink_metadata(&path)?),
                hash: Some(blake3::hash(&content).to_hex().to_string()),
                attached: Some(Asset(json!({
                    "id": format!("kept-{index}"),
                    "filename": name,
                    "version": 1,
                }))),
                state: FileState::Synced,
                updated: now_unix(),
                attempts: 1,
            };
            records.push((path, record));
        }
        anyhow::Ok(records)
    })
    .await??;
    let store = Store::open(&config.state_dir)?;
    // Concurrent puts share flushes, so this takes seconds rather than one flush per record.
    futures_util::stream::iter(records)
        .map(|(path, record): (PathBuf, FileRecord)| {
            let store = store.clone();
            async move { store.put(&path, &record).await }
        })
        .buffer_unordered(512)
        .try_collect::<()>()
        .await?;
    store.flush().await?;
    Ok(())
}

impl Restart {
    /// Spawn → scan done: the daemon's own log line when there is one, else its CPU going quiet.
    pub fn scan_done(&self) -> Duration {
        self.scan_logged.unwrap_or(self.scan_quiet)
    }
}
