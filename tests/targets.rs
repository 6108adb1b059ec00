//! `tallyfy-sync targets` through the real binary against the fake API: with only `api:`
//! configured it lists templates, active processes and route folders by name and id, follows
//! every list to its last page, sends only GETs, filters by name, and its `folders:` entries
//! pass `check --online` once pasted.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};
use tallyfy_sync::fake::{FakeChecklist, FakeStep, FakeTallyfy};

/// A fake organization: an "Invoice approval" template a launch folder fits (its required
/// text field filled from the path), a "Contract intake" template it does not (a required
/// dropdown), a "Supplier audit" template with 12 steps (the route's default page holds 10)
/// whose last has a file field, one active and one completed process, and 100 filler
/// templates so that the template list takes two pages.
async fn organization() -> (FakeTallyfy, String) {
    let fake = FakeTallyfy::start(ORG, TOKEN).await.unwrap();
    fake.add_checklist(FakeChecklist {
        id: "tpl-invoice".into(),
        title: "Invoice approval".into(),
        prerun: vec![
            field("ko-invoice", "Invoice", "file", json!([])),
            field("ko-from", "Received from", "text", Value::Null),
        ],
    });
    fake.set_required("tpl-invoice", "ko-from", true);
    fake.add_checklist(FakeChecklist {
        id: "tpl-contract".into(),
        title: "Contract intake".into(),
        prerun: vec![
            field("ko-contract", "Signed contract", "file", json!([])),
            field("ko-region", "Region", "dropdown", Value::Null),
        ],
    });
    fake.set_required("tpl-contract", "ko-region", true);
    fake.add_checklist(FakeChecklist {
        id: "tpl-audit".into(),
        title: "Supplier audit".into(),
        prerun: vec![],
    });
    let mut steps: Vec<FakeStep> = (1..=11)
        .map(|n| FakeStep {
            id: format!("audit-step-{n}"),
            title: format!("Check {n}"),
            fields: vec![field(
                &format!("audit-note-{n}"),
                "Note",
                "text",
                Value::Null,
            )],
        })
        .collect();
    steps.push(FakeStep {
        id: "audit-step-12".into(),
        title: "File the report".into(),
        fields: vec![field("cap-report", "Audit report", "file", json!([]))],
    });
    fake.add_steps("tpl-audit", steps);
    for n in 0..100 {
        fake.add_checklist(FakeChecklist {
            id: format!("tpl-filler-{n:03}"),
            title: format!("Filler {n:03}"),
            prerun: vec![],
        });
    }
    let run = fake.start_run("tpl-audit", "Audit ACME 2026");
    let done = fake.start_run("tpl-audit", "Audit Globex 2025");
    fake.complete_run(&done);
    (fake, run)
}

/// A config with only `api:` (and `folders_yaml` after it).
fn config(dir: &Path, fake: &FakeTallyfy, folders_yaml: &str) -> PathBuf {
    let file = dir.join("config.yaml");
    std::fs::write(
        &file,
        format!(
            "api:\n  base_url: {}\n  org_id: {ORG}\n  timeout: 10s\nstate_dir: {}\n{folders_yaml}",
            fake.base_url(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_lists_templates_processes_and_route_folders_by_name_with_only_api_configured() {
    let (fake, run) = organization().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &fake, "");
    let output = run_command(&["targets"], Some(TOKEN), &file);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let out = &output.stdout;
    for expected in [
        "Templates (103), with their kick-off file fields:",
        "  template \"Invoice approval\" (tpl-invoice)",
        "    kickoff folder: kick-off field \"Invoice\" of template \"Invoice approval\"",
        "      fits: required kick-off fields filled from the path: \"Received from\" (ko-from, text)",
        "          ko-from: \"{parent}\"   # \"Received from\" (text)",
        "      does not fit: the template requires kick-off fields a launch folder cannot fill: \"Region\" (ko-region, dropdown)",
        // The last page of the template list.
        "  template \"Filler 099\" (tpl-filler-099)",
        "Active processes (1), with their tasks' file fields:",
        &format!("  process \"Audit ACME 2026\" ({run}) of template \"Supplier audit\" (tpl-audit)"),
        "    task folder: field \"Audit report\" of task \"File the report\" in process \"Audit ACME 2026\"",
        &format!("        run_id: {run}   # \"Audit ACME 2026\""),
        // Beyond the steps route's default page of 10.
        "    route folder: field \"Audit report\" of step \"File the report\" in every active process of template \"Supplier audit\"",
        "        capture_id: cap-report   # \"Audit report\" (step \"File the report\")",
    ] {
        assert!(out.contains(expected), "{expected:?} missing:\n{out}");
    }
    assert!(
        !out.contains("Audit Globex"),
        "a completed process is listed:\n{out}"
    );
    let requests = fake.requests();
    assert!(
        requests.iter().all(|request| request.method == "GET"),
        "only GETs: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.path.ends_with("/checklists")
            && r.query.as_deref().unwrap_or("").contains("page=2")),
        "the template list's second page was read"
    );
    // Two list pages, a kick-off form and a step list per template, one process list, one
    // task list per active process: nothing read twice.
    assert_eq!(requests.len(), 2 + 103 * 2 + 1 + 1, "{requests:?}");
    // `folders: []` is accepted too.
    let file = config(dir.path(), &fake, "folders: []\n");
    let output = run_command(&["targets", "nothing-like-this"], Some(TOKEN), &file);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_matches_names_in_any_case() {
    let (fake, _run) = organization().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &fake, "");
    let output = run_command(&["targets", "INVOICE"], Some(TOKEN), &file);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        output.stdout.contains("template \"Invoice approval\""),
        "{}",
        output.stdout
    );
    for absent in ["Contract intake", "Filler 000", "Audit ACME"] {
        assert!(
            !output.stdout.contains(absent),
            "{absent}:\n{}",
            output.stdout
        );
    }
    let output = run_command(&["targets", "--json", "audit REPORT"], Some(TOKEN), &file);
    let document: Value = serde_json::from_str(&output.stdout).expect("JSON");
    let kinds: Vec<&str> = document["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task", "route"], "{}", output.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_folders_entry_passes_check_online_once_pasted() {
    let (fake, _run) = organization().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &fake, "");
    let output = run_command(&["targets", "--json"], Some(TOKEN), &file);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let document: Value = serde_json::from_str(&output.stdout).expect("JSON");
    let mut folders = String::from("folders:\n");
    let mut count = 0;
    for (index, entry) in document["entries"].as_array().unwrap().iter().enumerate() {
        if !entry["fits"].as_bool().unwrap() {
            continue;
        }
        let folder = dir.path().join(format!("folder-{index}"));
        std::fs::create_dir(&folder).unwrap();
        let yaml = entry["folder"].as_str().unwrap();
        let (first, rest) = yaml.split_once('\n').unwrap();
        assert!(first.starts_with("- path: /srv/tallyfy/"), "{yaml}");
        folders += &format!("  - path: {}\n", folder.display());
        for line in rest.lines() {
            folders += &format!("  {line}\n");
        }
        count += 1;
    }
    assert_eq!(
        count, 5,
        "kickoff x2, launch x1 (the other does not fit), task, route: {}",
        output.stdout
    );
    let file = config(dir.path(), &fake, &folders);
    let output = run_command(&["check", "--online"], Some(TOKEN), &file);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{folders}\n{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_with_a_wrong_org_id_names_api_org_id_and_exits_78() {
    let (fake, _run) = organization().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &fake, "");
    let yaml = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        yaml.replace(&format!("org_id: {ORG}"), "org_id: nope"),
    )
    .unwrap();
    let output = run_command(&["targets"], Some(TOKEN), &file);
    assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
    assert!(
        output.stderr.contains("api.org_id \"nope\" is wrong"),
        "{}",
        describe(&output)
    );
}
