//! `verify` and `restore`: checking that Tallyfy holds what the folders hold, and getting the
//! files back from Tallyfy.

mod common;

use common::*;
use serde_json::{json, Value};
use tallyfy_sync::fake::{AssetSubject, Fault, FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_difference_sends_only_gets_and_exits_1_until_all_agree() {
    let (env, daemon) = Env::running().await;
    for name in ["a.pdf", "b.pdf", "c.pdf", "d.pdf", "e.pdf"] {
        drop_file(&env.tasks, name, format!("%PDF {name}").as_bytes());
    }
    eventually("all attached", || env.task_field().len() == 5, &daemon).await;
    daemon.wait_for_log("e.pdf").await;
    let verified = env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", describe(&verified));
    assert!(
        verified.stdout.contains("5 in sync, 0 differ"),
        "while the daemon runs: {}",
        describe(&verified)
    );
    assert_eq!(daemon.stop().await.code(), Some(0));

    let field = env.task_field();
    drop_file(&env.tasks, "a.pdf", b"%PDF a.pdf, edited");
    env.fake.detach_asset(&id_of(&field, "b.pdf"));
    assert!(env.fake.delete_asset(&id_of(&field, "c.pdf")));
    env.fake
        .set_asset_content(&id_of(&field, "d.pdf"), b"%PDF damaged");
    let extra = env.fake.add_asset(
        "extra.pdf",
        b"by hand",
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    );
    let mut with_extra = env.task_field();
    with_extra.push(extra);
    env.fake
        .set_task_field(RUN, TASK, CAPTURE, json!(with_extra));
    let before = env.fake.requests().len();

    let verified = env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(1), "{}", describe(&verified));
    assert!(report_line(&verified, "a.pdf").contains("changed locally"));
    assert!(report_line(&verified, "b.pdf").contains("removed from the field in Tallyfy"));
    assert!(report_line(&verified, "c.pdf").contains("deleted in Tallyfy"));
    assert!(
        report_line(&verified, "d.pdf").contains("in sync"),
        "no download"
    );
    assert!(report_line(&verified, "e.pdf").contains("in sync"));
    assert!(report_line(&verified, "extra.pdf").contains("attached by hand"));

    let downloaded = env.command(&["verify", "--download"]);
    assert_eq!(
        downloaded.status.code(),
        Some(1),
        "{}",
        describe(&downloaded)
    );
    assert!(report_line(&downloaded, "d.pdf").contains("content in Tallyfy differs"));
    assert!(report_line(&downloaded, "e.pdf").contains("in sync"));

    let one = env.command(&["verify", env.tasks.join("e.pdf").to_str().unwrap()]);
    assert_eq!(one.status.code(), Some(0), "{}", describe(&one));
    assert!(
        one.stdout.contains("1 in sync, 0 differ"),
        "{}",
        describe(&one)
    );

    let json = env.command(&["verify", "--json"]);
    let report: Value = serde_json::from_str(&json.stdout).expect("JSON on stdout");
    assert_eq!(report["differ"], 4, "{}", describe(&json));
    assert_eq!(json.status.code(), Some(1));

    let sent: Vec<_> = env.fake.requests().into_iter().skip(before).collect();
    assert!(
        sent.iter().all(|request| request.method == "GET"),
        "{sent:?}"
    );
    let metadata = sent.iter().filter(|r| r.path.contains("/assets/")).count();
    assert_eq!(
        metadata,
        2 * 3,
        "metadata only for the 2 files missing from the field, per run"
    );
    assert!(!env.state.join("control.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_counts_files_of_another_folder_feeding_the_same_field_as_theirs_not_by_hand() {
    let env = Env::new().await;
    let scans = env.dir.path().join("scans");
    std::fs::create_dir(&scans).unwrap();
    let task = format!("    task: {{run_id: {RUN}, task_id: {TASK}, capture_id: {CAPTURE}}}\n");
    env.write_raw_config(&format!(
        "api: {{base_url: {base}, org_id: {ORG}}}\nstate_dir: {state}\nsettle: {SETTLE}\n\
         folders:\n  - path: {tasks}\n{task}  - path: {scans}\n{task}",
        base = env.fake.base_url(),
        state = env.state.display(),
        tasks = env.tasks.display(),
        scans = scans.display(),
    ));
    drop_file(&env.tasks, "invoice.pdf", b"%PDF invoice");
    drop_file(&scans, "scan.pdf", b"%PDF scan");
    let daemon = env.start();
    eventually("both attached", || env.task_field().len() == 2, &daemon).await;
    daemon.wait_for_log("scan.pdf").await;
    daemon.wait_for_log("invoice.pdf").await;
    assert_eq!(daemon.stop().await.code(), Some(0));

    let verified = env.command(&["verify"]);
    assert_all_in_sync(&verified, 2);
    assert!(
        !verified.stdout.contains("by hand"),
        "{}",
        describe(&verified)
    );
    let one = env.command(&["verify", scans.to_str().unwrap()]);
    assert_eq!(one.status.code(), Some(0), "{}", describe(&one));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_download_shows_its_progress_on_a_terminal_and_clears_it_before_the_report() {
    let (env, daemon) = Env::running().await;
    drop_file(&env.tasks, "a.pdf", b"%PDF a");
    drop_file(&env.tasks, "b.pdf", b"%PDF b");
    eventually("both attached", || env.task_field().len() == 2, &daemon).await;
    daemon.wait_for_log("b.pdf").await;
    assert_eq!(daemon.stop().await.code(), Some(0));

    let command = format!(
        "'{}' verify --download --config '{}'",
        env!("CARGO_BIN_EXE_tallyfy-sync"),
        env.config.display()
    );
    let Some(shown) = on_a_terminal(&command) else {
        return;
    };
    let bar = |filled: usize, percent: &str| {
        format!(
            "\r\x1b[K[{}{}] {percent} downloading",
            "#".repeat(filled),
            "·".repeat(24 - filled)
        )
    };
    assert!(
        shown.contains(&format!("{} 1/2 files, ", bar(0, "  0%"))) && shown.contains(": a.pdf"),
        "{shown:?}"
    );
    assert!(
        shown.contains(&format!("{} 2/2 files, ", bar(12, " 50%"))) && shown.contains(": b.pdf"),
        "{shown:?}"
    );
    let cleared = shown.rfind("\r\x1b[K").unwrap();
    let report = shown.find("2 in sync, 0 differ").expect("the report");
    assert!(cleared < report, "the progress is cleared first: {shown:?}");
    assert!(!shown[cleared..].contains("downloading"), "{shown:?}");

    // Without a terminal there is no progress line at all.
    let piped = env.command(&["verify", "--download"]);
    assert_all_in_sync(&piped, 2);
    assert!(
        !piped.stderr.contains("downloading"),
        "{}",
        describe(&piped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_exits_78_on_a_bad_config() {
    let env = Env::new().await;
    env.write_raw_config("api: [\n");
    let verified = env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(78), "{}", describe(&verified));
}

fn hand_asset(env: &Env, name: &str, content: &[u8]) -> Value {
    env.fake.add_asset(
        name,
        content,
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_writes_safe_names_inside_dir_and_never_overwrites_other_content() {
    let env = Env::new().await;
    let quoted = "Vertrag „Müller\" 'final'.pdf";
    let field = vec![
        hand_asset(&env, quoted, b"%PDF contract"),
        hand_asset(&env, "../../escape.pdf", b"%PDF escape"),
        hand_asset(&env, "report.pdf", b"%PDF report from Tallyfy"),
    ];
    env.fake.set_task_field(RUN, TASK, CAPTURE, json!(field));
    let dir = env.dir.path().join("a/b/restored");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("report.pdf"), b"local report, other content").unwrap();
    let tasks = env.tasks.to_str().unwrap();

    let restored = env.command(&["restore", tasks, "--to", dir.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(0), "{}", describe(&restored));
    assert_eq!(std::fs::read(dir.join(quoted)).unwrap(), b"%PDF contract");
    assert_eq!(
        std::fs::read(dir.join("escape.pdf")).unwrap(),
        b"%PDF escape"
    );
    assert!(!env.dir.path().join("a/escape.pdf").exists());
    assert!(!env.dir.path().join("escape.pdf").exists());
    assert_eq!(
        std::fs::read(dir.join("report.pdf")).unwrap(),
        b"local report, other content",
        "an existing file is never overwritten"
    );
    assert_eq!(
        std::fs::read(dir.join("report (2).pdf")).unwrap(),
        b"%PDF report from Tallyfy"
    );
    assert!(
        restored.stderr.contains("restoring it under a safe name"),
        "{}",
        describe(&restored)
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "no temporary file left: {names:?}");

    let again = env.command(&["restore", tasks, "--to", dir.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_eq!(
        again.stdout.matches("already there").count(),
        3,
        "{}",
        describe(&again)
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_restored_into_their_folder_are_recorded_so_the_daemon_sends_nothing() {
    let env = Env::new().await;
    let field = vec![
        hand_asset(&env, "a.pdf", b"%PDF a"),
        hand_asset(&env, "b.pdf", b"%PDF b"),
    ];
    env.fake.set_task_field(RUN, TASK, CAPTURE, json!(field));
    let restored = env.command(&["restore", env.tasks.to_str().unwrap()]);
    assert_eq!(restored.status.code(), Some(0), "{}", describe(&restored));
    assert_eq!(std::fs::read(env.tasks.join("a.pdf")).unwrap(), b"%PDF a");
    let downloads = env.requests("GET", "/dl").len();

    let daemon = env.start();
    daemon
        .wait_for_log("0 new or changed files to check and upload, 0 gone")
        .await;
    let verified = env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(0), "{}", describe(&verified));
    assert_eq!(env.uploads(), 0);
    assert!(env.requests("PUT", "").is_empty());
    assert_eq!(
        env.requests("GET", "/dl").len(),
        downloads,
        "nothing downloaded to adopt"
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// `restore` of the tasks folder into `dir`.
fn restore_tasks_into(env: &Env, dir: &std::path::Path) -> Output {
    env.command(&[
        "restore",
        env.tasks.to_str().unwrap(),
        "--to",
        dir.to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_names_each_file_it_could_not_get_and_exits_1() {
    let env = Env::new().await;
    let field = vec![
        hand_asset(&env, "a.pdf", b"%PDF a"),
        json!({"id": "0000000000000000000000000000dead", "filename": "lost.pdf"}),
    ];
    env.fake.set_task_field(RUN, TASK, CAPTURE, json!(field));
    let dir = env.dir.path().join("out");
    let restored = restore_tasks_into(&env, &dir);
    assert_eq!(restored.status.code(), Some(1), "{}", describe(&restored));
    assert!(
        restored.stdout.contains("FAILED") && restored.stdout.contains("lost.pdf"),
        "{}",
        describe(&restored)
    );
    assert_eq!(std::fs::read(dir.join("a.pdf")).unwrap(), b"%PDF a");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_takes_no_download_larger_than_the_file_can_be_nor_a_portal_page_and_exits_1() {
    let env = Env::new().await;
    let huge = vec![b'x'; 101 << 20];
    let mut stated = hand_asset(&env, "stated.pdf", b"%PDF longer than stated");
    stated["size"] = json!(5);
    let portal = hand_asset(&env, "portal.pdf", b"%PDF behind a portal");
    let field = vec![
        hand_asset(&env, "good.pdf", b"%PDF good"),
        hand_asset(&env, "huge.pdf", &huge),
        stated,
        portal.clone(),
    ];
    drop(huge);
    env.fake.set_task_field(RUN, TASK, CAPTURE, json!(field));
    let portal_path = format!("/file/{}/dl", portal["id"].as_str().unwrap());
    env.fake
        .inject(Fault::once("GET", &portal_path, FaultKind::HtmlPage).times(100));
    let dir = env.dir.path().join("out");
    let restored = restore_tasks_into(&env, &dir);
    assert_eq!(restored.status.code(), Some(1), "{}", describe(&restored));
    let failed = |name: &str, why: &str| {
        restored
            .stdout
            .lines()
            .any(|line| line.starts_with("FAILED") && line.contains(name) && line.contains(why))
    };
    assert!(
        failed("huge.pdf", &format!("larger than {} bytes", 100 << 20)),
        "{}",
        describe(&restored)
    );
    assert!(
        failed("stated.pdf", "larger than 5 bytes"),
        "{}",
        describe(&restored)
    );
    assert!(
        failed("portal.pdf", "a page (text/html) came in place of the file"),
        "{}",
        describe(&restored)
    );
    assert!(
        restored.stdout.contains("1 of 4 files"),
        "{}",
        describe(&restored)
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["good.pdf"],
        "nothing else written, no temporary file left"
    );
}
