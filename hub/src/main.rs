//! The stock `hub` binary: stock consumers and producers, and every backend in the workspace.

use std::process::ExitCode;

fn main() -> ExitCode {
    hub::Hub::builder().stock().run_cli()
}
