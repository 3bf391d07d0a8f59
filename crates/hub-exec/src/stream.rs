//! Stream mode: one long-running program per consumer, JSON lines both ways (protocol version
//! 1, `docs/exec-protocol.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use hub_core::metrics::Counter;
use hub_core::{BoxError, ConsumeError, Consumer, Context, Map, Message, Value, async_trait, json};
use hub_engine::metrics::{ExecSeries, exec_series};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::ExecConfig;
use crate::per_message::attempt;

/// The protocol version this hub speaks.
pub const PROTOCOL: u64 = 1;

/// First and longest wait before starting a program again.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a stopping program may take to exit after its stdin closes, and after SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// A line from the program.
#[derive(Debug, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    protocol: Option<u64>,
    #[serde(default)]
    publish: Vec<Publish>,
    /// `retry` only: how long to wait before the message goes back ("5s", or seconds).
    #[serde(default)]
    delay: Option<Value>,
}

/// The longest `delay` a `retry` may ask for.
const DELAY_MAX: Duration = Duration::from_secs(60);

/// A retry's `delay`: a duration string (`"5s"`) or a number of seconds.
fn delay_of(v: &Value) -> Option<Duration> {
    match v {
        Value::String(s) => hub_core::duration::parse(s).ok(),
        Value::Number(n) => n.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()),
        _ => None,
    }
}

/// A message a verdict asks the hub to publish.
#[derive(Debug, Deserialize)]
struct Publish {
    topic: String,
    #[serde(default)]
    body: Value,
    #[serde(default)]
    headers: Map<String, Value>,
}

/// What the program answered for one message.
#[derive(Debug)]
struct Answer {
    kind: Verdict,
    reason: Option<String>,
    publish: Vec<Publish>,
    delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ack,
    Retry,
    Reject,
}

/// One run of the program.
struct Process {
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    /// Outstanding messages, and where each one's answer goes.
    pending: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    /// True once the program's stdout ended (it exited or was killed).
    ended: watch::Sender<bool>,
    child: Mutex<Option<Child>>,
    /// Its process group, registered for [`crate::kill_all`] while it is not waited for.
    group: Mutex<crate::groups::LiveGroup>,
}

impl Process {
    fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Kills it (it is stuck, or the hub is stopping); its outstanding messages are retried, and
    /// the next message starts a new one (it counts as ended from now).
    fn kill(&self) {
        self.ended.send_replace(true);
        if let Some(child) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            // What it started goes too: its whole group, while the lock keeps the leader from
            // being waited for (so the group id cannot be reused). `id` is `None` once it was.
            if let Some(pid) = child.id() {
                crate::groups::signal_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.start_kill();
        }
    }
}

/// When the program may be started again.
struct Backoff {
    wait: Duration,
    not_before: Option<Instant>,
}

/// A consumer that feeds one long-running program.
pub struct Stream {
    config: ExecConfig,
    current: tokio::sync::Mutex<Option<Arc<Process>>>,
    /// The wait before the next start and when that start may be: it doubles at each start
    /// that did not lead to an answer, and goes back to [`BACKOFF_FIRST`] at the first answer.
    backoff: Arc<Mutex<Backoff>>,
    /// `hub_exec_restarts_total`, `hub_exec_protocol_errors_total` (registered at the first
    /// start, in the hub's registry).
    series: OnceLock<ExecSeries>,
}

impl Stream {
    /// For `config` (checked by [`ExecConfig`]'s `build`).
    pub fn new(config: ExecConfig) -> Self {
        Self {
            config,
            current: tokio::sync::Mutex::new(None),
            backoff: Arc::new(Mutex::new(Backoff {
                wait: BACKOFF_FIRST,
                not_before: None,
            })),
            series: OnceLock::new(),
        }
    }

    fn series(&self, cx: &Context) -> &ExecSeries {
        self.series
            .get_or_init(|| exec_series(cx.metrics_registry(), cx.name()))
    }

    /// The running program, started (again, after the backoff) if it is not running.
    async fn process(&self, cx: &Context) -> Result<Arc<Process>, BoxError> {
        let mut current = self.current.lock().await;
        if let Some(p) = current.as_ref()
            && !p.has_ended()
        {
            return Ok(Arc::clone(p));
        }
        // Not within the backoff: the message is given back at once (never a sleep here, which
        // the consumer's timeout could cut short, again and again).
        {
            let mut b = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            if let Some(at) = b.not_before
                && now < at
            {
                return Err(
                    format!("the program is down; it is started again in {:?}", at - now).into(),
                );
            }
            b.not_before = Some(now + b.wait);
            b.wait = (b.wait * 2).min(BACKOFF_MAX);
        }
        if current.is_some() {
            self.series(cx).restarts.increment(1);
            warn!(
                consumer = cx.name(),
                "The program ended; starting it again."
            );
        }
        let p = self.spawn(cx).await?;
        *current = Some(Arc::clone(&p));
        Ok(p)
    }

    /// Starts the program, says hello, waits for `ready`, and starts reading its answers.
    async fn spawn(&self, cx: &Context) -> Result<Arc<Process>, BoxError> {
        let program = self.config.command.first().map_or("", String::as_str);
        let mut cmd = crate::command(&self.config, cx.name());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        let pid = child.id();
        // A start that fails (no ready, a wrong protocol) takes the program's group with it.
        let group = crate::GroupGuard::new(pid);
        let mut stdin = child.stdin.take().ok_or("the program has no stdin")?;
        let stdout = child.stdout.take().ok_or("the program has no stdout")?;
        if let Some(stderr) = child.stderr.take() {
            let span = tracing::info_span!("consumer", consumer = cx.name());
            tokio::spawn(tracing::Instrument::instrument(
                log_stderr(stderr, cx.name().to_owned()),
                span,
            ));
        }
        let hello = json!({
            "type": "hello", "protocol": PROTOCOL, "consumer": cx.name(),
            "concurrency": cx.concurrency(),
        });
        stdin
            .write_all(format!("{hello}\n").as_bytes())
            .await
            .map_err(|e| format!("{program:?}: writing the hello: {e}"))?;
        let mut lines = Lines::new(stdout, self.config.max_line_bytes);
        let expected = r#"{"type": "ready", "protocol": 1}"#;
        match tokio::time::timeout(self.config.ready_timeout, lines.next()).await {
            Err(_) => {
                return Err(format!(
                    "{program:?} did not say it was ready within {:?} (expected {expected})",
                    self.config.ready_timeout
                )
                .into());
            }
            Ok(None) => return Err(format!("{program:?} exited before it was ready").into()),
            Ok(Some(text)) => match serde_json::from_str::<Line>(&text) {
                Ok(l) if l.kind == "ready" && l.protocol == Some(PROTOCOL) => {}
                Ok(l) if l.kind == "ready" => {
                    return Err(format!(
                        "{program:?} speaks protocol {}; this hub speaks {PROTOCOL}",
                        l.protocol.map_or("(none)".into(), |p| p.to_string())
                    )
                    .into());
                }
                _ => {
                    return Err(format!(
                        "{program:?} answered the hello with {text:?}, not {expected}"
                    )
                    .into());
                }
            },
        }
        info!(consumer = cx.name(), pid, "The program is ready.");
        let process = Arc::new(Process {
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            pending: Mutex::new(HashMap::new()),
            ended: watch::channel(false).0,
            child: Mutex::new(Some(child)),
            group: Mutex::new(group.keep()),
        });
        tokio::spawn(read_answers(
            Arc::clone(&process),
            lines,
            cx.name().to_owned(),
            self.series(cx).protocol_errors.clone(),
            Arc::clone(&self.backoff),
        ));
        Ok(process)
    }
}

#[async_trait]
impl Consumer for Stream {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        self.process(cx).await.map(|_| ())
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let process = self.process(cx).await.map_err(ConsumeError::transient)?;
        let id = msg.id().to_owned();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = process
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if pending.contains_key(&id) {
                return Err(ConsumeError::transient(format!(
                    "message {id} is already with the program (a duplicate id in flight)"
                )));
            }
            pending.insert(id.clone(), tx);
        }
        // Until the answer, a dropped call (the consumer's timeout) means the program is stuck.
        let mut outstanding = Outstanding {
            process: &process,
            id: &id,
            answered: false,
        };
        let line = json!({
            "type": "message", "id": msg.id(), "topic": msg.topic(),
            "timestamp": msg.timestamp().to_string(), "headers": msg.headers(),
            "body": msg.body(), "attempt": attempt(msg),
        });
        let written = {
            let mut stdin = process.stdin.lock().await;
            match stdin.as_mut() {
                Some(w) => w.write_all(format!("{line}\n").as_bytes()).await,
                None => Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        };
        if let Err(e) = written {
            outstanding.answered = true;
            // It no longer reads its stdin: start a new one for the next message.
            process.kill();
            process
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            return Err(ConsumeError::transient(format!(
                "the program did not take the message: {e}"
            )));
        }
        let answer = rx.await;
        outstanding.answered = true;
        let answer = answer.map_err(|_| {
            ConsumeError::transient("the program ended before answering; the message is retried")
        })?;
        for p in answer.publish {
            let out = Message::builder(p.topic, p.body).headers(p.headers).build();
            cx.publish(out).await.map_err(ConsumeError::transient)?;
        }
        let reason = answer.reason.unwrap_or_default();
        match answer.kind {
            Verdict::Ack => Ok(()),
            Verdict::Retry => {
                let e = ConsumeError::transient(if reason.is_empty() {
                    "the program asked for a retry".to_owned()
                } else {
                    reason
                });
                // The hub waits at least the delay the program asked for before the retry,
                // without holding one of the consumer's `concurrency` slots.
                Err(match answer.delay {
                    Some(delay) => e.with_retry_after(delay.min(DELAY_MAX)),
                    None => e,
                })
            }
            Verdict::Reject => Err(ConsumeError::invalid(if reason.is_empty() {
                "rejected by the program".to_owned()
            } else {
                reason
            })),
        }
    }

    async fn stop(&self, cx: &Context) {
        let Some(process) = self.current.lock().await.take() else {
            return;
        };
        // Closing stdin asks the program to finish; then SIGTERM; then SIGKILL.
        process.stdin.lock().await.take();
        let mut ended = process.ended.subscribe();
        if tokio::time::timeout(EXIT_WAIT, ended.wait_for(|e| *e))
            .await
            .is_err()
        {
            let pid = process
                .child
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .and_then(Child::id);
            if let Some(pid) = pid {
                warn!(
                    consumer = cx.name(),
                    pid,
                    "The program did not exit when its stdin closed: SIGTERM to its process group."
                );
                crate::groups::signal_group(pid, rustix::process::Signal::TERM);
            }
            if tokio::time::timeout(EXIT_WAIT, ended.wait_for(|e| *e))
                .await
                .is_err()
            {
                warn!(
                    consumer = cx.name(),
                    "The program did not exit on SIGTERM: SIGKILL."
                );
                process.kill();
            }
        }
        let child = process
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut child) = child {
            if tokio::time::timeout(EXIT_WAIT, child.wait()).await.is_err() {
                // It closed its stdout but goes on: it is killed (and reaped by tokio).
                let _ = child.start_kill();
            } else {
                process
                    .group
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .release();
            }
        }
    }
}

/// A message sent and not answered: dropped so (the consumer's timeout), the program is taken
/// as stuck and killed; it starts again for the next message.
struct Outstanding<'a> {
    process: &'a Process,
    id: &'a str,
    answered: bool,
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.process
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.id);
        warn!(
            message_id = self.id,
            "No answer from the program in time: it is restarted."
        );
        self.process.kill();
    }
}

/// Reads the program's answers until its stdout ends; then fails what is outstanding (each is
/// retried) and marks the process ended.
async fn read_answers(
    process: Arc<Process>,
    mut lines: Lines,
    consumer: String,
    errors: Counter,
    backoff: Arc<Mutex<Backoff>>,
) {
    let mut answered = false;
    let bad = |what: &str, line: &str| {
        errors.increment(1);
        let shown: String = line.chars().take(200).collect();
        warn!(consumer = %consumer, line = %shown, "Not protocol from the program ({what}); ignored.");
    };
    while let Some(text) = lines.next().await {
        if text == Lines::TOO_LONG {
            bad("a line longer than max_line_bytes", "");
            continue;
        }
        let line = match serde_json::from_str::<Line>(&text) {
            Ok(l) => l,
            Err(e) => {
                bad(&format!("not a protocol line: {e}"), &text);
                continue;
            }
        };
        let kind = match line.kind.as_str() {
            "ack" => Verdict::Ack,
            "retry" => Verdict::Retry,
            "reject" => Verdict::Reject,
            other => {
                bad(&format!("unknown type {other:?}"), &text);
                continue;
            }
        };
        let Some(id) = line.id else {
            bad("a verdict without an id", &text);
            continue;
        };
        let waiting = process
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        match waiting {
            Some(tx) => {
                if !answered {
                    // It works: a later crash starts again from the shortest wait.
                    answered = true;
                    *backoff.lock().unwrap_or_else(PoisonError::into_inner) = Backoff {
                        wait: BACKOFF_FIRST,
                        not_before: None,
                    };
                }
                let delay = line.delay.as_ref().and_then(delay_of);
                if line.delay.is_some() && delay.is_none() {
                    bad(
                        "a delay that is not a duration such as \"5s\" (ignored)",
                        &text,
                    );
                }
                let _ = tx.send(Answer {
                    kind,
                    reason: line.reason,
                    publish: line.publish,
                    delay,
                });
            }
            None => bad(
                "an id that is not outstanding (unknown, or answered already)",
                &text,
            ),
        }
    }
    // Its stdout ended: every outstanding message is retried (its sender dropped).
    process
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    process.ended.send_replace(true);
}

/// The program's stdout, line by line, each at most `max` bytes (a longer one is read to its
/// end, dropped, and given as [`Lines::TOO_LONG`]).
struct Lines {
    reader: BufReader<ChildStdout>,
    max: usize,
}

impl Lines {
    const TOO_LONG: &'static str = "\u{0}too long";

    fn new(stdout: ChildStdout, max: usize) -> Self {
        Self {
            reader: BufReader::new(stdout),
            max,
        }
    }

    /// The next line (without its newline), or `None` at the end.
    async fn next(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let mut too_long = false;
        loop {
            let chunk = match self.reader.fill_buf().await {
                Ok(c) => c,
                Err(_) => return None,
            };
            if chunk.is_empty() {
                return if buf.is_empty() && !too_long {
                    None
                } else if too_long {
                    Some(Self::TOO_LONG.into())
                } else {
                    Some(String::from_utf8_lossy(&buf).into_owned())
                };
            }
            let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if !too_long {
                if buf.len() + part.len() > self.max {
                    too_long = true;
                    buf = Vec::new();
                } else {
                    buf.extend_from_slice(part);
                }
            }
            let used = done.unwrap_or(chunk.len());
            self.reader.consume(used);
            if done.is_some() {
                return Some(if too_long {
                    Self::TOO_LONG.into()
                } else {
                    String::from_utf8_lossy(&buf).into_owned()
                });
            }
        }
    }
}

/// Logs the program's stderr, line by line.
async fn log_stderr(stderr: impl AsyncRead + Unpin, consumer: String) {
    crate::each_line(stderr, |line| {
        warn!(consumer = %consumer, stream = "stderr", "{line}");
    })
    .await;
}
