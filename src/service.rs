//! Process-level plumbing: turns SIGTERM and SIGINT into the one shutdown token every stage
//! watches. A second signal ends the process at once, for an operator who will not wait.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub fn cancel_on_signals(cancel: CancellationToken) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                let name = if signal == SIGTERM {
                    "SIGTERM"
                } else {
                    "SIGINT"
                };
                if received == 1 {
                    info!(
                        signal = name,
                        "stopping: no new work; in-flight requests get up to 10 s"
                    );
                    cancel.cancel();
                } else {
                    warn!(
                        signal = name,
                        "second signal: exiting now; unfinished files resume at the next start"
                    );
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}
