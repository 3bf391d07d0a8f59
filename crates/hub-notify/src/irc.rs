//! The IRC sink: one connection task per consumer (register, join, answer PING, reconnect with
//! backoff and rejoin) and PRIVMSG lines written by the consumer's calls.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hub_core::{CancellationToken, ConsumeError};
use hub_http::Secret;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

/// The most bytes of one IRC line, CRLF included (RFC 1459, 2.3).
pub(crate) const LINE_BYTES: usize = 512;
/// How long a TCP connect (and TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to welcome us (001) once connected.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one line may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence from the server after which we PING it...
const IDLE: Duration = Duration::from_secs(180);
/// ...and how long it then has to answer before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(60);
/// A line from the server longer than this is dropped (IRCv3 tags allow 8 KiB).
const MAX_READ_LINE: usize = 16 * 1024;
/// `USER`'s real name.
const REALNAME: &str = "hub notifier";

/// Where and as whom to connect (checked by the config).
pub(crate) struct IrcOptions {
    pub server: String,
    pub port: u16,
    /// TLS with these extra CA certificates (besides the system's roots), or plain TCP.
    pub tls: Option<Vec<CertificateDer<'static>>>,
    pub nick: String,
    pub channel: String,
    pub password: Option<Secret>,
    pub reconnect_delay: Duration,
    pub reconnect_delay_max: Duration,
}

impl fmt::Debug for IrcOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IrcOptions")
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("nick", &self.nick)
            .field("channel", &self.channel)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Any stream the connection runs on (TCP, or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// The live connection's writing side.
struct Link {
    writer: WriteHalf<Stream>,
    /// In the channel (the server echoed our JOIN): PRIVMSG may be sent.
    joined: bool,
    /// Cancelled by a send that failed: the connection task drops the connection.
    broken: CancellationToken,
}

struct Shared {
    opts: IrcOptions,
    link: tokio::sync::Mutex<Option<Link>>,
}

/// The sink: sends lines on the connection its task keeps up.
pub(crate) struct IrcSink {
    shared: Arc<Shared>,
    /// Ends the connection task (at `stop`, or when the consumer is dropped).
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for IrcSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IrcSink")
            .field("options", &self.shared.opts)
            .finish_non_exhaustive()
    }
}

impl Drop for IrcSink {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl IrcSink {
    pub(crate) fn new(opts: IrcOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                opts,
                link: tokio::sync::Mutex::new(None),
            }),
            cancel: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    /// `server:port`, for messages.
    fn address(&self) -> String {
        address(&self.shared.opts)
    }

    /// Starts the connection task (once; later calls do nothing).
    ///
    /// # Errors
    /// The TLS configuration cannot be made.
    pub(crate) fn start(&self) -> Result<(), String> {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.is_some() {
            return Ok(());
        }
        let tls = match &self.shared.opts.tls {
            Some(extra) => Some(Arc::new(tls_config(extra)?)),
            None => None,
        };
        *task = Some(tokio::spawn(run(
            Arc::clone(&self.shared),
            tls,
            self.cancel.clone(),
        )));
        Ok(())
    }

    /// Whether the sink is in its channel now (a line sent now would be delivered).
    pub(crate) async fn joined(&self) -> bool {
        self.shared
            .link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.joined)
    }

    /// Sends one PRIVMSG to the channel. `text` is one line already cut to fit.
    ///
    /// # Errors
    /// Transient: not connected, not in the channel (yet), or the write failed.
    pub(crate) async fn send(&self, text: &str) -> Result<(), ConsumeError> {
        let opts = &self.shared.opts;
        let mut slot = self.shared.link.lock().await;
        let Some(link) = slot.as_mut() else {
            return Err(ConsumeError::transient(format!(
                "not connected to the IRC server {} (reconnecting)",
                self.address()
            )));
        };
        if !link.joined {
            return Err(ConsumeError::transient(format!(
                "connected to {} but not in {} (yet)",
                self.address(),
                opts.channel
            )));
        }
        let line = format!("PRIVMSG {} :{text}\r\n", opts.channel);
        match write_line(&mut link.writer, &line).await {
            Ok(()) => Ok(()),
            Err(e) => {
                link.broken.cancel();
                *slot = None;
                Err(ConsumeError::transient(format!(
                    "sending to {} failed: {e}",
                    self.address()
                )))
            }
        }
    }

    /// Says QUIT (when connected) and ends the connection task.
    pub(crate) async fn stop(&self) {
        let link = self.shared.link.lock().await.take();
        self.cancel.cancel();
        if let Some(mut link) = link {
            let _ = write_line(&mut link.writer, "QUIT :hub stopping\r\n").await;
            let _ = timeout(Duration::from_secs(2), link.writer.shutdown()).await;
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = timeout(Duration::from_secs(5), task).await;
        }
    }
}

fn address(opts: &IrcOptions) -> String {
    if opts.server.contains(':') {
        format!("[{}]:{}", opts.server, opts.port)
    } else {
        format!("{}:{}", opts.server, opts.port)
    }
}

/// Writes one whole line (CRLF included) and flushes it, within [`WRITE_TIMEOUT`].
async fn write_line(writer: &mut WriteHalf<Stream>, line: &str) -> io::Result<()> {
    let write = async {
        writer.write_all(line.as_bytes()).await?;
        writer.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the line was not written within 10 s",
        )),
    }
}

/// The connection task: connects, and after each loss reconnects with a doubling delay (reset
/// once a connection got into the channel), until cancelled.
async fn run(
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ClientConfig>>,
    cancel: CancellationToken,
) {
    let opts = &shared.opts;
    let mut delay = opts.reconnect_delay;
    loop {
        let mut joined = false;
        let ended = tokio::select! {
            r = session(&shared, tls.as_ref(), &cancel, &mut joined) => r,
            () = cancel.cancelled() => Ok(()),
        };
        shared.link.lock().await.take();
        if cancel.is_cancelled() {
            return;
        }
        if joined {
            delay = opts.reconnect_delay;
        }
        let why = ended.err().unwrap_or_else(|| "connection ended".into());
        warn!(server = %address(opts), channel = %opts.channel, error = %why,
            retry_in_ms = delay.as_millis() as u64, "IRC connection lost; reconnecting");
        tokio::select! {
            () = sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
        delay = delay.saturating_mul(2).min(opts.reconnect_delay_max);
    }
}

/// Connects (TCP, then TLS when configured).
async fn connect(
    opts: &IrcOptions,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Stream, String> {
    let connecting = async {
        let tcp = TcpStream::connect((opts.server.as_str(), opts.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Box::new(tcp) as Stream),
            Some(config) => {
                let name =
                    ServerName::try_from(opts.server.clone()).map_err(|e| format!("TLS: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                Ok(Box::new(stream) as Stream)
            }
        }
    };
    timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| format!("cannot connect within {} s", CONNECT_TIMEOUT.as_secs()))?
}

/// Writes a protocol line of the task's own (registration, PONG, JOIN) on the live link.
async fn send_raw(shared: &Shared, line: &str) -> Result<(), String> {
    let mut slot = shared.link.lock().await;
    let Some(link) = slot.as_mut() else {
        return Err("the connection was dropped".into());
    };
    write_line(&mut link.writer, line)
        .await
        .map_err(|e| format!("write failed: {e}"))
}

/// Marks the link as in the channel (or not).
async fn set_joined(shared: &Shared, joined: bool) {
    if let Some(link) = shared.link.lock().await.as_mut() {
        link.joined = joined;
    }
}

/// One connection, from connect to its loss. Returns why it ended; `joined` tells whether it
/// got into the channel.
async fn session(
    shared: &Shared,
    tls: Option<&Arc<rustls::ClientConfig>>,
    cancel: &CancellationToken,
    joined: &mut bool,
) -> Result<(), String> {
    let opts = &shared.opts;
    let stream = connect(opts, tls).await?;
    let (reader, writer) = tokio::io::split(stream);
    let broken = CancellationToken::new();
    *shared.link.lock().await = Some(Link {
        writer,
        joined: false,
        broken: broken.clone(),
    });
    debug!(server = %address(opts), "IRC connected; registering");
    let mut lines = LineReader::new(reader);
    let mut nick = opts.nick.clone();
    if let Some(password) = &opts.password {
        send_raw(shared, &format!("PASS {}\r\n", password.expose())).await?;
    }
    send_raw(shared, &format!("NICK {nick}\r\n")).await?;
    send_raw(shared, &format!("USER {} 0 * :{REALNAME}\r\n", opts.nick)).await?;

    let register_by = Instant::now() + REGISTER_TIMEOUT;
    let mut registered = false;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    loop {
        let deadline = if !registered {
            register_by
        } else if pinged {
            last_heard + IDLE + PING_TIMEOUT
        } else {
            last_heard + IDLE
        };
        let line = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = broken.cancelled() => return Err("a send failed".into()),
            () = sleep_until(deadline) => {
                if !registered {
                    return Err(format!("not welcomed within {} s", REGISTER_TIMEOUT.as_secs()));
                }
                if pinged {
                    return Err(format!("no answer to PING within {} s", PING_TIMEOUT.as_secs()));
                }
                send_raw(shared, "PING :hub\r\n").await?;
                pinged = true;
                continue;
            }
            read = lines.next() => match read {
                Ok(Some(line)) => line,
                Ok(None) => return Err("the server closed the connection".into()),
                Err(e) => return Err(format!("read failed: {e}")),
            },
        };
        last_heard = Instant::now();
        pinged = false;
        let Some(msg) = parse(&line) else { continue };
        match msg.command {
            "PING" => {
                let token = msg.params.first().copied().unwrap_or_default();
                send_raw(shared, &format!("PONG :{token}\r\n")).await?;
            }
            // Welcome: registered, under the nick the server says.
            "001" => {
                registered = true;
                if let Some(n) = msg.params.first() {
                    (*n).clone_into(&mut nick);
                }
                info!(server = %address(opts), %nick, "IRC registered; joining {}", opts.channel);
                send_raw(shared, &format!("JOIN {}\r\n", opts.channel)).await?;
            }
            // Nick taken or refused while registering: try another.
            "432" | "433" | "436" | "437" if !registered => {
                nick = next_nick(&nick);
                debug!(%nick, "nick taken; trying another");
                send_raw(shared, &format!("NICK {nick}\r\n")).await?;
            }
            "JOIN"
                if msg.nick().is_some_and(|n| same(n, &nick))
                    && msg.params.first().is_some_and(|c| same(c, &opts.channel)) =>
            {
                set_joined(shared, true).await;
                *joined = true;
                info!(server = %address(opts), channel = %opts.channel, %nick, "IRC joined");
            }
            "NICK" if msg.nick().is_some_and(|n| same(n, &nick)) => {
                if let Some(n) = msg.params.first() {
                    (*n).clone_into(&mut nick);
                }
            }
            "KICK"
                if msg.params.first().is_some_and(|c| same(c, &opts.channel))
                    && msg.params.get(1).is_some_and(|n| same(n, &nick)) =>
            {
                set_joined(shared, false).await;
                warn!(channel = %opts.channel, reason = msg.params.get(2).copied().unwrap_or(""),
                    "kicked from the IRC channel; joining again");
                send_raw(shared, &format!("JOIN {}\r\n", opts.channel)).await?;
            }
            // Cannot join: no such channel, full, invite only, banned, bad key, too many.
            "403" | "405" | "471" | "473" | "474" | "475" => {
                return Err(format!(
                    "cannot join {}: {}",
                    opts.channel,
                    msg.params.last().copied().unwrap_or(msg.command)
                ));
            }
            // Password refused, or not allowed on this server.
            "464" | "465" => {
                return Err(format!(
                    "refused by the server: {}",
                    msg.params.last().copied().unwrap_or(msg.command)
                ));
            }
            "ERROR" => {
                return Err(format!(
                    "the server said: {}",
                    msg.params.last().copied().unwrap_or("ERROR")
                ));
            }
            _ => {}
        }
    }
}

/// IRC's case-insensitive comparison (ASCII, plus `[]\~` as `{}|^`).
fn same(a: &str, b: &str) -> bool {
    fn fold(c: u8) -> u8 {
        match c {
            b'[' => b'{',
            b']' => b'}',
            b'\\' => b'|',
            b'~' => b'^',
            c => c.to_ascii_lowercase(),
        }
    }
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// Another nick when ours is taken: `_` appended (up to 30), else the last character cycled.
fn next_nick(nick: &str) -> String {
    if nick.len() < 30 {
        return format!("{nick}_");
    }
    let mut out: String = nick.chars().take(29).collect();
    let last = nick.chars().last().unwrap_or('0');
    out.push(match last {
        '0'..='8' => char::from(last as u8 + 1),
        _ => '0',
    });
    out
}

/// One parsed line from the server.
#[derive(Debug, PartialEq)]
struct Line<'a> {
    /// `nick!user@host` or a server name.
    prefix: Option<&'a str>,
    command: &'a str,
    params: Vec<&'a str>,
}

impl Line<'_> {
    /// The nick of the prefix (`nick` of `nick!user@host`).
    fn nick(&self) -> Option<&str> {
        let p = self.prefix?;
        Some(p.split(['!', '@']).next().unwrap_or(p))
    }
}

/// `[@tags] [:prefix] COMMAND params... [:trailing]`; `None` for an empty line.
fn parse(line: &str) -> Option<Line<'_>> {
    let mut rest = line.trim_end_matches(['\r', '\n']);
    if rest.starts_with('@') {
        rest = rest.split_once(' ').map_or("", |(_, r)| r);
    }
    rest = rest.trim_start_matches(' ');
    let mut prefix = None;
    if let Some(p) = rest.strip_prefix(':') {
        let (p, r) = p.split_once(' ').unwrap_or((p, ""));
        prefix = Some(p);
        rest = r.trim_start_matches(' ');
    }
    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if command.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing);
            break;
        }
        let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
        params.push(p);
        rest = r;
    }
    Some(Line {
        prefix,
        command,
        params,
    })
}

/// Reads CRLF (or LF) terminated lines, each as text (invalid UTF-8 replaced). Cancel-safe:
/// what was read stays in its buffer.
struct LineReader {
    reader: ReadHalf<Stream>,
    buf: Vec<u8>,
    /// Dropping the rest of a line too long to keep.
    skipping: bool,
}

impl LineReader {
    fn new(reader: ReadHalf<Stream>) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(1024),
            skipping: false,
        }
    }

    /// The next line, or `None` at the end of the stream.
    async fn next(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
            }
            if self.buf.len() > MAX_READ_LINE {
                self.buf.clear();
                self.skipping = true;
            }
            let mut chunk = [0u8; 4096];
            let n = self.reader.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// TLS 1.2 and 1.3 on the `ring` provider; the system's roots and `extra`.
fn tls_config(extra: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        debug!(error = %e, "a system CA certificate could not be loaded");
    }
    roots.add_parsable_certificates(found.certs);
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("ca_file: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        warn!("no CA certificates found on this system and no ca_file set: IRC over TLS will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every certificate of a PEM file, each checked usable as a CA.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM file of certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lines_parse() {
        let l = parse(":nick!u@h PRIVMSG #chan :hello there\r\n").unwrap();
        assert_eq!(l.prefix, Some("nick!u@h"));
        assert_eq!(l.nick(), Some("nick"));
        assert_eq!(l.command, "PRIVMSG");
        assert_eq!(l.params, ["#chan", "hello there"]);
        let l = parse("PING :irc.test").unwrap();
        assert_eq!(
            (l.prefix, l.command, l.params),
            (None, "PING", vec!["irc.test"])
        );
        let l = parse("@time=x :irc.test 001 bot :Welcome").unwrap();
        assert_eq!((l.command, l.params), ("001", vec!["bot", "Welcome"]));
        let l = parse(":a!b@c JOIN #t").unwrap();
        assert_eq!(l.params, ["#t"]);
        assert!(parse("").is_none());
    }

    #[test]
    fn nicks_compare_the_irc_way_and_get_alternatives() {
        assert!(same("Bot[1]", "bot{1}"));
        assert!(!same("bot", "bot_"));
        assert_eq!(next_nick("bot"), "bot_");
        let long = "a".repeat(30);
        assert_eq!(next_nick(&long), format!("{}0", "a".repeat(29)));
    }
}
