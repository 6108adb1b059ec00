//! The remote field a folder feeds (`task`, `kickoff`, `launch` or `route`) and how each is
//! read from the config, with the placeholders (`{stem}`) a launch fills its process name and
//! kick-off fields from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use super::raw::{
    boolean, duration, id, invalid, kind, mapping, one_of, path_in, resolved, scalar, Bad, Section,
};

/// The remote file field a folder feeds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A form field of a task in a process run.
    Task {
        run_id: String,
        task_id: String,
        capture_id: String,
        step_id: Option<String>,
        checklist_id: Option<String>,
    },
    /// A form field of a one-off task: a task that belongs to no process (`task` without
    /// `run_id`). It differs from a task in a process only in where the task is read and written
    /// and in what an upload names as its subject.
    OneOff { task_id: String, capture_id: String },
    /// A kick-off (prerun) field of a template.
    Kickoff {
        checklist_id: String,
        field_id: String,
    },
    /// Every new file starts a process of a template, with the file in a kick-off field.
    Launch(Launch),
    /// Each subfolder stands for one running process of a template; its files go to the
    /// file field of that process's task.
    Route(Route),
}

/// `folders[].route`: a subfolder per running process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The template whose active processes the subfolders stand for.
    pub checklist_id: String,
    /// The file field (of one of the template's steps) files go to, in every process.
    pub capture_id: String,
    pub by: RouteBy,
    /// Keep a subfolder for every active process (the daemon then writes the folder).
    pub create_folders: bool,
    /// How often the active processes are read when no file asks for one (`refresh_interval`).
    pub refresh_interval: Duration,
}

/// `route.refresh_interval` by default: a new process needs no file to be found sooner than
/// this, unless its subfolder is to be created, which people wait for.
pub const ROUTE_REFRESH: Duration = Duration::from_secs(180);
pub const ROUTE_REFRESH_CREATING: Duration = Duration::from_secs(30);
/// The shortest `route.refresh_interval`: the list costs a request per page each time.
pub const ROUTE_REFRESH_MIN: Duration = Duration::from_secs(5);

/// What a route folder's subfolder names (`route.by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteBy {
    /// The process name (the default).
    Name,
    /// The process id.
    Id,
}

/// `folders[].launch`: one process per file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Launch {
    /// The template (blueprint) launched.
    pub checklist_id: String,
    /// The kick-off file field that gets the file.
    pub field_id: String,
    /// The process name (`name`, default `{stem}`).
    pub name: Template,
    /// Other kick-off fields by id, filled from the file's path (`fields`), in config order.
    pub fields: Vec<(String, Template)>,
    pub after: After,
    pub dedupe: Dedupe,
}

/// What happens to a file once its process is started and recorded (`launch.after`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum After {
    Keep,
    Delete,
    /// Moved into `to` (`launch.move_to`, default FOLDER/processed), keeping its path
    /// relative to the folder.
    Move {
        to: PathBuf,
    },
}

/// Whether the same content dropped again starts another process (`dedupe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dedupe {
    /// Content already launched from this folder launches nothing (the default).
    Content,
    None,
}

/// A value with placeholders (`{stem}`), parsed once: `{{` and `}}` stand for braces.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Piece {
    Text(String),
    Value(Placeholder),
}

/// What a placeholder stands for; the launch stage supplies the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placeholder {
    /// The file name with its extension.
    Filename,
    /// The file name without its last extension.
    Stem,
    /// The last extension, without the dot (empty when there is none).
    Ext,
    /// The name of the directory the file is in (the folder's own name at its top level).
    Parent,
    /// The path relative to the folder.
    Relpath,
    /// Today's local date, YYYY-MM-DD.
    Date,
    /// The file's modification time, local, YYYY-MM-DD HH:MM.
    Mtime,
}

impl Placeholder {
    const ALL: [(&'static str, Placeholder); 7] = [
        ("filename", Placeholder::Filename),
        ("stem", Placeholder::Stem),
        ("ext", Placeholder::Ext),
        ("parent", Placeholder::Parent),
        ("relpath", Placeholder::Relpath),
        ("date", Placeholder::Date),
        ("mtime", Placeholder::Mtime),
    ];
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            let tail = &rest[at..];
            if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
                literal.push_str(&tail[..1]);
                rest = after;
                continue;
            }
            if tail.starts_with('}') {
                return Err("a } without its { (write }} for a brace)".into());
            }
            let Some(end) = tail.find('}') else {
                return Err("a { without its } (write {{ for a brace)".into());
            };
            let name = &tail[1..end];
            let Some((_, placeholder)) = Placeholder::ALL.iter().find(|(known, _)| *known == name)
            else {
                let known: Vec<String> = Placeholder::ALL
                    .iter()
                    .map(|(known, _)| format!("{{{known}}}"))
                    .collect();
                return Err(format!(
                    "unknown placeholder {{{name}}} (expected one of {})",
                    known.join(", ")
                ));
            };
            if !literal.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(Piece::Value(*placeholder));
            rest = &tail[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The text with each placeholder replaced by `value` of it.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        self.pieces
            .iter()
            .map(|piece| match piece {
                Piece::Text(text) => text.clone(),
                Piece::Value(placeholder) => value(*placeholder),
            })
            .collect()
    }

    /// The bytes the template adds whatever the file: a lower bound of every rendering.
    pub fn literal_len(&self) -> usize {
        self.render(|_| String::new()).len()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => f.write_str(&text.replace('{', "{{").replace('}', "}}"))?,
                Piece::Value(placeholder) => {
                    let name = Placeholder::ALL
                        .iter()
                        .find(|(_, known)| known == placeholder)
                        .map_or("", |(name, _)| name);
                    write!(f, "{{{name}}}")?
                }
            }
        }
        Ok(())
    }
}

impl Target {
    /// Stable short key naming the remote field, e.g. "task:RUN/TASK/CAPTURE" or "kickoff:CHECKLIST/FIELD".
    /// The task target a key "task:RUN/TASK/CAPTURE" names: where a route folder's record says
    /// its file went.
    pub fn of_task_key(key: &str) -> Option<Target> {
        let rest = key.strip_prefix("task:")?;
        let mut parts = rest.splitn(3, '/');
        Some(Target::Task {
            run_id: parts.next()?.to_string(),
            task_id: parts.next()?.to_string(),
            capture_id: parts.next()?.to_string(),
            step_id: None,
            checklist_id: None,
        })
    }

    /// The process a task target's task belongs to: `None` for a one-off task (and for
    /// targets that are not one task).
    pub fn run_id(&self) -> Option<&str> {
        match self {
            Target::Task { run_id, .. } => Some(run_id),
            _ => None,
        }
    }

    pub fn key(&self) -> String {
        match self {
            Target::Task {
                run_id,
                task_id,
                capture_id,
                ..
            } => format!("task:{run_id}/{task_id}/{capture_id}"),
            Target::OneOff {
                task_id,
                capture_id,
            } => format!("oneoff:{task_id}/{capture_id}"),
            Target::Kickoff {
                checklist_id,
                field_id,
            } => format!("kickoff:{checklist_id}/{field_id}"),
            // Folders launching the same template with different names or fields are verified
            // and served apart, so the rest of the launch settings is part of the key.
            Target::Launch(launch) => format!(
                "launch:{}/{}/{}",
                launch.checklist_id,
                launch.field_id,
                &blake3::hash(format!("{launch:?}").as_bytes()).to_hex()[..12]
            ),
            Target::Route(route) => format!(
                "route:{}/{}/{}",
                route.checklist_id,
                route.capture_id,
                match route.by {
                    RouteBy::Name => "name",
                    RouteBy::Id => "id",
                }
            ),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Task {
                run_id,
                task_id,
                capture_id,
                ..
            } => write!(f, "task {task_id} in run {run_id}, field {capture_id}"),
            Target::OneOff {
                task_id,
                capture_id,
            } => write!(f, "one-off task {task_id}, field {capture_id}"),
            Target::Kickoff {
                checklist_id,
                field_id,
            } => write!(f, "kick-off field {field_id} of template {checklist_id}"),
            Target::Launch(launch) => write!(
                f,
                "a process of template {} per file, in kick-off field {}",
                launch.checklist_id, launch.field_id
            ),
            Target::Route(route) => write!(
                f,
                "field {} of the active processes of template {}, a subfolder per process {}",
                route.capture_id,
                route.checklist_id,
                match route.by {
                    RouteBy::Name => "name",
                    RouteBy::Id => "id",
                }
            ),
        }
    }
}

/// A task in a process (`run_id` given) or a one-off task (no `run_id`, or `one_off: true`).
pub(super) fn task_target(mut s: Section<'_>) -> Option<Target> {
    let run_id = s.get("run_id", id);
    let task_id = s.req("task_id", id);
    let capture_id = s.req("capture_id", id);
    let step_id = s.opt("step_id", id);
    let checklist_id = s.opt("checklist_id", id);
    let one_off = s.get("one_off", boolean);
    let run_id = match (run_id, one_off) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(Some(_)), Ok(Some(true))) => {
            let problem = format!(
                "{}: a one-off task belongs to no process, yet run_id is set; remove one_off for a task in a process, or run_id for a one-off task",
                s.at("one_off")
            );
            s.problems.add(problem);
            None
        }
        (Ok(None), Ok(Some(false))) => {
            let problem = format!(
                "{}: required (one_off is false: the task belongs to a process)",
                s.at("run_id")
            );
            s.problems.add(problem);
            None
        }
        (Ok(run_id), Ok(_)) => Some(run_id),
    };
    // A one-off upload carrying either is refused: the task has no step and no template.
    if let Some(None) = run_id {
        let given = [
            ("step_id", "step", step_id.is_some()),
            ("checklist_id", "template", checklist_id.is_some()),
        ];
        for (key, what, _) in given.into_iter().filter(|(_, _, given)| *given) {
            let problem = format!(
                "{}: a one-off task has no {what}; remove it (or set run_id for a task in a process)",
                s.at(key)
            );
            s.problems.add(problem);
        }
    }
    s.finish();
    match run_id? {
        Some(run_id) => Some(Target::Task {
            run_id,
            task_id: task_id?,
            capture_id: capture_id?,
            step_id,
            checklist_id,
        }),
        None if step_id.is_some() || checklist_id.is_some() => None,
        None => Some(Target::OneOff {
            task_id: task_id?,
            capture_id: capture_id?,
        }),
    }
}

pub(super) fn kickoff_target(mut s: Section<'_>) -> Option<Target> {
    let checklist_id = s.req("checklist_id", id);
    let field_id = s.req("field_id", id);
    s.finish();
    Some(Target::Kickoff {
        checklist_id: checklist_id?,
        field_id: field_id?,
    })
}

pub(super) fn route_target(mut s: Section<'_>) -> Option<Target> {
    let checklist_id = s.req("checklist_id", id);
    let capture_id = s.req("capture_id", id);
    let by = s.opt("by", |value| {
        one_of(value, &[("name", RouteBy::Name), ("id", RouteBy::Id)])
    });
    let create_folders = s.opt("create_folders", boolean).unwrap_or(false);
    let refresh_interval = s.opt("refresh_interval", |value| match duration(value)? {
        short if short < ROUTE_REFRESH_MIN => {
            invalid("must be at least 5s: every refresh lists the template's processes again")
        }
        interval => Ok(interval),
    });
    s.finish();
    Some(Target::Route(Route {
        checklist_id: checklist_id?,
        capture_id: capture_id?,
        by: by.unwrap_or(RouteBy::Name),
        create_folders,
        refresh_interval: refresh_interval.unwrap_or(if create_folders {
            ROUTE_REFRESH_CREATING
        } else {
            ROUTE_REFRESH
        }),
    }))
}

/// A launch as parsed, with whether it set `dedupe` itself (it may also be set on the folder).
pub(super) struct ParsedLaunch {
    pub(super) launch: Launch,
    pub(super) dedupe_given: bool,
}

pub(super) fn launch_target(
    mut s: Section<'_>,
    base: &Path,
    folder: Option<&Path>,
) -> Option<ParsedLaunch> {
    let checklist_id = s.req("checklist_id", id);
    let field_id = s.req("field_id", id);
    let name = s.opt("name", template);
    let fields = s.get("fields", mapping).ok().flatten().map(|map| {
        let fields_key = s.at("fields");
        map.iter()
            .filter_map(|(key, value)| {
                let shown = scalar(key).unwrap_or_else(|| format!("<{}>", kind(key)));
                let field = s
                    .problems
                    .check(&format!("{fields_key}.{shown}"), key, id)?;
                let value = s
                    .problems
                    .check(&format!("{fields_key}.{field}"), value, template)?;
                Some((field, value))
            })
            .collect::<Vec<_>>()
    });
    let after = s.get("after", |value| {
        one_of(
            value,
            &[("keep", "keep"), ("delete", "delete"), ("move", "move")],
        )
    });
    let move_to = s.get("move_to", |value| {
        path_in(base)(value).map(|to| resolved(&to))
    });
    let dedupe = s.get("dedupe", dedupe);
    let after = match (after, move_to) {
        (Err(()), _) | (_, Err(())) => None,
        (Ok(Some("move")), Ok(to)) => match (to, folder) {
            (Some(to), Some(folder)) if to == folder => {
                let problem = format!(
                    "{} {:?}: is the watched folder itself",
                    s.at("move_to"),
                    to.display()
                );
                s.problems.add(problem);
                None
            }
            (Some(to), _) => Some(After::Move { to }),
            (None, Some(folder)) => Some(After::Move {
                to: folder.join("processed"),
            }),
            (None, None) => None,
        },
        (Ok(after), Ok(Some(_))) => {
            let problem = format!(
                "{}: only applies with after: move (after is {})",
                s.at("move_to"),
                after.unwrap_or("keep")
            );
            s.problems.add(problem);
            None
        }
        (Ok(Some("delete")), Ok(None)) => Some(After::Delete),
        (Ok(_), Ok(None)) => Some(After::Keep),
    };
    if let Some((field, _)) = fields
        .iter()
        .flatten()
        .find(|(field, _)| Some(field) == field_id.as_ref())
    {
        let problem = format!(
            "{}.{field}: is the file field (field_id) itself; it gets the file",
            s.at("fields")
        );
        s.problems.add(problem);
    }
    s.finish();
    Some(ParsedLaunch {
        launch: Launch {
            checklist_id: checklist_id?,
            field_id: field_id?,
            name: name.unwrap_or_else(|| Template {
                pieces: vec![Piece::Value(Placeholder::Stem)],
            }),
            fields: fields.unwrap_or_default(),
            after: after?,
            dedupe: dedupe.ok()?.unwrap_or(Dedupe::Content),
        },
        dedupe_given: matches!(dedupe, Ok(Some(_))),
    })
}

/// A text with placeholders; numbers and booleans count as their text.
fn template(value: &Value) -> Result<Template, Bad> {
    let text = match value {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        _ => return Err(Bad::Type("a text")),
    };
    Template::parse(&text).or_else(invalid)
}

pub(super) fn dedupe(value: &Value) -> Result<Dedupe, Bad> {
    one_of(
        value,
        &[("content", Dedupe::Content), ("none", Dedupe::None)],
    )
}
