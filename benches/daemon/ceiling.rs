//! The ceiling: the same API work with nothing else. One reqwest client (keep-alive pool) streams
//! files from disk as multipart POSTs, `CONCURRENCY` at a time; one attacher takes every asset
//! uploaded since its last write, GETs the task and PUTs the field with them appended (the
//! daemon's coalescing). No watching, no settling, no state, no hashing, no retries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tokio_util::io::ReaderStream;

use crate::scenario::{uploads_in_progress, Big, Burst};
use crate::world::{concurrency, upload_secs, TaskRef, World, ORG, TOKEN};

pub struct Ceiling {
    http: reqwest::Client,
    api: String,
}

impl Ceiling {
    pub fn new(world: &World) -> anyhow::Result<Ceiling> {
        Ok(Ceiling {
            http: reqwest::Client::builder().tcp_nodelay(true).build()?,
            api: format!("{}/organizations/{ORG}", world.fake.base_url()),
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}/{path}", self.api))
            .bearer_auth(TOKEN)
            .header("Accept", "application/json")
            .header("X-Tallyfy-Client", "APIClient")
    }

    async fn upload(&self, path: &Path, task: &TaskRef) -> anyhow::Result<Value> {
        let file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .context("file without a name")?
            .to_string();
        let content = Part::stream_with_length(
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, 64 * 1024)),
            size,
        )
        .file_name(name)
        .mime_str("application/octet-stream")?;
        let form = Form::new()
            .percent_encode_noop()
            .text("subject_type", "Run")
            .text("subject_id", task.run.clone())
            .text("uploaded_from", task.capture.clone())
            .text("step_id", task.step.clone())
            .text("checklist_id", task.checklist.clone())
            .text("source", "local")
            .part("name", content);
        let answer: Value = self
            .request(Method::POST, "file")
            .multipart(form)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer["data"].clone())
    }

    /// Read-modify-write of the field: one GET and one PUT for any number of new assets.
    async fn append(&self, task: &TaskRef, assets: Vec<Value>) -> anyhow::Result<()> {
        let path = format!("runs/{}/tasks/{}", task.run, task.task);
        let current: Value = self
            .request(Method::GET, &path)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut list = match &current["data"]["taskdata"][&task.capture] {
            Value::Array(list) => list.clone(),
            _ => Vec::new(),
        };
        list.extend(assets);
        self.request(Method::PUT, &path)
            .json(&json!({ "taskdata": { task.capture.clone(): list } }))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    pub async fn burst(
        &self,
        world: &World,
        files: &[PathBuf],
        task: &TaskRef,
    ) -> anyhow::Result<Burst> {
        let (sender, mut uploaded) = tokio::sync::mpsc::unbounded_channel();
        let started_at = std::time::SystemTime::now();
        let start = Instant::now();
        let uploads = async move {
            futures_util::stream::iter(files)
                .map(|file| self.upload(file, task))
                .buffer_unordered(concurrency())
                .try_for_each(|asset| {
                    let sent = sender.send(asset).map_err(anyhow::Error::from);
                    std::future::ready(sent)
                })
                .await
        };
        let mut max_uploads = 0;
        let attach = async {
            let mut attached = 0;
            while attached < files.len() {
                let Some(first) = uploaded.recv().await else {
                    bail!("the uploads stopped after {attached} files");
                };
                max_uploads = max_uploads.max(uploads_in_progress(world));
                let mut batch = vec![first];
                while let Ok(asset) = uploaded.try_recv() {
                    batch.push(asset);
                }
                attached += batch.len();
                self.append(task, batch).await?;
            }
            Ok(())
        };
        tokio::try_join!(uploads, attach)?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Burst {
            files: files.len(),
            secs,
            requests: world.requests_since(start),
            cpu: None,
            started_at,
            max_uploads,
        })
    }

    /// One file at a time: upload, read, write; start → PUT answered.
    pub async fn latency(
        &self,
        files: &[PathBuf],
        task: &TaskRef,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut samples = Vec::with_capacity(files.len());
        for file in files {
            let start = Instant::now();
            let asset = self.upload(file, task).await?;
            self.append(task, vec![asset]).await?;
            samples.push(start.elapsed());
        }
        Ok(samples)
    }

    pub async fn big(&self, world: &World, file: &Path, task: &TaskRef) -> anyhow::Result<Big> {
        let start = Instant::now();
        let asset = self.upload(file, task).await?;
        self.append(task, vec![asset]).await?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Big {
            bytes: std::fs::metadata(file)?.len(),
            secs,
            upload_secs: upload_secs(&world.requests_since(start), task),
            rss_rise_kib: None,
            hwm_rise_kib: None,
        })
    }
}
