//! `verify` and `restore`: checking that Tallyfy holds what the folders hold, and getting the
//! files back from Tallyfy.

mod common;

use common::*;
use serde_json::{json, Value};
use tallyfy_sync::fake::AssetSubject;

fn id_of(field: &[Value], name: &str) -> String {
    field
        .iter()
        .find(|asset| asset["filename"] == name)
        .unwrap_or_else(|| panic!("{name} is in the field"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The line `verify` printed for `name`.
fn line<'a>(output: &'a Output, name: &str) -> &'a str {
    output
        .stdout
        .lines()
        .find(|line| line.split_whitespace().any(|word| word == name))
        .unwrap_or_else(|| panic!("a line for {name}: {}", describe(output)))
}

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
    assert!(line(&verified, "a.pdf").contains("changed locally"));
    assert!(line(&verified, "b.pdf").contains("removed from the field in Tallyfy"));
    assert!(line(&verified, "c.pdf").contains("deleted in Tallyfy"));
    assert!(line(&verified, "d.pdf").contains("in sync"), "no download");
    assert!(line(&verified, "e.pdf").contains("in sync"));
    assert!(line(&verified, "extra.pdf").contains("attached by hand"));

    let downloaded = env.command(&["verify", "--download"]);
    assert_eq!(
        downloaded.status.code(),
        Some(1),
        "{}",
        describe(&downloaded)
    );
    assert!(line(&downloaded, "d.pdf").contains("content in Tallyfy differs"));
    assert!(line(&downloaded, "e.pdf").contains("in sync"));

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
async fn verify_exits_78_on_a_bad_config() {
    let env = Env::new().await;
    env.write_raw_config("api: [\n");
    let verified = env.command(&["verify"]);
    assert_eq!(verified.status.code(), Some(78), "{}", describe(&verified));
}
