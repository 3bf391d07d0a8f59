//! A hub binary in the program's own tokio runtime (`run_cli_async`); `stock()` brings the
//! PostgreSQL pool type for `[resources.<id>]` (`postgres_pool`, from hub-postgres).

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    hub::Hub::builder()
        .stock()
        .consumer::<topic_counter::TopicCountConfig>()
        .consumer::<topic_counter::CrashConfig>()
        .run_cli_async()
        .await
}
