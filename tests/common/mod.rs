//! Shared helpers for the integration tests: a fake Tallyfy API seeded with one task (a file
//! field and a text field) and one template (a file kick-off field and a text one), two watched
//! folders, and the real `tallyfy-sync` binary run against them.
#![allow(dead_code)] // each test binary uses its own subset

pub mod tls;

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tallyfy_sync::fake::{FakeChecklist, FakeField, FakeTallyfy, FakeTask, RequestRecord, ONE_OFF};

pub const ORG: &str = "org1";
pub const TOKEN: &str = "secret-token-123";
pub const RUN: &str = "run1";
pub const TASK: &str = "task1";
pub const STEP: &str = "step1";
pub const TEMPLATE: &str = "tpl1";
pub const CAPTURE: &str = "cap1";
pub const TEXT_CAPTURE: &str = "cap2";
pub const KICKOFF_TEMPLATE: &str = "tpl2";
pub const KICKOFF_FIELD: &str = "ko1";
pub const KICKOFF_TEXT: &str = "ko2";
pub const KICKOFF_TITLE: &str = "Contract intake";
/// A one-off task (in no process) with a file field, for `Env::one_off`.
pub const ONE_OFF_TASK: &str = "oneoff1";
pub const ONE_OFF_TITLE: &str = "Sign the NDA";
pub const ONE_OFF_CAPTURE: &str = "nda1";
pub const ONE_OFF_LABEL: &str = "Signed NDA";
/// Long enough that the daemon sees a quiet file, short enough for fast tests.
pub const SETTLE: &str = "300ms";
pub const CLIENT_ID: &str = "client-7";
pub const CLIENT_SECRET: &str = "client-secret-456";
pub const WAIT: Duration = Duration::from_secs(20);
/// The unit search path of the commands the tests run: a tallyfy-sync unit installed on the
/// machine running the tests must not lend them its credential.
pub const NO_UNITS: &str = "/nonexistent/systemd/units";

pub fn field(id: &str, label: &str, field_type: &str, value: Value) -> FakeField {
    FakeField {
        id: id.into(),
        label: label.into(),
        field_type: field_type.into(),
        value,
    }
}

pub struct Env {
    pub fake: FakeTallyfy,
    pub dir: tempfile::TempDir,
    /// Mapped to the task's file field.
    pub tasks: PathBuf,
    /// Mapped to the template's file kick-off field.
    pub kickoff: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// The fake API, two folders and a config mapping them (written with `folder_extra` added
    /// to each folder and `top_extra` at the top level).
    pub async fn new() -> Env {
        Env::with_config("", "").await
    }

    pub async fn with_config(top_extra: &str, folder_extra: &str) -> Env {
        let fake = FakeTallyfy::start(ORG, TOKEN)
            .await
            .expect("fake API starts");
        fake.add_task(FakeTask {
            run_id: RUN.into(),
            task_id: TASK.into(),
            checklist_id: TEMPLATE.into(),
            step_id: STEP.into(),
            title: "Collect invoices".into(),
            status: "active".into(),
            fields: vec![
                field(CAPTURE, "Invoices", "file", json!([])),
                field(TEXT_CAPTURE, "Notes", "text", json!("keep me")),
            ],
        });
        fake.add_checklist(FakeChecklist {
            id: KICKOFF_TEMPLATE.into(),
            title: KICKOFF_TITLE.into(),
            prerun: vec![
                field(KICKOFF_FIELD, "Contract", "file", json!([])),
                field(KICKOFF_TEXT, "Customer", "text", json!("ACME")),
            ],
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let tasks = dir.path().join("tasks");
        let kickoff = dir.path().join("kickoff");
        std::fs::create_dir(&tasks).unwrap();
        std::fs::create_dir(&kickoff).unwrap();
        let env = Env {
            fake,
            config: dir.path().join("config.yaml"),
            state: dir.path().join("state"),
            tasks: tasks.canonicalize().unwrap(),
            kickoff: kickoff.canonicalize().unwrap(),
            dir,
        };
        env.write_config(top_extra, folder_extra);
        env
    }

    /// The default environment, with a one-off task added and the task folder (`tasks`)
    /// mapped to its file field instead of the process's task.
    pub async fn one_off() -> Env {
        Env::one_off_with_config("", "").await
    }

    /// `Env::one_off`, its config written as `Env::with_config` writes it.
    pub async fn one_off_with_config(top_extra: &str, folder_extra: &str) -> Env {
        let env = Env::with_config(top_extra, folder_extra).await;
        env.fake.add_task(FakeTask::one_off(
            ONE_OFF_TASK,
            ONE_OFF_TITLE,
            vec![
                field(ONE_OFF_CAPTURE, ONE_OFF_LABEL, "file", json!([])),
                field("nda2", "Counterparty", "text", json!("ACME")),
            ],
        ));
        let yaml = std::fs::read_to_string(&env.config).unwrap();
        let task =
            format!("      run_id: {RUN}\n      task_id: {TASK}\n      capture_id: {CAPTURE}\n");
        assert!(yaml.contains(&task), "{yaml}");
        let one_off =
            format!("      task_id: {ONE_OFF_TASK}\n      capture_id: {ONE_OFF_CAPTURE}\n");
        env.write_raw_config(&yaml.replacen(&task, &one_off, 1));
        env
    }

    /// The one-off task's file field (with `Env::one_off`).
    pub fn one_off_field(&self) -> Vec<Value> {
        self.fake.task_field(ONE_OFF, ONE_OFF_TASK, ONE_OFF_CAPTURE)
    }

    /// The default environment with its daemon started and both targets verified.
    pub async fn running() -> (Env, Daemon) {
        let env = Env::new().await;
        let daemon = env.start();
        daemon.wait_for_log("target verified").await;
        (env, daemon)
    }

    pub fn write_config(&self, top_extra: &str, folder_extra: &str) {
        self.write_config_with_api("", top_extra, folder_extra);
    }

    /// Like `write_config`, with `api_extra` (indented two spaces) added to `api`.
    pub fn write_config_with_api(&self, api_extra: &str, top_extra: &str, folder_extra: &str) {
        let yaml = format!(
            "api:\n  base_url: {base}\n  org_id: {ORG}\n  timeout: 10s\n{api_extra}\
             state_dir: {state}\n\
             settle: {SETTLE}\n{top_extra}\
             folders:\n\
             \x20 - path: {tasks}\n    task:\n      run_id: {RUN}\n      task_id: {TASK}\n      capture_id: {CAPTURE}\n{folder}\
             \x20 - path: {kickoff}\n    kickoff:\n      checklist_id: {KICKOFF_TEMPLATE}\n      field_id: {KICKOFF_FIELD}\n{folder}",
            base = self.fake.base_url(),
            state = self.state.display(),
            tasks = self.tasks.display(),
            kickoff = self.kickoff.display(),
            folder = indent(folder_extra),
        );
        std::fs::write(&self.config, yaml).unwrap();
    }

    pub fn write_raw_config(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).unwrap();
    }

    /// Rewrites the config with the first `from` replaced by `to` (which must be there).
    pub fn replace_in_config(&self, from: &str, to: &str) {
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        assert!(yaml.contains(from), "{from:?} not in\n{yaml}");
        self.write_raw_config(&yaml.replacen(from, to, 1));
    }

    /// The usual set-up, but authenticating with OAuth client credentials at the fake's token
    /// endpoint (which knows CLIENT_ID and CLIENT_SECRET, and issues tokens that last
    /// `lifetime_secs`); the daemon reads `secret` from the file `api.client_secret_file` names.
    pub async fn with_client_credentials(secret: &str, lifetime_secs: u64) -> Env {
        let env = Env::new().await;
        env.fake.set_client(CLIENT_ID, CLIENT_SECRET);
        env.fake.set_token_lifetime(lifetime_secs);
        let secret_file = env.dir.path().join("client-secret");
        std::fs::write(&secret_file, secret).unwrap();
        let auth = format!(
            "api:\n  auth: client_credentials\n  token_url: {}\n  client_id: {CLIENT_ID}\n  client_secret_file: {}\n",
            env.fake.token_url(),
            secret_file.display()
        );
        let yaml = std::fs::read_to_string(&env.config).unwrap();
        env.write_raw_config(&yaml.replacen("api:\n", &auth, 1));
        env
    }

    /// Starts `tallyfy-sync run` with the right token.
    pub fn start(&self) -> Daemon {
        self.start_with_token(TOKEN)
    }

    pub fn start_with_token(&self, token: &str) -> Daemon {
        self.start_with_env(token, &[])
    }

    /// Starts `tallyfy-sync run` with extra environment variables (NOTIFY_SOCKET, ...).
    pub fn start_with_env(&self, token: &str, vars: &[(&str, &OsStr)]) -> Daemon {
        Daemon::spawn_with_env(
            &["run", "--config", self.config.to_str().unwrap()],
            token,
            self.dir.path(),
            vars,
        )
    }

    /// Runs a one-shot command (`check`, `status`) to completion.
    pub fn command(&self, args: &[&str]) -> Output {
        run_command(args, Some(TOKEN), &self.config)
    }

    pub fn task_field(&self) -> Vec<Value> {
        self.fake.task_field(RUN, TASK, CAPTURE)
    }

    pub fn kickoff_field(&self) -> Vec<Value> {
        self.fake.kickoff_field(KICKOFF_TEMPLATE, KICKOFF_FIELD)
    }

    pub fn requests(&self, method: &str, path_contains: &str) -> Vec<RequestRecord> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.contains(path_contains))
            .collect()
    }

    pub fn uploads(&self) -> usize {
        self.requests("POST", "/file").len()
    }
}

fn indent(extra: &str) -> String {
    extra.lines().map(|line| format!("    {line}\n")).collect()
}

/// Names of the files in a field's value, in order.
pub fn filenames(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|asset| asset["filename"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|asset| asset["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// The line a report (`verify`, `restore`) printed for the file `name` (relative to its folder).
pub fn report_line<'a>(output: &'a Output, name: &str) -> &'a str {
    let field = format!(" {name}  ");
    output
        .stdout
        .lines()
        .find(|line| line.contains(&field))
        .unwrap_or_else(|| panic!("a line for {name}: {}", describe(output)))
}

/// `verify` found `in_sync` files in sync and nothing that differs.
pub fn assert_all_in_sync(verified: &Output, in_sync: usize) {
    assert_eq!(verified.status.code(), Some(0), "{}", describe(verified));
    let summary = format!("{in_sync} in sync, 0 differ");
    assert!(
        verified.stdout.contains(&summary),
        "{summary}: {}",
        describe(verified)
    );
}

/// All a command printed, with its exit status, for a failing assertion.
pub fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status, output.stdout, output.stderr
    )
}

pub fn run_command(args: &[&str], token: Option<&str>, config: &Path) -> Output {
    run_command_with_env(args, token, config, &[])
}

/// Like `run_command`, with extra environment variables (HTTPS_PROXY, ...).
pub fn run_command_with_env(
    args: &[&str],
    token: Option<&str>,
    config: &Path,
    vars: &[(&str, &OsStr)],
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tallyfy-sync"));
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TALLYFY_ACCESS_TOKEN")
        .env_remove("TALLYFY_CLIENT_SECRET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env("SYSTEMD_UNIT_PATH", NO_UNITS);
    if let Some(token) = token {
        command.env("TALLYFY_ACCESS_TOKEN", token);
    }
    command.envs(vars.iter().copied());
    let output = command.output().expect("binary runs");
    Output {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The real binary, running; its stderr goes to a file the test can read at any time.
pub struct Daemon {
    child: std::sync::Mutex<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn spawn(args: &[&str], token: &str, dir: &Path) -> Daemon {
        Daemon::spawn_with_env(args, token, dir, &[])
    }

    pub fn spawn_with_env(
        args: &[&str],
        token: &str,
        dir: &Path,
        vars: &[(&str, &OsStr)],
    ) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tallyfy-sync"));
        command.args(args);
        Daemon::spawn_command(command, token, dir, vars)
    }

    /// Runs `command` (the binary, or a wrapper that ends by exec'ing it) as the daemon, with
    /// the test environment and `vars`; its stderr goes to a log file in `dir`.
    pub fn spawn_command(
        mut command: Command,
        token: &str,
        dir: &Path,
        vars: &[(&str, &OsStr)],
    ) -> Daemon {
        let log = dir.join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("TALLYFY_ACCESS_TOKEN", token)
            .env_remove("TALLYFY_CLIENT_SECRET")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("SYSTEMD_UNIT_PATH", NO_UNITS)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            // Only a test's own service manager may hear from the daemon.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("daemon starts");
        Daemon {
            child: std::sync::Mutex::new(child),
            log,
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The exit status, if the daemon has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        strip_ansi(&text)
    }

    pub async fn wait_for_log(&self, needle: &str) {
        eventually(
            &format!("the log says {needle:?}"),
            || self.log().contains(needle),
            self,
        )
        .await;
    }

    /// The address the daemon's log says it serves metrics at.
    pub fn metrics_addr(&self) -> String {
        self.log()
            .lines()
            .find(|line| line.contains("serving metrics"))
            .and_then(|line| line.split("addr=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the log names the metrics address")
            .to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Sends SIGTERM and waits for the exit (at most 15 s).
    pub async fn stop(self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit().await
    }

    pub async fn wait_exit(&self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child().kill();
                panic!("the daemon did not exit in time; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Polls `condition` every 20 ms until it holds; fails with the daemon's log after `WAIT`.
pub async fn eventually(what: &str, condition: impl Fn() -> bool, daemon: &Daemon) {
    eventually_within(WAIT, what, condition, daemon).await;
}

/// `eventually`, for conditions that may take longer than `WAIT`.
pub async fn eventually_within(
    within: Duration,
    what: &str,
    condition: impl Fn() -> bool,
    daemon: &Daemon,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            let state = match daemon.exited() {
                Some(status) => format!("the daemon exited: {status}"),
                None => "the daemon is still running".to_string(),
            };
            panic!(
                "timed out waiting until {what}; {state}; daemon log:\n{}",
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small deterministic generator for tests that act at random moments, seeded from the
/// clock and printed so that a failing run can be replayed with `CHAOS_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("CHAOS_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes a file atomically enough for the tests (one write call).
pub fn drop_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// Drops `name` into `dir` and waits until `field` (a field's value as the fake holds it) lists
/// it; returns its asset id.
pub async fn attached(
    daemon: &Daemon,
    dir: &Path,
    name: &str,
    content: &[u8],
    field: impl Fn() -> Vec<Value>,
) -> String {
    drop_file(dir, name, content);
    eventually(
        &format!("{name} is attached"),
        || filenames(&field()).contains(&name.to_string()),
        daemon,
    )
    .await;
    id_of(&field(), name)
}

/// A GET of `url`: the status and the body.
/// The id of the asset named `name` in a field's value.
pub fn id_of(field: &[Value], name: &str) -> String {
    field
        .iter()
        .find(|asset| asset["filename"] == name)
        .unwrap_or_else(|| panic!("{name} is in the field"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

pub async fn http_get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// What `command` showed on a terminal of its own (`script` from util-linux); `None` (the test
/// is skipped) where `script` cannot run.
pub fn on_a_terminal(command: &str) -> Option<String> {
    match std::process::Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("TALLYFY_ACCESS_TOKEN", TOKEN)
        .output()
    {
        Ok(output) => {
            assert!(output.status.success(), "{output:?}");
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        Err(error) => {
            eprintln!("skipped: cannot run script(1) for a terminal: {error}");
            None
        }
    }
}
