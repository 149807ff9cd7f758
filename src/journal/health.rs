//! Whether the journal takes writes.
//!
//! sled refuses every write after its first I/O error, until the database is
//! reopened. The first failed write marks the journal failed; a recovery
//! (reopen, then the lanes reloading their queues) clears the mark, but only
//! if no write failed once it began: one that failed while the lanes were
//! reloading (an attempt's outcome, the disk still full) may have left a job
//! that the reload did not see, and only another recovery will.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bit 0: failed. The rest: failed writes so far, so that a recovery can
/// tell whether one came after it began.
#[derive(Default)]
pub(crate) struct Health(AtomicU64);

/// Where a recovery began: see [`Health::recovered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    failures: u64,
}

impl Health {
    /// Notes a failed write; true for the first one since the journal was
    /// last healthy (the one to log).
    pub(crate) fn fail(&self) -> bool {
        let old = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some((v + 2) | 1));
        old.is_ok_and(|old| old & 1 == 0)
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.0.load(Ordering::Acquire) & 1 == 1
    }

    /// Marks the point a recovery starts from (taken before the reopen).
    pub(crate) fn recovery(&self) -> Recovery {
        Recovery { failures: self.0.load(Ordering::Acquire) >> 1 }
    }

    /// Clears the failure, unless a write failed after `recovery` was taken;
    /// says whether the journal is healthy now.
    pub(crate) fn recovered(&self, recovery: Recovery) -> bool {
        let failed_then = recovery.failures << 1 | 1;
        match self.0.compare_exchange(
            failed_then,
            recovery.failures << 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(now) => now == recovery.failures << 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recovery_ends_the_failure_only_if_no_write_failed_since_it_began() {
        let health = Health::default();
        assert!(!health.is_failed());
        assert!(health.fail(), "the first failure");
        assert!(!health.fail(), "not the first");
        let recovery = health.recovery();
        assert!(health.recovered(recovery));
        assert!(!health.is_failed());
        assert!(health.recovered(recovery), "already healthy");

        assert!(health.fail());
        let recovery = health.recovery();
        assert!(!health.fail(), "a write failed during the recovery");
        assert!(!health.recovered(recovery));
        assert!(health.is_failed(), "another recovery is needed");
        assert!(health.recovered(health.recovery()));
        assert!(!health.is_failed());
    }
}
