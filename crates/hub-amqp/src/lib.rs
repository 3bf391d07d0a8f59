//! # hub-amqp
//!
//! The AMQP 0-9-1 backend (RabbitMQ, via lapin), `type = "amqp"`: one queue per consumer bound
//! to a topic exchange by the consumer's patterns, so the broker filters and keeps messages while
//! a consumer is down. At-least-once: a delivery is acknowledged only after the dispatcher's
//! verdict, in batches (`multiple`) up to the highest tag below which everything is finished;
//! transient failures are retried with exponential backoff up to `max_attempts` (a confirmed
//! copy replaces the original), then dead-lettered with the reason in headers. Publishing uses
//! publisher confirms and `mandatory`. Wire format: fedora-messaging's (see [`wire`]).

pub use lapin;

mod settle;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use hub_core::{
    Backend, BackendConfig, BackendContext, BackendError, BoxError, Delivery, Message,
    PublishError, Subscription,
};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use settle::{AmqpAcker, Cmd, Original, Policy};

/// `[backends.<id>]` with `type = "amqp"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` or `amqps://...` (the password is never logged).
    pub url: String,
    /// Topic exchange to bind consumer queues to and publish on. Default `amq.topic`.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Unacknowledged messages per consumer queue (bounds what is in flight). Default 100.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Fanout exchange that receives dead letters; the hub also declares and binds the durable
    /// queue `<[hub] name>.dead-letters` to it. Default `hub.dead-letter`.
    #[serde(default = "default_dlx")]
    pub dead_letter_exchange: String,
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
}

impl AmqpConfig {
    /// The TLS settings from `ca_file`, `cert_file` and `key_file`, read now; `None` without them.
    ///
    /// # Errors
    /// A file that cannot be read, a certificate without its key (or the reverse), or TLS files
    /// with an `amqp://` (not `amqps://`) url.
    pub fn tls(&self) -> Result<Option<lapin::tcp::OwnedTLSConfig>, String> {
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        if !self.url.starts_with("amqps://") {
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
fn default_dlx() -> String {
    "hub.dead-letter".into()
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
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            return Err(format!(
                "url {:?}: expected amqp://... or amqps://...",
                redact(&self.url)
            )
            .into());
        }
        for (k, v) in [
            ("exchange", &self.exchange),
            ("dead_letter_exchange", &self.dead_letter_exchange),
        ] {
            ShortString::try_new(v.as_str())
                .map_err(|_| format!("{k} {v:?}: longer than 255 bytes"))?;
        }
        if self.prefetch == 0 || self.max_attempts == 0 {
            return Err("prefetch and max_attempts must be at least 1".into());
        }
        self.tls()?;
        Ok(Arc::new(AmqpBackend {
            id: id.to_owned(),
            config: self,
            connection: Mutex::new(None),
            publisher: Mutex::new(None),
            settlers: Mutex::new(Vec::new()),
        }))
    }
}

/// The AMQP backend.
pub struct AmqpBackend {
    id: String,
    config: AmqpConfig,
    connection: Mutex<Option<Arc<Connection>>>,
    publisher: Mutex<Option<Channel>>,
    /// Settle tasks: `close` waits for them so every drained message is acknowledged.
    settlers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl AmqpBackend {
    fn fail(&self, message: String) -> BackendError {
        BackendError {
            backend: self.id.clone(),
            message,
        }
    }

    fn queue_name(hub: &str, sub: &Subscription) -> Result<String, String> {
        let name = match (&sub.options.queue, sub.options.durable) {
            (Some(q), _) => q.clone(),
            (None, true) => format!("{hub}.{}", sub.consumer),
            // Named by us, never by the server: lapin cannot recover server-named queues.
            (None, false) => format!("{hub}.{}.{}", sub.consumer, uuid::Uuid::new_v4().simple()),
        };
        ShortString::try_new(name.as_str())
            .map_err(|_| format!("queue name {name:?} is longer than 255 bytes"))?;
        Ok(name)
    }

    async fn connect(&self, cx: &BackendContext) -> Option<Connection> {
        let mut backoff = Duration::from_millis(200);
        loop {
            let props = ConnectionProperties::default()
                .with_connection_name(format!("hub {} {}", cx.hub_name, cx.id).into())
                .enable_auto_recover();
            let connect = async {
                match self.config.tls() {
                    Ok(Some(tls)) => {
                        Connection::connect_with_config(
                            &self.config.url,
                            props,
                            tls,
                            lapin::runtime::default_runtime()?,
                        )
                        .await
                    }
                    _ => Connection::connect(&self.config.url, props).await,
                }
            };
            let attempt = tokio::select! {
                () = cx.shutdown.cancelled() => return None,
                r = tokio::time::timeout(Duration::from_secs(15), connect) => r,
            };
            match attempt {
                Ok(Ok(c)) => return Some(c),
                Ok(Err(e)) => {
                    warn!(backend = %self.id, url = %redact(&self.config.url), error = %e, "Cannot connect; retrying.")
                }
                Err(_) => {
                    warn!(backend = %self.id, url = %redact(&self.config.url), "Connect timed out; retrying.")
                }
            }
            tokio::select! {
                () = cx.shutdown.cancelled() => return None,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn setup(
        &self,
        conn: &Connection,
        cx: &BackendContext,
    ) -> Result<tokio::task::JoinSet<Result<(), String>>, BackendError> {
        let err = |what: &str, e: lapin::Error| self.fail(format!("{what}: {e}"));
        let publisher = conn
            .create_channel()
            .await
            .map_err(|e| err("opening the publish channel", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| err("enabling publisher confirms", e))?;
        if !self.config.exchange.starts_with("amq.") {
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            publisher
                .exchange_declare(
                    self.config.exchange.as_str().into(),
                    ExchangeKind::Topic,
                    opts,
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    err(
                        &format!("declaring topic exchange {:?}", self.config.exchange),
                        e,
                    )
                })?;
        }
        let dlx = self.config.dead_letter_exchange.as_str();
        let dlq = format!("{}.dead-letters", cx.hub_name);
        publisher
            .exchange_declare(
                dlx.into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| err(&format!("declaring dead-letter exchange {dlx:?}"), e))?;
        publisher
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| err(&format!("declaring dead-letter queue {dlq:?}"), e))?;
        publisher
            .queue_bind(
                dlq.as_str().into(),
                dlx.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| err(&format!("binding {dlq:?} to {dlx:?}"), e))?;
        *self.publisher.lock().await = Some(publisher.clone());

        let mut tasks = tokio::task::JoinSet::new();
        let mut queues = Vec::new();
        for sub in &cx.subscriptions {
            let queue = Self::queue_name(&cx.hub_name, sub)
                .map_err(|m| self.fail(format!("consumer {}: {m}", sub.consumer)))?;
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| err("opening a consumer channel", e))?;
            ch.basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| err("setting prefetch", e))?;
            let opts = if sub.options.durable || sub.options.queue.is_some() {
                QueueDeclareOptions::durable()
            } else {
                QueueDeclareOptions::exclusive().auto_delete()
            };
            ch.queue_declare(queue.as_str().into(), opts, FieldTable::default())
                .await
                .map_err(|e| err(&format!("consumer {}: declaring queue {queue:?} (a queue that exists with other arguments must be deleted or renamed)", sub.consumer), e))?;
            for p in &sub.patterns {
                let key = ShortString::try_new(p.as_str()).map_err(|_| {
                    self.fail(format!("pattern {:?} is longer than 255 bytes", p.as_str()))
                })?;
                ch.queue_bind(
                    queue.as_str().into(),
                    self.config.exchange.as_str().into(),
                    key,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    err(
                        &format!(
                            "binding {queue:?} to {:?} with {:?}",
                            self.config.exchange,
                            p.as_str()
                        ),
                        e,
                    )
                })?;
            }
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    format!("hub-{}", sub.consumer).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| err(&format!("consuming from {queue:?}"), e))?;
            info!(backend = %self.id, consumer = %sub.consumer, %queue, durable = sub.options.durable, "Consuming.");
            queues.push((sub.consumer.to_string(), queue.clone()));
            let (tx, rx) = mpsc::unbounded_channel();
            let policy = Policy {
                consumer: sub.consumer.to_string(),
                queue: queue.clone(),
                dead_letter_exchange: self.config.dead_letter_exchange.clone(),
                max_attempts: self.config.max_attempts,
                retry_delay: self.config.retry_delay,
                retry_delay_max: self.config.retry_delay_max,
                // A quarter of the prefetch window: the broker never stalls waiting for acks.
                ack_every: usize::from(self.config.prefetch / 4).clamp(1, 100),
            };
            self.settlers.lock().await.push(tokio::spawn(settle::run(
                publisher.clone(),
                policy,
                rx,
                tx.downgrade(),
            )));
            tasks.spawn(consume(
                consumer,
                ch,
                sub.clone(),
                tx,
                cx.intake.clone(),
                cx.metrics.clone(),
                cx.shutdown.clone(),
                self.id.clone(),
            ));
        }
        // Its own channel: a passive declare of a queue deleted behind our back is a channel error.
        let poller = conn
            .create_channel()
            .await
            .map_err(|e| err("opening the backlog channel", e))?;
        let shutdown = cx.shutdown.clone();
        tasks.spawn(async move {
            poll_backlog(poller, queues, shutdown).await;
            Ok(())
        });
        Ok(tasks)
    }
}

/// How often `hub_amqp_queue_messages` asks the broker.
const BACKLOG_POLL: Duration = Duration::from_secs(5);

/// `hub_amqp_queue_messages{consumer}`: what waits in RabbitMQ (ready, not yet delivered), next
/// to the hub's own backlog gauge. A passive declare per queue every few seconds.
async fn poll_backlog(
    channel: Channel,
    queues: Vec<(String, String)>,
    shutdown: hub_core::CancellationToken,
) {
    let gauges: Vec<_> = queues
        .iter()
        .map(|(consumer, _)| metrics::gauge!("hub_amqp_queue_messages", "consumer" => consumer.clone()))
        .collect();
    let mut tick = tokio::time::interval(BACKLOG_POLL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for ((consumer, queue), gauge) in queues.iter().zip(&gauges) {
            let opts = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.as_str().into(), opts, FieldTable::default())
                .await
            {
                Ok(q) => gauge.set(f64::from(q.message_count())),
                Err(e) => {
                    tracing::debug!(%consumer, %queue, error = %e, "Could not read the queue depth.")
                }
            }
        }
    }
}

#[allow(
    clippy::too_many_arguments,
    reason = "one task's whole context, spawned once"
)]
async fn consume(
    mut consumer: lapin::Consumer,
    channel: Channel,
    sub: Subscription,
    tx: mpsc::UnboundedSender<Cmd>,
    intake: hub_core::Intake,
    metrics: hub_core::BackendMetrics,
    shutdown: hub_core::CancellationToken,
    backend: String,
) -> Result<(), String> {
    let mut cancelled = std::pin::pin!(shutdown.cancelled());
    let (mut generation, mut last_tag) = (0u32, 0u64);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut cancelled => return Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                warn!(%backend, consumer = %sub.consumer, error = %e, "Consumer error; waiting for recovery.");
                if let Err(e) = channel.wait_for_recovery(e).await {
                    // A consumer that silently stops is worse than a hub that exits: say so.
                    return Err(format!(
                        "consumer {}: its channel did not recover: {e}",
                        sub.consumer
                    ));
                }
                continue;
            }
            None if shutdown.is_cancelled() => return Ok(()),
            None => {
                return Err(format!(
                    "consumer {}: the broker ended the subscription (queue deleted?)",
                    sub.consumer
                ));
            }
        };
        // Tags start again at 1 on a recovered channel: a new generation.
        if delivery.delivery_tag <= last_tag {
            generation += 1;
            info!(%backend, consumer = %sub.consumer, "Channel recovered; consuming again.");
        }
        last_tag = delivery.delivery_tag;
        let tag = settle::Tag {
            generation,
            tag: delivery.delivery_tag,
        };
        let original = Arc::new(Original {
            routing_key: delivery.routing_key.as_str().to_owned(),
            properties: delivery.properties.clone(),
            body: delivery.data.clone(),
        });
        let _ = tx.send(Cmd::Register(tag, delivery.acker.clone()));
        let acker = AmqpAcker {
            tag,
            original: Arc::clone(&original),
            tx: tx.clone(),
        };
        match wire::decode(&original.routing_key, &original.properties, &original.body) {
            Ok(msg) => {
                if intake
                    .deliver(Delivery::with_acker(msg, Box::new(acker)).for_subscription(sub.id))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Err(bad) => {
                metrics.invalid();
                warn!(%backend, consumer = %sub.consumer, message_id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, "Malformed message; dead-lettering it.");
                hub_core::Acker::settle(
                    &acker,
                    hub_core::Verdict::Reject {
                        reason: format!("malformed: {}", bad.reason),
                    },
                );
            }
        }
    }
}

#[async_trait]
impl Backend for AmqpBackend {
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError> {
        let Some(conn) = self.connect(&cx).await else {
            return Ok(());
        };
        let conn = Arc::new(conn);
        let mut tasks = self.setup(&conn, &cx).await?;
        *self.connection.lock().await = Some(Arc::clone(&conn));
        cx.metrics.set_connected(true);
        info!(backend = %self.id, url = %redact(&self.config.url), "Connected.");
        // Watchdog: the connection state behind `hub_backend_connected` and readiness.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = cx.shutdown.cancelled() => break,
                _ = tick.tick() => cx.metrics.set_connected(conn.status().connected()),
                Some(ended) = tasks.join_next() => {
                    if let Ok(Err(reason)) = ended {
                        cx.metrics.set_connected(false);
                        return Err(self.fail(reason));
                    }
                }
            }
        }
        // Stop taking deliveries; they end by themselves, and the settle tasks keep running so
        // drained messages get acked.
        tasks.detach_all();
        Ok(())
    }

    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let Some(ch) = self.publisher.lock().await.clone() else {
            return Err(PublishError::Unavailable {
                backend: self.id.clone(),
                reason: "not connected yet".into(),
            });
        };
        let key = ShortString::try_new(msg.topic()).map_err(|_| PublishError::NotConfirmed {
            backend: self.id.clone(),
            reason: format!("topic {:?} is longer than 255 bytes", msg.topic()),
        })?;
        let (props, body) = wire::encode(msg);
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let transport = |e: lapin::Error| PublishError::Transport {
            backend: self.id.clone(),
            source: Box::new(e),
        };
        let attempt = || async {
            ch.basic_publish(
                self.config.exchange.as_str().into(),
                key.clone(),
                opts,
                &body,
                props.clone(),
            )
            .await?
            .await
        };
        let confirm = match attempt().await {
            Ok(c) => c,
            // During a reconnect: wait for lapin's recovery (bounded), then publish once more.
            Err(e) => {
                match tokio::time::timeout(Duration::from_secs(30), ch.wait_for_recovery(e)).await {
                    Ok(Ok(())) => attempt().await.map_err(transport)?,
                    Ok(Err(e)) => return Err(transport(e)),
                    Err(_) => {
                        return Err(PublishError::Unavailable {
                            backend: self.id.clone(),
                            reason: "the connection did not recover within 30 s".into(),
                        });
                    }
                }
            }
        };
        settle::confirmed(confirm, &self.config.exchange, msg.topic()).map_err(|reason| {
            PublishError::NotConfirmed {
                backend: self.id.clone(),
                reason,
            }
        })
    }

    async fn close(&self) {
        // The hub has drained: the settle tasks end once their last acks are out.
        for task in std::mem::take(&mut *self.settlers.lock().await) {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                warn!(backend = %self.id, "Acknowledgements still pending at close; those messages will be redelivered.");
            }
        }
        self.publisher.lock().await.take();
        if let Some(conn) = self.connection.lock().await.take() {
            let _ = conn.close(200, "hub shutting down".into()).await;
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
        let (props, body) = wire::encode(msg);
        let id = props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        settle::publish_confirmed(&ch, exchange, msg.topic(), props, &body).await?;
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
