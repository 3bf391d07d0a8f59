//! Handing one message to one consumer again, outside its backend: what `hub dead requeue`
//! asks of a running hub for dead letters the hub kept itself (a file).

use std::sync::Mutex;

use tokio::sync::oneshot;

use super::Dispatcher;
use super::queue::{Offer, Queued};
use super::ticket::{Settle, Ticket};
use hub_core::message::ATTEMPTS_HEADER;
use hub_core::{Message, Verdict, WhenFull};

/// Why a message could not be handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeliverError {
    /// No consumer has that name.
    #[error("no consumer named {0:?} in this hub")]
    UnknownConsumer(String),
    /// The consumer's backend keeps its own dead letters (AMQP): requeue from there.
    #[error(
        "consumer {0:?} is fed by a backend that keeps its own dead letters; requeue them from that backend"
    )]
    BrokerKept(String),
    /// The consumer has no dead-letter sink: a message that failed again would only be logged.
    #[error(
        "consumer {0:?} has no dead-letter sink; a message that failed again would only be logged, so it is not requeued"
    )]
    NoSink(String),
    /// The hub is shutting down, or stopped before the consumer finished the message.
    #[error("the hub is shutting down; the message was not handled")]
    ShuttingDown,
}

impl Dispatcher {
    /// Hands `message` to consumer `consumer` only, as a new first attempt (its
    /// [`ATTEMPTS_HEADER`] reset to 1), and waits until the consumer is done with it, retries
    /// included: [`Verdict::Ack`] once handled, [`Verdict::Reject`] when it was dead-lettered
    /// again (into the consumer's sink: nothing is lost either way).
    ///
    /// # Errors
    /// [`RedeliverError`]: an unknown consumer, one whose backend keeps its own dead letters,
    /// or shutdown before it finished.
    pub async fn redeliver(
        &self,
        consumer: &str,
        message: Message,
    ) -> Result<Verdict, RedeliverError> {
        let sh = &self.shared;
        let Some(index) = sh.slots.iter().position(|s| &*s.name == consumer) else {
            return Err(RedeliverError::UnknownConsumer(consumer.to_owned()));
        };
        let slot = &sh.slots[index];
        if !slot.failures.local {
            return Err(RedeliverError::BrokerKept(consumer.to_owned()));
        }
        if slot.failures.sink.is_none() {
            return Err(RedeliverError::NoSink(consumer.to_owned()));
        }
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let acker = move |v: Verdict| {
            if let Some(tx) = tx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                let _ = tx.send(v);
            }
        };
        let message = message.with_header_set(ATTEMPTS_HEADER, serde_json::json!(1));
        // Queued whatever the consumer's `when_full` (waiting for room, never dropped): a
        // requeued letter leaves its file only once handled or stored again.
        let panics = &sh.backends[slot.backend].settle_panics;
        let ticket = Ticket::new(Box::new(acker), 1, panics);
        sh.backends[slot.backend].count_received(1);
        let item = Queued {
            message,
            settle: Settle::of(&ticket),
            enqueued_ns: sh.now_ns(),
        };
        match slot.queue.push(item, WhenFull::Block, || sh.now_ns()).await {
            Offer::Accepted => {}
            Offer::Closed(_) | Offer::Dropped(_) => return Err(RedeliverError::ShuttingDown),
        }
        match rx.await {
            Ok(Verdict::Requeue) | Err(_) => Err(RedeliverError::ShuttingDown),
            Ok(v) => Ok(v),
        }
    }
}
