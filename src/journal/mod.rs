//! The journal: the only module that knows sled.
//!
//! Trees:
//! - `deliveries`: [`DeliveryId`] key (time-ordered) → encoded [`DeliveryRecord`];
//!   being keyed by time, it is also the time index for listing and replay.
//! - `dedup`: `source \0 webhook-id` → the key of the first delivery with that
//!   id, which carries its receive time, so the window check needs no lookup.
//! - `jobs`: delivery key ++ target name → encoded [`Job`] (state and history).
//! - `queue`: the work index of pending jobs, per target:
//!   `target \0 class due_ms delivery_key` → empty, where class 0 is a fresh
//!   job (due = creation, so FIFO) and class 1 a retry (ordered by due time).
//!   A job stays indexed while an attempt is in flight, so a crash leaves it
//!   pending and it is retried at the next start.
//!
//! [`Journal::append`] writes record, dedup entry and the fan-out jobs in one
//! sled transaction and returns only once a group-commit flush covers the
//! write: an acknowledged delivery and its jobs survive a crash.

mod codec;
mod commit;
mod job;
mod record;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

pub use codec::DecodeError;
pub use job::{Attempt, Job, JobState};
pub use record::{BadDeliveryId, DeliveryId, DeliveryRecord};

use crate::config::JournalConfig;
use crate::delivery::policy::Decision;
use commit::GroupCommit;

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
    db: sled::Db,
    deliveries: sled::Tree,
    dedup: sled::Tree,
    jobs: sled::Tree,
    queue: sled::Tree,
    commit: GroupCommit,
    dedup_window_ms: u64,
    quota: Option<Quota>,
}

/// A disk-size limit, checked against a figure refreshed at most once a
/// second: reading the size walks sled's files, too slow for every request.
struct Quota {
    limit: u64,
    size: AtomicU64,
    refreshed_at_ms: AtomicU64,
}

const QUOTA_REFRESH_MS: u64 = 1_000;

impl Journal {
    /// Opens (or creates) the journal directory.
    pub fn open(config: &JournalConfig) -> Result<Journal, JournalError> {
        let db = sled::Config::new().path(&config.path).cache_capacity(config.cache).open()?;
        Journal::from_db(db, config.dedup_window, config.max_size)
    }

    fn from_db(db: sled::Db, dedup_window: Duration, max_size: Option<u64>) -> Result<Journal, JournalError> {
        let deliveries = db.open_tree("deliveries")?;
        let dedup = db.open_tree("dedup")?;
        let jobs = db.open_tree("jobs")?;
        let queue = db.open_tree("queue")?;
        let commit = GroupCommit::start(db.clone())
            .map_err(|err| JournalError::Storage(format!("cannot start the commit thread: {err}")))?;
        let quota = match max_size {
            None => None,
            Some(limit) => Some(Quota {
                limit,
                size: AtomicU64::new(db.size_on_disk()?),
                refreshed_at_ms: AtomicU64::new(0),
            }),
        };
        Ok(Journal {
            db,
            deliveries,
            dedup,
            jobs,
            queue,
            commit,
            dedup_window_ms: u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX),
            quota,
        })
    }

    /// Journals a delivery and one pending job per target in `targets`,
    /// unless `(source, webhook_id)` was seen within the dedup window, and
    /// returns once the outcome is durable on disk.
    pub async fn append(&self, new: NewDelivery, targets: &[String]) -> Result<Appended, JournalError> {
        self.check_quota(new.received_at_ms)?;
        let appended = self.write(new, targets)?;
        // A duplicate waits too: the original may still be awaiting its flush.
        self.commit.durable().await.map_err(JournalError::Storage)?;
        Ok(appended)
    }

    fn write(&self, new: NewDelivery, targets: &[String]) -> Result<Appended, JournalError> {
        let id = DeliveryId { received_at_ms: new.received_at_ms, seq: self.db.generate_id()? };
        let dedup_key = dedup_key(&new.source, &new.webhook_id);
        let received_at_ms = new.received_at_ms;
        let record = DeliveryRecord {
            id,
            source: new.source,
            webhook_id: new.webhook_id,
            webhook_timestamp: new.webhook_timestamp,
            webhook_signature: new.webhook_signature,
            content_type: new.content_type,
            event_type: new.event_type,
            monitor_id: new.monitor_id,
            body: new.body,
        }
        .encode();
        let window = self.dedup_window_ms;
        let jobs: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = targets
            .iter()
            .map(|target| {
                let job = Job::new(id, target, received_at_ms, false);
                (job_key(id, target), job.encode(), queue_key(target, QueueClass::Fresh, received_at_ms, id))
            })
            .collect();
        let trees = (&self.deliveries, &self.dedup, &self.jobs, &self.queue);
        let outcome = trees.transaction(|(deliveries, dedup, job_tree, queue)| {
            if let Some(previous) = dedup.get(&dedup_key)?.as_deref().and_then(DeliveryId::from_key)
                && received_at_ms.saturating_sub(previous.received_at_ms) < window
            {
                return Err(ConflictableTransactionError::Abort(previous));
            }
            dedup.insert(dedup_key.as_slice(), &id.to_key())?;
            deliveries.insert(&id.to_key(), record.as_slice())?;
            for (key, job, queued) in &jobs {
                job_tree.insert(key.as_slice(), job.as_slice())?;
                queue.insert(queued.as_slice(), &[])?;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => Ok(Appended { id, duplicate: false }),
            Err(sled::transaction::TransactionError::Abort(original)) => {
                Ok(Appended { id: original, duplicate: true })
            }
            Err(sled::transaction::TransactionError::Storage(err)) => Err(err.into()),
        }
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
            quota.size.store(self.db.size_on_disk()?, Ordering::Relaxed);
        }
        let size = quota.size.load(Ordering::Relaxed);
        if size >= quota.limit {
            return Err(JournalError::Full { size, limit: quota.limit });
        }
        Ok(())
    }

    /// The oldest fresh job of `target` not in `skip` (jobs in flight).
    pub fn next_fresh(
        &self,
        target: &str,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<QueueEntry>, JournalError> {
        self.first_queued(target, QueueClass::Fresh, skip)
    }

    /// The earliest-due retry of `target` not in `skip`; it may be due later.
    pub fn next_retry(
        &self,
        target: &str,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<QueueEntry>, JournalError> {
        self.first_queued(target, QueueClass::Retry, skip)
    }

    fn first_queued(
        &self,
        target: &str,
        class: QueueClass,
        skip: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Option<QueueEntry>, JournalError> {
        for entry in self.queue.scan_prefix(queue_prefix(target, class)) {
            let (key, _) = entry?;
            if skip(&key) {
                continue;
            }
            return QueueEntry::parse(&key, target.len()).map(Some).ok_or_else(|| JournalError::Corrupt {
                key: format!("{key:02x?}"),
                error: DecodeError::Truncated,
            });
        }
        Ok(None)
    }

    /// How many jobs of `target` are pending (fresh and retries).
    pub fn pending_count(&self, target: &str) -> usize {
        let mut prefix = target.as_bytes().to_vec();
        prefix.push(0);
        self.queue.scan_prefix(prefix).count()
    }

    pub fn job(&self, delivery: DeliveryId, target: &str) -> Result<Option<Job>, JournalError> {
        let key = job_key(delivery, target);
        self.jobs.get(&key)?.map(|bytes| decode_job(&key, &bytes)).transpose()
    }

    /// Every job of one delivery.
    pub fn jobs_of(&self, delivery: DeliveryId) -> Result<Vec<Job>, JournalError> {
        self.jobs
            .scan_prefix(delivery.to_key())
            .map(|entry| {
                let (key, value) = entry?;
                decode_job(&key, &value)
            })
            .collect()
    }

    /// Records an attempt of the job queued under `entry` and moves it on:
    /// off the queue when delivered or dead, back on as a retry otherwise.
    /// Not flushed here: a crash before the next flush repeats the attempt
    /// (at-least-once), it never loses the job.
    pub fn record_attempt(
        &self,
        entry: &QueueEntry,
        target: &str,
        attempt: Attempt,
        decision: Decision,
    ) -> Result<Job, JournalError> {
        let key = job_key(entry.delivery, target);
        let outcome = (&self.jobs, &self.queue).transaction(|(jobs, queue)| {
            let Some(bytes) = jobs.get(&key)? else {
                return Err(ConflictableTransactionError::Abort(JournalError::Corrupt {
                    key: format!("job {} → {target}", entry.delivery),
                    error: DecodeError::Truncated,
                }));
            };
            let mut job = decode_job(&key, &bytes).map_err(ConflictableTransactionError::Abort)?;
            job.push_attempt(attempt.clone());
            queue.remove(entry.key.as_slice())?;
            match decision {
                Decision::Delivered => job.state = JobState::Delivered,
                Decision::Dead => job.state = JobState::Dead,
                Decision::RetryAt(at_ms) => {
                    job.state = JobState::Pending;
                    job.next_attempt_at_ms = at_ms;
                    queue.insert(queue_key(target, QueueClass::Retry, at_ms, entry.delivery), &[])?;
                }
            }
            jobs.insert(key.as_slice(), job.encode())?;
            Ok(job)
        });
        outcome.map_err(|err| match err {
            sled::transaction::TransactionError::Abort(err) => err,
            sled::transaction::TransactionError::Storage(err) => err.into(),
        })
    }

    /// Drops dedup entries older than the window, so the index stays bounded.
    /// Returns how many were removed.
    pub fn prune_dedup(&self, now_ms: u64) -> Result<usize, JournalError> {
        let mut removed = 0;
        for entry in self.dedup.iter() {
            let (key, value) = entry?;
            let expired = DeliveryId::from_key(&value)
                .is_none_or(|id| now_ms.saturating_sub(id.received_at_ms) >= self.dedup_window_ms);
            // Compare-and-swap: a fresh entry written meanwhile is kept.
            if expired && self.dedup.compare_and_swap(&key, Some(&value), None::<&[u8]>)?.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn get(&self, id: DeliveryId) -> Result<Option<DeliveryRecord>, JournalError> {
        self.deliveries.get(id.to_key())?.map(|bytes| decode(&id.to_key(), &bytes)).transpose()
    }

    /// Every delivery, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = Result<DeliveryRecord, JournalError>> + '_ {
        self.deliveries.iter().map(|entry| {
            let (key, value) = entry?;
            decode(&key, &value)
        })
    }

    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// Flushes everything to disk now (used at shutdown).
    pub fn flush(&self) -> Result<(), JournalError> {
        self.db.flush()?;
        Ok(())
    }

    /// Group-commit flushes run so far.
    pub fn flush_count(&self) -> u64 {
        self.commit.flushes()
    }

    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Which part of a target's queue a job sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueClass {
    Fresh = 0,
    Retry = 1,
}

/// A queued job, as found by [`Journal::next_fresh`] or [`Journal::next_retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    /// The queue key; identifies the entry while its attempt is in flight.
    pub key: Vec<u8>,
    pub class: QueueClass,
    pub due_ms: u64,
    pub delivery: DeliveryId,
}

impl QueueEntry {
    fn parse(key: &[u8], target_len: usize) -> Option<Self> {
        let rest = key.get(target_len + 1..)?;
        let class = match rest.first()? {
            0 => QueueClass::Fresh,
            1 => QueueClass::Retry,
            _ => return None,
        };
        let due_ms = u64::from_be_bytes(rest.get(1..9)?.try_into().ok()?);
        let delivery = DeliveryId::from_key(rest.get(9..)?)?;
        Some(QueueEntry { key: key.to_vec(), class, due_ms, delivery })
    }
}

fn queue_prefix(target: &str, class: QueueClass) -> Vec<u8> {
    let mut key = Vec::with_capacity(target.len() + 2 + 8 + DeliveryId::KEY_LEN);
    key.extend_from_slice(target.as_bytes());
    key.push(0);
    key.push(class as u8);
    key
}

fn queue_key(target: &str, class: QueueClass, due_ms: u64, delivery: DeliveryId) -> Vec<u8> {
    let mut key = queue_prefix(target, class);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(&delivery.to_key());
    key
}

fn job_key(delivery: DeliveryId, target: &str) -> Vec<u8> {
    let mut key = delivery.to_key().to_vec();
    key.extend_from_slice(target.as_bytes());
    key
}

fn decode_job(key: &[u8], bytes: &[u8]) -> Result<Job, JournalError> {
    Job::decode(bytes).map_err(|error| JournalError::Corrupt { key: format!("job {key:02x?}"), error })
}

fn dedup_key(source: &str, webhook_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + 1 + webhook_id.len());
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.extend_from_slice(webhook_id.as_bytes());
    key
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<DeliveryRecord, JournalError> {
    DeliveryRecord::decode(bytes).map_err(|error| JournalError::Corrupt {
        key: DeliveryId::from_key(key).map_or_else(|| format!("{key:02x?}"), |id| id.to_string()),
        error,
    })
}

#[cfg(test)]
mod tests;
