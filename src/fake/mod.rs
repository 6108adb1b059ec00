//! In-process fake of the Tallyfy API for integration tests, benchmarks and the `demo` command.
//! Receives HTTP/1.1 requests on 127.0.0.1 plus set-up calls from the test (tasks, checklists,
//! hand-made assets, required kick-off fields, faults, an OAuth client); emits responses that
//! follow the API contract strictly. Owns the server task and the shared in-memory world
//! (tasks, checklists, assets, launched runs, issued tokens, request log).

mod mint;
mod multipart;
mod oauth;
mod routes;
mod server;
mod state;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::fake::state::Shared;

/// Largest file the service accepts (Laravel rule `max:102400`, in KiB).
pub const MAX_FILE_BYTES: usize = 100 * 1024 * 1024;
/// Largest request body read: the file plus room for the other parts and multipart framing.
pub const MAX_BODY_BYTES: usize = MAX_FILE_BYTES + 1024 * 1024;

/// Extensions the upload accepts, compared case-insensitively.
pub const ALLOWED_EXTENSIONS: &[&str] = &[
    "xlsx", "xls", "pptx", "docx", "ppt", "doc", "rtf", "pdf", "txt", "mpga", "mov", "qt", "mp4",
    "webm", "jpg", "jpeg", "gif", "png", "ai", "psd", "zip", "xml", "xps", "dwg", "csv", "tif",
    "bmp",
];

/// A running fake server. Dropping it aborts the accept task and with it every open
/// connection (they live in a `JoinSet` owned by that task); `shutdown` does the same and
/// waits until the port is released.
pub struct FakeTallyfy {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    addr: SocketAddr,
}

/// The `run_id` of a one-off task: one that belongs to no process, served at
/// `/tasks/{task_id}` (and not under any run), uploaded to with `subject_type: Task`.
pub const ONE_OFF: &str = "";

/// A task of a run, or a one-off task, with its form fields.
#[derive(Debug, Clone)]
pub struct FakeTask {
    /// `ONE_OFF` for a one-off task.
    pub run_id: String,
    pub task_id: String,
    pub checklist_id: String,
    pub step_id: String,
    pub title: String,
    /// "active" or "completed"; completed tasks refuse updates with 422.
    pub status: String,
    pub fields: Vec<FakeField>,
}

impl FakeTask {
    /// A one-off task: in no process, so with no step and no template.
    pub fn one_off(task_id: &str, title: &str, fields: Vec<FakeField>) -> FakeTask {
        FakeTask {
            run_id: ONE_OFF.into(),
            task_id: task_id.into(),
            checklist_id: String::new(),
            step_id: String::new(),
            title: title.into(),
            status: "active".into(),
            fields,
        }
    }
}

/// A form field (capture) of a task or a kick-off (prerun) field of a checklist.
#[derive(Debug, Clone)]
pub struct FakeField {
    pub id: String,
    pub label: String,
    /// "file", "text", ...; only "file" fields get the asset rules.
    pub field_type: String,
    /// For file fields a JSON array of asset objects (anything else reads as empty).
    pub value: Value,
}

/// A step of a template: every process of the template gets a task for it, with these form
/// fields (empty).
#[derive(Debug, Clone)]
pub struct FakeStep {
    pub id: String,
    pub title: String,
    pub fields: Vec<FakeField>,
}

/// A template with its kick-off fields.
#[derive(Debug, Clone)]
pub struct FakeChecklist {
    pub id: String,
    pub title: String,
    pub prerun: Vec<FakeField>,
}

/// Where a hand-made asset was uploaded to.
#[derive(Debug, Clone)]
pub enum AssetSubject {
    /// A field of a task; `run_id` is `ONE_OFF` for a one-off task.
    Task {
        run_id: String,
        task_id: String,
        capture_id: String,
    },
    Kickoff {
        checklist_id: String,
    },
}

/// An asset as the fake stores it.
#[derive(Debug, Clone)]
pub struct StoredAsset {
    pub id: String,
    pub filename: String,
    pub content: Bytes,
    /// The object returned by the upload (and by GET on the asset).
    pub json: Value,
    /// The multipart text fields received (empty for hand-made assets).
    pub fields: BTreeMap<String, String>,
    /// Set by `DELETE /assets/{id}`, which archives without deleting.
    pub archived: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub method: String,
    /// Without the query, e.g. `/api/organizations/o/file`.
    pub path: String,
    pub query: Option<String>,
    /// The status sent; 0 when no response was sent (connection dropped by a fault, the
    /// client went away) or the request is still being handled.
    pub status: u16,
    /// When the request head arrived.
    pub at: Instant,
}

/// A fault to inject into the next `times` requests that match.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Matched case-insensitively; `None` matches every method.
    pub method: Option<String>,
    /// Substring of the path (without query); `None` matches every path.
    pub path_contains: Option<String>,
    pub kind: FaultKind,
    pub times: usize,
    /// Hits only this share (0 to 1) of the matching requests, chosen pseudo-randomly.
    pub share: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Respond with this status and body without acting.
    Status {
        status: u16,
        body: String,
        retry_after: Option<String>,
    },
    /// Close the connection without a response, before the request has any effect.
    DropBeforeAct,
    /// Perform the request's effect, then close the connection without a response.
    DropAfterAct,
    /// Delay, then handle normally.
    Latency(Duration),
    /// Answer `200 OK` with an HTML page, as a proxy, a captive portal or a maintenance page
    /// does, without acting.
    HtmlPage,
    /// Act, then answer with the first half of the body (a proxy that cut it short).
    CutShort,
    /// Answer with this redirect status and `Location` without acting, as a server that moved
    /// (or one that wants what the client would send on).
    Redirect { status: u16, location: String },
}

impl Fault {
    /// A fault hitting the next matching request once; `method` and `path_contains` may be
    /// empty to match anything.
    pub fn once(method: &str, path_contains: &str, kind: FaultKind) -> Fault {
        Fault {
            method: (!method.is_empty()).then(|| method.to_string()),
            path_contains: (!path_contains.is_empty()).then(|| path_contains.to_string()),
            kind,
            times: 1,
            share: None,
        }
    }

    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    /// Hits `share` (0 to 1) of the matching requests, every time (`times` is unbounded).
    pub fn share(mut self, share: f64) -> Fault {
        self.share = Some(share);
        self.times = usize::MAX;
        self
    }
}

/// Ids created by `seed_demo`.
#[derive(Debug, Clone)]
pub struct DemoIds {
    pub run_id: String,
    pub task_id: String,
    pub capture_id: String,
    pub checklist_id: String,
    pub field_id: String,
    pub text_field_id: String,
    /// The "Invoice approval" template launched once per file, its kick-off file field and
    /// its required text field "Received from".
    pub approval_id: String,
    pub approval_file_id: String,
    pub approval_source_id: String,
}

impl FakeTallyfy {
    /// Binds 127.0.0.1:0 and serves in a tokio task on the current runtime.
    pub async fn start(org_id: &str, token: &str) -> std::io::Result<FakeTallyfy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(org_id, token, addr.port()));
        let server = tokio::spawn(server::accept_loop(listener, Arc::clone(&shared)));
        tracing::debug!(%addr, "fake Tallyfy listening");
        Ok(FakeTallyfy {
            shared,
            server,
            addr,
        })
    }

    /// Stops accepting, closes every open connection and waits for the server task to end.
    pub async fn shutdown(mut self) {
        self.server.abort();
        // The only possible error is the cancellation just requested.
        let _ = (&mut self.server).await;
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "http://127.0.0.1:PORT/api" — routes are served under the /api prefix.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn org_id(&self) -> String {
        self.shared.org_id.clone()
    }

    /// "http://127.0.0.1:PORT/oauth/token": the OAuth token endpoint (client credentials grant).
    pub fn token_url(&self) -> String {
        format!("http://{}{}", self.addr, oauth::TOKEN_PATH)
    }

    /// The client the token endpoint issues tokens to; until this is called it refuses everyone
    /// with 401 `invalid_client`. The API accepts every unexpired token issued, and the static
    /// token given to `start` as well.
    pub fn set_client(&self, client_id: &str, client_secret: &str) {
        self.shared
            .lock()
            .oauth
            .set_client(client_id, client_secret);
    }

    /// `expires_in` of the tokens issued from now on, in seconds (default 604800, a week, as
    /// Tallyfy's); the API refuses a token with 401 once it has expired.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.shared.lock().oauth.set_lifetime(seconds);
    }

    /// Revokes every token issued so far: the API answers 401 to them from now on.
    pub fn revoke_tokens(&self) {
        self.shared.lock().oauth.revoke_all();
    }

    /// The requests the token endpoint received, in order of arrival.
    pub fn token_requests(&self) -> Vec<RequestRecord> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|request| request.path == oauth::TOKEN_PATH)
            .cloned()
            .collect()
    }

    /// Adds the task, replacing one with the same run and task id.
    pub fn add_task(&self, task: FakeTask) {
        self.shared.lock().add_task(task);
    }

    /// Adds the checklist, replacing one with the same id.
    pub fn add_checklist(&self, checklist: FakeChecklist) {
        self.shared.lock().add_checklist(checklist);
    }

    /// Creates an asset as if a person had uploaded it by hand through the web app (for
    /// "files attached by hand are kept" tests); returns the asset JSON object. The asset is
    /// not put into any field: place the returned object in a `FakeField::value` or call
    /// `set_task_field` / `set_kickoff_field`. It is reachable from the field named by the
    /// subject (kick-off assets from every file kick-off field of the checklist).
    pub fn add_asset(&self, filename: &str, content: &[u8], subject: AssetSubject) -> Value {
        self.shared
            .lock()
            .add_hand_asset(filename, Bytes::copy_from_slice(content), subject)
    }

    /// Replaces the value of a task's form field, as a person editing the task would.
    pub fn set_task_field(&self, run_id: &str, task_id: &str, capture_id: &str, value: Value) {
        self.shared
            .lock()
            .set_task_field(run_id, task_id, capture_id, value);
    }

    /// Replaces the value of a checklist's kick-off field.
    pub fn set_kickoff_field(&self, checklist_id: &str, field_id: &str, value: Value) {
        self.shared
            .lock()
            .set_kickoff_field(checklist_id, field_id, value);
    }

    /// Takes an asset out of every field that lists it, as a person removing the file in the
    /// web app would; the asset itself stays (its metadata and download still answer).
    pub fn detach_asset(&self, asset_id: &str) {
        self.shared.lock().detach_asset(asset_id);
    }

    /// Deletes an asset behind the client's back: gone from every field, and its metadata and
    /// download answer 404. `false` when there was no such asset.
    pub fn delete_asset(&self, asset_id: &str) -> bool {
        self.shared.lock().delete_asset(asset_id).is_ok()
    }

    /// Changes what an asset's download serves, as storage that lost or altered the file would.
    pub fn set_asset_content(&self, asset_id: &str, content: &[u8]) {
        self.shared
            .lock()
            .set_asset_content(asset_id, Bytes::copy_from_slice(content));
    }

    /// Sets a task's status ("completed" makes it refuse updates); `run_id` is `ONE_OFF` for
    /// a one-off task.
    pub fn set_task_status(&self, run_id: &str, task_id: &str, status: &str) {
        self.shared.lock().set_task_status(run_id, task_id, status);
    }

    /// Current value (list of asset objects) of a task's form field; empty when the task or
    /// field is unknown or the value is not a list.
    pub fn task_field(&self, run_id: &str, task_id: &str, capture_id: &str) -> Vec<Value> {
        self.shared.lock().task_field(run_id, task_id, capture_id)
    }

    /// How many assets a task's field lists: for polling a big field without copying it.
    pub fn task_field_len(&self, run_id: &str, task_id: &str, capture_id: &str) -> usize {
        self.shared
            .lock()
            .task_field_len(run_id, task_id, capture_id)
    }

    /// A kick-off field's value as stored, whatever its type (`Null` when there is none).
    pub fn kickoff_value(&self, checklist_id: &str, field_id: &str) -> Value {
        self.shared.lock().kickoff_value_of(checklist_id, field_id)
    }

    /// How many assets a kick-off field lists: for polling a big field without copying it.
    pub fn kickoff_field_len(&self, checklist_id: &str, field_id: &str) -> usize {
        self.shared.lock().kickoff_field_len(checklist_id, field_id)
    }

    /// Current value (list of asset objects) of a checklist's kick-off field.
    pub fn kickoff_field(&self, checklist_id: &str, field_id: &str) -> Vec<Value> {
        self.shared.lock().kickoff_field(checklist_id, field_id)
    }

    /// Kick-off field ids the checklist still has (fields left out of a prerun PUT are removed).
    pub fn kickoff_field_ids(&self, checklist_id: &str) -> Vec<String> {
        self.shared.lock().kickoff_field_ids(checklist_id)
    }

    /// The checklist's title; empty when the checklist is unknown.
    pub fn checklist_title(&self, checklist_id: &str) -> String {
        self.shared.lock().checklist_title(checklist_id)
    }

    pub fn asset(&self, asset_id: &str) -> Option<StoredAsset> {
        self.shared.lock().asset(asset_id)
    }

    /// All live (not deleted) assets, archived ones included, in the order they were created.
    pub fn assets(&self) -> Vec<StoredAsset> {
        self.shared.lock().assets()
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Faults are matched after the header/token check and before routing, in the order
    /// injected; the first with `times > 0` is applied and decremented.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Injected faults that have not been used up yet.
    pub fn pending_faults(&self) -> Vec<Fault> {
        self.shared
            .lock()
            .faults
            .iter()
            .filter(|fault| fault.times > 0)
            .cloned()
            .collect()
    }

    /// Marks a kick-off field of a checklist required (or not): a launch without a value for
    /// it is refused with 422 "<label> is required".
    pub fn set_required(&self, checklist_id: &str, field_id: &str, required: bool) {
        self.shared
            .lock()
            .set_required(checklist_id, field_id, required);
    }

    /// Adds steps to a template: processes started from then on get a task for each.
    pub fn add_steps(&self, checklist_id: &str, steps: Vec<FakeStep>) {
        self.shared.lock().add_steps(checklist_id, steps);
    }

    /// Starts an active process of a template added before (with a task per step), as
    /// someone in the web app would; returns its id. Panics on an unknown template.
    pub fn start_run(&self, checklist_id: &str, name: &str) -> String {
        self.shared
            .lock()
            .start_run(checklist_id, name)
            .unwrap_or_else(|error| panic!("cannot start a run of {checklist_id}: {error:?}"))
    }

    /// Whether `GET /checklists/{id}?with=steps` lists the steps (the default); without them
    /// a template's steps can only be learnt from a running process's tasks.
    pub fn set_steps_listed(&self, listed: bool) {
        self.shared.lock().set_steps_listed(listed);
    }

    /// Completes a process and all its tasks (which then refuse updates).
    pub fn complete_run(&self, run_id: &str) {
        self.shared.lock().complete_run(run_id);
    }

    /// Deletes a process and its tasks, as deleting it in the web app does.
    pub fn delete_run(&self, run_id: &str) {
        self.shared.lock().delete_run(run_id);
    }

    /// The tasks of a process.
    pub fn run_tasks(&self, run_id: &str) -> Vec<FakeTask> {
        self.shared.lock().run_tasks(run_id)
    }

    /// Every process launched, in launch order, as `GET /runs/{id}` shows it.
    pub fn runs(&self) -> Vec<Value> {
        self.shared.lock().runs()
    }

    /// How many processes were launched from a template: for polling without copying them.
    pub fn launched_from(&self, checklist_id: &str) -> usize {
        self.shared.lock().launched_from(checklist_id)
    }

    /// Creates one active run task with a file field (plus a text field), one template with a
    /// file kick-off field plus a text kick-off field, and an "Invoice approval" template to
    /// launch (a file field and a required text field), for the demo; returns their ids.
    pub fn seed_demo(&self) -> DemoIds {
        self.shared.lock().seed_demo()
    }
}

impl Drop for FakeTallyfy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl std::fmt::Debug for FakeTallyfy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FakeTallyfy")
            .field("addr", &self.addr)
            .field("org_id", &self.shared.org_id)
            .finish_non_exhaustive()
    }
}
