//! What the backend declares on the broker: the topic exchange, the hub's dead-letter queue, and
//! one queue per consumer bound by its patterns.

use hub_core::Subscription;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
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

/// A consumer's channel, queue (declared and bound by its patterns) and subscription.
pub(crate) struct ConsumerQueue {
    pub channel: Channel,
    pub queue: String,
    pub consumer: lapin::Consumer,
    pub tag: String,
}

/// Opens a channel with `prefetch`, declares and binds the consumer's queue, and consumes it.
pub(crate) async fn consumer_queue(
    conn: &Connection,
    hub: &str,
    exchange: &str,
    prefetch: u16,
    sub: &Subscription,
) -> Result<ConsumerQueue, String> {
    let queue = queue_name(hub, sub)?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| error("opening a consumer channel", e))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| error("setting prefetch", e))?;
    let opts = if sub.options.durable || sub.options.queue.is_some() {
        QueueDeclareOptions::durable()
    } else {
        QueueDeclareOptions::exclusive().auto_delete()
    };
    ch.queue_declare(queue.as_str().into(), opts, FieldTable::default())
        .await
        .map_err(|e| {
            error(
                &format!(
                    "declaring queue {queue:?} (a queue that exists with other arguments must be deleted or renamed)"
                ),
                e,
            )
        })?;
    for p in &sub.patterns {
        let key = ShortString::try_new(p.as_str())
            .map_err(|_| format!("pattern {:?} is longer than 255 bytes", p.as_str()))?;
        ch.queue_bind(
            queue.as_str().into(),
            exchange.into(),
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            error(
                &format!("binding {queue:?} to {exchange:?} with {:?}", p.as_str()),
                e,
            )
        })?;
    }
    let tag = format!("hub-{}", sub.consumer);
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| error(&format!("consuming from {queue:?}"), e))?;
    Ok(ConsumerQueue {
        channel: ch,
        queue,
        consumer,
        tag,
    })
}
