//! One entry of `folders`: its path (no two folders may overlap), how it is watched, which
//! files it ignores and how deletes on either side are handled. Its target is parsed in
//! `target`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde_yaml::Value;

use super::raw::{
    boolean, invalid, list, mapping, one_of, path_in, percentage, positive_duration, resolved, Bad,
    Section,
};
use super::target::{
    dedupe, kickoff_target, launch_target, route_target, task_target, After, Launch, Target,
};

const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// How a folder learns about changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, unless the folder is on a network or FUSE filesystem, which is polled.
    Auto,
    Inotify,
    /// Scanned every `interval`: for shares where inotify sees nothing.
    Poll {
        interval: Duration,
    },
}

#[derive(Clone, Debug)]
pub struct Folder {
    /// Canonical and absolute.
    pub path: PathBuf,
    pub target: Target,
    pub recursive: bool,
    pub delete_remote: bool,
    /// What happens to a synced file someone removed from the field in Tallyfy.
    pub remote_removed: RemoteRemoved,
    /// The patterns as written, for messages.
    pub ignore: Vec<String>,
    /// `ignore` compiled; match it against the file name, not the whole path.
    pub ignore_set: GlobSet,
    pub watch: WatchMode,
    /// Deletes held when one scan would delete more than this percentage of the folder's
    /// synced files (folders with fewer than `MAX_DELETE_MIN_FILES` synced files are exempt).
    pub max_delete_percent: u8,
}

impl Folder {
    /// Whether `path` lies in the directory a launch folder moves its launched files to, when
    /// that is inside the folder: those files are done and never taken again.
    pub fn excludes(&self, path: &Path) -> bool {
        match &self.target {
            Target::Launch(Launch {
                after: After::Move { to },
                ..
            }) => to.starts_with(&self.path) && path.starts_with(to),
            _ => false,
        }
    }
}

/// `remote_removed`: what to do when a synced file's asset leaves the field in Tallyfy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RemoteRemoved {
    /// Warn, show it in `status`, and upload it again only when the local file changes.
    #[default]
    Leave,
    /// Put it back (the same asset if it still exists, else upload it again): the folder
    /// stays the source of truth.
    Restore,
}

impl std::fmt::Display for RemoteRemoved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteRemoved::Leave => "leave",
            RemoteRemoved::Restore => "restore",
        })
    }
}

/// Below this many synced files a folder's deletes are never held: a share of a handful of
/// files says little.
pub const MAX_DELETE_MIN_FILES: usize = 10;

/// Path, written form and canonical form of every folder seen so far, to catch overlaps.
pub(super) type Claimed = Vec<(String, String, PathBuf)>;

pub(super) fn folder(
    mut s: Section<'_>,
    base: &Path,
    claimed: &mut Claimed,
    max_delete: u8,
) -> Option<Folder> {
    let path = s.req("path", |value| directory(value, base));
    if let Some((written, canonical)) = &path {
        let key = s.at("path");
        // Nested folders would upload the inner folder's files twice.
        for (other_key, other_written, other) in claimed.iter() {
            if canonical.starts_with(other) || other.starts_with(canonical) {
                s.problems.add(format!(
                    "{key} {written:?}: overlaps {other_key} {other_written:?}"
                ));
            }
        }
        claimed.push((key, written.clone(), canonical.clone()));
    }
    let task = s
        .get("task", mapping)
        .map(|map| map.map(|map| task_target(s.child("task", map))));
    let kickoff = s
        .get("kickoff", mapping)
        .map(|map| map.map(|map| kickoff_target(s.child("kickoff", map))));
    let folder_path = path.as_ref().map(|(_, canonical)| canonical.as_path());
    let launch = s
        .get("launch", mapping)
        .map(|map| map.map(|map| launch_target(s.child("launch", map), base, folder_path)));
    let route = s
        .get("route", mapping)
        .map(|map| map.map(|map| route_target(s.child("route", map))));
    let dedupe = s.get("dedupe", dedupe);
    let given: Vec<&str> = [
        ("task", matches!(task, Ok(Some(_)))),
        ("kickoff", matches!(kickoff, Ok(Some(_)))),
        ("launch", matches!(launch, Ok(Some(_)))),
        ("route", matches!(route, Ok(Some(_)))),
    ]
    .into_iter()
    .filter(|(_, found)| *found)
    .map(|(name, _)| name)
    .collect();
    let target = match (task, kickoff, launch, route) {
        _ if given.len() > 1 => {
            let found = match given.len() {
                2 => "both".to_string(),
                _ => given.join(", "),
            };
            let problem = format!(
                "{}: needs exactly one of task, kickoff, launch or route (found {found})",
                s.path
            );
            s.problems.add(problem);
            None
        }
        (Ok(Some(target)), _, _, _) | (_, Ok(Some(target)), _, _) | (_, _, _, Ok(Some(target))) => {
            target
        }
        (_, _, Ok(Some(launch)), _) => launch.map(|mut launch| {
            match dedupe {
                Ok(Some(folder_level)) if launch.dedupe_given => {
                    let problem = format!(
                        "{}: dedupe is set both here and in launch; keep one",
                        s.at("dedupe")
                    );
                    s.problems.add(problem);
                    launch.launch.dedupe = folder_level;
                }
                Ok(Some(folder_level)) => launch.launch.dedupe = folder_level,
                _ => {}
            }
            Target::Launch(launch.launch)
        }),
        (Ok(None), Ok(None), Ok(None), Ok(None)) => {
            let problem = format!(
                "{}: needs exactly one of task, kickoff, launch or route (found neither)",
                s.path
            );
            s.problems.add(problem);
            None
        }
        _ => None,
    };
    if matches!(dedupe, Ok(Some(_))) && !matches!(target, Some(Target::Launch(_)) | None) {
        let problem = format!("{}: only applies to launch folders", s.at("dedupe"));
        s.problems.add(problem);
    }
    let routed = matches!(target, Some(Target::Route(_)));
    let recursive = s.opt("recursive", boolean);
    if routed && recursive == Some(false) {
        let problem = format!(
            "{}: a route folder always watches its subfolders (each stands for a process); remove recursive",
            s.at("recursive")
        );
        s.problems.add(problem);
    }
    let recursive = routed || recursive.unwrap_or(false);
    let delete_remote = s.opt("delete_remote", boolean).unwrap_or(true);
    let remote_removed = s
        .opt("remote_removed", |value| {
            one_of(
                value,
                &[
                    ("leave", RemoteRemoved::Leave),
                    ("restore", RemoteRemoved::Restore),
                ],
            )
        })
        .unwrap_or_default();
    let max_delete_percent = s.opt("max_delete", percentage).unwrap_or(max_delete);
    let watch = watch_mode(&mut s);
    let ignore_key = s.at("ignore");
    let globs: Vec<Glob> = s
        .opt("ignore", list)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(index, value)| {
            s.problems
                .check(&format!("{ignore_key}[{index}]"), value, glob)
        })
        .collect();
    let mut set = GlobSetBuilder::new();
    for glob in &globs {
        set.add(glob.clone());
    }
    let ignore_set = set
        .build()
        .map_err(|error| {
            s.problems
                .add(format!("{ignore_key}: cannot compile: {error}"))
        })
        .ok();
    s.finish();
    Some(Folder {
        path: path?.1,
        target: target?,
        recursive,
        delete_remote,
        remote_removed,
        ignore: globs.iter().map(|glob| glob.glob().to_string()).collect(),
        ignore_set: ignore_set?,
        watch: watch?,
        max_delete_percent,
    })
}

/// `watch: auto | inotify | poll` and `poll: 30s` (which implies `watch: poll`).
fn watch_mode(s: &mut Section<'_>) -> Option<WatchMode> {
    let watch = s.get("watch", |value| {
        one_of(
            value,
            &[("auto", "auto"), ("inotify", "inotify"), ("poll", "poll")],
        )
    });
    let poll = s.get("poll", positive_duration);
    match (watch, poll) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(None | Some("auto")), Ok(None)) => Some(WatchMode::Auto),
        (Ok(Some("inotify")), Ok(None)) => Some(WatchMode::Inotify),
        (Ok(Some("inotify")), Ok(Some(_))) => {
            let problem = format!("{}: watch: inotify cannot be combined with poll", s.path);
            s.problems.add(problem);
            None
        }
        (Ok(_), Ok(interval)) => Some(WatchMode::Poll {
            interval: interval.unwrap_or(DEFAULT_POLL_INTERVAL),
        }),
    }
}

/// The path as written (for messages) and canonicalized (so overlaps and
/// symlinks are judged on what is really watched). A folder not there yet (a share not
/// mounted at boot) is no config error: the daemon shows it as not syncing and waits for it.
fn directory(value: &Value, base: &Path) -> Result<(String, PathBuf), Bad> {
    let path = path_in(base)(value)?;
    let written = value.as_str().unwrap_or_default().to_string();
    match fs::metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok((written, resolved(&path))),
        Err(error) => invalid(format!("cannot access: {error}")),
        Ok(meta) if !meta.is_dir() => invalid("not a directory"),
        Ok(_) => match fs::canonicalize(&path) {
            Ok(canonical) => Ok((written, canonical)),
            Err(error) => invalid(format!("cannot access: {error}")),
        },
    }
}

fn glob(value: &Value) -> Result<Glob, Bad> {
    let Value::String(pattern) = value else {
        return Err(Bad::Type("a glob string"));
    };
    // Matched against bare file names, so `*` may as well cross `/`.
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .or_else(|error| invalid(format!("not a valid glob: {}", error.kind())))
}
