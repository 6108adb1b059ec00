//! The "fast and lean" benchmark: the real daemon binary against the in-process fake Tallyfy API,
//! beside a naive inotifywait + curl script (the baseline) and a bare HTTP client doing the same
//! API work (the ceiling), all in one run on this machine. Prints one table.
//!
//! `cargo bench --bench daemon` for the full sizes; `-- --smoke` or `BENCH_SMOKE=1` for the
//! small ones CI runs. BENCHMARKS.md explains every measure.

mod baseline;
mod ceiling;
mod child;
mod network;
mod procfs;
mod report;
mod restart;
mod scale;
mod scenario;
mod timeline;
mod world;

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::baseline::Script;
use crate::ceiling::Ceiling;
use crate::child::Daemon;
use crate::report::{mib, percentile_ms, Cell, Row};
use crate::scenario::{Big, Burst};
use crate::world::{by_method, concurrency, write_big, write_files, World, SETTLE};

/// Sizes of the small files of the burst and latency scenarios.
const SMALL: (usize, usize) = (1024, 10 * 1024);
/// Folders the rest and restart files are spread over.
const FOLDERS: usize = 4;

struct Sizes {
    smoke: bool,
    burst: usize,
    latency: usize,
    big: u64,
    rest: usize,
    restart: usize,
    idle: Duration,
    network: network::Sizes,
}

impl Sizes {
    fn from_env() -> Sizes {
        let smoke = std::env::args().any(|arg| arg == "--smoke")
            || std::env::var("BENCH_SMOKE").is_ok_and(|value| value != "0");
        let mut sizes = Sizes::defaults(smoke);
        // For profiling: a full-size burst around small everything else.
        if let Some(burst) = std::env::var("BENCH_BURST")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            sizes.burst = burst;
        }
        sizes
    }

    fn defaults(smoke: bool) -> Sizes {
        if smoke {
            Sizes {
                smoke,
                burst: 50,
                latency: 5,
                big: 5 << 20,
                rest: 1_000,
                restart: 2_000,
                idle: Duration::from_secs(5),
                network: network::Sizes {
                    rate_limited: 20,
                    latency_burst: 50,
                    mix_files: 10,
                    mix_runs: 3,
                },
            }
        } else {
            Sizes {
                smoke,
                burst: 1_000,
                latency: 50,
                big: 95 << 20,
                rest: 10_000,
                restart: 100_000,
                idle: Duration::from_secs(60),
                network: network::Sizes {
                    rate_limited: 100,
                    latency_burst: 1_000,
                    mix_files: 20,
                    mix_runs: 5,
                },
            }
        }
    }
}

/// What one participant did in the scenarios that need a watcher.
struct Watched {
    burst: Burst,
    latency: Vec<Duration>,
    big: Big,
}

fn main() -> anyhow::Result<()> {
    let sizes = Sizes::from_env();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(sizes))
}

fn say(text: &str) {
    eprintln!("bench: {text}");
}

async fn run(sizes: Sizes) -> anyhow::Result<()> {
    let machine = procfs::machine();
    say(&format!(
        "{} run on {machine}",
        if sizes.smoke { "smoke" } else { "full" }
    ));
    let world = World::start().await?;
    if std::env::var_os("BENCH_KEEP").is_some() {
        say(&format!("keeping {}", world.path().display()));
    }
    let staging = world.dir("staging")?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() {
        baseline::check_tools()?;
    }
    if only == "restart" {
        // For profiling runs: only the start-up with `sizes.restart` synced files.
        let restart = restart::run(&world, "restart", sizes.restart, FOLDERS).await?;
        print!("{}", restart_details("restart", &restart));
        return Ok(());
    }

    if only == "scale" {
        // For before/after figures of the cost of a file as the folder grows.
        print!("{}", scale_runs(&world, sizes.smoke).await?);
        return Ok(());
    }

    if only == "network" {
        // For before/after figures of the scenarios where requests are not free.
        let network = network_runs(&world, &sizes.network).await?;
        print!("{}", report::table(&network_rows(&network)));
        print!("{}", network_details(&network));
        return Ok(());
    }
    let Live {
        watched: daemon,
        idle,
        rss: live_rss,
        timeline,
    } = daemon_live(&world, &sizes).await?;
    if only == "daemon" {
        // For profiling runs: the live daemon's figures, without the others or the table.
        say(&format!(
            "daemon only: burst {:.1} files/s, {} PUTs, {:.2} CPU-s; latency p50 {:.1} ms; VmRSS at the end {:.1} MiB",
            daemon.burst.files_per_sec(),
            daemon.burst.puts(),
            daemon.burst.cpu.unwrap_or_default().as_secs_f64(),
            percentile_ms(&daemon.latency, 50.0),
            mib(live_rss)
        ));
        print!("{timeline}");
        return Ok(());
    }
    let network = network_runs(&world, &sizes.network).await?;
    let baseline = baseline_watched(&world, &sizes).await?;
    let ceiling = ceiling(&world, &sizes).await?;

    say(&format!(
        "rest: {} synced files in {FOLDERS} folders",
        sizes.rest
    ));
    let rest = restart::run(&world, "rest", sizes.rest, FOLDERS).await?;
    say(&format!(
        "restart: {} synced files in {FOLDERS} folders",
        sizes.restart
    ));
    let restart = restart::run(&world, "restart", sizes.restart, FOLDERS).await?;
    drop(staging);
    let scale = scale_runs(&world, sizes.smoke).await?;

    let mut rows = rows(
        &sizes, &daemon, &baseline, &ceiling, &idle, live_rss, &rest, &restart,
    );
    rows.extend(network_rows(&network));
    println!(
        "\n## tallyfy-sync benchmark ({})\n",
        if sizes.smoke {
            "smoke sizes"
        } else {
            "full sizes"
        }
    );
    println!(
        "Machine: {machine}; load average at the end {}",
        procfs::load()
    );
    println!(
        "Daemon config: settle {} ms, concurrency {}; the ceiling uploads as many at once.\n",
        SETTLE.as_millis(),
        concurrency()
    );
    print!("{}", report::table(&rows));
    println!();
    for (who, burst) in [
        ("daemon", &daemon.burst),
        ("baseline", &baseline.burst),
        ("ceiling", &ceiling.burst),
    ] {
        println!(
            "- burst requests, {who}: {}; at most {} uploads in progress at once (polled)",
            by_method(&burst.requests),
            burst.max_uploads
        );
    }
    for (what, run) in [("rest", &rest), ("restart", &restart)] {
        print!("{}", restart_details(what, run));
    }
    print!("{timeline}");
    println!("- idle: {} requests during the idle window", idle.requests);
    print!("{}", network_details(&network));
    print!("{scale}");
    Ok(())
}

/// Every scale run, with the ceiling at each size; the report's section on them.
async fn scale_runs(world: &World, smoke: bool) -> anyhow::Result<String> {
    let plan = scale::plan(smoke);
    let mut ceilings = Vec::new();
    for &files in &plan.sizes {
        say(&format!("scale: the ceiling on {files} files"));
        ceilings.push((files, scale::ceiling(world, files).await?));
    }
    let mut runs = Vec::new();
    for &kind in &plan.kinds {
        for &files in &plan.sizes {
            say(&format!(
                "scale: {files} files in a {} folder at start",
                kind.name()
            ));
            let run = scale::run(world, kind, files, plan.idle).await?;
            say(&format!(
                "scale: {} {files}: {:.2} s, {:.3} CPU-ms/file, peak {:.1} MiB, idle {:.1} MiB",
                kind.name(),
                run.secs,
                run.cpu_ms_per_file(),
                mib(run.peak_kib),
                mib(run.idle_kib)
            ));
            runs.push(run);
        }
    }
    Ok(scale::report(&runs, &ceilings))
}

/// The daemon under a rate limit, under latency and under scattered errors.
struct Network {
    rate_limited: network::RateLimited,
    latent: network::Latent,
    mix: Vec<network::MixRun>,
    mix_files: usize,
}

async fn network_runs(world: &World, sizes: &network::Sizes) -> anyhow::Result<Network> {
    say(&format!(
        "rate-limited burst: {} files at {}/min",
        sizes.rate_limited,
        network::RATE_PER_MINUTE
    ));
    let rate_limited = network::rate_limited(world, sizes.rate_limited).await?;
    say(&format!(
        "latency burst: {} files, {} ms per request",
        sizes.latency_burst,
        network::LATENCY.as_millis()
    ));
    let latent = network::latent(world, sizes.latency_burst).await?;
    say(&format!(
        "fault mix: {} runs of {} files",
        sizes.mix_runs, sizes.mix_files
    ));
    let mix = network::fault_mix(world, sizes.mix_files, sizes.mix_runs).await?;
    Ok(Network {
        rate_limited,
        latent,
        mix,
        mix_files: sizes.mix_files,
    })
}

fn network_rows(network: &Network) -> Vec<Row> {
    let rl = &network.rate_limited;
    let latent = &network.latent;
    let per_file = |burst: &Burst| network::per_file(&burst.requests, burst.files);
    let mix_secs = network::median(network.mix.iter().map(|run| run.secs).collect());
    let mix_per_file = network::median(
        network
            .mix
            .iter()
            .map(|run| run.requests as f64 / network.mix_files as f64)
            .collect(),
    );
    vec![
        Row::info(
            format!(
                "Rate-limited burst ({}/min, {} files): requests per file",
                network::RATE_PER_MINUTE,
                rl.burst.files
            ),
            Cell::Num(rl.per_file(), 3),
            Cell::None,
            Cell::None,
        )
        .target("≤ 1.05", rl.per_file() <= 1.05),
        Row::info(
            format!(
                "Rate-limited burst: time ÷ ideal (settle + (N + 2) requests at the limit's pace = {:.2} s)",
                rl.ideal_secs
            ),
            Cell::Num(rl.of_ideal(), 2),
            Cell::None,
            Cell::None,
        )
        .target("≤ 1.10", rl.of_ideal() <= 1.10),
        Row::info(
            format!(
                "Latency burst ({} ms per request, {} files): files/s",
                network::LATENCY.as_millis(),
                latent.daemon.files
            ),
            Cell::Num(latent.daemon.files_per_sec(), 1),
            Cell::None,
            Cell::Num(latent.ceiling.files_per_sec(), 1),
        ),
        Row::info(
            "Latency burst: PUTs (requests per file)",
            Cell::Text(format!(
                "{} ({:.3})",
                latent.daemon.puts(),
                per_file(&latent.daemon)
            )),
            Cell::None,
            Cell::Text(format!(
                "{} ({:.3})",
                latent.ceiling.puts(),
                per_file(&latent.ceiling)
            )),
        ),
        Row::info(
            format!(
                "Fault mix ({}, {} files): converged in (s), median of {}",
                network::MIX
                    .iter()
                    .map(|(share, what)| format!("{:.0} % {what}", share * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                network.mix_files,
                network.mix.len()
            ),
            Cell::Num(mix_secs, 2),
            Cell::None,
            Cell::None,
        )
        .target("≤ 8", mix_secs <= 8.0),
        Row::info(
            "Fault mix: requests per file, median",
            Cell::Num(mix_per_file, 2),
            Cell::None,
            Cell::None,
        ),
    ]
}

fn network_details(network: &Network) -> String {
    let runs: Vec<String> = network
        .mix
        .iter()
        .map(|run| format!("{:.2} s / {} requests", run.secs, run.requests))
        .collect();
    format!(
        "- rate-limited burst requests: {}; {:.2} s\n- latency burst requests, daemon: {}; ceiling: {}\n- fault mix runs: {}\n",
        by_method(&network.rate_limited.burst.requests),
        network.rate_limited.burst.secs,
        by_method(&network.latent.daemon.requests),
        by_method(&network.latent.ceiling.requests),
        runs.join(", ")
    )
}

/// The daemon's part of the run, from its one live process.
struct Live {
    watched: Watched,
    idle: Idle,
    /// VmRSS at the end, in KiB.
    rss: u64,
    timeline: String,
}

/// What the table leaves out about a start-up: every moment measured, requests and memory.
fn restart_details(what: &str, run: &restart::Restart) -> String {
    let mut out = format!(
        "- {what} ({} files): files and records written in {:.1} s; log line \"running\" at {:.3} s, \
         targets verified at {:.3} s, READY=1 {}, \"initial scan done\" logged {}, CPU quiet after {:.3} s; \
         requests: {}; VmRSS {:.1} MiB \
         ({:.1} anonymous, {:.1} file-backed), VmHWM {:.1} MiB\n",
        run.files,
        run.populate_secs,
        run.startup.logged.as_secs_f64(),
        run.startup.verified.as_secs_f64(),
        run.startup.notified.map_or("not sent by this build".to_string(), |at| format!(
            "at {:.3} s",
            at.as_secs_f64()
        )),
        run.scan_logged
            .map_or("by no line of this build".to_string(), |at| format!(
                "at {:.3} s",
                at.as_secs_f64()
            )),
        run.scan_quiet.as_secs_f64(),
        if run.requests.is_empty() {
            "none".to_string()
        } else {
            run.requests.clone()
        },
        mib(run.rss_kib),
        mib(run.anon_kib),
        mib(run.file_kib),
        mib(run.hwm_kib),
    );
    for (at, message) in &run.notifications {
        out.push_str(&format!(
            "  - NOTIFY_SOCKET at {:.3} s: {}\n",
            at.as_secs_f64(),
            message.replace('\n', " ")
        ));
    }
    out
}

struct Idle {
    window: Duration,
    daemon: Duration,
    baseline: Duration,
    baseline_rss_kib: u64,
    requests: usize,
}

/// One daemon for the big file, the burst, the latency and the idle measure, in that order (the
/// big file first, so that its memory peak is not hidden behind the burst's).
async fn daemon_live(world: &World, sizes: &Sizes) -> anyhow::Result<Live> {
    let staging = world.dir("staging")?;
    let names = ["daemon-big", "daemon-burst", "daemon-latency"];
    let mut mapping = Vec::new();
    for name in names {
        mapping.push((world.dir(name)?, world.task(name)));
    }
    let config = world.write_config("daemon", &mapping)?;
    let mut daemon = Daemon::spawn(&config, world.path(), "daemon")?;
    daemon.wait_ready(names.len()).await?;
    let [(big_dir, big_task), (burst_dir, burst_task), (latency_dir, latency_task)] =
        <[_; 3]>::try_from(mapping).map_err(|_| anyhow::anyhow!("three folders"))?;

    let file = write_big(&staging, "daemon-big.pdf", sizes.big, 1)?;
    let big = scenario::big(world, &file, &big_dir, &big_task, Some(daemon.pid)).await?;
    say(&format!("daemon big file: {:.2} s", big.secs));

    let staged = write_files(&staging, "daemon-burst", sizes.burst, SMALL, 2)?;
    let profiler = daemon.profile()?;
    let burst = scenario::burst(world, &staged, &burst_dir, &burst_task, &|| daemon.cpu()).await?;
    if let Some(profiler) = profiler {
        profiler.stop()?;
    }
    say(&format!(
        "daemon burst: {} files in {:.2} s, {} PUTs",
        burst.files,
        burst.secs,
        burst.puts()
    ));

    let staged = write_files(&staging, "daemon-latency", sizes.latency, SMALL, 3)?;
    let latency = scenario::latency(world, &staged, &latency_dir, &latency_task).await?;
    say(&format!(
        "daemon latency: p50 {:.1} ms",
        percentile_ms(&latency, 50.0)
    ));

    // The baseline idles beside the daemon, over the same window.
    let idle_dir = world.dir("baseline-idle")?;
    let script = Script::start(world, &idle_dir, &world.task("baseline-idle")).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (daemon_before, script_before, start) = (daemon.cpu(), script.cpu(), Instant::now());
    say(&format!("idle for {} s", sizes.idle.as_secs()));
    tokio::time::sleep(sizes.idle).await;
    let idle = Idle {
        window: start.elapsed(),
        daemon: daemon.cpu().saturating_sub(daemon_before),
        baseline: script.cpu().saturating_sub(script_before),
        baseline_rss_kib: script.rss_kib(),
        requests: world.requests_since(start).len(),
    };
    let rss = daemon.rss_kib();
    drop(script);
    let timeline = timeline::burst(&daemon.log(), "daemon-burst-", burst.started_at);
    daemon.stop().await?;
    Ok(Live {
        watched: Watched {
            burst,
            latency,
            big,
        },
        idle,
        rss,
        timeline,
    })
}

/// The baseline script on the same three scenarios, a fresh script and task for each.
async fn baseline_watched(world: &World, sizes: &Sizes) -> anyhow::Result<Watched> {
    let staging = world.dir("staging")?;
    let (dir, task) = (world.dir("baseline-big")?, world.task("baseline-big"));
    let script = Script::start(world, &dir, &task).await?;
    let file = write_big(&staging, "baseline-big.pdf", sizes.big, 1)?;
    let big = scenario::big(world, &file, &dir, &task, None).await?;
    script.check()?;
    drop(script);
    say(&format!("baseline big file: {:.2} s", big.secs));

    let (dir, task) = (world.dir("baseline-burst")?, world.task("baseline-burst"));
    let script = Script::start(world, &dir, &task).await?;
    let staged = write_files(&staging, "baseline-burst", sizes.burst, SMALL, 2)?;
    let burst = scenario::burst(world, &staged, &dir, &task, &|| script.cpu()).await?;
    script.check()?;
    drop(script);
    say(&format!(
        "baseline burst: {} files in {:.2} s",
        burst.files, burst.secs
    ));

    let (dir, task) = (
        world.dir("baseline-latency")?,
        world.task("baseline-latency"),
    );
    let script = Script::start(world, &dir, &task).await?;
    let staged = write_files(&staging, "baseline-latency", sizes.latency, SMALL, 3)?;
    let latency = scenario::latency(world, &staged, &dir, &task).await?;
    script.check()?;
    drop(script);
    Ok(Watched {
        burst,
        latency,
        big,
    })
}

/// The bare client on the same files (written straight into a folder nobody watches).
async fn ceiling(world: &World, sizes: &Sizes) -> anyhow::Result<Watched> {
    let client = Ceiling::new(world)?;
    let files = world.dir("ceiling-files")?;
    let file = write_big(&files, "ceiling-big.pdf", sizes.big, 1)?;
    let big = client.big(world, &file, &world.task("ceiling-big")).await?;
    let staged = write_files(&files, "ceiling-burst", sizes.burst, SMALL, 2)?;
    let burst = client
        .burst(world, &staged, &world.task("ceiling-burst"))
        .await
        .context("the ceiling's burst")?;
    say(&format!(
        "ceiling burst: {} files in {:.2} s",
        burst.files, burst.secs
    ));
    let staged = write_files(&files, "ceiling-latency", sizes.latency, SMALL, 3)?;
    let latency = client
        .latency(&staged, &world.task("ceiling-latency"))
        .await?;
    Ok(Watched {
        burst,
        latency,
        big,
    })
}

#[allow(clippy::too_many_arguments)]
fn rows(
    sizes: &Sizes,
    daemon: &Watched,
    baseline: &Watched,
    ceiling: &Watched,
    idle: &Idle,
    live_rss: u64,
    rest: &restart::Restart,
    restart: &restart::Restart,
) -> Vec<Row> {
    let n = sizes.burst;
    let settle_ms = SETTLE.as_secs_f64() * 1e3;
    let secs = |value: f64| Cell::Num(value, 2);
    let ms = |value: f64| Cell::Num(value, 1);
    let rate = |burst: &Burst| Cell::Num(burst.files_per_sec(), 1);
    let d_rate = daemon.burst.files_per_sec();
    let per_file = |burst: &Burst| network::per_file(&burst.requests, burst.files);
    let p = |samples: &[Duration], at: f64| percentile_ms(samples, at);
    // A latency percentile for all three, with the daemon's target of settle + `allowed` ms.
    let latency = |label: String, at: f64, allowed: f64| {
        Row::info(
            label,
            ms(p(&daemon.latency, at)),
            ms(p(&baseline.latency, at)),
            ms(p(&ceiling.latency, at)),
        )
        .target(
            format!("≤ settle + {allowed:.0} ms = {:.0}", settle_ms + allowed),
            p(&daemon.latency, at) <= settle_ms + allowed,
        )
    };
    let d_mibs = daemon.big.mib_per_sec().unwrap_or(0.0);
    let b_mibs = baseline.big.mib_per_sec().unwrap_or(f64::INFINITY);
    let rss_rise = daemon
        .big
        .rss_rise_kib
        .max(daemon.big.hwm_rise_kib)
        .unwrap_or(u64::MAX);
    let per_minute = |cpu: Duration| cpu.as_secs_f64() * 60.0 / idle.window.as_secs_f64();
    let big_mib = sizes.big as f64 / (1024.0 * 1024.0);
    vec![
        Row::info(
            format!("Burst: {n} files moved in → all attached (s)"),
            secs(daemon.burst.secs),
            secs(baseline.burst.secs),
            secs(ceiling.burst.secs),
        ),
        Row::info(
            "Burst: files/s",
            rate(&daemon.burst),
            rate(&baseline.burst),
            rate(&ceiling.burst),
        )
        .target(
            "≥ 20× baseline and ≥ 60 % of ceiling",
            d_rate >= 20.0 * baseline.burst.files_per_sec()
                && d_rate >= 0.6 * ceiling.burst.files_per_sec(),
        ),
        Row::info(
            format!(
                "Burst: files/s without the settle time (N / (time − {settle_ms:.0} ms); baseline and ceiling do not settle)"
            ),
            Cell::Num(n as f64 / (daemon.burst.secs - SETTLE.as_secs_f64()), 1),
            rate(&baseline.burst),
            rate(&ceiling.burst),
        ),
        Row::info(
            format!("Burst: PUTs for {n} files"),
            Cell::Num(daemon.burst.puts() as f64, 0),
            Cell::Num(baseline.burst.puts() as f64, 0),
            Cell::Num(ceiling.burst.puts() as f64, 0),
        )
        .target("≤ 10", daemon.burst.puts() <= 10),
        Row::info(
            "Burst: requests per file",
            Cell::Num(per_file(&daemon.burst), 3),
            Cell::Num(per_file(&baseline.burst), 3),
            Cell::Num(per_file(&ceiling.burst), 3),
        ),
        Row::info(
            "Burst: CPU-s used by the participant",
            daemon.burst.cpu.map_or(Cell::None, |cpu| secs(cpu.as_secs_f64())),
            baseline.burst.cpu.map_or(Cell::None, |cpu| secs(cpu.as_secs_f64())),
            Cell::None,
        ),
        latency(
            format!("Latency p50, one file at a time (ms; daemon settle {settle_ms:.0} ms)"),
            50.0,
            30.0,
        ),
        latency(
            format!("Latency p99 of {} (ms)", daemon.latency.len()),
            99.0,
            100.0,
        ),
        Row::info(
            format!("Big file {big_mib:.0} MiB: moved in → attached (s)"),
            secs(daemon.big.secs),
            secs(baseline.big.secs),
            secs(ceiling.big.secs),
        ),
        Row::info(
            "Big file: upload MiB/s (server: POST arrival → PUT arrival)",
            Cell::Num(d_mibs, 0),
            baseline.big.mib_per_sec().map_or(Cell::None, |v| Cell::Num(v, 0)),
            ceiling.big.mib_per_sec().map_or(Cell::None, |v| Cell::Num(v, 0)),
        )
        .target("≥ 70 % of curl's", d_mibs >= 0.7 * b_mibs),
        Row::info(
            "Big file: daemon RSS rise while uploading (MiB; max of sampled VmRSS and VmHWM)",
            Cell::Num(mib(rss_rise), 1),
            Cell::None,
            Cell::None,
        )
        .target("≤ 8 MiB", rss_rise <= 8 * 1024),
        Row::info(
            format!("Memory at rest, {} synced files tracked (VmRSS MiB; baseline: its processes, tracking nothing)", rest.files),
            Cell::Num(mib(rest.rss_kib), 1),
            Cell::Num(mib(idle.baseline_rss_kib), 1),
            Cell::None,
        )
        .target("< 30 MiB", rest.rss_kib < 30 * 1024),
        Row::info(
            format!(
                "Memory at rest after the live run ({} files synced by it; VmRSS MiB)",
                n + daemon.latency.len() + 1
            ),
            Cell::Num(mib(live_rss), 1),
            Cell::None,
            Cell::None,
        ),
        Row::info(
            format!(
                "Restart, {} synced files: start → ready ({}) (s)",
                restart.files,
                if restart.startup.notified.is_some() {
                    "READY=1"
                } else {
                    "no READY=1 from this build: the \"running\" log line"
                }
            ),
            Cell::Num(
                restart
                    .startup
                    .notified
                    .unwrap_or(restart.startup.logged)
                    .as_secs_f64(),
                3,
            ),
            Cell::Text("n/a (never looks at existing files)".into()),
            Cell::None,
        ),
        Row::info(
            format!(
                "Restart, {} synced files: start → initial scan done ({}) (s)",
                restart.files,
                if restart.scan_logged.is_some() {
                    "its log line"
                } else {
                    "no log line from this build: its CPU going quiet"
                }
            ),
            Cell::Num(restart.scan_done().as_secs_f64(), 3),
            Cell::None,
            Cell::None,
        )
        .target("< 3 s", restart.scan_done() < Duration::from_secs(3)),
        Row::info(
            format!("Restart, {} synced files: requests sent (uploads)", restart.files),
            Cell::Text(format!("{} ({})", restart.total_requests, restart.uploads)),
            Cell::None,
            Cell::None,
        )
        .target(
            format!("{FOLDERS} target GETs, 0 uploads"),
            restart.uploads == 0 && restart.total_requests == FOLDERS,
        ),
        Row::info(
            format!("Idle CPU-s per 60 s (measured over {} s)", idle.window.as_secs()),
            Cell::Num(per_minute(idle.daemon), 3),
            Cell::Num(per_minute(idle.baseline), 3),
            Cell::None,
        )
        .target("< 0.05", per_minute(idle.daemon) < 0.05),
    ]
}
