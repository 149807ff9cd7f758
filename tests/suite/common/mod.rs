//! Test harness: a real gateway on 127.0.0.1:0 with a real sled journal in a
//! temp dir, optional TLS with a certificate made for the test, and a small
//! client speaking HTTP/1.1, HTTP/1.1 over TLS or h2 over TLS.
#![allow(dead_code)] // not every helper is used yet

pub mod daemon;
pub mod parallel;
pub mod target;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookrelay::config::Config;
use hookrelay::journal::Journal;
use hookrelay::signature;
use hookrelay::{Gateway, GatewayError};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Standard Webhooks secret of the default `parallel` source.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A second, rotated-in secret of the same source (raw string form).
pub const ROTATED_SECRET: &str = "0123456789abcdef0123456789abcdef";

pub const MONITOR_EVENT: &str = r#"{"type":"monitor.event.detected","timestamp":"2025-07-02T23:29:35.114Z","data":{"monitor_id":"monitor_b0079f70","event":{"event_group_id":"mevtgrp_b0079f70"},"metadata":{"team":"research"}}}"#;

/// How a test reaches the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Https1,
    Https2,
}

pub const ALL_TRANSPORTS: [Transport; 3] = [Transport::Http, Transport::Https1, Transport::Https2];

/// Lines added to the generated config; `{dir}` expands to the temp dir.
#[derive(Clone, Default)]
pub struct Options {
    pub server: String,
    pub journal: String,
    /// Replaces the default `[sources.parallel]` table.
    pub sources: Option<String>,
    /// `[targets.*]` tables appended to the config.
    pub targets: String,
    /// Lines added to `[admin]` (its listen address is always 127.0.0.1:0).
    pub admin: String,
    pub tls: bool,
    /// Reuse this directory (its journal) instead of a fresh one.
    pub dir: Option<Arc<tempfile::TempDir>>,
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub dir: Arc<tempfile::TempDir>,
    pub journal: Arc<Journal>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    /// Re-reads `config_path` into the running gateway (what SIGHUP does).
    pub reload: hookrelay::reload::ReloadHandle,
    pub config_path: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), GatewayError>>>,
}

pub fn default_sources() -> String {
    format!(
        r#"
[sources.parallel]
secrets = ["{SECRET}", "{ROTATED_SECRET}"]

[sources.other]
secrets = ["whsec_b3RoZXItc291cmNlLXNlY3JldA=="]
"#
    )
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn start_tls() -> Self {
        Self::with(Options { tls: true, ..Options::default() }).await
    }

    /// A gateway that speaks `transport`: plain for `Http`, TLS otherwise.
    pub async fn for_transport(transport: Transport, options: Options) -> Self {
        Self::with(Options { tls: transport != Transport::Http, ..options }).await
    }

    pub async fn with(options: Options) -> Self {
        hookrelay::tls::install_default_provider();
        let dir = options.dir.clone().unwrap_or_else(|| Arc::new(tempfile::tempdir().unwrap()));
        let dir_path = dir.path().display().to_string();
        let mut client_tls = None;
        let mut tls_line = String::new();
        if options.tls {
            let (cert, key, client) = make_tls(dir.path());
            tls_line = format!("tls = {{ cert = {:?}, key = {:?} }}", cert, key);
            client_tls = Some(client);
        }
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{tls_line}\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n[journal]\npath = \"{dir_path}/journal\"\n{}\n{}\n{}",
            options.server.replace("{dir}", &dir_path),
            options.admin.replace("{dir}", &dir_path),
            options.journal.replace("{dir}", &dir_path),
            options.sources.clone().unwrap_or_else(default_sources).replace("{dir}", &dir_path),
            options.targets.replace("{dir}", &dir_path),
        );
        let config_path = dir.path().join("hookrelay.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let gateway = Gateway::bind(config).await.unwrap();
        let addr = gateway.inbound_addr();
        let admin_addr = gateway.admin_addr();
        let journal = gateway.journal();
        let reload = gateway.reload_handle();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(gateway.run(async {
            let _ = rx.await;
        }));
        TestGateway {
            addr,
            admin_addr,
            dir,
            journal,
            client_tls,
            reload,
            config_path,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        self.begin_stop();
        self.wait_stopped().await
    }

    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn wait_stopped(&mut self) -> Result<(), GatewayError> {
        let task = self.task.take().expect("not yet stopped");
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("gateway stops").unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        self.client_tls.clone().expect("gateway started with TLS")
    }

    /// Sends one request on a fresh connection.
    pub async fn send(&self, transport: Transport, request: Request<Full<Bytes>>) -> Reply {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        match transport {
            Transport::Http => http1(tcp, request).await,
            Transport::Https1 | Transport::Https2 => {
                let alpn: &[u8] = if transport == Transport::Https2 { b"h2" } else { b"http/1.1" };
                let mut config = (*self.client_tls()).clone();
                config.alpn_protocols = vec![alpn.to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
                if transport == Transport::Https2 {
                    http2(tls, request).await
                } else {
                    http1(tls, request).await
                }
            }
        }
    }

    pub async fn post_signed(&self, transport: Transport, source: &str, id: &str, body: &str) -> Reply {
        self.send(transport, signed_request(source, SECRET, id, now(), body.as_bytes())).await
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.begin_stop();
    }
}

/// `GET path` on the admin listener (no token).
pub async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    let request =
        hyper::Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).unwrap();
    send_plain(addr, request).await
}

/// `POST path` with a JSON body on the admin listener (no token).
pub async fn admin_post(addr: SocketAddr, path: &str, body: serde_json::Value) -> Reply {
    let request = hyper::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send_plain(addr, request).await
}

/// Sends one request over plain HTTP/1.1 to `addr` on a fresh connection.
pub async fn send_plain(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    http1(TcpStream::connect(addr).await.unwrap(), request).await
}

/// A self-signed certificate for localhost/127.0.0.1 and a client trusting it.
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(hookrelay::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (cert, key, Arc::new(client))
}

/// A response with its body read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!("body is not JSON ({err}): {:?}", String::from_utf8_lossy(&self.body))
        })
    }

    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn collect(response: Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn http1<S>(stream: S, request: Request<Full<Bytes>>) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    collect(sender.send_request(request).await.unwrap()).await
}

async fn http2<S>(stream: S, request: Request<Full<Bytes>>) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    collect(sender.send_request(request).await.unwrap()).await
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A POST to `/hooks/{source}` signed the Standard Webhooks way with `secret`.
pub fn signed_request(
    source: &str,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Request<Full<Bytes>> {
    let key = signature::signing_key_for_secret(secret).unwrap();
    let ts = timestamp.to_string();
    let sig = signature::sign(&key, id, &ts, body);
    request(source, &[("webhook-id", id), ("webhook-timestamp", &ts), ("webhook-signature", &sig)], body)
}

/// A POST to `/hooks/{source}` with exactly these headers.
pub fn request(source: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Full<Bytes>> {
    let mut builder = Request::post(format!("/hooks/{source}"))
        .header("host", "localhost")
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}
