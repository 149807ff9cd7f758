//! Micro benchmarks of the hot paths: signature verification and signing,
//! durable journal appends with group commit, and job scheduling with
//! 10^5 pending jobs (a lane's in-memory order, and loading it from the
//! journal's due index at start).
//!
//! Run: `cargo bench --bench ingress`. Figures go to BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookrelay::config::JournalConfig;
use hookrelay::journal::{Journal, NewDelivery};
use hookrelay::signature::{self, SignedHeaders, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn body_of(len: usize) -> Vec<u8> {
    let mut body = br#"{"type":"monitor.event.detected","data":{"pad":""#.to_vec();
    body.resize(len - 3, b'a');
    body.extend_from_slice(br#""}}"#);
    body
}

fn verify(c: &mut Criterion) {
    let verifier = Verifier::new(signature::keys_for_secret(SECRET).unwrap(), Duration::from_secs(300));
    let key = signature::signing_key_for_secret(SECRET).unwrap();
    let raw_key = signature::SigningKey::from_bytes(SECRET.as_bytes());
    let mut group = c.benchmark_group("verify");
    group.measurement_time(Duration::from_secs(3));
    for len in [1 << 10, 16 << 10, 64 << 10, 256 << 10] {
        let body = body_of(len);
        let ts = "1700000000";
        let sig = signature::sign(&key, "msg_bench", ts, &body);
        group.throughput(Throughput::Bytes(len as u64));
        // Signed the Standard Webhooks way: the second key of a whsec_ secret,
        // the slower path (the raw-key MAC is computed first and misses).
        group.bench_with_input(BenchmarkId::new("decoded_key", len), &body, |b, body| {
            b.iter(|| {
                let headers = SignedHeaders::parse(Some("msg_bench"), Some(ts), Some(&sig)).unwrap();
                verifier.verify(&headers, body, 1_700_000_000).unwrap();
            })
        });
        // Signed Parallel's documented way (raw key): one MAC.
        let raw_sig = signature::sign(&raw_key, "msg_bench", ts, &body);
        group.bench_with_input(BenchmarkId::new("raw_key", len), &body, |b, body| {
            b.iter(|| {
                let headers = SignedHeaders::parse(Some("msg_bench"), Some(ts), Some(&raw_sig)).unwrap();
                verifier.verify(&headers, body, 1_700_000_000).unwrap();
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("sign");
    let body = body_of(1 << 10);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("1024", |b| b.iter(|| signature::sign(&key, "msg_bench", "1700000000", &body)));
    group.finish();
}

fn journal_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("journal_append_1KiB");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let body = body_of(1 << 10);
    for writers in [1usize, 8, 64] {
        let dir = tempfile::tempdir().unwrap();
        let journal = Arc::new(
            Journal::open(&JournalConfig {
                path: dir.path().join("journal"),
                dedup_window: Duration::from_secs(72 * 3600),
                retention: Duration::from_secs(30 * 86400),
                cache: 64 << 20,
                max_disk: None,
            })
            .unwrap(),
        );
        let mut next_id = 0u64;
        let flushes_before = journal.flush_count();
        group.bench_function(BenchmarkId::new("writers", writers), |b| {
            b.iter_custom(|iters| {
                let per_writer = iters.div_ceil(writers as u64);
                let first = next_id;
                next_id += per_writer * writers as u64;
                runtime.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..writers as u64)
                        .map(|w| {
                            let journal = journal.clone();
                            let body = body.clone();
                            tokio::spawn(async move {
                                for i in 0..per_writer {
                                    let n = first + w * per_writer + i;
                                    journal.append(delivery(n, body.clone()), &[]).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.unwrap();
                    }
                    // Report time per append actually made.
                    start.elapsed().mul_f64(iters as f64 / (per_writer * writers as u64) as f64)
                })
            })
        });
        // How well group commit batches: appends that shared each fsync.
        let flushes = journal.flush_count() - flushes_before;
        eprintln!(
            "journal_append_1KiB/writers/{writers}: {:.1} appends per flush",
            next_id as f64 / flushes as f64
        );
    }
    group.finish();
}

fn delivery(n: u64, body: Vec<u8>) -> NewDelivery {
    NewDelivery {
        received_at_ms: 1_700_000_000_000 + n,
        source: "parallel".into(),
        webhook_id: format!("whevent_{n}"),
        webhook_timestamp: "1700000000".into(),
        webhook_signature: "v1,AAAA".into(),
        content_type: Some("application/json".into()),
        event_type: Some("monitor.event.detected".into()),
        monitor_id: Some("monitor_1".into()),
        event_group: None,
        body,
    }
}

/// 10^5 pending jobs: picking the next one from a lane's queue (fresh,
/// retries by due time, replays behind), and reading a target's whole due
/// index from the journal, as a lane does at start.
fn schedule(c: &mut Criterion) {
    use hookrelay::delivery::queue::{LaneQueue, Next};
    use hookrelay::journal::{DeliveryId, QueueClass, QueueEntry};
    const PENDING: u64 = 100_000;
    let entry = |i: u64| {
        let class = match i % 10 {
            0..=5 => QueueClass::Fresh,
            6..=8 => QueueClass::Retry,
            _ => QueueClass::Replay,
        };
        // Retries spread over the next 100 s; all are due by `now` below.
        let due = if class == QueueClass::Retry { 1_000_000 + (i * 7919) % 100_000 } else { 1_000_000 + i };
        QueueEntry::new(class, due, DeliveryId { received_at_ms: 1_000_000 + i, seq: i })
    };
    let entries: Vec<QueueEntry> = (0..PENDING).map(entry).collect();
    let mut group = c.benchmark_group("schedule_100k_pending");
    group.sample_size(20);
    group.throughput(Throughput::Elements(PENDING));
    group.bench_function("lane_queue_fill_and_drain", |b| {
        b.iter_batched(
            || entries.clone(),
            |entries| {
                let mut queue = LaneQueue::default();
                for entry in entries {
                    queue.push(entry);
                }
                let mut taken = 0u64;
                while let Next::Ready(class) = queue.next(2_000_000) {
                    queue.take(class);
                    taken += 1;
                }
                assert_eq!(taken, PENDING);
            },
            criterion::BatchSize::LargeInput,
        )
    });

    // The due index in the journal: 10^5 pending jobs of one target.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&JournalConfig {
        path: dir.path().join("journal"),
        dedup_window: Duration::from_secs(72 * 3600),
        retention: Duration::from_secs(30 * 86400),
        cache: 64 << 20,
        max_disk: None,
    })
    .unwrap();
    let journal = Arc::new(journal);
    let targets = vec!["analytics".to_owned()];
    runtime.block_on(async {
        let tasks: Vec<_> = (0..64u64)
            .map(|w| {
                let (journal, targets) = (journal.clone(), targets.clone());
                tokio::spawn(async move {
                    for i in (w..PENDING).step_by(64) {
                        journal.append(delivery(i, vec![b'x'; 64]), &targets).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    group.bench_function("journal_due_index_scan", |b| {
        b.iter(|| assert_eq!(journal.queued("analytics").unwrap().len() as u64, PENDING))
    });
    group.finish();
}

criterion_group!(benches, verify, journal_append, schedule);
criterion_main!(benches);
