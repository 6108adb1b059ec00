//! Where the token and the client secret come from, and that neither is ever shown.

use reqwest::Url;

use super::*;
use crate::config::api::{
    DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, DEFAULT_TOKEN_URL,
};

fn api(token_file: Option<PathBuf>) -> ApiConfig {
    with_auth(Auth::Token { token_file })
}

fn client_api(client_secret_file: Option<PathBuf>) -> ApiConfig {
    with_auth(Auth::ClientCredentials {
        token_url: Url::parse(DEFAULT_TOKEN_URL).unwrap(),
        client_id: "CLIENT".into(),
        client_secret_file,
    })
}

fn with_auth(auth: Auth) -> ApiConfig {
    ApiConfig {
        base_url: Url::parse(DEFAULT_BASE_URL).unwrap(),
        org_id: "ORG".into(),
        auth,
        timeout: DEFAULT_TIMEOUT,
        concurrency: DEFAULT_CONCURRENCY,
        rate_limit: None,
        ca_file: None,
        proxy: None,
    }
}

/// The token, or the client secret, that `Credentials::resolve` finds.
fn resolve(api: &ApiConfig, vars: &[(&str, &Path)]) -> Result<Secret, ConfigError> {
    let env = |name: &str| {
        vars.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_os_str().to_owned())
            // No unit installed on this machine is looked at.
            .or_else(|| (name == "SYSTEMD_UNIT_PATH").then(|| "/nonexistent".into()))
    };
    Ok(match Credentials::resolve(api, &env)? {
        Credentials::Token(token) => token,
        Credentials::ClientCredentials { client_secret, .. } => client_secret,
    })
}

#[test]
fn the_token_comes_from_the_environment_then_the_file_then_the_credential() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, "from-file\n").unwrap();
    fs::write(fx.root.join("tallyfy-token"), "  from-credential\r\n").unwrap();
    let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
    let var = ("TALLYFY_ACCESS_TOKEN", Path::new(" from-env\n"));
    let with_file = api(Some(file));

    let token = resolve(&with_file, &[var, creds]).unwrap();
    assert_eq!(token.expose(), "from-env");
    let token = resolve(&with_file, &[creds]).unwrap();
    assert_eq!(token.expose(), "from-file");
    let token = resolve(&api(None), &[creds]).unwrap();
    assert_eq!(token.expose(), "from-credential");
}

#[test]
fn an_empty_token_is_rejected_naming_its_source() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, " \n").unwrap();
    let error = resolve(&api(None), &[("TALLYFY_ACCESS_TOKEN", Path::new(""))]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "API token from environment variable TALLYFY_ACCESS_TOKEN: empty"
    );
    let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "API token from file {} (api.token_file): empty",
            file.display()
        )
    );
}

#[test]
fn a_missing_token_file_is_named() {
    let fx = Fixture::new();
    let file = fx.root.join("nope");
    let error = resolve(&api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            format!(
                "API token from file {} (api.token_file): cannot read it: No such file or directory (os error 2)",
                file.display()
            )
        );
    let error = resolve(
        &api(None),
        &[("CREDENTIALS_DIRECTORY", &fx.root.join("creds"))],
    )
    .unwrap_err();
    assert!(error.to_string().starts_with(&format!(
        "API token from systemd credential {}: cannot read it: ",
        fx.root.join("creds/tallyfy-token").display()
    )));
    let error = resolve(&api(None), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            "API token from TALLYFY_ACCESS_TOKEN, api.token_file or the systemd credential tallyfy-token: none is set"
        );
}

#[test]
fn token_errors_and_debug_never_show_the_token() {
    let fx = Fixture::new();
    let file = fx.root.join("token");
    fs::write(&file, "Bearer s3cr3t\n").unwrap();
    let error = resolve(&api(Some(file)), &[]).unwrap_err();
    assert!(error.to_string().ends_with(
        ": contains whitespace or control characters (it must hold the API token alone)"
    ));
    assert!(!format!("{error} {error:?}").contains("s3cr3t"));

    let var = ("TALLYFY_ACCESS_TOKEN", Path::new("s3cr3t"));
    let token = resolve(&api(None), &[var]).unwrap();
    assert_eq!(format!("{token:?}"), "Secret(<redacted>)");
}

#[test]
fn a_config_debug_holds_no_token() {
    let fx = Fixture::new();
    fs::write(fx.root.join("token"), "s3cr3t").unwrap();
    let config = fx.parse(&yaml("  token_file: token\n", ""));
    let var = ("TALLYFY_ACCESS_TOKEN", Path::new("env-s3cr3t"));
    let token = resolve(&config.api, &[var]).unwrap();
    assert_eq!(token.expose(), "env-s3cr3t");
    let debug = format!("{config:?}");
    assert!(debug.contains("token_file"));
    assert!(!debug.contains("s3cr3t"));
}

#[test]
fn the_client_secret_comes_from_the_environment_then_the_file_then_the_credential() {
    let fx = Fixture::new();
    let file = fx.root.join("secret");
    fs::write(&file, "from-file\n").unwrap();
    fs::write(fx.root.join("tallyfy-client-secret"), "from-credential\n").unwrap();
    let creds = ("CREDENTIALS_DIRECTORY", fx.root.as_path());
    let var = ("TALLYFY_CLIENT_SECRET", Path::new("from-env"));
    let token = ("TALLYFY_ACCESS_TOKEN", Path::new("a-token"));
    let with_file = client_api(Some(file));

    let secret = resolve(&with_file, &[token, var, creds]).unwrap();
    assert_eq!(secret.expose(), "from-env");
    let secret = resolve(&with_file, &[token, creds]).unwrap();
    assert_eq!(secret.expose(), "from-file");
    let secret = resolve(&client_api(None), &[token, creds]).unwrap();
    assert_eq!(secret.expose(), "from-credential");
    // The personal access token is no stand-in for the secret.
    let error = resolve(&client_api(None), &[token]).unwrap_err();
    assert_eq!(
            error.to_string(),
            "client secret from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret: none is set"
        );
}

#[test]
fn client_secret_errors_and_debug_never_show_the_secret() {
    let fx = Fixture::new();
    let file = fx.root.join("secret");
    fs::write(&file, "s3cr3t and more\n").unwrap();
    let error = resolve(&client_api(Some(file.clone())), &[]).unwrap_err();
    assert_eq!(
            error.to_string(),
            format!(
                "client secret from file {} (api.client_secret_file): contains whitespace or control characters (it must hold the client secret alone)",
                file.display()
            )
        );
    assert!(!format!("{error:?}").contains("s3cr3t"));

    let env = |name: &str| (name == "TALLYFY_CLIENT_SECRET").then(|| OsString::from("s3cr3t"));
    let credentials = Credentials::resolve(&client_api(None), &env).unwrap();
    let debug = format!("{credentials:?}");
    assert!(debug.contains("CLIENT") && debug.contains("<redacted>"));
    assert!(!debug.contains("s3cr3t"));

    let problems = fx.problems(&yaml(
        "  auth: client_credentials\n  client_id: C\n  client_secret: s3cr3t\n",
        "",
    ));
    assert_eq!(
            problems,
            ["api.client_secret: unknown key (the client secret is never read from the config file; it comes from TALLYFY_CLIENT_SECRET, api.client_secret_file or the systemd credential tallyfy-client-secret)"]
        );
}
