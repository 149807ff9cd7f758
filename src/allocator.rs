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
/// journal with 10⁶ deliveries, `benches/footprint.rs`). Its throughput cost
/// was inside the machine's noise; BENCHMARKS.md has the figures, and says a
/// cost of up to ~15% on the append path could not be ruled out. An operator
/// who sets `MIMALLOC_PURGE_DELAY` (or its old name `MIMALLOC_RESET_DELAY`)
/// keeps that setting.
///
/// # Safety
/// No other thread may be running: mimalloc's option setter writes plain
/// globals that its allocation paths read without synchronisation. Call it
/// first thing in `main` (Rust starts no thread of its own before `main`).
/// The index is bounds-checked by mimalloc, so it cannot corrupt memory.
pub unsafe fn return_freed_memory_promptly() {
    if ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"].iter().any(|name| std::env::var_os(name).is_some()) {
        return;
    }
    // SAFETY: the caller guarantees no other thread runs yet.
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
        let overridden = ["MIMALLOC_PURGE_DELAY", "MIMALLOC_RESET_DELAY"]
            .iter()
            .any(|name| std::env::var_os(name).is_some());
        if !overridden {
            assert_eq!(purge_delay_ms(), 1000);
            // SAFETY: this binary's only test: the harness's other threads
            // are idle, waiting for it.
            unsafe { super::return_freed_memory_promptly() };
            assert_eq!(purge_delay_ms(), 0);
        }
    }
}
