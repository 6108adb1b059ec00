//! The fake Tallyfy API as a process of its own, for tests that run the daemon outside the
//! Rust test harness (tests/systemd/run.sh). Receives an organization id and a token; seeds
//! the demo's task and templates; prints one line `base_url=... run_id=... task_id=...
//! capture_id=... checklist_id=... field_id=... approval_id=... approval_file_id=...
//! approval_source_id=...`, then a JSON line with the file names in the task field and the
//! kick-off field and the names of the processes launched, each time they change. Runs until
//! killed.
//!
//!     cargo run --example fake-tallyfy -- ORG TOKEN

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use tallyfy_sync::fake::FakeTallyfy;

/// How often the fields are compared with what was last printed.
const POLL: Duration = Duration::from_millis(100);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(org), Some(token)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: fake-tallyfy ORG TOKEN");
    };
    let fake = FakeTallyfy::start(&org, &token).await?;
    let ids = fake.seed_demo();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "base_url={} run_id={} task_id={} capture_id={} checklist_id={} field_id={} approval_id={} approval_file_id={} approval_source_id={}",
        fake.base_url(),
        ids.run_id,
        ids.task_id,
        ids.capture_id,
        ids.checklist_id,
        ids.field_id,
        ids.approval_id,
        ids.approval_file_id,
        ids.approval_source_id
    )?;
    out.flush()?;
    let names = |list: Vec<Value>| -> Vec<Value> {
        list.into_iter()
            .map(|asset| asset["filename"].clone())
            .collect()
    };
    let mut shown = Value::Null;
    loop {
        let now = json!({
            "task": names(fake.task_field(&ids.run_id, &ids.task_id, &ids.capture_id)),
            "kickoff": names(fake.kickoff_field(&ids.checklist_id, &ids.field_id)),
            "runs": fake.runs().iter().map(|run| run["name"].clone()).collect::<Vec<Value>>(),
        });
        if now != shown {
            writeln!(out, "{now}")?;
            out.flush()?;
            shown = now;
        }
        tokio::time::sleep(POLL).await;
    }
}
