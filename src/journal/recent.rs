//! The deliveries journaled most recently, kept in memory for the lanes.
//!
//! Every attempt needs its delivery's record; reading it back from sled and
//! decoding it was the larger of an attempt's two lookups, paid once per
//! target. A record never changes once written (it is only ever deleted, by
//! retention or a purge, which forget it here), so the lanes may share one
//! copy: the writer puts each new delivery here once its group is flushed,
//! and a lane that reads one from disk (a replay, a backlog older than what
//! is kept) puts it here for the other targets. Bounded by the bytes its
//! records hold, oldest out first. Pure: no I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{DeliveryId, DeliveryRecord};

/// What the lanes may hold in recent records: about 3,000 deliveries of
/// 1 KiB, more than the lanes of a busy gateway are apart (live, and in a
/// replay), and little beside the 200 MiB a journal of a million
/// deliveries may take.
pub(super) const RECENT_RECORDS_BYTES: usize = 4 << 20;

/// What a kept record costs beyond its fields' bytes: the `Arc`, its slot
/// in the map and the order, and the allocator's rounding of each field.
const PER_RECORD_OVERHEAD: usize = 128;

#[derive(Debug)]
pub(super) struct RecentRecords {
    records: HashMap<DeliveryId, Arc<DeliveryRecord>>,
    /// Insertion order; may name records already forgotten.
    order: VecDeque<DeliveryId>,
    bytes: usize,
    budget: usize,
}

impl RecentRecords {
    pub(super) fn new(budget: usize) -> Self {
        RecentRecords { records: HashMap::new(), order: VecDeque::new(), bytes: 0, budget }
    }

    pub(super) fn get(&self, id: DeliveryId) -> Option<Arc<DeliveryRecord>> {
        self.records.get(&id).cloned()
    }

    /// Keeps `record`, letting go of the oldest ones beyond the budget (a
    /// record larger than the whole budget is not kept).
    pub(super) fn insert(&mut self, record: Arc<DeliveryRecord>) {
        let size = weight(&record);
        if size > self.budget || self.records.contains_key(&record.id) {
            return;
        }
        while self.bytes + size > self.budget {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.records.remove(&oldest) {
                self.bytes -= weight(&gone);
            }
        }
        self.bytes += size;
        self.order.push_back(record.id);
        self.records.insert(record.id, record);
        // Forgotten ids left in `order` are bounded by what was kept.
        if self.order.len() > 2 * self.records.len() + 64 {
            self.order.retain(|id| self.records.contains_key(id));
        }
    }

    /// The delivery was deleted from the journal.
    pub(super) fn forget(&mut self, id: DeliveryId) {
        if let Some(gone) = self.records.remove(&id) {
            self.bytes -= weight(&gone);
        }
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The bytes a kept record holds, about.
fn weight(record: &DeliveryRecord) -> usize {
    PER_RECORD_OVERHEAD
        + std::mem::size_of::<DeliveryRecord>()
        + record.body.len()
        + record.source.len()
        + record.webhook_id.len()
        + record.webhook_timestamp.len()
        + record.webhook_signature.len()
        + record.content_type.as_ref().map_or(0, String::len)
        + record.event_type.as_ref().map_or(0, String::len)
        + record.monitor_id.as_ref().map_or(0, String::len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ms: u64, body_len: usize) -> Arc<DeliveryRecord> {
        Arc::new(DeliveryRecord {
            id: DeliveryId { received_at_ms: ms, seq: ms },
            source: "parallel".into(),
            webhook_id: format!("whevent_{ms}"),
            webhook_timestamp: "1800000000".into(),
            webhook_signature: "v1,abc".into(),
            content_type: Some("application/json".into()),
            event_type: None,
            monitor_id: None,
            body: vec![b'x'; body_len],
        })
    }

    #[test]
    fn keeps_what_fits_and_lets_the_oldest_go_first() {
        let one = weight(&record(0, 1_000));
        let mut recent = RecentRecords::new(3 * one);
        for ms in 0..5 {
            recent.insert(record(ms, 1_000));
            assert!(recent.bytes() <= 3 * one);
        }
        let kept: Vec<u64> = (0..5).filter(|&ms| recent.get(record(ms, 0).id).is_some()).collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(recent.get(record(4, 0).id).unwrap().body.len(), 1_000);
    }

    #[test]
    fn a_forgotten_record_is_gone_and_frees_its_bytes() {
        let mut recent = RecentRecords::new(1 << 20);
        recent.insert(record(1, 500));
        recent.insert(record(2, 500));
        recent.forget(record(1, 0).id);
        assert!(recent.get(record(1, 0).id).is_none());
        assert_eq!(recent.bytes(), weight(&record(2, 500)));
        recent.forget(record(1, 0).id); // twice: nothing more
        assert_eq!(recent.bytes(), weight(&record(2, 500)));
    }

    #[test]
    fn a_record_larger_than_the_budget_is_not_kept() {
        let mut recent = RecentRecords::new(10_000);
        recent.insert(record(1, 100));
        recent.insert(record(2, 20_000));
        assert!(recent.get(record(2, 0).id).is_none());
        assert!(recent.get(record(1, 0).id).is_some(), "and it does not push the others out");
    }

    #[test]
    fn forgetting_and_inserting_many_keeps_the_order_list_bounded() {
        let mut recent = RecentRecords::new(1 << 20);
        for ms in 0..10_000 {
            recent.insert(record(ms, 10));
            recent.forget(record(ms, 0).id);
            // Cut back to the live ids once over 2 × live + 64, and a forget
            // can make that 2 × (live + 1) + 64.
            assert!(recent.order.len() <= 66, "{} ids kept in order", recent.order.len());
        }
        assert_eq!(recent.bytes(), 0);
    }
}
