//! Opening a connection so that each failure says at once what is wrong, and so that nothing of
//! a failed or abandoned attempt outlives the hub.
//!
//! lapin opens its transport (resolving, TCP, TLS) on its own thread and, with auto-recovery
//! on, retries it there with its backoff (16 tries from 1 s, doubling): a refused connection,
//! an unknown host or a failed TLS handshake was never reported, only our timeout after 15 s.
//! And when the handshake of a first connection failed (bad credentials, no such vhost), that
//! thread went on reconnecting for minutes after lapin had returned the error, and panicked
//! once the hub's runtime was gone (its timers and its resolver run on it).
//!
//! So here the first transport is ours: resolved, connected and (for `amqps://`) wrapped in TLS
//! in the caller's task, each step with its own message, under a timeout, dropped with the task
//! at shutdown. lapin is handed that stream for the AMQP handshake ([`Connection::connector`]);
//! any later transport it asks for goes through [`Reconnects`]: refused until the connection
//! has been established (a failed first handshake ends lapin's thread at once), then paced by
//! our own backoff for auto-recovery, and refused again once the backend closes.
//! [`Dialer::finished`] waits for lapin's threads to end.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_core::CancellationToken;
use lapin::tcp::{AsyncTcpStream, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use crate::stall::Recovery;

/// How long resolving, connecting and the TLS handshake may take together (unless the url's
/// `connection_timeout` says otherwise).
const TRANSPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the AMQP handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Transports lapin's recovery may ask for in a row (each after our pause) before it gives up;
/// with the delays below, about ten minutes of outage.
pub(crate) const RECOVERY_ATTEMPTS: usize = 25;
/// The pause before recovery's first transport; it doubles per further attempt.
const RECOVERY_DELAY: Duration = Duration::from_millis(200);
/// The longest pause between recovery's attempts.
const RECOVERY_DELAY_MAX: Duration = Duration::from_secs(30);
/// An attempt this long after the previous one begins a new outage (the pause starts over).
const RECOVERY_QUIET: Duration = Duration::from_secs(60);

/// A backend's connections: opens them, and stops and awaits lapin's threads at close.
pub(crate) struct Dialer {
    /// Cancelled when the backend closes: lapin may not reconnect any more.
    stopping: CancellationToken,
    /// One clone per lapin connection thread still running (held by its transport callback).
    threads: Arc<()>,
    /// Set when a recovery's transports failed as many times in a row as lapin tries: lapin
    /// then gives up without a word, the connection left "connecting" for good.
    gave_up: Arc<AtomicBool>,
}

impl Dialer {
    pub(crate) fn new() -> Self {
        Self {
            stopping: CancellationToken::new(),
            threads: Arc::new(()),
            gave_up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a connection's recovery ran out of attempts (the backend must say so and stop,
    /// rather than look connecting for ever).
    pub(crate) fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Acquire)
    }

    /// From now on lapin's threads reconnect no more (they end once their connection has).
    pub(crate) fn stop(&self) {
        self.stopping.cancel();
    }

    /// Waits (at most `within`) until no lapin thread of this backend is left; false if some is.
    pub(crate) async fn finished(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while Arc::strong_count(&self.threads) > 1 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// One attempt: the transport, then the AMQP handshake. The error says which step failed
    /// and why (the OS's or the broker's words); it never holds the password. With the
    /// connection, its [`Recovery`] attempts (for the watchdog's [`crate::stall`] check).
    pub(crate) async fn open(
        &self,
        nodes: &Arc<Nodes>,
        tls: OwnedTLSConfig,
        props: ConnectionProperties,
    ) -> Result<(Connection, Arc<Recovery>), String> {
        // The handshake's credentials, vhost and options: the same on every node (checked when
        // the backend is built).
        let uri = nodes.uris[0].clone();
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let tls = Arc::new(tls);
        // Resolve, then connect to each address in turn; TLS is `secure`'s. Used for the first
        // transport here and for recovery's on lapin's thread.
        let tcp = async move |uri: &AMQPUri, runtime| -> io::Result<_> {
            let (host, port) = host_port(uri);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| reworded(&e, format!("cannot resolve host {host}: {e}")))?
                .collect();
            let mut failure = io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve host {host}: no address"),
            );
            for addr in addrs {
                match AsyncTcpStream::connect(&runtime, addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => failure = reworded(&e, format!("cannot connect to {addr}: {e}")),
                }
            }
            Err(failure)
        };
        let secure = async move |uri: &AMQPUri, stream: AsyncTcpStream<_>| -> io::Result<_> {
            let (host, port) = host_port(uri);
            match uri.scheme {
                AMQPScheme::AMQP => Ok(stream),
                AMQPScheme::AMQPS => stream
                    .into_tls(host, OwnedTLSConfig::as_ref(&tls))
                    .await
                    .map_err(|e| {
                        reworded(&e, format!("TLS handshake with {host}:{port} failed: {e}"))
                    }),
            }
        };
        let limit = uri
            .query
            .connection_timeout
            .map_or(TRANSPORT_TIMEOUT, Duration::from_millis);
        // Each node in turn, from `start`, each within `limit`: the first that answers (and the
        // index of its node); else every node's failure, in one error.
        let any = {
            let nodes = Arc::clone(nodes);
            let runtime = runtime.clone();
            async move |start: usize| -> io::Result<_> {
                let mut failures = Vec::new();
                for i in nodes.order_from(start) {
                    let uri = &nodes.uris[i];
                    let attempt = async {
                        let plain = tcp(uri, runtime.clone()).await?;
                        secure(uri, plain).await
                    };
                    let stream = tokio::time::timeout(limit, attempt)
                        .await
                        .unwrap_or_else(|_| {
                            let (host, port) = host_port(uri);
                            Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no connection to {host}:{port} within {limit:?}"),
                            ))
                        });
                    match stream {
                        Ok(s) => return Ok((i, s)),
                        Err(e) => failures.push(e),
                    }
                }
                let kind = failures
                    .last()
                    .map_or(io::ErrorKind::NotFound, io::Error::kind);
                let text: Vec<String> = failures.iter().map(ToString::to_string).collect();
                Err(io::Error::new(kind, text.join("; ")))
            }
        };
        let (node, stream) = any(nodes.current()).await.map_err(|e| e.to_string())?;
        nodes.connected(node);
        // A handle on the socket, to end lapin's wait should its handshake fail or be given up
        // (it would otherwise wait for the broker to hang up, holding its thread).
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut abort = Abort(None);
        #[cfg(unix)]
        if let AsyncTcpStream::Plain(s) = &stream {
            use std::os::fd::AsFd;
            abort.0 = s
                .get_ref()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(std::net::TcpStream::from);
        }

        let reconnects = Arc::new(Reconnects {
            established: AtomicBool::new(false),
            stopping: self.stopping.clone(),
            pacing: Mutex::new(Pacing::default()),
            _thread: Arc::clone(&self.threads),
            failures: AtomicUsize::new(0),
            gave_up: Arc::clone(&self.gave_up),
        });
        let recovery = Arc::new(Recovery::default());
        let first = Mutex::new(Some(stream));
        let transport = {
            let reconnects = Arc::clone(&reconnects);
            let nodes = Arc::clone(nodes);
            let recovery = Arc::clone(&recovery);
            // Recovery starts with the node after the one lost (it may be the one going away),
            // and goes round all of them before its next pause.
            async move |_uri: AMQPUri, _runtime| {
                let given = first.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(stream) = given {
                    return Ok(stream);
                }
                let _attempt = recovery.attempt();
                reconnects.pause()?;
                let found = any(nodes.current() + 1).await;
                reconnects.attempted(found.is_ok());
                let (node, stream) = found?;
                nodes.connected(node);
                Ok(stream)
            }
        };
        // Retries and pauses are `Reconnects`' (lapin's own would sleep on the runtime's timers).
        let props = props.configure_backoff(|b| {
            b.with_min_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(1))
                .with_max_times(RECOVERY_ATTEMPTS)
        });
        let handshake = Connection::connector(uri, runtime, transport, props);
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| format!("the AMQP handshake did not finish within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| {
                let text = e.to_string();
                let hint = if text.contains("ACCESS_REFUSED") {
                    " (check the user name and password)"
                } else if text.contains("NOT_ALLOWED") {
                    " (check that the vhost exists and that this user may use it)"
                } else {
                    ""
                };
                format!("AMQP handshake failed: {text}{hint}")
            })?;
        reconnects.established.store(true, Ordering::Release);
        // Ours is only a second handle: the socket stays lapin's.
        drop(abort.0.take());
        Ok((conn, recovery))
    }
}

/// The host (without an IPv6 address' brackets) and port to connect to.
fn host_port(uri: &AMQPUri) -> (&str, u16) {
    let host = uri.authority.host.as_str();
    (
        host.trim_start_matches('[').trim_end_matches(']'),
        uri.authority.port,
    )
}

/// A second handle on a first transport's socket while lapin's handshake runs over it: dropped
/// before the handshake succeeded (it failed, timed out, or was given up at shutdown), it shuts
/// the socket down, which ends lapin's thread.
struct Abort(Option<std::net::TcpStream>);

impl Drop for Abort {
    fn drop(&mut self) {
        if let Some(socket) = self.0.take() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The same error kind with our words (which name the step and the address).
fn reworded(e: &io::Error, text: String) -> io::Error {
    io::Error::new(e.kind(), text)
}

/// What decides, on lapin's thread, whether and when it may open another transport.
struct Reconnects {
    /// Set once the handshake succeeded: from then on lapin's recovery may reconnect.
    established: AtomicBool,
    /// The backend is closing: no more reconnects.
    stopping: CancellationToken,
    pacing: Mutex<Pacing>,
    /// Keeps [`Dialer::threads`] counting this connection's thread until lapin drops us.
    _thread: Arc<()>,
    /// Transports that failed in a row.
    failures: AtomicUsize,
    /// [`Dialer::gave_up`].
    gave_up: Arc<AtomicBool>,
}

#[derive(Default)]
struct Pacing {
    /// The pause before the next attempt.
    delay: Duration,
    /// When the last attempt ended.
    last: Option<Instant>,
}

impl Reconnects {
    /// Before lapin's next transport: an error when there may be none (never established, or
    /// closing), else our pause. It blocks lapin's own thread, which has nothing else to do
    /// meanwhile, on the OS's clock (the runtime's may be gone at shutdown), and ends early when
    /// the backend closes.
    fn pause(&self) -> io::Result<()> {
        let refused = |why: &str| io::Error::new(io::ErrorKind::ConnectionAborted, why.to_owned());
        if !self.established.load(Ordering::Acquire) {
            return Err(refused(
                "the connection closed before the AMQP handshake completed",
            ));
        }
        let delay = {
            let mut p = self.pacing.lock().unwrap_or_else(PoisonError::into_inner);
            let again = p.last.is_some_and(|t| t.elapsed() < RECOVERY_QUIET);
            p.delay = if again {
                (p.delay * 2).clamp(RECOVERY_DELAY, RECOVERY_DELAY_MAX)
            } else {
                RECOVERY_DELAY
            };
            p.delay
        };
        let until = Instant::now() + delay;
        loop {
            if self.stopping.is_cancelled() {
                return Err(refused("the hub is shutting down"));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    fn attempted(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Release);
        } else if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= RECOVERY_ATTEMPTS {
            self.gave_up.store(true, Ordering::Release);
        }
        self.pacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last = Some(Instant::now());
    }
}

/// Called when a connection lands on a node: its index, its `host:port`, and whether it is
/// another node than before.
pub(crate) type OnNode = Box<dyn Fn(usize, &str, bool) + Send + Sync>;

/// The broker's addresses (`url`, or `urls` for a cluster's nodes) and the one a connection is
/// on. Tried in turn: a first connection from the node it was last on, a recovery from the next
/// one (the node it lost may be the one going away).
pub(crate) struct Nodes {
    uris: Vec<AMQPUri>,
    /// `host:port` of each, for logs and metrics.
    names: Vec<String>,
    current: AtomicUsize,
    on_node: OnNode,
}

impl Nodes {
    /// Parses the addresses; they must differ only in host and port (the handshake's
    /// credentials, vhost and options are the first's, on whichever node answers).
    ///
    /// # Errors
    /// An address that does not parse, none at all, or addresses that differ in more than host
    /// and port. The text never holds a password.
    pub(crate) fn parse(urls: &[String]) -> Result<Vec<AMQPUri>, String> {
        let mut uris = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let uri: AMQPUri = url
                .parse()
                .map_err(|e| format!("url {:?}: {e}", crate::redact(url)))?;
            let key = |u: &AMQPUri| {
                (
                    u.scheme.clone(),
                    u.authority.userinfo.clone(),
                    u.vhost.clone(),
                    u.query.heartbeat,
                    u.query.frame_max,
                )
            };
            if let Some(first) = uris.first()
                && key(first) != key(&uri)
            {
                return Err(format!(
                    "urls[{i}] {:?}: the nodes of one backend differ only in host and port (scheme, user, password, vhost and options are those of {:?})",
                    crate::redact(url),
                    crate::redact(&urls[0]),
                ));
            }
            uris.push(uri);
        }
        if uris.is_empty() {
            return Err("no broker address".into());
        }
        Ok(uris)
    }

    pub(crate) fn new(uris: Vec<AMQPUri>, on_node: OnNode) -> Arc<Self> {
        let names = uris
            .iter()
            .map(|u| {
                let (host, port) = host_port(u);
                format!("{host}:{port}")
            })
            .collect();
        Arc::new(Self {
            uris,
            names,
            current: AtomicUsize::new(0),
            on_node,
        })
    }

    /// Every node's index, once, from `start` (taken modulo their number) round.
    fn order_from(&self, start: usize) -> impl Iterator<Item = usize> + use<> {
        let n = self.uris.len();
        (0..n).map(move |k| (start + k) % n)
    }

    fn current(&self) -> usize {
        self.current.load(Ordering::Acquire)
    }

    fn connected(&self, node: usize) {
        let before = self.current.swap(node, Ordering::AcqRel);
        (self.on_node)(node, &self.names[node], before != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As many failed transports in a row as lapin tries is lapin giving up: said, so the
    /// backend stops instead of looking "connecting" for ever; a success in between starts over.
    #[test]
    fn recovery_running_out_of_attempts_is_noticed() {
        let dialer = Dialer::new();
        let r = Reconnects {
            established: AtomicBool::new(true),
            stopping: dialer.stopping.clone(),
            pacing: Mutex::new(Pacing::default()),
            _thread: Arc::clone(&dialer.threads),
            failures: AtomicUsize::new(0),
            gave_up: Arc::clone(&dialer.gave_up),
        };
        for _ in 0..RECOVERY_ATTEMPTS - 1 {
            r.attempted(false);
        }
        r.attempted(true);
        for _ in 0..RECOVERY_ATTEMPTS - 1 {
            r.attempted(false);
        }
        assert!(!dialer.gave_up());
        r.attempted(false);
        assert!(dialer.gave_up());
    }

    #[test]
    fn nodes_differ_only_in_host_and_port() {
        let urls = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let ok = Nodes::parse(&urls(&[
            "amqp://u:p@127.0.0.1:5681/%2f",
            "amqp://u:p@127.0.0.2:5682/%2f",
        ]))
        .unwrap();
        assert_eq!(ok.len(), 2);
        let nodes = Nodes::new(ok, Box::new(|_, _, _| {}));
        assert_eq!(nodes.order_from(1).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(nodes.order_from(3).collect::<Vec<_>>(), [1, 0]);
        for other in [
            "amqp://u:q@127.0.0.2:5682/%2f",
            "amqp://v:p@127.0.0.2:5682/%2f",
            "amqp://u:p@127.0.0.2:5682/other",
            "amqps://u:p@127.0.0.2:5682/%2f",
        ] {
            let err = Nodes::parse(&urls(&["amqp://u:p@127.0.0.1:5681/%2f", other])).unwrap_err();
            assert!(err.contains("urls[1]"), "{err}");
            assert!(
                !err.contains(":p@") && !err.contains(":q@"),
                "a password: {err}"
            );
        }
    }
}
