//! Replays as the journal keeps them.
//!
//! A replay requeues (delivery, target) pairs: each pair's job is reset to
//! pending with a fresh retry budget and the replay's id (or created, for a
//! target added after the delivery arrived), queued in the replay class, and
//! listed under the replay (`X` keys) so its progress can be read back from
//! the jobs themselves. Which pairs to requeue is decided by the caller
//! (`crate::replay`); a pair whose job is still pending is skipped, since it
//! is going to be delivered anyway.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use super::{DeliveryId, Job, JobState, Journal, JournalError, QueueClass, QueueEntry, keys};

/// Pairs written per sled batch: bounds the memory a huge replay holds at once.
const CHUNK: usize = 1024;

/// A replay's id: a journal sequence number, shown as `rpl_` and 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplayId(pub u64);

impl fmt::Display for ReplayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rpl_{:016x}", self.0)
    }
}

/// The text did not look like `rpl_` followed by 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a replay id (expected rpl_ and 16 hex digits)")]
pub struct BadReplayId;

impl FromStr for ReplayId {
    type Err = BadReplayId;
    fn from_str(text: &str) -> Result<Self, BadReplayId> {
        let hex = text.strip_prefix("rpl_").ok_or(BadReplayId)?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadReplayId);
        }
        u64::from_str_radix(hex, 16).map(ReplayId).map_err(|_| BadReplayId)
    }
}

/// What [`Journal::start_replay`] did.
#[derive(Debug)]
pub struct ReplayStarted {
    pub id: ReplayId,
    /// Pairs requeued.
    pub matched: u64,
    /// Pairs left alone because their job was still pending.
    pub skipped: u64,
    /// The queue entries written (with their targets), for the lanes'
    /// in-memory queues.
    pub queued: Vec<(String, QueueEntry)>,
}

/// A replay as created.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    pub id: ReplayId,
    pub created_at_ms: u64,
    /// The selection as the operator gave it (normalised by the caller).
    pub selection: Value,
    pub matched: u64,
    pub skipped: u64,
}

/// Where a replay's pairs stand now.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayProgress {
    pub summary: ReplaySummary,
    pub pending: u64,
    /// Delivered.
    pub done: u64,
    /// Dead again: the retry budget ran out once more.
    pub failed: u64,
    /// Replayed again by a later replay, or purged, since.
    pub superseded: u64,
}

impl ReplayProgress {
    pub fn finished(&self) -> bool {
        self.pending == 0
    }
}

impl Journal {
    /// Requeues every pair `pairs` yields (skipping pairs whose job is still
    /// pending), under a new replay id, and returns once all of it is durable:
    /// a replay that was answered survives a crash. The queue entries it
    /// wrote come back for the lanes.
    pub fn start_replay<I>(
        &self,
        selection: Value,
        pairs: I,
        now_ms: u64,
    ) -> Result<ReplayStarted, JournalError>
    where
        I: IntoIterator<Item = Result<(DeliveryId, String), JournalError>>,
    {
        let _maintenance = self.maintenance.lock().expect("not poisoned");
        let id = ReplayId(self.db.generate_id()?);
        let mut summary = ReplaySummary { id, created_at_ms: now_ms, selection, matched: 0, skipped: 0 };
        // The summary goes first, so a replay cut short by a crash is still
        // listed with the pairs it did requeue.
        self.tree.insert(keys::replay(id.0), encode_summary(&summary))?;
        let mut queued = Vec::new();
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        let mut revived: Vec<String> = Vec::new();
        // Pairs in the unwritten batch: a repeated pair must not be read back
        // as its old state and requeued (or counted) twice.
        let mut in_this_batch = std::collections::HashSet::new();
        for pair in pairs {
            let (delivery, target) = pair?;
            if !in_this_batch.insert((delivery, target.clone())) {
                continue;
            }
            let job = match self.job(delivery, &target)? {
                Some(job) if job.state == JobState::Pending => {
                    summary.skipped += 1;
                    continue;
                }
                Some(mut job) => {
                    if job.state == JobState::Dead {
                        batch.remove(keys::dead(&target, delivery));
                        revived.push(target.clone());
                    }
                    job.state = JobState::Pending;
                    job.attempts = 0;
                    job.created_at_ms = now_ms;
                    job.next_attempt_at_ms = now_ms;
                    job.replay = Some(id);
                    job
                }
                None => Job::new(delivery, &target, now_ms, Some(id)),
            };
            let entry = QueueEntry::new(&target, QueueClass::Replay, now_ms, delivery);
            batch.insert(keys::job(delivery, &target), job.encode());
            batch.insert(entry.key.as_slice(), &[]);
            batch.insert(keys::replay_pair(id.0, delivery, &target), &[]);
            queued.push((target, entry));
            summary.matched += 1;
            in_batch += 1;
            if in_batch == CHUNK {
                self.apply_replay_batch(std::mem::take(&mut batch), &mut revived)?;
                in_batch = 0;
                in_this_batch.clear();
            }
        }
        batch.insert(keys::replay(id.0), encode_summary(&summary));
        self.apply_replay_batch(batch, &mut revived)?;
        self.db.flush()?;
        Ok(ReplayStarted { id, matched: summary.matched, skipped: summary.skipped, queued })
    }

    fn apply_replay_batch(&self, batch: sled::Batch, revived: &mut Vec<String>) -> Result<(), JournalError> {
        self.tree.apply_batch(batch)?;
        for target in revived.drain(..) {
            self.count_dead(&target, -1);
        }
        Ok(())
    }

    /// A replay and where its pairs stand, read from their jobs; `Ok(None)`
    /// for an unknown id. Walks the replay's pairs.
    pub fn replay_progress(&self, id: ReplayId) -> Result<Option<ReplayProgress>, JournalError> {
        let Some(bytes) = self.tree.get(keys::replay(id.0))? else { return Ok(None) };
        let summary = decode_summary(id, &bytes)?;
        let mut progress = ReplayProgress { summary, pending: 0, done: 0, failed: 0, superseded: 0 };
        for entry in self.tree.scan_prefix(keys::replay_pairs(id.0)) {
            let (key, _) = entry?;
            let Some((delivery, target)) = keys::parse_replay_pair(&key) else {
                return Err(JournalError::Corrupt {
                    key: format!("{key:02x?}"),
                    error: super::DecodeError::Truncated,
                });
            };
            match self.job(delivery, target)? {
                Some(job) if job.replay == Some(id) => match job.state {
                    JobState::Pending => progress.pending += 1,
                    JobState::Delivered => progress.done += 1,
                    JobState::Dead => progress.failed += 1,
                },
                _ => progress.superseded += 1,
            }
        }
        Ok(Some(progress))
    }

    /// Every replay, newest first, at most `limit`.
    pub fn replays(&self, limit: usize) -> Result<Vec<ReplaySummary>, JournalError> {
        self.tree
            .scan_prefix(keys::REPLAY)
            .rev()
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                let id = key.get(1..9).and_then(|id| id.try_into().ok()).map(u64::from_be_bytes);
                let id = id.ok_or_else(|| JournalError::Corrupt {
                    key: format!("{key:02x?}"),
                    error: super::DecodeError::Truncated,
                })?;
                decode_summary(ReplayId(id), &value)
            })
            .collect()
    }

    /// Removes a finished replay's record and pair list (its jobs stay).
    pub(super) fn forget_replay(&self, id: ReplayId) -> Result<(), JournalError> {
        let mut batch = sled::Batch::default();
        for entry in self.tree.scan_prefix(keys::replay_pairs(id.0)) {
            batch.remove(entry?.0);
        }
        batch.remove(keys::replay(id.0));
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

fn encode_summary(summary: &ReplaySummary) -> Vec<u8> {
    json!({
        "v": 1,
        "created_at_ms": summary.created_at_ms,
        "selection": summary.selection,
        "matched": summary.matched,
        "skipped": summary.skipped,
    })
    .to_string()
    .into_bytes()
}

fn decode_summary(id: ReplayId, bytes: &[u8]) -> Result<ReplaySummary, JournalError> {
    let corrupt = || JournalError::Corrupt { key: id.to_string(), error: super::DecodeError::Truncated };
    let value: Value = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
    let number = |name: &str| value.get(name).and_then(Value::as_u64).ok_or_else(corrupt);
    Ok(ReplaySummary {
        id,
        created_at_ms: number("created_at_ms")?,
        selection: value.get("selection").cloned().unwrap_or(Value::Null),
        matched: number("matched")?,
        skipped: number("skipped")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_ids_print_and_parse() {
        let id = ReplayId(0x1234_abcd);
        assert_eq!(id.to_string(), "rpl_000000001234abcd");
        assert_eq!("rpl_000000001234abcd".parse(), Ok(id));
        assert_eq!("rpl_1234".parse::<ReplayId>(), Err(BadReplayId));
        assert_eq!("dlv_000000001234abcd".parse::<ReplayId>(), Err(BadReplayId));
        assert_eq!("rpl_000000001234abcg".parse::<ReplayId>(), Err(BadReplayId));
    }
}
