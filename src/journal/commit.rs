//! Group commit: writers that need durability queue a waiter; one thread
//! flushes sled once for every waiter queued so far and wakes them all.
//!
//! A waiter is queued only after its write is in sled's log, and a flush
//! covers everything written before it starts, so each waiter is answered by a
//! flush that covers its write. While one flush runs the next batch gathers,
//! so concurrent requests share fsyncs instead of queueing behind each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

pub(crate) struct GroupCommit {
    /// `None` only while dropping, to let the thread see the channel close.
    queue: Option<mpsc::Sender<Waiter>>,
    thread: Option<std::thread::JoinHandle<()>>,
    flushes: Arc<AtomicU64>,
}

impl GroupCommit {
    pub(crate) fn start(db: sled::Db) -> std::io::Result<Self> {
        let (queue, waiters) = mpsc::channel::<Waiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let thread = std::thread::Builder::new().name("journal-commit".into()).spawn(move || {
            // Ends when the journal, and with it the sender, is dropped.
            while let Ok(first) = waiters.recv() {
                let mut batch = vec![first];
                batch.extend(waiters.try_iter());
                let outcome = db.flush().map(drop).map_err(|err| err.to_string());
                counter.fetch_add(1, Ordering::Relaxed);
                for waiter in batch {
                    // A waiter whose request was cancelled is gone; fine.
                    let _ = waiter.send(outcome.clone());
                }
            }
        })?;
        Ok(GroupCommit { queue: Some(queue), thread: Some(thread), flushes })
    }

    /// Resolves once everything written before the call is on disk.
    pub(crate) async fn durable(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        let queue = self.queue.as_ref().expect("queue lives until drop");
        queue.send(tx).map_err(|_| "journal commit thread has stopped".to_owned())?;
        rx.await.map_err(|_| "journal commit thread has stopped".to_owned())?
    }

    /// How many flushes have run; with concurrent writers, fewer than writes.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for GroupCommit {
    /// Joins the thread so its handle on the database is gone when the
    /// journal is: sled locks its directory until the last handle drops.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
