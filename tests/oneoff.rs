//! A folder feeding a one-off task (a task in no process: `task` without `run_id`), end to end
//! through the real binary: the same life as a task folder's, at the task's own route and with
//! uploads that name the task and neither step nor template.

mod common;

use common::*;
use tallyfy_sync::fake::ONE_OFF;

const EXIT_CONFIG: i32 = 78;

/// Drops `name` into the one-off folder and waits until the task's field lists it.
async fn synced(env: &Env, daemon: &Daemon, name: &str, content: &[u8]) -> String {
    attached(daemon, &env.tasks, name, content, || env.one_off_field()).await
}

/// `output` is a refusal for a config error (exit 78) whose `stream` says `expected`.
fn assert_refused(output: &Output, stream: &str, expected: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(output)
    );
    assert!(
        stream.contains(expected),
        "{expected:?}: {}",
        describe(output)
    );
}

/// No request went to a process's task: the one-off task was read and written on its own.
fn assert_no_run_route(env: &Env) {
    let runs: Vec<String> = env
        .fake
        .requests()
        .into_iter()
        .filter(|request| request.path.contains("/runs/"))
        .map(|request| format!("{} {}", request.method, request.path))
        .collect();
    assert!(runs.is_empty(), "requests under /runs/: {runs:?}");
}

/// Requests since the `before`th that change something.
fn writes_since(env: &Env, before: usize) -> Vec<String> {
    env.fake
        .requests()
        .into_iter()
        .skip(before)
        .filter(|request| request.method != "GET")
        .map(|request| format!("{} {}", request.method, request.path))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_folder_attaches_replaces_and_deletes_files_at_the_tasks_own_route() {
    let env = Env::one_off().await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let first = synced(&env, &daemon, "NDA ACME.pdf", b"%PDF signed v1").await;
    let asset = env.fake.asset(&first).expect("the attached asset exists");
    let sent = &asset.fields;
    let field = |name: &str| sent.get(name).map(String::as_str);
    assert_eq!(field("subject_type"), Some("Task"));
    assert_eq!(field("subject_id"), Some(ONE_OFF_TASK));
    assert_eq!(field("uploaded_from"), Some(ONE_OFF_CAPTURE));
    assert_eq!(field("source"), Some("local"));
    assert_eq!(field("step_id"), None, "a one-off task has no step");
    assert_eq!(field("checklist_id"), None, "nor a template");
    assert!(
        env.task_field().is_empty(),
        "the process's task is not touched"
    );

    std::fs::write(
        env.tasks.join("NDA ACME.pdf"),
        b"%PDF signed v2, countersigned",
    )
    .unwrap();
    eventually(
        "the new version replaced the old",
        || {
            let field = env.one_off_field();
            filenames(&field) == ["NDA ACME.pdf"] && !ids(&field).contains(&first)
        },
        &daemon,
    )
    .await;
    let second = id_of(&env.one_off_field(), "NDA ACME.pdf");
    assert_eq!(
        env.fake.asset(&second).unwrap().content.as_ref(),
        b"%PDF signed v2, countersigned"
    );
    eventually(
        "the old asset is deleted",
        || env.fake.asset(&first).is_none(),
        &daemon,
    )
    .await;

    std::fs::remove_file(env.tasks.join("NDA ACME.pdf")).unwrap();
    eventually(
        "the deleted file leaves the field and Tallyfy",
        || env.one_off_field().is_empty() && env.fake.asset(&second).is_none(),
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert!(!env
        .requests("PUT", &format!("/tasks/{ONE_OFF_TASK}"))
        .is_empty());
    assert_no_run_route(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_one_off_folder_sends_nothing_again_and_verifies_in_sync() {
    let env = Env::one_off().await;
    let daemon = env.start();
    for name in ["a.pdf", "b.pdf", "c.pdf"] {
        synced(&env, &daemon, name, name.as_bytes()).await;
    }
    assert_eq!(daemon.stop().await.code(), Some(0));
    let before = env.fake.requests().len();
    let daemon = env.start();
    daemon
        .wait_for_log("0 new or changed files to check and upload, 0 gone")
        .await;
    let verified = env.command(&["verify", env.tasks.to_str().unwrap()]);
    assert_all_in_sync(&verified, 3);
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(writes_since(&env, before), Vec::<String>::new());
    assert_eq!(filenames(&env.one_off_field()), ["a.pdf", "b.pdf", "c.pdf"]);
    assert_no_run_route(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_folder_that_lost_its_files_is_restored_and_the_daemon_then_sends_nothing() {
    let env = Env::one_off().await;
    let daemon = env.start();
    synced(&env, &daemon, "a.pdf", b"%PDF a").await;
    synced(&env, &daemon, "b.pdf", b"%PDF b").await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    for name in ["a.pdf", "b.pdf"] {
        std::fs::remove_file(env.tasks.join(name)).unwrap();
    }
    let before = env.fake.requests().len();

    let restored = env.command(&["restore", env.tasks.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(0), "{}", describe(&restored));
    assert!(
        report_line(&restored, &env.tasks.join("a.pdf").display().to_string())
            .starts_with("restored")
    );
    assert_eq!(std::fs::read(env.tasks.join("a.pdf")).unwrap(), b"%PDF a");
    assert_eq!(std::fs::read(env.tasks.join("b.pdf")).unwrap(), b"%PDF b");

    let daemon = env.start();
    daemon
        .wait_for_log("0 new or changed files to check and upload, 0 gone")
        .await;
    assert_all_in_sync(&env.command(&["verify"]), 2);
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(writes_since(&env, before), Vec::<String>::new());
    assert_eq!(filenames(&env.one_off_field()), ["a.pdf", "b.pdf"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_from_a_one_off_task_in_tallyfy_is_noticed_counted_and_left_removed() {
    let env = Env::one_off_with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("serving metrics at /metrics").await;
    let removed = synced(&env, &daemon, "a.pdf", b"%PDF a").await;
    env.fake.detach_asset(&removed);
    synced(&env, &daemon, "b.pdf", b"%PDF b").await;
    daemon
        .wait_for_log("removed from its field in Tallyfy")
        .await;
    assert_eq!(filenames(&env.one_off_field()), ["b.pdf"]);
    let status = env.command(&["status"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|line| line.contains("a.pdf") && line.contains("removed in Tallyfy")),
        "{}",
        describe(&status)
    );
    let (_, metrics) = http_get(&format!("http://{}/metrics", daemon.metrics_addr())).await;
    for expected in [
        "tallyfy_sync_remote_removals_total{action=\"left\"} 1\n".to_string(),
        format!(
            "tallyfy_sync_files{{folder=\"{}\",state=\"removed\"}} 1\n",
            env.tasks.display()
        ),
        format!(
            "tallyfy_sync_files{{folder=\"{}\",state=\"synced\"}} 1\n",
            env.tasks.display()
        ),
    ] {
        assert!(
            metrics.contains(&expected),
            "/metrics lacks {expected:?}:\n{metrics}"
        );
    }
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_refused_by_a_completed_one_off_task_heals_once_the_task_is_reopened() {
    let env = Env::one_off_with_config("failed_retry_interval: 2s\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    env.fake.set_task_status(ONE_OFF, ONE_OFF_TASK, "completed");
    drop_file(&env.tasks, "late.pdf", b"x");
    daemon
        .wait_for_log("could not attach; not retried until the file changes")
        .await;
    daemon.wait_for_log("the target still refuses files").await;
    assert_eq!(env.uploads(), 1, "no upload while the target refuses files");
    env.fake.set_task_status(ONE_OFF, ONE_OFF_TASK, "active");
    eventually(
        "attached once the task is reopened",
        || filenames(&env.one_off_field()) == ["late.pdf"],
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_names_the_one_off_tasks_title_and_field_label_and_the_dry_run_plans_its_upload(
) {
    let env = Env::one_off().await;
    let check = env.command(&["check", "--online"]);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    let line = check
        .stdout
        .lines()
        .skip_while(|line| !line.starts_with("targets ("))
        .find(|line| line.starts_with(&format!("  {} → ", env.tasks.display())))
        .unwrap_or_else(|| panic!("a verdict on the folder: {}", describe(&check)));
    assert_eq!(
        line,
        format!(
            "  {} → one-off task {ONE_OFF_TASK}, field {ONE_OFF_CAPTURE} (field \"{ONE_OFF_LABEL}\" of task \"{ONE_OFF_TITLE}\"): target OK",
            env.tasks.display()
        )
    );

    drop_file(&env.tasks, "nda.pdf", b"%PDF");
    let dry = env.command(&["run", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    assert!(
        dry.stdout.contains("  upload    nda.pdf (4 B)"),
        "{}",
        describe(&dry)
    );
    assert_eq!(env.uploads(), 0);
    assert!(env.requests("PUT", "").is_empty());
    assert_no_run_route(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_refuses_a_completed_one_off_task_saying_why() {
    let env = Env::one_off().await;
    env.fake.set_task_status(ONE_OFF, ONE_OFF_TASK, "completed");
    let check = env.command(&["check", "--online"]);
    assert_refused(&check, &check.stdout, &format!(
        "target wrong: one-off task {ONE_OFF_TASK} is completed, and Tallyfy does not allow changes to completed tasks"
    ));
    assert_refused(&check, &check.stderr, "1 of 2 targets are wrong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_task_with_a_run_id_is_a_config_error_naming_the_key() {
    let env = Env::one_off().await;
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let task = format!("      task_id: {ONE_OFF_TASK}\n");
    env.write_raw_config(&yaml.replacen(
        &task,
        &format!("{task}      run_id: {RUN}\n      one_off: true\n"),
        1,
    ));
    let check = env.command(&["check"]);
    assert_refused(
        &check,
        &check.stderr,
        "folders[0].task.one_off: a one-off task belongs to no process, yet run_id is set",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configs_one_off_folder_is_valid_once_uncommented() {
    let env = Env::new().await;
    let nda = env.dir.path().join("nda");
    std::fs::create_dir(&nda).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tallyfy-sync.example.yaml"
    ))
    .unwrap();
    let block: String = example
        .lines()
        .skip_while(|line| *line != "  # - path: /srv/tallyfy/nda")
        .take_while(|line| !line.is_empty())
        .map(|line| format!("{}\n", line.replacen("  # ", "  ", 1)))
        .collect();
    assert!(block.contains("one_off: true"), "{block}");
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    env.write_raw_config(&(yaml + &block.replace("/srv/tallyfy/nda", nda.to_str().unwrap())));
    let output = env.command(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        output
            .stdout
            .contains("one-off task ONE_OFF_TASK_ID, field CAPTURE_ID"),
        "{}",
        describe(&output)
    );
}
