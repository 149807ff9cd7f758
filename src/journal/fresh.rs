//! Fresh jobs stay out of the queue index.
//!
//! A fresh job (a delivery's first attempt at a target) is found by its job
//! key alone: jobs are keyed by delivery id, so the pending fresh jobs are
//! the pending, unqueued jobs from a low-water mark on. Leaving them out of
//! `Q` saves two writes per job (the entry at append, its removal at the
//! first outcome), most of sled's work per delivery with fan-out.
//!
//! The mark (`M:fresh-from`) is the smallest delivery id that may still have
//! an unqueued pending job; absent or empty, there is none. The writer thread
//! keeps it true:
//! - an append below the mark lowers it in the same atomic batch (ids follow
//!   the receive clock, so a late request can sort before an earlier one);
//! - a first outcome, or indexing the job after it waited, takes it out of
//!   [`FreshJobs`] only once flushed, and the mark moves up with a later
//!   group: it only ever lags, never leads.
//!
//! Opening the journal queues (in `Q`) every unqueued pending job it finds from
//! the mark on and clears the mark, so a writer starts with nothing in flight
//! and a job whose target is gone from the configuration is indexed as before.
//! A clean stop does the same. While running, a fresh job that has waited over
//! a minute (its target down, paused or removed) is indexed too
//! (`Journal::queue_waiting_fresh_jobs`), so the mark stays recent and a start
//! scans minutes of jobs, however long a target has been away.

use std::collections::{HashMap, VecDeque};

use super::{DeliveryId, Job, JobState, JournalError, QueueClass, QueueEntry, decode_job, keys};

/// The writer thread's record of the fresh jobs it appended that are still
/// unindexed and whose first outcome is not yet flushed: what pins the mark.
/// One ordered set of delivery ids per target: a target that is down or
/// paused can hold a million of them.
#[derive(Debug, Default)]
pub(crate) struct FreshJobs {
    unsettled: HashMap<String, IdSet>,
    /// The mark as last written (`None`: no unqueued pending job).
    persisted: Option<DeliveryId>,
}

impl FreshJobs {
    /// A delivery's fresh jobs, about to be written.
    pub(crate) fn appended(&mut self, id: DeliveryId, targets: &[String]) {
        for target in targets {
            match self.unsettled.get_mut(target) {
                Some(ids) => ids.insert(id),
                None => self.unsettled.entry(target.clone()).or_default().insert(id),
            }
        }
    }

    /// Whether this writer appended the job and it is still unsettled and
    /// unindexed: if not, it was indexed (at the open, or after waiting) and
    /// its `Q` entry must go with its outcome.
    pub(crate) fn tracks(&self, id: DeliveryId, target: &str) -> bool {
        self.unsettled.get(target).is_some_and(|ids| ids.contains(id))
    }

    /// The job's first outcome, or its index entry, is flushed: it no longer
    /// holds the mark. Idempotent.
    pub(crate) fn release(&mut self, id: DeliveryId, target: &str) {
        if let Some(ids) = self.unsettled.get_mut(target) {
            ids.remove(id);
        }
    }

    /// The mark to write with the group being built, if it changed.
    pub(crate) fn mark_update(&self) -> Option<Option<DeliveryId>> {
        let wanted = self.wanted();
        (wanted != self.persisted).then_some(wanted)
    }

    /// The group that carried [`FreshJobs::mark_update`] is flushed.
    pub(crate) fn mark_written(&mut self, mark: Option<DeliveryId>) {
        self.persisted = mark;
    }

    /// How many jobs it tracks.
    fn tracked(&self) -> usize {
        self.unsettled.values().map(|ids| ids.live).sum()
    }

    pub(crate) fn wanted(&self) -> Option<DeliveryId> {
        self.unsettled.values().filter_map(IdSet::first).min()
    }
}

/// An ordered set of delivery ids, compact for the way the writer uses it:
/// 16 bytes an id in a sorted deque (a `BTreeSet` took about 30), which
/// matters with a million pending jobs. Ids arrive nearly in order (a late
/// request sorts a little before the last one), so an insert lands at or
/// near the back. A removed id is marked (the top bit of its `seq`, which a
/// sled id counter never reaches) and dropped once it reaches the front, or
/// when marked ids outnumber the rest.
#[derive(Debug, Default)]
struct IdSet {
    ids: VecDeque<DeliveryId>,
    /// Ids in `ids` not marked removed.
    live: usize,
}

const REMOVED: u64 = 1 << 63;

/// Marked ids an [`IdSet`] may hold beyond its live ones before it drops
/// them in bulk, and spare capacity beyond its length before it shrinks.
const IDSET_SLACK: usize = 1_024;

fn is_removed(id: &DeliveryId) -> bool {
    id.seq & REMOVED != 0
}

impl IdSet {
    /// Where `id` is, or would go, and whether it is there (marked or not).
    fn search(&self, id: DeliveryId) -> (usize, bool) {
        let unmarked = |stored: &DeliveryId| DeliveryId { seq: stored.seq & !REMOVED, ..*stored };
        let at = self.ids.partition_point(|stored| unmarked(stored) < id);
        (at, self.ids.get(at).is_some_and(|stored| unmarked(stored) == id))
    }

    fn insert(&mut self, id: DeliveryId) {
        match self.search(id) {
            (at, true) if is_removed(&self.ids[at]) => {
                self.ids[at].seq &= !REMOVED;
                self.live += 1;
            }
            (_, true) => {}
            (at, false) => {
                self.ids.insert(at, id);
                self.live += 1;
            }
        }
    }

    fn contains(&self, id: DeliveryId) -> bool {
        matches!(self.search(id), (at, true) if !is_removed(&self.ids[at]))
    }

    fn remove(&mut self, id: DeliveryId) {
        let (at, found) = self.search(id);
        if !found || is_removed(&self.ids[at]) {
            return;
        }
        self.ids[at].seq |= REMOVED;
        self.live -= 1;
        while self.ids.front().is_some_and(is_removed) {
            self.ids.pop_front();
        }
        if self.ids.len() > 2 * self.live + IDSET_SLACK {
            self.ids.retain(|stored| !is_removed(stored));
        }
        if self.ids.capacity() > 4 * self.ids.len() + IDSET_SLACK {
            self.ids.shrink_to_fit();
        }
    }

    /// The smallest id (the front is never a removed one).
    fn first(&self) -> Option<DeliveryId> {
        self.ids.front().copied()
    }
}

pub(crate) fn encode_mark(mark: Option<DeliveryId>) -> Vec<u8> {
    mark.map_or_else(Vec::new, |id| id.to_key().to_vec())
}

/// The persisted mark: `None` when no job needs looking for.
pub(super) fn read_mark(tree: &sled::Tree) -> Result<Option<DeliveryId>, JournalError> {
    let Some(value) = tree.get(keys::FRESH_FROM)? else { return Ok(None) };
    if value.is_empty() {
        return Ok(None);
    }
    DeliveryId::from_key(&value).map(Some).ok_or_else(|| JournalError::Corrupt {
        key: "fresh-job mark".to_owned(),
        error: super::DecodeError::Truncated,
    })
}

/// The pending jobs from the mark on that the queue index lacks (of one
/// target, or of all), each with the queue entry it stands for. A job that
/// cannot be decoded could not be attempted either: it is logged and left
/// out, so one damaged record never stops the journal from opening.
pub(super) fn unqueued(
    tree: &sled::Tree,
    target: Option<&str>,
) -> Result<Vec<(Job, QueueEntry)>, JournalError> {
    unqueued_before(tree, target, None, usize::MAX)
}

/// [`unqueued`]: the first `limit` of deliveries before `until` only.
pub(super) fn unqueued_before(
    tree: &sled::Tree,
    target: Option<&str>,
    until: Option<DeliveryId>,
    limit: usize,
) -> Result<Vec<(Job, QueueEntry)>, JournalError> {
    let Some(from) = read_mark(tree)? else { return Ok(Vec::new()) };
    if until.is_some_and(|until| until <= from) {
        return Ok(Vec::new());
    }
    let end = until.map(keys::job_prefix);
    Ok(unqueued_from(tree, &keys::job_prefix(from), target, end.as_deref(), limit)?.jobs)
}

/// A scan's unqueued pending jobs, and where to resume when its limit cut it
/// short.
struct Unqueued {
    jobs: Vec<(Job, QueueEntry)>,
    resume: Option<Vec<u8>>,
}

/// The first `limit` unqueued pending jobs from the job key `start` on (and
/// before `end`).
fn unqueued_from(
    tree: &sled::Tree,
    start: &[u8],
    target: Option<&str>,
    end: Option<&[u8]>,
    limit: usize,
) -> Result<Unqueued, JournalError> {
    let mut found = Vec::new();
    for entry in tree.range(start..) {
        let (key, value) = entry?;
        if !key.starts_with(keys::JOB) || end.is_some_and(|end| key.as_ref() >= end) {
            break;
        }
        if target
            .is_some_and(|t| !key.ends_with(t.as_bytes()) || key.len() != 1 + DeliveryId::KEY_LEN + t.len())
        {
            continue;
        }
        let job = match decode_job(&key, &value) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(error = %err, "skipping a job that cannot be decoded");
                continue;
            }
        };
        if job.state != JobState::Pending {
            continue;
        }
        // Where it would be indexed: retries and replays under their due
        // time (`next_attempt_at_ms`), fresh jobs under their arrival.
        let entry = queue_entry_for(&job);
        if tree.contains_key(entry.key(&job.target))? {
            continue;
        }
        found.push((job, entry));
        if found.len() == limit {
            // The next key in order: this one with a zero byte appended.
            return Ok(Unqueued { jobs: found, resume: Some([key.as_ref(), &[0]].concat()) });
        }
    }
    Ok(Unqueued { jobs: found, resume: None })
}

/// Where a pending job belongs in its target's queue.
fn queue_entry_for(job: &Job) -> QueueEntry {
    let (class, due_ms) = if job.replay.is_some() {
        (QueueClass::Replay, job.next_attempt_at_ms)
    } else if job.attempts > 0 {
        (QueueClass::Retry, job.next_attempt_at_ms)
    } else {
        (QueueClass::Fresh, job.delivery.received_at_ms)
    };
    QueueEntry::new(class, due_ms, job.delivery)
}

/// Jobs queued per batch when the journal opens or stops. One batch for
/// every unqueued job held them all in memory at once: 2·10⁵ of them took the
/// opening process to 1.5 GB (BENCHMARKS.md, Footprint).
pub(super) const INDEX_CHUNK: usize = 4096;

/// Queues every unqueued pending job from the mark on, `chunk` at a time,
/// each batch handed to `write`; the last one also clears the mark. Returns
/// how many were queued, or the write's error and the job key from which
/// jobs may still be unqueued. A batch lost to a crash is harmless: the mark
/// stays until the last, and a job already queued is not queued again.
fn index_in_chunks(
    tree: &sled::Tree,
    chunk: usize,
    mut write: impl FnMut(sled::Batch) -> sled::Result<()>,
) -> Result<Result<usize, (sled::Error, Vec<u8>)>, JournalError> {
    let Some(from) = read_mark(tree)? else { return Ok(Ok(0)) };
    let mut start = keys::job_prefix(from);
    let mut queued = 0;
    loop {
        let Unqueued { jobs, resume } = unqueued_from(tree, &start, None, None, chunk)?;
        let mut batch = sled::Batch::default();
        for (job, entry) in &jobs {
            batch.insert(entry.key(&job.target), &[]);
        }
        if resume.is_none() {
            batch.insert(keys::FRESH_FROM, encode_mark(None));
        }
        if let Err(err) = write(batch) {
            return Ok(Err((err, start)));
        }
        queued += jobs.len();
        match resume {
            Some(next) => start = next,
            None => return Ok(Ok(queued)),
        }
    }
}

/// At open: queues every unqueued pending job and clears the mark, in
/// flushed batches of [`INDEX_CHUNK`], and returns what the writer thread
/// starts from. When a write fails (a full disk) the journal opens all the
/// same, readable and refusing writes as usual: the mark stays, and the
/// writer starts knowing the jobs still unqueued, so it never moves the mark
/// past them.
pub(super) fn recover(db: &sled::Db, tree: &sled::Tree) -> Result<FreshJobs, JournalError> {
    recover_with(tree, INDEX_CHUNK, |batch| tree.apply_batch(batch).and_then(|()| db.flush().map(drop)))
}

pub(super) fn recover_with(
    tree: &sled::Tree,
    chunk: usize,
    write: impl FnMut(sled::Batch) -> sled::Result<()>,
) -> Result<FreshJobs, JournalError> {
    let (err, start) = match index_in_chunks(tree, chunk, write)? {
        Ok(jobs) => {
            tracing::debug!(jobs, "queued the fresh jobs left pending");
            return Ok(FreshJobs::default());
        }
        Err(failed) => failed,
    };
    let fresh = tracking_unqueued(tree, start, chunk)?;
    tracing::warn!(
        error = %err, jobs = fresh.tracked(),
        "cannot queue the fresh jobs left pending; finding them by the mark until a later start"
    );
    Ok(fresh)
}

/// What the writer must know after indexing failed partway: the mark as it
/// is on disk, and every job from `start` on still lacking a queue entry
/// (jobs an applied batch queued are not tracked: their outcome removes
/// their entry).
fn tracking_unqueued(tree: &sled::Tree, mut start: Vec<u8>, chunk: usize) -> Result<FreshJobs, JournalError> {
    let mut fresh = FreshJobs { persisted: read_mark(tree)?, ..FreshJobs::default() };
    loop {
        let Unqueued { jobs, resume } = unqueued_from(tree, &start, None, None, chunk)?;
        for (job, _) in &jobs {
            fresh.appended(job.delivery, std::slice::from_ref(&job.target));
        }
        match resume {
            Some(next) => start = next,
            None => return Ok(fresh),
        }
    }
}

/// [`tracking_unqueued`] from the mark: after [`queue_all`] failed.
pub(super) fn track_leftovers(tree: &sled::Tree) -> Result<FreshJobs, JournalError> {
    match read_mark(tree)? {
        None => Ok(FreshJobs::default()),
        Some(mark) => tracking_unqueued(tree, keys::job_prefix(mark), INDEX_CHUNK),
    }
}

/// Queues every unqueued pending job and clears the mark, in the tree (not
/// yet flushed), in batches of [`INDEX_CHUNK`]. For the writer thread, which
/// then starts over with an empty [`FreshJobs`]. Returns how many jobs it
/// queued.
pub(super) fn queue_all(tree: &sled::Tree) -> Result<usize, JournalError> {
    match index_in_chunks(tree, INDEX_CHUNK, |batch| tree.apply_batch(batch))? {
        Ok(jobs) => Ok(jobs),
        Err((err, _)) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> DeliveryId {
        DeliveryId { received_at_ms: ms, seq: ms }
    }

    fn targets(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    #[test]
    fn the_mark_is_the_oldest_unsettled_delivery_and_only_moves_when_written() {
        let mut fresh = FreshJobs::default();
        assert_eq!(fresh.mark_update(), None, "nothing appended, nothing to write");
        fresh.appended(id(20), &targets(&["a", "b"]));
        fresh.appended(id(10), &targets(&["a"])); // received earlier, appended later
        fresh.appended(id(30), &[]); // no jobs: no pin
        assert_eq!(fresh.wanted(), Some(id(10)));
        assert_eq!(fresh.mark_update(), Some(Some(id(10))));
        fresh.mark_written(Some(id(10)));
        assert_eq!(fresh.mark_update(), None, "unchanged");

        fresh.release(id(10), "a");
        assert_eq!(fresh.wanted(), Some(id(20)));
        fresh.release(id(20), "a");
        fresh.release(id(20), "a"); // twice: still waits for b
        assert_eq!(fresh.wanted(), Some(id(20)));
        assert!(fresh.tracks(id(20), "b") && !fresh.tracks(id(20), "a"));
        fresh.release(id(20), "b");
        assert_eq!(fresh.wanted(), None);
        assert_eq!(fresh.mark_update(), Some(None), "cleared");
    }

    #[test]
    fn removed_ids_behind_a_pending_one_are_dropped_in_bulk() {
        let mut set = IdSet::default();
        for ms in 0..5_000 {
            set.insert(id(ms));
        }
        // The oldest stays pending (a target's slow job); the rest settle.
        for ms in 1..5_000 {
            set.remove(id(ms));
        }
        assert!(set.ids.len() <= 2 * set.live + IDSET_SLACK, "kept {} ids for 1 pending", set.ids.len());
        assert_eq!(set.first(), Some(id(0)));
        assert!(set.contains(id(0)) && !set.contains(id(4_999)));
        set.remove(id(0));
        assert_eq!((set.first(), set.live, set.ids.len()), (None, 0, 0));
        set.insert(id(7)); // a removed id may come back (another writer's append)
        assert!(set.contains(id(7)));
    }

    proptest::proptest! {
        /// The compact set answers as a `BTreeSet` would, whatever the order
        /// of inserts and removals (ids mostly rising, as appends come).
        #[test]
        fn the_id_set_behaves_as_an_ordered_set(
            ops in proptest::collection::vec((proptest::bool::weighted(0.6), 0u64..400), 0..3_000)
        ) {
            let mut set = IdSet::default();
            let mut model = std::collections::BTreeSet::new();
            for (i, (insert, back)) in ops.into_iter().enumerate() {
                // Near the newest id most of the time, sometimes far back.
                let ms = (i as u64).saturating_sub(back % if back < 360 { 8 } else { 400 });
                let id = DeliveryId { received_at_ms: ms / 3, seq: ms }; // several a millisecond
                if insert {
                    set.insert(id);
                    model.insert(id);
                } else {
                    set.remove(id);
                    model.remove(&id);
                }
                proptest::prop_assert_eq!(set.first(), model.first().copied());
                proptest::prop_assert_eq!(set.live, model.len());
                proptest::prop_assert_eq!(set.contains(id), model.contains(&id));
            }
            for id in &model {
                proptest::prop_assert!(set.contains(*id));
            }
            proptest::prop_assert_eq!(set.ids.iter().filter(|id| !is_removed(id)).count(), model.len());
        }
    }

    #[test]
    fn a_job_it_did_not_append_is_not_tracked() {
        let mut fresh = FreshJobs::default();
        fresh.appended(id(5), &targets(&["a"]));
        assert!(!fresh.tracks(id(5), "b"));
        assert!(!fresh.tracks(id(6), "a"));
        fresh.release(id(6), "a"); // unknown: no effect
        assert_eq!(fresh.wanted(), Some(id(5)));
    }
}
