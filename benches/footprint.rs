//! Memory and disk footprint of a large journal: appends N deliveries of
//! 1 KiB (each with one fan-out job) with 64 concurrent writers, records
//! every job delivered (as the lanes would), then reports resident memory
//! (now and peak) and bytes on disk per delivery, and the same after
//! reopening the journal in a new process — what a restarted daemon holds —
//! twice with every job pending (its lane holding the first page of them, as
//! a lane does) and three times with none.
//! sled's page cache is bounded by `journal.cache` (64 MiB here, the default).
//!
//! Deliveries are realistic and varied (see `delivery`);
//! `FOOTPRINT_SYNTHETIC=1` writes the ones of earlier tables instead (a
//! padded body, sequential webhook ids, no event group).
//!
//! Run: `cargo bench --bench footprint` (env FOOTPRINT_DELIVERIES=1000000,
//! FOOTPRINT_CACHE_MIB=64, FOOTPRINT_SYNTHETIC).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookrelay::config::JournalConfig;
use hookrelay::delivery::policy::Decision;
use hookrelay::delivery::queue::LaneQueue;
use hookrelay::journal::{Attempt, Journal, NewDelivery};

#[path = "common/realistic.rs"]
mod realistic;
use realistic::{BODY_BYTES, Detection, Rng};

const WRITERS: u64 = 64;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One delivery as the journal would hold it for an enriched
/// `monitor.event.detected` (PROTOCOL.md): random webhook and group ids, one
/// of a few monitors and teams, a cited finding in prose; exactly `BODY_BYTES`
/// long. Random ids cost sled far more than the sequential ones of the
/// `synthetic` shape (see BENCHMARKS.md), and one repeated byte as padding
/// would flatter any compression.
fn delivery(rng: &mut Rng, first_second: u64, n: u64, synthetic: bool) -> NewDelivery {
    // Ten a second: 10⁶ deliveries span 28 hours, inside the dedup window.
    let seconds = first_second + n / 10;
    let Detection { mut body, monitor, group, .. } = realistic::detection(rng, seconds);
    let mut webhook_id = format!("whevent_{}", rng.hex(24));
    let mut group = Some(group);
    if synthetic {
        body = br#"{"type":"monitor.event.detected","data":{"monitor_id":"monitor_1","pad":""#.to_vec();
        body.resize(BODY_BYTES - 3, b'a');
        body.extend_from_slice(br#""}}"#);
        webhook_id = format!("whevent_{n:012}");
        group = None;
    }
    debug_assert_eq!(body.len(), BODY_BYTES);
    NewDelivery {
        received_at_ms: seconds * 1000 + n % 10,
        source: "parallel".into(),
        webhook_id,
        webhook_timestamp: seconds.to_string(),
        webhook_signature: format!("v1,{}=", rng.base64(43)),
        content_type: Some("application/json".into()),
        event_type: Some("monitor.event.detected".into()),
        monitor_id: Some(monitor),
        // As ingress indexes a detection's group, for its dedup.
        event_group: group,
        body,
    }
}

fn main() {
    // SAFETY: the first thing the bench does; no other thread exists yet.
    unsafe { allocator::return_freed_memory_promptly() };
    let deliveries: u64 =
        std::env::var("FOOTPRINT_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let cache_mib: u64 = std::env::var("FOOTPRINT_CACHE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let synthetic = std::env::var_os("FOOTPRINT_SYNTHETIC").is_some();
    let dir = tempfile::tempdir().unwrap();
    let reopen_path = std::env::var_os(REOPEN_ENV).map(std::path::PathBuf::from);
    let config = JournalConfig {
        path: reopen_path.clone().unwrap_or_else(|| dir.path().join("journal")),
        dedup_window: Duration::from_secs(72 * 3600),
        retention: Duration::from_secs(30 * 86400),
        cache: cache_mib << 20,
        max_disk: None,
    };
    if reopen_path.is_some() {
        return reopen(&config, deliveries);
    }
    let shape = if synthetic { "synthetic" } else { "realistic" };
    println!(
        "footprint: {deliveries} {shape} deliveries of 1 KiB, 1 job each, journal.cache = {cache_mib} MiB"
    );
    println!("before: rss {:.1} MiB", mib(status_kib("VmRSS:")));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let journal = Arc::new(Journal::open(&config).unwrap());
    let started = Instant::now();
    // Stamped in the past, ending a minute ago: a listing shows deliveries
    // only once the clock has reached their time.
    let now_secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let first_second = now_secs - 60 - deliveries / 10;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let targets = vec!["analytics".to_owned()];
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
                    for n in (w..deliveries).step_by(WRITERS as usize) {
                        let delivery = delivery(&mut rng, first_second, n, synthetic);
                        journal.append(delivery, &targets).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    journal.flush().unwrap();
    let disk = journal.size_on_disk().unwrap();
    println!(
        "appended in {:.1}s ({:.0}/s); rss {:.1} MiB, peak {:.1} MiB; on disk {:.1} MiB = {:.2} KiB per delivery",
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        mib(status_kib("VmRSS:")),
        mib(status_kib("VmHWM:")),
        disk as f64 / (1 << 20) as f64,
        disk as f64 / 1024.0 / deliveries as f64
    );
    // A daemon restarted now (a target was down all along): every job
    // pending, and its lane holds the first page of them. The first open
    // indexes every job left unindexed (as after a crash); the second finds
    // them indexed, so it shows what holding the backlog costs.
    drop(journal);
    reopen_in_child(&config, deliveries, cache_mib);
    reopen_in_child(&config, deliveries, cache_mib);
    let journal = Arc::new(Journal::open(&config).unwrap());

    // Most of a real journal is delivered: settle every job, as lanes do.
    let settled = Instant::now();
    let queued = journal.queued("analytics").unwrap();
    runtime.block_on(async {
        let per_writer = queued.len().div_ceil(WRITERS as usize).max(1);
        let tasks: Vec<_> = queued
            .chunks(per_writer)
            .map(|chunk| {
                let (journal, chunk) = (journal.clone(), chunk.to_vec());
                tokio::spawn(async move {
                    for entry in chunk {
                        let job = journal.job(entry.delivery, "analytics").unwrap().unwrap();
                        let attempt = Attempt {
                            at_ms: entry.due_ms + 5,
                            latency_ms: 2,
                            status: Some(200),
                            error: None,
                        };
                        journal.record_attempt(&entry, job, attempt, Decision::Delivered).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(queued);
    journal.flush().unwrap();
    println!(
        "settled every job as delivered in {:.1}s; rss {:.1} MiB, peak {:.1} MiB",
        settled.elapsed().as_secs_f64(),
        mib(status_kib("VmRSS:")),
        mib(status_kib("VmHWM:"))
    );
    drop(journal);
    drop(runtime);
    println!(
        "journal closed: this process still holds rss {:.1} MiB (freed memory the allocator keeps)",
        mib(status_kib("VmRSS:"))
    );

    // A restarted daemon is a fresh process: measure the reopen in one, so
    // memory this process freed but still maps is not counted.
    // Three times: what sled rebuilds at recovery varies from run to run.
    // (The second and third open a journal the first has recovered and
    // flushed: restarts after a clean stop, the first after the bench's.)
    for _ in 0..2 {
        reopen_in_child(&config, deliveries, cache_mib);
    }
    // The last one also times what an operator's filtered listing reads.
    // SAFETY: no other thread of this process reads the environment now.
    unsafe { std::env::set_var(WALK_ENV, "1") };
    reopen_in_child(&config, deliveries, cache_mib);
}

/// Set in the last reopening child: after measuring, it walks the journal
/// as `GET /v1/deliveries?status=dead` does when nothing is dead.
const WALK_ENV: &str = "FOOTPRINT_WALK";

/// How fast a filtered listing reads the journal, cold (just opened) and
/// warm, and how much of it one page reads within its budget.
fn walk(journal: &Journal) {
    use hookrelay::admin::deliveries::{Query, ScanBudget, list_within};
    use hookrelay::journal::JobState;
    let nothing_dead = Query { status: Some(JobState::Dead), limit: 1000, ..Query::default() };
    let unbounded = ScanBudget { deliveries: usize::MAX, time: Duration::from_secs(3600) };
    for cache in ["cold", "warm"] {
        let started = Instant::now();
        let page = list_within(journal, &nothing_dead, unbounded).unwrap();
        assert!(page["next_cursor"].is_null(), "read to the end");
        let took = started.elapsed();
        println!(
            "filtered listing, whole journal, {cache}: {:.1}s ({:.0} deliveries/s); rss {:.1} MiB",
            took.as_secs_f64(),
            journal.len() as f64 / took.as_secs_f64(),
            mib(status_kib("VmRSS:"))
        );
    }
    let started = Instant::now();
    let page = list_within(journal, &nothing_dead, ScanBudget::PER_PAGE).unwrap();
    let cursor = page["next_cursor"].as_str().unwrap_or("none (read to the end)").to_owned();
    println!("one budgeted page: {:.2}s, ends at cursor {cursor}", started.elapsed().as_secs_f64());
}

fn reopen_in_child(config: &JournalConfig, deliveries: u64, cache_mib: u64) {
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(REOPEN_ENV, &config.path)
        .env("FOOTPRINT_DELIVERIES", deliveries.to_string())
        .env("FOOTPRINT_CACHE_MIB", cache_mib.to_string())
        .status()
        .unwrap();
    assert!(child.success(), "the reopening process failed: {child}");
}

/// Set (to the journal's path) in the child process that measures a reopen.
const REOPEN_ENV: &str = "FOOTPRINT_REOPEN";

/// What a restarted daemon does first: open the journal and load the first
/// page of its target's pending jobs into the lane's queue, which it holds
/// (the rest wait in the journal, counted).
fn reopen(config: &JournalConfig, deliveries: u64) {
    let reopened = Instant::now();
    let journal = Journal::open(config).unwrap();
    let mut lane_queue = LaneQueue::default();
    for refill in lane_queue.refills_from_start() {
        let page = journal.queued_page("analytics", refill.class, refill.from, refill.limit, true).unwrap();
        lane_queue.refilled(refill, page, |_| false);
    }
    let pending = lane_queue.pending();
    let rss_open = status_kib("VmRSS:");
    // Give sled's background flusher a chance to compact, then measure the disk.
    std::thread::sleep(Duration::from_secs(5));
    journal.flush().unwrap();
    let disk = journal.size_on_disk().unwrap();
    println!(
        "reopened in a new process in {:.1}s, {pending} jobs pending: rss {:.1} MiB (peak {:.1}); \
         on disk {:.1} MiB = {:.2} KiB per delivery",
        reopened.elapsed().as_secs_f64(),
        mib(rss_open),
        mib(status_kib("VmHWM:")),
        disk as f64 / (1 << 20) as f64,
        disk as f64 / 1024.0 / deliveries as f64
    );
    drop(lane_queue);
    if std::env::var_os(WALK_ENV).is_some() {
        walk(&journal);
    }
}

/// The binary's allocator and its tuning, so the figures are the daemon's.
#[path = "../src/allocator.rs"]
mod allocator;
