//! One SUB socket per `subscribe` endpoint: connect with retries, filter by prefix, decode,
//! deliver.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use hub_core::metrics::Recorder;
use hub_core::{BackendMetrics, CancellationToken, Delivery, Sink};
use hub_engine::log_throttle::LogThrottle;
use hub_engine::metrics::{ZeroMqEndpointSeries, zeromq_endpoint};
use tracing::{debug, info, warn};
use zeromq::{CodecError, Socket, SocketEvent, SocketOptions, SocketRecv, SubSocket};

use crate::codec::{self, Format};

/// How long one connect attempt may take (the crate's own default is 30 s, and it blocks).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Per endpoint: connection state and the fedmsg sequence gap count, with their series.
pub(crate) struct EndpointStats {
    pub endpoint: String,
    pub connected: AtomicBool,
    pub gaps: AtomicU64,
    /// Registered in the hub's registry when the backend starts.
    series: OnceLock<ZeroMqEndpointSeries>,
}

impl EndpointStats {
    pub fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            connected: AtomicBool::new(false),
            gaps: AtomicU64::new(0),
            series: OnceLock::new(),
        }
    }

    /// Registers the endpoint's series in the hub's `registry` (once; a second run keeps them).
    pub fn register(&self, registry: &dyn Recorder, backend: &str) {
        let series = self
            .series
            .get_or_init(|| zeromq_endpoint(registry, backend, &self.endpoint));
        series.gaps.absolute(self.gaps.load(Ordering::Relaxed));
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        if let Some(s) = self.series.get() {
            s.connected.set(if up { 1.0 } else { 0.0 });
        }
    }

    fn gap(&self, missing: u64) {
        self.gaps.fetch_add(missing, Ordering::Relaxed);
        if let Some(s) = self.series.get() {
            s.gaps.increment(missing);
        }
    }
}

/// The backend counts as connected while at least one endpoint is (or it has none to read).
#[derive(Clone)]
pub(crate) struct Readiness {
    metrics: BackendMetrics,
    endpoints: Vec<Arc<EndpointStats>>,
}

impl Readiness {
    pub fn new(metrics: BackendMetrics, endpoints: Vec<Arc<EndpointStats>>) -> Self {
        Self { metrics, endpoints }
    }

    pub fn update(&self) {
        let up = self.endpoints.is_empty()
            || self
                .endpoints
                .iter()
                .any(|e| e.connected.load(Ordering::Relaxed));
        self.metrics.set_connected(up);
    }
}

pub(crate) struct Endpoint {
    pub backend: String,
    pub stats: Arc<EndpointStats>,
    pub prefixes: Vec<String>,
    pub format: Format,
    pub max_message_bytes: usize,
    pub sink: Sink,
    pub metrics: BackendMetrics,
    pub readiness: Readiness,
    pub shutdown: CancellationToken,
}

/// Connects (retrying forever with backoff), then reads until shutdown. Once connected, the
/// crate's SUB socket reconnects and resubscribes by itself; its monitor tells us when.
pub(crate) async fn run(ep: Endpoint) {
    let name = ep.stats.endpoint.clone();
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u64;
    loop {
        let mut options = SocketOptions::default();
        options.connect_timeout(CONNECT_TIMEOUT);
        options.max_message_size(ep.max_message_bytes);
        let mut socket = SubSocket::with_options(options);
        let mut monitor = socket.monitor().boxed();
        let attempt = tokio::select! {
            () = ep.shutdown.cancelled() => return,
            r = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), socket.connect(&name)) => r,
        };
        match attempt {
            Ok(Ok(())) => {}
            failed => {
                failures += 1;
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                // First failure, then one line every ~30 attempts: a down publisher is normal.
                if failures == 1 || failures.is_multiple_of(30) {
                    warn!(backend = %ep.backend, endpoint = %name, attempts = failures, error = %why, "Cannot connect; retrying.");
                }
                ep.metrics
                    .set_down_reason(format!("{name}: {why} ({failures} attempts)"));
                tokio::select! {
                    () = ep.shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }
        let mut subscribed = true;
        for p in &ep.prefixes {
            if let Err(e) = socket.subscribe(p).await {
                warn!(backend = %ep.backend, endpoint = %name, prefix = %p, error = %e, "Cannot subscribe; reconnecting.");
                subscribed = false;
                break;
            }
        }
        if !subscribed {
            continue;
        }
        info!(backend = %ep.backend, endpoint = %name, prefixes = ?ep.prefixes, "Subscribed.");
        backoff = BACKOFF_MIN;
        failures = 0;
        ep.stats.set_connected(true);
        ep.readiness.update();
        if !read(&ep, &mut socket, &mut monitor).await {
            ep.stats.set_connected(false);
            ep.readiness.update();
            let _ = socket.close().await;
            return;
        }
    }
}

/// Messages taken from the socket without waiting, once one has arrived, and handed to the
/// dispatcher together: each consumer's queue is then locked and its worker woken once per
/// batch, not once per message (on 2 vCPUs: 1 consumer 0.9 -> 1.1 M msg/s, 4 consumers
/// 0.6-0.7 -> 0.9 M; BENCHMARKS.md). Never waits to fill a batch, so latency is unchanged.
const BATCH: usize = 64;

/// Turns received frames into deliveries: decode, count gaps in fedmsg's `i`, count and log
/// (rate-limited) what is malformed, log receive errors.
struct Decoder<'a> {
    ep: &'a Endpoint,
    invalid_log: LogThrottle,
    error_log: LogThrottle,
    last_i: Option<u64>,
}

impl Decoder<'_> {
    fn take(&mut self, received: zeromq::ZmqResult<zeromq::ZmqMessage>, into: &mut Vec<Delivery>) {
        let ep = self.ep;
        let name = &ep.stats.endpoint;
        let frames = match received {
            Ok(frames) => frames.into_vec(),
            Err(zeromq::ZmqError::Codec(CodecError::MessageTooLarge { size, limit })) => {
                // Refused by the socket when its frame header arrived, unread: the publisher
                // is disconnected (libzmq's ZMQ_MAXMSGSIZE); the socket reconnects by itself.
                ep.metrics.oversized();
                if let Some(held) = self.invalid_log.allow() {
                    warn!(backend = %ep.backend, endpoint = %name, size_at_least = size, max_message_bytes = limit, similar_not_logged = held, "Refused a message over max_message_bytes; the publisher is disconnected and reconnected to.");
                }
                return;
            }
            Err(e) => {
                if let Some(held) = self.error_log.allow() {
                    warn!(backend = %ep.backend, endpoint = %name, error = %e, similar_not_logged = held, "Receive error; going on.");
                }
                return;
            }
        };
        match codec::decode_with_seq(ep.format, &frames) {
            Ok((msg, seq)) => {
                if let Some(i) = seq {
                    if let Some(prev) = self.last_i
                        && i > prev + 1
                    {
                        ep.stats.gap(i - prev - 1);
                    }
                    // A smaller `i` is a restarted publisher (or another one): start over.
                    self.last_i = Some(i);
                }
                into.push(Delivery::new(msg));
            }
            Err(bad) => {
                ep.metrics.invalid();
                if let Some(held) = self.invalid_log.allow() {
                    warn!(backend = %ep.backend, endpoint = %name, message_id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, similar_not_logged = held, "Rejected a malformed message.");
                } else {
                    debug!(backend = %ep.backend, message_id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, "Rejected a malformed message.");
                }
            }
        }
    }
}

/// Reads until shutdown (returns false). Never returns on a receive error: logs it and goes on.
async fn read(
    ep: &Endpoint,
    socket: &mut SubSocket,
    monitor: &mut futures_util::stream::BoxStream<'static, SocketEvent>,
) -> bool {
    let name = &ep.stats.endpoint;
    let mut decoder = Decoder {
        ep,
        invalid_log: LogThrottle::new(),
        error_log: LogThrottle::new(),
        last_i: None,
    };
    let mut monitor_open = true;
    let mut batch = Vec::with_capacity(BATCH);
    // Pinned once: a fresh `cancelled()` per message would register and drop a waiter each time.
    let mut cancelled = std::pin::pin!(ep.shutdown.cancelled());
    loop {
        tokio::select! {
            biased;
            () = &mut cancelled => return false,
            event = monitor.next(), if monitor_open => match event {
                Some(SocketEvent::Disconnected(_)) => {
                    info!(backend = %ep.backend, endpoint = %name, "Publisher went away; the socket reconnects by itself.");
                    ep.stats.set_connected(false);
                    ep.readiness.update();
                    decoder.last_i = None;
                }
                Some(SocketEvent::Connected(..)) => {
                    if !ep.stats.connected.load(Ordering::Relaxed) {
                        info!(backend = %ep.backend, endpoint = %name, "Reconnected.");
                    }
                    ep.stats.set_connected(true);
                    ep.readiness.update();
                }
                Some(_) => {}
                None => monitor_open = false,
            },
            received = socket.recv() => {
                decoder.take(received, &mut batch);
                // Whatever else is already there, without waiting (`recv` only awaits the
                // socket's queue, so dropping it unfinished loses nothing).
                for _ in 1..BATCH {
                    match socket.recv().now_or_never() {
                        Some(received) => decoder.take(received, &mut batch),
                        None => break,
                    }
                }
                if ep.sink.deliver_many(batch.drain(..)).await.is_err() {
                    return false;
                }
            }
        }
    }
}
