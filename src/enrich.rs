//! Enrichment: a target with `enrich = true` gets a thin event with the
//! content its consumer would otherwise fetch itself — a detection's events
//! (`data.events`), a completed task run's result (`data.result`). The
//! content is fetched once per delivery with the source's API key, journaled
//! with the delivery, and shared by every enriching target and every attempt
//! (restarts included). Targets without `enrich` keep the exact original
//! bytes; an enriched body is re-signed like any other.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::config::Config;
use crate::journal::{DeliveryId, DeliveryRecord, Journal};
use crate::live::Live;
use crate::parallel::{EnrichmentSource, ParallelApi, enriched_body};

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

pub struct Enricher {
    apis: Live<BTreeMap<String, Arc<ParallelApi>>>,
    journal: Arc<Journal>,
    /// Fetches in progress, one per delivery, shared by concurrent attempts.
    fetching: Mutex<HashMap<DeliveryId, Fetch>>,
}

impl Enricher {
    pub fn new(config: &Config, journal: Arc<Journal>) -> Self {
        Enricher { apis: Live::new(apis(config)), journal, fetching: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn reload(&self, config: &Config) {
        self.apis.set(apis(config));
    }

    /// The body an enriching target gets for `record`.
    pub async fn enrich(&self, record: &DeliveryRecord) -> Enriched {
        let Some(source) = EnrichmentSource::for_body(&record.body) else { return Enriched::NotApplicable };
        let attach = |content: &serde_json::Value| match enriched_body(&record.body, &source, content) {
            Some(body) => Enriched::Body(body),
            None => Enriched::Failed("the payload has no data object to attach to".to_owned()),
        };
        match self.journal.enrichment(record.id) {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(content) => return attach(&content),
                Err(err) => {
                    tracing::warn!(delivery_id = %record.id, error = %err, "journaled enrichment unreadable; fetching again")
                }
            },
            Ok(None) => {}
            Err(err) => return Enriched::Failed(err.to_string()),
        }
        let fetch = self.fetching.lock().expect("not poisoned").entry(record.id).or_default().clone();
        let fetched = fetch.get_or_init(|| self.fetch(record, &source)).await.clone();
        {
            let mut fetching = self.fetching.lock().expect("not poisoned");
            if fetching.get(&record.id).is_some_and(|current| Arc::ptr_eq(current, &fetch)) {
                fetching.remove(&record.id);
            }
        }
        match fetched {
            Ok(content) => attach(&content),
            Err(err) => Enriched::Failed(err),
        }
    }

    /// Fetches and journals the content (only a success is journaled: a
    /// later attempt tries the API again).
    async fn fetch(
        &self,
        record: &DeliveryRecord,
        source: &EnrichmentSource,
    ) -> Result<Arc<serde_json::Value>, String> {
        let api = self.apis.get().get(&record.source).cloned().ok_or_else(|| {
            format!("source {:?} has no [sources.{}.parallel] API key", record.source, record.source)
        })?;
        let content = api.enrichment(source).await.map_err(|err| err.to_string())?;
        let bytes = serde_json::to_vec(&content).map_err(|err| err.to_string())?;
        if let Err(err) = self.journal.save_enrichment(record.id, bytes).await {
            // Still usable now; the next attempt fetches again.
            tracing::warn!(delivery_id = %record.id, error = %err, "could not journal the enrichment");
        }
        tracing::debug!(delivery_id = %record.id, field = source.field(), "enrichment fetched");
        Ok(Arc::new(content))
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
