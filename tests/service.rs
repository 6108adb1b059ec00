//! The daemon as a systemd `Type=notify` service sees it: the real binary reports to a
//! notification socket owned by the test, standing in for systemd's.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};
use tokio::net::UnixDatagram;
use tokio::time::Instant;

/// The receiving end of NOTIFY_SOCKET.
struct ServiceManager {
    socket: UnixDatagram,
    path: PathBuf,
    /// Every message received so far, in order.
    received: Vec<String>,
}

impl ServiceManager {
    fn new(env: &Env) -> ServiceManager {
        let path = env.dir.path().join("notify.socket");
        ServiceManager {
            socket: UnixDatagram::bind(&path).expect("notify socket binds"),
            path,
            received: Vec::new(),
        }
    }

    fn start(&self, env: &Env) -> Daemon {
        self.start_with(env, &[])
    }

    fn start_with(&self, env: &Env, vars: &[(&str, &OsStr)]) -> Daemon {
        let mut vars = vars.to_vec();
        vars.push(("NOTIFY_SOCKET", self.path.as_os_str()));
        env.start_with_env(TOKEN, &vars)
    }

    /// Everything that arrives within `span`.
    async fn listen(&mut self, span: Duration) {
        let deadline = Instant::now() + span;
        let mut buffer = vec![0; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await
        {
            self.received
                .push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
    }

    /// Waits for a message holding the line `line` and returns that message.
    async fn wait_for(&mut self, line: &str, daemon: &Daemon) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buffer = vec![0; 4096];
        loop {
            if let Some(found) = self
                .received
                .iter()
                .find(|message| message.lines().any(|l| l == line))
            {
                return found.clone();
            }
            match tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await {
                Ok(Ok(n)) => self
                    .received
                    .push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
                Ok(Err(error)) => panic!("notify socket: {error}"),
                Err(_) => panic!(
                    "no {line:?} within {WAIT:?}; received {:?}; daemon log:\n{}",
                    self.received,
                    daemon.log()
                ),
            }
        }
    }
}

/// The real daemon under a test-owned service manager, once it has reported READY=1.
/// Bind `env` when destructuring (`env: _env`): it owns the directories and the fake API.
struct Running {
    daemon: Daemon,
    manager: ServiceManager,
    env: Env,
    /// The message that carried READY=1.
    ready: String,
}

async fn running(vars: &[(&str, &OsStr)]) -> Running {
    let env = Env::new().await;
    let mut manager = ServiceManager::new(&env);
    let daemon = manager.start_with(&env, vars);
    let ready = manager.wait_for("READY=1", &daemon).await;
    Running {
        daemon,
        manager,
        env,
        ready,
    }
}

/// How many messages `manager` receives in `span` that hold the line `line`.
async fn count_within(manager: &mut ServiceManager, span: Duration, line: &str) -> usize {
    manager.received.clear();
    manager.listen(span).await;
    manager
        .received
        .iter()
        .filter(|message| message.lines().any(|l| l == line))
        .count()
}

#[tokio::test]
async fn reports_ready_after_verifying_its_targets_then_status_and_stopping() {
    let Running {
        daemon,
        mut manager,
        ready,
        env: _env,
    } = running(&[]).await;
    assert_eq!(
        daemon.log().matches("target verified").count(),
        2,
        "READY=1 came before both targets were verified; log:\n{}",
        daemon.log()
    );
    assert!(
        ready
            .lines()
            .any(|line| line == "STATUS=watching 2 folders"),
        "{ready:?}"
    );

    daemon.signal(libc::SIGTERM);
    manager.wait_for("STOPPING=1", &daemon).await;
    let status = daemon.wait_exit().await;
    assert!(status.success(), "{status}; log:\n{}", daemon.log());
}

#[tokio::test]
async fn reports_ready_within_a_bound_while_the_api_is_down_and_says_what_it_waits_for() {
    let env = Env::new().await;
    let outage = FaultKind::Status {
        status: 503,
        body: "down for maintenance".into(),
        retry_after: None,
    };
    env.fake
        .inject(Fault::once("GET", "", outage).times(usize::MAX));
    let mut manager = ServiceManager::new(&env);
    let started = Instant::now();
    let daemon = manager.start(&env);

    let ready = manager.wait_for("READY=1", &daemon).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "READY=1 after {waited:?}, before the targets could be verified"
    );
    assert!(
        ready.contains(
            "STATUS=watching 2 folders; waiting for the Tallyfy API to verify 2 of 2 targets"
        ),
        "{ready:?}"
    );

    env.fake.clear_faults();
    manager.wait_for("STATUS=watching 2 folders", &daemon).await;
    let status = daemon.stop().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn pings_the_watchdog_at_half_its_timeout_while_running() {
    let Running {
        daemon,
        mut manager,
        env: _env,
        ..
    } = running(&[("WATCHDOG_USEC", OsStr::new("1000000"))]).await;
    let pings = count_within(&mut manager, Duration::from_secs(3), "WATCHDOG=1").await;
    assert!(
        (4..=8).contains(&pings),
        "{pings} pings in 3 s with WatchdogSec=1s: {:?}",
        manager.received
    );
    assert!(daemon.stop().await.success());
}

#[tokio::test]
async fn without_a_watchdog_it_never_pings() {
    let Running {
        daemon,
        mut manager,
        env: _env,
        ..
    } = running(&[]).await;
    let pings = count_within(&mut manager, Duration::from_secs(2), "WATCHDOG=1").await;
    assert_eq!(pings, 0, "{:?}", manager.received);
    assert!(daemon.stop().await.success());
}

#[tokio::test]
async fn sighup_is_logged_and_does_not_stop_the_daemon() {
    let Running { daemon, env, .. } = running(&[]).await;
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("reload requested").await;
    drop_file(&env.tasks, "after-reload.pdf", b"%PDF-1.4 still syncing");
    eventually(
        "the file dropped after SIGHUP is attached",
        || filenames(&env.task_field()) == ["after-reload.pdf"],
        &daemon,
    )
    .await;
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_whose_task_is_completed_says_not_syncing_everywhere_and_lists_its_files() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    env.fake.set_task_status(RUN, TASK, "completed");
    let mut manager = ServiceManager::new(&env);
    let daemon = manager.start(&env);
    let ready = manager.wait_for("READY=1", &daemon).await;
    let line = ready
        .lines()
        .find(|line| line.starts_with("STATUS="))
        .unwrap_or_default();
    assert!(
        line.starts_with(&format!(
            "STATUS=watching 2 folders; 1 folder not syncing: {} (the target is misconfigured: task {TASK} in run {RUN} is completed",
            env.tasks.display()
        )),
        "{ready:?}"
    );
    drop_file(&env.tasks, "stuck.pdf", b"%PDF waits");
    drop_file(&env.kickoff, "fine.pdf", b"%PDF goes");
    eventually(
        "the other folder syncs",
        || env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;

    let status = env.command(&["status"]);
    assert!(status.status.success(), "{}", describe(&status));
    let text = &status.stdout;
    let top = format!(
        "folders:\n  {}: not syncing (0 synced, 1 pending, 0 failed)\n  {}: syncing (1 synced, 0 pending, 0 failed)\n",
        env.tasks.display(),
        env.kickoff.display()
    );
    assert!(text.contains(&top), "{text}");
    assert!(
        text.contains("  state: not syncing: the target is misconfigured: task task1 in run run1 is completed")
            && text.contains("then run `systemctl reload tallyfy-sync`"),
        "{text}"
    );
    let stuck = text
        .lines()
        .find(|line| line.starts_with("  pending "))
        .unwrap_or_default();
    assert!(
        stuck.starts_with("  pending   stuck.pdf  new; waiting: the folder is not syncing"),
        "{text}"
    );
    assert_eq!(env.uploads(), 1, "nothing is sent to a completed task");

    let (code, health) = http_get(&format!("http://{}/healthz", daemon.metrics_addr())).await;
    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains(&format!(
            "{}: not syncing: the target is misconfigured: task {TASK} in run {RUN} is completed",
            env.tasks.display()
        )),
        "{health}"
    );
    let (_, metrics) = http_get(&format!("http://{}/metrics", daemon.metrics_addr())).await;
    let pending = format!(
        "tallyfy_sync_files{{folder=\"{}\",state=\"pending\"}} 1\n",
        env.tasks.display()
    );
    assert!(metrics.contains(&pending), "{metrics}");
    assert!(daemon.stop().await.success());
}
