//! Scale: a folder that already holds N files when the daemon starts (an archive pointed at on
//! day one), for task, kick-off, launch and route folders. For each size the daemon starts on a
//! fresh state directory and field; measured are the time from the spawn until every file is in
//! Tallyfy, the daemon's CPU per file, its peak memory (VmHWM) and its memory once idle again,
//! beside the ceiling (the bare client) uploading the same number of files into a task. A cost
//! per file that grows with the number of files shows as CPU per file rising with N.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tallyfy_sync::fake::{FakeChecklist, FakeField, FakeStep};

use crate::ceiling::Ceiling;
use crate::child::Daemon;
use crate::procfs::status_kib;
use crate::world::{concurrency, count, until, write_files, World, ORG, SETTLE};

/// Sizes of the files already in the folder: 1–4 KB.
const SIZES: (usize, usize) = (1024, 4096);
const TIMEOUT: Duration = Duration::from_secs(1800);
/// Processes a route folder's files are spread over (one subfolder each).
const ROUTE_PROCESSES: usize = 4;
const FIELD: &str = "files";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Kickoff,
    Launch,
    Route,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Task, Kind::Kickoff, Kind::Launch, Kind::Route];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Kickoff => "kick-off",
            Kind::Launch => "launch",
            Kind::Route => "route",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.name() == text || kind.name().replace('-', "") == text)
    }
}

pub struct Plan {
    pub kinds: Vec<Kind>,
    pub sizes: Vec<usize>,
    /// How long the daemon is left alone after the last file before its idle memory is read.
    pub idle: Duration,
}

/// Which kinds and sizes to run: BENCH_SCALE_KINDS (e.g. "task,kickoff") and BENCH_SCALE_SIZES
/// (e.g. "1000,8000") narrow them for before/after runs.
pub fn plan(smoke: bool) -> Plan {
    let kinds = std::env::var("BENCH_SCALE_KINDS")
        .ok()
        .map(|list| list.split(',').filter_map(Kind::parse).collect())
        .unwrap_or_else(|| Kind::ALL.to_vec());
    let sizes = std::env::var("BENCH_SCALE_SIZES")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .unwrap_or_else(|| match smoke {
            true => vec![100, 300],
            false => vec![1_000, 4_000, 8_000, 20_000],
        });
    Plan {
        kinds,
        sizes,
        // Past the 10 s a field's last read value answers reads, after which the daemon lets
        // go of it: what is left is what it keeps while nothing happens.
        idle: Duration::from_secs(
            std::env::var("BENCH_SCALE_IDLE_SECS")
                .ok()
                .and_then(|secs| secs.parse().ok())
                .unwrap_or(if smoke { 1 } else { 15 }),
        ),
    }
}

pub struct Scale {
    pub kind: Kind,
    pub files: usize,
    /// Spawn → the last file in Tallyfy.
    pub secs: f64,
    pub cpu: Duration,
    pub peak_kib: u64,
    pub idle_kib: u64,
    pub puts: usize,
    pub requests: usize,
}

impl Scale {
    pub fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.secs
    }

    pub fn cpu_ms_per_file(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e3 / self.files as f64
    }
}

/// Where the files of one run go, and how many of them Tallyfy holds.
enum Destination {
    Task {
        run: String,
        task: String,
    },
    Kickoff {
        checklist: String,
    },
    Launch {
        checklist: String,
    },
    /// Each process's task: (run, task).
    Route {
        tasks: Vec<(String, String)>,
    },
}

impl Destination {
    fn arrived(&self, world: &World) -> usize {
        match self {
            // Counted without copying: a copy of 20,000 assets every 50 ms, under the fake's
            // lock, slowed the fake's answers and took the daemon's cores.
            Destination::Task { run, task } => world.fake.task_field_len(run, task, FIELD),
            Destination::Kickoff { checklist } => world.fake.kickoff_field_len(checklist, FIELD),
            Destination::Launch { checklist } => world.fake.launched_from(checklist),
            Destination::Route { tasks } => (tasks.iter())
                .map(|(run, task)| world.fake.task_field_len(run, task, FIELD))
                .sum(),
        }
    }
}

/// One daemon start on `files` files already in a `kind` folder.
pub async fn run(world: &World, kind: Kind, files: usize, idle: Duration) -> anyhow::Result<Scale> {
    let name = format!("scale-{}-{files}", kind.name());
    let dir = world.dir(&name)?;
    let (destination, target) = destination(world, kind, &name);
    let subfolders = match &destination {
        Destination::Route { .. } => (0..ROUTE_PROCESSES)
            .map(|index| {
                let sub = dir.join(format!("{name}-{index}"));
                std::fs::create_dir_all(&sub)?;
                Ok(sub)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => vec![dir.clone()],
    };
    let per = files.div_ceil(subfolders.len());
    for (index, sub) in subfolders.iter().enumerate() {
        let count = per.min(files - (index * per).min(files));
        write_files(
            sub,
            &format!("{name}-{index}"),
            count,
            SIZES,
            11 + index as u64,
        )?;
    }
    let config = write_config(world, &name, &dir, &target)?;
    let mut daemon = Daemon::spawn(&config, world.path(), &name)?;
    daemon.wait_ready(1).await?;
    let mut peak = 0;
    let done = until(
        &format!("{files} files of the {} folder are in Tallyfy", kind.name()),
        TIMEOUT,
        Duration::from_millis(50),
        || {
            peak = peak.max(daemon.rss_kib());
            destination.arrived(world) >= files
        },
    )
    .await
    .with_context(|| format!("the daemon's log:\n{}", tail(&daemon.log())))?;
    let cpu = daemon.cpu();
    let secs = done.duration_since(daemon.started).as_secs_f64();
    tokio::time::sleep(idle).await;
    let requests = world.requests_since(daemon.started);
    let result = Scale {
        kind,
        files,
        secs,
        cpu,
        peak_kib: status_kib(daemon.pid, "VmHWM").unwrap_or(peak).max(peak),
        idle_kib: daemon.rss_kib(),
        puts: count(&requests, "PUT"),
        requests: requests.len(),
    };
    daemon.stop().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(result)
}

/// The ceiling uploading `files` files of the same sizes into a task.
pub async fn ceiling(world: &World, files: usize) -> anyhow::Result<f64> {
    let name = format!("scale-ceiling-{files}");
    let dir = world.dir(&name)?;
    let staged = write_files(&dir, &name, files, SIZES, 11)?;
    let burst = Ceiling::new(world)?
        .burst(world, &staged, &world.task(&name))
        .await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(burst.files_per_sec())
}

/// Sets up the field, template or processes a `kind` folder feeds; returns where its files
/// arrive and the folder's target lines for the config.
fn destination(world: &World, kind: Kind, name: &str) -> (Destination, String) {
    let file_field = |id: &str| FakeField {
        id: id.into(),
        label: "Files".into(),
        field_type: "file".into(),
        value: json!([]),
    };
    let template = |id: &str| FakeChecklist {
        id: id.into(),
        title: format!("Benchmark {id}"),
        prerun: vec![file_field(FIELD)],
    };
    match kind {
        Kind::Task => {
            let task = world.task(name);
            let target = format!(
                "    task:\n      run_id: {}\n      task_id: {}\n      capture_id: {}\n",
                task.run, task.task, task.capture
            );
            (
                Destination::Task {
                    run: task.run,
                    task: task.task,
                },
                target,
            )
        }
        Kind::Kickoff | Kind::Launch => {
            let checklist = format!("tpl-{name}");
            world.fake.add_checklist(template(&checklist));
            let (destination, key) = match kind {
                Kind::Kickoff => (
                    Destination::Kickoff {
                        checklist: checklist.clone(),
                    },
                    "kickoff",
                ),
                _ => (
                    Destination::Launch {
                        checklist: checklist.clone(),
                    },
                    "launch",
                ),
            };
            let target =
                format!("    {key}:\n      checklist_id: {checklist}\n      field_id: {FIELD}\n");
            (destination, target)
        }
        Kind::Route => {
            let checklist = format!("tpl-{name}");
            world.fake.add_checklist(FakeChecklist {
                prerun: Vec::new(),
                ..template(&checklist)
            });
            world.fake.add_steps(
                &checklist,
                vec![FakeStep {
                    id: "step-files".into(),
                    title: "Collect files".into(),
                    fields: vec![FakeField {
                        value: Value::Null,
                        ..file_field(FIELD)
                    }],
                }],
            );
            let tasks = (0..ROUTE_PROCESSES)
                .flat_map(|index| {
                    let run = world.fake.start_run(&checklist, &format!("{name}-{index}"));
                    let tasks = world.fake.run_tasks(&run);
                    tasks
                        .into_iter()
                        .map(move |task| (run.clone(), task.task_id))
                })
                .collect();
            let target =
                format!("    route:\n      checklist_id: {checklist}\n      capture_id: {FIELD}\n");
            (Destination::Route { tasks }, target)
        }
    }
}

fn write_config(world: &World, name: &str, dir: &Path, target: &str) -> anyhow::Result<PathBuf> {
    let yaml = format!(
        "api:\n  base_url: {}\n  org_id: {ORG}\n  concurrency: {}\n\
         state_dir: {}\nsettle: {}ms\nfolders:\n  - path: {}\n{target}",
        world.fake.base_url(),
        concurrency(),
        world.dir(&format!("{name}-state"))?.display(),
        SETTLE.as_millis(),
        dir.display(),
    );
    let config = world.path().join(format!("{name}.yaml"));
    std::fs::write(&config, yaml)?;
    Ok(config)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The section of the report: one line per run, with the ceiling's files/s for its size.
pub fn report(runs: &[Scale], ceilings: &[(usize, f64)]) -> String {
    let mut out = String::from(
        "\n### Scale: files already in the folder at start\n\n\
         | folder | files | start → all in Tallyfy (s) | files/s | % of ceiling | CPU ms/file | × CPU/file at the smallest size | peak RSS (MiB) | idle RSS (MiB) | PUTs | requests/file |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let ceiling = ceilings
            .iter()
            .find(|(files, _)| *files == run.files)
            .map(|(_, rate)| *rate);
        let smallest = runs
            .iter()
            .filter(|other| other.kind == run.kind)
            .min_by_key(|other| other.files)
            .map(Scale::cpu_ms_per_file)
            .unwrap_or(f64::NAN);
        out.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {} | {:.3} | {:.2} | {:.1} | {:.1} | {} | {:.3} |\n",
            run.kind.name(),
            run.files,
            run.secs,
            run.files_per_sec(),
            ceiling.map_or("–".to_string(), |rate| format!(
                "{:.0} %",
                run.files_per_sec() / rate * 100.0
            )),
            run.cpu_ms_per_file(),
            run.cpu_ms_per_file() / smallest,
            crate::report::mib(run.peak_kib),
            crate::report::mib(run.idle_kib),
            run.puts,
            run.requests as f64 / run.files as f64,
        ));
    }
    out.push_str("\nCeiling (bare client, same files into a task): ");
    out.push_str(
        &ceilings
            .iter()
            .map(|(files, rate)| format!("{files} files at {rate:.1} files/s"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push_str(&format!(
        "\nTargets: a task folder of 8,000 files at ≥ 60 % of the ceiling, ≤ 0.6 ms CPU per file and ≤ 1.3× the 1,000-file figure, peak RSS ≤ 64 MiB; 20,000 files under 64 MiB, idle under 32 MiB (settle {} ms).\n",
        SETTLE.as_millis()
    ));
    out
}
