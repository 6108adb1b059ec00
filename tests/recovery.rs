//! Recovering from a lost or damaged state store: files already in their field with the same
//! content are adopted rather than uploaded again, so a field never holds a file twice.

mod common;

use common::*;
use serde_json::json;
use tallyfy_sync::fake::AssetSubject;

/// Drops `count` files into the task folder and waits until the field holds them all.
async fn sync_files(env: &Env, daemon: &Daemon, count: usize) {
    for i in 0..count {
        drop_file(
            &env.tasks,
            &format!("scan-{i:02}.pdf"),
            format!("%PDF scan {i}").as_bytes(),
        );
    }
    eventually(
        "every file is attached",
        || env.task_field().len() == count,
        daemon,
    )
    .await;
}

/// Waits until `count` files were adopted, then checks that nothing was uploaded since
/// `uploads` and that the field still holds exactly the assets `before`.
async fn all_adopted(env: &Env, daemon: &Daemon, count: usize, uploads: usize, before: &[String]) {
    eventually(
        &format!("all {count} files are adopted"),
        || {
            daemon
                .log()
                .matches("recorded as synced without uploading")
                .count()
                == count
        },
        daemon,
    )
    .await;
    assert_eq!(env.uploads(), uploads, "nothing uploaded again");
    assert_eq!(
        sorted(ids(&env.task_field())),
        before,
        "the field is unchanged"
    );
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_directory_costs_no_upload_and_leaves_the_field_unchanged() {
    let (env, daemon) = Env::running().await;
    sync_files(&env, &daemon, 8).await;
    daemon.wait_for_log("scan-07.pdf").await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let before = sorted(ids(&env.task_field()));
    let uploads = env.uploads();
    let puts = env.requests("PUT", "/runs/").len();
    std::fs::remove_dir_all(&env.state).unwrap();

    let daemon = env.start();
    all_adopted(&env, &daemon, 8, uploads, &before).await;
    assert!(
        env.requests("DELETE", "/file").is_empty(),
        "nothing deleted"
    );
    assert_eq!(env.requests("PUT", "/runs/").len(), puts, "no PUT");
    let status = env.command(&["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", describe(&status));
    assert_eq!(daemon.stop().await.code(), Some(0));
    let status = env.command(&["status"]);
    assert!(status.stdout.contains("8 synced"), "{}", describe(&status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_attached_file_of_the_same_name_with_other_content_stays_and_the_local_one_goes_beside_it(
) {
    let env = Env::new().await;
    let by_hand = env.fake.add_asset(
        "report.pdf",
        b"%PDF the version someone attached by hand",
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    );
    env.fake
        .set_task_field(RUN, TASK, CAPTURE, json!([by_hand.clone()]));
    drop_file(&env.tasks, "report.pdf", b"%PDF the local version");
    let daemon = env.start();
    eventually(
        "the local file is attached beside the other",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    let field = env.task_field();
    assert_eq!(
        field[0]["id"], by_hand["id"],
        "the hand-attached file stays"
    );
    let local = env.fake.asset(field[1]["id"].as_str().unwrap()).unwrap();
    assert_eq!(local.content.as_ref(), b"%PDF the local version");
    assert_eq!(env.uploads(), 1);
    assert!(env.requests("DELETE", "/file").is_empty());
    assert!(
        env.requests("GET", "/dl").len() == 1,
        "the same-named file was downloaded to compare it"
    );
    daemon
        .wait_for_log("the field holds a file of the same name with other content")
        .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_attached_by_hand_before_the_daemon_ran_is_adopted_not_uploaded() {
    let env = Env::new().await;
    let content = b"%PDF already there";
    let by_hand = env.fake.add_asset(
        "Q3 \"final\".pdf",
        content,
        AssetSubject::Kickoff {
            checklist_id: KICKOFF_TEMPLATE.into(),
        },
    );
    env.fake
        .set_kickoff_field(KICKOFF_TEMPLATE, KICKOFF_FIELD, json!([by_hand.clone()]));
    drop_file(&env.kickoff, "Q3 \"final\".pdf", content);
    let daemon = env.start();
    daemon
        .wait_for_log("recorded as synced without uploading")
        .await;
    assert_eq!(env.uploads(), 0);
    assert_eq!(ids(&env.kickoff_field()), ids(&[by_hand]));
    assert!(env.requests("PUT", "/checklists/").is_empty());
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// How far sled's newest snapshot says its log is durable (`snap.<lsn in hex>`).
fn snapshot_lsn(env: &Env) -> u64 {
    std::fs::read_dir(env.state.join("store"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            u64::from_str_radix(name.strip_prefix("snap.")?, 16).ok()
        })
        .max()
        .expect("sled wrote a snapshot when it opened the store")
}

/// What a disk that lost the last `bytes` written to `path` leaves.
fn cut(path: &std::path::Path, bytes: u64) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len.saturating_sub(bytes))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_by_a_kill_is_moved_aside_and_rebuilt_by_adopting() {
    let (env, daemon) = Env::running().await;
    sync_files(&env, &daemon, 8).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let daemon = env.start();
    daemon.wait_for_log("initial scan done").await;
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit().await;
    // sled's log file is mostly unwritten space: the last 4 KiB of what it wrote end where its
    // snapshot (written at the last start) says the log is durable.
    let db = env.state.join("store/db");
    let written = snapshot_lsn(&env);
    cut(&db, std::fs::metadata(&db).unwrap().len() - written + 4096);
    let before = sorted(ids(&env.task_field()));
    let uploads = env.uploads();

    let daemon = env.start();
    daemon.wait_for_log("moved it aside").await;
    all_adopted(&env, &daemon, 8, uploads, &before).await;
    let kept: Vec<String> = std::fs::read_dir(&env.state)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("store.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "the damaged store is kept: {kept:?}");
    let status = env.command(&["status"]);
    assert!(
        status.stdout.contains("store rebuilt at") && status.stdout.contains(&kept[0]),
        "{}",
        describe(&status)
    );
    // Once the operator has removed the damaged copy, the note has nothing left to point to.
    std::fs::remove_dir_all(env.state.join(&kept[0])).unwrap();
    let status = env.command(&["status"]);
    assert!(status.status.success(), "{}", describe(&status));
    assert!(
        !status.stdout.contains("store rebuilt"),
        "{}",
        describe(&status)
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_log_lost_after_a_clean_stop_leaves_no_duplicate_in_the_field() {
    let (env, daemon) = Env::running().await;
    sync_files(&env, &daemon, 20).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let db = env.state.join("store/db");
    let len = std::fs::metadata(&db).unwrap().len();
    cut(&db, len / 2);
    let before = sorted(ids(&env.task_field()));
    let uploads = env.uploads();

    let daemon = env.start();
    daemon.wait_for_log("initial scan done").await;
    eventually(
        "every file has a record again",
        || {
            let status = env.command(&["status", "--json"]);
            serde_json::from_str::<serde_json::Value>(&status.stdout)
                .is_ok_and(|report| report["folders"][0]["counts"]["synced"] == 20)
        },
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), uploads, "nothing uploaded again");
    assert_eq!(sorted(ids(&env.task_field())), before, "no duplicate");
    assert_eq!(daemon.stop().await.code(), Some(0));
}
