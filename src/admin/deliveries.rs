//! `GET /v1/deliveries` and `GET /v1/deliveries/{id}`: listing with filters
//! and stable cursor pagination over the journal's time index, and one
//! delivery with its body and every job's attempt history.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::journal::{DeliveryId, DeliveryRecord, Job, JobState, Journal, JournalError};
use crate::routing::glob_match;
use crate::time::{now_ms, parse_instant, rfc3339};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;

/// A parsed `GET /v1/deliveries` query.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub source: Option<String>,
    pub target: Option<String>,
    pub status: Option<JobState>,
    pub event: Option<String>,
    pub since_ms: u64,
    pub until_ms: Option<u64>,
    pub limit: usize,
    /// The last id of the previous page (exclusive).
    pub cursor: Option<DeliveryId>,
}

impl Query {
    /// Parses the query string; the error names the bad parameter.
    pub fn parse(query: &str, now_ms: u64) -> Result<Query, String> {
        let mut parsed = Query { limit: DEFAULT_LIMIT, ..Query::default() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(raw).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
            match key {
                "source" => parsed.source = Some(value),
                "target" => parsed.target = Some(value),
                "event" => parsed.event = Some(value),
                "status" => {
                    parsed.status = match value.as_str() {
                        "pending" => Some(JobState::Pending),
                        "delivered" => Some(JobState::Delivered),
                        "dead" => Some(JobState::Dead),
                        "any" => None,
                        other => {
                            return Err(format!("status: {other:?} is not pending, delivered, dead or any"));
                        }
                    }
                }
                "since" => {
                    parsed.since_ms = parse_instant(&value, now_ms).map_err(|e| format!("since: {e}"))?
                }
                "until" => {
                    parsed.until_ms = Some(parse_instant(&value, now_ms).map_err(|e| format!("until: {e}"))?)
                }
                "limit" => {
                    parsed.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit: must be 1 to {MAX_LIMIT}"))?;
                }
                "cursor" => parsed.cursor = Some(value.parse().map_err(|err| format!("cursor: {err}"))?),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(parsed)
    }

    fn matches(&self, record: &DeliveryRecord, jobs: &[Job]) -> bool {
        if self.source.as_ref().is_some_and(|source| *source != record.source) {
            return false;
        }
        if let Some(pattern) = &self.event
            && !record.event_type.as_deref().is_some_and(|t| glob_match(pattern, t))
        {
            return false;
        }
        let considered: Vec<&Job> = match &self.target {
            Some(target) => jobs.iter().filter(|job| job.target == *target).collect(),
            None => jobs.iter().collect(),
        };
        if self.target.is_some() && considered.is_empty() {
            return false;
        }
        match self.status {
            None => true,
            Some(JobState::Delivered) => {
                !considered.is_empty() && considered.iter().all(|job| job.state == JobState::Delivered)
            }
            Some(state) => considered.iter().any(|job| job.state == state),
        }
    }
}

/// How much of the journal one page may read through looking for matches:
/// a filter few deliveries pass would otherwise walk the whole journal in
/// one call, far past a client's patience. The page then ends early, with a
/// cursor to go on from.
#[derive(Debug, Clone, Copy)]
pub struct ScanBudget {
    pub deliveries: usize,
    pub time: Duration,
}

impl ScanBudget {
    pub const PER_PAGE: ScanBudget = ScanBudget { deliveries: 100_000, time: Duration::from_secs(2) };
}

/// One page of deliveries and the cursor for the next one.
pub fn list(journal: &Journal, query: &Query) -> Result<Value, JournalError> {
    list_within(journal, query, ScanBudget::PER_PAGE)
}

/// [`list`], reading at most `budget` of the journal.
///
/// A page reads only below [`Journal::listing_bound`], so a delivery still
/// landing is not passed by a cursor, and shows up on a later page.
pub fn list_within(journal: &Journal, query: &Query, budget: ScanBudget) -> Result<Value, JournalError> {
    let bound = journal.listing_bound()?;
    let start = match query.cursor {
        // Strictly after the cursor: the next sequence number of the same millisecond.
        Some(cursor) => {
            DeliveryId { received_at_ms: cursor.received_at_ms, seq: cursor.seq.saturating_add(1) }
        }
        None => DeliveryId { received_at_ms: query.since_ms, seq: 0 },
    };
    let start = start.max(DeliveryId { received_at_ms: query.since_ms, seq: 0 });
    let end = query.until_ms.map_or(bound, |until| bound.min(DeliveryId { received_at_ms: until, seq: 0 }));
    let started = Instant::now();
    let mut page = Vec::new();
    // The last delivery this page read, matched or not: where the next page starts.
    let mut last_read = None;
    let mut more = false;
    for (read, record) in journal.deliveries_from(start).enumerate() {
        let record = record?;
        if record.id >= end {
            break;
        }
        if read >= budget.deliveries || (read % 256 == 255 && started.elapsed() >= budget.time) {
            more = true;
            break;
        }
        let jobs = journal.jobs_of(record.id)?;
        if query.matches(&record, &jobs) {
            if page.len() == query.limit {
                more = true;
                break;
            }
            page.push(summary(&record, &jobs));
        }
        last_read = Some(record.id);
    }
    let next_cursor = if more { last_read.map(|id| id.to_string()) } else { None };
    Ok(json!({ "deliveries": page, "next_cursor": next_cursor }))
}

fn summary(record: &DeliveryRecord, jobs: &[Job]) -> Value {
    json!({
        "id": record.id.to_string(),
        "source": record.source,
        "webhook_id": record.webhook_id,
        "received_at": rfc3339(record.id.received_at_ms / 1000),
        "event_type": record.event_type,
        "monitor_id": record.monitor_id,
        "bytes": record.body.len(),
        "jobs": jobs.iter().map(|job| json!({
            "target": job.target, "state": job.state.as_str(), "attempts": job.attempts,
        })).collect::<Vec<_>>(),
    })
}

/// One delivery in full; `Ok(None)` when there is no such id.
pub fn show(journal: &Journal, id: DeliveryId) -> Result<Option<Value>, JournalError> {
    let Some(record) = journal.get(id)? else { return Ok(None) };
    let jobs = journal.jobs_of(id)?;
    let mut value = summary(&record, &jobs);
    value["webhook_timestamp"] = json!(record.webhook_timestamp);
    value["content_type"] = json!(record.content_type);
    match serde_json::from_slice::<Value>(&record.body) {
        Ok(body) => value["body"] = body,
        Err(_) => {
            value["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&record.body))
        }
    }
    let now = now_ms();
    value["jobs"] = jobs
        .iter()
        .map(|job| {
            json!({
                "target": job.target,
                "state": job.state.as_str(),
                "attempts": job.attempts,
                "replay": job.replay.map(|id| id.to_string()),
                "next_attempt_at": (job.state == JobState::Pending).then(|| rfc3339(job.next_attempt_at_ms.max(now) / 1000)),
                "history": job.history.iter().map(|a| json!({
                    "at": rfc3339(a.at_ms / 1000),
                    "latency_ms": a.latency_ms,
                    "status": a.status,
                    "error": a.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Some(value))
}

/// The body of `POST /v1/deliveries/purge`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    status: String,
    until: String,
    source: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/deliveries/purge {status: "dead", until, source?, dry_run?}`:
/// deletes deliveries received before `until` that have a dead job and no
/// pending one. Only dead ones: delivered ones go by retention, pending ones
/// are never dropped.
pub fn purge(
    journal: &Journal,
    body: &[u8],
    now_ms: u64,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use super::{error, journal_error, json};
    use hyper::StatusCode;
    let request: PurgeRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("request body: {err}")),
    };
    if request.status != "dead" {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "status: only dead deliveries can be purged (delivered ones are pruned by journal.retention)",
        );
    }
    let until_ms = match parse_instant(&request.until, now_ms) {
        Ok(until) => until,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("until: {err}")),
    };
    match journal.purge_dead(until_ms, request.source.as_deref(), request.dry_run) {
        Ok(swept) => {
            if !request.dry_run {
                tracing::info!(deliveries = swept.deliveries, jobs = swept.jobs, until = %rfc3339(until_ms / 1000), "purged dead deliveries");
            }
            json(
                StatusCode::OK,
                &json!({
                    "dry_run": request.dry_run, "purged": swept.deliveries, "jobs": swept.jobs,
                    "until": rfc3339(until_ms / 1000),
                }),
            )
        }
        Err(err) if request.dry_run => journal_error(&err),
        Err(err) => super::journal_failed_part_way(
            &err,
            "the journal failed: deliveries the purge removed before the failure stay removed; run it again once the journal takes writes",
        ),
    }
}

/// `%XX` and `+` decoding for query values; `None` on malformed input.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_say_what_is_wrong() {
        let q = Query::parse(
            "source=parallel&target=t&status=dead&event=monitor.*&since=2h&limit=10",
            10_000_000,
        )
        .unwrap();
        assert_eq!(q.source.as_deref(), Some("parallel"));
        assert_eq!(q.status, Some(JobState::Dead));
        assert_eq!(q.since_ms, 10_000_000 - 7_200_000);
        assert_eq!(q.limit, 10);
        let q = Query::parse("since=2026-11-28T09%3A00%3A00Z&status=any", 0).unwrap();
        assert_eq!(q.since_ms, 1_795_856_400_000);
        assert_eq!(q.status, None);
        assert!(Query::parse("status=lost", 0).unwrap_err().starts_with("status:"));
        assert!(Query::parse("limit=0", 0).unwrap_err().starts_with("limit:"));
        assert!(Query::parse("limit=5000", 0).unwrap_err().starts_with("limit:"));
        assert!(Query::parse("cursor=nope", 0).unwrap_err().starts_with("cursor:"));
        assert!(Query::parse("colour=red", 0).unwrap_err().contains("unknown parameter"));
        assert!(Query::parse("since=%zz", 0).unwrap_err().contains("percent"));
    }
}
