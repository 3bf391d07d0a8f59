//! # hub-amqp
//!
//! The AMQP 0-9-1 backend (RabbitMQ, via lapin), `type = "amqp"`: one queue per consumer bound
//! to a topic exchange by the consumer's patterns, so the broker filters and keeps messages while
//! a consumer is down. At-least-once: a delivery is acknowledged only after the dispatcher's
//! verdict, in batches (see [`settle`]); transient failures are retried with exponential backoff
//! up to `max_attempts` (a confirmed copy replaces the original), then dead-lettered with the
//! reason in headers, into the hub's own dead-letter queue. Two connections, as RabbitMQ
//! recommends: one consumes and acknowledges, the other publishes (retries, dead letters,
//! consumers' and producers' messages), so a broker that blocks publishers (memory or disk alarm)
//! never holds back acknowledgements. Publishing uses publisher confirms and `mandatory`, each
//! return attributed to its own publish (see [`publisher`]). Wire format: fedora-messaging's
//! (see [`wire`]).

pub use lapin;

mod connect;
mod consume;
pub mod dead_letters;
mod publisher;
mod settle;
mod stall;
mod stream;
mod topology;
mod watchdog;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hub_core::{
    Backend, BackendConfig, BackendContext, BackendError, BoxError, Message, PublishError,
    Subscription,
};
use lapin::options::ConfirmSelectOptions;
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use connect::Dialer;
use consume::Subscriber;
use hub_core::metrics::Gauge;
use hub_engine::metrics::{self as hub_metrics, RepublishKind, ResubscribeReason};
use publisher::{PublishFailure, Publisher};
use settle::{DeadLetters, Policy, Settler};

/// `[backends.<id>]` with `type = "amqp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://...` (the password is never logged).
    /// Give this or `urls`.
    #[serde(default)]
    pub url: String,
    /// The nodes of a cluster, tried in turn on connecting and on every recovery (so a hub
    /// follows its cluster when a node goes away); they differ only in host and port. Give this
    /// or `url`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Topic exchange to bind consumer queues to and publish on. Default `amq.topic`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Unacknowledged messages per consumer queue (bounds what is in flight). Default 100.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Unset (default): dead letters go straight to the hub's own durable queue
    /// `<[hub] name>.dead-letters`, through the default exchange. Set: a fanout exchange the hub
    /// declares, binds that queue to, and publishes dead letters on; every queue bound to it gets
    /// every dead letter published there (by any hub naming it).
    #[serde(default)]
    pub dead_letter_exchange: Option<String>,
    /// Deliveries of a failing message before it is dead-lettered. Default 3.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles per attempt. Default `"1s"`.
    #[serde(default = "default_retry", with = "hub_core::duration")]
    pub retry_delay: Duration,
    /// Longest delay between retries. Default `"60s"`.
    #[serde(default = "default_retry_max", with = "hub_core::duration")]
    pub retry_delay_max: Duration,
    /// PEM file of the CA(s) that sign the broker's certificate (amqps:// only; default: the
    /// system's roots).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate, for brokers that authenticate clients by certificate (amqps://
    /// only; with `key_file`), as Fedora's public broker does.
    #[serde(default)]
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM (PKCS#8) private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The largest message body, in bytes (default 16 MiB,
    /// [`hub_core::DEFAULT_MAX_MESSAGE_BYTES`], RabbitMQ 4's own `max_message_size`). A larger
    /// one is counted, logged with its size and dead-lettered with the reason, never
    /// redelivered. lapin reads a body whole before the hub sees it: the broker's own
    /// `max_message_size` is what bounds that.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The stall watchdog: a consumer queue with messages ready and none received for this
    /// long, while the hub had room for more, is subscribed to again (default `"60s"`;
    /// `"0s"`: only a queue with messages ready and no consumer at all is). Checked every
    /// `stall_timeout / 2`, at most every 5 s.
    #[serde(default = "default_stall_timeout", with = "hub_core::duration")]
    pub stall_timeout: Duration,
    /// A RabbitMQ stream the backend declares and binds to `exchange` with `#`: it keeps
    /// everything published there, for consumers with `queue_type = "stream"` to read from any
    /// point (backfill). Default: none.
    #[serde(default)]
    pub record_stream: Option<String>,
    /// The record stream's retention by age, in RabbitMQ's form (`"7D"`, `"12h"`, `"30m"`;
    /// units Y, M, D, h, m, s). Default: none (by size only).
    #[serde(default)]
    pub record_max_age: Option<String>,
    /// The record stream's retention by size, in bytes (whole segments are dropped, oldest
    /// first). Default: none (RabbitMQ keeps everything unless an age is set).
    #[serde(default)]
    pub record_max_bytes: Option<u64>,
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_message_bytes() -> usize {
    hub_core::DEFAULT_MAX_MESSAGE_BYTES
}

impl AmqpConfig {
    /// The broker's addresses: `urls`, or `url` alone.
    pub fn addresses(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.clone()]
        } else {
            self.urls.clone()
        }
    }

    /// The addresses without their passwords, for logs and errors.
    fn redacted(&self) -> String {
        let all: Vec<String> = self.addresses().iter().map(|u| redact(u)).collect();
        all.join(", ")
    }

    /// The TLS settings from `ca_file`, `cert_file` and `key_file`, read now; `None` without them.
    ///
    /// # Errors
    /// A file that cannot be read, a certificate without its key (or the reverse), or TLS files
    /// with an `amqp://` (not `amqps://`) url.
    pub fn tls(&self) -> Result<Option<lapin::tcp::OwnedTLSConfig>, String> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        if !self.addresses().iter().all(|u| u.starts_with("amqps://")) {
            return Err("ca_file, cert_file and key_file need an amqps:// url".into());
        }
        let read = |key: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("{key} {}: {e}", p.display()))
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
                pem: read("cert_file", c)?,
                key: read("key_file", k)?,
            }),
            (None, None) => None,
            _ => return Err("cert_file and key_file go together".into()),
        };
        let cert_chain = match &self.ca_file {
            Some(p) => Some(
                String::from_utf8(read("ca_file", p)?)
                    .map_err(|_| format!("ca_file {}: not PEM text", p.display()))?,
            ),
            None => None,
        };
        Ok(Some(lapin::tcp::OwnedTLSConfig {
            identity,
            cert_chain,
        }))
    }
}

fn default_exchange() -> String {
    "amq.topic".into()
}
fn default_prefetch() -> u16 {
    100
}
fn default_attempts() -> u32 {
    3
}
fn default_retry() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl BackendConfig for AmqpConfig {
    const TYPE: &'static str = "amqp";
    const DESCRIPTION: &'static str =
        "AMQP 0-9-1 (RabbitMQ): a queue per consumer, at-least-once acks, retries, dead letters";
    const DURABLE_QUEUES: bool = true;

    fn build(self, id: &str) -> Result<Arc<dyn Backend>, BoxError> {
        match (self.url.is_empty(), self.urls.is_empty()) {
            (true, true) => return Err("url: missing (or `urls` for a cluster's nodes)".into()),
            (false, false) => {
                return Err("url and urls: give one (`urls` for a cluster's nodes)".into());
            }
            _ => {}
        }
        let key = if self.urls.is_empty() { "url" } else { "urls" };
        for url in self.addresses() {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(format!(
                    "{key} {:?}: expected amqp://... or amqps://...",
                    redact(&url)
                )
                .into());
            }
        }
        let uris = connect::Nodes::parse(&self.addresses())?;
        for (k, v) in [
            ("exchange", Some(&self.exchange)),
            ("dead_letter_exchange", self.dead_letter_exchange.as_ref()),
        ] {
            if let Some(v) = v {
                ShortString::try_new(v.as_str())
                    .map_err(|_| format!("{k} {v:?}: longer than 255 bytes"))?;
            }
        }
        if self.dead_letter_exchange.as_deref() == Some("") {
            return Err(
                "dead_letter_exchange \"\": leave it out for the hub's own dead-letter queue"
                    .into(),
            );
        }
        if let Some(stream) = &self.record_stream {
            ShortString::try_new(stream.as_str())
                .map_err(|_| format!("record_stream {stream:?}: longer than 255 bytes"))?;
            if stream.is_empty() {
                return Err("record_stream \"\": leave it out for no record".into());
            }
        } else if self.record_max_age.is_some() || self.record_max_bytes.is_some() {
            return Err("record_max_age and record_max_bytes apply to a record_stream".into());
        }
        if let Some(age) = &self.record_max_age {
            let (n, unit) = age.split_at(age.len().saturating_sub(1));
            if n.is_empty()
                || !n.bytes().all(|b| b.is_ascii_digit())
                || !matches!(unit, "Y" | "M" | "D" | "h" | "m" | "s")
            {
                return Err(format!(
                    "record_max_age {age:?}: expected a number and a unit (Y, M, D, h, m or s), such as \"7D\""
                )
                .into());
            }
        }
        if self.prefetch == 0 || self.max_attempts == 0 {
            return Err("prefetch and max_attempts must be at least 1".into());
        }
        self.tls()?;
        Ok(Arc::new(AmqpBackend {
            id: id.to_owned(),
            config: self,
            live: Mutex::new(None),
            settlers: Mutex::new(Vec::new()),
            closing: hub_core::CancellationToken::new(),
            dialer: Dialer::new(),
            uris,
            stream_flows: Mutex::new(Vec::new()),
        }))
    }
}

/// The AMQP backend.
pub struct AmqpBackend {
    id: String,
    config: AmqpConfig,
    /// Set once connected: the two connections and the publishing task's handle.
    live: Mutex<Option<Live>>,
    /// Settle tasks: `close` waits for them so every drained message is acknowledged.
    settlers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Cancelled when `close` begins: republishes still failing then give up (requeue).
    closing: hub_core::CancellationToken,
    /// Opens the connections; stops and awaits lapin's threads at close.
    dialer: Dialer,
    /// The broker's addresses, parsed.
    uris: Vec<lapin::uri::AMQPUri>,
    /// The stream consumers' flows, for the recovery watch.
    stream_flows: Mutex<Vec<Arc<watchdog::Flow>>>,
}

struct Live {
    consume: Arc<Connection>,
    publish: Arc<Connection>,
    publisher: Publisher,
    publishing: tokio::task::JoinHandle<()>,
}

/// Which of the backend's two connections.
#[derive(Debug, Clone, Copy)]
enum Role {
    Consume,
    Publish,
}

impl AmqpBackend {
    fn fail(&self, message: String) -> BackendError {
        BackendError {
            backend: self.id.clone(),
            message,
        }
    }

    /// Connects (retrying with backoff until shutdown); `None` once shutdown has begun. Each
    /// failed attempt is logged at once, with what failed and why (the OS's or the broker's
    /// words: refused, unknown host, TLS, credentials, vhost).
    async fn connect(
        &self,
        cx: &BackendContext,
        role: Role,
    ) -> Option<(Connection, Arc<stall::Recovery>)> {
        let mut backoff = Duration::from_millis(200);
        let name = match role {
            Role::Consume => "consume",
            Role::Publish => "publish",
        };
        let nodes = self.nodes(cx, name);
        loop {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("hub {} {} {name}", cx.hub_name, cx.id).into())
                .enable_auto_recover();
            let attempt = async {
                let tls = self.config.tls()?.unwrap_or_default();
                self.dialer.open(&nodes, tls, props).await
            };
            let attempt = tokio::select! {
                () = cx.shutdown.cancelled() => return None,
                r = attempt => r,
            };
            match attempt {
                Ok(c) => return Some(c),
                Err(e) => {
                    warn!(backend = %self.id, connection = name, url = %self.config.redacted(), error = %e, retry_in = ?backoff, "Cannot connect; retrying.");
                    cx.metrics.set_down_reason(format!(
                        "{} ({name} connection): {e}",
                        self.config.redacted()
                    ));
                }
            }
            tokio::select! {
                () = cx.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// The broker's nodes for one connection: which one it lands on is logged (at warn when it
    /// moves to another) and shown in `hub_amqp_node{backend, connection, node}` (1 on the
    /// node it is on, 0 on the others).
    fn nodes(&self, cx: &BackendContext, connection: &'static str) -> Arc<connect::Nodes> {
        let backend = self.id.clone();
        let names: Vec<String> = self
            .uris
            .iter()
            .map(|u| format!("{}:{}", u.authority.host, u.authority.port))
            .collect();
        let gauges: Vec<Gauge> = names
            .iter()
            .map(|n| hub_metrics::amqp_node(cx.metrics.registry(), &backend, connection, n))
            .collect();
        let several = names.len() > 1;
        let on_node: connect::OnNode = Box::new(move |node, name, moved| {
            for (i, g) in gauges.iter().enumerate() {
                g.set(if i == node { 1.0 } else { 0.0 });
            }
            if moved {
                warn!(%backend, connection, node = name, "Connected to another node of the cluster.");
            } else if several {
                info!(%backend, connection, node = name, "Connected to the cluster's node.");
            }
        });
        connect::Nodes::new(self.uris.clone(), on_node)
    }

    /// The publishing channel (confirms on) and its task.
    async fn start_publisher(
        &self,
        conn: &Connection,
    ) -> Result<(Publisher, tokio::task::JoinHandle<()>), BackendError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| self.fail(format!("opening the publish channel: {e}")))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.fail(format!("enabling publisher confirms: {e}")))?;
        Ok(Publisher::start(ch))
    }

    /// Declares the topology on the consuming connection and starts, per consumer, its receive
    /// loop (in the returned set) and its settle task.
    async fn subscribe(
        &self,
        conn: &Arc<Connection>,
        publisher: &Publisher,
        cx: &BackendContext,
    ) -> Result<tokio::task::JoinSet<Result<(), String>>, BackendError> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| self.fail(format!("opening the topology channel: {e}")))?;
        topology::exchange(&ch, &self.config.exchange)
            .await
            .map_err(|m| self.fail(m))?;
        let dead_letters = topology::dead_letters(
            conn,
            &ch,
            &cx.hub_name,
            self.config.dead_letter_exchange.as_deref(),
        )
        .await
        .map_err(|m| self.fail(m))?;
        if let Some(stream) = &self.config.record_stream {
            topology::record_stream(
                &ch,
                &self.config.exchange,
                stream,
                self.config.record_max_age.as_deref(),
                self.config.record_max_bytes,
            )
            .await
            .map_err(|m| self.fail(m))?;
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut watched = Vec::new();
        for sub in &cx.subscriptions {
            let w = self
                .start_consumer(conn, publisher, cx, &dead_letters, sub, &mut tasks)
                .await?;
            watched.push(w);
        }
        let stall = Some(self.config.stall_timeout).filter(|t| !t.is_zero());
        let watch = watchdog::watch(Arc::clone(conn), watched, stall, cx.shutdown.clone());
        tasks.spawn(async move {
            watch.await;
            Ok(())
        });
        Ok(tasks)
    }

    /// One consumer: its queue (declared and bound), its settle task, and its receive loop
    /// (in `tasks`). Returns the queue's name.
    async fn start_consumer(
        &self,
        conn: &Arc<Connection>,
        publisher: &Publisher,
        cx: &BackendContext,
        dead_letters: &DeadLetters,
        sub: &Subscription,
        tasks: &mut tokio::task::JoinSet<Result<(), String>>,
    ) -> Result<watchdog::Watched, BackendError> {
        let fail = |m: String| self.fail(format!("consumer {}: {m}", sub.consumer));
        let spec = topology::QueueSpec::new(
            &cx.hub_name,
            &self.config.exchange,
            self.config.prefetch,
            sub,
            dead_letters,
            self.config.record_stream.as_deref(),
        )
        .map_err(fail)?;
        let channel = spec.channel(conn).await.map_err(fail)?;
        spec.declare(&channel).await.map_err(fail)?;
        let kind = sub.options.broker_queue.kind;
        // A stream consumer: its stored offset, where it starts, and the task that stores it.
        let flow = watchdog::Flow::new();
        let stream = if kind == hub_core::QueueType::Stream {
            let store = format!("{}.{}.offset", cx.hub_name, sub.consumer);
            let stored = stream::stored_offset(&channel, &store)
                .await
                .map_err(fail)?;
            let (progress, rx) = stream::Progress::new(stored);
            self.settlers.lock().await.push(tokio::spawn(stream::commit(
                rx,
                publisher.clone(),
                store,
                sub.consumer.to_string(),
            )));
            self.stream_flows.lock().await.push(Arc::clone(&flow));
            Some(consume::StreamRead {
                progress,
                filter: spec.reads_record().then(|| sub.patterns.clone()),
                start: sub.options.broker_queue.offset,
            })
        } else {
            None
        };
        let tag = format!("hub-{}", sub.consumer);
        let args = consume::consume_args(stream.as_ref());
        let consumer = spec.consume(&channel, &tag, args).await.map_err(fail)?;
        info!(backend = %self.id, consumer = %sub.consumer, queue = %spec.queue, durable = sub.options.durable, queue_type = kind.as_str(), from = ?stream.as_ref().map(|s| s.progress.start(s.start)), "Consuming.");
        let failures =
            |kind| hub_metrics::amqp_republish_failures(cx.metrics.registry(), &sub.consumer, kind);
        let resubscribes =
            |why| hub_metrics::amqp_resubscribes(cx.metrics.registry(), &sub.consumer, why);
        let policy = Policy {
            consumer: sub.consumer.to_string(),
            queue: spec.queue.clone(),
            dead_letters: dead_letters.clone(),
            retry: sub.options.retry.unwrap_or(hub_core::RetryPolicy {
                max_attempts: self.config.max_attempts,
                delay: self.config.retry_delay,
                max_delay: self.config.retry_delay_max,
                in_order: false,
            }),
            // A quarter of the prefetch window: the broker never stalls waiting for acks.
            ack_every: usize::from(self.config.prefetch / 4).clamp(1, 100),
            retry_failures: failures(RepublishKind::Retry),
            dead_letter_failures: failures(RepublishKind::DeadLetter),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let settler = Settler {
            channel: channel.clone(),
            publisher: publisher.clone(),
            policy,
            shutdown: cx.shutdown.clone(),
            closing: self.closing.clone(),
            flow: Arc::clone(&flow),
            progress: stream.as_ref().map(|s| Arc::clone(&s.progress)),
        };
        self.settlers
            .lock()
            .await
            .push(tokio::spawn(settler.run(rx)));
        let subscriber = Subscriber {
            backend: Arc::clone(&cx.id),
            sub: sub.clone(),
            channel,
            tag,
            sink: cx.sink.clone(),
            metrics: cx.metrics.clone(),
            shutdown: cx.shutdown.clone(),
            settle: tx,
            max_message_bytes: self.config.max_message_bytes,
            refused_log: std::sync::Mutex::new(hub_engine::log_throttle::LogThrottle::new()),
            spec: spec.clone(),
            conn: Arc::clone(conn),
            flow: Arc::clone(&flow),
            resubscribes: consume::Resubscribes {
                cancelled: resubscribes(ResubscribeReason::Cancelled),
                no_consumer: resubscribes(ResubscribeReason::NoConsumer),
                stalled: resubscribes(ResubscribeReason::Stalled),
                channel_closed: resubscribes(ResubscribeReason::ChannelClosed),
            },
            subscriptions: 1,
            generation: 0,
            last_tag: 0,
            witness: None,
            stream,
        };
        tasks.spawn(subscriber.run(consumer));
        Ok(watchdog::Watched {
            consumer: sub.consumer.to_string(),
            queue: spec.queue,
            depth: hub_metrics::amqp_queue_messages(cx.metrics.registry(), &sub.consumer),
            flow,
            prefetch: usize::from(self.config.prefetch),
            single_active: sub.options.broker_queue.single_active_consumer,
            stream: kind == hub_core::QueueType::Stream,
        })
    }
}

/// How long `close` lets republishes decided during the drain be confirmed.
const REPUBLISH_WAIT: Duration = Duration::from_secs(2);
/// How long `close` then waits for the settle tasks' last acknowledgements.
const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// Tells the stream consumers when lapin has recovered the consuming connection (its
/// `Connected` event), so they subscribe again from after what they finished.
async fn watch_recovery(conn: Arc<Connection>, flows: Vec<Arc<watchdog::Flow>>) {
    if flows.is_empty() {
        return;
    }
    let mut events = std::pin::pin!(conn.events_listener());
    while let Some(event) = events.next().await {
        if matches!(event, lapin::Event::Connected) {
            for f in &flows {
                f.recovered();
            }
        }
    }
}

/// Logs the broker blocking and unblocking the publishing connection (a memory or disk alarm),
/// and shows it in `hub_amqp_connection_blocked`.
async fn watch_blocked(conn: Arc<Connection>, backend: String, gauge: Gauge) {
    let mut events = std::pin::pin!(conn.events_listener());
    while let Some(event) = events.next().await {
        match event {
            lapin::Event::ConnectionBlocked(reason) => {
                gauge.set(1.0);
                warn!(%backend, %reason, "The broker blocks publishing (a resource alarm); consuming and acknowledging go on.");
            }
            lapin::Event::ConnectionUnblocked => {
                gauge.set(0.0);
                info!(%backend, "The broker unblocked publishing.");
            }
            _ => {}
        }
    }
}

#[async_trait]
impl Backend for AmqpBackend {
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError> {
        let Some((publish, publish_recovery)) = self.connect(&cx, Role::Publish).await else {
            return Ok(());
        };
        let Some((consume, consume_recovery)) = self.connect(&cx, Role::Consume).await else {
            return Ok(());
        };
        let (publish, consume) = (Arc::new(publish), Arc::new(consume));
        let (publisher, publishing) = self.start_publisher(&publish).await?;
        let mut tasks = self.subscribe(&consume, &publisher, &cx).await?;
        let recovery = tokio::spawn(watch_recovery(
            Arc::clone(&consume),
            std::mem::take(&mut *self.stream_flows.lock().await),
        ));
        let blocked = tokio::spawn(watch_blocked(
            Arc::clone(&publish),
            self.id.clone(),
            hub_metrics::amqp_connection_blocked(cx.metrics.registry(), &self.id),
        ));
        *self.live.lock().await = Some(Live {
            consume: Arc::clone(&consume),
            publish: Arc::clone(&publish),
            publisher,
            publishing,
        });
        let connected = || consume.status().connected() && publish.status().connected();
        cx.metrics.set_connected(connected());
        info!(backend = %self.id, url = %self.config.redacted(), "Connected (a consuming and a publishing connection).");
        // Watchdog: the connections' state behind `hub_backend_connected` and readiness, and
        // whether each one's recovery still runs.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut stalls = [
            (
                "publish",
                &publish,
                publish_recovery,
                stall::StallWatch::default(),
            ),
            (
                "consume",
                &consume,
                consume_recovery,
                stall::StallWatch::default(),
            ),
        ];
        let result = loop {
            tokio::select! {
                () = cx.shutdown.cancelled() => break Ok(()),
                _ = tick.tick() => {
                    cx.metrics.set_connected(connected());
                    // lapin's recovery gave up: out of transports, or handshakes that keep
                    // failing after the transport (credentials changed, vhost gone).
                    let errored = consume.status().errored() || publish.status().errored();
                    if self.dialer.gave_up() || errored {
                        cx.metrics.set_connected(false);
                        break Err(self.fail(format!(
                            "the connection was lost and {} reconnects in a row failed (about ten minutes; {}); stopping rather than consuming nothing",
                            connect::RECOVERY_ATTEMPTS,
                            self.config.redacted()
                        )));
                    }
                    let now = std::time::Instant::now();
                    let stalled = stalls.iter_mut().find_map(|(name, conn, recovery, watch)| {
                        watch
                            .stalled(recovery, conn.status().connected(), now, stall::STALL_LIMIT)
                            .then_some(*name)
                    });
                    if let Some(name) = stalled {
                        cx.metrics.set_connected(false);
                        break Err(self.fail(format!(
                            "the {name} connection was lost and its recovery stalled (no reconnect attempt for {:?}; {}); stopping rather than consuming nothing",
                            stall::STALL_LIMIT,
                            self.config.redacted()
                        )));
                    }
                }
                Some(ended) = tasks.join_next() => {
                    if let Ok(Err(reason)) = ended {
                        cx.metrics.set_connected(false);
                        break Err(self.fail(reason));
                    }
                }
            }
        };
        blocked.abort();
        recovery.abort();
        // Each receive loop cancels its subscription and ends by itself; the settle tasks keep
        // running, holding their channels, so drained messages get acked.
        tasks.detach_all();
        result
    }

    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let Some(publisher) = self.live.lock().await.as_ref().map(|l| l.publisher.clone()) else {
            return Err(PublishError::Unavailable {
                backend: self.id.clone(),
                reason: "not connected yet".into(),
            });
        };
        let (props, body) = wire::encode(msg);
        publisher
            .publish(&self.config.exchange, msg.topic(), props, body)
            .await
            .map_err(|e| match e {
                PublishFailure::Closed => PublishError::Unavailable {
                    backend: self.id.clone(),
                    reason: e.to_string(),
                },
                PublishFailure::Transport(_) => PublishError::Transport {
                    backend: self.id.clone(),
                    source: e.to_string().into(),
                },
                _ => PublishError::NotConfirmed {
                    backend: self.id.clone(),
                    reason: e.to_string(),
                },
            })
    }

    /// RabbitMQ keeps what fails: a confirmed copy after the backoff, then the dead-letter
    /// queue.
    fn redelivers(&self) -> bool {
        true
    }

    async fn close(&self) {
        // The hub has drained: each settle task ends once its last acks are out (retries in
        // their backoff publish their copy now), then releases its channel.
        // All settle tasks together, under one deadline (the hub gives `close` 5 s in all, and
        // the connections must still be closed after this): first a moment for retries and dead
        // letters decided during the drain to be confirmed, then republishes still failing give
        // up (their messages are requeued) and the last acknowledgements go out.
        let settlers = std::mem::take(&mut *self.settlers.lock().await);
        let mut all = std::pin::pin!(futures_util::future::join_all(settlers));
        if tokio::time::timeout(REPUBLISH_WAIT, &mut all)
            .await
            .is_err()
        {
            self.closing.cancel();
            if tokio::time::timeout(SETTLE_WAIT, &mut all).await.is_err() {
                warn!(backend = %self.id, "Acknowledgements still pending at close; those messages will be redelivered.");
            }
        }
        let Some(live) = self.live.lock().await.take() else {
            self.stop_connecting().await;
            return;
        };
        // The publishing task ends once its last confirms are in.
        drop(live.publisher);
        if tokio::time::timeout(Duration::from_secs(1), live.publishing)
            .await
            .is_err()
        {
            warn!(backend = %self.id, "Publishes still unconfirmed at close.");
        }
        let _ = live.consume.close(200, "hub shutting down".into()).await;
        let _ = live.publish.close(200, "hub shutting down".into()).await;
        drop((live.consume, live.publish));
        self.stop_connecting().await;
    }
}

impl AmqpBackend {
    /// No more reconnects; waits (briefly) for lapin's connection threads to end, those of
    /// attempts given up included, so none is left to run into the runtime's shutdown.
    async fn stop_connecting(&self) {
        self.dialer.stop();
        if !self.dialer.finished(Duration::from_secs(2)).await {
            warn!(backend = %self.id, "A connection thread is still running at close.");
        }
    }
}

/// `hub publish --amqp URL`: connects, publishes one message (fedora-messaging format, confirmed,
/// mandatory) and returns its `message_id`.
///
/// # Errors
/// Connection failures, an unroutable or unconfirmed publish.
pub async fn publish_once(url: &str, exchange: &str, msg: &Message) -> Result<String, BoxError> {
    let conn = tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("cannot connect to {}: timed out", redact(url)))?
    .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    let result = async {
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let (publisher, task) = Publisher::start(ch);
        let (props, body) = wire::encode(msg);
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let published = publisher.publish(exchange, msg.topic(), props, body).await;
        drop(publisher);
        let _ = task.await;
        published?;
        Ok::<_, BoxError>(id)
    }
    .await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_checked_when_built() {
        let cfg = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"url": "amqps://h/%2f"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<AmqpConfig>(v).unwrap()
        };
        let err = |c: AmqpConfig| c.build("r").err().unwrap().to_string();
        assert!(
            err(cfg(
                serde_json::json!({"cert_file": "/nope/c.pem", "key_file": "/nope/k.pem"})
            ))
            .contains("cert_file /nope/c.pem")
        );
        assert!(
            err(cfg(serde_json::json!({"cert_file": "/etc/hostname"}))).contains("go together")
        );
        let mut plain = cfg(serde_json::json!({"ca_file": "/etc/hostname"}));
        plain.url = "amqp://h".into();
        assert!(err(plain).contains("need an amqps:// url"));
        assert!(cfg(serde_json::json!({})).build("r").is_ok());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
