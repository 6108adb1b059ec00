//! Where a burst's time went, from the daemon's own log: for each file the times of its
//! "uploading", "uploaded" and "attached" lines, lined up with the moment the files were moved in.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::report::percentile_ms;

#[derive(Default)]
struct Stages {
    uploading: Option<f64>,
    uploaded: Option<f64>,
    attached: Option<f64>,
}

/// A few lines on the burst's stages; empty when the log has none of its files.
pub fn burst(log: &str, file_prefix: &str, moved_at: SystemTime) -> String {
    let mut files: HashMap<&str, Stages> = HashMap::new();
    for line in log.lines() {
        // The daemon logs a file as a name inside its folder or as a whole path.
        let Some(file) = field(line, "file=")
            .map(|file| file.rsplit('/').next().unwrap_or(file))
            .filter(|name| name.starts_with(file_prefix))
        else {
            continue;
        };
        let Some(at) = line.get(..27).and_then(unix_seconds) else {
            continue;
        };
        let stages = files.entry(file).or_default();
        let message = line.get(27..).unwrap_or_default().trim_start();
        let message = message.strip_prefix("INFO").unwrap_or(message).trim_start();
        if message.starts_with("uploading") {
            stages.uploading.get_or_insert(at);
        } else if message.starts_with("uploaded") {
            stages.uploaded.get_or_insert(at);
        } else if message.starts_with("attached") {
            stages.attached.get_or_insert(at);
        }
    }
    if files.is_empty() {
        return String::new();
    }
    let moved = moved_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let gaps = |from: fn(&Stages) -> Option<f64>, to: fn(&Stages) -> Option<f64>| {
        let samples: Vec<Duration> = files
            .values()
            .filter_map(|stages| {
                Some(Duration::from_secs_f64(
                    (to(stages)? - from(stages)?).max(0.0),
                ))
            })
            .collect();
        format!(
            "p50 {:.1} ms, p99 {:.1} ms",
            percentile_ms(&samples, 50.0),
            percentile_ms(&samples, 99.0)
        )
    };
    let first = |pick: fn(&Stages) -> Option<f64>| {
        files
            .values()
            .filter_map(pick)
            .fold(f64::INFINITY, f64::min)
            - moved
    };
    let last = |pick: fn(&Stages) -> Option<f64>| {
        files
            .values()
            .filter_map(pick)
            .fold(f64::NEG_INFINITY, f64::max)
            - moved
    };
    let uploading = |s: &Stages| s.uploading;
    let uploaded = |s: &Stages| s.uploaded;
    let attached = |s: &Stages| s.attached;
    format!(
        "- daemon burst timeline from its log ({} files), seconds after the move: first \"uploading\" {:.3}, \
         last \"uploading\" {:.3}, first \"attached\" {:.3}, last \"attached\" {:.3}\n\
         - per file: uploading → uploaded {}; uploaded → attached {}\n",
        files.len(),
        first(uploading),
        last(uploading),
        first(attached),
        last(attached),
        gaps(uploading, uploaded),
        gaps(uploaded, attached),
    )
}

/// The value of `key` (e.g. `file=`) in a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {key}"))? + 1 + key.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest))
}

/// When the first log line containing `needle` was written, after `since`.
pub fn logged_at(log: &str, needle: &str, since: SystemTime) -> Option<Duration> {
    let line = log.lines().find(|line| line.contains(needle))?;
    let at = line.get(..27).and_then(unix_seconds)?;
    let since = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    Some(Duration::from_secs_f64((at - since).max(0.0)))
}

/// `2026-01-02T03:04:05.678901Z` as Unix seconds.
fn unix_seconds(stamp: &str) -> Option<f64> {
    let number = |range: std::ops::Range<usize>| stamp.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute) = (number(11..13)?, number(14..16)?);
    let second: f64 = stamp.get(17..26)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3_600 + minute * 60) as f64 + second)
}
