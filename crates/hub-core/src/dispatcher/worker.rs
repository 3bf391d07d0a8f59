//! Running one consumer: take from its queue, call it, time it, count the outcome, settle.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::FutureExt;
use tokio::time::Instant;
use tracing::{error, warn};

use super::queue::{Popped, Queued};
use super::{Shared, Slot};
use crate::{ErrorKind, Verdict};

/// One worker loop; a consumer with `concurrency` N has N of them on one queue.
pub(super) async fn run(shared: std::sync::Arc<Shared>, index: usize) {
    let slot = &shared.slots[index];
    let mut last_end: Option<Instant> = None;
    loop {
        let (item, waited) = match slot.queue.pop().await {
            (Popped::Item(item), waited) => (item, waited),
            (Popped::Closed, _) => break,
        };
        // Taken without waiting: this message starts where the previous one ended (saves a
        // clock read per message under load).
        let started = match last_end {
            Some(t) if !waited => t,
            _ => Instant::now(),
        };
        last_end = Some(process(&shared, slot, item, started).await);
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Handles one message; returns when it ended.
async fn process(shared: &Shared, slot: &Slot, item: Queued, started: Instant) -> Instant {
    let Queued {
        message,
        settle,
        enqueued_at,
    } = item;
    slot.metrics
        .queue_wait
        .record(started.saturating_duration_since(enqueued_at));
    let in_flight = InFlight::enter(&slot.in_flight);

    let call = AssertUnwindSafe(slot.consumer.consume(&slot.cx, &message)).catch_unwind();
    let result = match slot.options.timeout {
        None => Some(call.await),
        Some(limit) => tokio::time::timeout_at(started + limit, call).await.ok(),
    };
    let ended = Instant::now();
    drop(in_flight);
    slot.metrics
        .duration
        .record(ended.saturating_duration_since(started));

    let verdict = match result {
        Some(Ok(Ok(()))) => {
            slot.counts.ok.fetch_add(1, Ordering::Relaxed);
            Verdict::Ack
        }
        Some(Ok(Err(e))) => {
            slot.counts.error.fetch_add(1, Ordering::Relaxed);
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), kind = %e.kind(), error = %e, "Consumer failed a message.");
            let reason = format!("consumer {}: {e}", slot.name);
            match e.kind() {
                ErrorKind::Transient => Verdict::Retry { reason },
                ErrorKind::Invalid => Verdict::Reject { reason },
            }
        }
        Some(Err(panic)) => {
            slot.counts.panic.fetch_add(1, Ordering::Relaxed);
            let what = panic_text(&*panic);
            error!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), panic = %what, "Consumer panicked; it keeps running.");
            Verdict::Retry {
                reason: format!("consumer {} panicked: {what}", slot.name),
            }
        }
        None => {
            slot.counts.timeout.fetch_add(1, Ordering::Relaxed);
            let limit = slot.options.timeout.unwrap_or_default();
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), timeout = ?limit, "Consumer timed out on a message.");
            Verdict::Retry {
                reason: format!("consumer {} timed out after {limit:?}", slot.name),
            }
        }
    };
    slot.record_completion(shared, ended);
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
