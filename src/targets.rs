//! `targets`: what a folder can point at, found by name. Receives a client (only `api:` need
//! be configured); reads with GETs only, every list followed to its last page: the templates,
//! each one's kick-off form and steps, the active processes and their tasks. Emits the
//! entries a folder can take (task, kickoff, launch, route), each with the names the API
//! returned next to the ids and a ready-to-paste `folders:` entry, as text or JSON. Owns
//! nothing; changes nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::api::{ApiError, Client, FormField};
use crate::text;

/// Templates or processes read at once.
const READS_AT_ONCE: usize = 4;
/// Where suggested folders go; the operator changes the path before pasting.
const SUGGESTED_ROOT: &str = "/srv/tallyfy";
/// Kick-off field types a launch folder can fill from the file's path, with the placeholder
/// suggested for each.
const FILLABLE: [(&str, &str); 4] = [
    ("text", "{parent}"),
    ("textarea", "{parent}"),
    ("date", "{date}"),
    ("radio", "{parent}"),
];

/// A name and its id, as the API gave them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    pub id: String,
    pub label: String,
    pub field_type: String,
    pub required: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: String,
    pub title: String,
    pub fields: Vec<Field>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    pub id: String,
    pub title: String,
    pub kickoff: Vec<Field>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub id: String,
    pub name: String,
    pub template: Named,
    pub tasks: Vec<Step>,
}

/// Everything the organization offers a folder, as read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Catalog {
    pub templates: Vec<TemplateInfo>,
    pub processes: Vec<ProcessInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A task of a running process.
    Task,
    /// A template's kick-off form.
    Kickoff,
    /// A process started per file.
    Launch,
    /// The same step's task in every active process.
    Route,
}

/// One thing a folder can point at.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub kind: Kind,
    pub template: Named,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Named>,
    /// The task (task folders) or step (route folders) holding the field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Named>,
    pub field: Named,
    /// Whether a folder of this kind works as suggested (a launch folder does not when the
    /// template requires a kick-off field it cannot fill).
    pub fits: bool,
    /// Why it fits or not: the required kick-off fields, named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A `folders:` list item, ready to paste.
    pub folder: String,
    /// The same without its `- path:` line, for a path of the operator's choosing.
    #[serde(skip)]
    target_yaml: String,
}

impl Named {
    fn new(id: &str, name: &str) -> Named {
        Named {
            id: id.to_string(),
            name: name.to_string(),
        }
    }
}

impl Entry {
    /// The entry as a `folders:` list item for `path`, indented by `indent` spaces.
    pub fn folder_yaml(&self, path: &Path, indent: usize) -> String {
        let pad = " ".repeat(indent);
        let mut out = format!("{pad}- path: {}\n", yaml_scalar(&path.to_string_lossy()));
        for line in self.target_yaml.lines() {
            let _ = writeln!(out, "{pad}  {line}");
        }
        out
    }

    /// Names to match a filter against and to show.
    fn names(&self) -> Vec<&str> {
        let mut names = vec![self.template.name.as_str(), self.field.name.as_str()];
        names.extend(self.process.as_ref().map(|process| process.name.as_str()));
        names.extend(self.task.as_ref().map(|task| task.name.as_str()));
        names
    }

    /// Whether `filter` (lowercase) is in one of the entry's names.
    pub fn matches(&self, filter: &str) -> bool {
        self.names()
            .iter()
            .any(|name| name.to_lowercase().contains(filter))
    }

    /// One line saying what the entry is, by name.
    pub fn summary(&self) -> String {
        let field = format!("field \"{}\"", text::escaped(&self.field.name));
        let template = format!("template \"{}\"", text::escaped(&self.template.name));
        match self.kind {
            Kind::Task => format!(
                "task folder: {field} of task \"{}\" in process \"{}\"",
                text::escaped(name_of(&self.task)),
                text::escaped(name_of(&self.process))
            ),
            Kind::Kickoff => format!("kickoff folder: kick-off {field} of {template}"),
            Kind::Launch => {
                format!("launch folder: a process of {template} per file, in kick-off {field}")
            }
            Kind::Route => format!(
                "route folder: {field} of step \"{}\" in every active process of {template}",
                text::escaped(name_of(&self.task))
            ),
        }
    }

    /// The folder's suggested path, from the names.
    pub fn suggested_path(&self) -> String {
        let name = match self.kind {
            Kind::Task => self.process.as_ref().map_or("", |p| p.name.as_str()),
            _ => self.template.name.as_str(),
        };
        let suffix = match self.kind {
            Kind::Launch => "-launch",
            Kind::Route => "-processes",
            Kind::Task | Kind::Kickoff => "",
        };
        format!("{SUGGESTED_ROOT}/{}{suffix}", slug(name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetsError {
    #[error("{problem}")]
    Config { problem: String },
    #[error("cannot list what the organization offers: {error}")]
    Api { error: ApiError },
}

impl TargetsError {
    /// A wrong `api.base_url` or `api.org_id`, or refused credentials: the config must change.
    pub fn is_config(&self) -> bool {
        match self {
            TargetsError::Config { .. } => true,
            TargetsError::Api { error } => error.is_unauthorized(),
        }
    }
}

/// Reads everything a folder can point at: templates with their kick-off forms and steps,
/// active processes with their tasks.
pub async fn catalog(api: &Client) -> Result<Catalog, TargetsError> {
    let failed = |error: ApiError| match crate::diagnose::api_problem(&error, api) {
        Some(problem) => TargetsError::Config { problem },
        None => TargetsError::Api { error },
    };
    let templates = api.with_retries(|| api.templates()).await.map_err(failed)?;
    // A few reads at once: a large organization's listing takes seconds, not minutes (the
    // client's gate and `api.rate_limit` still pace them).
    let templates: Vec<TemplateInfo> = stream::iter(templates)
        .map(|template| async move {
            let checklist = api.with_retries(|| api.get_checklist(&template.id)).await?;
            let steps = api.with_retries(|| api.step_list(&template.id)).await?;
            Ok::<_, ApiError>(TemplateInfo {
                kickoff: checklist.prerun.iter().filter_map(kickoff_field).collect(),
                steps: steps.into_iter().map(step).collect(),
                id: template.id,
                title: checklist.title,
            })
        })
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await
        .map_err(failed)?;
    let titles: HashMap<&str, &str> = templates
        .iter()
        .map(|template| (template.id.as_str(), template.title.as_str()))
        .collect();
    let runs = api
        .with_retries(|| api.all_active_runs())
        .await
        .map_err(failed)?;
    let processes: Vec<ProcessInfo> = stream::iter(runs)
        .map(|run| {
            let titles = &titles;
            async move {
                let tasks = api.with_retries(|| api.run_tasks(&run.id)).await?;
                Ok::<_, ApiError>(ProcessInfo {
                    template: Named {
                        name: titles
                            .get(run.checklist_id.as_str())
                            .map(|title| title.to_string())
                            .unwrap_or_default(),
                        id: run.checklist_id,
                    },
                    id: run.id,
                    name: run.name,
                    tasks: tasks
                        .into_iter()
                        .map(|task| Step {
                            id: task.id,
                            title: task.title,
                            fields: task.fields.iter().map(form_field).collect(),
                        })
                        .collect(),
                })
            }
        })
        .buffered(READS_AT_ONCE)
        .try_collect()
        .await
        .map_err(failed)?;
    Ok(Catalog {
        templates,
        processes,
    })
}

fn step(step: crate::api::Step) -> Step {
    Step {
        id: step.id,
        title: step.title,
        fields: step.captures.iter().map(form_field).collect(),
    }
}

fn form_field(field: &FormField) -> Field {
    Field {
        id: field.id.clone(),
        label: field.label.clone(),
        field_type: field.field_type.clone(),
        required: false,
    }
}

fn kickoff_field(field: &Value) -> Option<Field> {
    let text = |key: &str| {
        field
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    Some(Field {
        id: crate::store::asset_id(field)?,
        label: text("label"),
        field_type: text("field_type"),
        required: crate::field::is_required(field),
    })
}

/// Every entry a folder can take, in the catalog's order: per template its kick-off file
/// fields (kickoff, then launch), the active processes' task file fields, then the route
/// folders the templates' steps allow.
pub fn entries(catalog: &Catalog) -> Vec<Entry> {
    let mut entries = Vec::new();
    for template in &catalog.templates {
        let named = Named::new(&template.id, &template.title);
        for field in template.kickoff.iter().filter(|f| f.field_type == "file") {
            let field_named = Named::new(&field.id, &field.label);
            let kickoff_yaml = format!(
                "kickoff:\n  checklist_id: {}   # {}\n  field_id: {}   # {}\n",
                template.id,
                comment(&template.title),
                field.id,
                comment(&field.label)
            );
            entries.push(entry(
                Kind::Kickoff,
                named.clone(),
                None,
                None,
                field_named.clone(),
                (true, None),
                kickoff_yaml,
            ));
            let (fits, note, fields_yaml) = launch_fit(template, field);
            let launch_yaml = format!(
                "launch:\n  checklist_id: {}   # {}\n  field_id: {}   # {}\n{fields_yaml}",
                template.id,
                comment(&template.title),
                field.id,
                comment(&field.label)
            );
            entries.push(entry(
                Kind::Launch,
                named.clone(),
                None,
                None,
                field_named,
                (fits, Some(note)),
                launch_yaml,
            ));
        }
    }
    for process in &catalog.processes {
        for task in &process.tasks {
            for field in task.fields.iter().filter(|f| f.field_type == "file") {
                let yaml = format!(
                    "task:\n  run_id: {}   # {}\n  task_id: {}   # {}\n  capture_id: {}   # {}\n",
                    process.id,
                    comment(&process.name),
                    task.id,
                    comment(&task.title),
                    field.id,
                    comment(&field.label)
                );
                entries.push(entry(
                    Kind::Task,
                    process.template.clone(),
                    Some(Named::new(&process.id, &process.name)),
                    Some(Named::new(&task.id, &task.title)),
                    Named::new(&field.id, &field.label),
                    (true, None),
                    yaml,
                ));
            }
        }
    }
    for template in &catalog.templates {
        for step in &template.steps {
            for field in step.fields.iter().filter(|f| f.field_type == "file") {
                let yaml = format!(
                    "route:\n  checklist_id: {}   # {}\n  capture_id: {}   # {} (step {})\n  by: name\n",
                    template.id,
                    comment(&template.title),
                    field.id,
                    comment(&field.label),
                    comment(&step.title)
                );
                entries.push(entry(
                    Kind::Route,
                    Named::new(&template.id, &template.title),
                    None,
                    Some(Named::new(&step.id, &step.title)),
                    Named::new(&field.id, &field.label),
                    (true, None),
                    yaml,
                ));
            }
        }
    }
    entries
}

fn entry(
    kind: Kind,
    template: Named,
    process: Option<Named>,
    task: Option<Named>,
    field: Named,
    (fits, note): (bool, Option<String>),
    target_yaml: String,
) -> Entry {
    let mut entry = Entry {
        kind,
        template,
        process,
        task,
        field,
        fits,
        note,
        folder: String::new(),
        target_yaml,
    };
    entry.folder = entry.folder_yaml(Path::new(&entry.suggested_path()), 0);
    entry
}

/// Whether a launch folder can start the template with `file` holding the file: every other
/// required kick-off field must be one a text from the path can fill. Returns the verdict,
/// a note naming the required fields, and the `fields:` block filling them.
fn launch_fit(template: &TemplateInfo, file: &Field) -> (bool, String, String) {
    let required: Vec<&Field> = template
        .kickoff
        .iter()
        .filter(|field| field.required && field.id != file.id)
        .collect();
    if required.is_empty() {
        return (
            true,
            "fits: no other kick-off field is required".to_string(),
            String::new(),
        );
    }
    let describe = |field: &&Field| {
        format!(
            "\"{}\" ({}, {})",
            text::escaped(&field.label),
            field.id,
            field.field_type
        )
    };
    let unfillable: Vec<String> = required
        .iter()
        .filter(|field| !FILLABLE.iter().any(|(kind, _)| *kind == field.field_type))
        .map(describe)
        .collect();
    let named: Vec<String> = required.iter().map(describe).collect();
    if !unfillable.is_empty() {
        return (
            false,
            format!(
                "does not fit: the template requires kick-off fields a launch folder cannot fill: {}",
                unfillable.join(", ")
            ),
            String::new(),
        );
    }
    let mut fields = String::from(
        "  fields:   # required kick-off fields, filled from the path; change as needed\n",
    );
    for field in &required {
        let placeholder = FILLABLE
            .iter()
            .find(|(kind, _)| *kind == field.field_type)
            .map_or("{parent}", |(_, placeholder)| placeholder);
        let hint = if field.field_type == "radio" {
            ", must be one of its options"
        } else {
            ""
        };
        let _ = writeln!(
            fields,
            "    {}: \"{placeholder}\"   # {} ({}{hint})",
            field.id,
            comment(&field.label),
            field.field_type
        );
    }
    (
        true,
        format!(
            "fits: required kick-off fields filled from the path: {}",
            named.join(", ")
        ),
        fields,
    )
}

fn name_of(named: &Option<Named>) -> &str {
    named.as_ref().map_or("", |named| named.name.as_str())
}

/// A name for a YAML comment: on one line, control characters escaped.
fn comment(name: &str) -> String {
    format!("\"{}\"", text::escaped(name))
}

/// A YAML scalar for `value`: plain when that is safe, else double-quoted (a JSON string is a
/// valid YAML double-quoted scalar).
pub fn yaml_scalar(value: &str) -> String {
    // A colon is plain inside a URL; only ": " or a trailing one would start a mapping.
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:".contains(c))
        && !value.starts_with(['-', '@', ':'])
        && !value.ends_with(':');
    if plain {
        value.to_string()
    } else {
        serde_json::Value::String(value.to_string()).to_string()
    }
}

/// A folder name from a name: lowercase ASCII letters and digits, dashes between words.
fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "folder".to_string()
    } else {
        out.to_string()
    }
}

/// The text listing: templates with their kick-off file fields, active processes with their
/// tasks' file fields, route folders; each entry with its `folders:` item. `filter` (lowercase)
/// keeps the entries one of whose names holds it.
pub fn render(catalog: &Catalog, entries: &[Entry], filter: Option<&str>) -> String {
    let keep = |entry: &&Entry| filter.is_none_or(|filter| entry.matches(filter));
    let title_matches =
        |name: &str| filter.is_none_or(|filter| name.to_lowercase().contains(filter));
    let mut out = String::new();
    let shown = |out: &mut String, entry: &Entry| {
        let _ = writeln!(out, "    {}", entry.summary());
        if let Some(note) = &entry.note {
            let _ = writeln!(out, "      {}", text::escaped(note));
        }
        if entry.fits {
            for line in entry.folder.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    };
    let _ = writeln!(
        out,
        "Templates ({}), with their kick-off file fields:",
        catalog.templates.len()
    );
    for template in &catalog.templates {
        let own: Vec<&Entry> = entries
            .iter()
            .filter(|e| {
                matches!(e.kind, Kind::Kickoff | Kind::Launch) && e.template.id == template.id
            })
            .filter(keep)
            .collect();
        if own.is_empty() && !title_matches(&template.title) {
            continue;
        }
        let _ = writeln!(
            out,
            "  template \"{}\" ({}){}",
            text::escaped(&template.title),
            template.id,
            if own.is_empty() {
                ": no kick-off file field"
            } else {
                ""
            }
        );
        for entry in own {
            shown(&mut out, entry);
        }
    }
    let _ = writeln!(
        out,
        "\nActive processes ({}), with their tasks' file fields:",
        catalog.processes.len()
    );
    for process in &catalog.processes {
        let own: Vec<&Entry> = entries
            .iter()
            .filter(|e| {
                e.kind == Kind::Task && e.process.as_ref().is_some_and(|p| p.id == process.id)
            })
            .filter(keep)
            .collect();
        if own.is_empty() && !title_matches(&process.name) {
            continue;
        }
        let _ = writeln!(
            out,
            "  process \"{}\" ({}) of template \"{}\" ({}){}",
            text::escaped(&process.name),
            process.id,
            text::escaped(&process.template.name),
            process.template.id,
            if own.is_empty() {
                ": no task with a file field"
            } else {
                ""
            }
        );
        for entry in own {
            shown(&mut out, entry);
        }
    }
    out.push_str("\nRoute folders (a subfolder per active process), from templates' steps with file fields:\n");
    let routes: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.kind == Kind::Route)
        .filter(keep)
        .collect();
    if routes.is_empty() {
        out.push_str("  none\n");
    }
    for entry in routes {
        let _ = writeln!(
            out,
            "  template \"{}\" ({}), step \"{}\"",
            text::escaped(&entry.template.name),
            entry.template.id,
            text::escaped(name_of(&entry.task))
        );
        shown(&mut out, entry);
    }
    out
}
