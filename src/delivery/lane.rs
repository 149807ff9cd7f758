//! One target's lane: picks the next job from the journal (fresh before
//! retries, without starving retries), waits for the breaker, a concurrency
//! permit and the rate limiter, sends, and records the outcome.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hyper::Uri;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use super::breaker::{Admission, Breaker, BreakerState};
use super::outbound::{self, AttemptInfo, HttpClient, Signer};
use super::policy::{self, AttemptOutcome, Decision};
use crate::config::{RetryConfig, TargetConfig};
use crate::journal::{Attempt, Journal, QueueEntry};

/// After this many fresh jobs in a row, a due retry goes next: fresh traffic
/// comes first, but a steady stream of it cannot starve retries.
const FRESH_BEFORE_RETRY: u32 = 4;
/// How long an idle lane sleeps when nothing wakes it (a safety net only).
const IDLE_RECHECK: Duration = Duration::from_secs(60);
/// Back-off after a journal read error, so a broken disk is not spun on.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

pub(crate) struct Lane {
    name: String,
    url: Uri,
    signer: Signer,
    timeout: Duration,
    retry: RetryConfig,
    client: HttpClient,
    limiter: Option<DefaultDirectRateLimiter>,
    permits: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    /// Queue keys of jobs with an attempt in flight, skipped when picking.
    in_flight: Mutex<HashSet<Vec<u8>>>,
    wake: Arc<Notify>,
    journal: Arc<Journal>,
}

enum Pick {
    Ready(QueueEntry),
    NotBefore(u64),
    Empty,
}

impl Lane {
    pub(crate) fn new(target: &TargetConfig, journal: Arc<Journal>) -> Self {
        Lane {
            name: target.name.clone(),
            url: target.url.clone(),
            signer: Signer::new(target),
            timeout: target.timeout,
            retry: target.retry,
            client: outbound::client(target),
            limiter: target
                .rate_limit
                .map(|rate| RateLimiter::direct(Quota::per_second(rate.per_second).allow_burst(rate.burst))),
            permits: Arc::new(Semaphore::new(target.concurrency.get() as usize)),
            breaker: Mutex::new(Breaker::new(target.breaker.failures.get(), target.breaker.probe_interval)),
            in_flight: Mutex::new(HashSet::new()),
            wake: Arc::new(Notify::new()),
            journal,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>, grace: Duration) {
        let mut attempts = JoinSet::new();
        let mut fresh_streak = 0;
        loop {
            // Capacity first: a job is picked only when it can go out at once.
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                _ = stop.wait_for(|stopping| *stopping) => break,
            };
            let Some(entry) = self.next_job(&mut fresh_streak, &mut stop).await else { break };
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    () = limiter.until_ready() => {}
                    _ = stop.wait_for(|stopping| *stopping) => break,
                }
            }
            self.in_flight.lock().expect("not poisoned").insert(entry.key.clone());
            let lane = self.clone();
            attempts.spawn(async move {
                lane.attempt(entry).await;
                drop(permit);
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

    /// Waits until a job may be sent now; `None` when stopping.
    async fn next_job(&self, fresh_streak: &mut u32, stop: &mut watch::Receiver<bool>) -> Option<QueueEntry> {
        loop {
            if *stop.borrow() {
                return None;
            }
            let now = now_ms();
            let wait_until = match self.pick(now, fresh_streak) {
                Ok(Pick::Ready(entry)) => match self.breaker.lock().expect("not poisoned").admit(now) {
                    Admission::Send => return Some(entry),
                    Admission::Probe => {
                        tracing::info!(target_name = %self.name, delivery_id = %entry.delivery, "probing paused target");
                        return Some(entry);
                    }
                    // While a probe is out, its completion wakes the lane.
                    Admission::Wait { until_ms } => until_ms,
                },
                Ok(Pick::NotBefore(due_ms)) => Some(due_ms),
                Ok(Pick::Empty) => None,
                Err(err) => {
                    tracing::error!(target_name = %self.name, error = %err, "cannot read the job queue");
                    Some(now + ERROR_PAUSE.as_millis() as u64)
                }
            };
            let sleep =
                wait_until.map_or(IDLE_RECHECK, |until| Duration::from_millis(until.saturating_sub(now)));
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = stop.wait_for(|stopping| *stopping) => return None,
            }
        }
    }

    fn pick(&self, now_ms: u64, fresh_streak: &mut u32) -> Result<Pick, crate::journal::JournalError> {
        let in_flight = self.in_flight.lock().expect("not poisoned");
        let skip = |key: &[u8]| in_flight.contains(key);
        let fresh = self.journal.next_fresh(&self.name, &skip)?;
        let retry = self.journal.next_retry(&self.name, &skip)?;
        let (due, later) = match retry {
            Some(retry) if retry.due_ms <= now_ms => (Some(retry), None),
            Some(retry) => (None, Some(retry.due_ms)),
            None => (None, None),
        };
        Ok(match (fresh, due) {
            (Some(_), Some(retry)) if *fresh_streak >= FRESH_BEFORE_RETRY => {
                *fresh_streak = 0;
                Pick::Ready(retry)
            }
            (Some(fresh), _) => {
                *fresh_streak = fresh_streak.saturating_add(1);
                Pick::Ready(fresh)
            }
            (None, Some(retry)) => {
                *fresh_streak = 0;
                Pick::Ready(retry)
            }
            (None, None) => later.map_or(Pick::Empty, Pick::NotBefore),
        })
    }

    async fn attempt(&self, entry: QueueEntry) {
        let started_ms = now_ms();
        let started = Instant::now();
        let (outcome, number, created_at_ms, webhook_id) = match self.load(&entry) {
            Ok((record, job)) => {
                let info =
                    AttemptInfo { number: job.attempts + 1, replay: job.replay, now_secs: started_ms / 1000 };
                let outcome = match outbound::build_request(&self.url, &self.signer, &record, &info) {
                    Ok(request) => tokio::time::timeout(self.timeout, outbound::send(&self.client, request))
                        .await
                        .unwrap_or(AttemptOutcome::Timeout),
                    Err(err) => AttemptOutcome::Failed(err),
                };
                (outcome, info.number, job.created_at_ms, record.webhook_id)
            }
            Err(err) => {
                tracing::error!(target_name = %self.name, delivery_id = %entry.delivery, error = %err, "cannot load the job");
                self.finish(&entry);
                return;
            }
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        let decision = policy::decide(&self.retry, number, created_at_ms, now, &outcome, jitter());
        let breaker_change = self.breaker.lock().expect("not poisoned").record(outcome.is_success(), now);
        match breaker_change {
            Some(BreakerState::Open { probe_at_ms }) => tracing::warn!(
                target_name = %self.name, probe_in_ms = probe_at_ms.saturating_sub(now), "target paused by the circuit breaker"
            ),
            Some(BreakerState::Closed) => tracing::info!(target_name = %self.name, "target resumed"),
            _ => {}
        }
        let (status, error) = match &outcome {
            AttemptOutcome::Status { code, .. } => (Some(*code), None),
            other => (None, Some(other.describe())),
        };
        let attempt = Attempt { at_ms: started_ms, latency_ms, status, error };
        // sled writes can block while the journal writer flushes: keep them
        // off the async workers, which also serve ingress.
        let recorded = {
            let (journal, entry, name) = (self.journal.clone(), entry.clone(), self.name.clone());
            tokio::task::spawn_blocking(move || journal.record_attempt(&entry, &name, attempt, decision))
                .await
        };
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(
                target_name = %self.name, delivery_id = %entry.delivery, error = %err, "cannot record the attempt"
            ),
            Err(err) => tracing::error!(target_name = %self.name, error = %err, "attempt recording panicked"),
        }
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
            Decision::Dead => tracing::error!(
                target_name = %self.name, delivery_id, webhook_id, attempt = number, result, latency_ms,
                "attempt failed; retry budget spent, job is dead (kept for replay)"
            ),
        }
        self.finish(&entry);
    }

    fn load(
        &self,
        entry: &QueueEntry,
    ) -> Result<(crate::journal::DeliveryRecord, crate::journal::Job), crate::journal::JournalError> {
        let missing = || {
            crate::journal::JournalError::Storage(format!(
                "job {} → {} is missing",
                entry.delivery, self.name
            ))
        };
        let record = self.journal.get(entry.delivery)?.ok_or_else(missing)?;
        let job = self.journal.job(entry.delivery, &self.name)?.ok_or_else(missing)?;
        Ok((record, job))
    }

    fn finish(&self, entry: &QueueEntry) {
        self.in_flight.lock().expect("not poisoned").remove(&entry.key);
        self.wake.notify_one();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Uniform in [0, 1).
fn jitter() -> f64 {
    getrandom::u64().map_or(0.5, |bits| (bits >> 11) as f64 / (1u64 << 53) as f64)
}
