//! `hub dead list` and `hub dead requeue` on a hub's AMQP dead-letter queue
//! (`<hub name>.dead-letters`).
//!
//! Both read the queue with `basic.get` on a channel of their own and never acknowledge what
//! they only look at: closing the channel gives it back to the queue. `requeue` publishes each
//! selected letter to its consumer's queue (the default exchange, routed by the queue name in
//! `x-hub-queue`; mandatory, confirmed), with its attempt count reset and the hub's dead-letter
//! headers removed, and only then acknowledges the letter: a requeue killed at any moment
//! loses nothing (at worst a letter is both requeued and still in the dead-letter queue).

use std::time::Duration;

use hub_core::BoxError;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::publisher::Publisher;
use crate::redact;
use crate::wire::{ATTEMPTS, TOPIC, to_json};

/// The headers the hub adds to a dead letter (removed again when it is requeued).
const DEAD_LETTER_HEADERS: [&str; 4] = [
    "x-hub-reason",
    "x-hub-consumer",
    "x-hub-queue",
    "x-hub-dead-lettered-at",
];

/// One dead letter in the queue, as `hub dead list` shows it.
#[derive(Debug, Clone)]
pub struct QueuedDeadLetter {
    /// The consumer that gave up on it (`x-hub-consumer`).
    pub consumer: String,
    /// Why (`x-hub-reason`).
    pub reason: String,
    /// The consumer's queue (`x-hub-queue`), where a requeue sends it.
    pub queue: String,
    /// Attempts made (`x-hub-attempts`).
    pub attempts: u32,
    /// When (`x-hub-dead-lettered-at`, RFC 3339).
    pub dead_lettered_at: String,
    /// The original topic (`x-hub-topic`).
    pub topic: String,
    /// The message id (`message_id`).
    pub id: String,
}

/// Which letters `requeue` takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this consumer's.
    pub consumer: Option<String>,
    /// Only those whose reason contains this text.
    pub reason: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl Selection {
    fn wants(&self, l: &QueuedDeadLetter) -> bool {
        self.consumer.as_deref().is_none_or(|c| l.consumer == c)
            && self.reason.as_deref().is_none_or(|r| l.reason.contains(r))
    }
}

fn header_text(p: &BasicProperties, name: &str) -> String {
    p.headers()
        .as_ref()
        .and_then(|h| h.inner().get(name).map(to_json))
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn letter_of(p: &BasicProperties, routing_key: &str) -> QueuedDeadLetter {
    let topic = header_text(p, TOPIC);
    QueuedDeadLetter {
        consumer: header_text(p, "x-hub-consumer"),
        reason: header_text(p, "x-hub-reason"),
        queue: header_text(p, "x-hub-queue"),
        attempts: header_text(p, ATTEMPTS).parse().unwrap_or(1),
        dead_lettered_at: header_text(p, "x-hub-dead-lettered-at"),
        topic: if topic.is_empty() {
            routing_key.to_owned()
        } else {
            topic
        },
        id: p
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
    }
}

async fn connect(url: &str) -> Result<Connection, BoxError> {
    tokio::time::timeout(
        Duration::from_secs(15),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| format!("cannot connect to {}: timed out", redact(url)))?
    .map_err(|e| format!("cannot connect to {}: {e}", redact(url)).into())
}

/// Every dead letter in `queue` (up to `max`), left in the queue.
///
/// # Errors
/// Connection failures, a queue that does not exist.
pub async fn list(url: &str, queue: &str, max: usize) -> Result<Vec<QueuedDeadLetter>, BoxError> {
    let conn = connect(url).await?;
    let result = async {
        let ch = conn.create_channel().await?;
        let mut out = Vec::new();
        while out.len() < max {
            let Some(got) = ch
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await?
            else {
                break;
            };
            let d = got.delivery;
            out.push(letter_of(&d.properties, d.routing_key.as_str()));
        }
        // Never acknowledged: closing the channel gives every letter back.
        let _ = ch.close(200, "listed".into()).await;
        Ok::<_, BoxError>(out)
    }
    .await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

/// Sends the selected letters of `queue` back to their consumers' queues; returns how many.
/// `progress` is called after each (confirmed, then acknowledged).
///
/// # Errors
/// Connection failures; a letter whose consumer queue is gone stops the requeue (it stays in
/// the dead-letter queue).
pub async fn requeue(
    url: &str,
    queue: &str,
    select: &Selection,
    mut progress: impl FnMut(&QueuedDeadLetter),
) -> Result<usize, BoxError> {
    let conn = connect(url).await?;
    let result = async {
        let get = conn.create_channel().await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let (publisher, task) = Publisher::start(publish);
        let moved = move_letters(&get, &publisher, queue, select, &mut progress).await;
        drop(publisher);
        let _ = task.await;
        let _ = get.close(200, "requeued".into()).await;
        moved
    }
    .await;
    let _ = conn.close(200, "bye".into()).await;
    result
}

async fn move_letters(
    get: &Channel,
    publisher: &Publisher,
    queue: &str,
    select: &Selection,
    progress: &mut impl FnMut(&QueuedDeadLetter),
) -> Result<usize, BoxError> {
    // Only the letters there when the requeue began: one that fails again comes back into the
    // queue at once, and would otherwise be requeued again and again.
    let present = get
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .message_count() as usize;
    let mut moved = 0;
    let mut fetched = 0;
    while select.limit.is_none_or(|l| moved < l) && fetched < present {
        fetched += 1;
        let Some(got) = get
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?
        else {
            break;
        };
        let d = got.delivery;
        let letter = letter_of(&d.properties, d.routing_key.as_str());
        // Not selected: left unacknowledged, given back when the channel closes.
        if !select.wants(&letter) {
            continue;
        }
        if letter.queue.is_empty() {
            return Err(format!(
                "dead letter {} has no x-hub-queue header: it was not dead-lettered by a hub",
                letter.id
            )
            .into());
        }
        let props = requeued_properties(&d.properties, &letter.topic);
        publisher
            .publish("", &letter.queue, props, d.data.clone())
            .await
            .map_err(|e| format!("requeueing {} to queue {}: {e}", letter.id, letter.queue))?;
        d.acker.ack(BasicAckOptions::default()).await?;
        moved += 1;
        progress(&letter);
    }
    Ok(moved)
}

/// The letter's properties for its consumer's queue: the hub's dead-letter headers removed, the
/// attempt count reset, the topic kept in `x-hub-topic`.
fn requeued_properties(p: &BasicProperties, topic: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            let name = k.as_str();
            if DEAD_LETTER_HEADERS.contains(&name) || name == ATTEMPTS {
                continue;
            }
            headers.insert(k.clone(), v.clone());
        }
    }
    headers.insert(
        ShortString::from(TOPIC),
        AMQPValue::LongString(topic.as_bytes().into()),
    );
    p.clone().with_headers(headers)
}
