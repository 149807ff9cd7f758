//! One target's lane: takes the next job from its in-memory queue (fresh
//! before retries, without starving retries; see `queue`), waits for the
//! breaker, a concurrency permit and the rate limiter, sends, and records the
//! outcome in the journal.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::Uri;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::Inbox;
use super::breaker::{Admission, Breaker, BreakerState};
use super::outbound::{self, AttemptInfo, HttpClient, Signer};
use super::policy::{self, AttemptOutcome, Decision};
use super::queue::{LaneQueue, Next, Paging, Refill};
use crate::config::{EnrichFailure, RateLimit, RetryConfig, TargetConfig};
use crate::enrich::{Enriched, Enricher};
use crate::journal::{Attempt, DeliveryId, Journal, JournalError, QueueClass, QueueEntry};
use crate::live::Live;
use crate::metrics::{AttemptResult, Metrics, TargetGauges};
use crate::time::now_ms;
use rustls_pki_types::CertificateDer;

/// How long an idle lane sleeps when nothing wakes it (a safety net only).
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// Most attempts of one lane that are sent or answered and not yet recorded.
/// Bounds how far a fast target runs ahead of the disk: the memory those
/// attempts hold, and the answered attempts a crash can make the lane repeat
/// (a few group commits' worth; without it, as many as the target answers
/// while the disk syncs).
pub(super) const UNRECORDED_PER_LANE: usize = 256;

/// How often a lane looks again while the journal refuses writes.
const JOURNAL_RECHECK_MS: u64 = 1_000;

/// How long after a job could not be read the lane reads its queue from
/// the journal again (see [`Lane::leave_pending`]): soon enough that a
/// passing read error costs a delivery half a minute, not a restart; rarely
/// enough that a job that never loads is an error line every half minute.
#[cfg(not(test))]
const REREAD_AFTER_MS: u64 = 30_000;
#[cfg(test)]
const REREAD_AFTER_MS: u64 = 300;

/// What a target's config says about sending; swapped whole by a reload.
/// An attempt uses the snapshot it started with.
struct LaneSettings {
    source: String,
    url: Uri,
    rate: Option<RateLimit>,
    concurrency: u32,
    signer: Signer,
    timeout: Duration,
    retry: RetryConfig,
    ca_certs: Vec<CertificateDer<'static>>,
    client: HttpClient,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    enrich: Option<EnrichFailure>,
}

impl LaneSettings {
    /// Keeps the previous connection pool and rate-limit bucket when the
    /// target's CA files and rate did not change.
    fn new(target: &TargetConfig, previous: Option<&LaneSettings>) -> Self {
        let client = match previous {
            Some(previous) if previous.ca_certs == target.ca_certs => previous.client.clone(),
            _ => outbound::client(target),
        };
        let limiter = match previous {
            Some(previous) if previous.rate == target.rate_limit => previous.limiter.clone(),
            _ => target.rate_limit.map(|rate| {
                Arc::new(RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst)))
            }),
        };
        LaneSettings {
            source: target.source.clone(),
            url: target.url.clone(),
            rate: target.rate_limit,
            concurrency: target.concurrency.get(),
            signer: Signer::new(target),
            timeout: target.timeout,
            retry: target.retry,
            ca_certs: target.ca_certs.clone(),
            client,
            limiter,
            enrich: target.enrich,
        }
    }
}

pub(crate) struct Lane {
    name: String,
    settings: Live<LaneSettings>,
    /// Sized to the configured concurrency (resized by a reload).
    permits: Arc<Semaphore>,
    /// [`UNRECORDED_PER_LANE`] permits, each held from before an attempt
    /// is picked until its outcome is recorded.
    unrecorded: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    /// Pending jobs not in flight; a job leaves it when its attempt starts
    /// and comes back (as a retry) only through `record_attempt`.
    pub(super) inbox: Arc<Inbox>,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    /// Deliveries whose attempt started and is not yet recorded.
    in_flight: Mutex<Flight>,
    enricher: Arc<Enricher>,
    /// When the pager reads the queue again after a job could not be read
    /// (`now_ms`; 0: not wanted).
    reread_at_ms: std::sync::atomic::AtomicU64,
}

impl Lane {
    pub(crate) fn new(
        target: &TargetConfig,
        journal: Arc<Journal>,
        inbox: Arc<Inbox>,
        metrics: Arc<Metrics>,
        enricher: Arc<Enricher>,
    ) -> Self {
        Lane {
            name: target.name.clone(),
            settings: Live::new(LaneSettings::new(target, None)),
            permits: Arc::new(Semaphore::new(target.concurrency.get() as usize)),
            unrecorded: Arc::new(Semaphore::new(UNRECORDED_PER_LANE)),
            breaker: Mutex::new(Breaker::new(target.breaker.failures.get(), target.breaker.probe_interval)),
            inbox,
            journal,
            metrics,
            in_flight: Mutex::new(Flight::default()),
            enricher,
            reread_at_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Unrecorded-attempt permits free now.
    #[cfg(test)]
    pub(super) fn unrecorded_available(&self) -> usize {
        self.unrecorded.available_permits()
    }

    /// Takes `count` unrecorded-attempt permits, as that many attempts
    /// awaiting their write would.
    #[cfg(test)]
    pub(super) async fn hold_unrecorded(&self, count: usize) -> tokio::sync::OwnedSemaphorePermit {
        self.unrecorded.clone().acquire_many_owned(count as u32).await.expect("never closed")
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Takes a reloaded target config: URL, secrets, rate, concurrency,
    /// timeout, retry policy, breaker thresholds. Attempts in flight finish
    /// on the settings they started with. Also undoes [`Lane::retire`].
    pub(crate) fn reconfigure(&self, target: &TargetConfig) {
        let previous = self.settings.get();
        let (old, new) = (previous.concurrency, target.concurrency.get());
        self.settings.set(LaneSettings::new(target, Some(&previous)));
        if new > old {
            self.permits.add_permits((new - old) as usize);
        } else if new < old {
            // Shrink as permits come back: attempts in flight are not cut short.
            let permits = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(taken) = permits.acquire_many_owned(old - new).await {
                    taken.forget();
                }
            });
        }
        self.breaker
            .lock()
            .expect("not poisoned")
            .reconfigure(target.breaker.failures.get(), target.breaker.probe_interval);
        self.inbox.retired.store(false, std::sync::atomic::Ordering::Release);
        self.inbox.bell.notify_one();
    }

    /// The target left the config: stop sending. Its pending jobs stay in
    /// the journal for the day it comes back (or a restart with it).
    pub(crate) fn retire(&self) {
        // Under the queue lock, where jobs are taken: once this returns, no
        // job is taken any more, and every one taken before is in flight
        // (what a forget checks).
        let _queue = self.inbox.queue.lock().expect("not poisoned");
        self.inbox.retired.store(true, std::sync::atomic::Ordering::Release);
        self.inbox.bell.notify_one();
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.inbox.retired.load(std::sync::atomic::Ordering::Acquire)
    }

    /// What `GET /v1/targets` shows of this lane.
    pub(crate) fn describe(&self, now_ms: u64) -> serde_json::Value {
        let gauges = self.gauges(now_ms);
        let settings = self.settings.get();
        let paused = self.inbox.paused.load(std::sync::atomic::Ordering::Acquire);
        let breaker = match self.breaker.lock().expect("not poisoned").state() {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::Probing => "probing",
        };
        let state = if self.is_retired() {
            "removed"
        } else if paused {
            "paused"
        } else if gauges.breaker_open {
            "breaker_open"
        } else {
            "active"
        };
        let (delivered, retried, dead) = self.metrics.attempt_counts(&self.name);
        serde_json::json!({
            "name": self.name,
            "source": settings.source,
            "url": settings.url.to_string(),
            "state": state,
            "paused": paused,
            "breaker": breaker,
            "pending": gauges.pending,
            "replay_pending": self.inbox.queue.lock().expect("not poisoned").replays(),
            "dead": gauges.dead,
            "in_flight": self.in_flight.lock().expect("not poisoned").attempts(),
            "oldest_pending_age_seconds": gauges.oldest_pending_age.map(|age| age.as_secs_f64()),
            "rate_limit": settings.rate.map(|r| serde_json::json!({"per_second": r.per_second.get(), "burst": r.burst.get()})),
            "concurrency": settings.concurrency,
            "attempts_since_start": {"delivered": delivered, "retry": retried, "dead": dead},
        })
    }

    /// Attempts started whose outcome is not yet written.
    pub(crate) fn attempts_in_flight(&self) -> usize {
        self.in_flight.lock().expect("not poisoned").attempts()
    }

    /// Lets go of every job it holds (a removed target's, forgotten in the
    /// journal): a retired lane never sends them, and its gauges would
    /// count them pending for good.
    pub(crate) fn drop_queue(&self) {
        *self.inbox.queue.lock().expect("not poisoned") = crate::delivery::queue::LaneQueue::default();
    }

    /// Pauses or resumes sending; jobs keep accumulating while paused, and
    /// attempts already in flight finish. Persisted before it takes effect.
    pub(crate) fn set_paused(&self, paused: bool) -> Result<(), crate::journal::JournalError> {
        self.journal.set_paused(&self.name, paused)?;
        self.inbox.paused.store(paused, std::sync::atomic::Ordering::Release);
        self.inbox.bell.notify_one();
        tracing::info!(target_name = %self.name, paused, "target {}", if paused { "paused" } else { "resumed" });
        Ok(())
    }

    /// Queues the fresh job of `delivery`, handed over by ingress once it is
    /// journaled, unless its attempt is under way already: a reopen's resync
    /// can find a fresh job in the journal first, and the lane take it,
    /// before ingress's hand-off arrives; queued again it would be sent
    /// twice at once. (The attempt under way records it, or queues its retry.)
    pub(super) fn deliver_fresh(&self, delivery: DeliveryId) {
        let entry = QueueEntry::new(QueueClass::Fresh, delivery.received_at_ms, delivery);
        // Under the queue's lock, then the in-flight set's: the lanes' order.
        self.inbox.push_unless(entry, || {
            self.in_flight.lock().expect("not poisoned").attempting.contains_key(&delivery)
        });
    }

    /// Pending jobs (queued and in flight), the oldest one's age, the breaker.
    pub(crate) fn gauges(&self, now_ms: u64) -> TargetGauges {
        let queue = self.inbox.queue.lock().expect("not poisoned");
        let in_flight = self.in_flight.lock().expect("not poisoned").attempts();
        TargetGauges {
            pending: queue.pending() + in_flight,
            oldest_pending_age: queue
                .oldest_arrival_ms()
                .map(|arrived| Duration::from_millis(now_ms.saturating_sub(arrived))),
            breaker_open: !matches!(self.breaker.lock().expect("not poisoned").state(), BreakerState::Closed),
            dead: self.journal.dead_count(&self.name),
        }
    }

    /// Queues the first page of every class of this target's jobs in the
    /// journal, and its fresh jobs not yet in the queue index, unless queued
    /// or in flight here already; returns how many it queued. At the start,
    /// and after a reopen (to pick up the jobs whose outcomes could not be
    /// recorded). Entries already queued stay: each is durable, pushed only
    /// after its write was flushed. Blocking: reads sled.
    pub(crate) fn reload(&self) -> Result<usize, JournalError> {
        let refills = self.inbox.queue.lock().expect("not poisoned").refills_from_start();
        self.read_and_queue(|journal, name| {
            let pages = refills
                .iter()
                .map(|refill| journal.queued_page(name, refill.class, refill.from, refill.limit, true))
                .collect::<Result<Vec<_>, _>>()?;
            let unindexed = journal.unindexed_fresh_jobs(name)?;
            Ok(move |queue: &mut LaneQueue, skip: &dyn Fn(DeliveryId) -> bool| {
                let paged: usize = refills
                    .into_iter()
                    .zip(pages)
                    .map(|(refill, page)| queue.refilled(refill, page, skip))
                    .sum();
                paged
                    + unindexed
                        .into_iter()
                        .filter(|entry| !skip(entry.delivery) && queue.push(*entry))
                        .count()
            })
        })
    }

    /// Reads the next page of a class whose jobs past the bound wait in the
    /// journal (see `queue`). Blocking: reads sled.
    fn refill(&self, refill: Refill) -> Result<usize, JournalError> {
        let generation = self.journal.generation();
        self.read_and_queue(|journal, name| {
            let page = journal.queued_page(name, refill.class, refill.from, refill.limit, false)?;
            // A write failed while the page was read: it may show what the
            // reopen takes back (see `page`). (A flush that fails only after
            // this check still slips through; the window is the read's.)
            if !journal.is_writable() || journal.generation() != generation {
                return Err(JournalError::Storage("the journal failed during a page read".into()));
            }
            Ok(move |queue: &mut LaneQueue, skip: &dyn Fn(DeliveryId) -> bool| {
                queue.refilled(refill, page, skip)
            })
        })
    }

    /// Reads the journal with `read`, then queues what it found with the
    /// closure it returned, skipping each delivery in flight now or since
    /// the read began: a job read as pending may have been sent and
    /// settled (or sent and queued again as a retry) while it was read.
    fn read_and_queue<Q>(
        &self,
        read: impl FnOnce(&Journal, &str) -> Result<Q, JournalError>,
    ) -> Result<usize, JournalError>
    where
        Q: FnOnce(&mut LaneQueue, &dyn Fn(DeliveryId) -> bool) -> usize,
    {
        let reading = Reading::begin(&self.in_flight);
        let found = read(&self.journal, &self.name);
        let added = {
            let mut queue = self.inbox.queue.lock().expect("not poisoned");
            let flight = self.in_flight.lock().expect("not poisoned");
            let added = found.map(|queue_them| queue_them(&mut queue, &|id| flight.held(reading.began, id)));
            if queue.needs_paging() {
                self.inbox.pager.notify_one();
            }
            added
        };
        drop(reading);
        self.inbox.bell.notify_one();
        added
    }

    /// Keeps the lane's memory bounded beside [`Lane::run`], until `stop`:
    /// lets the jobs past the bound go once each is in the journal's queue
    /// index, and reads the next page back when a class runs low (see
    /// `queue`). A journal that refuses the work leaves the jobs in memory
    /// and is asked again later.
    pub(crate) async fn page(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            // After a storage failure sled's tree still shows writes that
            // never reached the disk (a retry's new entry): a page read
            // now could queue a job under an entry the reopen takes back.
            // The resync after the reopen reads the queue again.
            if !self.journal.is_writable() {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(JOURNAL_RECHECK_MS)) => {}
                    _ = stop.wait_for(|stopping| *stopping) => {}
                }
                continue;
            }
            if self.reread_if_due().await {
                continue;
            }
            let work = self.inbox.queue.lock().expect("not poisoned").paging();
            let done = match work {
                None => {
                    // Woken for more paging, for a stop, or when a re-read is due.
                    let reread = match self.reread_at_ms.load(Ordering::Acquire) {
                        0 => None,
                        due => Some(Duration::from_millis(due.saturating_sub(now_ms()))),
                    };
                    tokio::select! {
                        () = self.inbox.pager.notified() => {}
                        () = async {
                            match reread {
                                Some(wait) => tokio::time::sleep(wait).await,
                                None => std::future::pending().await,
                            }
                        } => {}
                        _ = stop.wait_for(|stopping| *stopping) => {}
                    }
                    continue;
                }
                Some(Paging::Spill(class, entries)) => self.spill(class, entries).await,
                Some(Paging::Refill(refill)) => {
                    let lane = self.clone();
                    tokio::task::spawn_blocking(move || lane.refill(refill)).await.unwrap_or_else(|err| {
                        Err(JournalError::Storage(format!("the page read did not run: {err}")))
                    })
                }
            };
            if let Err(err) = done {
                tracing::warn!(target_name = %self.name, error = %err, "cannot page the lane's queue; holding its jobs in memory for now");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(JOURNAL_RECHECK_MS)) => {}
                    _ = stop.wait_for(|stopping| *stopping) => {}
                }
            }
        }
    }

    /// Lets `entries` go from memory: fresh ones once their queue index
    /// entries are flushed, the others are in the index already.
    async fn spill(&self, class: QueueClass, entries: Vec<QueueEntry>) -> Result<usize, JournalError> {
        if class == QueueClass::Fresh {
            self.journal.index_fresh_jobs(&self.name, &entries).await?;
        }
        self.inbox.queue.lock().expect("not poisoned").evict(class, &entries);
        Ok(entries.len())
    }

    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, grace: Duration) {
        let mut attempts = JoinSet::new();
        loop {
            // Capacity first: a job is picked only when it can go out at once.
            let unrecorded = tokio::select! {
                permit = self.unrecorded.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = stop.wait_for(|stopping| *stopping) => break,
            };
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = stop.wait_for(|stopping| *stopping) => break,
            };
            let Some((entry, probe)) = self.next_job(&mut stop).await else { break };
            // A job dropped here at a stop is still queued in the journal.
            if let Some(limiter) = self.settings.get().limiter.clone() {
                tokio::select! {
                    () = limiter.until_ready() => {}
                    _ = stop.wait_for(|stopping| *stopping) => break,
                }
            }
            let lane = self.clone();
            attempts.spawn(async move {
                lane.attempt(entry, probe, permit).await;
                drop(unrecorded);
            });
            while attempts.try_join_next().is_some() {}
        }
        let in_flight = attempts.len();
        if in_flight > 0 {
            tracing::info!(target_name = %self.name, in_flight, "waiting for in-flight attempts");
        }
        let drained =
            tokio::time::timeout(grace, async { while attempts.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(target_name = %self.name, "grace period over; unfinished attempts stay queued for the next start");
            attempts.abort_all();
        }
    }

    /// Waits until a job may be sent now and takes it, and whether it is the
    /// breaker's probe; `None` when stopping.
    async fn next_job(&self, stop: &mut watch::Receiver<bool>) -> Option<(QueueEntry, bool)> {
        loop {
            if *stop.borrow() {
                return None;
            }
            let now = now_ms();
            let paused = self.inbox.paused.load(std::sync::atomic::Ordering::Acquire) || self.is_retired();
            let wait_until = if paused {
                None // resume (or a reload that brings the target back) rings the bell
            } else if !self.journal.is_writable() {
                // An outcome could not be recorded: sending now would only
                // repeat it later. The reopen's resync rings the bell.
                Some(now + JOURNAL_RECHECK_MS)
            } else {
                let mut queue = self.inbox.queue.lock().expect("not poisoned");
                // Into the in-flight set under the queue lock, so a resync
                // sees every job in one place or the other. (Retired while
                // this task was on its way here: take nothing.)
                let next = if self.is_retired() { Next::Empty } else { queue.next(now) };
                let mut take = |class| {
                    let entry = queue.take(class);
                    if let Some(entry) = &entry {
                        self.in_flight.lock().expect("not poisoned").start(entry.delivery);
                    }
                    if queue.needs_paging() {
                        self.inbox.pager.notify_one();
                    }
                    entry
                };
                match next {
                    Next::Ready(class) => match self.breaker.lock().expect("not poisoned").admit(now) {
                        Admission::Send => return take(class).map(|entry| (entry, false)),
                        Admission::Probe => {
                            let probe = take(class);
                            if let Some(probe) = &probe {
                                tracing::info!(target_name = %self.name, delivery_id = %probe.delivery, "probing paused target");
                            }
                            return probe.map(|entry| (entry, true));
                        }
                        // While a probe is out, its completion rings the bell.
                        Admission::Wait { until_ms } => until_ms,
                    },
                    Next::NotBefore(due_ms) => Some(due_ms),
                    Next::Empty => None,
                }
            };
            let sleep =
                wait_until.map_or(IDLE_RECHECK, |until| Duration::from_millis(until.saturating_sub(now)));
            tokio::select! {
                () = self.inbox.bell.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = stop.wait_for(|stopping| *stopping) => return None,
            }
        }
    }

    /// Sends one job and records its outcome. `permit` is one of the
    /// target's concurrency slots: it bounds requests open at the target, so
    /// it is given back as soon as the answer is in, not after the outcome's
    /// group commit (which would leave the target idle while the disk syncs;
    /// [`UNRECORDED_PER_LANE`] bounds how far sending runs ahead of writing).
    /// `probe`: the breaker's probe, the one attempt whose outcome (or
    /// failure to send) decides whether the paused target resumes.
    async fn attempt(&self, entry: QueueEntry, probe: bool, permit: OwnedSemaphorePermit) {
        // Leaves the in-flight set on every path out of here, before a retry
        // is queued: the retry is a job of its own, which could otherwise be
        // taken and then lose its in-flight mark when this one lands. A read
        // of the journal in between finds the retry's durable entry (see
        // `Flight`), and queuing it twice changes nothing.
        let mut in_flight = InFlight { flight: &self.in_flight, delivery: entry.delivery, recorded: false };
        let settings = self.settings.get();
        let started_ms = now_ms();
        let started = Instant::now();
        // Set when the request never went out (enrichment refused, or it
        // could not be built): that says nothing about the target.
        let not_sent;
        // Set when the job can never be sent to this target as configured now.
        let mut never = false;
        let (outcome, number, job, webhook_id) = match self.load(&entry) {
            Ok(Loaded::Stale { gone }) => {
                // Settled while its entry waited (a resync raced the attempt
                // that settled it), or gone: nothing to send, and an indexed
                // entry would be read again by every reload and page.
                if gone {
                    tracing::warn!(target_name = %self.name, delivery_id = %entry.delivery, "a queued job is gone from the journal; its entry is dropped");
                } else {
                    tracing::debug!(target_name = %self.name, delivery_id = %entry.delivery, "job already settled");
                }
                in_flight.recorded = true;
                self.settle_probe(probe);
                if let Err(err) = self.journal.forget_queue_entry(&self.name, &entry).await {
                    tracing::warn!(target_name = %self.name, delivery_id = %entry.delivery, error = %err, "cannot drop a stale queue entry");
                }
                self.inbox.bell.notify_one();
                return;
            }
            Ok(Loaded::Pending(job, record)) => {
                let mut info = AttemptInfo {
                    number: job.attempts + 1,
                    replay: job.replay.is_some(),
                    now_secs: started_ms / 1000,
                    enrichment: None,
                };
                // An enriching target: the body with Parallel's content
                // attached (re-signed below over exactly these bytes).
                let mut refused = None;
                let mut enriched = None;
                let other_source = record.source != settings.source;
                let replayed_here = if other_source {
                    self.replayed_here_by_name(&job, &record.source, &settings.source)
                } else {
                    Ok(false)
                };
                let replayed_here = match replayed_here {
                    Ok(replayed_here) => replayed_here,
                    Err(err) => {
                        // Unknown, not refused: never dead for a read error.
                        self.leave_pending(
                            &entry,
                            probe,
                            &err,
                            "cannot read the replay that requeued the job",
                        );
                        return;
                    }
                };
                if other_source && !replayed_here {
                    // The target was removed and its name given to a target
                    // of another source (or its source renamed): this
                    // delivery was never routed to it as it is now, and its
                    // payload must not go there unless an operator replays
                    // it there, naming both (see `replay`).
                    never = true;
                    refused = Some(format!(
                        "the target now takes deliveries of source {:?}; this one is from {:?}",
                        settings.source, record.source
                    ));
                } else if let Some(on_failure) = settings.enrich {
                    match self.enricher.enrich(&record).await {
                        Enriched::NotApplicable => {}
                        Enriched::Body(body) => {
                            enriched = Some(record.with_body(body));
                            info.enrichment = Some("attached");
                        }
                        Enriched::Failed(err) => {
                            tracing::warn!(target_name = %self.name, delivery_id = %entry.delivery, error = %err, "enrichment failed");
                            match on_failure {
                                EnrichFailure::SendOriginal => info.enrichment = Some("failed"),
                                EnrichFailure::Wait => refused = Some(format!("enrichment failed: {err}")),
                            }
                        }
                    }
                }
                // Signed as of now: a slow fetch must not leave a stale timestamp.
                info.now_secs = now_ms() / 1000;
                let built = match refused {
                    Some(reason) => Err(reason),
                    None => outbound::build_request(
                        &settings.url,
                        &settings.signer,
                        enriched.as_ref().unwrap_or(&record),
                        &info,
                    ),
                };
                not_sent = built.is_err();
                let outcome = match built {
                    Ok(request) => {
                        tokio::time::timeout(settings.timeout, outbound::send(&settings.client, request))
                            .await
                            .unwrap_or(AttemptOutcome::Timeout)
                    }
                    Err(err) => AttemptOutcome::Failed(err),
                };
                (outcome, info.number, job, record.webhook_id.clone())
            }
            Err(err) => {
                self.leave_pending(&entry, probe, &err, "cannot load the job");
                return;
            }
        };
        let elapsed = started.elapsed();
        let latency_ms = elapsed.as_millis() as u64;
        let now = now_ms();
        let decision = if never {
            Decision::Dead
        } else {
            policy::decide(&settings.retry, number, job.created_at_ms, now, &outcome, jitter())
        };
        let counted = match decision {
            Decision::Delivered => AttemptResult::Delivered,
            Decision::RetryAt(_) => AttemptResult::Retry,
            Decision::Dead => AttemptResult::Dead,
        };
        // The breaker only hears about real sends: a job that cannot be
        // sent must not pause a healthy target, nor (as a probe) keep a
        // paused one paused: the next job probes at once.
        let breaker_change = {
            let mut breaker = self.breaker.lock().expect("not poisoned");
            if not_sent {
                if probe {
                    breaker.probe_unsent(now);
                }
                None
            } else {
                breaker.record(outcome.is_success(), now, probe)
            }
        };
        // The answer is in and the breaker has heard it (a job picked from
        // here on sees a breaker this failure opened): the slot is free.
        drop(permit);
        match breaker_change {
            Some(BreakerState::Open { probe_at_ms }) => tracing::warn!(
                target_name = %self.name, probe_in_ms = probe_at_ms.saturating_sub(now), "target paused by the circuit breaker"
            ),
            Some(BreakerState::Closed) => {
                tracing::info!(target_name = %self.name, "target resumed");
                self.inbox.bell.notify_one(); // the lane need not wait for this write
            }
            _ => {}
        }
        let (status, error) = match &outcome {
            AttemptOutcome::Status { code, .. } => (Some(*code), None),
            other => (None, Some(other.describe())),
        };
        let attempt = Attempt { at_ms: started_ms, latency_ms, status, error };
        // Written by the journal's writer thread with its next group commit.
        let (retry, counted) = match self.journal.record_attempt(&entry, job, attempt, decision).await {
            Ok(retry) => {
                in_flight.recorded = true;
                (retry, counted)
            }
            Err(err) => {
                tracing::error!(
                    target_name = %self.name, delivery_id = %entry.delivery, attempt = number,
                    result = outcome.describe(), error = %err,
                    "cannot record the attempt; the job stays pending and is tried again once the journal recovers"
                );
                // The job stays pending and is tried again after the
                // journal's recovery: counted as dead or delivered now, it
                // would be counted so twice.
                (None, AttemptResult::Retry)
            }
        };
        // Only an outcome that stuck: an unrecorded job stays pending.
        if in_flight.recorded {
            let result = outcome.describe();
            let delivery_id = entry.delivery.to_string();
            match decision {
                Decision::Delivered => tracing::info!(
                    target_name = %self.name, delivery_id, webhook_id, attempt = number, result, latency_ms, "delivered"
                ),
                Decision::RetryAt(at_ms) => tracing::warn!(
                    target_name = %self.name, delivery_id, webhook_id, attempt = number, result, latency_ms,
                    retry_in_ms = at_ms.saturating_sub(now), "attempt failed; will retry"
                ),
                Decision::Dead if never => tracing::error!(
                    target_name = %self.name, delivery_id, webhook_id, result,
                    "job is dead, unsent: the target now takes another source (replay it with --source and --target)"
                ),
                Decision::Dead => tracing::error!(
                    target_name = %self.name, delivery_id, webhook_id, attempt = number, result, latency_ms,
                    "attempt failed; retry budget spent, job is dead (kept for replay)"
                ),
            }
        }
        // Counted once the outcome is recorded and the job is out of flight,
        // so a scrape never sees an attempt both finished and in flight.
        drop(in_flight);
        if let Some(retry) = retry {
            self.inbox.push(retry);
        }
        self.metrics.attempt(&self.name, counted, elapsed);
        // A retry may be queued, and a probe may have settled the breaker.
        self.inbox.bell.notify_one();
    }

    /// Whether a replay that named both this target and `source` requeued
    /// the job while the target took `target_source`, as it still does: the
    /// operator's word that a delivery of another source goes here (a
    /// renamed source). Any other replay leaves the source check on.
    fn replayed_here_by_name(
        &self,
        job: &crate::journal::Job,
        source: &str,
        target_source: &str,
    ) -> Result<bool, crate::journal::JournalError> {
        let Some(replay) = job.replay else { return Ok(false) };
        // A record that cannot be decoded never will be: not the operator's
        // word, so the check stays on (an I/O error is asked again later).
        let summary = crate::journal::unless_corrupt(self.journal.replay_summary(replay), "replay record")?;
        Ok(summary.flatten().is_some_and(|summary| {
            let named = &summary.selection;
            named["source"] == source
                && named["target"] == self.name.as_str()
                && named["target_source"] == target_source
        }))
    }

    /// A job that cannot be read now: left pending in the journal, out of
    /// memory, and the pager reads the queue again after [`REREAD_AFTER_MS`]
    /// (so does a reopen after a storage failure, and the next start). Put
    /// back at once instead, a job that never loads would be every probe
    /// and keep the breaker open. Not the target's doing: the breaker hears
    /// of it only to settle a probe.
    fn leave_pending(&self, entry: &QueueEntry, probe: bool, err: &JournalError, what: &str) {
        tracing::error!(
            target_name = %self.name, delivery_id = %entry.delivery, error = %err,
            "{what}; it stays pending in the journal, read again in {}s", REREAD_AFTER_MS / 1000
        );
        let due = now_ms() + REREAD_AFTER_MS;
        let _ = self.reread_at_ms.compare_exchange(0, due, Ordering::AcqRel, Ordering::Acquire);
        self.inbox.pager.notify_one();
        self.settle_probe(probe);
        self.inbox.bell.notify_one();
    }

    /// The re-read [`Lane::leave_pending`] asked for, once due: true when it ran.
    async fn reread_if_due(self: &Arc<Self>) -> bool {
        let due = self.reread_at_ms.load(Ordering::Acquire);
        if due == 0 || now_ms() < due || !self.journal.is_writable() {
            return false;
        }
        self.reread_at_ms.store(0, Ordering::Release);
        let lane = self.clone();
        match tokio::task::spawn_blocking(move || lane.reload()).await {
            Ok(Ok(queued)) => {
                if queued > 0 {
                    tracing::info!(target_name = %self.name, queued, "read the queue again after a job could not be read");
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(target_name = %self.name, error = %err, "cannot read the queue again; trying later");
                let _ = self.reread_at_ms.compare_exchange(
                    0,
                    now_ms() + REREAD_AFTER_MS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Err(err) => {
                tracing::warn!(target_name = %self.name, error = %err, "the queue re-read did not run")
            }
        }
        true
    }

    /// A probe must come back one way or the other, even when nothing was
    /// sent: the next job probes at once. (An attempt admitted before the
    /// breaker opened leaves it alone: the probe is another one.)
    fn settle_probe(&self, probe: bool) {
        if probe {
            self.breaker.lock().expect("not poisoned").probe_unsent(now_ms());
        }
    }

    fn load(&self, entry: &QueueEntry) -> Result<Loaded, crate::journal::JournalError> {
        // The job first, and the record only for a pending one: a delivery
        // is never deleted while it has a pending job (this one, which the
        // lane holds), so no deleted record is read back into memory.
        let Some(job) = self.journal.job(entry.delivery, &self.name)? else {
            return Ok(Loaded::Stale { gone: true });
        };
        if job.state != crate::journal::JobState::Pending {
            return Ok(Loaded::Stale { gone: false });
        }
        let record = self.journal.record_to_send(entry.delivery)?.ok_or_else(|| {
            crate::journal::JournalError::Storage(format!(
                "delivery {} is missing, with its job to {} pending",
                entry.delivery, self.name
            ))
        })?;
        Ok(Loaded::Pending(job, record))
    }
}

/// What an attempt finds in the journal for its entry.
enum Loaded {
    Pending(crate::journal::Job, Arc<crate::journal::DeliveryRecord>),
    /// The job is settled, or gone: the entry is stale.
    Stale {
        gone: bool,
    },
}

/// The deliveries whose attempt started and is not yet recorded, and,
/// while the journal is being read for jobs to queue, those whose outcome
/// was recorded since: a read that began before may have seen them pending.
#[derive(Default)]
struct Flight {
    /// Attempts under way per delivery: normally one, but a replay can
    /// requeue a job whose last attempt is still being recorded, and the
    /// delivery stays held until both have landed.
    attempting: HashMap<DeliveryId, u32>,
    /// Recorded during a read, and when (a tick of `clock`).
    landed: HashMap<DeliveryId, u64>,
    /// When each read going on began (a reopen's and the pager's may overlap).
    reads: Vec<u64>,
    clock: u64,
}

impl Flight {
    fn start(&mut self, id: DeliveryId) {
        *self.attempting.entry(id).or_default() += 1;
    }

    /// Attempts started whose outcome is not yet written.
    fn attempts(&self) -> usize {
        self.attempting.values().map(|&n| n as usize).sum()
    }

    fn begin_read(&mut self) -> u64 {
        self.clock += 1;
        self.reads.push(self.clock);
        self.clock
    }

    /// Whether a read that began at `read` must leave `id` alone.
    fn held(&self, read: u64, id: DeliveryId) -> bool {
        self.attempting.contains_key(&id) || self.landed.get(&id).is_some_and(|&at| at > read)
    }

    /// The attempt of `id` is over; `recorded`: its outcome is written (if
    /// not, its queue entry still stands and a read may queue it again).
    fn land(&mut self, id: DeliveryId, recorded: bool) {
        if let Some(attempts) = self.attempting.get_mut(&id) {
            *attempts -= 1;
            if *attempts == 0 {
                self.attempting.remove(&id);
            }
        }
        if recorded && !self.reads.is_empty() {
            self.clock += 1;
            self.landed.insert(id, self.clock);
        }
    }

    fn read_done(&mut self, read: u64) {
        self.reads.retain(|&began| began != read);
        match self.reads.iter().min() {
            Some(&oldest) => self.landed.retain(|_, at| *at > oldest),
            None => self.landed.clear(),
        }
    }
}

/// A read of the journal for jobs to queue, going on until dropped.
struct Reading<'a> {
    flight: &'a Mutex<Flight>,
    began: u64,
}

impl<'a> Reading<'a> {
    fn begin(flight: &'a Mutex<Flight>) -> Self {
        let began = flight.lock().expect("not poisoned").begin_read();
        Reading { flight, began }
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.flight.lock().expect("not poisoned").read_done(self.began);
    }
}

/// Takes a delivery out of the lane's in-flight set when dropped.
struct InFlight<'a> {
    flight: &'a Mutex<Flight>,
    delivery: DeliveryId,
    /// Set once the attempt's outcome is written, or the job was settled.
    recorded: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.flight.lock().expect("not poisoned").land(self.delivery, self.recorded);
    }
}

/// Uniform in [0, 1).
fn jitter() -> f64 {
    getrandom::u64().map_or(0.5, |bits| (bits >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_recorded_during_a_read_is_left_alone_by_that_read_only() {
        let id = |seq| DeliveryId { received_at_ms: 1, seq };
        let mut flight = Flight::default();
        (1..=4).for_each(|n| flight.start(id(n)));
        flight.land(id(1), true);
        assert!(!flight.held(0, id(1)), "no read going on: gone at once");

        let first = flight.begin_read();
        flight.land(id(2), true);
        assert!(flight.held(first, id(2)), "the read may have seen it pending");
        // A read that begins later sees its outcome: nothing to leave alone.
        let second = flight.begin_read();
        assert!(!flight.held(second, id(2)));
        // Not recorded (the write failed): its queue entry stands, take it.
        flight.land(id(3), false);
        assert!(!flight.held(first, id(3)) && !flight.held(second, id(3)));
        assert!(flight.held(first, id(4)), "still attempting");

        flight.read_done(first);
        flight.land(id(4), true);
        assert!(flight.held(second, id(4)));
        assert!(!flight.landed.contains_key(&id(2)), "forgotten once no read began before it");
        flight.read_done(second);
        assert!(flight.landed.is_empty() && flight.reads.is_empty());
    }

    /// A replay can requeue a job whose attempt is still being recorded; the
    /// delivery is held until both attempts have landed, or a read would
    /// queue it a third time while the second is still sending.
    #[test]
    fn a_delivery_attempted_twice_at_once_is_held_until_both_land() {
        let id = DeliveryId { received_at_ms: 1, seq: 7 };
        let mut flight = Flight::default();
        flight.start(id);
        flight.start(id);
        assert_eq!(flight.attempts(), 2);
        let read = flight.begin_read();
        flight.land(id, false);
        assert!(flight.held(read, id), "the second attempt is still under way");
        flight.land(id, false);
        assert!(!flight.held(read, id));
        assert_eq!(flight.attempts(), 0);
    }

    #[test]
    fn a_read_that_panics_still_ends() {
        let flight = Mutex::new(Flight::default());
        let panicked = std::panic::catch_unwind(|| {
            let _reading = Reading::begin(&flight);
            panic!("a read gone wrong");
        });
        assert!(panicked.is_err());
        assert!(flight.lock().unwrap().reads.is_empty(), "no read left open to hold jobs back");
    }
}
