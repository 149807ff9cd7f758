use std::path::Path;
use std::sync::Arc;

use super::*;

fn config(dir: &Path) -> JournalConfig {
    JournalConfig {
        path: dir.join("journal"),
        dedup_window: Duration::from_secs(3600),
        retention: Duration::from_secs(86400),
        cache: 8 << 20,
        max_disk: None,
    }
}

fn delivery(webhook_id: &str, at_ms: u64) -> NewDelivery {
    NewDelivery {
        received_at_ms: at_ms,
        source: "parallel".into(),
        webhook_id: webhook_id.into(),
        webhook_timestamp: "1700000000".into(),
        webhook_signature: "v1,sig".into(),
        content_type: Some("application/json".into()),
        event_type: Some("monitor.event.detected".into()),
        monitor_id: Some("monitor_1".into()),
        event_group: None,
        body: format!("{{\"id\":\"{webhook_id}\"}}").into_bytes(),
    }
}

/// A `monitor.event.detected` of event group `group`, as ingress journals it.
fn detection(webhook_id: &str, group: &str, at_ms: u64) -> NewDelivery {
    NewDelivery {
        event_group: Some(group.into()),
        body: format!(
            r#"{{"type":"monitor.event.detected","data":{{"event":{{"event_group_id":"{group}"}}}}}}"#
        )
        .into_bytes(),
        ..delivery(webhook_id, at_ms)
    }
}

#[tokio::test]
async fn append_then_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let a = journal.append(delivery("evt_a", 1_000), &[]).await.unwrap();
        let b = journal.append(delivery("evt_b", 2_000), &[]).await.unwrap();
        assert!(!a.duplicate && !b.duplicate);
        assert!(a.id < b.id);
        a
    };
    let journal = Journal::open(&config(dir.path())).unwrap();
    let record = journal.get(first.id).unwrap().unwrap();
    assert_eq!(record.webhook_id, "evt_a");
    assert_eq!(record.body, b"{\"id\":\"evt_a\"}");
    let ids: Vec<String> = journal.iter().map(|r| r.unwrap().webhook_id).collect();
    assert_eq!(ids, ["evt_a", "evt_b"]);
}

#[tokio::test]
async fn duplicate_within_window_returns_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let original = journal.append(delivery("evt_a", 1_000), &[]).await.unwrap();
    let again = journal.append(delivery("evt_a", 1_000 + 3_599_999), &[]).await.unwrap();
    assert_eq!(again, Appended { id: original.id, duplicate: true });
    assert_eq!(journal.len(), 1);
    // The same id from another source is not a duplicate.
    let other = journal
        .append(NewDelivery { source: "other".into(), ..delivery("evt_a", 2_000) }, &[])
        .await
        .unwrap();
    assert!(!other.duplicate);
}

#[tokio::test]
async fn duplicate_after_window_is_a_new_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let original = journal.append(delivery("evt_a", 1_000), &[]).await.unwrap();
    let later = journal.append(delivery("evt_a", 1_000 + 3_600_000), &[]).await.unwrap();
    assert!(!later.duplicate);
    assert_ne!(later.id, original.id);
    // ... and later copies dedup against the newer one.
    let again = journal.append(delivery("evt_a", 1_000 + 3_600_001), &[]).await.unwrap();
    assert_eq!(again, Appended { id: later.id, duplicate: true });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&config(dir.path())).unwrap());
    let before = journal.flush_count();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(delivery(&format!("evt_{i}"), 5_000), &[]).await })
        })
        .collect();
    for task in tasks {
        assert!(!task.await.unwrap().unwrap().duplicate);
    }
    let flushes = journal.flush_count() - before;
    assert_eq!(journal.len(), 200);
    assert!(flushes < 200, "group commit should batch, got {flushes} flushes for 200 writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_journal_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(Journal::open(&config(dir.path())).unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(delivery("evt_same", 5_000), &[]).await.unwrap() })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(journal.len(), 1);
    assert_eq!(outcomes.iter().filter(|o| !o.duplicate).count(), 1);
    let id = outcomes[0].id;
    assert!(outcomes.iter().all(|o| o.id == id));
}

#[tokio::test]
async fn over_quota_refuses_writes_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(&config(dir.path())).unwrap();
        journal.append(delivery("evt_a", 1_000), &[]).await.unwrap();
    }
    let journal = Journal::open(&JournalConfig { max_disk: Some(1), ..config(dir.path()) }).unwrap();
    let err = journal.append(delivery("evt_b", 2_000), &[]).await.unwrap_err();
    assert!(matches!(err, JournalError::Full { limit: 1, .. }), "{err}");
    assert_eq!(journal.len(), 1);
}

#[tokio::test]
async fn quota_is_rechecked_as_the_journal_grows() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&JournalConfig { max_disk: Some(4 << 20), ..config(dir.path()) }).unwrap();
    // sled grows its file in segments, so write until the refreshed size
    // crosses the limit; every refused write must leave nothing behind.
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..64u64 {
        let big =
            NewDelivery { body: vec![b'x'; 256 * 1024], ..delivery(&format!("evt_{i}"), 1_000 + i * 1_100) };
        match journal.append(big, &[]).await {
            Ok(_) => accepted += 1,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    assert!(accepted >= 1);
    assert!(matches!(refused, Some(JournalError::Full { .. })), "{refused:?}");
    assert_eq!(journal.len(), accepted);
}

#[tokio::test]
async fn prune_dedup_drops_only_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    journal.append(delivery("evt_old", 1_000), &[]).await.unwrap();
    journal.append(delivery("evt_new", 3_000_000), &[]).await.unwrap();
    assert_eq!(journal.prune_dedup(1_000 + 3_600_000).unwrap(), 1);
    // The pruned id is accepted as new; the kept one is still a duplicate.
    assert!(!journal.append(delivery("evt_old", 3_700_000), &[]).await.unwrap().duplicate);
    assert!(journal.append(delivery("evt_new", 3_700_000), &[]).await.unwrap().duplicate);
    // Records themselves are untouched by dedup pruning.
    assert_eq!(journal.len(), 3);
}

#[tokio::test]
async fn fan_out_jobs_are_queued_and_recorded_from_the_first_attempt() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned(), "b".to_owned()];
    let appended = journal.append(delivery("evt_f", 1_000), &targets).await.unwrap();
    // Both jobs exist, pending with no attempts, and are queued.
    let jobs = journal.jobs_of(appended.id).unwrap();
    assert_eq!(
        jobs.iter().map(|j| (j.target.as_str(), j.state, j.attempts)).collect::<Vec<_>>(),
        [("a", JobState::Pending, 0), ("b", JobState::Pending, 0)]
    );
    let queued = journal.queued("a").unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].class, QueueClass::Fresh);
    assert_eq!(journal.job(appended.id, "c").unwrap(), None, "no job for a target it did not fan out to");

    // A failed first attempt writes the job and moves it to the retry queue.
    let attempt = Attempt { at_ms: 2_000, latency_ms: 3, status: Some(500), error: None };
    let job = journal.job(appended.id, "a").unwrap().unwrap();
    let retry =
        journal.record_attempt(&queued[0], job, attempt, Decision::RetryAt(9_000)).await.unwrap().unwrap();
    assert_eq!((retry.class, retry.due_ms), (QueueClass::Retry, 9_000));
    assert_eq!(journal.queued("a").unwrap(), std::slice::from_ref(&retry));
    let job = journal.job(appended.id, "a").unwrap().unwrap();
    assert_eq!((job.state, job.attempts, job.next_attempt_at_ms), (JobState::Pending, 1, 9_000));

    // Delivered: off the queue, history kept.
    let attempt = Attempt { at_ms: 9_100, latency_ms: 2, status: Some(200), error: None };
    let job = journal.job(appended.id, "a").unwrap().unwrap();
    assert_eq!(journal.record_attempt(&retry, job, attempt, Decision::Delivered).await.unwrap(), None);
    assert!(journal.queued("a").unwrap().is_empty());
    let job = journal.job(appended.id, "a").unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Delivered, 2));
    assert_eq!(journal.pending_count("b"), 1, "the other target's job is untouched");

    // A duplicate fans out nothing new.
    journal.append(delivery("evt_f", 1_500), &targets).await.unwrap();
    assert_eq!(journal.pending_count("b"), 1);
}

/// Runs `target`'s queued job of `id` to `decision` (one attempt).
async fn settle(
    journal: &Journal,
    id: DeliveryId,
    target: &str,
    decision: crate::delivery::policy::Decision,
) {
    let entry = journal.queued(target).unwrap().into_iter().find(|e| e.delivery == id).unwrap();
    let attempt = Attempt { at_ms: 5_000, latency_ms: 1, status: Some(500), error: None };
    let job = journal.job(id, target).unwrap().unwrap();
    journal.record_attempt(&entry, job, attempt, decision).await.unwrap();
}

#[tokio::test]
async fn a_replay_requeues_settled_jobs_skips_pending_ones_and_survives_reopen() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let (dead, delivered, pending, replay) = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let targets = vec!["a".to_owned()];
        let dead = journal.append(delivery("evt_dead", 1_000), &targets).await.unwrap().id;
        let delivered = journal.append(delivery("evt_ok", 1_001), &targets).await.unwrap().id;
        let pending = journal.append(delivery("evt_wait", 1_002), &targets).await.unwrap().id;
        settle(&journal, dead, "a", Decision::Dead).await;
        settle(&journal, delivered, "a", Decision::Delivered).await;
        assert_eq!(journal.dead_count("a"), 1);

        // Target "b" never had jobs: a replay creates them (backfill).
        let pairs = [(dead, "a"), (delivered, "a"), (pending, "a"), (dead, "b"), (dead, "a")]
            .map(|(id, t)| Ok((id, t.to_owned())));
        let mut queued = Vec::new();
        let started = journal
            .start_replay(serde_json::json!({"test": true}), pairs, 7_000, |batch| queued.extend(batch))
            .unwrap();
        assert_eq!((started.matched, started.skipped), (3, 1), "pending skipped, repeated pair once");
        assert_eq!(queued.len(), 3);
        assert!(queued.iter().all(|(_, entry)| entry.class == QueueClass::Replay));
        assert_eq!(journal.dead_count("a"), 0, "the dead job is pending again");
        (dead, delivered, pending, started.id)
    };
    // Everything the replay wrote is durable.
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(journal.dead_count("a"), 0);
    let job = journal.job(dead, "a").unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts, job.replay, job.created_at_ms),
        (JobState::Pending, 0, Some(replay), 7_000)
    );
    assert_eq!(job.history.len(), 1, "history is kept across a replay");
    assert_eq!(journal.job(dead, "b").unwrap().unwrap().replay, Some(replay));
    assert_eq!(journal.job(pending, "a").unwrap().unwrap().replay, None);
    let replay_queue: Vec<QueueEntry> =
        journal.queued("a").unwrap().into_iter().filter(|e| e.class == QueueClass::Replay).collect();
    assert_eq!(replay_queue.iter().map(|e| e.delivery).collect::<Vec<_>>(), [dead, delivered]);

    let progress = journal.replay_progress(replay).unwrap().unwrap();
    assert_eq!((progress.pending, progress.done, progress.failed), (3, 0, 0));
    assert_eq!(progress.summary.selection["test"], true);

    // A replayed job that fails again goes dead again, and retries stay in the replay class.
    let retry = journal
        .record_attempt(
            &replay_queue[0],
            journal.job(replay_queue[0].delivery, "a").unwrap().unwrap(),
            Attempt { at_ms: 8_000, latency_ms: 1, status: Some(500), error: None },
            Decision::RetryAt(9_000),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retry.class, QueueClass::Replay);
    settle(&journal, dead, "a", Decision::Dead).await;
    settle(&journal, delivered, "a", Decision::Delivered).await;
    let progress = journal.replay_progress(replay).unwrap().unwrap();
    assert_eq!((progress.pending, progress.done, progress.failed), (1, 1, 1));
    assert_eq!(journal.dead_count("a"), 1);

    // A later replay of the same pair supersedes it in the first one's progress.
    let again =
        journal.start_replay(serde_json::json!({}), [Ok((delivered, "a".to_owned()))], 10_000, drop).unwrap();
    let progress = journal.replay_progress(replay).unwrap().unwrap();
    assert_eq!((progress.done, progress.superseded), (0, 1));
    assert_eq!(journal.replays(10).unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [again.id, replay]);
    assert_eq!(journal.replay_progress(ReplayId(12345)).unwrap(), None);
}

#[tokio::test]
async fn retention_prunes_only_old_fully_delivered_deliveries() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let both = vec!["a".to_owned(), "b".to_owned()];
    let old_delivered = journal.append(delivery("evt_1", 1_000), &both).await.unwrap().id;
    let old_half_dead = journal.append(delivery("evt_2", 1_001), &both).await.unwrap().id;
    let old_pending = journal.append(delivery("evt_3", 1_002), &both).await.unwrap().id;
    let old_unrouted = journal.append(delivery("evt_4", 1_003), &[]).await.unwrap().id;
    let young_delivered = journal.append(delivery("evt_5", 50_000), &both).await.unwrap().id;
    for target in ["a", "b"] {
        settle(&journal, old_delivered, target, Decision::Delivered).await;
        settle(&journal, young_delivered, target, Decision::Delivered).await;
    }
    settle(&journal, old_half_dead, "a", Decision::Delivered).await;
    settle(&journal, old_half_dead, "b", Decision::Dead).await;
    settle(&journal, old_pending, "a", Decision::Delivered).await;

    let swept = journal.prune_delivered(10_000).unwrap();
    assert_eq!(swept, Swept { deliveries: 2, jobs: 2 });
    let left: Vec<DeliveryId> = journal.iter().map(|r| r.unwrap().id).collect();
    assert_eq!(left, [old_half_dead, old_pending, young_delivered]);
    assert!(journal.get(old_unrouted).unwrap().is_none());
    assert!(journal.jobs_of(old_delivered).unwrap().is_empty(), "jobs go with their delivery");
    assert_eq!(journal.dead_count("b"), 1);
    // Nothing more to do: a second sweep is a no-op.
    assert_eq!(journal.prune_delivered(10_000).unwrap(), Swept::default());
}

/// A finished replay past retention goes, pair list and record; one whose
/// removal a crash cut short (some pairs gone, the record left) is found
/// and finished by the next sweep, leaving no pair behind.
#[tokio::test]
async fn retention_forgets_finished_replays_even_half_forgotten_ones() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let both = vec!["a".to_owned(), "b".to_owned()];
    let id = journal.append(delivery("evt_1", 1_000), &both).await.unwrap().id;
    for target in ["a", "b"] {
        settle(&journal, id, target, Decision::Dead).await;
    }
    let pairs = both.iter().map(|target| Ok((id, target.clone())));
    let replay = journal.start_replay(serde_json::json!({}), pairs, 2_000, drop).unwrap().id;
    for target in ["a", "b"] {
        settle(&journal, id, target, Decision::Delivered).await;
    }
    let pair_keys = || journal.tree().unwrap().scan_prefix(keys::replay_pairs(replay.0)).count();
    assert_eq!(pair_keys(), 2);
    // Cut short: one pair removed, the record still there.
    journal.tree().unwrap().remove(keys::replay_pair(replay.0, id, "a")).unwrap();
    assert!(journal.replay_progress(replay).unwrap().unwrap().finished());
    journal.prune_delivered(10_000).unwrap();
    assert_eq!(journal.replay_progress(replay).unwrap(), None);
    assert_eq!(pair_keys(), 0, "no pair left behind");

    // Cut short by an earlier version, which removed the record first: the
    // pairs are found all the same. A replay with its record is left alone.
    let pairs = both.iter().map(|target| Ok((id, target.clone())));
    let orphaned = journal.start_replay(serde_json::json!({}), pairs, 20_000, drop).unwrap().id;
    settle(&journal, id, "a", Decision::Delivered).await;
    let kept =
        journal.start_replay(serde_json::json!({}), [Ok((id, "a".to_owned()))], 20_000, drop).unwrap().id;
    journal.tree().unwrap().remove(keys::replay(orphaned.0)).unwrap();
    let pairs_of =
        |replay: ReplayId| journal.tree().unwrap().scan_prefix(keys::replay_pairs(replay.0)).count();
    assert_eq!((pairs_of(orphaned), pairs_of(kept)), (2, 1));
    journal.prune_delivered(10_000).unwrap();
    assert_eq!((pairs_of(orphaned), pairs_of(kept)), (0, 1));
    assert!(journal.replay_progress(kept).unwrap().is_some());
}

/// One corrupt record or job does not stop retention for good, nor the
/// open's one-time indexing: each passes over it, logged, and keeps it.
#[tokio::test]
async fn a_corrupt_entry_is_skipped_by_retention_and_by_the_open() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let a = vec!["a".to_owned()];
    let bad_record = journal.append(delivery("evt_1", 1_000), &a).await.unwrap().id;
    let bad_job = journal.append(delivery("evt_2", 1_001), &a).await.unwrap().id;
    let good = journal.append(delivery("evt_3", 1_002), &a).await.unwrap().id;
    for id in [bad_record, bad_job, good] {
        settle(&journal, id, "a", Decision::Delivered).await;
    }
    let tree = journal.tree().unwrap();
    tree.insert(keys::delivery(bad_record), &b"\xffnot a record"[..]).unwrap();
    tree.insert(keys::job(bad_job, "a"), &b"\xffnot a job"[..]).unwrap();
    assert_eq!(journal.prune_delivered(10_000).unwrap().deliveries, 1, "the good one");
    assert!(journal.get(good).unwrap().is_none());
    assert!(
        tree.contains_key(keys::delivery(bad_record)).unwrap() && journal.get(bad_job).unwrap().is_some()
    );

    // A journal from before the dead-job and event-group indexes, with them.
    tree.remove(keys::DEAD_INDEX_MARKER).unwrap();
    tree.remove(keys::GROUP_INDEX_MARKER).unwrap();
    journal.flush().unwrap();
    drop((tree, journal));
    let journal = Journal::open(&config(dir.path())).unwrap();
    let tree = journal.tree().unwrap();
    assert!(
        tree.contains_key(keys::DEAD_INDEX_MARKER).unwrap()
            && tree.contains_key(keys::GROUP_INDEX_MARKER).unwrap()
    );
}

/// Whether the lanes' record of `id` is in memory (see `recent`).
fn kept_in_memory(journal: &Journal, id: DeliveryId) -> bool {
    journal.recent.lock().unwrap().get(id).is_some()
}

#[tokio::test]
async fn lanes_get_new_records_from_memory_and_never_a_deleted_one() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let routed = journal.append(delivery("evt_1", 1_000), &["a".to_owned()]).await.unwrap().id;
    let unrouted = journal.append(delivery("evt_2", 1_001), &[]).await.unwrap().id;
    assert!(kept_in_memory(&journal, routed), "kept once flushed, for the lanes about to send it");
    assert!(!kept_in_memory(&journal, unrouted), "no lane will ask for it");
    let shared = journal.record_to_send(routed).unwrap().unwrap();
    assert_eq!(*shared, journal.get(routed).unwrap().unwrap());

    // Read from disk once (after a restart), then shared.
    drop((journal, shared));
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert!(!kept_in_memory(&journal, routed));
    let from_disk = journal.record_to_send(routed).unwrap().unwrap();
    assert!(Arc::ptr_eq(&from_disk, &journal.record_to_send(routed).unwrap().unwrap()));

    // Deleted by retention: gone from memory too.
    settle(&journal, routed, "a", Decision::Delivered).await;
    assert_eq!(journal.prune_delivered(10_000).unwrap().deliveries, 2);
    assert!(!kept_in_memory(&journal, routed));
    assert!(journal.record_to_send(routed).unwrap().is_none());
}

/// After a second open: `evt_1` (`id`, one job for `a`) is still there
/// and queued, and the journal takes a write that a later open sees.
async fn kept_everything_and_takes_writes(journal: Journal, id: DeliveryId, dir: &Path) {
    assert_eq!(journal.get(id).unwrap().unwrap().webhook_id, "evt_1");
    assert_eq!(journal.queued("a").unwrap().len(), 1);
    let second = journal.append(delivery("evt_2", 2_000), &["a".to_owned()]).await.unwrap();
    assert!(!second.duplicate, "and it takes writes");
    drop(journal);
    assert_eq!(Journal::open(&config(dir)).unwrap().queued("a").unwrap().len(), 2);
}

#[tokio::test]
async fn an_open_that_took_long_is_done_again_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        journal.append(delivery("evt_1", 1_000), &["a".to_owned()]).await.unwrap().id
    };
    let (journal, reopened) = Journal::open_again_after(&config(dir.path()), Duration::MAX).unwrap();
    assert!(!reopened, "a quick recovery is kept");
    drop(journal);
    // Every recovery counts as long: closed and opened again at once.
    let (journal, reopened) = Journal::open_again_after(&config(dir.path()), Duration::ZERO).unwrap();
    assert!(reopened);
    kept_everything_and_takes_writes(journal, id, dir.path()).await;
}

/// A reopen (after a storage failure) replays everything sled wrote since
/// the process started, so it too opens a second time when that took long.
#[tokio::test]
async fn a_reopen_that_took_long_is_done_again_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let id = journal.append(delivery("evt_1", 1_000), &["a".to_owned()]).await.unwrap().id;
    assert!(!journal.reopen_again_after(Duration::MAX).unwrap(), "a quick recovery is kept");
    // Every recovery counts as long: closed and opened again at once.
    assert!(journal.reopen_again_after(Duration::ZERO).unwrap());
    assert_eq!(journal.generation(), 2);
    kept_everything_and_takes_writes(journal, id, dir.path()).await;
}

#[tokio::test]
async fn maintenance_stopped_for_shutdown_removes_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    // Unrouted and old: retention would remove it, and its dedup entry has expired.
    let old = journal.append(delivery("evt_1", 1_000), &[]).await.unwrap().id;
    journal.stop_maintenance();
    assert_eq!(journal.prune_delivered(10_000).unwrap(), Swept::default());
    assert_eq!(journal.prune_dedup(1_000 + 3_600_000).unwrap(), 0);
    assert!(journal.get(old).unwrap().is_some());
    let still_a_duplicate = journal.append(delivery("evt_1", 2_000), &[]).await.unwrap();
    assert!(still_a_duplicate.duplicate, "the dedup entry is still there");
}

#[tokio::test]
async fn purge_drops_settled_dead_deliveries_before_a_time() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let both = vec!["a".to_owned(), "b".to_owned()];
    let dead = journal.append(delivery("evt_1", 1_000), &both).await.unwrap().id;
    let dead_but_b_pending = journal.append(delivery("evt_2", 1_001), &both).await.unwrap().id;
    let other_source = journal
        .append(NewDelivery { source: "other".into(), ..delivery("evt_3", 1_002) }, &both)
        .await
        .unwrap()
        .id;
    let dead_later = journal.append(delivery("evt_4", 90_000), &both).await.unwrap().id;
    for id in [dead, other_source, dead_later] {
        settle(&journal, id, "a", Decision::Dead).await;
        settle(&journal, id, "b", Decision::Delivered).await;
    }
    settle(&journal, dead_but_b_pending, "a", Decision::Dead).await;
    assert_eq!(journal.dead_count("a"), 4);

    let dry = journal.purge_dead(10_000, Some("parallel"), true).unwrap();
    assert_eq!(dry, Swept { deliveries: 1, jobs: 2 });
    assert_eq!(journal.len(), 4, "a dry run deletes nothing");

    assert_eq!(
        journal.purge_dead(10_000, Some("parallel"), false).unwrap(),
        Swept { deliveries: 1, jobs: 2 }
    );
    assert!(journal.get(dead).unwrap().is_none());
    assert_eq!(journal.dead_count("a"), 3);
    assert_eq!(journal.purge_dead(10_000, None, false).unwrap().deliveries, 1, "the other source's");
    let left: Vec<DeliveryId> = journal.iter().map(|r| r.unwrap().id).collect();
    assert_eq!(left, [dead_but_b_pending, dead_later]);
    // The dead index agrees after a reopen.
    drop(journal);
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(journal.dead_count("a"), 2);
}

#[tokio::test]
async fn a_replay_that_fails_part_way_hands_over_what_it_wrote() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    let mut ids = Vec::new();
    for i in 0..1_030u64 {
        let id = journal.append(delivery(&format!("evt_{i}"), 1_000 + i), &targets).await.unwrap().id;
        settle(&journal, id, "a", Decision::Delivered).await;
        ids.push(id);
    }
    let pairs = ids
        .iter()
        .map(|id| Ok((*id, "a".to_owned())))
        .chain(std::iter::once(Err(JournalError::Storage("disk on fire".into()))));
    let mut handed = Vec::new();
    let err =
        journal.start_replay(serde_json::json!({}), pairs, 9_000, |batch| handed.extend(batch)).unwrap_err();
    assert_eq!(err, JournalError::Storage("disk on fire".into()));
    assert_eq!(handed.len(), 1_024, "the written batch reached the lanes");
    let replay = journal.replays(1).unwrap()[0].clone();
    assert_eq!(replay.matched, 1_024, "the summary counts what was requeued");
    let progress = journal.replay_progress(replay.id).unwrap().unwrap();
    assert_eq!(progress.pending, 1_024);
    assert_eq!(journal.queued("a").unwrap().len(), 1_024, "nothing beyond the failure was written");
}

#[tokio::test]
async fn dead_jobs_of_a_journal_from_before_the_dead_index_are_counted() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let id = journal.append(delivery("evt_old", 1_000), &["a".to_owned()]).await.unwrap().id;
        settle(&journal, id, "a", Decision::Dead).await;
        // What an older version left: the dead job, no index entry, no marker.
        journal.tree().unwrap().remove(keys::dead("a", id)).unwrap();
        journal.tree().unwrap().remove(keys::DEAD_INDEX_MARKER).unwrap();
        journal.flush().unwrap();
    }
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(journal.dead_count("a"), 1);
    assert_eq!(journal.purge_dead(u64::MAX, None, false).unwrap().deliveries, 1);
    assert_eq!(journal.dead_count("a"), 0);
}

#[tokio::test]
async fn reopening_in_place_keeps_what_was_flushed_and_takes_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let first = journal.append(delivery("evt_a", 1_000), &["t".to_owned()]).await.unwrap();
    // What a failed write leaves behind: the flag, and sled refusing writes.
    journal.failed.fail();
    assert!(!journal.is_writable());
    let handle = journal.store().unwrap();
    let busy = journal.reopen();
    assert!(busy.is_err(), "a store still in use is not swapped: {busy:?}");
    assert!(!journal.is_writable());
    drop(handle);
    let recovery = journal.reopen().unwrap();
    assert!(!journal.is_writable(), "writable only once the lanes have resynced");
    // A write failing while the lanes resync (the disk still full): the
    // recovery does not end; another one is needed.
    journal.failed.fail();
    assert!(journal.mark_writable(recovery).is_err());
    assert!(!journal.is_writable());
    let recovery = journal.reopen().unwrap();
    journal.mark_writable(recovery).unwrap();
    assert!(journal.is_writable());
    assert_eq!(journal.generation(), 2);
    assert_eq!(journal.get(first.id).unwrap().unwrap().webhook_id, "evt_a");
    assert_eq!(journal.queued("t").unwrap().len(), 1, "its job is still queued");
    let second = journal.append(delivery("evt_b", 2_000), &[]).await.unwrap();
    assert!(!second.duplicate);
    let again = journal.append(delivery("evt_a", 3_000), &[]).await.unwrap();
    assert_eq!(again, Appended { id: first.id, duplicate: true }, "the dedup index survived");
    journal.ping().await.unwrap();
}

#[tokio::test]
async fn a_backfilled_detection_and_its_real_webhook_are_one_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let grouped = |webhook_id: &str, group: &str, source: &str, at_ms: u64| NewDelivery {
        source: source.into(),
        event_group: Some(group.into()),
        ..delivery(webhook_id, at_ms)
    };
    // Backfilled first, the real webhook days later (past the id window).
    let backfilled = journal.append(grouped("whbackfill_g1", "g1", "parallel", 1_000), &[]).await.unwrap();
    assert!(!backfilled.duplicate);
    assert!(journal.has_event_group("parallel", "g1").unwrap());
    let late = journal.append(grouped("whevent_real1", "g1", "parallel", 1_000 + 3 * 86_400_000), &[]).await;
    assert_eq!(late.unwrap(), Appended { id: backfilled.id, duplicate: true });
    // Real first, then a backfill of the same group.
    let real = journal.append(grouped("whevent_real2", "g2", "parallel", 2_000), &[]).await.unwrap();
    let again = journal.append(grouped("whbackfill_g2", "g2", "parallel", 3_000), &[]).await.unwrap();
    assert_eq!(again, Appended { id: real.id, duplicate: true });
    // Two real webhooks are told apart by their ids alone, as always; and
    // groups never match across sources.
    let second = journal.append(grouped("whevent_real3", "g2", "parallel", 4_000), &[]).await.unwrap();
    assert!(!second.duplicate);
    let other = journal.append(grouped("whbackfill_g1", "g1", "other", 5_000), &[]).await.unwrap();
    assert!(!other.duplicate);
    // Within one group commit too.
    let (a, b) = tokio::join!(
        journal.append(grouped("whbackfill_g3", "g3", "parallel", 6_000), &[]),
        journal.append(grouped("whevent_real4", "g3", "parallel", 6_000), &[]),
    );
    assert_eq!(u8::from(a.unwrap().duplicate) + u8::from(b.unwrap().duplicate), 1);
    assert_eq!(journal.len(), 5);
}

#[tokio::test]
async fn journals_from_before_the_group_index_get_it_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let body =
        br#"{"type":"monitor.event.detected","data":{"monitor_id":"m","event":{"event_group_id":"g_old"}}}"#;
    {
        let journal = Journal::open(&config(dir.path())).unwrap();
        // As a version without the index wrote it.
        let old = NewDelivery { event_group: None, body: body.to_vec(), ..delivery("whevent_old", 1_000) };
        journal.append(old, &[]).await.unwrap();
        journal.tree().unwrap().remove(keys::GROUP_INDEX_MARKER).unwrap();
        assert!(!journal.has_event_group("parallel", "g_old").unwrap());
    }
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert!(journal.has_event_group("parallel", "g_old").unwrap(), "indexed at open");
    let backfill = NewDelivery { event_group: Some("g_old".into()), ..delivery("whbackfill_g_old", 2_000) };
    assert!(journal.append(backfill, &[]).await.unwrap().duplicate);
}

#[tokio::test]
async fn retention_and_purges_keep_a_detections_group_entry_for_one_more_retention() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    let delivered = journal.append(detection("whevent_1", "g_delivered", 1_000), &targets).await.unwrap().id;
    let dead = journal.append(detection("whevent_2", "g_dead", 1_001), &targets).await.unwrap().id;
    settle(&journal, delivered, "a", Decision::Delivered).await;
    settle(&journal, dead, "a", Decision::Dead).await;

    let removed_from = crate::time::now_ms();
    assert_eq!(journal.prune_delivered(2_000).unwrap().deliveries, 1);
    // The group may have had events since its webhook: a backfill of them
    // must not bring the detection back.
    assert!(journal.has_event_group("parallel", "g_delivered").unwrap(), "retention keeps it");
    assert_eq!(journal.purge_dead(2_000, None, false).unwrap().deliveries, 1);
    assert!(
        journal.has_event_group("parallel", "g_dead").unwrap(),
        "a purge keeps it: a backfill must not revive it"
    );
    assert_eq!(journal.len(), 0);
    // Until retention has passed the removal (not the delivery), then both go.
    journal.prune_delivered(removed_from).unwrap();
    for group in ["g_delivered", "g_dead"] {
        assert!(journal.has_event_group("parallel", group).unwrap(), "{group}: not yet past retention");
    }
    journal.prune_delivered(crate::time::now_ms() + 1).unwrap();
    for group in ["g_delivered", "g_dead"] {
        assert!(!journal.has_event_group("parallel", group).unwrap(), "{group}: past retention, it goes");
    }
    assert_eq!(journal.tree().unwrap().scan_prefix(keys::GROUP_TOMBSTONE).count(), 0);
}

#[tokio::test]
async fn a_detections_group_entry_outlives_each_copy_but_the_last() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    // Two real webhooks of one detection (different ids): both journaled.
    let first = journal.append(detection("whevent_1", "g", 1_000), &targets).await.unwrap();
    let second = journal.append(detection("whevent_2", "g", 5_000), &targets).await.unwrap();
    assert!(!second.duplicate);
    for id in [first.id, second.id] {
        settle(&journal, id, "a", Decision::Delivered).await;
    }
    assert_eq!(journal.prune_delivered(2_000).unwrap().deliveries, 1);
    assert!(journal.has_event_group("parallel", "g").unwrap(), "a copy of the detection is still kept");
    assert_eq!(journal.tree().unwrap().scan_prefix(keys::GROUP_TOMBSTONE).count(), 0, "not the first's");
    assert_eq!(journal.prune_delivered(6_000).unwrap().deliveries, 1);
    // The last copy's entry outlives it by one retention.
    assert!(journal.has_event_group("parallel", "g").unwrap());
    journal.prune_delivered(crate::time::now_ms() + 1).unwrap();
    assert!(!journal.has_event_group("parallel", "g").unwrap());

    // A purged copy's tombstone leaves alone an entry a later copy took over.
    let dead = journal.append(detection("whevent_3", "g", 7_000), &targets).await.unwrap().id;
    settle(&journal, dead, "a", Decision::Dead).await;
    assert_eq!(journal.purge_dead(8_000, None, false).unwrap().deliveries, 1);
    let later = journal.append(detection("whevent_4", "g", 9_000), &targets).await.unwrap().id;
    settle(&journal, later, "a", Decision::Dead).await;
    journal.prune_delivered(crate::time::now_ms() + 1).unwrap();
    assert!(journal.has_event_group("parallel", "g").unwrap(), "owned by the later copy, still kept");
    assert_eq!(journal.tree().unwrap().scan_prefix(keys::GROUP_TOMBSTONE).count(), 0);

    // Retention read the entry as the pruned copy's, then a new webhook of
    // the detection took it over before the removal: the new one keeps it.
    let group_key = keys::group("parallel", "g");
    let read = journal.group_entry_owned_by(later, &group_key).unwrap().unwrap();
    let newest = journal.append(detection("whevent_5", "g", 10_000), &targets).await.unwrap().id;
    journal.remove_group_entries(vec![(group_key.clone(), read)]).unwrap();
    assert!(journal.group_entry_owned_by(newest, &group_key).unwrap().is_some());
}

/// Every key of the queue index, as `(target, delivery)`.
fn queue_index(journal: &Journal) -> Vec<(String, DeliveryId)> {
    journal
        .tree()
        .unwrap()
        .scan_prefix(keys::QUEUE_ALL)
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let (target, entry) = keys::parse_queue(&key).unwrap();
            (target.to_owned(), entry.delivery)
        })
        .collect()
}

fn fresh_mark(journal: &Journal) -> Option<Vec<u8>> {
    journal.tree().unwrap().get(keys::FRESH_FROM).unwrap().map(|value| value.to_vec())
}

#[tokio::test]
async fn fresh_jobs_stay_out_of_the_queue_index_and_are_found_again_after_a_restart() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let targets = vec!["a".to_owned(), "b".to_owned()];
    let (first, second, late) = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let first = journal.append(delivery("evt_1", 5_000), &targets).await.unwrap().id;
        let second = journal.append(delivery("evt_2", 6_000), &targets).await.unwrap().id;
        // Received before the others (a slow request, a clock step), appended
        // after them: it sorts first, and the mark must cover it.
        let late = journal.append(delivery("evt_late", 1_000), &targets).await.unwrap().id;
        assert!(late < first);
        assert!(queue_index(&journal).is_empty(), "no queue entry for a fresh job");
        assert_eq!(fresh_mark(&journal), Some(late.to_key().to_vec()), "lowered with the late append");
        let ids =
            |entries: Vec<QueueEntry>| entries.into_iter().map(|e| (e.class, e.delivery)).collect::<Vec<_>>();
        let fresh = |id| (QueueClass::Fresh, id);
        assert_eq!(ids(journal.queued("a").unwrap()), [fresh(late), fresh(first), fresh(second)]);

        settle(&journal, late, "a", Decision::Delivered).await;
        settle(&journal, late, "b", Decision::Delivered).await;
        settle(&journal, first, "a", Decision::RetryAt(9_000)).await;
        assert_eq!(queue_index(&journal), [("a".to_owned(), first)], "only the retry is indexed");
        // The mark moves with the next group, once the outcomes are on disk.
        journal.append(delivery("evt_none", 7_000), &[]).await.unwrap();
        assert_eq!(fresh_mark(&journal), Some(first.to_key().to_vec()));
        assert_eq!(ids(journal.queued("a").unwrap()), [(QueueClass::Retry, first), fresh(second)]);
        assert_eq!(ids(journal.queued("b").unwrap()), [fresh(first), fresh(second)]);
        (first, second, late)
    };

    // What a restart sees: the same pending jobs, now indexed, and no mark.
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(fresh_mark(&journal), Some(Vec::new()));
    let mut index = queue_index(&journal);
    index.sort();
    let pair = |t: &str, id| (t.to_owned(), id);
    assert_eq!(index, [pair("a", first), pair("a", second), pair("b", first), pair("b", second)]);
    assert_eq!(journal.pending_count("a"), 2);
    assert!(journal.jobs_of(late).unwrap().iter().all(|job| job.state == JobState::Delivered));

    // A job queued at the open leaves the index with its outcome.
    settle(&journal, second, "b", Decision::Delivered).await;
    assert!(!queue_index(&journal).contains(&pair("b", second)));
    // One appended since is not indexed, and pins the mark until settled.
    let new = journal.append(delivery("evt_3", 8_000), &targets).await.unwrap().id;
    assert_eq!(fresh_mark(&journal), Some(new.to_key().to_vec()));
    assert_eq!(journal.queued("b").unwrap().iter().map(|e| e.delivery).collect::<Vec<_>>(), [first, new]);
    settle(&journal, new, "a", Decision::Delivered).await;
    settle(&journal, new, "b", Decision::Dead).await;
    journal.append(delivery("evt_none2", 9_000), &[]).await.unwrap();
    assert_eq!(fresh_mark(&journal), Some(Vec::new()), "nothing unindexed is pending");
}

#[tokio::test]
async fn a_journal_from_before_the_mark_keeps_its_queued_fresh_jobs() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let id = journal.append(delivery("evt_old", 1_000), &["a".to_owned()]).await.unwrap().id;
        // What an older version wrote: the fresh job in the index, no mark.
        let tree = journal.tree().unwrap();
        tree.insert(keys::queue("a", QueueClass::Fresh, 1_000, id), &[]).unwrap();
        tree.remove(keys::FRESH_FROM).unwrap();
        journal.flush().unwrap();
        id
    };
    let journal = Journal::open(&config(dir.path())).unwrap();
    let queued = journal.queued("a").unwrap();
    assert_eq!(queued.iter().map(|e| (e.class, e.delivery)).collect::<Vec<_>>(), [(QueueClass::Fresh, id)]);
    settle(&journal, id, "a", Decision::Delivered).await;
    assert!(queue_index(&journal).is_empty());
    assert!(journal.queued("a").unwrap().is_empty());
}

#[tokio::test]
async fn queueing_the_fresh_jobs_indexes_the_pending_ones_and_their_outcomes_still_land() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    let done = journal.append(delivery("evt_1", 1_000), &targets).await.unwrap().id;
    let waiting = journal.append(delivery("evt_2", 2_000), &targets).await.unwrap().id;
    // The entry as the lane holds it, taken before the jobs are indexed.
    let held = journal.queued("a").unwrap().into_iter().find(|e| e.delivery == waiting).unwrap();
    settle(&journal, done, "a", Decision::Delivered).await;

    assert_eq!(journal.queue_fresh_jobs().await.unwrap(), 1);
    assert_eq!(queue_index(&journal), [("a".to_owned(), waiting)], "the pending one, not the delivered one");
    assert_eq!(fresh_mark(&journal), Some(Vec::new()));
    assert_eq!(journal.queue_fresh_jobs().await.unwrap(), 0, "nothing left to index");

    let attempt = Attempt { at_ms: 5_000, latency_ms: 1, status: Some(200), error: None };
    let job = journal.job(waiting, "a").unwrap().unwrap();
    journal.record_attempt(&held, job, attempt, Decision::Delivered).await.unwrap();
    assert!(queue_index(&journal).is_empty(), "its outcome took the entry out");
    assert!(journal.queued("a").unwrap().is_empty());
}

#[tokio::test]
async fn a_journal_that_cannot_queue_its_leftovers_at_open_keeps_them_behind_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let targets = vec!["a".to_owned()];
    let (first, second) = {
        let journal = Journal::open(&config(dir.path())).unwrap();
        let first = journal.append(delivery("evt_1", 1_000), &targets).await.unwrap().id;
        let second = journal.append(delivery("evt_2", 2_000), &targets).await.unwrap().id;
        (first, second) // dropped without a clean stop: both unqueued
    };
    let (db, _) = open_db(&config(dir.path()).path, 8 << 20).unwrap();
    let tree = db.open_tree("journal").unwrap();
    // A damaged job past the mark is skipped, not fatal.
    tree.insert(keys::job(DeliveryId { received_at_ms: 1_500, seq: 0 }, "a"), &b"garbage"[..]).unwrap();

    // The write fails (a full disk): the journal still opens, the mark stays
    // where it is, and the writer knows both jobs.
    let full = |_| Err(sled::Error::Io(std::io::Error::other("no space left on device")));
    let mut fresh = fresh::recover_with(&tree, fresh::INDEX_CHUNK, full).unwrap();
    assert!(fresh.tracks(first, "a") && fresh.tracks(second, "a"));
    assert_eq!(fresh.mark_update(), None, "the mark on disk already covers them");
    assert_eq!(tree.get(keys::FRESH_FROM).unwrap().as_deref(), Some(&first.to_key()[..]));
    fresh.release(first, "a");
    assert_eq!(fresh.mark_update(), Some(Some(second)), "it moves up to the next, never past it");

    // With room again, both are queued and the mark cleared.
    let fresh = fresh::recover(&db, &tree).unwrap();
    assert_eq!(fresh.wanted(), None);
    assert_eq!(tree.scan_prefix(keys::queue_target_prefix("a")).count(), 2);
    assert_eq!(tree.get(keys::FRESH_FROM).unwrap().as_deref(), Some(&[][..]));
}

/// Leftovers are queued a bounded chunk at a time (one batch of 2·10⁵ took
/// the opening process to 1.5 GB); a write failing midway leaves the writer
/// knowing exactly the jobs still unqueued, and the next open queues them.
#[tokio::test]
async fn leftovers_are_queued_in_chunks_and_an_interrupted_open_finishes_later() {
    let dir = tempfile::tempdir().unwrap();
    let both = vec!["a".to_owned(), "b".to_owned()];
    let mut ids = Vec::new();
    {
        let journal = Journal::open(&config(dir.path())).unwrap();
        for n in 0..5 {
            ids.push(journal.append(delivery(&format!("evt_{n}"), 1_000 + n), &both).await.unwrap().id);
        }
    } // dropped without a clean stop: ten jobs unqueued
    let (db, _) = open_db(&config(dir.path()).path, 8 << 20).unwrap();
    let tree = db.open_tree("journal").unwrap();
    let queued = || {
        tree.scan_prefix(keys::queue_target_prefix("a")).count()
            + tree.scan_prefix(keys::queue_target_prefix("b")).count()
    };

    // Three a batch; the second fails: three queued, the other seven tracked.
    let mut batches = 0;
    let fresh = fresh::recover_with(&tree, 3, |batch| {
        batches += 1;
        if batches == 2 {
            return Err(sled::Error::Io(std::io::Error::other("no space left on device")));
        }
        tree.apply_batch(batch)
    })
    .unwrap();
    assert_eq!(queued(), 3);
    let tracked =
        ids.iter().flat_map(|&id| both.iter().map(move |t| (id, t))).filter(|&(id, t)| fresh.tracks(id, t));
    assert_eq!(tracked.count(), 7);
    assert_eq!(tree.get(keys::FRESH_FROM).unwrap().as_deref(), Some(&ids[0].to_key()[..]), "the mark stays");

    // With room again: the seven in batches of at most three, the mark
    // cleared with the last.
    let mut after_each = Vec::new();
    let fresh = fresh::recover_with(&tree, 3, |batch| {
        tree.apply_batch(batch)?;
        after_each.push((queued(), tree.get(keys::FRESH_FROM).unwrap().is_some_and(|mark| mark.is_empty())));
        Ok(())
    })
    .unwrap();
    assert_eq!(after_each, [(6, false), (9, false), (10, true)]);
    assert_eq!(fresh.wanted(), None);
}

#[tokio::test]
async fn fresh_jobs_that_waited_are_indexed_in_chunks_and_release_the_mark() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let both = vec!["a".to_owned(), "b".to_owned()];
    let old_1 = journal.append(delivery("evt_old1", 1_000), &both).await.unwrap().id;
    let old_2 = journal.append(delivery("evt_old2", 2_000), &["a".to_owned()]).await.unwrap().id;
    let new = journal.append(delivery("evt_new", 100_000), &["a".to_owned()]).await.unwrap().id;
    settle(&journal, old_1, "b", Decision::Delivered).await;

    // Only what arrived before the cut, only what is pending, `limit` at a time.
    assert_eq!(journal.queue_waiting_fresh_jobs(50_000, 1).await.unwrap(), 1);
    assert_eq!(queue_index(&journal), [("a".to_owned(), old_1)]);
    assert_eq!(journal.queue_waiting_fresh_jobs(50_000, 1).await.unwrap(), 1);
    assert_eq!(journal.queue_waiting_fresh_jobs(50_000, 1).await.unwrap(), 0);
    assert_eq!(queue_index(&journal), [("a".to_owned(), old_1), ("a".to_owned(), old_2)]);
    journal.append(delivery("evt_none", 100_001), &[]).await.unwrap();
    assert_eq!(fresh_mark(&journal), Some(new.to_key().to_vec()), "only the recent job holds it now");

    // Nothing lost or doubled: the lane sees the same three jobs, and the
    // indexed ones leave the index with their outcomes.
    let queued: Vec<_> = journal.queued("a").unwrap().iter().map(|e| (e.class, e.delivery)).collect();
    let fresh = |id| (QueueClass::Fresh, id);
    assert_eq!(queued, [fresh(old_1), fresh(old_2), fresh(new)]);
    settle(&journal, old_1, "a", Decision::Delivered).await;
    settle(&journal, old_2, "a", Decision::RetryAt(200_000)).await;
    let index = queue_index(&journal);
    assert_eq!(index, [("a".to_owned(), old_2)], "only the retry's entry is left");
    assert_eq!(
        journal.queued("a").unwrap().iter().map(|e| e.class).collect::<Vec<_>>(),
        [QueueClass::Retry, QueueClass::Fresh]
    );

    // A crash now (no clean stop): the start finds each pending job once.
    drop(journal);
    let journal = Journal::open(&config(dir.path())).unwrap();
    let queued: Vec<_> = journal.queued("a").unwrap().iter().map(|e| (e.class, e.delivery)).collect();
    assert_eq!(queued, [fresh(new), (QueueClass::Retry, old_2)]);
}

/// A lane reads its jobs back a page at a time: each page starts where the
/// last one said, stays within its target and class, and can count the rest.
/// Fresh jobs it lets go from memory are indexed first.
#[tokio::test]
async fn the_queue_index_is_read_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    // "ab" shares a's first letter: its entries must not show up in a's pages.
    let targets = vec!["a".to_owned(), "ab".to_owned()];
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(journal.append(delivery(&format!("evt_{n}"), 1_000 + n), &targets).await.unwrap().id);
    }
    let fresh: Vec<QueueEntry> =
        ids.iter().map(|&id| QueueEntry::new(QueueClass::Fresh, id.received_at_ms, id)).collect();
    assert_eq!(journal.unindexed_fresh_jobs("a").unwrap(), fresh, "not indexed yet");
    let first = (0, DeliveryId { received_at_ms: 0, seq: 0 });
    assert_eq!(
        journal.queued_page("a", QueueClass::Fresh, first, 10, true).unwrap(),
        QueuePage { entries: Vec::new(), next: None, rest: Some(0) }
    );

    // Five of a's are spilled by its lane: indexed, while ab's stay as they are.
    journal.index_fresh_jobs("a", &fresh[2..]).await.unwrap();
    journal.index_fresh_jobs("a", &fresh[2..3]).await.unwrap(); // again: no change
    assert_eq!(journal.unindexed_fresh_jobs("a").unwrap(), fresh[..2]);
    assert_eq!(journal.unindexed_fresh_jobs("ab").unwrap(), fresh);
    assert_eq!(journal.indexed_jobs("a"), 5);
    assert_eq!(journal.indexed_jobs("ab"), 0);

    let key = |entry: &QueueEntry| (entry.due_ms, entry.delivery);
    let page = journal.queued_page("a", QueueClass::Fresh, first, 2, true).unwrap();
    assert_eq!(page, QueuePage { entries: fresh[2..4].to_vec(), next: Some(key(&fresh[4])), rest: Some(3) });
    let page = journal.queued_page("a", QueueClass::Fresh, page.next.unwrap(), 2, false).unwrap();
    assert_eq!(page, QueuePage { entries: fresh[4..6].to_vec(), next: Some(key(&fresh[6])), rest: None });
    let page = journal.queued_page("a", QueueClass::Fresh, page.next.unwrap(), 2, true).unwrap();
    assert_eq!(page, QueuePage { entries: fresh[6..].to_vec(), next: None, rest: Some(0) });
    // Other classes are pages of their own.
    let retries = journal.queued_page("a", QueueClass::Retry, first, 10, true).unwrap();
    assert_eq!(retries, QueuePage { entries: Vec::new(), next: None, rest: Some(0) });

    // An indexed fresh job's outcome takes its entry with it.
    use crate::delivery::policy::Decision;
    settle(&journal, ids[2], "a", Decision::Delivered).await;
    assert_eq!(journal.indexed_jobs("a"), 4);
}

/// Ids of a page of `GET /v1/deliveries` from `cursor` on.
fn listed(journal: &Journal, cursor: Option<DeliveryId>) -> Vec<DeliveryId> {
    let query = crate::admin::deliveries::Query { cursor, limit: 50, ..Default::default() };
    let page = crate::admin::deliveries::list(journal, &query).unwrap();
    page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_delivery_landing_after_a_later_one_is_not_passed_by_a_tailing_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let first = journal.append(delivery("evt_first", 1_000), &[]).await.unwrap().id;
    // Stamped at 2,000, still on its way in (a slow flush ahead of it) while
    // one stamped at 3,000 lands.
    let on_its_way = journal.horizon.enter(2_000, || journal.db().unwrap().generate_id()).unwrap();
    let later = journal.append(delivery("evt_later", 3_000), &[]).await.unwrap().id;
    let seen = listed(&journal, None);
    assert_eq!(seen, [first], "a page stops before a delivery still landing");
    let late = journal.append(delivery("evt_late", 2_000), &[]).await.unwrap().id;
    drop(on_its_way);
    // A client tailing from the last id it saw gets both, in order.
    assert_eq!(listed(&journal, seen.last().copied()), [late, later]);
}

#[tokio::test]
async fn a_delivery_stamped_behind_a_page_already_read_is_restamped_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let now = crate::time::now_ms();
    let first = journal.append(delivery("evt_first", now - 10_000), &[]).await.unwrap().id;
    let seen = listed(&journal, None);
    assert_eq!(seen, [first]);
    // Stamped before that page was read, journaled after it.
    let late = journal.append(delivery("evt_late", now - 5_000), &[]).await.unwrap().id;
    assert!(late.received_at_ms >= now, "restamped at the bound handed out");
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(listed(&journal, seen.last().copied()), [late]);
}

#[tokio::test]
async fn a_filtered_page_ends_early_with_a_cursor_once_it_has_read_its_budget() {
    use crate::admin::deliveries::{Query, ScanBudget, list_within};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut new = delivery(&format!("evt_{n}"), 1_000 + n);
        if n == 4 {
            new.event_type = Some("task_run.status".into());
        }
        ids.push(journal.append(new, &[]).await.unwrap().id);
    }
    let budget = ScanBudget { deliveries: 3, time: Duration::from_secs(60) };
    let mut query = Query { event: Some("task_run.*".into()), limit: 50, ..Default::default() };
    let page = |query: &Query| {
        let page = list_within(&journal, query, budget).unwrap();
        let found: Vec<String> =
            page["deliveries"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().into()).collect();
        (found, page["next_cursor"].as_str().map(|c| c.parse::<DeliveryId>().unwrap()))
    };
    // Three read, none matched: an empty page that says where to go on.
    assert_eq!(page(&query), (vec![], Some(ids[2])));
    query.cursor = Some(ids[2]);
    assert_eq!(page(&query), (vec![ids[4].to_string()], Some(ids[5])));
    query.cursor = Some(ids[5]);
    assert_eq!(page(&query), (vec![], None), "the end of the journal: no cursor");
    // Without a filter the same budget still fills a page of three.
    let all = Query { limit: 3, ..Default::default() };
    let (found, cursor) = page(&all);
    assert_eq!(found.len(), 3);
    assert_eq!(cursor, Some(ids[2]));
}

#[tokio::test]
async fn group_entries_of_earlier_versions_move_to_the_latest_copy_before_a_sweep() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    let first = journal.append(detection("whevent_1", "g", 1_000), &targets).await.unwrap().id;
    let second = journal.append(detection("whevent_2", "g", 5_000), &targets).await.unwrap().id;
    let alone = journal.append(detection("whevent_3", "h", 1_500), &targets).await.unwrap().id;
    for id in [first, second, alone] {
        settle(&journal, id, "a", Decision::Delivered).await;
    }
    // As an earlier version left it: the first copy owns the entry, and a
    // later copy that was purged left its tombstone on another group.
    let tree = journal.tree().unwrap();
    tree.insert(keys::group("parallel", "g"), keys::group_owner(first, false)).unwrap();
    let purged_later = DeliveryId { received_at_ms: 9_000, seq: 1 };
    tree.insert(keys::group("parallel", "h"), keys::group_owner(purged_later, false)).unwrap();
    tree.remove(keys::GROUP_OWNERS_MARKER).unwrap();

    assert_eq!(journal.prune_delivered(2_000).unwrap().deliveries, 2);
    let owner = |group: &str| {
        let value = journal.tree().unwrap().get(keys::group("parallel", group)).unwrap();
        value.as_deref().and_then(keys::parse_group_owner).map(|(owner, _)| owner)
    };
    assert_eq!(owner("g"), Some(second), "handed to the copy still kept, not dropped with the first");
    assert_eq!(owner("h"), Some(purged_later), "a later purge's tombstone stays");
    assert!(journal.tree().unwrap().contains_key(keys::GROUP_OWNERS_MARKER).unwrap());
}

#[tokio::test]
async fn forgetting_a_target_makes_each_of_its_pending_jobs_dead_and_nothing_else() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let both = vec!["gone".to_owned(), "kept".to_owned()];
    let fresh = journal.append(delivery("evt_fresh", 1_000), &both).await.unwrap().id;
    let retrying = journal.append(delivery("evt_retry", 1_001), &both).await.unwrap().id;
    let delivered = journal.append(delivery("evt_done", 1_002), &both).await.unwrap().id;
    settle(&journal, retrying, "gone", Decision::RetryAt(9_000)).await;
    settle(&journal, delivered, "gone", Decision::Delivered).await;
    // Stale entries no lane of a removed target will ever drop: one for the
    // delivered job, and a second one beside the retry's.
    for (due, id) in [(3_000, delivered), (4_000, retrying)] {
        journal.tree().unwrap().insert(QueueEntry::new(QueueClass::Retry, due, id).key("gone"), &[]).unwrap();
    }

    assert_eq!(journal.forget_target("gone", 7_000).await.unwrap(), 2);
    for id in [fresh, retrying] {
        let job = journal.job(id, "gone").unwrap().unwrap();
        assert_eq!(job.state, JobState::Dead);
        assert_eq!(job.history.last().unwrap().error.as_deref(), Some(FORGOTTEN));
    }
    assert_eq!(journal.job(delivered, "gone").unwrap().unwrap().state, JobState::Delivered);
    assert_eq!(journal.pending_count("gone"), 0);
    assert!(journal.queued("gone").unwrap().is_empty(), "no queue entry left");
    assert_eq!(journal.dead_count("gone"), 2);
    assert_eq!(journal.pending_count("kept"), 3, "another target's jobs untouched");
    assert_eq!(journal.forget_target("gone", 8_000).await.unwrap(), 0);
    // Across a restart too: the dead index agrees.
    drop(journal);
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert_eq!(journal.dead_count("gone"), 2);
    assert_eq!(journal.pending_count("gone"), 0);
}

#[tokio::test]
async fn the_targets_with_pending_jobs_are_found_indexed_or_not() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let id =
        journal.append(delivery("evt_1", 1_000), &["a".into(), "ab".into(), "b".into()]).await.unwrap().id;
    settle(&journal, id, "a", Decision::RetryAt(9_000)).await;
    settle(&journal, id, "b", Decision::Delivered).await;
    // "a" is in the queue index (a retry), "ab" a fresh job not in it, and
    // "b" settled; "a\0"'s prefix must not hide "ab".
    assert!(journal.unindexed_fresh_jobs("ab").unwrap().len() == 1);
    let names = |journal: &Journal| journal.targets_with_pending().unwrap().into_iter().collect::<Vec<_>>();
    assert_eq!(names(&journal), ["a", "ab"]);
    // Reopened, every one is indexed: the same.
    drop(journal);
    let journal = Journal::open(&config(dir.path())).unwrap();
    assert!(journal.unindexed_fresh_jobs("ab").unwrap().is_empty());
    assert_eq!(names(&journal), ["a", "ab"]);
    let other = journal.append(delivery("evt_2", 2_000), &["c".into()]).await.unwrap().id;
    settle(&journal, other, "c", Decision::RetryAt(9_000)).await;
    assert_eq!(names(&journal), ["a", "ab", "c"]);
}

#[tokio::test]
async fn a_replays_progress_passes_over_a_corrupt_job() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&config(dir.path())).unwrap();
    let targets = vec!["a".to_owned()];
    let first = journal.append(delivery("evt_1", 1_000), &targets).await.unwrap().id;
    let second = journal.append(delivery("evt_2", 1_001), &targets).await.unwrap().id;
    for id in [first, second] {
        settle(&journal, id, "a", Decision::Dead).await;
    }
    let pairs = [first, second].map(|id| Ok((id, "a".to_owned())));
    let started = journal.start_replay(serde_json::json!({}), pairs, 7_000, |_| {}).unwrap();
    journal.tree().unwrap().insert(keys::job(first, "a"), &b"\xffnot a job"[..]).unwrap();
    let progress = journal.replay_progress(started.id).unwrap().unwrap();
    assert_eq!((progress.pending, progress.superseded), (1, 1), "{progress:?}");
}

#[tokio::test]
async fn a_detection_purged_soon_after_it_arrived_is_remembered_two_retentions() {
    use crate::delivery::policy::Decision;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let journal = Journal::open(&config).unwrap();
    let now = crate::time::now_ms();
    let dead = journal.append(detection("whevent_1", "g", now), &["a".to_owned()]).await.unwrap().id;
    settle(&journal, dead, "a", Decision::Dead).await;
    assert_eq!(journal.purge_dead(now + 1, None, false).unwrap().deliveries, 1);
    // A retention past the purge is not enough: backfill counts on two past
    // the detection's arrival (see `backfill::remembered_since`).
    // A sweep at time T prunes with the cutoff T - retention.
    let retention = config.retention.as_millis() as u64;
    let sweep_at = |at: u64| journal.prune_delivered(at - retention).unwrap();
    sweep_at(dead.received_at_ms + retention * 3 / 2);
    assert!(journal.has_event_group("parallel", "g").unwrap(), "kept past a retention after the purge");
    sweep_at(dead.received_at_ms + 2 * retention + 1);
    assert!(!journal.has_event_group("parallel", "g").unwrap(), "then it goes");
}
