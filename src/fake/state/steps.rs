//! The fake's template steps and the tasks of processes. Every process, launched or seeded,
//! gets one task per step of its template carrying that step's form fields (captures), so a
//! capture id appears in the same step's task of every run, as in Tallyfy. Serves
//! `GET /runs/{id}/tasks` (paginated) and a template's steps for `with=steps`; owns the steps.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::runs::{page_of, query_params};
use super::{iso8601_now, not_found_checklist, render_task, ApiError, State};
use crate::fake::{FakeStep, FakeTask};

#[derive(Default)]
pub(crate) struct Steps {
    by_template: BTreeMap<String, Vec<FakeStep>>,
    /// Answer `with=steps` without them, as an API that ignores the include would.
    unlisted: bool,
}

impl State {
    pub fn add_steps(&mut self, checklist_id: &str, steps: Vec<FakeStep>) {
        self.steps
            .by_template
            .entry(checklist_id.to_string())
            .or_default()
            .extend(steps);
    }

    /// Gives a new run one active task per step of its template, with empty fields.
    pub(super) fn add_run_tasks(&mut self, run: &Value) {
        let run_id = run["id"].as_str().unwrap_or_default().to_string();
        let checklist_id = run["checklist_id"].as_str().unwrap_or_default().to_string();
        let steps = self
            .steps
            .by_template
            .get(&checklist_id)
            .cloned()
            .unwrap_or_default();
        for step in steps {
            let task = FakeTask {
                run_id: run_id.clone(),
                task_id: self.new_id(),
                checklist_id: checklist_id.clone(),
                step_id: step.id.clone(),
                title: step.title.clone(),
                status: "active".into(),
                fields: step
                    .fields
                    .iter()
                    .cloned()
                    .map(|mut field| {
                        field.value = Value::Null;
                        field
                    })
                    .collect(),
            };
            self.add_task(task);
        }
    }

    /// Starts an active process named `name` of a known template, as someone in the web app
    /// would; returns its id.
    pub fn start_run(&mut self, checklist_id: &str, name: &str) -> Result<String, ApiError> {
        let title = self
            .checklists
            .get(checklist_id)
            .map(|checklist| checklist.title.clone())
            .ok_or_else(not_found_checklist)?;
        let id = self.new_id();
        let run = json!({
            "id": id,
            "name": name,
            "summary": Value::Null,
            "status": "active",
            "checklist_id": checklist_id,
            "checklist_title": title,
            "created_at": iso8601_now(),
            "prerun": {},
        });
        self.runs.push(run.clone());
        self.add_run_tasks(&run);
        Ok(id)
    }

    /// Completes a process and every task of it.
    pub fn complete_run(&mut self, run_id: &str) {
        if !self.runs.set_status(run_id, "complete") {
            return;
        }
        for ((run, _), task) in self.tasks.iter_mut() {
            if run == run_id {
                task.status = "completed".into();
            }
        }
    }

    pub fn delete_run(&mut self, run_id: &str) {
        if self.runs.remove(run_id) {
            self.tasks.retain(|(run, _), _| run != run_id);
        }
    }

    pub fn run_tasks(&self, run_id: &str) -> Vec<FakeTask> {
        self.tasks
            .iter()
            .filter(|((run, _), _)| run == run_id)
            .map(|(_, task)| task.clone())
            .collect()
    }

    pub fn list_run_tasks(
        &self,
        run_id: &str,
        url: &str,
        query: Option<&str>,
    ) -> Result<Value, ApiError> {
        if !self.run_exists(run_id) {
            return Err(ApiError::NotFound(
                "No query results for model [Run].".into(),
            ));
        }
        let params = query_params(query);
        let with_form_fields = params.iter().any(|(key, value)| {
            key == "with" && value.split(',').any(|item| item == "form_fields")
        });
        let tasks = self
            .tasks
            .iter()
            .filter(|((run, _), _)| run == run_id)
            .map(|(_, task)| render_task(task, with_form_fields))
            .collect();
        page_of(url, &params, tasks)
    }

    pub fn set_steps_listed(&mut self, listed: bool) {
        self.steps.unlisted = !listed;
    }

    /// A template with its steps and their captures, as `with=steps,steps.captures` gives it.
    pub fn checklist_with_steps(&self, checklist_id: &str) -> Result<Value, ApiError> {
        let mut checklist = self.checklist_json(checklist_id)?;
        if self.steps.unlisted {
            return Ok(checklist);
        }
        checklist["steps"] = json!({ "data": self.render_steps(checklist_id) });
        Ok(checklist)
    }

    /// `GET /checklists/{id}/steps`: the template's steps with their captures, paginated
    /// (10 a page unless `per_page` says otherwise, as the real route does).
    pub fn list_steps(
        &self,
        checklist_id: &str,
        url: &str,
        query: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.checklist_json(checklist_id)?;
        page_of(url, &query_params(query), self.render_steps(checklist_id))
    }

    fn render_steps(&self, checklist_id: &str) -> Vec<Value> {
        self.steps
            .by_template
            .get(checklist_id)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(position, step)| {
                let captures: Vec<Value> = step
                    .fields
                    .iter()
                    .map(|field| {
                        json!({
                            "id": field.id,
                            "step_id": step.id,
                            "label": field.label,
                            "field_type": field.field_type,
                            "required": false,
                        })
                    })
                    .collect();
                json!({
                    "id": step.id,
                    "checklist_id": checklist_id,
                    "title": step.title,
                    "position": position + 1,
                    "captures": {"data": captures},
                })
            })
            .collect()
    }
}
