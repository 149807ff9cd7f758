//! The `hookrelay` binary: everything is in the library; see `cli`.

mod allocator;

fn main() -> std::process::ExitCode {
    // SAFETY: the first thing the process does; no other thread exists yet.
    unsafe { allocator::return_freed_memory_promptly() };
    hookrelay::cli::main()
}
