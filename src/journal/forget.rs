//! Forgetting a removed target's pending jobs.
//!
//! A target taken out of the config keeps its pending jobs in the journal
//! until it comes back, and they keep their deliveries from retention. When
//! it is not coming back, the operator forgets them: each becomes `dead`
//! (kept, listed, replayable, and purgeable like any dead letter), with the
//! reason in its attempt history. The writes go through the writer thread,
//! as a lane's outcomes do, so fresh jobs it still tracks are settled the
//! same way (see `fresh`).

use std::collections::HashSet;

use super::writer::Write;
use super::{Attempt, Decision, JobState, Journal, JournalError, attempt_writes};

/// Jobs settled per writer request.
const CHUNK: usize = 1_024;

/// What a forgotten job's attempt history says.
pub const FORGOTTEN: &str = "forgotten by the operator: the target was removed from the config";

impl Journal {
    /// Marks every pending job of `target` dead; returns how many. For a
    /// target no longer configured: no lane may be sending its jobs.
    pub async fn forget_target(&self, target: &str, now_ms: u64) -> Result<u64, JournalError> {
        let mut forgotten = 0;
        // A job can be listed twice (a stale entry beside its retry's).
        let mut seen = HashSet::new();
        for entries in self.queued(target)?.chunks(CHUNK) {
            let mut writes = Vec::new();
            let mut settled = 0;
            for entry in entries {
                // A second entry of a job (a stale one beside its retry's),
                // or one whose job is settled or gone: no lane of this
                // target will read and drop it, so it goes here.
                let stale = || Write::Remove(entry.key(target));
                if !seen.insert(entry.delivery) {
                    writes.push(stale());
                    continue;
                }
                let Some(job) = self.job(entry.delivery, target)? else {
                    writes.push(stale());
                    continue;
                };
                if job.state != JobState::Pending {
                    writes.push(stale());
                    continue;
                }
                let attempt =
                    Attempt { at_ms: now_ms, latency_ms: 0, status: None, error: Some(FORGOTTEN.to_owned()) };
                writes.extend(attempt_writes(entry, job, attempt, Decision::Dead).0);
                settled += 1;
            }
            if !writes.is_empty() {
                self.store()?.writer.write(writes).await?;
                self.count_dead(target, settled);
                forgotten += settled as u64;
            }
        }
        Ok(forgotten)
    }
}
