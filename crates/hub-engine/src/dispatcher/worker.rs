//! Running one consumer: take from its queue, call it, time it, count the outcome, settle.
//!
//! Every panic a message can cause is caught where it happens and counted as that message's
//! `panic` outcome: in the call to `consume` itself (a hand-written `consume` that panics before
//! returning its future), in the future, and in the backend's acknowledgement. A panic that
//! escapes anyway (a bug of the dispatcher's own) ends one round of the worker loop, is logged
//! and counted, and the loop starts again: a consumer's workers never die with their backlog.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Either;
use tokio::task::coop;
use tracing::{Instrument, debug_span, error, warn};

use super::failures::{self, After};
use super::queue::{Queued, TryPop};
use super::stats::{Outcome, WorkerStats};
use super::ticket::panic_text;
use super::{Shared, Slot};
use hub_core::{ConsumeError, Context, ErrorKind, Message, Verdict};

/// One worker (`worker` of the consumer's `concurrency`); a consumer with `concurrency` N has N
/// of them on one queue, each with its own stats block. Returns once the queue is closed and
/// empty.
pub(super) async fn run(shared: Arc<Shared>, index: usize, worker: usize) {
    loop {
        match AssertUnwindSafe(run_loop(&shared, index, worker))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(panic) => restarted(&shared, index, worker, &*panic),
        }
    }
}

/// [`run`] for a batch consumer (a future of its own type: the one-message loop is not made
/// bigger or slower by the batch loop's state).
pub(super) async fn run_batches(shared: Arc<Shared>, index: usize, worker: usize) {
    loop {
        match AssertUnwindSafe(super::batch::run_loop(&shared, index, worker))
            .catch_unwind()
            .await
        {
            Ok(()) => return,
            Err(panic) => restarted(&shared, index, worker, &*panic),
        }
    }
}

/// A worker loop panicked outside the consumer: logged; the loop starts again.
fn restarted(shared: &Shared, index: usize, worker: usize, panic: &(dyn std::any::Any + Send)) {
    let slot = &shared.slots[index];
    error!(consumer = %slot.name, worker, panic = %panic_text(panic), "A consumer worker panicked outside the consumer; it starts again.");
}

async fn run_loop(shared: &Arc<Shared>, index: usize, worker: usize) {
    let slot = &shared.slots[index];
    let stats = &slot.workers[worker];
    // The worker's own context: set to each message it handles (no shared state touched).
    let mut cx = slot.cx.clone();
    let mut last_end: Option<u64> = None;
    // A failed message this worker retries before anything else (`retry.in_order`).
    let mut held: Option<Queued> = None;
    // A rate-limit token taken for a message that was then withdrawn: the next one uses it.
    let mut token = false;
    loop {
        if let Some(throttle) = &slot.throttle {
            // Wait for work without taking it, then for the rate limit: while throttled, the
            // message stays in the queue (backlog, oldest age and catch-up show the wait).
            if held.is_none() && !slot.queue.ready().await {
                break;
            }
            if !std::mem::take(&mut token) && !throttle.acquire().await.is_zero() {
                last_end = None;
            }
        }
        // The common case under load takes the next message without building a future.
        let (item, waited) = if let Some(item) = held.take() {
            slot.queue.take_back();
            (item, true)
        } else {
            match slot.queue.try_pop() {
                TryPop::Item(item) => (item, false),
                TryPop::Closed => break,
                // Throttled: another worker took it; wait for the next with a token of its own.
                TryPop::Empty if slot.throttle.is_some() => continue,
                TryPop::Empty => match slot.queue.pop().await {
                    Some(item) => (item, true),
                    None => break,
                },
            }
        };
        if item.settle.withdrawn() {
            withdraw(slot, item);
            token = slot.throttle.is_some();
            last_end = None;
            coop::consume_budget().await;
            continue;
        }
        // Taken without waiting: this message starts where the previous one ended (saves a
        // clock read per message under load).
        let started = match last_end {
            Some(t) if !waited => t,
            _ => shared.now_ns(),
        };
        // Until it is finished, a message taken is in flight: if this future is dropped
        // (shutdown cut it off) or unwinds, the guard says so in the counts.
        let guard = InFlight::new(slot, stats, shared, started);
        match process(shared, index, &mut cx, stats, item, started, guard).await {
            After::Done(ended) => last_end = Some(ended),
            After::Hold(item, wait) => {
                // Shutdown cuts the wait short: the retry runs in the drain.
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = slot.cx.shutdown().cancelled() => {}
                }
                held = Some(item);
                last_end = None;
            }
        }
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

/// Drops a copy taken from the queue whose backend took the delivery back
/// ([`hub_core::Acker::withdrawn`]: an AMQP channel closed and RabbitMQ redelivers it): handling
/// it would handle the message twice, and its settlement would reach nobody. Counted as dropped
/// with reason `withdrawn`.
#[cold]
pub(super) fn withdraw(slot: &Slot, item: Queued) {
    tracing::debug!(consumer = %slot.name, message_id = %item.message.id(), "The backend took the message back before it started (it is delivered again); dropped.");
    slot.withdrawn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    item.settle.finish(Verdict::Requeue);
}

/// A message between being taken and being counted as finished.
pub(super) struct InFlight<'a> {
    slot: &'a Slot,
    stats: &'a WorkerStats,
    shared: &'a Shared,
    /// When it started (nanoseconds after the epoch).
    pub(super) started: u64,
    done: bool,
}

impl<'a> InFlight<'a> {
    /// A message of `slot` taken by the worker with `stats`, started at `started`.
    pub(super) fn new(
        slot: &'a Slot,
        stats: &'a WorkerStats,
        shared: &'a Shared,
        started: u64,
    ) -> Self {
        Self {
            slot,
            stats,
            shared,
            started,
            done: false,
        }
    }

    /// Counts it as finished with `outcome` at `at_ns`, with its duration (histogram and mean
    /// service time) recorded at the same moment.
    #[inline]
    pub(super) fn finish(mut self, outcome: Outcome, at_ns: u64) {
        let took = at_ns.saturating_sub(self.started);
        self.stats.duration.record(took);
        self.stats.finish(outcome, at_ns, took);
        self.done = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if std::thread::panicking() {
            // Unwinding through the worker: the message ended in a panic (its settlement,
            // dropped with it, asks for a requeue).
            let now = self.shared.now_ns();
            let took = now.saturating_sub(self.started);
            self.stats.finish(Outcome::Panic, now, took);
        } else {
            // Dropped unfinished: the worker was aborted when the shutdown grace expired.
            self.slot
                .cut_off
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Handles one message; returns when it ended (nanoseconds after the epoch), or a retry the
/// worker must make before anything else.
async fn process(
    shared: &Arc<Shared>,
    index: usize,
    cx: &mut Context,
    stats: &WorkerStats,
    item: Queued,
    started: u64,
    guard: InFlight<'_>,
) -> After {
    let slot = &shared.slots[index];
    let Queued {
        message,
        settle,
        enqueued_ns,
    } = item;
    stats.queue_wait.record(started.saturating_sub(enqueued_ns));
    stats.start(started);

    // A context that knows the message, so that what the consumer publishes is correlated;
    // and, inside the consumer's span, one per message (`RUST_LOG=hub::message=debug`).
    cx.set_handled(Some(message.clone()));
    let span = debug_span!(target: "hub::message", "message", id = %message.id(), topic = %message.topic());
    // `consume` itself may panic before it returns a future (written by hand, not through
    // `async_trait`): caught as the future's panics are.
    let result = match catch_unwind(AssertUnwindSafe(|| slot.consumer.consume(cx, &message))) {
        Err(panic) => Some(Err(panic)),
        Ok(future) => {
            // Entering a disabled span at every poll costs more than the rest of the call's
            // overhead: the span wraps the call only when it is enabled.
            let work = if span.is_disabled() {
                Either::Left(future)
            } else {
                Either::Right(future.instrument(span))
            };
            let call = AssertUnwindSafe(work).catch_unwind();
            match slot.options.timeout {
                None => Some(call.await),
                Some(limit) => tokio::time::timeout(limit, call).await.ok(),
            }
        }
    };
    let ended = shared.now_ns();

    cx.set_handled(None);
    // The common case first, without building a verdict to compare.
    if let Some(Ok(Ok(()))) = result {
        guard.finish(Outcome::Ok, ended);
        settle.finish(Verdict::Ack);
        return After::Done(ended);
    }
    let (outcome, verdict) = judge(slot, &message, result);
    failures::after_failure(
        shared, index, message, settle, outcome, verdict, guard, ended,
    )
    .await
}

/// What one call ended in, for one message: `Some(Ok(result))` returned, `Some(Err(panic))`
/// panicked, `None` timed out.
pub(super) type Ended<T> = Option<Result<T, Box<dyn std::any::Any + Send>>>;

/// The outcome and verdict of `message` from the end of its call (logged when it failed).
#[cold]
pub(super) fn judge(
    slot: &Slot,
    message: &Message,
    result: Ended<Result<(), ConsumeError>>,
) -> (Outcome, Verdict) {
    match result {
        Some(Ok(Ok(()))) => (Outcome::Ok, Verdict::Ack),
        Some(Ok(Err(e))) => {
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), kind = %e.kind(), error = %e, "Consumer failed a message.");
            let reason = format!("consumer {} ({} error): {e}", slot.name, e.kind());
            match e.kind() {
                ErrorKind::Transient => (
                    Outcome::Transient,
                    Verdict::Retry {
                        reason,
                        delay: e.retry_after(),
                    },
                ),
                ErrorKind::Invalid => (Outcome::Invalid, Verdict::Reject { reason }),
            }
        }
        Some(Err(panic)) => {
            let what = panic_text(&*panic);
            error!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), panic = %what, "Consumer panicked; it keeps running.");
            let verdict = Verdict::Retry {
                reason: format!("consumer {} panicked: {what}", slot.name),
                delay: None,
            };
            (Outcome::Panic, verdict)
        }
        None => {
            let limit = slot.options.timeout.unwrap_or_default();
            warn!(consumer = %slot.name, message_id = %message.id(), topic = %message.topic(), timeout = ?limit, "Consumer timed out on a message.");
            let verdict = Verdict::Retry {
                reason: format!("consumer {} timed out after {limit:?}", slot.name),
                delay: None,
            };
            (Outcome::Timeout, verdict)
        }
    }
}
