//! Writes the journal-codec seeds of the fuzz corpus (real encodings of a
//! record and of jobs in each state). Run from the repository root:
//! `cargo run --example fuzz_seeds`.

use hookrelay::journal::{Attempt, DeliveryId, DeliveryRecord, Job, JobState, ReplayId};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new("fuzz/corpus/journal_codec");
    std::fs::create_dir_all(dir)?;
    let id = DeliveryId { received_at_ms: 1_795_856_400_000, seq: 42 };
    let record = DeliveryRecord {
        id,
        source: "parallel".into(),
        webhook_id: "whevent_2b87d1297e595a94".into(),
        webhook_timestamp: "1795856400".into(),
        webhook_signature: "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        content_type: Some("application/json".into()),
        event_type: Some("monitor.event.detected".into()),
        monitor_id: Some("monitor_b0079f70".into()),
        body: br#"{"type":"monitor.event.detected","data":{"monitor_id":"monitor_b0079f70","event":{"event_group_id":"mevtgrp_b0079f70"}}}"#.to_vec(),
    };
    std::fs::write(dir.join("record-monitor-event"), record.encode())?;
    let pending = Job::new(id, "analytics", id.received_at_ms, None);
    std::fs::write(dir.join("job-pending"), pending.encode())?;
    let mut dead = Job::new(id, "analytics", id.received_at_ms, Some(ReplayId(7)));
    dead.push_attempt(Attempt { at_ms: 1, latency_ms: 12, status: Some(503), error: None });
    dead.push_attempt(Attempt { at_ms: 2, latency_ms: 15_000, status: None, error: Some("timeout".into()) });
    dead.state = JobState::Dead;
    std::fs::write(dir.join("job-dead-replayed"), dead.encode())?;
    println!("wrote 3 seeds to {}", dir.display());
    Ok(())
}
