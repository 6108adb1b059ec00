//! `folders` entries: paths, overlaps, watching and ignoring.

use super::*;

#[test]
fn folder_paths_must_be_directories_and_a_missing_one_is_accepted() {
    let fx = Fixture::new();
    let text = minimal()
        + "  - path: file.txt\n    kickoff: {checklist_id: T, field_id: F}\n"
        + "  - path: \"\"\n    kickoff: {checklist_id: T, field_id: F}\n"
        + "  - kickoff: {checklist_id: T, field_id: F}\n"
        + "  - path: [a]\n    kickoff: {checklist_id: T, field_id: F}\n";
    assert_eq!(
        fx.problems(&text),
        [
            "folders[1].path \"file.txt\": not a directory",
            "folders[2].path \"\": must not be empty",
            "folders[3].path: required",
            "folders[4].path: expected a path string, found a list",
        ]
    );
}

#[test]
fn a_folder_not_there_yet_is_accepted_with_the_links_above_it_resolved() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink(&fx.root, fx.root.join("link")).unwrap();
    let text = yaml("", "").replace("{dir}/in", "{dir}/link/share/scans");
    let config = fx.parse(&text);
    assert_eq!(config.folders[0].path, fx.root.join("share/scans"));
}

#[test]
fn folders_must_be_a_non_empty_list_of_mappings() {
    let fx = Fixture::new();
    assert_eq!(fx.problems("api: {org_id: ORG}\n"), ["folders: required"]);
    assert_eq!(
        fx.problems("api: {org_id: ORG}\nfolders: []\n"),
        ["folders: must list at least one folder"]
    );
    assert_eq!(
        fx.problems("api: {org_id: ORG}\nfolders: {dir}/in\n"),
        ["folders \"{dir}/in\": expected a list, found a string"]
    );
    assert_eq!(
        fx.problems("api: {org_id: ORG}\nfolders: [{dir}/in]\n"),
        ["folders[0] \"{dir}/in\": expected a mapping, found a string"]
    );
}

#[test]
fn recursive_and_delete_remote_must_be_booleans() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&yaml("", "    recursive: yes\n    delete_remote: 1\n")),
        [
            "folders[0].recursive \"yes\": expected true or false, found a string",
            "folders[0].delete_remote 1: expected true or false, found a number",
        ]
    );
}

#[test]
fn ignore_must_be_a_list_of_valid_globs() {
    let fx = Fixture::new();
    assert_eq!(
            fx.problems(&yaml("", "    ignore: [\"*.bak\", \"[abc\", 7]\n")),
            [
                "folders[0].ignore[1] \"[abc\": not a valid glob: unclosed character class; missing ']'",
                "folders[0].ignore[2] 7: expected a glob string, found a number",
            ]
        );
    assert_eq!(
        fx.problems(&yaml("", "    ignore: \"*.bak\"\n")),
        ["folders[0].ignore \"*.bak\": expected a list, found a string"]
    );
}

#[test]
fn folders_may_not_overlap() {
    let fx = Fixture::new();
    std::os::unix::fs::symlink(fx.root.join("out"), fx.root.join("link")).unwrap();
    let kickoff = "    kickoff: {checklist_id: T, field_id: F}\n";
    let text = minimal()
        + "  - path: {dir}/in/sub\n"
        + kickoff
        + "  - path: {dir}\n"
        + kickoff
        + "  - path: {dir}/out\n"
        + kickoff
        + "  - path: link\n"
        + kickoff;
    assert_eq!(
        fx.problems(&text),
        [
            "folders[1].path \"{dir}/in/sub\": overlaps folders[0].path \"{dir}/in\"",
            "folders[2].path \"{dir}\": overlaps folders[0].path \"{dir}/in\"",
            "folders[2].path \"{dir}\": overlaps folders[1].path \"{dir}/in/sub\"",
            "folders[3].path \"{dir}/out\": overlaps folders[2].path \"{dir}\"",
            "folders[4].path \"link\": overlaps folders[2].path \"{dir}\"",
            "folders[4].path \"link\": overlaps folders[3].path \"{dir}/out\"",
        ]
    );
}

#[test]
fn two_folders_may_feed_the_same_target() {
    let fx = Fixture::new();
    let text = minimal()
        + "  - path: {dir}/out\n    task: {run_id: RUN, task_id: TASK, capture_id: CAP}\n";
    let config = fx.parse(&text);
    assert_eq!(
        config.folders[0].target.key(),
        config.folders[1].target.key()
    );
}
