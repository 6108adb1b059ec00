//! How far long work has got, for people. Receives counts: from `queue`, the files of the
//! daemon's current backlog (everything settled since the queue was last empty) as they are
//! taken and finished; from `verify --download` and `restore`, the files and bytes downloaded.
//! Emits the figures (done of total, bytes, rates, time left) as the daemon's progress line and
//! `status`'s `progress` object, and a bar on a terminal. Owns the backlog's tally and the bar;
//! a leaf: it reads the counters and imports nothing else.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::METRICS;

/// A bar is drawn again at most this often (a download of many small files would otherwise
/// spend its time writing to the terminal).
const REDRAW_EVERY: Duration = Duration::from_millis(100);

/// `[#########···········]  45% `
pub fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let total = total.max(1);
    let filled = (done.min(total) * WIDTH / total) as usize;
    format!(
        "[{}{}] {:>3}% ",
        "#".repeat(filled),
        "·".repeat(WIDTH as usize - filled),
        done.min(total) * 100 / total
    )
}

/// The daemon's backlog as `status --json` shows it (`progress`), and its progress line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    /// Files finished (attached, deleted, skipped or failed) since the backlog began.
    pub files_done: u64,
    /// Those taken so far plus those settled and waiting for a worker.
    pub files_total: u64,
    /// Files uploaded since the backlog began, and uploads on the wire now.
    pub uploaded: u64,
    pub uploading: u64,
    /// Bytes uploaded, of the sizes of the files taken so far.
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub elapsed_secs: u64,
    pub files_per_sec: f64,
    pub bytes_per_sec: u64,
    /// Estimated time left; `None` until anything has finished.
    pub eta_secs: Option<u64>,
}

impl Backlog {
    /// "120/1,240 files done (130 uploaded, 4 uploading), 3.1 MiB of 40.2 MiB, 12.0 files/s,
    /// 1.0 MiB/s; about 1m 33s left"
    pub fn line(&self) -> String {
        let left = match self.eta_secs {
            Some(secs) => format!("about {} left", duration(secs)),
            None => "nothing finished yet".to_string(),
        };
        format!(
            "{}/{} files done ({} uploaded, {} uploading), {} of {}, {:.1} files/s, {}/s; {left}",
            self.files_done,
            self.files_total,
            self.uploaded,
            self.uploading,
            size(self.bytes_done),
            size(self.bytes_total),
            self.files_per_sec,
            size(self.bytes_per_sec),
        )
    }
}

/// The backlog being counted; `None` while the queue is empty.
struct Tally {
    started: Instant,
    received: u64,
    done: u64,
    waiting: u64,
    bytes_total: u64,
    /// The counters when the backlog began.
    uploads_before: u64,
    bytes_before: u64,
}

static BACKLOG: Mutex<Option<Tally>> = Mutex::new(None);

fn tally() -> std::sync::MutexGuard<'static, Option<Tally>> {
    BACKLOG.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// `queue` took a file of `size` bytes, with `waiting` more settled behind it; the first file
/// after the queue was empty starts a new backlog.
pub fn taken(size: u64, waiting: usize) {
    let mut tally = tally();
    let tally = tally.get_or_insert_with(|| {
        let counters = METRICS.progress();
        Tally {
            started: Instant::now(),
            received: 0,
            done: 0,
            waiting: 0,
            bytes_total: 0,
            uploads_before: counters.uploads,
            bytes_before: counters.bytes,
        }
    });
    tally.received += 1;
    tally.bytes_total += size;
    tally.waiting = waiting as u64;
}

/// `queue` finished a file; `caught_up` when nothing else is in flight or waiting, which ends
/// the backlog. Returns its last figures then.
pub fn finished(waiting: usize, caught_up: bool) -> Option<Backlog> {
    let mut tally = tally();
    if let Some(current) = tally.as_mut() {
        current.done += 1;
        current.waiting = waiting as u64;
    }
    if caught_up {
        tally.take().map(|ended| figures(&ended))
    } else {
        None
    }
}

/// The queue stopped (shutdown, or a reload starting another): its backlog is no more; what
/// was left of it is counted again by the next queue's first scan.
pub fn abandoned() {
    tally().take();
}

/// The current backlog's figures; `None` while there is none.
pub fn current() -> Option<Backlog> {
    tally().as_ref().map(figures)
}

fn figures(tally: &Tally) -> Backlog {
    let counters = METRICS.progress();
    let elapsed = tally.started.elapsed();
    let seconds = elapsed.as_secs_f64().max(0.001);
    let files_total = tally.received + tally.waiting;
    let bytes_done = counters.bytes.saturating_sub(tally.bytes_before);
    let files_per_sec = tally.done as f64 / seconds;
    let bytes_per_sec = bytes_done as f64 / seconds;
    // Uploads take most of the time while bytes are left to send; after that, the attaches.
    let eta = if bytes_done < tally.bytes_total && bytes_per_sec > 0.0 {
        Some((tally.bytes_total - bytes_done) as f64 / bytes_per_sec)
    } else if files_per_sec > 0.0 {
        Some(files_total.saturating_sub(tally.done) as f64 / files_per_sec)
    } else {
        None
    };
    Backlog {
        files_done: tally.done,
        files_total,
        uploaded: counters.uploads.saturating_sub(tally.uploads_before),
        uploading: counters.uploading,
        bytes_done,
        bytes_total: tally.bytes_total,
        elapsed_secs: elapsed.as_secs(),
        files_per_sec: (files_per_sec * 10.0).round() / 10.0,
        bytes_per_sec: bytes_per_sec as u64,
        eta_secs: eta.map(|secs| secs.ceil() as u64),
    }
}

/// A progress bar on stderr for a command that works through many files, drawn only while
/// stderr is a terminal and cleared (`clear`) before anything else is printed there or the
/// report goes out: `[####····]  50% downloading 3/6 files, 1.2 MiB, 3.4 MiB/s: name.pdf`.
pub struct Bar {
    on: bool,
    verb: &'static str,
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    bytes: AtomicU64,
    /// When it was last drawn, and the name shown.
    drawn: Mutex<(Option<Instant>, String)>,
}

impl Bar {
    /// `verb` says what is done to each file ("downloading"); `on` is false for output that
    /// scripts read (the bar then draws nothing whatever stderr is).
    pub fn new(verb: &'static str, on: bool) -> Bar {
        Bar {
            on: on && std::io::stderr().is_terminal(),
            verb,
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            drawn: Mutex::new((None, String::new())),
        }
    }

    /// More files to go (a total that is only known folder by folder grows as it is).
    pub fn add_total(&self, files: usize) {
        self.total.fetch_add(files as u64, Relaxed);
    }

    /// Work on the file `name` begins.
    pub fn start(&self, name: &str) {
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        drawn.1 = name.to_string();
        drawn.0 = None;
        drop(drawn);
        self.draw();
    }

    pub fn add_bytes(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Relaxed);
        self.draw();
    }

    /// The current file is done.
    pub fn finish(&self) {
        self.done.fetch_add(1, Relaxed);
    }

    fn draw(&self) {
        if !self.on {
            return;
        }
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if drawn.0.is_some_and(|at| at.elapsed() < REDRAW_EVERY) {
            return;
        }
        drawn.0 = Some(Instant::now());
        let (done, total) = (self.done.load(Relaxed), self.total.load(Relaxed));
        let bytes = self.bytes.load(Relaxed);
        let rate = bytes as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[K{}{} {}/{total} files, {}, {}/s: {}",
            bar(done, total),
            self.verb,
            (done + 1).min(total.max(1)),
            size(bytes),
            size(rate as u64),
            crate::text::escaped(&drawn.1)
        );
        let _ = stderr.flush();
    }

    /// Takes the bar off the screen, before a line is printed or the report goes out; the
    /// next `start` draws it again.
    pub fn clear(&self) {
        if !self.on {
            return;
        }
        let drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if drawn.0.is_some() {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            let _ = std::io::stderr().flush();
        }
    }
}

fn duration(secs: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(secs))
}

/// "1.2 MiB"
pub fn size(bytes: u64) -> String {
    crate::filter::humansize(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_the_share_done() {
        assert_eq!(bar(0, 10), format!("[{}]   0% ", "·".repeat(24)));
        assert_eq!(
            bar(5, 10),
            format!("[{}{}]  50% ", "#".repeat(12), "·".repeat(12))
        );
        assert_eq!(bar(12, 10), format!("[{}] 100% ", "#".repeat(24)));
    }

    #[test]
    fn a_backlog_line_says_files_bytes_rates_and_time_left() {
        let backlog = Backlog {
            files_done: 120,
            files_total: 300,
            uploaded: 130,
            uploading: 4,
            bytes_done: 3 << 20,
            bytes_total: 12 << 20,
            elapsed_secs: 10,
            files_per_sec: 12.0,
            bytes_per_sec: 300 << 10,
            eta_secs: Some(93),
        };
        assert_eq!(
            backlog.line(),
            "120/300 files done (130 uploaded, 4 uploading), 3.0 MiB of 12.0 MiB, 12.0 files/s, 300.0 KiB/s; about 1m 33s left"
        );
    }
}
