//! A lane's in-memory view of its pending jobs. The journal's queue index is
//! the durable copy (read once at start, kept in step by every write); this
//! one spares each pick a disk scan. Pure: no I/O, time comes in.
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

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::journal::{DeliveryId, QueueClass, QueueEntry};

pub const FRESH_BEFORE_RETRY: u32 = 4;
pub const LIVE_BEFORE_REPLAY: u32 = 9;

/// What the lane should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A job is ready; [`LaneQueue::take`] it once it may be sent.
    Ready(QueueClass),
    /// Only retries, the earliest due at this time.
    NotBefore(u64),
    Empty,
}

#[derive(Debug, Default)]
pub struct LaneQueue {
    fresh: VecDeque<QueueEntry>,
    retries: BTreeMap<(u64, DeliveryId), QueueEntry>,
    replays: BTreeMap<(u64, DeliveryId), QueueEntry>,
    fresh_streak: u32,
    /// Live jobs taken since the last replayed one.
    live_streak: u32,
    /// Every queued delivery: a lane holds at most one entry per job, so a
    /// job handed over twice (by a resync racing ingress) goes out once.
    queued: HashSet<DeliveryId>,
}

impl LaneQueue {
    /// Queues `entry`; false (and nothing changes) when its delivery is
    /// already queued.
    pub fn push(&mut self, entry: QueueEntry) -> bool {
        if !self.queued.insert(entry.delivery) {
            return false;
        }
        match entry.class {
            QueueClass::Fresh => self.fresh.push_back(entry),
            QueueClass::Retry => {
                self.retries.insert((entry.due_ms, entry.delivery), entry);
            }
            QueueClass::Replay => {
                self.replays.insert((entry.due_ms, entry.delivery), entry);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.fresh.len() + self.retries.len() + self.replays.len()
    }

    /// Queued replayed jobs (included in [`LaneQueue::len`]).
    pub fn replays(&self) -> usize {
        self.replays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the oldest queued live delivery arrived (for the pending-age
    /// gauge; a replay of last month's deliveries is not a month late).
    pub fn oldest_arrival_ms(&self) -> Option<u64> {
        let fresh = self.fresh.front().map(|entry| entry.delivery.received_at_ms);
        let retry = self.retries.values().map(|entry| entry.delivery.received_at_ms).min();
        fresh.into_iter().chain(retry).min()
    }

    /// Which job would go next at `now_ms`, without taking it.
    pub fn next(&self, now_ms: u64) -> Next {
        let replay_due = self.replays.keys().next().map(|(due, _)| *due);
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
        let retry_due = self.retries.keys().next().map(|(due, _)| *due);
        let retry_ready = retry_due.is_some_and(|due| due <= now_ms);
        match (self.fresh.is_empty(), retry_ready) {
            (false, true) if self.fresh_streak >= FRESH_BEFORE_RETRY => Next::Ready(QueueClass::Retry),
            (false, _) => Next::Ready(QueueClass::Fresh),
            (true, true) => Next::Ready(QueueClass::Retry),
            (true, false) => retry_due.map_or(Next::Empty, Next::NotBefore),
        }
    }

    /// Removes the next job of `class` (as chosen by [`LaneQueue::next`]).
    pub fn take(&mut self, class: QueueClass) -> Option<QueueEntry> {
        let taken = match class {
            QueueClass::Fresh => {
                self.fresh_streak = self.fresh_streak.saturating_add(1);
                self.live_streak = self.live_streak.saturating_add(1);
                self.fresh.pop_front()
            }
            QueueClass::Retry => {
                self.fresh_streak = 0;
                self.live_streak = self.live_streak.saturating_add(1);
                self.retries.pop_first().map(|(_, entry)| entry)
            }
            QueueClass::Replay => {
                self.live_streak = 0;
                self.replays.pop_first().map(|(_, entry)| entry)
            }
        };
        if let Some(entry) = &taken {
            self.queued.remove(&entry.delivery);
        }
        taken
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

    #[test]
    fn empty_and_future_only() {
        let mut queue = LaneQueue::default();
        assert_eq!(queue.next(0), Next::Empty);
        queue.push(entry(QueueClass::Retry, 300, 1));
        assert_eq!(queue.next(299), Next::NotBefore(300));
        assert_eq!(queue.len(), 1);
    }
}
