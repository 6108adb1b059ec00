//! Tests of the fake Tallyfy API through a real HTTP client (reqwest), as the daemon sees it.
//! Receives nothing; emits test results.
//! Owns the fixtures: one run task with a file and a text field, one template with a file
//! and a text kick-off field.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake::state::UploadForm;
use crate::fake::{
    AssetSubject, FakeChecklist, FakeField, FakeStep, FakeTallyfy, FakeTask, Fault, FaultKind,
    MAX_FILE_BYTES, ONE_OFF,
};

const ORG: &str = "org0000000000000000000000000001";
const TOKEN: &str = "test-token";
const RUN: &str = "run1";
const TASK: &str = "task1";
const TEMPLATE: &str = "template1";
const STEP: &str = "step1";
const CAPTURE: &str = "capture_file";
const TEXT_CAPTURE: &str = "capture_text";
const CHECKLIST: &str = "checklist1";
const KO_FILE: &str = "ko_file";
const KO_TEXT: &str = "ko_text";
/// A one-off task (in no process) with the same two fields as the run's task.
const ONE_OFF_TASK: &str = "oneoff1";

fn field(id: &str, field_type: &str, value: Value) -> FakeField {
    FakeField {
        id: id.to_string(),
        label: format!("Label of {id}"),
        field_type: field_type.to_string(),
        value,
    }
}

fn task(run_id: &str, task_id: &str) -> FakeTask {
    FakeTask {
        run_id: run_id.to_string(),
        task_id: task_id.to_string(),
        checklist_id: TEMPLATE.to_string(),
        step_id: STEP.to_string(),
        title: "Collect documents".to_string(),
        status: "active".to_string(),
        fields: vec![
            field(CAPTURE, "file", json!([])),
            field(TEXT_CAPTURE, "text", json!("hello")),
        ],
    }
}

async fn fake() -> FakeTallyfy {
    let fake = FakeTallyfy::start(ORG, TOKEN).await.expect("fake starts");
    fake.add_task(task(RUN, TASK));
    fake.add_task(task("run2", "task2"));
    fake.add_task(FakeTask::one_off(
        ONE_OFF_TASK,
        "Sign the NDA",
        task(ONE_OFF, ONE_OFF_TASK).fields,
    ));
    fake.add_checklist(FakeChecklist {
        id: CHECKLIST.to_string(),
        title: "Onboarding".to_string(),
        prerun: vec![
            field(KO_TEXT, "text", json!("ACME")),
            field(KO_FILE, "file", json!([])),
        ],
    });
    fake
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(fake: &FakeTallyfy) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: fake.base_url(),
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/organizations/{ORG}{rest}", self.base)
    }

    fn headers(&self, builder: RequestBuilder) -> RequestBuilder {
        builder
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .header("X-Tallyfy-Client", "APIClient")
    }

    fn get(&self, rest: &str) -> RequestBuilder {
        self.headers(self.client.get(self.url(rest)))
    }

    fn put(&self, rest: &str, body: &Value) -> RequestBuilder {
        self.headers(self.client.put(self.url(rest))).json(body)
    }

    fn delete(&self, rest: &str) -> RequestBuilder {
        self.headers(self.client.delete(self.url(rest)))
    }

    fn post_file(&self) -> RequestBuilder {
        self.headers(self.client.post(self.url("/file")))
    }

    async fn upload(&self, filename: &str, content: &[u8], fields: &[(&str, &str)]) -> Response {
        let mut form = Form::new().percent_encode_noop();
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        form = form.part(
            "name",
            Part::bytes(content.to_vec()).file_name(filename.to_string()),
        );
        send(self.post_file().multipart(form)).await
    }

    /// Uploads to the task's file field with every field the contract asks for.
    async fn upload_to_task(&self, filename: &str, content: &[u8]) -> Response {
        self.upload(filename, content, &task_fields(RUN)).await
    }

    async fn upload_to_kickoff(&self, filename: &str, content: &[u8]) -> Response {
        let fields = [
            ("subject_type", "Checklist"),
            ("subject_id", CHECKLIST),
            ("uploaded_from", "ko_field"),
            ("source", "local"),
        ];
        self.upload(filename, content, &fields).await
    }
}

/// What an upload to a one-off task's file field sends: the task itself as the subject.
fn one_off_fields(task_id: &str) -> [(&str, &str); 4] {
    [
        ("subject_type", "Task"),
        ("subject_id", task_id),
        ("uploaded_from", CAPTURE),
        ("source", "local"),
    ]
}

fn task_fields(run_id: &str) -> [(&str, &str); 6] {
    [
        ("subject_type", "Run"),
        ("subject_id", run_id),
        ("uploaded_from", CAPTURE),
        ("step_id", STEP),
        ("checklist_id", TEMPLATE),
        ("source", "local"),
    ]
}

/// A response read completely, so tests can look at it several times.
struct Response {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Bytes,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn send(builder: RequestBuilder) -> Response {
    let response = builder.send().await.expect("request gets an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("body is read");
    Response {
        status,
        headers,
        body,
    }
}

/// GET on the test task with only the given credentials and headers.
async fn get_task_with(
    api: &Api,
    token: Option<&str>,
    accept: bool,
    client_header: bool,
) -> Response {
    let mut request = api.client.get(api.url(&task_path(RUN, TASK)));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if accept {
        request = request.header("Accept", "application/json");
    }
    if client_header {
        request = request.header("X-Tallyfy-Client", "APIClient");
    }
    send(request).await
}

fn task_path(run_id: &str, task_id: &str) -> String {
    format!("/runs/{run_id}/tasks/{task_id}")
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|item| item["id"].as_str().map(str::to_string))
        .collect()
}

fn asset_id(response: &Response) -> String {
    assert_eq!(response.status, StatusCode::OK, "{:?}", response.json());
    response.json()["data"]["id"]
        .as_str()
        .expect("asset has an id")
        .to_string()
}

// ----- headers, token, organization, routing -----

#[tokio::test]
async fn requests_without_the_client_header_are_refused_with_401() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = get_task_with(&api, Some(TOKEN), true, false).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.json()["error"], "Unauthenticated.");
    assert!(response.json()["message"]
        .as_str()
        .is_some_and(|message| message.contains("X-Tallyfy-Client")));
}

#[tokio::test]
async fn requests_without_accept_json_are_refused_with_401() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = get_task_with(&api, Some(TOKEN), false, true).await;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn requests_with_a_wrong_or_missing_token_are_refused_with_401() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let wrong = get_task_with(&api, Some("not-the-token"), true, true).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.json(), json!({"error": "Unauthenticated."}));
    let missing = get_task_with(&api, None, true, true).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    let ok = send(api.get(&task_path(RUN, TASK))).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn another_organization_is_forbidden() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let url = format!(
        "{}/organizations/other-org/runs/{RUN}/tasks/{TASK}",
        api.base
    );
    let response = send(api.headers(api.client.get(url))).await;
    assert_eq!(response.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let unknown = send(api.get("/nothing/here")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.json(), json!({"message": "endpoint not found"}));
    // A doubled slash from a badly joined base URL must not work by accident.
    let doubled = send(api.headers(api.client.get(format!(
        "{}//organizations/{ORG}/checklists/{CHECKLIST}",
        api.base
    ))))
    .await;
    assert_eq!(doubled.status, StatusCode::NOT_FOUND);
    let wrong_method = send(api.headers(api.client.patch(api.url("/file")))).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    let unknown_task = send(api.get(&task_path(RUN, "nope"))).await;
    assert_eq!(unknown_task.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_task.json()["error"], true);
}

#[tokio::test]
async fn responses_carry_json_content_type_and_length_over_one_kept_alive_connection() {
    let fake = fake().await;
    let api = Api::new(&fake);
    for _ in 0..3 {
        let response = send(api.get(&task_path(RUN, TASK))).await;
        assert_eq!(response.headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            response.headers[CONTENT_LENGTH],
            response.body.len().to_string().as_str()
        );
    }
}

#[tokio::test]
async fn every_request_is_recorded_with_the_status_it_got() {
    let fake = fake().await;
    let api = Api::new(&fake);
    send(api.client.get(api.url(&task_path(RUN, TASK)))).await;
    send(api.get(&format!("{}?with=form_fields", task_path(RUN, TASK)))).await;
    let records = fake.requests();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].status, 401);
    assert_eq!(records[1].status, 200);
    assert_eq!(records[1].method, "GET");
    assert_eq!(
        records[1].path,
        format!("/api/organizations/{ORG}/runs/{RUN}/tasks/{TASK}")
    );
    assert_eq!(records[1].query.as_deref(), Some("with=form_fields"));
    assert!(records[0].at <= records[1].at);
}

// ----- uploads -----

#[tokio::test]
async fn upload_round_trips_a_name_with_spaces_unicode_and_percent_22() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let filename = "Q1 report – Zürich 日本 %22final%22.pdf";
    let response = api.upload_to_task(filename, b"%PDF-1.7 content").await;
    let id = asset_id(&response);
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|character| character.is_ascii_hexdigit()));
    let data = &response.json()["data"];
    assert_eq!(data["filename"], filename);
    assert_eq!(data["version"], 1);
    assert_eq!(data["uploaded_from"], CAPTURE);
    assert_eq!(data["step_id"], STEP);
    assert_eq!(data["source"], "local");
    assert_eq!(data["system"], Value::Null);
    assert_eq!(data["uploaded_to_s3"], true);
    assert_eq!(data["subject"], json!({"id": RUN, "type": "Run"}));
    assert!(data["uploaded_at"]
        .as_str()
        .is_some_and(|at| at.ends_with('Z')));
    let stored = fake.asset(&id).expect("asset is stored");
    assert_eq!(stored.filename, filename);
    assert_eq!(&stored.content[..], b"%PDF-1.7 content");
    assert_eq!(stored.json, *data);
    assert_eq!(
        stored.fields.get("checklist_id").map(String::as_str),
        Some(TEMPLATE)
    );
    assert!(!stored.fields.contains_key("name"));
}

#[tokio::test]
async fn upload_through_assets_route_uses_the_same_handler() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let form = Form::new()
        .text("subject_type", "Checklist")
        .text("subject_id", CHECKLIST)
        .text("uploaded_from", "ko_field")
        .part("name", Part::bytes(b"a,b".to_vec()).file_name("data.CSV"));
    let response = send(
        api.headers(api.client.post(api.url("/assets")))
            .multipart(form),
    )
    .await;
    asset_id(&response);
    assert_eq!(fake.assets().len(), 1);
}

/// reqwest escapes `"` as `\"` inside the quoted name; PHP undoes that escape.
#[tokio::test]
async fn a_backslash_escaped_quote_in_a_file_name_arrives_as_a_quote() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = api.upload_to_task("say \"hi\".txt", b"hi").await;
    let id = asset_id(&response);
    assert_eq!(fake.asset(&id).expect("stored").filename, "say \"hi\".txt");
}

fn raw_upload_body(disposition: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in task_fields(RUN) {
        body.extend_from_slice(
            format!(
                "--B0undary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--B0undary\r\nContent-Disposition: form-data; {disposition}\r\n\
             Content-Type: application/pdf\r\n\r\n%PDF\r\n--B0undary--\r\n"
        )
        .as_bytes(),
    );
    body
}

#[tokio::test]
async fn upload_without_filename_quoted_is_rejected() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let body = raw_upload_body("name=\"name\"; filename*=utf-8''my%20file.pdf");
    let response = send(
        api.post_file()
            .header(CONTENT_TYPE, "multipart/form-data; boundary=B0undary")
            .body(body),
    )
    .await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let json = response.json();
    assert_eq!(json["error"], true);
    assert_eq!(json["message"], "The name field is required.");
    assert_eq!(
        json["errors"]["name"],
        json!(["The name field is required."])
    );
    assert!(fake.assets().is_empty());

    // The same body with a plain filename parameter is accepted.
    let body = raw_upload_body("name=\"name\"; filename=\"my file.pdf\"");
    let response = send(
        api.post_file()
            .header(CONTENT_TYPE, "multipart/form-data; boundary=B0undary")
            .body(body),
    )
    .await;
    asset_id(&response);
}

#[tokio::test]
async fn upload_with_a_chunked_body_is_rejected_with_411() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(b"%PDF"))];
    let stream = futures_util::stream::iter(chunks);
    let mut form = Form::new();
    for (name, value) in task_fields(RUN) {
        form = form.text(name, value);
    }
    let part = Part::stream(reqwest::Body::wrap_stream(stream)).file_name("a.pdf");
    let response = send(api.post_file().multipart(form.part("name", part))).await;
    assert_eq!(response.status, StatusCode::LENGTH_REQUIRED);
    assert!(fake.assets().is_empty());
}

#[tokio::test]
async fn upload_with_a_wrong_extension_is_rejected_with_422() {
    let fake = fake().await;
    let api = Api::new(&fake);
    for filename in ["script.exe", "no_extension", "archive.tar.gz"] {
        let response = api.upload_to_task(filename, b"x").await;
        assert_eq!(
            response.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{filename}"
        );
        assert!(response.json()["errors"]["name"][0]
            .as_str()
            .is_some_and(|message| message.starts_with("The name must be a file of type: xlsx")));
    }
    let upper = api.upload_to_task("SCAN.JPEG", b"x").await;
    asset_id(&upper);
    asset_id(&api.upload_to_task("later.pdf", b"x").await);
    let names: Vec<String> = fake
        .assets()
        .into_iter()
        .map(|asset| asset.filename)
        .collect();
    assert_eq!(
        names,
        vec!["SCAN.JPEG", "later.pdf"],
        "assets come in upload order"
    );
}

#[tokio::test]
async fn upload_without_required_fields_lists_every_error() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = api.upload("a.pdf", b"x", &[("source", "local")]).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let json = response.json();
    assert_eq!(
        json["message"],
        "The subject type field is required. (and 2 more errors)"
    );
    for key in ["subject_type", "subject_id", "uploaded_from"] {
        assert!(json["errors"][key].is_array(), "{key}");
    }
    let bad_type = api
        .upload(
            "a.pdf",
            b"x",
            &[
                ("subject_type", "run"),
                ("subject_id", RUN),
                ("uploaded_from", CAPTURE),
            ],
        )
        .await;
    assert_eq!(
        bad_type.json()["errors"]["subject_type"],
        json!(["The selected subject type is invalid."])
    );
}

#[tokio::test]
async fn upload_to_an_unknown_run_or_checklist_is_rejected() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let run = api.upload("a.pdf", b"x", &task_fields("no-such-run")).await;
    assert_eq!(run.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        run.json()["errors"]["subject_id"],
        json!(["The selected subject id is invalid."])
    );
    let fields = [
        ("subject_type", "Checklist"),
        ("subject_id", "no-such-checklist"),
        ("uploaded_from", "ko_field"),
    ];
    let checklist = api.upload("a.pdf", b"x", &fields).await;
    assert_eq!(checklist.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(fake.assets().is_empty());
}

#[tokio::test]
async fn upload_that_is_not_multipart_reports_missing_fields() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = send(api.post_file().json(&json!({"name": "a.pdf"}))).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        response.json()["errors"]["name"],
        json!(["The name field is required."])
    );
}

#[tokio::test]
async fn upload_declaring_a_body_over_the_limit_is_rejected_with_413() {
    let fake = fake().await;
    let mut stream = tokio::net::TcpStream::connect(fake.addr())
        .await
        .expect("connects");
    let head = format!(
        "POST /api/organizations/{ORG}/file HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n\
         X-Tallyfy-Client: APIClient\r\nContent-Type: multipart/form-data; boundary=B\r\n\
         Content-Length: {}\r\n\r\n",
        200 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let read = async {
        while !received.windows(4).any(|window| window == b"\r\n\r\n") {
            let count = stream.read(&mut buffer).await.expect("reads");
            if count == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..count]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answers in time");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[test]
fn a_file_over_100_mib_is_rejected_with_422() {
    let shared = crate::fake::state::Shared::new(ORG, TOKEN, 1);
    shared.lock().add_task(task(RUN, TASK));
    let mut form = UploadForm {
        file: Some(("big.zip".into(), Bytes::from(vec![0u8; MAX_FILE_BYTES + 1]))),
        ..UploadForm::default()
    };
    for (name, value) in task_fields(RUN) {
        form.fields.insert(name.into(), value.into());
    }
    let refused = shared.lock().upload(form);
    let Err(crate::fake::state::ApiError::Invalid(errors)) = refused else {
        panic!("expected a validation error, got {refused:?}");
    };
    assert_eq!(errors[0].0, "name");
    assert!(errors[0].1.contains("102400 kilobytes"));
    assert!(shared.lock().assets().is_empty());
}

// ----- tasks -----

#[tokio::test]
async fn task_get_includes_form_fields_only_when_asked() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let plain = send(api.get(&task_path(RUN, TASK))).await.json();
    assert_eq!(plain["data"]["step_id"], STEP);
    assert_eq!(plain["data"]["checklist_id"], TEMPLATE);
    assert_eq!(plain["data"]["run_id"], RUN);
    assert!(plain["data"].get("form_fields").is_none());
    let full = send(
        api.get(&task_path(RUN, TASK))
            .query(&[("with", "form_fields")]),
    )
    .await
    .json();
    let fields = full["data"]["form_fields"]["data"]
        .as_array()
        .expect("form fields");
    assert_eq!(fields.len(), 2);
    assert_eq!(fields[0]["id"], CAPTURE);
    assert_eq!(fields[0]["field_type"], "file");
    assert_eq!(fields[0]["required"], false);
}

#[tokio::test]
async fn put_with_an_unknown_taskdata_key_answers_200_and_changes_nothing() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("a.pdf", b"a").await.json()["data"].clone();
    let body = json!({"taskdata": {"not_a_field": [asset]}});
    let response = send(api.put(&task_path(RUN, TASK), &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    let taskdata = &response.json()["data"]["taskdata"];
    assert!(taskdata.get("not_a_field").is_none());
    assert_eq!(taskdata[CAPTURE], json!([]));
    assert!(fake.task_field(RUN, TASK, CAPTURE).is_empty());
}

#[tokio::test]
async fn put_replaces_the_whole_file_list_and_keeps_other_fields() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let by_hand = fake.add_asset(
        "by hand.docx",
        b"hand",
        AssetSubject::Task {
            run_id: RUN.into(),
            task_id: TASK.into(),
            capture_id: CAPTURE.into(),
        },
    );
    fake.set_task_field(RUN, TASK, CAPTURE, json!([by_hand.clone()]));
    let first = api.upload_to_task("first.pdf", b"1").await.json()["data"].clone();
    let second = api.upload_to_task("second.pdf", b"2").await.json()["data"].clone();

    let body = json!({"taskdata": {CAPTURE: [by_hand.clone(), first.clone()]}});
    let response = send(api.put(&task_path(RUN, TASK), &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        ids(response.json()["data"]["taskdata"][CAPTURE]
            .as_array()
            .expect("list")),
        ids(&[by_hand.clone(), first.clone()])
    );
    assert_eq!(response.json()["data"]["taskdata"][TEXT_CAPTURE], "hello");

    // Only the id matters: the stored element is the server's own asset object.
    let body = json!({"taskdata": {CAPTURE: [{"id": second["id"]}]}});
    send(api.put(&task_path(RUN, TASK), &body)).await;
    let now = fake.task_field(RUN, TASK, CAPTURE);
    assert_eq!(now, vec![second.clone()]);
    assert_eq!(fake.assets().len(), 3, "replaced assets are not deleted");
}

#[tokio::test]
async fn put_on_a_completed_task_is_rejected_with_422() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("a.pdf", b"a").await.json()["data"].clone();
    fake.set_task_status(RUN, TASK, "completed");
    let body = json!({"taskdata": {CAPTURE: [asset]}});
    let response = send(api.put(&task_path(RUN, TASK), &body)).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(fake.task_field(RUN, TASK, CAPTURE).is_empty());
}

#[tokio::test]
async fn put_with_an_asset_from_another_run_drops_it_silently() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let mine = api.upload_to_task("mine.pdf", b"1").await.json()["data"].clone();
    let foreign = api
        .upload("other.pdf", b"2", &task_fields("run2"))
        .await
        .json()["data"]
        .clone();
    let body = json!({"taskdata": {CAPTURE: [mine.clone(), foreign]}});
    let response = send(api.put(&task_path(RUN, TASK), &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(fake.task_field(RUN, TASK, CAPTURE), vec![mine]);
}

#[tokio::test]
async fn put_with_an_asset_uploaded_without_step_and_template_drops_it_silently() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let fields = [
        ("subject_type", "Run"),
        ("subject_id", RUN),
        ("uploaded_from", CAPTURE),
    ];
    let orphan = api.upload("orphan.pdf", b"x", &fields).await.json()["data"].clone();
    let wrong_capture = [
        ("subject_type", "Run"),
        ("subject_id", RUN),
        ("uploaded_from", TEXT_CAPTURE),
        ("step_id", STEP),
        ("checklist_id", TEMPLATE),
    ];
    let elsewhere = api.upload("else.pdf", b"x", &wrong_capture).await.json()["data"].clone();
    let body = json!({"taskdata": {CAPTURE: [orphan, elsewhere]}});
    let response = send(api.put(&task_path(RUN, TASK), &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.json()["data"]["taskdata"][CAPTURE], json!([]));
    assert_eq!(fake.assets().len(), 2, "the unreachable assets stay stored");
}

// ----- one-off tasks -----

#[tokio::test]
async fn a_one_off_task_is_served_at_its_own_route_and_belongs_to_no_run() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let answer = send(
        api.get(&format!("/tasks/{ONE_OFF_TASK}"))
            .query(&[("with", "form_fields")]),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let data = &answer.json()["data"];
    assert_eq!(data["id"], ONE_OFF_TASK);
    assert_eq!(data["title"], "Sign the NDA");
    for key in ["run_id", "step_id", "checklist_id"] {
        assert_eq!(data[key], Value::Null, "{key}");
    }
    assert_eq!(data["form_fields"]["data"][0]["id"], CAPTURE);
    let run_task = send(api.get(&format!("/tasks/{TASK}"))).await;
    assert_eq!(
        run_task.status,
        StatusCode::NOT_FOUND,
        "a task of a process is no one-off task"
    );
}

#[tokio::test]
async fn a_one_off_upload_is_attached_to_its_task_and_to_no_other() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let path = format!("/tasks/{ONE_OFF_TASK}");
    let uploaded = api
        .upload("nda.pdf", b"signed", &one_off_fields(ONE_OFF_TASK))
        .await;
    let asset = uploaded.json()["data"].clone();
    assert_eq!(
        asset["subject"],
        json!({"id": ONE_OFF_TASK, "type": "Task"})
    );
    let to_the_run = json!({"taskdata": {CAPTURE: [asset.clone()]}});
    send(api.put(&task_path(RUN, TASK), &to_the_run)).await;
    assert!(
        fake.task_field(RUN, TASK, CAPTURE).is_empty(),
        "another task's asset is dropped"
    );
    let process_asset = api.upload_to_task("run.pdf", b"run").await.json()["data"].clone();
    let body = json!({"taskdata": {CAPTURE: [asset.clone(), process_asset]}});
    let response = send(api.put(&path, &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(
        ids(&fake.task_field(ONE_OFF, ONE_OFF_TASK, CAPTURE)),
        ids(std::slice::from_ref(&asset))
    );
    fake.set_task_status(ONE_OFF, ONE_OFF_TASK, "completed");
    let refused = send(api.put(&path, &json!({"taskdata": {CAPTURE: []}}))).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fake.task_field(ONE_OFF, ONE_OFF_TASK, CAPTURE).len(), 1);
}

#[tokio::test]
async fn a_one_off_upload_naming_a_step_or_template_is_rejected() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let mut fields = one_off_fields(ONE_OFF_TASK).to_vec();
    fields.extend([("step_id", STEP), ("checklist_id", TEMPLATE)]);
    let response = api.upload("nda.pdf", b"x", &fields).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    let errors = &response.json()["errors"];
    assert_eq!(
        errors["step_id"][0],
        "The step id field is prohibited when subject type is Task."
    );
    assert_eq!(
        errors["checklist_id"][0],
        "The checklist id field is prohibited when subject type is Task."
    );
    let unknown = api.upload("nda.pdf", b"x", &one_off_fields(TASK)).await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a run's task is no subject"
    );
    assert!(unknown.json()["errors"]["subject_id"].is_array());
    assert!(fake.assets().is_empty());
}

#[tokio::test]
async fn put_with_an_unknown_asset_or_a_non_list_is_rejected_with_422() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let unknown = json!({"taskdata": {CAPTURE: [{"id": "00000000000000000000000000000000"}]}});
    let response = send(api.put(&task_path(RUN, TASK), &unknown)).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.json()["errors"][format!("taskdata.{CAPTURE}.0.id")].is_array());
    let asset = api.upload_to_task("a.pdf", b"a").await.json()["data"].clone();
    let not_a_list = json!({"taskdata": {CAPTURE: asset}});
    let response = send(api.put(&task_path(RUN, TASK), &not_a_list)).await;
    assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(fake.task_field(RUN, TASK, CAPTURE).is_empty());
}

#[tokio::test]
async fn put_with_malformed_json_is_rejected_with_400() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let response = send(
        api.headers(api.client.put(api.url(&task_path(RUN, TASK))))
            .header(CONTENT_TYPE, "application/json")
            .body("{\"taskdata\": "),
    )
    .await;
    assert_eq!(response.status, StatusCode::BAD_REQUEST);
    assert_eq!(response.json()["error"], true);
}

// ----- checklists -----

#[tokio::test]
async fn checklist_get_lists_kickoff_fields_with_ids_and_aliases() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let json = send(api.get(&format!("/checklists/{CHECKLIST}")))
        .await
        .json();
    assert_eq!(json["data"]["title"], "Onboarding");
    let prerun = json["data"]["prerun"].as_array().expect("prerun");
    assert_eq!(ids(prerun), vec![KO_TEXT.to_string(), KO_FILE.to_string()]);
    assert_eq!(prerun[1]["checklist_id"], CHECKLIST);
    assert!(prerun[1]["alias"].is_string());
}

#[tokio::test]
async fn checklist_put_without_title_is_rejected_with_422() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let path = format!("/checklists/{CHECKLIST}");
    for body in [
        json!({"prerun": []}),
        json!({"title": "   ", "prerun": []}),
        json!({"title": "x".repeat(251)}),
    ] {
        let response = send(api.put(&path, &body)).await;
        assert_eq!(response.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(response.json()["errors"]["title"].is_array());
    }
    let missing = send(api.put(&path, &json!({"prerun": []}))).await;
    assert_eq!(missing.json()["message"], "The title field is required.");
    assert_eq!(fake.kickoff_field_ids(CHECKLIST).len(), 2);
    let renamed = send(api.put(&path, &json!({"title": "Renamed"}))).await;
    assert_eq!(renamed.status, StatusCode::OK);
    assert_eq!(fake.checklist_title(CHECKLIST), "Renamed");
    assert_eq!(
        fake.kickoff_field_ids(CHECKLIST).len(),
        2,
        "no prerun, no change"
    );
}

#[tokio::test]
async fn checklist_put_removes_kickoff_fields_left_out_of_prerun() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_kickoff("ko.pdf", b"k").await.json()["data"].clone();
    let body = json!({
        "title": "Onboarding",
        "prerun": [
            {"id": KO_FILE, "value": [asset.clone()]},
            {"alias": "label_of_ko_text_1", "value": "changed"},
        ],
    });
    let response = send(api.put(&format!("/checklists/{CHECKLIST}"), &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(fake.kickoff_field_ids(CHECKLIST), vec![KO_FILE.to_string()]);
    assert_eq!(fake.kickoff_field(CHECKLIST, KO_FILE), vec![asset]);
    assert_eq!(
        ids(response.json()["data"]["prerun"]
            .as_array()
            .expect("prerun")),
        vec![KO_FILE.to_string()]
    );
}

#[tokio::test]
async fn checklist_put_with_the_whole_prerun_keeps_every_field() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let kickoff = api.upload_to_kickoff("ko.pdf", b"k").await.json()["data"].clone();
    let task_asset = api.upload_to_task("task.pdf", b"t").await.json()["data"].clone();
    let path = format!("/checklists/{CHECKLIST}");
    let mut prerun = send(api.get(&path)).await.json()["data"]["prerun"].clone();
    let Some(entries) = prerun.as_array_mut() else {
        panic!("prerun is a list");
    };
    entries[1]["value"] = json!([kickoff.clone(), task_asset]);
    let body = json!({"title": "Onboarding", "prerun": prerun});
    let response = send(api.put(&path, &body)).await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(fake.kickoff_field_ids(CHECKLIST).len(), 2);
    // The task's asset cannot be reached from a kick-off field and is dropped silently.
    assert_eq!(fake.kickoff_field(CHECKLIST, KO_FILE), vec![kickoff]);
}

// ----- deleting and reading assets -----

#[tokio::test]
async fn delete_removes_the_asset_from_every_field_and_a_second_delete_is_404() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let keep = api.upload_to_task("keep.pdf", b"k").await.json()["data"].clone();
    let gone = api.upload_to_task("gone.pdf", b"g").await.json()["data"].clone();
    let body = json!({"taskdata": {CAPTURE: [keep.clone(), gone.clone()]}});
    send(api.put(&task_path(RUN, TASK), &body)).await;
    let id = gone["id"].as_str().expect("id");

    let response = send(api.delete(&format!("/file/{id}"))).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(response.body.is_empty());
    assert_eq!(fake.task_field(RUN, TASK, CAPTURE), vec![keep]);
    assert!(fake.asset(id).is_none());

    let again = send(api.delete(&format!("/file/{id}"))).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    let metadata = send(api.get(&format!("/assets/{id}"))).await;
    assert_eq!(metadata.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_kickoff_asset_removes_it_from_the_kickoff_field() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = fake.add_asset(
        "hand.png",
        b"png",
        AssetSubject::Kickoff {
            checklist_id: CHECKLIST.into(),
        },
    );
    fake.set_kickoff_field(CHECKLIST, KO_FILE, json!([asset.clone()]));
    let id = asset["id"].as_str().expect("id");
    let response = send(api.delete(&format!("/file/{id}"))).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(fake.kickoff_field(CHECKLIST, KO_FILE).is_empty());
}

#[tokio::test]
async fn deleting_through_assets_only_archives() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("a.pdf", b"a").await.json()["data"].clone();
    send(api.put(
        &task_path(RUN, TASK),
        &json!({"taskdata": {CAPTURE: [asset.clone()]}}),
    ))
    .await;
    let id = asset["id"].as_str().expect("id");
    let response = send(api.delete(&format!("/assets/{id}"))).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(fake.asset(id).is_some_and(|stored| stored.archived));
    assert_eq!(
        ids(&fake.task_field(RUN, TASK, CAPTURE)),
        vec![id.to_string()]
    );
}

#[tokio::test]
async fn asset_metadata_and_download_return_the_stored_file() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("Résumé.pdf", b"%PDF bytes").await.json()["data"].clone();
    let id = asset["id"].as_str().expect("id");
    let metadata = send(api.get(&format!("/assets/{id}"))).await;
    assert_eq!(metadata.json(), json!({"data": [asset]}));
    let download = send(api.get(&format!("/file/{id}/dl"))).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(&download.body[..], b"%PDF bytes");
    let disposition = download.headers["content-disposition"].as_bytes();
    assert!(disposition.starts_with("attachment; filename=\"Résumé.pdf\"".as_bytes()));
}

#[tokio::test]
async fn assets_changed_or_detached_behind_the_clients_back_show_in_downloads_and_fields() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("a.pdf", b"%PDF a").await.json()["data"].clone();
    let id = asset["id"].as_str().expect("id").to_string();
    fake.set_task_field(RUN, TASK, CAPTURE, json!([asset]));
    assert_eq!(fake.task_field(RUN, TASK, CAPTURE).len(), 1);
    fake.set_asset_content(&id, b"%PDF changed");
    let download = send(api.get(&format!("/file/{id}/dl"))).await;
    assert_eq!(&download.body[..], b"%PDF changed");

    fake.detach_asset(&id);
    assert!(fake.task_field(RUN, TASK, CAPTURE).is_empty());
    let metadata = send(api.get(&format!("/assets/{id}"))).await;
    assert_eq!(
        metadata.status,
        StatusCode::OK,
        "a detached asset still exists"
    );

    assert!(fake.delete_asset(&id));
    assert!(!fake.delete_asset(&id));
    let metadata = send(api.get(&format!("/assets/{id}"))).await;
    assert_eq!(metadata.status, StatusCode::NOT_FOUND);
    let download = send(api.get(&format!("/file/{id}/dl"))).await;
    assert_eq!(download.status, StatusCode::NOT_FOUND);
}

// ----- faults -----

#[tokio::test]
async fn drop_before_act_stores_nothing_and_the_client_sees_a_connection_error() {
    let fake = fake().await;
    let api = Api::new(&fake);
    fake.inject(Fault::once("POST", "/file", FaultKind::DropBeforeAct));
    let mut form = Form::new();
    for (name, value) in task_fields(RUN) {
        form = form.text(name, value);
    }
    let form = form.part("name", Part::bytes(b"x".to_vec()).file_name("a.pdf"));
    let result = api.post_file().multipart(form).send().await;
    let error = result.expect_err("no response is sent");
    // reqwest reports hyper's IncompleteMessage: a request error, not a status.
    assert!(error.is_request() && !error.is_status(), "{error:?}");
    assert!(fake.assets().is_empty());
    assert_eq!(fake.requests().last().map(|record| record.status), Some(0));
    // The fault is used up and the next attempt works, on a new connection.
    asset_id(&api.upload_to_task("a.pdf", b"x").await);
    assert!(fake.pending_faults().is_empty());
}

#[tokio::test]
async fn drop_after_act_stores_the_asset_and_the_client_sees_a_connection_error() {
    let fake = fake().await;
    let api = Api::new(&fake);
    // A request first, so the upload travels over a kept-alive connection as in the daemon.
    send(api.get(&task_path(RUN, TASK))).await;
    fake.inject(Fault::once("POST", "/file", FaultKind::DropAfterAct));
    let mut form = Form::new();
    for (name, value) in task_fields(RUN) {
        form = form.text(name, value);
    }
    let form = form.part("name", Part::bytes(b"stored".to_vec()).file_name("a.pdf"));
    let result = api.post_file().multipart(form).send().await;
    let error = result.expect_err("no response is sent");
    assert!(error.is_request() && !error.is_timeout(), "{error:?}");
    let assets = fake.assets();
    assert_eq!(assets.len(), 1);
    assert_eq!(&assets[0].content[..], b"stored");
    assert_eq!(fake.requests().last().map(|record| record.status), Some(0));
}

#[tokio::test]
async fn drop_after_act_on_a_put_applies_the_change() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_task("a.pdf", b"a").await.json()["data"].clone();
    fake.inject(Fault::once("PUT", "/tasks/", FaultKind::DropAfterAct));
    let body = json!({"taskdata": {CAPTURE: [asset.clone()]}});
    let result = api.put(&task_path(RUN, TASK), &body).send().await;
    assert!(result.is_err());
    assert_eq!(fake.task_field(RUN, TASK, CAPTURE), vec![asset]);
}

#[tokio::test]
async fn status_fault_answers_with_retry_after_and_does_not_act() {
    let fake = fake().await;
    let api = Api::new(&fake);
    fake.inject(
        Fault::once(
            "post",
            "/file",
            FaultKind::Status {
                status: 429,
                body: r#"{"message":"Too Many Attempts.","code":"RATE_LIMIT_EXCEEDED"}"#.into(),
                retry_after: Some("7".into()),
            },
        )
        .times(2),
    );
    for _ in 0..2 {
        let response = api.upload_to_task("a.pdf", b"a").await;
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers[RETRY_AFTER], "7");
        assert_eq!(response.json()["code"], "RATE_LIMIT_EXCEEDED");
    }
    assert!(fake.assets().is_empty());
    asset_id(&api.upload_to_task("a.pdf", b"a").await);

    fake.inject(Fault::once(
        "",
        "",
        FaultKind::Status {
            status: 503,
            body: String::new(),
            retry_after: None,
        },
    ));
    let response = send(api.get(&task_path(RUN, TASK))).await;
    assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers.get(RETRY_AFTER).is_none());
}

#[tokio::test]
async fn faults_do_not_hit_requests_refused_with_401() {
    let fake = fake().await;
    let api = Api::new(&fake);
    fake.inject(Fault::once("", "", FaultKind::DropBeforeAct));
    let refused = send(api.client.get(api.url(&task_path(RUN, TASK)))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.pending_faults().len(), 1);
    fake.clear_faults();
    assert!(fake.pending_faults().is_empty());
}

#[tokio::test]
async fn latency_fault_delays_the_answer() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let delay = Duration::from_millis(300);
    fake.inject(Fault::once("GET", "/tasks/", FaultKind::Latency(delay)));
    let started = Instant::now();
    let response = send(api.get(&task_path(RUN, TASK))).await;
    assert_eq!(response.status, StatusCode::OK);
    assert!(started.elapsed() >= delay);
    let started = Instant::now();
    send(api.get(&task_path(RUN, TASK))).await;
    assert!(
        started.elapsed() < delay,
        "a used-up fault no longer delays"
    );
}

// ----- demo and lifecycle -----

#[tokio::test]
async fn seed_demo_creates_fields_an_upload_can_be_attached_to() {
    let fake = FakeTallyfy::start(ORG, TOKEN).await.expect("starts");
    let demo = fake.seed_demo();
    let api = Api::new(&fake);
    let path = task_path(&demo.run_id, &demo.task_id);
    let task = send(api.get(&format!("{path}?with=form_fields")))
        .await
        .json();
    let step_id = task["data"]["step_id"].as_str().expect("step").to_string();
    let template = task["data"]["checklist_id"]
        .as_str()
        .expect("template")
        .to_string();
    let fields = [
        ("subject_type", "Run"),
        ("subject_id", demo.run_id.as_str()),
        ("uploaded_from", demo.capture_id.as_str()),
        ("step_id", step_id.as_str()),
        ("checklist_id", template.as_str()),
    ];
    let asset = api.upload("demo.txt", b"demo", &fields).await.json()["data"].clone();
    let body = json!({"taskdata": {demo.capture_id.clone(): [asset.clone()]}});
    send(api.put(&path, &body)).await;
    assert_eq!(
        fake.task_field(&demo.run_id, &demo.task_id, &demo.capture_id),
        vec![asset]
    );
    let mut kickoff_ids = fake.kickoff_field_ids(&demo.checklist_id);
    kickoff_ids.sort();
    let mut expected = vec![demo.field_id.clone(), demo.text_field_id.clone()];
    expected.sort();
    assert_eq!(kickoff_ids, expected);
    assert!(!fake.checklist_title(&demo.checklist_id).is_empty());
}

#[tokio::test]
async fn shutting_down_closes_the_listener_and_open_connections() {
    let fake = fake().await;
    let api = Api::new(&fake);
    send(api.get(&task_path(RUN, TASK))).await;
    let addr = fake.addr();
    fake.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    assert!(api.get(&task_path(RUN, TASK)).send().await.is_err());
}

#[tokio::test]
async fn dropping_the_fake_stops_the_server() {
    let fake = fake().await;
    let api = Api::new(&fake);
    send(api.get(&task_path(RUN, TASK))).await;
    drop(fake);
    // The abort takes effect when the runtime next polls the server task.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(api.get(&task_path(RUN, TASK)).send().await.is_err());
}

/// hyper closes the connection without writing anything when the service fails, so the
/// client cannot mistake a drop for any answer.
#[tokio::test]
async fn a_dropped_connection_writes_no_bytes_at_all() {
    let fake = fake().await;
    fake.inject(Fault::once("GET", "", FaultKind::DropAfterAct));
    let mut stream = tokio::net::TcpStream::connect(fake.addr())
        .await
        .expect("connects");
    let head = format!(
        "GET /api/organizations/{ORG}/runs/{RUN}/tasks/{TASK} HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {TOKEN}\r\nAccept: application/json\r\n\
         X-Tallyfy-Client: APIClient\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the server closes in time");
    // Either a clean close or a reset; in both cases not one byte of a response.
    if let Err(error) = read {
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
    }
    assert!(
        received.is_empty(),
        "{}",
        String::from_utf8_lossy(&received)
    );
}

const CLIENT_ID: &str = "client-7";
const CLIENT_SECRET: &str = "client-secret";

fn grant<'a>(client_id: &'a str, client_secret: &'a str) -> [(&'a str, &'a str); 4] {
    [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("scope", "*"),
    ]
}

async fn ask_token(fake: &FakeTallyfy, fields: &[(&str, &str)]) -> Response {
    send(reqwest::Client::new().post(fake.token_url()).form(fields)).await
}

#[tokio::test]
async fn the_token_endpoint_issues_fresh_tokens_that_the_api_accepts() {
    let fake = fake().await;
    fake.set_client(CLIENT_ID, CLIENT_SECRET);
    let api = Api::new(&fake);
    let first = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    let second = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["token_type"], "Bearer");
    assert_eq!(first.json()["expires_in"], 604_800);
    let tokens: Vec<String> = [&first, &second]
        .iter()
        .map(|answer| answer.json()["access_token"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
    for token in &tokens {
        let answer = get_task_with(&api, Some(token), true, true).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    assert_eq!(fake.token_requests().len(), 2);
}

#[tokio::test]
async fn the_token_endpoint_refuses_what_passport_refuses() {
    let fake = fake().await;
    let refused = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "no client set up");
    fake.set_client(CLIENT_ID, CLIENT_SECRET);
    let code = |answer: &Response| (answer.status, answer.json()["error"].clone());
    let invalid_client = (StatusCode::UNAUTHORIZED, json!("invalid_client"));
    let wrong_secret = ask_token(&fake, &grant(CLIENT_ID, "guess")).await;
    assert_eq!(code(&wrong_secret), invalid_client);
    assert_eq!(
        wrong_secret.json()["error_description"],
        "Client authentication failed"
    );
    let wrong_id = ask_token(&fake, &grant("client-8", CLIENT_SECRET)).await;
    assert_eq!(code(&wrong_id), invalid_client);
    let mut no_secret = grant(CLIENT_ID, CLIENT_SECRET).to_vec();
    no_secret.remove(2);
    assert_eq!(code(&ask_token(&fake, &no_secret).await), invalid_client);
    let mut password = grant(CLIENT_ID, CLIENT_SECRET);
    password[0].1 = "password";
    let unsupported = (StatusCode::BAD_REQUEST, json!("unsupported_grant_type"));
    assert_eq!(code(&ask_token(&fake, &password).await), unsupported);
    let mut narrow = grant(CLIENT_ID, CLIENT_SECRET);
    narrow[3].1 = "read";
    assert_eq!(
        code(&ask_token(&fake, &narrow).await),
        (StatusCode::BAD_REQUEST, json!("invalid_scope"))
    );
    // Laravel takes form fields only from a form body.
    let fields: serde_json::Map<String, Value> = grant(CLIENT_ID, CLIENT_SECRET)
        .iter()
        .map(|(name, value)| (name.to_string(), json!(value)))
        .collect();
    let as_json = send(reqwest::Client::new().post(fake.token_url()).json(&fields)).await;
    assert_eq!(code(&as_json), unsupported);
    let get = send(reqwest::Client::new().get(fake.token_url())).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(fake.token_requests().len(), 8);
    assert!(fake.token_requests().iter().all(|r| r.status != 200));
}

#[tokio::test]
async fn issued_tokens_expire_after_expires_in() {
    let fake = fake().await;
    fake.set_client(CLIENT_ID, CLIENT_SECRET);
    fake.set_token_lifetime(1);
    let api = Api::new(&fake);
    let issued_at = Instant::now();
    let answer = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    assert_eq!(answer.json()["expires_in"], 1);
    let token = answer.json()["access_token"].as_str().unwrap().to_string();
    let deadline = issued_at + Duration::from_secs(5);
    loop {
        let status = get_task_with(&api, Some(&token), true, true).await.status;
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(status, StatusCode::OK);
        assert!(Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(issued_at.elapsed() >= Duration::from_millis(990));
}

#[tokio::test]
async fn revoked_tokens_are_refused_while_the_static_token_still_works() {
    let fake = fake().await;
    fake.set_client(CLIENT_ID, CLIENT_SECRET);
    let api = Api::new(&fake);
    let answer = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    let token = answer.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        get_task_with(&api, Some(&token), true, true).await.status,
        StatusCode::OK
    );
    fake.revoke_tokens();
    let refused = get_task_with(&api, Some(&token), true, true).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json(), json!({"error": "Unauthenticated."}));
    assert_eq!(
        send(api.get(&task_path(RUN, TASK))).await.status,
        StatusCode::OK
    );
    let again = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    let fresh = again.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        get_task_with(&api, Some(&fresh), true, true).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn faults_hit_the_token_endpoint_too() {
    let fake = fake().await;
    fake.set_client(CLIENT_ID, CLIENT_SECRET);
    let unavailable = FaultKind::Status {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    };
    fake.inject(Fault::once("POST", "/oauth/token", unavailable));
    let first = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    let second = ask_token(&fake, &grant(CLIENT_ID, CLIENT_SECRET)).await;
    assert_eq!(second.status, StatusCode::OK);
}

// ----- processes (runs) -----

async fn launch(api: &Api, body: &Value) -> Response {
    send(api.headers(api.client.post(api.url("/runs"))).json(body)).await
}

#[tokio::test]
async fn a_launch_starts_a_run_with_its_file_and_drops_keys_that_are_not_field_ids() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let asset = api.upload_to_kickoff("scan.pdf", b"%PDF").await.json()["data"].clone();
    let answer = launch(
        &api,
        &json!({
            "checklist_id": CHECKLIST,
            "name": "Invoice 2041",
            "summary": "from /srv/scans/2041.pdf",
            "prerun": {KO_FILE: [asset], KO_TEXT: "Globex", "Label of ko_text": "dropped"},
        }),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{:?}", answer.json());
    let run = answer.json()["data"].clone();
    assert_eq!(run["name"], "Invoice 2041");
    assert_eq!(run["status"], "active");
    assert_eq!(run["checklist_id"], CHECKLIST);
    assert_eq!(run["summary"], "from /srv/scans/2041.pdf");
    assert_eq!(run["prerun"][KO_TEXT], "Globex");
    assert_eq!(
        ids(run["prerun"][KO_FILE].as_array().unwrap()),
        [asset["id"].as_str().unwrap()]
    );
    assert_eq!(run["prerun"].as_object().unwrap().len(), 2, "{run}");
    let id = run["id"].as_str().unwrap();
    let read = send(api.get(&format!("/runs/{id}"))).await;
    assert_eq!(read.json()["data"], run);
    assert_eq!(
        send(api.get("/runs/nope")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(fake.runs(), [run]);
}

#[tokio::test]
async fn a_required_kick_off_field_without_a_value_refuses_the_launch_naming_its_label() {
    let fake = fake().await;
    fake.set_required(CHECKLIST, KO_FILE, true);
    let api = Api::new(&fake);
    let answer = launch(
        &api,
        &json!({"checklist_id": CHECKLIST, "prerun": {"ko-file-alias": []}}),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.json()["message"], "Label of ko_file is required");
    let checklist = send(api.get(&format!("/checklists/{CHECKLIST}")))
        .await
        .json();
    assert_eq!(checklist["data"]["prerun"][1]["required"], true);
    let too_long = launch(
        &api,
        &json!({"checklist_id": CHECKLIST, "prerun": {KO_TEXT: "x".repeat(201)}}),
    )
    .await;
    assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(fake.runs().is_empty());
}

#[tokio::test]
async fn runs_are_listed_by_template_and_name_page_by_page() {
    let fake = fake().await;
    let api = Api::new(&fake);
    for n in 0..12 {
        let name = if n % 2 == 0 {
            format!("Invoice {n}")
        } else {
            format!("Other {n}")
        };
        let answer = launch(&api, &json!({"checklist_id": CHECKLIST, "name": name})).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    let page = |query: &str| {
        let api = &api;
        let query = query.to_string();
        async move { send(api.get(&format!("/runs?{query}"))).await.json() }
    };
    let first = page(&format!("checklist_id={CHECKLIST}&q=invoice&per_page=4")).await;
    let pagination = &first["meta"]["pagination"];
    assert_eq!(pagination["total"], 6);
    assert_eq!(pagination["count"], 4);
    assert_eq!(pagination["total_pages"], 2);
    assert_eq!(pagination["current_page"], 1);
    assert!(pagination["links"]["next"]
        .as_str()
        .unwrap()
        .contains("page=2"));
    let last = page(&format!(
        "checklist_id={CHECKLIST}&q=invoice&per_page=4&page=2"
    ))
    .await;
    assert_eq!(last["data"].as_array().unwrap().len(), 2);
    assert_eq!(last["meta"]["pagination"]["links"], json!([]));
    let default = page("").await;
    assert_eq!(
        default["data"].as_array().unwrap().len(),
        10,
        "10 per page by default"
    );
    assert_eq!(
        page("checklist_id=other").await["meta"]["pagination"]["total"],
        0
    );
    assert_eq!(
        page("status=complete").await["meta"]["pagination"]["total"],
        0
    );
    let too_many = send(api.get("/runs?per_page=101")).await;
    assert_eq!(too_many.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn every_run_gets_a_task_per_step_listed_page_by_page_and_completing_it_closes_them() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let steps: Vec<FakeStep> = (0..3)
        .map(|n| FakeStep {
            id: format!("step-{n}"),
            title: format!("Step {n}"),
            fields: vec![field(&format!("cap-{n}"), "file", Value::Null)],
        })
        .collect();
    fake.add_steps(CHECKLIST, steps);
    let launched = launch(
        &api,
        &json!({"checklist_id": CHECKLIST, "name": "Launched"}),
    )
    .await;
    let launched = launched.json()["data"]["id"].as_str().unwrap().to_string();
    let started = fake.start_run(CHECKLIST, "Started");
    for run in [&launched, &started] {
        let first = send(api.get(&format!("/runs/{run}/tasks?with=form_fields&per_page=2"))).await;
        assert_eq!(first.status, StatusCode::OK);
        let first = first.json();
        assert_eq!(first["meta"]["pagination"]["total"], 3);
        assert_eq!(first["meta"]["pagination"]["total_pages"], 2);
        let last = send(api.get(&format!(
            "/runs/{run}/tasks?with=form_fields&per_page=2&page=2"
        )))
        .await
        .json();
        let tasks: Vec<Value> = [&first, &last]
            .iter()
            .flat_map(|page| page["data"].as_array().unwrap().clone())
            .collect();
        let mut steps: Vec<&str> = tasks
            .iter()
            .map(|t| t["step_id"].as_str().unwrap())
            .collect();
        steps.sort();
        assert_eq!(steps, ["step-0", "step-1", "step-2"]);
        for task in &tasks {
            let step = task["step_id"].as_str().unwrap();
            assert_eq!(task["run_id"], run.as_str());
            assert_eq!(task["checklist_id"], CHECKLIST);
            assert_eq!(
                task["form_fields"]["data"][0]["id"],
                step.replace("step", "cap")
            );
        }
    }
    let steps = send(api.get(&format!(
        "/checklists/{CHECKLIST}?with=steps,steps.captures"
    )))
    .await
    .json();
    assert_eq!(
        steps["data"]["steps"]["data"][1]["captures"]["data"][0]["id"],
        "cap-1"
    );
    assert!(send(api.get(&format!("/checklists/{CHECKLIST}")))
        .await
        .json()["data"]
        .get("steps")
        .is_none());

    fake.complete_run(&started);
    let run = send(api.get(&format!("/runs/{started}"))).await.json();
    assert_eq!(run["data"]["status"], "complete");
    let active = send(api.get(&format!("/runs?checklist_id={CHECKLIST}&status=active")))
        .await
        .json();
    assert_eq!(active["data"].as_array().unwrap().len(), 1);
    assert!(fake
        .run_tasks(&started)
        .iter()
        .all(|task| task.status == "completed"));
    let missing = send(api.get("/runs/nope/tasks")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn templates_and_a_templates_steps_are_listed_ten_a_page_by_default() {
    let fake = fake().await;
    let api = Api::new(&fake);
    let steps: Vec<FakeStep> = (0..12)
        .map(|n| FakeStep {
            id: format!("step-{n:02}"),
            title: format!("Step {n}"),
            fields: vec![field(&format!("cap-{n}"), "file", Value::Null)],
        })
        .collect();
    fake.add_steps(CHECKLIST, steps);
    let first = send(api.get(&format!("/checklists/{CHECKLIST}/steps"))).await;
    assert_eq!(first.status, StatusCode::OK);
    let first = first.json();
    assert_eq!(first["data"].as_array().unwrap().len(), 10);
    assert_eq!(first["meta"]["pagination"]["total_pages"], 2);
    assert_eq!(first["data"][0]["captures"]["data"][0]["id"], "cap-0");
    let last = send(api.get(&format!("/checklists/{CHECKLIST}/steps?page=2")))
        .await
        .json();
    assert_eq!(last["data"][1]["title"], "Step 11");
    let unknown = send(api.get("/checklists/nope/steps")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    let templates = send(api.get("/checklists?per_page=100")).await;
    assert_eq!(templates.status, StatusCode::OK);
    assert_eq!(
        templates.json()["data"],
        json!([{"id": CHECKLIST, "title": "Onboarding"}])
    );
    let too_many = send(api.get("/checklists?per_page=101")).await;
    assert_eq!(too_many.status, StatusCode::UNPROCESSABLE_ENTITY);
    let post = send(api.headers(api.client.post(api.url("/checklists")))).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}
