//! Logs (tracing). Metrics are the engine's (`hub_engine::metrics`), one registry per hub.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    install_panic_hook();
}

/// At most this many panic events a second; the rest are counted and reported once.
const PANICS_PER_SECOND: u32 = 10;

struct PanicWindow {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

static PANIC_WINDOW: Mutex<PanicWindow> = Mutex::new(PanicWindow {
    started: None,
    logged: 0,
    suppressed: 0,
});

/// Replaces Rust's default panic hook (raw text on stderr, a multi-line backtrace with
/// `RUST_BACKTRACE=1`) with one structured event per panic, at `error`, target `hub::panic`,
/// with fields `panic` (the message), `location`, `thread` and, when `RUST_BACKTRACE` asks for
/// it, `backtrace`: so `--log-format json` stays one JSON object per line. At most
/// [`PANICS_PER_SECOND`] a second are logged; how many were left out is logged after. The hub
/// catches a consumer's panics itself (counted as `outcome="panic"`, logged with the message
/// id); this event says where the panic happened. [`init_logs`] installs it; a program that
/// embeds the hub with its own logging may call it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let (log, suppressed_before) = admit(Instant::now());
        if let Some(n) = suppressed_before {
            tracing::error!(target: "hub::panic", suppressed = n, "Panics not logged since the last one logged (rate limit: {PANICS_PER_SECOND} a second).");
        }
        if !log {
            return;
        }
        // A filter that leaves `hub::panic` out must not make a panic silent.
        if !tracing::enabled!(target: "hub::panic", tracing::Level::ERROR) {
            eprintln!("panic: {info}");
            return;
        }
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a panic with a non-string payload)");
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(target: "hub::panic", panic = text, location, thread, backtrace = %backtrace, "Panic.");
        } else {
            tracing::error!(target: "hub::panic", panic = text, location, thread, "Panic.");
        }
    }));
}

/// Whether a panic at `now` is logged, and how many were left out in the window that just
/// ended (if any).
fn admit(now: Instant) -> (bool, Option<u64>) {
    let mut w = PANIC_WINDOW
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut ended = None;
    if w.started
        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
    {
        if w.suppressed > 0 {
            ended = Some(w.suppressed);
        }
        *w = PanicWindow {
            started: Some(now),
            logged: 0,
            suppressed: 0,
        };
    }
    if w.logged < PANICS_PER_SECOND {
        w.logged += 1;
        (true, ended)
    } else {
        w.suppressed += 1;
        (false, ended)
    }
}
