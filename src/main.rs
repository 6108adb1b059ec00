//! The `tallyfy-sync` binary: parse the command line, set up logging, run, map the outcome to
//! an exit status (0 success, 78 configuration error, 1 anything else).

use std::process::ExitCode;

use clap::Parser;
use tallyfy_sync::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tallyfy_sync::logging::init();
    match cli::execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tallyfy-sync: {error:#}");
            cli::exit_code(&error)
        }
    }
}
