//! A per-target circuit breaker: after `threshold` consecutive failures the
//! lane stops sending; every `probe_interval` one job goes out as a probe, and
//! its success closes the breaker. Jobs wait in the journal meanwhile — an
//! open breaker never drops anything. Pure: time comes in as milliseconds.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Sending is paused until the next probe time.
    Open {
        probe_at_ms: u64,
    },
    /// One probe is in flight; nothing else is sent until it returns.
    Probing,
}

/// Whether the lane may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Send,
    /// Send exactly one job, as a probe.
    Probe,
    /// Wait until this time (or, while probing, for the probe to return).
    Wait {
        until_ms: Option<u64>,
    },
}

#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    probe_interval_ms: u64,
    consecutive_failures: u32,
    state: BreakerState,
}

impl Breaker {
    pub fn new(threshold: u32, probe_interval: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            probe_interval_ms: u64::try_from(probe_interval.as_millis()).unwrap_or(u64::MAX),
            consecutive_failures: 0,
            state: BreakerState::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// New thresholds from a reload; the current state and failure streak stay.
    pub fn reconfigure(&mut self, threshold: u32, probe_interval: Duration) {
        self.threshold = threshold.max(1);
        self.probe_interval_ms = u64::try_from(probe_interval.as_millis()).unwrap_or(u64::MAX);
    }

    /// Asks to send one job at `now_ms`.
    pub fn admit(&mut self, now_ms: u64) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Send,
            BreakerState::Probing => Admission::Wait { until_ms: None },
            BreakerState::Open { probe_at_ms } if now_ms >= probe_at_ms => {
                self.state = BreakerState::Probing;
                Admission::Probe
            }
            BreakerState::Open { probe_at_ms } => Admission::Wait { until_ms: Some(probe_at_ms) },
        }
    }

    /// A probe that sent nothing (its job could not be sent): the target
    /// was not asked, so no failure is counted and the next job probes at
    /// once, instead of a job that can never go holding the target paused.
    pub fn probe_unsent(&mut self, now_ms: u64) {
        if self.state == BreakerState::Probing {
            self.state = BreakerState::Open { probe_at_ms: now_ms };
        }
    }

    /// Records an attempt's outcome (`probe`: the probe's); returns the new
    /// state when it changed.
    pub fn record(&mut self, success: bool, now_ms: u64, probe: bool) -> Option<BreakerState> {
        let before = self.state;
        if success {
            self.consecutive_failures = 0;
            self.state = BreakerState::Closed;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let tripped = self.consecutive_failures >= self.threshold;
            let reopen = match before {
                // The probe decides: a failure of an attempt sent before the
                // breaker opened must not let a second probe out meanwhile.
                BreakerState::Probing => probe,
                // Failures of attempts sent before it opened only push the
                // probe time further out.
                _ => tripped,
            };
            if reopen {
                self.state =
                    BreakerState::Open { probe_at_ms: now_ms.saturating_add(self.probe_interval_ms) };
            }
        }
        (self.state != before).then_some(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_and_closes_on_success() {
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.admit(0), Admission::Send);
        assert_eq!(b.record(false, 1, false), None);
        assert_eq!(b.record(false, 2, false), None);
        assert_eq!(b.record(false, 3, false), Some(BreakerState::Open { probe_at_ms: 10_003 }));
        assert_eq!(b.admit(5_000), Admission::Wait { until_ms: Some(10_003) });
        assert_eq!(b.admit(10_003), Admission::Probe);
        assert_eq!(b.admit(10_004), Admission::Wait { until_ms: None }, "one probe at a time");
        assert_eq!(b.record(false, 10_100, true), Some(BreakerState::Open { probe_at_ms: 20_100 }));
        assert_eq!(b.admit(20_100), Admission::Probe);
        assert_eq!(b.record(true, 20_200, true), Some(BreakerState::Closed));
        assert_eq!(b.admit(20_201), Admission::Send);
    }

    #[test]
    fn a_probe_that_sent_nothing_hands_over_to_the_next_job() {
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(false, 0, false);
        assert_eq!(b.admit(10_000), Admission::Probe);
        b.probe_unsent(10_001);
        assert_eq!(b.admit(10_001), Admission::Probe, "at once, not a probe interval later");
        assert_eq!(b.record(true, 10_002, true), Some(BreakerState::Closed));
        b.probe_unsent(10_003);
        assert_eq!(b.state(), BreakerState::Closed, "only a probe is handed over");
    }

    #[test]
    fn while_probing_only_the_probe_reopens() {
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(false, 0, false);
        assert_eq!(b.admit(10_000), Admission::Probe);
        // An attempt sent before the breaker opened fails meanwhile.
        assert_eq!(b.record(false, 10_001, false), None);
        assert_eq!(b.admit(20_002), Admission::Wait { until_ms: None }, "still one probe out");
        assert_eq!(b.record(false, 20_003, true), Some(BreakerState::Open { probe_at_ms: 30_003 }));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.record(false, 0, false);
        b.record(true, 1, false);
        assert_eq!(b.record(false, 2, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
