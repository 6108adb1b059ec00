//! OAuth client credentials through the real binary: tokens are fetched before the first
//! request, renewed before they expire, replaced once when the API refuses them, and a wrong
//! secret is reported clearly without hammering the token endpoint.

mod common;

use std::time::Duration;

use common::*;

/// The daemon gets a personal access token too, which the fake would accept: only tokens it
/// fetched itself may be used, so it is never the one that works.
const UNUSED_TOKEN: &str = "personal-token-not-for-client-credentials";

fn refused(env: &Env) -> usize {
    env.fake
        .requests()
        .iter()
        .filter(|request| request.status == 401)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_attach_with_client_credentials() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let daemon = env.start_with_token(UNUSED_TOKEN);
    drop_file(&env.tasks, "invoice.pdf", b"invoice");
    drop_file(&env.kickoff, "contract.pdf", b"contract");
    eventually(
        "both files are attached",
        || env.task_field().len() == 1 && env.kickoff_field().len() == 1,
        &daemon,
    )
    .await;
    let tokens = env.fake.token_requests();
    assert_eq!(tokens.len(), 1, "one token serves every request");
    assert_eq!(tokens[0].status, 200);
    assert_eq!(
        env.fake.requests()[0].path,
        "/oauth/token",
        "fetched before the first request"
    );
    assert_eq!(refused(&env), 0);
    let log = daemon.log();
    assert!(log.contains("got an access token"), "{log}");
    assert!(!log.contains(CLIENT_SECRET) && !log.contains(UNUSED_TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_the_token_before_it_expires_while_files_keep_syncing() {
    let lifetime = Duration::from_secs(3);
    let env = Env::with_client_credentials(CLIENT_SECRET, lifetime.as_secs()).await;
    let daemon = env.start_with_token(UNUSED_TOKEN);
    let deadline = std::time::Instant::now() + WAIT;
    let mut dropped = 0;
    // Files keep coming until the token has been renewed twice.
    while env.fake.token_requests().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "no renewal; log:\n{}",
            daemon.log()
        );
        dropped += 1;
        drop_file(&env.tasks, &format!("{dropped}.pdf"), b"x");
        eventually(
            "the file is attached",
            || env.task_field().len() == dropped,
            &daemon,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let tokens = env.fake.token_requests();
    for pair in tokens.windows(2) {
        assert!(
            pair[1].at < pair[0].at + lifetime,
            "a token was renewed {:?} after the last, when it had expired",
            pair[1].at - pair[0].at
        );
    }
    assert!(tokens.iter().all(|request| request.status == 200));
    assert_eq!(
        refused(&env),
        0,
        "no request went out with an expired token"
    );
    assert!(dropped >= 3, "only {dropped} files synced meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_once_and_the_file_still_attaches() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let daemon = env.start_with_token(UNUSED_TOKEN);
    drop_file(&env.tasks, "before.pdf", b"before");
    eventually(
        "the first file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    env.fake.revoke_tokens();
    drop_file(&env.tasks, "after.pdf", b"after");
    eventually(
        "the second file is attached",
        || env.task_field().len() == 2,
        &daemon,
    )
    .await;
    assert_eq!(refused(&env), 1, "one request met the revoked token");
    assert_eq!(env.fake.token_requests().len(), 2, "one new token");
    assert_eq!(
        env.fake.assets().len(),
        2,
        "the refused upload stored nothing"
    );
    let log = daemon.log();
    assert!(log.contains("refused the access token (401) before it expired"));
    assert!(!log.contains("pausing all requests"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_reported_clearly_and_the_token_endpoint_is_not_hammered() {
    let wrong = "not-the-client-secret";
    let env = Env::with_client_credentials(wrong, 604_800).await;
    let daemon = env.start_with_token(UNUSED_TOKEN);
    daemon.wait_for_log("cannot get an access token").await;
    for i in 0..10 {
        drop_file(&env.tasks, &format!("{i}.pdf"), b"x");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let asked = env.fake.token_requests().len();
    // One fetch, then one per backoff step (about 1 s, 2 s, 4 s...).
    assert!(
        asked <= 4,
        "{asked} token requests in 4 s with a wrong secret"
    );
    assert_eq!(
        env.fake.requests().len(),
        asked,
        "no API request without a token"
    );
    let log = daemon.log();
    let expected = format!(
        "the token endpoint {} issued no access token for client {CLIENT_ID}: HTTP 401: Client authentication failed (invalid_client)",
        env.fake.token_url()
    );
    assert!(log.contains(&expected), "{log}");
    assert!(!log.contains(wrong) && !log.contains(CLIENT_SECRET));
    assert!(
        daemon.exited().is_none(),
        "it waits for the fix instead of exiting"
    );

    // Once the secret is valid (here: the server starts accepting it), the next probe works.
    env.fake.set_client(CLIENT_ID, wrong);
    eventually(
        "the files are attached",
        || env.task_field().len() == 10,
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_describes_client_credentials_and_names_a_missing_secret() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let output = env.command(&["check"]);
    assert!(output.status.success(), "{}", output.stderr);
    let expected = format!(
        "client credentials of client {CLIENT_ID} at {}; secret from file {} (api.client_secret_file)",
        env.fake.token_url(),
        env.dir.path().join("client-secret").display()
    );
    assert!(output.stdout.contains(&expected), "{}", output.stdout);
    assert!(!output.stdout.contains(CLIENT_SECRET));

    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let without_file: String = yaml
        .lines()
        .filter(|line| !line.contains("client_secret_file"))
        .map(|line| format!("{line}\n"))
        .collect();
    env.write_raw_config(&without_file);
    let output = env.command(&["check"]);
    assert_eq!(output.status.code(), Some(78), "{}", output.stderr);
    assert!(
        output.stderr.contains("client secret from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret: none is set"),
        "{}",
        output.stderr
    );
}
