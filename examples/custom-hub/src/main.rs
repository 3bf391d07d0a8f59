//! Your own hub: the stock types, plus your consumer, in one binary with the full `hub` CLI.

use std::process::ExitCode;

/// The allocator the stock `hub` binary uses (messages are freed on other threads than the one
/// that allocated them; glibc's malloc serializes that).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hub::Hub::builder()
        .stock()
        .consumer::<minimal_consumer::GreeterConfig>()
        .run_cli()
}
