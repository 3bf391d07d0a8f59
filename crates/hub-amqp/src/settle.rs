//! Settling deliveries on one consumer channel: batched `multiple` acks for contiguous finished
//! tags, retries by confirmed republish, dead-lettering with the reason in headers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use hub_core::{Acker, Verdict};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::wire::ATTEMPTS;

/// What the hub needs to republish or dead-letter a delivery.
pub(crate) struct Original {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// A delivery tag within one incarnation of the channel: after lapin recovers a connection,
/// tags start again at 1, so the consume loop starts a new generation when they go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub generation: u32,
    pub tag: u64,
}

pub(crate) enum Cmd {
    /// A delivery entered the hub (sent before it is handed over, so order holds).
    Register(Tag, lapin::Acker),
    /// The dispatcher's verdict.
    Settle(Tag, Verdict, Arc<Original>),
    /// Safe to acknowledge (finished OK, or its copy is confirmed elsewhere).
    Done(Tag),
    /// Could not be retried or dead-lettered: give it back to the broker.
    Requeue(Tag),
    /// Internal: the idle moment passed; acknowledge what is finished.
    Flush,
}

/// The [`Acker`] handed to the dispatcher with each delivery.
pub(crate) struct AmqpAcker {
    pub tag: Tag,
    pub original: Arc<Original>,
    pub tx: mpsc::UnboundedSender<Cmd>,
}

impl Acker for AmqpAcker {
    fn settle(&self, verdict: Verdict) {
        // If the settle task is gone the channel is closed and the broker redelivers.
        let _ = self
            .tx
            .send(Cmd::Settle(self.tag, verdict, Arc::clone(&self.original)));
    }
}

/// Retry and dead-letter policy.
#[derive(Clone)]
pub(crate) struct Policy {
    pub consumer: String,
    pub queue: String,
    pub dead_letter_exchange: String,
    pub max_attempts: u32,
    pub retry_delay: Duration,
    pub retry_delay_max: Duration,
    /// Acknowledge once this many are finished (or after a short idle moment).
    pub ack_every: usize,
}

/// A finished delivery waits at most this long for others to share its ack frame.
const ACK_IDLE: Duration = Duration::from_millis(5);

/// Runs until every sender is gone.
pub(crate) async fn run(
    publisher: Channel,
    policy: Policy,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    tx: mpsc::WeakUnboundedSender<Cmd>,
) {
    let mut generation = 0;
    // Per tag of the current generation: lapin's acker, and whether it finished.
    let mut ackers: BTreeMap<u64, lapin::Acker> = BTreeMap::new();
    let mut outstanding = BTreeSet::new();
    let mut finished = BTreeSet::new();
    loop {
        // With acks pending, wait only briefly for more before sending them.
        let first = if finished.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(ACK_IDLE, rx.recv()).await {
                Ok(c) => c,
                Err(_) => Some(Cmd::Flush),
            }
        };
        // Every sender gone (shutdown, after the hub drained): acknowledge what is left, then stop.
        let closing = first.is_none();
        let first = first.unwrap_or(Cmd::Flush);
        let flush_now = closing || matches!(first, Cmd::Flush);
        let mut cmd = Some(first);
        // Take everything already queued, then acknowledge once.
        while let Some(c) = cmd.take().or_else(|| rx.try_recv().ok()) {
            match c {
                Cmd::Flush => {}
                Cmd::Register(t, acker) => {
                    if t.generation != generation {
                        // The channel was recovered: what was unacked will be redelivered.
                        generation = t.generation;
                        ackers.clear();
                        outstanding.clear();
                        finished.clear();
                    }
                    ackers.insert(t.tag, acker);
                    outstanding.insert(t.tag);
                }
                Cmd::Settle(t, _, _) | Cmd::Done(t) | Cmd::Requeue(t)
                    if t.generation != generation =>
                {
                    debug!(consumer = %policy.consumer, tag = t.tag, "Settled a delivery from before a reconnect; the broker redelivers it.");
                }
                Cmd::Settle(t, Verdict::Ack, _) | Cmd::Done(t) => {
                    outstanding.remove(&t.tag);
                    finished.insert(t.tag);
                }
                Cmd::Settle(t, Verdict::Requeue, _) => {
                    if let Some(tx) = tx.upgrade() {
                        let _ = tx.send(Cmd::Requeue(t));
                    }
                }
                Cmd::Settle(t, verdict, original) => {
                    // Weak: this task ends once no delivery can settle any more.
                    if let Some(tx) = tx.upgrade() {
                        tokio::spawn(retry_or_dead_letter(
                            publisher.clone(),
                            policy.clone(),
                            t,
                            verdict,
                            original,
                            tx,
                        ));
                    }
                }
                Cmd::Requeue(t) => {
                    outstanding.remove(&t.tag);
                    if let Some(acker) = ackers.remove(&t.tag) {
                        let opts = BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        };
                        if !matches!(acker.nack(opts).await, Ok(true)) {
                            info!(consumer = %policy.consumer, "Nack not delivered; the broker will redeliver.");
                        }
                    }
                }
            }
        }
        // Acknowledge everything finished below the oldest unfinished delivery, in one frame:
        // once enough are finished, or when nothing else arrived for a moment.
        if !flush_now && finished.len() < policy.ack_every {
            continue;
        }
        let floor = outstanding.first().copied().unwrap_or(u64::MAX);
        let Some(&upto) = finished.range(..floor).next_back() else {
            if closing {
                break;
            }
            continue;
        };
        finished = finished.split_off(&(upto + 1));
        let acker = ackers.get(&upto).cloned();
        ackers = ackers.split_off(&(upto + 1));
        // lapin's acker knows whether its channel was recovered since: then it sends nothing
        // (an unknown tag would be a channel error) and says false.
        match acker.map(|a| async move { a.ack(BasicAckOptions { multiple: true }).await }) {
            Some(ack) => match ack.await {
                Ok(true) => {}
                Ok(false) => {
                    info!(consumer = %policy.consumer, "Ack not delivered (reconnected); those messages will be redelivered.")
                }
                Err(e) => {
                    info!(consumer = %policy.consumer, error = %e, "Ack not delivered; those messages will be redelivered.")
                }
            },
            None => {
                warn!(consumer = %policy.consumer, tag = upto, "No acker for a finished delivery.")
            }
        }
        if closing {
            break;
        }
    }
}

fn attempts(p: &BasicProperties) -> u32 {
    p.headers()
        .as_ref()
        .and_then(|h| h.inner().get(ATTEMPTS).cloned())
        .and_then(|v| match v {
            AMQPValue::LongLongInt(i) => u32::try_from(i).ok(),
            AMQPValue::LongInt(i) => u32::try_from(i).ok(),
            AMQPValue::LongUInt(i) => Some(i),
            _ => None,
        })
        .unwrap_or(1)
}

fn with_headers(p: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = p.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(ShortString::from(*k), v.clone());
    }
    p.clone().with_headers(headers)
}

pub(crate) async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    body: &[u8],
) -> Result<(), String> {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            ShortString::try_new(key).map_err(|e| e.to_string())?,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    confirmed(confirm, exchange, key)
}

/// What a publisher confirm says about a mandatory publish to `exchange` with `key`.
pub(crate) fn confirmed(confirm: Confirmation, exchange: &str, key: &str) -> Result<(), String> {
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(format!(
            "unroutable: no queue is bound to {exchange:?} for {key:?}"
        )),
        Confirmation::Nack(_) => Err("the broker refused it".into()),
        Confirmation::NotRequested => Err("confirms are not enabled".into()),
    }
}

async fn retry_or_dead_letter(
    publisher: Channel,
    policy: Policy,
    tag: Tag,
    verdict: Verdict,
    original: Arc<Original>,
    tx: mpsc::UnboundedSender<Cmd>,
) {
    let n = attempts(&original.properties);
    let (retry, reason) = match verdict {
        Verdict::Retry { reason } => (n < policy.max_attempts, reason),
        Verdict::Reject { reason } => (false, reason),
        Verdict::Ack | Verdict::Requeue => (false, String::new()),
    };
    let result = if retry {
        // Exponential backoff; the original stays unacknowledged (and counted by prefetch)
        // until its copy is confirmed, so a crash in between redelivers rather than loses it.
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        let delay = policy
            .retry_delay
            .saturating_mul(factor)
            .min(policy.retry_delay_max);
        debug!(consumer = %policy.consumer, attempt = n + 1, ?delay, %reason, "Retrying a message.");
        tokio::time::sleep(delay).await;
        let props = with_headers(
            &original.properties,
            &[(ATTEMPTS, AMQPValue::LongLongInt(i64::from(n) + 1))],
        );
        publish_confirmed(&publisher, "", &policy.queue, props, &original.body).await
    } else {
        warn!(consumer = %policy.consumer, attempts = n, %reason, "Dead-lettering a message.");
        let props = with_headers(
            &original.properties,
            &[
                (
                    "x-hub-reason",
                    AMQPValue::LongString(LongString::from(reason.as_bytes())),
                ),
                (
                    "x-hub-consumer",
                    AMQPValue::LongString(LongString::from(policy.consumer.as_bytes())),
                ),
                (
                    "x-hub-queue",
                    AMQPValue::LongString(LongString::from(policy.queue.as_bytes())),
                ),
                (ATTEMPTS, AMQPValue::LongLongInt(i64::from(n))),
            ],
        );
        publish_confirmed(
            &publisher,
            &policy.dead_letter_exchange,
            &original.routing_key,
            props,
            &original.body,
        )
        .await
    };
    let _ = tx.send(match result {
        Ok(()) => Cmd::Done(tag),
        Err(e) => {
            warn!(consumer = %policy.consumer, error = %e, "Could not retry or dead-letter; requeueing.");
            Cmd::Requeue(tag)
        }
    });
}
