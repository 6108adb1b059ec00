//! `tallyfy-sync demo`: the real daemon against the built-in fake Tallyfy API on 127.0.0.1.
//! Receives a directory; writes a real config file there, starts the daemon on it, then drops,
//! changes and deletes files and prints what Tallyfy shows after each step. It keeps running
//! for the user's own files until Ctrl-C.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Credentials};
use crate::daemon;
use crate::fake::{DemoIds, FakeTallyfy};
use crate::service::Reloads;
use crate::text;

const ORG: &str = "demo-org";
const TOKEN: &str = "demo-token";
/// Marks a directory as the demo's own, so that only such a directory is ever emptied.
const MARKER: &str = ".tallyfy-sync-demo";
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// `reloads`: SIGHUP re-reads the demo's config.yaml, as in a real deployment.
pub async fn run(dir: PathBuf, cancel: CancellationToken, reloads: Reloads) -> anyhow::Result<()> {
    prepare(&dir)?;
    let fake = FakeTallyfy::start(ORG, TOKEN)
        .await
        .context("starting the local Tallyfy stand-in")?;
    let ids = fake.seed_demo();
    let config_path = write_config(&dir, &fake, &ids)?;
    let config = Config::load(&config_path)?;
    let credentials = Credentials::resolve(&config.api, &|_| None)?;
    let invoices = dir.join("invoices");
    let contracts = dir.join("contracts");
    let new_invoices = dir.join("new-invoices");
    println!(
        "tallyfy-sync demo: a local Tallyfy stand-in is listening on {}",
        fake.base_url()
    );
    let task = fake.run_tasks(&ids.run_id).into_iter().next();
    let label = task
        .as_ref()
        .and_then(|task| task.fields.iter().find(|field| field.id == ids.capture_id))
        .map(|field| field.label.clone())
        .unwrap_or_default();
    println!(
        "  {}/  → field \"{}\" ({}) of task \"{}\" ({}) in run {}",
        text::path(&invoices),
        text::escaped(&label),
        ids.capture_id,
        text::escaped(&task.map(|task| task.title).unwrap_or_default()),
        ids.task_id,
        ids.run_id
    );
    println!(
        "  {}/ → kick-off field {} of template \"{}\" ({})",
        text::path(&contracts),
        ids.field_id,
        text::escaped(&fake.checklist_title(&ids.checklist_id)),
        ids.checklist_id
    );
    println!(
        "  {}/ → one process per file of template \"{}\" ({})",
        text::path(&new_invoices),
        text::escaped(&fake.checklist_title(&ids.approval_id)),
        ids.approval_id
    );
    println!(
        "  config: {} (a real config file; the daemon reads it like any other)\n",
        text::path(&config_path)
    );

    let daemon = tokio::spawn(daemon::run(config, credentials, cancel.clone(), reloads));
    let tour = Tour {
        fake: &fake,
        ids: &ids,
        cancel: &cancel,
    };
    if let Err(error) = tour.run(&invoices, &contracts, &new_invoices).await {
        if !cancel.is_cancelled() {
            eprintln!("demo: {error:#}");
        }
    }
    if !cancel.is_cancelled() {
        println!(
            "\nYour turn: drop files into {}/, {}/ or {}/, change or delete them,",
            text::path(&invoices),
            text::path(&contracts),
            text::path(&new_invoices)
        );
        println!("and watch the log. Ctrl-C stops the demo.");
    }
    daemon.await.context("the daemon stopped unexpectedly")??;
    Ok(())
}

/// Creates the demo directory, or empties one left by an earlier demo (and nothing else).
fn prepare(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let ours = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false);
        if !ours && !empty {
            bail!(
                "{} exists and was not made by the demo; choose another place with --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    for sub in ["invoices", "contracts", "new-invoices"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    std::fs::write(dir.join(MARKER), b"made by tallyfy-sync demo\n")?;
    Ok(())
}

fn write_config(dir: &Path, fake: &FakeTallyfy, ids: &DemoIds) -> anyhow::Result<PathBuf> {
    // Only its owner reads a token file, the demo's too.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(".token"))?
        .write_all(TOKEN.as_bytes())?;
    let yaml = format!(
        "# Written by `tallyfy-sync demo`: the same keys a real installation uses.\n\
         api:\n  base_url: {base}\n  org_id: {ORG}\n  token_file: .token\n  concurrency: 4\n\
         state_dir: .state\n\
         settle: 1s\n\
         folders:\n\
         \x20 - path: invoices\n    task:\n      run_id: {run}\n      task_id: {task}\n      capture_id: {capture}\n\
         \x20 - path: contracts\n    kickoff:\n      checklist_id: {checklist}\n      field_id: {field}\n\
         \x20 - path: new-invoices\n    launch:\n      checklist_id: {approval}\n      field_id: {approval_file}\n      name: \"Invoice {{stem}}\"\n      fields:\n        {approval_source}: \"scanned into {{relpath}}\"\n",
        base = fake.base_url(),
        run = ids.run_id,
        task = ids.task_id,
        capture = ids.capture_id,
        checklist = ids.checklist_id,
        field = ids.field_id,
        approval = ids.approval_id,
        approval_file = ids.approval_file_id,
        approval_source = ids.approval_source_id,
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml)?;
    Ok(path.canonicalize()?)
}

struct Tour<'a> {
    fake: &'a FakeTallyfy,
    ids: &'a DemoIds,
    cancel: &'a CancellationToken,
}

impl Tour<'_> {
    async fn run(
        &self,
        invoices: &Path,
        contracts: &Path,
        new_invoices: &Path,
    ) -> anyhow::Result<()> {
        let invoice = invoices.join("Invoice 2041.pdf");
        self.say(&format!("1. Dropping {:?} into invoices/", name(&invoice)));
        std::fs::write(&invoice, sample_pdf("Invoice 2041, first draft"))?;
        self.until("the invoice is attached", || self.task_field().len() == 1)
            .await?;
        self.show();

        let contract = contracts.join("contract-acme.txt");
        self.say(&format!(
            "2. Dropping {:?} into contracts/",
            name(&contract)
        ));
        std::fs::write(&contract, "Contract with ACME Corp.\n")?;
        self.until("the contract is attached", || {
            self.kickoff_field().len() == 1
        })
        .await?;
        self.show();

        let first = ids(&self.task_field());
        self.say(&format!(
            "3. Changing {:?}: the new version replaces the old one",
            name(&invoice)
        ));
        std::fs::write(&invoice, sample_pdf("Invoice 2041, corrected"))?;
        self.until("the new version is attached", || {
            let now = ids(&self.task_field());
            now.len() == 1 && now != first
        })
        .await?;
        self.show();

        let ignored = invoices.join("notes.exe");
        self.say("4. Dropping notes.exe, which Tallyfy would refuse: it is skipped with a warning");
        std::fs::write(&ignored, b"not a document")?;
        tokio::time::sleep(Duration::from_millis(1500)).await;

        self.say(&format!(
            "5. Deleting {:?}: it is deleted from Tallyfy too",
            name(&contract)
        ));
        std::fs::remove_file(&contract)?;
        self.until("the contract is gone", || self.kickoff_field().is_empty())
            .await?;
        self.show();

        let scan = new_invoices.join("2042.pdf");
        self.say(&format!(
            "6. Dropping {:?} into new-invoices/: it starts an \"Invoice approval\" process",
            name(&scan)
        ));
        std::fs::write(&scan, sample_pdf("Invoice 2042"))?;
        self.until("the process is started", || !self.fake.runs().is_empty())
            .await?;
        self.show_runs();

        let copy = new_invoices.join("2042 (resent).pdf");
        self.say(&format!(
            "7. Dropping {:?}, the same scan again: it starts nothing, and the log names the process it already started",
            name(&copy)
        ));
        std::fs::copy(&scan, &copy)?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        self.show_runs();
        Ok(())
    }

    fn show_runs(&self) {
        for run in self.fake.runs() {
            let text = |key: &str| run.get(key).and_then(Value::as_str).unwrap_or_default();
            let files = run
                .get("prerun")
                .and_then(|prerun| prerun.get(&self.ids.approval_file_id))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!(
                "   Tallyfy now shows process {:?} [run {}] with {}",
                text("name"),
                text("id"),
                names(&files)
            );
        }
    }

    fn task_field(&self) -> Vec<Value> {
        self.fake
            .task_field(&self.ids.run_id, &self.ids.task_id, &self.ids.capture_id)
    }

    fn kickoff_field(&self) -> Vec<Value> {
        self.fake
            .kickoff_field(&self.ids.checklist_id, &self.ids.field_id)
    }

    fn say(&self, text: &str) {
        println!("\n{text}");
    }

    fn show(&self) {
        println!(
            "   Tallyfy now shows: task field {}; kick-off field {}",
            names(&self.task_field()),
            names(&self.kickoff_field())
        );
    }

    async fn until(&self, what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while !done() {
            if self.cancel.is_cancelled() {
                bail!("stopped");
            }
            if tokio::time::Instant::now() > deadline {
                bail!("gave up waiting until {what}; see the log above");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter().filter_map(crate::store::asset_id).collect()
}

fn names(list: &[Value]) -> String {
    if list.is_empty() {
        return "(empty)".into();
    }
    let names: Vec<String> = list
        .iter()
        .map(|asset| {
            let file = asset
                .get("filename")
                .and_then(|f| f.as_str())
                .unwrap_or("?");
            format!(
                "{} [asset {}]",
                text::escaped(file),
                crate::store::asset_id(asset).unwrap_or_default()
            )
        })
        .collect();
    names.join(", ")
}

/// A minimal one-page PDF, so the demo's files open in a viewer.
fn sample_pdf(text: &str) -> Vec<u8> {
    let stream = format!("BT /F1 18 Tf 72 720 Td ({text}) Tj ET");
    format!(
        "%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n\
         3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 612 792]/Contents 4 0 R/Resources<</Font<</F1 5 0 R>>>>>>endobj\n\
         4 0 obj<</Length {}>>stream\n{stream}\nendstream endobj\n\
         5 0 obj<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
        stream.len()
    )
    .into_bytes()
}
