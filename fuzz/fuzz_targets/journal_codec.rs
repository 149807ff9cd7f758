//! The journal's record and job codecs: decoding arbitrary bytes is an
//! error or a value, never a panic; anything decoded re-encodes to bytes
//! that decode to the same value; and structured values round-trip exactly.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use hookrelay::journal::{Attempt, DeliveryId, DeliveryRecord, Job, JobState, ReplayId};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct RecordInput {
    received_at_ms: u64,
    seq: u64,
    source: String,
    webhook_id: String,
    webhook_timestamp: String,
    webhook_signature: String,
    content_type: Option<String>,
    event_type: Option<String>,
    monitor_id: Option<String>,
    body: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct JobInput {
    received_at_ms: u64,
    seq: u64,
    target: String,
    state: u8,
    attempts: u32,
    created_at_ms: u64,
    next_attempt_at_ms: u64,
    replay: Option<u64>,
    history: Vec<(u64, u64, Option<u16>, Option<String>)>,
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = DeliveryRecord::decode(data) {
        assert_eq!(DeliveryRecord::decode(&record.encode()).as_ref(), Ok(&record));
    }
    if let Ok(job) = Job::decode(data) {
        assert_eq!(Job::decode(&job.encode()).as_ref(), Ok(&job));
    }

    let mut input = Unstructured::new(data);
    if let Ok(r) = RecordInput::arbitrary(&mut input) {
        let record = DeliveryRecord {
            id: DeliveryId { received_at_ms: r.received_at_ms, seq: r.seq },
            source: r.source,
            webhook_id: r.webhook_id,
            webhook_timestamp: r.webhook_timestamp,
            webhook_signature: r.webhook_signature,
            content_type: r.content_type,
            event_type: r.event_type,
            monitor_id: r.monitor_id,
            body: r.body,
        };
        assert_eq!(DeliveryRecord::decode(&record.encode()), Ok(record));
    }
    if let Ok(j) = JobInput::arbitrary(&mut input) {
        let mut job = Job::new(DeliveryId { received_at_ms: j.received_at_ms, seq: j.seq }, &j.target, j.created_at_ms, j.replay.map(ReplayId));
        job.state = [JobState::Pending, JobState::Delivered, JobState::Dead][usize::from(j.state % 3)];
        job.next_attempt_at_ms = j.next_attempt_at_ms;
        for (at_ms, latency_ms, status, error) in j.history.into_iter().take(Job::HISTORY_LIMIT) {
            // Status 0 is how "no status" is stored.
            let status = status.filter(|code| *code != 0);
            job.push_attempt(Attempt { at_ms, latency_ms, status, error });
        }
        job.attempts = j.attempts.max(job.attempts);
        assert_eq!(Job::decode(&job.encode()), Ok(job));
    }
});
