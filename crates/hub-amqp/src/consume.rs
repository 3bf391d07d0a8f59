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

use crate::settle::{AmqpAcker, Cmd, Original, Tag};
use crate::wire;

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
}

impl Subscriber {
    /// Hands every delivery to the hub until shutdown; then cancels the subscription (what the
    /// broker sent meanwhile stays unacknowledged and is redelivered) and returns, leaving the
    /// settle task to acknowledge what the drain finishes.
    pub async fn run(self, mut consumer: lapin::Consumer) -> Result<(), String> {
        let mut cancelled = std::pin::pin!(self.shutdown.cancelled());
        let (mut generation, mut last_tag) = (0u32, 0u64);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut cancelled => return self.stop().await,
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
                        // A consumer that silently stops is worse than a hub that exits: say so.
                        return Err(format!(
                            "consumer {}: its channel did not recover: {e}",
                            self.sub.consumer
                        ));
                    }
                    continue;
                }
                None if self.shutdown.is_cancelled() => return Ok(()),
                None => {
                    return Err(format!(
                        "consumer {}: the broker ended the subscription (queue deleted?)",
                        self.sub.consumer
                    ));
                }
            };
            // Tags start again at 1 on a recovered channel: a new generation.
            if delivery.delivery_tag <= last_tag {
                generation += 1;
                info!(backend = %self.backend, consumer = %self.sub.consumer, "Channel recovered; consuming again.");
            }
            last_tag = delivery.delivery_tag;
            if !self.hand_over(delivery, generation).await {
                return self.stop().await;
            }
        }
    }

    /// Registers the delivery with the settle task, then hands it to the hub (or dead-letters it
    /// when malformed). False once the hub takes no more.
    async fn hand_over(&self, delivery: lapin::message::Delivery, generation: u32) -> bool {
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
        let tag = Tag {
            generation,
            tag: delivery_tag,
        };
        let _ = self.settle.send(Cmd::Register(tag, acker));
        let topic = wire::topic(exchange.as_str(), routing_key.as_str(), &properties).to_owned();
        let size = data.len();
        let decoded = if size > self.max_message_bytes {
            self.metrics.oversized();
            Err(wire::Malformed {
                id: properties.message_id().as_ref().map(|id| id.to_string()),
                reason: format!(
                    "body of {size} bytes is over max_message_bytes ({})",
                    self.max_message_bytes
                ),
            })
        } else {
            wire::decode_delivery(&topic, redelivered, &properties, &data).inspect_err(|_| {
                self.metrics.invalid();
            })
        };
        let original = Arc::new(Original {
            topic,
            properties,
            body: data,
        });
        let acker = AmqpAcker {
            tag,
            original,
            tx: self.settle.clone(),
        };
        match decoded {
            Ok(msg) => self
                .sink
                .deliver(Delivery::with_acker(msg, Box::new(acker)).for_subscription(self.sub.id))
                .await
                .is_ok(),
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
