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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, TargetConfig};
use crate::journal::{DeliveryId, Journal, JournalError, QueueEntry};
use crate::metrics::{Metrics, TargetGauges};
use lane::Lane;
use queue::LaneQueue;

/// A lane's pending jobs, the bell that tells it something changed, and the
/// operator's pause switch.
#[derive(Default)]
pub(crate) struct Inbox {
    queue: Mutex<LaneQueue>,
    bell: Notify,
    /// Wakes the lane's pager: a class is over its memory bound, or low
    /// while the journal holds more (see `queue`).
    pager: Notify,
    paused: std::sync::atomic::AtomicBool,
    /// The target left the config at a reload: nothing is sent.
    retired: std::sync::atomic::AtomicBool,
}

impl Inbox {
    /// Queues `entry` and wakes the lane (see [`Inbox::push_quietly`]).
    pub(crate) fn push(&self, entry: QueueEntry) {
        self.push_unless(entry, || false);
    }

    /// [`Inbox::push`], unless `skip`, asked under the queue's lock, says not to.
    pub(crate) fn push_unless(&self, entry: QueueEntry, skip: impl FnOnce() -> bool) {
        if self.push_quietly(entry, skip) {
            self.bell.notify_one();
        }
    }

    /// Queues `entry` without waking the lane, waking its pager if memory
    /// needs trimming; false when the delivery is queued already, or `skip`
    /// (asked under the queue's lock) says not to queue it.
    fn push_quietly(&self, entry: QueueEntry, skip: impl FnOnce() -> bool) -> bool {
        let mut queue = self.queue.lock().expect("not poisoned");
        if skip() {
            return false;
        }
        let queued = queue.push(entry);
        if queued && queue.needs_paging() {
            self.pager.notify_one();
        }
        queued
    }
}

/// Every lane, by target name. A reload adds lanes for new targets and
/// retires the lanes of removed ones (they stay, idle, so their pending jobs
/// are kept and a target that comes back picks up where it was).
struct LaneSet {
    lanes: RwLock<BTreeMap<String, Arc<Lane>>>,
    /// Targets not in the config at the start whose jobs the journal still
    /// holds pending, with how many: they have no lane (a reload that brings
    /// one back gives it one), but the operator sees them and can forget them.
    left_behind: Mutex<BTreeMap<String, usize>>,
    /// Held by a reload while it changes the set of targets, and by a
    /// forget while it settles a removed target's jobs: never both at once.
    reconfiguring: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    enricher: Arc<crate::enrich::Enricher>,
    stop: watch::Receiver<bool>,
    grace: Duration,
}

impl LaneSet {
    fn lane(&self, target: &str) -> Option<Arc<Lane>> {
        self.lanes.read().expect("not poisoned").get(target).cloned()
    }

    fn all(&self) -> Vec<Arc<Lane>> {
        self.lanes.read().expect("not poisoned").values().cloned().collect()
    }

    /// Builds a lane for `target` with its pending jobs from the journal
    /// (the part that can fail); [`LaneSet::spawn`] starts it.
    fn prepare(&self, target: &TargetConfig) -> Result<Arc<Lane>, JournalError> {
        let inbox = Arc::new(Inbox::default());
        if self.journal.is_paused(&target.name)? {
            tracing::warn!(target_name = %target.name, "target is paused (resume it through the admin API)");
            inbox.paused.store(true, std::sync::atomic::Ordering::Release);
        }
        let lane =
            Lane::new(target, self.journal.clone(), inbox, self.metrics.clone(), self.enricher.clone());
        lane.reload()?;
        let pending = lane.inbox.queue.lock().expect("not poisoned").pending();
        if pending > 0 {
            tracing::info!(target_name = %target.name, pending, "resuming pending jobs");
        }
        Ok(Arc::new(lane))
    }

    /// Notes the targets not in `config` whose jobs the journal holds
    /// pending (a target removed while its jobs waited, then a restart).
    fn find_left_behind(&self, config: &Config) -> Result<(), JournalError> {
        let mut left_behind = self.left_behind.lock().expect("not poisoned");
        for name in self.journal.targets_with_pending()? {
            if config.targets.contains_key(&name) {
                continue;
            }
            let pending = self.journal.pending_count(&name);
            tracing::warn!(
                target_name = %name,
                pending,
                "a target no longer in the config has jobs pending: they are kept until it comes back, \
                 or `hookrelay targets forget` makes them dead"
            );
            left_behind.insert(name, pending);
        }
        Ok(())
    }

    /// Starts the lane and its pager.
    fn spawn(&self, lane: Arc<Lane>) {
        let pager = tokio::spawn(lane.clone().page(self.stop.clone()));
        let task = tokio::spawn(lane.run(self.stop.clone(), self.grace));
        self.tasks.lock().expect("not poisoned").extend([pager, task]);
    }
}

/// Hands newly journaled jobs to their lanes.
#[derive(Clone)]
pub struct Inboxes(Arc<LaneSet>);

impl Inboxes {
    /// Queues the fresh job of `delivery` for `target` (already durable in the
    /// journal) and wakes the target's lane.
    pub fn deliver(&self, target: &str, delivery: DeliveryId) {
        if let Some(lane) = self.0.lane(target) {
            lane.deliver_fresh(delivery);
        }
    }
}

/// The lanes, started: deliveries flow as soon as [`Dispatcher::new`] returns.
pub struct Dispatcher {
    set: Arc<LaneSet>,
}

/// Why a target's jobs cannot be forgotten now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForgettable {
    /// It is in the config: its lane may be sending them.
    Configured,
    /// Removed, but this many attempts of it are still landing.
    InFlight(usize),
}

/// The lanes as the admin API sees them: live figures, pause and resume.
#[derive(Clone)]
pub struct LaneStatus(Arc<LaneSet>);

impl LaneStatus {
    /// Per target, for `/metrics` and systemd's status line: the lanes',
    /// and the pending and dead counts of targets left behind in the journal.
    pub fn gauges(&self, now_ms: u64) -> BTreeMap<String, TargetGauges> {
        let mut gauges: BTreeMap<String, TargetGauges> = self
            .0
            .left_behind
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(name, &pending)| {
                let dead = self.0.journal.dead_count(name);
                (name.clone(), TargetGauges { pending, oldest_pending_age: None, breaker_open: false, dead })
            })
            .collect();
        gauges.extend(self.0.all().iter().map(|lane| (lane.name().to_owned(), lane.gauges(now_ms))));
        gauges
    }

    /// One JSON object per target, in name order (removed targets whose
    /// lanes still hold jobs show as `removed`, and so do those a start
    /// found jobs of; see [`LaneSet::left_behind`]).
    pub fn describe(&self, now_ms: u64) -> Vec<serde_json::Value> {
        let mut rows: BTreeMap<String, serde_json::Value> = self
            .0
            .left_behind
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|&(_, &pending)| pending > 0)
            .map(|(name, &pending)| (name.clone(), self.describe_left_behind(name, pending)))
            .collect();
        for lane in self.0.all() {
            if !lane.is_retired() || lane.gauges(now_ms).pending > 0 {
                rows.insert(lane.name().to_owned(), lane.describe(now_ms));
            }
        }
        rows.into_values().collect()
    }

    /// A removed target that has no lane: the journal's figures only, the
    /// same fields as a lane's (its config is gone: no source or URL).
    fn describe_left_behind(&self, name: &str, pending: usize) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "source": null,
            "url": null,
            "state": "removed",
            "paused": false,
            "breaker": null,
            "pending": pending,
            "replay_pending": null,
            "dead": self.0.journal.dead_count(name),
            "in_flight": 0,
            "oldest_pending_age_seconds": null,
            "rate_limit": null,
            "concurrency": null,
            "attempts_since_start": {"delivered": 0, "retry": 0, "dead": 0},
        })
    }

    /// Whether a target of this name is known: it has a lane (configured,
    /// or removed by a reload), or a start found its jobs left behind.
    pub fn knows(&self, target: &str) -> bool {
        self.0.lane(target).is_some() || self.0.left_behind.lock().expect("not poisoned").contains_key(target)
    }

    /// Runs `forget` (which settles `target`'s pending jobs in the
    /// journal) if `target` is not in the config and no attempt of it is
    /// still in flight, with reloads held off meanwhile; then its retired
    /// lane, if any, lets go of the jobs it held. Blocking: for the admin
    /// API's blocking pool.
    pub fn forget_removed<T>(&self, target: &str, forget: impl FnOnce() -> T) -> Result<T, NotForgettable> {
        let _no_reload = self.0.reconfiguring.blocking_lock();
        let lane = self.0.lane(target);
        if let Some(lane) = &lane {
            if !lane.is_retired() {
                return Err(NotForgettable::Configured);
            }
            // An attempt started before the target was removed still lands
            // (its outcome written after the forget's would undo it).
            let in_flight = lane.attempts_in_flight();
            if in_flight > 0 {
                return Err(NotForgettable::InFlight(in_flight));
            }
        }
        let forgotten = forget();
        if let Some(lane) = lane {
            lane.drop_queue();
        }
        // What is left (all of it, when a forget failed part way): listed
        // while some is pending, and its dead jobs gauged, as a retired
        // lane's are.
        if let Some(pending) = self.0.left_behind.lock().expect("not poisoned").get_mut(target) {
            *pending = self.0.journal.pending_count(target);
        }
        Ok(forgotten)
    }

    /// Hands requeued (replayed) jobs, already durable, to their lanes.
    pub fn enqueue(&self, entries: Vec<(String, QueueEntry)>) {
        let mut woken = std::collections::HashSet::new();
        for (target, entry) in entries {
            let Some(lane) = self.0.lane(&target) else { continue };
            lane.inbox.push_quietly(entry, || false);
            if woken.insert(target) {
                lane.inbox.bell.notify_one();
            }
        }
    }

    /// Reloads every lane's queue from the journal after a reopen (see
    /// `Lane::reload`), so the jobs a lane lost track of (their outcomes
    /// could not be written) are sent again; returns how many it queued.
    pub fn resync(&self) -> Result<usize, JournalError> {
        let mut added = 0;
        for lane in self.0.all() {
            added += lane.reload()?;
        }
        Ok(added)
    }

    /// Pauses or resumes a target; `Ok(None)` when there is no such target.
    pub fn set_paused(
        &self,
        target: &str,
        paused: bool,
        now_ms: u64,
    ) -> Result<Option<serde_json::Value>, JournalError> {
        let Some(lane) = self.0.lane(target).filter(|lane| !lane.is_retired()) else { return Ok(None) };
        lane.set_paused(paused)?;
        Ok(Some(lane.describe(now_ms)))
    }
}

impl Dispatcher {
    /// Starts a lane per target with its pending jobs from the journal (call
    /// before ingress starts, so no job is loaded twice). Lanes stop taking
    /// jobs when `stop` turns true.
    pub fn new(
        config: &Config,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
        parallel: Arc<crate::parallel::ParallelApis>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, JournalError> {
        let set = Arc::new(LaneSet {
            lanes: RwLock::new(BTreeMap::new()),
            left_behind: Mutex::new(BTreeMap::new()),
            reconfiguring: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            enricher: Arc::new(crate::enrich::Enricher::new(parallel, journal.clone())),
            journal,
            metrics,
            stop,
            grace: config.server.shutdown_grace,
        });
        for target in config.targets.values() {
            let lane = set.prepare(target)?;
            set.spawn(lane.clone());
            set.lanes.write().expect("not poisoned").insert(target.name.clone(), lane);
        }
        // Only what the operator sees: a journal that cannot say keeps the
        // gateway from starting no more than before.
        if let Err(err) = set.find_left_behind(config) {
            tracing::error!(error = %err, "could not look for jobs of targets no longer in the config");
        }
        Ok(Dispatcher { set })
    }

    pub fn inboxes(&self) -> Inboxes {
        Inboxes(self.set.clone())
    }

    pub fn status(&self) -> LaneStatus {
        LaneStatus(self.set.clone())
    }

    /// Takes the targets of a reloaded config: changed ones are
    /// reconfigured in place, new ones get a lane, removed ones are retired.
    /// New lanes are built first, outside the lock and on the blocking pool
    /// (each reads its target's queue, a backlog of millions included): a
    /// journal error leaves everything as it was, and neither ingress nor
    /// the runtime's workers wait on a journal scan.
    ///
    /// Hold [`Dispatcher::holding_targets`] from before this until ingress
    /// routes by the new config.
    pub async fn reconfigure(&self, config: &Config) -> Result<(), JournalError> {
        let added: Vec<TargetConfig> =
            config.targets.values().filter(|target| self.set.lane(&target.name).is_none()).cloned().collect();
        let set = self.set.clone();
        let new_lanes = tokio::task::spawn_blocking(move || {
            added.iter().map(|target| set.prepare(target)).collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|err| JournalError::Storage(format!("preparing the new lanes did not finish: {err}")))??;
        let mut lanes = self.set.lanes.write().expect("not poisoned");
        for lane in new_lanes {
            self.set.spawn(lane.clone());
            // Back in the config: its lane holds the jobs left behind.
            self.set.left_behind.lock().expect("not poisoned").remove(lane.name());
            lanes.insert(lane.name().to_owned(), lane);
        }
        for target in config.targets.values() {
            if let Some(lane) = lanes.get(&target.name) {
                lane.reconfigure(target);
            }
        }
        for (name, lane) in lanes.iter() {
            if !config.targets.contains_key(name) && !lane.is_retired() {
                tracing::warn!(target_name = %name, "target removed from the config: its pending jobs stay in the journal");
                lane.retire();
            }
        }
        Ok(())
    }

    /// Keeps a forget of a removed target (see `LaneStatus::forget_removed`)
    /// from running while a reload changes the targets and ingress's routes:
    /// a removed target's name is routed to until ingress has the new ones.
    pub async fn holding_targets(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.set.reconfiguring.lock().await
    }

    /// Waits until `stop` turns true and every lane has let its in-flight
    /// attempts finish (within the grace period) and record their outcomes.
    /// Jobs not finished stay queued for the next start.
    pub async fn run(&self) {
        let mut stop = self.set.stop.clone();
        let _ = stop.wait_for(|stopping| *stopping).await;
        loop {
            let tasks: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.set.tasks.lock().expect("not poisoned"));
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::body::Bytes;

    use super::*;
    use crate::journal::{NewDelivery, QueueClass};

    /// What a test target saw: requests answered, the most open at once,
    /// and what `observe` said as each request arrived.
    #[derive(Default)]
    struct Counts {
        received: AtomicUsize,
        open: AtomicUsize,
        most_open: AtomicUsize,
        observe: std::sync::OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
        observed: Mutex<Vec<usize>>,
        /// The `hookrelay-delivery` header of every request.
        deliveries: Mutex<Vec<String>>,
    }

    /// A loopback target that answers every request 200 after `delay`.
    async fn serve(delay: Duration) -> (std::net::SocketAddr, Arc<Counts>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let counts = shared.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    let counts = counts.clone();
                    let delivery = request.headers().get("hookrelay-delivery").cloned();
                    async move {
                        if let Some(delivery) = delivery {
                            counts.deliveries.lock().unwrap().push(delivery.to_str().unwrap().to_owned());
                        }
                        if let Some(observe) = counts.observe.get() {
                            counts.observed.lock().unwrap().push(observe());
                        }
                        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
                        counts.most_open.fetch_max(open, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        counts.open.fetch_sub(1, Ordering::SeqCst);
                        counts.received.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        (addr, counts)
    }

    /// A dispatcher with one target `t` at `addr`, allowed `concurrency`
    /// requests at once, and its journal.
    fn dispatcher(
        dir: &std::path::Path,
        addr: std::net::SocketAddr,
        concurrency: u32,
    ) -> (Dispatcher, Arc<Journal>, watch::Sender<bool>) {
        let config = config(dir, addr, concurrency);
        let journal = Arc::new(Journal::open(&config.journal).unwrap());
        let (stop_tx, stop_rx) = watch::channel(false);
        let dispatcher = Dispatcher::new(
            &config,
            journal.clone(),
            Arc::new(Metrics::new(&config)),
            Arc::new(crate::parallel::ParallelApis::new(&config)),
            stop_rx,
        )
        .unwrap();
        (dispatcher, journal, stop_tx)
    }

    /// The config of [`dispatcher`]: source `parallel` with [`SECRET`], one target `t`.
    fn config(dir: &std::path::Path, addr: std::net::SocketAddr, concurrency: u32) -> Config {
        let text = format!(
            r#"
            [journal]
            path = "journal"
            [sources.parallel]
            secrets = ["{SECRET}"]
            [targets.t]
            source = "parallel"
            url = "http://{addr}/"
            signing = "none"
            concurrency = {concurrency}
            "#
        );
        Config::parse(&dir.join("hookrelay.toml"), &text, &crate::config::ProcessEnv).unwrap()
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// A small webhook of source `parallel`, received now.
    fn new_delivery(webhook_id: String) -> NewDelivery {
        NewDelivery {
            received_at_ms: crate::time::now_ms(),
            source: "parallel".into(),
            webhook_id,
            webhook_timestamp: "1700000000".into(),
            webhook_signature: String::new(),
            content_type: None,
            event_type: None,
            monitor_id: None,
            event_group: None,
            body: b"{}".to_vec(),
        }
    }

    /// Journals the deliveries (many at once, as ingress does), then hands
    /// them to the lane in arrival order.
    async fn deliver(dispatcher: &Dispatcher, journal: &Arc<Journal>, count: u64) {
        let mut appends = tokio::task::JoinSet::new();
        for n in 0..count {
            let delivery = new_delivery(format!("evt_{n}"));
            let journal = journal.clone();
            appends.spawn(async move { journal.append(delivery, &["t".to_owned()]).await.unwrap().id });
        }
        let mut appended = appends.join_all().await;
        appended.sort();
        for id in appended {
            dispatcher.inboxes().deliver("t", id);
        }
    }

    async fn wait_until(done: impl Fn() -> bool, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An attempt takes one of its lane's [`lane::UNRECORDED_PER_LANE`]
    /// permits before its job is picked and holds it until its outcome is
    /// written. With all but the one an idle lane keeps ready taken, the lane
    /// sends one request at a time though the target allows four, each only
    /// once the one before is recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attempts_awaiting_their_write_are_bounded_per_lane() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::from_millis(100)).await;
        let (dispatcher, journal, _stop) = dispatcher(dir.path(), addr, 4);
        let pending = journal.clone();
        let _ = counts.observe.set(Box::new(move || pending.pending_count("t")));
        let lane = dispatcher.set.lane("t").unwrap();
        let idle = lane::UNRECORDED_PER_LANE - 1;
        wait_until(|| lane.unrecorded_available() == idle, "the idle lane keeps one permit ready").await;
        let held = lane.hold_unrecorded(idle).await;

        deliver(&dispatcher, &journal, 4).await;
        wait_until(|| counts.received.load(Ordering::SeqCst) == 4, "every delivery arrived").await;
        assert_eq!(counts.most_open.load(Ordering::SeqCst), 1, "more attempts than permits");
        assert_eq!(*counts.observed.lock().unwrap(), [4, 3, 2, 1], "pending when each request arrived");

        // Each permit is given back with its outcome.
        drop(held);
        wait_until(|| lane.unrecorded_available() == idle, "every permit back").await;
        assert_eq!(journal.pending_count("t"), 0);
    }

    /// A paused target piles up more jobs than a lane keeps in memory: the
    /// pager indexes the ones past the bound and lets them go, a restart
    /// loads only the first page, and once resumed every job is sent once,
    /// read back page by page, with no queue entry left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_past_the_memory_bound_waits_in_the_journal_and_each_job_goes_once() {
        use queue::{IN_MEMORY_PER_CLASS, SPILL_ABOVE};
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::ZERO).await;
        let total = SPILL_ABOVE + IN_MEMORY_PER_CLASS / 2;
        let in_memory = |dispatcher: &Dispatcher| {
            let lane = dispatcher.set.lane("t").unwrap();
            let held = lane.inbox.queue.lock().unwrap().len();
            (held, lane.gauges(0).pending)
        };
        {
            let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 8);
            dispatcher.status().set_paused("t", true, 0).unwrap();
            deliver(&dispatcher, &journal, total as u64).await;
            // Every job is in memory or, indexed, in the journal alone.
            wait_until(
                || {
                    let (held, _) = in_memory(&dispatcher);
                    held <= SPILL_ABOVE && held + journal.indexed_jobs("t") == total
                },
                "the jobs past the bound left memory",
            )
            .await;
            assert!(in_memory(&dispatcher).0 >= IN_MEMORY_PER_CLASS);
            assert_eq!(in_memory(&dispatcher).1, total, "they still count as pending");
            stop.send(true).unwrap();
            dispatcher.run().await;
        }

        let (dispatcher, journal, _stop) = dispatcher(dir.path(), addr, 8);
        assert_eq!(
            in_memory(&dispatcher),
            (IN_MEMORY_PER_CLASS, total),
            "a restart loads one page, counts all"
        );
        assert_eq!(counts.received.load(Ordering::SeqCst), 0, "nothing was sent while paused");
        dispatcher.status().set_paused("t", false, 0).unwrap();
        wait_until(|| counts.received.load(Ordering::SeqCst) >= total, "every job sent").await;
        wait_until(|| journal.pending_count("t") == 0, "every outcome recorded").await;
        let mut sent = counts.deliveries.lock().unwrap().clone();
        assert_eq!(sent.len(), total, "no job sent twice");
        sent.sort();
        sent.dedup();
        assert_eq!(sent.len(), total, "each job sent once");
        assert_eq!(journal.indexed_jobs("t"), 0, "no queue entry left behind");
        // The last attempt leaves the lane's books just after its outcome is
        // written (what the journal already shows).
        wait_until(|| in_memory(&dispatcher) == (0, 0), "the lane holding nothing").await;
    }

    /// The writer journals an append it has been handed whether or not its
    /// caller still waits; a request dropped mid-append (a sender timing out
    /// during a slow flush) must still get its jobs to their lanes, or they
    /// wait unseen for the next start while the sender's retry is answered
    /// as a duplicate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_whose_request_is_dropped_mid_append_is_still_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::ZERO).await;
        let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
        let config = config(dir.path(), addr, 4);
        let metrics = Arc::new(Metrics::new(&config));
        let ingress =
            crate::ingress::Ingress::new(&config, journal.clone(), dispatcher.inboxes(), metrics.clone());
        let body = br#"{"type":"monitor.event.detected","data":{"monitor_id":"monitor_1"}}"#;
        let key = crate::signature::signing_key_for_secret(SECRET).unwrap();
        // Sent until one is still appending after its first poll: on a busy
        // machine the test's thread can lose the CPU long enough for an
        // append to finish before that poll, and such a one was not dropped.
        let mut answered = 0;
        loop {
            let id = format!("evt_dropped_{answered}");
            let timestamp = (crate::time::now_ms() / 1000).to_string();
            let request = hyper::Request::post("/hooks/parallel")
                .header("webhook-id", &id)
                .header("webhook-timestamp", &timestamp)
                .header("webhook-signature", crate::signature::sign(&key, &id, &timestamp, body))
                .body(Full::new(Bytes::from_static(body)))
                .unwrap();
            let mut handling = Box::pin(ingress.handle(request));
            let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(handling.as_mut().poll(cx))).await;
            if polled.is_pending() {
                break; // Dropped here, as hyper drops a request whose sender went away.
            }
            answered += 1;
            assert!(answered < 20, "every append finished before its first poll");
        }
        let sent = answered + 1;
        wait_until(|| counts.received.load(Ordering::SeqCst) == sent, "the dropped request's delivery").await;
        wait_until(|| journal.pending_count("t") == 0, "its job settled").await;
        assert_eq!(
            metrics.accepted_total(),
            sent as u64,
            "counted as accepted, though nobody heard the answer"
        );
        stop.send(true).unwrap();
        dispatcher.run().await;
    }

    /// A job whose request cannot be built (a stored `webhook-id` no header
    /// may carry) fails without reaching the target: the breaker must not
    /// count it, or a run of such jobs pauses a healthy target.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_that_cannot_be_built_do_not_pause_a_healthy_target() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::ZERO).await;
        let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
        let threshold = u64::from(config(dir.path(), addr, 4).targets["t"].breaker.failures.get());
        let mut broken = Vec::new();
        for n in 0..threshold + 2 {
            let delivery = new_delivery(format!("whbackfill_bad\n{n}"));
            let id = journal.append(delivery, &["t".to_owned()]).await.unwrap().id;
            dispatcher.inboxes().deliver("t", id);
            broken.push(id);
        }
        let attempted = |id| journal.job(id, "t").unwrap().is_some_and(|job| job.attempts >= 1);
        wait_until(|| broken.iter().all(|&id| attempted(id)), "an attempt of each broken job").await;
        let lane = dispatcher.set.lane("t").unwrap();
        assert!(!lane.gauges(crate::time::now_ms()).breaker_open, "the target was never tried");
        assert_eq!(counts.received.load(Ordering::SeqCst), 0);
        deliver(&dispatcher, &journal, 1).await;
        wait_until(|| counts.received.load(Ordering::SeqCst) == 1, "a good delivery").await;
        stop.send(true).unwrap();
        dispatcher.run().await;
    }

    /// A queue entry can outlive its job's settling (the journal's failure
    /// paths: a retry's entry in sled's memory though its flush failed, then
    /// the outcome recorded under the job's other entry). The lane that
    /// finds the job settled drops the entry, or every reload and page
    /// would read it again, and never sends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_queue_entry_is_dropped_when_its_job_turns_out_settled() {
        use crate::journal::{Attempt, QueueEntry};
        use policy::Decision;
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::ZERO).await;
        {
            let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
            dispatcher.status().set_paused("t", true, 0).unwrap();
            deliver(&dispatcher, &journal, 1).await;
            stop.send(true).unwrap();
            dispatcher.run().await;
            // One attempt leaves a retry entry; the job is then settled under
            // its fresh entry, so the retry entry is left behind.
            let id = journal.queued("t").unwrap()[0].delivery;
            let fresh = QueueEntry::new(QueueClass::Fresh, id.received_at_ms, id);
            let attempt =
                Attempt { at_ms: crate::time::now_ms(), latency_ms: 1, status: Some(500), error: None };
            let job = journal.job(id, "t").unwrap().unwrap();
            let retry = journal
                .record_attempt(&fresh, job, attempt.clone(), Decision::RetryAt(crate::time::now_ms()))
                .await
                .unwrap()
                .expect("a retry");
            let job = journal.job(id, "t").unwrap().unwrap();
            let delivered = Attempt { status: Some(200), ..attempt };
            journal.record_attempt(&fresh, job, delivered, Decision::Delivered).await.unwrap();
            assert_eq!(journal.queued("t").unwrap(), vec![retry], "the stale entry");
            journal.flush().unwrap();
        }
        let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
        dispatcher.status().set_paused("t", false, 0).unwrap();
        wait_until(|| journal.indexed_jobs("t") == 0, "the stale entry dropped").await;
        assert_eq!(counts.received.load(Ordering::SeqCst), 0, "nothing sent for a settled job");
        stop.send(true).unwrap();
        dispatcher.run().await;
    }

    /// A job its attempt cannot read (here: damaged, then mended) is read
    /// again from the journal a little later, and sent; not left until the
    /// next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_could_not_be_read_is_read_again_and_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::ZERO).await;
        let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
        dispatcher.status().set_paused("t", true, 0).unwrap();
        let id = journal.append(new_delivery("evt_unreadable".into()), &["t".to_owned()]).await.unwrap().id;
        dispatcher.inboxes().deliver("t", id);
        let good = journal.replace_job_bytes(id, "t", b"\xffnot a job").expect("the job");
        assert_eq!(dispatcher.status().gauges(0)["t"].pending, 1);
        dispatcher.status().set_paused("t", false, 0).unwrap();
        // Its attempt could not read it: out of the lane's memory, still
        // pending in the journal.
        wait_until(|| dispatcher.status().gauges(0)["t"].pending == 0, "the attempt gave it up").await;
        assert_eq!(counts.received.load(Ordering::SeqCst), 0, "nothing sent while it cannot be read");
        journal.replace_job_bytes(id, "t", &good);
        wait_until(|| counts.received.load(Ordering::SeqCst) == 1, "sent once it can be read").await;
        wait_until(|| journal.pending_count("t") == 0, "settled").await;
        stop.send(true).unwrap();
        dispatcher.run().await;
    }

    /// A reopen's resync can find a fresh job in the journal and the lane
    /// take it before ingress hands the same job over: the hand-off must not
    /// queue it again while its attempt is under way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_job_handed_over_while_its_attempt_is_under_way_is_sent_once() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, counts) = serve(Duration::from_millis(300)).await;
        let (dispatcher, journal, stop) = dispatcher(dir.path(), addr, 4);
        let id = journal.append(new_delivery("evt_raced".into()), &["t".to_owned()]).await.unwrap().id;
        dispatcher.inboxes().deliver("t", id);
        wait_until(|| counts.open.load(Ordering::SeqCst) == 1, "the first attempt at the target").await;
        dispatcher.inboxes().deliver("t", id);
        wait_until(|| journal.pending_count("t") == 0, "the job settled").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Counted as requests arrive: a second attempt right after the
        // first settled shows here, answered or not.
        assert_eq!(counts.deliveries.lock().unwrap().len(), 1, "sent once");
        assert_eq!(counts.most_open.load(Ordering::SeqCst), 1);
        stop.send(true).unwrap();
        dispatcher.run().await;
    }
}
