use super::*;
use reqwest::Url;
use tempfile::TempDir;

use super::api::{DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, DEFAULT_TOKEN_URL};

/// A temporary config directory with a few folders to point at.
struct Fixture {
    _dir: TempDir,
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        for sub in ["in", "in/sub", "out", "state"] {
            fs::create_dir(root.join(sub)).unwrap();
        }
        fs::write(root.join("file.txt"), "x").unwrap();
        Fixture { _dir: dir, root }
    }

    fn file(&self) -> PathBuf {
        self.root.join("config.yaml")
    }

    /// `{dir}` in the YAML stands for the fixture directory.
    fn parse_env(&self, yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let yaml = yaml.replace("{dir}", &self.root.display().to_string());
        let env = |name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        };
        Config::from_yaml(&yaml, &self.file(), &env)
    }

    fn parse(&self, yaml: &str) -> Config {
        self.parse_env(yaml, &[]).unwrap()
    }

    /// The problems, with the fixture directory written back as `{dir}`.
    fn problems(&self, yaml: &str) -> Vec<String> {
        match self.parse_env(yaml, &[]) {
            Err(ConfigError::Invalid { path, problems }) => {
                assert_eq!(path, self.file());
                let root = self.root.display().to_string();
                problems.iter().map(|p| p.replace(&root, "{dir}")).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }
}

/// A valid config with extra lines in `api` (indented 2) and in the first folder (indented 4).
fn yaml(api: &str, folder: &str) -> String {
    format!(
            "api:\n  org_id: ORG\n{api}folders:\n  - path: {{dir}}/in\n    task: {{run_id: RUN, task_id: TASK, capture_id: CAP}}\n{folder}"
        )
}

fn minimal() -> String {
    yaml("", "")
}

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
        ["config.yaml line 4 column 15: mapping values are not allowed in this context"]
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
fn a_token_key_explains_where_the_token_comes_from_without_echoing_it() {
    let fx = Fixture::new();
    let problems = fx.problems(&(yaml("  token: s3cr3t-value\n", "") + "token: s3cr3t-value\n"));
    let why = "unknown key (the API token is never read from the config file; it comes from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token)";
    assert_eq!(
        problems,
        [format!("api.token: {why}"), format!("token: {why}")]
    );
}

#[test]
fn org_id_is_required_even_without_an_api_section() {
    let fx = Fixture::new();
    let without_api = minimal().replace("api:\n  org_id: ORG\n", "");
    assert_eq!(fx.problems(&without_api), ["api.org_id: required"]);
    let null_org = minimal().replace("org_id: ORG", "org_id:");
    assert_eq!(fx.problems(&null_org), ["api.org_id: required"]);
    let api_string = minimal().replace("api:\n  org_id: ORG\n", "api: ORG\n");
    assert_eq!(
        fx.problems(&api_string),
        ["api \"ORG\": expected a mapping, found a string"]
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
fn concurrency_must_be_an_integer_from_1_to_64() {
    let fx = Fixture::new();
    for (written, problem) in [
        ("0", "api.concurrency 0: must be between 1 and 64"),
        ("65", "api.concurrency 65: must be between 1 and 64"),
        ("-1", "api.concurrency -1: must be between 1 and 64"),
        ("2.5", "api.concurrency 2.5: must be between 1 and 64"),
        (
            "\"4\"",
            "api.concurrency \"4\": expected an integer, found a string",
        ),
    ] {
        let text = yaml(&format!("  concurrency: {written}\n"), "");
        assert_eq!(fx.problems(&text), [problem]);
    }
    assert_eq!(fx.parse(&yaml("  concurrency: 1\n", "")).api.concurrency, 1);
}

#[test]
fn base_url_must_be_https_unless_the_host_is_loopback() {
    let fx = Fixture::new();
    let https =
        "must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)";
    for (url, problem) in [
        (
            "http://example.com/api",
            format!("\"http://example.com/api\": {https}"),
        ),
        (
            "ftp://127.0.0.1/api",
            format!("\"ftp://127.0.0.1/api\": {https}"),
        ),
        (
            "http://127.0.0.1.example.com/",
            format!("\"http://127.0.0.1.example.com/\": {https}"),
        ),
        (
            "go.tallyfy.com/api",
            "\"go.tallyfy.com/api\": not a valid URL: relative URL without a base".to_string(),
        ),
    ] {
        let text = yaml(&format!("  base_url: {url}\n"), "");
        assert_eq!(fx.problems(&text), [format!("api.base_url {problem}")]);
    }
    for (url, parsed) in [
        ("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api"),
        ("http://127.1.2.3/", "http://127.1.2.3/"),
        ("http://LocalHost:9000/api", "http://localhost:9000/api"),
        ("http://[::1]:9000/api//", "http://[::1]:9000/api/"),
        ("https://go.tallyfy.com/api", "https://go.tallyfy.com/api"),
        ("https://127.0.0.1:8443/api", "https://127.0.0.1:8443/api"),
        ("https://localhost:8443/api", "https://localhost:8443/api"),
    ] {
        let config = fx.parse(&yaml(&format!("  base_url: \"{url}\"\n"), ""));
        assert_eq!(config.api.base_url.as_str(), parsed);
    }
}

#[test]
fn ca_file_takes_a_pem_bundle_and_names_the_key_when_it_cannot() {
    let fx = Fixture::new();
    let authority = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    };
    let bundle = authority("Company Root CA") + &authority("Company Proxy CA");
    fs::write(fx.root.join("company-ca.pem"), bundle).unwrap();
    let config = fx.parse(&yaml(
        "  ca_file: company-ca.pem
",
        "",
    ));
    let ca_file = config.api.ca_file.expect("ca_file is set");
    assert_eq!(ca_file.path, fx.root.join("company-ca.pem"));
    assert_eq!(ca_file.certificates.len(), 2);

    fs::write(
        fx.root.join("key.pem"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    fs::write(fx.root.join("ca.der"), [0x30, 0x82, 0x01, 0x0a]).unwrap();
    fs::write(
        fx.root.join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let no_certificate = "holds no certificate (expected PEM blocks \"-----BEGIN CERTIFICATE-----\"; convert a binary DER file with: openssl x509 -inform der -in FILE -out FILE.pem)";
    for (file, problem) in [
        (
            "missing.pem",
            "cannot read: No such file or directory (os error 2)",
        ),
        ("in", "cannot read: Is a directory (os error 21)"),
        ("key.pem", no_certificate),
        ("ca.der", no_certificate),
    ] {
        assert_eq!(
            fx.problems(&yaml(&format!("  ca_file: {file}\n"), "")),
            [format!("api.ca_file \"{file}\": {problem}")]
        );
    }
    let broken = fx.problems(&yaml("  ca_file: broken.pem\n", ""));
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0].starts_with(
            "api.ca_file \"broken.pem\": holds a certificate that cannot be used as an authority: "
        ),
        "{broken:?}"
    );
    assert_eq!(
        fx.problems(&yaml("  ca_file: [a.pem]\n", "")),
        ["api.ca_file: expected a path string, found a list"]
    );
}

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

fn api(token_file: Option<PathBuf>) -> ApiConfig {
    with_auth(Auth::Token { token_file })
}

fn client_api(client_secret_file: Option<PathBuf>) -> ApiConfig {
    with_auth(Auth::ClientCredentials {
        token_url: Url::parse(DEFAULT_TOKEN_URL).unwrap(),
        client_id: "CLIENT".into(),
        client_secret_file,
    })
}

fn with_auth(auth: Auth) -> ApiConfig {
    ApiConfig {
        base_url: Url::parse(DEFAULT_BASE_URL).unwrap(),
        org_id: "ORG".into(),
        auth,
        timeout: DEFAULT_TIMEOUT,
        concurrency: DEFAULT_CONCURRENCY,
        rate_limit: None,
        ca_file: None,
        proxy: None,
    }
}

/// The token, or the client secret, that `Credentials::resolve` finds.
fn resolve(api: &ApiConfig, vars: &[(&str, &Path)]) -> Result<Secret, ConfigError> {
    let env = |name: &str| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_os_str().to_owned())
    };
    Ok(match Credentials::resolve(api, &env)? {
        Credentials::Token(token) => token,
        Credentials::ClientCredentials { client_secret, .. } => client_secret,
    })
}

#[test]
fn the_token_comes_from_the_environment_then_the_file_then_the_credential() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, "from-file\n").unwrap();
    fs::write(fx.root.join("tallyfy-token"), "  from-credential\r\n").unwrap();
    let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
    let var = ("TALLYFY_ACCESS_TOKEN", Path::new(" from-env\n"));
    let with_file = api(Some(file));

    let token = resolve(&with_file, &[var, creds]).unwrap();
    assert_eq!(token.expose(), "from-env");
    let token = resolve(&with_file, &[creds]).unwrap();
    assert_eq!(token.expose(), "from-file");
    let token = resolve(&api(None), &[creds]).unwrap();
    assert_eq!(token.expose(), "from-credential");
}

#[test]
fn an_empty_token_is_rejected_naming_its_source() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, " \n").unwrap();
    let error = resolve(&api(None), &[("TALLYFY_ACCESS_TOKEN", Path::new(""))]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "API token from environment variable TALLYFY_ACCESS_TOKEN: empty"
    );
    let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "API token from file {} (api.token_file): empty",
            file.display()
        )
    );
}

#[test]
fn a_missing_token_file_is_named() {
    let fx = Fixture::new();
    let file = fx.root.join("nope");
    let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            format!(
                "API token from file {} (api.token_file): cannot read it: No such file or directory (os error 2)",
                file.display()
            )
        );
    let error = resolve(
        &api(None),
        &[("CREDENTIALS_DIRECTORY", &fx.root.join("creds"))],
    )
    .unwrap_err();
    assert!(error.to_string().starts_with(&format!(
        "API token from systemd credential {}: cannot read it: ",
        fx.root.join("creds/tallyfy-token").display()
    )));
    let error = resolve(&api(None), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            "API token from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token: none is set"
        );
}

#[test]
fn token_errors_and_debug_never_show_the_token() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, "Bearer s3cr3t\n").unwrap();
    let error = resolve(&api(Some(file)), &[]).unwrap_err();
    assert!(error.to_string().ends_with(
        ": contains whitespace or control characters (it must hold the API token alone)"
    ));
    assert!(!format!("{error} {error:?}").contains("s3cr3t"));

    let var = ("TALLYFY_ACCESS_TOKEN", Path::new("s3cr3t"));
    let token = resolve(&api(None), &[var]).unwrap();
    assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
}

#[test]
fn api_proxy_is_checked_and_its_password_never_shown() {
    let fx = Fixture::new();
    let config = fx.parse(&yaml(
        "  proxy: http://operator:s3cr3t@proxy.example.com:3128\n",
        "",
    ));
    let proxy = config.api.proxy.as_ref().expect("api.proxy");
    assert_eq!(proxy.0.password(), Some("s3cr3t"));
    assert_eq!(proxy.shown(), "http://proxy.example.com:3128");
    assert!(!format!("{config:?}").contains("s3cr3t"));
    let hint = "expected a proxy URL such as http://proxy.example.com:3128";
    for bad in ["ftp://proxy.example.com", "proxy.example.com:3128"] {
        let problems = fx.problems(&yaml(&format!("  proxy: {bad}\n"), ""));
        assert!(
            problems
                .iter()
                .any(|problem| problem.starts_with(&format!("api.proxy \"{bad}\": {hint}"))),
            "{problems:?}"
        );
    }
}

#[test]
fn a_config_debug_holds_no_token() {
    let fx = Fixture::new();
    fs::write(fx.root.join("token"), "s3cr3t").unwrap();
    let config = fx.parse(&yaml("  token_file: token\n", ""));
    let var = ("TALLYFY_ACCESS_TOKEN", Path::new("env-s3cr3t"));
    let token = resolve(&config.api, &[var]).unwrap();
    assert_eq!(token.expose(), "env-s3cr3t");
    let debug = format!("{config:?}");
    assert!(debug.contains("token_file"));
    assert!(!debug.contains("s3cr3t"));
}

#[test]
fn client_credentials_parse_with_the_default_token_url() {
    let fx = Fixture::new();
    let config = fx.parse(&yaml("  auth: client_credentials\n  client_id: 7\n", ""));
    assert_eq!(
        config.api.auth,
        Auth::ClientCredentials {
            token_url: Url::parse("https://go.tallyfy.com/oauth/token").unwrap(),
            client_id: "7".into(),
            client_secret_file: None,
        }
    );
    let config = fx.parse(&yaml(
            "  auth: client_credentials\n  token_url: http://127.0.0.1:9000/oauth/token\n  client_id: a-b\n  client_secret_file: secret\n",
            "",
        ));
    assert_eq!(
        config.api.auth,
        Auth::ClientCredentials {
            token_url: Url::parse("http://127.0.0.1:9000/oauth/token").unwrap(),
            client_id: "a-b".into(),
            client_secret_file: Some(fx.root.join("secret")),
        }
    );
    let config = fx.parse(&yaml("  auth: token\n", ""));
    assert_eq!(config.api.auth, Auth::Token { token_file: None });
}

#[test]
fn client_credentials_need_a_client_id_and_an_https_token_url() {
    let fx = Fixture::new();
    let text = yaml(
        "  auth: client_credentials\n  token_url: http://example.com/oauth/token\n",
        "",
    );
    assert_eq!(
            fx.problems(&text),
            [
                "api.token_url \"http://example.com/oauth/token\": must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)",
                "api.client_id: required with api.auth: client_credentials",
            ]
        );
    let text = yaml("  auth: client_credentials\n  client_id: \"a b\"\n", "");
    assert_eq!(
        fx.problems(&text),
        ["api.client_id \"a b\": must not contain whitespace or control characters"]
    );
}

#[test]
fn keys_of_the_auth_not_chosen_are_errors_naming_the_key() {
    let fx = Fixture::new();
    let client_keys = "  token_url: https://example.com/oauth/token\n  client_id: C\n  client_secret_file: secret\n";
    assert_eq!(
        fx.problems(&yaml(client_keys, "")),
        [
            "api.token_url: only applies with api.auth: client_credentials",
            "api.client_id: only applies with api.auth: client_credentials",
            "api.client_secret_file: only applies with api.auth: client_credentials",
        ]
    );
    let text = yaml(
        "  auth: client_credentials\n  client_id: C\n  token_file: token\n",
        "",
    );
    assert_eq!(
            fx.problems(&text),
            ["api.token_file: only applies with api.auth: token (the client secret comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
}

#[test]
fn auth_must_be_token_or_client_credentials() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&yaml("  auth: oauth\n  client_id: C\n", "")),
        ["api.auth \"oauth\": expected token or client_credentials"]
    );
    assert_eq!(
        fx.problems(&yaml("  auth: [token]\n", "")),
        ["api.auth: expected token or client_credentials, found a list"]
    );
}

#[test]
fn the_client_secret_comes_from_the_environment_then_the_file_then_the_credential() {
    let fx = Fixture::new();
    let file = fx.root.join("secret");
    fs::write(&file, "from-file\n").unwrap();
    fs::write(fx.root.join("tallyfy-client-secret"), "from-credential\n").unwrap();
    let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
    let var = ("TALLYFY_CLIENT_SECRET", Path::new("from-env"));
    let token = ("TALLYFY_ACCESS_TOKEN", Path::new("a-token"));
    let with_file = client_api(Some(file));

    let secret = resolve(&with_file, &[token, var, creds]).unwrap();
    assert_eq!(secret.expose(), "from-env");
    let secret = resolve(&with_file, &[token, creds]).unwrap();
    assert_eq!(secret.expose(), "from-file");
    let secret = resolve(&client_api(None), &[token, creds]).unwrap();
    assert_eq!(secret.expose(), "from-credential");
    // The personal access token is no stand-in for the secret.
    let error = resolve(&client_api(None), &[token]).unwrap_err();
    assert_eq!(
            error.to_string(),
            "client secret from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret: none is set"
        );
}

#[test]
fn client_secret_errors_and_debug_never_show_the_secret() {
    let fx = Fixture::new();
    let file = fx.root.join("secret");
    fs::write(&file, "s3cr3t and more\n").unwrap();
    let error = resolve(&client_api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            format!(
                "client secret from file {} (api.client_secret_file): contains whitespace or control characters (it must hold the client secret alone)",
                file.display()
            )
        );
    assert!(!format!("{error:?}").contains("s3cr3t"));

    let env = |name: &str| (name == "TALLYFY_CLIENT_SECRET").then(|| OsString::from("s3cr3t"));
    let credentials = Credentials::resolve(&client_api(None), &env).unwrap();
    let debug = format!("{credentials:?}");
    assert!(debug.contains("CLIENT") && debug.contains("<redacted>"));
    assert!(!debug.contains("s3cr3t"));

    let problems = fx.problems(&yaml(
        "  auth: client_credentials\n  client_id: C\n  client_secret: s3cr3t\n",
        "",
    ));
    assert_eq!(
            problems,
            ["api.client_secret: unknown key (the client secret is never read from the config file; it comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
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
