//! Replays: which (delivery, target) pairs an operator's selection names,
//! and handing them to the journal and the lanes.
//!
//! A selection is ids, or a time window, narrowed by source, target, job
//! status and event glob. Every pair also has to pass the target's current
//! routing filters (`source`, `events`, `match`), and the target need not have
//! had a job for the delivery: a target added after the delivery arrived is
//! backfilled from the journal this way.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::delivery::LaneStatus;
use crate::journal::{DeliveryId, DeliveryRecord, JobState, Journal, JournalError, ReplayStarted};
use crate::live::Live;
use crate::routing::{Route, glob_match};
use crate::time::parse_instant;

/// Which jobs a replay selects, by their state now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// Every pair the filters match (pending jobs are skipped anyway).
    Any,
    Dead,
    Delivered,
    /// No job at all: the target was added (or its filters widened) after
    /// the delivery arrived.
    Missing,
    /// Everything the target has not received and is no longer trying to:
    /// dead or missing.
    Failed,
}

impl StatusFilter {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "any" => StatusFilter::Any,
            "dead" => StatusFilter::Dead,
            "delivered" => StatusFilter::Delivered,
            "missing" => StatusFilter::Missing,
            "failed" => StatusFilter::Failed,
            other => return Err(format!("status: {other:?} is not dead, failed, delivered, missing or any")),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Any => "any",
            StatusFilter::Dead => "dead",
            StatusFilter::Delivered => "delivered",
            StatusFilter::Missing => "missing",
            StatusFilter::Failed => "failed",
        }
    }

    /// Whether a pair whose job is in `state` (`None`: no job) is selected.
    pub fn wants(self, state: Option<JobState>) -> bool {
        match self {
            StatusFilter::Any => true,
            StatusFilter::Dead => state == Some(JobState::Dead),
            StatusFilter::Delivered => state == Some(JobState::Delivered),
            StatusFilter::Missing => state.is_none(),
            StatusFilter::Failed => matches!(state, None | Some(JobState::Dead)),
        }
    }
}

/// The body of `POST /v1/replays`, as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelection {
    #[serde(default)]
    ids: Vec<String>,
    since: Option<String>,
    until: Option<String>,
    source: Option<String>,
    target: Option<String>,
    status: Option<String>,
    event: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// A validated replay selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Sorted, without repeats; empty = select by time window.
    pub ids: Vec<DeliveryId>,
    pub since_ms: u64,
    pub until_ms: Option<u64>,
    pub source: Option<String>,
    pub target: Option<String>,
    pub status: StatusFilter,
    pub event: Option<String>,
    pub dry_run: bool,
}

impl Selection {
    /// Parses a request body; the error names the bad field. Either `ids` or
    /// `since` is required, so that no one replays the whole journal by
    /// leaving everything out (`since = "0"` says so on purpose).
    pub fn from_json(body: &[u8], now_ms: u64) -> Result<Selection, String> {
        let raw: RawSelection = serde_json::from_slice(body).map_err(|err| format!("request body: {err}"))?;
        let instant = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| parse_instant(text, now_ms).map_err(|err| format!("{name}: {err}")))
                .transpose()
        };
        let mut ids = raw
            .ids
            .iter()
            .map(|id| id.parse::<DeliveryId>().map_err(|err| format!("ids: {id:?}: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        ids.sort_unstable();
        ids.dedup();
        let since_ms = instant("since", &raw.since)?;
        if ids.is_empty() && since_ms.is_none() {
            return Err("give ids, or since (a duration ago or a time; since=0 for the whole journal)".into());
        }
        let until_ms = instant("until", &raw.until)?;
        Ok(Selection {
            ids,
            since_ms: since_ms.unwrap_or(0),
            until_ms,
            source: raw.source,
            target: raw.target,
            status: raw.status.as_deref().map_or(Ok(StatusFilter::Any), StatusFilter::parse)?,
            event: raw.event,
            dry_run: raw.dry_run,
        })
    }

    /// The selection as stored with the replay and shown back.
    pub fn describe(&self) -> Value {
        let mut value = json!({ "status": self.status.as_str() });
        if !self.ids.is_empty() {
            value["ids"] = json!(self.ids.iter().map(ToString::to_string).collect::<Vec<_>>());
        }
        if self.since_ms > 0 {
            value["since"] = json!(crate::time::rfc3339(self.since_ms / 1000));
        }
        if let Some(until) = self.until_ms {
            value["until"] = json!(crate::time::rfc3339(until / 1000));
        }
        for (name, field) in [("source", &self.source), ("target", &self.target), ("event", &self.event)] {
            if let Some(field) = field {
                value[name] = json!(field);
            }
        }
        value
    }

    fn wants_record(&self, record: &DeliveryRecord) -> bool {
        let at = record.id.received_at_ms;
        at >= self.since_ms
            && self.until_ms.is_none_or(|until| at < until)
            && self.source.as_ref().is_none_or(|source| *source == record.source)
            && self
                .event
                .as_ref()
                .is_none_or(|pattern| record.event_type.as_deref().is_some_and(|t| glob_match(pattern, t)))
    }
}

/// One selected pair and the state of its job now (`None`: no job yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub delivery: DeliveryId,
    pub target: String,
    pub state: Option<JobState>,
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no delivery {0} in the journal")]
    UnknownDelivery(DeliveryId),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What a dry run (or the start of a replay) counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Pairs that will be (or were) requeued.
    pub matched: u64,
    /// Pairs left alone because their job is still pending.
    pub skipped: u64,
}

/// Which targets and sources a replay may name (from the config).
struct Rules {
    routes: Vec<Route>,
    sources: BTreeSet<String>,
}

impl Rules {
    fn new(config: &Config) -> Self {
        Rules {
            routes: config.targets.values().map(Route::from_target).collect(),
            sources: config.sources.keys().cloned().collect(),
        }
    }
}

/// Starts replays: the selection logic with the journal and the lanes.
pub struct Replayer {
    journal: Arc<Journal>,
    rules: Live<Rules>,
    lanes: LaneStatus,
}

impl Replayer {
    pub fn new(config: &Config, journal: Arc<Journal>, lanes: LaneStatus) -> Self {
        Replayer { journal, rules: Live::new(Rules::new(config)), lanes }
    }

    /// Takes the targets and sources of a reloaded config.
    pub fn reload(&self, config: &Config) {
        self.rules.set(Rules::new(config));
    }

    /// Checks the names and ids a selection uses.
    pub fn validate(&self, selection: &Selection) -> Result<(), ReplayError> {
        let rules = self.rules.get();
        // With a target named too, a source gone from the config may be
        // named: its deliveries still wait for a renamed source's targets.
        if let Some(source) = &selection.source
            && !rules.sources.contains(source)
            && selection.target.is_none()
        {
            return Err(ReplayError::BadRequest(format!("source: no source named {source:?} is configured")));
        }
        if let Some(target) = &selection.target
            && !rules.routes.iter().any(|route| route.target == *target)
        {
            return Err(ReplayError::BadRequest(format!("target: no target named {target:?} is configured")));
        }
        for id in &selection.ids {
            if self.journal.get(*id)?.is_none() {
                return Err(ReplayError::UnknownDelivery(*id));
            }
        }
        Ok(())
    }

    /// Counts what `selection` would requeue, without doing it.
    pub fn dry_run(&self, selection: &Selection) -> Result<Count, ReplayError> {
        self.validate(selection)?;
        let mut count = Count::default();
        for candidate in self.candidates(selection) {
            match candidate?.state {
                Some(JobState::Pending) => count.skipped += 1,
                _ => count.matched += 1,
            }
        }
        Ok(count)
    }

    /// What the journal keeps of a replay: its selection and, when it names
    /// a target, that target's source as it is now. A lane lets a job of
    /// another source through only for a replay naming both, and only while
    /// the target still takes the source it took then (see `Lane::attempt`):
    /// a name later given to yet another source gets none of it.
    fn record_of(&self, selection: &Selection) -> Value {
        let mut record = selection.describe();
        let rules = self.rules.get();
        if let Some(target) = &selection.target
            && let Some(route) = rules.routes.iter().find(|route| route.target == *target)
        {
            record["target_source"] = Value::from(route.source.clone());
        }
        record
    }

    /// Requeues what `selection` names, durably, and hands the jobs to the
    /// lanes, which send them behind live traffic.
    pub fn start(&self, selection: &Selection, now_ms: u64) -> Result<ReplayStarted, ReplayError> {
        self.validate(selection)?;
        let pairs = self
            .candidates(selection)
            .map(|candidate| candidate.map(|Candidate { delivery, target, .. }| (delivery, target)));
        let started = self
            .journal
            .start_replay(self.record_of(selection), pairs, now_ms, |queued| self.lanes.enqueue(queued))?;
        tracing::info!(
            replay_id = %started.id, matched = started.matched, skipped_pending = started.skipped,
            selection = %selection.describe(), "replay started"
        );
        Ok(started)
    }

    /// Every (delivery, target) pair the selection names, in delivery order.
    pub fn candidates<'a>(
        &'a self,
        selection: &'a Selection,
    ) -> impl Iterator<Item = Result<Candidate, JournalError>> + 'a {
        let records: Box<dyn Iterator<Item = Result<DeliveryRecord, JournalError>> + 'a> =
            if selection.ids.is_empty() {
                let start = DeliveryId { received_at_ms: selection.since_ms, seq: 0 };
                // What had landed when the walk began, however long it takes:
                // deliveries arriving meanwhile are sent by their own fan-out,
                // and `matched` stays what a dry run of the same window said.
                match self.journal.replay_bound() {
                    Ok(bound) => {
                        let end = selection
                            .until_ms
                            .map_or(bound, |until| bound.min(DeliveryId { received_at_ms: until, seq: 0 }));
                        Box::new(
                            self.journal.deliveries_from(start).take_while(move |record| {
                                record.as_ref().map_or(true, |record| record.id < end)
                            }),
                        )
                    }
                    Err(err) => Box::new(std::iter::once(Err(err))),
                }
            } else {
                Box::new(selection.ids.iter().filter_map(move |id| self.journal.get(*id).transpose()))
            };
        // One snapshot of the rules for the whole walk.
        let rules = self.rules.get();
        // A record that cannot be decoded is logged and passed over (it
        // could not be sent anyway): one bad entry must not stop every
        // replay of a window that takes it in.
        records.flat_map(move |record| match crate::journal::unless_corrupt(record, "replay") {
            Ok(Some(record)) => self.candidates_of(&rules, selection, &record),
            Ok(None) => Vec::new(),
            Err(err) => vec![Err(err)],
        })
    }

    fn candidates_of(
        &self,
        rules: &Rules,
        selection: &Selection,
        record: &DeliveryRecord,
    ) -> Vec<Result<Candidate, JournalError>> {
        if !selection.wants_record(record) {
            return Vec::new();
        }
        // A target now of another source (its source renamed, or its name
        // given to another) takes this delivery only when the operator names
        // both: its source, and the target.
        let named_both = selection.source.is_some() && selection.target.is_some();
        let routes: Vec<&Route> = rules
            .routes
            .iter()
            .filter(|route| route.source == record.source || named_both)
            .filter(|route| selection.target.as_ref().is_none_or(|target| route.target == *target))
            .collect();
        if routes.is_empty() {
            return Vec::new();
        }
        let body = if routes.iter().any(|route| !route.matches.is_empty()) {
            serde_json::from_slice::<Value>(&record.body).ok()
        } else {
            None
        };
        let jobs = match crate::journal::unless_corrupt(self.journal.jobs_of(record.id), "replay") {
            Ok(Some(jobs)) => jobs,
            Ok(None) => return Vec::new(),
            Err(err) => return vec![Err(err)],
        };
        routes
            .into_iter()
            .filter(|route| {
                // Across sources, the job the delivery already has for the
                // target is what routed it (checked below), not the filters.
                route.source != record.source
                    || route.matches(&record.source, record.event_type.as_deref(), body.as_ref())
            })
            .filter_map(|route| {
                let state = jobs.iter().find(|job| job.target == route.target).map(|job| job.state);
                if route.source != record.source && state.is_none() {
                    return None;
                }
                selection
                    .status
                    .wants(state)
                    .then(|| Ok(Candidate { delivery: record.id, target: route.target.clone(), state }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn selections_parse_and_say_what_is_wrong() {
        let s = Selection::from_json(br#"{"since":"2h","target":"t","status":"dead","dry_run":true}"#, NOW)
            .unwrap();
        assert_eq!(s.since_ms, NOW - 7_200_000);
        assert_eq!(s.status, StatusFilter::Dead);
        assert!(s.dry_run);
        assert_eq!(s.describe()["target"], "t");

        let id = DeliveryId { received_at_ms: 5, seq: 1 };
        let body = format!(r#"{{"ids":["{id}","{id}"]}}"#);
        let s = Selection::from_json(body.as_bytes(), NOW).unwrap();
        assert_eq!(s.ids, [id]);
        assert_eq!(s.status, StatusFilter::Any);

        let error = |body: &str| Selection::from_json(body.as_bytes(), NOW).unwrap_err();
        assert!(error("{}").starts_with("give ids, or since"));
        assert!(error(r#"{"since":"2h","status":"pending"}"#).starts_with("status:"));
        assert!(error(r#"{"since":"yesterday"}"#).starts_with("since:"));
        assert!(error(r#"{"ids":["nope"]}"#).starts_with("ids:"));
        assert!(error(r#"{"since":"2h","colour":"red"}"#).contains("unknown field"));
        assert!(error("not json").starts_with("request body:"));
        // The admin_input fuzzer's crash: a huge year must be refused, not overflow.
        let crash = r#"{"since":"202666666666666-11-28T09:0:000Z","until":"parallel","status":"fd"}"#;
        assert!(error(crash).starts_with("since:"));
    }

    #[test]
    fn status_filters_select_by_job_state() {
        use JobState::{Dead, Delivered, Pending};
        let states = [None, Some(Pending), Some(Delivered), Some(Dead)];
        let wanted = |filter: StatusFilter| states.iter().map(|s| filter.wants(*s)).collect::<Vec<_>>();
        assert_eq!(wanted(StatusFilter::Any), [true, true, true, true]);
        assert_eq!(wanted(StatusFilter::Dead), [false, false, false, true]);
        assert_eq!(wanted(StatusFilter::Delivered), [false, false, true, false]);
        assert_eq!(wanted(StatusFilter::Missing), [true, false, false, false]);
        assert_eq!(wanted(StatusFilter::Failed), [true, false, false, true]);
    }
}
