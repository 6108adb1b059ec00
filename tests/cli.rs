//! The command line, through the real binary: `check` and its problem list, where the token
//! comes from, exit codes, the state directory lock, signals, `status`, `TALLYFY_SYNC_CONFIG`
//! and the demo.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_tallyfy-sync");
/// The exit status for a configuration error (EX_CONFIG).
const EXIT_CONFIG: i32 = 78;
/// What the daemon logs once its store is open and its folders are watched.
const RUNNING: &str = "running; initial scan started";

fn assert_no_token(output: &Output) {
    assert!(
        !output.stdout.contains(TOKEN) && !output.stderr.contains(TOKEN),
        "the token leaked:\nstdout:\n{}\nstderr:\n{}",
        output.stdout,
        output.stderr
    );
}

/// The command exited 78, said `expected` on stderr, and did not panic.
fn assert_config_error(output: &Output, expected: &str, context: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONFIG),
        "{context}: {}",
        describe(output)
    );
    assert!(
        output.stderr.contains(expected),
        "{context}: {}",
        describe(output)
    );
    assert!(
        !output.stderr.contains("panicked"),
        "{context}: {}",
        describe(output)
    );
}

/// The config `Env` wrote, with `api.token_file` set to `file`.
fn with_token_file(env: &Env, file: &Path) -> String {
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let api = format!("  org_id: {ORG}\n");
    assert!(yaml.contains(&api), "{yaml}");
    yaml.replacen(&api, &format!("{api}  token_file: {}\n", file.display()), 1)
}

/// Waits for a child process to exit, killing it and failing after `limit`.
async fn wait_child(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the binary with exactly `envs` added (no inherited token or config variable).
async fn run_with_env(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("TALLYFY_ACCESS_TOKEN")
        .env_remove("TALLYFY_SYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (name, value) in envs {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("binary runs");
    let status = wait_child(&mut child, Duration::from_secs(15), "the command").await;
    Output {
        status,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_valid_config_prints_every_folder_with_its_target_and_never_the_token() {
    let env = Env::new().await;
    let output = env.command(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let lines: Vec<&str> = output.stdout.lines().collect();
    let task_line = format!(
        "  {} → task {TASK} in run {RUN}, field {CAPTURE} (",
        env.tasks.display()
    );
    let kickoff_line = format!(
        "  {} → kick-off field {KICKOFF_FIELD} of template {KICKOFF_TEMPLATE} (",
        env.kickoff.display()
    );
    for expected in [&task_line, &kickoff_line] {
        assert!(
            lines.iter().any(|line| line.starts_with(expected.as_str())),
            "no line starting {expected:?}\n{}",
            describe(&output)
        );
    }
    assert!(
        output
            .stdout
            .contains(&format!("config {} is valid", env.config.display())),
        "{}",
        describe(&output)
    );
    assert!(
        output
            .stdout
            .contains("; token from environment variable TALLYFY_ACCESS_TOKEN\n"),
        "{}",
        describe(&output)
    );
    assert_no_token(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_problem_of_a_bad_config_with_its_key_path() {
    let env = Env::new().await;
    let nested = env.tasks.join("sub");
    std::fs::create_dir(&nested).unwrap();
    let missing = env.dir.path().join("missing");
    let (tasks, nested, missing) = (
        env.tasks.display().to_string(),
        nested.display().to_string(),
        missing.display().to_string(),
    );
    env.write_raw_config(&format!(
        "api:\n\
         \x20 base_url: http://example.com/api\n\
         \x20 concurrency: 0\n\
         colour: blue\n\
         state_dir: {state}\n\
         settle: soon\n\
         folders:\n\
         \x20 - path: {tasks}\n\
         \x20   task: {{run_id: {RUN}, task_id: {TASK}, capture_id: {CAPTURE}}}\n\
         \x20   kickoff: {{checklist_id: {KICKOFF_TEMPLATE}, field_id: {KICKOFF_FIELD}}}\n\
         \x20 - path: {missing}\n\
         \x20   kickoff: {{checklist_id: {KICKOFF_TEMPLATE}, field_id: {KICKOFF_FIELD}}}\n\
         \x20 - path: {nested}\n\
         \x20   kickoff: {{checklist_id: {KICKOFF_TEMPLATE}, field_id: {KICKOFF_FIELD}}}\n",
        state = env.state.display(),
    ));
    let output = env.command(&["check"]);
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(&output)
    );
    let problems = [
        "colour: unknown key (expected one of api, state_dir, settle, rescan_interval, attach_delay, failed_retry_interval, max_delete, metrics, log, folders)".to_string(),
        "api.org_id: required".to_string(),
        "api.base_url \"http://example.com/api\": must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)".to_string(),
        "api.concurrency 0: must be between 1 and 64".to_string(),
        "settle \"soon\": not a duration (use e.g. 500ms, 2s, 5m)".to_string(),
        "folders[0]: needs exactly one of task, kickoff, launch or route (found both)".to_string(),
        format!("folders[2].path {nested:?}: overlaps folders[0].path {tasks:?}"),
    ];
    for problem in &problems {
        assert!(
            output.stderr.contains(&format!("\n  - {problem}\n")),
            "stderr does not name {problem:?}\n{}",
            describe(&output)
        );
    }
    assert!(
        output.stderr.contains(&format!(
            "config file {} has {} problems:",
            env.config.display(),
            problems.len()
        )),
        "{}",
        describe(&output)
    );
    assert!(
        !output.stderr.contains("folders[1].path"),
        "a folder not there yet is no config problem\n{}",
        describe(&output)
    );
    assert!(output.stdout.is_empty(), "{}", describe(&output));
    assert_no_token(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_syntax_error_exits_78_naming_line_and_column() {
    let env = Env::new().await;
    env.write_raw_config(&format!(
        "api:\n  org_id: {ORG}\nsettle: 2s\n   bad: indent\nfolders: []\n"
    ));
    let output = env.command(&["check"]);
    assert_config_error(&output, "config.yaml line 4 column 7: ", "the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_token_check_exits_78_and_says_where_a_token_is_looked_for() {
    let env = Env::new().await;
    let output = run_command(&["check"], None, &env.config);
    assert_config_error(&output, "API token from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token: none is set", "the command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_file_exits_78_naming_the_file() {
    let env = Env::new().await;
    let file = env.dir.path().join("no-such-token");
    env.write_raw_config(&with_token_file(&env, &file));
    let output = run_command(&["check"], None, &env.config);
    assert_config_error(
        &output,
        &format!(
            "API token from file {} (api.token_file): cannot read it: ",
            file.display()
        ),
        "the command",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_holding_a_space_is_refused_without_showing_the_token() {
    let env = Env::new().await;
    let file = env.dir.path().join("token");
    std::fs::write(&file, format!("Bearer {TOKEN}\n")).unwrap();
    env.write_raw_config(&with_token_file(&env, &file));
    for command in ["check", "run"] {
        let output = run_command(&[command], None, &env.config);
        assert_config_error(&output, &format!(
                "API token from file {} (api.token_file): contains whitespace or control characters",
                file.display()
            ), command);
        assert_no_token(&output);
    }
    // The same file with the token alone is accepted: the refusal above is about the space.
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let output = run_command(&["check"], None, &env.config);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_no_token(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_an_invalid_config_exits_78_without_panicking() {
    let env = Env::new().await;
    let missing = env.dir.path().join("absent.yaml");
    let bad = [
        (
            "a config naming no folders",
            format!("api:\n  org_id: {ORG}\nfolders: []\n"),
            "folders: must list at least one folder".to_string(),
        ),
        (
            "a config with a syntax error",
            "api: [\n".to_string(),
            "config.yaml line ".to_string(),
        ),
    ];
    for (what, yaml, expected) in bad {
        env.write_raw_config(&yaml);
        let output = env.command(&["run"]);
        assert_config_error(&output, &expected, what);
    }
    let output = run_command(&["run"], Some(TOKEN), &missing);
    let expected = format!("cannot read config file {}: ", missing.display());
    assert_config_error(&output, &expected, "a missing config file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_state_dir_exits_78_and_the_first_carries_on() {
    let env = Env::new().await;
    let first = env.start();
    first.wait_for_log(RUNNING).await;
    let second = Daemon::spawn(
        &["run", "--config", env.config.to_str().unwrap()],
        TOKEN,
        env.dir.path(),
    );
    let status = second.wait_exit().await;
    let log = second.log();
    assert_eq!(status.code(), Some(EXIT_CONFIG), "second run log:\n{log}");
    assert!(
        log.contains(&format!(
            "state directory {} is in use by another running tallyfy-sync",
            env.state.display()
        )),
        "second run log:\n{log}"
    );
    assert!(!log.contains("panicked"), "second run log:\n{log}");
    assert!(
        first.exited().is_none(),
        "the first daemon stopped; log:\n{}",
        first.log()
    );
    // The first still works: it syncs a file dropped after the second one gave up.
    drop_file(&env.tasks, "after.pdf", b"after");
    eventually(
        "the first daemon attaches a new file",
        || env.task_field().len() == 1,
        &first,
    )
    .await;
    assert_eq!(first.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_status_exit_78_when_the_state_dir_is_not_a_directory() {
    let env = Env::new().await;
    std::fs::write(&env.state, b"not a directory").unwrap();
    let expected = format!("cannot open state directory {}: ", env.state.display());
    for command in ["run", "status"] {
        let output = env.command(&[command]);
        assert_config_error(&output, &expected, command);
    }
}

async fn a_signal_stops_the_daemon_cleanly(signal: i32) {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log(RUNNING).await;
    assert!(!daemon.log().contains("stopped; state saved"));
    daemon.signal(signal);
    let status = daemon.wait_exit().await;
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("stopped; state saved"), "log:\n{log}");
    // The store is released: status can read it now.
    let output = env.command(&["status"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_with_exit_0_and_its_state_saved() {
    a_signal_stops_the_daemon_cleanly(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_daemon_with_exit_0_and_its_state_saved() {
    a_signal_stops_the_daemon_cleanly(libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_asks_the_running_daemon_and_reads_the_store_once_it_stopped() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log(RUNNING).await;
    drop_file(&env.tasks, "Invoice 1.pdf", b"%PDF-1.4 invoice");
    drop_file(&env.tasks, "notes.exe", b"MZ not a document");
    eventually(
        "the invoice is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    daemon.wait_for_log("attached").await;
    daemon.wait_for_log("skipped").await;
    let asset = env.task_field()[0]["id"]
        .as_str()
        .expect("the attached asset has an id")
        .to_string();
    let task_section = format!(
        "\n{} → task {TASK} in run {RUN}, field {CAPTURE}\n  1 synced, 0 pending, 0 held, 1 rejected, 0 failed\n",
        env.tasks.display()
    );
    let kickoff_section = format!(
        "\n{} → kick-off field {KICKOFF_FIELD} of template {KICKOFF_TEMPLATE}\n  0 synced, 0 pending, 0 held, 0 rejected, 0 failed\n",
        env.kickoff.display()
    );
    let expected = [
        task_section,
        kickoff_section,
        format!("\n  synced    Invoice 1.pdf  asset {asset}\n"),
        "\n  rejected  notes.exe  extension .exe is not accepted by Tallyfy (accepted: "
            .to_string(),
    ];

    let running = env.command(&["status", "--all"]);
    assert_eq!(running.status.code(), Some(0), "{}", describe(&running));
    assert!(running.stdout.contains(&format!(
        "state: {} (daemon running)\n",
        env.state.display()
    )));
    for expected in &expected {
        assert!(
            running.stdout.contains(expected),
            "status lacks {expected:?}\n{}",
            describe(&running)
        );
    }
    let json = env.command(&["status", "--json"]);
    assert_eq!(json.status.code(), Some(0), "{}", describe(&json));
    let report: serde_json::Value =
        serde_json::from_str(&json.stdout).expect("status --json prints JSON");
    assert_eq!(report["daemon_running"], true);
    assert_eq!(report["folders"][0]["counts"]["synced"], 1);
    assert_eq!(report["folders"][0]["files"][0]["asset_id"], asset.as_str());
    let socket = env.state.join("control.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the control socket exists")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(daemon.exited().is_none(), "status must not stop the daemon");

    assert_eq!(daemon.stop().await.code(), Some(0));
    let stopped = env.command(&["status", "--all"]);
    assert_eq!(stopped.status.code(), Some(0), "{}", describe(&stopped));
    assert!(stopped
        .stdout
        .contains("(daemon not running; read from the store)"));
    for expected in &expected {
        assert!(
            stopped.stdout.contains(expected),
            "status lacks {expected:?}\n{}",
            describe(&stopped)
        );
    }
    assert_no_token(&stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_comes_from_tallyfy_sync_config_when_no_flag_is_given() {
    let env = Env::new().await;
    let token = env.dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    env.write_raw_config(&with_token_file(&env, &token));
    let output = run_with_env(&["check"], &[("TALLYFY_SYNC_CONFIG", &env.config)]).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        output
            .stdout
            .contains(&format!("config {} is valid", env.config.display())),
        "{}",
        describe(&output)
    );
    // The flag wins over the variable.
    let elsewhere = env.dir.path().join("elsewhere.yaml");
    let output = run_with_env(
        &["check", "--config", env.config.to_str().unwrap()],
        &[("TALLYFY_SYNC_CONFIG", &elsewhere)],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let output = run_with_env(&["check"], &[("TALLYFY_SYNC_CONFIG", &elsewhere)]).await;
    let expected = format!("cannot read config file {}", elsewhere.display());
    assert_config_error(
        &output,
        &expected,
        "TALLYFY_SYNC_CONFIG names a missing file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tours_its_folders_and_stops_cleanly_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new(BIN)
        .args(["demo", "--dir", demo.to_str().unwrap()])
        .env_remove("TALLYFY_ACCESS_TOKEN")
        .env_remove("TALLYFY_SYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("the demo starts");
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read(&out).contains("Your turn") {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the demo exited early with {status}\nstdout:\n{}\nstderr:\n{}",
                read(&out),
                read(&err)
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo never said \"Your turn\"\nstdout:\n{}\nstderr:\n{}",
                read(&out),
                read(&err)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (stdout, stderr) = (read(&out), read(&err));
    let both = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("Invoice 2041.pdf"), "{both}");
    // Names next to ids, in the tour and in the log.
    assert!(
        stdout.contains("of task \"Review the signed contract\"")
            && stdout.contains("of template \"Customer onboarding\""),
        "{both}"
    );
    assert!(stderr.contains("field_label=\"Signed contract\""), "{both}");
    for needle in [
        "uploaded",
        "attached",
        "deleted from Tallyfy",
        "started process 'Invoice 2042'",
        "which already started process 'Invoice 2042'; launching nothing",
    ] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}\n{both}");
    }
    assert!(!stderr.contains("gave up waiting"), "{both}");
    assert!(demo.join("invoices/Invoice 2041.pdf").is_file(), "{both}");

    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = wait_child(&mut child, Duration::from_secs(15), "the demo").await;
    assert_eq!(
        status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        read(&out),
        read(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_a_non_empty_directory_it_did_not_make_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("thesis.docx"), b"five years of work").unwrap();
    std::fs::create_dir(precious.join("data")).unwrap();
    std::fs::write(precious.join("data/results.csv"), b"1,2,3\n").unwrap();

    let output = run_with_env(&["demo", "--dir", precious.to_str().unwrap()], &[]).await;
    assert_ne!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        output.stderr.contains(&format!(
            "{} exists and was not made by the demo; choose another place with --dir",
            precious.display()
        )),
        "{}",
        describe(&output)
    );
    assert!(!output.stderr.contains("panicked"), "{}", describe(&output));
    assert_eq!(
        std::fs::read(precious.join("thesis.docx")).unwrap(),
        b"five years of work"
    );
    assert_eq!(
        std::fs::read(precious.join("data/results.csv")).unwrap(),
        b"1,2,3\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(&precious)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["data", "thesis.docx"],
        "nothing was added or removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_config_is_valid_once_its_folders_exist() {
    let env = Env::new().await;
    let onboarding = env.dir.path().join("onboarding");
    std::fs::create_dir(&onboarding).unwrap();
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/tallyfy-sync.example.yaml"
    ))
    .unwrap()
    .replace("/srv/tallyfy/invoices", env.tasks.to_str().unwrap())
    .replace("/srv/tallyfy/contracts", env.kickoff.to_str().unwrap())
    .replace("/srv/tallyfy/onboarding", onboarding.to_str().unwrap());
    env.write_raw_config(&example);
    let output = env.command(&["check"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_summarises_each_folder_lists_what_needs_attention_and_filters_by_path() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log(RUNNING).await;
    drop_file(&env.tasks, "good.pdf", b"%PDF-1.4 good");
    drop_file(&env.tasks, "bad.exe", b"MZ");
    drop_file(&env.kickoff, "contract.pdf", b"%PDF-1.4 contract");
    eventually(
        "both good files are attached",
        || env.task_field().len() == 1 && env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;
    daemon.wait_for_log("skipped").await;

    let summary = env.command(&["status"]);
    assert!(summary.status.success(), "{}", describe(&summary));
    let text = &summary.stdout;
    let tasks = env.tasks.display();
    for expected in [
        format!("folders:\n  {tasks}: syncing (1 synced, 0 pending, 0 failed)\n"),
        "\n  state: syncing\n".to_string(),
        "\n  last success 20".to_string(),
        " UTC (".to_string(),
        "  rejected  bad.exe  extension .exe".to_string(),
        "  (1 file in sync not listed; `tallyfy-sync status --all` lists them)".to_string(),
    ] {
        assert!(text.contains(&expected), "lacks {expected:?}:\n{text}");
    }
    assert!(
        !text.contains("good.pdf"),
        "a synced file is not listed:\n{text}"
    );

    let all = env.command(&["status", "--all"]).stdout;
    assert!(all.contains("  synced    good.pdf  asset "), "{all}");
    assert!(all.contains("  synced    contract.pdf  asset "), "{all}");

    let folder = env
        .command(&["status", env.kickoff.to_str().unwrap()])
        .stdout;
    assert!(
        folder.contains(&env.kickoff.display().to_string()),
        "{folder}"
    );
    assert!(!folder.contains(&tasks.to_string()), "{folder}");

    let file = env.tasks.join("good.pdf");
    let one = env.command(&["status", file.to_str().unwrap()]).stdout;
    assert!(one.contains("  synced    good.pdf  asset "), "{one}");
    assert!(!one.contains("bad.exe"), "{one}");

    let json = env.command(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    let first = &report["folders"][0];
    assert_eq!(first["state"], "syncing");
    assert_eq!(
        first["files"].as_array().unwrap().len(),
        2,
        "JSON keeps every file"
    );
    assert!(first["last_success"].as_u64().is_some(), "{first}");
    assert!(first["files"][0]["since"].as_u64().is_some(), "{first}");

    let elsewhere = env.command(&["status", "/nowhere"]);
    assert_eq!(elsewhere.status.code(), Some(1), "{}", describe(&elsewhere));
    assert!(
        elsewhere
            .stderr
            .contains("/nowhere is in no configured folder"),
        "{}",
        describe(&elsewhere)
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}
