//! Routing and HTTP-level handling of authenticated requests.
//! Receives the request head and its fully read body; emits one complete response (JSON with
//! Content-Type and Content-Length, or file content for downloads).
//! Owns the route table, the organization check, upload framing rules (length required,
//! multipart decoding) and the mapping of `ApiError` to the real service's error bodies.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING,
};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::fake::state::{ApiError, Shared, UploadForm};
use crate::fake::{multipart, ONE_OFF};

/// A request body as read by the server.
pub(crate) enum RequestBody {
    Complete(Bytes),
    /// Over `MAX_BODY_BYTES`; not (fully) read.
    TooLarge,
}

enum Route<'a> {
    Upload,
    File(&'a str),
    FileDownload(&'a str),
    Asset(&'a str),
    /// A task of a process, or with no `run_id` a one-off task (`/tasks/{task_id}`).
    Task {
        run_id: Option<&'a str>,
        task_id: &'a str,
    },
    Checklist(&'a str),
    Checklists,
    Steps(&'a str),
    Runs,
    Run(&'a str),
    RunTasks(&'a str),
}

impl Route<'_> {
    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Upload => &[Method::POST],
            Route::File(_) | Route::Asset(_) => &[Method::GET, Method::DELETE],
            Route::FileDownload(_)
            | Route::Run(_)
            | Route::RunTasks(_)
            | Route::Checklists
            | Route::Steps(_) => &[Method::GET],
            Route::Runs => &[Method::GET, Method::POST],
            Route::Task { .. } | Route::Checklist(_) => &[Method::GET, Method::PUT],
        }
    }
}

/// Empty segments never match, so a doubled or trailing slash from a badly joined base URL
/// shows up as 404 instead of working by accident.
fn match_route(path: &str) -> Option<(&str, Route<'_>)> {
    let segments: Vec<&str> = path.split('/').collect();
    if segments.iter().skip(1).any(|segment| segment.is_empty()) {
        return None;
    }
    let route = match segments.as_slice() {
        ["", "api", "organizations", org, rest @ ..] => (*org, rest),
        _ => return None,
    };
    let (org, rest) = route;
    let route = match rest {
        ["file" | "assets"] => Route::Upload,
        ["file", asset] => Route::File(asset),
        ["file", asset, "dl"] => Route::FileDownload(asset),
        ["assets", asset] => Route::Asset(asset),
        ["runs", run_id, "tasks", task_id] => Route::Task {
            run_id: Some(run_id),
            task_id,
        },
        ["tasks", task_id] => Route::Task {
            run_id: None,
            task_id,
        },
        ["checklists", checklist] => Route::Checklist(checklist),
        ["checklists"] => Route::Checklists,
        ["checklists", checklist, "steps"] => Route::Steps(checklist),
        ["runs"] => Route::Runs,
        ["runs", run_id] => Route::Run(run_id),
        ["runs", run_id, "tasks"] => Route::RunTasks(run_id),
        _ => return None,
    };
    Some((org, route))
}

pub(crate) fn dispatch(shared: &Shared, parts: &Parts, body: RequestBody) -> Response<Full<Bytes>> {
    let path = parts.uri.path();
    let Some((org, route)) = match_route(path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"message": "endpoint not found"}),
        );
    };
    let allowed = route.methods();
    if !allowed.contains(&parts.method) {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let message = format!(
            "The {} method is not supported for route {}. Supported methods: {}.",
            parts.method,
            path.trim_start_matches('/'),
            names.join(", ")
        );
        let mut response =
            json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({"message": message}));
        if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
            response.headers_mut().insert(ALLOW, value);
        }
        return response;
    }
    if org != shared.org_id {
        return error_response(
            StatusCode::FORBIDDEN,
            "You do not have access to this organization.",
        );
    }
    if let Route::Upload = route {
        // Some proxies in front of the real service refuse chunked uploads, so the client
        // must be proven to send a length; this is decided before the size.
        if parts.headers.contains_key(TRANSFER_ENCODING)
            || !parts.headers.contains_key(CONTENT_LENGTH)
        {
            return error_response(
                StatusCode::LENGTH_REQUIRED,
                "Uploads need a Content-Length header; chunked bodies are refused.",
            );
        }
    }
    let RequestBody::Complete(body) = body else {
        return too_large();
    };
    // A launch answers 201 Created, as the real service does.
    let mut return_created = false;
    let outcome = match (route, &parts.method) {
        (Route::Task { run_id, task_id }, &Method::GET) => {
            let with_form_fields = query_has(parts.uri.query(), "with", "form_fields");
            shared
                .lock()
                .task_json(run_id.unwrap_or(ONE_OFF), task_id, with_form_fields)
                .map(data)
        }
        (Route::Task { run_id, task_id }, _) => json_input(parts, &body)
            .and_then(|input| {
                shared
                    .lock()
                    .update_task(run_id.unwrap_or(ONE_OFF), task_id, &input)
            })
            .map(data),
        (Route::Checklist(id), &Method::GET) if query_has(parts.uri.query(), "with", "steps") => {
            shared.lock().checklist_with_steps(id).map(data)
        }
        (Route::Checklist(id), &Method::GET) => shared.lock().checklist_json(id).map(data),
        (Route::Checklist(id), _) => json_input(parts, &body)
            .and_then(|input| shared.lock().update_checklist(id, &input))
            .map(data),
        (Route::File(asset), &Method::DELETE) => match shared.lock().delete_asset(asset) {
            Ok(()) => return raw_response(StatusCode::OK, "application/json", Bytes::new()),
            Err(error) => Err(error),
        },
        (Route::File(asset), _) => {
            return match shared.lock().asset_content(asset, true) {
                Ok((filename, content)) => {
                    raw_response(StatusCode::OK, content_type_for(&filename), content)
                }
                Err(error) => api_error_response(error),
            }
        }
        (Route::FileDownload(asset), _) => {
            return match shared.lock().asset_content(asset, false) {
                Ok((filename, content)) => download_response(&filename, content),
                Err(error) => api_error_response(error),
            }
        }
        (Route::Asset(asset), &Method::DELETE) => match shared.lock().archive_asset(asset) {
            Ok(()) => return raw_response(StatusCode::OK, "application/json", Bytes::new()),
            Err(error) => Err(error),
        },
        (Route::Asset(asset), _) => shared
            .lock()
            .asset_json(asset)
            .map(|asset| json!({"data": [asset]})),
        (Route::Upload, _) => return upload(shared, parts, &body),
        (Route::Runs, &Method::GET) => shared.lock().list_runs(path, parts.uri.query()),
        (Route::Runs, _) => json_input(parts, &body)
            .and_then(|input| shared.lock().launch_run(&input))
            .map(|run| {
                return_created = true;
                data(run)
            }),
        (Route::Run(id), _) => shared.lock().run_json(id).map(data),
        (Route::Checklists, _) => shared.lock().list_checklists(path, parts.uri.query()),
        (Route::Steps(id), _) => shared.lock().list_steps(id, path, parts.uri.query()),
        (Route::RunTasks(id), _) => shared.lock().list_run_tasks(id, path, parts.uri.query()),
    };
    match outcome {
        Ok(value) if return_created => json_response(StatusCode::CREATED, &value),
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(error) => api_error_response(error),
    }
}

fn upload(shared: &Shared, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    // PHP fills nothing from a body it cannot parse, so Laravel then reports the required
    // fields as missing; the parse error itself only goes to the log.
    let decoded =
        multipart::boundary(content_type).and_then(|boundary| multipart::parse(body, &boundary));
    let form = match decoded {
        Ok(decoded) => form_from_parts(decoded),
        Err(error) => {
            tracing::warn!(%error, "fake Tallyfy could not decode an upload body");
            UploadForm::default()
        }
    };
    match shared.lock().upload(form) {
        Ok(asset) => json_response(StatusCode::OK, &json!({"data": asset})),
        Err(error) => api_error_response(error),
    }
}

fn form_from_parts(decoded: Vec<multipart::Part>) -> UploadForm {
    let mut form = UploadForm::default();
    for part in decoded {
        match part.filename {
            // PHP reports an empty file name as "no file uploaded", which Laravel ignores.
            Some(filename) if filename.is_empty() => {}
            Some(filename) => {
                if part.name == "name" {
                    form.file = Some((filename, part.data));
                }
            }
            None => {
                form.fields
                    .insert(part.name, String::from_utf8_lossy(&part.data).into_owned());
            }
        }
    }
    form
}

/// Laravel reads a JSON body only when the Content-Type says JSON; otherwise the input is
/// empty, which is what a client that forgets the header gets from the real service.
fn json_input(parts: &Parts, body: &Bytes) -> Result<Value, ApiError> {
    let media = media_type(parts);
    let is_json = media.ends_with("/json") || media.ends_with("+json");
    if !is_json || body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::BadRequest(
            "The request body must be a JSON object.".into(),
        )),
        Err(error) => Err(ApiError::BadRequest(format!(
            "The request body is not valid JSON: {error}"
        ))),
    }
}

/// The body's media type, lowercased, without parameters; empty when not given.
pub(crate) fn media_type(parts: &Parts) -> String {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

fn query_has(query: Option<&str>, key: &str, wanted: &str) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .any(|(name, value)| name == key && value.split(',').any(|item| item == wanted))
}

fn data(value: Value) -> Value {
    json!({ "data": value })
}

pub(crate) fn too_large() -> Response<Full<Bytes>> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "The request body is too large.",
    )
}

pub(crate) fn api_error_response(error: ApiError) -> Response<Full<Bytes>> {
    match error {
        ApiError::NotFound(message) => error_response(StatusCode::NOT_FOUND, &message),
        ApiError::BadRequest(message) => error_response(StatusCode::BAD_REQUEST, &message),
        ApiError::Refused(message) => error_response(StatusCode::UNPROCESSABLE_ENTITY, &message),
        ApiError::Invalid(errors) => {
            let mut by_field: Map<String, Value> = Map::new();
            for (field, message) in &errors {
                let entry = by_field
                    .entry(field.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = entry {
                    list.push(Value::String(message.clone()));
                }
            }
            // Laravel's summary: the first message plus how many others there are.
            let first = errors
                .first()
                .map(|(_, message)| message.clone())
                .unwrap_or_else(|| "The given data was invalid.".into());
            let message = match errors.len().saturating_sub(1) {
                0 => first,
                1 => format!("{first} (and 1 more error)"),
                more => format!("{first} (and {more} more errors)"),
            };
            json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"error": true, "message": message, "errors": by_field}),
            )
        }
    }
}

fn error_response(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({"error": true, "message": message}))
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    raw_response(status, "application/json", Bytes::from(body.to_string()))
}

/// The body is complete before anything is written, so hyper sends head and body together.
pub(crate) fn raw_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let length = body.len();
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    response
}

fn download_response(filename: &str, content: Bytes) -> Response<Full<Bytes>> {
    let mut response = raw_response(StatusCode::OK, "application/octet-stream", content);
    let mut quoted = String::new();
    for character in filename.chars() {
        match character {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(character);
            }
            character if character.is_control() => quoted.push('_'),
            character => quoted.push(character),
        }
    }
    let mut disposition = format!("attachment; filename=\"{quoted}\"");
    if !filename.is_ascii() {
        // Raw UTF-8 in a header is legal but many clients refuse to read it as text.
        disposition.push_str("; filename*=UTF-8''");
        for byte in filename.bytes() {
            if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
                disposition.push(char::from(byte));
            } else {
                disposition.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(disposition.as_bytes()) {
        response.headers_mut().insert(CONTENT_DISPOSITION, value);
    }
    response
}

fn content_type_for(filename: &str) -> &'static str {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "xml" => "application/xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" => "image/tiff",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mov" | "qt" => "video/quicktime",
        _ => "application/octet-stream",
    }
}
