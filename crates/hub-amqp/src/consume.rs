//! One consumer's subscription: deliveries from its queue into the hub, each registered with the
//! settle task first.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hub_core::{Acker, BackendMetrics, CancellationToken, Delivery, Sink, Subscription, Verdict};
use lapin::Channel;
use lapin::options::BasicCancelOptions;
use tokio::sync::mpsc;
use tracing::{info, warn};

use hub_engine::log_throttle::LogThrottle;

use crate::settle::{AmqpAcker, ChannelWitness, Cmd, Original, Tag};
use crate::stream::{self, Progress};
use crate::topology::QueueSpec;
use crate::watchdog::{Ask, Flow};
use crate::wire;
use hub_core::{Pattern, StreamOffset};
use hub_engine::metrics::ResubscribeReason;
use lapin::types::FieldTable;
use metrics::Counter;
use std::sync::atomic::Ordering;

/// Everything one consumer's receive loop works with.
pub(crate) struct Subscriber {
    pub backend: Arc<str>,
    pub sub: Subscription,
    /// The consumer's channel (the settle task holds another handle, for the acks).
    pub channel: Channel,
    /// The consumer tag, to cancel the subscription at shutdown.
    pub tag: String,
    pub sink: Sink,
    pub metrics: BackendMetrics,
    pub shutdown: CancellationToken,
    pub settle: mpsc::UnboundedSender<Cmd>,
    /// The backend's `max_message_bytes`.
    pub max_message_bytes: usize,
    /// Lines about malformed or oversized messages: at most one a second.
    pub refused_log: std::sync::Mutex<LogThrottle>,
    /// How the queue is declared and consumed, to subscribe again.
    pub spec: QueueSpec,
    /// The consuming connection, for a new channel when the old one is gone.
    pub conn: Arc<lapin::Connection>,
    /// What the stall watchdog reads, and how it asks for a new subscription.
    pub flow: Arc<Flow>,
    /// `hub_amqp_resubscribes_total{consumer, reason}`, by reason.
    pub resubscribes: Resubscribes,
    /// Subscriptions so far (each gets its own consumer tag).
    pub subscriptions: u32,
    /// The channel's generation and the last delivery tag seen (see [`Tag`]).
    pub generation: u32,
    pub last_tag: u64,
    /// The current generation's channel, for [`AmqpAcker::channel`] (not for a stream).
    pub witness: Option<(u32, Arc<ChannelWitness>)>,
    /// Reading a stream: its progress, the patterns to match in the hub (the record stream
    /// holds every topic), and where to start without a stored offset.
    pub stream: Option<StreamRead>,
}

/// A stream consumer's reading state.
pub(crate) struct StreamRead {
    pub progress: Arc<Progress>,
    pub filter: Option<Vec<Pattern>>,
    pub start: StreamOffset,
}

/// The arguments of `basic.consume`: for a stream, where to start (after what is finished, or
/// the configured offset).
pub(crate) fn consume_args(stream: Option<&StreamRead>) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(s) = stream {
        args.insert(stream::OFFSET_HEADER.into(), s.progress.start(s.start));
    }
    args
}

/// `hub_amqp_resubscribes_total` of one consumer, by reason.
pub(crate) struct Resubscribes {
    pub cancelled: Counter,
    pub no_consumer: Counter,
    pub stalled: Counter,
    pub channel_closed: Counter,
}

impl Resubscribes {
    fn count(&self, why: ResubscribeReason) {
        match why {
            ResubscribeReason::Cancelled => &self.cancelled,
            ResubscribeReason::NoConsumer => &self.no_consumer,
            ResubscribeReason::Stalled => &self.stalled,
            ResubscribeReason::ChannelClosed => &self.channel_closed,
        }
        .increment(1);
    }
}

/// Tries at subscribing again before the backend gives up (and the hub exits with the reason).
const RESUBSCRIBE_TRIES: u32 = 5;

impl Subscriber {
    /// Hands every delivery to the hub until shutdown; then cancels the subscription (what the
    /// broker sent meanwhile stays unacknowledged and is redelivered) and returns, leaving the
    /// settle task to acknowledge what the drain finishes.
    pub async fn run(mut self, mut consumer: lapin::Consumer) -> Result<(), String> {
        let shutdown = self.shutdown.clone();
        let flow = Arc::clone(&self.flow);
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        self.flow.received();
        loop {
            let next = tokio::select! {
                biased;
                () = &mut cancelled => return self.stop().await,
                ask = flow.asked() => {
                    let renewed = match ask {
                        Ask::Resubscribe(why) => self.resubscribe(&mut consumer, Some(why)).await?,
                        Ask::Recovered => self.after_recovery(&mut consumer).await?,
                    };
                    if !renewed {
                        return self.stop().await;
                    }
                    continue;
                }
                d = consumer.next() => d,
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    warn!(backend = %self.backend, consumer = %self.sub.consumer, error = %e, "Consumer error; waiting for recovery.");
                    let recovered = tokio::select! {
                        r = self.channel.wait_for_recovery(e) => r,
                        () = &mut cancelled => return self.stop().await,
                    };
                    if let Err(e) = recovered {
                        // lapin recovers connections, not a channel the broker closed (RabbitMQ's
                        // consumer_timeout: a delivery unacknowledged too long). Its unacked
                        // deliveries go back to the queue; a new channel takes them up again.
                        // What this channel had handed over is withdrawn: copies still queued
                        // in the hub are dropped (`AmqpAcker::withdrawn`), those in hand settle
                        // through their own ackers, which send nothing now. When the connection
                        // is gone too, the tries fail and the backend stops with the reason.
                        warn!(backend = %self.backend, consumer = %self.sub.consumer, queue = %self.spec.queue, error = %e, "The broker closed the consumer's channel; subscribing again on a new one (a durable queue redelivers what it had not acknowledged, and copies still queued in the hub are dropped). A delivery unacknowledged past RabbitMQ's consumer_timeout does this: keep the consumer's timeout below it.");
                        if !self
                            .resubscribe(&mut consumer, Some(ResubscribeReason::ChannelClosed))
                            .await
                            .map_err(|f| format!("{f} (its channel was closed: {e})"))?
                        {
                            return self.stop().await;
                        }
                        continue;
                    }
                    // lapin's recovery consumes a stream again from where it first started (a
                    // "next" start would skip the outage): from after what is finished instead.
                    if self.stream.is_some() && !self.resubscribe(&mut consumer, None).await? {
                        return self.stop().await;
                    }
                    continue;
                }
                None if self.shutdown.is_cancelled() => return Ok(()),
                None => {
                    // The broker cancelled it (the queue was deleted, its node went away).
                    warn!(backend = %self.backend, consumer = %self.sub.consumer, queue = %self.spec.queue, "The broker cancelled the subscription; subscribing again.");
                    if !self
                        .resubscribe(&mut consumer, Some(ResubscribeReason::Cancelled))
                        .await?
                    {
                        return self.stop().await;
                    }
                    continue;
                }
            };
            self.flow.received();
            let tag = self.tag(delivery.delivery_tag);
            if !self.hand_over(delivery, tag, false).await {
                return self.stop().await;
            }
        }
    }

    /// After lapin recovered the connection: a stream consumer that read anything subscribes
    /// again from after what it finished, or from the first offset it read (lapin's recovery
    /// consumes again from where it first started: a `next` start would skip the outage), once
    /// its channel is back. False at shutdown.
    async fn after_recovery(&mut self, consumer: &mut lapin::Consumer) -> Result<bool, String> {
        if self
            .stream
            .as_ref()
            .is_none_or(|s| s.progress.resume_at().is_none())
        {
            return Ok(true);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.channel.status().connected() && tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        self.resubscribe(consumer, None).await
    }

    /// The delivery's tag in its channel's generation: tags start again at 1 on a recovered or
    /// new channel, which begins a new generation.
    fn tag(&mut self, delivery_tag: u64) -> Tag {
        if delivery_tag <= self.last_tag {
            self.generation += 1;
            info!(backend = %self.backend, consumer = %self.sub.consumer, "Channel recovered; consuming again.");
        }
        self.last_tag = delivery_tag;
        Tag {
            generation: self.generation,
            tag: delivery_tag,
        }
    }

    /// Registers the delivery with the settle task, then hands it to the hub (or dead-letters it
    /// when malformed; with `drop_it`, or when a stream consumer does not want it, settles it at
    /// once). False once the hub takes no more.
    async fn hand_over(
        &mut self,
        delivery: lapin::message::Delivery,
        tag: Tag,
        drop_it: bool,
    ) -> bool {
        let lapin::message::Delivery {
            delivery_tag,
            exchange,
            routing_key,
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        debug_assert_eq!(tag.tag, delivery_tag);
        // Withdrawn copies only where the broker gives them back: not a stream (read again from
        // its progress), not a queue deleted with the channel (its copies would be lost).
        let channel = if self.stream.is_some() || !self.spec.survives_close() {
            None
        } else {
            match &self.witness {
                // Kept unless it is gone while this acker is live (a reconnect the tags did
                // not show).
                Some((generation, w))
                    if *generation == tag.generation && (!w.gone() || acker.poisoned()) =>
                {
                    Some(Arc::clone(w))
                }
                _ => {
                    let w = ChannelWitness::new(&acker);
                    self.witness = Some((tag.generation, Arc::clone(&w)));
                    Some(w)
                }
            }
        };
        // A dropped one is read again: its offset must not count as finished.
        let offset = self
            .stream
            .as_ref()
            .filter(|_| !drop_it)
            .and_then(|_| stream::delivery_offset(&properties));
        if let (Some(s), Some(o)) = (&self.stream, offset) {
            s.progress.read(o);
        }
        let _ = self.settle.send(Cmd::Register(tag, acker, offset));
        let topic = wire::topic(exchange.as_str(), routing_key.as_str(), &properties).to_owned();
        // The attempts count is believed only on the hub's own retry copies.
        let retry_copy = exchange.as_str().is_empty();
        let properties = Arc::new(properties);
        // Read before (a recovered subscription starts again where it first did), or a topic
        // this stream consumer does not want (the record stream holds them all): done at once.
        let skip = drop_it
            || self.stream.as_ref().is_some_and(|s| {
                offset.zip(s.progress.done()).is_some_and(|(o, d)| o <= d)
                    || s.filter
                        .as_ref()
                        .is_some_and(|f| !f.iter().any(|p| p.matches(&topic)))
            });
        let size = data.len();
        let decoded = if skip {
            Err(wire::Malformed {
                id: None,
                reason: String::new(),
            })
        } else if size > self.max_message_bytes {
            self.metrics.oversized();
            Err(wire::Malformed {
                id: properties.message_id().as_ref().map(|id| id.to_string()),
                reason: format!(
                    "body of {size} bytes is over max_message_bytes ({})",
                    self.max_message_bytes
                ),
            })
        } else {
            wire::decode_shared(
                &topic,
                redelivered,
                retry_copy,
                Arc::clone(&properties),
                &data,
            )
            .inspect_err(|_| self.metrics.invalid())
            .and_then(|msg| {
                // The headers count too (they arrive whole in one frame, so lapin's
                // negotiated `frame_max` is what bounds their reading).
                let whole = msg.byte_size();
                if whole <= self.max_message_bytes {
                    return Ok(msg);
                }
                self.metrics.oversized();
                Err(wire::Malformed {
                    id: Some(msg.id().to_owned()),
                    reason: format!(
                        "message of {whole} bytes with its headers is over max_message_bytes ({})",
                        self.max_message_bytes
                    ),
                })
            })
        };
        let original = Arc::new(Original {
            topic,
            properties,
            body: data,
            retry_copy,
        });
        let acker = AmqpAcker {
            tag,
            original,
            tx: self.settle.clone(),
            channel,
        };
        if skip {
            acker.settle(Verdict::Ack);
            return true;
        }
        match decoded {
            Ok(msg) => {
                self.flow.in_sink.store(true, Ordering::Relaxed);
                let taken = self
                    .sink
                    .deliver(
                        Delivery::with_acker(msg, Box::new(acker)).for_subscription(self.sub.id),
                    )
                    .await
                    .is_ok();
                self.flow.in_sink.store(false, Ordering::Relaxed);
                taken
            }
            Err(bad) => {
                let held = self
                    .refused_log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .allow();
                if let Some(held) = held {
                    warn!(backend = %self.backend, consumer = %self.sub.consumer, topic = %acker.original.topic, message_id = bad.id.as_deref().unwrap_or("-"), size, reason = %bad.reason, similar_not_logged = held, "Refused a message; dead-lettering it.");
                }
                acker.settle(Verdict::Reject {
                    reason: format!("malformed: {}", bad.reason),
                });
                true
            }
        }
    }

    /// Cancels the subscription (if the broker has not) and subscribes again, declaring the
    /// queue again first (it may have been deleted): on the same channel while it is open, else
    /// on a new one (handed to the settle task to hold). What the old subscription had already
    /// received is handed over first (a stream's is dropped: it is read again from after what
    /// is finished). `why` is counted once subscribed; `None`: after lapin's recovery of a
    /// stream consumer.
    /// False when shutdown began meanwhile.
    ///
    /// # Errors
    /// Every try failed: the backend stops with the reason (and the hub with it, to be
    /// restarted), rather than go on consuming nothing.
    async fn resubscribe(
        &mut self,
        consumer: &mut lapin::Consumer,
        why: Option<ResubscribeReason>,
    ) -> Result<bool, String> {
        // The broker's cancel, or its closing the channel, ended the old subscription: nothing
        // to cancel or drain.
        if !matches!(
            why,
            Some(ResubscribeReason::Cancelled | ResubscribeReason::ChannelClosed)
        ) {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.channel
                    .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()),
            )
            .await;
            // Deliveries already on their way to the old subscription: never dropped
            // unsettled (they would stay unacknowledged until the channel closes). It ends
            // once the cancel is through.
            let until = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, consumer.next()).await {
                let tag = self.tag(d.delivery_tag);
                if !self.hand_over(d, tag, self.stream.is_some()).await {
                    return Ok(false);
                }
            }
        }
        let mut failure = String::new();
        // The old subscription's channel is gone (and a new one taken).
        let mut dead_channel = false;
        for n in 0..RESUBSCRIBE_TRIES {
            if n > 0 {
                tokio::select! {
                    () = self.shutdown.cancelled() => return Ok(false),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            if !self.channel.status().connected() {
                let opened = tokio::select! {
                    () = self.shutdown.cancelled() => return Ok(false),
                    r = self.spec.channel(&self.conn) => r,
                };
                match opened {
                    Ok(ch) => {
                        let _ = self.settle.send(Cmd::Hold(ch.clone()));
                        self.channel = ch;
                        dead_channel = true;
                        // Its tags start again at 1: a new generation.
                        self.last_tag = u64::MAX;
                    }
                    Err(e) => {
                        failure = e;
                        continue;
                    }
                }
            }
            self.subscriptions += 1;
            let tag = format!("hub-{}-{}", self.sub.consumer, self.subscriptions);
            let args = consume_args(self.stream.as_ref());
            let subscribed = async {
                self.spec.declare(&self.channel).await?;
                self.spec.consume(&self.channel, &tag, args).await
            };
            let subscribed = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(false),
                r = subscribed => r,
            };
            match subscribed {
                Ok(c) => {
                    let old = std::mem::replace(consumer, c);
                    if dead_channel {
                        // lapin 4.12 cancels a consumer still marked active when it is dropped,
                        // and a cancel on a channel the broker closed fails with
                        // InvalidChannel, which lapin takes for a connection error: it
                        // recovered the whole connection, every consumer's unacknowledged
                        // deliveries redelivered (found with lapin's trace log). The dead
                        // consumer is never dropped instead: one lapin `Consumer` (its
                        // handles, an empty delivery queue) kept per channel lost while its
                        // connection stayed (consumer_timeout: at most one per timeout).
                        std::mem::forget(old);
                    } else {
                        drop(old);
                    }
                    self.tag = tag;
                    if let Some(why) = why {
                        self.resubscribes.count(why);
                    }
                    self.flow.received();
                    // A request the watchdog made meanwhile is answered by this subscription.
                    self.flow.clear_ask();
                    info!(backend = %self.backend, consumer = %self.sub.consumer, queue = %self.spec.queue, reason = why.map_or("recovered", ResubscribeReason::as_str), "Subscribed again.");
                    return Ok(true);
                }
                Err(e) => {
                    warn!(backend = %self.backend, consumer = %self.sub.consumer, queue = %self.spec.queue, error = %e, "Could not subscribe again; trying again.");
                    failure = e;
                }
            }
        }
        Err(format!(
            "consumer {}: could not subscribe again to {:?} ({} tries): {failure}",
            self.sub.consumer, self.spec.queue, RESUBSCRIBE_TRIES
        ))
    }

    /// Asks the broker to stop delivering (bounded; the channel stays open for the acks).
    async fn stop(&self) -> Result<(), String> {
        let cancel = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), cancel).await {
            info!(backend = %self.backend, consumer = %self.sub.consumer, error = %e, "Could not cancel the subscription; its channel closes at the end.");
        }
        Ok(())
    }
}
