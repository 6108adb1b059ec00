//! Files someone removed from a field in Tallyfy's web app: noticed whenever the daemon reads the
//! field, then left alone (`remote_removed: leave`, the default) or put back (`restore`).

mod common;

use common::*;

/// Drops `name` and waits until the task field lists it; returns its asset id.
async fn synced(env: &Env, daemon: &Daemon, name: &str, content: &[u8]) -> String {
    attached(daemon, &env.tasks, name, content, || env.task_field()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_removed_in_tallyfy_is_left_removed_shown_by_status_and_sent_again_only_once_it_changes(
) {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("serving metrics at /metrics").await;
    let removed = synced(&env, &daemon, "a.pdf", b"%PDF a").await;
    env.fake.detach_asset(&removed);
    // Attaching another file reads the field, which is when the daemon notices.
    synced(&env, &daemon, "b.pdf", b"%PDF b").await;
    daemon
        .wait_for_log("removed from its field in Tallyfy")
        .await;
    assert_eq!(
        daemon
            .log()
            .matches("removed from its field in Tallyfy")
            .count(),
        1,
        "one WARN"
    );
    let status = env.command(&["status"]);
    let line = status
        .stdout
        .lines()
        .find(|line| line.contains("a.pdf"))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("removed in Tallyfy"), "{}", describe(&status));
    assert_eq!(filenames(&env.task_field()), vec!["b.pdf"]);
    let (_, metrics) = http_get(&format!("http://{}/metrics", daemon.metrics_addr())).await;
    for expected in [
        "tallyfy_sync_remote_removals_total{action=\"left\"} 1\n",
        "tallyfy_sync_remote_removals_total{action=\"restored\"} 0\n",
        &format!(
            "tallyfy_sync_files{{folder=\"{}\",state=\"removed\"}} 1\n",
            env.tasks.display()
        ),
    ] {
        assert!(
            metrics.contains(expected),
            "/metrics lacks {expected:?}:\n{metrics}"
        );
    }

    // Rewritten with the same bytes: still nothing to send.
    drop_file(&env.tasks, "a.pdf", b"%PDF a");
    synced(&env, &daemon, "c.pdf", b"%PDF c").await;
    assert_eq!(env.uploads(), 3, "a.pdf is not sent again while unchanged");

    drop_file(&env.tasks, "a.pdf", b"%PDF a, second version");
    eventually(
        "the changed file is attached again",
        || filenames(&env.task_field()).contains(&"a.pdf".to_string()),
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 4);
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_remote_removed_restore_a_removed_file_is_attached_again_and_a_deleted_one_uploaded_again(
) {
    let env = Env::with_config("", "remote_removed: restore\n").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let detached = synced(&env, &daemon, "a.pdf", b"%PDF a").await;
    let deleted = synced(&env, &daemon, "b.pdf", b"%PDF b").await;
    env.fake.detach_asset(&detached);
    assert!(env.fake.delete_asset(&deleted));
    synced(&env, &daemon, "c.pdf", b"%PDF c").await;
    eventually(
        "both files are back in the field",
        || {
            let mut names = filenames(&env.task_field());
            names.sort();
            names == ["a.pdf", "b.pdf", "c.pdf"]
        },
        &daemon,
    )
    .await;
    let field = env.task_field();
    let id_of = |name: &str| id_of(&field, name);
    assert_eq!(id_of("a.pdf"), detached, "the same asset is attached again");
    assert_ne!(id_of("b.pdf"), deleted, "a deleted asset is uploaded again");
    let again = env.fake.asset(&id_of("b.pdf")).unwrap();
    assert_eq!(again.content.as_ref(), b"%PDF b");
    assert_eq!(env.uploads(), 4);
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// The status line of `name`, with every file listed.
fn status_line(env: &Env, name: &str) -> String {
    env.command(&["status", "--all"])
        .stdout
        .lines()
        .find(|line| line.contains(name))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_path_sends_a_file_removed_in_tallyfy_again_and_adopts_a_synced_one_still_there() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let removed = synced(&env, &daemon, "a.pdf", b"%PDF a").await;
    let kept = synced(&env, &daemon, "b.pdf", b"%PDF b").await;
    env.fake.detach_asset(&removed);
    synced(&env, &daemon, "c.pdf", b"%PDF c").await;
    daemon
        .wait_for_log("removed from its field in Tallyfy")
        .await;
    assert!(
        status_line(&env, "a.pdf").contains("removed in Tallyfy"),
        "{}",
        status_line(&env, "a.pdf")
    );
    assert_eq!(env.uploads(), 3);

    let a = env.tasks.join("a.pdf");
    let retried = env.command(&["retry", a.to_str().unwrap()]);
    assert!(retried.status.success(), "{}", describe(&retried));
    assert!(
        retried.stdout.contains("1 file(s) under")
            && retried.stdout.contains("sent if it is missing there"),
        "{}",
        retried.stdout
    );
    eventually(
        "the removed file is in the field again",
        || filenames(&env.task_field()).contains(&"a.pdf".to_string()),
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 4, "the removed file is uploaded again, once");
    eventually(
        "status says a.pdf is synced",
        || {
            status_line(&env, "a.pdf")
                .trim_start()
                .starts_with("synced")
        },
        &daemon,
    )
    .await;

    // A file still in its field is checked there and adopted, not uploaded twice.
    let b = env.tasks.join("b.pdf");
    let retried = env.command(&["retry", b.to_str().unwrap()]);
    assert!(retried.status.success(), "{}", describe(&retried));
    eventually(
        "b.pdf is synced again with the asset it had",
        || {
            let line = status_line(&env, "b.pdf");
            line.trim_start().starts_with("synced") && line.contains(&kept)
        },
        &daemon,
    )
    .await;
    daemon
        .wait_for_log("already in its field in Tallyfy with the same content")
        .await;
    assert_eq!(env.uploads(), 4, "b.pdf is not uploaded again");
    let mut names = filenames(&env.task_field());
    names.sort();
    assert_eq!(names, ["a.pdf", "b.pdf", "c.pdf"]);
    assert_eq!(daemon.stop().await.code(), Some(0));
}
