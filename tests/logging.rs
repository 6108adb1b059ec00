//! Log output of the real binary, as chosen by `log.format`.

mod common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_with_the_fields() {
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    let path = drop_file(&env.tasks, "scan.pdf", b"%PDF-1.4 json");
    daemon.wait_for_log("\"attached\"").await;
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_exit().await.success());

    let lines: Vec<Value> = daemon
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
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
