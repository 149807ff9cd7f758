//! The delivery engine: one lane per target drains that target's queue in the
//! journal, re-signs each delivery with the target's secret and POSTs it,
//! within the target's rate limit, concurrency cap and circuit breaker, and
//! records every attempt. Lanes share nothing but the journal, so a slow,
//! failing or paused target never delays another.
//!
//! - [`policy`]: pure retry decisions and `Retry-After` parsing.
//! - [`breaker`]: the pure per-target circuit breaker.
//! - [`queue`]: the pure in-memory order of a lane's pending jobs.
//! - `lane`: the per-target loop (I/O).
//! - `outbound`: building and sending one request.

pub mod breaker;
mod lane;
pub mod outbound;
pub mod policy;
pub mod queue;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::journal::{DeliveryId, Journal, JournalError, QueueClass, QueueEntry};
use crate::metrics::{Metrics, TargetGauges};
use lane::Lane;
use queue::LaneQueue;

/// A lane's pending jobs, the bell that tells it something changed, and the
/// operator's pause switch.
#[derive(Default)]
pub(crate) struct Inbox {
    queue: Mutex<LaneQueue>,
    bell: Notify,
    paused: std::sync::atomic::AtomicBool,
}

impl Inbox {
    pub(crate) fn push(&self, entry: QueueEntry) {
        self.queue.lock().expect("not poisoned").push(entry);
        self.bell.notify_one();
    }
}

/// Hands newly journaled jobs to their lanes.
#[derive(Clone, Default)]
pub struct Inboxes(Arc<HashMap<String, Arc<Inbox>>>);

impl Inboxes {
    /// Queues the fresh job of `delivery` for `target` (already durable in the
    /// journal) and wakes the target's lane.
    pub fn deliver(&self, target: &str, delivery: DeliveryId) {
        if let Some(inbox) = self.0.get(target) {
            inbox.push(QueueEntry::new(target, QueueClass::Fresh, delivery.received_at_ms, delivery));
        }
    }
}

/// Every lane of the configured targets, ready to run.
pub struct Dispatcher {
    lanes: Arc<Vec<Arc<Lane>>>,
    inboxes: Inboxes,
}

/// The lanes as the admin API sees them: live figures, pause and resume.
#[derive(Clone)]
pub struct LaneStatus(Arc<Vec<Arc<Lane>>>);

impl LaneStatus {
    pub fn gauges(&self, now_ms: u64) -> std::collections::BTreeMap<String, TargetGauges> {
        self.0.iter().map(|lane| (lane.name().to_owned(), lane.gauges(now_ms))).collect()
    }

    /// One JSON object per target, in name order.
    pub fn describe(&self, now_ms: u64) -> Vec<serde_json::Value> {
        let mut lanes: Vec<&Arc<Lane>> = self.0.iter().collect();
        lanes.sort_by(|a, b| a.name().cmp(b.name()));
        lanes.into_iter().map(|lane| lane.describe(now_ms)).collect()
    }

    /// Hands requeued (replayed) jobs, already durable, to their lanes.
    pub fn enqueue(&self, entries: Vec<(String, QueueEntry)>) {
        let mut woken = std::collections::HashSet::new();
        for (target, entry) in entries {
            let Some(lane) = self.0.iter().find(|lane| lane.name() == target) else { continue };
            lane.inbox.queue.lock().expect("not poisoned").push(entry);
            if woken.insert(target) {
                lane.inbox.bell.notify_one();
            }
        }
    }

    /// Pauses or resumes a target; `Ok(None)` when there is no such target.
    pub fn set_paused(
        &self,
        target: &str,
        paused: bool,
        now_ms: u64,
    ) -> Result<Option<serde_json::Value>, JournalError> {
        let Some(lane) = self.0.iter().find(|lane| lane.name() == target) else { return Ok(None) };
        lane.set_paused(paused)?;
        Ok(Some(lane.describe(now_ms)))
    }
}

impl Dispatcher {
    /// Builds a lane per target and loads its pending jobs from the journal
    /// (call before ingress starts, so no job is loaded twice).
    pub fn new(config: &Config, journal: Arc<Journal>, metrics: Arc<Metrics>) -> Result<Self, JournalError> {
        let mut lanes = Vec::new();
        let mut inboxes = HashMap::new();
        for target in config.targets.values() {
            let inbox = Arc::new(Inbox::default());
            if journal.is_paused(&target.name)? {
                tracing::warn!(target_name = %target.name, "target is paused (resume it through the admin API)");
                inbox.paused.store(true, std::sync::atomic::Ordering::Release);
            }
            let pending = journal.queued(&target.name)?;
            if !pending.is_empty() {
                tracing::info!(target_name = %target.name, pending = pending.len(), "resuming pending jobs");
            }
            for entry in pending {
                inbox.push(entry);
            }
            inboxes.insert(target.name.clone(), inbox.clone());
            lanes.push(Arc::new(Lane::new(target, journal.clone(), inbox, metrics.clone())));
        }
        Ok(Dispatcher { lanes: Arc::new(lanes), inboxes: Inboxes(Arc::new(inboxes)) })
    }

    pub fn inboxes(&self) -> Inboxes {
        self.inboxes.clone()
    }

    pub fn status(&self) -> LaneStatus {
        LaneStatus(self.lanes.clone())
    }

    /// Runs every lane until `stop` turns true, then gives in-flight attempts
    /// `grace` to finish and record their outcomes. Jobs not finished stay
    /// queued for the next start.
    pub async fn run(self, stop: watch::Receiver<bool>, grace: Duration) {
        let lanes: Vec<_> =
            self.lanes.iter().map(|lane| tokio::spawn(lane.clone().run(stop.clone(), grace))).collect();
        for lane in lanes {
            let _ = lane.await;
        }
    }
}
