//! Removing old deliveries: the retention sweep (delivered ones, on a timer)
//! and the operator's purge (dead ones, on request). Both walk the time index
//! from the oldest delivery up to a cutoff and delete a delivery with all of
//! its jobs in one batch; neither ever touches a delivery with a pending job.
//!
//! A detection's event-group entry (`G`, what backfill checks) outlives the
//! delivery that owns it, or the next backfill would bring the detection
//! back: retention and purges keep it, noted under the time they removed
//! the delivery (`T`), and retention removes it once that is past retention.
//! That time, not the delivery's: a detection's group can have events days
//! after its first webhook, and backfill picks a group by its latest event,
//! so a backfill may well look at a group whose webhook is past retention.

use super::{DeliveryId, Job, JobState, Journal, JournalError, keys};

/// Deliveries deleted per batch (and per hold of the maintenance lock).
const CHUNK: usize = 256;

/// What a sweep removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub deliveries: u64,
    pub jobs: u64,
}

/// Which deliveries a sweep deletes, by the states of their jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// Retention: every job delivered (or none at all).
    AllDelivered,
    /// Purge: at least one dead job and none pending.
    DeadAndSettled,
}

impl Rule {
    fn applies(self, jobs: &[Job]) -> bool {
        match self {
            Rule::AllDelivered => jobs.iter().all(|job| job.state == JobState::Delivered),
            Rule::DeadAndSettled => {
                jobs.iter().any(|job| job.state == JobState::Dead)
                    && jobs.iter().all(|job| job.state != JobState::Pending)
            }
        }
    }
}

impl Journal {
    /// Deletes deliveries received before `cutoff_ms` whose jobs are all
    /// delivered, and finished replays created before it. Dead and pending
    /// jobs keep their delivery. Stops early, with what it removed so far,
    /// after [`Journal::stop_maintenance`].
    pub fn prune_delivered(&self, cutoff_ms: u64) -> Result<Swept, JournalError> {
        self.hand_group_entries_to_latest()?;
        let swept = self.sweep(cutoff_ms, Rule::AllDelivered, None, false)?;
        self.sweep_group_tombstones(cutoff_ms)?;
        if self.maintenance_stopped() {
            return Ok(swept);
        }
        for replay in self.replays(usize::MAX)? {
            if !self.maintenance_stopped()
                && replay.created_at_ms < cutoff_ms
                && self.replay_progress(replay.id)?.is_some_and(|progress| progress.finished())
            {
                let _maintenance = self.maintenance.lock().expect("not poisoned");
                self.forget_replay(replay.id)?;
            }
        }
        if !self.maintenance_stopped() {
            // Under the lock: a replay being started has its record already,
            // but not yet all its pairs.
            let _maintenance = self.maintenance.lock().expect("not poisoned");
            self.forget_orphaned_replay_pairs()?;
        }
        Ok(swept)
    }

    /// Deletes deliveries received before `until_ms` (of `source`, when given)
    /// that have a dead job and no pending one: the operator's way to drop
    /// dead letters for good. `dry_run` only counts. Stops early, with what
    /// it removed so far, after [`Journal::stop_maintenance`] (at shutdown,
    /// once the admin API is closed).
    pub fn purge_dead(
        &self,
        until_ms: u64,
        source: Option<&str>,
        dry_run: bool,
    ) -> Result<Swept, JournalError> {
        self.sweep(until_ms, Rule::DeadAndSettled, source, dry_run)
    }

    fn sweep(
        &self,
        cutoff_ms: u64,
        rule: Rule,
        source: Option<&str>,
        dry_run: bool,
    ) -> Result<Swept, JournalError> {
        let mut swept = Swept::default();
        let mut start = DeliveryId { received_at_ms: 0, seq: 0 };
        let now_ms = crate::time::now_ms();
        while !self.maintenance_stopped() {
            // Decide and delete under the lock, a chunk at a time, so a
            // replay cannot revive a job between the check and the delete.
            let _maintenance = self.maintenance.lock().expect("not poisoned");
            let mut batch = sled::Batch::default();
            let mut dead_removed: Vec<String> = Vec::new();
            let mut removed = Vec::new();
            let mut next = None;
            for (examined, entry) in self.tree()?.range(keys::delivery(start)..).enumerate() {
                let (key, value) = entry?;
                let Some(id) = key.strip_prefix(keys::DELIVERY).and_then(DeliveryId::from_key) else { break };
                if id.received_at_ms >= cutoff_ms {
                    break;
                }
                if examined == CHUNK {
                    next = Some(id);
                    break;
                }
                let Some(record) = super::unless_corrupt(super::decode(&key[1..], &value), "retention")?
                else {
                    continue;
                };
                if source.is_some_and(|source| record.source != source) {
                    continue;
                }
                let Some(jobs) = super::unless_corrupt(self.jobs_of(id), "retention")? else { continue };
                if !rule.applies(&jobs) {
                    continue;
                }
                swept.deliveries += 1;
                swept.jobs += jobs.len() as u64;
                batch.remove(key);
                batch.remove(keys::enrichment(id));
                removed.push(id);
                if let Some(group) = crate::envelope::Envelope::from_body(&record.body).event_group_id {
                    let group_key = keys::group(&record.source, &group);
                    // Kept, or the next backfill would bring the detection
                    // back, until a retention past now, and at least two past
                    // its arrival, as backfill counts on (a purge may come
                    // the day after; see `sweep_group_tombstones`).
                    if self.group_entry_owned_by(id, &group_key)?.is_some() {
                        let from = now_ms.max(id.received_at_ms.saturating_add(self.retention_ms));
                        batch.insert(keys::group_tombstone(from, id), group_key);
                    }
                }
                for job in jobs {
                    batch.remove(keys::job(id, &job.target));
                    if job.state == JobState::Dead {
                        batch.remove(keys::dead(&job.target, id));
                        dead_removed.push(job.target);
                    }
                }
            }
            if !dry_run {
                self.wrote(self.tree()?.apply_batch(batch))?;
                for target in dead_removed {
                    self.count_dead(&target, -1);
                }
                let mut recent = self.recent.lock().expect("not poisoned");
                for id in removed {
                    recent.forget(id);
                }
            }
            match next {
                Some(id) => start = id,
                None => break,
            }
        }
        if !dry_run && swept.deliveries > 0 {
            self.wrote(self.db()?.flush())?;
        }
        Ok(swept)
    }

    /// Journals from before the latest delivery of a detection owned its
    /// group entry have the first one owning it, and retention would drop
    /// the entry with that first copy while a later one is kept (so a
    /// backfill would inject the detection again). Once, before the first
    /// sweep, hands each entry to the latest delivery of its group, in time
    /// order and a chunk at a time, then leaves a marker. An entry already
    /// owned by a later delivery (the writer hands it over as copies arrive,
    /// or a later copy was purged) is left as it is.
    fn hand_group_entries_to_latest(&self) -> Result<(), JournalError> {
        if self.tree()?.contains_key(keys::GROUP_OWNERS_MARKER)? {
            return Ok(());
        }
        let mut handed = 0u64;
        let mut start = DeliveryId::default();
        loop {
            if self.maintenance_stopped() {
                return Ok(());
            }
            let _maintenance = self.maintenance.lock().expect("not poisoned");
            let tree = self.tree()?;
            let mut next = None;
            for (examined, entry) in tree.range(keys::delivery(start)..).enumerate() {
                let (key, value) = entry?;
                let Some(id) = key.strip_prefix(keys::DELIVERY).and_then(DeliveryId::from_key) else { break };
                if examined == CHUNK {
                    next = Some(id);
                    break;
                }
                let Some(record) = super::unless_corrupt(super::decode(&key[1..], &value), "group owners")?
                else {
                    continue;
                };
                let Some(group) = crate::envelope::Envelope::from_body(&record.body).event_group_id else {
                    continue;
                };
                let group_key = keys::group(&record.source, &group);
                let read = tree.get(&group_key)?;
                let owner = read.as_deref().and_then(keys::parse_group_owner).map(|(owner, _)| owner);
                if owner.is_none_or(|owner| owner < id) {
                    let backfilled = record.webhook_id.starts_with(crate::parallel::BACKFILL_ID_PREFIX);
                    // Unless the writer handed it to a newer copy meanwhile.
                    let swapped = self.wrote(tree.compare_and_swap(
                        &group_key,
                        read,
                        Some(keys::group_owner(id, backfilled)),
                    ))?;
                    handed += u64::from(swapped.is_ok());
                }
            }
            match next {
                Some(id) => start = id,
                None => break,
            }
        }
        self.wrote(self.tree()?.insert(keys::GROUP_OWNERS_MARKER, &[1u8]))?;
        self.wrote(self.db()?.flush())?;
        if handed > 0 {
            tracing::info!(handed, "event-group entries now point at each detection's latest delivery");
        }
        Ok(())
    }

    /// The group entry, if it points at `id` (a later webhook of the same
    /// detection may have taken it over).
    pub(super) fn group_entry_owned_by(
        &self,
        id: DeliveryId,
        group_key: &[u8],
    ) -> Result<Option<sled::IVec>, JournalError> {
        let entry = self.tree()?.get(group_key)?;
        Ok(entry.filter(|value| keys::parse_group_owner(value).is_some_and(|(owner, _)| owner == id)))
    }

    /// Removes each group entry unless it changed since it was read: the
    /// writer thread may meanwhile have handed it to a new webhook of the
    /// same detection, whose entry must stay.
    pub(super) fn remove_group_entries(
        &self,
        entries: Vec<(Vec<u8>, sled::IVec)>,
    ) -> Result<(), JournalError> {
        let tree = self.tree()?;
        for (key, read) in entries {
            // Err(_) inside: it changed; it is the new owner's now.
            let _ = self.wrote(tree.compare_and_swap(key, Some(read), None::<&[u8]>))?;
        }
        Ok(())
    }

    /// Removes the group entries retention and purges kept, for deliveries
    /// removed before `cutoff_ms`: past retention from their removal.
    fn sweep_group_tombstones(&self, cutoff_ms: u64) -> Result<(), JournalError> {
        let end = keys::group_tombstones_before(cutoff_ms);
        let mut removed_any = false;
        while !self.maintenance_stopped() {
            let _maintenance = self.maintenance.lock().expect("not poisoned");
            let tree = self.tree()?;
            let mut batch = sled::Batch::default();
            let mut owned = Vec::new();
            let mut removed = 0;
            for entry in tree.range(keys::GROUP_TOMBSTONE.to_vec()..end.clone()).take(CHUNK) {
                let (key, group_key) = entry?;
                if let Some(purged) = keys::group_tombstone_delivery(&key)
                    && let Some(entry) = self.group_entry_owned_by(purged, &group_key)?
                {
                    owned.push((group_key.to_vec(), entry));
                }
                batch.remove(key);
                removed += 1;
            }
            if removed == 0 {
                break;
            }
            // Entries first: a crash in between leaves the tombstones, swept again.
            self.remove_group_entries(owned)?;
            self.wrote(tree.apply_batch(batch))?;
            removed_any = true;
            if removed < CHUNK {
                break;
            }
        }
        if removed_any {
            self.wrote(self.db()?.flush())?;
        }
        Ok(())
    }
}
