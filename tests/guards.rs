//! The daemon distrusts the watcher and guards deletes: mass deletes are held, an unmounted
//! folder pauses, polled folders sync without inotify, failed files get another chance.

mod common;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

fn refused_for_good() -> FaultKind {
    FaultKind::Status {
        status: 422,
        body: r#"{"error": true, "message": "The name field is required."}"#.into(),
        retry_after: None,
    }
}

async fn sync_files(env: &Env, daemon: &Daemon, count: usize) {
    for i in 0..count {
        drop_file(
            &env.tasks,
            &format!("{i:02}.pdf"),
            format!("{i}").as_bytes(),
        );
    }
    eventually(
        "every file is attached",
        || env.task_field().len() == count,
        daemon,
    )
    .await;
}

/// Deletes the first `count` files `sync_files` made.
fn remove_files(env: &Env, count: usize) {
    for i in 0..count {
        std::fs::remove_file(env.tasks.join(format!("{i:02}.pdf"))).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_delete_is_held_until_release_deletes_lets_it_go() {
    let env = Env::new().await;
    let daemon = env.start();
    sync_files(&env, &daemon, 12).await;
    // 7 of 12 is more than the default max_delete of 50 %.
    remove_files(&env, 7);
    daemon
        .wait_for_log("7 of 12 synced files are gone from the folder at once")
        .await;
    let status = env.command(&["status"]);
    assert!(
        status.stdout.contains("5 synced, 0 pending, 7 held"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("DELETES HELD: 7 of 12"));
    assert!(env.requests("DELETE", "/file/").is_empty());
    assert_eq!(env.task_field().len(), 12, "nothing held is lost");

    let folder = env.tasks.to_str().unwrap();
    let released = env.command(&["release-deletes", folder]);
    assert!(released.status.success(), "{}", released.stderr);
    assert!(
        released.stdout.contains("held deletes of"),
        "{}",
        released.stdout
    );
    eventually(
        "the released deletes reach Tallyfy",
        || env.task_field().len() == 5,
        &daemon,
    )
    .await;
    assert_eq!(env.requests("DELETE", "/file/").len(), 7);
    daemon
        .wait_for_log("releasing the held deletes as asked")
        .await;

    let unknown = env.command(&["release-deletes", "/nowhere"]);
    assert!(!unknown.status.success());
    assert!(unknown
        .stderr
        .contains("/nowhere is not a configured folder"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_deletes_in_a_small_folder_go_through_at_once() {
    let env = Env::new().await;
    let daemon = env.start();
    sync_files(&env, &daemon, 4).await;
    remove_files(&env, 3);
    eventually(
        "the deletes reach Tallyfy",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert!(!daemon.log().contains("more than max_delete"));
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A share mounted on a folder, as a bind mount of a tmpfs; unmounted again on drop.
struct Share {
    source: std::path::PathBuf,
    target: std::path::PathBuf,
}

impl Share {
    fn mount(env: &Env) -> Option<Share> {
        let source = env.dir.path().join("share");
        std::fs::create_dir(&source).unwrap();
        if !run(
            "mount",
            &[
                "-t".as_ref(),
                "tmpfs".as_ref(),
                "tmpfs".as_ref(),
                source.as_os_str(),
            ],
        ) {
            return None;
        }
        let share = Share {
            source,
            target: env.tasks.clone(),
        };
        share.bind().then_some(share)
    }

    fn bind(&self) -> bool {
        run(
            "mount",
            &[
                "--bind".as_ref(),
                self.source.as_os_str(),
                self.target.as_os_str(),
            ],
        )
    }

    fn unbind(&self) -> bool {
        run("umount", &[self.target.as_os_str()])
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.unbind();
        run("umount", &[self.source.as_os_str()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmounted_share_pauses_its_folder_until_it_is_mounted_again() {
    let env = Env::new().await;
    let Some(share) = Share::mount(&env) else {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here (needs root); the unmount guard is not exercised"
        );
        return;
    };
    let daemon = env.start();
    sync_files(&env, &daemon, 3).await;
    assert!(share.unbind());
    daemon.wait_for_log("it is now on another filesystem").await;
    let status = env.command(&["status"]).stdout;
    assert!(
        status.contains("state: not syncing: it is now on another filesystem"),
        "{status}"
    );
    // The bare mount point: what lands there is not the share's and is not uploaded.
    let stray = drop_file(&env.tasks, "on-the-mount-point.pdf", b"x");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert!(
        env.requests("DELETE", "/file/").is_empty(),
        "an unmounted share deleted remotely"
    );
    assert_eq!(
        env.uploads(),
        3,
        "a file on the bare mount point was uploaded"
    );
    std::fs::remove_file(stray).unwrap();

    assert!(share.bind());
    daemon
        .wait_for_log("folder is back; syncing it again")
        .await;
    drop_file(&env.tasks, "after.pdf", b"after");
    eventually(
        "the folder syncs again, watched",
        || env.task_field().len() == 4,
        &daemon,
    )
    .await;
    assert!(env.requests("DELETE", "/file/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_folder_syncs_changes_without_the_watcher() {
    let env = Env::with_config("", "poll: 300ms\n").await;
    let daemon = env.start();
    daemon
        .wait_for_log("polling every 300ms because as configured")
        .await;
    drop_file(&env.tasks, "polled.pdf", b"p");
    drop_file(&env.kickoff, "polled.pdf", b"k");
    eventually(
        "both polled files are attached",
        || env.task_field().len() == 1 && env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;
    std::fs::remove_file(env.tasks.join("polled.pdf")).unwrap();
    eventually(
        "the delete is found by polling",
        || env.task_field().is_empty(),
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_sends_a_failed_file_again_without_a_restart() {
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("POST", "/file", refused_for_good()));
    drop_file(&env.tasks, "refused.pdf", b"r");
    eventually(
        "status shows the file failed",
        || env.command(&["status"]).stdout.contains("1 failed"),
        &daemon,
    )
    .await;
    let status = env.command(&["status"]).stdout;
    assert!(status.contains("The name field is required."), "{status}");
    assert!(status.contains("tallyfy-sync retry"), "{status}");

    let retried = env.command(&["retry"]);
    assert!(retried.status.success(), "{}", retried.stderr);
    assert_eq!(retried.stdout.trim(), "1 failed file(s) queued again");
    eventually(
        "the retried file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_gives_failed_files_another_chance() {
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("POST", "/file", refused_for_good()));
    drop_file(&env.tasks, "refused.pdf", b"r");
    daemon.wait_for_log("The name field is required.").await;
    assert_eq!(daemon.stop().await.code(), Some(0));

    // Unchanged config: the failure stands.
    let daemon = env.start();
    daemon.wait_for_log("running").await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(env.uploads(), 1);

    env.write_config("", "recursive: false\n");
    let daemon = env.start();
    daemon
        .wait_for_log("the config changed since the last run; retrying the failed files")
        .await;
    eventually(
        "the file is attached after the config change",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_files_larger_than_the_event_queue_all_sync() {
    const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";
    let env = Env::new().await;
    // The kernel sizes an inotify queue when the watcher starts: a small one makes the flood
    // overrun it for sure, so the daemon must find the files through its rescan.
    // A run killed before restoring it would leave it tiny for the whole machine: never keep that.
    let normal = std::fs::read_to_string(QUEUE)
        .ok()
        .filter(|value| {
            value
                .trim()
                .parse::<u32>()
                .is_ok_and(|events| events >= 1024)
        })
        .unwrap_or_else(|| "16384".into());
    let shrunk = std::fs::write(QUEUE, "8").is_ok();
    let daemon = env.start();
    // Logged after the watcher started, so the small queue is the daemon's.
    daemon.wait_for_log("running").await;
    if shrunk {
        std::fs::write(QUEUE, normal.trim()).unwrap();
    } else {
        eprintln!("SKIPPED in part: cannot shrink {QUEUE} (needs root); the flood may not overrun the queue");
    }
    let count = 2000;
    for i in 0..count {
        drop_file(
            &env.tasks,
            &format!("f{i:05}.txt"),
            format!("{i}").as_bytes(),
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while env.task_field().len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} attached after 120 s; log tail:\n{}",
            env.task_field().len(),
            daemon
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let names: std::collections::HashSet<String> =
        filenames(&env.task_field()).into_iter().collect();
    assert_eq!(names.len(), count, "no duplicates");
    assert!(
        !shrunk || daemon.log().contains("the file watcher dropped events"),
        "the flood never overran the queue, so the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_file_is_tried_again_when_only_its_permissions_change() {
    use std::os::unix::fs::PermissionsExt;
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("POST", "/file", refused_for_good()));
    let path = drop_file(&env.tasks, "locked.pdf", b"l");
    daemon.wait_for_log("The name field is required.").await;
    // What an operator does to fix an unreadable file: size and mtime stay as they were.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    eventually(
        "the file is attached after its mode changed",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_not_there_at_start_is_shown_not_syncing_and_synced_once_it_appears() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    std::fs::remove_dir(&env.tasks).unwrap();
    let daemon = env.start();
    daemon
        .wait_for_log("folder paused: not there (not mounted?)")
        .await;
    drop_file(&env.kickoff, "other.pdf", b"the other folder syncs");
    eventually(
        "the other folder syncs meanwhile",
        || env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;
    assert!(
        daemon.exited().is_none(),
        "a missing folder stopped the daemon"
    );

    let status = env.command(&["status"]);
    assert!(status.status.success(), "{}", describe(&status));
    let summary = format!("  {}: not syncing (0 synced", env.tasks.display());
    assert!(status.stdout.contains(&summary), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("state: not syncing: not there (not mounted?); mount the share"),
        "{}",
        status.stdout
    );
    let (code, health) = http_get(&format!("http://{}/healthz", daemon.metrics_addr())).await;
    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains(&format!(
            "{}: not syncing: not there (not mounted?)",
            env.tasks.display()
        )),
        "{health}"
    );
    let verified = env.command(&["verify"]);
    assert!(
        verified
            .stdout
            .contains("NOT CHECKED: not there (not mounted?)")
            && verified.stdout.contains("other.pdf"),
        "verify checks the other folder and names the missing one\n{}",
        describe(&verified)
    );
    let retried = env.command(&["retry", env.tasks.to_str().unwrap()]);
    assert!(retried.status.success(), "{}", describe(&retried));
    let checked = env.command(&["check"]);
    assert!(checked.status.success(), "{}", describe(&checked));
    assert!(
        checked
            .stdout
            .contains("not there (not mounted?) now: synced as soon as it appears"),
        "{}",
        describe(&checked)
    );
    let restored = env.command(&["restore", env.tasks.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(1), "{}", describe(&restored));
    assert!(
        restored.stderr.contains("is not there (not mounted?)") && !env.tasks.exists(),
        "restore does not create the folder on the bare mount point\n{}",
        describe(&restored)
    );

    std::fs::create_dir(&env.tasks).unwrap();
    daemon
        .wait_for_log("folder is back; syncing it again")
        .await;
    drop_file(&env.tasks, "late.pdf", b"mounted at last");
    eventually(
        "the folder syncs once it appears, watched, without a restart",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (code, health) = http_get(&format!("http://{}/healthz", daemon.metrics_addr())).await;
        if code == 200 {
            assert_eq!(health, "ok\n");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {health}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// The inotify watches a process holds, from its file descriptors' info.
fn inotify_watches(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                .map(|info| {
                    info.lines()
                        .filter(|l| l.starts_with("inotify wd:"))
                        .count()
                })
                .sum()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_past_the_watch_limit_is_polled_and_gives_its_watches_back_to_the_next_folder() {
    const LIMIT: usize = 5;
    let env = Env::with_config("", "recursive: true").await;
    for index in 0..3 * LIMIT {
        std::fs::create_dir(env.tasks.join(format!("sub{index:02}"))).unwrap();
    }
    // The watch limit can be lowered for the daemon alone in a user namespace of its own.
    let lower = format!("echo {LIMIT} > /proc/sys/user/max_inotify_watches && exec \"$@\"");
    let unshare = |program: &str| {
        let mut command = std::process::Command::new("unshare");
        command.args(["-Ur", "sh", "-c", &lower, "sh", program]);
        command
    };
    if !unshare("true")
        .status()
        .is_ok_and(|status| status.success())
    {
        eprintln!("SKIPPED: this machine does not let an unprivileged user make a user namespace (unshare -Ur)");
        return;
    }
    let mut command = unshare(env!("CARGO_BIN_EXE_tallyfy-sync"));
    command.args(["run", "--config", env.config.to_str().unwrap()]);
    let daemon = Daemon::spawn_command(command, TOKEN, env.dir.path(), &[]);
    daemon.wait_for_log("running; initial scan started").await;
    let log = daemon.log();
    let tasks = format!("folder={}", env.tasks.display());
    assert!(
        log.lines().any(
            |line| line.contains("the inotify watch limit is reached") && line.contains(&tasks)
        ),
        "{log}"
    );
    // The kick-off folder (one directory) was watched with a watch the first folder gave back.
    assert_eq!(log.matches("cannot watch the folder").count(), 1, "{log}");
    assert_eq!(inotify_watches(daemon.pid()), 1, "{log}");
    assert_eq!(daemon.stop().await.code(), Some(0));
}
