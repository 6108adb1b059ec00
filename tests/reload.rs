//! SIGHUP re-reads the config: folders come and go without a restart, queued work and the
//! request pause carry over, and a broken config is refused while the old one keeps running.

mod common;

use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

/// Appends a folder mapped to the task's field to the config file (folders come last).
fn add_folder(env: &Env, name: &str) -> std::path::PathBuf {
    let dir = env.dir.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut yaml = std::fs::read_to_string(&env.config).unwrap();
    yaml += &format!(
        "  - path: {}\n    task:\n      run_id: {RUN}\n      task_id: {TASK}\n      capture_id: {CAPTURE}\n",
        dir.display()
    );
    env.write_raw_config(&yaml);
    dir
}

async fn the_old_config_still_syncs(env: &Env, daemon: &Daemon) {
    drop_file(&env.tasks, "still.pdf", b"s");
    eventually(
        "the old config still syncs",
        || env.task_field().len() == 1,
        daemon,
    )
    .await;
}

async fn a_file_in_it_is_attached(env: &Env, folder: &std::path::Path, daemon: &Daemon) {
    drop_file(folder, "added.pdf", b"a");
    eventually(
        "a file in the new folder is attached",
        || filenames(&env.task_field()) == ["added.pdf"],
        daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_starts_watching_a_folder_added_to_the_config() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log("running").await;
    let pid = daemon.pid();
    let more = add_folder(&env, "more");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("reload: folder added").await;
    daemon.wait_for_log("reloaded the configuration").await;
    a_file_in_it_is_attached(&env, &more, &daemon).await;
    assert_eq!(daemon.pid(), pid);
    assert!(daemon.exited().is_none());
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_on_reload_is_refused_and_the_old_one_keeps_running() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log("running").await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    env.write_raw_config(&good.replace("settle:", "settel:"));
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("reload refused, the running configuration stays")
        .await;
    assert!(
        daemon.log().contains("settel: unknown key"),
        "{}",
        daemon.log()
    );
    the_old_config_still_syncs(&env, &daemon).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_uploads_and_a_pause_loses_nothing_and_sends_nothing_twice() {
    let (env, daemon) = Env::running().await;
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Latency(Duration::from_millis(1500)),
    ));
    for i in 0..6 {
        drop_file(&env.tasks, &format!("{i}.pdf"), format!("{i}").as_bytes());
    }
    daemon.wait_for_log("uploading").await;
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("reloaded the configuration").await;
    eventually("all six attached", || env.task_field().len() == 6, &daemon).await;
    assert_eq!(env.uploads(), 6, "no file was uploaded twice");

    // A pause (429 with Retry-After) holds across a reload too.
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Status {
            status: 429,
            body: r#"{"message": "slow down"}"#.into(),
            retry_after: Some("3".into()),
        },
    ));
    drop_file(&env.tasks, "late.pdf", b"late");
    daemon.wait_for_log("rate limited by the API (429)").await;
    let limited = env.requests("POST", "/file").last().unwrap().at;
    daemon.signal(libc::SIGHUP);
    eventually(
        "the late file is attached",
        || env.task_field().len() == 7,
        &daemon,
    )
    .await;
    let next = env
        .fake
        .requests()
        .into_iter()
        .find(|r| r.at > limited)
        .unwrap();
    assert!(
        next.at - limited >= Duration::from_millis(2900),
        "a request went out {:?} after a 429 asking for 3 s",
        next.at - limited
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_command_waits_for_the_daemon_and_says_what_changed() {
    let env = Env::new().await;
    let daemon = env.start();
    daemon.wait_for_log("running").await;
    let more = add_folder(&env, "more");
    let reloaded = env.command(&["reload"]);
    assert_eq!(reloaded.status.code(), Some(0), "{}", describe(&reloaded));
    assert!(
        reloaded.stdout.starts_with("reloaded:\n")
            && reloaded
                .stdout
                .contains(&format!("folder added: {}", more.display())),
        "{}",
        describe(&reloaded)
    );
    // Answered once applied: the new folder syncs without waiting for anything else.
    assert!(daemon.log().contains("reloaded the configuration"));
    a_file_in_it_is_attached(&env, &more, &daemon).await;
    let again = env.command(&["reload"]);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    assert_eq!(again.stdout, "reloaded: no changes\n");
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_the_daemon_refuses_exits_78_with_the_reason_and_the_old_config_runs_on() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("serving metrics").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let good = std::fs::read_to_string(&env.config).unwrap();
    env.write_raw_config(&good.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")));
    let refused = env.command(&["reload"]);
    assert_eq!(refused.status.code(), Some(78), "{}", describe(&refused));
    assert!(
        refused
            .stderr
            .contains("reload refused, the running configuration stays")
            && refused.stderr.contains("metrics.listen"),
        "{}",
        describe(&refused)
    );
    the_old_config_still_syncs(&env, &daemon).await;
    // A config broken in itself is reported as such, without a daemon to ask.
    env.write_raw_config(&good.replace("settle:", "settel:"));
    let broken = env.command(&["reload"]);
    assert_eq!(broken.status.code(), Some(78), "{}", describe(&broken));
    assert!(broken.stderr.contains("settel"), "{}", describe(&broken));
    assert!(daemon.exited().is_none());
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_command_without_a_daemon_exits_7() {
    let env = Env::new().await;
    let reloaded = env.command(&["reload"]);
    assert_eq!(reloaded.status.code(), Some(7), "{}", describe(&reloaded));
    assert!(
        reloaded.stderr.contains("nothing to reload"),
        "{}",
        describe(&reloaded)
    );
}
