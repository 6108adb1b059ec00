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
