//! Whatever someone with write access to a watched share puts there: a FIFO or a link swapped
//! in while an upload waits for its retry, hidden folders made while the daemon runs. Nothing
//! from outside the folder is sent, nothing blocks, and the state directory stays private.

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

fn unavailable() -> FaultKind {
    FaultKind::Status {
        status: 503,
        body: r#"{"error": true, "message": "down for maintenance"}"#.into(),
        retry_after: None,
    }
}

fn mkfifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
}

/// Whether the log has a line about `file` that says `what`.
fn logged(daemon: &Daemon, file: &str, what: &str) -> bool {
    daemon
        .log()
        .lines()
        .any(|line| line.contains(file) && line.contains(what))
}

/// `status` of the running daemon, which must answer within `WAIT`.
async fn status(env: &Env) -> Output {
    let config = env.config.clone();
    let asked = tokio::task::spawn_blocking(move || run_command(&["status"], Some(TOKEN), &config));
    tokio::time::timeout(WAIT, asked)
        .await
        .expect("status answers while the daemon runs")
        .unwrap()
}

fn uploaded_names(env: &Env) -> Vec<String> {
    env.fake
        .assets()
        .into_iter()
        .map(|asset| asset.filename)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_swapped_in_before_an_upload_retry_is_refused_and_nothing_blocks() {
    let env = Env::new().await;
    // One 503: the upload waits its backoff (a second or so) and opens the file again.
    env.fake.inject(Fault::once("POST", "/file", unavailable()));
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    drop_file(&env.tasks, "r3.pdf", b"r3");
    daemon.wait_for_log("request failed; retrying in").await;
    // What `mkfifo .f; mv -T .f r3.pdf` does on the share.
    let fifo = env.tasks.join(".f");
    mkfifo(&fifo);
    std::fs::rename(&fifo, env.tasks.join("r3.pdf")).unwrap();
    eventually(
        "the retry found the FIFO",
        || logged(&daemon, "r3.pdf", "not a regular file (a FIFO)"),
        &daemon,
    )
    .await;
    for name in ["r1.pdf", "r2.pdf"] {
        drop_file(&env.tasks, name, name.as_bytes());
    }
    eventually(
        "the other files are attached",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    eventually(
        "the FIFO is recorded as skipped",
        || {
            logged(
                &daemon,
                "r3.pdf",
                "skipped; not retried until the file changes",
            )
        },
        &daemon,
    )
    .await;
    let answered = status(&env).await;
    assert_eq!(answered.status.code(), Some(0), "{}", describe(&answered));
    let line = answered
        .stdout
        .lines()
        .find(|line| line.contains("r3.pdf") && !line.starts_with("keeps changing"))
        .unwrap_or_else(|| panic!("status names r3.pdf: {}", describe(&answered)));
    assert!(
        line.contains("rejected") && line.contains("not a regular file"),
        "{line}"
    );
    let mut attached = filenames(&env.task_field());
    attached.sort();
    assert_eq!(attached, ["r1.pdf", "r2.pdf"]);
    assert_eq!(
        env.uploads(),
        3,
        "r3.pdf's one refused attempt, r1.pdf, r2.pdf"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(10), daemon.stop())
        .await
        .expect("SIGTERM stops the daemon promptly");
    assert!(stopped.success(), "{stopped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subfolder_swapped_for_a_link_out_of_the_folder_before_an_upload_retry_sends_nothing_from_outside(
) {
    let env = Env::with_config("", "recursive: true").await;
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("x.pdf"), b"root only").unwrap();
    let sub = env.tasks.join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("x.pdf"), b"mine").unwrap();
    env.fake.inject(Fault::once("POST", "/file", unavailable()));
    let daemon = env.start();
    daemon.wait_for_log("request failed; retrying in").await;
    std::fs::rename(&sub, env.tasks.join("old")).unwrap();
    std::os::unix::fs::symlink(&outside, &sub).unwrap();
    eventually(
        "the retry gave up on the swapped path",
        || logged(&daemon, "sub/x.pdf", "symbolic link is on its path"),
        &daemon,
    )
    .await;
    eventually(
        "the file, where it went, is attached",
        || filenames(&env.task_field()) == ["x.pdf"],
        &daemon,
    )
    .await;
    drop_file(&env.tasks, "marker.pdf", b"after");
    eventually(
        "a file dropped afterwards is attached",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    let sent: Vec<Vec<u8>> = env
        .fake
        .assets()
        .into_iter()
        .map(|asset| asset.content.to_vec())
        .collect();
    assert!(
        !sent.iter().any(|content| content == b"root only"),
        "nothing from outside the folder is sent"
    );
    assert!(sent.iter().any(|content| content == b"mine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_folders_made_or_renamed_while_running_are_never_synced() {
    let env = Env::with_config("", "recursive: true").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let sub = env.tasks.join("sub");
    std::fs::create_dir(&sub).unwrap();
    drop_file(&sub, "a.pdf", b"in a subfolder");
    eventually(
        "sub/a.pdf is attached",
        || filenames(&env.task_field()) == ["a.pdf"],
        &daemon,
    )
    .await;
    let trash = env.tasks.join(".Trash-1000/files");
    std::fs::create_dir_all(&trash).unwrap();
    drop_file(&trash, "trashed.pdf", b"thrown away");
    std::fs::rename(&sub, env.tasks.join(".sub")).unwrap();
    eventually(
        "sub/a.pdf, now hidden, is deleted from the field",
        || env.task_field().is_empty(),
        &daemon,
    )
    .await;
    drop_file(&env.tasks, "visible.pdf", b"shown");
    eventually(
        "a visible file dropped afterwards is attached",
        || filenames(&env.task_field()) == ["visible.pdf"],
        &daemon,
    )
    .await;
    // A restart scans the folder from the start: the same rule.
    daemon.stop().await;
    let daemon = env.start();
    daemon.wait_for_log("initial scan done").await;
    drop_file(&env.tasks, "last.pdf", b"last");
    eventually(
        "the file dropped after the restart is attached",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    assert_eq!(filenames(&env.task_field()), ["visible.pdf", "last.pdf"]);
    let uploaded = uploaded_names(&env);
    assert!(
        !uploaded.contains(&"trashed.pdf".to_string()),
        "{uploaded:?}"
    );
    assert_eq!(
        env.uploads(),
        3,
        "a.pdf once, visible.pdf and last.pdf: {uploaded:?}"
    );
    let log = daemon.log();
    assert!(
        !log.contains(".Trash-1000") && !log.contains(".sub"),
        "{log}"
    );
}

/// The permission bits of the state directory and of every directory and file under it.
fn modes(dir: &Path) -> Vec<(std::path::PathBuf, u32)> {
    let mut modes = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let metadata = std::fs::symlink_metadata(&dir).unwrap();
        modes.push((dir.clone(), metadata.permissions().mode() & 0o777));
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() {
                dirs.push(entry.path());
            } else if metadata.is_file() {
                modes.push((entry.path(), metadata.permissions().mode() & 0o777));
            }
        }
    }
    modes
}

/// The daemon, started under umask 022 as a shell outside systemd would start it.
fn start_under_umask_022(env: &Env) -> Daemon {
    let mut command = Command::new("sh");
    command.args([
        "-c",
        r#"umask 022; exec "$@""#,
        "sh",
        env!("CARGO_BIN_EXE_tallyfy-sync"),
        "run",
        "--config",
        env.config.to_str().unwrap(),
    ]);
    Daemon::spawn_command(command, TOKEN, env.dir.path(), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_whatever_the_umask_and_an_older_one_is_made_so() {
    let env = Env::new().await;
    let daemon = start_under_umask_022(&env);
    drop_file(&env.tasks, "a.pdf", b"a");
    eventually("a.pdf is attached", || env.task_field().len() == 1, &daemon).await;
    let private = |modes: &[(std::path::PathBuf, u32)]| {
        assert!(modes.len() > 3, "{modes:?}");
        for (path, mode) in modes {
            let expected = if path.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(*mode, expected, "{} is {mode:o}", path.display());
        }
    };
    private(&modes(&env.state));
    daemon.stop().await;
    // As an earlier version left it.
    for (path, _) in modes(&env.state) {
        let public = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(public)).unwrap();
    }
    let daemon = start_under_umask_022(&env);
    daemon.wait_for_log("initial scan done").await;
    private(&modes(&env.state));
    daemon.stop().await;
}
