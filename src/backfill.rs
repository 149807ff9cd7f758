//! Backfill: the detections of a Parallel monitor whose webhooks never
//! reached hookrelay (it was down longer than Parallel retries, 48 h) are
//! listed through the API and injected as `monitor.event.detected`
//! deliveries, fanned out like any other.
//!
//! Each injected delivery's `webhook-id` is derived from its event group
//! ([`crate::parallel::backfill_webhook_id`]) and the journal keys detections
//! by event group, so running a backfill twice injects nothing new, and the
//! real webhook arriving late is answered as a duplicate (and vice versa).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::Config;
use crate::ingress::Ingress;
use crate::journal::{Journal, JournalError};
use crate::live::Live;
use crate::parallel::{ApiError, ParallelApi, backfill_webhook_id, detected_event_body};

/// How far back a backfill looks when the request does not say.
pub const DEFAULT_SINCE: &str = "7d";

/// `POST /v1/backfill`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillRequest {
    source: String,
    monitor: String,
    /// A duration ago, an RFC 3339 time or Unix seconds.
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// Why a backfill could not run, by HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Api(ApiError),
    #[error("{0}")]
    Journal(JournalError),
}

/// Runs backfills for the admin API; keeps one API client per source that
/// has `[sources.NAME.parallel]` (rebuilt by a reload).
pub struct Backfiller {
    apis: Live<BTreeMap<String, Arc<ParallelApi>>>,
    ingress: Arc<Ingress>,
    journal: Arc<Journal>,
}

impl Backfiller {
    pub fn new(config: &Config, ingress: Arc<Ingress>, journal: Arc<Journal>) -> Self {
        Backfiller { apis: Live::new(apis(config)), ingress, journal }
    }

    pub(crate) fn reload(&self, config: &Config) {
        self.apis.set(apis(config));
    }

    /// Lists the monitor's event groups since `since`, finds those the
    /// journal has never seen, and (unless a dry run) injects each, oldest
    /// first. Answers what it found and did.
    pub async fn run(&self, body: &[u8]) -> Result<serde_json::Value, BackfillError> {
        let request: BackfillRequest = serde_json::from_slice(body)
            .map_err(|err| BackfillError::BadRequest(format!("invalid backfill request: {err}")))?;
        let apis = self.apis.get();
        let api = apis.get(&request.source).ok_or_else(|| {
            BackfillError::BadRequest(format!(
                "source {:?} has no [sources.{}.parallel] API key configured",
                request.source, request.source
            ))
        })?;
        if request.monitor.is_empty() || request.monitor.len() > 256 {
            return Err(BackfillError::BadRequest("monitor must be a monitor id".to_owned()));
        }
        let now = crate::time::now_ms();
        let since_text = request.since.as_deref().unwrap_or(DEFAULT_SINCE);
        let since = crate::time::parse_instant(since_text, now)
            .map_err(|err| BackfillError::BadRequest(format!("since: {err}")))?;
        let groups = api.monitor_event_groups(&request.monitor, since).await.map_err(BackfillError::Api)?;
        let mut missing = Vec::new();
        for group in &groups {
            if !self.journal.has_event_group(&request.source, &group.id).map_err(BackfillError::Journal)? {
                missing.push(group);
            }
        }
        let mut injected = Vec::new();
        if !request.dry_run {
            for group in &missing {
                let body = detected_event_body(&request.monitor, group, now);
                let appended = self
                    .ingress
                    .inject(&request.source, backfill_webhook_id(&group.id), body)
                    .await
                    .map_err(BackfillError::Journal)?;
                if !appended.duplicate {
                    injected
                        .push(serde_json::json!({"event_group_id": group.id, "id": appended.id.to_string()}));
                }
            }
            tracing::info!(
                source = %request.source, monitor = %request.monitor, event_groups = groups.len(),
                missing = missing.len(), injected = injected.len(), "backfill done"
            );
        }
        Ok(serde_json::json!({
            "source": request.source,
            "monitor": request.monitor,
            "since": crate::time::rfc3339(since / 1000),
            "dry_run": request.dry_run,
            "event_groups": groups.len(),
            "missing": missing.iter().map(|group| &group.id).collect::<Vec<_>>(),
            "injected": injected,
        }))
    }
}

fn apis(config: &Config) -> BTreeMap<String, Arc<ParallelApi>> {
    config
        .sources
        .values()
        .filter_map(|source| {
            Some((source.name.clone(), Arc::new(ParallelApi::new(source.parallel.as_ref()?))))
        })
        .collect()
}
