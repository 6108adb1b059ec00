//! Log output of the real binary, as chosen by `log.format`.

mod common;

use common::*;
use serde_json::Value;

/// Runs the daemon with `log.format: json` until `name` is attached and `needle` logged; returns
/// the environment, the file's path and the log, one JSON object per line.
async fn json_log_of(name: &str, needle: &str) -> (Env, std::path::PathBuf, Vec<Value>) {
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let path = drop_file(&env.tasks, name, b"%PDF-1.4 json");
    daemon.wait_for_log("\"attached\"").await;
    daemon.wait_for_log(needle).await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().await.success());
    let lines = daemon
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    (env, path, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_object_per_line_with_the_fields() {
    let (env, path, lines) = json_log_of("scan.pdf", "\"attached\"").await;
    let attached = lines
        .iter()
        .find(|line| line["message"] == "attached")
        .expect("an attached line");
    assert_eq!(attached["level"], "INFO");
    assert_eq!(attached["folder"], env.tasks.display().to_string());
    assert_eq!(attached["file"], path.display().to_string());
    assert_eq!(
        attached["asset_id"],
        env.task_field()[0]["id"],
        "{attached}"
    );
    assert!(attached["timestamp"].is_string(), "{attached}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_keep_file_names_exact_where_text_escapes_them() {
    let (_env, path, lines) = json_log_of("new\nline.pdf", "its name in Tallyfy differs").await;
    let attached = lines
        .iter()
        .find(|line| line["message"] == "attached")
        .expect("an attached line");
    assert_eq!(attached["file"], path.display().to_string());
    let renamed = lines
        .iter()
        .find(|line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("its name in Tallyfy differs"))
        })
        .expect("a rename line");
    assert_eq!(renamed["level"], "WARN");
    assert_eq!(renamed["name"], "new\nline.pdf");
    assert_eq!(renamed["stored_as"], "new_line.pdf");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_rescans_without_claiming_the_watcher_dropped_events() {
    let (env, daemon) = Env::running().await;
    let retried = env.command(&["retry"]);
    assert!(retried.status.success(), "{}", describe(&retried));
    daemon.wait_for_log("retry requested").await;
    // The rescan retry asks for comes before this file is taken.
    drop_file(&env.tasks, "after.pdf", b"a");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert!(!daemon.log().contains("dropped events"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_and_lock_files_are_passed_over_with_one_debug_line_and_no_warning() {
    let env = Env::new().await;
    let daemon = env.start_with_env(TOKEN, &[("RUST_LOG", "debug".as_ref())]);
    daemon.wait_for_log("target verified").await;
    let litter = ["Thumbs.db", "desktop.ini", ".DS_Store", "~$Report.docx"];
    for name in litter {
        drop_file(&env.tasks, name, b"system");
    }
    drop_file(&env.tasks, "real.pdf", b"%PDF");
    eventually(
        "the real file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let log = daemon.log();
    for name in litter {
        let lines: Vec<&str> = log.lines().filter(|line| line.contains(name)).collect();
        assert!(
            lines.iter().all(|line| line.contains("DEBUG")) && !lines.is_empty(),
            "{name}: {lines:#?}"
        );
    }
    let status = env.command(&["status"]);
    for name in litter {
        assert!(!status.stdout.contains(name), "{}", describe(&status));
    }
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_start_up_error_is_a_json_line_when_logs_are_json() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let env = Env::with_config(
        &format!("log:\n  format: json\nmetrics:\n  listen: 127.0.0.1:{port}\n"),
        "",
    )
    .await;
    let daemon = env.start();
    assert_eq!(daemon.wait_exit().await.code(), Some(78));
    let log = daemon.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    let fatal = lines.last().expect("a line");
    assert_eq!(fatal["level"], "ERROR", "{fatal}");
    assert!(
        fatal["error"].as_str().unwrap().contains("metrics.listen"),
        "{fatal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_error_is_a_json_line_when_the_config_asks_for_json_logs() {
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    env.write_raw_config(&good.replace("settle:", "settel:"));
    let daemon = env.start();
    assert_eq!(daemon.wait_exit().await.code(), Some(78));
    let log = daemon.log();
    let fatal: Value =
        serde_json::from_str(log.trim_end()).unwrap_or_else(|error| panic!("{error}: {log}"));
    assert_eq!(fatal["level"], "ERROR", "{fatal}");
    assert!(
        fatal["error"].as_str().unwrap().contains("settel"),
        "{fatal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_is_given_exactly_in_json_logs() {
    use std::os::unix::ffi::OsStrExt;
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff.pdf");
    std::fs::write(env.tasks.join(name), b"latin-1").unwrap();
    daemon.wait_for_log("not valid UTF-8").await;
    let skipped: Value = daemon
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "skipped; not retried until the file changes")
        .expect("a skipped line");
    assert_eq!(
        skipped["file"],
        format!("{}/caf\\xe9 \\xff.pdf", env.tasks.display()),
        "{skipped}"
    );
}
