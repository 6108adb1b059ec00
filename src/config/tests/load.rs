//! Loading a whole config: defaults, the top-level keys, the one list of problems a load reports
//! and odd YAML.

use super::*;

#[test]
fn a_minimal_config_parses_with_defaults_applied() {
    let fx = Fixture::new();
    let config = fx.parse(&minimal());
    assert_eq!(config.file, fx.file());
    assert_eq!(config.api.base_url.as_str(), "https://go.tallyfy.com/api");
    assert_eq!(config.api.org_id, "ORG");
    assert_eq!(config.api.auth, Auth::Token { token_file: None });
    assert_eq!(config.api.timeout, Duration::from_secs(60));
    assert_eq!(config.api.concurrency, 4);
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/tallyfy-sync"));
    assert_eq!(config.settle, Duration::from_secs(2));
    assert_eq!(config.rescan_interval, Duration::from_secs(600));
    assert_eq!(config.attach_delay, Duration::from_secs(1));
    assert_eq!(config.failed_retry_interval, Duration::from_secs(3600));
    assert_eq!(config.metrics_listen, None);
    assert_eq!(config.api.rate_limit, None);
    assert_eq!(config.folders.len(), 1);
    let folder = &config.folders[0];
    assert_eq!(folder.path, fx.root.join("in"));
    assert_eq!(
        folder.target,
        Target::Task {
            run_id: "RUN".into(),
            task_id: "TASK".into(),
            capture_id: "CAP".into(),
            step_id: None,
            checklist_id: None,
        }
    );
    assert!(!folder.recursive);
    assert!(folder.delete_remote);
    assert!(folder.ignore.is_empty());
    assert!(!folder.ignore_set.is_match("anything.pdf"));
    assert_eq!(folder.watch, WatchMode::Auto);
    assert_eq!(folder.max_delete_percent, 50);
}

#[test]
fn a_full_config_parses_every_key() {
    let fx = Fixture::new();
    let config = fx.parse(
        "\
api:
  base_url: https://example.com/api/
  org_id: ORG-1_a
  token_file: secrets/token
  timeout: 500ms
  concurrency: 64
  rate_limit: 100/min
state_dir: state
settle: 0s
rescan_interval: 1h
attach_delay: 250ms
failed_retry_interval: 10m
max_delete: 20%
metrics:
  listen: 0.0.0.0:9100
folders:
  - path: {dir}/in
    task:
      run_id: RUN
      task_id: TASK
      capture_id: CAP
      step_id: STEP
      checklist_id: TPL
    recursive: true
    delete_remote: false
    max_delete: 100%
    watch: inotify
    ignore: [\"*.bak\", \"~*\"]
  - path: out
    poll: 5s
    kickoff:
      checklist_id: TPL
      field_id: FIELD
",
    );
    assert_eq!(config.api.base_url.as_str(), "https://example.com/api");
    assert_eq!(config.api.org_id, "ORG-1_a");
    assert_eq!(
        config.api.auth,
        Auth::Token {
            token_file: Some(fx.root.join("secrets/token"))
        }
    );
    assert_eq!(config.api.timeout, Duration::from_millis(500));
    assert_eq!(config.api.concurrency, 64);
    assert_eq!(config.state_dir, fx.root.join("state"));
    assert_eq!(config.settle, Duration::ZERO);
    assert_eq!(config.rescan_interval, Duration::from_secs(3600));
    assert_eq!(config.attach_delay, Duration::from_millis(250));
    assert_eq!(config.failed_retry_interval, Duration::from_secs(600));
    assert_eq!(config.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
    assert_eq!(
        config.api.rate_limit,
        Some(RateLimit {
            requests: 100,
            per: Duration::from_secs(60)
        })
    );
    let [invoices, contracts] = &config.folders[..] else {
        panic!("expected two folders: {:?}", config.folders);
    };
    assert_eq!(
        invoices.target,
        Target::Task {
            run_id: "RUN".into(),
            task_id: "TASK".into(),
            capture_id: "CAP".into(),
            step_id: Some("STEP".into()),
            checklist_id: Some("TPL".into()),
        }
    );
    assert!(invoices.recursive);
    assert!(!invoices.delete_remote);
    assert_eq!(invoices.ignore, ["*.bak", "~*"]);
    assert!(invoices.ignore_set.is_match("report.bak"));
    assert!(invoices.ignore_set.is_match("~lock.docx"));
    assert!(!invoices.ignore_set.is_match("report.pdf"));
    assert_eq!(invoices.watch, WatchMode::Inotify);
    assert_eq!(invoices.max_delete_percent, 100);
    assert_eq!(contracts.path, fx.root.join("out"));
    assert_eq!(
        contracts.watch,
        WatchMode::Poll {
            interval: Duration::from_secs(5)
        }
    );
    assert_eq!(contracts.max_delete_percent, 20);
    assert_eq!(
        contracts.target,
        Target::Kickoff {
            checklist_id: "TPL".into(),
            field_id: "FIELD".into(),
        }
    );
}

#[test]
fn watch_mode_rate_limit_and_max_delete_name_the_bad_value() {
    let fx = Fixture::new();
    let problems = fx.problems(
        &(yaml(
            "  rate_limit: 100/fortnight\n",
            "    watch: inotify\n    poll: 10s\n    max_delete: 150%\n",
        ) + "rescan_interval: 0s\n"),
    );
    assert_eq!(
            problems,
            [
                "api.rate_limit \"100/fortnight\": expected requests per period, e.g. 100/min, 10/s or 1000/hour",
                "rescan_interval \"0s\": must be greater than 0",
                "folders[0].max_delete \"150%\": expected a percentage between 0% and 100%, e.g. 50%",
                "folders[0]: watch: inotify cannot be combined with poll",
            ]
        );
    let config = fx.parse(&(yaml("", "    watch: poll\n") + "metrics: {listen: 9464}\n"));
    assert_eq!(
        config.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap()),
        "a bare port means loopback"
    );
    assert_eq!(
        config.folders[0].watch,
        WatchMode::Poll {
            interval: Duration::from_secs(30)
        }
    );
}

#[test]
fn reports_every_problem_not_only_the_first() {
    let fx = Fixture::new();
    let problems = fx.problems(
        "\
api:
  timeout: abc
  concurrency: 0
settle: [1s]
folders:
  - path: {dir}/missing
    task: {run_id: RUN, task_id: TASK}
  - path: {dir}/file.txt
",
    );
    assert_eq!(
        problems,
        [
            "api.org_id: required",
            "api.timeout \"abc\": not a duration (use e.g. 500ms, 2s, 5m)",
            "api.concurrency 0: must be between 1 and 64",
            "settle: expected a duration string, found a list",
            "folders[0].task.capture_id: required",
            "folders[1].path \"{dir}/file.txt\": not a directory",
            "folders[1]: needs exactly one of task, kickoff, launch or route (found neither)",
        ]
    );
}

#[test]
fn the_error_message_lists_each_problem_on_its_own_line() {
    let fx = Fixture::new();
    let error = fx.parse_env("settle: 1s\n", &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "config file {} has 2 problems:\n  - api.org_id: required\n  - folders: required",
            fx.file().display()
        )
    );
    let error = fx.parse_env(&(minimal() + "settle: x\n"), &[]).unwrap_err();
    assert!(error
        .to_string()
        .contains(" has 1 problem:\n  - settle \"x\": "));
}

#[test]
fn a_syntax_error_names_line_and_column() {
    let fx = Fixture::new();
    let problems = fx.problems("api:\n  org_id: ORG\n  timeout: 1s\n   concurrency: 4\n");
    assert_eq!(
        problems,
        ["config.yaml line 4 column 15: mapping values are not allowed in this context (check the indentation of line 4 and the lines above it: YAML uses spaces, not tabs, and the keys of one mapping line up)"]
    );
}

#[test]
fn a_tab_in_the_indentation_is_named_with_its_line() {
    let fx = Fixture::new();
    let problems = fx.problems("api:\n  org_id: ORG\n\ttimeout: 1s\n");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("config.yaml line 3 column 1: ")
            && problems[0].ends_with("(YAML uses spaces, not tabs: line 3 is indented with a tab)"),
        "{problems:?}"
    );
}

#[test]
fn an_empty_document_is_one_problem() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems("# nothing yet\n"),
        ["config.yaml: is empty (it needs at least api.org_id and folders)"]
    );
}

#[test]
fn a_document_that_is_not_a_mapping_is_one_problem() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems("- api\n- folders\n"),
        ["config.yaml: expected a mapping of settings, found a list"]
    );
}

#[test]
fn unknown_keys_are_reported_with_the_keys_expected_there() {
    let fx = Fixture::new();
    let problems = fx.problems(
        &(yaml("  tokn: x\n", "    recursve: true\n")
            + "  - path: {dir}/out\n    kickoff: {checklist_id: T, field_id: F, extra: 1}\n"
            + "foldrs: []\n"),
    );
    assert_eq!(
            problems,
            [
                "api.tokn: unknown key (expected one of base_url, org_id, auth, token_file, token_url, client_id, client_secret_file, timeout, concurrency, rate_limit, ca_file, proxy)",
                "folders[0].recursve: unknown key (expected one of path, task, kickoff, launch, route, dedupe, recursive, delete_remote, remote_removed, max_delete, watch, poll, ignore)",
                "folders[1].kickoff.extra: unknown key (expected one of checklist_id, field_id)",
                "foldrs: unknown key (expected one of api, state_dir, settle, rescan_interval, attach_delay, failed_retry_interval, max_delete, metrics, log, folders)",
            ]
        );
}

#[test]
fn ids_must_be_url_safe_non_empty_strings() {
    let fx = Fixture::new();
    let text = yaml("", "")
        .replace("org_id: ORG", "org_id: \"\"")
        .replace("run_id: RUN", "run_id: a/b")
        .replace("task_id: TASK", "task_id: 12345")
        .replace("capture_id: CAP", "capture_id: [x], step_id: \"é\"");
    assert_eq!(
            fx.problems(&text),
            [
                "api.org_id \"\": must not be empty",
                "folders[0].task.run_id \"a/b\": may only contain ASCII letters, digits, - and _",
                "folders[0].task.task_id 12345: expected a string, found a number (put the id in quotes)",
                "folders[0].task.capture_id: expected a string, found a list",
                "folders[0].task.step_id \"é\": may only contain ASCII letters, digits, - and _",
            ]
        );
}

#[test]
fn durations_must_be_humantime_strings_and_timeout_must_be_positive() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&(yaml("  timeout: 0s\n", "") + "settle: 5\n")),
        [
            "api.timeout \"0s\": must be greater than 0",
            "settle 5: not a duration (use e.g. 500ms, 2s, 5m)",
        ]
    );
    assert_eq!(
        fx.problems(&yaml("  timeout: true\n", "")),
        ["api.timeout true: expected a duration string, found a boolean"]
    );
    let config = fx.parse(&(yaml("  timeout: 5m\n", "") + "settle: 0s\n"));
    assert_eq!(config.api.timeout, Duration::from_secs(300));
    assert_eq!(config.settle, Duration::ZERO);
}

#[test]
fn relative_paths_are_resolved_against_the_config_directory() {
    let fx = Fixture::new();
    let text = yaml("  token_file: ../token\n", "").replace("{dir}/in", "in/./sub/..")
        + "state_dir: state\n";
    let config = fx.parse(&text);
    assert_eq!(config.folders[0].path, fx.root.join("in"));
    assert_eq!(config.state_dir, fx.root.join("state"));
    assert_eq!(
        config.api.auth,
        Auth::Token {
            token_file: Some(fx.root.join("../token"))
        }
    );
}

#[test]
fn state_dir_defaults_to_the_first_state_directory_from_systemd() {
    let fx = Fixture::new();
    let env = [("STATE_DIRECTORY", "/var/lib/one:/var/lib/two")];
    let config = fx.parse_env(&minimal(), &env).unwrap();
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/one"));
    let config = fx
        .parse_env(&minimal(), &[("STATE_DIRECTORY", "")])
        .unwrap();
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/tallyfy-sync"));
    let config = fx
        .parse_env(&(minimal() + "state_dir: /srv/state\n"), &env)
        .unwrap();
    assert_eq!(config.state_dir, PathBuf::from("/srv/state"));
}

#[test]
fn load_reads_the_file_and_names_it_when_it_cannot() {
    let fx = Fixture::new();
    let text = minimal().replace("{dir}", &fx.root.display().to_string());
    fs::write(fx.file(), text).unwrap();
    let config = Config::load(&fx.file()).unwrap();
    assert_eq!(config.folders[0].path, fx.root.join("in"));
    let missing = fx.root.join("missing.yaml");
    let error = Config::load(&missing).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error
        .to_string()
        .starts_with(&format!("cannot read config file {}: ", missing.display())));
}

#[test]
fn odd_yaml_never_panics() {
    let fx = Fixture::new();
    for text in [
        "",
        "~",
        "42",
        "? [a]\n: b\n",
        "api: !tag {org_id: ORG}\nfolders: [~, [], {}]\n",
        "api:\n  org_id: &a ORG\nfolders: *a\n",
        "a: 1\na: 2\n",
        "---\na: 1\n---\nb: 2\n",
        "api: {org_id: \"\\u0000\"}\nfolders: [{path: \"\\u0000\"}]\n",
        "settle: 99999999999999999999999999y\n",
    ] {
        assert!(fx.parse_env(text, &[]).is_err(), "{text:?}");
    }
}

#[test]
fn log_format_defaults_to_auto_and_takes_each_named_format() {
    let fx = Fixture::new();
    assert_eq!(fx.parse(&minimal()).log.format, LogFormat::Auto);
    for (name, format) in [
        ("auto", LogFormat::Auto),
        ("text", LogFormat::Text),
        ("json", LogFormat::Json),
        ("journald", LogFormat::Journald),
    ] {
        let config = fx.parse(&(minimal() + &format!("log:\n  format: {name}\n")));
        assert_eq!(config.log.format, format, "{name}");
    }
    assert_eq!(
        fx.parse(&(minimal() + "log:\n")).log.format,
        LogFormat::Auto
    );
}

#[test]
fn a_bad_log_format_is_named_with_its_key_path() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&(minimal() + "log:\n  format: xml\n  level: debug\n")),
        [
            "log.format \"xml\": expected auto, text, json or journald",
            "log.level: unknown key (expected one of format)",
        ]
    );
    assert_eq!(
        fx.problems(&(minimal() + "log:\n  format: [json]\n")),
        ["log.format: expected auto, text, json or journald, found a list"]
    );
    assert_eq!(
        fx.problems(&(minimal() + "log: json\n")),
        ["log \"json\": expected a mapping, found a string"]
    );
}
