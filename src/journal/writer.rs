//! The append writer: one thread that owns every append (and records every
//! attempt's outcome), so appends need no transactions, and that makes them
//! durable in groups.
//!
//! Callers queue an append and wait. The thread takes everything queued,
//! checks each against the dedup index (and against the rest of the group),
//! writes the whole group as ONE atomic sled batch, flushes once, and answers
//! every caller. While it flushes, the next group gathers, so concurrent
//! requests share fsyncs instead of queueing behind each other, and no
//! request is answered before the flush that covers its write.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::fresh::{self, FreshJobs};
use super::horizon::Landing;
use super::keys;
use super::recent::RecentRecords;
use super::{Appended, DeliveryId, DeliveryRecord, Job, JournalError, NewDelivery};

/// Most appends written in one group; bounds the latency a group adds.
const MAX_GROUP: usize = 512;

/// What the writer thread is asked to do.
// Appends are nearly all the traffic: boxing them to shrink the rare ping
// would cost an allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Request {
    Append(Append),
    /// Plain writes (an attempt's outcome), applied with the group.
    Write(Vec<Write>, WriteReply),
    /// Answer once every append queued before it is written: proves the
    /// thread is alive and keeping up (the systemd watchdog asks).
    Ping(oneshot::Sender<()>),
    /// Index every pending fresh job in `Q` and clear the mark.
    IndexAllFresh(oneshot::Sender<Result<usize, JournalError>>),
}

/// Answers a [`Request::Write`] once its group is flushed.
pub(crate) type WriteReply = oneshot::Sender<Result<(), JournalError>>;

/// One key written or removed.
pub(crate) enum Write {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
    /// A fresh job's first outcome is in this group: its queue entry goes if
    /// it has one (the writer no longer tracks it: indexed at the open, or
    /// after waiting); otherwise the fresh-job mark may move past it once the
    /// group is flushed (see `fresh`).
    SettleFresh {
        delivery: DeliveryId,
        target: String,
        queue_key: Vec<u8>,
    },
    /// A fresh job that has waited long: index it (unless its first outcome
    /// came first), so it no longer holds the mark back (see `fresh`).
    IndexWaiting {
        delivery: DeliveryId,
        target: String,
        queue_key: Vec<u8>,
    },
}

pub(crate) struct Append {
    pub new: NewDelivery,
    pub targets: Vec<String>,
    pub reply: oneshot::Sender<Result<Appended, JournalError>>,
    /// Holds back listings until the group is applied (see `horizon`).
    pub landing: Landing,
}

pub(crate) struct Writer {
    /// `None` only while dropping, to let the thread see the channel close.
    queue: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

impl Writer {
    /// `failed` is set when a group cannot be written (see `Journal::reopen`).
    pub(crate) fn start(
        db: sled::Db,
        tree: sled::Tree,
        dedup_window_ms: u64,
        failed: Arc<super::health::Health>,
        fresh: FreshJobs,
        recent: Arc<Mutex<RecentRecords>>,
    ) -> std::io::Result<Self> {
        let (queue, requests) = mpsc::channel::<Request>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let thread = std::thread::Builder::new().name("journal-writer".into()).spawn(move || {
            // What opening the journal left unqueued (normally nothing).
            let mut fresh = fresh;
            // Ends when the journal, and with it the sender, is dropped.
            while let Ok(first) = requests.recv() {
                let mut group = Group::default();
                let mut pings = Vec::new();
                let mut index_all = Vec::new();
                for request in std::iter::once(first).chain(requests.try_iter().take(MAX_GROUP - 1)) {
                    match request {
                        Request::Append(append) => group.appends.push(append),
                        Request::Write(writes, reply) => group.writes.push((writes, reply)),
                        Request::Ping(reply) => pings.push(reply),
                        Request::IndexAllFresh(reply) => index_all.push(reply),
                    }
                }
                if !group.is_empty() {
                    if !group.commit(&db, &tree, dedup_window_ms, &mut fresh, &recent) && failed.fail() {
                        tracing::error!(
                            "journal write failed; refusing writes until the journal is reopened"
                        );
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                for ping in pings {
                    let _ = ping.send(());
                }
                if !index_all.is_empty() {
                    let queued = fresh::queue_all(&tree).and_then(|jobs| {
                        // The tree is now as an open leaves it: nothing
                        // unqueued, and a later outcome removes its job's entry.
                        fresh = FreshJobs::default();
                        db.flush().map(|_| jobs).map_err(JournalError::from)
                    });
                    if queued.is_err() {
                        // Batches before the failing one may be in the tree:
                        // know exactly the jobs still unqueued.
                        if let Ok(tracked) = fresh::track_leftovers(&tree) {
                            fresh = tracked;
                        }
                        if failed.fail() {
                            tracing::error!(
                                "journal write failed; refusing writes until the journal is reopened"
                            );
                        }
                    }
                    for reply in index_all {
                        let _ = reply.send(queued.clone());
                    }
                }
            }
        })?;
        Ok(Writer { queue: Some(queue), thread: Some(thread), flushes })
    }

    pub(crate) async fn append(
        &self,
        new: NewDelivery,
        targets: Vec<String>,
        landing: Landing,
    ) -> Result<Appended, JournalError> {
        let stopped = || JournalError::Storage("the journal writer has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send(Request::Append(Append { new, targets, reply, landing })).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Applies `writes` with the next group; resolves after its flush.
    pub(crate) async fn write(&self, writes: Vec<Write>) -> Result<(), JournalError> {
        let stopped = || JournalError::Storage("the journal writer has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send(Request::Write(writes, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Resolves once the writer thread has worked through everything queued
    /// before the call; an error when the thread is gone.
    pub(crate) async fn ping(&self) -> Result<(), JournalError> {
        let stopped = || JournalError::Storage("the journal writer has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send(Request::Ping(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Queues every pending fresh job in `Q` (see `fresh`).
    pub(crate) async fn queue_fresh_jobs(&self) -> Result<usize, JournalError> {
        let stopped = || JournalError::Storage("the journal writer has stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send(Request::IndexAllFresh(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Groups written (= flushes) so far; with concurrent writers, fewer than appends.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    /// Joins the thread so its handle on the database is gone when the
    /// journal is: sled locks its directory until the last handle drops.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the thread took from its queue in one go.
#[derive(Default)]
struct Group {
    appends: Vec<Append>,
    writes: Vec<(Vec<Write>, WriteReply)>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.appends.is_empty() && self.writes.is_empty()
    }

    /// Writes the whole group as one batch, flushes, and answers every
    /// caller; false when the write or the flush failed (every caller got
    /// the error).
    fn commit(
        self,
        db: &sled::Db,
        tree: &sled::Tree,
        dedup_window_ms: u64,
        fresh: &mut FreshJobs,
        recent: &Mutex<RecentRecords>,
    ) -> bool {
        let mut batch = sled::Batch::default();
        let mut planned = Planned::default();
        let mut outcomes = Vec::with_capacity(self.appends.len());
        // Let go once the batch is applied (or failed): listings may then read past them.
        let mut landings = Vec::with_capacity(self.appends.len());
        for Append { new, targets, reply, landing } in self.appends {
            let id = landing.id();
            landings.push(landing);
            let outcome = plan(tree, dedup_window_ms, id, new, &targets, &mut planned, &mut batch);
            if let Ok(Appended { id, duplicate: false }) = outcome {
                fresh.appended(id, &targets);
            }
            outcomes.push((reply, outcome));
        }
        // Outcomes touch jobs of earlier deliveries only: never a key an
        // append of this group writes.
        let mut written_replies = Vec::with_capacity(self.writes.len());
        // Fresh jobs the writer lets go of once this group is on disk:
        // settled, or now indexed.
        let mut released = Vec::new();
        let mut to_index = Vec::new();
        for (writes, reply) in self.writes {
            for write in writes {
                match write {
                    Write::Insert(key, value) => batch.insert(key, value),
                    Write::Remove(key) => batch.remove(key),
                    Write::SettleFresh { delivery, target, queue_key } => {
                        if fresh.tracks(delivery, &target) {
                            released.push((delivery, target));
                        } else {
                            batch.remove(queue_key);
                        }
                    }
                    Write::IndexWaiting { delivery, target, queue_key } => {
                        to_index.push((delivery, target, queue_key));
                    }
                }
            }
            written_replies.push(reply);
        }
        // After every settle of the group, whatever order they came in: a job
        // settled here needs no entry. (Rare: the set is built only then.)
        let settled_here: HashSet<(DeliveryId, String)> =
            if to_index.is_empty() { HashSet::new() } else { released.iter().cloned().collect() };
        for (delivery, target, queue_key) in to_index {
            if fresh.tracks(delivery, &target) && !settled_here.contains(&(delivery, target.clone())) {
                batch.insert(queue_key, Vec::new());
                released.push((delivery, target));
            }
        }
        // Covers this group's appends, not yet the jobs it releases: the mark
        // passes a job only once its outcome or index entry is on disk.
        let mark = fresh.mark_update();
        if let Some(mark) = mark {
            batch.insert(keys::FRESH_FROM, fresh::encode_mark(mark));
        }
        let written = tree.apply_batch(batch).and_then(|()| db.flush().map(drop));
        drop(landings);
        if written.is_ok() {
            if let Some(mark) = mark {
                fresh.mark_written(mark);
            }
            for (delivery, target) in &released {
                fresh.release(*delivery, target);
            }
            let mut recent = recent.lock().expect("not poisoned");
            for record in planned.new_records {
                recent.insert(record);
            }
        }
        let failure = || written.as_ref().err().map(|err| JournalError::Storage(err.to_string()));
        for (reply, outcome) in outcomes {
            // A caller whose request was cancelled is gone; fine.
            let _ = reply.send(match failure() {
                None => outcome,
                Some(err) => Err(err),
            });
        }
        for reply in written_replies {
            let _ = reply.send(failure().map_or(Ok(()), Err));
        }
        written.is_ok()
    }
}

/// What the appends of a group planned so far.
#[derive(Default)]
struct Planned {
    /// Dedup and event-group keys written by this group: a duplicate
    /// within the group points at the first one.
    in_group: HashMap<Vec<u8>, (DeliveryId, bool)>,
    /// New deliveries that have targets: the lanes get them from memory
    /// once the group is flushed (see `recent`).
    new_records: Vec<Arc<DeliveryRecord>>,
}

/// Adds one append's writes to the group's batch, or finds its original.
fn plan(
    tree: &sled::Tree,
    dedup_window_ms: u64,
    id: DeliveryId,
    new: NewDelivery,
    targets: &[String],
    planned: &mut Planned,
    batch: &mut sled::Batch,
) -> Result<Appended, JournalError> {
    let Planned { in_group, new_records } = planned;
    let dedup_key = keys::dedup(&new.source, &new.webhook_id);
    let previous = match in_group.get(&dedup_key) {
        Some((id, _)) => Some(*id),
        None => tree.get(&dedup_key)?.as_deref().and_then(DeliveryId::from_key),
    };
    if let Some(previous) = previous
        && new.received_at_ms.saturating_sub(previous.received_at_ms) < dedup_window_ms
    {
        return Ok(Appended { id: previous, duplicate: true });
    }
    // A detection backfilled and the same detection's real webhook are one
    // delivery, whichever came first. (Two real webhooks are told apart by
    // their ids alone, as before.)
    let backfilled = new.webhook_id.starts_with(crate::parallel::BACKFILL_ID_PREFIX);
    let group_key = new.event_group.as_deref().map(|group| keys::group(&new.source, group));
    let group_owner = match &group_key {
        None => None,
        Some(key) => match in_group.get(key) {
            Some(owner) => Some(*owner),
            None => tree.get(key)?.as_deref().and_then(keys::parse_group_owner),
        },
    };
    if let Some((owner, owner_backfilled)) = group_owner
        && (backfilled || owner_backfilled)
    {
        return Ok(Appended { id: owner, duplicate: true });
    }
    let received_at_ms = id.received_at_ms;
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
    };
    batch.insert(keys::delivery(id), record.encode());
    // For the lanes that are about to send it (see `recent`).
    if !targets.is_empty() {
        new_records.push(Arc::new(record));
    }
    // Not queued in `Q`: found from the fresh-job mark (see `fresh`).
    for target in targets {
        batch.insert(keys::job(id, target), Job::new(id, target, received_at_ms, None).encode());
    }
    batch.insert(dedup_key.clone(), &id.to_key());
    in_group.insert(dedup_key, (id, false));
    // The latest delivery of a detection owns its group entry (a second real
    // webhook of it takes it over): retention removes the entry with its
    // owner, and so only once every copy is past retention.
    if let Some(group_key) = group_key {
        batch.insert(group_key.clone(), keys::group_owner(id, backfilled));
        in_group.insert(group_key, (id, backfilled));
    }
    Ok(Appended { id, duplicate: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{QueueClass, QueueEntry};

    /// One group holding `writes` (each its own request), committed.
    fn commit(db: &sled::Db, tree: &sled::Tree, fresh: &mut FreshJobs, writes: Vec<Write>) {
        let mut group = Group::default();
        for write in writes {
            group.writes.push((vec![write], oneshot::channel().0));
        }
        assert!(group.commit(db, tree, 0, fresh, &Mutex::new(RecentRecords::new(0))));
    }

    #[test]
    fn a_waiting_job_settled_in_the_same_group_is_never_left_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("journal").unwrap();
        let id = |ms| DeliveryId { received_at_ms: ms, seq: ms };
        let entry = |ms| QueueEntry::new(QueueClass::Fresh, ms, id(ms));
        let settle =
            |ms| Write::SettleFresh { delivery: id(ms), target: "a".into(), queue_key: entry(ms).key("a") };
        let index =
            |ms| Write::IndexWaiting { delivery: id(ms), target: "a".into(), queue_key: entry(ms).key("a") };
        let mut fresh = FreshJobs::default();
        for ms in [1, 2, 3] {
            fresh.appended(id(ms), &["a".to_owned()]);
        }

        // Either order within one group: settled, so no entry.
        commit(&db, &tree, &mut fresh, vec![index(1), settle(1)]);
        commit(&db, &tree, &mut fresh, vec![settle(2), index(2)]);
        // Indexed alone: the entry is written and the writer lets go of it...
        commit(&db, &tree, &mut fresh, vec![index(3)]);
        let indexed: Vec<_> = tree.scan_prefix(b"Q").map(|e| e.unwrap().0.to_vec()).collect();
        assert_eq!(indexed, [entry(3).key("a")]);
        assert!(!fresh.tracks(id(3), "a"));
        assert_eq!(fresh.wanted(), None, "nothing holds the mark back");
        // ...so its first outcome removes the entry.
        commit(&db, &tree, &mut fresh, vec![settle(3)]);
        assert_eq!(tree.scan_prefix(b"Q").count(), 0);
    }
}
