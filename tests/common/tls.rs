//! HTTPS in front of the fake, as on a company network: a certificate authority made for one
//! test and trusted nowhere else, a TLS-terminating forwarder with a certificate it signed for
//! 127.0.0.1 and localhost (bytes go on to the fake's plain port), and a CONNECT proxy that
//! records which hosts it was asked to reach.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

use super::Env;

/// A certificate authority of its own, like a company's TLS-inspecting proxy has.
pub struct Authority {
    /// Its certificate, PEM.
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).expect("CA certificate");
        Authority {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the certificate to `name` in the test's directory, as an administrator would
    /// install it.
    pub fn write(&self, env: &Env, name: &str) -> PathBuf {
        let path = env.dir.path().join(name);
        std::fs::write(&path, &self.pem).unwrap();
        path
    }

    /// A server set-up with a certificate for 127.0.0.1 and localhost signed by this authority.
    fn server_config(&self) -> rustls::ServerConfig {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer).expect("server cert");
        let private_key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![certificate.der().clone()], private_key.into())
        .expect("server certificate and key")
    }
}

/// HTTPS on 127.0.0.1, forwarded to a plain HTTP server (the fake).
pub struct TlsFront {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TlsFront {
    pub async fn start(authority: &Authority, backend: SocketAddr) -> TlsFront {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(authority.server_config()));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that does not trust the certificate ends the handshake.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront {
            addr,
            connections,
            task,
        }
    }

    /// "127.0.0.1:PORT", as the daemon names the host in its messages.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// TCP connections accepted so far, whether or not their handshake succeeded.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP proxy that only tunnels (CONNECT), as HTTPS_PROXY names one.
pub struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        ConnectProxy::listen(false).await
    }

    /// A proxy that refuses every CONNECT with 407, as it does the wrong password.
    pub async fn refusing() -> ConnectProxy {
        ConnectProxy::listen(true).await
    }

    async fn listen(refuse: bool) -> ConnectProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&targets);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(tunnel(client, Arc::clone(&seen), refuse));
            }
        });
        ConnectProxy {
            addr,
            targets,
            task,
        }
    }

    /// "http://127.0.0.1:PORT", for HTTPS_PROXY.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `host:port` of every CONNECT so far.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `CONNECT host:port HTTP/1.1` and its headers, then relays bytes both ways (or, when
/// `refuse`, answers 407).
async fn tunnel(client: TcpStream, seen: Arc<Mutex<Vec<String>>>, refuse: bool) {
    let mut reader = BufReader::new(client);
    let mut request = String::new();
    if reader.read_line(&mut request).await.is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut words = request.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.lock().unwrap().push(target.to_string());
    if refuse {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"corp\"\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = reader
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let early = reader.buffer().to_vec();
    let mut client = reader.into_inner();
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
        || upstream.write_all(&early).await.is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Rewrites the test's config so that the API, and the token endpoint if there is one, are
/// reached through `front`, with `api_extra` (lines indented two spaces) added to `api`.
pub fn serve_config_over(env: &Env, front: &TlsFront, api_extra: &str) {
    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let yaml = yaml
        .replace(
            &format!("http://{}", env.fake.addr()),
            &format!("https://{}", front.addr),
        )
        .replacen("api:\n", &format!("api:\n{api_extra}"), 1);
    env.write_raw_config(&yaml);
}
