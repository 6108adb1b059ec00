//! Request pacing that outlives a restart, and the proactive `api.rate_limit`.

mod common;

use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_a_pause_waits_it_out_instead_of_probing_at_once() {
    let (env, daemon) = Env::running().await;
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Status {
            status: 429,
            body: r#"{"message": "slow down", "code": "RATE_LIMIT_EXCEEDED"}"#.into(),
            retry_after: Some("4".into()),
        },
    ));
    drop_file(&env.tasks, "limited.pdf", b"x");
    daemon.wait_for_log("rate limited by the API (429)").await;
    let limited_at = env.requests("POST", "/file")[0].at;
    assert_eq!(daemon.stop().await.code(), Some(0));
    let before_restart = env.fake.requests().len();

    let daemon = env.start();
    daemon
        .wait_for_log("requests were paused before the restart")
        .await;
    let status = env.command(&["status"]).stdout;
    assert!(
        status.contains("requests paused: rate limited by the API (429); next attempt in"),
        "{status}"
    );
    let line = status
        .lines()
        .find(|line| line.contains("limited.pdf"))
        .unwrap_or_default();
    assert!(
        line.contains("uploading; waiting: rate limited by the API (429)")
            && line.contains("; next attempt in"),
        "status says why the file waits and when it is tried next: {status}"
    );
    eventually(
        "the file attaches once the pause is over",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let first_after_restart = env.fake.requests()[before_restart].at;
    let waited = first_after_restart - limited_at;
    assert!(
        waited >= Duration::from_millis(3900),
        "the restarted daemon sent a request {waited:?} after the 429 that asked for 4 s"
    );
    assert_eq!(
        env.uploads(),
        2,
        "one refused upload, one that went through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_paces_a_backlog_evenly_without_earning_429s() {
    let env = Env::new().await;
    env.write_config_with_api("  rate_limit: 10/s\n", "", "");
    for i in 0..30 {
        drop_file(
            &env.tasks,
            &format!("{i:02}.pdf"),
            format!("{i}").as_bytes(),
        );
    }
    let daemon = env.start();
    eventually("all 30 attached", || env.task_field().len() == 30, &daemon).await;
    let requests = env.fake.requests();
    assert!(requests.iter().all(|r| r.status != 429));
    // A bucket of 10 that refills at 10/s: never more than 20 requests in any second.
    let busiest = requests
        .iter()
        .map(|first| {
            requests
                .iter()
                .filter(|r| r.at >= first.at && r.at < first.at + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(busiest <= 20, "{busiest} requests in one second");
    let span = requests.last().unwrap().at - requests[0].at;
    let least = Duration::from_secs_f64((requests.len() - 10) as f64 / 10.0 * 0.95);
    assert!(
        span >= least,
        "{} requests took {span:?}; at 10/s after a burst of 10 they need {least:?}",
        requests.len()
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_concurrency_bounds_the_uploads_in_progress_at_once() {
    let env = Env::new().await;
    env.write_config_with_api("  concurrency: 2\n", "", "");
    env.fake.inject(
        Fault::once(
            "POST",
            "/file",
            FaultKind::Latency(Duration::from_millis(300)),
        )
        .times(12),
    );
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    for i in 0..12 {
        drop_file(
            &env.tasks,
            &format!("{i:02}.pdf"),
            format!("{i}").as_bytes(),
        );
    }
    let mut most = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while env.task_field().len() < 12 {
        assert!(
            std::time::Instant::now() < deadline,
            "not all attached in time:\n{}",
            daemon.log()
        );
        let in_progress = env
            .requests("POST", "/file")
            .iter()
            .filter(|r| r.status == 0)
            .count();
        most = most.max(in_progress);
        assert!(daemon.exited().is_none(), "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        most, 2,
        "uploads in progress at once with api.concurrency: 2"
    );
}
