//! A state directory on a small file system that fills up: requests pause instead of leaving
//! orphan uploads, and the daemon comes back by itself once space is freed, at run time and
//! at start. The daemon runs in a mount namespace of its own (`unshare -rm`) with a tmpfs
//! mounted on its state directory; the test reaches that tmpfs through `/proc/PID/root`.

mod common;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::UnixDatagram;

const FILES: usize = 1000;
/// Synced before the burst and deleted during it.
const OLD: usize = 5;
/// The daemon's default `api.concurrency`.
const CONCURRENCY: usize = 4;
/// Room for the records of about five hundred files (compact records; see `store::record`):
/// the disk fills during the burst.
const ROOM: u64 = 600 * 1024;
const TMPFS_SIZE: u64 = 8 * 1024 * 1024;
/// Probes back off up to 30 s: resuming may take that long after space is freed.
const RESUME_WAIT: Duration = Duration::from_secs(90);

/// Mounts a tmpfs of `SIZE` bytes on `STATE`, fills it with a file `filler` of `FILL` bytes
/// (until it is full for `full`; for `read-only` it stays empty and is remounted read-only),
/// then becomes the daemon.
const WRAPPER: &str = r#"set -e
mount -t tmpfs -o size="$SIZE" tallyfy-sync-test "$STATE"
case "$FILL" in
    full) cat /dev/zero > "$STATE/filler" 2>/dev/null || true ;;
    read-only) mount -o remount,ro "$STATE" ;;
    *) head -c "$FILL" /dev/zero > "$STATE/filler" ;;
esac
exec "$@""#;

/// Why a tmpfs cannot be mounted in a namespace of our own here, or the daemon's namespace
/// entered to ask for its status, if either cannot.
fn cannot_mount(dir: &Path) -> Option<String> {
    if let Err(error) = Command::new("nsenter").arg("--version").output() {
        return Some(format!("cannot run nsenter: {error}"));
    }
    let probe = dir.join("mount-probe");
    std::fs::create_dir_all(&probe).unwrap();
    let output = Command::new("unshare")
        .args([
            "-rm",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=64k none "$1""#,
            "sh",
        ])
        .arg(&probe)
        .output();
    match output {
        Err(error) => Some(format!("cannot run unshare: {error}")),
        Ok(output) if !output.status.success() => Some(format!(
            "cannot mount a tmpfs with `unshare -rm`: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// The daemon with its state directory on a tmpfs of `TMPFS_SIZE` with `fill` taken.
fn start_on_tmpfs(env: &Env, fill: &str, notify: &Path) -> Daemon {
    std::fs::create_dir_all(&env.state).unwrap();
    let mut command = Command::new("unshare");
    command
        .args([
            "-rm",
            "sh",
            "-c",
            WRAPPER,
            "sh",
            env!("CARGO_BIN_EXE_tallyfy-sync"),
        ])
        .args(["run", "--config"])
        .arg(&env.config)
        .env("SIZE", TMPFS_SIZE.to_string())
        .env("STATE", &env.state)
        .env("FILL", fill);
    let vars = [("NOTIFY_SOCKET", notify.as_os_str())];
    Daemon::spawn_command(command, TOKEN, env.dir.path(), &vars)
}

/// A path inside the daemon's mount namespace, as the test can reach it.
fn inside(daemon: &Daemon, path: &Path) -> PathBuf {
    Path::new(&format!("/proc/{}/root", daemon.pid())).join(path.strip_prefix("/").unwrap())
}

/// Runs `program` with `args` in the daemon's user and mount namespaces, and returns what it
/// printed; it must succeed.
fn in_namespace(daemon: &Daemon, program: &OsStr, args: &[&OsStr]) -> String {
    let pid = daemon.pid().to_string();
    let output = Command::new("nsenter")
        .args(["-t", &pid, "-U", "-m", "--preserve-credentials"])
        .arg(program)
        .args(args)
        .output()
        .expect("nsenter runs");
    assert!(
        output.status.success(),
        "{} failed: {}",
        program.to_string_lossy(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `tallyfy-sync status` asked from inside the daemon's namespace, where its socket is.
fn status(env: &Env, daemon: &Daemon) -> String {
    let program = OsStr::new(env!("CARGO_BIN_EXE_tallyfy-sync"));
    let args = [
        "status".as_ref(),
        "--config".as_ref(),
        env.config.as_os_str(),
    ];
    in_namespace(daemon, program, &args)
}

/// The daemon's messages to the service manager, read from a socket the test owns.
struct Notifications {
    socket: UnixDatagram,
    path: PathBuf,
    statuses: std::cell::RefCell<Vec<String>>,
}

impl Notifications {
    fn bind(env: &Env) -> Notifications {
        let path = env.dir.path().join("notify.socket");
        Notifications {
            socket: UnixDatagram::bind(&path).unwrap(),
            path,
            statuses: Default::default(),
        }
    }

    /// Whether a STATUS= line received so far satisfies `wanted`.
    fn status_seen(&self, wanted: impl Fn(&str) -> bool) -> bool {
        let mut buffer = vec![0; 4096];
        let mut statuses = self.statuses.borrow_mut();
        while let Ok(n) = self.socket.try_recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
            statuses.extend(
                message
                    .lines()
                    .filter_map(|line| line.strip_prefix("STATUS="))
                    .map(str::to_string),
            );
        }
        statuses.iter().any(|status| wanted(status))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_fills_the_state_disk_pauses_orphans_little_and_resumes_once_space_is_freed() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    if let Some(why) = cannot_mount(env.dir.path()) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let notify = Notifications::bind(&env);
    let daemon = start_on_tmpfs(&env, &(TMPFS_SIZE - ROOM).to_string(), &notify.path);
    daemon.wait_for_log("serving metrics at /metrics").await;
    daemon.wait_for_log("target verified").await;
    let addr = daemon.metrics_addr();
    // Files synced before, deleted while the disk is full: their deletes cannot be recorded
    // then, so they go once it can be written. Fewer than 10, so that `max_delete` does not
    // hold them.
    let old: Vec<PathBuf> = (0..OLD)
        .map(|i| drop_file(&env.kickoff, &format!("old-{i}.pdf"), b"old"))
        .collect();
    eventually(
        "the old files are attached",
        || env.kickoff_field().len() == OLD,
        &daemon,
    )
    .await;
    for i in 0..FILES {
        drop_file(
            &env.tasks,
            &format!("scan-{i:03}.pdf"),
            format!("scan {i}").as_bytes(),
        );
    }

    daemon
        .wait_for_log("cannot write the state directory")
        .await;
    for path in &old {
        std::fs::remove_file(path).unwrap();
    }
    let status_text = status(&env, &daemon);
    assert!(
        status_text.contains("paused: state directory full (or not writable)"),
        "{status_text}"
    );
    let (code, health) = http_get(&format!("http://{addr}/healthz")).await;
    assert_eq!(code, 503, "{health}");
    assert!(
        health.contains("paused: state directory full (or not writable)"),
        "{health}"
    );
    let (_, metrics) = http_get(&format!("http://{addr}/metrics")).await;
    for expected in [
        "tallyfy_sync_state_dir_unwritable 1\n",
        "tallyfy_sync_api_paused 1\n",
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected:?}:\n{metrics}"
        );
    }
    eventually(
        "systemd's status line says the state directory is full",
        || {
            notify
                .status_seen(|line| line.contains("paused: state directory full (or not writable)"))
        },
        &daemon,
    )
    .await;
    let log = daemon.log();
    assert_eq!(
        log.matches("cannot write the state directory").count(),
        1,
        "one ERROR for the whole pause:\n{log}"
    );
    assert!(
        !log.contains("will try again when the file changes"),
        "{log}"
    );
    let attached_while_full = env.task_field().len();
    let uploads_while_full = env.uploads();

    let freed = Instant::now();
    std::fs::remove_file(inside(&daemon, &env.state.join("filler"))).unwrap();
    eventually_within(
        RESUME_WAIT,
        "the daemon resumes after space is freed",
        || {
            daemon
                .log()
                .contains("the state directory can be written again")
        },
        &daemon,
    )
    .await;
    let resumed_after = freed.elapsed();
    // Write failures are told in words, never as Rust's debug text of the error.
    for debug in ["Os {", "Storage(", "Io("] {
        assert!(
            !daemon.log().contains(debug),
            "{debug:?} in the log:\n{}",
            daemon.log()
        );
    }
    eventually_within(
        RESUME_WAIT,
        "every file is attached",
        || env.task_field().len() >= FILES,
        &daemon,
    )
    .await;
    let all_attached_after = freed.elapsed();

    let field = env.task_field();
    let names: HashSet<String> = filenames(&field).into_iter().collect();
    assert_eq!(field.len(), FILES, "each file attached exactly once");
    assert_eq!(names.len(), FILES, "each file attached exactly once");
    eventually_within(
        RESUME_WAIT,
        "the old files are deleted",
        || env.kickoff_field().is_empty(),
        &daemon,
    )
    .await;
    let uploads = env.uploads() - OLD;
    let orphans = uploads - FILES;
    eprintln!(
        "state disk full during a {FILES}-file burst: {attached_while_full} attached and \
         {uploads_while_full} uploaded when it filled; {uploads} uploads in all, {orphans} \
         orphans (limit {}); resumed {resumed_after:.1?} after space was freed, every file \
         attached {all_attached_after:.1?} after",
        2 * CONCURRENCY
    );
    assert!(
        orphans <= 2 * CONCURRENCY,
        "{orphans} orphan uploads; log:\n{}",
        daemon.log()
    );
    // A record can reach the disk although its flush failed: the log names every asset that
    // may be an orphan, and so at least every one that is.
    let named = daemon
        .log()
        .matches("uploaded, but recording the asset failed")
        .count();
    assert!(named >= orphans, "{named} assets named as possible orphans");
    let (code, health) = http_get(&format!("http://{addr}/healthz")).await;
    assert_eq!((code, health.as_str()), (200, "ok\n"));
    eventually(
        "status says every file is synced and no delete is pending",
        || {
            let text = status(&env, &daemon);
            text.contains(&format!("{FILES} synced, 0 pending"))
                && !text.contains("remote deletes pending")
        },
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// Starts the daemon on a tmpfs made unwritable by `fill` (see `WRAPPER`), checks that it waits
/// rather than exits, makes the tmpfs writable with `writable`, and checks that it then syncs.
async fn a_start_waits_until_the_state_disk_is_writable(
    fill: &str,
    writable: impl FnOnce(&Env, &Daemon),
) {
    let env = Env::new().await;
    if let Some(why) = cannot_mount(env.dir.path()) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let notify = Notifications::bind(&env);
    let daemon = start_on_tmpfs(&env, fill, &notify.path);
    daemon.wait_for_log("cannot open the state directory").await;
    let log = daemon.log();
    assert!(
        log.contains("state directory full (or not writable)"),
        "{log}"
    );
    eventually(
        "systemd's status line says what the daemon waits for",
        || {
            notify.status_seen(|line| {
                line.starts_with("waiting: state directory full (or not writable)")
            })
        },
        &daemon,
    )
    .await;
    assert_eq!(
        daemon.exited(),
        None,
        "an unwritable disk is waited out, not an exit"
    );

    let freed = Instant::now();
    writable(&env, &daemon);
    eventually_within(
        RESUME_WAIT,
        "the daemon starts once it can write",
        || daemon.log().contains("target verified"),
        &daemon,
    )
    .await;
    let started_after = freed.elapsed();
    drop_file(&env.tasks, "after.pdf", b"after");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    eprintln!(
        "a start on a {fill} state disk went on {started_after:.1?} after it became writable"
    );
    assert_eq!(env.uploads(), 1);
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_full_state_disk_waits_and_syncs_once_space_is_freed() {
    a_start_waits_until_the_state_disk_is_writable("full", |env, daemon| {
        std::fs::remove_file(inside(daemon, &env.state.join("filler"))).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_a_read_only_state_disk_waits_and_syncs_once_it_is_remounted_writable() {
    a_start_waits_until_the_state_disk_is_writable("read-only", |env, daemon| {
        let args = ["-o".as_ref(), "remount,rw".as_ref(), env.state.as_os_str()];
        in_namespace(daemon, OsStr::new("mount"), &args);
    })
    .await;
}
