//! Company networks through the real binary: the fake served over TLS with a certificate from
//! a certificate authority made for the test, trusted through `api.ca_file` or SSL_CERT_FILE,
//! refused with a clear error and a pause when it is not trusted, and reached through the
//! proxy HTTPS_PROXY names.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::tls::{serve_config_over, Authority, ConnectProxy, TlsFront};
use common::*;
use serde_json::Value;

/// The environment and the fake behind TLS with a certificate signed by a new authority.
async fn behind_tls(env: Env) -> (Env, Authority, TlsFront) {
    let authority = Authority::new("Example Corp TLS Inspection CA");
    let front = TlsFront::start(&authority, env.fake.addr()).await;
    (env, authority, front)
}

fn unknown_authority(front: &TlsFront) -> String {
    format!(
        "cannot trust {}: certificate signed by an unknown authority: add the company CA to the system store or set api.ca_file",
        front.host()
    )
}

async fn attached(env: &Env, daemon: &Daemon, name: &str) {
    eventually(
        &format!("{name} is attached"),
        || filenames(&env.task_field()) == [name],
        daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_ca_in_api_ca_file_is_trusted_for_the_api_and_the_token_endpoint() {
    let env = Env::with_client_credentials(CLIENT_SECRET, 604_800).await;
    let (env, authority, front) = behind_tls(env).await;
    let ca_file = authority.write(&env, "company-ca.pem");
    serve_config_over(&env, &front, &format!("  ca_file: {}\n", ca_file.display()));

    let check = env.command(&["check", "--online"]);
    assert!(check.status.success(), "{}", describe(&check));
    assert_eq!(
        check.stdout.matches("target OK").count(),
        2,
        "{}",
        describe(&check)
    );
    assert!(
        check.stdout.contains(&format!(
            "trust: the system's certificate store and the roots built in, and 1 certificate from {} (api.ca_file)",
            ca_file.display()
        )),
        "{}",
        describe(&check)
    );

    let daemon = env.start();
    daemon.wait_for_log("target verified").await;
    drop_file(
        &env.tasks,
        "invoice.pdf",
        b"%PDF-1.4 through the company CA",
    );
    attached(&env, &daemon, "invoice.pdf").await;
    assert!(
        !env.fake.token_requests().is_empty(),
        "the token came from token_url over TLS"
    );
    assert!(front.connections() > 0, "the requests went over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_ca_in_ssl_cert_file_is_trusted_and_a_file_that_is_not_there_is_named() {
    let (env, authority, front) = behind_tls(Env::new().await).await;
    let bundle = authority.write(&env, "ca-certificates.crt");
    serve_config_over(&env, &front, "");
    let misspelt = env.dir.path().join("ca-certificate.crt");
    let check = run_command_with_env(
        &["check", "--online"],
        Some(TOKEN),
        &env.config,
        &[("SSL_CERT_FILE", misspelt.as_os_str())],
    );
    assert_eq!(check.status.code(), Some(78), "{}", describe(&check));
    assert!(
        check.stderr.contains(&format!(
            "SSL_CERT_FILE names {}, which cannot be read",
            misspelt.display()
        )),
        "{}",
        describe(&check)
    );
    let daemon = env.start_with_env(TOKEN, &[("SSL_CERT_FILE", bundle.as_os_str())]);
    daemon.wait_for_log("target verified").await;
    drop_file(&env.tasks, "scan.pdf", b"%PDF-1.4 through SSL_CERT_FILE");
    attached(&env, &daemon, "scan.pdf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_clear_error_and_pauses_requests_instead_of_failing_files() {
    let (env, _authority, front) = behind_tls(Env::new().await).await;
    serve_config_over(&env, &front, "");
    let why = unknown_authority(&front);

    let check = env.command(&["check", "--online"]);
    assert_eq!(check.status.code(), Some(78), "{}", describe(&check));
    assert!(check.stdout.contains(&why), "{}", describe(&check));

    let daemon = env.start();
    daemon.wait_for_log(&why).await;
    assert!(
        daemon
            .log()
            .lines()
            .any(|line| line.contains("ERROR") && line.contains(&why)),
        "logged as an ERROR:\n{}",
        daemon.log()
    );
    for i in 0..5 {
        drop_file(&env.tasks, &format!("scan-{i}.pdf"), b"%PDF-1.4");
    }
    eventually(
        "status shows why requests wait",
        || {
            env.command(&["status"])
                .stdout
                .contains(&format!("requests paused: {why}"))
        },
        &daemon,
    )
    .await;
    let before = front.connections();
    // A window to count in, not a synchronisation: probes follow a backoff of about 1, 2, 4 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = front.connections() - before;
    assert!(during <= 3, "{during} connections in 3 s while paused");

    let status = env.command(&["status", "--json"]);
    let report: Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert_eq!(report["api_pause"]["reason"], why.as_str());
    for folder in report["folders"].as_array().unwrap() {
        assert_eq!(folder["counts"]["failed"], 0, "{}", status.stdout);
    }
    assert!(env.fake.requests().is_empty(), "nothing reached the API");
}

/// Where the daemon learns of the proxy.
enum ProxyFrom {
    Environment,
    /// `api.proxy`, with a user name and password, while HTTPS_PROXY names a dead one.
    Config,
}

/// Syncs one file through a CONNECT proxy named as `from` says, with NO_PROXY set to
/// `no_proxy`; returns the hosts the proxy was asked to reach, and what `check` says of the
/// proxy.
async fn sync_with_a_proxy(no_proxy: &str, from: ProxyFrom) -> (Vec<String>, String, TlsFront) {
    let (env, authority, front) = behind_tls(Env::new().await).await;
    let ca_file = authority.write(&env, "company-ca.pem");
    let proxy = ConnectProxy::start().await;
    let proxy_url = proxy.url();
    let mut api_extra = format!("  ca_file: {}\n", ca_file.display());
    let https_proxy = match from {
        ProxyFrom::Environment => proxy_url.clone(),
        ProxyFrom::Config => {
            let with_password = proxy_url.replacen("http://", "http://operator:s3cret@", 1);
            api_extra += &format!("  proxy: {with_password}\n");
            "http://127.0.0.1:9".to_string()
        }
    };
    serve_config_over(&env, &front, &api_extra);
    let vars = [
        ("HTTPS_PROXY", OsStr::new(&https_proxy)),
        ("NO_PROXY", OsStr::new(no_proxy)),
    ];
    let check = run_command_with_env(&["check"], Some(TOKEN), &env.config, &vars);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(!check.stdout.contains("s3cret"), "{}", describe(&check));
    let daemon = env.start_with_env(TOKEN, &vars);
    daemon.wait_for_log("target verified").await;
    drop_file(
        &env.tasks,
        "report.pdf",
        b"%PDF-1.4 on a network with a proxy",
    );
    attached(&env, &daemon, "report.pdf").await;
    let shown = check
        .stdout
        .lines()
        .find(|line| line.starts_with("proxy for "))
        .unwrap_or_default()
        .to_string();
    let proxy_line = format!("proxy for 127.0.0.1: {proxy_url}");
    (
        proxy.targets(),
        shown.replace(&proxy_line, "proxy for 127.0.0.1: PROXY"),
        front,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_company_ca_added_with_a_reload_lets_the_waiting_files_go() {
    let (env, authority, front) = behind_tls(Env::new().await).await;
    serve_config_over(&env, &front, "");
    let daemon = env.start();
    daemon.wait_for_log(&unknown_authority(&front)).await;
    for i in 0..3 {
        drop_file(&env.tasks, &format!("waiting-{i}.pdf"), b"%PDF-1.4");
    }
    // A reload is taken once start-up is over, which an unverified target makes last 10 s.
    daemon.wait_for_log("reporting ready anyway").await;
    let ca_file = authority.write(&env, "company-ca.pem");
    serve_config_over(&env, &front, &format!("  ca_file: {}\n", ca_file.display()));
    daemon.signal(libc::SIGHUP);
    eventually(
        "the three files are attached",
        || env.task_field().len() == 3,
        &daemon,
    )
    .await;
    daemon.wait_for_log("the API answers again").await;
}

/// Syncs through the proxy named as `from` says, and checks that every CONNECT went to the API
/// and that `check` said so as `shown`.
async fn synced_through_the_proxy(from: ProxyFrom, shown: &str) {
    let (targets, said, front) = sync_with_a_proxy("", from).await;
    assert!(!targets.is_empty(), "the proxy saw no CONNECT");
    assert!(
        targets.iter().all(|target| *target == front.host()),
        "{targets:?}"
    );
    assert_eq!(said, shown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_the_proxy_that_https_proxy_names() {
    synced_through_the_proxy(ProxyFrom::Environment, "proxy for 127.0.0.1: PROXY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_proxy_in_the_config_is_used_instead_of_the_environment_and_shown_without_its_password()
{
    let shown = "proxy for 127.0.0.1: PROXY (api.proxy)";
    synced_through_the_proxy(ProxyFrom::Config, shown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_no_proxy_is_reached_directly() {
    for from in [ProxyFrom::Environment, ProxyFrom::Config] {
        let (targets, shown, _front) = sync_with_a_proxy("localhost,127.0.0.1", from).await;
        assert_eq!(targets, Vec::<String>::new());
        assert_eq!(shown, "proxy for 127.0.0.1: none");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_that_cannot_be_read_is_a_config_error_naming_the_key() {
    let env = Env::new().await;
    std::fs::write(env.dir.path().join("empty.pem"), "").unwrap();
    for (file, problem) in [
        ("missing.pem", "cannot read: No such file or directory"),
        ("empty.pem", "holds no certificate"),
    ] {
        env.write_config_with_api(&format!("  ca_file: {file}\n"), "", "");
        let check = env.command(&["check"]);
        assert_eq!(check.status.code(), Some(78), "{}", describe(&check));
        assert!(
            check
                .stderr
                .contains(&format!("api.ca_file \"{file}\": {problem}")),
            "{}",
            describe(&check)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_refusing_its_password_is_named_with_its_407_not_as_an_unreachable_api() {
    let (env, authority, front) = behind_tls(Env::new().await).await;
    let ca_file = authority.write(&env, "company-ca.pem");
    let proxy = ConnectProxy::refusing().await;
    let with_password = proxy
        .url()
        .replacen("http://", "http://operator:Wr0ngPassw0rd@", 1);
    serve_config_over(
        &env,
        &front,
        &format!(
            "  ca_file: {}\n  proxy: {with_password}\n",
            ca_file.display()
        ),
    );
    let refused = format!(
        "the proxy {} refused the credentials (HTTP 407 Proxy Authentication Required)",
        proxy.url()
    );
    let check = env.command(&["check", "--online"]);
    assert_ne!(check.status.code(), Some(0), "{}", describe(&check));
    let shown = format!("{}{}", check.stdout, check.stderr);
    assert!(shown.contains(&refused), "{}", describe(&check));
    assert!(!shown.contains("unreachable"), "{}", describe(&check));
    assert!(!shown.contains("Wr0ngPassw0rd"), "{}", describe(&check));

    let daemon = env.start();
    daemon.wait_for_log(&refused).await;
    let log = daemon.log();
    assert!(!log.contains("unreachable"), "{log}");
    assert!(!log.contains("Wr0ngPassw0rd"), "{log}");
    assert!(
        proxy.targets().iter().all(|target| *target == front.host()),
        "{:?}",
        proxy.targets()
    );
    assert_eq!(daemon.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_proxy_in_the_environment_is_reported_by_check_and_at_start() {
    let env = Env::new().await;
    let cases = [
        (
            "HTTPS_PROXY",
            "http://operator:Pr0xyPassw0rd@proxy.example.com:99999",
            "environment variable HTTPS_PROXY \"http://***@proxy.example.com:99999\": not a proxy URL (invalid port number); requests go directly, not through it",
        ),
        (
            "ALL_PROXY",
            "socks5://proxy.example.com:1080",
            "environment variable ALL_PROXY \"socks5://proxy.example.com:1080\": the scheme socks5:// is not supported (only http:// and https:// proxies); requests sent to it fail",
        ),
        (
            "https_proxy",
            "http://operator:Pr0xy@Passw0rd@proxy.example.com:3128",
            "environment variable https_proxy \"http://***@proxy.example.com:3128\": more than one @ (write an @ in the user name or password as %40); requests go directly, not through it",
        ),
    ];
    for (variable, value, warning) in cases {
        let vars = [(variable, OsStr::new(value))];
        let check = run_command_with_env(&["check"], Some(TOKEN), &env.config, &vars);
        assert!(check.status.success(), "{}", describe(&check));
        assert!(
            check.stdout.contains(&format!("warning: {warning}\n")),
            "{warning}\n{}",
            describe(&check)
        );
        assert!(!check.stdout.contains("Passw0rd"), "{}", describe(&check));
    }
    let (variable, value, warning) = cases[0];
    let daemon = env.start_with_env(TOKEN, &[(variable, OsStr::new(value))]);
    daemon.wait_for_log(warning).await;
    assert!(!daemon.log().contains("Pr0xyPassw0rd"), "{}", daemon.log());
    assert_eq!(daemon.stop().await.code(), Some(0));
}
