//! `init`: a first config, written by answering questions on a terminal. Receives answers
//! line by line on stdin (a terminal; anything else is refused before a question is asked);
//! checks the organization and the token with one GET, offers what `targets` lists, and
//! emits a commented config file (and the token file, mode 0600, when the token was pasted),
//! never replacing an existing config without `--force`; then runs `check --online` if asked.
//! Owns the questions.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use crate::config::{Auth, Config, ConfigError, Credentials, Secret, DEFAULT_BASE_URL};
use crate::targets::{self, yaml_scalar, Entry};
use crate::{diagnose, plan, text};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("init asks its questions on a terminal, and stdin is not one; write the config by hand from config/tallyfy-sync.example.yaml instead (`tallyfy-sync targets` lists what its folders can point at)")]
    NotATerminal,
    #[error("{} exists; init does not replace it (run `tallyfy-sync init --force` to write a new one in its place, or pick another file with --config)", text::path(.path))]
    Exists { path: PathBuf },
    #[error("stopped before the end; nothing was written")]
    Stopped,
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: std::io::Error,
    },
    #[error("the organization offers nothing a folder can point at: no template with a kick-off file field, no active process with a file field; add one in Tallyfy and run init again")]
    NothingToPointAt,
}

/// The questions, read from `input` and asked on `output`.
pub struct Wizard<R, W> {
    input: R,
    output: W,
}

/// Runs the wizard on the process's terminal.
pub fn run(config: &Path, force: bool) -> anyhow::Result<()> {
    if config.exists() && !force {
        return Err(InitError::Exists {
            path: config.to_path_buf(),
        }
        .into());
    }
    if !std::io::stdin().is_terminal() {
        return Err(InitError::NotATerminal.into());
    }
    let mut wizard = Wizard {
        input: std::io::stdin().lock(),
        output: std::io::stdout().lock(),
    };
    wizard.run(config)
}

/// The token file the packaged systemd unit loads as the credential `tallyfy-token`.
const UNIT_TOKEN: &str = "/etc/tallyfy-sync/token";

/// What the answers about the API came to.
struct Api {
    /// The `api:` section, as written.
    yaml: String,
    token_file: PathBuf,
    /// The token, when it was pasted rather than read from `token_file`.
    pasted: Option<Secret>,
}

impl<R: BufRead, W: Write> Wizard<R, W> {
    fn run(&mut self, file: &Path) -> anyhow::Result<()> {
        let runtime = crate::cli::runtime()?;
        self.say(&format!(
            "This writes the config {}. Defaults are in [brackets]; Ctrl-D stops without writing anything.\n",
            text::path(file)
        ))?;
        let (api, config) = self.api(file, &runtime)?;
        let credentials = credentials(&api, &config)?;
        self.say("Reading what the organization offers (GETs only)...")?;
        let catalog = runtime.block_on(async {
            let (client, _stop_renewals) = plan::client(&config.api, credentials.clone())?;
            anyhow::Ok(targets::catalog(&client).await?)
        })?;
        let entries: Vec<Entry> = targets::entries(&catalog)
            .into_iter()
            .filter(|entry| entry.fits)
            .collect();
        if entries.is_empty() {
            return Err(InitError::NothingToPointAt.into());
        }
        let entry = self.pick(&entries)?;
        let folder = self.folder(&entry)?;
        let yaml = format!(
            "# tallyfy-sync config, written by `tallyfy-sync init`. Every key is described in\n\
             # config/tallyfy-sync.example.yaml and the README; check it with `tallyfy-sync check --online`.\n\
             {}\n\
             folders:\n  # {}\n{}",
            api.yaml,
            text::escaped(&entry.summary()),
            entry.folder_yaml(&folder, 2)
        );
        // What is written must load: a mistake here is found before the file exists.
        Config::from_yaml(&yaml, file, &|name| std::env::var_os(name))?;
        if let Some(secret) = &api.pasted {
            write_private(&api.token_file, &format!("{}\n", secret.expose()))?;
            self.say(&format!(
                "Wrote the token to {} (mode 0600).",
                text::path(&api.token_file)
            ))?;
        }
        write_config(file, &yaml)?;
        self.say(&format!("Wrote {}.", text::path(file)))?;
        if self.yes("Run `tallyfy-sync check --online` now?", true)? {
            let config = Config::load(file)?;
            let checks = runtime.block_on(plan::verify_targets(&config, credentials))?;
            self.say(&plan::render_checks(&checks))?;
            plan::verdict(&checks, &config)?;
        }
        self.say(&format!(
            "Next: `tallyfy-sync run --dry-run --config {0}` shows what the first run would do; `tallyfy-sync targets --config {0}` lists more targets to add under folders:.",
            text::path(file)
        ))?;
        Ok(())
    }

    /// Asks for the API's URL, the organization and the token until one GET accepts them.
    fn api(
        &mut self,
        file: &Path,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<(Api, Config)> {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        let dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut base_url = DEFAULT_BASE_URL.to_string();
        let mut org_id = String::new();
        let mut token_file = dir.join("token");
        loop {
            base_url = self.ask("Tallyfy API URL", Some(&base_url))?;
            org_id = self.ask_required(
                "Organization id (in Tallyfy: Settings > Organization)",
                Some(&org_id)
                    .filter(|id| !id.is_empty())
                    .map(String::as_str),
            )?;
            // Relative paths in the config mean "next to the config file".
            token_file = dir.join(self.ask(
                "File holding the API token (created if missing)",
                Some(&token_file.to_string_lossy()),
            )?);
            let pasted = if token_file.exists() {
                None
            } else {
                Some(self.secret(
                    "Paste the personal access token (Settings > Integrations > REST API; not shown)",
                )?)
            };
            let yaml = api_yaml(&base_url, &org_id, &token_file);
            let config =
                match Config::from_yaml_api_only(&yaml, &file, &|name| std::env::var_os(name)) {
                    Ok(config) => config,
                    Err(error) => {
                        self.say(&format!("{error}\nLet's try again.\n"))?;
                        continue;
                    }
                };
            let api = Api {
                yaml,
                token_file: token_file.clone(),
                pasted,
            };
            let credentials = match credentials(&api, &config) {
                Ok(credentials) => credentials,
                Err(error) => {
                    self.say(&format!("{error}\nLet's try again.\n"))?;
                    continue;
                }
            };
            self.say("Checking the organization and the token (one GET)...")?;
            let checked = runtime.block_on(async {
                let (client, _stop_renewals) =
                    plan::client(&config.api, credentials).map_err(|error| error.to_string())?;
                client
                    .with_retries(|| client.probe_organization())
                    .await
                    .map_err(|error| {
                        diagnose::api_problem(&error, &client).unwrap_or_else(|| {
                            if error.is_unauthorized() {
                                format!("the API refused the token: {error}")
                            } else {
                                error.to_string()
                            }
                        })
                    })
            });
            match checked {
                Ok(()) => {
                    self.say("The API accepts the token for this organization.\n")?;
                    return Ok((api, config));
                }
                Err(problem) => {
                    self.say(&format!("{}\nLet's try again.\n", text::escaped(&problem)))?
                }
            }
        }
    }

    /// Lists the entries (narrowed by a filter when there are many) and asks for one.
    fn pick(&mut self, entries: &[Entry]) -> anyhow::Result<Entry> {
        loop {
            let filter = self
                .ask("Filter the targets by name (Enter for all)", Some(""))?
                .to_lowercase();
            let shown: Vec<&Entry> = entries
                .iter()
                .filter(|entry| entry.matches(&filter))
                .collect();
            if shown.is_empty() {
                self.say("No target has a name holding that.")?;
                continue;
            }
            for (number, entry) in shown.iter().enumerate() {
                self.say(&format!("  {:>3}) {}", number + 1, entry.summary()))?;
            }
            let answer = self.ask("Number of the target for the folder", None)?;
            match answer.parse::<usize>() {
                Ok(number) if (1..=shown.len()).contains(&number) => {
                    return Ok(shown[number - 1].clone())
                }
                _ => self.say(&format!("Pick a number from 1 to {}.", shown.len()))?,
            }
        }
    }

    /// Asks for the local folder, creating it when the answer says so.
    fn folder(&mut self, entry: &Entry) -> anyhow::Result<PathBuf> {
        loop {
            let path =
                PathBuf::from(self.ask("Local folder to watch", Some(&entry.suggested_path()))?);
            if !path.is_absolute() {
                self.say("Give an absolute path.")?;
                continue;
            }
            if path.is_dir() {
                return Ok(path);
            }
            if path.exists() {
                self.say(&format!("{} is not a directory.", text::path(&path)))?;
                continue;
            }
            if self.yes(
                &format!("{} does not exist; create it?", text::path(&path)),
                true,
            )? {
                std::fs::create_dir_all(&path).map_err(|error| InitError::Io {
                    what: format!("creating {}", text::path(&path)),
                    error,
                })?;
                return Ok(path);
            }
        }
    }

    fn say(&mut self, line: &str) -> Result<(), InitError> {
        writeln!(self.output, "{line}")
            .and_then(|()| self.output.flush())
            .map_err(|error| InitError::Io {
                what: "writing to the terminal".into(),
                error,
            })
    }

    /// One line of input, trimmed; `Stopped` at the end of input.
    fn line(&mut self) -> Result<String, InitError> {
        let mut line = String::new();
        let read = self
            .input
            .read_line(&mut line)
            .map_err(|error| InitError::Io {
                what: "reading the answer".into(),
                error,
            })?;
        if read == 0 {
            return Err(InitError::Stopped);
        }
        Ok(line.trim().to_string())
    }

    fn prompt(&mut self, question: &str, default: Option<&str>) -> Result<(), InitError> {
        let shown = match default {
            Some(default) if !default.is_empty() => format!("{question} [{default}]: "),
            _ => format!("{question}: "),
        };
        write!(self.output, "{shown}")
            .and_then(|()| self.output.flush())
            .map_err(|error| InitError::Io {
                what: "writing to the terminal".into(),
                error,
            })
    }

    /// The answer, or `default` for an empty one.
    fn ask(&mut self, question: &str, default: Option<&str>) -> Result<String, InitError> {
        self.prompt(question, default)?;
        let answer = self.line()?;
        Ok(match default {
            Some(default) if answer.is_empty() => default.to_string(),
            _ => answer,
        })
    }

    fn ask_required(&mut self, question: &str, default: Option<&str>) -> Result<String, InitError> {
        loop {
            let answer = self.ask(question, default)?;
            if !answer.is_empty() {
                return Ok(answer);
            }
        }
    }

    fn yes(&mut self, question: &str, default: bool) -> Result<bool, InitError> {
        loop {
            self.prompt(question, Some(if default { "Y/n" } else { "y/N" }))?;
            match self.line()?.to_lowercase().as_str() {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.say("Answer y or n.")?,
            }
        }
    }

    /// A secret typed with the terminal's echo off.
    fn secret(&mut self, question: &str) -> Result<Secret, InitError> {
        loop {
            // Off before the question shows, so nothing typed after it is echoed.
            let answer = {
                let _quiet = EchoOff::new();
                self.prompt(question, None).and_then(|()| self.line())
            };
            self.say("")?;
            match Secret::parse(&answer?) {
                Ok(secret) => return Ok(secret),
                Err(why) => self.say(&format!("That token is {why}; paste it again."))?,
            }
        }
    }
}

/// The `api:` section. The packaged unit hands `UNIT_TOKEN` to the daemon as a credential:
/// naming it as token_file would make the daemon's user read a file only root may read.
fn api_yaml(base_url: &str, org_id: &str, token_file: &Path) -> String {
    let token = if token_file == Path::new(UNIT_TOKEN) {
        format!(
            "  # The token is {UNIT_TOKEN}, which the systemd unit loads as the credential\n  \
             # tallyfy-token; by hand: TALLYFY_ACCESS_TOKEN=$(sudo cat {UNIT_TOKEN}) tallyfy-sync ..."
        )
    } else {
        format!(
            "  # The token itself is never in this file.\n  token_file: {}",
            yaml_scalar(&token_file.to_string_lossy())
        )
    };
    format!(
        "api:\n  base_url: {}\n  org_id: {}\n  auth: token\n{token}",
        yaml_scalar(base_url),
        yaml_scalar(org_id),
    )
}

/// The token pasted, else the one in the token file (named in the config or not), never
/// TALLYFY_ACCESS_TOKEN: the check must prove the token the service will use.
fn credentials(api: &Api, config: &Config) -> Result<Credentials, ConfigError> {
    match &api.pasted {
        Some(secret) => Ok(Credentials::Token(secret.clone())),
        None => {
            let mut from_file = config.api.clone();
            from_file.auth = Auth::Token {
                token_file: Some(api.token_file.clone()),
            };
            Credentials::resolve(&from_file, &|_| None)
        }
    }
}

fn write_config(file: &Path, yaml: &str) -> Result<(), InitError> {
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| InitError::Io {
            what: format!("creating {}", text::path(dir)),
            error,
        })?;
    }
    std::fs::write(file, yaml).map_err(|error| InitError::Io {
        what: format!("writing {}", text::path(file)),
        error,
    })
}

/// Writes a file only its owner may read, whatever the umask.
fn write_private(file: &Path, content: &str) -> Result<(), InitError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |error| InitError::Io {
        what: format!("writing {}", text::path(file)),
        error,
    };
    if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(failed)?;
    out.write_all(content.as_bytes()).map_err(failed)
}

/// Turns the terminal's echo off on stdin until dropped (nothing happens off a terminal).
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr fills the zeroed struct it is given; fd 0 stays open.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return EchoOff(None);
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: `quiet` is a valid termios read from the same descriptor.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) } != 0 {
            return EchoOff(None);
        }
        EchoOff(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_the_unit_loads_is_left_to_the_unit_and_any_other_is_named() {
        let by_unit = api_yaml("https://go.tallyfy.com/api", "org1", Path::new(UNIT_TOKEN));
        assert!(!by_unit.contains("token_file:"), "{by_unit}");
        assert!(
            by_unit.contains("credential\n  # tallyfy-token;"),
            "{by_unit}"
        );
        assert!(
            by_unit.starts_with("api:\n  base_url: https://go.tallyfy.com/api\n  org_id: org1\n"),
            "{by_unit}"
        );
        let own = api_yaml(
            "https://go.tallyfy.com/api",
            "org1",
            Path::new("/opt/t/token"),
        );
        assert!(own.ends_with("  token_file: /opt/t/token"), "{own}");
        for yaml in [by_unit, own] {
            let config = Config::from_yaml_api_only(&yaml, Path::new("/etc/c.yaml"), &|_| None);
            assert!(config.is_ok(), "{yaml}: {config:?}");
        }
    }
}
