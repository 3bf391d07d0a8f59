//! Logs (tracing). Metrics are the engine's (`hub_engine::metrics`), one registry per hub.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the log subscriber: `RUST_LOG` if set, else `info` (`warn` for the zeromq crate,
/// which logs every peer connect at info; `error` for lapin's returned-message warning, which
/// the hub reports itself as an unroutable publish). Logs go to stderr so that stdout
/// stays free for the `echo` consumer and for `hub tail`. Text logs are coloured only when
/// stderr is a terminal (no escape codes in journald or a file).
pub fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,zeromq=warn,lapin::returned_messages=error"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
