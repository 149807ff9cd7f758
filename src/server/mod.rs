//! Connections: accept, optional TLS, HTTP/1.1 or h2 (by ALPN), graceful
//! shutdown. Requests are handed to [`Ingress`]; nothing here decides an answer
//! except the 408 for a head that never finished (see [`head_timeout`]).

mod head_timeout;
mod idle_timeout;
mod write_stall;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::ingress::Ingress;
use crate::live::Live;
use head_timeout::{HeadTimeout, RequestGuard, RequestState};
use idle_timeout::{IdleTimeout, OpenRequest, OpenRequests};
use write_stall::WriteStall;

/// Requests open at once on one h2 connection. Each may buffer up to
/// `max_body` before its signature can be checked, so this multiplies what
/// `max_connections` clients can make the gateway hold; webhook senders
/// need no more than a few.
const H2_MAX_STREAMS: u32 = 8;

/// Per-connection settings taken from `[server]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
}

/// Accepts connections until `shutdown` resolves, then lets in-flight
/// requests finish within the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Live<TlsAcceptor>>>,
    ingress: Arc<Ingress>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = ConnectionSlots::new(limits.max_connections, "inbound");
    tokio::pin!(shutdown);
    loop {
        let (slot, (stream, peer)) = tokio::select! {
            accepted = slots.accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let watcher = graceful.watcher();
        // The certificate in force when the connection arrives (a reload swaps it).
        let tls = tls.as_ref().map(|live| live.get());
        let connection = Connection { ingress: ingress.clone(), tls, limits, peer };
        tokio::spawn(async move {
            connection.run(stream, watcher).await;
            drop(slot);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(open_connections = open, grace = ?limits.shutdown_grace, "draining connections");
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// Caps open connections: past the cap, new ones wait in the listen backlog
/// (a slowloris crowd cannot exhaust memory or file descriptors; each of its
/// connections is closed at `header_timeout`).
pub(crate) struct ConnectionSlots {
    slots: Arc<Semaphore>,
    listener: &'static str,
    warned_at: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How often "all connection slots are taken" is logged while it lasts.
const FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

impl ConnectionSlots {
    pub(crate) fn new(max: usize, listener: &'static str) -> Self {
        ConnectionSlots { slots: Arc::new(Semaphore::new(max)), listener, warned_at: Default::default() }
    }

    /// Waits for a free slot, then for the next connection.
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (OwnedSemaphorePermit, (TcpStream, SocketAddr)) {
        if self.slots.available_permits() == 0 {
            let mut warned_at = self.warned_at.lock().expect("not poisoned");
            if warned_at.is_none_or(|at| at.elapsed() >= FULL_WARNING_INTERVAL) {
                *warned_at = Some(tokio::time::Instant::now());
                tracing::warn!(
                    listener = self.listener,
                    "every connection slot is taken; new connections wait"
                );
            }
        }
        let slot = self.slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        (slot, accept(listener).await)
    }
}

/// The next connection; accept errors (usually out of file descriptors) are
/// logged and retried after a pause instead of spinning.
pub(crate) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct Connection {
    ingress: Arc<Ingress>,
    tls: Option<Arc<TlsAcceptor>>,
    limits: ConnectionLimits,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, watcher: Watcher) {
        let _ = stream.set_nodelay(true);
        let stream = WriteStall::new(stream, self.limits.header_timeout);
        let Some(acceptor) = self.tls.clone() else {
            return self.serve_http1(stream, watcher).await;
        };
        let stream = match tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                return;
            }
        };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(stream, watcher).await;
        } else {
            self.serve_http1(stream, watcher).await;
        }
    }

    async fn serve_http1<S>(self, stream: S, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = Arc::new(RequestState::default());
        let io = TokioIo::new(HeadTimeout::new(stream, self.limits.header_timeout, state.clone()));
        let ingress = self.ingress;
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let ingress = ingress.clone();
            let guard = RequestGuard::enter(&state);
            async move {
                let response = ingress.handle(request).await;
                drop(guard);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None) // HeadTimeout answers 408 instead
            .serve_connection(io, service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(peer = %self.peer, error = %err, "HTTP/1 connection ended with an error");
        }
    }

    async fn serve_http2<S>(self, stream: S, watcher: Watcher)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let ingress = self.ingress;
        let open = Arc::new(OpenRequests::new());
        let io = TokioIo::new(IdleTimeout::new(stream, self.limits.header_timeout, open.clone()));
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let ingress = ingress.clone();
            let open = OpenRequest::enter(&open);
            async move {
                let response = ingress.handle(request).await;
                drop(open);
                Ok::<_, Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .serve_connection(io, service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(peer = %self.peer, error = %err, "HTTP/2 connection ended with an error");
        }
    }
}
