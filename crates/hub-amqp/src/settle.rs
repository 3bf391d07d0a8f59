//! Settling deliveries on one consumer channel: batched acks, retries by confirmed republish,
//! dead letters, requeues.
//!
//! - Finished deliveries are acknowledged with `multiple` up to the highest tag below the oldest
//!   unfinished one, once a quarter of the prefetch window has finished or after a short idle
//!   moment. Finished tags above an unfinished one (a message in its retry backoff, a slow one)
//!   are acknowledged one by one once a quarter of the window waits behind it, or at the idle
//!   moment, so a held message never freezes the window or gets finished work redelivered.
//! - A retry waits its backoff (cut short at shutdown), then publishes a confirmed copy with
//!   `x-hub-attempts` + 1 and the original topic in `x-hub-topic`, and only then acknowledges
//!   the original: a crash in between duplicates, never loses.
//! - A dead letter is published, confirmed, with the reason, consumer, queue, attempts, original
//!   topic and time in headers, and only then is the original acknowledged.
//! - A copy or dead letter that cannot be published is tried again with the same backoff (counted
//!   in `hub_amqp_republish_failures_total`, logged once per interval), never by redelivering the
//!   message at once; when the backend closes (after the drain) it is given back with
//!   `basic.nack` + requeue.
//! - [`Verdict::Requeue`] (never processed: refused at shutdown, cut off) is `basic.nack` +
//!   requeue at once: the message comes back as it was, its attempt count unchanged.
//! - The task holds a handle to the consumer channel until its last acknowledgement is out, so the
//!   acks of messages finished during the shutdown drain reach the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hub_core::{Acker, CancellationToken, RetryPolicy, Verdict};
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use metrics::Counter;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

// A republish not confirmed within CONFIRM_WAIT (its queueing included) counts as failed and
// is tried again.
use crate::publisher::{CONFIRM_WAIT, Publisher};
use crate::stream::Progress;
use crate::watchdog::Flow;
use crate::wire::{self, ATTEMPTS, TOPIC};

/// What the hub needs to republish or dead-letter a delivery.
pub(crate) struct Original {
    /// The topic the consumer saw (the routing key, or `x-hub-topic` for a retry's copy).
    pub topic: String,
    /// Shared with the message's headers (read from them on first use).
    pub properties: Arc<BasicProperties>,
    pub body: Vec<u8>,
    /// It came through the default exchange: the hub's own retry copy, whose `x-hub-attempts`
    /// is the hub's count ([`wire::attempt`]).
    pub retry_copy: bool,
}

/// A delivery tag within one incarnation of the channel: after lapin recovers a connection,
/// tags start again at 1, so the consume loop starts a new generation when they go backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub generation: u32,
    pub tag: u64,
}

pub(crate) enum Cmd {
    /// A delivery entered the hub (sent before it is handed over, so order holds), with its
    /// offset when it was read from a stream.
    Register(Tag, lapin::Acker, Option<u64>),
    /// The dispatcher's verdict, with a sender for a retry or dead letter to report back on
    /// (a strong one: the task must not end while the job it starts runs).
    Settle(Tag, Verdict, Arc<Original>, mpsc::UnboundedSender<Cmd>),
    /// Safe to acknowledge: its copy or dead letter is confirmed.
    Done(Tag),
    /// Give it back to the broker as it was.
    Requeue(Tag),
    /// Internal: the idle moment passed; acknowledge what is finished.
    Flush,
    /// The receive loop subscribed again on a new channel: hold it too, for the acks.
    Hold(Channel),
}

/// Tells whether the channel incarnation a delivery came on is gone: lapin poisons every acker
/// of a channel when the broker closes it or its connection is lost, and RabbitMQ then puts
/// what it had not acknowledged back in the queue. One per generation (a clone of its first
/// delivery's acker, never used to acknowledge), shared by the ackers of its deliveries.
#[derive(Debug)]
pub(crate) struct ChannelWitness(lapin::Acker);

impl ChannelWitness {
    pub fn new(acker: &lapin::Acker) -> Arc<Self> {
        Arc::new(Self(acker.clone()))
    }

    /// The channel closed (or was recovered since): its deliveries come again.
    pub fn gone(&self) -> bool {
        self.0.poisoned()
    }
}

/// The [`Acker`] handed to the dispatcher with each delivery.
pub(crate) struct AmqpAcker {
    pub tag: Tag,
    pub original: Arc<Original>,
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// The delivery's channel, for [`Acker::withdrawn`]; `None` for a stream consumer (what
    /// its new subscription reads depends on its stored offset, not on the broker's requeue:
    /// a copy already in the hub is handled).
    pub channel: Option<Arc<ChannelWitness>>,
}

impl Acker for AmqpAcker {
    fn settle(&self, verdict: Verdict) {
        // If the settle task is gone the channel is closed and the broker redelivers.
        let _ = self.tx.send(Cmd::Settle(
            self.tag,
            verdict,
            Arc::clone(&self.original),
            self.tx.clone(),
        ));
    }

    /// Its channel closed: RabbitMQ requeued it and delivers it again (on the consumer's new
    /// channel); a copy still queued in the hub is dropped, not handled twice.
    fn withdrawn(&self) -> bool {
        self.channel.as_ref().is_some_and(|c| c.gone())
    }
}

/// Where dead letters go.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters {
    /// `""` (the default exchange, straight to the hub's dead-letter queue) or the configured
    /// fanout exchange.
    pub exchange: String,
    /// The hub's dead-letter queue's name with the default exchange; `None`: the original topic.
    pub key: Option<String>,
}

/// Retry, dead-letter and acknowledgement policy of one consumer.
#[derive(Clone)]
pub(crate) struct Policy {
    pub consumer: String,
    pub queue: String,
    pub dead_letters: DeadLetters,
    /// The consumer's `retry`, or the backend's `max_attempts`, `retry_delay` and
    /// `retry_delay_max`.
    pub retry: RetryPolicy,
    /// Acknowledge once this many are finished (or after a short idle moment).
    pub ack_every: usize,
    /// `hub_amqp_republish_failures_total{consumer, kind="retry"}` and `{kind="dead_letter"}`.
    pub retry_failures: Counter,
    pub dead_letter_failures: Counter,
}

/// A finished delivery waits at most this long for others to share its ack frame.
const ACK_IDLE: Duration = Duration::from_millis(5);
/// A republish that keeps failing is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How a flush was triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// A quarter of the window finished.
    Enough,
    /// Nothing arrived for a moment.
    Idle,
    /// The last sender is gone: everything goes out.
    Closing,
}

/// The unacknowledged deliveries of the channel's current generation.
#[derive(Default)]
struct Window {
    generation: u32,
    ackers: BTreeMap<u64, lapin::Acker>,
    /// Registered, not finished (being handled, or waiting for a republish).
    outstanding: BTreeSet<u64>,
    finished: BTreeSet<u64>,
    /// The highest tag registered.
    last: u64,
    /// Stream offsets of the registered deliveries, by tag.
    offsets: BTreeMap<u64, u64>,
    /// The first tag the broker used that never reached the hub (a delivery lost on the way:
    /// tags are consecutive on a channel). A `multiple` ack never reaches it: it would
    /// acknowledge a message nobody handled.
    first_gap: Option<u64>,
}

/// What the settle task works with.
pub(crate) struct Settler {
    /// Held until the last acknowledgement is out: lapin closes a channel with its last handle.
    pub channel: Channel,
    pub publisher: Publisher,
    pub policy: Policy,
    /// Cancelled when shutdown begins: a retry's backoff is cut short (its copy goes out now).
    pub shutdown: CancellationToken,
    /// Cancelled when the backend closes, after the drain: a republish still failing gives up.
    pub closing: CancellationToken,
    /// Where the count of unacknowledged deliveries is kept for the stall watchdog.
    pub flow: Arc<Flow>,
    /// A stream consumer's progress (the offset stored for its next start): a message given
    /// back or left for a retry at shutdown is never counted finished, so it is read again.
    pub progress: Option<Arc<Progress>>,
}

impl Settler {
    /// Runs until every sender is gone, then acknowledges what is left and releases the channel.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        let mut w = Window::default();
        let mut held = Vec::new();
        loop {
            // With acks pending, wait only briefly for more before sending them.
            let first = if w.finished.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(ACK_IDLE, rx.recv()).await {
                    Ok(c) => c,
                    Err(_) => Some(Cmd::Flush),
                }
            };
            let mode = match &first {
                None => Flush::Closing,
                Some(Cmd::Flush) => Flush::Idle,
                Some(_) => Flush::Enough,
            };
            let mut cmd = first;
            // Take everything already queued, then acknowledge once.
            while let Some(c) = cmd.take().or_else(|| rx.try_recv().ok()) {
                if let Cmd::Hold(ch) = c {
                    held.push(std::mem::replace(&mut self.channel, ch));
                    continue;
                }
                self.apply(&mut w, c).await;
            }
            if mode == Flush::Enough && w.finished.len() < self.policy.ack_every {
                self.flow.unacked.store(w.ackers.len(), Ordering::Relaxed);
                continue;
            }
            self.flush(&mut w, mode).await;
            self.flow.unacked.store(w.ackers.len(), Ordering::Relaxed);
            if mode == Flush::Closing {
                break;
            }
        }
        drop(held);
        debug!(consumer = %self.policy.consumer, channel = self.channel.id(), "Last acknowledgement sent; releasing the channel.");
    }

    async fn apply(&self, w: &mut Window, cmd: Cmd) {
        match cmd {
            Cmd::Flush | Cmd::Hold(_) => {}
            Cmd::Register(t, acker, offset) => {
                if t.generation != w.generation {
                    // The channel was recovered: what was unacked will be redelivered.
                    *w = Window {
                        generation: t.generation,
                        ..Window::default()
                    };
                }
                if t.tag > w.last + 1 && w.first_gap.is_none() {
                    warn!(consumer = %self.policy.consumer, missing_from = w.last + 1, missing_to = t.tag - 1, "Deliveries the broker sent never arrived; they are not acknowledged (the broker redelivers them once the channel closes).");
                    w.first_gap = Some(w.last + 1);
                }
                w.last = w.last.max(t.tag);
                w.ackers.insert(t.tag, acker);
                w.outstanding.insert(t.tag);
                if let Some(o) = offset {
                    w.offsets.insert(t.tag, o);
                }
            }
            Cmd::Settle(t, _, _, _) | Cmd::Done(t) | Cmd::Requeue(t)
                if t.generation != w.generation =>
            {
                debug!(consumer = %self.policy.consumer, tag = t.tag, "Settled a delivery from before a reconnect; the broker redelivers it.");
            }
            // A stream keeps every message: one given back (at shutdown) stays outstanding, so the
            // stored offset stops below it and the next start reads it again.
            Cmd::Settle(_, Verdict::Requeue | Verdict::Retry { .. }, _, _) | Cmd::Requeue(_)
                if self.progress.is_some() => {}
            Cmd::Settle(t, Verdict::Ack, _, _) | Cmd::Done(t) => {
                w.outstanding.remove(&t.tag);
                w.finished.insert(t.tag);
            }
            Cmd::Settle(t, Verdict::Requeue, _, _) | Cmd::Requeue(t) => {
                w.outstanding.remove(&t.tag);
                if let Some(acker) = w.ackers.remove(&t.tag) {
                    let requeue = BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    };
                    if !matches!(acker.nack(requeue).await, Ok(true)) {
                        // A withdrawn copy's channel is gone: expected, one per copy.
                        if acker.poisoned() {
                            debug!(consumer = %self.policy.consumer, "Requeue not delivered (its channel closed); the broker redelivers the message anyway.");
                        } else {
                            info!(consumer = %self.policy.consumer, "Requeue not delivered; the broker redelivers the message anyway.");
                        }
                    }
                }
            }
            Cmd::Settle(t, verdict, original, tx) => {
                let Some(acker) = w.ackers.get(&t.tag).cloned() else {
                    warn!(consumer = %self.policy.consumer, tag = t.tag, "A verdict for an unknown delivery; the broker redelivers it.");
                    return;
                };
                let job = Republish {
                    publisher: self.publisher.clone(),
                    policy: self.policy.clone(),
                    shutdown: self.shutdown.clone(),
                    closing: self.closing.clone(),
                    tag: t,
                    acker,
                    original,
                    tx,
                };
                tokio::spawn(job.run(verdict));
            }
        }
    }

    /// Acknowledges everything finished below the oldest unfinished delivery in one frame, and
    /// finished ones above it one by one when enough wait there or the channel is idle.
    async fn flush(&self, w: &mut Window, mode: Flush) {
        let floor = w
            .outstanding
            .first()
            .copied()
            .unwrap_or(u64::MAX)
            .min(w.first_gap.unwrap_or(u64::MAX));
        if let Some(progress) = &self.progress {
            // Every tag below `floor` is finished: the offset of the highest one is done.
            let upto = if floor == u64::MAX { w.last } else { floor - 1 };
            if let Some((_, &offset)) = w.offsets.range(..=upto).next_back() {
                progress.finished_upto(offset);
            }
            w.offsets = w.offsets.split_off(&(upto.saturating_add(1)));
        }
        if let Some(&upto) = w.finished.range(..floor).next_back() {
            w.finished = w.finished.split_off(&(upto + 1));
            let acker = w.ackers.get(&upto).cloned();
            w.ackers = w.ackers.split_off(&(upto + 1));
            self.ack(acker, true, upto).await;
        }
        if w.finished.is_empty()
            || (mode == Flush::Enough && w.finished.len() < self.policy.ack_every)
        {
            return;
        }
        for tag in std::mem::take(&mut w.finished) {
            let acker = w.ackers.remove(&tag);
            self.ack(acker, false, tag).await;
        }
    }

    async fn ack(&self, acker: Option<lapin::Acker>, multiple: bool, tag: u64) {
        let consumer = &self.policy.consumer;
        // lapin's acker knows whether its channel was recovered since: then it sends nothing
        // (an unknown tag would be a channel error) and says false.
        match acker {
            Some(a) => match a.ack(BasicAckOptions { multiple }).await {
                Ok(true) => {}
                Ok(false) => {
                    info!(%consumer, "Ack not delivered (reconnected); those messages will be redelivered.")
                }
                Err(e) => {
                    info!(%consumer, error = %e, "Ack not delivered; those messages will be redelivered.")
                }
            },
            None => warn!(%consumer, tag, "No acker for a finished delivery."),
        }
    }
}

/// A retry's copy or a dead letter, published (with backoff while it fails) before the original
/// is acknowledged.
struct Republish {
    publisher: Publisher,
    policy: Policy,
    shutdown: CancellationToken,
    closing: CancellationToken,
    tag: Tag,
    /// To tell whether the delivery still belongs to a live channel before publishing.
    acker: lapin::Acker,
    original: Arc<Original>,
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Republish {
    async fn run(self, verdict: Verdict) {
        let p = &self.policy;
        let n = wire::attempt(&self.original.properties, self.original.retry_copy);
        let (retry, reason, asked) = match verdict {
            Verdict::Retry { reason, delay } => (n < p.retry.max_attempts, reason, delay),
            Verdict::Reject { reason } => (false, reason, None),
            Verdict::Ack | Verdict::Requeue => return,
        };
        let (exchange, key, properties, failures, kind) = if retry {
            let id = self
                .original
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| self.original.topic.clone(), ToString::to_string);
            let delay = p.retry.delay_after(n, &id, asked);
            debug!(consumer = %p.consumer, attempt = n + 1, ?delay, %reason, "Retrying a message.");
            // Shutdown cuts the wait short: the copy goes out now (its attempt still counted).
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => {}
            }
            let props = with_headers(
                &self.original.properties,
                &[
                    (ATTEMPTS, AMQPValue::LongLongInt(i64::from(n) + 1)),
                    (TOPIC, long_string(&self.original.topic)),
                ],
            );
            ("", p.queue.as_str(), props, &p.retry_failures, "retry")
        } else {
            warn!(consumer = %p.consumer, attempts = n, %reason, "Dead-lettering a message.");
            let props = with_headers(
                &self.original.properties,
                &[
                    ("x-hub-reason", long_string(&reason)),
                    ("x-hub-consumer", long_string(&p.consumer)),
                    ("x-hub-queue", long_string(&p.queue)),
                    (ATTEMPTS, AMQPValue::LongLongInt(i64::from(n))),
                    (TOPIC, long_string(&self.original.topic)),
                    (
                        "x-hub-dead-lettered-at",
                        long_string(&jiff::Timestamp::now().to_string()),
                    ),
                ],
            );
            // A fanout ignores the routing key; the topic is kept there when it fits (it is in
            // `x-hub-topic` anyway).
            let topic = self.original.topic.as_str();
            let key = p
                .dead_letters
                .key
                .as_deref()
                .unwrap_or(if topic.len() <= 255 { topic } else { "" });
            (
                p.dead_letters.exchange.as_str(),
                key,
                props,
                &p.dead_letter_failures,
                "dead letter",
            )
        };
        // Tried until confirmed; given up (the original requeued) when the backend closes.
        let cmd = tokio::select! {
            cmd = self.publish(exchange, key, properties, failures, kind) => cmd,
            () = self.closing.cancelled() => {
                info!(consumer = %p.consumer, %kind, "Closing with a message not republished; giving it back to the broker.");
                Some(Cmd::Requeue(self.tag))
            }
        };
        if let Some(cmd) = cmd {
            let _ = self.tx.send(cmd);
        }
    }

    /// Publishes until confirmed; `None` when the delivery's channel is gone (the broker
    /// redelivers it).
    async fn publish(
        &self,
        exchange: &str,
        key: &str,
        properties: BasicProperties,
        failures: &Counter,
        kind: &str,
    ) -> Option<Cmd> {
        let p = &self.policy;
        let mut delay = p.retry.delay.max(Duration::from_millis(100));
        let mut failed = 0u64;
        let mut last_log: Option<Instant> = None;
        loop {
            if !self.acker.usable() {
                debug!(consumer = %p.consumer, "The delivery's channel is gone; the broker redelivers it.");
                return None;
            }
            let publish = self.publisher.publish(
                exchange,
                key,
                properties.clone(),
                self.original.body.clone(),
            );
            // Bounded: a broker that blocks publishing never confirms.
            let result = tokio::time::timeout(CONFIRM_WAIT, publish)
                .await
                .unwrap_or_else(|_| {
                    Err(crate::publisher::PublishFailure::Transport(format!(
                        "not confirmed within {}s",
                        CONFIRM_WAIT.as_secs()
                    )))
                });
            let error = match result {
                Ok(()) => {
                    if failed > 0 {
                        info!(consumer = %p.consumer, %kind, failed, "Published after failures.");
                    }
                    return Some(Cmd::Done(self.tag));
                }
                Err(e) => e,
            };
            failed += 1;
            failures.increment(1);
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                warn!(consumer = %p.consumer, %kind, error = %error, failed, retry_in = ?delay, "Could not publish; the message is held and tried again.");
                last_log = Some(Instant::now());
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(p.retry.max_delay);
        }
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

fn with_headers(p: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = p.headers().clone().unwrap_or_default();
    // The broker's count of this delivery is in the attempts now; the copy starts its own.
    if headers.contains_key(wire::DELIVERY_COUNT) {
        let mut map = headers.inner().clone();
        map.remove(wire::DELIVERY_COUNT);
        headers = FieldTable::from(map);
    }
    for (k, v) in extra {
        headers.insert(ShortString::from(*k), v.clone());
    }
    p.clone().with_headers(headers)
}
