//! Running one consumer: take from its queue, call it, time it, count the outcome, settle.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use tokio::task::coop;
use tracing::{error, warn};

use super::queue::{Queued, TryPop};
use super::stats::{Outcome, WorkerStats};
use super::{Shared, Slot};
use crate::{ErrorKind, Verdict};

/// One worker loop (`worker` of the consumer's `concurrency`); a consumer with `concurrency`
/// N has N of them on one queue, each with its own stats block.
pub(super) async fn run(shared: std::sync::Arc<Shared>, index: usize, worker: usize) {
    let slot = &shared.slots[index];
    let stats = &slot.workers[worker];
    let mut last_end: Option<u64> = None;
    loop {
        // The common case under load takes the next message without building a future.
        let (item, waited) = match slot.queue.try_pop() {
            TryPop::Item(item) => (item, false),
            TryPop::Closed => break,
            TryPop::Empty => match slot.queue.pop().await {
                Some(item) => (item, true),
                None => break,
            },
        };
        // Taken without waiting: this message starts where the previous one ended (saves a
        // clock read per message under load).
        let started = match last_end {
            Some(t) if !waited => t,
            _ => shared.now_ns(),
        };
        last_end = Some(process(&shared, slot, stats, item, started).await);
        // A consumer that never waits, on a queue that never empties, would otherwise keep its
        // runtime thread forever (other consumers, the HTTP server): yield once tokio's
        // cooperative budget is spent. After a yield the next message does not start where
        // this one ended: read the clock for it.
        if !coop::has_budget_remaining() {
            last_end = None;
        }
        coop::consume_budget().await;
    }
}

/// Handles one message; returns when it ended (nanoseconds after the epoch).
async fn process(
    shared: &Shared,
    slot: &Slot,
    stats: &WorkerStats,
    item: Queued,
    started: u64,
) -> u64 {
    let Queued {
        message,
        settle,
        enqueued_ns,
    } = item;
    stats.queue_wait.record(started.saturating_sub(enqueued_ns));
    stats.start();

    let call = AssertUnwindSafe(slot.consumer.consume(&slot.cx, &message)).catch_unwind();
    let result = match slot.options.timeout {
        None => Some(call.await),
        Some(limit) => tokio::time::timeout(limit, call).await.ok(),
    };
    let ended = shared.now_ns();
    stats.duration.record(ended.saturating_sub(started));

    let (outcome, verdict) = match result {
        Some(Ok(Ok(()))) => (Outcome::Ok, Verdict::Ack),
        Some(Ok(Err(e))) => {
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), kind = %e.kind(), error = %e, "Consumer failed a message.");
            let reason = format!("consumer {}: {e}", slot.name);
            let verdict = match e.kind() {
                ErrorKind::Transient => Verdict::Retry { reason },
                ErrorKind::Invalid => Verdict::Reject { reason },
            };
            (Outcome::Error, verdict)
        }
        Some(Err(panic)) => {
            let what = panic_text(&*panic);
            error!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), panic = %what, "Consumer panicked; it keeps running.");
            let verdict = Verdict::Retry {
                reason: format!("consumer {} panicked: {what}", slot.name),
            };
            (Outcome::Panic, verdict)
        }
        None => {
            let limit = slot.options.timeout.unwrap_or_default();
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), timeout = ?limit, "Consumer timed out on a message.");
            let verdict = Verdict::Retry {
                reason: format!("consumer {} timed out after {limit:?}", slot.name),
            };
            (Outcome::Timeout, verdict)
        }
    };
    stats.finish(outcome, ended);
    settle.finish(verdict);
    ended
}

fn panic_text(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
