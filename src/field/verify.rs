//! Verification of a field's target, with GETs only: receives a `Target` and emits what the
//! uploads to it need (`Resolved`), or why the target cannot take files, naming what is there
//! instead. The field actor runs it before it sends the field anything; `check --online` runs
//! it alone.

use std::collections::HashMap;

use serde_json::Value;
use tracing::warn;

use super::FieldError;
use crate::api::{self, ApiError, Client, FormField, UploadTarget};
use crate::config::{Route, Target};
use crate::store::asset_id;

/// What a verified target needs for uploads.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub upload: UploadTarget,
    /// For a launch target, what launching needs to know of the template.
    pub launch: Option<LaunchForm>,
    /// What the API calls the target's parts, as the verifying reads showed them.
    pub names: Names,
}

/// The names the API gives a target's parts, shown next to the ids (ids alone are unreadable).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Names {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

/// The store's key for a target's names as last verified, for `status`.
pub fn names_key(target: &Target) -> String {
    format!("names:{}", target.key())
}

impl Names {
    fn of(task: Option<&str>, field: &str, template: Option<&str>) -> Names {
        let named = |name: &str| (!name.is_empty()).then(|| name.to_string());
        Names {
            process: None,
            task: task.and_then(named),
            field: named(field),
            template: template.and_then(named),
        }
    }
}

impl std::fmt::Display for Names {
    /// `field "Invoices" of task "Collect" in process "ACME"`, the parts that are known.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = [
            ("field", &self.field, ""),
            ("task", &self.task, "of "),
            ("process", &self.process, "in "),
            ("template", &self.template, "of "),
        ];
        let mut first = true;
        for (what, name, joint) in parts {
            if let Some(name) = name {
                let joint = if first { "" } else { joint };
                let space = if first { "" } else { " " };
                write!(f, "{space}{joint}{what} \"{}\"", crate::text::escaped(name))?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A verified launch target's template.
#[derive(Debug, Clone)]
pub struct LaunchForm {
    pub title: String,
    /// For each kick-off text field filled from the path: its label and most bytes.
    pub limits: HashMap<String, (String, usize)>,
}

/// Longest process name the API takes, in characters.
pub const MAX_RUN_NAME: usize = 550;
/// Kick-off field types a text from the path can fill, with the most bytes each takes.
const FILLABLE: [(&str, Option<usize>); 4] = [
    ("text", Some(200)),
    ("textarea", Some(30_000)),
    ("date", None),
    ("radio", None),
];

/// Checks with GETs only that `target` exists, can take files, and says where uploads go:
/// what the daemon does before it sends a field anything, and what `check --online` does.
pub async fn verify(target: &Target, api: &Client) -> Result<Resolved, FieldError> {
    inspect(target, api).await.map(|(resolved, _)| resolved)
}

/// `verify`, also returning the field's value as the same GET showed it.
pub(super) async fn inspect(
    target: &Target,
    api: &Client,
) -> Result<(Resolved, api::RawList), FieldError> {
    match target {
        Target::Task {
            task_id,
            capture_id,
            ..
        }
        | Target::OneOff {
            task_id,
            capture_id,
        } => {
            // The task as messages name it: "in run" where it is there, "of run" where it is not.
            let (what, missing) = match target.run_id() {
                Some(run_id) => (
                    format!("task {task_id} in run {run_id}"),
                    format!("task {task_id} of run {run_id}"),
                ),
                None => (
                    format!("one-off task {task_id}"),
                    format!("one-off task {task_id}"),
                ),
            };
            let task = api
                .with_retries(|| api.get_task(target.run_id(), task_id))
                .await
                .map_err(|error| unreachable_target(error, &missing))?;
            if task.status.eq_ignore_ascii_case("completed") {
                return Err(FieldError::Invalid(format!(
                    "{what} is completed, and Tallyfy does not allow changes to completed tasks"
                )));
            }
            let Some(field) = task.fields.iter().find(|field| field.id == *capture_id) else {
                let known: Vec<String> = task
                    .fields
                    .iter()
                    .map(|f| format!("{} ({:?}, {})", f.id, f.label, f.field_type))
                    .collect();
                return Err(FieldError::Invalid(format!(
                    "{what} has no form field with capture id {capture_id}; its fields are: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            };
            if field.field_type != "file" {
                return Err(FieldError::Invalid(format!(
                    "field {capture_id} ({:?}) of {what} is a {} field, not a file field",
                    field.label, field.field_type
                )));
            }
            let upload = task_upload(target, (task_id, capture_id), &what, &task)?;
            let list = api::raw::items(&field.value);
            Ok((
                Resolved {
                    upload,
                    launch: None,
                    names: Names::of(Some(&task.title), &field.label, None),
                },
                list,
            ))
        }
        Target::Kickoff {
            checklist_id,
            field_id,
        } => {
            let checklist = read_template(api, checklist_id).await?;
            let field = file_field(&checklist.prerun, checklist_id, field_id)?;
            let list = (checklist.value_of(field_id))
                .map(api::raw::items)
                .unwrap_or_default();
            Ok((
                Resolved {
                    upload: UploadTarget::Kickoff {
                        checklist_id: checklist_id.clone(),
                    },
                    launch: None,
                    names: Names::of(None, &text(field, "label"), Some(&checklist.title)),
                },
                list,
            ))
        }
        // A route folder's files go to its processes' tasks, into no field of its own.
        Target::Route(route) => Ok((verify_route(api, route).await?, Vec::new())),
        Target::Launch(launch) => {
            let checklist_id = &launch.checklist_id;
            let checklist = read_template(api, checklist_id).await?;
            let names = Names::of(
                None,
                &text(
                    file_field(&checklist.prerun, checklist_id, &launch.field_id)?,
                    "label",
                ),
                Some(&checklist.title),
            );
            let mut limits = HashMap::new();
            for (id, value) in &launch.fields {
                let field = kickoff_field(&checklist.prerun, checklist_id, id)?;
                let (label, field_type) = (text(field, "label"), text(field, "field_type"));
                let Some((_, limit)) = FILLABLE.iter().find(|(kind, _)| *kind == field_type) else {
                    return Err(FieldError::Invalid(format!(
                        "kick-off field {id} ({label:?}) of template {checklist_id} is a {field_type} field; only text, textarea, date and radio fields can be filled from launch.fields"
                    )));
                };
                if let Some(limit) = *limit {
                    if value.literal_len() > limit {
                        return Err(FieldError::Invalid(format!(
                            "launch.fields.{id} is longer than kick-off field {id} ({label:?}) takes: {} bytes, at most {limit}",
                            value.literal_len()
                        )));
                    }
                    limits.insert(id.clone(), (label, limit));
                }
            }
            if launch.name.literal_len() > MAX_RUN_NAME {
                return Err(FieldError::Invalid(format!(
                    "launch.name is longer than a process name may be ({MAX_RUN_NAME} characters)"
                )));
            }
            let given =
                |id: &str| *id == launch.field_id || launch.fields.iter().any(|(f, _)| f == id);
            let missing: Vec<String> = checklist
                .prerun
                .iter()
                .filter(|field| is_required(field))
                .filter_map(|field| {
                    let id = asset_id(field)?;
                    (!given(&id)).then(|| {
                        format!(
                            "{id} ({:?}, {})",
                            text(field, "label"),
                            text(field, "field_type")
                        )
                    })
                })
                .collect();
            if !missing.is_empty() {
                return Err(FieldError::Invalid(format!(
                    "template {checklist_id} requires kick-off fields the launch gives no value: {}; add them under launch.fields",
                    missing.join(", ")
                )));
            }
            Ok((
                Resolved {
                    upload: UploadTarget::Kickoff {
                        checklist_id: checklist_id.clone(),
                    },
                    launch: Some(LaunchForm {
                        title: checklist.title,
                        limits,
                    }),
                    names,
                },
                // A launch folder's files go to processes it starts, into no field it keeps.
                Vec::new(),
            ))
        }
    }
}

/// What the uploads to a verified task's field send: a task in a process names its run, step
/// and template (from the config, else from the task); a one-off task names only itself, and
/// must indeed be in no process.
fn task_upload(
    target: &Target,
    (task_id, capture_id): (&str, &str),
    what: &str,
    task: &api::Task,
) -> Result<UploadTarget, FieldError> {
    match (target, &task.run_id) {
        (
            Target::Task {
                run_id,
                step_id,
                checklist_id,
                ..
            },
            _,
        ) => {
            let missing = |key: &str| {
                FieldError::Invalid(format!(
                    "{what} did not say its {key}; set it as folders[].task.{key}"
                ))
            };
            Ok(UploadTarget::Task {
                run_id: run_id.clone(),
                capture_id: capture_id.to_string(),
                step_id: step_id
                    .clone()
                    .or_else(|| task.step_id.clone())
                    .ok_or_else(|| missing("step_id"))?,
                checklist_id: checklist_id
                    .clone()
                    .or_else(|| task.checklist_id.clone())
                    .ok_or_else(|| missing("checklist_id"))?,
            })
        }
        (_, Some(run_id)) => Err(FieldError::Invalid(format!(
            "{what} belongs to process {run_id}, so it is no one-off task; set folders[].task.run_id: {run_id}"
        ))),
        (_, None) => Ok(UploadTarget::OneOff {
            task_id: task_id.to_string(),
            capture_id: capture_id.to_string(),
        }),
    }
}

/// A route's template exists and one of its steps has the capture as a file field. Where the
/// template's answer does not list its steps, an active process's tasks show them; with no
/// process running either, the check waits for the first process (its task is verified then).
async fn verify_route(api: &Client, route: &Route) -> Result<Resolved, FieldError> {
    let (checklist_id, capture_id) = (&route.checklist_id, &route.capture_id);
    let steps = api
        .with_retries(|| api.template_steps(checklist_id))
        .await
        .map_err(|error| unreachable_target(error, &format!("template {checklist_id}")))?;
    let fields: Vec<(String, FormField)> = match steps {
        Some(steps) => steps
            .into_iter()
            .flat_map(|step| {
                let title = step.title;
                step.captures
                    .into_iter()
                    .map(move |field| (title.clone(), field))
            })
            .collect(),
        None => {
            let runs = api.with_retries(|| api.active_runs(checklist_id)).await?;
            let Some(run) = runs.first() else {
                warn!(checklist_id = %checklist_id, capture_id = %capture_id, "the template does not list its steps and has no active process; the field is checked on the first process");
                return Ok(route_resolved(route));
            };
            api.with_retries(|| api.run_tasks(&run.id))
                .await?
                .into_iter()
                .flat_map(|task| {
                    let title = task.title;
                    task.fields
                        .into_iter()
                        .map(move |field| (title.clone(), field))
                })
                .collect()
        }
    };
    match fields.iter().find(|(_, field)| field.id == *capture_id) {
        Some((step, field)) if field.field_type == "file" => Ok(Resolved {
            names: Names::of(Some(step), &field.label, None),
            ..route_resolved(route)
        }),
        Some((step, field)) => Err(FieldError::Invalid(format!(
            "field {capture_id} ({:?}) of step {step:?} of template {checklist_id} is a {} field, not a file field",
            field.label, field.field_type
        ))),
        None => {
            let files: Vec<String> = fields
                .iter()
                .filter(|(_, field)| field.field_type == "file")
                .map(|(step, field)| format!("{} ({:?}, step {step:?})", field.id, field.label))
                .collect();
            Err(FieldError::Invalid(format!(
                "no step of template {checklist_id} has a form field with capture id {capture_id}; its file fields are: {}",
                if files.is_empty() { "none".to_string() } else { files.join(", ") }
            )))
        }
    }
}

/// A verified route: each file's upload target comes from its process's task, so the
/// template is all this says.
fn route_resolved(route: &Route) -> Resolved {
    Resolved {
        upload: UploadTarget::Kickoff {
            checklist_id: route.checklist_id.clone(),
        },
        launch: None,
        names: Names::default(),
    }
}

async fn read_template(api: &Client, checklist_id: &str) -> Result<api::Checklist, FieldError> {
    api.with_retries(|| api.get_checklist(checklist_id))
        .await
        .map_err(|error| unreachable_target(error, &format!("template {checklist_id}")))
}

/// A string member of a kick-off field ("" when absent).
fn text(field: &Value, key: &str) -> String {
    field
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The API has sent `required` as a boolean, a number and a string.
pub(crate) fn is_required(field: &Value) -> bool {
    match field.get("required") {
        Some(Value::Bool(required)) => *required,
        Some(Value::Number(number)) => number.as_u64().is_some_and(|n| n != 0),
        Some(Value::String(text)) => matches!(text.as_str(), "1" | "true"),
        _ => false,
    }
}

/// The kick-off field `field_id` of a template; if there is none, an error naming the fields
/// there are (or the field whose alias it is).
fn kickoff_field<'a>(
    prerun: &'a [Value],
    checklist_id: &str,
    field_id: &str,
) -> Result<&'a Value, FieldError> {
    if let Some(field) = prerun
        .iter()
        .find(|field| asset_id(field).as_deref() == Some(field_id))
    {
        return Ok(field);
    }
    if let Some(by_alias) = prerun.iter().find(|field| text(field, "alias") == field_id) {
        return Err(FieldError::Invalid(format!(
            "{field_id} is the alias of a kick-off field of template {checklist_id}; use its id {}",
            asset_id(by_alias).unwrap_or_default()
        )));
    }
    let known: Vec<String> = prerun
        .iter()
        .map(|f| {
            format!(
                "{} ({:?}, {})",
                asset_id(f).unwrap_or_default(),
                text(f, "label"),
                text(f, "field_type")
            )
        })
        .collect();
    Err(FieldError::Invalid(format!(
        "template {checklist_id} has no kick-off field with id {field_id}; its kick-off fields are: {}",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )))
}

/// Like `kickoff_field`, and it must take files.
fn file_field<'a>(
    prerun: &'a [Value],
    checklist_id: &str,
    field_id: &str,
) -> Result<&'a Value, FieldError> {
    let field = kickoff_field(prerun, checklist_id, field_id)?;
    let field_type = text(field, "field_type");
    if field_type != "file" {
        return Err(FieldError::Invalid(format!(
            "kick-off field {field_id} ({:?}) of template {checklist_id} is a {field_type} field, not a file field",
            text(field, "label")
        )));
    }
    Ok(field)
}

/// A target the API says is missing or forbidden is a config mistake, not a passing failure.
fn unreachable_target(error: ApiError, what: &str) -> FieldError {
    match error.status() {
        Some(404) => FieldError::Invalid(format!("{what} does not exist{MISSING}")),
        Some(403) => FieldError::Invalid(format!("the token's user may not see {what}{FORBIDDEN}")),
        _ => FieldError::from(error),
    }
}

const MISSING: &str = " (404)";
const FORBIDDEN: &str = " (403)";

/// Whether a verdict is the API not finding or refusing a target's part (rather than finding
/// it unfit), which a wrong organization, base URL or id of the wrong kind also causes.
pub fn missing_or_forbidden(problem: &str) -> bool {
    problem.ends_with(MISSING) || forbidden(problem)
}

pub(super) fn forbidden(problem: &str) -> bool {
    problem.ends_with(FORBIDDEN)
}
