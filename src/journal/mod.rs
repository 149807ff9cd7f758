//! The journal: the only module that knows sled.
//!
//! Everything lives in one sled tree, under one-byte key prefixes, so that a
//! group of appends is a single atomic `apply_batch`:
//! - `D` delivery id (16 bytes, time-ordered) → encoded [`DeliveryRecord`];
//!   being keyed by time, this is also the time index for listing and replay.
//! - `U` source `\0` webhook-id → the key of the first delivery with that id,
//!   which carries its receive time, so the window check needs no lookup.
//! - `G` source `\0` event group → the key of the latest delivery of that
//!   Monitor detection and a backfilled flag; kept as long as that delivery,
//!   and once retention or a purge removed it, until that is past retention (`T`). A backfilled
//!   detection and its real webhook are one delivery, whichever came first
//!   and however late (see `backfill`).
//! - `T` removal time ++ delivery id → the `G` key the retention sweep or a
//!   purge of that delivery left behind.
//! - `J` delivery id ++ target → encoded [`Job`] (state and attempt history).
//! - `P` target → present while an operator has the target paused.
//! - `Q` target `\0` class due_ms delivery id → empty: the work index of
//!   pending jobs. Class 1 is a retry (ordered by due time), class 2 a
//!   replayed job or its retry. A job stays indexed while its attempt is in
//!   flight, so a crash leaves it pending and it is retried at the next
//!   start. Fresh jobs (class 0, due = arrival, so FIFO) are mostly not
//!   indexed: they are the pending jobs from the `M:fresh-from` mark on. They
//!   are indexed when the journal opens or stops cleanly, when they have
//!   waited over a minute, and by earlier versions (see `fresh`).
//! - `K` target `\0` delivery id → empty: the dead jobs of a target, for the
//!   dead-jobs gauge (counted once at open, then kept in step).
//! - `E` delivery id → the content fetched from Parallel's API to enrich it
//!   (JSON), written once; deleted with the delivery.
//! - `M` name → journal metadata (markers of one-off index builds, and the
//!   fresh-job low-water mark).
//! - `R` replay id → the replay's selection; `X` replay id ++ delivery id ++
//!   target → empty: the pairs it requeued (see `replays`).
//!
//! Replays, retention pruning and purges rewrite jobs that no lane holds
//! (delivered and dead ones); they take the `maintenance` lock so that they
//! never interleave with each other.
//!
//! [`Journal::append`] hands the delivery to the writer thread (see `writer`),
//! which writes it with its fan-out jobs and answers only after the flush that
//! covers them: an acknowledged delivery and its jobs survive a crash.
//!
//! A storage failure (disk full, file-size limit, I/O error) makes sled refuse
//! every later write until the database is reopened. The journal notes the
//! failure ([`Journal::is_writable`] turns false: ingress answers 503, lanes
//! stop taking jobs) and [`Journal::reopen`] replaces the open database with a
//! fresh one holding exactly what was flushed; nothing acknowledged is lost,
//! and the lanes reload their queues from it.

mod codec;
mod forget;
mod fresh;
mod health;
mod horizon;
mod job;
mod recent;
mod record;
mod replays;
mod retention;
mod writer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use codec::DecodeError;
pub use forget::FORGOTTEN;
pub use job::{Attempt, Job, JobState};
pub use record::{BadDeliveryId, DeliveryId, DeliveryRecord};
pub use replays::{BadReplayId, ReplayId, ReplayProgress, ReplayStarted, ReplaySummary};
pub use retention::Swept;

use crate::config::JournalConfig;
use crate::delivery::policy::Decision;
use health::Health;
pub use health::Recovery;
use horizon::Horizon;
use recent::RecentRecords;
use writer::Writer;

/// Why the journal could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("journal is over its size limit ({size} of {limit} bytes)")]
    Full { size: u64, limit: u64 },
    #[error("journal storage failed: {0}")]
    Storage(String),
    #[error("journal record {key} is corrupt: {error}")]
    Corrupt { key: String, error: DecodeError },
}

impl From<sled::Error> for JournalError {
    fn from(err: sled::Error) -> Self {
        JournalError::Storage(err.to_string())
    }
}

/// A verified webhook, ready to be journaled.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub received_at_ms: u64,
    pub source: String,
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub webhook_signature: String,
    pub content_type: Option<String>,
    pub event_type: Option<String>,
    pub monitor_id: Option<String>,
    /// The detection a `monitor.event.detected` reports: a second delivery
    /// of the same group, whatever its `webhook-id`, is a duplicate (a
    /// backfilled one and the real webhook arriving late, either way round).
    pub event_group: Option<String>,
    pub body: Vec<u8>,
}

/// The outcome of [`Journal::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The new delivery's id or, for a duplicate, the original's.
    pub id: DeliveryId,
    pub duplicate: bool,
}

pub struct Journal {
    /// `None` only while [`Journal::reopen`] swaps it.
    store: RwLock<Option<Arc<Store>>>,
    /// Set by the first failed write; cleared by a successful recovery.
    failed: Arc<Health>,
    /// Bumped by every successful reopen.
    generation: AtomicU64,
    /// Reopens finished, whether they worked or not (see `reopens_tried`).
    reopens_tried: AtomicU64,
    path: PathBuf,
    cache: u64,
    dedup_window_ms: u64,
    /// `journal.retention` (a startup setting), for how long an event-group
    /// entry outlives its delivery (see `retention`).
    retention_ms: u64,
    quota: Option<Quota>,
    /// Dead jobs per target, mirroring the `K` index. Signed and never
    /// clamped: a revive may be counted before the death it undoes, and the
    /// sum comes out right in any order.
    dead: Mutex<HashMap<String, i64>>,
    /// Serialises replays, pruning and purges (see the module docs).
    maintenance: Mutex<()>,
    /// Set at shutdown: pruning and purges stop at their next chunk, so no
    /// scan keeps the journal (and sled's lock on its directory) open.
    maintenance_stopped: AtomicBool,
    /// Records the lanes are about to send, shared with the writer thread
    /// (see `recent`). Holds only flushed records; kept across a reopen,
    /// which keeps everything flushed.
    recent: Arc<Mutex<RecentRecords>>,
    /// How far a listing may read (see `horizon`); kept across a reopen.
    horizon: Horizon,
}

/// A disk-size limit, checked against a figure refreshed at most once a
/// second: reading the size walks sled's files, too slow for every request.
struct Quota {
    limit: u64,
    size: AtomicU64,
    refreshed_at_ms: AtomicU64,
}

const QUOTA_REFRESH_MS: u64 = 1_000;

/// How often a dedup prune looks whether maintenance was stopped.
const DEDUP_ENTRIES_BETWEEN_STOP_CHECKS: usize = 1_024;

/// How long [`Journal::reopen`] waits for calls in progress to let go.
#[cfg(not(test))]
const REOPEN_WAIT: Duration = Duration::from_secs(10);
#[cfg(test)]
const REOPEN_WAIT: Duration = Duration::from_millis(200);

/// Tries `open` until it succeeds or [`REOPEN_WAIT`] has passed (then its
/// error): a just-closed handle may hold sled's directory lock a moment.
fn retry_for_reopen_wait<T>(mut open: impl FnMut() -> Result<T, JournalError>) -> Result<T, JournalError> {
    let deadline = Instant::now() + REOPEN_WAIT;
    loop {
        match open() {
            Ok(opened) => return Ok(opened),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(err) => return Err(err),
        }
    }
}

/// A recovery of sled's log that took longer than this replayed a long log
/// (see [`Journal::open`]).
const LONG_RECOVERY: Duration = Duration::from_secs(1);

/// How long opening waits for another handle in this process to let go of
/// sled's directory lock (a second process holding it is an error at once
/// after that).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The open database and its writer thread.
struct Store {
    db: sled::Db,
    tree: sled::Tree,
    writer: Writer,
    /// How long sled took to open (to replay its log).
    recovery: Duration,
}

/// Opens sled's database at `path`, and says how long sled took (its
/// recovery). sled's background threads may hold a just-closed database's
/// lock for a moment (a reopen in place, or a restart in the same process):
/// wait for it rather than fail.
fn open_db(path: &std::path::Path, cache: u64) -> Result<(sled::Db, Duration), JournalError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let started = Instant::now();
        match sled::Config::new().path(path).cache_capacity(cache).open() {
            Ok(db) => return Ok((db, started.elapsed())),
            Err(err) if err.to_string().contains("could not acquire lock") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

impl Store {
    fn open(
        path: &std::path::Path,
        cache: u64,
        dedup_window_ms: u64,
        failed: Arc<Health>,
        recent: Arc<Mutex<RecentRecords>>,
    ) -> Result<Store, JournalError> {
        let (db, recovery) = open_db(path, cache)?;
        let tree = db.open_tree("journal")?;
        let fresh = fresh::recover(&db, &tree)?;
        let writer = Writer::start(db.clone(), tree.clone(), dedup_window_ms, failed, fresh, recent)
            .map_err(|err| JournalError::Storage(format!("cannot start the journal writer: {err}")))?;
        Ok(Store { db, tree, writer, recovery })
    }
}

impl Journal {
    /// Opens (or creates) the journal directory.
    ///
    /// A journal whose log replay took long is closed and opened again.
    /// sled 0.34 writes its recovery snapshot only when it opens, so the
    /// first start after a long run replays every log segment written since
    /// the last start, and the journal opened so goes on holding more memory
    /// than one opened from the fresh snapshot: with 10⁶ deliveries, 218 MiB
    /// resident against 139 MiB. The second open reads that snapshot and
    /// takes a fraction of the time.
    pub fn open(config: &JournalConfig) -> Result<Journal, JournalError> {
        Self::open_again_after(config, LONG_RECOVERY).map(|(journal, _)| journal)
    }

    /// [`Journal::open`], opening again when sled's recovery took
    /// `long_recovery` or more; says whether it did.
    fn open_again_after(
        config: &JournalConfig,
        long_recovery: Duration,
    ) -> Result<(Journal, bool), JournalError> {
        let journal = Self::open_once(config)?;
        let recovery = journal.store()?.recovery;
        if recovery < long_recovery {
            return Ok((journal, false));
        }
        drop(journal); // joins the writer thread and closes sled
        let started = Instant::now();
        // As in a reopen: handles of the first may hold sled's lock a moment.
        let journal = retry_for_reopen_wait(|| Self::open_once(config))?;
        tracing::info!(
            recovery_ms = recovery.as_millis() as u64,
            second_open_ms = started.elapsed().as_millis() as u64,
            "journal recovered its log; opened it again from the new snapshot to let go of the recovery's memory"
        );
        Ok((journal, true))
    }

    fn open_once(config: &JournalConfig) -> Result<Journal, JournalError> {
        let dedup_window_ms = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
        let failed = Arc::new(Health::default());
        let recent = Arc::new(Mutex::new(RecentRecords::new(recent::RECENT_RECORDS_BYTES)));
        let store = Store::open(&config.path, config.cache, dedup_window_ms, failed.clone(), recent.clone())?;
        let quota = match config.max_disk {
            None => None,
            Some(limit) => Some(Quota {
                limit,
                size: AtomicU64::new(store.db.size_on_disk()?),
                refreshed_at_ms: AtomicU64::new(0),
            }),
        };
        index_dead_jobs(&store.db, &store.tree)?;
        index_event_groups(&store.db, &store.tree)?;
        let horizon = Horizon::after(last_delivery(&store.tree)?);
        let journal = Journal {
            store: RwLock::new(Some(Arc::new(store))),
            failed,
            generation: AtomicU64::new(0),
            reopens_tried: AtomicU64::new(0),
            path: config.path.clone(),
            cache: config.cache,
            dedup_window_ms,
            retention_ms: u64::try_from(config.retention.as_millis()).unwrap_or(u64::MAX),
            quota,
            dead: Mutex::new(HashMap::new()),
            maintenance: Mutex::new(()),
            maintenance_stopped: AtomicBool::new(false),
            recent,
            horizon,
        };
        journal.count_dead_jobs()?;
        Ok(journal)
    }

    /// Recounts the dead-jobs gauge from the `K` index.
    fn count_dead_jobs(&self) -> Result<(), JournalError> {
        let mut dead = HashMap::<String, i64>::new();
        for entry in self.tree()?.scan_prefix(keys::DEAD) {
            let (key, _) = entry?;
            if let Some(target) = keys::dead_target(&key) {
                *dead.entry(target.to_owned()).or_default() += 1;
            }
        }
        *self.dead.lock().expect("not poisoned") = dead;
        Ok(())
    }

    fn store(&self) -> Result<Arc<Store>, JournalError> {
        self.store.read().expect("not poisoned").clone().ok_or_else(|| {
            JournalError::Storage("the journal is being reopened after a storage failure".to_owned())
        })
    }

    fn tree(&self) -> Result<sled::Tree, JournalError> {
        Ok(self.store()?.tree.clone())
    }

    fn db(&self) -> Result<sled::Db, JournalError> {
        Ok(self.store()?.db.clone())
    }

    /// Passes a write's result on, noting an I/O failure: from then on sled
    /// refuses every write until the journal is reopened.
    fn wrote<T>(&self, result: sled::Result<T>) -> Result<T, JournalError> {
        result.map_err(|err| {
            if matches!(err, sled::Error::Io(_)) && self.failed.fail() {
                tracing::error!(error = %err, "journal write failed; refusing writes until the journal is reopened");
            }
            err.into()
        })
    }

    /// False after a storage failure, until a [`Journal::reopen`] succeeded
    /// and [`Journal::mark_writable`] ended the recovery.
    pub fn is_writable(&self) -> bool {
        !self.failed.is_failed()
    }

    /// True between stores: a reopen after a storage failure closed the
    /// old one and could not open the next yet (it is tried again).
    pub fn is_between_stores(&self) -> bool {
        self.store.read().expect("not poisoned").is_none()
    }

    /// How many times the journal was reopened.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Closes the database and opens it again after a storage failure (sled
    /// refuses writes until then), then proves a write and a flush work.
    /// What was flushed before the failure is all there; unflushed attempt
    /// outcomes are gone, so those attempts will be repeated (at least once).
    /// Blocks; on error, call again later. Like [`Journal::open`], it opens
    /// a second time when sled had a long log to replay (all it wrote since
    /// the process started).
    /// Returns where the recovery began, for [`Journal::mark_writable`]:
    /// before the old store is let go, so that a write failing on either
    /// store from here on (an attempt's outcome, whose job the lanes'
    /// reload may skip while it is in flight) keeps the journal failed for
    /// another recovery.
    pub fn reopen(&self) -> Result<Recovery, JournalError> {
        let recovery = self.failed.recovery();
        let reopened = self.reopen_again_after(LONG_RECOVERY);
        self.reopens_tried.fetch_add(1, Ordering::AcqRel);
        reopened?;
        Ok(recovery)
    }

    /// Test hook: puts `bytes` where the job of `delivery` to `target` is
    /// stored (a damaged job, or the good one back); returns what was there.
    #[cfg(test)]
    pub(crate) fn replace_job_bytes(
        &self,
        delivery: DeliveryId,
        target: &str,
        bytes: &[u8],
    ) -> Option<sled::IVec> {
        self.tree().unwrap().insert(keys::job(delivery, target), bytes).unwrap()
    }

    /// How many reopens finished, worked or not: a recovery that keeps
    /// trying is alive; one stuck inside a reopen is not.
    pub fn reopens_tried(&self) -> u64 {
        self.reopens_tried.load(Ordering::Acquire)
    }

    /// [`Journal::reopen`], opening again when sled's recovery took
    /// `long_recovery` or more; says whether it did.
    fn reopen_again_after(&self, long_recovery: Duration) -> Result<bool, JournalError> {
        // No sweep or replay between reading a chunk from one store and
        // writing it to the next (what the old one showed in memory, a
        // failed flush took back on disk).
        // (A `()` lock: a sweep that panicked holding it leaves nothing half done.)
        let _maintenance = self.maintenance.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.store.write().expect("not poisoned").take();
        if let Some(old) = old {
            // Calls that took the store before the swap finish first: sled
            // keeps its directory locked while any handle lives.
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *self.store.write().expect("not poisoned") = Some(old);
                return Err(JournalError::Storage("the journal is still in use; reopen later".to_owned()));
            }
            drop(old); // joins the writer thread and closes sled
        }
        let mut store = self.open_store()?;
        let recovery = store.recovery;
        let again = recovery >= long_recovery;
        if again {
            drop(store); // joins the writer thread and closes sled
            store = self.open_store()?;
            tracing::info!(
                recovery_ms = recovery.as_millis() as u64,
                "journal reopened after a long log replay; opened it again from the new snapshot"
            );
        }
        let probe = store
            .tree
            .insert(keys::REOPEN_PROBE, &crate::time::now_ms().to_be_bytes())
            .and_then(|_| store.db.flush());
        // Readable even when not yet writable: listings and pings keep working.
        *self.store.write().expect("not poisoned") = Some(Arc::new(store));
        probe?;
        self.count_dead_jobs()?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(again)
    }

    /// Opens the store for a reopen. Handles taken before the swap (a
    /// listing's iterator, a scan), or the store just closed, may still hold
    /// sled's directory lock for a moment.
    fn open_store(&self) -> Result<Store, JournalError> {
        retry_for_reopen_wait(|| {
            Store::open(
                &self.path,
                self.cache,
                self.dedup_window_ms,
                self.failed.clone(),
                self.recent.clone(),
            )
        })
    }

    /// Ends a recovery: once [`Journal::reopen`] succeeded and the lanes
    /// took the journal's queue back, they may send again — unless a write
    /// failed meanwhile (its job may be one the lanes did not take back):
    /// then the journal stays failed, for another recovery.
    pub fn mark_writable(&self, recovery: Recovery) -> Result<(), JournalError> {
        if self.failed.recovered(recovery) {
            Ok(())
        } else {
            Err(JournalError::Storage("a write failed again during the recovery".to_owned()))
        }
    }

    /// Journals a delivery and one pending job per target in `targets`,
    /// unless `(source, webhook_id)` was seen within the dedup window, and
    /// returns once the outcome is durable on disk. A duplicate is answered
    /// after a flush too: its original may have been written in the same group.
    pub async fn append(&self, mut new: NewDelivery, targets: &[String]) -> Result<Appended, JournalError> {
        self.check_quota(new.received_at_ms)?;
        let store = self.store()?;
        let landing = self.horizon.enter(new.received_at_ms, || store.db.generate_id())?;
        new.received_at_ms = landing.id().received_at_ms;
        store.writer.append(new, targets.to_vec(), landing).await
    }

    /// The id (exclusive) up to which a listing may read now: no delivery
    /// below it is still on its way in, and none can be given an id below
    /// it later (see `horizon`). Pages that stop there never skip a
    /// delivery that lands after them.
    pub fn listing_bound(&self) -> Result<DeliveryId, JournalError> {
        let db = self.db()?;
        Ok(self.horizon.bound(crate::time::now_ms(), || db.generate_id())?)
    }

    /// Where a replay's walk of the time index ends, read when it begins:
    /// past every delivery journaled by then, those stamped ahead of a clock
    /// that was set back included, and before any still landing or to come
    /// (sent by their own fan-out). Unlike a listing, a replay may name
    /// deliveries that sort after a page's cursor: it keeps no cursor.
    pub fn replay_bound(&self) -> Result<DeliveryId, JournalError> {
        let bound = self.listing_bound()?;
        let last = last_delivery(&self.tree()?)?;
        Ok(last.map_or(bound, |last| bound.max(DeliveryId { seq: last.seq.saturating_add(1), ..last })))
    }

    fn check_quota(&self, now_ms: u64) -> Result<(), JournalError> {
        let Some(quota) = &self.quota else { return Ok(()) };
        let last = quota.refreshed_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) >= QUOTA_REFRESH_MS
            && quota
                .refreshed_at_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            quota.size.store(self.db()?.size_on_disk()?, Ordering::Relaxed);
        }
        let size = quota.size.load(Ordering::Relaxed);
        if size >= quota.limit {
            return Err(JournalError::Full { size, limit: quota.limit });
        }
        Ok(())
    }

    /// Every pending job of `target`: the queue index (indexed fresh ones in
    /// arrival order, retries and replays by due time), then the unindexed
    /// fresh ones from the mark on, in arrival order. The whole of it, for
    /// tests and [`Journal::pending_count`]; lanes read it a page at a time
    /// ([`Journal::queued_page`]).
    pub fn queued(&self, target: &str) -> Result<Vec<QueueEntry>, JournalError> {
        let tree = self.tree()?;
        let mut entries = tree
            .scan_prefix(keys::queue_target_prefix(target))
            .map(|entry| {
                let (key, _) = entry?;
                QueueEntry::from_key(&key, target)
            })
            .collect::<Result<Vec<_>, _>>()?;
        entries.extend(fresh::unqueued(&tree, Some(target))?.into_iter().map(|(_, entry)| entry));
        Ok(entries)
    }

    /// One page of `target`'s queue index in `class`: up to `limit` entries
    /// from `from` on, in key order, the key of the first one past them,
    /// and with `count_rest` how many lie past them. How a lane reads its
    /// jobs back a page at a time (see `delivery::queue`).
    pub fn queued_page(
        &self,
        target: &str,
        class: QueueClass,
        from: QueueKey,
        limit: usize,
        count_rest: bool,
    ) -> Result<QueuePage, JournalError> {
        let prefix = keys::queue_prefix(target, class);
        let start = keys::queue(target, class, from.0, from.1);
        // A read error passes the prefix check and is returned below.
        let mut scan = self
            .tree()?
            .range(start..)
            .keys()
            .take_while(|key| key.as_ref().map_or(true, |key| key.starts_with(&prefix)));
        let mut page = QueuePage::default();
        for key in scan.by_ref() {
            let entry = QueueEntry::from_key(&key?, target)?;
            if page.entries.len() == limit {
                page.next = Some((entry.due_ms, entry.delivery));
                break;
            }
            page.entries.push(entry);
        }
        if count_rest {
            let mut rest = usize::from(page.next.is_some());
            for key in scan {
                key?;
                rest += 1;
            }
            page.rest = Some(rest);
        }
        Ok(page)
    }

    /// `target`'s pending fresh jobs that are not in the queue index (those
    /// of the last minute or so: see `fresh`), in arrival order.
    pub fn unindexed_fresh_jobs(&self, target: &str) -> Result<Vec<QueueEntry>, JournalError> {
        Ok(fresh::unqueued(&self.tree()?, Some(target))?.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Puts `target`'s fresh jobs `entries` into the queue index, so a lane
    /// may let them go from memory; resolves once that is flushed. A job
    /// settled meanwhile, or indexed already, is left as it is.
    pub async fn index_fresh_jobs(&self, target: &str, entries: &[QueueEntry]) -> Result<(), JournalError> {
        let writes = entries.iter().map(|entry| entry.index_waiting(target.to_owned())).collect();
        self.store()?.writer.write(writes).await
    }

    /// Removes `entry` from `target`'s queue index, if it is there: for an
    /// entry whose job turned out settled or gone, which every later reload
    /// or page would read again.
    pub async fn forget_queue_entry(&self, target: &str, entry: &QueueEntry) -> Result<(), JournalError> {
        self.store()?.writer.write(vec![writer::Write::Remove(entry.key(target))]).await
    }

    /// How many jobs of `target` are dead (kept until replayed or purged).
    pub fn dead_count(&self, target: &str) -> u64 {
        let count = self.dead.lock().expect("not poisoned").get(target).copied().unwrap_or(0);
        u64::try_from(count).unwrap_or(0)
    }

    fn count_dead(&self, target: &str, change: i64) {
        *self.dead.lock().expect("not poisoned").entry(target.to_owned()).or_default() += change;
    }

    /// Every target with a pending job: the names in the queue index (one
    /// seek per target, not a read of every entry) and of the unindexed
    /// fresh jobs. How a start finds the jobs of targets no longer in the
    /// config.
    pub fn targets_with_pending(&self) -> Result<std::collections::BTreeSet<String>, JournalError> {
        let tree = self.tree()?;
        let mut targets = std::collections::BTreeSet::new();
        let mut from = keys::QUEUE_ALL.to_vec();
        while let Some(entry) = tree.range(from.as_slice()..).keys().next() {
            let key = entry?;
            let Some(rest) = key.strip_prefix(keys::QUEUE_ALL) else { break };
            let Some(end) = rest.iter().position(|&byte| byte == 0) else {
                tracing::error!(key = ?key, "skipping a queue entry without a target");
                from = [key.as_ref(), &[0]].concat();
                continue;
            };
            // Past every key of this target (`Q` target `\0` ...): `Q` target `\1`.
            from = [&key[..1 + end], &[1]].concat();
            targets.insert(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
        targets.extend(fresh::unqueued(&tree, None)?.into_iter().map(|(job, _)| job.target));
        Ok(targets)
    }

    /// How many jobs of `target` are pending (fresh, retries and replays):
    /// its entries in the queue index, counted without holding them, and
    /// its unindexed fresh jobs.
    pub fn pending_count(&self, target: &str) -> usize {
        let Ok(tree) = self.tree() else { return 0 };
        let indexed =
            tree.scan_prefix(keys::queue_target_prefix(target)).keys().filter(Result::is_ok).count();
        indexed + fresh::unqueued(&tree, Some(target)).map_or(0, |jobs| jobs.len())
    }

    pub fn job(&self, delivery: DeliveryId, target: &str) -> Result<Option<Job>, JournalError> {
        let key = keys::job(delivery, target);
        self.tree()?.get(&key)?.map(|bytes| decode_job(&key, &bytes)).transpose()
    }

    /// Every job of one delivery.
    pub fn jobs_of(&self, delivery: DeliveryId) -> Result<Vec<Job>, JournalError> {
        self.tree()?
            .scan_prefix(keys::job_prefix(delivery))
            .map(|entry| {
                let (key, value) = entry?;
                decode_job(&key, &value)
            })
            .collect()
    }

    /// Records an attempt of `job` (as loaded by the lane, the only writer
    /// of a pending job), queued under `entry`, and moves it on: off the
    /// queue when delivered or dead, back on as a retry otherwise (returned,
    /// for the lane's in-memory queue; a replayed job's retry stays in the
    /// replay class, behind live work). The writes go through the writer
    /// thread with the next group commit, so outcomes share its batch and
    /// fsync; a crash before then repeats the attempt (at least once), it
    /// never loses the job.
    pub async fn record_attempt(
        &self,
        entry: &QueueEntry,
        job: Job,
        attempt: Attempt,
        decision: Decision,
    ) -> Result<Option<QueueEntry>, JournalError> {
        let target = job.target.clone();
        let (writes, retry) = attempt_writes(entry, job, attempt, decision);
        self.store()?.writer.write(writes).await?;
        if decision == Decision::Dead {
            self.count_dead(&target, 1);
        }
        Ok(retry)
    }

    /// Records that an operator paused (or resumed) a target; flushed at once,
    /// so a pause survives a restart.
    pub fn set_paused(&self, target: &str, paused: bool) -> Result<(), JournalError> {
        let store = self.store()?;
        let key = keys::paused(target);
        if paused {
            self.wrote(store.tree.insert(key, &[1u8]))?;
        } else {
            self.wrote(store.tree.remove(key))?;
        }
        self.wrote(store.db.flush())?;
        Ok(())
    }

    pub fn is_paused(&self, target: &str) -> Result<bool, JournalError> {
        Ok(self.tree()?.contains_key(keys::paused(target))?)
    }

    /// Ends pruning and purges, now and for good: a sweep in progress stops
    /// at its next chunk with what it removed so far (each chunk of
    /// deliveries is removed whole), a dedup prune within
    /// [`DEDUP_ENTRIES_BETWEEN_STOP_CHECKS`] entries.
    /// For shutdown, so that no scan outlives the gateway.
    pub fn stop_maintenance(&self) {
        self.maintenance_stopped.store(true, Ordering::Release);
    }

    fn maintenance_stopped(&self) -> bool {
        self.maintenance_stopped.load(Ordering::Acquire)
    }

    /// Drops dedup entries older than the window, so the index stays bounded.
    /// Returns how many were removed (stops early after
    /// [`Journal::stop_maintenance`]).
    pub fn prune_dedup(&self, now_ms: u64) -> Result<usize, JournalError> {
        let mut removed = 0;
        let tree = self.tree()?;
        for (seen, entry) in tree.scan_prefix(keys::DEDUP).enumerate() {
            if seen % DEDUP_ENTRIES_BETWEEN_STOP_CHECKS == 0 && self.maintenance_stopped() {
                break;
            }
            let (key, value) = entry?;
            let expired = DeliveryId::from_key(&value)
                .is_none_or(|id| now_ms.saturating_sub(id.received_at_ms) >= self.dedup_window_ms);
            // Compare-and-swap: a fresh entry written meanwhile is kept.
            if expired && self.wrote(tree.compare_and_swap(&key, Some(&value), None::<&[u8]>))?.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The content fetched to enrich a delivery, if it was fetched before.
    pub fn enrichment(&self, id: DeliveryId) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.tree()?.get(keys::enrichment(id))?.map(|bytes| bytes.to_vec()))
    }

    /// Journals a delivery's enrichment with the next group commit, so it is
    /// fetched once for every target and every attempt, restarts included.
    pub async fn save_enrichment(&self, id: DeliveryId, content: Vec<u8>) -> Result<(), JournalError> {
        self.store()?.writer.write(vec![writer::Write::Insert(keys::enrichment(id), content)]).await
    }

    /// Whether a delivery of this Monitor detection is in the journal.
    pub fn has_event_group(&self, source: &str, event_group: &str) -> Result<bool, JournalError> {
        Ok(self.tree()?.contains_key(keys::group(source, event_group))?)
    }

    pub fn get(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>, JournalError> {
        self.tree()?.get(keys::delivery(id))?.map(|bytes| decode(&id.to_key(), &bytes)).transpose()
    }

    /// A delivery's record as a lane sends it: shared with the other lanes,
    /// from memory when it was journaled or read lately (see `recent`).
    pub fn record_to_send(&self, id: DeliveryId) -> Result<Option<Arc<DeliveryRecord>>, JournalError> {
        if let Some(record) = self.recent.lock().expect("not poisoned").get(id) {
            return Ok(Some(record));
        }
        let Some(record) = self.get(id)? else { return Ok(None) };
        let record = Arc::new(record);
        self.recent.lock().expect("not poisoned").insert(record.clone());
        Ok(Some(record))
    }

    /// Every delivery, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Result<DeliveryRecord, JournalError>> + '_ {
        self.deliveries_from(DeliveryId { received_at_ms: 0, seq: 0 })
    }

    /// Deliveries from `start` on (inclusive), oldest first: the time index.
    pub fn deliveries_from(
        &self,
        start: DeliveryId,
    ) -> impl Iterator<Item = Result<DeliveryRecord, JournalError>> + '_ {
        let (tree, unavailable) = match self.tree() {
            Ok(tree) => (Some(tree), None),
            Err(err) => (None, Some(Err(err))),
        };
        unavailable.into_iter().chain(
            tree.into_iter()
                .flat_map(move |tree| tree.range(keys::delivery(start)..))
                .take_while(|entry| entry.as_ref().map_or(true, |(key, _)| key.starts_with(keys::DELIVERY)))
                .map(|entry| {
                    let (key, value) = entry?;
                    decode(&key[1..], &value)
                }),
        )
    }

    /// How many deliveries the journal holds (walks them: for tests and tools).
    pub fn len(&self) -> usize {
        self.tree().map_or(0, |tree| tree.scan_prefix(keys::DELIVERY).count())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts every pending fresh job into the queue index, as opening does
    /// (see `fresh`); returns how many. Called at shutdown: a journal closed
    /// cleanly is then one that earlier versions, which know only the queue
    /// index, read whole, so a rollback loses nothing.
    pub async fn queue_fresh_jobs(&self) -> Result<usize, JournalError> {
        self.store()?.writer.queue_fresh_jobs().await
    }

    /// Puts the fresh jobs of deliveries received before `before_ms` that
    /// are still pending into the queue index, at most `limit` at a time;
    /// returns how many it indexed (0: nothing left to do). A job waiting
    /// that long (its target down, paused or removed) would otherwise hold
    /// the fresh-job mark back, and every start would scan the jobs since
    /// (see `fresh`).
    pub async fn queue_waiting_fresh_jobs(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> Result<usize, JournalError> {
        let tree = self.tree()?;
        let until = DeliveryId { received_at_ms: before_ms, seq: 0 };
        let found =
            tokio::task::spawn_blocking(move || fresh::unqueued_before(&tree, None, Some(until), limit))
                .await
                .map_err(|err| {
                    JournalError::Storage(format!("the scan for waiting jobs did not run: {err}"))
                })??;
        if found.is_empty() {
            return Ok(0);
        }
        let keys: Vec<Vec<u8>> = found.iter().map(|(job, entry)| entry.key(&job.target)).collect();
        let writes = found.into_iter().map(|(job, entry)| entry.index_waiting(job.target)).collect();
        self.store()?.writer.write(writes).await?;
        // The writer skips a job settled meanwhile (or one it does not
        // track): count what is really indexed now, so a caller looping
        // until 0 never spins on jobs it cannot index.
        let tree = self.tree()?;
        let mut indexed = 0;
        for key in keys {
            indexed += usize::from(tree.contains_key(key)?);
        }
        Ok(indexed)
    }

    /// How many of `target`'s jobs the queue index holds (for tests).
    #[cfg(test)]
    pub(crate) fn indexed_jobs(&self, target: &str) -> usize {
        self.tree().map_or(0, |tree| tree.scan_prefix(keys::queue_target_prefix(target)).count())
    }

    /// Flushes everything to disk now (used at shutdown).
    pub fn flush(&self) -> Result<(), JournalError> {
        self.wrote(self.db()?.flush())?;
        Ok(())
    }

    /// Resolves once the writer thread has caught up with every append
    /// queued before the call (a liveness check for the watchdog).
    pub async fn ping(&self) -> Result<(), JournalError> {
        self.store()?.writer.ping().await
    }

    /// Group-commit flushes run so far (by the current writer thread).
    pub fn flush_count(&self) -> u64 {
        self.store().map_or(0, |store| store.writer.flushes())
    }

    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        Ok(self.db()?.size_on_disk()?)
    }
}

/// Which part of a target's queue a job sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClass {
    Fresh = 0,
    Retry = 1,
    Replay = 2,
}

/// A job's place in its class of a target's queue index: due time, then
/// delivery (a fresh job is due when it arrived).
pub type QueueKey = (u64, DeliveryId);

/// A page of a target's queue index (see [`Journal::queued_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuePage {
    /// In key order.
    pub entries: Vec<QueueEntry>,
    /// The key of the first entry past the page; `None`: the class ended.
    pub next: Option<QueueKey>,
    /// How many entries lie past the page, when counted.
    pub rest: Option<usize>,
}

/// A queued job of a target: its place in the journal's queue index. A lane
/// holds one for each of its pending jobs, so it is kept small: the queue
/// key is built when needed ([`QueueEntry::key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEntry {
    pub class: QueueClass,
    pub due_ms: u64,
    pub delivery: DeliveryId,
}

impl QueueEntry {
    pub fn new(class: QueueClass, due_ms: u64, delivery: DeliveryId) -> Self {
        QueueEntry { class, due_ms, delivery }
    }

    /// Its key in `target`'s queue index.
    pub fn key(&self, target: &str) -> Vec<u8> {
        keys::queue(target, self.class, self.due_ms, self.delivery)
    }

    /// The entry `key` (of `target`'s queue index) stands for.
    fn from_key(key: &[u8], target: &str) -> Result<Self, JournalError> {
        Self::parse(key, target.len()).ok_or_else(|| JournalError::Corrupt {
            key: format!("{key:02x?}"),
            error: DecodeError::Truncated,
        })
    }

    /// The write that indexes this fresh job of `target` (skipped by the
    /// writer if the job is settled or indexed already).
    fn index_waiting(&self, target: String) -> writer::Write {
        writer::Write::IndexWaiting { delivery: self.delivery, queue_key: self.key(&target), target }
    }

    fn parse(key: &[u8], target_len: usize) -> Option<Self> {
        let rest = key.get(1 + target_len + 1..)?;
        let class = match rest.first()? {
            0 => QueueClass::Fresh,
            1 => QueueClass::Retry,
            2 => QueueClass::Replay,
            _ => return None,
        };
        let due_ms = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
        let delivery = DeliveryId::from_key(rest.get(9..)?)?;
        Some(QueueEntry { class, due_ms, delivery })
    }
}

/// The writes that record one attempt of `job`, and its retry entry if any.
fn attempt_writes(
    entry: &QueueEntry,
    mut job: Job,
    attempt: Attempt,
    decision: Decision,
) -> (Vec<writer::Write>, Option<QueueEntry>) {
    use writer::Write;
    job.push_attempt(attempt);
    let mut writes = vec![match entry.class {
        // Indexed only if it was at the open, a clean stop or after
        // waiting: the writer knows which, and removes the entry if so.
        QueueClass::Fresh => Write::SettleFresh {
            delivery: entry.delivery,
            target: job.target.clone(),
            queue_key: entry.key(&job.target),
        },
        QueueClass::Retry | QueueClass::Replay => Write::Remove(entry.key(&job.target)),
    }];
    let retry = match decision {
        Decision::Delivered => {
            job.state = JobState::Delivered;
            None
        }
        Decision::Dead => {
            job.state = JobState::Dead;
            writes.push(Write::Insert(keys::dead(&job.target, entry.delivery), Vec::new()));
            None
        }
        Decision::RetryAt(at_ms) => {
            job.state = JobState::Pending;
            job.next_attempt_at_ms = at_ms;
            let class = match entry.class {
                QueueClass::Replay => QueueClass::Replay,
                QueueClass::Fresh | QueueClass::Retry => QueueClass::Retry,
            };
            let retry = QueueEntry::new(class, at_ms, entry.delivery);
            writes.push(Write::Insert(retry.key(&job.target), Vec::new()));
            Some(retry)
        }
    };
    writes.push(Write::Insert(keys::job(entry.delivery, &job.target), job.encode()));
    (writes, retry)
}

/// Journals written before the `K` index existed hold dead jobs without
/// entries: index them once, then leave a marker so it is never redone.
fn index_dead_jobs(db: &sled::Db, tree: &sled::Tree) -> Result<(), JournalError> {
    if tree.contains_key(keys::DEAD_INDEX_MARKER)? {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for entry in tree.scan_prefix(keys::JOB) {
        let (key, value) = entry?;
        let Some(job) = unless_corrupt(decode_job(&key, &value), "dead-job index")? else { continue };
        if job.state == JobState::Dead {
            batch.insert(keys::dead(&job.target, job.delivery), &[]);
        }
    }
    batch.insert(keys::DEAD_INDEX_MARKER, &[1u8]);
    tree.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// Journals written before the `G` index existed hold detections without
/// entries (a backfill would inject them again): index them once, the
/// latest delivery of a group owning it (as in the writer), then leave a
/// marker.
fn index_event_groups(db: &sled::Db, tree: &sled::Tree) -> Result<(), JournalError> {
    if tree.contains_key(keys::GROUP_INDEX_MARKER)? {
        return Ok(());
    }
    let mut owners = HashMap::new();
    for entry in tree.scan_prefix(keys::DELIVERY) {
        let (key, value) = entry?;
        let Some(record) = unless_corrupt(decode(&key[1..], &value), "event-group index")? else { continue };
        let Some(group) = crate::envelope::Envelope::from_body(&record.body).event_group_id else { continue };
        let backfilled = record.webhook_id.starts_with(crate::parallel::BACKFILL_ID_PREFIX);
        // In time order: a later delivery of the group takes it over.
        owners.insert(keys::group(&record.source, &group), keys::group_owner(record.id, backfilled));
    }
    let mut batch = sled::Batch::default();
    for (group_key, owner) in owners {
        if !tree.contains_key(&group_key)? {
            batch.insert(group_key, owner);
        }
    }
    batch.insert(keys::GROUP_INDEX_MARKER, &[1u8]);
    // Built by the latest delivery: nothing for `hand_group_entries_to_latest`.
    batch.insert(keys::GROUP_OWNERS_MARKER, &[1u8]);
    tree.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// The id of the latest delivery journaled.
fn last_delivery(tree: &sled::Tree) -> Result<Option<DeliveryId>, JournalError> {
    let last = tree.scan_prefix(keys::DELIVERY).keys().next_back().transpose()?;
    Ok(last.and_then(|key| DeliveryId::from_key(&key[keys::DELIVERY.len()..])))
}

/// `Ok(None)` for a corrupt record or job, logged: a scan over the whole
/// journal (retention, the open's one-time indexing, a replay and its
/// progress) goes on past one bad entry, which stays as it is, instead of
/// stopping at it for good.
pub(crate) fn unless_corrupt<T>(
    result: Result<T, JournalError>,
    scan: &'static str,
) -> Result<Option<T>, JournalError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err @ JournalError::Corrupt { .. }) => {
            tracing::error!(error = %err, scan, "skipping a corrupt journal entry; it is kept as it is");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

fn decode_job(key: &[u8], bytes: &[u8]) -> Result<Job, JournalError> {
    Job::decode(bytes).map_err(|error| JournalError::Corrupt { key: format!("job {key:02x?}"), error })
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<DeliveryRecord, JournalError> {
    DeliveryRecord::decode(bytes).map_err(|error| JournalError::Corrupt {
        key: DeliveryId::from_key(key).map_or_else(|| format!("{key:02x?}"), |id| id.to_string()),
        error,
    })
}

/// Key layout of the journal tree (see the module docs).
mod keys {
    #[cfg(test)]
    use super::QueueEntry;
    use super::{DeliveryId, QueueClass};

    pub const DELIVERY: &[u8] = b"D";
    pub const DEDUP: &[u8] = b"U";
    pub const DEAD: &[u8] = b"K";
    /// Present once the `K` index covers every dead job.
    pub const DEAD_INDEX_MARKER: &[u8] = b"M:dead-index";
    pub const GROUP_INDEX_MARKER: &[u8] = b"M:group-index";
    /// Present once every group entry points at the group's latest delivery.
    pub const GROUP_OWNERS_MARKER: &[u8] = b"M:group-owners";
    /// Written and flushed by a reopen, to prove the journal takes writes.
    pub const REOPEN_PROBE: &[u8] = b"M:reopen-probe";
    pub const JOB: &[u8] = b"J";
    pub const REPLAY: &[u8] = b"R";
    const REPLAY_PAIR: &[u8] = b"X";
    const QUEUE: u8 = b'Q';
    /// Every queue entry of every target.
    pub const QUEUE_ALL: &[u8] = b"Q";
    /// The fresh-job low-water mark (see `fresh`).
    pub const FRESH_FROM: &[u8] = b"M:fresh-from";
    const PAUSED: &[u8] = b"P";

    /// A dead job of `target` (present = dead).
    pub fn dead(target: &str, delivery: DeliveryId) -> Vec<u8> {
        [DEAD, target.as_bytes(), b"\0", &delivery.to_key()].concat()
    }

    pub fn dead_target(key: &[u8]) -> Option<&str> {
        let rest = key.strip_prefix(DEAD)?;
        let target = rest.get(..rest.len().checked_sub(1 + DeliveryId::KEY_LEN)?)?;
        std::str::from_utf8(target).ok()
    }

    pub fn replay(id: u64) -> Vec<u8> {
        [REPLAY, &id.to_be_bytes()].concat()
    }

    pub fn replay_pairs(id: u64) -> Vec<u8> {
        [REPLAY_PAIR, &id.to_be_bytes()].concat()
    }

    /// The replay id of any key in a replay's pair list.
    pub fn replay_pairs_id(key: &[u8]) -> Option<u64> {
        let id = key.strip_prefix(REPLAY_PAIR)?.get(..8)?;
        Some(u64::from_be_bytes(id.try_into().ok()?))
    }

    pub fn replay_pair(id: u64, delivery: DeliveryId, target: &str) -> Vec<u8> {
        [&replay_pairs(id)[..], &delivery.to_key(), target.as_bytes()].concat()
    }

    /// The delivery and target of a `replay_pair` key.
    pub fn parse_replay_pair(key: &[u8]) -> Option<(DeliveryId, &str)> {
        let rest = key.get(1 + 8..)?;
        let delivery = DeliveryId::from_key(rest.get(..DeliveryId::KEY_LEN)?)?;
        let target = std::str::from_utf8(&rest[DeliveryId::KEY_LEN..]).ok()?;
        Some((delivery, target))
    }

    /// An operator's pause of a target (present = paused).
    pub fn paused(target: &str) -> Vec<u8> {
        [PAUSED, target.as_bytes()].concat()
    }

    pub fn delivery(id: DeliveryId) -> Vec<u8> {
        [DELIVERY, &id.to_key()].concat()
    }

    pub fn enrichment(id: DeliveryId) -> Vec<u8> {
        [&b"E"[..], &id.to_key()].concat()
    }

    pub fn group(source: &str, event_group: &str) -> Vec<u8> {
        [b"G", source.as_bytes(), b"\0", event_group.as_bytes()].concat()
    }

    /// A purged detection whose group entry stays as a tombstone, by the
    /// time of the purge and the purged delivery → the group key: retention
    /// finds it there once the purge is past retention (see `retention`).
    pub fn group_tombstone(purged_at_ms: u64, id: DeliveryId) -> Vec<u8> {
        [GROUP_TOMBSTONE, &purged_at_ms.to_be_bytes(), &id.to_key()].concat()
    }

    /// Where tombstones of purges at or after `ms` begin.
    pub fn group_tombstones_before(ms: u64) -> Vec<u8> {
        [GROUP_TOMBSTONE, &ms.to_be_bytes()].concat()
    }

    /// The purged delivery of a tombstone key.
    pub fn group_tombstone_delivery(key: &[u8]) -> Option<DeliveryId> {
        DeliveryId::from_key(key.strip_prefix(GROUP_TOMBSTONE)?.get(8..)?)
    }

    pub const GROUP_TOMBSTONE: &[u8] = b"T";

    /// A group entry's value: the owning delivery, and whether it was backfilled.
    pub fn group_owner(id: DeliveryId, backfilled: bool) -> Vec<u8> {
        [&id.to_key()[..], &[u8::from(backfilled)]].concat()
    }

    pub fn parse_group_owner(value: &[u8]) -> Option<(DeliveryId, bool)> {
        let (id, flag) = value.split_at_checked(DeliveryId::KEY_LEN)?;
        Some((DeliveryId::from_key(id)?, flag == [1]))
    }

    pub fn dedup(source: &str, webhook_id: &str) -> Vec<u8> {
        [DEDUP, source.as_bytes(), b"\0", webhook_id.as_bytes()].concat()
    }

    pub fn job_prefix(delivery: DeliveryId) -> Vec<u8> {
        [JOB, &delivery.to_key()].concat()
    }

    pub fn job(delivery: DeliveryId, target: &str) -> Vec<u8> {
        [job_prefix(delivery).as_slice(), target.as_bytes()].concat()
    }

    /// Every queued job of one target (target names never contain `\0`).
    pub fn queue_target_prefix(target: &str) -> Vec<u8> {
        [&[QUEUE][..], target.as_bytes(), b"\0"].concat()
    }

    /// The target of a queue key, and the entry it stands for.
    #[cfg(test)]
    pub fn parse_queue(key: &[u8]) -> Option<(&str, QueueEntry)> {
        let target_end = key.len().checked_sub(1 + 1 + 8 + DeliveryId::KEY_LEN)?;
        if key.first() != Some(&QUEUE) || target_end < 1 || key[target_end] != 0 {
            return None;
        }
        let target = std::str::from_utf8(&key[1..target_end]).ok()?;
        Some((target, QueueEntry::parse(key, target.len())?))
    }

    pub fn queue_prefix(target: &str, class: QueueClass) -> Vec<u8> {
        let mut key = queue_target_prefix(target);
        key.push(class as u8);
        key
    }

    pub fn queue(target: &str, class: QueueClass, due_ms: u64, delivery: DeliveryId) -> Vec<u8> {
        let mut key = queue_prefix(target, class);
        key.extend_from_slice(&due_ms.to_be_bytes());
        key.extend_from_slice(&delivery.to_key());
        key
    }
}

#[cfg(test)]
mod tests;
