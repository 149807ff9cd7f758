//! The admin HTTP listener (`[admin] listen`, loopback by default), apart
//! from the inbound one so it can stay private:
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once listeners and journal are up, 503 from the
//!   moment shutdown begins.
//! - `GET /metrics`: Prometheus text format (see `metrics`).
//!
//! The `/v1/...` operator API (deliveries, replays, targets) is not here yet.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::delivery::LaneStatus;
use crate::journal::Journal;
use crate::metrics::Metrics;

/// What the admin endpoints read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub lanes: LaneStatus,
    pub journal: Arc<Journal>,
    /// True between start-up and the beginning of shutdown.
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    fn handle(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match request.uri().path() {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let body = self.metrics.render(&self.lanes.gauges(now_ms), self.journal.size_on_disk().ok());
                let mut response = text(StatusCode::OK, &body);
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves the admin endpoints until `stop` resolves.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, stop: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let response = admin.handle(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        tokio::spawn(graceful.watch(connection));
    }
    // Scrapes in progress finish; nothing here is slow.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}
