//! Failures on the API side: transient errors are retried without duplicates, rate limits and
//! refused tokens pause everyone instead of hammering, and wrong targets are reported clearly.

mod common;

use std::time::Duration;

use common::*;
use tallyfy_sync::fake::{Fault, FaultKind};

fn status(status: u16, retry_after: Option<&str>) -> FaultKind {
    FaultKind::Status {
        status,
        body: r#"{"error": true, "message": "try later"}"#.into(),
        retry_after: retry_after.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_now_and_then_is_retried_by_its_own_request_without_pausing_the_others() {
    let (env, daemon) = upload_after_503s(2).await;
    assert_eq!(
        env.fake.assets().len(),
        1,
        "a 503 stored nothing, so no orphan"
    );
    assert!(daemon.log().contains("request failed; retrying in"));
    assert!(
        !daemon.log().contains("pausing all requests"),
        "two failures are not an outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_503s_pauses_every_request() {
    let (_env, daemon) = upload_after_503s(3).await;
    daemon.wait_for_log("probing again").await;
}

/// A daemon whose one upload met `times` 503s before it went through and was attached.
async fn upload_after_503s(times: usize) -> (Env, Daemon) {
    let env = Env::new().await;
    env.fake
        .inject(Fault::once("POST", "/file", status(503, None)).times(times));
    let daemon = env.start();
    drop_file(&env.tasks, "retry.pdf", b"retry me");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), times + 1, "{times} 503s, then success");
    (env, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_pauses_requests_for_that_long() {
    let env = Env::new().await;
    env.fake
        .inject(Fault::once("PUT", "/tasks/", status(429, Some("2"))));
    let daemon = env.start();
    drop_file(&env.tasks, "limited.pdf", b"x");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    let puts = env.requests("PUT", "/tasks/");
    assert_eq!(puts.len(), 2);
    let after_429: Vec<_> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.at > puts[0].at)
        .collect();
    let waited = after_429[0].at - puts[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "the next request came after {waited:?}, before Retry-After"
    );
    assert_eq!(env.task_field().len(), 1, "attached once");
    daemon.wait_for_log("rate limited by the API (429)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_answer_is_lost_is_sent_again_but_attached_once() {
    upload_answer_lost(FaultKind::DropAfterAct).await;
}

/// The upload is stored but its answer never arrives whole: the daemon sends it again, and the
/// first copy stays an orphan that is never attached.
async fn upload_answer_lost(kind: FaultKind) {
    let env = Env::new().await;
    env.fake.inject(Fault::once("POST", "/file", kind));
    let daemon = env.start();
    drop_file(&env.tasks, "lost-answer.pdf", b"x");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 2);
    assert_eq!(env.fake.assets().len(), 2);
    assert_eq!(ids(&env.task_field()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_whose_answer_is_lost_is_not_applied_twice() {
    let env = Env::new().await;
    env.fake
        .inject(Fault::once("PUT", "/tasks/", FaultKind::DropAfterAct));
    let daemon = env.start();
    drop_file(&env.tasks, "a.pdf", b"a");
    eventually(
        "the file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // room for a wrong second attach
    assert_eq!(env.task_field().len(), 1, "the field lists the file once");
    assert_eq!(env.uploads(), 1, "attached without uploading again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_pauses_all_requests_instead_of_failing_file_after_file() {
    let env = Env::new().await;
    let daemon = env.start_with_token("wrong-token");
    daemon.wait_for_log("refused the token (401)").await;
    for i in 0..10 {
        drop_file(&env.tasks, &format!("{i}.pdf"), b"x");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = env.fake.requests().len();
    // Two target checks, then one probe per backoff step (about 1 s, 2 s, 4 s...).
    assert!(sent <= 5, "{sent} requests in 4 s with a refused token");
    assert!(daemon.log().contains("wrong, expired or revoked"));
    assert!(
        !daemon.log().contains("wrong-token"),
        "the token never appears in the log"
    );
    assert_eq!(env.uploads(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_one_probe_per_backoff_step_and_then_everything_syncs() {
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("", "", FaultKind::DropBeforeAct).times(4));
    drop_twenty(&env);
    all_twenty_attached(&env, &daemon, "all 20 attached after the outage").await;
    let failed = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.status == 0)
        .count();
    assert_eq!(failed, 4, "only the dropped requests failed");
    assert_eq!(env.fake.assets().len(), 20, "nothing stored twice");
    daemon.wait_for_log("the API answers again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_targets_are_reported_and_the_other_folders_carry_on() {
    let env = Env::new().await;
    let yaml = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("capture_id: cap1", "capture_id: nosuch");
    env.write_raw_config(&yaml);
    let daemon = env.start();
    daemon
        .wait_for_log("has no form field with capture id nosuch")
        .await;
    assert!(
        daemon.log().contains("cap1 (\"Invoices\", file)"),
        "the log lists the fields that exist"
    );
    drop_file(&env.tasks, "stays.pdf", b"x");
    drop_file(&env.kickoff, "goes.pdf", b"y");
    eventually(
        "the kick-off folder still syncs",
        || env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(env.uploads(), 1, "nothing is uploaded for the wrong target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_task_and_a_text_field_are_refused_as_targets() {
    let env = Env::new().await;
    env.fake.set_task_status(RUN, TASK, "completed");
    let yaml = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("field_id: ko1", "field_id: ko2");
    env.write_raw_config(&yaml);
    let daemon = env.start();
    daemon
        .wait_for_log("is completed, and Tallyfy does not allow changes to completed tasks")
        .await;
    daemon
        .wait_for_log(
            "kick-off field ko2 (\"Customer\") of template tpl2 is a text field, not a file field",
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_refused_for_good_fails_the_file_and_deletes_the_useless_upload() {
    let (env, daemon) = Env::running().await;
    env.fake.set_task_status(RUN, TASK, "completed");
    drop_file(&env.tasks, "late.pdf", b"x");
    daemon
        .wait_for_log("could not attach; not retried until the file changes")
        .await;
    eventually(
        "the unattached upload is deleted",
        || env.fake.assets().is_empty(),
        &daemon,
    )
    .await;
    assert_eq!(
        env.requests("PUT", "/tasks/").len(),
        1,
        "a 422 is not retried"
    );
    // The file never was in Tallyfy: the log says what went, not that the file was deleted.
    daemon
        .wait_for_log("orphan upload removed from Tallyfy (it was never attached to the field)")
        .await;
    assert!(
        !daemon.log().contains("deleted from Tallyfy"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_or_template_that_does_not_exist_is_named_in_the_log() {
    let env = Env::new().await;
    let yaml = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("task_id: task1", "task_id: nosuch")
        .replace("checklist_id: tpl2", "checklist_id: gone");
    env.write_raw_config(&yaml);
    let daemon = env.start();
    daemon
        .wait_for_log("task nosuch of run run1 does not exist (404)")
        .await;
    daemon
        .wait_for_log("template gone does not exist (404)")
        .await;
    assert_eq!(env.fake.requests().len(), 2, "a 404 target is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_upload_in_flight_finish_and_a_restart_attaches_it_without_uploading_again()
{
    let env = Env::new().await;
    let daemon = start_with_a_slow_upload(&env, Duration::from_secs(2)).await;
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        env.fake.assets().len(),
        1,
        "the upload in flight was allowed to finish"
    );
    assert!(
        env.task_field().is_empty(),
        "no new work (the attach) after SIGTERM"
    );

    let daemon = env.start();
    eventually(
        "attached after the restart",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(
        env.uploads(),
        1,
        "attached from the recorded upload, not sent again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let env = Env::new().await;
    let daemon = start_with_a_slow_upload(&env, Duration::from_secs(30)).await;
    daemon.signal(libc::SIGTERM);
    daemon.wait_for_log("stopping").await;
    let started = std::time::Instant::now();
    daemon.signal(libc::SIGINT);
    let status = daemon.wait_exit().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1));
}

/// A running daemon with one upload in flight that the server holds for `latency`.
async fn start_with_a_slow_upload(env: &Env, latency: Duration) -> Daemon {
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    env.fake
        .inject(Fault::once("POST", "/file", FaultKind::Latency(latency)));
    drop_file(&env.tasks, "slow.pdf", b"slow");
    daemon.wait_for_log("uploading").await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_costs_a_handful_of_probes_and_everything_converges_after_it() {
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("", "", status(503, None)).times(usize::MAX));
    let outage = std::time::Instant::now();
    drop_twenty(&env);
    // The outage lasts this long whatever the daemon does: waiting is the point here.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.status == 503)
        .count();
    env.fake.clear_faults();
    let recovered = std::time::Instant::now();
    all_twenty_attached(&env, &daemon, "all 20 attached after the outage").await;
    let converged = recovered.elapsed();
    eprintln!(
        "outage: {:.0} s, 20 files waiting, {during} requests during it, all attached {:.1} s after recovery, {} assets stored",
        outage.elapsed().as_secs_f64() - converged.as_secs_f64(),
        converged.as_secs_f64(),
        env.fake.assets().len()
    );
    // One probe per backoff step (about 1 and 2 s) plus the requests already on their way when
    // the gate closed: the files settle in waves, and a first wave's failures (fewer than
    // FAILURE_RUN in a row) look passing, so the next wave's `api.concurrency` uploads may be
    // on their way when the third failure closes the gate: 2 + 4 + 2.
    assert!(during <= 8, "{during} requests during a 4 s outage");
    assert_eq!(env.fake.assets().len(), 20, "nothing stored twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_pages_answered_with_200_are_retried_not_taken_as_verdicts() {
    let (env, daemon) = Env::running().await;
    env.fake
        .inject(Fault::once("", "", FaultKind::HtmlPage).share(0.3));
    drop_twenty(&env);
    all_twenty_attached(&env, &daemon, "all 20 attached despite the HTML pages").await;
    assert!(
        daemon.log().contains("not JSON"),
        "the HTML page is named as the problem"
    );
    assert!(!daemon.log().contains("not retried until the file changes"));
    // The fake lists a file once it has applied the PUT; the daemon records it once the answer
    // reaches it, which an HTML page in the answer's place delays by a retry.
    eventually(
        "the daemon records all 20 as synced",
        || env.command(&["status"]).stdout.contains("20 synced"),
        &daemon,
    )
    .await;
    let text = env.command(&["status"]).stdout;
    assert!(text.contains("0 failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answer_cut_short_is_sent_again_and_attached_once() {
    upload_answer_lost(FaultKind::CutShort).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_refused_by_a_completed_task_heals_once_the_task_is_reopened() {
    let env = Env::with_config("failed_retry_interval: 2s\n", "").await;
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    env.fake.set_task_status(RUN, TASK, "completed");
    drop_file(&env.tasks, "late.pdf", b"x");
    daemon
        .wait_for_log("could not attach; not retried until the file changes")
        .await;
    let status = env.command(&["status"]);
    assert!(
        status.stdout.contains("next attempt in"),
        "status says when the file is tried again: {}",
        status.stdout
    );
    // While the task stays completed, a check costs one GET and sends the file nowhere.
    daemon.wait_for_log("the target still refuses files").await;
    assert_eq!(env.uploads(), 1, "no upload while the target refuses files");
    env.fake.set_task_status(RUN, TASK, "active");
    eventually(
        "attached once the task is reopened",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(filenames(&env.task_field()), ["late.pdf"]);
    assert!(daemon
        .log()
        .contains("trying the files it refused once more"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_whose_task_was_completed_at_start_resumes_by_itself_once_it_is_reopened() {
    let env = Env::with_config("rescan_interval: 2s\n", "").await;
    env.fake.set_task_status(RUN, TASK, "completed");
    let daemon = env.start();
    daemon
        .wait_for_log("folders mapped to this target are not synced until the config is fixed")
        .await;
    drop_file(&env.tasks, "waiting.pdf", b"%PDF waits for the task");
    eventually(
        "status lists the file as waiting for the folder",
        || {
            env.command(&["status"])
                .stdout
                .contains("waiting: the folder is not syncing")
        },
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 0, "nothing is sent to a completed task");
    env.fake.set_task_status(RUN, TASK, "active");
    eventually(
        "attached once the task is reopened, without a reload",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    assert_eq!(filenames(&env.task_field()), ["waiting.pdf"]);
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// Drops 20 small files into the task folder.
fn drop_twenty(env: &Env) {
    for i in 0..20 {
        drop_file(
            &env.tasks,
            &format!("{i:02}.pdf"),
            format!("{i}").as_bytes(),
        );
    }
}

async fn all_twenty_attached(env: &Env, daemon: &Daemon, what: &str) {
    eventually(what, || env.task_field().len() == 20, daemon).await;
}
