//! A hub binary in the program's own tokio runtime (`run_cli_async`), with a PostgreSQL pool
//! type for `[resources.<id>]`.

use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    hub::Hub::builder()
        .stock()
        .consumer::<topic_counter::TopicCountConfig>()
        .consumer::<topic_counter::CrashConfig>()
        .resource_type::<topic_counter::PgPoolConfig>()
        .run_cli_async()
        .await
}
