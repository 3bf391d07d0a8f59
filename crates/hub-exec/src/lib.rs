//! # hub-exec
//!
//! `type = "exec"`: a consumer in any language is a program the hub runs. It gets the hub's
//! bounded queue, `concurrency`, ordering at concurrency 1, `timeout`, retries and dead letters
//! where the backend has them, and every per-consumer gauge, without recompiling the hub.
//!
//! **Per-message mode** (`mode = "per-message"`, the shape of fedmsg-trigger and `amqp-consume`):
//! the command runs once per message ([`per_message`]).
//!
//! The long-running stream mode (one process per consumer, JSON lines both ways) is not built
//! yet: `mode` must be given, and `"stream"` is refused with a message that says so.

mod per_message;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use hub_core::{BoxError, Consumer, ConsumerConfig, Resources};
use serde::Deserialize;

pub use per_message::{EX_TEMPFAIL, PerMessage};

/// `[consumers.<id>.settings]` for `type = "exec"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// How the program is run.
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
}

/// `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One process per message: the message on stdin, the exit code is the verdict.
    PerMessage,
    /// One long-running process speaking JSON lines (not built yet: refused when checked).
    Stream,
}

impl ConsumerConfig for ExecConfig {
    const TYPE: &'static str = "exec";
    const DESCRIPTION: &'static str =
        "runs a program for messages (mode = \"per-message\": exit 0 ack, 75 retry, else reject)";

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
        match self.mode {
            Mode::PerMessage => Ok(Arc::new(PerMessage::new(self))),
            Mode::Stream => Err(
                "mode \"stream\" (one long-running process speaking JSON lines) is not available \
                 yet; use mode = \"per-message\""
                    .into(),
            ),
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
