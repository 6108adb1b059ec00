//! Diagnoses that name the key to change. Receives a client, the API config and a target the
//! API refused or could not find; sends a few cheap GETs (one page of the template list, the
//! process or template the ids might be) and emits one sentence naming the config key at
//! fault: a wrong `api.org_id`, an `api.base_url` that is not the API, a template id where a
//! process id belongs or the other way round. Owns nothing; changes nothing.

use crate::api::{ApiError, Client};
use crate::config::Target;
use crate::text;

/// What a refused read of the organization's own lists says about `api.base_url` and
/// `api.org_id`; `None` when it says nothing about them.
pub fn api_problem(error: &ApiError, api: &Client) -> Option<String> {
    match error {
        ApiError::Status {
            status: 403,
            message,
            ..
        } => Some(format!(
            "api.org_id {:?} is wrong: the API refuses this organization to the token (403: {}); \
             copy the organization id from Tallyfy (Settings > Organization), or use a token of \
             one of its members",
            api.org_id(),
            text::escaped(message)
        )),
        ApiError::Status { status: 404, .. } | ApiError::Decode { .. } => Some(format!(
            "api.base_url {} does not answer like the Tallyfy API ({}){}",
            api.base_url(),
            text::escaped(&error.to_string()),
            base_url_hint(api.base_url())
        )),
        _ => None,
    }
}

/// "; the API lives under /api ..." when `api.base_url` does not end with `/api`.
pub fn base_url_hint(base_url: &str) -> &'static str {
    if base_url.trim_end_matches('/').ends_with("/api") {
        ""
    } else {
        "; the API lives under /api, e.g. https://go.tallyfy.com/api"
    }
}

/// One small GET that every organization answers, sent at most once per client:
/// `Some(problem)` naming `api.base_url` or `api.org_id` when they are wrong, and whether this
/// caller is the first to learn it (and so the one to report it).
pub async fn organization(api: &Client) -> (Option<String>, bool) {
    api.organization_problem(|| async {
        match api.with_retries(|| api.probe_organization()).await {
            Ok(()) => None,
            Err(error) => api_problem(&error, api),
        }
    })
    .await
}

/// For a target the API did not find: whether an id is of the wrong kind or names nothing,
/// as a sentence naming the key of `folders[index]`; `None` when the ids are what they
/// should be (the first verdict then stands).
pub async fn target(api: &Client, index: usize, target: &Target) -> Option<String> {
    match target {
        Target::Task {
            run_id, task_id, ..
        } => {
            let key = |name: &str| format!("folders[{index}].task.{name}");
            match api.with_retries(|| api.get_run(run_id)).await {
                Ok(run) => match api
                    .with_retries(|| api.get_task(Some(run_id), task_id))
                    .await
                {
                    Err(error) if error.status() == Some(404) => {
                        let tasks = api
                            .with_retries(|| api.run_tasks(run_id))
                            .await
                            .unwrap_or_default();
                        let known: Vec<String> = tasks
                            .iter()
                            .map(|task| format!("{:?} ({})", task.title, task.id))
                            .collect();
                        Some(format!(
                            "{} {task_id}: process {:?} ({run_id}) has no task with this id; its tasks are: {}",
                            key("task_id"),
                            run.name,
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ))
                    }
                    _ => None,
                },
                Err(error) if error.status() == Some(404) => {
                    match api.with_retries(|| api.get_checklist(run_id)).await {
                        Ok(template) => Some(format!(
                            "{} {run_id} is the id of template {:?}, not of a process: a task folder needs a running process's id (`tallyfy-sync targets` lists them); for the template itself use kickoff: (its kick-off form), launch: (a process per file) or route: (every process)",
                            key("run_id"),
                            template.title
                        )),
                        Err(_) => Some(format!(
                            "{} {run_id}: no process has this id (404); `tallyfy-sync targets` lists the active processes",
                            key("run_id")
                        )),
                    }
                }
                Err(_) => None,
            }
        }
        // A one-off task has one id: a 404 for it already says all a cheap read could.
        Target::OneOff { .. } => None,
        Target::Kickoff { checklist_id, .. } => template(api, index, "kickoff", checklist_id).await,
        Target::Launch(launch) => template(api, index, "launch", &launch.checklist_id).await,
        Target::Route(route) => template(api, index, "route", &route.checklist_id).await,
    }
}

/// A `checklist_id` the API did not find: a process's id put there, or nothing at all.
async fn template(api: &Client, index: usize, kind: &str, checklist_id: &str) -> Option<String> {
    let key = format!("folders[{index}].{kind}.checklist_id");
    match api.with_retries(|| api.get_checklist(checklist_id)).await {
        Err(error) if error.status() == Some(404) => {}
        _ => return None,
    }
    Some(match api.with_retries(|| api.get_run(checklist_id)).await {
        Ok(run) => format!(
            "{key} {checklist_id} is the id of process {:?}, not of a template{}",
            run.name,
            if run.checklist_id.is_empty() {
                String::new()
            } else {
                format!("; its template's id is {}", run.checklist_id)
            }
        ),
        Err(_) => format!(
            "{key} {checklist_id}: no template has this id (404); `tallyfy-sync targets` lists the templates"
        ),
    })
}
