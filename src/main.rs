//! The `hookrelay` binary: everything is in the library; see `cli`.

mod allocator;

fn main() -> std::process::ExitCode {
    allocator::return_freed_memory_promptly();
    hookrelay::cli::main()
}
