//! Names next to ids, through the real binary against the fake API: `check --online` and the
//! daemon's "target verified" log line carry the process name, task title, field label and
//! template title the API returned.

mod common;

use common::*;
use serde_json::json;
use tallyfy_sync::fake::FakeStep;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_shows_the_names_the_api_returns_next_to_the_ids() {
    let env = Env::new().await;
    let output = env.command(&["check", "--online"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for expected in [
        format!(
            "{} → task {TASK} in run {RUN}, field {CAPTURE} (field \"Invoices\" of task \"Collect invoices\"): target OK\n",
            env.tasks.display()
        ),
        format!(
            "{} → kick-off field {KICKOFF_FIELD} of template {KICKOFF_TEMPLATE} (field \"Contract\" of template \"{KICKOFF_TITLE}\"): target OK\n",
            env.kickoff.display()
        ),
    ] {
        assert!(output.stdout.contains(&expected), "{expected:?}\n{}", describe(&output));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_target_of_a_listed_process_is_shown_with_the_process_name() {
    let env = Env::new().await;
    env.fake.add_steps(
        KICKOFF_TEMPLATE,
        vec![FakeStep {
            id: "step-sign".into(),
            title: "Sign the contract".into(),
            fields: vec![field("cap-signed", "Signed copy", "file", json!([]))],
        }],
    );
    let run = env.fake.start_run(KICKOFF_TEMPLATE, "Intake ACME");
    let task = env.fake.run_tasks(&run)[0].task_id.clone();
    let yaml = std::fs::read_to_string(&env.config).unwrap().replacen(
        &format!("run_id: {RUN}\n      task_id: {TASK}\n      capture_id: {CAPTURE}"),
        &format!("run_id: {run}\n      task_id: {task}\n      capture_id: cap-signed"),
        1,
    );
    env.write_raw_config(&yaml);
    let output = env.command(&["check", "--online"]);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        output.stdout.contains(
            ", field cap-signed (field \"Signed copy\" of task \"Sign the contract\" in process \"Intake ACME\"): target OK\n"
        ),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_verified_log_line_carries_the_names_next_to_the_ids() {
    let (_env, daemon) = Env::running().await;
    // Each target is verified on its own: the second may come after the daemon is running.
    let deadline = std::time::Instant::now() + WAIT;
    while daemon.log().matches("target verified").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = daemon.log();
    let task_line = log
        .lines()
        .find(|line| line.contains("target verified") && line.contains(&format!("task {TASK}")))
        .unwrap_or_else(|| panic!("no target verified line for the task:\n{log}"));
    assert!(
        task_line.contains("task_title=\"Collect invoices\"")
            && task_line.contains("field_label=\"Invoices\""),
        "{task_line}"
    );
    let kickoff_line = log
        .lines()
        .find(|line| line.contains("target verified") && line.contains("kick-off field"))
        .unwrap_or_else(|| panic!("no target verified line for the kick-off field:\n{log}"));
    assert!(
        kickoff_line.contains(&format!("template_title=\"{KICKOFF_TITLE}\""))
            && kickoff_line.contains("field_label=\"Contract\""),
        "{kickoff_line}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_names_under_each_folder_with_or_without_the_daemon() {
    let (env, daemon) = Env::running().await;
    let deadline = std::time::Instant::now() + WAIT;
    while daemon.log().matches("target verified").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let task = format!(
        "{} → task {TASK} in run {RUN}, field {CAPTURE}\n  0 synced, 0 pending, 0 held, 0 rejected, 0 failed\n  in Tallyfy: field \"Invoices\" of task \"Collect invoices\"\n",
        env.tasks.display()
    );
    let kickoff = format!("  in Tallyfy: field \"Contract\" of template \"{KICKOFF_TITLE}\"\n");
    let asked = env.command(&["status"]);
    assert_eq!(asked.status.code(), Some(0), "{}", describe(&asked));
    assert!(
        asked.stdout.contains(&task) && asked.stdout.contains(&kickoff),
        "{}",
        describe(&asked)
    );
    assert!(daemon.stop().await.success());
    let read = env.command(&["status"]);
    assert!(
        read.stdout.contains(&task) && read.stdout.contains(&kickoff),
        "{}",
        describe(&read)
    );
    let json = env.command(&["status", "--json"]);
    assert!(
        json.stdout.contains("\"task\": \"Collect invoices\""),
        "{}",
        describe(&json)
    );
}
