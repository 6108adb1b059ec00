//! Launch folders through the real binary: every new file starts one process of a template,
//! with the file in its kick-off file field and other kick-off fields filled from the path;
//! exactly once, across restarts and SIGKILL; copies launch nothing; the template is verified.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tallyfy_sync::fake::{FakeChecklist, Fault, FaultKind};

const APPROVAL: &str = "tpl-approval";
const APPROVAL_TITLE: &str = "Invoice approval";
const INVOICE: &str = "ko-invoice";
const VENDOR: &str = "ko-vendor";
const NOTES: &str = "ko-notes";
const DUE: &str = "ko-due";
const EXIT_CONFIG: i32 = 78;

/// The usual environment plus an "Invoice approval" template (a file, a text, a textarea and a
/// dropdown kick-off field) and an inbox folder launching it, configured by `launch` (the
/// lines under `launch:`, indented six spaces) and `folder_extra` (folder keys, four spaces).
struct Launching {
    env: Env,
    inbox: PathBuf,
}

impl Launching {
    async fn new(launch: &str, folder_extra: &str) -> Launching {
        let env = Env::new().await;
        env.fake.add_checklist(FakeChecklist {
            id: APPROVAL.into(),
            title: APPROVAL_TITLE.into(),
            prerun: vec![
                field(INVOICE, "Invoice", "file", json!([])),
                field(VENDOR, "Vendor", "text", Value::Null),
                field(NOTES, "Notes", "textarea", Value::Null),
                field(DUE, "Due", "dropdown", Value::Null),
            ],
        });
        env.fake.set_required(APPROVAL, INVOICE, true);
        let inbox = env.dir.path().join("inbox");
        std::fs::create_dir(&inbox).unwrap();
        let launching = Launching {
            inbox: inbox.canonicalize().unwrap(),
            env,
        };
        launching.configure(launch, folder_extra);
        launching
    }

    fn configure(&self, launch: &str, folder_extra: &str) {
        let indent = |text: &str, by: &str| -> String {
            text.lines().map(|line| format!("{by}{line}\n")).collect()
        };
        let yaml = format!(
            "api:\n  base_url: {base}\n  org_id: {ORG}\n  timeout: 10s\n\
             state_dir: {state}\nsettle: {SETTLE}\n\
             folders:\n\
             \x20 - path: {inbox}\n{extra}    launch:\n      checklist_id: {APPROVAL}\n      field_id: {INVOICE}\n{launch}",
            base = self.env.fake.base_url(),
            state = self.env.state.display(),
            inbox = self.inbox.display(),
            extra = indent(folder_extra, "    "),
            launch = indent(launch, "      "),
        );
        self.env.write_raw_config(&yaml);
    }

    async fn running(&self) -> Daemon {
        let daemon = self.env.start();
        daemon.wait_for_log("target verified").await;
        daemon
    }

    /// Waits until `count` processes have been started.
    async fn wait_runs(&self, count: usize, daemon: &Daemon) {
        eventually(
            &format!("{count} processes are started"),
            || self.runs().len() >= count,
            daemon,
        )
        .await;
    }

    fn runs(&self) -> Vec<Value> {
        self.env.fake.runs()
    }

    fn run_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .runs()
            .iter()
            .map(|run| run["name"].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    }

    fn status(&self) -> Output {
        self.env.command(&["status", "--all"])
    }

    /// `check --online` exits 78 and says each of `needles`.
    fn refused_online(&self, needles: &[&str]) {
        let check = self.env.command(&["check", "--online"]);
        assert_eq!(
            check.status.code(),
            Some(EXIT_CONFIG),
            "{}",
            describe(&check)
        );
        for needle in needles {
            assert!(
                check.stdout.contains(needle),
                "{needle:?}: {}",
                describe(&check)
            );
        }
    }

    /// The line `status` shows for the file whose name contains `name`.
    fn status_line(&self, name: &str) -> String {
        let status = self.status();
        status
            .stdout
            .lines()
            .find(|line| line.contains(name))
            .unwrap_or_else(|| panic!("no status line for {name}; {}", describe(&status)))
            .to_string()
    }
}

/// The content of the first file in a run's kick-off file field.
fn launched_content(env: &Env, run: &Value) -> String {
    let id = run["prerun"][INVOICE][0]["id"].as_str().unwrap_or_default();
    env.fake
        .asset(id)
        .map(|asset| String::from_utf8_lossy(&asset.content).into_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_file_starts_one_process_with_the_file_in_its_kick_off_field_and_the_path_in_others()
{
    let launching = Launching::new(
        "name: \"Invoice {stem}\"\nfields:\n  ko-vendor: \"{parent}\"\n  ko-notes: \"{relpath}|{filename}|{ext}|{date}|{mtime}|{{literal}}\"",
        "recursive: true",
    )
    .await;
    let env = &launching.env;
    let daemon = launching.running().await;
    std::fs::create_dir(launching.inbox.join("acme")).unwrap();
    let file = drop_file(&launching.inbox.join("acme"), "2041.pdf", b"invoice 2041");

    launching.wait_runs(1, &daemon).await;
    let run = &launching.runs()[0];
    assert_eq!(run["name"], "Invoice 2041");
    assert_eq!(run["checklist_id"], APPROVAL);
    assert_eq!(run["prerun"][VENDOR], "acme");
    let notes = run["prerun"][NOTES].as_str().unwrap();
    let parts: Vec<&str> = notes.split('|').collect();
    assert_eq!(parts[..3], ["acme/2041.pdf", "2041.pdf", "pdf"], "{notes}");
    assert_eq!(parts[3].len(), "2026-11-25".len(), "{notes}");
    assert_eq!(parts[4].len(), "2026-11-25 20:14".len(), "{notes}");
    assert!(parts[4].starts_with(&parts[3][..4]), "{notes}");
    assert_eq!(parts[5], "{literal}", "{notes}");
    assert!(
        run["summary"]
            .as_str()
            .unwrap()
            .contains(&file.display().to_string()),
        "the summary says where the process came from: {run}"
    );
    assert_eq!(launched_content(env, run), "invoice 2041");
    let asset_id = run["prerun"][INVOICE][0]["id"].as_str().unwrap();
    let stored = env.fake.asset(asset_id).unwrap();
    assert_eq!(stored.fields["subject_type"], "Checklist");
    assert_eq!(stored.fields["subject_id"], APPROVAL);
    assert_eq!(stored.fields["uploaded_from"], "ko_field");
    let run_id = run["id"].as_str().unwrap().to_string();
    daemon.wait_for_log("started process 'Invoice 2041'").await;
    assert!(
        daemon.log().contains(&format!("run_id={run_id}")),
        "{}",
        daemon.log()
    );

    let line = launching.status_line("acme/2041.pdf");
    assert!(line.contains("launched"), "{line}");
    assert!(line.contains(&format!("run {run_id}")), "{line}");
    assert!(line.contains("started process 'Invoice 2041'"), "{line}");

    // A process is a record: changing or deleting the file starts and deletes nothing.
    std::fs::write(&file, b"invoice 2041, corrected").unwrap();
    daemon
        .wait_for_log("changed after it started its process; that starts nothing")
        .await;
    std::fs::remove_file(&file).unwrap();
    daemon
        .wait_for_log("removed locally; the process it started stays")
        .await;
    assert_eq!(launching.runs().len(), 1);
    assert!(
        env.requests("DELETE", "").is_empty(),
        "nothing deleted remotely"
    );
    assert_eq!(env.requests("POST", "/file").len(), 1, "one upload");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_content_again_launches_nothing_and_names_the_process_it_started() {
    let launching = Launching::new("name: \"Invoice {stem}\"", "").await;
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "2041.pdf", b"scan of invoice 2041");
    launching.wait_runs(1, &daemon).await;
    let run_id = launching.runs()[0]["id"].as_str().unwrap().to_string();

    drop_file(&launching.inbox, "2041 resent.pdf", b"scan of invoice 2041");
    daemon
        .wait_for_log("which already started process 'Invoice 2041'; launching nothing")
        .await;
    drop_file(&launching.inbox, "2042.pdf", b"scan of invoice 2042");
    launching.wait_runs(2, &daemon).await;
    assert_eq!(launching.run_names(), ["Invoice 2041", "Invoice 2042"]);
    assert_eq!(launching.env.uploads(), 2, "the copy is not even uploaded");

    let line = launching.status_line("2041 resent.pdf");
    assert!(line.contains("duplicate"), "{line}");
    assert!(line.contains(&format!("run {run_id}")), "{line}");
    assert!(line.contains("same content as 2041.pdf"), "{line}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_that_each_launched_process_still_exists_and_restore_refuses_the_folder() {
    let launching = Launching::new("name: \"Invoice {stem}\"", "").await;
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "2041.pdf", b"scan of invoice 2041");
    drop_file(&launching.inbox, "2042.pdf", b"scan of invoice 2042");
    launching.wait_runs(2, &daemon).await;
    drop_file(&launching.inbox, "2041 resent.pdf", b"scan of invoice 2041");
    daemon
        .wait_for_log("which already started process 'Invoice 2041'; launching nothing")
        .await;
    // A launched file edited later started its process all the same.
    drop_file(
        &launching.inbox,
        "2042.pdf",
        b"scan of invoice 2042, annotated",
    );
    daemon.stop().await;

    let verified = launching.env.command(&["verify"]);
    assert_all_in_sync(&verified, 2);
    assert!(
        report_line(&verified, "2041.pdf").contains("started process 'Invoice 2041'"),
        "{}",
        describe(&verified)
    );
    assert!(report_line(&verified, "2041 resent.pdf").contains("skipped"));

    let gone = launching
        .runs()
        .iter()
        .find(|run| run["name"] == "Invoice 2042")
        .and_then(|run| run["id"].as_str())
        .unwrap()
        .to_string();
    let restored = launching
        .env
        .command(&["restore", launching.inbox.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(1), "{}", describe(&restored));
    assert!(
        restored.stderr.contains("is a launch folder"),
        "{}",
        describe(&restored)
    );

    launching.env.fake.delete_run(&gone);
    let before = launching.env.fake.requests().len();
    let verified = launching.env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    assert!(report_line(&verified, "2042.pdf").contains("its process was deleted in Tallyfy"));
    let sent: Vec<_> = launching
        .env
        .fake
        .requests()
        .into_iter()
        .skip(before)
        .collect();
    assert!(
        sent.iter().all(|request| request.method == "GET"),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dedupe_none_every_copy_starts_its_own_process() {
    let launching = Launching::new("name: \"{filename}\"", "dedupe: none").await;
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "a.pdf", b"same page");
    drop_file(&launching.inbox, "b.pdf", b"same page");
    launching.wait_runs(2, &daemon).await;
    assert_eq!(launching.run_names(), ["a.pdf", "b.pdf"]);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_launches_nothing_twice() {
    let launching = Launching::new("", "").await;
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "first.pdf", b"first");
    launching.wait_runs(1, &daemon).await;
    assert_eq!(daemon.stop().await.code(), Some(0));

    drop_file(&launching.inbox, "second.pdf", b"second");
    let daemon = launching.running().await;
    launching.wait_runs(2, &daemon).await;
    drop_file(&launching.inbox, "third.pdf", b"third");
    launching.wait_runs(3, &daemon).await;
    // Stopping drains the work in flight, so a second launch of anything would be there now.
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(launching.run_names(), ["first", "second", "third"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_directory_launches_nothing_again_but_new_content_still_launches() {
    let launching = Launching::new("name: \"Invoice {stem}\"", "").await;
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "2041.pdf", b"scan of invoice 2041");
    drop_file(&launching.inbox, "2042.pdf", b"scan of invoice 2042");
    launching.wait_runs(2, &daemon).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let uploads = launching.env.uploads();

    // The state directory is lost; 2042.pdf is replaced by another scan meanwhile.
    std::fs::remove_dir_all(&launching.env.state).unwrap();
    drop_file(&launching.inbox, "2042.pdf", b"a different scan, same name");
    let daemon = launching.running().await;
    launching.wait_runs(3, &daemon).await;
    daemon
        .wait_for_log("recorded without launching again")
        .await;
    drop_file(&launching.inbox, "2043.pdf", b"scan of invoice 2043");
    launching.wait_runs(4, &daemon).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(
        launching.run_names(),
        [
            "Invoice 2041",
            "Invoice 2042",
            "Invoice 2042",
            "Invoice 2043"
        ]
    );
    assert_eq!(
        launching.env.uploads(),
        uploads + 2,
        "only the new content is sent"
    );
    let line = launching.status_line("2041.pdf");
    assert!(line.contains("launched"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_whose_answer_is_lost_is_looked_up_not_sent_twice() {
    let launching = Launching::new("name: \"Invoice {stem}\"", "").await;
    // The server starts the process, then the connection drops before the answer.
    launching
        .env
        .fake
        .inject(Fault::once("POST", "/runs", FaultKind::DropAfterAct).times(2));
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "2041.pdf", b"invoice 2041");
    drop_file(&launching.inbox, "2042.pdf", b"invoice 2042");
    daemon
        .wait_for_log("found the process an interrupted launch started")
        .await;
    eventually(
        "both files are recorded as launched",
        || launching.status().stdout.matches("launched ").count() >= 2,
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(launching.run_names(), ["Invoice 2041", "Invoice 2042"]);
    assert!(!launching.env.requests("GET", "/runs").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_burst_against_a_slow_server_starts_one_process_per_file() {
    const ROUNDS: usize = 6;
    const PER_ROUND: usize = 5;
    let mut rng = Rng::from_env();
    let launching = Launching::new("name: \"Scan {stem}\"", "").await;
    // Launches whose answer is lost, and slow ones, so that kills land between sending a
    // launch and recording its answer, and during the lookups that follow.
    launching
        .env
        .fake
        .inject(Fault::once("POST", "/runs", FaultKind::DropAfterAct).times(4));
    launching.env.fake.inject(
        Fault::once(
            "POST",
            "/runs",
            FaultKind::Latency(Duration::from_millis(150)),
        )
        .times(usize::MAX),
    );
    launching.env.fake.inject(
        Fault::once("", "", FaultKind::Latency(Duration::from_millis(30))).times(usize::MAX),
    );
    let mut dropped = 0;
    for _ in 0..ROUNDS {
        let daemon = launching.env.start();
        for _ in 0..PER_ROUND {
            drop_file(
                &launching.inbox,
                &format!("scan-{dropped:03}.pdf"),
                format!("page {dropped}").as_bytes(),
            );
            dropped += 1;
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.below(900))).await;
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit().await;
    }
    launching.env.fake.clear_faults();
    // Running, so that `status` asks it rather than opening the store it is about to open.
    let daemon = launching.running().await;
    launching.wait_runs(dropped, &daemon).await;
    eventually(
        "every file is recorded as launched",
        || launching.status().stdout.matches("launched ").count() >= dropped,
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));

    let mut per_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for run in launching.runs() {
        per_name
            .entry(run["name"].as_str().unwrap().to_string())
            .or_default()
            .push(launched_content(&launching.env, &run));
    }
    let expected: BTreeMap<String, Vec<String>> = (0..dropped)
        .map(|i| (format!("Scan scan-{i:03}"), vec![format!("page {i}")]))
        .collect();
    assert_eq!(per_name, expected, "one process per file, never two");
    eprintln!(
        "launch chaos: {ROUNDS} kills, {dropped} files, {} processes, {} launch requests, {} uploads",
        launching.runs().len(),
        launching.env.requests("POST", "/runs").len(),
        launching.env.uploads()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_kick_off_field_without_a_value_keeps_the_folder_from_syncing() {
    let launching = Launching::new("", "").await;
    launching.env.fake.set_required(APPROVAL, VENDOR, true);
    launching.refused_online(&[
        "requires kick-off fields the launch gives no value: ko-vendor (\"Vendor\", text)",
    ]);
    let daemon = launching.env.start();
    daemon
        .wait_for_log("folders mapped to this target are not synced until the config is fixed")
        .await;
    assert!(daemon.log().contains("ko-vendor"), "{}", daemon.log());
    drop_file(&launching.inbox, "2041.pdf", b"invoice");
    // Fixing the config and reloading lets the waiting file through.
    launching.configure("fields:\n  ko-vendor: \"{parent}\"", "");
    daemon.signal(libc::SIGHUP);
    launching.wait_runs(1, &daemon).await;
    assert_eq!(launching.runs()[0]["prerun"][VENDOR], "inbox");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_the_api_refuses_fails_with_its_message_and_its_upload_is_deleted() {
    let launching = Launching::new("", "").await;
    let daemon = launching.running().await;
    // Made required after the verification: the API refuses the launch with 422.
    launching.env.fake.set_required(APPROVAL, NOTES, true);
    drop_file(&launching.inbox, "2041.pdf", b"invoice");
    daemon.wait_for_log("could not start a process").await;
    eventually(
        "the upload is deleted",
        || launching.env.fake.assets().is_empty(),
        &daemon,
    )
    .await;
    assert!(launching.runs().is_empty());
    let status = launching.status();
    assert!(
        status.stdout.contains("Notes is required"),
        "{}",
        describe(&status)
    );
    assert!(status.stdout.contains("failed"), "{}", describe(&status));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_key_is_named_with_the_fields_that_exist() {
    let launching = Launching::new("fields:\n  Vendor: \"{parent}\"", "").await;
    launching.refused_online(&[
        "has no kick-off field with id Vendor",
        "ko-invoice (\"Invoice\", file)",
        "ko-vendor (\"Vendor\", text)",
        "ko-notes (\"Notes\", textarea)",
    ]);
    launching.configure("fields:\n  ko-due: \"{date}\"", "");
    launching.refused_online(&["is a dropdown field"]);
    let long = "x".repeat(201);
    launching.configure(&format!("fields:\n  ko-vendor: \"{long}\""), "");
    launching.refused_online(&["201 bytes, at most 200"]);

    launching.configure("fields:\n  ko-notes: \"{stem}\"", "");
    let check = launching.env.command(&["check", "--online"]);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_placeholder_is_a_config_error_naming_the_key() {
    let launching = Launching::new(
        "name: \"Invoice {number}\"\nfields:\n  ko-vendor: \"{parent\"\nafter: keep\nmove_to: done",
        "",
    )
    .await;
    let check = launching.env.command(&["check"]);
    assert_eq!(
        check.status.code(),
        Some(EXIT_CONFIG),
        "{}",
        describe(&check)
    );
    for needle in [
        "folders[0].launch.name \"Invoice {number}\": unknown placeholder {number} (expected one of {filename}, {stem}, {ext}, {parent}, {relpath}, {date}, {mtime})",
        "folders[0].launch.fields.ko-vendor \"{parent\": a { without its }",
        "folders[0].launch.move_to: only applies with after: move",
    ] {
        assert!(check.stderr.contains(needle), "{needle:?}: {}", describe(&check));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_move_takes_launched_files_out_of_the_inbox_and_never_launches_them_again() {
    let launching = Launching::new("after: move", "recursive: true").await;
    let processed = launching.inbox.join("processed");
    let daemon = launching.running().await;
    std::fs::create_dir(launching.inbox.join("acme")).unwrap();
    drop_file(&launching.inbox, "2041.pdf", b"invoice 2041");
    drop_file(&launching.inbox.join("acme"), "2042.pdf", b"invoice 2042");
    eventually(
        "both are launched and moved to processed/, keeping their subfolder",
        || {
            processed.join("2041.pdf").is_file()
                && processed.join("acme/2042.pdf").is_file()
                && !launching.inbox.join("2041.pdf").exists()
                && !launching.inbox.join("acme/2042.pdf").exists()
        },
        &daemon,
    )
    .await;
    assert_eq!(launching.run_names(), ["2041", "2042"]);
    assert_eq!(
        std::fs::read(processed.join("2041.pdf")).unwrap(),
        b"invoice 2041"
    );

    // The same name again with new content goes next to the first, numbered.
    drop_file(&launching.inbox, "2041.pdf", b"invoice 2041, second page");
    eventually(
        "the new content is launched and moved",
        || processed.join("2041 (2).pdf").is_file(),
        &daemon,
    )
    .await;
    // Content already launched is a duplicate even after its first copy was moved away; it
    // stays in the inbox.
    drop_file(&launching.inbox, "copy.pdf", b"invoice 2042");
    daemon.wait_for_log("launching nothing").await;
    assert!(launching.inbox.join("copy.pdf").is_file());
    assert_eq!(daemon.stop().await.code(), Some(0));

    // A restart does not take the moved files for new ones.
    let daemon = launching.running().await;
    drop_file(&launching.inbox, "2043.pdf", b"invoice 2043");
    eventually(
        "the next one is launched",
        || processed.join("2043.pdf").is_file(),
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    assert_eq!(launching.run_names(), ["2041", "2041", "2042", "2043"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_dry_run_say_which_process_each_file_would_launch() {
    let launching = Launching::new("name: \"Invoice {stem}\"\nafter: delete", "").await;
    let check = launching.env.command(&["check"]);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    for needle in [
        "process name \"Invoice {stem}\"",
        "launched files are deleted",
        "known content launches nothing",
    ] {
        assert!(
            check.stdout.contains(needle),
            "{needle:?}: {}",
            describe(&check)
        );
    }
    drop_file(&launching.inbox, "2041.pdf", b"invoice 2041");
    let plan = launching.env.command(&["run", "--dry-run"]);
    assert_eq!(plan.status.code(), Some(0), "{}", describe(&plan));
    assert!(
        plan.stdout.contains(&format!(
            "would launch 'Invoice 2041' from template {APPROVAL}"
        )),
        "{}",
        describe(&plan)
    );
    assert!(
        plan.stdout.contains("launch 1 processes"),
        "{}",
        describe(&plan)
    );
    assert!(launching.runs().is_empty());
    assert!(
        !Path::new(&launching.env.state).exists(),
        "a dry run writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_outgrows_its_field_once_filled_fails_that_file_only() {
    let launching = Launching::new("fields:\n  ko-vendor: \"{stem}\"", "").await;
    let daemon = launching.running().await;
    let long = "x".repeat(205);
    drop_file(&launching.inbox, &format!("{long}.pdf"), b"long");
    daemon
        .wait_for_log("cannot start a process for this file")
        .await;
    drop_file(&launching.inbox, "short.pdf", b"short");
    launching.wait_runs(1, &daemon).await;
    assert_eq!(launching.run_names(), ["short"]);
    assert_eq!(
        launching.env.uploads(),
        1,
        "nothing sent for the file that cannot launch"
    );
    let line = launching.status_line(&long);
    assert!(line.contains("failed"), "{line}");
    assert!(
        line.contains("would get 205 bytes from launch.fields.ko-vendor; it takes at most 200"),
        "{line}"
    );
    daemon.stop().await;
}
