//! Odd but real file names (quotes, backslashes, control characters) and server text with
//! newlines: stored in Tallyfy as PHP reads them, and never able to forge a line of output.

mod common;

use common::*;
use serde_json::Value;
use tallyfy_sync::fake::{Fault, FaultKind};
use tallyfy_sync::text;

/// A timestamp no real line of today's log starts with.
const FORGED: &str = "2001-02-03T04:05:06.000000Z  INFO";

/// Local name → the name Tallyfy stores.
const NAMES: &[(&str, &str)] = &[
    ("quote \"q\".pdf", "quote \"q\".pdf"),
    ("back\\slash.pdf", "back_slash.pdf"),
    ("new\nline.pdf", "new_line.pdf"),
    ("tab\there.pdf", "tab_here.pdf"),
    ("esc\u{1b}[31mred.pdf", "esc_[31mred.pdf"),
    (
        "x\n2001-02-03T04:05:06.000000Z  INFO attached file=forged.pdf.pdf",
        "x_2001-02-03T04:05:06.000000Z  INFO attached file=forged.pdf.pdf",
    ),
];

/// Every line of a text log is one whole event: it starts with the time of the event.
fn assert_one_event_per_line(log: &str) {
    for line in log.lines() {
        assert!(
            !line.starts_with("2001-02-03"),
            "a forged line in the log:\n{log}"
        );
        let stamp = line.get(..11).unwrap_or_default();
        assert!(
            stamp.starts_with("20") && stamp.ends_with('T') && !line.contains('\u{1b}'),
            "a line that is not an event of its own ({line:?}) in:\n{log}"
        );
    }
}

/// What `status` prints, which must hold neither a raw escape nor a forged line.
fn status(env: &Env) -> String {
    let status = env.command(&["status", "--all"]);
    assert!(status.status.success(), "{}", describe(&status));
    let shown = status.stdout;
    assert!(!shown.contains('\u{1b}'), "{shown}");
    assert!(
        !shown.lines().any(|line| line.starts_with("2001")),
        "{shown}"
    );
    shown
}

/// A text log line after its time and level: the message, then the fields.
fn message(line: &str) -> &str {
    let (_time, rest) = line.split_once(' ').unwrap_or_default();
    let (_level, rest) = rest.trim_start().split_once(' ').unwrap_or_default();
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_file_names_sync_under_the_names_php_stores_and_each_event_is_one_log_line() {
    let env = Env::with_config("log:\n  format: text\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    for (name, _) in NAMES {
        drop_file(&env.tasks, name, name.as_bytes());
    }
    eventually(
        "every file is attached",
        || env.task_field().len() == NAMES.len(),
        &daemon,
    )
    .await;

    let field = env.task_field();
    for (name, stored) in NAMES {
        let attached = field
            .iter()
            .find(|asset| {
                let content = env.fake.asset(asset["id"].as_str().unwrap()).unwrap();
                content.content == name.as_bytes()
            })
            .unwrap_or_else(|| panic!("{name:?} is not attached: {field:?}"));
        assert_eq!(attached["filename"], *stored, "{name:?}");
        let asset = env.fake.asset(attached["id"].as_str().unwrap()).unwrap();
        assert_eq!(asset.filename, *stored, "{name:?} as the fake stored it");
    }

    // The field is written before the daemon logs that it was.
    eventually(
        "every attach is logged",
        || {
            let log = daemon.log();
            let attached = log
                .lines()
                .filter(|line| message(line).starts_with("attached "));
            attached.count() == NAMES.len()
        },
        &daemon,
    )
    .await;
    let log = daemon.log();
    assert_one_event_per_line(&log);
    for (name, stored) in NAMES {
        let shown = text::path(&env.tasks.join(name)).to_string();
        let lines = |event: &str| {
            log.lines()
                .filter(|line| message(line).starts_with(event) && line.contains(&shown))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines("uploaded ").len(), 1, "{name:?} in:\n{log}");
        assert_eq!(lines("attached ").len(), 1, "{name:?} in:\n{log}");
        let renamed = lines("its name in Tallyfy differs");
        if name == stored {
            assert!(renamed.is_empty(), "{name:?} was not renamed:\n{log}");
        } else {
            let [line] = renamed[..] else {
                panic!("{name:?} renamed {} times:\n{log}", renamed.len());
            };
            assert!(
                line.contains(&format!("stored_as={}", text::escaped(stored))),
                "{line}"
            );
        }
    }
    assert!(log.contains("new\\nline.pdf"), "{log}");
    assert!(log.contains("esc\\u{1b}[31mred.pdf"), "{log}");

    let status = status(&env);
    for (name, stored) in NAMES {
        let start = format!("  synced    {}  asset ", text::escaped(name));
        let line = status
            .lines()
            .find(|line| line.starts_with(&start))
            .unwrap_or_else(|| panic!("{start:?} missing from:\n{status}"));
        let renamed = format!("  stored in Tallyfy as {}", text::escaped(stored));
        assert_eq!(line.contains(&renamed), name != stored, "{line}");
    }
    assert!(status.contains("tab\\there.pdf"), "{status}");

    // A new version keeps the name: no second warning.
    let changed = drop_file(&env.tasks, "back\\slash.pdf", b"version 2");
    let shown = text::path(&changed).to_string();
    let lines = |event: &str| {
        let log = daemon.log();
        log.lines()
            .filter(|line| message(line).starts_with(event) && line.contains(&shown))
            .count()
    };
    eventually(
        "the new version is attached",
        || lines("attached ") == 2,
        &daemon,
    )
    .await;
    assert_eq!(lines("its name in Tallyfy differs"), 1, "{}", daemon.log());
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_with_a_newline_stays_on_one_line_in_the_log_and_in_status() {
    let env = Env::with_config("log:\n  format: text\n", "").await;
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Status {
            status: 422,
            body: format!(
                r#"{{"error": true, "message": "The file is refused.\n{FORGED} attached file=forged.pdf"}}"#
            ),
            retry_after: None,
        },
    ));
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    drop_file(&env.tasks, "refused.pdf", b"x");
    daemon.wait_for_log("upload failed").await;
    let log = daemon.log();
    assert_one_event_per_line(&log);
    let shown = format!("The file is refused.\\n{FORGED} attached file=forged.pdf");
    let failed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("upload failed"))
        .collect();
    assert!(
        failed.len() == 1 && failed[0].contains(&shown),
        "one line with the escaped message expected in:\n{log}"
    );

    let status = status(&env);
    let line = status
        .lines()
        .find(|line| line.contains("refused.pdf"))
        .unwrap_or_else(|| panic!("no line for the file:\n{status}"));
    assert!(line.trim_start().starts_with("failed"), "{line}");
    assert!(line.contains(&shown), "{line}");
    assert!(daemon.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_odd_names_escaped_with_the_name_tallyfy_would_store() {
    let env = Env::new().await;
    drop_file(&env.tasks, "a\\b\n.pdf", b"x");
    drop_file(&env.tasks, "plain \"q\".pdf", b"y");
    let output = env.command(&["run", "--dry-run"]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        output
            .stdout
            .contains("  upload    a\\b\\n.pdf (1 B); stored in Tallyfy as a_b_.pdf\n"),
        "{}",
        describe(&output)
    );
    assert!(
        output
            .stdout
            .contains("  upload    plain \"q\".pdf (1 B)\n"),
        "{}",
        describe(&output)
    );

    let json = env.command(&["run", "--dry-run", "--json"]);
    assert!(json.status.success(), "{}", describe(&json));
    let plan: Value = serde_json::from_str(&json.stdout).unwrap();
    let actions = plan["folders"][0]["actions"].as_array().unwrap();
    let odd = actions
        .iter()
        .find(|action| action["path"] == env.tasks.join("a\\b\n.pdf").display().to_string())
        .unwrap_or_else(|| panic!("{plan}"));
    assert_eq!(odd["stored_as"], "a_b_.pdf");
    let plain = actions
        .iter()
        .find(|action| action["path"] != odd["path"])
        .unwrap();
    assert!(plain.get("stored_as").is_none(), "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_format_characters_in_a_name_are_escaped_in_the_log_status_and_verify() {
    // U+202E shows "invoice[RLO]fdp.exe" as "invoiceexe.pdf"; U+200B hides between letters.
    let spoofing = "invoice\u{202e}fdp.exe\u{200b}.pdf";
    let shown = "invoice\\u{202e}fdp.exe\\u{200b}.pdf";
    let raw = ['\u{202e}', '\u{200b}'];
    let env = Env::with_config("log:\n  format: text\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    drop_file(&env.tasks, spoofing, b"x");
    eventually(
        "the file is attached and logged",
        || daemon.log().contains("attached "),
        &daemon,
    )
    .await;
    let log = daemon.log();
    assert!(log.contains(shown), "{log}");
    assert!(!log.contains(raw), "{log}");

    let status = status(&env);
    assert!(status.contains(shown), "{status}");
    assert!(!status.contains(raw), "{status}");
    assert!(daemon.stop().await.success());

    let verified = env.command(&["verify"]);
    assert!(verified.stdout.contains(shown), "{}", describe(&verified));
    assert!(!verified.stdout.contains(raw), "{}", describe(&verified));
}
