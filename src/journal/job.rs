//! A fan-out job: one delivery to one target, with its attempt history.

use super::codec::{DecodeError, Reader, Writer};
use super::record::DeliveryId;
use super::replays::ReplayId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for its first attempt or a retry (an attempt may be in flight).
    Pending,
    Delivered,
    /// Retry budget spent; kept for listing and replay, never deleted by the engine.
    Dead,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Delivered => "delivered",
            JobState::Dead => "dead",
        }
    }
}

/// One outbound attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: u64,
    pub latency_ms: u64,
    /// The target's status code, when it answered.
    pub status: Option<u16>,
    /// Timeout, connection or TLS error, when it did not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub delivery: DeliveryId,
    pub target: String,
    pub state: JobState,
    pub attempts: u32,
    pub created_at_ms: u64,
    /// When the next attempt is due (for pending jobs).
    pub next_attempt_at_ms: u64,
    /// The replay that (re)created this job; its attempts carry
    /// `hookrelay-replay: 1`. A replay restarts the retry budget.
    pub replay: Option<ReplayId>,
    /// Most recent attempts, oldest first, at most [`Job::HISTORY_LIMIT`].
    pub history: Vec<Attempt>,
}

/// V1 stored `replay` as a flag; V2 stores the replay's id.
const JOB_V1: u8 = 1;
const JOB_V2: u8 = 2;

impl Job {
    pub const HISTORY_LIMIT: usize = 100;

    pub fn new(delivery: DeliveryId, target: &str, now_ms: u64, replay: Option<ReplayId>) -> Self {
        Job {
            delivery,
            target: target.to_owned(),
            state: JobState::Pending,
            attempts: 0,
            created_at_ms: now_ms,
            next_attempt_at_ms: now_ms,
            replay,
            history: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.history.len() * 32);
        w.u8(JOB_V2)
            .u64(self.delivery.received_at_ms)
            .u64(self.delivery.seq)
            .str(&self.target)
            .u8(match self.state {
                JobState::Pending => 0,
                JobState::Delivered => 1,
                JobState::Dead => 2,
            })
            .u32(self.attempts)
            .u64(self.created_at_ms)
            .u64(self.next_attempt_at_ms);
        match self.replay {
            None => w.u8(0),
            Some(replay) => w.u8(1).u64(replay.0),
        };
        w.u32(u32::try_from(self.history.len()).expect("history is bounded"));
        for attempt in &self.history {
            w.u64(attempt.at_ms)
                .u64(attempt.latency_ms)
                .u32(attempt.status.map_or(0, u32::from))
                .opt_str(attempt.error.as_deref());
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = match r.u8()? {
            version @ (JOB_V1 | JOB_V2) => version,
            version => return Err(DecodeError::UnknownVersion(version)),
        };
        let delivery = DeliveryId { received_at_ms: r.u64()?, seq: r.u64()? };
        let target = r.string()?;
        let state = match r.u8()? {
            0 => JobState::Pending,
            1 => JobState::Delivered,
            2 => JobState::Dead,
            tag => return Err(DecodeError::BadTag(tag)),
        };
        let attempts = r.u32()?;
        let created_at_ms = r.u64()?;
        let next_attempt_at_ms = r.u64()?;
        let replay = match (version, r.u8()?) {
            (_, 0) => None,
            // A V1 replay flag: the replay's id was not kept.
            (JOB_V1, 1) => Some(ReplayId(0)),
            (_, 1) => Some(ReplayId(r.u64()?)),
            (_, tag) => return Err(DecodeError::BadTag(tag)),
        };
        let count = r.u32()? as usize;
        // Each attempt takes at least 21 bytes: never trust a count beyond that.
        let mut history = Vec::with_capacity(count.min(bytes.len() / 21));
        for _ in 0..count {
            let at_ms = r.u64()?;
            let latency_ms = r.u64()?;
            let status = match r.u32()? {
                0 => None,
                code => Some(u16::try_from(code).map_err(|_| DecodeError::BadTag(0xff))?),
            };
            history.push(Attempt { at_ms, latency_ms, status, error: r.opt_string()? });
        }
        r.finish()?;
        Ok(Job { delivery, target, state, attempts, created_at_ms, next_attempt_at_ms, replay, history })
    }

    /// Appends an attempt, keeping the newest [`Job::HISTORY_LIMIT`].
    pub fn push_attempt(&mut self, attempt: Attempt) {
        self.attempts = self.attempts.saturating_add(1);
        if self.history.len() == Self::HISTORY_LIMIT {
            self.history.remove(0);
        }
        self.history.push(attempt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut job = Job::new(DeliveryId { received_at_ms: 5, seq: 6 }, "analytics", 7, Some(ReplayId(42)));
        job.push_attempt(Attempt { at_ms: 8, latency_ms: 9, status: Some(503), error: None });
        job.push_attempt(Attempt { at_ms: 10, latency_ms: 11, status: None, error: Some("timeout".into()) });
        job.state = JobState::Dead;
        let bytes = job.encode();
        assert_eq!(Job::decode(&bytes), Ok(job));
        for len in 0..bytes.len() {
            assert!(Job::decode(&bytes[..len]).is_err());
        }
    }

    #[test]
    fn reads_version_1_jobs() {
        let mut v1 = vec![JOB_V1];
        v1.extend_from_slice(&5u64.to_be_bytes());
        v1.extend_from_slice(&6u64.to_be_bytes());
        let v2 = Job::new(DeliveryId { received_at_ms: 5, seq: 6 }, "t", 7, Some(ReplayId(9))).encode();
        // Same layout up to the replay field, which V1 kept as one flag byte.
        let replay_at = v2.len() - 4 - 9;
        v1.extend_from_slice(&v2[17..replay_at]);
        v1.push(1);
        v1.extend_from_slice(&0u32.to_be_bytes());
        let job = Job::decode(&v1).unwrap();
        assert_eq!(job.replay, Some(ReplayId(0)));
        assert_eq!(job.target, "t");
    }

    #[test]
    fn history_is_bounded() {
        let mut job = Job::new(DeliveryId { received_at_ms: 1, seq: 1 }, "t", 1, None);
        for i in 0..(Job::HISTORY_LIMIT as u64 + 5) {
            job.push_attempt(Attempt { at_ms: i, latency_ms: 0, status: Some(500), error: None });
        }
        assert_eq!(job.history.len(), Job::HISTORY_LIMIT);
        assert_eq!(job.history[0].at_ms, 5);
        assert_eq!(job.attempts, Job::HISTORY_LIMIT as u32 + 5);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Job::decode(&bytes);
        }
    }
}
