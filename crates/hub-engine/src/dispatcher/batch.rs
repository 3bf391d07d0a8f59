//! Running a batch consumer (`batch_size` > 1): each worker takes several queued messages at
//! once and hands them to `Consumer::consume_batch`.
//!
//! - The messages stay in the consumer's queue until the batch is taken: while a batch waits to
//!   fill (`batch_delay`, counted from when the worker found the first message) or for the rate
//!   limit (one token per batch), backlog, oldest age and catch-up count them.
//! - How many are taken: `Consumer::batch_take(queued, batch_size)`, clamped to 1..=batch_size.
//! - `concurrency` counts batches in flight; at `concurrency = 1` batches are taken in queue
//!   order and one at a time, so order is kept.
//! - One verdict per message: each is acknowledged, set aside for its retry, or dead-lettered on
//!   its own (`failures.rs`). A panic or the consumer's `timeout` (applied to the whole call)
//!   fails every message of the batch. With `retry.in_order`, the failed messages of a batch
//!   are retried together, in place, before the worker takes anything new.
//! - Each message's processing time is the batch's time divided by its size (its share of the
//!   work): the duration histogram and the catch-up estimate then speak of messages.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::coop;
use tracing::{Instrument, debug_span, error};

use super::failures::{self, After};
use super::queue::Queued;
use super::stats::WorkerStats;
use super::worker::{Ended, InFlight, judge};
use super::{Shared, Slot};
use hub_core::{ConsumeError, Context, Message, Verdict};

/// One batch worker; returns once the queue is closed and empty (and no retry will come back).
pub(super) async fn run_loop(shared: &Arc<Shared>, index: usize, worker: usize) {
    let slot = &shared.slots[index];
    let stats = &slot.workers[worker];
    let cx = slot.cx.clone();
    let size = slot.options.batch_size;
    // Failed messages this worker retries before anything else (`retry.in_order`).
    let mut held: Vec<Queued> = Vec::new();
    loop {
        let items = if held.is_empty() {
            if !slot.queue.ready().await {
                break;
            }
            if !slot.options.batch_delay.is_zero() {
                let until = tokio::time::Instant::now() + slot.options.batch_delay;
                slot.queue.wait_filled(until).await;
            }
            throttle(slot).await;
            let take = take_count(slot, slot.queue.len(), size);
            let items = slot.queue.pop_many(take);
            if items.is_empty() {
                // Another worker took them.
                continue;
            }
            items
        } else {
            throttle(slot).await;
            for _ in &held {
                slot.queue.take_back();
            }
            std::mem::take(&mut held)
        };
        let retries = process(shared, index, &cx, stats, items).await;
        if !retries.is_empty() {
            let wait = retries.iter().map(|(_, w)| *w).max().unwrap_or_default();
            // Shutdown cuts the wait short: the retries run in the drain.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = slot.cx.shutdown().cancelled() => {}
            }
            held = retries.into_iter().map(|(item, _)| item).collect();
        }
        coop::consume_budget().await;
    }
}

/// Waits for the consumer's rate limit, if any (one token per batch), and counts the wait.
async fn throttle(slot: &Slot) {
    if let Some(t) = &slot.throttle {
        t.acquire().await;
    }
}

/// How many of `queued` the next batch takes: the consumer's choice, within 1..=size (its
/// panic is caught: then as many as may be taken).
fn take_count(slot: &Slot, queued: usize, size: usize) -> usize {
    let chosen = catch_unwind(AssertUnwindSafe(|| slot.consumer.batch_take(queued, size)))
        .unwrap_or_else(|_| {
            error!(consumer = %slot.name, "Consumer::batch_take panicked; taking a full batch.");
            queued.min(size)
        });
    chosen.clamp(1, size)
}

/// Handles one batch; returns the messages to retry in place (`retry.in_order`) with their
/// delays.
async fn process(
    shared: &Arc<Shared>,
    index: usize,
    cx: &Context,
    stats: &WorkerStats,
    items: Vec<Queued>,
) -> Vec<(Queued, Duration)> {
    let slot = &shared.slots[index];
    let items: Vec<Queued> = items
        .into_iter()
        .filter_map(|q| {
            if q.settle.withdrawn() {
                super::worker::withdraw(slot, q);
                None
            } else {
                Some(q)
            }
        })
        .collect();
    if items.is_empty() {
        return Vec::new();
    }
    let started = shared.now_ns();
    stats.start(started);
    let n = items.len();
    let mut messages = Vec::with_capacity(n);
    let mut rest = Vec::with_capacity(n);
    for q in items {
        stats
            .queue_wait
            .record(started.saturating_sub(q.enqueued_ns));
        messages.push(q.message);
        rest.push((q.settle, InFlight::new(slot, stats, shared, started)));
    }
    let result = call(slot, cx, &messages).await;
    let ended = shared.now_ns();
    // Each message's share of the batch's time.
    let share = ended.saturating_sub(started) / n.max(1) as u64;
    let results = per_message(slot, n, result);
    let mut retries = Vec::new();
    for ((message, (settle, mut guard)), result) in messages.into_iter().zip(rest).zip(results) {
        guard.started = ended.saturating_sub(share);
        let (outcome, verdict) = judge(slot, &message, result);
        if verdict == Verdict::Ack {
            guard.finish(outcome, ended);
            settle.finish(verdict);
            continue;
        }
        let after = failures::after_failure(
            shared, index, message, settle, outcome, verdict, guard, ended,
        )
        .await;
        if let After::Hold(item, wait) = after {
            retries.push((item, wait));
        }
    }
    retries
}

/// Calls `consume_batch` under the consumer's timeout, catching its panics (also one raised
/// before its future is returned).
async fn call(
    slot: &Slot,
    cx: &Context,
    messages: &[Message],
) -> Ended<Vec<Result<(), ConsumeError>>> {
    let first = messages.first().map(Message::id).unwrap_or_default();
    let span = debug_span!(target: "hub::message", "batch", size = messages.len(), first = %first);
    match catch_unwind(AssertUnwindSafe(|| {
        slot.consumer.consume_batch(cx, messages)
    })) {
        Err(panic) => Some(Err(panic)),
        Ok(future) => {
            let work = AssertUnwindSafe(future.instrument(span)).catch_unwind();
            match slot.options.timeout {
                None => Some(work.await),
                Some(limit) => tokio::time::timeout(limit, work).await.ok(),
            }
        }
    }
}

/// The batch's end, one per message: the consumer's results (a missing one is a transient
/// failure), or its panic or timeout for each.
fn per_message(
    slot: &Slot,
    n: usize,
    result: Ended<Vec<Result<(), ConsumeError>>>,
) -> Vec<Ended<Result<(), ConsumeError>>> {
    match result {
        Some(Ok(results)) => {
            if results.len() != n {
                error!(consumer = %slot.name, expected = n, got = results.len(), "consume_batch returned a result count other than the batch size; missing ones count as transient failures, extra ones are ignored.");
            }
            let mut results = results.into_iter();
            (0..n)
                .map(|_| {
                    Some(Ok(results.next().unwrap_or_else(|| {
                        Err(ConsumeError::transient(
                            "consume_batch returned no result for this message",
                        ))
                    })))
                })
                .collect()
        }
        Some(Err(panic)) => {
            let text = super::ticket::panic_text(&*panic);
            (0..n)
                .map(|_| Some(Err(Box::new(text.clone()) as Box<dyn std::any::Any + Send>)))
                .collect()
        }
        None => (0..n).map(|_| None).collect(),
    }
}
