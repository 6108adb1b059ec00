//! The real `tallyfy-sync run` as a child process: its log in a file, a datagram socket of our
//! own as its NOTIFY_SOCKET (to see READY=1 arrive), its CPU and memory from /proc, and an
//! optional profiler around one phase.
//!
//! `BENCH_DAEMON_WRAPPER="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg-{name}"` runs
//! each daemon under a wrapper (`{name}` becomes "daemon", "rest" or "restart"); CPU and memory
//! figures are the wrapper's unless it keeps the pid, as valgrind does. BENCH_BURST_PROFILER
//! attaches a profiler to the live daemon for the burst only (see `Daemon::profile`).
//! BENCH_DAEMON_BIN runs another build of the daemon (say, an earlier commit's) instead of
//! this one, for before/after figures from one benchmark.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procfs;
use crate::world::{until, TOKEN};

pub struct Daemon {
    child: Child,
    pub pid: i32,
    log: PathBuf,
    pub started: Instant,
    /// The same moment by the wall clock, to line up with the log's timestamps.
    pub started_at: std::time::SystemTime,
    notify: Notify,
}

/// When the daemon said it was up, measured from the spawn.
pub struct Startup {
    /// The log line "running; initial scan started".
    pub logged: Duration,
    /// READY=1 on NOTIFY_SOCKET, when this build sends it (as far as seen yet: the datagram
    /// may come a moment after the log lines).
    pub notified: Option<Duration>,
    /// Every target's "target verified" line.
    pub verified: Duration,
}

impl Daemon {
    pub fn spawn(config: &Path, dir: &Path, name: &str) -> anyhow::Result<Daemon> {
        let log = dir.join(format!("{name}.log"));
        let notify = Notify::bind(&dir.join(format!("{name}.notify")))?;
        let wrapper = std::env::var("BENCH_DAEMON_WRAPPER")
            .unwrap_or_default()
            .replace("{name}", name);
        let binary = std::env::var_os("BENCH_DAEMON_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_tallyfy-sync").into());
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        command
            .args(["run", "--config"])
            .arg(config)
            .env("TALLYFY_ACCESS_TOKEN", TOKEN)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("JOURNAL_STREAM")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let (started, started_at) = (Instant::now(), std::time::SystemTime::now());
        let child = command.spawn().context("starting tallyfy-sync")?;
        Ok(Daemon {
            pid: child.id() as i32,
            child,
            log,
            started,
            started_at,
            notify,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the start-up log line and for `targets` verified targets.
    pub async fn wait_ready(&mut self, targets: usize) -> anyhow::Result<Startup> {
        let mut logged = None;
        let mut verified = None;
        let timeout = Duration::from_secs(120);
        until(
            "the daemon is up",
            timeout,
            Duration::from_millis(2),
            || {
                if self.child.try_wait().ok().flatten().is_some() {
                    return true;
                }
                let log = self.log();
                let now = self.started.elapsed();
                if logged.is_none() && log.contains("running; initial scan started") {
                    logged = Some(now);
                }
                if verified.is_none() && log.matches("target verified").count() >= targets {
                    verified = Some(now);
                }
                logged.is_some() && verified.is_some()
            },
        )
        .await?;
        if let Some(status) = self.child.try_wait()? {
            bail!("the daemon exited ({status}); its log:\n{}", self.log());
        }
        Ok(Startup {
            logged: logged.unwrap_or_default(),
            verified: verified.unwrap_or_default(),
            notified: self.notify.ready_at(self.started),
        })
    }

    pub fn cpu(&self) -> Duration {
        procfs::cpu(self.pid, false).unwrap_or_default()
    }

    pub fn rss_kib(&self) -> u64 {
        procfs::status_kib(self.pid, "VmRSS").unwrap_or_default()
    }

    /// When READY=1 arrived on NOTIFY_SOCKET, if it has.
    pub fn notified(&self) -> Option<Duration> {
        self.notify.ready_at(self.started)
    }

    /// The messages received on NOTIFY_SOCKET so far, with when they came after the spawn.
    pub fn notifications(&self) -> Vec<(Duration, String)> {
        self.notify.messages(self.started)
    }

    /// Starts BENCH_BURST_PROFILER (a command with `{pid}` in it, e.g. `perf record -p {pid} …`
    /// or `strace -c -f -p {pid} -o …`) on the daemon, if set; it runs until `Profiler::stop`.
    pub fn profile(&self) -> anyhow::Result<Option<Profiler>> {
        let Ok(template) = std::env::var("BENCH_BURST_PROFILER") else {
            return Ok(None);
        };
        let line = template.replace("{pid}", &self.pid.to_string());
        let mut words = line.split_whitespace();
        let program = words.next().context("BENCH_BURST_PROFILER is empty")?;
        let child = Command::new(program)
            .args(words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {line}"))?;
        // The profiler needs a moment to attach before the phase starts.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Some(Profiler(child)))
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 60 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the daemon stopped with {status}; its log:\n{}", self.log());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("the daemon did not stop within 60 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub struct Profiler(Child);

impl Profiler {
    /// SIGINT (perf then writes its file, strace its summary), and waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait()?;
        Ok(())
    }
}

/// A datagram socket standing in for systemd's notification socket.
struct Notify {
    path: PathBuf,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Notify {
    fn bind(path: &Path) -> anyhow::Result<Notify> {
        let socket = UnixDatagram::bind(path)
            .with_context(|| format!("binding the notify socket {}", path.display()))?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (inbox, stopped) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(len) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..len]).into_owned();
                    if let Ok(mut inbox) = inbox.lock() {
                        inbox.push((Instant::now(), text));
                    }
                }
            }
        });
        Ok(Notify {
            path: path.to_path_buf(),
            received,
            stop,
        })
    }

    fn messages(&self, since: Instant) -> Vec<(Duration, String)> {
        self.received
            .lock()
            .map(|inbox| {
                inbox
                    .iter()
                    .map(|(at, text)| (at.saturating_duration_since(since), text.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ready_at(&self, since: Instant) -> Option<Duration> {
        self.messages(since)
            .into_iter()
            .find(|(_, text)| text.lines().any(|line| line == "READY=1"))
            .map(|(at, _)| at)
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
