//! The inbound service: `POST /hooks/{source}` → rate limit → bounded body
//! read → signature check → journal → `200 {"id", "duplicate"}`.
//!
//! Every answer is decided here; the connection layer (`server`) only moves
//! bytes. Each request ends in exactly one structured log line.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};

use crate::config::{Config, RateLimit, SourceConfig};
use crate::delivery::Inboxes;
use crate::envelope::Envelope;
use crate::journal::{Appended, Journal, JournalError, NewDelivery};
use crate::live::Live;
use crate::metrics::{IngestOutcome, Metrics};
use crate::routing::{Route, Router};
use crate::signature::{self, SignedHeaders, Verifier, VerifyError};

pub const HOOKS_PREFIX: &str = "/hooks/";

/// Retry-After for a full journal: space comes back slowly, if at all.
const RETRY_AFTER_FULL_SECS: u64 = 60;
/// Retry-After for a failing journal write: often transient.
const RETRY_AFTER_UNAVAILABLE_SECS: u64 = 5;
/// Retry-After when more appends are under way than the journal keeps up with.
const RETRY_AFTER_BUSY_SECS: u64 = 1;
/// Appends under way at most, per `server.max_connections`: twice what the
/// connections can carry at once (8 requests each), so appends that outlive
/// their request (a sender that gave up waiting) cannot pile up for good
/// behind a slow disk, each holding its body.
const APPENDS_PER_CONNECTION: usize = 16;

/// What happened to one request; becomes the status, the error body and the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted { id: String, duplicate: bool },
    NotFound,
    UnknownSource,
    MethodNotAllowed,
    RateLimited { retry_after_secs: u64 },
    BodyTooLarge { limit: u64 },
    BodyTimeout,
    BodyUnreadable,
    Rejected(VerifyError),
    JournalFull,
    JournalUnavailable,
    JournalBusy,
}

impl Outcome {
    pub fn status(&self) -> StatusCode {
        match self {
            Outcome::Accepted { .. } => StatusCode::OK,
            Outcome::NotFound | Outcome::UnknownSource => StatusCode::NOT_FOUND,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Outcome::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::BodyUnreadable => StatusCode::BAD_REQUEST,
            Outcome::Rejected(err) if err.is_malformed() => StatusCode::BAD_REQUEST,
            Outcome::Rejected(_) => StatusCode::UNAUTHORIZED,
            Outcome::JournalFull | Outcome::JournalUnavailable | Outcome::JournalBusy => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// Stable machine-readable code: the `error` field and the log's `outcome`.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Accepted { duplicate: false, .. } => "accepted",
            Outcome::Accepted { duplicate: true, .. } => "duplicate",
            Outcome::NotFound => "not_found",
            Outcome::UnknownSource => "unknown_source",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::RateLimited { .. } => "rate_limited",
            Outcome::BodyTooLarge { .. } => "body_too_large",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::BodyUnreadable => "body_unreadable",
            Outcome::Rejected(err) => err.code(),
            Outcome::JournalFull => "journal_full",
            Outcome::JournalUnavailable => "journal_unavailable",
            Outcome::JournalBusy => "journal_busy",
        }
    }

    fn message(&self) -> String {
        match self {
            Outcome::Accepted { .. } => String::new(),
            Outcome::NotFound => "webhooks are accepted at POST /hooks/{source}".into(),
            Outcome::UnknownSource => "no source with this name is configured".into(),
            Outcome::MethodNotAllowed => "use POST".into(),
            Outcome::RateLimited { .. } => "the source's rate limit is exceeded; retry later".into(),
            Outcome::BodyTooLarge { limit } => format!("the body is larger than {limit} bytes"),
            Outcome::BodyTimeout => "the body did not arrive in time".into(),
            Outcome::BodyUnreadable => "the body could not be read".into(),
            Outcome::Rejected(err) => err.to_string(),
            Outcome::JournalFull => "the journal is over its size limit; retry later".into(),
            Outcome::JournalUnavailable => "the journal cannot take writes right now; retry later".into(),
            Outcome::JournalBusy => {
                "the journal is behind: too many deliveries are being written; retry shortly".into()
            }
        }
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Outcome::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            Outcome::JournalFull => Some(RETRY_AFTER_FULL_SECS),
            Outcome::JournalUnavailable => Some(RETRY_AFTER_UNAVAILABLE_SECS),
            Outcome::JournalBusy => Some(RETRY_AFTER_BUSY_SECS),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let status = self.status();
        let body = match &self {
            Outcome::Accepted { id, duplicate } => serde_json::json!({ "id": id, "duplicate": duplicate }),
            other => serde_json::json!({ "error": other.code(), "message": other.message() }),
        };
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

/// One configured source at run time.
struct Source {
    name: String,
    verifier: Verifier,
    rate: Option<RateLimit>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
}

impl Source {
    /// `previous` is the same source before a reload: an unchanged rate
    /// limit keeps its bucket, so a reload never hands out a fresh burst.
    fn new(config: &SourceConfig, previous: Option<&Source>) -> Self {
        let limiter = match previous {
            Some(previous) if previous.rate == config.rate_limit => previous.limiter.clone(),
            _ => config.rate_limit.map(|rate| Arc::new(limiter(rate))),
        };
        Source {
            name: config.name.clone(),
            verifier: Verifier::new(config.keys.clone(), config.tolerance),
            rate: config.rate_limit,
            limiter,
        }
    }

    /// `Err(seconds to wait)` when over the rate limit.
    fn admit(&self) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            // Rounded up, and never 0: the cell may come free between the
            // check and this reading of the clock.
            (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
        })
    }
}

fn limiter(rate: RateLimit) -> DefaultDirectRateLimiter {
    RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst))
}

/// What the config decides about inbound requests; swapped whole by a reload.
struct Rules {
    sources: HashMap<String, Source>,
    router: Router,
    max_body: u64,
    body_timeout: Duration,
}

impl Rules {
    fn new(config: &Config, previous: Option<&Rules>) -> Self {
        Rules {
            sources: config
                .sources
                .values()
                .map(|s| (s.name.clone(), Source::new(s, previous.and_then(|p| p.sources.get(&s.name)))))
                .collect(),
            router: Router::new(config.targets.values().map(Route::from_target)),
            max_body: config.server.max_body,
            body_timeout: config.server.body_timeout,
        }
    }
}

/// The inbound webhook service.
pub struct Ingress {
    rules: Live<Rules>,
    lanes: Inboxes,
    metrics: Arc<Metrics>,
    journal: Arc<Journal>,
    /// Appends under way, including those whose request was dropped.
    appending: Arc<AtomicUsize>,
    /// At most this many (see [`APPENDS_PER_CONNECTION`]).
    max_appending: usize,
}

/// Counts one append under way for as long as it lives.
struct Appending(Arc<AtomicUsize>);

impl Appending {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Appending(count.clone())
    }

    /// [`Appending::enter`] if fewer than `max` are under way, in one step
    /// (concurrent requests cannot all pass the check and overshoot).
    fn within(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Appending(count.clone()))
    }
}

impl Drop for Appending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Returns once `count` is zero, or after `limit`; says which.
async fn until_none_left(count: &AtomicUsize, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if count.load(Ordering::Acquire) == 0 {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Ingress {
    pub fn new(config: &Config, journal: Arc<Journal>, lanes: Inboxes, metrics: Arc<Metrics>) -> Self {
        Ingress {
            rules: Live::new(Rules::new(config, None)),
            lanes,
            metrics,
            journal,
            appending: Arc::new(AtomicUsize::new(0)),
            max_appending: config.server.max_connections.saturating_mul(APPENDS_PER_CONNECTION),
        }
    }

    /// Waits, up to `limit`, for the appends still under way (those of
    /// requests dropped at the end of the grace period among them): at a
    /// stop, before the journal's last indexing and flush.
    pub async fn appends_finished(&self, limit: Duration) {
        if !until_none_left(&self.appending, limit).await {
            // Still queued at the writer: journaled after the stop's last
            // indexing, their jobs are found from the fresh-job mark at the
            // next start.
            tracing::warn!(
                appending = self.appending.load(Ordering::Acquire),
                "appends still under way at the stop; their jobs are picked up at the next start"
            );
        }
    }

    /// Takes the sources (secrets, tolerances, rate limits), routes and body
    /// limits of `config`; requests already being handled finish on the old ones.
    pub fn reload(&self, config: &Config) {
        let previous = self.rules.get();
        self.rules.set(Rules::new(config, Some(&previous)));
    }

    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let source =
            source_from_path(request.uri().path()).map(truncate_for_log).unwrap_or_default().to_owned();
        let webhook_id = request
            .headers()
            .get(signature::HEADER_ID)
            .and_then(|v| v.to_str().ok())
            .map(truncate_for_log)
            .unwrap_or_default()
            .to_owned();
        let outcome = self.accept(request).await;
        let elapsed = started.elapsed();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let counted = match &outcome {
            Outcome::Accepted { duplicate: false, .. } => IngestOutcome::Accepted,
            Outcome::Accepted { duplicate: true, .. } => IngestOutcome::Duplicate,
            rejected => IngestOutcome::Rejected(rejected.code()),
        };
        self.metrics.ingest(&source, counted, elapsed);
        let status = outcome.status().as_u16();
        let delivery_id = match &outcome {
            Outcome::Accepted { id, .. } => id.as_str(),
            _ => "",
        };
        match outcome {
            Outcome::JournalUnavailable | Outcome::JournalFull | Outcome::JournalBusy => tracing::error!(
                source,
                webhook_id,
                status,
                outcome = outcome.code(),
                latency_ms,
                "delivery refused"
            ),
            Outcome::Accepted { .. } => tracing::info!(
                source,
                webhook_id,
                status,
                outcome = outcome.code(),
                delivery_id,
                latency_ms,
                "delivery accepted"
            ),
            _ => tracing::info!(
                source,
                webhook_id,
                status,
                outcome = outcome.code(),
                latency_ms,
                "delivery rejected"
            ),
        }
        outcome.into_response()
    }

    /// Journals and fans out a delivery hookrelay made itself (a backfilled
    /// detection, from Parallel's API with the source's key): routed like a
    /// webhook of `source`, with no signature of Parallel's to keep.
    pub async fn inject(
        &self,
        source: &str,
        webhook_id: String,
        body: Vec<u8>,
    ) -> Result<Appended, JournalError> {
        let rules = self.rules.get();
        let envelope = Envelope::from_body(&body);
        let targets = rules.router.targets_for(source, envelope.event_type.as_deref(), &body);
        let now_ms = crate::time::now_ms();
        let delivery = NewDelivery {
            received_at_ms: now_ms,
            source: source.to_owned(),
            webhook_id,
            webhook_timestamp: (now_ms / 1000).to_string(),
            webhook_signature: String::new(),
            content_type: Some("application/json".to_owned()),
            event_type: envelope.event_type,
            monitor_id: envelope.monitor_id,
            event_group: envelope.event_group_id,
            body,
        };
        // Not a webhook: not counted as one, whoever waits.
        self.journal_and_fan_out(delivery, targets, None).await
    }

    /// Journals `delivery` and hands its fresh jobs to their lanes, as one
    /// step that runs to the end even if the request that asked is dropped
    /// (a sender timing out during a slow flush, an h2 reset): the writer
    /// journals a queued append regardless, and a job journaled but never
    /// handed to its lane would wait, unseen, for the next start — a retry
    /// of the webhook is answered as a duplicate.
    ///
    /// A delivery whose caller is gone by then is logged here, and a webhook
    /// (one that comes with its `slot`) counted, as `handle` would have.
    async fn journal_and_fan_out(
        &self,
        delivery: NewDelivery,
        targets: Vec<String>,
        slot: Option<Appending>,
    ) -> Result<Appended, JournalError> {
        let (journal, lanes, metrics) = (self.journal.clone(), self.lanes.clone(), self.metrics.clone());
        let webhook = slot.is_some();
        let appending = slot.unwrap_or_else(|| Appending::enter(&self.appending));
        let started = Instant::now();
        let (source, webhook_id) = (delivery.source.clone(), delivery.webhook_id.clone());
        let (reply, answer) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _appending = appending;
            let appended = journal.append(delivery, &targets).await;
            if let Ok(appended) = &appended
                && !appended.duplicate
            {
                for target in &targets {
                    lanes.deliver(target, appended.id);
                }
            }
            // Nobody to answer: what `handle` would have counted and logged.
            if let Err(Ok(appended)) = reply.send(appended)
                && !appended.duplicate
            {
                if webhook {
                    metrics.ingest(&source, IngestOutcome::Accepted, started.elapsed());
                }
                tracing::info!(
                    source,
                    webhook_id = truncate_for_log(&webhook_id),
                    delivery_id = %appended.id,
                    "delivery journaled after its caller went away"
                );
            }
        });
        answer.await.unwrap_or_else(|_| Err(JournalError::Storage("the append did not finish".to_owned())))
    }

    async fn accept<B>(&self, request: Request<B>) -> Outcome
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(name) = source_from_path(request.uri().path()) else {
            return Outcome::NotFound;
        };
        let rules = self.rules.get();
        let Some(source) = rules.sources.get(name) else {
            return Outcome::UnknownSource;
        };
        if request.method() != Method::POST {
            return Outcome::MethodNotAllowed;
        }
        let (parts, body) = request.into_parts();
        let headers = &parts.headers;
        // Header syntax first: a request that cannot verify is refused before
        // its body is read.
        let (id, timestamp, signature) = match (
            header(headers, signature::HEADER_ID),
            header(headers, signature::HEADER_TIMESTAMP),
            header(headers, signature::HEADER_SIGNATURE),
        ) {
            (Ok(id), Ok(ts), Ok(sig)) => (id, ts, sig),
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => return Outcome::Rejected(err),
        };
        let signed = match SignedHeaders::parse(id, timestamp, signature) {
            Ok(signed) => signed,
            Err(err) => return Outcome::Rejected(err),
        };
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > rules.max_body) {
            return Outcome::BodyTooLarge { limit: rules.max_body };
        }
        let body = match read_body(body, rules.max_body, rules.body_timeout).await {
            Ok(body) => body,
            Err(outcome) => return outcome,
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        if let Err(err) = source.verifier.verify(&signed, &body, now.as_secs() as i64) {
            return Outcome::Rejected(err);
        }
        // Only verified requests spend the source's budget: anyone who knows
        // the URL could otherwise use it up and have the sender's own
        // deliveries refused (a sender that gives up after its retries
        // would lose them).
        // A slot first: a refusal for the journal's sake spends no budget.
        let Some(slot) = Appending::within(&self.appending, self.max_appending) else {
            return Outcome::JournalBusy;
        };
        if let Err(retry_after_secs) = source.admit() {
            return Outcome::RateLimited { retry_after_secs };
        }
        let envelope = Envelope::from_body(&body);
        let targets = rules.router.targets_for(&source.name, envelope.event_type.as_deref(), &body);
        let delivery = NewDelivery {
            received_at_ms: now.as_millis() as u64,
            source: source.name.clone(),
            webhook_id: signed.id.to_owned(),
            webhook_timestamp: signed.timestamp.to_owned(),
            webhook_signature: signed.signature.to_owned(),
            content_type: headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
            event_type: envelope.event_type,
            monitor_id: envelope.monitor_id,
            event_group: envelope.event_group_id,
            body,
        };
        match self.journal_and_fan_out(delivery, targets, Some(slot)).await {
            Ok(appended) => Outcome::Accepted { id: appended.id.to_string(), duplicate: appended.duplicate },
            Err(JournalError::Full { size, limit }) => {
                tracing::error!(size, limit, "journal is over journal.max_disk; refusing deliveries");
                Outcome::JournalFull
            }
            Err(err) => {
                tracing::error!(error = %err, "journal write failed");
                Outcome::JournalUnavailable
            }
        }
    }
}

/// Reads at most `max_body` bytes within `body_timeout`.
///
/// Each frame is copied out and let go at once. A frame shares the read
/// buffer it was cut from (hyper reads into buffers of 8 KiB and more), so
/// holding every frame until the end, as collecting them does, would let a
/// body trickled a byte per packet, or sent in 1-byte chunks, pin a whole
/// buffer per byte: far more memory than `max_body`.
async fn read_body<B>(body: B, max_body: u64, body_timeout: Duration) -> Result<Vec<u8>, Outcome>
where
    B: Body,
{
    use bytes::{Buf, BufMut};
    /// Reserved up front at most, whatever the declared length: a client
    /// that declares a large body and sends little gets no more than this.
    const FIRST_RESERVE: u64 = 64 << 10;
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let reserve = body.size_hint().lower().min(max_body).min(FIRST_RESERVE);
    let read = async move {
        let mut body = std::pin::pin!(body);
        let mut bytes = Vec::with_capacity(usize::try_from(reserve).unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| Outcome::BodyUnreadable)?.into_data() else { continue };
            if data.remaining() > limit - bytes.len() {
                return Err(Outcome::BodyTooLarge { limit: max_body });
            }
            // Grown by doubling, but never past the limit: a body held while
            // it is written takes at most `max_body`.
            let needed = bytes.len() + data.remaining();
            if needed > bytes.capacity() {
                let grown = bytes.capacity().saturating_mul(2).max(needed).min(limit);
                bytes.reserve_exact(grown - bytes.len());
            }
            bytes.put(data);
        }
        Ok(bytes)
    };
    tokio::time::timeout(body_timeout, read).await.unwrap_or(Err(Outcome::BodyTimeout))
}

/// `/hooks/{source}` → `source`; anything else (including nested paths) → None.
fn source_from_path(path: &str) -> Option<&str> {
    let name = path.strip_prefix(HOOKS_PREFIX)?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// `Ok(None)` when absent; an error when present but not visible ASCII.
fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, VerifyError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value.to_str().map(Some).map_err(|_| VerifyError::MalformedHeader(name)),
    }
}

/// Request-controlled strings are cut short before they reach a log line.
fn truncate_for_log(text: &str) -> &str {
    const MAX: usize = 128;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_past_the_cap_are_refused_with_a_retry_after() {
        let count = Arc::new(AtomicUsize::new(0));
        let under_way: Vec<Appending> = (0..3).map(|_| Appending::enter(&count)).collect();
        let fourth = Appending::within(&count, 4).expect("one more fits");
        assert!(Appending::within(&count, 4).is_none(), "the cap counts appends whose request is gone too");
        assert_eq!(count.load(Ordering::Acquire), 4, "a refusal takes no slot");
        drop((under_way, fourth));
        assert!(Appending::within(&count, 1).is_some());
        assert_eq!(count.load(Ordering::Acquire), 0, "a slot is given back when dropped");
        let busy = Outcome::JournalBusy.into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_stop_waits_for_appends_under_way_up_to_its_limit() {
        let count = Arc::new(AtomicUsize::new(0));
        assert!(until_none_left(&count, Duration::ZERO).await, "none under way");
        let appending = Appending::enter(&count);
        let started = tokio::time::Instant::now();
        assert!(!until_none_left(&count, Duration::from_millis(50)).await);
        assert!(started.elapsed() >= Duration::from_millis(50), "waited its limit");
        let waiting = tokio::spawn({
            let count = count.clone();
            async move { until_none_left(&count, Duration::from_secs(60)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "still waiting while the append is under way");
        drop(appending);
        assert!(waiting.await.unwrap(), "done once the append finished");
        assert_eq!(count.load(Ordering::Acquire), 0);
    }

    /// One byte of a body, standing in for a frame cut from a read buffer:
    /// while it lives, so does its `buffer` token.
    struct Piece {
        byte: Option<u8>,
        _buffer: Arc<()>,
    }

    impl bytes::Buf for Piece {
        fn remaining(&self) -> usize {
            usize::from(self.byte.is_some())
        }
        fn chunk(&self) -> &[u8] {
            self.byte.as_slice()
        }
        fn advance(&mut self, n: usize) {
            if n > 0 {
                self.byte = None;
            }
        }
    }

    /// A body sent a byte per frame, noting how many frames it handed out
    /// are still held by the reader each time it is asked for the next.
    struct Trickle {
        left: usize,
        handed_out: Vec<std::sync::Weak<()>>,
        most_held: usize,
    }

    impl Body for Trickle {
        type Data = Piece;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Piece>, Self::Error>>> {
            let held = self.handed_out.iter().filter(|buffer| buffer.strong_count() > 0).count();
            self.most_held = self.most_held.max(held);
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            let buffer = Arc::new(());
            self.handed_out.push(Arc::downgrade(&buffer));
            let piece = Piece { byte: Some(b'a' + (self.left % 26) as u8), _buffer: buffer };
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(piece))))
        }
    }

    #[tokio::test]
    async fn a_trickled_body_holds_no_frame_past_its_copy() {
        let mut trickle = Trickle { left: 1_000, handed_out: Vec::new(), most_held: 0 };
        let body = read_body(&mut trickle, 1_000, Duration::from_secs(10)).await.ok().unwrap();
        assert_eq!(body.len(), 1_000);
        assert!(body.capacity() <= 1_000, "grown past the limit: {}", body.capacity());
        assert!(trickle.most_held <= 1, "frames held while reading: {}", trickle.most_held);
        // One byte over the limit: refused, whichever frame it comes in.
        let mut over = Trickle { left: 1_001, handed_out: Vec::new(), most_held: 0 };
        let refused = read_body(&mut over, 1_000, Duration::from_secs(10)).await;
        assert!(matches!(refused, Err(Outcome::BodyTooLarge { limit: 1_000 })));
    }

    #[test]
    fn paths() {
        assert_eq!(source_from_path("/hooks/parallel"), Some("parallel"));
        assert_eq!(source_from_path("/hooks/"), None);
        assert_eq!(source_from_path("/hooks/a/b"), None);
        assert_eq!(source_from_path("/hooks/../admin"), None);
        assert_eq!(source_from_path("/other"), None);
    }

    #[test]
    fn every_error_answer_is_json_with_a_code() {
        let outcomes = [
            Outcome::NotFound,
            Outcome::UnknownSource,
            Outcome::MethodNotAllowed,
            Outcome::RateLimited { retry_after_secs: 2 },
            Outcome::BodyTooLarge { limit: 10 },
            Outcome::BodyTimeout,
            Outcome::BodyUnreadable,
            Outcome::Rejected(VerifyError::TimestampTooOld),
            Outcome::Rejected(VerifyError::MissingHeader("webhook-id")),
            Outcome::JournalFull,
            Outcome::JournalUnavailable,
        ];
        for outcome in outcomes {
            let response = outcome.into_response();
            assert!(response.status().is_client_error() || response.status().is_server_error());
            assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        }
        assert_eq!(Outcome::Rejected(VerifyError::MissingHeader("x")).status(), StatusCode::BAD_REQUEST);
        assert_eq!(Outcome::Rejected(VerifyError::NoMatchingSignature).status(), StatusCode::UNAUTHORIZED);
        let limited = Outcome::RateLimited { retry_after_secs: 2 }.into_response();
        assert_eq!(limited.headers()[RETRY_AFTER], "2");
        assert!(Outcome::JournalFull.into_response().headers().contains_key(RETRY_AFTER));
    }

    #[test]
    fn log_fields_are_truncated_on_char_boundaries() {
        let long = "é".repeat(100);
        let cut = truncate_for_log(&long);
        assert!(cut.len() <= 128 && long.starts_with(cut));
    }
}
