//! The command line: parses arguments, runs the chosen command, and maps failures to exit
//! codes (78 = configuration error, so systemd's RestartPreventExitStatus=78 stops a restart loop).
//! Shell completions and the manual page are generated from this same definition.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiError};
use crate::config::{After, Auth, Config, ConfigError, Credentials, Dedupe, Target};
use crate::control::{self, Answer, ControlError, Request};
use crate::logging::{self, LogFormat};
use crate::store::Store;
use crate::store::StoreError;
use crate::{caution, daemon, demo, manual, plan, restore, service, status, text, verify};

/// EX_CONFIG from sysexits.h.
pub const EXIT_CONFIG: u8 = 78;
/// `reload` with no daemon to ask: LSB's "program is not running".
pub const EXIT_NOT_RUNNING: u8 = 7;

/// The running daemon refused to reload: its configuration stays.
#[derive(Debug, thiserror::Error)]
#[error("reload refused, the running configuration stays: {0}")]
pub struct ReloadRefused(String);

/// `reload` found no daemon listening on the control socket.
#[derive(Debug, thiserror::Error)]
#[error("no daemon answers at {0}: nothing to reload (is the service running, with this config's state_dir?)")]
pub struct NotRunning(String);

#[derive(Debug, Parser)]
#[command(
    name = "tallyfy-sync",
    version,
    about = "Keeps local hot folders in sync with file fields in Tallyfy",
    after_long_help = manual::epilogue()
)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        global = true,
        env = "TALLYFY_SYNC_CONFIG",
        default_value = "/etc/tallyfy-sync/config.yaml"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the folders and sync them, in the foreground, until SIGTERM or SIGINT.
    Run {
        /// Only show what would be uploaded, attached, skipped and deleted now: verifies the
        /// targets (as `check --online`), compares the folders with the state store, and
        /// changes nothing, in Tallyfy or in the store.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan as JSON, for scripts.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Validate the config and print the folders and their targets.
    Check {
        /// Also verify every target with the Tallyfy API, reading only: exit 78 when one is
        /// wrong, 1 when the API cannot be reached.
        #[arg(long)]
        online: bool,
    },
    /// List what a folder can point at, by name and id, each with a `folders:` entry to paste.
    ///
    /// Every template with its kick-off file fields (and whether a launch folder fits it),
    /// every active process with its tasks' file fields, and the route folders the templates'
    /// steps allow. Needs only `api:` in the config; sends only GETs.
    Targets {
        /// Print the list as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Show only the entries with a name (template, process, task, step or field) holding
        /// this text, in any case.
        filter: Option<String>,
    },
    /// Write a first config by answering questions on a terminal.
    ///
    /// Asks for the organization and the token (checked with one GET), a target picked from
    /// what `targets` lists and the local folder; then offers `check --online`. Never replaces
    /// an existing config without --force, and refuses when stdin is not a terminal.
    Init {
        /// Replace the config file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Show each folder's state (syncing, paused or not syncing, with why and the fix) and
    /// counts, and the files that need attention: pending, held, rejected or failed, why each
    /// waits and when it is tried next (asks the running daemon, else reads the store).
    Status {
        /// A folder, or a file or directory in one: only that.
        path: Option<PathBuf>,
        /// List every file, those in sync too.
        #[arg(long)]
        all: bool,
        /// Print the report as JSON, for scripts (every file, always).
        #[arg(long)]
        json: bool,
    },
    /// Try failed files again now; with PATH, make each file at or under it be in Tallyfy now,
    /// whatever its state (synced, removed in Tallyfy, rejected or failed): its field is checked
    /// and what is missing there is sent.
    Retry {
        /// A file or folder; all failed files when left out.
        path: Option<PathBuf>,
    },
    /// Check that Tallyfy holds what the folders hold (all of them, or those at or under
    /// PATH): per file in sync, changed locally, removed from the field or deleted in Tallyfy,
    /// and the field's files no local file accounts for. Sends only GETs (and, with client
    /// credentials, a token request), writes nothing, and
    /// works while the daemon runs. Exit 0 when everything agrees, 1 when anything differs.
    Verify {
        /// A file or folder; every configured folder when left out.
        path: Option<PathBuf>,
        /// Also download each file that looks in sync and compare its bytes.
        #[arg(long)]
        download: bool,
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Download the files of FOLDER's field into DIR (default: FOLDER itself) that are not
    /// already there with the same content, under safe names, never overwriting a file (a
    /// taken name becomes `name (2).pdf`). Restored into FOLDER with the daemon stopped, they
    /// are recorded as synced; a running daemon adopts them. Either way nothing is uploaded
    /// for them. A route folder gets each active process's files back into its subfolder.
    /// Exit 0 when every file came, 1 otherwise.
    Restore {
        /// A configured folder.
        folder: PathBuf,
        /// Where the files go instead of FOLDER (created if missing).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
    /// Make the running daemon read its config file again and apply it, and say what changed.
    /// Exit 0 when applied; 78 when the daemon refused the config (it keeps running with the
    /// one it had; the errors are printed); 7 when no daemon runs.
    Reload,
    /// Let the deletes that max_delete held back in FOLDER go to Tallyfy.
    ReleaseDeletes {
        /// A configured folder.
        folder: PathBuf,
    },
    /// Run the daemon against a built-in local Tallyfy stand-in: no account needed.
    Demo {
        /// Where the demo's folders go (emptied first when it holds an earlier demo).
        #[arg(long, default_value = "tallyfy-sync-demo")]
        dir: PathBuf,
    },
    /// Print a completion script for a shell, e.g. `tallyfy-sync completions bash`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `tallyfy-sync man | man -l -`.
    Man {
        /// Write the pages of the command and of every subcommand into this directory instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Logging starts once the format is known: after loading the config for `run` (nothing logs
/// before; a config error reaches stderr through the caller, as JSON when the file asks for
/// `log.format: json`), at once for the others.
pub fn execute(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Run { dry_run: false, .. }) {
        logging::init(LogFormat::Auto);
    }
    match cli.command {
        Command::Run {
            dry_run: true,
            json,
        } => dry_run(&cli.config, json)?,
        Command::Run { dry_run: false, .. } => {
            let config = Config::load(&cli.config).inspect_err(|_| {
                logging::init(Config::log_format_of(&cli.config).unwrap_or_default())
            })?;
            logging::init(config.log.format);
            for warning in caution::warnings(&config) {
                tracing::warn!("{warning}");
            }
            let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
            let cancel = CancellationToken::new();
            let reloads = service::cancel_on_signals(cancel.clone())?;
            runtime()?.block_on(daemon::run(config, credentials, cancel, reloads))?;
        }
        Command::Check { online } => {
            let config = Config::load(&cli.config)?;
            let located = Credentials::locate(&config.api, &|name| std::env::var_os(name))?;
            print!("{}", describe(&config, &located.source));
            for warning in caution::warnings(&config) {
                println!("warning: {}", text::escaped(&warning));
            }
            if online {
                let checks =
                    runtime()?.block_on(plan::verify_targets(&config, located.credentials))?;
                print!("{}", plan::render_checks(&checks));
                plan::verdict(&checks, &config)?;
            }
        }
        Command::Targets { json, filter } => targets(&cli.config, json, filter.as_deref())?,
        Command::Init { force } => crate::init::run(&cli.config, force)?,
        Command::Status { path, all, json } => {
            let config = Config::load(&cli.config)?;
            let Answer::Status(mut report) = control(&config, Request::Status)? else {
                anyhow::bail!("unexpected answer from the daemon");
            };
            let mut all = all;
            if let Some(path) = &path {
                all |= status::keep_only(&mut report, path).map_err(anyhow::Error::msg)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?)
            } else {
                print!("{}", status::render(&report, all))
            }
        }
        Command::Retry { path } => {
            let config = Config::load(&cli.config)?;
            print_done(control(&config, Request::Retry { path })?)?;
        }
        Command::Reload => {
            let config = Config::load(&cli.config)?;
            reload(&config)?;
        }
        Command::ReleaseDeletes { folder } => {
            let config = Config::load(&cli.config)?;
            print_done(control(&config, Request::ReleaseDeletes { folder })?)?;
        }
        Command::Restore { folder, to } => {
            let config = Config::load(&cli.config)?;
            let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
            restore::run(&config, credentials, &folder, to.as_deref())?;
        }
        Command::Verify {
            path,
            download,
            json,
        } => {
            let config = Config::load(&cli.config)?;
            let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
            verify::run(&config, credentials, path.as_deref(), download, json)?;
        }
        Command::Demo { dir } => {
            let cancel = CancellationToken::new();
            let reloads = service::cancel_on_signals(cancel.clone())?;
            runtime()?.block_on(demo::run(dir, cancel, reloads))?;
        }
        Command::Completions { shell } => {
            manual::completions(shell, Cli::command(), &mut std::io::stdout())?
        }
        Command::Man { dir: None } => manual::render(Cli::command(), &mut std::io::stdout())?,
        Command::Man { dir: Some(dir) } => {
            manual::write_pages(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages to {}", dir.display()))?;
        }
    }
    Ok(())
}

/// `run --dry-run`: the targets as `check --online` finds them (on stderr with `--json`, so
/// that stdout holds only the JSON document), then the plan.
fn dry_run(file: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
    let checks = runtime()?.block_on(plan::verify_targets(&config, credentials))?;
    let rendered = plan::render_checks(&checks);
    if json {
        eprint!("{rendered}");
    } else {
        print!("{rendered}");
    }
    plan::verdict(&checks, &config)?;
    let store =
        dry_run_store(&config).context("a dry run compares the folders with the state store")?;
    let planned = plan::plan(&config, &store, &checks)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan::to_json(&checks, &planned))?
        );
    } else {
        print!("\n{}", plan::render(&planned));
    }
    Ok(())
}

/// `targets`: needs only the config's `api` section.
fn targets(file: &Path, json: bool, filter: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load_api_only(file)?;
    let credentials = Credentials::resolve(&config.api, &|name| std::env::var_os(name))?;
    let filter = filter.map(str::to_lowercase);
    let catalog = runtime()?.block_on(async {
        let (api, _stop_renewals) = plan::client(&config.api, credentials)?;
        anyhow::Ok(crate::targets::catalog(&api).await?)
    })?;
    let entries = crate::targets::entries(&catalog);
    if json {
        let entries: Vec<_> = entries
            .iter()
            .filter(|entry| filter.as_deref().is_none_or(|filter| entry.matches(filter)))
            .collect();
        let document = serde_json::json!({
            "templates": catalog.templates,
            "processes": catalog.processes,
            "entries": entries,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        print!(
            "{}",
            crate::targets::render(&catalog, &entries, filter.as_deref())
        );
    }
    Ok(())
}

/// The store as the running daemon holds it (a copy it sends over the control socket, since
/// its lock keeps others out), or with no daemon the one on disk.
fn dry_run_store(config: &Config) -> anyhow::Result<Store> {
    match runtime()?.block_on(control::ask(config, &Request::Dump))? {
        None => Ok(plan::open_store(config)?),
        Some(Answer::Dump { dump }) => Ok(Store::from_dump(&config.state_dir, dump)?),
        Some(Answer::Refused { message }) => anyhow::bail!(text::escape(&message)),
        Some(other) => Err(other.unexpected().into()),
    }
}

/// Asks the running daemon, or with none running carries the request out on the store.
fn control(config: &Config, request: Request) -> Result<Answer, ControlError> {
    let runtime = runtime().map_err(|error| ControlError::Refused(error.to_string()))?;
    runtime.block_on(async {
        if let Some(answer) = control::ask(config, &request).await? {
            return Ok(answer);
        }
        let store = Store::open(&config.state_dir)?;
        control::act(request, config, &store, false).await
    })
}

/// `reload`: asks the daemon and waits until the new config is applied or refused.
fn reload(config: &Config) -> anyhow::Result<()> {
    let answer = runtime()?.block_on(control::ask(config, &Request::Reload))?;
    match answer {
        None => Err(NotRunning(text::path(&control::socket_path(config)).to_string()).into()),
        Some(Answer::Reloaded { changes }) if changes.is_empty() => {
            println!("reloaded: no changes");
            Ok(())
        }
        Some(Answer::Reloaded { changes }) => {
            println!("reloaded:");
            for change in changes {
                println!("  {}", text::escaped(&change));
            }
            Ok(())
        }
        // A config's errors come one per line: keep the lines, escape the rest.
        Some(Answer::ReloadRefused { message }) => Err(ReloadRefused(
            message
                .lines()
                .map(text::escape)
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .into()),
        Some(Answer::Refused { message }) => anyhow::bail!(text::escape(&message)),
        Some(other) => Err(other.unexpected().into()),
    }
}

fn print_done(answer: Answer) -> anyhow::Result<()> {
    match answer {
        Answer::Done { message } => {
            println!("{}", text::escaped(&message));
            Ok(())
        }
        Answer::Refused { message } => anyhow::bail!(text::escape(&message)),
        other => Err(other.unexpected().into()),
    }
}

pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// What `check` prints: everything the daemon would act on, and never a secret.
fn describe(config: &Config, secret_source: &str) -> String {
    let auth = match &config.api.auth {
        Auth::Token { .. } => format!("token from {secret_source}"),
        Auth::ClientCredentials {
            token_url,
            client_id,
            ..
        } => format!(
            "client credentials of client {client_id} at {token_url}; secret from {secret_source}"
        ),
    };
    let mut out = format!(
        "config {} is valid\napi: {} (organization {}), timeout {}, {} uploads at once; {auth}\nstate: {}\nsettle: {}\nfolders:\n",
        text::path(&config.file),
        config.api.base_url,
        config.api.org_id,
        humantime::format_duration(config.api.timeout),
        config.api.concurrency,
        text::path(&config.state_dir),
        humantime::format_duration(config.settle),
    );
    out.push_str(&network(config));
    for folder in &config.folders {
        let mut options = vec![if folder.recursive {
            "recursive"
        } else {
            "not recursive"
        }
        .to_string()];
        match &folder.target {
            Target::Launch(launch) => {
                options.push(format!(
                    "process name \"{}\"",
                    crate::text::escaped(&launch.name.to_string())
                ));
                for (id, value) in &launch.fields {
                    let value = value.to_string();
                    options.push(format!("{id} \"{}\"", crate::text::escaped(&value)));
                }
                options.push(match &launch.after {
                    After::Keep => "launched files stay".to_string(),
                    After::Delete => "launched files are deleted".to_string(),
                    After::Move { to } => {
                        format!("launched files move to {}", crate::text::path(to))
                    }
                });
                options.push(match launch.dedupe {
                    Dedupe::Content => "known content launches nothing".to_string(),
                    Dedupe::None => "every copy launches".to_string(),
                });
            }
            _ if folder.delete_remote => options.push("local deletes propagate".to_string()),
            _ => options.push("local deletes stay local".to_string()),
        }
        if !folder.ignore.is_empty() {
            options.push(format!(
                "ignoring {}",
                text::escaped(&folder.ignore.join(", "))
            ));
        }
        if !folder.path.exists() {
            options.push(format!(
                "{} now: synced as soon as it appears",
                crate::guard::NOT_THERE
            ));
        }
        out.push_str(&format!(
            "  {} → {} ({})\n",
            text::path(&folder.path),
            folder.target,
            options.join("; ")
        ));
    }
    out
}

/// What `check` says of the certificates trusted and the proxy used for each host the daemon
/// talks to, so an administrator can see the environment was picked up.
fn network(config: &Config) -> String {
    let mut trust = "the system's certificate store and the roots built in".to_string();
    if let Some(ca_file) = &config.api.ca_file {
        let count = ca_file.certificates.len();
        trust += &format!(
            ", and {count} certificate{} from {} (api.ca_file)",
            if count == 1 { "" } else { "s" },
            crate::text::path(&ca_file.path)
        );
    }
    let mut out = format!("trust: {trust}\n");
    let mut urls = vec![&config.api.base_url];
    if let Auth::ClientCredentials { token_url, .. } = &config.api.auth {
        urls.push(token_url);
    }
    urls.dedup_by_key(|url| {
        (
            url.host_str().map(str::to_string),
            url.port_or_known_default(),
        )
    });
    for url in urls {
        let host = url.host_str().unwrap_or_default();
        let through = api::proxy_for(url, &config.api).unwrap_or_else(|| "none".to_string());
        let from = if config.api.proxy.is_some() && through != "none" {
            " (api.proxy)"
        } else {
            ""
        };
        out += &format!("proxy for {host}: {through}{from}\n");
    }
    out
}

/// 78 for anything the operator must fix in the configuration or the state directory.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let config_error = error.chain().any(|cause| {
        let store = cause
            .downcast_ref::<StoreError>()
            .or(match cause.downcast_ref::<daemon::DaemonError>() {
                Some(daemon::DaemonError::Store(store)) => Some(store),
                _ => None,
            })
            .or(match cause.downcast_ref::<ControlError>() {
                Some(ControlError::Store(store)) => Some(store),
                _ => None,
            })
            .or(match cause.downcast_ref::<restore::RestoreError>() {
                Some(restore::RestoreError::Control(ControlError::Store(store))) => Some(store),
                _ => None,
            })
            .or(match cause.downcast_ref::<verify::VerifyError>() {
                Some(verify::VerifyError::Control(ControlError::Store(store))) => Some(store),
                _ => None,
            });
        // A certificate store that cannot be used (SSL_CERT_FILE) does not mend itself either.
        let api_setup = matches!(
            cause.downcast_ref::<ApiError>().or(
                match cause.downcast_ref::<daemon::DaemonError>() {
                    Some(daemon::DaemonError::Client(api)) => Some(api),
                    _ => None,
                }
            ),
            Some(ApiError::Setup { .. })
        );
        let metrics_port = matches!(
            cause.downcast_ref::<daemon::DaemonError>(),
            Some(daemon::DaemonError::Metrics(_))
        ) || cause.is::<crate::exporter::BindError>();
        cause.is::<ConfigError>()
            || api_setup
            || metrics_port
            || cause.is::<ReloadRefused>()
            || cause
                .downcast_ref::<plan::PlanError>()
                .is_some_and(plan::PlanError::is_config)
            || cause
                .downcast_ref::<crate::targets::TargetsError>()
                .is_some_and(crate::targets::TargetsError::is_config)
            || matches!(
                store,
                Some(StoreError::Locked { .. } | StoreError::Open { .. })
            )
    });
    if error.chain().any(|cause| cause.is::<NotRunning>()) {
        return ExitCode::from(EXIT_NOT_RUNNING);
    }
    ExitCode::from(if config_error { EXIT_CONFIG } else { 1 })
}
