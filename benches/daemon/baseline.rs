//! The baseline: `benches/baseline-inotify-curl.sh` watching one folder for one task, run in a
//! process group of its own so that its CPU and memory (bash, inotifywait, curl, jq) add up and
//! it stops as a whole.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::procfs;
use crate::world::{until, TaskRef, World, ORG, TOKEN};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/baseline-inotify-curl.sh"
);

/// Fails with what to install when a tool the script needs is missing.
pub fn check_tools() -> anyhow::Result<()> {
    for tool in ["inotifywait", "curl", "jq"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            bail!("the baseline needs {tool}: apt-get install inotify-tools curl jq");
        }
    }
    Ok(())
}

pub struct Script {
    child: Child,
    pgid: i32,
    log: PathBuf,
}

impl Script {
    /// Starts the script on `dir` for `task` and waits until inotifywait is watching.
    pub async fn start(world: &World, dir: &Path, task: &TaskRef) -> anyhow::Result<Script> {
        let log = world.path().join(format!("baseline-{}.log", task.task));
        let child = Command::new("bash")
            .arg(SCRIPT)
            .arg(dir)
            .args([
                &world.fake.base_url(),
                ORG,
                &task.run,
                &task.task,
                &task.capture,
                &task.step,
                &task.checklist,
            ])
            .env("TALLYFY_ACCESS_TOKEN", TOKEN)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the baseline script")?;
        let script = Script {
            pgid: child.id() as i32,
            child,
            log,
        };
        until(
            "the baseline script watches its folder",
            Duration::from_secs(20),
            Duration::from_millis(5),
            || script.log().contains("Watches established."),
        )
        .await?;
        Ok(script)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU of the whole script: bash, its loop, inotifywait, and every curl and jq it ran.
    pub fn cpu(&self) -> Duration {
        procfs::group_cpu(self.pgid)
    }

    pub fn rss_kib(&self) -> u64 {
        procfs::group_rss_kib(self.pgid)
    }

    /// Complains when the script reported failures, so a broken baseline is not measured as slow.
    pub fn check(&self) -> anyhow::Result<()> {
        let log = self.log();
        if log.contains("failed") {
            bail!("the baseline script failed:\n{log}");
        }
        Ok(())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created.
        unsafe { libc::kill(-self.pgid, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
