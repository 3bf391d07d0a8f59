//! # hub-exec
//!
//! `type = "exec"`: a consumer in any language is a program the hub runs. It gets the hub's
//! bounded queue, `concurrency`, ordering at concurrency 1, `timeout`, retries and dead letters
//! where the backend has them, and every per-consumer gauge, without recompiling the hub.
//!
//! - **Stream mode** (`mode = "stream"`, the default): one long-running program per consumer,
//!   JSON lines both ways (`docs/exec-protocol.md`, version 1): [`Stream`].
//! - **Per-message mode** (`mode = "per-message"`, the shape of fedmsg-trigger and
//!   `amqp-consume`): the command runs once per message: [`PerMessage`].

mod groups;
mod per_message;
mod stream;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hub_core::{BoxError, Consumer, ConsumerConfig, Resources};
use serde::Deserialize;

pub use groups::kill_all;
pub use per_message::{EX_TEMPFAIL, PerMessage};
pub use stream::{PROTOCOL, Stream};

/// `[consumers.<id>.settings]` for `type = "exec"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// How the program is run (default `stream`).
    #[serde(default)]
    pub mode: Mode,
    /// The program and its arguments: `["notify.sh", "--quiet"]`. A name without `/` is
    /// looked up in `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables for the program (it inherits the hub's environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the hub's).
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Stream mode: how long the program may take to say it is ready (default `"30s"`).
    #[serde(default = "default_ready_timeout", with = "hub_core::duration")]
    pub ready_timeout: Duration,
    /// Stream mode: the longest line the program may write (default 1 MiB); a longer one is
    /// counted as a protocol error and dropped.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_ready_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

/// `mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One long-running process per consumer speaking JSON lines (the default).
    #[default]
    Stream,
    /// One process per message: the message on stdin, the exit code is the verdict.
    PerMessage,
}

impl ConsumerConfig for ExecConfig {
    const TYPE: &'static str = "exec";
    const DESCRIPTION: &'static str =
        "a program in any language: one process speaking JSON lines, or one run per message";

    fn build(self, _resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        let Some(program) = self.command.first() else {
            return Err(
                "command: give the program and its arguments, such as [\"./notify.sh\"]".into(),
            );
        };
        if find_program(program).is_none() {
            return Err(format!(
                "command: {program:?} is not an executable file{}",
                if program.contains('/') {
                    ""
                } else {
                    " in PATH"
                }
            )
            .into());
        }
        if let Some(cwd) = &self.cwd
            && !cwd.is_dir()
        {
            return Err(format!("cwd: {} is not a directory", cwd.display()).into());
        }
        if self.max_line_bytes == 0 {
            return Err("max_line_bytes: must be at least 1".into());
        }
        match self.mode {
            Mode::PerMessage => Ok(Arc::new(PerMessage::new(self))),
            Mode::Stream => Ok(Arc::new(Stream::new(self))),
        }
    }
}

/// The configured program with its arguments, environment and working directory, its three
/// standard streams piped, killed when dropped (a timeout drops the call: the process goes with
/// it), `HUB_CONSUMER` set, and in a process group of its own: a Ctrl-C in the hub's terminal
/// (SIGINT to the whole foreground group) reaches the hub alone, which drains, instead of killing
/// every program mid-message; and what the program started goes with it when it is killed
/// ([`groups`]).
fn command(config: &ExecConfig, consumer: &str) -> tokio::process::Command {
    let (program, args) = config
        .command
        .split_first()
        .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(&config.env)
        .env("HUB_CONSUMER", consumer)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &config.cwd {
        cmd.current_dir(cwd);
    }
    cmd
}

/// Kills the process group of a program while the call that started it is unfinished (a
/// timeout, or the hub stopping, drops the call): `kill_on_drop` alone ends the program but
/// not what it started. Released once the program has been waited for (its id may be reused
/// from then on, so it is no longer signalled).
pub(crate) struct GroupGuard(groups::LiveGroup);

impl GroupGuard {
    /// Guards the group `pid` leads (none: nothing to do).
    pub(crate) fn new(pid: Option<u32>) -> Self {
        Self(groups::LiveGroup::new(pid))
    }

    /// The program ended and was waited for: nothing to kill.
    pub(crate) fn release(&mut self) {
        self.0.release();
    }

    /// The program started well: its group stays registered, and is no longer killed when
    /// this guard goes.
    pub(crate) fn keep(mut self) -> groups::LiveGroup {
        std::mem::replace(&mut self.0, groups::LiveGroup::new(None))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.pid() {
            groups::signal_group(pid, rustix::process::Signal::KILL);
        }
    }
}

/// Calls `each` with every line of `stream` (bytes that are not UTF-8 shown as best they can
/// be, the line ending cut), until it ends. It is read to its end: closing a program's pipe
/// early would kill it with SIGPIPE.
async fn each_line(stream: impl tokio::io::AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => each(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r'])),
        }
    }
}

/// The executable `program` names: a path as given, or the first match in `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}
