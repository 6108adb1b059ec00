//! The target kinds a folder feeds: task, one-off task, kick-off, launch and route.

use super::*;

#[test]
fn a_folder_needs_exactly_one_of_task_or_kickoff() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&yaml("", "    kickoff: {checklist_id: T, field_id: F}\n")),
        ["folders[0]: needs exactly one of task, kickoff, launch or route (found both)"]
    );
    assert_eq!(
        fx.problems("api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n"),
        ["folders[0]: needs exactly one of task, kickoff, launch or route (found neither)"]
    );
    assert_eq!(
        fx.problems("api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    kickoff: TPL\n"),
        ["folders[0].kickoff \"TPL\": expected a mapping, found a string"]
    );
}

#[test]
fn a_launch_folder_parses_with_its_defaults_and_every_key() {
    let fx = Fixture::new();
    let config = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    launch: {checklist_id: T, field_id: F}\n  - path: {dir}/out\n    dedupe: none\n    launch:\n      checklist_id: T\n      field_id: F\n      name: \"Invoice {stem} {{x}}\"\n      fields: {V: \"{parent}\", N: 42}\n      after: move\n      move_to: done\n",
        );
    let [plain, full] = &config.folders[..] else {
        panic!("{:?}", config.folders);
    };
    let Target::Launch(plain) = &plain.target else {
        panic!("{plain:?}")
    };
    assert_eq!(plain.name.to_string(), "{stem}");
    assert!(plain.fields.is_empty());
    assert_eq!(plain.after, After::Keep);
    assert_eq!(plain.dedupe, Dedupe::Content);
    let Target::Launch(full) = &full.target else {
        panic!("{full:?}")
    };
    assert_eq!(full.dedupe, Dedupe::None);
    assert_eq!(
        full.after,
        After::Move {
            to: fx.root.canonicalize().unwrap().join("done")
        }
    );
    let rendered = full.name.render(|placeholder| match placeholder {
        Placeholder::Stem => "2041".into(),
        _ => "?".into(),
    });
    assert_eq!(rendered, "Invoice 2041 {x}");
    assert_eq!(full.name.literal_len(), "Invoice  {x}".len());
    let fields: Vec<(String, String)> = full
        .fields
        .iter()
        .map(|(id, value)| (id.clone(), value.to_string()))
        .collect();
    assert_eq!(
        fields,
        [("V".into(), "{parent}".into()), ("N".into(), "42".into())]
    );
}

#[test]
fn a_route_folder_parses_with_its_defaults_and_always_watches_subfolders() {
    let fx = Fixture::new();
    let config = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, capture_id: C}\n  - path: {dir}/out\n    route: {checklist_id: T, capture_id: C, by: id, create_folders: true}\n",
        );
    assert_eq!(
        config.folders[0].target,
        Target::Route(Route {
            checklist_id: "T".into(),
            capture_id: "C".into(),
            by: RouteBy::Name,
            create_folders: false,
            refresh_interval: Duration::from_secs(180),
        })
    );
    assert!(config.folders[0].recursive);
    let route = |config: &Config, index: usize| match &config.folders[index].target {
        Target::Route(route) => route.clone(),
        other => panic!("not a route: {other:?}"),
    };
    let by_id = route(&config, 1);
    assert_eq!((by_id.by, by_id.create_folders), (RouteBy::Id, true));
    // Folders people wait for are looked for more often.
    assert_eq!(by_id.refresh_interval, Duration::from_secs(30));
    let set = fx.parse(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, capture_id: C, create_folders: true, refresh_interval: 10m}\n",
        );
    assert_eq!(route(&set, 0).refresh_interval, Duration::from_secs(600));
}

#[test]
fn route_problems_name_their_key() {
    let fx = Fixture::new();
    assert_eq!(
            fx.problems(
                "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    route: {checklist_id: T, by: title, create_folders: maybe, refresh_interval: 1s}\n  - path: {dir}/out\n    route: {checklist_id: T, capture_id: C}\n    task: {run_id: R, task_id: K, capture_id: C}\n  - path: {dir}/state\n    recursive: false\n    route: {checklist_id: T, capture_id: C}\n",
            ),
            [
                "folders[0].route.capture_id: required",
                "folders[0].route.by \"title\": expected name or id",
                "folders[0].route.create_folders \"maybe\": expected true or false, found a string",
                "folders[0].route.refresh_interval \"1s\": must be at least 5s: every refresh lists the template's processes again",
                "folders[1]: needs exactly one of task, kickoff, launch or route (found both)",
                "folders[2].recursive: a route folder always watches its subfolders (each stands for a process); remove recursive",
            ]
        );
}

#[test]
fn launch_problems_name_their_key() {
    let fx = Fixture::new();
    let problems = fx.problems(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    launch:\n      checklist_id: T\n      field_id: F\n      name: \"{nope}\"\n      fields: {F: x, V: \"}\"}\n      after: later\n  - path: {dir}/out\n    dedupe: sometimes\n    kickoff: {checklist_id: T, field_id: F}\n",
        );
    assert_eq!(
            problems,
            [
                "folders[0].launch.name \"{nope}\": unknown placeholder {nope} (expected one of {filename}, {stem}, {ext}, {parent}, {relpath}, {date}, {mtime})",
                "folders[0].launch.fields.V \"}\": a } without its { (write }} for a brace)",
                "folders[0].launch.after \"later\": expected keep, delete or move",
                "folders[0].launch.fields.F: is the file field (field_id) itself; it gets the file",
                "folders[1].dedupe \"sometimes\": expected content or none",
            ]
        );
    let problems = fx.problems(
            "api: {org_id: ORG}\nfolders:\n  - path: {dir}/in\n    dedupe: none\n    kickoff: {checklist_id: T, field_id: F}\n  - path: {dir}/out\n    launch: {checklist_id: T, field_id: F, after: move, move_to: out}\n",
        );
    assert_eq!(
        problems,
        [
            "folders[0].dedupe: only applies to launch folders",
            "folders[1].launch.move_to \"{dir}/out\": is the watched folder itself",
        ]
    );
}

#[test]
fn task_and_kickoff_need_their_ids_and_no_other_keys() {
    let fx = Fixture::new();
    let text = "api: {org_id: ORG}\nfolders:\n".to_string()
        + "  - path: {dir}/in\n    task: {run_id: R, step: S}\n"
        + "  - path: {dir}/out\n    kickoff: {}\n";
    assert_eq!(
            fx.problems(&text),
            [
                "folders[0].task.task_id: required",
                "folders[0].task.capture_id: required",
                "folders[0].task.step: unknown key (expected one of run_id, task_id, capture_id, step_id, checklist_id, one_off)",
                "folders[1].kickoff.checklist_id: required",
                "folders[1].kickoff.field_id: required",
            ]
        );
}

#[test]
fn targets_have_a_stable_key_and_a_readable_name() {
    let task = Target::Task {
        run_id: "RUN".into(),
        task_id: "TASK".into(),
        capture_id: "CAP".into(),
        step_id: Some("STEP".into()),
        checklist_id: None,
    };
    let kickoff = Target::Kickoff {
        checklist_id: "TPL".into(),
        field_id: "FIELD".into(),
    };
    assert_eq!(task.key(), "task:RUN/TASK/CAP");
    assert_eq!(task.to_string(), "task TASK in run RUN, field CAP");
    assert_eq!(kickoff.key(), "kickoff:TPL/FIELD");
    assert_eq!(kickoff.to_string(), "kick-off field FIELD of template TPL");
    let one_off = Target::OneOff {
        task_id: "TASK".into(),
        capture_id: "CAP".into(),
    };
    assert_eq!(one_off.key(), "oneoff:TASK/CAP");
    assert_eq!(one_off.to_string(), "one-off task TASK, field CAP");
    assert_eq!(one_off.run_id(), None);
    assert_eq!(task.run_id(), Some("RUN"));
}

#[test]
fn a_task_without_run_id_is_a_one_off_task() {
    let fx = Fixture::new();
    let one_off = Target::OneOff {
        task_id: "TASK".into(),
        capture_id: "CAP".into(),
    };
    let config = fx.parse(&minimal().replace("run_id: RUN, ", ""));
    assert_eq!(config.folders[0].target, one_off);
    let config = fx.parse(&minimal().replace("run_id: RUN", "one_off: true"));
    assert_eq!(
        config.folders[0].target, one_off,
        "one_off: true says the same"
    );
    let config = fx.parse(&minimal().replace("CAP}", "CAP, one_off: false}"));
    assert!(matches!(config.folders[0].target, Target::Task { .. }));
}

#[test]
fn a_one_off_task_with_a_process_step_or_template_is_refused_naming_the_key() {
    let fx = Fixture::new();
    assert_eq!(
            fx.problems(&minimal().replace("CAP}", "CAP, one_off: true}")),
            ["folders[0].task.one_off: a one-off task belongs to no process, yet run_id is set; remove one_off for a task in a process, or run_id for a one-off task"]
        );
    assert_eq!(
        fx.problems(&minimal().replace("run_id: RUN", "one_off: false")),
        ["folders[0].task.run_id: required (one_off is false: the task belongs to a process)"]
    );
    assert_eq!(
            fx.problems(&minimal().replace("run_id: RUN", "step_id: S, checklist_id: T")),
            [
                "folders[0].task.step_id: a one-off task has no step; remove it (or set run_id for a task in a process)",
                "folders[0].task.checklist_id: a one-off task has no template; remove it (or set run_id for a task in a process)",
            ]
        );
    assert_eq!(
        fx.problems(&minimal().replace("run_id: RUN", "one_off: yes")),
        ["folders[0].task.one_off \"yes\": expected true or false, found a string"]
    );
}
