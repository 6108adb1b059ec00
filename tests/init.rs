//! `tallyfy-sync init` through the real binary on a pseudo-terminal (libc::openpty) against
//! the fake API: a wrong organization is caught with one GET and asked again, the token is
//! typed unseen and written 0600, a target is picked by name, the folder created, the config
//! written with comments and checked online; off a terminal, or over an existing config
//! without --force, it refuses and writes nothing.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tallyfy_sync::fake::{FakeChecklist, FakeTallyfy};

const BIN: &str = env!("CARGO_BIN_EXE_tallyfy-sync");

/// The binary on a terminal of its own: what it shows is collected from the pty's master side.
struct Terminal {
    child: Child,
    master: File,
    shown: Arc<Mutex<String>>,
    /// How much of `shown` earlier `expect`s consumed.
    seen: usize,
}

impl Terminal {
    fn spawn(args: &[&str]) -> Terminal {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors it opened; null name, termios and size are allowed.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned by nothing else.
        let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let child = Command::new(BIN)
            .args(args)
            .env_remove("TALLYFY_ACCESS_TOKEN")
            .env_remove("TALLYFY_SYNC_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .expect("binary runs");
        let shown = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&shown);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends with EIO once the child (the last holder of the slave side) exits.
            while let Ok(read @ 1..) = reader.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..read]));
            }
        });
        Terminal {
            child,
            master,
            shown,
            seen: 0,
        }
    }

    fn shown(&self) -> String {
        self.shown.lock().unwrap().clone()
    }

    /// Waits until the terminal shows `text` after what was seen before.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let shown = self.shown();
            if let Some(at) = shown[self.seen..].find(text) {
                self.seen += at + text.len();
                return;
            }
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("{text:?} not shown; the terminal shows:\n{}", self.shown());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for `prompt`, then types `answer` and Enter.
    fn answer(&mut self, prompt: &str, answer: &str) {
        self.expect(prompt);
        self.master
            .write_all(format!("{answer}\n").as_bytes())
            .unwrap();
    }

    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("init did not end; the terminal shows:\n{}", self.shown());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The reader may still be taking the last bytes.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.shown())
    }
}

async fn organization() -> FakeTallyfy {
    let fake = FakeTallyfy::start(ORG, TOKEN).await.unwrap();
    fake.add_checklist(FakeChecklist {
        id: "tpl-invoice".into(),
        title: "Invoice approval".into(),
        prerun: vec![field("ko-invoice", "Invoice", "file", json!([]))],
    });
    fake.add_checklist(FakeChecklist {
        id: "tpl-contract".into(),
        title: "Contract intake".into(),
        prerun: vec![field("ko-contract", "Signed contract", "file", json!([]))],
    });
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_terminal_checks_the_token_and_writes_a_config_that_passes_check_online() {
    let fake = organization().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/config.yaml");
    let token_file = dir.path().join("etc/token");
    let folder = dir.path().join("scans/invoices");
    let mut terminal = Terminal::spawn(&["init", "--config", config.to_str().unwrap()]);
    terminal.answer(
        "Tallyfy API URL [https://go.tallyfy.com/api]: ",
        &fake.base_url(),
    );
    terminal.answer(
        "Organization id (in Tallyfy: Settings > Organization): ",
        "someone-else",
    );
    terminal.answer(
        &format!(
            "File holding the API token (created if missing) [{}]: ",
            token_file.display()
        ),
        "",
    );
    terminal.answer("Paste the personal access token", TOKEN);
    terminal.expect("api.org_id \"someone-else\" is wrong");
    terminal.expect("Let's try again.");
    terminal.answer(&format!("Tallyfy API URL [{}]: ", fake.base_url()), "");
    terminal.answer(
        "Organization id (in Tallyfy: Settings > Organization) [someone-else]: ",
        ORG,
    );
    terminal.answer("File holding the API token (created if missing)", "");
    terminal.answer("Paste the personal access token", TOKEN);
    terminal.expect("The API accepts the token for this organization.");
    terminal.answer("Filter the targets by name (Enter for all): ", "INVOICE");
    terminal
        .expect("1) kickoff folder: kick-off field \"Invoice\" of template \"Invoice approval\"");
    terminal.expect("2) launch folder: a process of template \"Invoice approval\" per file");
    terminal.answer("Number of the target for the folder: ", "1");
    terminal.answer(
        "Local folder to watch [/srv/tallyfy/invoice-approval]: ",
        folder.to_str().unwrap(),
    );
    terminal.answer("does not exist; create it? [Y/n]: ", "");
    terminal.expect(&format!("Wrote {}.", config.display()));
    terminal.answer("Run `tallyfy-sync check --online` now? [Y/n]: ", "");
    terminal.expect("target OK");
    let (status, shown) = terminal.wait();
    assert!(status.success(), "{status}:\n{shown}");
    assert!(!shown.contains(TOKEN), "the token was echoed:\n{shown}");

    assert!(folder.is_dir());
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), TOKEN);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode {mode:o}");
    let yaml = std::fs::read_to_string(&config).unwrap();
    for expected in [
        "# tallyfy-sync config, written by `tallyfy-sync init`",
        &format!("  org_id: {ORG}\n"),
        &format!("  token_file: {}\n", token_file.display()),
        "  # kickoff folder: kick-off field \"Invoice\" of template \"Invoice approval\"\n",
        "      checklist_id: tpl-invoice   # \"Invoice approval\"\n",
        "      field_id: ko-invoice   # \"Invoice\"\n",
    ] {
        assert!(yaml.contains(expected), "{expected:?} not in:\n{yaml}");
    }
    assert!(!yaml.contains(TOKEN), "{yaml}");
    let requests = fake.requests();
    assert!(requests.iter().all(|r| r.method == "GET"), "{requests:?}");

    // The config works without the wizard: the token comes from its file.
    let checked = run_command(&["check", "--online"], None, &config);
    assert_eq!(checked.status.code(), Some(0), "{}", describe(&checked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_off_a_terminal_refuses_politely_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let output = Command::new(BIN)
        .args(["init", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("init asks its questions on a terminal, and stdin is not one"),
        "{stderr}"
    );
    assert!(!config.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_does_not_replace_an_existing_config_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "api:\n  org_id: mine\n").unwrap();
    let mut terminal = Terminal::spawn(&["init", "--config", config.to_str().unwrap()]);
    terminal.expect("exists; init does not replace it (run `tallyfy-sync init --force`");
    let (status, shown) = terminal.wait();
    assert_eq!(status.code(), Some(1), "{shown}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "api:\n  org_id: mine\n"
    );
    // With --force the questions start.
    let mut terminal = Terminal::spawn(&["init", "--force", "--config", config.to_str().unwrap()]);
    terminal.expect("Tallyfy API URL [https://go.tallyfy.com/api]: ");
    drop(terminal.master);
    let _ = terminal.child.kill();
    let _ = terminal.child.wait();
    assert!(Path::new(&config).exists());
}
