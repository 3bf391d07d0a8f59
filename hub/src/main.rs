//! The stock `hub` binary: stock consumers and producers, and every backend in the workspace.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: messages are allocated on a backend's receive task and
/// freed on consumers' tasks, on other threads, and glibc then serializes on its arena locks
/// (13 % of the CPU in futex calls in the ZeroMQ benchmark; see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hub::Hub::builder().stock().run_cli()
}
