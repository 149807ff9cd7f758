//! The retry policy: what one attempt's outcome means for its job. Pure:
//! time and randomness come in as arguments.

use std::time::{Duration, SystemTime};

use crate::config::RetryConfig;

/// What one outbound attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The target answered. `retry_after` is its parsed `Retry-After`, if any.
    Status { code: u16, retry_after: Option<Duration> },
    /// No answer within the target's `timeout`.
    Timeout,
    /// Connection, DNS, TLS or protocol failure.
    Failed(String),
}

impl AttemptOutcome {
    /// Only 2xx is success; a 3xx is a failure and is never followed.
    pub fn is_success(&self) -> bool {
        matches!(self, AttemptOutcome::Status { code: 200..=299, .. })
    }

    /// Status code, or a short description, for logs and the attempt history.
    pub fn describe(&self) -> String {
        match self {
            AttemptOutcome::Status { code, .. } => code.to_string(),
            AttemptOutcome::Timeout => "timeout".to_owned(),
            AttemptOutcome::Failed(error) => error.clone(),
        }
    }
}

/// What happens to the job next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again at this Unix time in milliseconds.
    RetryAt(u64),
    /// The retry budget is spent; the job is kept for listing and replay.
    Dead,
}

/// Decides a job's fate after attempt number `attempts_made` (1-based).
///
/// The delay grows exponentially (`initial`, 2×, 4×, … capped at `max_delay`)
/// and is drawn uniformly between `initial` and that ceiling (`jitter` in
/// [0, 1) picks the point), so a burst of failures does not retry in lockstep.
/// A `Retry-After` longer than the drawn delay wins, capped at `max_delay`.
/// The job dies after `max_attempts`, or when the next try would fall past
/// `created_at_ms + max_age`.
pub fn decide(
    policy: &RetryConfig,
    attempts_made: u32,
    created_at_ms: u64,
    now_ms: u64,
    outcome: &AttemptOutcome,
    jitter: f64,
) -> Decision {
    if outcome.is_success() {
        return Decision::Delivered;
    }
    if attempts_made >= policy.max_attempts.get() {
        return Decision::Dead;
    }
    let delay = backoff(policy, attempts_made, jitter);
    let delay = match outcome {
        AttemptOutcome::Status { retry_after: Some(wanted), .. } => {
            delay.max((*wanted).min(policy.max_delay))
        }
        _ => delay,
    };
    let at = now_ms.saturating_add(millis(delay));
    if at > created_at_ms.saturating_add(millis(policy.max_age)) {
        return Decision::Dead;
    }
    Decision::RetryAt(at)
}

fn backoff(policy: &RetryConfig, attempts_made: u32, jitter: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempts_made.saturating_sub(1));
    let ceiling = policy.initial.saturating_mul(factor).min(policy.max_delay);
    let spread = ceiling.saturating_sub(policy.initial);
    policy.initial + spread.mul_f64(jitter.clamp(0.0, 1.0))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Parses `Retry-After`: delay seconds, or an HTTP date (a date in the past
/// means "now").
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    fn policy() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(5),
            max_delay: Duration::from_secs(3600),
            max_attempts: NonZeroU32::new(5).unwrap(),
            max_age: Duration::from_secs(48 * 3600),
        }
    }

    const NOW: u64 = 1_000_000_000;

    fn status(code: u16) -> AttemptOutcome {
        AttemptOutcome::Status { code, retry_after: None }
    }

    #[test]
    fn only_2xx_is_success() {
        for code in [200, 201, 204, 299] {
            assert_eq!(decide(&policy(), 1, NOW, NOW, &status(code), 0.5), Decision::Delivered);
        }
        for code in [100, 301, 302, 304, 308, 400, 404, 410, 429, 500, 503] {
            assert!(
                matches!(decide(&policy(), 1, NOW, NOW, &status(code), 0.5), Decision::RetryAt(_)),
                "{code}"
            );
        }
        assert!(matches!(
            decide(&policy(), 1, NOW, NOW, &AttemptOutcome::Timeout, 0.5),
            Decision::RetryAt(_)
        ));
        let failed = AttemptOutcome::Failed("connection refused".into());
        assert!(matches!(decide(&policy(), 1, NOW, NOW, &failed, 0.5), Decision::RetryAt(_)));
    }

    #[test]
    fn delays_grow_exponentially_within_initial_and_max_delay() {
        let p = policy();
        let at = |attempt, jitter| match decide(&p, attempt, NOW, NOW, &status(500), jitter) {
            Decision::RetryAt(at) => at - NOW,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(1, 0.0), 5_000);
        assert_eq!(at(1, 0.99), 5_000, "first retry: ceiling is initial");
        assert_eq!(at(2, 1.0), 10_000);
        assert_eq!(at(3, 1.0), 20_000);
        assert_eq!(at(4, 1.0), 40_000);
        assert_eq!(at(4, 0.0), 5_000, "full jitter reaches down to initial");
        assert_eq!(at(4, 0.5), 22_500);
        let long = RetryConfig { max_attempts: NonZeroU32::new(100).unwrap(), ..p };
        match decide(&long, 60, NOW, NOW, &status(500), 1.0) {
            Decision::RetryAt(at) => assert_eq!(at - NOW, 3_600_000, "capped at max_delay"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_max_delay() {
        let p = policy();
        let with = |secs| AttemptOutcome::Status { code: 429, retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(decide(&p, 1, NOW, NOW, &with(120), 0.0), Decision::RetryAt(NOW + 120_000));
        assert_eq!(
            decide(&p, 1, NOW, NOW, &with(1), 0.0),
            Decision::RetryAt(NOW + 5_000),
            "never sooner than backoff"
        );
        assert_eq!(decide(&p, 1, NOW, NOW, &with(86_400), 0.0), Decision::RetryAt(NOW + 3_600_000));
    }

    #[test]
    fn dead_after_max_attempts_or_max_age() {
        let p = policy();
        assert_eq!(decide(&p, 5, NOW, NOW, &status(500), 0.5), Decision::Dead);
        assert_eq!(
            decide(&p, 5, NOW, NOW, &status(200), 0.5),
            Decision::Delivered,
            "the last attempt can succeed"
        );
        let created = NOW - 48 * 3_600_000 + 1_000;
        assert_eq!(decide(&p, 2, created, NOW, &status(500), 0.0), Decision::Dead, "next try past max_age");
        assert!(matches!(decide(&p, 2, created + 10_000, NOW, &status(500), 0.0), Decision::RetryAt(_)));
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
