//! No secret reaches a person: not a proxy password in a malformed URL, not credentials
//! written into a URL, not the client secret through a token endpoint's redirect, and not what
//! a server echoes of the request in its error text.

mod common;

use common::*;
use tallyfy_sync::fake::{FakeTallyfy, Fault, FaultKind};

const PROXY_PASSWORD: &str = "Pr0xyPassw0rd";

fn assert_hidden(output: &Output, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !output.stdout.contains(secret) && !output.stderr.contains(secret),
            "{secret:?} shown:\n{}",
            describe(output)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_proxy_is_refused_in_check_run_and_reload_without_its_password() {
    let env = Env::new().await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    for proxy in [
        format!("http://operator:{PROXY_PASSWORD}@proxy.example.com:99999"),
        format!("operator:{PROXY_PASSWORD}@proxy.example.com:3128"),
        format!("socks9://operator:{PROXY_PASSWORD}@proxy.example.com"),
    ] {
        env.write_config_with_api(&format!("  proxy: {proxy}\n"), "", "");
        for command in [&["check"][..], &["run"][..]] {
            let output = env.command(command);
            assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
            assert!(
                output.stderr.contains("api.proxy \"") && output.stderr.contains("***@proxy"),
                "{}",
                describe(&output)
            );
            assert_hidden(&output, &[PROXY_PASSWORD, "operator"]);
        }
    }

    env.write_raw_config(&good);
    let daemon = env.start();
    daemon.wait_for_log("running").await;
    env.write_config_with_api(
        &format!("  proxy: http://operator:{PROXY_PASSWORD}@proxy.example.com:99999\n"),
        "",
        "",
    );
    daemon.signal(libc::SIGHUP);
    daemon
        .wait_for_log("reload refused, the running configuration stays")
        .await;
    let log = daemon.log();
    assert!(log.contains("api.proxy"), "{log}");
    assert!(!log.contains(PROXY_PASSWORD), "{log}");
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_name_and_password_in_an_api_url_are_refused_naming_the_key_only() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    let with_userinfo = |url: &str| url.replacen("http://", "http://admin:Ur1Passw0rd@", 1);
    let base = env.fake.base_url();
    let token_url = env.fake.token_url();
    for (key, url) in [("base_url", &base), ("token_url", &token_url)] {
        env.write_raw_config(&good.replacen(url.as_str(), &with_userinfo(url), 1));
        let output = env.command(&["check"]);
        assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
        assert!(
            output.stderr.contains(&format!(
                "\n  - api.{key}: must not hold a user name or password"
            )),
            "{}",
            describe(&output)
        );
        assert_hidden(&output, &["Ur1Passw0rd", "admin"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_redirecting_elsewhere_never_gets_the_client_secret_sent_there() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let elsewhere = FakeTallyfy::start(ORG, TOKEN).await.unwrap();
    elsewhere.set_client(CLIENT_ID, CLIENT_SECRET);
    for status in [307, 308, 302] {
        env.fake.clear_faults();
        env.fake.inject(
            Fault::once(
                "POST",
                "/oauth/token",
                FaultKind::Redirect {
                    status,
                    location: format!("{}?stolen=1", elsewhere.token_url()),
                },
            )
            .times(100),
        );
        let output = env.command(&["check", "--online"]);
        assert_ne!(output.status.code(), Some(0), "{}", describe(&output));
        let origin = format!("http://{}", elsewhere.addr());
        assert!(
            output.stderr.contains(&format!("HTTP {status}: it redirects to {origin}; redirects of the token endpoint are not followed"))
                || output.stdout.contains(&format!("HTTP {status}: it redirects to {origin}; redirects of the token endpoint are not followed")),
            "{}",
            describe(&output)
        );
        assert_hidden(&output, &[CLIENT_SECRET, "stolen"]);
    }
    assert!(
        elsewhere.requests().is_empty(),
        "the other server was asked: {:?}",
        elsewhere.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_echoing_the_credentials_are_redacted_in_check_the_log_and_status() {
    // The token endpoint echoes the form it got, the client secret in it.
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    for (status, body) in [
        (
            400,
            format!(
                r#"{{"error": "invalid_request", "error_description": "bad form: client_secret={CLIENT_SECRET}"}}"#
            ),
        ),
        (
            500,
            format!(r#"{{"message": "crashed on client_secret={CLIENT_SECRET}"}}"#),
        ),
        (
            502,
            format!("<html>upstream said client_secret={CLIENT_SECRET}</html>"),
        ),
    ] {
        env.fake.clear_faults();
        env.fake.inject(
            Fault::once(
                "POST",
                "/oauth/token",
                FaultKind::Status {
                    status,
                    body,
                    retry_after: None,
                },
            )
            .times(100),
        );
        let output = env.command(&["check", "--online"]);
        assert_ne!(output.status.code(), Some(0), "{}", describe(&output));
        let shown = format!("{}{}", output.stdout, output.stderr);
        assert!(
            shown.contains("client_secret=<redacted>"),
            "{}",
            describe(&output)
        );
        assert_hidden(&output, &[CLIENT_SECRET]);
    }

    // The API echoes the request's headers, the bearer token among them.
    let env = Env::with_config("log:\n  format: text\n", "").await;
    let echo = format!(
        r#"{{"error": true, "message": "refused; you sent Authorization: Bearer {TOKEN}"}}"#
    );
    env.fake.inject(
        Fault::once(
            "GET",
            "/tasks/",
            FaultKind::Status {
                status: 500,
                body: echo.clone(),
                retry_after: None,
            },
        )
        .times(100),
    );
    let output = env.command(&["check", "--online"]);
    let shown = format!("{}{}", output.stdout, output.stderr);
    assert!(shown.contains("Bearer <redacted>"), "{}", describe(&output));
    assert_hidden(&output, &[TOKEN]);

    env.fake.clear_faults();
    let daemon = upload_refused_with(&env, echo).await;
    let status = env.command(&["status"]);
    assert!(
        status.stdout.contains("Bearer <redacted>"),
        "{}",
        describe(&status)
    );
    assert_hidden(&status, &[TOKEN]);
    assert_eq!(daemon.stop().await.code(), Some(0));

    // JSON lines keep names exact, but not secrets.
    let env = Env::with_config("log:\n  format: json\n", "").await;
    let echo = format!(r#"{{"message": "refused; you sent Authorization: Bearer {TOKEN}"}}"#);
    let daemon = upload_refused_with(&env, echo).await;
    assert_eq!(daemon.stop().await.code(), Some(0));
}

/// Starts the daemon, has the API refuse an upload with `body` (which echoes the token), and
/// checks that the log shows the refusal without the token.
async fn upload_refused_with(env: &Env, body: String) -> Daemon {
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    env.fake.inject(Fault::once(
        "POST",
        "/file",
        FaultKind::Status {
            status: 422,
            body,
            retry_after: None,
        },
    ));
    drop_file(&env.tasks, "refused.pdf", b"x");
    daemon.wait_for_log("upload failed").await;
    let log = daemon.log();
    assert!(log.contains("Bearer <redacted>"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    daemon
}
