//! The `api` section: its keys, auth kinds, certificate authorities and proxy.

use reqwest::Url;

use super::*;

#[test]
fn a_token_key_explains_where_the_token_comes_from_without_echoing_it() {
    let fx = Fixture::new();
    let problems = fx.problems(&(yaml("  token: s3cr3t-value\n", "") + "token: s3cr3t-value\n"));
    let why = "unknown key (the API token is never read from the config file; it comes from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token)";
    assert_eq!(
        problems,
        [format!("api.token: {why}"), format!("token: {why}")]
    );
}

#[test]
fn org_id_is_required_even_without_an_api_section() {
    let fx = Fixture::new();
    let without_api = minimal().replace("api:\n  org_id: ORG\n", "");
    assert_eq!(fx.problems(&without_api), ["api.org_id: required"]);
    let null_org = minimal().replace("org_id: ORG", "org_id:");
    assert_eq!(fx.problems(&null_org), ["api.org_id: required"]);
    let api_string = minimal().replace("api:\n  org_id: ORG\n", "api: ORG\n");
    assert_eq!(
        fx.problems(&api_string),
        ["api \"ORG\": expected a mapping, found a string"]
    );
}

#[test]
fn concurrency_must_be_an_integer_from_1_to_64() {
    let fx = Fixture::new();
    for (written, problem) in [
        ("0", "api.concurrency 0: must be between 1 and 64"),
        ("65", "api.concurrency 65: must be between 1 and 64"),
        ("-1", "api.concurrency -1: must be between 1 and 64"),
        ("2.5", "api.concurrency 2.5: must be between 1 and 64"),
        (
            "\"4\"",
            "api.concurrency \"4\": expected an integer, found a string",
        ),
    ] {
        let text = yaml(&format!("  concurrency: {written}\n"), "");
        assert_eq!(fx.problems(&text), [problem]);
    }
    assert_eq!(fx.parse(&yaml("  concurrency: 1\n", "")).api.concurrency, 1);
}

#[test]
fn base_url_must_be_https_unless_the_host_is_loopback() {
    let fx = Fixture::new();
    let https =
        "must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)";
    for (url, problem) in [
        (
            "http://example.com/api",
            format!("\"http://example.com/api\": {https}"),
        ),
        (
            "ftp://127.0.0.1/api",
            format!("\"ftp://127.0.0.1/api\": {https}"),
        ),
        (
            "http://127.0.0.1.example.com/",
            format!("\"http://127.0.0.1.example.com/\": {https}"),
        ),
        (
            "go.tallyfy.com/api",
            "\"go.tallyfy.com/api\": not a valid URL: relative URL without a base".to_string(),
        ),
    ] {
        let text = yaml(&format!("  base_url: {url}\n"), "");
        assert_eq!(fx.problems(&text), [format!("api.base_url {problem}")]);
    }
    for (url, parsed) in [
        ("http://127.0.0.1:8080/api/", "http://127.0.0.1:8080/api"),
        ("http://127.1.2.3/", "http://127.1.2.3/"),
        ("http://LocalHost:9000/api", "http://localhost:9000/api"),
        ("http://[::1]:9000/api//", "http://[::1]:9000/api/"),
        ("https://go.tallyfy.com/api", "https://go.tallyfy.com/api"),
        ("https://127.0.0.1:8443/api", "https://127.0.0.1:8443/api"),
        ("https://localhost:8443/api", "https://localhost:8443/api"),
    ] {
        let config = fx.parse(&yaml(&format!("  base_url: \"{url}\"\n"), ""));
        assert_eq!(config.api.base_url.as_str(), parsed);
    }
}

#[test]
fn ca_file_takes_a_pem_bundle_and_names_the_key_when_it_cannot() {
    let fx = Fixture::new();
    let authority = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.self_signed(&key).unwrap().pem()
    };
    let bundle = authority("Company Root CA") + &authority("Company Proxy CA");
    fs::write(fx.root.join("company-ca.pem"), bundle).unwrap();
    let config = fx.parse(&yaml(
        "  ca_file: company-ca.pem
",
        "",
    ));
    let ca_file = config.api.ca_file.expect("ca_file is set");
    assert_eq!(ca_file.path, fx.root.join("company-ca.pem"));
    assert_eq!(ca_file.certificates.len(), 2);

    fs::write(
        fx.root.join("key.pem"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    fs::write(fx.root.join("ca.der"), [0x30, 0x82, 0x01, 0x0a]).unwrap();
    fs::write(
        fx.root.join("broken.pem"),
        "-----BEGIN CERTIFICATE-----\nMIIBCgKCAQEA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let no_certificate = "holds no certificate (expected PEM blocks \"-----BEGIN CERTIFICATE-----\"; convert a binary DER file with: openssl x509 -inform der -in FILE -out FILE.pem)";
    for (file, problem) in [
        (
            "missing.pem",
            "cannot read: No such file or directory (os error 2)",
        ),
        ("in", "cannot read: Is a directory (os error 21)"),
        ("key.pem", no_certificate),
        ("ca.der", no_certificate),
    ] {
        assert_eq!(
            fx.problems(&yaml(&format!("  ca_file: {file}\n"), "")),
            [format!("api.ca_file \"{file}\": {problem}")]
        );
    }
    let broken = fx.problems(&yaml("  ca_file: broken.pem\n", ""));
    assert_eq!(broken.len(), 1);
    assert!(
        broken[0].starts_with(
            "api.ca_file \"broken.pem\": holds a certificate that cannot be used as an authority: "
        ),
        "{broken:?}"
    );
    assert_eq!(
        fx.problems(&yaml("  ca_file: [a.pem]\n", "")),
        ["api.ca_file: expected a path string, found a list"]
    );
}

#[test]
fn api_proxy_is_checked_and_its_password_never_shown() {
    let fx = Fixture::new();
    let config = fx.parse(&yaml(
        "  proxy: http://operator:s3cr3t@proxy.example.com:3128\n",
        "",
    ));
    let proxy = config.api.proxy.as_ref().expect("api.proxy");
    assert_eq!(proxy.0.password(), Some("s3cr3t"));
    assert_eq!(proxy.shown(), "http://proxy.example.com:3128");
    assert!(!format!("{config:?}").contains("s3cr3t"));
    let hint = "expected a proxy URL such as http://proxy.example.com:3128";
    for bad in ["ftp://proxy.example.com", "proxy.example.com:3128"] {
        let problems = fx.problems(&yaml(&format!("  proxy: {bad}\n"), ""));
        assert!(
            problems
                .iter()
                .any(|problem| problem.starts_with(&format!("api.proxy \"{bad}\": {hint}"))),
            "{problems:?}"
        );
    }
}

#[test]
fn client_credentials_parse_with_the_default_token_url() {
    let fx = Fixture::new();
    let config = fx.parse(&yaml("  auth: client_credentials\n  client_id: 7\n", ""));
    assert_eq!(
        config.api.auth,
        Auth::ClientCredentials {
            token_url: Url::parse("https://go.tallyfy.com/oauth/token").unwrap(),
            client_id: "7".into(),
            client_secret_file: None,
        }
    );
    let config = fx.parse(&yaml(
            "  auth: client_credentials\n  token_url: http://127.0.0.1:9000/oauth/token\n  client_id: a-b\n  client_secret_file: secret\n",
            "",
        ));
    assert_eq!(
        config.api.auth,
        Auth::ClientCredentials {
            token_url: Url::parse("http://127.0.0.1:9000/oauth/token").unwrap(),
            client_id: "a-b".into(),
            client_secret_file: Some(fx.root.join("secret")),
        }
    );
    let config = fx.parse(&yaml("  auth: token\n", ""));
    assert_eq!(config.api.auth, Auth::Token { token_file: None });
}

#[test]
fn client_credentials_need_a_client_id_and_an_https_token_url() {
    let fx = Fixture::new();
    let text = yaml(
        "  auth: client_credentials\n  token_url: http://example.com/oauth/token\n",
        "",
    );
    assert_eq!(
            fx.problems(&text),
            [
                "api.token_url \"http://example.com/oauth/token\": must use https:// (plain http is only allowed for loopback hosts such as 127.0.0.1)",
                "api.client_id: required with api.auth: client_credentials",
            ]
        );
    let text = yaml("  auth: client_credentials\n  client_id: \"a b\"\n", "");
    assert_eq!(
        fx.problems(&text),
        ["api.client_id \"a b\": must not contain whitespace or control characters"]
    );
}

#[test]
fn keys_of_the_auth_not_chosen_are_errors_naming_the_key() {
    let fx = Fixture::new();
    let client_keys = "  token_url: https://example.com/oauth/token\n  client_id: C\n  client_secret_file: secret\n";
    assert_eq!(
        fx.problems(&yaml(client_keys, "")),
        [
            "api.token_url: only applies with api.auth: client_credentials",
            "api.client_id: only applies with api.auth: client_credentials",
            "api.client_secret_file: only applies with api.auth: client_credentials",
        ]
    );
    let text = yaml(
        "  auth: client_credentials\n  client_id: C\n  token_file: token\n",
        "",
    );
    assert_eq!(
            fx.problems(&text),
            ["api.token_file: only applies with api.auth: token (the client secret comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
}

#[test]
fn auth_must_be_token_or_client_credentials() {
    let fx = Fixture::new();
    assert_eq!(
        fx.problems(&yaml("  auth: oauth\n  client_id: C\n", "")),
        ["api.auth \"oauth\": expected token or client_credentials"]
    );
    assert_eq!(
        fx.problems(&yaml("  auth: [token]\n", "")),
        ["api.auth: expected token or client_credentials, found a list"]
    );
}
