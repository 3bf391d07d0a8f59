//! Your own hub: the stock types, plus your consumer, in one binary with the full `hub` CLI.

use std::process::ExitCode;

fn main() -> ExitCode {
    hub::Hub::builder()
        .stock()
        .consumer::<minimal_consumer::GreeterConfig>()
        .run_cli()
}
