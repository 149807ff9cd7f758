//! `TestTarget`: a fake consumer on 127.0.0.1:0 that answers from a script,
//! records every request with its arrival time, and verifies the re-signed
//! request with the target's secret.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookrelay::signature::{self, SignedHeaders, Verifier};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    RetryAfter(u16, &'static str),
    /// Wait, then answer.
    Slow(Duration, u16),
    /// Close the connection without an answer.
    Drop,
    Redirect(String),
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The signature checked with the target's secret (None: no secret given).
    pub verified: Option<Result<(), signature::VerifyError>>,
    pub answered: String,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// Picks an answer from the request's headers; `None` falls back to the script.
type Chooser = Box<dyn Fn(&HeaderMap) -> Option<Answer> + Send>;

struct State {
    script: VecDeque<Answer>,
    default: Answer,
    /// Answers chosen by a function of the request (overrides the script).
    by_request: Option<Chooser>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct TestTarget {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    open: Arc<OpenRequests>,
    arrived: Arc<Notify>,
    pub tls_cert: Option<std::path::PathBuf>,
}

impl TestTarget {
    /// A plain-HTTP target that answers `script` in order, then 200.
    pub async fn start(secret: Option<&str>, script: Vec<Answer>) -> Self {
        Self::serve(secret, script, None, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A plain-HTTP target on a given address: one that refused connections
    /// (nothing listening) until now comes back.
    pub async fn start_on(addr: SocketAddr, secret: Option<&str>) -> Self {
        Self::serve(secret, Vec::new(), None, addr).await
    }

    /// The same over TLS with a certificate for localhost written into `dir`.
    pub async fn start_tls(secret: Option<&str>, script: Vec<Answer>, dir: &std::path::Path) -> Self {
        let (cert, key, _) = super::make_tls(dir);
        let tls = hookrelay::tls::ServerTls::load(&cert, &key).unwrap();
        let mut target =
            Self::serve(secret, script, Some(tls.config.clone()), "127.0.0.1:0".parse().unwrap()).await;
        target.tls_cert = Some(cert);
        target
    }

    /// A plain-HTTP target on a socket reserved earlier (bound, not
    /// listening: connections to it were refused until now).
    pub async fn start_on_socket(socket: tokio::net::TcpSocket, secret: Option<&str>) -> Self {
        Self::serve_listener(secret, Vec::new(), None, socket.listen(1024).unwrap()).await
    }

    async fn serve(
        secret: Option<&str>,
        script: Vec<Answer>,
        tls: Option<Arc<rustls::ServerConfig>>,
        addr: SocketAddr,
    ) -> Self {
        Self::serve_listener(secret, script, tls, TcpListener::bind(addr).await.unwrap()).await
    }

    async fn serve_listener(
        secret: Option<&str>,
        script: Vec<Answer>,
        tls: Option<Arc<rustls::ServerConfig>>,
        listener: TcpListener,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            default: Answer::Status(200),
            by_request: None,
            received: Vec::new(),
        }));
        let arrived = Arc::new(Notify::new());
        let verifier = secret.map(|secret| {
            Verifier::new(signature::keys_for_secret(secret).unwrap(), Duration::from_secs(300))
        });
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = Arc::new(OpenRequests::default());
        let (state2, arrived2, accepted, open2) =
            (state.clone(), arrived.clone(), connections.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (state, arrived, verifier, acceptor, open) =
                    (state2.clone(), arrived2.clone(), verifier.clone(), acceptor.clone(), open2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (state, arrived, verifier) = (state.clone(), arrived.clone(), verifier.clone());
                        let open = open.clone();
                        async move {
                            let _open = open.enter();
                            handle(request, &state, &arrived, verifier.as_ref()).await
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                    }
                });
            }
        });
        TestTarget { addr, state, connections, open, arrived, tls_cert: None }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Chooses answers by request instead of the script (None: fall back).
    pub fn answer_with(&self, choose: impl Fn(&HeaderMap) -> Option<Answer> + Send + 'static) {
        self.state.lock().unwrap().by_request = Some(Box::new(choose));
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most requests that were open at this target at one time.
    pub fn most_at_once(&self) -> usize {
        self.open.most.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until `pred` holds for the received requests, or panics.
    pub async fn wait_until(&self, within: Duration, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let received = self.received();
            if pred(&received) {
                return received;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("condition not met within {within:?}; received {} requests", received.len());
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), arrived).await;
        }
    }

    /// Waits for at least `n` requests.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        self.wait_until(within, |r| r.len() >= n).await
    }
}

/// Requests being answered now, and the most there ever were.
#[derive(Default)]
struct OpenRequests {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl OpenRequests {
    fn enter(&self) -> impl Drop + '_ {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        struct Leave<'a>(&'a OpenRequests);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        Leave(self)
    }
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    state: &Mutex<State>,
    arrived: &Notify,
    verifier: Option<&Verifier>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let verified = verifier.map(|verifier| {
        let get = |name| parts.headers.get(name).and_then(|v: &hyper::header::HeaderValue| v.to_str().ok());
        SignedHeaders::parse(get("webhook-id"), get("webhook-timestamp"), get("webhook-signature"))
            .and_then(|headers| verifier.verify(&headers, &body, super::now()))
    });
    let answer = {
        let mut state = state.lock().unwrap();
        let chosen = state.by_request.as_ref().and_then(|choose| choose(&parts.headers));
        let answer = chosen.or_else(|| state.script.pop_front()).unwrap_or_else(|| state.default.clone());
        state.received.push(Received {
            at,
            headers: parts.headers.clone(),
            body: body.clone(),
            verified,
            answered: format!("{answer:?}"),
        });
        answer
    };
    arrived.notify_waiters();
    let response = |code: u16| {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        *response.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        response
    };
    Ok(match answer {
        Answer::Status(code) => response(code),
        Answer::RetryAfter(code, value) => {
            let mut r = response(code);
            r.headers_mut().insert("retry-after", value.parse().unwrap());
            r
        }
        Answer::Slow(delay, code) => {
            tokio::time::sleep(delay).await;
            response(code)
        }
        Answer::Redirect(location) => {
            let mut r = response(301);
            r.headers_mut().insert("location", location.parse().unwrap());
            r
        }
        Answer::Drop => return Err(std::io::Error::other("dropped by script")),
    })
}
