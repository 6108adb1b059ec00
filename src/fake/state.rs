//! The fake's in-memory world and the service's business rules.
//! Receives decoded requests (upload forms, JSON bodies, ids) from `routes.rs` and set-up
//! calls from `FakeTallyfy`; emits response JSON or an `ApiError` saying how the real service
//! would refuse. Owns tasks, checklists, assets, the request log, the fault list and id minting.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

mod runs;
mod steps;

use crate::fake::mint::mix;
use crate::fake::oauth::OAuth;
use crate::fake::{
    AssetSubject, DemoIds, FakeChecklist, FakeField, FakeTask, Fault, FaultKind, RequestRecord,
    StoredAsset, ALLOWED_EXTENSIONS, MAX_FILE_BYTES, ONE_OFF,
};

/// State shared by the handle and every connection task.
pub(crate) struct Shared {
    pub org_id: String,
    pub token: String,
    state: Mutex<State>,
}

impl Shared {
    pub fn new(org_id: &str, token: &str, seed: u16) -> Shared {
        Shared {
            org_id: org_id.to_string(),
            token: token.to_string(),
            state: Mutex::new(State::new(u64::from(seed))),
        }
    }

    /// A panicking test thread must not make every later request fail too, so poisoning is
    /// ignored: nothing in `State` panics halfway through a change.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a request is refused; `routes.rs` turns it into the real service's error body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ApiError {
    /// 404 `{"error": true, "message"}`.
    NotFound(String),
    /// 400 `{"error": true, "message"}`.
    BadRequest(String),
    /// 422 `{"error": true, "message"}` for refusals that are not field validation.
    Refused(String),
    /// 422 Laravel validation: (field, message) in rule order.
    Invalid(Vec<(String, String)>),
}

/// The parts of an upload that matter, as PHP would hand them to Laravel.
#[derive(Debug, Default)]
pub(crate) struct UploadForm {
    /// The `name` part when it was a real file part: (file name, content).
    pub file: Option<(String, Bytes)>,
    /// Text parts, raw; later parts with the same name win, as in PHP's `$_POST`.
    pub fields: BTreeMap<String, String>,
}

struct AssetRecord {
    stored: StoredAsset,
    /// Creation order, since ids are random-looking.
    sequence: u64,
    subject_type: String,
    subject_id: String,
    uploaded_from: String,
    step_id: Option<String>,
    checklist_id: Option<String>,
    /// Uploads through the API must name the task's step and template to be reachable; the
    /// web app always does, so hand-made assets skip that check.
    via_api: bool,
}

pub(crate) struct State {
    tasks: BTreeMap<(String, String), FakeTask>,
    checklists: BTreeMap<String, FakeChecklist>,
    assets: BTreeMap<String, AssetRecord>,
    pub requests: Vec<RequestRecord>,
    pub faults: Vec<Fault>,
    pub oauth: OAuth,
    runs: runs::Runs,
    steps: steps::Steps,
    next_id: u64,
    seed: u64,
    /// Requests rolled for faults with a `share`: the rolls repeat from run to run.
    rolls: u64,
}

impl State {
    fn new(seed: u64) -> State {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or_default();
        let seed = mix(clock ^ seed.rotate_left(48));
        State {
            tasks: BTreeMap::new(),
            checklists: BTreeMap::new(),
            assets: BTreeMap::new(),
            requests: Vec::new(),
            faults: Vec::new(),
            oauth: OAuth::new(mix(seed)),
            runs: runs::Runs::default(),
            steps: steps::Steps::default(),
            next_id: 0,
            seed,
            rolls: 0,
        }
    }

    /// A 32-hex-character id like Tallyfy's. The low half is a bijection of a counter, so ids
    /// never repeat; the high half makes them differ between fake instances.
    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!(
            "{:016x}{:016x}",
            mix(self.seed ^ self.next_id),
            mix(self.next_id)
        )
    }

    // ----- request log and faults -----

    pub fn begin_request(&mut self, method: &str, path: &str, query: Option<String>) -> usize {
        self.requests.push(RequestRecord {
            method: method.to_string(),
            path: path.to_string(),
            query,
            status: 0,
            at: Instant::now(),
        });
        self.requests.len() - 1
    }

    pub fn finish_request(&mut self, index: usize, status: u16) {
        if let Some(record) = self.requests.get_mut(index) {
            record.status = status;
        }
    }

    /// The first matching fault hits; faults with a `share` split one roll per request
    /// between them (a 20 % fault and a 10 % fault hit 30 % of the requests between them).
    pub fn take_fault(&mut self, method: &str, path: &str) -> Option<FaultKind> {
        self.rolls += 1;
        let roll = (mix(self.rolls) >> 11) as f64 / (1u64 << 53) as f64;
        let mut shared = 0.0;
        let fault = self.faults.iter_mut().find(|fault| {
            let matches = fault.times > 0
                && fault
                    .method
                    .as_deref()
                    .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
                && fault
                    .path_contains
                    .as_deref()
                    .is_none_or(|needle| path.contains(needle));
            match fault.share {
                Some(share) if matches => {
                    shared += share;
                    roll < shared
                }
                _ => matches,
            }
        })?;
        fault.times -= 1;
        Some(fault.kind.clone())
    }

    // ----- set-up and inspection -----

    pub fn add_task(&mut self, task: FakeTask) {
        self.tasks
            .insert((task.run_id.clone(), task.task_id.clone()), task);
    }

    pub fn add_checklist(&mut self, checklist: FakeChecklist) {
        self.checklists.insert(checklist.id.clone(), checklist);
    }

    pub fn add_hand_asset(
        &mut self,
        filename: &str,
        content: Bytes,
        subject: AssetSubject,
    ) -> Value {
        let (subject_type, subject_id, uploaded_from, step_id, checklist_id) = match subject {
            AssetSubject::Task {
                run_id,
                task_id,
                capture_id,
            } if run_id == ONE_OFF => ("Task", task_id, capture_id, None, None),
            AssetSubject::Task {
                run_id,
                task_id,
                capture_id,
            } => {
                let task = self.tasks.get(&(run_id.clone(), task_id));
                let step_id = task.map(|task| task.step_id.clone());
                let checklist_id = task.map(|task| task.checklist_id.clone());
                ("Run", run_id, capture_id, step_id, checklist_id)
            }
            AssetSubject::Kickoff { checklist_id } => (
                "Checklist",
                checklist_id,
                "ko_field".to_string(),
                None,
                None,
            ),
        };
        self.store_asset(NewAsset {
            filename: filename.to_string(),
            content,
            subject_type: subject_type.to_string(),
            subject_id,
            uploaded_from,
            step_id,
            checklist_id,
            fields: BTreeMap::new(),
            source: Some("local".to_string()),
            via_api: false,
        })
    }

    pub fn set_task_field(&mut self, run_id: &str, task_id: &str, capture_id: &str, value: Value) {
        if let Some(field) = self
            .tasks
            .get_mut(&(run_id.to_string(), task_id.to_string()))
            .and_then(|task| task.fields.iter_mut().find(|field| field.id == capture_id))
        {
            field.value = value;
        }
    }

    pub fn set_kickoff_field(&mut self, checklist_id: &str, field_id: &str, value: Value) {
        if let Some(field) = self.checklists.get_mut(checklist_id).and_then(|checklist| {
            checklist
                .prerun
                .iter_mut()
                .find(|field| field.id == field_id)
        }) {
            field.value = value;
        }
    }

    pub fn set_task_status(&mut self, run_id: &str, task_id: &str, status: &str) {
        if let Some(task) = self
            .tasks
            .get_mut(&(run_id.to_string(), task_id.to_string()))
        {
            task.status = status.to_string();
        }
    }

    pub fn task_field(&self, run_id: &str, task_id: &str, capture_id: &str) -> Vec<Value> {
        list_of(self.task_value(run_id, task_id, capture_id))
    }

    /// How many assets a task's field lists, without copying them.
    pub fn task_field_len(&self, run_id: &str, task_id: &str, capture_id: &str) -> usize {
        len_of(self.task_value(run_id, task_id, capture_id))
    }

    fn task_value(&self, run_id: &str, task_id: &str, capture_id: &str) -> Option<&Value> {
        self.tasks
            .get(&(run_id.to_string(), task_id.to_string()))
            .and_then(|task| task.fields.iter().find(|field| field.id == capture_id))
            .map(|field| &field.value)
    }

    pub fn kickoff_field(&self, checklist_id: &str, field_id: &str) -> Vec<Value> {
        list_of(self.kickoff_value(checklist_id, field_id))
    }

    /// How many assets a kick-off field lists, without copying them.
    pub fn kickoff_field_len(&self, checklist_id: &str, field_id: &str) -> usize {
        len_of(self.kickoff_value(checklist_id, field_id))
    }

    pub fn kickoff_value_of(&self, checklist_id: &str, field_id: &str) -> Value {
        (self.kickoff_value(checklist_id, field_id).cloned()).unwrap_or(Value::Null)
    }

    fn kickoff_value(&self, checklist_id: &str, field_id: &str) -> Option<&Value> {
        self.checklists
            .get(checklist_id)
            .and_then(|checklist| checklist.prerun.iter().find(|field| field.id == field_id))
            .map(|field| &field.value)
    }

    pub fn kickoff_field_ids(&self, checklist_id: &str) -> Vec<String> {
        self.checklists
            .get(checklist_id)
            .map(|checklist| {
                checklist
                    .prerun
                    .iter()
                    .map(|field| field.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn checklist_title(&self, checklist_id: &str) -> String {
        self.checklists
            .get(checklist_id)
            .map(|checklist| checklist.title.clone())
            .unwrap_or_default()
    }

    pub fn asset(&self, asset_id: &str) -> Option<StoredAsset> {
        self.assets
            .get(asset_id)
            .map(|record| record.stored.clone())
    }

    pub fn assets(&self) -> Vec<StoredAsset> {
        let mut records: Vec<&AssetRecord> = self.assets.values().collect();
        records.sort_by_key(|record| record.sequence);
        records
            .into_iter()
            .map(|record| record.stored.clone())
            .collect()
    }

    pub fn seed_demo(&mut self) -> DemoIds {
        let ids = DemoIds {
            run_id: self.new_id(),
            task_id: self.new_id(),
            capture_id: self.new_id(),
            checklist_id: self.new_id(),
            field_id: self.new_id(),
            text_field_id: self.new_id(),
            approval_id: self.new_id(),
            approval_file_id: self.new_id(),
            approval_source_id: self.new_id(),
        };
        let run_template = self.new_id();
        let step_id = self.new_id();
        let task_text_field = self.new_id();
        self.add_task(FakeTask {
            run_id: ids.run_id.clone(),
            task_id: ids.task_id.clone(),
            checklist_id: run_template,
            step_id,
            title: "Review the signed contract".to_string(),
            status: "active".to_string(),
            fields: vec![
                FakeField {
                    id: ids.capture_id.clone(),
                    label: "Signed contract".to_string(),
                    field_type: "file".to_string(),
                    value: json!([]),
                },
                FakeField {
                    id: task_text_field,
                    label: "Reviewer notes".to_string(),
                    field_type: "text".to_string(),
                    value: json!("Looks good so far"),
                },
            ],
        });
        self.add_checklist(FakeChecklist {
            id: ids.checklist_id.clone(),
            title: "Customer onboarding".to_string(),
            prerun: vec![
                FakeField {
                    id: ids.text_field_id.clone(),
                    label: "Customer name".to_string(),
                    field_type: "text".to_string(),
                    value: json!("ACME Corp"),
                },
                FakeField {
                    id: ids.field_id.clone(),
                    label: "Supporting documents".to_string(),
                    field_type: "file".to_string(),
                    value: json!([]),
                },
            ],
        });
        self.add_checklist(FakeChecklist {
            id: ids.approval_id.clone(),
            title: "Invoice approval".to_string(),
            prerun: vec![
                FakeField {
                    id: ids.approval_file_id.clone(),
                    label: "Invoice".to_string(),
                    field_type: "file".to_string(),
                    value: json!([]),
                },
                FakeField {
                    id: ids.approval_source_id.clone(),
                    label: "Received from".to_string(),
                    field_type: "text".to_string(),
                    value: Value::Null,
                },
            ],
        });
        self.set_required(&ids.approval_id, &ids.approval_file_id, true);
        self.set_required(&ids.approval_id, &ids.approval_source_id, true);
        ids
    }

    // ----- API operations -----

    pub fn upload(&mut self, form: UploadForm) -> Result<Value, ApiError> {
        let text = |name: &str| -> Option<String> {
            // Laravel's TrimStrings and ConvertEmptyStringsToNull middleware run first.
            form.fields
                .get(name)
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        let mut errors = Vec::new();
        match &form.file {
            None => errors.push(("name", "The name field is required.".to_string())),
            Some((filename, content)) => {
                let extension = filename
                    .rsplit_once('.')
                    .map(|(_, extension)| extension.to_ascii_lowercase());
                if !extension.is_some_and(|extension| ALLOWED_EXTENSIONS.contains(&&*extension)) {
                    errors.push((
                        "name",
                        format!(
                            "The name must be a file of type: {}.",
                            ALLOWED_EXTENSIONS.join(", ")
                        ),
                    ));
                }
                if content.len() > MAX_FILE_BYTES {
                    errors.push((
                        "name",
                        format!(
                            "The name may not be greater than {} kilobytes.",
                            MAX_FILE_BYTES / 1024
                        ),
                    ));
                }
            }
        }
        let subject_type = text("subject_type");
        let subject_id = text("subject_id");
        let uploaded_from = text("uploaded_from");
        match subject_type.as_deref() {
            None => errors.push(("subject_type", "The subject type field is required.".into())),
            Some("Run" | "Checklist" | "Task") => {}
            Some(_) => errors.push((
                "subject_type",
                "The selected subject type is invalid.".into(),
            )),
        }
        match (subject_type.as_deref(), subject_id.as_deref()) {
            (_, None) => errors.push(("subject_id", "The subject id field is required.".into())),
            (Some("Run"), Some(run_id)) if !self.run_exists(run_id) => {
                errors.push(("subject_id", "The selected subject id is invalid.".into()))
            }
            (Some("Checklist"), Some(checklist_id))
                if !self.checklists.contains_key(checklist_id) =>
            {
                errors.push(("subject_id", "The selected subject id is invalid.".into()))
            }
            (Some("Task"), Some(task_id))
                if !self
                    .tasks
                    .contains_key(&(ONE_OFF.to_string(), task_id.to_string())) =>
            {
                errors.push(("subject_id", "The selected subject id is invalid.".into()))
            }
            _ => {}
        }
        // A one-off task has no step and no template: an upload naming either is refused
        // (Laravel's `prohibited_if:subject_type,Task`).
        if subject_type.as_deref() == Some("Task") {
            for (field, name) in [("step_id", "step id"), ("checklist_id", "checklist id")] {
                if text(field).is_some() {
                    errors.push((
                        field,
                        format!("The {name} field is prohibited when subject type is Task."),
                    ));
                }
            }
        }
        if uploaded_from.is_none() {
            errors.push((
                "uploaded_from",
                "The uploaded from field is required.".into(),
            ));
        }
        if !errors.is_empty() {
            return Err(ApiError::Invalid(
                errors
                    .into_iter()
                    .map(|(field, message)| (field.to_string(), message))
                    .collect(),
            ));
        }
        let (Some((filename, content)), Some(subject_type), Some(subject_id), Some(uploaded_from)) =
            (form.file.clone(), subject_type, subject_id, uploaded_from)
        else {
            return Err(ApiError::Refused("The given data was invalid.".into()));
        };
        Ok(self.store_asset(NewAsset {
            filename,
            content,
            subject_type,
            subject_id,
            uploaded_from,
            step_id: text("step_id"),
            checklist_id: text("checklist_id"),
            source: text("source"),
            fields: form.fields.clone(),
            via_api: true,
        }))
    }

    pub fn task_json(
        &self,
        run_id: &str,
        task_id: &str,
        with_form_fields: bool,
    ) -> Result<Value, ApiError> {
        let task = self.task(run_id, task_id)?;
        Ok(render_task(task, with_form_fields))
    }

    pub fn update_task(
        &mut self,
        run_id: &str,
        task_id: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let task = self.task(run_id, task_id)?;
        if task.status == "completed" {
            return Err(ApiError::Refused(
                "This task is completed and can no longer be updated.".into(),
            ));
        }
        let mut updates = Vec::new();
        match body.get("taskdata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(taskdata)) => {
                let mut errors = Vec::new();
                for (key, value) in taskdata {
                    // Keys that match no field are dropped silently, as the real service does.
                    let Some(index) = task.fields.iter().position(|field| &field.id == key) else {
                        continue;
                    };
                    let field = &task.fields[index];
                    if field.field_type != "file" {
                        updates.push((index, value.clone()));
                        continue;
                    }
                    let reachable = |asset: &AssetRecord| {
                        asset.uploaded_from == field.id
                            && if task.run_id == ONE_OFF {
                                asset.subject_type == "Task" && asset.subject_id == task.task_id
                            } else {
                                asset.subject_type == "Run"
                                    && asset.subject_id == task.run_id
                                    && (!asset.via_api
                                        || (asset.step_id.as_deref()
                                            == Some(task.step_id.as_str())
                                            && asset.checklist_id.as_deref()
                                                == Some(task.checklist_id.as_str())))
                            }
                    };
                    match self.resolve_files(value, &format!("taskdata.{key}"), reachable) {
                        Ok(list) => updates.push((index, Value::Array(list))),
                        Err(mut field_errors) => errors.append(&mut field_errors),
                    }
                }
                if !errors.is_empty() {
                    return Err(ApiError::Invalid(errors));
                }
            }
            Some(_) => {
                return Err(ApiError::Invalid(vec![(
                    "taskdata".into(),
                    "The taskdata must be an array.".into(),
                )]))
            }
        }
        let key = (run_id.to_string(), task_id.to_string());
        let Some(task) = self.tasks.get_mut(&key) else {
            return Err(not_found_task());
        };
        for (index, value) in updates {
            task.fields[index].value = value;
        }
        Ok(render_task(task, false))
    }

    pub fn checklist_json(&self, checklist_id: &str) -> Result<Value, ApiError> {
        let checklist = self.checklist(checklist_id)?;
        Ok(render_checklist(checklist, &self.runs))
    }

    pub fn update_checklist(
        &mut self,
        checklist_id: &str,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let checklist = self.checklist(checklist_id)?;
        let title = match body.get("title") {
            Some(Value::String(title)) => title.trim().to_string(),
            _ => String::new(),
        };
        if title.is_empty() {
            return Err(ApiError::Invalid(vec![(
                "title".into(),
                "The title field is required.".into(),
            )]));
        }
        if title.chars().count() > 250 {
            return Err(ApiError::Invalid(vec![(
                "title".into(),
                "The title may not be greater than 250 characters.".into(),
            )]));
        }
        let mut new_prerun = None;
        match body.get("prerun") {
            None | Some(Value::Null) => {}
            Some(Value::Array(entries)) => {
                // Entries count by `id` only; one with just an alias leaves its field out.
                let mut by_id: BTreeMap<&str, (usize, &Map<String, Value>)> = BTreeMap::new();
                for (position, entry) in entries.iter().enumerate() {
                    if let Some(object) = entry.as_object() {
                        if let Some(id) = object.get("id").and_then(Value::as_str) {
                            by_id.insert(id, (position, object));
                        }
                    }
                }
                let mut errors = Vec::new();
                let mut kept = Vec::new();
                for field in &checklist.prerun {
                    let Some((position, entry)) = by_id.get(field.id.as_str()) else {
                        continue;
                    };
                    let mut field = field.clone();
                    match entry.get("value") {
                        None => {}
                        Some(value) if field.field_type == "file" => {
                            let reachable = |asset: &AssetRecord| {
                                asset.subject_type == "Checklist"
                                    && asset.subject_id == checklist.id
                                    && asset.uploaded_from == "ko_field"
                            };
                            let key = format!("prerun.{position}.value");
                            match self.resolve_files(value, &key, reachable) {
                                Ok(list) => field.value = Value::Array(list),
                                Err(mut field_errors) => errors.append(&mut field_errors),
                            }
                        }
                        Some(value) => field.value = value.clone(),
                    }
                    kept.push(field);
                }
                if !errors.is_empty() {
                    return Err(ApiError::Invalid(errors));
                }
                new_prerun = Some(kept);
            }
            Some(_) => {
                return Err(ApiError::Invalid(vec![(
                    "prerun".into(),
                    "The prerun must be an array.".into(),
                )]))
            }
        }
        let Some(checklist) = self.checklists.get_mut(checklist_id) else {
            return Err(not_found_checklist());
        };
        checklist.title = title;
        if let Some(prerun) = new_prerun {
            checklist.prerun = prerun;
        }
        Ok(render_checklist(checklist, &self.runs))
    }

    /// Deletes the asset and takes it out of every field that lists it.
    pub fn delete_asset(&mut self, asset_id: &str) -> Result<(), ApiError> {
        if self.assets.remove(asset_id).is_none() {
            return Err(not_found_asset());
        }
        self.detach_asset(asset_id);
        Ok(())
    }

    pub fn set_asset_content(&mut self, asset_id: &str, content: Bytes) {
        if let Some(record) = self.assets.get_mut(asset_id) {
            record.stored.content = content;
        }
    }

    /// Takes the asset out of every field that lists it; the asset stays.
    pub fn detach_asset(&mut self, asset_id: &str) {
        let fields = self
            .tasks
            .values_mut()
            .flat_map(|task| task.fields.iter_mut())
            .chain(
                self.checklists
                    .values_mut()
                    .flat_map(|checklist| checklist.prerun.iter_mut()),
            );
        for field in fields {
            if let Value::Array(list) = &mut field.value {
                list.retain(|item| item.get("id").and_then(Value::as_str) != Some(asset_id));
            }
        }
    }

    /// `DELETE /assets/{id}` only archives: the record, the file and its place in fields stay.
    pub fn archive_asset(&mut self, asset_id: &str) -> Result<(), ApiError> {
        let record = self.assets.get_mut(asset_id).ok_or_else(not_found_asset)?;
        if !record.stored.archived {
            record.stored.archived = true;
            if let Value::Object(object) = &mut record.stored.json {
                object.insert("archived_at".into(), Value::String(iso8601_now()));
            }
        }
        Ok(())
    }

    pub fn asset_json(&self, asset_id: &str) -> Result<Value, ApiError> {
        self.assets
            .get(asset_id)
            .map(|record| record.stored.json.clone())
            .ok_or_else(not_found_asset)
    }

    /// Name and content for a download; `inline` refuses files of runs, as the real inline
    /// endpoint may, so that clients learn to use `/dl`.
    pub fn asset_content(&self, asset_id: &str, inline: bool) -> Result<(String, Bytes), ApiError> {
        let record = self.assets.get(asset_id).ok_or_else(not_found_asset)?;
        if inline && matches!(record.subject_type.as_str(), "Run" | "Task") {
            return Err(not_found_asset());
        }
        Ok((
            record.stored.filename.clone(),
            record.stored.content.clone(),
        ))
    }

    // ----- helpers -----

    fn run_exists(&self, run_id: &str) -> bool {
        self.tasks.keys().any(|(run, _)| run == run_id) || self.runs.exists(run_id)
    }

    fn task(&self, run_id: &str, task_id: &str) -> Result<&FakeTask, ApiError> {
        self.tasks
            .get(&(run_id.to_string(), task_id.to_string()))
            .ok_or_else(not_found_task)
    }

    fn checklist(&self, checklist_id: &str) -> Result<&FakeChecklist, ApiError> {
        self.checklists
            .get(checklist_id)
            .ok_or_else(not_found_checklist)
    }

    /// Turns a file field's new value into the stored list: the value must be a list of
    /// objects naming live assets; assets this field cannot reach are dropped silently, as
    /// the real service stores such assets where no field sees them.
    fn resolve_files(
        &self,
        value: &Value,
        key: &str,
        reachable: impl Fn(&AssetRecord) -> bool,
    ) -> Result<Vec<Value>, Vec<(String, String)>> {
        let Value::Array(items) = value else {
            return Err(vec![(
                key.to_string(),
                format!("The {key} must be an array."),
            )]);
        };
        let mut errors = Vec::new();
        let mut list = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let id_key = format!("{key}.{position}.id");
            let Some(id) = item.get("id").and_then(Value::as_str) else {
                errors.push((id_key.clone(), format!("The {id_key} field is required.")));
                continue;
            };
            match self.assets.get(id) {
                None => errors.push((id_key.clone(), format!("The selected {id_key} is invalid."))),
                // The canonical object is stored, whatever subset of it the client sent.
                Some(asset) if reachable(asset) => list.push(asset.stored.json.clone()),
                Some(_) => {}
            }
        }
        if errors.is_empty() {
            Ok(list)
        } else {
            Err(errors)
        }
    }

    fn store_asset(&mut self, new: NewAsset) -> Value {
        let id = self.new_id();
        let json = json!({
            "id": id,
            "filename": new.filename,
            "version": 1,
            "uploaded_from": new.uploaded_from,
            "uploaded_at": iso8601_now(),
            "step_id": new.step_id,
            "source": new.source,
            "system": null,
            "uploaded_to_s3": true,
            "subject": {"id": new.subject_id, "type": new.subject_type},
        });
        self.assets.insert(
            id.clone(),
            AssetRecord {
                stored: StoredAsset {
                    id,
                    filename: new.filename,
                    content: new.content,
                    json: json.clone(),
                    fields: new.fields,
                    archived: false,
                },
                sequence: self.next_id,
                subject_type: new.subject_type,
                subject_id: new.subject_id,
                uploaded_from: new.uploaded_from,
                step_id: new.step_id,
                checklist_id: new.checklist_id,
                via_api: new.via_api,
            },
        );
        json
    }
}

struct NewAsset {
    filename: String,
    content: Bytes,
    subject_type: String,
    subject_id: String,
    uploaded_from: String,
    step_id: Option<String>,
    checklist_id: Option<String>,
    source: Option<String>,
    fields: BTreeMap<String, String>,
    via_api: bool,
}

fn render_task(task: &FakeTask, with_form_fields: bool) -> Value {
    let taskdata: Map<String, Value> = task
        .fields
        .iter()
        .map(|field| (field.id.clone(), field.value.clone()))
        .collect();
    // A one-off task is in no process, so it has no run, template or step.
    let none_if_one_off = |id: &str| (task.run_id != ONE_OFF).then(|| id.to_string());
    let mut object = json!({
        "id": task.task_id,
        "run_id": none_if_one_off(&task.run_id),
        "checklist_id": none_if_one_off(&task.checklist_id),
        "step_id": none_if_one_off(&task.step_id),
        "title": task.title,
        "status": task.status,
        "taskdata": taskdata,
    });
    if with_form_fields {
        let fields: Vec<Value> = task
            .fields
            .iter()
            .map(|field| {
                json!({
                    "id": field.id,
                    "label": field.label,
                    "field_type": field.field_type,
                    "value": field.value,
                    "required": false,
                })
            })
            .collect();
        object["form_fields"] = json!({ "data": fields });
    }
    object
}

fn render_checklist(checklist: &FakeChecklist, runs: &runs::Runs) -> Value {
    let prerun: Vec<Value> = checklist
        .prerun
        .iter()
        .map(|field| {
            json!({
                "id": field.id,
                "checklist_id": checklist.id,
                "alias": alias(&field.label),
                "label": field.label,
                "field_type": field.field_type,
                "value": field.value,
                "required": runs.is_required(&checklist.id, &field.id),
            })
        })
        .collect();
    json!({ "id": checklist.id, "title": checklist.title, "prerun": prerun })
}

/// Tallyfy derives aliases from labels; clients must not rely on them, only on ids.
fn alias(label: &str) -> String {
    let slug: String = label
        .chars()
        .map(|character| {
            if character.is_alphanumeric() {
                character.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{}_1", slug.trim_matches('_'))
}

fn list_of(value: Option<&Value>) -> Vec<Value> {
    value.and_then(Value::as_array).cloned().unwrap_or_default()
}

fn len_of(value: Option<&Value>) -> usize {
    value.and_then(Value::as_array).map_or(0, Vec::len)
}

fn not_found_task() -> ApiError {
    ApiError::NotFound("No query results for model [Task].".into())
}

fn not_found_checklist() -> ApiError {
    ApiError::NotFound("No query results for model [Checklist].".into())
}

fn not_found_asset() -> ApiError {
    ApiError::NotFound("No query results for model [Asset].".into())
}

/// The current UTC time as `2024-01-15T10:00:00Z`.
pub(crate) fn iso8601_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let days = (seconds / 86_400) as i64;
    let time = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}
