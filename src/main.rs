//! The `hookrelay` binary: everything is in the library; see `cli`.

/// mimalloc instead of glibc's malloc: the delivery path allocates and frees
/// many small buffers across threads (sled nodes, HTTP heads); measured in
/// `benches/load.rs`, fan-out to 4 targets went from 5.1 k to 6.7 k
/// deliveries/s (medians of three A/B rounds, BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hookrelay::cli::main()
}
