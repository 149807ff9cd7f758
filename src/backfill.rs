//! Backfill: the detections of a Parallel monitor whose webhooks never
//! reached hookrelay (it was down longer than Parallel retries, 48 h) are
//! listed through the API and injected as `monitor.event.detected`
//! deliveries, fanned out like any other.
//!
//! Run on demand (`POST /v1/backfill`, `hookrelay backfill`) or on a schedule
//! (`[sources.NAME.parallel.reconcile]`).
//!
//! Each injected delivery's `webhook-id` is derived from its event group
//! ([`crate::parallel::backfill_webhook_id`]) and the journal keys detections
//! by event group, so running a backfill twice injects nothing new, and the
//! real webhook arriving late is answered as a duplicate (and vice versa).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{Config, Reconcile};
use crate::ingress::Ingress;
use crate::journal::{Journal, JournalError};
use crate::live::Live;
use crate::parallel::{ApiError, MetadataLookup, ParallelApis, backfill_webhook_id, detected_event_body};

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

/// What a backfill found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backfilled {
    pub event_groups: usize,
    /// Groups the journal had never seen, oldest first.
    pub missing: Vec<String>,
    /// Groups left out because their first event is older than the journal
    /// remembers detections (see [`remembered_since`]).
    pub too_old: Vec<String>,
    /// (event group, delivery id) of each injected delivery.
    pub injected: Vec<(String, String)>,
}

/// Runs backfills (for the admin API and the reconcile schedule); keeps one
/// API client per source that has `[sources.NAME.parallel]` (rebuilt by a
/// reload).
pub struct Backfiller {
    apis: Arc<ParallelApis>,
    /// Each source's reconcile schedule and the journal's retention, from
    /// the config (a reload swaps them).
    settings: Live<Settings>,
    ingress: Arc<Ingress>,
    journal: Arc<Journal>,
}

struct Settings {
    schedules: BTreeMap<String, Reconcile>,
    retention: std::time::Duration,
}

impl Settings {
    fn of(config: &Config) -> Self {
        let schedules = config
            .sources
            .values()
            .filter_map(|source| Some((source.name.clone(), source.parallel.as_ref()?.reconcile.clone()?)))
            .collect();
        Settings { schedules, retention: config.journal.retention }
    }
}

impl Backfiller {
    pub fn new(
        config: &Config,
        apis: Arc<ParallelApis>,
        ingress: Arc<Ingress>,
        journal: Arc<Journal>,
    ) -> Self {
        Backfiller { apis, settings: Live::new(Settings::of(config)), ingress, journal }
    }

    pub(crate) fn reload(&self, config: &Config) {
        self.settings.set(Settings::of(config));
    }

    /// `POST /v1/backfill`: parses the request, backfills, answers JSON.
    pub async fn run(&self, body: &[u8]) -> Result<serde_json::Value, BackfillError> {
        let request: BackfillRequest = serde_json::from_slice(body)
            .map_err(|err| BackfillError::BadRequest(format!("invalid backfill request: {err}")))?;
        if request.monitor.is_empty() || request.monitor.len() > 256 {
            return Err(BackfillError::BadRequest("monitor must be a monitor id".to_owned()));
        }
        let since_text = request.since.as_deref().unwrap_or(DEFAULT_SINCE);
        let since = crate::time::parse_instant(since_text, crate::time::now_ms())
            .map_err(|err| BackfillError::BadRequest(format!("since: {err}")))?;
        let done = self.backfill(&request.source, &request.monitor, since, request.dry_run).await?;
        Ok(serde_json::json!({
            "source": request.source,
            "monitor": request.monitor,
            "since": crate::time::rfc3339(since / 1000),
            "dry_run": request.dry_run,
            "event_groups": done.event_groups,
            "missing": done.missing,
            "too_old": done.too_old,
            "injected": done.injected.iter()
                .map(|(group, id)| serde_json::json!({"event_group_id": group, "id": id}))
                .collect::<Vec<_>>(),
        }))
    }

    /// Lists the monitor's event groups since `since_ms`, finds those the
    /// journal has never seen, and (unless a dry run) injects each, oldest
    /// first.
    pub async fn backfill(
        &self,
        source: &str,
        monitor: &str,
        since_ms: u64,
        dry_run: bool,
    ) -> Result<Backfilled, BackfillError> {
        if let Some(horizon) = past_retention(since_ms, crate::time::now_ms(), self.settings.get().retention)
        {
            return Err(BackfillError::BadRequest(format!(
                "since, taken back to the start of its day (Parallel's event dates may be days only), is older than journal.retention ({}): detections pruned from the journal would be injected again",
                crate::time::rfc3339(horizon / 1000)
            )));
        }
        let api = self.apis.get(source).ok_or_else(|| {
            BackfillError::BadRequest(format!(
                "source {source:?} has no [sources.{source}.parallel] API key configured"
            ))
        })?;
        let listed = api.monitor_event_groups(monitor, since_ms).await.map_err(BackfillError::Api)?;
        let (groups, too_old) =
            split_remembered(listed, remembered_since(crate::time::now_ms(), self.settings.get().retention));
        if !too_old.is_empty() {
            tracing::warn!(
                source,
                monitor,
                too_old = too_old.len(),
                "left out event groups whose first event is older than the journal remembers detections: \
                 they may have arrived and been pruned"
            );
        }
        let mut missing = Vec::new();
        for group in &groups {
            if !self.journal.has_event_group(source, &group.id).map_err(BackfillError::Journal)? {
                missing.push(group);
            }
        }
        let mut injected = Vec::new();
        if !dry_run && !missing.is_empty() {
            // Without the monitor's metadata, a target that matches on it
            // would never get the detection (and the real webhook, arriving
            // late, is a duplicate): a failed lookup fails the backfill, to be
            // tried again. Only an API with no monitor objects at all gets
            // detections without it.
            let metadata = match api.monitor_metadata(monitor).await.map_err(BackfillError::Api)? {
                MetadataLookup::Found(metadata) => metadata,
                MetadataLookup::NotServed => {
                    tracing::warn!(
                        source,
                        monitor,
                        "the Parallel API has no monitor object for this monitor (at /v1 or /v1alpha); backfilled detections carry no metadata"
                    );
                    None
                }
            };
            let now = crate::time::now_ms();
            for group in &missing {
                let body = detected_event_body(monitor, group, metadata.as_ref(), now);
                let appended = self
                    .ingress
                    .inject(source, backfill_webhook_id(&group.id), body)
                    .await
                    .map_err(BackfillError::Journal)?;
                if !appended.duplicate {
                    injected.push((group.id.clone(), appended.id.to_string()));
                }
            }
            if !injected.is_empty() {
                tracing::info!(
                    source,
                    monitor,
                    injected = injected.len(),
                    "backfilled detections that never arrived"
                );
            }
        }
        Ok(Backfilled {
            event_groups: groups.len() + too_old.len(),
            missing: missing.iter().map(|group| group.id.clone()).collect(),
            too_old,
            injected,
        })
    }

    /// Backfills every monitor named in a `reconcile` table, each on its own
    /// schedule, for as long as the gateway runs. The first pass is at start:
    /// a gateway coming back from an outage catches up at once. A reload
    /// takes effect at the next pass.
    pub async fn reconcile_periodically(self: Arc<Self>) {
        let mut next_run: BTreeMap<(String, String), tokio::time::Instant> = BTreeMap::new();
        loop {
            let now = tokio::time::Instant::now();
            let mut due = Vec::new();
            let mut wake = now + RECONCILE_IDLE;
            let schedules = self.settings.get().schedules.clone();
            // Monitors no longer configured leave the schedule.
            next_run.retain(|(source, monitor), _| {
                schedules.get(source).is_some_and(|reconcile| reconcile.monitors.contains(monitor))
            });
            for (source, reconcile) in &schedules {
                for monitor in &reconcile.monitors {
                    let at = *next_run.entry((source.clone(), monitor.clone())).or_insert(now);
                    if at <= now {
                        due.push((source.clone(), monitor.clone(), reconcile.clone()));
                    } else {
                        wake = wake.min(at);
                    }
                }
            }
            let retention = self.settings.get().retention;
            for (source, monitor, reconcile) in due {
                let lookback = reconcile_lookback(reconcile.lookback, retention);
                let since = crate::time::now_ms().saturating_sub(lookback.as_millis() as u64);
                if let Err(err) = self.backfill(&source, &monitor, since, false).await {
                    tracing::warn!(%source, %monitor, error = %err, "reconcile failed; next try at the next interval");
                }
                let next = tokio::time::Instant::now() + reconcile.every;
                wake = wake.min(next);
                next_run.insert((source, monitor), next);
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

/// Since when the journal remembers every detection that arrived: a
/// delivery is kept at least `retention`, and its event-group entry one
/// retention more (see `journal::retention`). A group whose first event is
/// older may have arrived and been forgotten, however recent its latest
/// event (groups gain events for weeks; a month-only date reaches back to
/// the start of its month): backfilling it could send it a second time.
fn remembered_since(now_ms: u64, retention: std::time::Duration) -> u64 {
    now_ms.saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX).saturating_mul(2))
}

/// The groups whose first event the journal remembers, and the ids of the others.
fn split_remembered(
    groups: Vec<crate::parallel::EventGroup>,
    since_ms: u64,
) -> (Vec<crate::parallel::EventGroup>, Vec<String>) {
    let (kept, too_old): (Vec<_>, Vec<_>) =
        groups.into_iter().partition(|group| group.first_event_ms.is_none_or(|first| first >= since_ms));
    (kept, too_old.into_iter().map(|group| group.id).collect())
}

/// How long the reconcile task sleeps when nothing is scheduled (a reload
/// may add a schedule).
const RECONCILE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The retention horizon, when a backfill from `since_ms` at `now_ms`
/// would look past it. Older than retention, the journal may have pruned
/// detections that did arrive (their event-group entries with them): they
/// would come back as new deliveries. The window starts at the beginning of
/// since's day (see [`crate::parallel::since_day`]), so that is what counts.
fn past_retention(since_ms: u64, now_ms: u64, retention: std::time::Duration) -> Option<u64> {
    let horizon = now_ms.saturating_sub(retention.as_millis() as u64);
    (crate::parallel::since_day(since_ms) < horizon).then_some(horizon)
}

/// How far back a reconcile pass looks: never past retention once taken
/// back to the start of its day (see [`past_retention`]), with
/// [`RETENTION_MARGIN`] to spare, since `backfill` reads the clock again.
/// Zero when retention is too short for any window (config refuses that).
pub(crate) fn reconcile_lookback(
    lookback: std::time::Duration,
    retention: std::time::Duration,
) -> std::time::Duration {
    lookback.min(retention.saturating_sub(DAY + RETENTION_MARGIN))
}

const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// How far inside `journal.retention` (a day beside) a reconcile's window
/// stays, so that a window at the very edge is never refused for the
/// milliseconds between two readings of the clock.
const RETENTION_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HOUR_MS: u64 = 3_600_000;

    #[test]
    fn groups_first_seen_before_the_journal_remembers_are_left_out() {
        let day = 24 * HOUR_MS;
        let retention = Duration::from_millis(7 * day);
        let now = 100 * day;
        let since = remembered_since(now, retention);
        assert_eq!(since, 86 * day, "a delivery's retention, then its group entry's");
        let group = |id: &str, first| crate::parallel::EventGroup { id: id.into(), first_event_ms: first };
        let (kept, too_old) = split_remembered(
            vec![group("old", Some(since - 1)), group("edge", Some(since)), group("new", Some(99 * day))],
            since,
        );
        let kept: Vec<&str> = kept.iter().map(|g| g.id.as_str()).collect();
        assert_eq!((kept, too_old), (vec!["edge", "new"], vec!["old".to_owned()]));
    }

    #[test]
    fn a_backfill_window_is_refused_once_its_day_starts_before_the_horizon() {
        let retention = Duration::from_secs(72 * 3600);
        // Thursday 10:00; the horizon is Monday 10:00.
        let now = 20 * 24 * HOUR_MS + 10 * HOUR_MS;
        let horizon = now - 72 * HOUR_MS;
        assert_eq!(past_retention(now - 24 * HOUR_MS, now, retention), None);
        // Monday 11:00 is inside retention, but its day began at 00:00: a
        // detection delivered (and pruned) Monday at 09:00 would come back.
        assert_eq!(past_retention(horizon + HOUR_MS, now, retention), Some(horizon));
        // Tuesday 00:00 is the earliest since that is safe.
        assert_eq!(past_retention(horizon + 14 * HOUR_MS, now, retention), None);
    }

    #[test]
    fn a_reconcile_window_stays_inside_retention_whatever_the_hour() {
        let hours = |n: u64| Duration::from_secs(n * 3600);
        assert_eq!(reconcile_lookback(hours(24), hours(30 * 24)), hours(24));
        for retention in [hours(72), hours(30 * 24), hours(26)] {
            let lookback = reconcile_lookback(hours(10_000), retention);
            assert!(!lookback.is_zero());
            // Every hour of a day, and the check a little later.
            for hour in 0..24 {
                let now = 40 * 24 * HOUR_MS + hour * HOUR_MS + 1;
                let since = now - lookback.as_millis() as u64;
                assert_eq!(past_retention(since, now + 1_000, retention), None, "{retention:?} at {hour}h");
            }
        }
        assert!(reconcile_lookback(hours(72), hours(24)).is_zero(), "no window under a day and a minute");
    }
}
