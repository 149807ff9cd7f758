//! The daemon's allocator: mimalloc, tuned. Not part of the library (which
//! forbids `unsafe`): the binary includes it with `mod allocator;`, and the
//! benches with `#[path]`, so their figures are the daemon's.

use libmimalloc_sys::{mi_option_set, mi_option_t};

/// mimalloc instead of glibc's malloc: the delivery path allocates and frees
/// many small buffers across threads (sled nodes, HTTP heads); measured in
/// `benches/load.rs`, fan-out to 4 targets went from 5.1 k to 6.7 k
/// deliveries/s (medians of three A/B rounds, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's option enum (the version is
/// pinned by Cargo.lock; a test checks the index still names this option).
const PURGE_DELAY: mi_option_t = 15;

/// Makes mimalloc give freed pages back to the OS as soon as they are free.
/// By default it waits a second, and then only when the thread that freed
/// them allocates again: sled's recovery and I/O threads free tens of MiB
/// and go idle, so those pages stayed resident (about 50 MiB of a reopened
/// journal with 10⁶ deliveries, `benches/footprint.rs`). No throughput cost
/// measured (BENCHMARKS.md). Call first thing in `main`, before any other
/// thread starts: mimalloc's option setters are not thread-safe.
pub fn return_freed_memory_promptly() {
    // SAFETY: sets a plain integer option; called before other threads exist.
    unsafe { mi_option_set(PURGE_DELAY, 0) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_index_names_the_purge_delay() {
        // SAFETY: reads a plain integer option.
        let purge_delay_ms = || unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        // Nothing in this test binary sets it, so this must be mimalloc 3's
        // default for purge_delay (1000 ms): another option at this index
        // would have another default. (Unless the environment overrides it.)
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        super::return_freed_memory_promptly();
        assert_eq!(purge_delay_ms(), 0);
    }
}
