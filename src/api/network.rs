//! Company networks. Receives the API config and the failures of requests; emits the client's
//! trust anchors (the system's certificate store and the roots built into the binary, both
//! through reqwest's features, plus `api.ca_file`), the proxy a URL is reached through (as
//! reqwest picks it from the environment), and, for a request refused because of the server's
//! certificate, an `ApiError::Untrusted` that says why in words an administrator can act on.

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use reqwest::{ClientBuilder, Url};
use rustls::CertificateError;
use tracing::warn;

use super::error::{ApiError, Endpoint};
use crate::config::ApiConfig;

/// The certificates of `api.ca_file` on top of the built-in trust.
pub fn trust(builder: ClientBuilder, config: &ApiConfig) -> ClientBuilder {
    warn_unreadable_store_variables();
    config
        .ca_file
        .iter()
        .flat_map(|ca_file| ca_file.certificates.iter().cloned())
        .fold(builder, ClientBuilder::add_root_certificate)
}

/// SSL_CERT_FILE and SSL_CERT_DIR replace the system's store when set, and a path there that
/// cannot be read is skipped without a word: the only sign would be every request refused.
fn warn_unreadable_store_variables() {
    for variable in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        let Some(value) = std::env::var_os(variable) else {
            continue;
        };
        let paths: Vec<PathBuf> = if variable == "SSL_CERT_DIR" {
            std::env::split_paths(&value).collect()
        } else {
            vec![PathBuf::from(value)]
        };
        for path in paths.iter().filter(|path| !path.as_os_str().is_empty()) {
            if let Err(error) = std::fs::metadata(path) {
                warn!(
                    path = %path.display(),
                    "{variable} names {}, which cannot be read ({error}); while {variable} is set, the system's certificate store is not used",
                    crate::text::path(path)
                );
            }
        }
    }
}

/// The variables reqwest takes a proxy from when `api.proxy` is not set, in its order.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What is wrong with each proxy variable of the environment that reqwest would skip without
/// a word (and so connect directly), as "HTTPS_PROXY \"http://***@proxy:99999\": why"; none
/// when `api.proxy` replaces them. The passwords of the usable ones become known secrets.
pub fn environment_proxy_problems(config: &ApiConfig) -> Vec<String> {
    if config.proxy.is_some() {
        return Vec::new();
    }
    PROXY_VARIABLES
        .iter()
        .filter_map(|variable| {
            let value = std::env::var(variable).ok()?;
            let value = value.trim();
            if value.is_empty() {
                return None;
            }
            let problem = proxy_problem(value)?;
            Some(format!(
                "environment variable {variable} {:?}: {problem}",
                crate::text::without_userinfo(value)
            ))
        })
        .collect()
}

/// Why reqwest cannot use `value` as a proxy and what it does instead, or `None` when it can
/// (its password then kept secret).
fn proxy_problem(value: &str) -> Option<String> {
    let ignored = "; requests go directly, not through it";
    // Like reqwest and curl, a value without a scheme means http://.
    let text = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = match Url::parse(&text) {
        Ok(url) => url,
        Err(error) => return Some(format!("not a proxy URL ({error}){ignored}")),
    };
    let authority = text
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .unwrap_or_default();
    let problem = if !matches!(url.scheme(), "http" | "https") {
        // The client was built without SOCKS: it would speak HTTP to a SOCKS proxy.
        let outcome = if url.scheme().starts_with("socks") {
            "; requests sent to it fail"
        } else {
            ignored
        };
        format!(
            "the scheme {}:// is not supported (only http:// and https:// proxies){outcome}",
            crate::text::escape(url.scheme())
        )
    } else if url.host_str().is_none_or(str::is_empty) {
        format!("no host{ignored}")
    } else if authority.matches('@').count() > 1 {
        format!("more than one @ (write an @ in the user name or password as %40){ignored}")
    } else if text.parse::<hyper::Uri>().is_err() {
        format!("not a URL the HTTP client can use{ignored}")
    } else {
        crate::config::ProxyUrl(url).keep_password_secret();
        return None;
    };
    Some(problem)
}

/// `api.proxy` for every request, with NO_PROXY from the environment; without it, reqwest
/// reads HTTPS_PROXY, HTTP_PROXY and NO_PROXY itself.
pub fn proxy(builder: ClientBuilder, config: &ApiConfig) -> ClientBuilder {
    let Some(proxy) = &config.proxy else {
        // The passwords of the proxies in the environment are secrets too.
        let _ = environment_proxy_problems(config);
        return builder;
    };
    match reqwest::Proxy::all(proxy.0.as_str()) {
        Ok(all) => builder.proxy(all.no_proxy(reqwest::NoProxy::from_env())),
        // The config checked that reqwest takes it.
        Err(_) => builder,
    }
}

/// The proxy requests to `url` go through (`api.proxy`, or HTTPS_PROXY, HTTP_PROXY and
/// ALL_PROXY), NO_PROXY applied, picked by the matcher reqwest uses itself; shown without a
/// user name or password.
pub fn proxy_for(url: &Url, config: &ApiConfig) -> Option<String> {
    use hyper_util::client::proxy::matcher::Matcher;
    let uri: hyper::Uri = url.as_str().parse().ok()?;
    let matcher = match &config.proxy {
        Some(proxy) => {
            let no = ["NO_PROXY", "no_proxy"]
                .iter()
                .find_map(|name| std::env::var(name).ok())
                .unwrap_or_default();
            Matcher::builder().all(proxy.0.as_str()).no(no).build()
        }
        None => Matcher::from_system(),
    };
    let intercept = matcher.intercept(&uri)?;
    let proxy = intercept.uri();
    let port = proxy
        .port_u16()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    Some(format!(
        "{}://{}{port}",
        proxy.scheme_str().unwrap_or("http"),
        proxy.host().unwrap_or_default()
    ))
}

/// A request that got no answer, as an `ApiError`: `ProxyRefused` when the proxy (`proxy`,
/// as shown) answered the tunnel's CONNECT with 407, `Untrusted` when the TLS handshake failed
/// on the server's certificate, `Transport` otherwise.
pub fn failed(endpoint: Endpoint, error: &reqwest::Error, proxy: Option<&str>) -> ApiError {
    if proxy_refused(error) {
        return proxy_refusal(endpoint, proxy);
    }
    match refused_certificate(error) {
        Some(problem) => ApiError::Untrusted {
            endpoint,
            host: error.url().map(host).unwrap_or_default(),
            reason: reason(problem, endpoint),
        },
        None => ApiError::Transport {
            endpoint,
            detail: super::describe(error),
        },
    }
}

/// The proxy asked for credentials (407), or refused the ones it got.
pub fn proxy_refusal(endpoint: Endpoint, proxy: Option<&str>) -> ApiError {
    ApiError::ProxyRefused {
        endpoint,
        proxy: proxy.unwrap_or("in between").to_string(),
    }
}

/// hyper-util reports a CONNECT answered 407 with an error type of its own that it does not
/// export (and reqwest passes on as "tunnel error: ..."): its message is all there is to
/// recognise it by.
fn proxy_refused(error: &(dyn Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if current
            .to_string()
            .ends_with("proxy authorization required")
        {
            return true;
        }
        cause = current.source();
    }
    false
}

fn host(url: &Url) -> String {
    let name = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{name}:{port}"),
        None => name.to_string(),
    }
}

/// The certificate problem rustls reported, wherever it sits among the causes of `error`.
fn refused_certificate<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a CertificateError> {
    let mut cause = Some(error);
    while let Some(current) = cause {
        // `io::Error::source` skips the error it wraps, and that is where rustls puts its own,
        // sometimes inside a second `io::Error` (hyper-rustls wraps tokio-rustls's).
        let mut wrapped = Some(current);
        while let Some(candidate) = wrapped {
            if let Some(rustls::Error::InvalidCertificate(problem)) =
                candidate.downcast_ref::<rustls::Error>()
            {
                return Some(problem);
            }
            wrapped = candidate
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|inner| inner as &(dyn Error + 'static));
        }
        cause = current.source();
    }
    None
}

/// What is wrong with the certificate and what to do about it.
fn reason(problem: &CertificateError, endpoint: Endpoint) -> String {
    let url_key = match endpoint {
        Endpoint::Token => "api.token_url",
        _ => "api.base_url",
    };
    let renew = "if this machine's clock is right, the server (or the TLS-inspecting proxy in between) must renew it";
    match problem {
        CertificateError::UnknownIssuer => "certificate signed by an unknown authority: add the company CA to the system store or set api.ca_file".to_string(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("certificate expired on {}: {renew}", date(not_after.as_secs()))
        }
        CertificateError::Expired => format!("certificate expired: {renew}"),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "certificate not valid before {}: check this machine's clock",
            date(not_before.as_secs())
        ),
        CertificateError::NotValidYet => {
            "certificate not valid yet: check this machine's clock".to_string()
        }
        // The names come from the server's certificate.
        CertificateError::NotValidForNameContext { .. } | CertificateError::NotValidForName => {
            format!(
                "{}: check the host name in {url_key}",
                crate::text::escape(&problem.to_string())
            )
        }
        CertificateError::Revoked => "certificate revoked".to_string(),
        other => format!(
            "certificate refused ({})",
            crate::text::escape(&other.to_string())
        ),
    }
}

fn date(unix_secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(unix_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error whose cause is an `io::Error` wrapping an `io::Error` wrapping rustls's, as
    /// hyper-util, hyper-rustls and tokio-rustls nest the handshake's failure.
    #[derive(Debug)]
    struct Connect(std::io::Error);

    impl std::fmt::Display for Connect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl Error for Connect {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    fn nested(inner: rustls::Error) -> Connect {
        let handshake = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        Connect(std::io::Error::other(handshake))
    }

    #[test]
    fn a_certificate_problem_is_found_inside_the_io_errors_that_wrap_it() {
        let error = nested(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            refused_certificate(&error),
            Some(&CertificateError::UnknownIssuer)
        );
    }

    #[test]
    fn other_handshake_failures_are_not_certificate_problems() {
        let error = nested(rustls::Error::General("handshake cut short".into()));
        assert_eq!(refused_certificate(&error), None);
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(refused_certificate(&plain), None);
    }

    #[test]
    fn each_reason_says_what_to_do() {
        assert_eq!(
            reason(&CertificateError::UnknownIssuer, Endpoint::Upload),
            "certificate signed by an unknown authority: add the company CA to the system store or set api.ca_file"
        );
        let expired = CertificateError::ExpiredContext {
            time: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)),
            not_after: rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
                1_700_000_000,
            )),
        };
        assert_eq!(
            reason(&expired, Endpoint::GetTask),
            "certificate expired on Tue, 14 Nov 2023 22:13:20 GMT: if this machine's clock is right, the server (or the TLS-inspecting proxy in between) must renew it"
        );
        assert!(reason(&CertificateError::NotValidForName, Endpoint::Token)
            .ends_with(": check the host name in api.token_url"));
        assert!(
            reason(&CertificateError::NotValidYet, Endpoint::Upload).contains("clock"),
            "a certificate from the future means a wrong clock"
        );
    }

    #[test]
    fn proxy_urls_reqwest_would_skip_or_fail_on_are_told_apart_from_usable_ones() {
        for usable in [
            "http://proxy.example.com:3128",
            "proxy.example.com:3128",
            "https://user:p%40ss@proxy.example.com",
        ] {
            assert_eq!(proxy_problem(usable), None, "{usable}");
        }
        let problem = |value| proxy_problem(value).unwrap_or_default();
        assert!(problem("http://proxy.example.com:99999")
            .starts_with("not a proxy URL (invalid port number); requests go directly"));
        assert!(problem("ftp://proxy.example.com").contains("requests go directly"));
        assert!(problem("socks5h://proxy.example.com").ends_with("requests sent to it fail"));
        assert!(problem("http://u:p@ss@proxy.example.com").starts_with("more than one @"));
    }

    #[test]
    fn names_from_the_certificate_are_escaped() {
        let problem = CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("go.tallyfy.com").unwrap(),
            presented: vec!["evil\nINFO forged".into()],
        };
        let shown = reason(&problem, Endpoint::Upload);
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.contains("evil\\nINFO forged"), "{shown}");
    }
}
