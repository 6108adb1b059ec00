//! Route folders through the real binary: each subfolder stands for one active process of a
//! template, and its files go to the file field of that process's task. Unknown and ambiguous
//! names and files in the root wait with their reason; a process that appears takes its files;
//! one that completes fails them; `create_folders` keeps a subfolder per process.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;
use tallyfy_sync::fake::{FakeChecklist, FakeStep};

const ONBOARDING: &str = "tpl-onboarding";
const WELCOME_STEP: &str = "step-welcome";
const DOCS_STEP: &str = "step-docs";
const DOCS: &str = "cap-docs";
const NOTES: &str = "cap-notes";

/// A "Client onboarding" template (a step with a text field, a step with the file field
/// `DOCS`), processes for Acme Corp and Beta LLC and two named Twin Co, and a route folder.
struct Routing {
    env: Env,
    root: PathBuf,
    acme: String,
    beta: String,
    twins: [String; 2],
}

impl Routing {
    async fn new(route_extra: &str) -> Routing {
        let env = Env::new().await;
        env.fake.add_checklist(FakeChecklist {
            id: ONBOARDING.into(),
            title: "Client onboarding".into(),
            prerun: Vec::new(),
        });
        env.fake.add_steps(
            ONBOARDING,
            vec![
                FakeStep {
                    id: WELCOME_STEP.into(),
                    title: "Welcome call".into(),
                    fields: vec![field(NOTES, "Call notes", "text", Value::Null)],
                },
                FakeStep {
                    id: DOCS_STEP.into(),
                    title: "Collect documents".into(),
                    fields: vec![field(DOCS, "Documents", "file", Value::Null)],
                },
            ],
        );
        let acme = env.fake.start_run(ONBOARDING, "Acme Corp");
        let beta = env.fake.start_run(ONBOARDING, "Beta LLC");
        let twins = [
            env.fake.start_run(ONBOARDING, "Twin Co"),
            env.fake.start_run(ONBOARDING, "Twin Co"),
        ];
        let root = env.dir.path().join("onboarding");
        std::fs::create_dir(&root).unwrap();
        let routing = Routing {
            root: root.canonicalize().unwrap(),
            env,
            acme,
            beta,
            twins,
        };
        routing.configure(route_extra);
        routing
    }

    fn configure(&self, route_extra: &str) {
        self.configure_with("", route_extra);
    }

    /// `top_extra` goes at the top level of the config, `route_extra` under `route`.
    fn configure_with(&self, top_extra: &str, route_extra: &str) {
        let extra: String = route_extra
            .lines()
            .map(|line| format!("      {line}\n"))
            .collect();
        let yaml = format!(
            "api:\n  base_url: {base}\n  org_id: {ORG}\n  timeout: 10s\n\
             state_dir: {state}\nsettle: {SETTLE}\n{top_extra}\
             folders:\n\
             \x20 - path: {root}\n    route:\n      checklist_id: {ONBOARDING}\n      capture_id: {DOCS}\n{extra}",
            base = self.env.fake.base_url(),
            state = self.env.state.display(),
            root = self.root.display(),
        );
        self.env.write_raw_config(&yaml);
    }

    async fn running(&self) -> Daemon {
        let daemon = self.env.start();
        daemon.wait_for_log("target verified").await;
        daemon.wait_for_log("running; initial scan started").await;
        daemon
    }

    /// The process's task that holds `DOCS`.
    fn docs_task(&self, run_id: &str) -> String {
        self.env
            .fake
            .run_tasks(run_id)
            .into_iter()
            .find(|task| task.step_id == DOCS_STEP)
            .map(|task| task.task_id)
            .expect("the process has a documents task")
    }

    /// Names of the files in a process's documents field.
    fn docs(&self, run_id: &str) -> Vec<String> {
        let task = self.docs_task(run_id);
        filenames(&self.env.fake.task_field(run_id, &task, DOCS))
    }

    fn subfolder(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// What `status` prints; empty while it cannot ask (the daemon's control socket may open
    /// a moment after its start is logged), so callers poll it with `eventually`.
    fn status(&self) -> String {
        let output = self.env.command(&["status", "--all"]);
        if output.status.success() {
            output.stdout
        } else {
            String::new()
        }
    }

    /// The status line of a file, by its path relative to the folder.
    fn status_line(&self, name: &str) -> Option<String> {
        self.status()
            .lines()
            .find(|line| line.contains(name))
            .map(str::to_string)
    }

    /// Runs the daemon until a file in the Acme Corp and one in the Beta LLC subfolder are
    /// attached to their processes, then stops it.
    async fn sync_acme_and_beta(&self) {
        let daemon = self.running().await;
        drop_file(&self.subfolder("Acme Corp"), "contract.pdf", b"acme");
        drop_file(&self.subfolder("Beta LLC"), "nda.pdf", b"beta");
        eventually(
            "both attached",
            || self.docs(&self.acme) == ["contract.pdf"] && self.docs(&self.beta) == ["nda.pdf"],
            &daemon,
        )
        .await;
        daemon.wait_for_log("nda.pdf").await;
        daemon.stop().await;
    }

    /// Waits until the status line of `name` says it failed because Acme Corp's process is
    /// complete.
    async fn failed_as_complete(&self, name: &str, daemon: &Daemon) {
        eventually(
            &format!("{name} failed, saying the process is complete"),
            || {
                self.status_line(name).is_some_and(|line| {
                    line.contains("failed")
                        && line.contains("process 'Acme Corp'")
                        && line.contains("is complete")
                })
            },
            daemon,
        )
        .await;
    }

    /// Reads of a process's task list.
    fn task_lists(&self) -> usize {
        self.env
            .requests("GET", "/tasks")
            .iter()
            .filter(|request| request.path.ends_with("/tasks"))
            .count()
    }

    fn run_lists(&self) -> usize {
        self.env
            .fake
            .requests()
            .iter()
            .filter(|request| request.method == "GET" && request.path.ends_with("/runs"))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_a_process_subfolder_go_to_that_process_task_with_its_step_and_template() {
    let routing = Routing::new("by: name").await;
    let daemon = routing.running().await;
    let acme = routing.subfolder("Acme Corp");
    let beta = routing.subfolder("Beta LLC");
    drop_file(&acme, "contract.pdf", b"acme contract");
    drop_file(&acme, "id.pdf", b"acme id");
    std::fs::create_dir(acme.join("scans")).unwrap();
    drop_file(&acme.join("scans"), "page1.pdf", b"acme page");
    drop_file(&beta, "contract.pdf", b"beta contract");

    eventually(
        "each file is in its process's documents field",
        || routing.docs(&routing.acme).len() == 3 && routing.docs(&routing.beta).len() == 1,
        &daemon,
    )
    .await;
    let mut acme_docs = routing.docs(&routing.acme);
    acme_docs.sort();
    assert_eq!(acme_docs, ["contract.pdf", "id.pdf", "page1.pdf"]);
    assert_eq!(routing.docs(&routing.beta), ["contract.pdf"]);
    for twin in &routing.twins {
        assert!(routing.docs(twin).is_empty());
    }
    // The upload named the task's step and template (the fake refuses the attach otherwise).
    let uploads: Vec<_> = routing.env.fake.assets();
    assert!(uploads
        .iter()
        .all(
            |asset| asset.fields.get("step_id").map(String::as_str) == Some(DOCS_STEP)
                && asset.fields.get("checklist_id").map(String::as_str) == Some(ONBOARDING)
        ));
    assert!(
        routing.run_lists() <= 2,
        "the processes were listed {} times for 4 files",
        routing.run_lists()
    );
    let task_lists = routing.task_lists();
    assert_eq!(
        task_lists, 2,
        "only the tasks of processes with files are read, once each"
    );

    // Replaced and deleted as in a task folder.
    std::fs::write(acme.join("contract.pdf"), b"acme contract v2").unwrap();
    std::fs::remove_file(acme.join("id.pdf")).unwrap();
    eventually(
        "the new version replaces the old and the deleted file leaves",
        || {
            let task = routing.docs_task(&routing.acme);
            let field = routing.env.fake.task_field(&routing.acme, &task, DOCS);
            let names = filenames(&field);
            names.len() == 2
                && !names.contains(&"id.pdf".to_string())
                && field.iter().any(|asset| {
                    routing
                        .env
                        .fake
                        .asset(asset["id"].as_str().unwrap_or_default())
                        .is_some_and(|stored| stored.content.as_ref() == b"acme contract v2")
                })
        },
        &daemon,
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_for_no_process_or_two_wait_with_their_reason_and_go_when_the_process_appears() {
    let routing = Routing::new("").await;
    let daemon = routing.running().await;
    drop_file(&routing.subfolder("Nobody Inc"), "welcome.pdf", b"nobody");
    drop_file(&routing.subfolder("Twin Co"), "twin.pdf", b"twin");
    drop_file(&routing.root, "loose.pdf", b"loose");

    eventually(
        "status says why each file waits",
        || {
            let status = routing.status();
            status.contains("no active process named 'Nobody Inc'")
                && status.contains("2 active processes are named 'Twin Co'")
                && status.contains("directly in the route folder")
        },
        &daemon,
    )
    .await;
    let line = routing.status_line("welcome.pdf").unwrap();
    assert!(line.contains("waiting"), "{line}");
    assert_eq!(
        routing.env.uploads(),
        0,
        "nothing is uploaded while it waits"
    );

    // The id appended picks one of two processes with the same name.
    let twin = &routing.twins[1];
    std::fs::rename(
        routing.root.join("Twin Co"),
        routing.root.join(format!("Twin Co ({twin})")),
    )
    .unwrap();
    let nobody = routing.env.fake.start_run(ONBOARDING, "Nobody Inc");
    eventually(
        "the new process gets its file and the renamed twin folder its own",
        || routing.docs(&nobody) == ["welcome.pdf"] && routing.docs(twin) == ["twin.pdf"],
        &daemon,
    )
    .await;
    assert!(routing.docs(&routing.twins[0]).is_empty());
    assert!(routing
        .status_line("loose.pdf")
        .is_some_and(|line| line.contains("waiting")));
    assert_eq!(routing.env.uploads(), 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_id_each_subfolder_is_named_by_its_process_id() {
    let routing = Routing::new("by: id").await;
    let daemon = routing.running().await;
    drop_file(
        &routing.subfolder(&routing.twins[0]),
        "a.pdf",
        b"first twin",
    );
    drop_file(&routing.subfolder("Acme Corp"), "b.pdf", b"by name");

    eventually(
        "the file goes to the process with that id",
        || routing.docs(&routing.twins[0]) == ["a.pdf"],
        &daemon,
    )
    .await;
    eventually(
        "a name is not an id",
        || {
            routing
                .status_line("b.pdf")
                .is_some_and(|line| line.contains("no active process with id 'Acme Corp'"))
        },
        &daemon,
    )
    .await;
    assert!(routing.docs(&routing.acme).is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_completes_fails_the_files_still_meant_for_it_and_says_so() {
    let routing = Routing::new("").await;
    let daemon = routing.running().await;
    let acme = routing.subfolder("Acme Corp");
    drop_file(&acme, "signed.pdf", b"signed");
    eventually(
        "the first file is attached",
        || routing.docs(&routing.acme) == ["signed.pdf"],
        &daemon,
    )
    .await;

    routing.env.fake.complete_run(&routing.acme);
    drop_file(&acme, "late.pdf", b"too late");
    routing.failed_as_complete("late.pdf", &daemon).await;
    assert_eq!(routing.docs(&routing.acme), ["signed.pdf"]);
    assert!(
        routing
            .status_line("signed.pdf")
            .is_some_and(|line| line.contains("synced")),
        "the file attached before stays synced"
    );
    // Its upload was not left behind.
    eventually(
        "only the attached file's asset remains",
        || routing.env.fake.assets().len() == 1,
        &daemon,
    )
    .await;

    // A file dropped later is told at once, without trying the completed task.
    let puts = routing.env.requests("PUT", "/tasks/").len();
    drop_file(&acme, "later.pdf", b"later still");
    eventually(
        "the later file failed too",
        || {
            routing
                .status_line("later.pdf")
                .is_some_and(|line| line.contains("failed") && line.contains("is complete"))
        },
        &daemon,
    )
    .await;
    assert_eq!(routing.env.requests("PUT", "/tasks/").len(), puts);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_completed_while_the_daemon_was_stopped_fails_its_new_files_and_says_so() {
    let routing = Routing::new("").await;
    routing.sync_acme_and_beta().await;
    routing.env.fake.complete_run(&routing.acme);
    drop_file(&routing.subfolder("Acme Corp"), "late.pdf", b"too late");
    let daemon = routing.running().await;
    routing.failed_as_complete("late.pdf", &daemon).await;
    let reads = routing
        .env
        .requests("GET", &format!("/runs/{}", routing.acme))
        .iter()
        .filter(|request| request.path.ends_with(&routing.acme))
        .count();
    assert_eq!(reads, 1, "the process is read once");
    assert_eq!(routing.docs(&routing.acme), ["contract.pdf"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_file_refused_by_a_closed_task_heals_once_the_task_is_reopened() {
    let routing = Routing::new("").await;
    routing.configure_with("failed_retry_interval: 2s\n", "");
    let task = routing.docs_task(&routing.acme);
    routing
        .env
        .fake
        .set_task_status(&routing.acme, &task, "completed");
    let daemon = routing.running().await;
    drop_file(&routing.subfolder("Acme Corp"), "late.pdf", b"late");
    eventually(
        "the file failed while its task is closed",
        || {
            routing
                .status_line("late.pdf")
                .is_some_and(|line| line.contains("failed") && line.contains("next attempt"))
        },
        &daemon,
    )
    .await;
    // The process is still active: the task is checked again on the schedule, not abandoned.
    daemon.wait_for_log("the target still refuses files").await;
    routing
        .env
        .fake
        .set_task_status(&routing.acme, &task, "active");
    eventually(
        "attached once the task is reopened",
        || routing.docs(&routing.acme) == ["late.pdf"],
        &daemon,
    )
    .await;
    assert!(daemon
        .log()
        .contains("trying the files it refused once more"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_each_routed_file_against_the_field_of_its_process() {
    let routing = Routing::new("").await;
    routing.sync_acme_and_beta().await;

    let verified = routing.env.command(&["verify"]);
    assert_all_in_sync(&verified, 2);
    let acme_task = routing.docs_task(&routing.acme);
    routing
        .env
        .fake
        .set_task_field(&routing.acme, &acme_task, DOCS, serde_json::json!([]));
    let verified = routing.env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    let line = report_line(&verified, "Acme Corp/contract.pdf");
    assert!(line.contains("removed from the field"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_brings_each_process_files_back_into_its_subfolder_and_nothing_is_sent_again() {
    let routing = Routing::new("").await;
    routing.sync_acme_and_beta().await;

    // The file server is lost: the folder and the state directory with it.
    std::fs::remove_dir_all(&routing.root).unwrap();
    std::fs::create_dir(&routing.root).unwrap();
    std::fs::remove_dir_all(&routing.env.state).unwrap();
    let uploads = routing.env.uploads();
    let restored = routing
        .env
        .command(&["restore", routing.root.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(0), "{}", describe(&restored));
    assert!(
        restored.stdout.contains("2 of 2 files"),
        "{}",
        describe(&restored)
    );
    let acme = routing.root.join("Acme Corp").join("contract.pdf");
    let beta = routing.root.join("Beta LLC").join("nda.pdf");
    assert_eq!(std::fs::read(&acme).unwrap(), b"acme");
    assert_eq!(std::fs::read(&beta).unwrap(), b"beta");

    let daemon = routing.running().await;
    daemon.wait_for_log("initial scan done").await;
    assert!(
        daemon.log().contains(": 0 new or changed files"),
        "restore recorded the files: {}",
        daemon.log()
    );
    let verified = routing.env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", describe(&verified));
    daemon.stop().await;
    assert_eq!(routing.env.uploads(), uploads, "nothing is uploaded again");
    assert!(routing.env.requests("DELETE", "/file/").is_empty());
    assert_eq!(routing.docs(&routing.acme), ["contract.pdf"]);
    assert_eq!(routing.docs(&routing.beta), ["nda.pdf"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_folders_keeps_a_subfolder_per_active_process_and_removes_none() {
    let routing = Routing::new("create_folders: true\nrefresh_interval: 5s").await;
    let odd = routing
        .env
        .fake
        .start_run(ONBOARDING, "Gamma/Delta: \"Q3\"");
    let stale = routing.subfolder("Old client");
    drop_file(&stale, "keep.txt", b"kept");
    let daemon = routing.running().await;
    let [first, second] = &routing.twins;
    let expected = [
        "Acme Corp".to_string(),
        "Beta LLC".to_string(),
        format!("Twin Co ({first})"),
        format!("Twin Co ({second})"),
        "Gamma_Delta_ _Q3_".to_string(),
    ];
    eventually(
        "a subfolder is made for each active process",
        || expected.iter().all(|name| routing.root.join(name).is_dir()),
        &daemon,
    )
    .await;
    assert!(stale.join("keep.txt").is_file(), "no folder is removed");
    drop_file(&routing.root.join("Gamma_Delta_ _Q3_"), "q3.pdf", b"q3");
    eventually(
        "a file in a made folder goes to its process",
        || routing.docs(&odd) == ["q3.pdf"],
        &daemon,
    )
    .await;
    // A process started later gets its folder at the next refresh, with no file to ask for it.
    let lists = routing.run_lists();
    routing.env.fake.start_run(ONBOARDING, "Epsilon GmbH");
    eventually(
        "a subfolder is made for a process started while the daemon runs",
        || routing.root.join("Epsilon GmbH").is_dir(),
        &daemon,
    )
    .await;
    let lists = routing.run_lists() - lists;
    assert!(lists <= 2, "{lists} list reads for one new process");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_lists_the_processes_and_dry_run_says_where_each_file_would_go() {
    let routing = Routing::new("").await;
    drop_file(&routing.subfolder("Acme Corp"), "contract.pdf", b"acme");
    drop_file(&routing.subfolder("Nobody Inc"), "lost.pdf", b"nobody");

    let check = routing.env.command(&["check", "--online"]);
    assert!(check.status.success(), "{}", describe(&check));
    let [first, second] = &routing.twins;
    for line in [
        format!(
            "process 'Acme Corp' ({}) ← subfolder Acme Corp",
            routing.acme
        ),
        format!("process 'Beta LLC' ({}) ← subfolder Beta LLC", routing.beta),
        format!("process 'Twin Co' ({first}) ← subfolder Twin Co ({first})"),
        format!("process 'Twin Co' ({second}) ← subfolder Twin Co ({second})"),
    ] {
        assert!(
            check.stdout.contains(&line),
            "no {line:?} in {}",
            describe(&check)
        );
    }

    let dry = routing.env.command(&["run", "--dry-run"]);
    assert!(dry.status.success(), "{}", describe(&dry));
    assert!(
        dry.stdout.contains(&format!(
            "Acme Corp/contract.pdf (4 B) to process 'Acme Corp' ({})",
            routing.acme
        )),
        "{}",
        describe(&dry)
    );
    assert!(
        dry.stdout
            .contains("Nobody Inc/lost.pdf: no active process named 'Nobody Inc'"),
        "{}",
        describe(&dry)
    );
    assert_eq!(routing.env.uploads(), 0);
    assert!(routing.env.requests("PUT", "").is_empty());

    let json = routing.env.command(&["run", "--dry-run", "--json"]);
    let plan: Value = serde_json::from_str(&json.stdout).expect("JSON plan");
    assert_eq!(
        plan["targets"][0]["processes"].as_array().map(Vec::len),
        Some(4)
    );
    assert_eq!(plan["summary"]["wait"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_without_the_capture_in_any_step_is_a_wrong_target() {
    let routing = Routing::new("").await;
    let yaml = std::fs::read_to_string(&routing.env.config).unwrap();
    routing
        .env
        .write_raw_config(&yaml.replace(&format!("capture_id: {DOCS}"), "capture_id: cap-nope"));
    let check = routing.env.command(&["check", "--online"]);
    assert!(!check.status.success(), "{}", describe(&check));
    assert!(
        check.stdout.contains(
            "no step of template tpl-onboarding has a form field with capture id cap-nope; its file fields are: cap-docs (\"Documents\", step \"Collect documents\")"
        ),
        "{}",
        describe(&check)
    );
    routing.env.write_raw_config(&yaml.replace(
        &format!("capture_id: {DOCS}"),
        &format!("capture_id: {NOTES}"),
    ));
    let check = routing.env.command(&["check", "--online"]);
    assert!(
        check.stdout.contains("is a text field, not a file field"),
        "{}",
        describe(&check)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_file_removed_while_the_daemon_was_stopped_is_deleted_from_its_process() {
    let routing = Routing::new("").await;
    let daemon = routing.running().await;
    let beta = routing.subfolder("Beta LLC");
    drop_file(&beta, "kept.pdf", b"kept");
    drop_file(&beta, "gone.pdf", b"gone");
    eventually(
        "both files are attached",
        || routing.docs(&routing.beta).len() == 2,
        &daemon,
    )
    .await;
    daemon.stop().await;

    std::fs::remove_file(beta.join("gone.pdf")).unwrap();
    let daemon = routing.running().await;
    eventually(
        "the removed file left its process's field",
        || routing.docs(&routing.beta) == ["kept.pdf"],
        &daemon,
    )
    .await;
    assert_eq!(routing.env.fake.assets().len(), 1, "its asset is deleted");
    assert_eq!(routing.env.uploads(), 2, "nothing is uploaded again");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_template_does_not_list_its_steps_a_running_process_shows_them() {
    let routing = Routing::new("").await;
    routing.env.fake.set_steps_listed(false);
    let check = routing.env.command(&["check", "--online"]);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(check.stdout.contains("target OK"), "{}", describe(&check));

    let yaml = std::fs::read_to_string(&routing.env.config).unwrap();
    routing
        .env
        .write_raw_config(&yaml.replace(&format!("capture_id: {DOCS}"), "capture_id: cap-nope"));
    let check = routing.env.command(&["check", "--online"]);
    assert!(
        check
            .stdout
            .contains("its file fields are: cap-docs (\"Documents\", step \"Collect documents\")"),
        "{}",
        describe(&check)
    );
    let tasks_read = routing.task_lists();
    assert!(
        tasks_read >= 1,
        "the fields were learnt from a process's tasks"
    );
}
