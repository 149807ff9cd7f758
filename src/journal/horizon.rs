//! Delivery ids, and how far a page of the delivery listing may read
//! without passing a delivery that is still on its way in.
//!
//! A delivery's id is its receive time and a sequence number, stamped before
//! the writer thread journals it, so an append stamped at t can become
//! visible after one stamped at t + 5 ms (it waited behind a slow flush, or
//! its task ran late). A page that handed out a cursor past it would never
//! show it: paging, or tailing from the last id listed, would skip it.
//!
//! So every id is given out here, and counted until its group is applied
//! ([`Landing`]); a listing reads only below a bound that is at most the
//! smallest id still landing. Ids and bounds take their sequence numbers
//! from one counter under one lock, and an id is never given a time below
//! the last bound handed out (its `floor`): every id given out after a bound
//! sorts after it, so no delivery that lands later can sort behind a page
//! already read. The restamp is normally the few milliseconds an append
//! waited, and only when a listing ran meanwhile; if the clock steps back,
//! ids keep the floor's time until it catches up (logged), rather than
//! sorting behind deliveries already listed — for up to ten minutes: a clock
//! further behind is followed instead (logged as an error).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::DeliveryId;

/// Shared by the journal (bounds) and the appends it hands the writer
/// (landings); lives across reopens.
#[derive(Debug, Default)]
pub(crate) struct Horizon(Arc<Mutex<State>>);

/// One append's id, from when it is given out until its group is applied
/// (or failed). Dropping it ends the wait.
#[derive(Debug)]
pub(crate) struct Landing {
    state: Arc<Mutex<State>>,
    id: DeliveryId,
}

impl Horizon {
    /// Starts above every delivery already journaled (`last`), so a restart
    /// with the clock behind keeps new ids after those a client has seen.
    pub(crate) fn after(last: Option<DeliveryId>) -> Horizon {
        let state =
            State { floor: last.unwrap_or(DeliveryId { received_at_ms: 0, seq: 0 }), ..State::default() };
        Horizon(Arc::new(Mutex::new(state)))
    }

    /// The id of an append received at `stamped_ms`; `next_block` is the
    /// journal's id counter (unique and increasing across restarts).
    pub(crate) fn enter<E>(
        &self,
        stamped_ms: u64,
        next_block: impl FnOnce() -> Result<u64, E>,
    ) -> Result<Landing, E> {
        let id = lock(&self.0).enter(stamped_ms, next_block)?;
        Ok(Landing { state: self.0.clone(), id })
    }

    /// The id (exclusive) a listing may read up to now.
    pub(crate) fn bound<E>(
        &self,
        now_ms: u64,
        next_block: impl FnOnce() -> Result<u64, E>,
    ) -> Result<DeliveryId, E> {
        lock(&self.0).bound(now_ms, next_block)
    }
}

impl Landing {
    pub(crate) fn id(&self) -> DeliveryId {
        self.id
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        lock(&self.state).landing.remove(&self.id);
    }
}

/// The state, even after a panic while it was held (sled's id counter
/// asserts): nothing is changed before that call returns.
fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The policy, apart from the locking.
#[derive(Debug, Default)]
struct State {
    /// Ids given out whose group is not yet applied.
    landing: BTreeSet<DeliveryId>,
    /// The highest bound handed out (or the last id at the open).
    floor: DeliveryId,
    /// The floor time a clock step was last logged at: once per step.
    warned_at_ms: u64,
    /// Sequence numbers reserved and not yet given out (see [`SEQ_BLOCK`]).
    seqs: std::ops::Range<u64>,
}

/// Sequence numbers are reserved from the journal's id counter this many at
/// a time (block `n` is `n * SEQ_BLOCK ..`): the counter is unique across
/// restarts and reopens, but taking it waits for any sled batch being
/// applied, which the request tasks giving out ids must not do each time.
const SEQ_BLOCK: u64 = 1_024;

/// How far behind the floor a stamp may be before it is a clock step, not
/// an append that waited.
const CLOCK_STEP_MS: u64 = 1_000;

/// How far behind the floor the clock may be before ids follow the clock
/// again: holding every new id at one time for longer would keep them from
/// retention and dedup expiry, and make every time filter wrong (a clock that
/// ran a year ahead, then was set right). Ordering gives way instead.
const MAX_HELD_MS: u64 = 10 * 60 * 1_000;

impl State {
    fn enter<E>(
        &mut self,
        stamped_ms: u64,
        next_block: impl FnOnce() -> Result<u64, E>,
    ) -> Result<DeliveryId, E> {
        self.follow_a_clock_far_behind(stamped_ms);
        let floor_ms = self.floor.received_at_ms;
        if stamped_ms.saturating_add(CLOCK_STEP_MS) < floor_ms && self.warned_at_ms != floor_ms {
            self.warned_at_ms = floor_ms;
            tracing::warn!(
                behind_ms = floor_ms - stamped_ms,
                "the clock is behind the last delivery listed; new deliveries take that time until it catches up"
            );
        }
        let id = DeliveryId { received_at_ms: stamped_ms.max(floor_ms), seq: self.next_seq(next_block)? };
        self.landing.insert(id);
        Ok(id)
    }

    fn next_seq<E>(&mut self, next_block: impl FnOnce() -> Result<u64, E>) -> Result<u64, E> {
        if self.seqs.is_empty() {
            let block = next_block()?;
            self.seqs = block * SEQ_BLOCK..(block + 1) * SEQ_BLOCK;
        }
        Ok(self.seqs.next().expect("a block is never empty"))
    }

    fn follow_a_clock_far_behind(&mut self, now_ms: u64) {
        let floor_ms = self.floor.received_at_ms;
        if now_ms.saturating_add(MAX_HELD_MS) < floor_ms {
            tracing::error!(
                behind_ms = floor_ms - now_ms,
                "the clock is far behind the last delivery listed or journaled; new deliveries take the clock's time, \
                 so until it catches up a client paging from a later id can miss them"
            );
            self.floor = DeliveryId { received_at_ms: now_ms, seq: 0 };
        }
    }

    /// Below the smallest id still landing and at most here and now: the
    /// sequence number is drawn now, so every id given out later sorts after.
    fn bound<E>(
        &mut self,
        now_ms: u64,
        next_block: impl FnOnce() -> Result<u64, E>,
    ) -> Result<DeliveryId, E> {
        self.follow_a_clock_far_behind(now_ms);
        let here = DeliveryId {
            received_at_ms: now_ms.max(self.floor.received_at_ms),
            seq: self.next_seq(next_block)?,
        };
        let bound = self.landing.first().map_or(here, |&oldest| oldest.min(here));
        self.floor = self.floor.max(bound);
        Ok(bound)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A block counter like sled's `generate_id`.
    fn counter() -> impl FnMut() -> Result<u64, Infallible> {
        let mut next = 0;
        move || {
            next += 1;
            Ok(next)
        }
    }

    fn id(ms: u64, seq: u64) -> DeliveryId {
        DeliveryId { received_at_ms: ms, seq }
    }

    #[test]
    fn a_page_stops_before_the_oldest_append_still_landing() {
        let horizon = Horizon::default();
        let mut seq = counter();
        let late = horizon.enter(100, &mut seq).unwrap();
        let later = horizon.enter(105, &mut seq).unwrap();
        assert_eq!(horizon.bound(110, &mut seq).unwrap(), late.id());
        drop(late);
        assert_eq!(horizon.bound(110, &mut seq).unwrap(), later.id());
        drop(later);
        assert_eq!(horizon.bound(110, &mut seq).unwrap(), id(110, SEQ_BLOCK + 4));
    }

    #[test]
    fn an_append_stamped_behind_a_bound_handed_out_sorts_after_it() {
        let horizon = Horizon::default();
        let mut seq = counter();
        let bound = horizon.bound(110, &mut seq).unwrap();
        // Stamped at 104 but given its id only now: the page may have passed 104.
        let late = horizon.enter(104, &mut seq).unwrap().id();
        assert_eq!(late, id(110, SEQ_BLOCK + 1));
        assert!(late > bound);
        assert_eq!(horizon.enter(111, &mut seq).unwrap().id(), id(111, SEQ_BLOCK + 2));
    }

    #[test]
    fn pages_keep_moving_while_the_clock_is_behind() {
        let horizon = Horizon::default();
        let mut seq = counter();
        let first = horizon.bound(10_000_000, &mut seq).unwrap();
        // The clock stepped back five minutes; deliveries keep landing.
        let a = horizon.enter(10_000_000 - 300_000, &mut seq).unwrap();
        let b = horizon.enter(10_000_000 - 299_000, &mut seq).unwrap();
        assert!(first < a.id() && a.id() < b.id(), "they sort after the page already read");
        assert_eq!(horizon.bound(10_000_000 - 298_000, &mut seq).unwrap(), a.id());
        let last = b.id();
        drop(a);
        drop(b);
        let next = horizon.bound(10_000_000 - 297_000, &mut seq).unwrap();
        assert!(next > last, "both listed once landed");
    }

    #[test]
    fn a_clock_far_behind_is_followed_rather_than_held_at_the_floor() {
        let year = 365 * 86_400_000;
        let mut seq = counter();
        let horizon = Horizon::after(Some(id(1_000_000 + year, 7)));
        assert_eq!(horizon.enter(1_000_000, &mut seq).unwrap().id().received_at_ms, 1_000_000);
        // Within the limit, held as before.
        let horizon = Horizon::after(Some(id(1_000_000 + MAX_HELD_MS, 7)));
        assert_eq!(horizon.enter(1_000_000, &mut seq).unwrap().id().received_at_ms, 1_000_000 + MAX_HELD_MS);
    }

    #[test]
    fn deliveries_stamped_before_a_step_back_wait_for_the_clock_and_hide_nothing_later() {
        let mut seq = counter();
        let horizon = Horizon::default();
        let ahead = horizon.enter(10_000_000, &mut seq).unwrap().id();
        // Landed (its guard dropped); then the clock steps back five minutes.
        let bound = horizon.bound(10_000_000 - 300_000, &mut seq).unwrap();
        assert!(bound < ahead, "listed once the clock reaches its time");
        let next = horizon.enter(10_000_000 - 299_000, &mut seq).unwrap();
        assert!(next.id() > bound, "a later delivery never sorts behind a page already read");
    }

    #[test]
    fn a_restart_keeps_new_ids_after_the_last_one_journaled() {
        let horizon = Horizon::after(Some(id(5_000, 77)));
        let block = || Ok::<_, Infallible>(78);
        assert_eq!(horizon.enter(4_000, block).unwrap().id(), id(5_000, 78 * SEQ_BLOCK));
    }

    #[test]
    fn the_id_counter_is_asked_once_a_block() {
        let horizon = Horizon::default();
        let mut asked = 0;
        for n in 0..SEQ_BLOCK + 1 {
            let landing = horizon
                .enter(n, || {
                    asked += 1;
                    Ok::<_, Infallible>(asked)
                })
                .unwrap();
            assert_eq!(landing.id().seq, if n < SEQ_BLOCK { SEQ_BLOCK + n } else { 2 * SEQ_BLOCK });
        }
        assert_eq!(asked, 2);
    }
}
