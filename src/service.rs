//! Process-level plumbing between the daemon and its service manager. Receives SIGTERM, SIGINT
//! and SIGHUP, and the daemon's milestones; emits the one shutdown token every stage watches
//! and sd_notify messages (READY, STATUS, RELOADING, STOPPING, WATCHDOG), which are no-ops
//! without NOTIFY_SOCKET. Owns the watchdog: it pings only while the settle loop's heartbeat
//! is fresh, so a wedged daemon is restarted rather than kept alive by an idle timer.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// SIGHUPs not yet acted on (several in a row count as one).
#[derive(Clone, Default)]
pub struct Reloads(Arc<tokio::sync::Notify>);

impl Reloads {
    /// Waits for the next SIGHUP (returns at once for one that came while nobody waited).
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// Turns SIGTERM and SIGINT into `cancel`, and SIGHUP into a reload request.
pub fn cancel_on_signals(cancel: CancellationToken) -> std::io::Result<Reloads> {
    let reloads = Reloads::default();
    let reload = reloads.0.clone();
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                let name = match signal {
                    SIGTERM => "SIGTERM",
                    SIGINT => "SIGINT",
                    _ => {
                        reload.notify_one();
                        continue;
                    }
                };
                received += 1;
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
    Ok(reloads)
}

/// Whether a service manager listens (NOTIFY_SOCKET is set).
pub fn notify_enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Start-up is complete: systemd marks a `Type=notify` unit active only now.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], true);
}

/// A one-line summary that `systemctl status` shows.
pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)], false);
}

/// A reload has begun; call `notify_ready` when it is done. Carries the monotonic time, which
/// systemd 253 and later require with RELOADING=1.
pub fn notify_reloading() {
    let mut states = vec![NotifyState::Reloading];
    states.extend(NotifyState::monotonic_usec_now().ok());
    send(&states, true);
}

pub fn notify_stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)], true);
}

fn send(states: &[NotifyState], important: bool) {
    if let Err(error) = sd_notify::notify(states) {
        if important {
            warn!(%error, "cannot notify the service manager");
        } else {
            debug!(%error, "cannot notify the service manager");
        }
    }
}

/// Proof of life from the loop that does the work. Cheap to clone and to beat; off (never
/// wakes anyone) unless systemd asked for a watchdog with `WatchdogSec=`.
#[derive(Clone)]
pub struct Heartbeat {
    /// Milliseconds after `start` of the last beat.
    last: Arc<AtomicU64>,
    start: Instant,
    /// How often the worker must beat; `None` when there is no watchdog.
    every: Option<Duration>,
}

impl Heartbeat {
    /// Beats every quarter of the watchdog timeout, so a ping at every half finds a fresh one.
    pub fn from_env() -> Heartbeat {
        Heartbeat::new(watchdog_timeout().map(|timeout| timeout / 4))
    }

    pub fn off() -> Heartbeat {
        Heartbeat::new(None)
    }

    fn new(every: Option<Duration>) -> Heartbeat {
        Heartbeat {
            last: Arc::new(AtomicU64::new(0)),
            start: Instant::now(),
            every,
        }
    }

    pub fn beat(&self) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        self.last.store(elapsed, Ordering::Relaxed);
    }

    /// Resolves when the next beat is due; never when the watchdog is off, so a loop that
    /// selects on it wakes no more often than it otherwise would.
    pub async fn due(&self) {
        match self.every {
            Some(every) => tokio::time::sleep(every).await,
            None => std::future::pending().await,
        }
    }

    /// Awaits `work` and keeps beating meanwhile: for waits that are progress (a long folder
    /// scan, a full job queue during an outage), which must not get the daemon restarted.
    pub async fn during<F: Future>(&self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = self.due() => self.beat(),
            }
        }
    }

    fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// `WatchdogSec=` of the unit, when it is set and meant for this process.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog every half timeout while the heartbeat is younger than that; without
/// a watchdog it returns at once. Runs until `cancel`.
pub async fn run_watchdog(heartbeat: Heartbeat, cancel: CancellationToken) {
    let Some(timeout) = watchdog_timeout() else {
        return;
    };
    let every = timeout / 2;
    let mut withheld = false;
    heartbeat.beat();
    loop {
        let age = heartbeat.age();
        if age <= every {
            send(&[NotifyState::Watchdog], false);
            withheld = false;
        } else if !withheld {
            warn!(
                silent_secs = age.as_secs(),
                "the settle loop has stopped reporting; withholding watchdog pings so that systemd restarts the daemon"
            );
            withheld = true;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
