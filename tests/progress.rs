//! Progress of long work: the daemon's progress lines and `status`'s progress while a backlog
//! drains, and the bar `restore` shows on a terminal.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tallyfy_sync::fake::{Fault, FaultKind};

const FILES: usize = 24;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_logs_its_progress_with_uploads_bytes_and_time_left_and_status_shows_it() {
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    // Slow uploads, so that the burst outlasts the first progress line (every 5 s).
    env.fake.inject(
        Fault::once(
            "POST",
            "/file",
            FaultKind::Latency(Duration::from_millis(1200)),
        )
        .times(FILES),
    );
    for i in 0..FILES {
        drop_file(&env.tasks, &format!("{i:02}.pdf"), &vec![b'x'; 1000 + i]);
    }
    let bytes_total: u64 = (0..FILES as u64).map(|i| 1000 + i).sum();
    let json_lines = || -> Vec<Value> {
        daemon
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    };
    let progress = |lines: &[Value]| -> Option<Value> {
        lines
            .iter()
            .find(|line| {
                line["message"]
                    .as_str()
                    .is_some_and(|message| message.starts_with("progress: "))
            })
            .cloned()
    };
    // While the burst drains, `status` has the same figures.
    let mut status_seen = None;
    let deadline = std::time::Instant::now() + WAIT;
    while progress(&json_lines()).is_none() && std::time::Instant::now() < deadline {
        if status_seen.is_none() {
            let status = env.command(&["status", "--json"]);
            let report: Value = serde_json::from_str(&status.stdout).unwrap_or_default();
            // Once every file is taken (they settle one by one).
            if report["progress"]["files_total"] == FILES {
                let text = env.command(&["status"]);
                status_seen = Some((report["progress"].clone(), text.stdout));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line =
        progress(&json_lines()).unwrap_or_else(|| panic!("a progress line:\n{}", daemon.log()));
    assert_eq!(line["total"], FILES, "{line}");
    assert_eq!(line["bytes_total"], bytes_total, "{line}");
    let (uploaded, uploading) = (
        line["uploaded"].as_u64().unwrap(),
        line["uploading"].as_u64().unwrap(),
    );
    assert!(
        uploaded + uploading > 0,
        "uploads count before attaches: {line}"
    );
    assert!(line["eta_secs"].is_u64(), "{line}");
    let message = line["message"].as_str().unwrap();
    eprintln!("first progress line: {message}");
    for words in [
        "files done (",
        "uploaded, ",
        "uploading), ",
        " files/s, ",
        "left",
    ] {
        assert!(message.contains(words), "{message:?} lacks {words:?}");
    }
    let (object, text) = status_seen.expect("status showed the progress while the burst drained");
    assert_eq!(object["files_total"], FILES, "{object}");
    assert_eq!(object["bytes_total"], bytes_total, "{object}");
    assert!(
        text.lines().any(|line| line.starts_with("progress: ")
            && line.contains(&format!("/{FILES} files done ("))),
        "{text}"
    );
    eventually_within(
        Duration::from_secs(60),
        "every file is attached",
        || env.task_field().len() == FILES,
        &daemon,
    )
    .await;
    daemon.wait_for_log("caught up: ").await;
    // Once caught up, `status` has no progress any more.
    let status = env.command(&["status", "--json"]);
    let report: Value = serde_json::from_str(&status.stdout).unwrap();
    assert!(report["progress"].is_null(), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_shows_a_bar_on_a_terminal_and_clears_it_before_each_line() {
    let (env, daemon) = Env::running().await;
    drop_file(&env.tasks, "a.pdf", b"%PDF a");
    drop_file(&env.tasks, "b.pdf", b"%PDF b");
    eventually("both attached", || env.task_field().len() == 2, &daemon).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let to = env.dir.path().join("restored");
    let command = format!(
        "'{}' restore '{}' --to '{}' --config '{}'",
        env!("CARGO_BIN_EXE_tallyfy-sync"),
        env.tasks.display(),
        to.display(),
        env.config.display()
    );
    let Some(shown) = on_a_terminal(&command) else {
        return;
    };
    eprintln!("restore on a terminal showed: {shown:?}");
    assert!(shown.contains("downloading 1/2 files"), "{shown:?}");
    assert!(shown.contains("downloading 2/2 files"), "{shown:?}");
    assert!(shown.contains("% downloading"), "a bar: {shown:?}");
    // Every line of the report starts on a cleared line, and no bar is left after the summary.
    for name in ["a.pdf", "b.pdf"] {
        let at = shown
            .find(&format!("{}", to.join(name).display()))
            .expect(name);
        let line_start = shown[..at].rfind('\n').map_or(0, |at| at + 1);
        assert!(
            shown[line_start..at].starts_with("\r\x1b[K") || !shown[line_start..at].contains('['),
            "{shown:?}"
        );
    }
    let summary = shown.find("2 of 2 files in").expect("the summary");
    assert!(!shown[summary..].contains("downloading"), "{shown:?}");

    // Without a terminal there is no bar.
    let piped = env.command(&[
        "restore",
        env.tasks.to_str().unwrap(),
        "--to",
        env.dir.path().join("again").to_str().unwrap(),
    ]);
    assert_eq!(piped.status.code(), Some(0), "{}", describe(&piped));
    assert!(
        !piped.stderr.contains("downloading"),
        "{}",
        describe(&piped)
    );
}
