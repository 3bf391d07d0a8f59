//! What becomes of a message a consumer failed: a retry after the consumer's delay, or a dead
//! letter once its attempts run out (at once for an invalid message).
//!
//! For a backend that redelivers itself (AMQP: a confirmed copy after its backoff, its
//! dead-letter exchange), the verdict goes to the backend as it is. For the others (ZeroMQ,
//! memory) the hub keeps the message: it is set aside, holding its place in the consumer's
//! queue, and given back to that consumer only after the delay, with its attempt number in
//! [`ATTEMPTS_HEADER`]; out of attempts, it goes to the consumer's dead-letter sink before it
//! counts as settled. With `retry.in_order`, on any backend, the worker itself waits and tries
//! again before it takes the next message.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tracing::{debug, error, warn};

use super::queue::Queued;
use super::stats::Outcome;
use super::ticket::Settle;
use super::worker::InFlight;
use super::{Shared, Slot};
use crate::dead_letter::{DeadLetter, DeadLetterSink};
use crate::metrics::DeadLetterCounters;
use hub_core::message::ATTEMPTS_HEADER;
use hub_core::{Message, RetryPolicy, Verdict};

/// A sink write that fails is tried again after this long, doubling up to [`SINK_RETRY_MAX`].
const SINK_RETRY: Duration = Duration::from_millis(100);
const SINK_RETRY_MAX: Duration = Duration::from_secs(30);

/// One consumer's failure handling.
pub(crate) struct Failures {
    pub policy: RetryPolicy,
    /// The hub keeps retries and dead letters (the backend does not redeliver).
    pub local: bool,
    pub sink: Option<Arc<dyn DeadLetterSink>>,
    pub counters: DeadLetterCounters,
    pub hub: Arc<str>,
    pub backend: Arc<str>,
}

/// What the worker does after a message.
pub(super) enum After {
    /// Finished (settled, set aside for a later retry, or dead-lettered) at this time.
    Done(u64),
    /// `retry.in_order`: wait this long, then try this copy before anything else.
    Hold(Queued, Duration),
}

/// A failed message's fate: `verdict` is the consumer's (never [`Verdict::Ack`]).
#[allow(clippy::too_many_arguments, reason = "the parts of one finished call")]
pub(super) async fn after_failure(
    shared: &Arc<Shared>,
    index: usize,
    message: Message,
    settle: Settle,
    outcome: Outcome,
    verdict: Verdict,
    guard: InFlight<'_>,
    ended: u64,
) -> After {
    let slot = &shared.slots[index];
    let f = &slot.failures;
    slot.note_failure(&message, &verdict);
    if !f.local && !f.policy.in_order {
        // The broker retries and dead-letters.
        if matches!(verdict, Verdict::Reject { .. }) {
            slot.dead_lettered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        guard.finish(outcome, ended);
        settle.finish(verdict);
        return After::Done(ended);
    }
    let attempt = message.attempt();
    // Shutting down: a failure is not retried again in the drain (that would spend every
    // attempt back to back). A broker backend gets the verdict as it is (it redelivers); the
    // hub's own retries end in the dead-letter sink, whence `hub dead requeue` brings them back.
    let stopping = slot.cx.shutdown().is_cancelled();
    if stopping && !f.local && matches!(verdict, Verdict::Retry { .. }) {
        guard.finish(outcome, ended);
        settle.finish(verdict);
        return After::Done(ended);
    }
    let reason = match verdict {
        Verdict::Retry { reason, delay } if attempt < f.policy.max_attempts && !stopping => {
            let wait = f.policy.delay_after(attempt, message.id(), delay);
            debug!(consumer = %slot.name, message_id = %message.id(), attempt, next_in = ?wait, %reason, "Message will be retried.");
            let next = Queued {
                message: message.with_header_set(ATTEMPTS_HEADER, json!(attempt + 1)),
                settle,
                enqueued_ns: ended,
            };
            slot.queue.set_aside(|| guard.finish(outcome, ended));
            if f.policy.in_order {
                return After::Hold(next, wait);
            }
            retry_later(Arc::clone(shared), index, next, wait);
            return After::Done(ended);
        }
        Verdict::Retry { reason, .. } if stopping => {
            format!("{reason} (attempt {attempt}; not retried: the hub is shutting down)")
        }
        Verdict::Retry { reason, .. } => format!("{reason} (gave up after {attempt} attempts)"),
        Verdict::Reject { reason } => reason,
        Verdict::Ack | Verdict::Requeue => {
            guard.finish(outcome, ended);
            settle.finish(verdict);
            return After::Done(ended);
        }
    };
    if f.local {
        dead_letter(slot, &message, &reason, attempt).await;
    }
    // Given up on: dead-lettered here, or rejected to the broker, which dead-letters it.
    slot.dead_lettered
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    guard.finish(outcome, ended);
    settle.finish(Verdict::Reject { reason });
    After::Done(ended)
}

/// Gives `item` back to its consumer's queue after `wait` (at once when shutdown begins: the
/// retry then runs in the drain).
fn retry_later(shared: Arc<Shared>, index: usize, mut item: Queued, wait: Duration) {
    tokio::spawn(async move {
        let slot = &shared.slots[index];
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = slot.cx.shutdown().cancelled() => {}
        }
        item.enqueued_ns = shared.now_ns();
        slot.queue.give_back(item);
    });
}

/// Writes `message` to the consumer's dead-letter sink, trying again while it fails; logs it
/// whole at error level when there is no sink, or when the sink still fails at shutdown.
pub(super) async fn dead_letter(slot: &Slot, message: &Message, reason: &str, attempts: u32) {
    let f = &slot.failures;
    let mut letter = DeadLetter::new(message, &slot.name, reason, attempts);
    letter.hub = f.hub.to_string();
    letter.backend = f.backend.to_string();
    let Some(sink) = &f.sink else {
        error!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), attempts, %reason, message = %message.to_json(), "Dead letter: no dead-letter sink is configured for this consumer, so the message is logged here, whole.");
        f.counters.logged.increment(1);
        return;
    };
    let mut wait = SINK_RETRY;
    loop {
        match sink.put(&letter).await {
            Ok(()) => {
                if let Some(c) = &f.counters.stored {
                    c.increment(1);
                }
                warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), attempts, %reason, sink = %sink.describe(), "Message dead-lettered.");
                return;
            }
            Err(e) => {
                slot.metrics.dead_letter_failures.increment(1);
                if slot.cx.shutdown().is_cancelled() {
                    error!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), attempts, %reason, sink = %sink.describe(), error = %e, message = %message.to_json(), "Dead letter could not be stored and the hub is shutting down: the message is logged here, whole.");
                    f.counters.logged.increment(1);
                    return;
                }
                warn!(consumer = %slot.name, message_id = %message.id(), sink = %sink.describe(), error = %e, retry_in = ?wait, "Cannot store a dead letter; trying again.");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = slot.cx.shutdown().cancelled() => {}
                }
                wait = (wait * 2).min(SINK_RETRY_MAX);
            }
        }
    }
}
