//! Parallel's API, called on behalf of a source (`[sources.NAME.parallel]`):
//! listing a monitor's events to backfill the detections whose webhooks never
//! arrived, and fetching the content thin events leave out (enrichment).
//!
//! - Pure: reading a page of events ([`EventsPage`]) and a monitor's
//!   metadata ([`monitor_metadata`]), the identity and body of a backfilled
//!   delivery ([`backfill_webhook_id`], [`detected_event_body`]).
//! - I/O: [`ParallelApi`], a rate-limited client that retries 429s, 5xx
//!   and network errors with backoff. The API key goes in `x-api-key` and
//!   nowhere else: not in errors, logs or answers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode, Uri};

use crate::config::{Config, ParallelConfig};
use crate::delivery::outbound::{HttpClient, http_client};
use crate::envelope::MONITOR_EVENT_DETECTED;
use crate::live::Live;

/// Tries per API call (the first and up to four retries).
const MAX_TRIES: u32 = 5;
/// Backoff before the second try; doubles, capped at [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest `Retry-After` honoured: past it, the pause is this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Events per listing page (the API's maximum).
const PAGE_SIZE: u32 = 100;
/// Pages walked at most in one backfill (100,000 events).
const MAX_PAGES: usize = 1_000;
/// An API answer larger than this is refused.
const MAX_ANSWER: usize = 16 << 20;

/// Prefix of the `webhook-id` of a backfilled delivery.
pub const BACKFILL_ID_PREFIX: &str = "whbackfill_";

/// Why an API call failed (after its retries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the Parallel API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the Parallel API could not be reached: {0}")]
    Unreachable(String),
    #[error("the Parallel API answered something unreadable: {0}")]
    Unreadable(String),
}

impl ApiError {
    /// The same error, saying which call it came from.
    fn context(self, call: &str) -> Self {
        match self {
            ApiError::Status { status, message } => {
                ApiError::Status { status, message: format!("{call}: {message}") }
            }
            ApiError::Unreachable(text) => ApiError::Unreachable(format!("{call}: {text}")),
            ApiError::Unreadable(text) => ApiError::Unreadable(format!("{call}: {text}")),
        }
    }
}

/// What [`ParallelApi::monitor_metadata`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataLookup {
    /// The monitor, with its metadata if it has any.
    Found(Option<serde_json::Value>),
    /// No monitor object at either path (the API does not serve them, or
    /// the monitor was deleted since its events were listed).
    NotServed,
}

/// A detection (event group) seen in a monitor's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventGroup {
    pub id: String,
    /// The earliest `event_date` among its events (Unix ms), if any had one.
    pub first_event_ms: Option<u64>,
}

/// One page of `GET /v1/monitors/{id}/events`.
#[derive(Debug, Default, PartialEq)]
pub struct EventsPage {
    pub events: Vec<serde_json::Value>,
    pub next_cursor: Option<String>,
}

impl EventsPage {
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let mut value: serde_json::Value =
            serde_json::from_slice(body).map_err(|err| ApiError::Unreadable(err.to_string()))?;
        let events = match value.get_mut("events").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(events)) => events,
            _ => return Err(ApiError::Unreadable("no \"events\" list".to_owned())),
        };
        let next_cursor = value
            .get("next_cursor")
            .and_then(|cursor| cursor.as_str())
            .filter(|cursor| !cursor.is_empty())
            .map(str::to_owned);
        Ok(EventsPage { events, next_cursor })
    }

    /// Each event's group and date; events without a group (completions)
    /// are left out. The group field is `event_group_id` or, in some schema
    /// versions, `monitor_group_id`.
    pub fn dated_groups(&self) -> Vec<(String, Option<EventDate>)> {
        self.events
            .iter()
            .filter_map(|event| {
                let group = event
                    .get("event_group_id")
                    .or_else(|| event.get("monitor_group_id"))
                    .and_then(|group| group.as_str())
                    .filter(|group| !group.is_empty() && group.len() <= 256)?;
                // It becomes the `webhook-id` header of every attempt.
                if !group.bytes().all(|b| b.is_ascii_graphic()) {
                    tracing::warn!(event_group_id = ?group, "skipping an event group whose id cannot be a webhook-id");
                    return None;
                }
                let date = event.get("event_date").and_then(|date| date.as_str()).and_then(parse_event_date);
                Some((group.to_owned(), date))
            })
            .collect()
    }
}

/// The time an `event_date` stands for: an instant, or for the date-only
/// and partial forms the whole day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDate {
    /// Unix ms at its start: the time a backfilled detection is given.
    pub start_ms: u64,
    /// The last Unix ms it may mean: what is compared with `since`, so that
    /// a month-only date is not taken for the first of the month.
    pub end_ms: u64,
}

/// An `event_date`: RFC 3339, or the date-only (`2026-04-07`) or partial
/// (`2026-04`) ISO 8601 forms Parallel also uses.
pub fn parse_event_date(text: &str) -> Option<EventDate> {
    if let Some(at) = crate::time::parse_rfc3339(text) {
        return Some(EventDate { start_ms: at, end_ms: at });
    }
    let start_of = |day: &str| crate::time::parse_rfc3339(&format!("{day}T00:00:00Z"));
    let (start, end) = match text.len() {
        10 => {
            let start = start_of(text)?;
            (start, start + DAY_MS)
        }
        7 => {
            let start = start_of(&format!("{text}-01"))?;
            let (year, month) = text.split_once('-')?;
            let days = crate::time::days_in_month(year.parse().ok()?, month.parse().ok()?);
            (start, start + days as u64 * DAY_MS)
        }
        _ => return None,
    };
    Some(EventDate { start_ms: start, end_ms: end - 1 })
}

const DAY_MS: u64 = 86_400_000;

/// `since` as far back as the start of its day: dates may be days only.
/// What a backfill from `since_ms` really looks at.
pub fn since_day(since_ms: u64) -> u64 {
    since_ms - since_ms % DAY_MS
}

/// Folds events into their groups, oldest group first, keeping the groups
/// with an event on or after `since_ms` (compared by day, as dates may be
/// days only). Groups with no dated event are left out: their age is
/// unknown, and injecting a monitor's whole history is never wanted.
pub fn event_groups(
    events: impl IntoIterator<Item = (String, Option<EventDate>)>,
    since_ms: u64,
) -> Vec<EventGroup> {
    let mut spans: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (group, date) in events {
        let Some(date) = date else { continue };
        let span = spans.entry(group).or_insert((date.start_ms, date.end_ms));
        *span = (span.0.min(date.start_ms), span.1.max(date.end_ms));
    }
    let since = since_day(since_ms);
    let mut groups: Vec<EventGroup> = spans
        .into_iter()
        .filter(|(_, (_, last))| *last >= since)
        .map(|(id, (first, _))| EventGroup { id, first_event_ms: Some(first) })
        .collect();
    groups.sort_by(|a, b| a.first_event_ms.cmp(&b.first_event_ms).then_with(|| a.id.cmp(&b.id)));
    groups
}

/// The `webhook-id` of a backfilled detection: derived from its group, so
/// backfilling twice injects it once.
pub fn backfill_webhook_id(event_group: &str) -> String {
    format!("{BACKFILL_ID_PREFIX}{event_group}")
}

/// The body of a backfilled detection: the thin payload Parallel's webhook
/// would have carried, with the monitor's `metadata` as Parallel attaches it
/// (read from the monitor now, so targets that `match` on it get the
/// detection), or without when the monitor has none.
pub fn detected_event_body(
    monitor_id: &str,
    group: &EventGroup,
    metadata: Option<&serde_json::Value>,
    now_ms: u64,
) -> Vec<u8> {
    let at = group.first_event_ms.unwrap_or(now_ms);
    let mut data = serde_json::json!({"monitor_id": monitor_id, "event": {"event_group_id": group.id}});
    if let Some(metadata) = metadata {
        data["metadata"] = metadata.clone();
    }
    serde_json::json!({
        "type": MONITOR_EVENT_DETECTED,
        "timestamp": crate::time::rfc3339(at / 1000),
        "data": data,
    })
    .to_string()
    .into_bytes()
}

/// The `metadata` of a monitor object (`GET /v1/monitors/{id}`): `None`
/// when it has none (absent, null or empty).
pub fn monitor_metadata(body: &[u8]) -> Result<Option<serde_json::Value>, ApiError> {
    let monitor: serde_json::Value =
        serde_json::from_slice(body).map_err(|err| ApiError::Unreadable(format!("monitor: {err}")))?;
    Ok(match &monitor["metadata"] {
        serde_json::Value::Object(fields) if !fields.is_empty() => Some(monitor["metadata"].clone()),
        _ => None,
    })
}

/// What enriching a delivery takes, read from its verified body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrichmentSource {
    /// A detection: the events of its group, attached as `data.events`.
    EventGroup { monitor_id: String, event_group_id: String },
    /// A completed task run: its result, attached as `data.result`.
    TaskResult { run_id: String },
}

impl EnrichmentSource {
    /// `None` for events that carry everything already (or are not Parallel's).
    pub fn for_body(body: &[u8]) -> Option<Self> {
        let envelope = crate::envelope::Envelope::from_body(body);
        match envelope.event_type.as_deref()? {
            MONITOR_EVENT_DETECTED => Some(EnrichmentSource::EventGroup {
                monitor_id: envelope.monitor_id?,
                event_group_id: envelope.event_group_id?,
            }),
            "task_run.status" => {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                let data = value.get("data")?;
                if data.get("status")?.as_str()? != "completed" {
                    return None;
                }
                let run_id = data.get("run_id")?.as_str().filter(|id| !id.is_empty() && id.len() <= 256)?;
                Some(EnrichmentSource::TaskResult { run_id: run_id.to_owned() })
            }
            _ => None,
        }
    }

    /// The field of `data` the content goes into.
    pub fn field(&self) -> &'static str {
        match self {
            EnrichmentSource::EventGroup { .. } => "events",
            EnrichmentSource::TaskResult { .. } => "result",
        }
    }
}

/// The original payload with `content` attached under `data.<field>`
/// (every other byte's meaning kept; the JSON is re-serialized). `None` if
/// the body is not a JSON object with an object `data`.
pub fn enriched_body(
    original: &[u8],
    source: &EnrichmentSource,
    content: &serde_json::Value,
) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(original).ok()?;
    value.get_mut("data")?.as_object_mut()?.insert(source.field().to_owned(), content.clone());
    serde_json::to_vec(&value).ok()
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved kept).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One API client per source with `[sources.NAME.parallel]`, shared by
/// backfill and enrichment so a source's `rate_limit` is one budget; a reload
/// swaps the set whole.
pub struct ParallelApis(Live<BTreeMap<String, Arc<ParallelApi>>>);

/// The clients a reload replaced.
pub(crate) struct ApisBefore(Arc<BTreeMap<String, Arc<ParallelApi>>>);

impl ParallelApis {
    pub fn new(config: &Config) -> Self {
        ParallelApis(Live::new(Self::build(config, &BTreeMap::new())))
    }

    /// Keeps each source's rate-limit bucket and connections when its
    /// `rate_limit` did not change: a reload must not hand out a fresh burst
    /// (a backfill under way keeps the old client, and would otherwise
    /// share the API with a second full budget).
    ///
    /// Returns the clients it replaced, for [`ParallelApis::put_back`].
    pub(crate) fn reload(&self, config: &Config) -> ApisBefore {
        let previous = self.0.get();
        self.0.set(Self::build(config, &previous));
        ApisBefore(previous)
    }

    /// Undoes a [`ParallelApis::reload`] whose reload failed later on.
    pub(crate) fn put_back(&self, before: ApisBefore) {
        self.0.put_back(before.0);
    }

    pub fn get(&self, source: &str) -> Option<Arc<ParallelApi>> {
        self.0.get().get(source).cloned()
    }

    fn build(
        config: &Config,
        previous: &BTreeMap<String, Arc<ParallelApi>>,
    ) -> BTreeMap<String, Arc<ParallelApi>> {
        config
            .sources
            .values()
            .filter_map(|source| {
                let api = ParallelApi::keeping(
                    source.parallel.as_ref()?,
                    previous.get(&source.name).map(|api| &**api),
                );
                Some((source.name.clone(), Arc::new(api)))
            })
            .collect()
    }
}

/// A source's client for Parallel's API.
pub struct ParallelApi {
    client: HttpClient,
    config: ParallelConfig,
    /// `base_url` without a trailing slash (a bare authority displays one).
    base: String,
    pace: Arc<Pace>,
}

/// How fast a source's calls may go: its rate bucket, and the pause the API
/// last asked for (`Retry-After` on a 429 or 5xx). Shared by every call of
/// the source, so that while the API asks to be left alone none of them
/// goes out, not only the one that was told; kept across a reload that
/// keeps the limit.
struct Pace {
    limiter: DefaultDirectRateLimiter,
    /// [`monotonic_ms`] before which no call goes out.
    quiet_until_ms: std::sync::atomic::AtomicU64,
}

/// Milliseconds on a clock that never steps (unlike the wall clock, which
/// a correction can set back by hours, and a pause with it).
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
}

impl Pace {
    fn new(rate: crate::config::RateLimit) -> Pace {
        Pace {
            limiter: RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst)),
            quiet_until_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Waits out any pause the API asked for, then for a token.
    async fn ready(&self) {
        loop {
            let until = self.quiet_until_ms.load(std::sync::atomic::Ordering::Acquire);
            let now = monotonic_ms();
            if until <= now {
                break;
            }
            tokio::time::sleep(Duration::from_millis(until - now)).await;
        }
        self.limiter.until_ready().await;
    }

    /// The API asked for `pause` (at most [`MAX_RETRY_AFTER`]).
    fn asked_for(&self, pause: Duration) {
        let until = monotonic_ms() + pause.min(MAX_RETRY_AFTER).as_millis() as u64;
        self.quiet_until_ms.fetch_max(until, std::sync::atomic::Ordering::AcqRel);
    }
}

impl ParallelApi {
    pub fn new(config: &ParallelConfig) -> Self {
        Self::keeping(config, None)
    }

    /// A client for `config`, with `previous`'s connections, and its rate
    /// bucket when the limit is the same.
    fn keeping(config: &ParallelConfig, previous: Option<&ParallelApi>) -> Self {
        let pace = match previous {
            Some(previous) if previous.config.rate_limit == config.rate_limit => previous.pace.clone(),
            _ => Arc::new(Pace::new(config.rate_limit)),
        };
        ParallelApi {
            client: previous.map_or_else(|| http_client(&[], 4), |previous| previous.client.clone()),
            base: config.base_url.to_string().trim_end_matches('/').to_owned(),
            config: config.clone(),
            pace,
        }
    }

    /// Every event group of `monitor_id` with an event since `since_ms`,
    /// walking the listing's cursor to its end.
    pub async fn monitor_event_groups(
        &self,
        monitor_id: &str,
        since_ms: u64,
    ) -> Result<Vec<EventGroup>, ApiError> {
        let mut events = Vec::new();
        let path = format!("/v1/monitors/{}/events?limit={PAGE_SIZE}", encode(monitor_id));
        self.walk_pages(&path, usize::MAX, |page| {
            let dated = page.dated_groups();
            // The listing runs newest first: a page wholly older than
            // `since` means the rest is too.
            let all_older = !dated.is_empty()
                && dated.iter().all(|(_, date)| date.is_some_and(|date| date.end_ms < since_day(since_ms)));
            events.extend(dated);
            !all_older
        })
        .await?;
        Ok(event_groups(events, since_ms))
    }

    /// The monitor's `metadata`, which Parallel puts in every webhook of the
    /// monitor and the events listing leaves out. Read at `/v1/monitors/{id}`,
    /// or at `/v1alpha/` where the API still serves monitors there;
    /// [`MetadataLookup::NotServed`] when neither knows the monitor.
    pub async fn monitor_metadata(&self, monitor_id: &str) -> Result<MetadataLookup, ApiError> {
        for version in ["v1", "v1alpha"] {
            match self.get(&format!("/{version}/monitors/{}", encode(monitor_id))).await {
                Ok(body) => return monitor_metadata(&body).map(MetadataLookup::Found),
                // Not there (or a path retired): try the other version.
                Err(ApiError::Status { status: 404 | 405 | 410, .. }) => continue,
                Err(err) => return Err(err.context("reading the monitor")),
            }
        }
        Ok(MetadataLookup::NotServed)
    }

    /// The content `source` names: a detection's events (every page), or a
    /// task run's result. A detection's pages stop being read once they
    /// come to more than `max_bytes`: the caller refuses that much anyway.
    pub async fn enrichment(
        &self,
        source: &EnrichmentSource,
        max_bytes: usize,
    ) -> Result<serde_json::Value, ApiError> {
        match source {
            EnrichmentSource::TaskResult { run_id } => {
                let body = self.get(&format!("/v1/tasks/runs/{}/result", encode(run_id))).await?;
                serde_json::from_slice(&body).map_err(|err| ApiError::Unreadable(err.to_string()))
            }
            EnrichmentSource::EventGroup { monitor_id, event_group_id } => {
                let mut events = Vec::new();
                let mut seen_events = HashSet::new();
                let path = format!(
                    "/v1/monitors/{}/events?event_group_id={}",
                    encode(monitor_id),
                    encode(event_group_id)
                );
                self.walk_pages(&path, max_bytes, |page| {
                    // An event repeated across pages is attached once.
                    events.extend(page.events.into_iter().filter(|event| {
                        event.get("event_id").is_none_or(|id| seen_events.insert(id.to_string()))
                    }));
                    true
                })
                .await?;
                Ok(serde_json::Value::Array(events))
            }
        }
    }

    /// Reads `path` (a query string included) and the pages its cursor
    /// leads to, handing each to `visit`, which says whether to read on.
    /// Stops at the last page or a cursor seen before; fails past
    /// [`MAX_PAGES`], or once the pages come to more than `max_bytes`.
    async fn walk_pages(
        &self,
        path: &str,
        max_bytes: usize,
        mut visit: impl FnMut(EventsPage) -> bool,
    ) -> Result<(), ApiError> {
        let mut cursor: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        let mut read = 0usize;
        for _ in 0..MAX_PAGES {
            let url = match &cursor {
                None => path.to_owned(),
                Some(cursor) => format!("{path}&cursor={}", encode(cursor)),
            };
            let body = self.get(&url).await?;
            read = read.saturating_add(body.len());
            if read > max_bytes {
                return Err(ApiError::Unreadable(format!("the events come to more than {max_bytes} bytes")));
            }
            let mut page = EventsPage::parse(&body)?;
            let next = page.next_cursor.take();
            let read_on = visit(page);
            match next {
                Some(next) if read_on && seen_cursors.insert(next.clone()) => cursor = Some(next),
                _ => return Ok(()),
            }
        }
        Err(ApiError::Unreadable(format!("more than {MAX_PAGES} pages of events")))
    }

    /// `GET path`, within the rate limit, retried on 429, 5xx and network
    /// errors. A `Retry-After` pauses every call of the source (see [`Pace`]).
    async fn get(&self, path_and_query: &str) -> Result<Bytes, ApiError> {
        let uri: Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .map_err(|err| ApiError::Unreadable(format!("bad request URL: {err}")))?;
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 0;
        loop {
            tries += 1;
            self.pace.ready().await;
            let wait = match self.try_get(&uri).await {
                Ok(body) => return Ok(body),
                Err((retryable, retry_after, err)) => {
                    if !retryable || tries >= MAX_TRIES {
                        return Err(err);
                    }
                    tracing::warn!(path = %uri.path(), error = %err, tries, "Parallel API call failed; retrying");
                    match retry_after {
                        // `ready` waits it out, with every other call.
                        Some(after) => {
                            self.pace.asked_for(after);
                            Duration::ZERO
                        }
                        None => backoff,
                    }
                }
            };
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try: the answer, or (retryable, Retry-After, error).
    async fn try_get(&self, uri: &Uri) -> Result<Bytes, (bool, Option<Duration>, ApiError)> {
        let request = Request::get(uri.clone())
            .header("x-api-key", self.config.api_key.expose())
            .header("accept", "application/json")
            .header("user-agent", concat!("hookrelay/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|err| (false, None, ApiError::Unreadable(err.to_string())))?;
        let sent = tokio::time::timeout(self.config.timeout, async {
            // The whole cause chain: hyper's own text is only "client error (Connect)".
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| crate::delivery::outbound::error_chain(&err))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await;
            Ok::<_, String>((parts, body))
        })
        .await;
        let (parts, body) = match sent {
            Err(_) => return Err((true, None, ApiError::Unreachable("timed out".to_owned()))),
            Ok(Err(err)) => return Err((true, None, ApiError::Unreachable(err))),
            Ok(Ok((parts, Ok(body)))) => (parts, body.to_bytes()),
            // Too large is final: fetching it again would not shrink it.
            Ok(Ok((_, Err(err)))) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                return Err((
                    false,
                    None,
                    ApiError::Unreadable(format!("an answer over {MAX_ANSWER} bytes")),
                ));
            }
            Ok(Ok((_, Err(err)))) => return Err((true, None, ApiError::Unreachable(err.to_string()))),
        };
        if parts.status.is_success() {
            return Ok(body);
        }
        let retryable = parts.status == StatusCode::TOO_MANY_REQUESTS || parts.status.is_server_error();
        let retry_after = parts
            .headers
            .get(hyper::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| crate::delivery::policy::parse_retry_after(value, SystemTime::now()));
        // A proxy may echo request headers back: the key never leaves in a message.
        let message = error_message(&body, self.config.api_key.expose());
        Err((retryable, retry_after, ApiError::Status { status: parts.status.as_u16(), message }))
    }
}

/// The message of Parallel's error shape `{"type":"error","error":{"message"}}`,
/// or the start of whatever came back: at most 300 characters, with `secret`
/// redacted before the cut (so no part of it survives at the edge).
fn error_message(body: &[u8], secret: &str) -> String {
    const SHOWN: usize = 300;
    let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
    let text = match parsed.as_ref().and_then(|value| value["error"]["message"].as_str()) {
        Some(message) => message.to_owned(),
        None => String::from_utf8_lossy(&body[..body.len().min(4 * (SHOWN + secret.len()))]).into_owned(),
    };
    // Every occurrence starting within the shown part lies wholly inside this window.
    let window: String = text.chars().take(SHOWN + secret.chars().count()).collect();
    let redacted = if secret.is_empty() { window } else { window.replace(secret, "[redacted]") };
    redacted.chars().take(SHOWN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct KeyEnv;
    impl crate::config::Environment for KeyEnv {
        fn var(&self, _: &str) -> Option<String> {
            Some("whsec_dGVzdA==".to_owned())
        }
    }

    fn config_with_rate(per_second: u32) -> Config {
        let text = format!(
            "[sources.parallel]\nsecrets = [\"env:S\"]\n[sources.parallel.parallel]\napi_key = \"env:K\"\n\
             rate_limit = {{ per_second = {per_second}, burst = 1 }}\n"
        );
        Config::parse(std::path::Path::new("/etc/hookrelay/hookrelay.toml"), &text, &KeyEnv).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_api_rate_bucket_unless_the_limit_changed() {
        let apis = ParallelApis::new(&config_with_rate(1));
        assert!(apis.get("parallel").unwrap().pace.limiter.check().is_ok(), "the one token of the burst");
        apis.reload(&config_with_rate(1));
        assert!(apis.get("parallel").unwrap().pace.limiter.check().is_err(), "no fresh burst from a reload");
        apis.reload(&config_with_rate(2));
        assert!(
            apis.get("parallel").unwrap().pace.limiter.check().is_ok(),
            "a new limit starts a new bucket"
        );
    }

    #[test]
    fn pages_read_both_group_field_names_and_skip_groupless_events() {
        let page = EventsPage::parse(
            br#"{"events":[
                {"event_type":"event_stream","event_id":"e1","event_group_id":"g1","event_date":"2026-11-20T10:00:00Z"},
                {"event_type":"snapshot","event_id":"e2","monitor_group_id":"g2","event_date":"2026-11-21T10:00:00.5Z"},
                {"event_type":"completion","timestamp":"2026-11-21T11:00:00Z"},
                {"event_type":"event_stream","event_id":"e3","event_group_id":"g 3\n"}
            ],"next_cursor":"c2"}"#,
        )
        .unwrap();
        let dated = page.dated_groups();
        assert_eq!(dated.len(), 2, "not the group that cannot be a webhook-id: {dated:?}");
        assert_eq!(dated[0], ("g1".to_owned(), parse_event_date("2026-11-20T10:00:00Z")));
        assert_eq!(dated[1].0, "g2");
        assert_eq!(page.next_cursor.as_deref(), Some("c2"));
        let last = EventsPage::parse(br#"{"events":[]}"#).unwrap();
        assert_eq!(last, EventsPage::default());
        assert!(EventsPage::parse(b"{}").is_err());
        assert!(EventsPage::parse(b"not json").is_err());
    }

    #[test]
    fn groups_fold_by_earliest_event_and_drop_old_ones() {
        let day = |n: u64| n * DAY_MS;
        let at = |ms: u64| Some(EventDate { start_ms: ms, end_ms: ms });
        let events = [
            ("g2".to_owned(), at(day(12) + 5_000)),
            ("g1".to_owned(), at(day(11))),
            ("g2".to_owned(), at(day(12) + 4_000)),
            ("old".to_owned(), at(day(9))),
            ("spans".to_owned(), at(day(8))),
            ("spans".to_owned(), at(day(10))),
            ("undated".to_owned(), None),
            // A month-only date of a month that takes in day 10.
            ("month".to_owned(), Some(EventDate { start_ms: day(1), end_ms: day(31) - 1 })),
        ];
        // Since the middle of day 10: day 10 counts (dates may be days only).
        let groups = event_groups(events, day(10) + 3_600_000);
        let ids: Vec<(&str, Option<u64>)> =
            groups.iter().map(|g| (g.id.as_str(), g.first_event_ms)).collect();
        assert_eq!(
            ids,
            [
                ("month", Some(day(1))),
                ("spans", Some(day(8))),
                ("g1", Some(day(11))),
                ("g2", Some(day(12) + 4_000)),
            ]
        );
    }

    #[test]
    fn event_dates_in_every_form_parallel_uses() {
        let ms = |text: &str| crate::time::parse_rfc3339(text).unwrap();
        let midnight = ms("2026-04-07T00:00:00Z");
        assert_eq!(
            parse_event_date("2026-04-07T00:00:00Z"),
            Some(EventDate { start_ms: midnight, end_ms: midnight })
        );
        // A day, or a month, stands for all of it.
        let day = EventDate { start_ms: midnight, end_ms: ms("2026-04-08T00:00:00Z") - 1 };
        assert_eq!(parse_event_date("2026-04-07"), Some(day));
        let april =
            EventDate { start_ms: ms("2026-04-01T00:00:00Z"), end_ms: ms("2026-05-01T00:00:00Z") - 1 };
        assert_eq!(parse_event_date("2026-04"), Some(april));
        let december = parse_event_date("2026-12").unwrap();
        assert_eq!(december.end_ms, ms("2027-01-01T00:00:00Z") - 1);
        for bad in ["yesterday", "2026-13", "2026-00", "20a6-04", "2026-04-31"] {
            assert_eq!(parse_event_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_backfilled_detection_looks_like_the_webhook_and_routes_the_same() {
        let group = EventGroup { id: "mevtgrp_1".into(), first_event_ms: Some(1_764_000_000_000) };
        let metadata = serde_json::json!({"team": "research", "thread": "1234.5"});
        let body = detected_event_body("monitor_a", &group, Some(&metadata), 0);
        let envelope = crate::envelope::Envelope::from_body(&body);
        assert_eq!(envelope.event_type.as_deref(), Some(MONITOR_EVENT_DETECTED));
        assert_eq!(envelope.monitor_id.as_deref(), Some("monitor_a"));
        assert_eq!(envelope.event_group_id.as_deref(), Some("mevtgrp_1"));
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["timestamp"], crate::time::rfc3339(1_764_000_000));
        assert_eq!(value["data"]["metadata"], metadata);
        assert_eq!(backfill_webhook_id("mevtgrp_1"), "whbackfill_mevtgrp_1");
        // A monitor without metadata: the key is left out, as Parallel does.
        let bare: serde_json::Value =
            serde_json::from_slice(&detected_event_body("monitor_a", &group, None, 0)).unwrap();
        assert!(bare["data"].get("metadata").is_none(), "{bare}");
    }

    #[test]
    fn monitor_metadata_is_read_from_the_monitor_object() {
        let with = br#"{"monitor_id":"m","status":"active","metadata":{"team":"research"}}"#;
        assert_eq!(monitor_metadata(with), Ok(Some(serde_json::json!({"team": "research"}))));
        for without in [&br#"{"monitor_id":"m"}"#[..], br#"{"metadata":null}"#, br#"{"metadata":{}}"#] {
            assert_eq!(monitor_metadata(without), Ok(None));
        }
        assert!(matches!(monitor_metadata(b"<html>"), Err(ApiError::Unreadable(_))));
    }

    #[test]
    fn what_enrichment_needs_comes_from_the_body() {
        let detected = br#"{"type":"monitor.event.detected","data":{"monitor_id":"m1","event":{"event_group_id":"g1"}}}"#;
        assert_eq!(
            EnrichmentSource::for_body(detected),
            Some(EnrichmentSource::EventGroup { monitor_id: "m1".into(), event_group_id: "g1".into() })
        );
        let completed = br#"{"type":"task_run.status","data":{"run_id":"trun_1","status":"completed"}}"#;
        assert_eq!(
            EnrichmentSource::for_body(completed),
            Some(EnrichmentSource::TaskResult { run_id: "trun_1".into() })
        );
        for body in [
            &br#"{"type":"task_run.status","data":{"run_id":"trun_1","status":"running"}}"#[..],
            br#"{"type":"monitor.execution.completed","data":{"monitor_id":"m1","event":{"type":"completion"}}}"#,
            br#"{"type":"monitor.event.detected","data":{"monitor_id":"m1"}}"#,
            b"not json",
        ] {
            assert_eq!(EnrichmentSource::for_body(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn enrichment_is_attached_under_data() {
        let source = EnrichmentSource::EventGroup { monitor_id: "m".into(), event_group_id: "g".into() };
        let original = br#"{"type":"monitor.event.detected","timestamp":"t","data":{"monitor_id":"m","event":{"event_group_id":"g"},"metadata":{"team":"x"}}}"#;
        let events = serde_json::json!([{"event_id": "e1"}]);
        let enriched: serde_json::Value =
            serde_json::from_slice(&enriched_body(original, &source, &events).unwrap()).unwrap();
        assert_eq!(enriched["data"]["events"], events);
        assert_eq!(enriched["data"]["metadata"]["team"], "x");
        assert_eq!(enriched["timestamp"], "t");
        assert_eq!(enriched_body(b"[1]", &source, &events), None);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("monitor_a-1.x~"), "monitor_a-1.x~");
        assert_eq!(encode("a+b/c=d &"), "a%2Bb%2Fc%3Dd%20%26");
    }

    #[test]
    fn error_messages_come_from_parallels_error_shape() {
        let body = br#"{"type":"error","error":{"ref_id":"r","message":"monitor not found"}}"#;
        assert_eq!(error_message(body, "key"), "monitor not found");
        assert_eq!(error_message(b"<html>bad gateway</html>", "key"), "<html>bad gateway</html>");
    }

    #[test]
    fn an_echoed_key_is_redacted_even_across_the_cut() {
        let key = "par_secret_key_0123456789";
        // The key starts a few characters before the 300th, in both shapes.
        let prose = format!("{}{key} and more", "x".repeat(290));
        let json = serde_json::json!({"type": "error", "error": {"message": prose}}).to_string();
        for body in [prose.as_bytes(), json.as_bytes()] {
            let message = error_message(body, key);
            assert!(message.chars().count() <= 300);
            assert!(!message.contains("par_secret"), "{message}");
            assert!(message.ends_with("[redacted]"), "{message}");
        }
    }
}
