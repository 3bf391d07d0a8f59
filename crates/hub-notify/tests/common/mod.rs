//! A real IRC server (Debian's `ngircd`, started on a free port of 127.0.0.1 with a temporary
//! configuration) and a listening client that records what is said in a channel.

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hub_core::metrics::Counter;
use hub_core::{CancellationToken, Context, Publisher, Resources};
use hub_engine::MemoryBackend;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A context as the hub gives one.
pub fn context() -> Context {
    let publisher = Publisher::new(
        Arc::new(MemoryBackend::new()),
        Counter::noop(),
        Counter::noop(),
    );
    Context::new(
        "notify",
        publisher,
        Resources::new(),
        CancellationToken::new(),
    )
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An `ngircd` process; killed when dropped.
pub struct Ircd {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Ircd {
    /// Starts ngircd on a free port and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(free_port(), "").await
    }

    /// Starts ngircd on `port`, with `extra` appended to its configuration.
    pub async fn start_with(port: u16, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ircd = Self {
            port,
            child: None,
            dir,
        };
        ircd.write_config(extra);
        ircd.spawn().await;
        ircd
    }

    fn write_config(&self, extra: &str) {
        // MaxPenaltyTime = 0: no flood throttling, so arrival times show the hub's pacing.
        let config = format!(
            "[Global]\nName = irc.test\nInfo = test\nPorts = {port}\nListen = 127.0.0.1\n\
             MotdPhrase = test\n\
             [Options]\nPAM = no\nIdent = no\nDNS = no\n\
             [Limits]\nMaxPenaltyTime = 0\nPingTimeout = 120\nPongTimeout = 60\n{extra}",
            port = self.port
        );
        std::fs::write(self.dir.path().join("ngircd.conf"), config).unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) {
        let child = Command::new("ngircd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("ngircd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run ngircd ({e}): install it (apt-get install -y ngircd)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "ngircd did not listen on port {} within 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server (every connection drops).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same configuration.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Ircd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One PRIVMSG seen in the channel: its text and when it arrived.
pub type Heard = (String, Instant);

/// A client in the channel that records every PRIVMSG; it reconnects and rejoins when the
/// server goes away.
pub struct Listener {
    heard: Arc<Mutex<Vec<Heard>>>,
    /// How many times it joined.
    joins: watch::Receiver<u32>,
    stop: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Listener {
    /// Connects as `nick`, joins `channel`, and returns once joined.
    pub async fn join(port: u16, nick: &str, channel: &str) -> Self {
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let (tx, joins) = watch::channel(0u32);
        let stop = CancellationToken::new();
        let task_heard = Arc::clone(&heard);
        let (nick, channel) = (nick.to_owned(), channel.to_owned());
        let task_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = session(port, &nick, &channel, &task_heard, &tx) => {}
                    () = task_stop.cancelled() => return,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let mut listener = Self { heard, joins, stop };
        listener.wait_joined(1).await;
        listener
    }

    /// Waits (up to 20 s) until it joined `n` times in all.
    pub async fn wait_joined(&mut self, n: u32) {
        tokio::time::timeout(Duration::from_secs(20), self.joins.wait_for(|&j| j >= n))
            .await
            .unwrap_or_else(|_| panic!("the listener did not join (time {n}) within 20 s"))
            .unwrap();
    }

    /// Every PRIVMSG heard so far.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `n` lines were heard in all; returns them.
    pub async fn wait_lines(&self, n: usize, within: Duration) -> Vec<Heard> {
        let deadline = Instant::now() + within;
        loop {
            let heard = self.heard();
            if heard.len() >= n {
                return heard;
            }
            assert!(
                Instant::now() < deadline,
                "heard {} lines of {n} within {within:?}: {:?}",
                heard.len(),
                heard.iter().map(|(t, _)| t).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn session(
    port: u16,
    nick: &str,
    channel: &str,
    heard: &Mutex<Vec<Heard>>,
    joins: &watch::Sender<u32>,
) {
    let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let (reader, mut writer) = stream.into_split();
    let hello = format!("NICK {nick}\r\nUSER {nick} 0 * :listener\r\n");
    if writer.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut words = line.splitn(4, ' ');
        let (first, second, third) = (words.next(), words.next(), words.next());
        if first == Some("PING") {
            let pong = format!("PONG {}\r\n", second.unwrap_or(":x"));
            let _ = writer.write_all(pong.as_bytes()).await;
            continue;
        }
        match second {
            Some("001") => {
                let join = format!("JOIN {channel}\r\n");
                let _ = writer.write_all(join.as_bytes()).await;
            }
            Some("JOIN") if first.is_some_and(|p| p.starts_with(&format!(":{nick}!"))) => {
                joins.send_modify(|j| *j += 1);
            }
            Some("PRIVMSG") if third == Some(channel) => {
                let text = words
                    .next()
                    .map(|t| t.strip_prefix(':').unwrap_or(t))
                    .unwrap_or_default();
                heard
                    .lock()
                    .unwrap()
                    .push((text.to_owned(), Instant::now()));
            }
            _ => {}
        }
    }
}
