//! SIGKILL at random moments while a burst syncs: every file ends up attached exactly once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

const FILES: usize = 40;
const KILLS: usize = 8;
/// The last rounds each delete one of the first files (`scan-000`...) and rewrite another
/// (from `scan-010` on).
const DELETED: usize = 4;
const REWRITTEN_FROM: usize = 10;
/// The daemon's default `api.concurrency`: at most this many uploads are in flight at a kill.
const CONCURRENCY: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_during_a_burst_loses_and_duplicates_nothing() {
    let mut rng = Rng::from_env();
    let env = Env::new().await;
    // Slow answers make it likely that kills land while requests are in flight, on both sides
    // of the server acting.
    env.fake.inject(
        Fault::once("", "", FaultKind::Latency(Duration::from_millis(40))).times(usize::MAX),
    );
    let mut dropped = 0;
    for round in 0..KILLS {
        let daemon = env.start();
        for _ in 0..FILES / KILLS {
            drop_file(
                &env.tasks,
                &format!("scan-{dropped:03}.pdf"),
                format!("page {dropped}").as_bytes(),
            );
            dropped += 1;
        }
        // The last rounds also delete and rewrite files that earlier rounds synced.
        if round >= KILLS - DELETED {
            let victim = round - (KILLS - DELETED);
            std::fs::remove_file(env.tasks.join(format!("scan-{victim:03}.pdf"))).unwrap();
            let rewritten = victim + REWRITTEN_FROM;
            drop_file(
                &env.tasks,
                &format!("scan-{rewritten:03}.pdf"),
                format!("rewritten {round}").as_bytes(),
            );
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.below(900))).await;
        daemon.signal(libc::SIGKILL);
        daemon.wait_exit().await;
    }
    env.fake.clear_faults();

    let daemon = env.start();
    daemon.wait_for_log("running").await;
    let expected = expected_field();
    eventually(
        "every file is attached, rewritten ones in their last version",
        || {
            let mut attached = attached(&env);
            attached.sort();
            attached.dedup();
            attached == expected
        },
        &daemon,
    )
    .await;
    // Stopping drains the work in flight, so a repeated attach would be in the field by now.
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", daemon.log());

    let mut attached = attached(&env);
    attached.sort();
    assert_eq!(
        attached, expected,
        "nothing attached twice, nothing missing"
    );
    let in_field: HashSet<String> = ids(&env.task_field()).into_iter().collect();
    let orphans = env
        .fake
        .assets()
        .iter()
        .filter(|asset| !in_field.contains(&asset.id))
        .count();
    eprintln!(
        "chaos: {KILLS} kills, {FILES} files ({DELETED} deleted, {DELETED} rewritten), 0 duplicates, {orphans} orphaned uploads, {} uploads in all",
        env.uploads()
    );
    assert!(
        orphans <= KILLS * CONCURRENCY,
        "{orphans} orphans from {KILLS} kills"
    );
}

/// (file name, content) of what the field should hold at the end.
fn expected_field() -> Vec<(String, String)> {
    let mut expected: Vec<(String, String)> = (DELETED..FILES)
        .map(|i| (format!("scan-{i:03}.pdf"), format!("page {i}")))
        .collect();
    for round in KILLS - DELETED..KILLS {
        let rewritten = round - (KILLS - DELETED) + REWRITTEN_FROM;
        expected[rewritten - DELETED].1 = format!("rewritten {round}");
    }
    expected.sort();
    expected
}

/// (file name, content) of every asset in the task's field, in field order.
fn attached(env: &Env) -> Vec<(String, String)> {
    env.task_field()
        .iter()
        .map(|asset| {
            let id = asset["id"].as_str().unwrap_or_default();
            let content = env
                .fake
                .asset(id)
                .map(|stored| String::from_utf8_lossy(&stored.content).into_owned())
                .unwrap_or_default();
            (
                asset["filename"].as_str().unwrap_or_default().to_string(),
                content,
            )
        })
        .collect()
}
