//! A lane's in-memory view of its pending jobs. The journal's queue index is
//! the durable copy (kept in step by every write); this one spares each pick
//! a disk scan. Pure: no I/O, time comes in.
//!
//! Fresh jobs go first, in arrival order; retries wait for their due time.
//! After [`FRESH_BEFORE_RETRY`] fresh jobs in a row a due retry goes next, so
//! a steady stream of new deliveries cannot starve retries, and a backlog of
//! retries never delays new deliveries by more than one slot in five.
//!
//! Replayed jobs (and their retries) sit behind all live work: one goes when
//! nothing live is ready, or after [`LIVE_BEFORE_REPLAY`] live jobs in a row,
//! so a replay of a large backlog takes at most a tenth of a busy lane and
//! still finishes while live traffic never stops.
//!
//! Memory is bounded: each class keeps about [`IN_MEMORY_PER_CLASS`] jobs, the
//! first in its order. A target down for a day piles up millions of jobs;
//! those past the bound live only in the journal's queue index ("spilled")
//! and are read back a page at a time as the lane drains. [`LaneQueue::paging`]
//! says what to do; the lane does the I/O (a fresh job is indexed before it
//! may leave memory) and reports back with [`LaneQueue::evict`] and
//! [`LaneQueue::refilled`]. The invariant: every pending job of a class that
//! is neither here nor in flight is in the queue index at or after the
//! class's `spilled_from`.

use std::collections::{BTreeSet, HashSet};

use crate::journal::{DeliveryId, QueueClass, QueueEntry, QueueKey, QueuePage};

pub const FRESH_BEFORE_RETRY: u32 = 4;
pub const LIVE_BEFORE_REPLAY: u32 = 9;

/// Jobs of one class a lane keeps in memory when it has more pending: a
/// few pages' worth, so a drain at full speed reads the journal a few
/// times a second, and a hundred backed-up targets hold ~100 MiB at most.
pub const IN_MEMORY_PER_CLASS: usize = 4_096;
/// A class is trimmed back to [`IN_MEMORY_PER_CLASS`] once it holds more
/// than this: spills go in batches, not one per push.
pub const SPILL_ABOVE: usize = IN_MEMORY_PER_CLASS + IN_MEMORY_PER_CLASS / 4;
/// A class with spilled jobs reads the next page once it holds fewer.
pub const REFILL_BELOW: usize = IN_MEMORY_PER_CLASS / 2;

const FIRST_KEY: QueueKey = (0, DeliveryId { received_at_ms: 0, seq: 0 });

const CLASSES: [QueueClass; 3] = [QueueClass::Fresh, QueueClass::Retry, QueueClass::Replay];

/// What the lane should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A job is ready; [`LaneQueue::take`] it once it may be sent.
    Ready(QueueClass),
    /// Only retries, the earliest due at this time.
    NotBefore(u64),
    Empty,
}

/// Work that keeps a lane's memory bounded (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// These jobs (the class's last, past the bound) may leave memory once
    /// each is in the queue index: fresh ones must be indexed first.
    Spill(QueueClass, Vec<QueueEntry>),
    /// Read the next page of the class from the journal.
    Refill(Refill),
}

/// One page to read from a class of the journal's queue index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refill {
    pub class: QueueClass,
    /// The first key to read.
    pub from: QueueKey,
    /// Most entries to read.
    pub limit: usize,
    /// The class's spilled-mark version when the read began.
    version: u64,
}

#[derive(Debug, Default)]
struct ClassQueue {
    /// The class's first jobs, and any that arrived past `spilled_from`
    /// ("parked": not ready until the jobs before them are read back, so
    /// the order holds).
    jobs: BTreeSet<QueueKey>,
    /// Where the jobs only the journal holds begin; `None`: there are none.
    spilled_from: Option<QueueKey>,
    /// Jobs in memory at or past `spilled_from`.
    parked: usize,
    /// About how many jobs only the journal holds (for the gauges): counted
    /// at a start, kept up by spills and refills since.
    spilled: usize,
    /// Bumped whenever `spilled_from` changes: a refill that read the
    /// journal across a change (an eviction, another read) may not cover
    /// what the change did, so it cannot raise the mark past it.
    version: u64,
}

impl ClassQueue {
    fn is_past_spill(&self, key: QueueKey) -> bool {
        self.spilled_from.is_some_and(|from| key >= from)
    }

    /// Jobs in memory that may go, in order.
    fn ready(&self) -> usize {
        self.jobs.len() - self.parked
    }

    fn first_ready(&self) -> Option<QueueKey> {
        self.jobs.first().copied().filter(|&key| !self.is_past_spill(key))
    }

    fn insert(&mut self, key: QueueKey) {
        if self.jobs.insert(key) && self.is_past_spill(key) {
            self.parked += 1;
        }
    }

    fn set_spilled_from(&mut self, from: Option<QueueKey>) {
        self.spilled_from = from;
        self.version += 1;
        self.parked = from.map_or(0, |from| self.jobs.range(from..).count());
    }

    fn needs_paging(&self) -> bool {
        self.jobs.len() > SPILL_ABOVE || (self.spilled_from.is_some() && self.ready() < REFILL_BELOW)
    }

    /// The jobs past the bound, once the class is over [`SPILL_ABOVE`].
    fn overflow(&self, class: QueueClass) -> Option<Vec<QueueEntry>> {
        (self.jobs.len() > SPILL_ABOVE).then(|| {
            let over = self.jobs.len() - IN_MEMORY_PER_CLASS;
            let mut last: Vec<QueueEntry> =
                self.jobs.iter().rev().take(over).map(|&(due, id)| QueueEntry::new(class, due, id)).collect();
            last.reverse();
            last
        })
    }

    fn refill(&self, class: QueueClass) -> Option<Refill> {
        let from = self.spilled_from.filter(|_| self.ready() < REFILL_BELOW)?;
        Some(Refill { class, from, limit: IN_MEMORY_PER_CLASS - self.ready(), version: self.version })
    }
}

#[derive(Debug, Default)]
pub struct LaneQueue {
    /// By [`QueueClass`]: fresh, retries, replays.
    classes: [ClassQueue; 3],
    fresh_streak: u32,
    /// Live jobs taken since the last replayed one.
    live_streak: u32,
    /// Every queued delivery: a lane holds at most one entry per job, so a
    /// job handed over twice (by a resync racing ingress) goes out once.
    queued: HashSet<DeliveryId>,
}

impl LaneQueue {
    fn class(&self, class: QueueClass) -> &ClassQueue {
        &self.classes[class as usize]
    }

    fn class_mut(&mut self, class: QueueClass) -> &mut ClassQueue {
        &mut self.classes[class as usize]
    }

    /// Queues `entry`; false (and nothing changes) when its delivery is
    /// already queued. One due past the class's spilled jobs is parked: it
    /// waits for them to be read back, and goes first if memory is trimmed.
    /// (A retry there is in the journal already, but leaving it out would
    /// race a page being read that may have passed its key.)
    pub fn push(&mut self, entry: QueueEntry) -> bool {
        if !self.queued.insert(entry.delivery) {
            return false;
        }
        self.class_mut(entry.class).insert((entry.due_ms, entry.delivery));
        true
    }

    /// Jobs held in memory.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pending jobs, in memory or only in the journal (the latter counted
    /// at the start and kept up since: an estimate while any are spilled).
    pub fn pending(&self) -> usize {
        self.len() + self.classes.iter().map(|class| class.spilled).sum::<usize>()
    }

    /// Pending replayed jobs (included in [`LaneQueue::pending`]).
    pub fn replays(&self) -> usize {
        let replays = self.class(QueueClass::Replay);
        replays.jobs.len() + replays.spilled
    }

    /// When the oldest queued live delivery arrived (for the pending-age
    /// gauge; a replay of last month's deliveries is not a month late).
    /// Only a retry past the bound (due later, received earlier) can be
    /// older than this says.
    pub fn oldest_arrival_ms(&self) -> Option<u64> {
        // A fresh job is due when it arrived: the first one spilled is
        // older than any held past it.
        let fresh_queue = self.class(QueueClass::Fresh);
        let fresh =
            fresh_queue.jobs.first().into_iter().chain(&fresh_queue.spilled_from).map(|(due, _)| *due).min();
        let retry = self.class(QueueClass::Retry).jobs.iter().map(|(_, id)| id.received_at_ms).min();
        fresh.into_iter().chain(retry).min()
    }

    fn first_due(&self, class: QueueClass) -> Option<u64> {
        self.class(class).first_ready().map(|(due, _)| due)
    }

    /// Which job would go next at `now_ms`, without taking it.
    pub fn next(&self, now_ms: u64) -> Next {
        let replay_due = self.first_due(QueueClass::Replay);
        let replay_ready = replay_due.is_some_and(|due| due <= now_ms);
        match self.next_live(now_ms) {
            Next::Ready(_) if replay_ready && self.live_streak >= LIVE_BEFORE_REPLAY => {
                Next::Ready(QueueClass::Replay)
            }
            Next::Ready(class) => Next::Ready(class),
            _ if replay_ready => Next::Ready(QueueClass::Replay),
            Next::NotBefore(live_due) => {
                Next::NotBefore(replay_due.map_or(live_due, |due| due.min(live_due)))
            }
            Next::Empty => replay_due.map_or(Next::Empty, Next::NotBefore),
        }
    }

    /// The next fresh job or retry, ignoring replays.
    fn next_live(&self, now_ms: u64) -> Next {
        let retry_due = self.first_due(QueueClass::Retry);
        let retry_ready = retry_due.is_some_and(|due| due <= now_ms);
        let fresh_waiting = self.class(QueueClass::Fresh).first_ready().is_some();
        match (fresh_waiting, retry_ready) {
            (true, true) if self.fresh_streak >= FRESH_BEFORE_RETRY => Next::Ready(QueueClass::Retry),
            (true, _) => Next::Ready(QueueClass::Fresh),
            (false, true) => Next::Ready(QueueClass::Retry),
            (false, false) => retry_due.map_or(Next::Empty, Next::NotBefore),
        }
    }

    /// Removes the next job of `class` (as chosen by [`LaneQueue::next`]).
    pub fn take(&mut self, class: QueueClass) -> Option<QueueEntry> {
        let queue = self.class_mut(class);
        let (due_ms, delivery) = queue.first_ready()?;
        queue.jobs.remove(&(due_ms, delivery));
        self.queued.remove(&delivery);
        match class {
            QueueClass::Fresh => {
                self.fresh_streak = self.fresh_streak.saturating_add(1);
                self.live_streak = self.live_streak.saturating_add(1);
            }
            QueueClass::Retry => {
                self.fresh_streak = 0;
                self.live_streak = self.live_streak.saturating_add(1);
            }
            QueueClass::Replay => self.live_streak = 0,
        }
        Some(QueueEntry::new(class, due_ms, delivery))
    }

    /// Whether [`LaneQueue::paging`] has work: cheap, for every push and take.
    pub fn needs_paging(&self) -> bool {
        self.classes.iter().any(ClassQueue::needs_paging)
    }

    /// What keeps memory bounded now: a spill first (memory over the bound),
    /// else a refill (a class running low while the journal holds more).
    pub fn paging(&self) -> Option<Paging> {
        let spill = CLASSES
            .into_iter()
            .find_map(|class| self.class(class).overflow(class).map(|entries| Paging::Spill(class, entries)));
        spill.or_else(|| {
            CLASSES.into_iter().find_map(|class| self.class(class).refill(class).map(Paging::Refill))
        })
    }

    /// Lets the spilled `entries` of `class` go from memory, each now in the
    /// journal's queue index; those taken meanwhile are gone already.
    pub fn evict(&mut self, class: QueueClass, entries: &[QueueEntry]) {
        let queue = &mut self.classes[class as usize];
        let mut evicted = 0;
        let mut from = queue.spilled_from;
        for entry in entries {
            let key = (entry.due_ms, entry.delivery);
            if queue.jobs.remove(&key) {
                self.queued.remove(&entry.delivery);
                from = Some(from.map_or(key, |from| from.min(key)));
                evicted += 1;
            }
        }
        queue.set_spilled_from(from);
        queue.spilled += evicted;
    }

    /// A page of every class from its start: what a lane reads when it
    /// starts, and after a journal reopen (when it may have lost track of
    /// jobs whose outcomes could not be written).
    pub fn refills_from_start(&self) -> [Refill; 3] {
        CLASSES.map(|class| Refill {
            class,
            from: FIRST_KEY,
            limit: IN_MEMORY_PER_CLASS,
            version: self.class(class).version,
        })
    }

    /// Takes what the journal held for `refill`: queues each entry unless
    /// `skip` says its delivery is in flight (or was, while the page was
    /// read), and moves the class's spilled mark past the page. Returns how
    /// many were queued.
    pub fn refilled(&mut self, refill: Refill, page: QueuePage, skip: impl Fn(DeliveryId) -> bool) -> usize {
        let added =
            page.entries.into_iter().filter(|entry| !skip(entry.delivery) && self.push(*entry)).count();
        let queue = self.class_mut(refill.class);
        let from = if queue.version == refill.version {
            page.next
        } else {
            // The mark moved while the page was read (jobs evicted, another
            // read): never past where it is now.
            match (page.next, queue.spilled_from) {
                (Some(next), Some(from)) => Some(next.min(from)),
                (next, from) => next.or(from),
            }
        };
        queue.set_spilled_from(from);
        queue.spilled = match (page.rest, queue.spilled_from) {
            (_, None) => 0,
            // Those past the page that are held already (a reload after a
            // reopen) are counted in memory.
            (Some(rest), Some(_)) => {
                rest.saturating_sub(page.next.map_or(0, |next| queue.jobs.range(next..).count()))
            }
            (None, Some(_)) => queue.spilled.saturating_sub(added),
        };
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(class: QueueClass, due_ms: u64, seq: u64) -> QueueEntry {
        QueueEntry::new(class, due_ms, DeliveryId { received_at_ms: due_ms, seq })
    }

    #[test]
    fn a_delivery_is_queued_once_until_it_is_taken() {
        let mut queue = LaneQueue::default();
        let fresh = entry(QueueClass::Fresh, 10, 1);
        assert!(queue.push(fresh));
        assert!(!queue.push(fresh), "the same job again is ignored");
        // Even under another key (a resync's copy of a job queued as a retry).
        let same_job = QueueEntry::new(QueueClass::Retry, 50, fresh.delivery);
        assert!(!queue.push(same_job));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(QueueClass::Fresh), Some(fresh));
        assert!(queue.is_empty());
        assert!(queue.push(same_job), "once taken, its retry may come back");
        assert_eq!(queue.len(), 1);
    }

    fn drain(queue: &mut LaneQueue, now_ms: u64) -> Vec<(QueueClass, u64)> {
        let mut order = Vec::new();
        while let Next::Ready(class) = queue.next(now_ms) {
            let taken = queue.take(class).unwrap();
            order.push((taken.class, taken.delivery.seq));
        }
        order
    }

    #[test]
    fn fresh_in_arrival_order_then_due_retries() {
        let mut queue = LaneQueue::default();
        queue.push(entry(QueueClass::Retry, 50, 10));
        queue.push(entry(QueueClass::Fresh, 100, 1));
        queue.push(entry(QueueClass::Fresh, 101, 2));
        queue.push(entry(QueueClass::Retry, 40, 11));
        queue.push(entry(QueueClass::Retry, 500, 12));
        assert_eq!(
            drain(&mut queue, 200),
            [
                (QueueClass::Fresh, 1),
                (QueueClass::Fresh, 2),
                (QueueClass::Retry, 11),
                (QueueClass::Retry, 10)
            ]
        );
        assert_eq!(queue.next(200), Next::NotBefore(500));
        assert_eq!(queue.next(500), Next::Ready(QueueClass::Retry));
    }

    #[test]
    fn a_stream_of_fresh_jobs_lets_one_due_retry_through_every_five() {
        let mut queue = LaneQueue::default();
        for seq in 0..10 {
            queue.push(entry(QueueClass::Fresh, 100 + seq, seq));
        }
        queue.push(entry(QueueClass::Retry, 10, 100));
        queue.push(entry(QueueClass::Retry, 11, 101));
        let order = drain(&mut queue, 1_000);
        let classes: Vec<QueueClass> = order.iter().map(|(class, _)| *class).collect();
        use QueueClass::{Fresh as F, Retry as R};
        assert_eq!(classes, [F, F, F, F, R, F, F, F, F, R, F, F]);
    }

    #[test]
    fn replays_wait_behind_live_work_but_are_not_starved() {
        let mut queue = LaneQueue::default();
        for seq in 0..3 {
            queue.push(entry(QueueClass::Replay, 50, 100 + seq));
        }
        for seq in 0..20 {
            queue.push(entry(QueueClass::Fresh, 100 + seq, seq));
        }
        let order = drain(&mut queue, 1_000);
        let replay_slots: Vec<usize> = order
            .iter()
            .enumerate()
            .filter(|(_, (class, _))| *class == QueueClass::Replay)
            .map(|(i, _)| i)
            .collect();
        // Nine live jobs, one replay, nine live, one replay, the rest live, then the last replay.
        assert_eq!(replay_slots, [9, 19, 22]);
        assert_eq!(order.len(), 23);
    }

    #[test]
    fn a_replay_goes_when_only_future_retries_are_left() {
        let mut queue = LaneQueue::default();
        queue.push(entry(QueueClass::Retry, 500, 1));
        queue.push(entry(QueueClass::Replay, 100, 2));
        assert_eq!(queue.next(200), Next::Ready(QueueClass::Replay));
        queue.take(QueueClass::Replay);
        assert_eq!(queue.next(200), Next::NotBefore(500));
        // A replay retry due before the live retry sets the wake-up time.
        queue.push(entry(QueueClass::Replay, 300, 3));
        assert_eq!(queue.next(200), Next::NotBefore(300));
        assert_eq!(queue.replays(), 1);
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn replays_do_not_age_the_pending_gauge() {
        let mut queue = LaneQueue::default();
        queue.push(entry(QueueClass::Replay, 5, 1));
        assert_eq!(queue.oldest_arrival_ms(), None);
    }

    #[test]
    fn oldest_arrival_looks_at_both_classes() {
        let mut queue = LaneQueue::default();
        assert_eq!(queue.oldest_arrival_ms(), None);
        queue.push(entry(QueueClass::Fresh, 100, 1));
        queue.push(QueueEntry::new(QueueClass::Retry, 900, DeliveryId { received_at_ms: 40, seq: 2 }));
        assert_eq!(queue.oldest_arrival_ms(), Some(40));
    }

    fn fresh_keys(queue: &LaneQueue) -> Vec<u64> {
        queue.class(QueueClass::Fresh).jobs.iter().map(|(_, id)| id.seq).collect()
    }

    /// A page as the journal would hold it: `keys` of the class from the
    /// refill's first key on, `limit` at most.
    fn page_of(refill: Refill, keys: &[u64]) -> QueuePage {
        let mut from: Vec<QueueEntry> = keys
            .iter()
            .map(|&seq| entry(refill.class, seq, seq))
            .filter(|entry| (entry.due_ms, entry.delivery) >= refill.from)
            .collect();
        let rest = from.split_off(from.len().min(refill.limit));
        QueuePage { entries: from, next: rest.first().map(|e| (e.due_ms, e.delivery)), rest: None }
    }

    #[test]
    fn memory_is_bounded_and_spilled_jobs_come_back_in_order() {
        let mut queue = LaneQueue::default();
        let total = SPILL_ABOVE as u64 + 1;
        for seq in 0..total {
            queue.push(entry(QueueClass::Fresh, seq, seq));
        }
        assert!(queue.needs_paging());
        // The latest jobs past the bound go, in order.
        let Some(Paging::Spill(QueueClass::Fresh, spill)) = queue.paging() else { panic!("a spill is due") };
        let over = total as usize - IN_MEMORY_PER_CLASS;
        assert_eq!(spill.len(), over);
        assert_eq!(spill.first().unwrap().delivery.seq, IN_MEMORY_PER_CLASS as u64);
        assert_eq!(spill.last().unwrap().delivery.seq, total - 1);
        queue.evict(QueueClass::Fresh, &spill);
        assert_eq!(queue.len(), IN_MEMORY_PER_CLASS);
        assert_eq!(queue.pending(), total as usize, "spilled jobs still count as pending");
        assert!(!queue.needs_paging());
        assert_eq!(queue.paging(), None);

        // Drained below the refill mark: the next page is read from the first spilled job.
        let mut taken = Vec::new();
        while queue.len() >= REFILL_BELOW {
            taken.push(queue.take(QueueClass::Fresh).unwrap().delivery.seq);
        }
        assert!(queue.needs_paging());
        let Some(Paging::Refill(refill)) = queue.paging() else { panic!("a refill is due") };
        assert_eq!(refill.class, QueueClass::Fresh);
        assert_eq!(refill.from.1.seq, IN_MEMORY_PER_CLASS as u64);
        assert_eq!(refill.limit, IN_MEMORY_PER_CLASS - queue.len());
        let journal: Vec<u64> = (IN_MEMORY_PER_CLASS as u64..total).collect();
        let added = queue.refilled(refill, page_of(refill, &journal), |_| false);
        assert_eq!(added, over);
        assert_eq!(queue.pending(), queue.len(), "nothing left only in the journal");
        assert_eq!(queue.paging(), None);
        while let Some(job) = queue.take(QueueClass::Fresh) {
            taken.push(job.delivery.seq);
        }
        assert_eq!(taken, (0..total).collect::<Vec<_>>(), "every job once, in arrival order");
    }

    #[test]
    fn a_refill_reads_one_page_at_a_time_and_skips_jobs_in_flight() {
        let mut queue = LaneQueue::default();
        let [refill, ..] = queue.refills_from_start();
        let journal: Vec<u64> = (0..3 * IN_MEMORY_PER_CLASS as u64).collect();
        let mut page = page_of(refill, &journal);
        page.rest = Some(2 * IN_MEMORY_PER_CLASS);
        // Delivery 7 is being attempted: queuing it again would send it twice.
        assert_eq!(queue.refilled(refill, page, |id| id.seq == 7), IN_MEMORY_PER_CLASS - 1);
        assert_eq!(queue.pending(), 3 * IN_MEMORY_PER_CLASS - 1, "the rest is counted");
        assert!(!fresh_keys(&queue).contains(&7));
        let mut taken = 0;
        while queue.len() >= REFILL_BELOW {
            taken += usize::from(queue.take(QueueClass::Fresh).is_some());
        }
        let Some(Paging::Refill(refill)) = queue.paging() else { panic!("a refill is due") };
        assert_eq!(refill.from.1.seq, IN_MEMORY_PER_CLASS as u64, "on from the first job past the page");
        let added = queue.refilled(refill, page_of(refill, &journal), |_| false);
        assert_eq!(added, refill.limit);
        assert!(queue.class(QueueClass::Fresh).spilled_from.is_some(), "a third page is left");
        assert_eq!(queue.pending(), 3 * IN_MEMORY_PER_CLASS - 1 - taken);
    }

    /// Spilled jobs come before anything that arrives after them: a retry
    /// due later stays in the journal, and a new fresh job waits in memory
    /// until the older ones are read back.
    #[test]
    fn jobs_arriving_after_a_spill_wait_their_turn() {
        let mut queue = LaneQueue::default();
        for seq in 0..=SPILL_ABOVE as u64 {
            queue.push(entry(QueueClass::Fresh, seq, seq));
            queue.push(entry(QueueClass::Retry, seq, 100_000 + seq));
        }
        for _ in 0..2 {
            let Some(Paging::Spill(class, spill)) = queue.paging() else { panic!("a spill is due") };
            queue.evict(class, &spill);
        }
        let spilled = SPILL_ABOVE + 1 - IN_MEMORY_PER_CLASS;
        let pending = queue.pending();
        // A retry due after the spilled ones waits for them; one due before them goes first.
        assert!(queue.push(entry(QueueClass::Retry, 50_000, 200_000)));
        assert!(queue.push(entry(QueueClass::Retry, 0, 200_001)));
        assert_eq!(queue.class(QueueClass::Retry).ready(), IN_MEMORY_PER_CLASS + 1);
        let first_two = [queue.take(QueueClass::Retry).unwrap(), queue.take(QueueClass::Retry).unwrap()];
        assert_eq!(first_two.map(|job| job.delivery.seq), [100_000, 200_001], "by due time");
        // A new fresh job waits as well.
        assert!(queue.push(entry(QueueClass::Fresh, 60_000, 300_000)));
        assert_eq!(queue.class(QueueClass::Fresh).ready(), IN_MEMORY_PER_CLASS);
        assert_eq!(queue.pending(), pending + 1);

        let mut taken = Vec::new();
        while let Some(job) = queue.take(QueueClass::Fresh) {
            taken.push(job.delivery.seq);
        }
        assert_eq!(
            taken,
            (0..IN_MEMORY_PER_CLASS as u64).collect::<Vec<_>>(),
            "not the new one before the spilled"
        );
        while queue.take(QueueClass::Retry).is_some() {}
        assert_eq!(
            queue.oldest_arrival_ms(),
            Some(IN_MEMORY_PER_CLASS as u64),
            "the first fresh job spilled"
        );
        let Some(Paging::Refill(refill)) = queue.paging() else { panic!("a refill is due") };
        assert_eq!(refill.class, QueueClass::Fresh);
        let journal: Vec<u64> = (IN_MEMORY_PER_CLASS as u64..=SPILL_ABOVE as u64).collect();
        assert_eq!(queue.refilled(refill, page_of(refill, &journal), |_| false), spilled);
        let mut taken = Vec::new();
        while let Some(job) = queue.take(QueueClass::Fresh) {
            taken.push(job.delivery.seq);
        }
        let mut expected = journal.clone();
        expected.push(300_000);
        assert_eq!(taken, expected, "the spilled ones, then the new one");
    }

    /// A reload after a reopen reads the first page of what the lane holds
    /// already: the jobs past the page that it holds count once.
    #[test]
    fn a_reload_counts_each_pending_job_once() {
        let mut queue = LaneQueue::default();
        for seq in 0..10 {
            queue.push(entry(QueueClass::Retry, seq, seq));
        }
        let refill = Refill { limit: 5, ..queue.refills_from_start()[QueueClass::Retry as usize] };
        let journal: Vec<u64> = (0..20).collect();
        let mut page = page_of(refill, &journal);
        page.rest = Some(15);
        assert_eq!(queue.refilled(refill, page, |_| false), 0, "the page's jobs are held already");
        assert_eq!(queue.pending(), 20);
        assert_eq!(queue.class(QueueClass::Retry).ready(), 5, "those past the page wait for it");
    }

    /// A retry queued while a page is read, past where the read has got to:
    /// the page does not have it, and it must not be left behind.
    #[test]
    fn a_retry_queued_during_a_refill_is_not_left_behind() {
        let mut queue = LaneQueue::default();
        for seq in 0..=SPILL_ABOVE as u64 {
            queue.push(entry(QueueClass::Retry, seq, seq));
        }
        let Some(Paging::Spill(class, spill)) = queue.paging() else { panic!("a spill is due") };
        queue.evict(class, &spill);
        while queue.class(QueueClass::Retry).ready() >= REFILL_BELOW {
            queue.take(QueueClass::Retry);
        }
        let Some(Paging::Refill(refill)) = queue.paging() else { panic!("a refill is due") };
        let late = entry(QueueClass::Retry, 1_000_000, 1_000_000);
        assert!(queue.push(late));
        let journal: Vec<u64> = (IN_MEMORY_PER_CLASS as u64..=SPILL_ABOVE as u64).collect();
        queue.refilled(refill, page_of(refill, &journal), |_| false);
        assert_eq!(queue.class(QueueClass::Retry).spilled_from, None, "the page reached the end");
        let mut taken = Vec::new();
        while let Some(job) = queue.take(QueueClass::Retry) {
            taken.push(job.delivery.seq);
        }
        assert_eq!(taken.last(), Some(&late.delivery.seq), "the late retry goes, last");
    }

    #[test]
    fn an_eviction_during_a_refill_keeps_the_evicted_jobs_reachable() {
        let mut queue = LaneQueue::default();
        for seq in 0..=SPILL_ABOVE as u64 {
            queue.push(entry(QueueClass::Retry, seq, seq));
        }
        // A reopen's refill reads the journal before these were spilled...
        let refill = queue.refills_from_start()[QueueClass::Retry as usize];
        let Some(Paging::Spill(class, spill)) = queue.paging() else { panic!("a spill is due") };
        queue.evict(class, &spill);
        // ...and finds nothing past its page: the spilled ones must still be read later.
        let page = QueuePage { entries: Vec::new(), next: None, rest: Some(0) };
        queue.refilled(refill, page, |_| false);
        let first_spilled = (spill[0].due_ms, spill[0].delivery);
        assert_eq!(queue.class(QueueClass::Retry).spilled_from, Some(first_spilled));
        // Without the eviction, the same page would have cleared it.
        let refill = queue.refills_from_start()[QueueClass::Retry as usize];
        queue.refilled(refill, QueuePage::default(), |_| false);
        assert_eq!(queue.class(QueueClass::Retry).spilled_from, None);
    }

    #[test]
    fn empty_and_future_only() {
        let mut queue = LaneQueue::default();
        assert_eq!(queue.next(0), Next::Empty);
        queue.push(entry(QueueClass::Retry, 300, 1));
        assert_eq!(queue.next(299), Next::NotBefore(300));
        assert_eq!(queue.len(), 1);
    }
}
