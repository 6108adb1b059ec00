//! The command line: parses arguments, runs the chosen command, and maps failures to exit
//! codes (78 = configuration error, so systemd's RestartPreventExitStatus=78 stops a restart loop).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Token};
use crate::control::{self, Answer, ControlError, Request};
use crate::store::Store;
use crate::store::StoreError;
use crate::{daemon, demo, service, status};

/// EX_CONFIG from sysexits.h.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(
    name = "tallyfy-sync",
    version,
    about = "Keeps local hot folders in sync with file fields in Tallyfy"
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
    Run,
    /// Validate the config and print the folders and their targets.
    Check,
    /// Show per folder and per file what is synced, pending, held, rejected or failed, and
    /// when each waiting file is tried next (asks the running daemon, else reads the store).
    Status {
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Try failed files again now (all of them, or those at or under PATH).
    Retry {
        /// A file or folder; all failed files when left out.
        path: Option<PathBuf>,
    },
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
}

pub fn execute(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => {
            let config = Config::load(&cli.config)?;
            let token = Token::resolve(&config.api, &|name| std::env::var_os(name))?;
            let cancel = CancellationToken::new();
            service::cancel_on_signals(cancel.clone())?;
            runtime()?.block_on(daemon::run(config, token, cancel))?;
        }
        Command::Check => {
            let config = Config::load(&cli.config)?;
            Token::resolve(&config.api, &|name| std::env::var_os(name))?;
            print!("{}", describe(&config));
        }
        Command::Status { json } => {
            let config = Config::load(&cli.config)?;
            match control(&config, Request::Status)? {
                Answer::Status(report) if json => {
                    println!("{}", serde_json::to_string_pretty(&report)?)
                }
                Answer::Status(report) => print!("{}", status::render(&report)),
                other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            }
        }
        Command::Retry { path } => {
            let config = Config::load(&cli.config)?;
            print_done(control(&config, Request::Retry { path })?)?;
        }
        Command::ReleaseDeletes { folder } => {
            let config = Config::load(&cli.config)?;
            print_done(control(&config, Request::ReleaseDeletes { folder })?)?;
        }
        Command::Demo { dir } => {
            let cancel = CancellationToken::new();
            service::cancel_on_signals(cancel.clone())?;
            runtime()?.block_on(demo::run(dir, cancel))?;
        }
    }
    Ok(())
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

fn print_done(answer: Answer) -> anyhow::Result<()> {
    match answer {
        Answer::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Answer::Refused { message } => anyhow::bail!(message),
        other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// What `check` prints: everything the daemon would act on, and never the token.
fn describe(config: &Config) -> String {
    let mut out = format!(
        "config {} is valid\napi: {} (organization {}), timeout {}, {} uploads at once; token found\nstate: {}\nsettle: {}\nfolders:\n",
        config.file.display(),
        config.api.base_url,
        config.api.org_id,
        humantime::format_duration(config.api.timeout),
        config.api.concurrency,
        config.state_dir.display(),
        humantime::format_duration(config.settle),
    );
    for folder in &config.folders {
        let mut options = vec![
            if folder.recursive {
                "recursive"
            } else {
                "not recursive"
            }
            .to_string(),
            if folder.delete_remote {
                "local deletes propagate"
            } else {
                "local deletes stay local"
            }
            .to_string(),
        ];
        if !folder.ignore.is_empty() {
            options.push(format!("ignoring {}", folder.ignore.join(", ")));
        }
        out.push_str(&format!(
            "  {} → {} ({})\n",
            folder.path.display(),
            folder.target,
            options.join("; ")
        ));
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
            });
        cause.is::<ConfigError>()
            || matches!(
                store,
                Some(StoreError::Locked { .. } | StoreError::Open { .. })
            )
    });
    ExitCode::from(if config_error { EXIT_CONFIG } else { 1 })
}
