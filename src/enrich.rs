//! Enrichment: a target with `enrich = true` gets a thin event with the
//! content its consumer would otherwise fetch itself — a detection's events
//! (`data.events`), a completed task run's result (`data.result`). The
//! content is fetched once per delivery with the source's API key, journaled
//! with the delivery, and shared by every enriching target and every attempt
//! (restarts included). Targets without `enrich` keep the exact original
//! bytes; an enriched body is re-signed like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::journal::{DeliveryId, DeliveryRecord, Journal};
use crate::parallel::{EnrichmentSource, ParallelApis, enriched_body};

/// What an enriching target is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enriched {
    /// Nothing to add (another event type, or a task still running).
    NotApplicable,
    /// The payload with the content attached.
    Body(Vec<u8>),
    /// The content could not be fetched (after the API client's retries).
    Failed(String),
}

type Fetch = Arc<OnceCell<Result<Arc<serde_json::Value>, String>>>;

/// The most content attached to one delivery (it is journaled, and sent
/// with every attempt).
const MAX_ENRICHMENT: usize = 4 << 20;
/// How long an attempt waits for the content, retries included.
const ENRICH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// Removes a finished (or abandoned) fetch from the map, unless a newer one
/// took its place.
struct FetchDone<'a> {
    fetching: &'a Mutex<HashMap<DeliveryId, Fetch>>,
    id: DeliveryId,
    fetch: Fetch,
}

impl Drop for FetchDone<'_> {
    fn drop(&mut self) {
        let mut fetching = self.fetching.lock().expect("not poisoned");
        if fetching.get(&self.id).is_some_and(|current| Arc::ptr_eq(current, &self.fetch)) {
            fetching.remove(&self.id);
        }
    }
}

pub struct Enricher {
    apis: Arc<ParallelApis>,
    journal: Arc<Journal>,
    /// Fetches in progress, one per delivery, shared by concurrent attempts.
    fetching: Mutex<HashMap<DeliveryId, Fetch>>,
}

impl Enricher {
    pub fn new(apis: Arc<ParallelApis>, journal: Arc<Journal>) -> Self {
        Enricher { apis, journal, fetching: Mutex::new(HashMap::new()) }
    }

    /// The body an enriching target gets for `record`.
    pub async fn enrich(&self, record: &DeliveryRecord) -> Enriched {
        let Some(source) = EnrichmentSource::for_body(&record.body) else { return Enriched::NotApplicable };
        let attach = |content: &serde_json::Value| match enriched_body(&record.body, &source, content) {
            Some(body) => Enriched::Body(body),
            None => Enriched::Failed("the payload has no data object to attach to".to_owned()),
        };
        let fetch = self.fetching.lock().expect("not poisoned").entry(record.id).or_default().clone();
        // Leaves the map however this ends (an attempt aborted at shutdown too).
        let _done = FetchDone { fetching: &self.fetching, id: record.id, fetch: fetch.clone() };
        let fetched =
            match tokio::time::timeout(ENRICH_DEADLINE, fetch.get_or_init(|| self.fetch(record, &source)))
                .await
            {
                Ok(fetched) => fetched.clone(),
                Err(_) => Err(format!("no answer within {ENRICH_DEADLINE:?}")),
            };
        match fetched {
            Ok(content) => attach(&content),
            Err(err) => Enriched::Failed(err),
        }
    }

    /// The journaled content, or fetches and journals it (only a success is
    /// journaled: a later attempt tries the API again).
    async fn fetch(
        &self,
        record: &DeliveryRecord,
        source: &EnrichmentSource,
    ) -> Result<Arc<serde_json::Value>, String> {
        // Fetched before (by another target, an earlier attempt, before a
        // restart): journaled with the delivery.
        match self.journal.enrichment(record.id) {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(content) => return Ok(Arc::new(content)),
                Err(err) => {
                    tracing::warn!(delivery_id = %record.id, error = %err, "journaled enrichment unreadable; fetching again")
                }
            },
            Ok(None) => {}
            Err(err) => return Err(err.to_string()),
        }
        let api = self.apis.get(&record.source).ok_or_else(|| {
            format!("source {:?} has no [sources.{}.parallel] API key", record.source, record.source)
        })?;
        let content = api.enrichment(source, MAX_ENRICHMENT).await.map_err(|err| err.to_string())?;
        if content.as_array().is_some_and(Vec::is_empty) {
            // Not indexed yet, most likely: try again later rather than
            // attach "no events" for good.
            return Err("the event group has no events yet".to_owned());
        }
        let bytes = serde_json::to_vec(&content).map_err(|err| err.to_string())?;
        if bytes.len() > MAX_ENRICHMENT {
            return Err(format!(
                "the content is {} bytes, over the {MAX_ENRICHMENT}-byte limit",
                bytes.len()
            ));
        }
        if let Err(err) = self.journal.save_enrichment(record.id, bytes).await {
            // Still usable now; the next attempt fetches again.
            tracing::warn!(delivery_id = %record.id, error = %err, "could not journal the enrichment");
        }
        tracing::debug!(delivery_id = %record.id, field = source.field(), "enrichment fetched");
        Ok(Arc::new(content))
    }
}
