//! Dead letters kept by the hub, for backends that do not keep their own (ZeroMQ, memory):
//! the record, and the two sinks: a JSON-lines file and a topic on a backend.
//!
//! A message becomes a dead letter when its attempts run out, or at once when the consumer
//! found it invalid. The worker that handled it writes it to the consumer's sink before the
//! message counts as settled; a sink that fails is tried again (with backoff) until it takes
//! the letter or the hub shuts down, and then the letter is logged at error level, whole. With
//! no sink configured, every dead letter is logged at error level, whole, and counted: nothing
//! is dropped silently.
//!
//! The file is shared with `hub dead requeue`, which rewrites it: both take an exclusive lock
//! on `<file>.lock` (a file of its own, so that the rewrite's rename never leaves a writer
//! holding the lock of a replaced file), and the writer opens the file afresh for each letter.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use hub_core::{BoxError, Message, Publisher, Timestamp};

/// One dead letter, as written to a file (one JSON object per line) or published on a topic
/// (the body). A contract: `hub dead` reads it, and so may anyone's tools.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The consumer that gave up on the message (`[consumers.<id>]`).
    pub consumer: String,
    /// Why: the consumer's error, its timeout or its panic, with the outcome.
    pub reason: String,
    /// Attempts made, the last included.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub dead_lettered_at: Timestamp,
    /// The hub's name (`[hub] name`).
    pub hub: String,
    /// The backend that delivered it (`[backends.<id>]`).
    pub backend: String,
    /// The whole message: id, topic, timestamp, headers, body (the envelope of
    /// [`Message::to_json`]).
    pub message: Box<RawValue>,
}

impl DeadLetter {
    /// The record of `msg`, dead-lettered now.
    pub fn new(msg: &Message, consumer: &str, reason: &str, attempts: u32) -> Self {
        let envelope = RawValue::from_string(msg.to_json()).unwrap_or_default();
        Self {
            consumer: consumer.to_owned(),
            reason: reason.to_owned(),
            attempts,
            dead_lettered_at: Timestamp::now(),
            hub: String::new(),
            backend: String::new(),
            message: envelope,
        }
    }

    /// The message it holds.
    ///
    /// # Errors
    /// When the envelope is not a message (a hand-edited file).
    pub fn to_message(&self) -> Result<Message, serde_json::Error> {
        Message::from_json(self.message.get())
    }

    /// The record as one line of JSON (no newline).
    pub fn to_line(&self) -> String {
        // Strings, numbers and an already valid JSON value: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a consumer's dead letters go, as configured (`dead_letter = { file = ".." }` or
/// `{ topic = "..", backend = ".." }`); the engine builds the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// Appended to this JSON-lines file.
    File(PathBuf),
    /// Published on `topic` through backend `backend` (the consumer's own when `None`).
    Topic {
        /// The topic.
        topic: String,
        /// The backend id.
        backend: Option<String>,
    },
}

/// Where a consumer's dead letters go.
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// `file` or `topic`: the `sink` label of `hub_consumer_dead_letters_total`.
    fn kind(&self) -> &'static str;

    /// Where, in words, for logs.
    fn describe(&self) -> String;

    /// Stores one letter; `Ok` once it is durable (the file synced, the publish confirmed).
    ///
    /// # Errors
    /// When it could not be stored; the caller tries again.
    async fn put(&self, letter: &DeadLetter) -> Result<(), BoxError>;
}

/// Dead letters appended to a JSON-lines file, synced before each counts as settled.
#[derive(Debug, Clone)]
pub struct FileSink {
    path: PathBuf,
}

impl FileSink {
    /// A sink appending to `path` (created with its directory when absent).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file beside a dead-letter file: `<file>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive lock of dead-letter file `path` (blocking until it is free); released
/// when the returned file is dropped.
///
/// # Errors
/// When the lock file cannot be created or locked.
pub fn lock_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))?;
    lock.lock()?;
    Ok(lock)
}

/// Appends `lines` to dead-letter file `path` under its lock, then syncs it.
///
/// # Errors
/// Any I/O error (nothing counts as written then).
pub fn append_lines(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let _lock = lock_file(path)?;
    let mut file = OpenOptions::new().create(true).append(true).open(path)?;
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    let before = file.metadata()?.len();
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_data());
    if written.is_err() {
        // A partial line (a full disk) would join the next letter into one unreadable line:
        // the file goes back to what it was.
        let _ = file.set_len(before);
    }
    written
}

#[async_trait]
impl DeadLetterSink for FileSink {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn put(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        let path = self.path.clone();
        let line = letter.to_line();
        tokio::task::spawn_blocking(move || append_lines(&path, &[line]))
            .await
            .map_err(|e| -> BoxError { format!("dead-letter writer: {e}").into() })?
            .map_err(|e| -> BoxError { format!("{}: {e}", self.path.display()).into() })
    }
}

/// Dead letters published on a topic of a backend: the record is the body.
pub struct TopicSink {
    publisher: Publisher,
    topic: String,
    backend: String,
}

impl TopicSink {
    /// A sink publishing on `topic` through `publisher` (of backend `backend`).
    pub fn new(publisher: Publisher, topic: impl Into<String>, backend: impl Into<String>) -> Self {
        Self {
            publisher,
            topic: topic.into(),
            backend: backend.into(),
        }
    }
}

#[async_trait]
impl DeadLetterSink for TopicSink {
    fn kind(&self) -> &'static str {
        "topic"
    }

    fn describe(&self) -> String {
        format!("topic {} on backend {}", self.topic, self.backend)
    }

    async fn put(&self, letter: &DeadLetter) -> Result<(), BoxError> {
        let body = serde_json::to_value(letter)?;
        self.publisher
            .publish(Message::new(self.topic.clone(), body))
            .await
            .map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_file_sink_appends_one_line_per_letter_that_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::new(dir.path().join("sub/dead.jsonl"));
        let msg = Message::builder("a.b", json!({"n": 1}))
            .header("h", "v")
            .build();
        for reason in ["first", "second"] {
            sink.put(&DeadLetter::new(&msg, "c", reason, 3))
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(sink.path()).unwrap();
        let letters: Vec<DeadLetter> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(letters.len(), 2);
        assert_eq!(letters[1].reason, "second");
        assert_eq!(letters[0].attempts, 3);
        let back = letters[0].to_message().unwrap();
        assert_eq!(back.id(), msg.id());
        assert_eq!(back.topic(), "a.b");
        assert_eq!(back.body(), &json!({"n": 1}));
        assert_eq!(back.header("h"), Some(&json!("v")));
        assert!(lock_path(sink.path()).exists());
    }
}
