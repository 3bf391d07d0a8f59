//! Per-message mode: the command runs once per message.
//!
//! - stdin: the message as one JSON object (`{"id", "topic", "timestamp", "headers", "body"}`,
//!   as `hub tail` prints it), then end of file;
//! - environment: `HUB_TOPIC`, `HUB_MESSAGE_ID`, `HUB_ATTEMPT` (1 for a first delivery), and
//!   `HUB_CONSUMER`, besides the hub's own environment and the consumer's `env`;
//! - exit 0: ack; exit 75 (`EX_TEMPFAIL`): retry; any other exit, or death by a signal: reject,
//!   with the exit code and the last line the program wrote to stderr as the reason;
//! - stdout and stderr are logged line by line under the consumer's span;
//! - the consumer's `timeout` kills the process and what it started (its process group; the
//!   message is then retried as any timeout is).

use hub_core::{ConsumeError, Consumer, Context, Message, async_trait};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, warn};

use crate::ExecConfig;

/// The exit code that asks for a retry (`EX_TEMPFAIL` from `sysexits.h`).
pub const EX_TEMPFAIL: i32 = 75;

/// Longest stderr line kept as a reject reason (longer ones are cut).
const REASON_LIMIT: usize = 500;

/// A consumer that runs its command once per message.
pub struct PerMessage {
    config: ExecConfig,
}

impl PerMessage {
    /// For `config` (checked by [`ExecConfig`]'s `build`).
    pub fn new(config: ExecConfig) -> Self {
        Self { config }
    }

    fn command(&self, cx: &Context, msg: &Message) -> Command {
        let mut cmd = crate::command(&self.config, cx.name());
        cmd.env("HUB_TOPIC", msg.topic())
            .env("HUB_MESSAGE_ID", msg.id())
            .env("HUB_ATTEMPT", attempt(msg).to_string());
        cmd
    }
}

/// The attempt number ([`Message::attempt`]: 1, then counted up by every retry, on every
/// backend).
pub(crate) fn attempt(msg: &Message) -> u64 {
    u64::from(msg.attempt())
}

#[async_trait]
impl Consumer for PerMessage {
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let mut child = self.command(cx, msg).spawn().map_err(|e| {
            let program = self.config.command.first().map_or("", String::as_str);
            ConsumeError::transient(format!("cannot start {program:?}: {e}"))
        })?;
        // A timeout drops this call: the program's whole group goes (a shell's children too).
        let mut group = crate::GroupGuard::new(child.id());
        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let id = msg.id().to_owned();
        let input = async {
            if let Some(mut stdin) = stdin.take() {
                let mut line = msg.to_json();
                line.push('\n');
                // A program that does not read its stdin is fine: a broken pipe is not an error.
                let _ = stdin.write_all(line.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let out = log_lines(stdout, &id, "stdout");
        let err = log_lines(stderr, &id, "stderr");
        // Released as soon as the program is waited for: a child of it may hold its pipes
        // open after it (its group id is not the hub's to signal from then on).
        let wait = async {
            let status = child.wait().await;
            group.release();
            status
        };
        let ((), _, last_stderr, status) = tokio::join!(input, out, err, wait);
        let status =
            status.map_err(|e| ConsumeError::transient(format!("waiting for the program: {e}")))?;
        let said = last_stderr.map(|l| format!(": {l}")).unwrap_or_default();
        match status.code() {
            Some(0) => Ok(()),
            Some(EX_TEMPFAIL) => Err(ConsumeError::transient(format!(
                "exit {EX_TEMPFAIL} (retry){said}"
            ))),
            Some(code) => Err(ConsumeError::invalid(format!("exit {code}{said}"))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or_default();
                Err(ConsumeError::invalid(format!(
                    "killed by signal {signal}{said}"
                )))
            }
        }
    }
}

/// Logs each line of `stream` (under the consumer's span); returns the last non-empty one,
/// cut to [`REASON_LIMIT`] bytes.
async fn log_lines(
    stream: Option<impl AsyncRead + Unpin>,
    id: &str,
    which: &str,
) -> Option<String> {
    let mut last = None;
    crate::each_line(stream?, |line| {
        if which == "stderr" {
            warn!(message_id = id, stream = which, "{line}");
        } else {
            info!(message_id = id, stream = which, "{line}");
        }
        if !line.trim().is_empty() {
            let mut at = line.len().min(REASON_LIMIT);
            while !line.is_char_boundary(at) {
                at -= 1;
            }
            last = Some(line[..at].to_owned());
        }
    })
    .await;
    last
}
