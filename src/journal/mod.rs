//! The journal: the only module that knows sled.
//!
//! Trees:
//! - `deliveries`: [`DeliveryId`] key (time-ordered) → encoded [`DeliveryRecord`];
//!   being keyed by time, it is also the time index for listing and replay.
//! - `dedup`: `source \0 webhook-id` → the key of the first delivery with that
//!   id, which carries its receive time, so the window check needs no lookup.
//!
//! [`Journal::append`] writes record and dedup entry in one sled transaction
//! and returns only once a group-commit flush covers the write: an
//! acknowledged delivery survives a crash.

mod codec;
mod commit;
mod record;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

pub use codec::DecodeError;
pub use record::{BadDeliveryId, DeliveryId, DeliveryRecord};

use crate::config::JournalConfig;
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
            commit,
            dedup_window_ms: u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX),
            quota,
        })
    }

    /// Journals a delivery unless `(source, webhook_id)` was seen within the
    /// dedup window, and returns once the outcome is durable on disk.
    pub async fn append(&self, new: NewDelivery) -> Result<Appended, JournalError> {
        self.check_quota(new.received_at_ms)?;
        let appended = self.write(new)?;
        // A duplicate waits too: the original may still be awaiting its flush.
        self.commit.durable().await.map_err(JournalError::Storage)?;
        Ok(appended)
    }

    fn write(&self, new: NewDelivery) -> Result<Appended, JournalError> {
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
        let outcome = (&self.deliveries, &self.dedup).transaction(|(deliveries, dedup)| {
            if let Some(previous) = dedup.get(&dedup_key)?.as_deref().and_then(DeliveryId::from_key)
                && received_at_ms.saturating_sub(previous.received_at_ms) < window
            {
                return Err(ConflictableTransactionError::Abort(previous));
            }
            dedup.insert(dedup_key.as_slice(), &id.to_key())?;
            deliveries.insert(&id.to_key(), record.as_slice())?;
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
