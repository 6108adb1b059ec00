//! The fake's processes (runs): launch (`POST /runs`), list (`GET /runs`, filtered and
//! paginated) and read one (`GET /runs/{id}`), with the kick-off rules of the real service:
//! prerun keys that are not field ids are dropped silently, text values have byte limits, and
//! a required kick-off field without a value refuses the launch with 422 "<label> is required".
//! Owns the runs and which kick-off fields are required.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::{iso8601_now, ApiError, AssetRecord, State};

/// Largest `per_page` the list takes.
const MAX_PER_PAGE: u64 = 100;
const DEFAULT_PER_PAGE: u64 = 10;
/// Longest process name, in characters.
const MAX_NAME: usize = 550;

#[derive(Default)]
pub(crate) struct Runs {
    /// Run objects, in launch order.
    list: Vec<Value>,
    /// (checklist id, kick-off field id) of the required fields.
    required: BTreeSet<(String, String)>,
}

impl Runs {
    pub fn is_required(&self, checklist_id: &str, field_id: &str) -> bool {
        self.required
            .contains(&(checklist_id.to_string(), field_id.to_string()))
    }

    pub fn exists(&self, run_id: &str) -> bool {
        self.list.iter().any(|run| run["id"] == run_id)
    }

    pub(super) fn push(&mut self, run: Value) {
        self.list.push(run);
    }

    /// Forgets a run; false when there is no such run.
    pub(super) fn remove(&mut self, run_id: &str) -> bool {
        let before = self.list.len();
        self.list.retain(|run| run["id"] != run_id);
        self.list.len() < before
    }

    /// Sets a run's status; false when there is no such run.
    pub(super) fn set_status(&mut self, run_id: &str, status: &str) -> bool {
        match self.list.iter_mut().find(|run| run["id"] == run_id) {
            Some(run) => {
                run["status"] = Value::String(status.to_string());
                true
            }
            None => false,
        }
    }
}

/// The query of a list request, decoded.
pub(super) fn query_params(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A query parameter's value; an empty one counts as absent, as in Laravel.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .filter(|value| !value.is_empty())
}

/// One page of `items` as the API's list answer, `{"data": [...], "meta": {"pagination"}}`,
/// by the request's `page` and `per_page`; `url` is the request's path, for the next link.
pub(super) fn page_of(
    url: &str,
    params: &[(String, String)],
    items: Vec<Value>,
) -> Result<Value, ApiError> {
    let number = |name: &str, default: u64| -> Result<u64, ApiError> {
        match param(params, name) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(value) if value >= 1 => Ok(value),
                _ => Err(ApiError::Invalid(vec![(
                    name.into(),
                    format!("The {} must be at least 1.", name.replace('_', " ")),
                )])),
            },
        }
    };
    let per_page = number("per_page", DEFAULT_PER_PAGE)?;
    if per_page > MAX_PER_PAGE {
        return Err(ApiError::Invalid(vec![(
            "per_page".into(),
            format!("The per page may not be greater than {MAX_PER_PAGE}."),
        )]));
    }
    let page = number("page", 1)?;
    let total = items.len() as u64;
    let total_pages = total.div_ceil(per_page).max(1);
    let data: Vec<Value> = items
        .into_iter()
        .skip(((page - 1) * per_page) as usize)
        .take(per_page as usize)
        .collect();
    let links = if page < total_pages {
        let mut next: Vec<(String, String)> = params
            .iter()
            .filter(|(key, _)| key != "page")
            .cloned()
            .collect();
        next.push(("page".into(), (page + 1).to_string()));
        let query = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        json!({ "next": format!("{url}?{query}") })
    } else {
        // Laravel's transformer sends an empty array, not an object, when there is no link.
        json!([])
    };
    Ok(json!({
        "data": data,
        "meta": {"pagination": {
            "total": total,
            "count": data.len(),
            "per_page": per_page,
            "current_page": page,
            "total_pages": total_pages,
            "links": links,
        }},
    }))
}

impl State {
    pub fn set_required(&mut self, checklist_id: &str, field_id: &str, required: bool) {
        let key = (checklist_id.to_string(), field_id.to_string());
        if required {
            self.runs.required.insert(key);
        } else {
            self.runs.required.remove(&key);
        }
    }

    pub fn runs(&self) -> Vec<Value> {
        self.runs.list.clone()
    }

    /// How many processes were launched from a template, without copying them.
    pub fn launched_from(&self, checklist_id: &str) -> usize {
        (self.runs.list.iter())
            .filter(|run| run["checklist_id"] == checklist_id)
            .count()
    }

    pub fn launch_run(&mut self, body: &Value) -> Result<Value, ApiError> {
        let invalid = |key: &str, message: String| ApiError::Invalid(vec![(key.into(), message)]);
        let checklist_id = match body.get("checklist_id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_string(),
            _ => {
                return Err(invalid(
                    "checklist_id",
                    "The checklist id field is required.".into(),
                ))
            }
        };
        let checklist = self.checklist(&checklist_id)?.clone();
        let name = match body.get("name") {
            None | Some(Value::Null) => format!("{} - {}", checklist.title, &iso8601_now()[..10]),
            Some(Value::String(name)) if name.trim().is_empty() => {
                format!("{} - {}", checklist.title, &iso8601_now()[..10])
            }
            Some(Value::String(name)) if name.trim().chars().count() > MAX_NAME => {
                return Err(invalid(
                    "name",
                    format!("The name may not be greater than {MAX_NAME} characters."),
                ))
            }
            Some(Value::String(name)) => name.trim().to_string(),
            Some(_) => return Err(invalid("name", "The name must be a string.".into())),
        };
        let summary = match body.get("summary") {
            Some(Value::String(summary)) => Value::String(summary.clone()),
            _ => Value::Null,
        };
        let given = match body.get("prerun") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(prerun)) => prerun.clone(),
            Some(_) => return Err(invalid("prerun", "The prerun must be an array.".into())),
        };
        let mut prerun = Map::new();
        let mut errors = Vec::new();
        // Keys that are not field ids (labels, aliases, typos) are dropped silently.
        for field in &checklist.prerun {
            let Some(value) = given.get(&field.id) else {
                continue;
            };
            let key = format!("prerun.{}", field.id);
            let limit = match field.field_type.as_str() {
                "text" => Some(200),
                "textarea" => Some(30_000),
                _ => None,
            };
            if field.field_type == "file" {
                let reachable = |asset: &AssetRecord| {
                    asset.subject_type == "Checklist"
                        && asset.subject_id == checklist.id
                        && asset.uploaded_from == "ko_field"
                };
                match self.resolve_files(value, &key, reachable) {
                    Ok(list) => {
                        prerun.insert(field.id.clone(), Value::Array(list));
                    }
                    Err(mut field_errors) => errors.append(&mut field_errors),
                }
                continue;
            }
            match (value, limit) {
                (Value::String(text), Some(limit)) if text.len() > limit => errors.push((
                    key,
                    format!(
                        "The {} may not be greater than {limit} characters.",
                        field.label
                    ),
                )),
                (Value::String(_), _) | (_, None) => {
                    prerun.insert(field.id.clone(), value.clone());
                }
                (_, Some(_)) => {
                    errors.push((key, format!("The {} must be a string.", field.label)))
                }
            }
        }
        for field in &checklist.prerun {
            let empty = match prerun.get(&field.id) {
                None | Some(Value::Null) => true,
                Some(Value::String(text)) => text.trim().is_empty(),
                Some(Value::Array(items)) => items.is_empty(),
                Some(_) => false,
            };
            if empty && self.runs.is_required(&checklist.id, &field.id) {
                errors.push((
                    format!("prerun.{}", field.id),
                    format!("{} is required", field.label),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::Invalid(errors));
        }
        let run = json!({
            "id": self.new_id(),
            "name": name,
            "summary": summary,
            "status": "active",
            "checklist_id": checklist.id,
            "checklist_title": checklist.title,
            "created_at": iso8601_now(),
            "prerun": prerun,
        });
        self.runs.list.push(run.clone());
        self.add_run_tasks(&run);
        Ok(run)
    }

    /// `GET /checklists`: every template, paginated like the process list.
    pub fn list_checklists(&self, url: &str, query: Option<&str>) -> Result<Value, ApiError> {
        let templates = self
            .checklists
            .values()
            .map(|checklist| json!({"id": checklist.id, "title": checklist.title}))
            .collect();
        page_of(url, &query_params(query), templates)
    }

    pub fn run_json(&self, run_id: &str) -> Result<Value, ApiError> {
        self.runs
            .list
            .iter()
            .find(|run| run["id"] == run_id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound("No query results for model [Run].".into()))
    }

    /// The whole list answer, `{"data": [...], "meta": {"pagination": ...}}`; `url` is the
    /// request's path, for the next page's link.
    pub fn list_runs(&self, url: &str, query: Option<&str>) -> Result<Value, ApiError> {
        let params = query_params(query);
        let param = |name: &str| param(&params, name);
        let q = param("q").map(str::to_lowercase);
        let matching: Vec<&Value> = self
            .runs
            .list
            .iter()
            .filter(|run| param("checklist_id").is_none_or(|id| run["checklist_id"] == id))
            .filter(|run| param("status").is_none_or(|status| run["status"] == status))
            .filter(|run| {
                q.as_deref().is_none_or(|q| {
                    run["name"]
                        .as_str()
                        .is_some_and(|name| name.to_lowercase().contains(q))
                })
            })
            .collect();
        page_of(url, &params, matching.into_iter().cloned().collect())
    }
}
