//! What the kernel says about a process: CPU time, resident memory and its peak, process groups,
//! and the machine itself, all read from /proc.

use std::time::Duration;

/// utime + stime (+ cutime + cstime with `children`) of a process, or `None` once it is gone.
pub fn cpu(pid: i32, children: bool) -> Option<Duration> {
    let fields = stat_fields(pid)?;
    // After the command name, field 3 (state) is index 0: utime is field 14, stime 15, cutime 16, cstime 17.
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    let mut total = ticks(11)? + ticks(12)?;
    if children {
        total += ticks(13)? + ticks(14)?;
    }
    Some(Duration::from_secs_f64(total as f64 / clock_ticks()))
}

/// CPU time of every live process in the group, with what they collected from exited children.
pub fn group_cpu(pgid: i32) -> Duration {
    group(pgid)
        .into_iter()
        .filter_map(|pid| cpu(pid, true))
        .sum()
}

/// Summed VmRSS of every live process in the group, in KiB.
pub fn group_rss_kib(pgid: i32) -> u64 {
    group(pgid)
        .into_iter()
        .filter_map(|pid| status_kib(pid, "VmRSS"))
        .sum()
}

fn group(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat_fields(pid)
                .and_then(|fields| fields.get(2)?.parse::<i32>().ok())
                .is_some_and(|group| group == pgid)
        })
        .collect()
}

/// A `kB` line of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Sets the process's VmHWM back to its current RSS, so that a later VmHWM is the peak of what
/// happened in between.
pub fn reset_peak(pid: i32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    Some(after_name.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Cores, CPU model, memory, kernel and load, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| {
                line.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {memory_gib:.1} GiB memory, Linux {}, load average {}",
        kernel.trim(),
        load()
    )
}

/// The 1, 5 and 15 minute load averages.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
