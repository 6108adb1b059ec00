//! The shared set-up: the fake Tallyfy API with a fresh task per participant and scenario, a
//! scratch directory on one file system (so a move into a watched folder is a rename),
//! deterministic files, daemon configs, and polling with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tallyfy_sync::fake::{FakeField, FakeTallyfy, FakeTask, RequestRecord};

pub const ORG: &str = "bench-org";
pub const TOKEN: &str = "bench-token";
const STEP: &str = "step1";
const CHECKLIST: &str = "tpl1";
const CAPTURE: &str = "files";
/// Short, so that latency shows the daemon's own overhead beside it.
pub const SETTLE: Duration = Duration::from_millis(200);
/// The config's default; the ceiling uploads as many files at once.
const DEFAULT_CONCURRENCY: usize = 4;

/// `api.concurrency` for the daemon and the ceiling; BENCH_CONCURRENCY changes it for experiments.
pub fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_CONCURRENCY)
}

pub struct World {
    pub fake: FakeTallyfy,
    dir: tempfile::TempDir,
}

/// A task with one empty file field, fed by one participant in one scenario.
#[derive(Debug, Clone)]
pub struct TaskRef {
    pub run: String,
    pub task: String,
    pub capture: String,
    pub step: String,
    pub checklist: String,
}

impl TaskRef {
    /// The path of the task's GET and PUT, to pick them out of the request log.
    pub fn path(&self) -> String {
        format!("/runs/{}/tasks/{}", self.run, self.task)
    }
}

impl World {
    pub async fn start() -> anyhow::Result<World> {
        let fake = FakeTallyfy::start(ORG, TOKEN)
            .await
            .context("starting the fake Tallyfy API")?;
        // BENCH_KEEP=1 leaves the folders, configs and daemon logs behind for a look.
        let dir = tempfile::Builder::new()
            .prefix("tallyfy-sync-bench-")
            .disable_cleanup(std::env::var_os("BENCH_KEEP").is_some())
            .tempdir()
            .context("creating the scratch directory")?;
        Ok(World { fake, dir })
    }

    /// A new empty directory in the scratch area, by its canonical path (as the daemon sees it).
    pub fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path.canonicalize()?)
    }

    pub fn task(&self, name: &str) -> TaskRef {
        let task = TaskRef {
            run: format!("run-{name}"),
            task: format!("task-{name}"),
            capture: CAPTURE.into(),
            step: STEP.into(),
            checklist: CHECKLIST.into(),
        };
        self.fake.add_task(FakeTask {
            run_id: task.run.clone(),
            task_id: task.task.clone(),
            checklist_id: task.checklist.clone(),
            step_id: task.step.clone(),
            title: format!("Benchmark {name}"),
            status: "active".into(),
            fields: vec![FakeField {
                id: CAPTURE.into(),
                label: "Files".into(),
                field_type: "file".into(),
                value: json!([]),
            }],
        });
        task
    }

    /// How many assets the task's field lists now.
    pub fn attached(&self, task: &TaskRef) -> usize {
        self.fake
            .task_field(&task.run, &task.task, &task.capture)
            .len()
    }

    /// Polls until the task's field lists `count` assets; returns when that was first seen.
    pub async fn wait_attached(
        &self,
        task: &TaskRef,
        count: usize,
        timeout: Duration,
        every: Duration,
    ) -> anyhow::Result<Instant> {
        until(
            &format!("{count} files are attached to {}", task.task),
            timeout,
            every,
            || self.attached(task) >= count,
        )
        .await
    }

    pub fn requests_since(&self, since: Instant) -> Vec<RequestRecord> {
        self.fake
            .requests()
            .into_iter()
            .filter(|request| request.at >= since)
            .collect()
    }

    /// A daemon config mapping each folder to its task, with the benchmark's settle time and
    /// concurrency; the token comes from the environment.
    pub fn write_config(
        &self,
        name: &str,
        folders: &[(PathBuf, TaskRef)],
    ) -> anyhow::Result<PathBuf> {
        self.write_config_with(name, folders, "")
    }

    /// Like `write_config`, with `api_extra` (indented lines) added to the `api` section.
    pub fn write_config_with(
        &self,
        name: &str,
        folders: &[(PathBuf, TaskRef)],
        api_extra: &str,
    ) -> anyhow::Result<PathBuf> {
        let mut yaml = format!(
            "api:\n  base_url: {}\n  org_id: {ORG}\n  concurrency: {}\n{api_extra}\
             state_dir: {}\nsettle: {}ms\nfolders:\n",
            self.fake.base_url(),
            concurrency(),
            self.dir(&format!("{name}-state"))?.display(),
            SETTLE.as_millis(),
        );
        for (path, task) in folders {
            yaml.push_str(&format!(
                "  - path: {}\n    task:\n      run_id: {}\n      task_id: {}\n      capture_id: {}\n",
                path.display(),
                task.run,
                task.task,
                task.capture
            ));
        }
        let config = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, yaml)?;
        Ok(config)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Request counts by method, e.g. "3 GET, 1000 POST, 12 PUT".
pub fn by_method(requests: &[RequestRecord]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for request in requests {
        *counts.entry(request.method.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(method, count)| format!("{count} {method}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn count(requests: &[RequestRecord], method: &str) -> usize {
    requests.iter().filter(|r| r.method == method).count()
}

/// Seconds from the first upload's arrival to the first PUT of the task after it, as the server
/// saw them: the time to move the file and read the field, without settling or watching.
pub fn upload_secs(requests: &[RequestRecord], task: &TaskRef) -> Option<f64> {
    let post = requests
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/file"))?;
    let put = requests
        .iter()
        .find(|r| r.method == "PUT" && r.path.ends_with(&task.path()) && r.at >= post.at)?;
    Some(put.at.duration_since(post.at).as_secs_f64())
}

/// Polls `done` every `every` until it holds; fails after `timeout`.
pub async fn until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("gave up after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A small fast generator, so every run writes the same sizes and bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Writes `count` files of `min..=max` bytes named `{prefix}-{i:06}.pdf` into `dir`.
pub fn write_files(
    dir: &Path,
    prefix: &str,
    count: usize,
    (min, max): (usize, usize),
    seed: u64,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let len = min + (rng.next() as usize) % (max - min + 1);
            let path = dir.join(format!("{prefix}-{i:06}.pdf"));
            std::fs::write(&path, rng.bytes(len))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// Writes one file of `size` bytes in 1 MiB pieces.
pub fn write_big(dir: &Path, name: &str, size: u64, seed: u64) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut rng = Rng::new(seed);
    let mut left = size as usize;
    while left > 0 {
        let piece = left.min(1 << 20);
        file.write_all(&rng.bytes(piece))?;
        left -= piece;
    }
    file.flush()?;
    Ok(path)
}

/// Moves each staged file into `dir` (a rename on the same file system); returns the new paths.
pub fn move_into(staged: &[PathBuf], dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    staged
        .iter()
        .map(|from| {
            let to = dir.join(from.file_name().context("staged file without a name")?);
            std::fs::rename(from, &to)
                .with_context(|| format!("moving {} into {}", from.display(), dir.display()))?;
            Ok(to)
        })
        .collect()
}
