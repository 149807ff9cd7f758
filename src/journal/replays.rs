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

/// Pairs written per sled batch: bounds what a huge replay holds in memory.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayStarted {
    pub id: ReplayId,
    /// Pairs requeued.
    pub matched: u64,
    /// Pairs left alone because their job was still pending.
    pub skipped: u64,
}

/// One batch of a replay being written.
struct Batch<'a> {
    journal: &'a Journal,
    writes: sled::Batch,
    pairs: std::collections::HashSet<(DeliveryId, String)>,
    queued: Vec<(String, QueueEntry)>,
    /// Targets of dead jobs this batch revives (for the dead counts).
    revived: Vec<String>,
}

impl<'a> Batch<'a> {
    fn new(journal: &'a Journal) -> Self {
        Batch {
            journal,
            writes: sled::Batch::default(),
            pairs: std::collections::HashSet::new(),
            queued: Vec::new(),
            revived: Vec::new(),
        }
    }

    /// Writes and flushes the batch with the summary so far, then hands its
    /// queue entries over.
    fn commit(
        mut self,
        summary: &ReplaySummary,
        hand_over: &mut impl FnMut(Vec<(String, QueueEntry)>),
    ) -> Result<(), JournalError> {
        self.writes.insert(keys::replay(summary.id.0), encode_summary(summary));
        self.journal.wrote(self.journal.tree()?.apply_batch(self.writes))?;
        // Durable before a lane sees it: a lane sending a job whose requeue
        // a failed flush took back would write its outcome over the job as
        // the disk has it (delivered or dead).
        self.journal.wrote(self.journal.db()?.flush())?;
        for target in self.revived {
            self.journal.count_dead(&target, -1);
        }
        if !self.queued.is_empty() {
            hand_over(self.queued);
        }
        Ok(())
    }
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
    /// a replay that was answered survives a crash.
    ///
    /// Pairs are written in batches; after each batch `hand_over` gets the
    /// queue entries it wrote (with their targets) for the lanes' in-memory
    /// queues. So a replay that fails part way (a corrupt record, a storage
    /// error) leaves no requeued job unknown to its lane, and its summary,
    /// rewritten with every batch, counts what it did requeue.
    pub fn start_replay<I>(
        &self,
        selection: Value,
        pairs: I,
        now_ms: u64,
        mut hand_over: impl FnMut(Vec<(String, QueueEntry)>),
    ) -> Result<ReplayStarted, JournalError>
    where
        I: IntoIterator<Item = Result<(DeliveryId, String), JournalError>>,
    {
        let _maintenance = self.maintenance.lock().expect("not poisoned");
        let id = ReplayId(self.wrote(self.db()?.generate_id())?);
        let mut summary = ReplaySummary { id, created_at_ms: now_ms, selection, matched: 0, skipped: 0 };
        self.wrote(self.tree()?.insert(keys::replay(id.0), encode_summary(&summary)))?;
        let mut batch = Batch::new(self);
        for pair in pairs {
            // A storage failure would refuse the next batch anyway: end now,
            // so the reopen (which waits for this lock) need not wait for
            // the rest of a long walk.
            if !self.is_writable() {
                return Err(JournalError::Storage(
                    "the journal failed while the replay was being created".into(),
                ));
            }
            let (delivery, target) = pair?;
            if !batch.pairs.insert((delivery, target.clone())) {
                // Already in this batch: reading its job back would see the
                // old state and requeue (and count) it twice.
                continue;
            }
            let job = match self.job(delivery, &target)? {
                Some(job) if job.state == JobState::Pending => {
                    summary.skipped += 1;
                    continue;
                }
                Some(mut job) => {
                    if job.state == JobState::Dead {
                        batch.writes.remove(keys::dead(&target, delivery));
                        batch.revived.push(target.clone());
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
            let entry = QueueEntry::new(QueueClass::Replay, now_ms, delivery);
            batch.writes.insert(keys::job(delivery, &target), job.encode());
            batch.writes.insert(entry.key(&target), &[]);
            batch.writes.insert(keys::replay_pair(id.0, delivery, &target), &[]);
            batch.queued.push((target, entry));
            summary.matched += 1;
            if batch.queued.len() == CHUNK {
                batch.commit(&summary, &mut hand_over)?;
                batch = Batch::new(self);
            }
        }
        batch.commit(&summary, &mut hand_over)?;
        self.wrote(self.db()?.flush())?;
        Ok(ReplayStarted { id, matched: summary.matched, skipped: summary.skipped })
    }

    /// A replay and where its pairs stand, read from their jobs; `Ok(None)`
    /// for an unknown id. Walks the replay's pairs.
    pub fn replay_progress(&self, id: ReplayId) -> Result<Option<ReplayProgress>, JournalError> {
        let Some(bytes) = self.tree()?.get(keys::replay(id.0))? else { return Ok(None) };
        let summary = decode_summary(id, &bytes)?;
        let mut progress = ReplayProgress { summary, pending: 0, done: 0, failed: 0, superseded: 0 };
        for entry in self.tree()?.scan_prefix(keys::replay_pairs(id.0)) {
            let (key, _) = entry?;
            let Some((delivery, target)) = keys::parse_replay_pair(&key) else {
                return Err(JournalError::Corrupt {
                    key: format!("{key:02x?}"),
                    error: super::DecodeError::Truncated,
                });
            };
            // A job that cannot be decoded cannot be sent either: counted
            // as superseded, so that the replay can finish.
            match super::unless_corrupt(self.job(delivery, target), "replay progress")?.flatten() {
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

    /// One replay's record (its selection, when it was started).
    pub fn replay_summary(&self, id: ReplayId) -> Result<Option<ReplaySummary>, JournalError> {
        let Some(bytes) = self.tree()?.get(keys::replay(id.0))? else { return Ok(None) };
        decode_summary(id, &bytes).map(Some)
    }

    /// Every replay, newest first, at most `limit`.
    pub fn replays(&self, limit: usize) -> Result<Vec<ReplaySummary>, JournalError> {
        self.tree()?
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

    /// Removes a finished replay's pair list, then its record (its jobs
    /// stay). In that order: a crash part way leaves the record, so the
    /// next sweep finds the replay (still finished, fewer pairs) and
    /// finishes the job; pairs without a record would never be found.
    pub(super) fn forget_replay(&self, id: ReplayId) -> Result<(), JournalError> {
        self.forget_replay_pairs(id)?;
        self.wrote(self.tree()?.remove(keys::replay(id.0)))?;
        Ok(())
    }

    /// Removes pair lists left without their replay's record (by a crash
    /// while an earlier version, which removed the record first, forgot a
    /// replay): one seek per replay.
    pub(super) fn forget_orphaned_replay_pairs(&self) -> Result<(), JournalError> {
        let tree = self.tree()?;
        let mut from = keys::replay_pairs(0);
        while let Some(entry) = tree.range(from..).next() {
            let Some(id) = keys::replay_pairs_id(&entry?.0) else { return Ok(()) };
            if !tree.contains_key(keys::replay(id))? {
                self.forget_replay_pairs(ReplayId(id))?;
            }
            let Some(next) = id.checked_add(1) else { return Ok(()) };
            from = keys::replay_pairs(next);
        }
        Ok(())
    }

    fn forget_replay_pairs(&self, id: ReplayId) -> Result<(), JournalError> {
        loop {
            let mut batch = sled::Batch::default();
            let mut removed = 0;
            for entry in self.tree()?.scan_prefix(keys::replay_pairs(id.0)).take(CHUNK) {
                batch.remove(entry?.0);
                removed += 1;
            }
            if removed == 0 {
                return Ok(());
            }
            self.wrote(self.tree()?.apply_batch(batch))?;
        }
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
