//! `metrics.listen`: Prometheus text at /metrics and a health check at /healthz.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_uploads_requests_and_files_and_healthz_says_ok() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("serving metrics at /metrics").await;
    let addr = daemon.metrics_addr();
    drop_file(&env.tasks, "a.pdf", b"aaaa");
    drop_file(&env.tasks, "b.pdf", b"bb");
    eventually("both attached", || env.task_field().len() == 2, &daemon).await;
    // The counters move just after the field does.
    let deadline = std::time::Instant::now() + WAIT;
    let (status, text) = loop {
        let (status, text) = http_get(&format!("http://{addr}/metrics")).await;
        if text.contains("tallyfy_sync_files_synced_total 2\n")
            || std::time::Instant::now() > deadline
        {
            break (status, text);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    for expected in [
        "# TYPE tallyfy_sync_files_synced_total counter\ntallyfy_sync_files_synced_total 2\n",
        "tallyfy_sync_uploads_total{result=\"ok\"} 2\n",
        "tallyfy_sync_uploaded_bytes_total 6\n",
        "tallyfy_sync_api_requests_total{endpoint=\"upload\",status=\"200\"} 2\n",
        "tallyfy_sync_api_paused 0\n",
        &format!(
            "tallyfy_sync_files{{folder=\"{}\",state=\"synced\"}} 2\n",
            env.tasks.display()
        ),
    ] {
        assert!(
            text.contains(expected),
            "/metrics lacks {expected:?}:\n{text}"
        );
    }
    let (status, text) = http_get(&format!("http://{addr}/healthz")).await;
    assert_eq!((status, text.as_str()), (200, "ok\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_stops_the_start_with_78_naming_metrics_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let env = Env::with_config(&format!("metrics:\n  listen: 127.0.0.1:{port}\n"), "").await;
    let daemon = env.start();
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(78), "{}", daemon.log());
    assert!(
        daemon.log().contains("metrics.listen") && daemon.log().contains(&port.to_string()),
        "{}",
        daemon.log()
    );
    assert_eq!(env.fake.requests().len(), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_version_and_which_folders_sync() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    daemon.wait_for_log("serving metrics at /metrics").await;
    let url = format!("http://{}/metrics", daemon.metrics_addr());
    let up = |folder: &std::path::Path, value: u8| {
        format!(
            "tallyfy_sync_folder_up{{folder=\"{}\"}} {value}\n",
            folder.display()
        )
    };
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let (_, text) = http_get(&url).await;
        let both = text.contains(&up(&env.tasks, 1)) && text.contains(&up(&env.kickoff, 1));
        if both || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let version = format!(
        "tallyfy_sync_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    for expected in [version, up(&env.tasks, 1), up(&env.kickoff, 1)] {
        assert!(
            text.contains(&expected),
            "/metrics lacks {expected:?}:\n{text}"
        );
    }
    // The kick-off folder's share goes away: that folder is down, the other still up.
    std::fs::remove_dir(&env.kickoff).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let text = loop {
        let (_, text) = http_get(&url).await;
        if text.contains(&up(&env.kickoff, 0)) || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        text.contains(&up(&env.kickoff, 0)) && text.contains(&up(&env.tasks, 1)),
        "{text}\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_their_port_across_a_reload() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("serving metrics at /metrics").await;
    let addr = daemon.metrics_addr();
    let reloaded = env.command(&["reload"]);
    assert_eq!(
        reloaded.stdout,
        "reloaded: no changes\n",
        "{}",
        describe(&reloaded)
    );
    let (status, text) = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(status, 200);
    assert!(text.contains("tallyfy_sync_build_info{"), "{text}");
    let served = daemon.log().matches("serving metrics at /metrics").count();
    assert_eq!(
        served,
        2,
        "a new pipeline serves the same port: {}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .lines()
            .filter(|line| line.contains("serving metrics"))
            .all(|line| line.contains(&addr)),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_waiting_out_an_outage_are_counted_and_listed_as_pending_with_why_and_when() {
    let env = Env::with_config("metrics:\n  listen: 127.0.0.1:0\n", "").await;
    let outage = tallyfy_sync::fake::FaultKind::Status {
        status: 503,
        body: "down for maintenance".into(),
        retry_after: None,
    };
    env.fake
        .inject(tallyfy_sync::fake::Fault::once("", "", outage).times(usize::MAX));
    let daemon = env.start();
    daemon.wait_for_log("serving metrics at /metrics").await;
    for name in ["a.pdf", "b.pdf", "c.pdf"] {
        drop_file(&env.tasks, name, name.as_bytes());
    }
    let addr = daemon.metrics_addr();
    let pending = format!(
        "tallyfy_sync_files{{folder=\"{}\",state=\"pending\"}} 3\n",
        env.tasks.display()
    );
    let deadline = std::time::Instant::now() + WAIT;
    let (metrics, status) = loop {
        let (_, metrics) = http_get(&format!("http://{addr}/metrics")).await;
        let status = env.command(&["status"]).stdout;
        if (metrics.contains(&pending) && status.contains("paused: "))
            || std::time::Instant::now() > deadline
        {
            break (metrics, status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(metrics.contains(&pending), "{metrics}");
    assert!(
        status.contains(&format!(
            "  {}: paused (0 synced, 3 pending, 0 failed)",
            env.tasks.display()
        )),
        "{status}"
    );
    for name in ["a.pdf", "b.pdf", "c.pdf"] {
        let line = status
            .lines()
            .find(|line| line.starts_with("  pending ") && line.contains(name))
            .unwrap_or_else(|| panic!("{name} is not listed as pending:\n{status}"));
        assert!(
            line.contains("waiting: ") && line.contains("; next attempt "),
            "{line}\n{status}"
        );
    }
    let (code, health) = http_get(&format!("http://{addr}/healthz")).await;
    assert_eq!(code, 503, "{health}");

    env.fake.clear_faults();
    eventually(
        "the files attach once the API is back",
        || env.task_field().len() == 3,
        &daemon,
    )
    .await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}
