//! What the backend declares on the broker: the topic exchange, the hub's dead-letter queue, and
//! one queue per consumer bound by its patterns.

use hub_core::{BrokerQueue, QueueType, Subscription};
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tracing::{debug, info};

use crate::settle::DeadLetters;

/// The exchange every hub bound its dead-letter queue to before dead letters went to each
/// hub's own queue: a fanout, so every hub got every hub's dead letters.
pub(crate) const LEGACY_DEAD_LETTER_EXCHANGE: &str = "hub.dead-letter";

fn error(what: &str, e: lapin::Error) -> String {
    format!("{what}: {e}")
}

/// Declares the topic exchange (durable) unless it is one of the broker's own (`amq.*`).
pub(crate) async fn exchange(ch: &Channel, exchange: &str) -> Result<(), String> {
    if exchange.starts_with("amq.") {
        return Ok(());
    }
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
    .map_err(|e| error(&format!("declaring topic exchange {exchange:?}"), e))
}

/// The hub's durable dead-letter queue `<hub>.dead-letters`. Without a configured exchange,
/// dead letters are published straight to it (default exchange, routing key = its name), so
/// each hub gets its own and no other's. With `exchange`, that fanout is declared and the queue
/// bound to it: every queue bound there gets every dead letter published there (the point of
/// configuring one). Either way the queue is unbound from the legacy shared exchange.
pub(crate) async fn dead_letters(
    conn: &Connection,
    ch: &Channel,
    hub: &str,
    exchange: Option<&str>,
) -> Result<DeadLetters, String> {
    let queue = format!("{hub}.dead-letters");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| error(&format!("declaring dead-letter queue {queue:?}"), e))?;
    if exchange != Some(LEGACY_DEAD_LETTER_EXCHANGE) {
        unbind_legacy(conn, &queue).await;
    }
    let Some(exchange) = exchange else {
        return Ok(DeadLetters {
            exchange: String::new(),
            key: Some(queue),
        });
    };
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .map_err(|e| error(&format!("declaring dead-letter exchange {exchange:?}"), e))?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| error(&format!("binding {queue:?} to {exchange:?}"), e))?;
    Ok(DeadLetters {
        exchange: exchange.to_owned(),
        key: None,
    })
}

/// The record stream: declared (durable, `x-queue-type = stream`, with its retention) and bound
/// to `exchange` with `#`, so it keeps everything published there.
pub(crate) async fn record_stream(
    ch: &Channel,
    exchange: &str,
    stream: &str,
    max_age: Option<&str>,
    max_bytes: Option<u64>,
) -> Result<(), String> {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("stream"));
    if let Some(age) = max_age {
        args.insert("x-max-age".into(), long_string(age));
    }
    if let Some(bytes) = max_bytes {
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(bytes).unwrap_or(i64::MAX)),
        );
    }
    ch.queue_declare(stream.into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|e| {
            error(
                &format!("declaring record stream {stream:?} (a queue of that name with other arguments must be deleted or renamed)"),
                e,
            )
        })?;
    ch.queue_bind(
        stream.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| error(&format!("binding {stream:?} to {exchange:?} with \"#\""), e))
}

/// Removes the binding of `queue` to the legacy shared dead-letter exchange, left by earlier
/// versions. On a channel of its own: unbinding from an exchange that does not exist is a
/// channel error.
async fn unbind_legacy(conn: &Connection, queue: &str) {
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    let unbound = ch
        .queue_unbind(
            queue.into(),
            LEGACY_DEAD_LETTER_EXCHANGE.into(),
            "".into(),
            FieldTable::default(),
        )
        .await;
    match unbound {
        Ok(()) => {
            info!(%queue, exchange = LEGACY_DEAD_LETTER_EXCHANGE, "Dead-letter queue unbound from the shared exchange of earlier versions.");
            let _ = ch.close(200, "done".into()).await;
        }
        Err(e) => debug!(%queue, error = %e, "No legacy dead-letter binding to remove."),
    }
}

/// A consumer's queue name: configured, `<hub>.<consumer>` when durable, else generated.
pub(crate) fn queue_name(hub: &str, sub: &Subscription) -> Result<String, String> {
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

/// How a consumer's queue is declared, bound and consumed: kept by its receive loop to do it
/// again (the broker cancelled the subscription, the watchdog found it stalled).
#[derive(Clone)]
pub(crate) struct QueueSpec {
    pub queue: String,
    exchange: String,
    options: QueueDeclareOptions,
    arguments: FieldTable,
    patterns: Vec<ShortString>,
    prefetch: u16,
    /// The backend's record stream, declared and bound by the backend: not declared here.
    reads_record: bool,
}

impl QueueSpec {
    /// Whether the queue outlives the consumer's channel and connection (durable, neither
    /// exclusive nor auto-delete): then what a closed channel had not acknowledged goes back
    /// into it and is delivered again. An exclusive, auto-delete queue (a consumer that is not
    /// `durable`) is deleted with its last consumer, and those messages with it.
    pub(crate) fn survives_close(&self) -> bool {
        self.options.durable && !self.options.exclusive && !self.options.auto_delete
    }

    /// The queue of `sub` on `exchange`.
    pub(crate) fn new(
        hub: &str,
        exchange: &str,
        prefetch: u16,
        sub: &Subscription,
        dead_letters: &DeadLetters,
        record_stream: Option<&str>,
    ) -> Result<Self, String> {
        let stream = sub.options.broker_queue.kind == QueueType::Stream;
        // A stream consumer without a queue of its own reads the backend's record stream
        // (everything published on the exchange; its patterns are matched in the hub).
        let record = match record_stream {
            Some(r) if stream && sub.options.queue.is_none() => Some(r.to_owned()),
            _ => None,
        };
        let reads_record = record.is_some();
        let queue = match record {
            Some(r) => r,
            None => queue_name(hub, sub)?,
        };
        let options = if sub.options.durable || sub.options.queue.is_some() {
            QueueDeclareOptions::durable()
        } else {
            QueueDeclareOptions::exclusive().auto_delete()
        };
        let mut patterns = Vec::new();
        for p in sub.patterns.iter().filter(|_| !reads_record) {
            patterns.push(
                ShortString::try_new(p.as_str())
                    .map_err(|_| format!("pattern {:?} is longer than 255 bytes", p.as_str()))?,
            );
        }
        Ok(Self {
            queue,
            exchange: exchange.to_owned(),
            options,
            arguments: queue_arguments(&sub.options.broker_queue, dead_letters),
            patterns,
            prefetch,
            reads_record,
        })
    }

    /// Whether this consumer reads the backend's record stream (its patterns then matched in
    /// the hub).
    pub(crate) fn reads_record(&self) -> bool {
        self.reads_record
    }

    /// A channel with the prefetch window.
    pub(crate) async fn channel(&self, conn: &Connection) -> Result<Channel, String> {
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| error("opening a consumer channel", e))?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| error("setting prefetch", e))?;
        Ok(ch)
    }

    /// Declares the queue (again: declaring is idempotent) and binds it by the patterns.
    pub(crate) async fn declare(&self, ch: &Channel) -> Result<(), String> {
        if self.reads_record {
            return Ok(());
        }
        let queue = &self.queue;
        ch.queue_declare(queue.as_str().into(), self.options, self.arguments.clone())
            .await
            .map_err(|e| {
                error(
                    &format!(
                        "declaring queue {queue:?} (a queue that exists with other arguments must be deleted or renamed)"
                    ),
                    e,
                )
            })?;
        for key in &self.patterns {
            let exchange = &self.exchange;
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.clone(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                error(
                    &format!("binding {queue:?} to {exchange:?} with {:?}", key.as_str()),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Subscribes with consumer tag `tag` (and `args`: a stream's `x-stream-offset`).
    pub(crate) async fn consume(
        &self,
        ch: &Channel,
        tag: &str,
        args: FieldTable,
    ) -> Result<lapin::Consumer, String> {
        let queue = &self.queue;
        ch.basic_consume(
            queue.as_str().into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(|e| error(&format!("consuming from {queue:?}"), e))
    }
}

/// The arguments a consumer's queue is declared with: its type, single active consumer, and for
/// a quorum queue with a `delivery_limit`, where the broker dead-letters a message past it (the
/// hub's dead-letter queue or exchange). A classic queue without options gets none, as before
/// these options existed (a re-declare with other arguments is refused by the broker).
pub(crate) fn queue_arguments(q: &BrokerQueue, dead_letters: &DeadLetters) -> FieldTable {
    let mut args = FieldTable::default();
    if q.kind != QueueType::Classic {
        args.insert("x-queue-type".into(), long_string(q.kind.as_str()));
    }
    if q.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    if let Some(limit) = q.delivery_limit {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(limit)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            long_string(&dead_letters.exchange),
        );
        if let Some(key) = &dead_letters.key {
            args.insert("x-dead-letter-routing-key".into(), long_string(key));
        }
    }
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}
