//! The `tallyfy-sync` binary: parse the command line, run (each command sets up logging once
//! it knows the configured format), map the outcome to an exit status (0 success,
//! 78 configuration error, 1 anything else).

use std::process::ExitCode;

use clap::Parser;
use tallyfy_sync::cli::{self, Cli};
use tallyfy_sync::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            logging::fatal(&error);
            cli::exit_code(&error)
        }
    }
}
