//! Diagnoses that name the key to change, through the real binary against the fake API: a
//! wrong organization, an `api.base_url` without `/api`, a template id where a process id
//! belongs and the other way round, and tabs in the YAML.

mod common;

use common::*;

const EXIT_CONFIG: i32 = 78;

/// `check --online` exited 78 and printed `expected` (on stdout or stderr).
fn assert_wrong(output: &Output, expected: &str) {
    assert_eq!(
        output.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(output)
    );
    assert!(
        output.stdout.contains(expected) || output.stderr.contains(expected),
        "{expected:?} not said:\n{}",
        describe(output)
    );
    assert!(!output.stderr.contains("panicked"), "{}", describe(output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_org_id_is_reported_once_naming_api_org_id_not_per_folder() {
    let env = Env::new().await;
    env.replace_in_config(&format!("org_id: {ORG}"), "org_id: someone-else");
    let output = env.command(&["check", "--online"]);
    assert_wrong(&output, "api.org_id \"someone-else\" is wrong");
    assert_eq!(
        output
            .stdout
            .matches("api.org_id \"someone-else\" is wrong")
            .count(),
        1,
        "{}",
        describe(&output)
    );
    assert!(
        output
            .stdout
            .contains("the API was not asked, as api.org_id is wrong (see above)"),
        "{}",
        describe(&output)
    );
    assert!(
        !output.stdout.contains("may not see"),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_without_api_names_api_base_url() {
    let env = Env::new().await;
    let base = env.fake.base_url();
    let bare = base.trim_end_matches("/api").to_string();
    env.replace_in_config(&base, &bare);
    let output = env.command(&["check", "--online"]);
    assert_wrong(
        &output,
        &format!("api.base_url {bare} does not answer like the Tallyfy API"),
    );
    assert!(
        output
            .stdout
            .contains("the API lives under /api, e.g. https://go.tallyfy.com/api"),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_id_in_run_id_names_the_key_and_the_template() {
    let env = Env::new().await;
    env.replace_in_config(
        &format!("run_id: {RUN}"),
        &format!("run_id: {KICKOFF_TEMPLATE}"),
    );
    let output = env.command(&["check", "--online"]);
    assert_wrong(
        &output,
        &format!(
            "folders[0].task.run_id {KICKOFF_TEMPLATE} is the id of template \"{KICKOFF_TITLE}\", not of a process"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_id_in_checklist_id_names_the_key_and_the_template_to_use() {
    let env = Env::new().await;
    let run = env.fake.start_run(KICKOFF_TEMPLATE, "Intake ACME");
    env.replace_in_config(
        &format!("checklist_id: {KICKOFF_TEMPLATE}"),
        &format!("checklist_id: {run}"),
    );
    let output = env.command(&["check", "--online"]);
    assert_wrong(
        &output,
        &format!(
            "folders[1].kickoff.checklist_id {run} is the id of process \"Intake ACME\", not of a template; its template's id is {KICKOFF_TEMPLATE}"
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_the_process_lacks_is_named_with_the_tasks_it_has() {
    let env = Env::new().await;
    env.fake.add_steps(
        KICKOFF_TEMPLATE,
        vec![tallyfy_sync::fake::FakeStep {
            id: "step-sign".into(),
            title: "Sign the contract".into(),
            fields: vec![field(
                "cap-signed",
                "Signed copy",
                "file",
                serde_json::json!([]),
            )],
        }],
    );
    let run = env.fake.start_run(KICKOFF_TEMPLATE, "Intake ACME");
    env.replace_in_config(&format!("run_id: {RUN}"), &format!("run_id: {run}"));
    let output = env.command(&["check", "--online"]);
    assert_wrong(
        &output,
        &format!(
            "folders[0].task.task_id {TASK}: process \"Intake ACME\" ({run}) has no task with this id; its tasks are: \"Sign the contract\" ("
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tab_in_the_yaml_says_yaml_uses_spaces_with_the_line() {
    let env = Env::new().await;
    env.replace_in_config("  timeout: 10s", "\ttimeout: 10s");
    let output = env.command(&["check"]);
    assert_wrong(
        &output,
        "YAML uses spaces, not tabs: line 4 is indented with a tab",
    );
    assert!(
        output.stderr.contains("config.yaml line "),
        "the parser's words stay: {}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_reports_a_wrong_org_id_once_not_per_folder() {
    let env = Env::new().await;
    env.replace_in_config(&format!("org_id: {ORG}"), "org_id: someone-else");
    let daemon = env.start();
    daemon
        .wait_for_log("no folder is synced until the config is fixed")
        .await;
    // Both targets were asked about, the organization once.
    let deadline = std::time::Instant::now() + WAIT;
    while env
        .requests("GET", &format!("/runs/{RUN}/tasks/{TASK}"))
        .is_empty()
        || env
            .requests("GET", &format!("/checklists/{KICKOFF_TEMPLATE}"))
            .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "both targets asked");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let probes = env
        .fake
        .requests()
        .into_iter()
        .filter(|request| request.path.ends_with("/checklists"))
        .count();
    assert_eq!(probes, 1, "the organization is asked about once");
    let log = daemon.log();
    assert!(daemon.stop().await.success());
    assert_eq!(
        log.matches("api.org_id \"someone-else\" is wrong").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("may not see"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_answering_a_web_page_says_the_api_lives_under_api() {
    let env = Env::new().await;
    let base = env.fake.base_url();
    env.replace_in_config(&base, base.trim_end_matches("/api"));
    env.fake.inject(
        tallyfy_sync::fake::Fault::once("", "", tallyfy_sync::fake::FaultKind::HtmlPage)
            .times(usize::MAX),
    );
    let output = env.command(&["check", "--online"]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        output.stdout.contains("not JSON")
            && output
                .stdout
                .contains("; the API lives under /api, e.g. https://go.tallyfy.com/api"),
        "{}",
        describe(&output)
    );
}
