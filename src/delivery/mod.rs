//! The delivery engine: one lane per target drains that target's queue in the
//! journal, re-signs each delivery with the target's secret and POSTs it,
//! within the target's rate limit, concurrency cap and circuit breaker, and
//! records every attempt. Lanes share nothing but the journal, so a slow,
//! failing or paused target never delays another.
//!
//! - [`policy`]: pure retry decisions and `Retry-After` parsing.
//! - [`breaker`]: the pure per-target circuit breaker.
//! - `lane`: the per-target loop (I/O).
//! - `outbound`: building and sending one request.

pub mod breaker;
mod lane;
pub mod outbound;
pub mod policy;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::journal::Journal;
use lane::Lane;

/// Wakes a target's lane when new work is queued for it.
#[derive(Clone, Default)]
pub struct Wakers(Arc<HashMap<String, Arc<Notify>>>);

impl Wakers {
    pub fn wake(&self, target: &str) {
        if let Some(notify) = self.0.get(target) {
            notify.notify_one();
        }
    }
}

/// Every lane of the configured targets, ready to run.
pub struct Dispatcher {
    lanes: Vec<Arc<Lane>>,
    wakers: Wakers,
}

impl Dispatcher {
    pub fn new(config: &Config, journal: Arc<Journal>) -> Self {
        let lanes: Vec<Arc<Lane>> =
            config.targets.values().map(|target| Arc::new(Lane::new(target, journal.clone()))).collect();
        let wakers = lanes.iter().map(|lane| (lane.name().to_owned(), lane.waker())).collect();
        Dispatcher { lanes, wakers: Wakers(Arc::new(wakers)) }
    }

    pub fn wakers(&self) -> Wakers {
        self.wakers.clone()
    }

    /// Runs every lane until `stop` turns true, then gives in-flight attempts
    /// `grace` to finish and record their outcomes. Jobs not finished stay
    /// queued for the next start.
    pub async fn run(self, stop: watch::Receiver<bool>, grace: Duration) {
        let lanes: Vec<_> =
            self.lanes.into_iter().map(|lane| tokio::spawn(lane.run(stop.clone(), grace))).collect();
        for lane in lanes {
            let _ = lane.await;
        }
    }
}
