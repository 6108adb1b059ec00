//! `metrics.listen`: Prometheus text at /metrics and a health check at /healthz.

mod common;

use common::*;

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .expect("the metrics endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

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
        let (status, text) = get(&format!("http://{addr}/metrics")).await;
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
    let (status, text) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!((status, text.as_str()), (200, "ok\n"));
}
