//! The scenarios where requests are not free: a burst under `api.rate_limit`, a burst with
//! 50 ms of server latency (beside the ceiling under the same latency), and small bursts under
//! a mix of scattered errors. Each runs its own daemon; request counts come from the fake's
//! log and do not depend on the machine's load, timings do.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tallyfy_sync::fake::{Fault, FaultKind, RequestRecord};

use crate::ceiling::Ceiling;
use crate::child::Daemon;
use crate::scenario::{self, Burst};
use crate::world::{write_files, World, SETTLE};
use crate::SMALL;

/// Requests per minute of the rate-limited burst: the issue's measure.
pub const RATE_PER_MINUTE: u32 = 600;
pub const LATENCY: Duration = Duration::from_millis(50);
/// The fault mix: shares of all requests answered 503, 429 (no Retry-After) and dropped.
pub const MIX: [(f64, &str); 3] = [(0.20, "503"), (0.10, "429"), (0.05, "dropped")];
/// Longest a small burst under the fault mix may take.
const MIX_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Sizes {
    pub rate_limited: usize,
    pub latency_burst: usize,
    pub mix_files: usize,
    pub mix_runs: usize,
}

pub struct RateLimited {
    pub burst: Burst,
    /// Settling, then N uploads plus one GET and one PUT at the limit's pace.
    pub ideal_secs: f64,
}

impl RateLimited {
    pub fn per_file(&self) -> f64 {
        per_file(&self.burst.requests, self.burst.files)
    }

    pub fn of_ideal(&self) -> f64 {
        self.burst.secs / self.ideal_secs
    }
}

pub struct Latent {
    pub daemon: Burst,
    pub ceiling: Burst,
}

/// One small burst under the fault mix.
pub struct MixRun {
    pub secs: f64,
    pub requests: usize,
}

pub fn per_file(requests: &[RequestRecord], files: usize) -> f64 {
    requests.len() as f64 / files as f64
}

pub async fn rate_limited(world: &World, files: usize) -> anyhow::Result<RateLimited> {
    let (dir, task) = (world.dir("rate-limited")?, world.task("rate-limited"));
    let config = world.write_config_with(
        "rate-limited",
        &[(dir.clone(), task.clone())],
        &format!("  rate_limit: {RATE_PER_MINUTE}/min\n"),
    )?;
    let mut daemon = Daemon::spawn(&config, world.path(), "rate-limited")?;
    daemon.wait_ready(1).await?;
    let staging = world.dir("staging-rate-limited")?;
    let staged = write_files(&staging, "rate-limited", files, SMALL, 4)?;
    // Let the bucket fill after the target check, as it would before any real burst.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst = scenario::burst(world, &staged, &dir, &task, &|| daemon.cpu()).await?;
    daemon.stop().await?;
    let interval = 60.0 / f64::from(RATE_PER_MINUTE);
    Ok(RateLimited {
        ideal_secs: SETTLE.as_secs_f64() + (files + 2) as f64 * interval,
        burst,
    })
}

pub async fn latent(world: &World, files: usize) -> anyhow::Result<Latent> {
    let (dir, task) = (world.dir("latent")?, world.task("latent"));
    let config = world.write_config("latent", &[(dir.clone(), task.clone())])?;
    let mut daemon = Daemon::spawn(&config, world.path(), "latent")?;
    daemon.wait_ready(1).await?;
    let staging = world.dir("staging-latent")?;
    world
        .fake
        .inject(Fault::once("", "", FaultKind::Latency(LATENCY)).share(1.0));
    let staged = write_files(&staging, "latent", files, SMALL, 5)?;
    let both = async {
        let measured = scenario::burst(world, &staged, &dir, &task, &|| daemon.cpu()).await?;
        let files = world.dir("ceiling-latent-files")?;
        let staged = write_files(&files, "ceiling-latent", staged.len(), SMALL, 5)?;
        let ceiling = Ceiling::new(world)?
            .burst(world, &staged, &world.task("ceiling-latent"))
            .await?;
        anyhow::Ok(Latent {
            daemon: measured,
            ceiling,
        })
    }
    .await;
    world.fake.clear_faults();
    daemon.stop().await?;
    both
}

pub async fn fault_mix(world: &World, files: usize, runs: usize) -> anyhow::Result<Vec<MixRun>> {
    let folders: Vec<(PathBuf, crate::world::TaskRef)> = (0..runs)
        .map(|run| {
            let name = format!("mix-{run}");
            Ok((world.dir(&name)?, world.task(&name)))
        })
        .collect::<anyhow::Result<_>>()?;
    let config = world.write_config("mix", &folders)?;
    let mut daemon = Daemon::spawn(&config, world.path(), "mix")?;
    daemon.wait_ready(runs).await?;
    let staging = world.dir("staging-mix")?;
    let status = |status: u16| FaultKind::Status {
        status,
        body: r#"{"error": true, "message": "try later"}"#.into(),
        retry_after: None,
    };
    for (share, kind) in MIX {
        let kind = match kind {
            "503" => status(503),
            "429" => status(429),
            _ => FaultKind::DropBeforeAct,
        };
        world.fake.inject(Fault::once("", "", kind).share(share));
    }
    let mut measured = Vec::with_capacity(runs);
    for (run, (dir, task)) in folders.iter().enumerate() {
        let staged = write_files(
            &staging,
            &format!("mix-{run}"),
            files,
            SMALL,
            6 + run as u64,
        )?;
        let start = Instant::now();
        crate::world::move_into(&staged, dir)?;
        let done = world
            .wait_attached(task, files, MIX_TIMEOUT, Duration::from_millis(5))
            .await
            .inspect_err(|_| world.fake.clear_faults())?;
        measured.push(MixRun {
            secs: done.duration_since(start).as_secs_f64(),
            requests: world.requests_since(start).len(),
        });
        // The next run starts from a calm daemon, not inside the last one's pause.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    world.fake.clear_faults();
    daemon.stop().await?;
    Ok(measured)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}
