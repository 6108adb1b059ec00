//! `check --online` and `run --dry-run` through the real binary: targets verified against the
//! fake API with GETs only, the exit statuses, and the plan of what `run` would do, which
//! sends and records nothing (a real run afterwards still does all of it).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tallyfy_sync::fake::{Fault, FaultKind};

const EXIT_CONFIG: i32 = 78;
/// What the daemon logs once its store is open and its folders are watched.
const RUNNING: &str = "running; initial scan started";

/// The command exited `code`; else the test fails showing all it printed.
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", describe(output));
}

fn assert_stderr_says(output: &Output, needle: &str) {
    assert!(output.stderr.contains(needle), "{}", describe(output));
}

/// The methods of the requests the fake saw from the `from`th on.
fn methods_since(env: &Env, from: usize) -> Vec<String> {
    env.fake.requests()[from..]
        .iter()
        .map(|request| format!("{} {}", request.method, request.path))
        .filter(|request| !request.starts_with("GET "))
        .collect()
}

/// The line of `output`'s stdout that starts with `prefix` (after the indent).
fn line<'a>(output: &'a Output, prefix: &str) -> &'a str {
    output
        .stdout
        .lines()
        .find(|line| line.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}; {}", describe(output)))
}

/// What `check --online` printed about `folder`'s target.
fn verdict<'a>(output: &'a Output, folder: &std::path::Path) -> &'a str {
    let prefix = format!("  {} → ", folder.display());
    output
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("targets ("))
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no verdict on {}; {}", folder.display(), describe(output)))
}

fn unavailable() -> FaultKind {
    FaultKind::Status {
        status: 503,
        body: r#"{"error": true, "message": "down for maintenance"}"#.into(),
        retry_after: None,
    }
}

/// Starts the daemon, drops `files` into the task folder, waits until all are attached,
/// stops it; returns the asset id of each file by name.
async fn synced(env: &Env, files: &[(&str, &[u8])]) -> std::collections::HashMap<String, String> {
    let daemon = env.start();
    for (name, content) in files {
        drop_file(&env.tasks, name, content);
    }
    eventually(
        "every file is attached",
        || env.task_field().len() == files.len(),
        &daemon,
    )
    .await;
    assert!(daemon.stop().await.success());
    let field = env.task_field();
    filenames(&field).into_iter().zip(ids(&field)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_says_target_ok_for_every_folder_and_sends_only_gets() {
    let env = Env::new().await;
    let output = env.command(&["check", "--online"]);
    assert_exit(&output, 0);
    for folder in [&env.tasks, &env.kickoff] {
        let said = verdict(&output, folder);
        assert!(said.ends_with(": target OK"), "{said}");
    }
    assert_eq!(methods_since(&env, 0), Vec::<String>::new());
    assert!(!env.fake.requests().is_empty(), "the API was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_exits_78_naming_a_capture_id_the_task_does_not_have() {
    let env = Env::new().await;
    env.replace_in_config("capture_id: cap1", "capture_id: cap9");
    let output = env.command(&["check", "--online"]);
    assert_exit(&output, EXIT_CONFIG);
    let task = verdict(&output, &env.tasks);
    assert!(
        task.contains("target wrong: task task1 in run run1 has no form field with capture id cap9; its fields are: cap1 (\"Invoices\", file), cap2 (\"Notes\", text)"),
        "{task}"
    );
    let kickoff = verdict(&output, &env.kickoff);
    assert!(kickoff.ends_with(": target OK"), "{kickoff}");
    assert_stderr_says(&output, "1 of 2 targets are wrong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_exits_78_when_the_task_is_completed() {
    let env = Env::new().await;
    env.fake.set_task_status(RUN, TASK, "completed");
    let output = env.command(&["check", "--online"]);
    assert_exit(&output, EXIT_CONFIG);
    let task = verdict(&output, &env.tasks);
    assert!(
        task.contains("task task1 in run run1 is completed, and Tallyfy does not allow changes to completed tasks"),
        "{task}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_exits_1_within_seconds_when_the_api_is_unreachable() {
    let env = Env::new().await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    env.replace_in_config(
        &format!("base_url: {}", env.fake.base_url()),
        &format!("base_url: http://127.0.0.1:{closed}/api"),
    );
    let started = Instant::now();
    let output = env.command(&["check", "--online"]);
    let took = started.elapsed();
    assert_exit(&output, 1);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_stderr_says(
        &output,
        "could not verify the targets: cannot reach the Tallyfy API",
    );
    assert_stderr_says(&output, "gave up after 3 attempts");
    let kickoff = verdict(&output, &env.kickoff);
    assert!(
        kickoff.contains("not verified: the API was not asked, as it could not be reached"),
        "{kickoff}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_lists_new_changed_deleted_and_skipped_files_and_a_real_run_then_does_them() {
    let env = Env::new().await;
    let assets = synced(
        &env,
        &[
            ("keep.pdf", b"same"),
            ("change.pdf", b"v1"),
            ("gone.pdf", b"bye"),
        ],
    )
    .await;
    drop_file(&env.tasks, "new.pdf", b"brand new");
    drop_file(&env.tasks, "change.pdf", b"version two");
    drop_file(&env.tasks, "keep.pdf", b"same"); // rewritten, same bytes
    drop_file(&env.tasks, "tool.exe", b"MZ");
    std::fs::remove_file(env.tasks.join("gone.pdf")).unwrap();
    let before = env.fake.requests().len();

    let output = env.command(&["run", "--dry-run"]);
    assert_exit(&output, 0);
    assert!(verdict(&output, &env.tasks).ends_with("target OK"));
    assert_eq!(line(&output, "upload "), "  upload    new.pdf (9 B)");
    assert_eq!(
        line(&output, "replace "),
        format!(
            "  replace   change.pdf (11 B), in place of asset {}",
            assets["change.pdf"]
        )
    );
    assert_eq!(
        line(&output, "unchanged "),
        "  unchanged keep.pdf: touched, same content; nothing to send"
    );
    assert!(line(&output, "skip ")
        .starts_with("  skip      tool.exe: extension .exe is not accepted by Tallyfy"));
    assert_eq!(
        line(&output, "delete "),
        format!("  delete    gone.pdf: asset {}", assets["gone.pdf"])
    );
    assert_eq!(
        line(&output, "nothing to do"),
        "  nothing to do",
        "the kick-off folder"
    );
    assert_eq!(
        output.stdout.lines().last().unwrap(),
        "would upload 1 new (9 B), replace 1 (11 B), attach 0, delete 1, skip 1; hold 0"
    );

    let json = env.command(&["run", "--dry-run", "--json"]);
    assert_exit(&json, 0);
    let plan: Value = serde_json::from_str(&json.stdout).expect("stdout is one JSON document");
    assert_eq!(plan["summary"]["upload"], 1);
    assert_eq!(plan["summary"]["replace"], 1);
    assert_eq!(plan["summary"]["delete"], 1);
    assert_eq!(plan["summary"]["skip"], 1);
    assert_eq!(plan["targets"][0]["verdict"], "ok");
    let actions = plan["folders"][0]["actions"].as_array().unwrap();
    let replace = actions.iter().find(|a| a["action"] == "replace").unwrap();
    assert_eq!(replace["replaces"], assets["change.pdf"].as_str());
    assert_stderr_says(&json, "target OK");

    assert_eq!(
        methods_since(&env, before),
        Vec::<String>::new(),
        "only GETs"
    );
    assert_eq!(env.task_field().len(), 3, "the field is as it was");

    let daemon = env.start();
    eventually(
        "the real run uploads, replaces and deletes",
        || {
            let names = filenames(&env.task_field());
            names.len() == 3
                && names.contains(&"new.pdf".to_string())
                && !ids(&env.task_field()).contains(&assets["change.pdf"])
                && env.fake.asset(&assets["gone.pdf"]).is_none()
        },
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 3 + 2, "keep.pdf is not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_after_a_crash_lists_files_waiting_to_be_attached_and_deletes_not_confirmed() {
    let env = Env::new().await;
    let assets = synced(&env, &[("gone.pdf", b"bye")]).await;
    let daemon = env.start();
    env.fake
        .inject(Fault::once("PUT", "/tasks/", unavailable()).times(usize::MAX));
    env.fake
        .inject(Fault::once("DELETE", "/file/", unavailable()).times(usize::MAX));
    drop_file(&env.tasks, "late.pdf", b"late");
    daemon.wait_for_log("uploaded folder=").await;
    std::fs::remove_file(env.tasks.join("gone.pdf")).unwrap();
    daemon
        .wait_for_log("removed locally; deleting it from Tallyfy")
        .await;
    daemon.kill();
    let late = env
        .fake
        .assets()
        .into_iter()
        .find(|asset| asset.filename == "late.pdf")
        .expect("late.pdf was uploaded");
    let before = env.fake.requests().len();

    let output = env.command(&["run", "--dry-run"]);
    assert_exit(&output, 0);
    assert_eq!(
        line(&output, "attach "),
        format!(
            "  attach    late.pdf: asset {}, uploaded before the last stop",
            late.id
        )
    );
    assert_eq!(
        line(&output, "pending "),
        format!(
            "  pending   gone.pdf: delete of asset {} not confirmed before the last stop; sent again",
            assets["gone.pdf"]
        )
    );
    assert!(line(&output, "would upload ")
        .ends_with("attach 1, delete 0, skip 0; hold 0; pending deletes 1"));
    assert_eq!(
        methods_since(&env, before),
        Vec::<String>::new(),
        "only GETs"
    );

    env.fake.clear_faults();
    let daemon = env.start();
    eventually(
        "the restart attaches late.pdf and deletes gone.pdf",
        || {
            filenames(&env.task_field()) == ["late.pdf"]
                && env.fake.asset(&assets["gone.pdf"]).is_none()
        },
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 2, "late.pdf is attached, not uploaded again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_names_the_deletes_max_delete_would_hold() {
    let env = Env::new().await;
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("{i:02}.pdf"), format!("{i}").into_bytes()))
        .collect();
    let files: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(name, content)| (name.as_str(), content.as_slice()))
        .collect();
    synced(&env, &files).await;
    for i in 0..7 {
        std::fs::remove_file(env.tasks.join(format!("{i:02}.pdf"))).unwrap();
    }
    let output = env.command(&["run", "--dry-run"]);
    assert_exit(&output, 0);
    assert!(
        line(&output, "max_delete holds the deletes")
            .contains("7 of 12 synced files are gone, more than 50%"),
        "{}",
        describe(&output)
    );
    let held = output
        .stdout
        .lines()
        .filter(|line| line.starts_with("  hold      ") && line.ends_with("(held by max_delete)"))
        .count();
    assert_eq!(held, 7, "{}", describe(&output));
    assert!(line(&output, "would upload ").ends_with("delete 0, skip 0; hold 7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_before_the_first_run_plans_every_file_and_creates_no_state() {
    let env = Env::new().await;
    drop_file(&env.tasks, "a.pdf", b"a");
    drop_file(&env.kickoff, "b.pdf", b"bb");
    let output = env.command(&["run", "--dry-run"]);
    assert_exit(&output, 0);
    assert_eq!(
        output.stdout.lines().last().unwrap(),
        "would upload 2 new (3 B), replace 0 (0 B), attach 0, delete 0, skip 0; hold 0"
    );
    assert!(!env.state.exists(), "the state directory was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_while_the_daemon_runs_plans_from_the_daemons_records() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log(RUNNING).await;
    drop_file(&env.tasks, "a.pdf", b"a");
    eventually("a.pdf is attached", || env.task_field().len() == 1, &daemon).await;
    daemon.wait_for_log(" attached folder=").await;
    let from = env.fake.requests().len();
    let output = env.command(&["run", "--dry-run"]);
    assert_exit(&output, 0);
    // The daemon's record says a.pdf is synced: nothing to upload, nothing changed.
    assert_eq!(
        output.stdout.lines().last().unwrap(),
        "would upload 0 new (0 B), replace 0 (0 B), attach 0, delete 0, skip 0; hold 0",
        "{}",
        describe(&output)
    );
    assert_eq!(methods_since(&env, from), Vec::<String>::new());
    assert!(daemon.exited().is_none(), "the daemon carries on");
    drop_file(&env.tasks, "b.pdf", b"b");
    eventually(
        "the daemon still syncs",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
}
