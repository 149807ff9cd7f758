//! The admin HTTP listener (`[admin] listen`, loopback by default), apart
//! from the inbound one so it can stay private:
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 once listeners and journal are up; 503 from the
//!   moment shutdown begins, and while the journal refuses writes.
//! - `GET /metrics`: Prometheus text format (see `metrics`).
//! - `GET /v1/deliveries` (filters, cursor) and `GET /v1/deliveries/{id}`.
//! - `POST /v1/deliveries/purge`: drop dead deliveries for good.
//! - `POST /v1/replays`, `GET /v1/replays`, `GET /v1/replays/{id}`.
//! - `POST /v1/backfill`: inject a monitor's detections that never arrived.
//! - `GET /v1/targets`, `POST /v1/targets/{name}/pause`, `.../resume`.
//!
//! Every `/v1/...` call needs `Authorization: Bearer <admin.token>` when a
//! token is configured (config validation insists on one unless the listener
//! is loopback).

pub mod deliveries;
mod replays;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Secret;
use crate::delivery::{LaneStatus, NotForgettable};
use crate::journal::Journal;
use crate::live::Live;
use crate::metrics::Metrics;
use crate::replay::Replayer;

/// The largest request body the admin API reads (a replay's id list).
const MAX_REQUEST_BODY: usize = 1 << 20;

/// Open admin connections at most: operators and a scraper need few.
const MAX_CONNECTIONS: usize = 64;

/// What the admin endpoints read.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub lanes: LaneStatus,
    pub journal: Arc<Journal>,
    pub replayer: Replayer,
    pub backfiller: Arc<crate::backfill::Backfiller>,
    /// True between start-up and the beginning of shutdown.
    pub ready: Arc<AtomicBool>,
    pub token: Live<Option<Secret>>,
}

impl Admin {
    /// Takes the token and the replay rules (targets, sources) of a
    /// reloaded config.
    pub(crate) fn reload(&self, config: &crate::config::Config) {
        self.token.set(config.admin.token.clone());
        self.backfiller.reload(config);
        self.replayer.reload(config);
    }

    fn handle(&self, request: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
        let path = request.uri.path();
        if let Some(rest) = path.strip_prefix("/v1/") {
            return self.api(request, body, rest);
        }
        if request.method != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if !self.ready.load(Ordering::Acquire) => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
            "/readyz" if !self.journal.is_writable() => {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the journal refuses writes\n")
            }
            "/readyz" => text(StatusCode::OK, "ready\n"),
            "/metrics" => {
                let now_ms = crate::time::now_ms();
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

impl Admin {
    /// The `/v1` operator API; `rest` is the path after `/v1/`.
    fn api(&self, request: &Parts, body: &[u8], rest: &str) -> Response<Full<Bytes>> {
        if !self.authorized(request) {
            return unauthorized();
        }
        let now_ms = crate::time::now_ms();
        let segments: Vec<&str> = rest.split('/').collect();
        match (&request.method, segments.as_slice()) {
            (&Method::GET, ["deliveries"]) => {
                let query = match deliveries::Query::parse(request.uri.query().unwrap_or(""), now_ms) {
                    Ok(query) => query,
                    Err(message) => return error(StatusCode::BAD_REQUEST, "bad_query", &message),
                };
                match deliveries::list(&self.journal, &query) {
                    Ok(page) => json(StatusCode::OK, &page),
                    Err(err) => journal_error(&err),
                }
            }
            (&Method::POST, ["deliveries", "purge"]) => deliveries::purge(&self.journal, body, now_ms),
            (&Method::POST, ["replays"]) => replays::start(&self.replayer, body, now_ms),
            (&Method::GET, ["replays"]) => replays::list(&self.journal),
            (&Method::GET, ["replays", id]) => replays::show(&self.journal, id),
            (&Method::GET, ["deliveries", id]) => {
                let Ok(id) = id.parse() else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_id",
                        "not a delivery id (dlv_ and 28 hex digits)",
                    );
                };
                match deliveries::show(&self.journal, id) {
                    Ok(Some(delivery)) => json(StatusCode::OK, &delivery),
                    Ok(None) => error(StatusCode::NOT_FOUND, "unknown_delivery", "no delivery with this id"),
                    Err(err) => journal_error(&err),
                }
            }
            (&Method::GET, ["targets"]) => {
                json(StatusCode::OK, &serde_json::json!({ "targets": self.lanes.describe(now_ms) }))
            }
            (&Method::POST, ["targets", name, action @ ("pause" | "resume")]) => {
                match self.lanes.set_paused(name, *action == "pause", now_ms) {
                    Ok(Some(target)) => json(StatusCode::OK, &target),
                    Ok(None) => error(
                        StatusCode::NOT_FOUND,
                        "unknown_target",
                        "no target with this name is configured",
                    ),
                    Err(err) => {
                        tracing::error!(error = %err, "cannot record the pause");
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "journal_unavailable",
                            "the change could not be saved",
                        )
                    }
                }
            }
            (&Method::POST, ["targets", name, "forget"]) => self.forget(name, now_ms),
            (
                _,
                ["targets"]
                | ["targets", _, "pause" | "resume" | "forget"]
                | ["deliveries"]
                | ["deliveries", _]
                | ["replays"]
                | ["replays", _]
                | ["backfill"],
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "wrong method for this path"),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    /// `POST /v1/targets/{name}/forget`: a removed target's pending jobs
    /// become dead (see `Journal::forget_target`). Refused for a target in
    /// the config, whose lane may be sending them (pause it, or remove it),
    /// and while an attempt of a removed one is still landing.
    fn forget(&self, name: &str, now_ms: u64) -> Response<Full<Bytes>> {
        // The admin API runs on the blocking pool: waiting here for the
        // writer thread's group commits holds no runtime worker.
        // Asked first: a target listed as removed is known even when the
        // forget finds nothing left to settle (only stale queue entries).
        let known = self.lanes.knows(name);
        let forgotten = self.lanes.forget_removed(name, || {
            tokio::runtime::Handle::current().block_on(self.journal.forget_target(name, now_ms))
        });
        match forgotten {
            Err(NotForgettable::Configured) => error(
                StatusCode::CONFLICT,
                "target_configured",
                "only a target removed from the config can be forgotten; pause it instead",
            ),
            Err(NotForgettable::InFlight(n)) => error(
                StatusCode::CONFLICT,
                "attempts_in_flight",
                &format!(
                    "{n} attempts started before the target was removed are still landing; try again shortly"
                ),
            ),
            Ok(Ok(0)) if !known => {
                error(StatusCode::NOT_FOUND, "unknown_target", "no target of this name has jobs pending")
            }
            Ok(Ok(dead)) => {
                tracing::warn!(target_name = %name, dead, "removed target forgotten: its pending jobs are dead");
                json(StatusCode::OK, &serde_json::json!({ "target": name, "dead": dead }))
            }
            Ok(Err(err)) => journal_failed_part_way(
                &err,
                "forgetting the target's jobs failed part way: those already dead stay dead; run it again for the rest",
            ),
        }
    }

    /// Constant-time bearer token check; open when no token is configured
    /// (then the listener is loopback, which config validation ensures).
    fn authorized(&self, request: &Parts) -> bool {
        use subtle::ConstantTimeEq;
        let token = self.token.get();
        let Some(token) = token.as_ref() else { return true };
        let presented = request
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes()))
    }
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme's name
/// is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({"error": "unauthorized", "message": "a valid bearer token is required"}),
    );
    response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(super) fn journal_error(err: &crate::journal::JournalError) -> Response<Full<Bytes>> {
    tracing::error!(error = %err, "admin API: journal read failed");
    error(StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable", "the journal could not be read")
}

/// A write of many batches (a replay, a purge) failed after some of them:
/// `what_stands` says what is done already, so the operator does not take
/// the 503 for nothing having happened.
pub(super) fn journal_failed_part_way(
    err: &crate::journal::JournalError,
    what_stands: &str,
) -> Response<Full<Bytes>> {
    tracing::error!(error = %err, "admin API: journal write failed part way");
    error(StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable", what_stands)
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `POST /v1/backfill`: 200 with what was found and injected; 400 for a bad
/// request or a source without an API key; 502 when Parallel's API failed
/// (after retries); 503 when the journal could not write.
async fn backfill(backfiller: &crate::backfill::Backfiller, body: &[u8]) -> Response<Full<Bytes>> {
    use crate::backfill::BackfillError;
    match backfiller.run(body).await {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(BackfillError::BadRequest(message)) => error(StatusCode::BAD_REQUEST, "bad_request", &message),
        Err(BackfillError::Api(err)) => {
            tracing::warn!(error = %err, "backfill failed: the Parallel API");
            error(StatusCode::BAD_GATEWAY, "parallel_api_failed", &err.to_string())
        }
        Err(BackfillError::Journal(err)) => {
            tracing::error!(error = %err, "backfill failed: the journal");
            error(StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable", &err.to_string())
        }
    }
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": code, "message": message }))
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Serves the admin endpoints until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    admin: Arc<Admin>,
    header_timeout: std::time::Duration,
    stop: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = crate::server::ConnectionSlots::new(MAX_CONNECTIONS, "admin");
    tokio::pin!(stop);
    loop {
        let (slot, (stream, _)) = tokio::select! {
            accepted = slots.accept(&listener) => accepted,
            () = &mut stop => break,
        };
        let admin = admin.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let admin = admin.clone();
            async move {
                let (parts, body) = request.into_parts();
                // Nobody gets to make us buffer a body before the token checks
                // out, and only the /v1 API takes one.
                let api = parts.uri.path().starts_with("/v1/");
                if api && !admin.authorized(&parts) {
                    return Ok(unauthorized());
                }
                let body = if parts.method != Method::POST || !api {
                    Ok(Ok(Bytes::new()))
                } else {
                    let read = Limited::new(body, MAX_REQUEST_BODY).collect();
                    tokio::time::timeout(header_timeout, read)
                        .await
                        .map(|read| read.map(|body| body.to_bytes()))
                };
                let body = match body {
                    Ok(Ok(body)) => body,
                    Ok(Err(_)) => {
                        return Ok::<_, Infallible>(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            "the request body is over 1 MiB or could not be read",
                        ));
                    }
                    Err(_) => {
                        return Ok(error(
                            StatusCode::REQUEST_TIMEOUT,
                            "body_timeout",
                            "the request body did not arrive in time",
                        ));
                    }
                };
                // A backfill waits on Parallel's API: it runs here, async.
                if parts.method == Method::POST && parts.uri.path() == "/v1/backfill" {
                    return Ok(backfill(&admin.backfiller, &body).await);
                }
                // Listing and replays walk the journal: keep them off the
                // async workers, which also serve webhooks.
                let response = tokio::task::spawn_blocking(move || admin.handle(&parts, &body))
                    .await
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"));
                Ok(response)
            }
        });
        // A head that does not arrive in time closes the connection.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    // Scrapes in progress finish; nothing here is slow.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is() {
        assert_eq!(bearer_token("Bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("bearer s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("BEARER  s3cret"), Some("s3cret"));
        assert_eq!(bearer_token("Bearer S3CRET"), Some("S3CRET"), "the token itself is compared as is");
        assert_eq!(bearer_token("Basic s3cret"), None);
        assert_eq!(bearer_token("Bearers3cret"), None);
        assert_eq!(bearer_token("s3cret"), None);
    }
}
