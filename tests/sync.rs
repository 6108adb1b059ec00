//! The daemon's main job, end to end: files dropped, changed and deleted in watched folders
//! become uploads, attachments, replacements and deletes in the fake Tallyfy API.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

use tallyfy_sync::fake::{AssetSubject, Fault, FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_file_is_uploaded_and_attached_to_the_task_field() {
    let env = Env::new().await;
    let daemon = env.start();
    let content = b"%PDF-1.4 invoice 1".to_vec();
    drop_file(&env.tasks, "Invoice 1.pdf", &content);
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;

    let attached = &env.task_field()[0];
    let asset = env
        .fake
        .asset(attached["id"].as_str().unwrap())
        .expect("the attached asset exists");
    assert_eq!(asset.content.as_ref(), content.as_slice());
    assert_eq!(asset.filename, "Invoice 1.pdf");
    let sent = &asset.fields;
    assert_eq!(sent.get("subject_type").map(String::as_str), Some("Run"));
    assert_eq!(sent.get("subject_id").map(String::as_str), Some(RUN));
    assert_eq!(sent.get("uploaded_from").map(String::as_str), Some(CAPTURE));
    assert_eq!(
        sent.get("step_id").map(String::as_str),
        Some(STEP),
        "step_id read from GET task"
    );
    assert_eq!(
        sent.get("checklist_id").map(String::as_str),
        Some(TEMPLATE),
        "checklist_id read from GET task"
    );
    assert_eq!(sent.get("source").map(String::as_str), Some("local"));
    daemon.wait_for_log("attached").await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_file_is_attached_to_the_kickoff_field_keeping_title_and_other_fields() {
    let env = Env::new().await;
    // Another kick-off field's value goes back exactly as read: the daemon keeps the values it
    // does not write as text.
    let other = json!("Acme \"Ltd\" \u{e9}");
    env.fake
        .set_kickoff_field(KICKOFF_TEMPLATE, KICKOFF_TEXT, other.clone());
    let daemon = env.start();
    drop_file(&env.kickoff, "contract.docx", b"contract");
    eventually(
        "the file is attached",
        || env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;

    let asset = env
        .fake
        .asset(env.kickoff_field()[0]["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        asset.fields.get("subject_type").map(String::as_str),
        Some("Checklist")
    );
    assert_eq!(
        asset.fields.get("subject_id").map(String::as_str),
        Some(KICKOFF_TEMPLATE)
    );
    assert_eq!(
        asset.fields.get("uploaded_from").map(String::as_str),
        Some("ko_field")
    );
    assert!(!asset.fields.contains_key("step_id"));
    assert_eq!(env.fake.checklist_title(KICKOFF_TEMPLATE), KICKOFF_TITLE);
    let mut fields = env.fake.kickoff_field_ids(KICKOFF_TEMPLATE);
    fields.sort();
    assert_eq!(
        fields,
        vec![KICKOFF_FIELD.to_string(), KICKOFF_TEXT.to_string()],
        "no kick-off field was lost"
    );
    assert_eq!(
        env.fake.kickoff_value(KICKOFF_TEMPLATE, KICKOFF_TEXT),
        other
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_attached_by_hand_stay_in_the_field() {
    let env = Env::new().await;
    let by_hand = env.fake.add_asset(
        "by-hand.pdf",
        b"someone else's",
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    );
    let kickoff_by_hand = env.fake.add_asset(
        "ko-by-hand.pdf",
        b"x",
        AssetSubject::Kickoff {
            checklist_id: KICKOFF_TEMPLATE.into(),
        },
    );
    seed_field(&env, json!([by_hand]), json!([kickoff_by_hand])).await;
    let daemon = env.start();
    drop_file(&env.tasks, "mine.pdf", b"mine");
    drop_file(&env.kickoff, "mine.pdf", b"mine");
    eventually(
        "both files are attached",
        || env.task_field().len() == 2 && env.kickoff_field().len() == 2,
        &daemon,
    )
    .await;
    assert_eq!(
        filenames(&env.task_field()),
        vec!["by-hand.pdf", "mine.pdf"]
    );
    assert_eq!(
        filenames(&env.kickoff_field()),
        vec!["ko-by-hand.pdf", "mine.pdf"]
    );

    std::fs::remove_file(env.tasks.join("mine.pdf")).unwrap();
    eventually(
        "the local delete reaches the field",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(filenames(&env.task_field()), vec!["by-hand.pdf"]);
}

/// Puts values in the fields as the web app would.
async fn seed_field(env: &Env, task_value: serde_json::Value, kickoff_value: serde_json::Value) {
    env.fake.set_task_field(RUN, TASK, CAPTURE, task_value);
    env.fake
        .set_kickoff_field(KICKOFF_TEMPLATE, KICKOFF_FIELD, kickoff_value);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_delete_removes_the_remote_asset() {
    let env = Env::new().await;
    let daemon = env.start();
    let path = drop_file(&env.tasks, "gone.pdf", b"soon gone");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let id = ids(&env.task_field())[0].clone();
    std::fs::remove_file(path).unwrap();
    eventually(
        "the asset is deleted",
        || env.fake.asset(&id).is_none(),
        &daemon,
    )
    .await;
    assert!(env.task_field().is_empty());
    assert_eq!(env.requests("DELETE", &format!("/file/{id}")).len(), 1);
    daemon.wait_for_log("deleted from Tallyfy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_delete_remote_off_a_local_delete_leaves_the_remote_file() {
    let env = Env::with_config("", "delete_remote: false").await;
    let daemon = env.start();
    let path = drop_file(&env.tasks, "keep.pdf", b"keep remotely");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    std::fs::remove_file(path).unwrap();
    daemon.wait_for_log("the copy in Tallyfy stays").await;
    assert_eq!(env.task_field().len(), 1);
    assert!(env.requests("DELETE", "/file/").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_replaces_its_asset_in_place_and_the_old_one_is_deleted() {
    let env = Env::new().await;
    let by_hand = env.fake.add_asset(
        "first.pdf",
        b"x",
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    );
    seed_field(&env, json!([by_hand]), json!([])).await;
    let daemon = env.start();
    let path = drop_file(&env.tasks, "report.pdf", b"version 1");
    drop_file(&env.tasks, "zlast.pdf", b"another");
    eventually("both are attached", || env.task_field().len() == 3, &daemon).await;
    let before = env.task_field();
    let position = filenames(&before)
        .iter()
        .position(|n| n == "report.pdf")
        .unwrap();
    let old = ids(&before)[position].clone();

    std::fs::write(&path, b"version 2, longer").unwrap();
    eventually(
        "the new version replaced the old",
        || !ids(&env.task_field()).contains(&old),
        &daemon,
    )
    .await;
    let after = env.task_field();
    assert_eq!(
        filenames(&after),
        filenames(&before),
        "replaced in place, not added or moved"
    );
    assert_eq!(filenames(&after)[0], "first.pdf");
    for i in (0..3).filter(|i| *i != position) {
        assert_eq!(
            ids(&after)[i],
            ids(&before)[i],
            "the other entries are untouched"
        );
    }
    let new = env
        .fake
        .asset(after[position]["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(new.content.as_ref(), b"version 2, longer");
    eventually(
        "the old asset is deleted",
        || env.fake.asset(&old).is_none(),
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reconciles_adds_changes_and_deletes_made_while_stopped() {
    let env = Env::new().await;
    let daemon = env.start();
    drop_file(&env.tasks, "a.pdf", b"a");
    let b = drop_file(&env.tasks, "b.pdf", b"b");
    let c = drop_file(&env.tasks, "c.pdf", b"c");
    eventually(
        "three files attached",
        || env.task_field().len() == 3,
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let asset_of = |name: &str| {
        let field = env.task_field();
        let position = filenames(&field).iter().position(|n| n == name);
        position.map(|i| ids(&field)[i].clone())
    };
    let (old_a, old_b) = (asset_of("a.pdf").unwrap(), asset_of("b.pdf").unwrap());
    let uploads_before = env.uploads();

    drop_file(&env.tasks, "d.pdf", b"d");
    std::fs::write(&b, b"b changed").unwrap();
    std::fs::remove_file(&c).unwrap();
    let daemon = env.start();
    eventually(
        "d added, b replaced, c deleted",
        || {
            let names = filenames(&env.task_field());
            names.len() == 3
                && names.contains(&"d.pdf".to_string())
                && !names.contains(&"c.pdf".to_string())
                && !ids(&env.task_field()).contains(&old_b)
        },
        &daemon,
    )
    .await;
    assert_eq!(
        env.uploads() - uploads_before,
        2,
        "only d and the new b are uploaded; a is not sent again"
    );
    assert_eq!(asset_of("a.pdf"), Some(old_a), "a keeps its asset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_nothing_changed_sends_no_request_beyond_target_checks() {
    let env = Env::new().await;
    let daemon = env.start();
    for i in 0..5 {
        drop_file(&env.tasks, &format!("{i}.pdf"), b"x");
        drop_file(&env.kickoff, &format!("{i}.pdf"), b"y");
    }
    eventually(
        "all attached",
        || env.task_field().len() == 5 && env.kickoff_field().len() == 5,
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let before = env.fake.requests().len();
    let daemon = env.start();
    daemon
        .wait_for_log("0 new or changed files to check and upload, 0 gone")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await; // several settle periods
    let after: Vec<_> = env.fake.requests().into_iter().skip(before).collect();
    assert!(
        after.iter().all(|r| r.method == "GET"),
        "only target checks: {after:?}"
    );
    assert_eq!(after.len(), 2, "one GET per target: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_is_uploaded_once_and_complete() {
    let env = Env::new().await;
    let daemon = env.start();
    let path = env.tasks.join("scan.pdf");
    let mut expected = Vec::new();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&path).unwrap();
        for i in 0..10 {
            let chunk = vec![b'a' + i as u8; 4096];
            file.write_all(&chunk).unwrap();
            file.flush().unwrap();
            expected.extend_from_slice(&chunk);
            tokio::time::sleep(std::time::Duration::from_millis(150)).await; // a slow scanner, below the settle time
        }
    }
    eventually(
        "the scan is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let asset = env
        .fake
        .asset(env.task_field()[0]["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(asset.content.len(), expected.len());
    assert!(asset.content.as_ref() == expected.as_slice());
    assert_eq!(env.uploads(), 1, "uploaded exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_go_out_exactly_as_on_disk() {
    let env = Env::new().await;
    let daemon = env.start();
    let name = "Facture n°7 \"final\" ünïcödé.pdf";
    drop_file(&env.tasks, name, b"x");
    eventually("attached", || env.task_field().len() == 1, &daemon).await;
    let asset = env
        .fake
        .asset(env.task_field()[0]["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        asset.filename, "Facture n°7 \"final\" ünïcödé.pdf",
        "raw UTF-8, quotes escaped as PHP unescapes them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_into_one_field_needs_far_fewer_puts_than_files() {
    let (env, daemon) = Env::running().await;
    let staging = env.dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    for i in 0..60 {
        drop_file(
            &staging,
            &format!("doc-{i:03}.pdf"),
            format!("document {i}").as_bytes(),
        );
    }
    for i in 0..60 {
        let name = format!("doc-{i:03}.pdf");
        std::fs::rename(staging.join(&name), env.tasks.join(&name)).unwrap();
    }
    eventually("all 60 attached", || env.task_field().len() == 60, &daemon).await;
    let puts = env.requests("PUT", "/tasks/").len();
    // The batch waits for the uploads still under way, not for a clock.
    assert!(puts <= 3, "{puts} PUTs for 60 files");
    let mut unique = ids(&env.task_field());
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 60, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_touched_or_rewritten_with_the_same_bytes_is_not_uploaded_again() {
    let env = Env::new().await;
    let daemon = env.start();
    let path = drop_file(&env.tasks, "same.pdf", b"same bytes");
    eventually("attached", || env.task_field().len() == 1, &daemon).await;
    std::fs::write(&path, b"same bytes").unwrap();
    drop_file(&env.tasks, "marker.pdf", b"m");
    eventually(
        "the later marker file is attached",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 2, "the rewritten file was not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_disappears_is_paused_not_deleted_remotely() {
    let env = Env::new().await;
    let daemon = env.start();
    drop_file(&env.tasks, "a.pdf", b"a");
    drop_file(&env.tasks, "b.pdf", b"b");
    eventually("both attached", || env.task_field().len() == 2, &daemon).await;
    let away = env.dir.path().join("unmounted");
    std::fs::rename(&env.tasks, &away).unwrap();
    daemon
        .wait_for_log("nothing in it is uploaded or deleted until it is back")
        .await;
    std::fs::rename(&away, &env.tasks).unwrap();
    daemon
        .wait_for_log("folder is back; syncing it again")
        .await;
    drop_file(&env.tasks, "c.pdf", b"c");
    eventually(
        "a file dropped after the folder came back is attached (it is watched again)",
        || env.task_field().len() == 3,
        &daemon,
    )
    .await;
    assert!(
        env.requests("DELETE", "/file/").is_empty(),
        "nothing was deleted remotely"
    );
    assert_eq!(env.task_field().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_holds_the_other_files_of_its_field_no_longer_than_attach_delay() {
    let env = Env::with_config("attach_delay: 300ms\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Latency(Duration::from_secs(6)),
    ));
    drop_file(&env.tasks, "slow.pdf", b"slow");
    daemon.wait_for_log("uploading").await;
    let dropped = std::time::Instant::now();
    drop_file(&env.tasks, "quick.pdf", b"quick");
    eventually(
        "the quick file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "the quick file waited {:?} for the slow upload",
        dropped.elapsed()
    );
    assert_eq!(filenames(&env.task_field()), ["quick.pdf"]);
    eventually(
        "the slow file is attached too",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_file_is_attached_without_waiting_for_attach_delay() {
    let env = Env::with_config("attach_delay: 1h\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    drop_file(&env.tasks, "alone.pdf", b"alone");
    eventually("attached", || env.task_field().len() == 1, &daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_every_1_5_s_for_30_s_is_uploaded_at_most_6_times_and_ends_with_its_last_version(
) {
    let (env, daemon) = Env::running().await;
    let path = env.tasks.join("export.csv");
    let mut content = Vec::new();
    for piece in 0..20 {
        content.extend_from_slice(format!("row {piece}\n").as_bytes());
        std::fs::write(&path, &content).unwrap();
        // The writer's own pace (the scenario), not a wait for the daemon.
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let last_version = |env: &Env| {
        let field = env.task_field();
        field.len() == 1
            && env
                .fake
                .asset(field[0]["id"].as_str().unwrap_or_default())
                .is_some_and(|asset| asset.content.as_ref() == content.as_slice())
    };
    eventually(
        "the last version is the one attached",
        || last_version(&env),
        &daemon,
    )
    .await;
    let uploads = env.uploads();
    assert!(
        uploads <= 6,
        "{uploads} uploads for a file that kept changing; daemon log:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(log.matches("the file keeps changing").count(), 1, "{log}");
    let status = env.command(&["status"]).stdout;
    assert!(
        status.contains("keeps changing: ") && status.contains("export.csv"),
        "{status}"
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}
