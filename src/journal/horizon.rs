//! How far a page of the delivery listing may read without passing a
//! delivery that is still on its way in.
//!
//! A delivery's id is its receive time, stamped before the writer thread
//! journals it, so an append stamped at t can become visible after one
//! stamped at t + 5 ms (it waited behind a slow flush, or its task ran late).
//! A page that handed out a cursor past t would never show it: paging, or
//! tailing from the last id seen, would skip it for good.
//!
//! So each append is counted here from the moment it is stamped until its
//! group is applied ([`Landing`]), and a listing reads only ids below a
//! bound that is at most the oldest stamp still landing. An append stamped
//! below a bound already handed out is restamped at that bound: no delivery
//! that lands later can sort behind a page already read. The restamp is at
//! most the few milliseconds an append waits, and only when a listing ran
//! meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared by the journal (bounds) and the appends it hands the writer
/// (landings); lives across reopens.
#[derive(Debug, Default)]
pub(crate) struct Horizon(Arc<Mutex<State>>);

/// One append on its way in, from its stamp until its group is applied
/// (or it failed). Dropping it ends the wait.
#[derive(Debug)]
pub(crate) struct Landing {
    state: Arc<Mutex<State>>,
    ms: u64,
}

impl Horizon {
    /// Counts an append stamped `stamped_ms`; its id's time is [`Landing::ms`].
    pub(crate) fn enter(&self, stamped_ms: u64) -> Landing {
        let ms = self.0.lock().expect("not poisoned").enter(stamped_ms);
        Landing { state: self.0.clone(), ms }
    }

    /// The receive time (exclusive) a listing may read up to now.
    pub(crate) fn bound(&self, now_ms: u64) -> u64 {
        self.0.lock().expect("not poisoned").bound(now_ms)
    }
}

impl Landing {
    /// The time its delivery's id carries: the stamp, or a bound handed out since.
    pub(crate) fn ms(&self) -> u64 {
        self.ms
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        self.state.lock().expect("not poisoned").leave(self.ms);
    }
}

/// The policy, apart from the locking.
#[derive(Debug, Default)]
struct State {
    /// Stamps of the appends not yet applied, with how many share each.
    landing: BTreeMap<u64, usize>,
    /// The highest bound handed out: no stamp may go below it from now on.
    floor: u64,
}

impl State {
    fn enter(&mut self, stamped_ms: u64) -> u64 {
        let ms = stamped_ms.max(self.floor);
        *self.landing.entry(ms).or_default() += 1;
        ms
    }

    fn leave(&mut self, ms: u64) {
        if let Some(count) = self.landing.get_mut(&ms) {
            *count -= 1;
            if *count == 0 {
                self.landing.remove(&ms);
            }
        }
    }

    /// Below the oldest append still landing and past this millisecond (a
    /// delivery stamped now may not be visible yet); never below an earlier
    /// bound, so pages only move forward. A stamp is restamped at the bound
    /// from now on, so the floor is at most a millisecond ahead of the clock.
    fn bound(&mut self, now_ms: u64) -> u64 {
        let mut bound = now_ms.max(self.floor);
        if let Some((&oldest, _)) = self.landing.first_key_value() {
            bound = bound.min(oldest);
        }
        self.floor = self.floor.max(bound);
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_stops_before_the_oldest_append_still_landing() {
        let horizon = Horizon::default();
        let late = horizon.enter(100);
        let _later = horizon.enter(105);
        assert_eq!(horizon.bound(110), 100);
        drop(late);
        assert_eq!(horizon.bound(110), 105);
    }

    #[test]
    fn with_nothing_landing_a_page_reads_up_to_the_current_millisecond() {
        let horizon = Horizon::default();
        assert_eq!(horizon.bound(110), 110);
        // The clock stepped back: pages never do.
        assert_eq!(horizon.bound(90), 110);
    }

    #[test]
    fn an_append_stamped_behind_a_bound_handed_out_is_restamped_at_it() {
        let horizon = Horizon::default();
        assert_eq!(horizon.bound(110), 110);
        // Stamped at 104 but counted only now: the page may have passed 104.
        assert_eq!(horizon.enter(104).ms(), 110);
        assert_eq!(horizon.enter(111).ms(), 111);
    }

    #[test]
    fn appends_sharing_a_stamp_hold_the_bound_until_the_last_lands() {
        let horizon = Horizon::default();
        let first = horizon.enter(100);
        let second = horizon.enter(100);
        drop(first);
        assert_eq!(horizon.bound(200), 100);
        drop(second);
        assert_eq!(horizon.bound(200), 200);
    }
}
