//! One consumer's bounded FIFO queue, with the three `when_full` policies.
//!
//! A mutex around a `VecDeque` rather than a channel: `drop_oldest` needs the producer side to
//! pop, and the oldest-age gauge needs to peek at the head. Waiters use `Notify`: a worker is
//! woken on empty→non-empty (and passes the wake-up on while more is queued); a producer blocked
//! under `block` registers itself under the lock, and each pop wakes one registered producer
//! that no earlier pop woke, so no blocked producer can sleep while the queue has room.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use hub_core::WhenFull;

use super::ticket::Settle;
use hub_core::Message;

/// A message waiting for one consumer.
pub(crate) struct Queued {
    pub message: Message,
    pub settle: Settle,
    /// When it entered this consumer's queue, in nanoseconds after the dispatcher's epoch.
    pub enqueued_ns: u64,
}

/// The hub-wide ceiling on queued bytes (`[hub] max_queued_bytes`), shared by every queue:
/// the sum of [`Message::byte_size`] over every queued copy (a message queued for two
/// consumers counts twice, so the sum never understates the memory held).
///
/// `used` is signed: a batch adds its bytes once, after it released its queue's lock, so a
/// worker may take (and subtract) a message before its bytes were added. An unsigned count
/// wrapped round to about `usize::MAX` in that moment, and every queue holding a message
/// counted as full: `drop_*` consumers dropped messages with nothing queued (found by the
/// gateway's tap, `tests/gateway.rs`). A moment below zero now reads as zero.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicIsize,
    limit: AtomicUsize,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicIsize::new(0),
            limit: AtomicUsize::new(limit),
        }
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Bytes queued now, over every queue.
    pub fn used(&self) -> usize {
        usize::try_from(self.used.load(Ordering::Relaxed)).unwrap_or(0)
    }

    fn fits(&self, more: usize) -> bool {
        self.used().saturating_add(more) <= self.limit.load(Ordering::Relaxed)
    }

    /// Counts `n` more bytes queued.
    pub fn add(&self, n: usize) {
        if n > 0 {
            self.used
                .fetch_add(isize::try_from(n).unwrap_or(isize::MAX), Ordering::Relaxed);
        }
    }

    fn sub(&self, n: usize) {
        if n > 0 {
            self.used
                .fetch_sub(isize::try_from(n).unwrap_or(isize::MAX), Ordering::Relaxed);
        }
    }
}

struct State {
    items: VecDeque<Queued>,
    /// Bytes of `items` ([`Message::byte_size`]).
    bytes: usize,
    closed: bool,
    /// Messages accepted (counted here, under the lock the push takes anyway).
    received: u64,
    /// Messages dropped by the `when_full` policy.
    dropped: u64,
    /// Messages taken by a worker.
    taken: u64,
    /// Messages removed unstarted when the shutdown grace expired.
    cleared: u64,
    /// Messages that failed and wait for their retry outside the queue: each still holds its
    /// place (counted against the capacity), so a consumer whose every message fails pushes
    /// back on its producers instead of piling retries up.
    delayed: usize,
    /// Retries given back (each a message taken again).
    retried: u64,
    /// Cleared at the end of shutdown: a retry given back now is dropped (counted as cleared).
    drained: bool,
    /// Paused by an operator: nothing is taken (the queue keeps filling under its
    /// `when_full`) until resumed, or until it closes (the shutdown drain runs anyway).
    paused: bool,
    /// The last messages that entered, newest last, cut to `tail_bytes`, when the live tail is
    /// on (`tail_cap` > 0): at most `tail_cap` × about 3 × `tail_bytes` bytes.
    tail: VecDeque<TailEntry>,
    tail_cap: usize,
    tail_bytes: usize,
    /// Producers waiting for room under `block`.
    blocked: usize,
    /// Of those, how many were woken by a pop and have not yet come back for their room: a
    /// pop wakes a producer only while some blocked producer has not been woken yet.
    woken: usize,
}

impl State {
    /// A blocked producer leaves (pushed, or gave up): a wake-up can no longer be pending for
    /// more producers than are blocked.
    fn unblock(&mut self) {
        self.blocked -= 1;
        self.woken = self.woken.min(self.blocked);
    }
}

/// A queue's state at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub len: usize,
    /// Bytes queued.
    pub bytes: usize,
    /// Enqueue time of the oldest message (nanoseconds after the dispatcher's epoch).
    pub oldest_ns: Option<u64>,
    pub received: u64,
    pub dropped: u64,
    pub taken: u64,
    pub cleared: u64,
    /// Waiting for their retry.
    pub delayed: usize,
    pub retried: u64,
    /// Paused by an operator.
    pub paused: bool,
}

/// One message of a consumer's live tail, its texts cut (the tail never holds a whole
/// message: bodies can be large, and private).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailEntry {
    /// The message id (cut).
    pub id: String,
    /// The topic (cut).
    pub topic: String,
    /// When it was sent.
    pub timestamp: hub_core::Timestamp,
    /// The headers as JSON text (cut).
    pub headers: String,
    /// The body as JSON text (cut).
    pub body: String,
    /// The body's whole length in bytes (as JSON text).
    pub body_bytes: usize,
}

impl TailEntry {
    fn of(m: &Message, limit: usize) -> Self {
        let body = m.body().to_string();
        let headers = serde_json::to_string(m.headers()).unwrap_or_default();
        Self {
            id: cut(m.id(), limit),
            topic: cut(m.topic(), limit),
            timestamp: m.timestamp(),
            headers: cut(&headers, limit),
            body_bytes: body.len(),
            body: cut(&body, limit),
        }
    }

    /// Whether the body was cut.
    pub fn truncated(&self) -> bool {
        self.body.len() < self.body_bytes
    }
}

/// `text` cut to at most `limit` bytes at a character boundary.
fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    /// `queue_max_bytes` (`usize::MAX`: none).
    max_bytes: usize,
    budget: Arc<ByteBudget>,
    /// More than one worker takes from this queue: pass wake-ups along.
    chain_wakeups: bool,
    not_empty: Notify,
    not_full: Notify,
    /// A batch consumer's `batch_size` (0 otherwise): a push that brings the queue to this
    /// length wakes the workers waiting for a full batch.
    want: usize,
    filled: Notify,
}

/// What became of an offered message.
pub(crate) enum Offer {
    /// Queued.
    Accepted,
    /// Queued, and this (older or newer) message was dropped for it.
    Dropped(Box<Queued>),
    /// The hub is shutting down: the message was not queued.
    Closed(Box<Queued>),
}

enum TryPush {
    Done(Offer),
    Full(Queued),
}

pub(crate) enum TryPop {
    Item(Queued),
    Empty,
    Closed,
}

/// A producer registered as blocked (`State::blocked`); unregisters itself if its push is
/// abandoned (a cancelled delivery).
struct Blocked<'a> {
    queue: &'a Queue,
    registered: bool,
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        // An abandoned push (a cancelled delivery): unregister. If a pop had woken this
        // producer, that wake-up is lost with it: let another blocked producer have it while
        // there is room.
        let mut st = self.queue.lock();
        st.unblock();
        let pass_on = st.blocked > st.woken && self.queue.room(&st, 0, 0);
        st.woken += usize::from(pass_on);
        drop(st);
        if pass_on {
            self.queue.not_full.notify_one();
        }
    }
}

impl Queue {
    pub fn new(
        capacity: usize,
        max_bytes: usize,
        budget: Arc<ByteBudget>,
        workers: usize,
        batch_size: usize,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(4096)),
                bytes: 0,
                closed: false,
                paused: false,
                tail: VecDeque::new(),
                tail_cap: 0,
                tail_bytes: 0,
                received: 0,
                dropped: 0,
                taken: 0,
                cleared: 0,
                delayed: 0,
                retried: 0,
                drained: false,
                blocked: 0,
                woken: 0,
            }),
            capacity,
            max_bytes,
            budget,
            chain_wakeups: workers > 1,
            not_empty: Notify::new(),
            not_full: Notify::new(),
            want: if batch_size > 1 { batch_size } else { 0 },
            filled: Notify::new(),
        }
    }

    /// Room for a message of `size` bytes: a place under `queue_capacity` and, unless the
    /// queue is empty (a message larger than the byte limits must still get through, one at a
    /// time), its bytes under `queue_max_bytes` and the hub-wide `max_queued_bytes`, counting
    /// `pending` bytes queued but not yet added to the budget.
    #[inline]
    fn room(&self, st: &State, size: usize, pending: usize) -> bool {
        st.items.len() + st.delayed < self.capacity
            && (st.items.is_empty()
                || (st.bytes + size <= self.max_bytes && self.budget.fits(pending + size)))
    }

    /// `item`, of `size` bytes, joins the queue (the caller adds to the budget).
    /// Always inlined: it is the hot path of every push, and its cold live-tail branch made it
    /// a call of its own (BENCHMARKS.md, session 12).
    #[inline(always)]
    fn enter(st: &mut State, item: Queued, size: usize) {
        st.bytes += size;
        if st.tail_cap > 0 {
            Self::note_tail(st, &item.message);
        }
        st.items.push_back(item);
    }

    /// Keeps `message` in the live tail, cut (the oldest leaves when it is full).
    #[cold]
    #[inline(never)]
    fn note_tail(st: &mut State, message: &Message) {
        if st.tail.len() >= st.tail_cap {
            st.tail.pop_front();
        }
        let entry = TailEntry::of(message, st.tail_bytes);
        st.tail.push_back(entry);
    }

    /// Keeps the last `n` messages that entered (0: none, the default) for the live tail, each
    /// text (topic, headers, body) cut to `bytes`.
    pub fn set_tail(&self, n: usize, bytes: usize) {
        let mut st = self.lock();
        st.tail_cap = n;
        st.tail_bytes = bytes;
        while st.tail.len() > n {
            st.tail.pop_front();
        }
    }

    /// The live tail: the last messages that entered, oldest first.
    pub fn tail(&self) -> Vec<TailEntry> {
        self.lock().tail.iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers one copy of a delivery without waiting: `Err` gives it back when the queue is
    /// full under `block`. The bytes it queues on the fast path are added to `pending`, for
    /// the caller to add to the hub-wide budget ([`ByteBudget::add`]) once for all the copies;
    /// the room check counts them meanwhile. Inlined into the intake's loop over the copies:
    /// the call's frame cost more than the byte accounting itself (BENCHMARKS.md).
    #[inline]
    pub fn try_push(
        &self,
        item: Queued,
        policy: WhenFull,
        pending: &mut usize,
    ) -> Result<Offer, Queued> {
        let size = item.message.byte_size();
        let mut st = self.lock();
        // The common case first, with no detour (the hot path of every single delivery).
        if !st.closed && self.room(&st, size, *pending) {
            st.received += 1;
            let was_empty = st.items.is_empty();
            Self::enter(&mut st, item, size);
            let filled = st.items.len() == self.want;
            drop(st);
            *pending += size;
            if was_empty {
                self.not_empty.notify_one();
            }
            if filled {
                self.filled.notify_waiters();
            }
            return Ok(Offer::Accepted);
        }
        // Closed or full: nothing was queued, so there is nobody new to wake. The slow path
        // checks the budget itself: it must see what was queued before.
        self.budget.add(std::mem::take(pending));
        match self.push_locked(&mut st, item, policy) {
            TryPush::Done(offer) => Ok(offer),
            TryPush::Full(back) => Err(back),
        }
    }

    /// Queues `item` whatever the room (count and bytes may go over their limits by it) and
    /// even once the queue is closed: for a copy whose delivery's other copies may be queued
    /// already and whose wait for room ended early (its producer stopped, or the shutdown
    /// drain closed the queue), so no consumer misses a message another one got. The drain's
    /// workers run it if they are still running; otherwise the drain's final clear cuts it off
    /// like any message left queued (counted, settled as a requeue).
    pub fn push_past_limits(&self, item: Queued) {
        let size = item.message.byte_size();
        let mut st = self.lock();
        st.received += 1;
        let was_empty = st.items.is_empty();
        Self::enter(&mut st, item, size);
        let filled = self.want > 0 && st.items.len() >= self.want;
        drop(st);
        self.budget.add(size);
        if was_empty {
            self.not_empty.notify_one();
        }
        if filled {
            self.filled.notify_waiters();
        }
    }

    /// One push under the caller's lock; the caller wakes the worker.
    fn push_locked(&self, st: &mut State, item: Queued, policy: WhenFull) -> TryPush {
        if st.closed {
            return TryPush::Done(Offer::Closed(Box::new(item)));
        }
        let size = item.message.byte_size();
        if self.room(st, size, 0) {
            st.received += 1;
            Self::enter(st, item, size);
            self.budget.add(size);
            return TryPush::Done(Offer::Accepted);
        }
        match policy {
            WhenFull::Block => TryPush::Full(item),
            WhenFull::DropNewest => {
                st.received += 1;
                st.dropped += 1;
                TryPush::Done(Offer::Dropped(Box::new(item)))
            }
            WhenFull::DropOldest => {
                st.received += 1;
                st.dropped += 1;
                match st.items.pop_front() {
                    Some(old) => {
                        let old_size = old.message.byte_size();
                        st.bytes -= old_size;
                        Self::enter(st, item, size);
                        self.budget.add(size);
                        self.budget.sub(old_size);
                        TryPush::Done(Offer::Dropped(Box::new(old)))
                    }
                    // Every place is held by a message waiting for its retry (not in the queue,
                    // so not droppable): the new one is dropped.
                    None => TryPush::Done(Offer::Dropped(Box::new(item))),
                }
            }
        }
    }

    /// Offers messages in order under one lock, waking the worker at most once (the
    /// cross-thread hand-off is what a message costs most here). Under `block`, the messages
    /// from the first that does not fit are left at the front of `items`, to be pushed with
    /// [`Queue::push`]. Returns the outcomes that are not a plain acceptance, in order.
    pub fn try_push_many(&self, items: &mut VecDeque<Queued>, policy: WhenFull) -> Vec<Offer> {
        let mut outcomes = Vec::new();
        let mut st = self.lock();
        let was_empty = st.items.is_empty();
        // Added to the budget once, at the end: the fits check counts it meanwhile.
        let mut added = 0;
        while let Some(item) = items.pop_front() {
            // The common case first, with no detour.
            let size = item.message.byte_size();
            if !st.closed && self.room(&st, size, added) {
                st.received += 1;
                Self::enter(&mut st, item, size);
                added += size;
                continue;
            }
            // The slow path checks the budget itself: it must see what this batch added.
            self.budget.add(std::mem::take(&mut added));
            match self.push_locked(&mut st, item, policy) {
                TryPush::Done(Offer::Accepted) => {}
                TryPush::Done(other) => outcomes.push(other),
                TryPush::Full(back) => {
                    items.push_front(back);
                    break;
                }
            }
        }
        let wake = was_empty && !st.items.is_empty();
        let filled = self.want > 0 && st.items.len() >= self.want;
        drop(st);
        self.budget.add(added);
        if wake {
            self.not_empty.notify_one();
        }
        if filled {
            self.filled.notify_waiters();
        }
        outcomes
    }

    /// Offers a message; under `block` waits for room (or for the queue to close). A message
    /// that had to wait is stamped with `now()` when it enters the queue, so its queue wait does
    /// not include the time its producer was blocked.
    pub async fn push(&self, item: Queued, policy: WhenFull, now: impl Fn() -> u64) -> Offer {
        let mut held = Some(item);
        self.push_held(&mut held, policy, now).await
    }

    /// [`Queue::push`] of the message in `held`, which stays there (stamped with each new
    /// wait's `now()`) while it waits: a caller whose wait is dropped still has it.
    pub async fn push_held(
        &self,
        held: &mut Option<Queued>,
        policy: WhenFull,
        now: impl Fn() -> u64,
    ) -> Offer {
        let mut blocked = Blocked {
            queue: self,
            registered: false,
        };
        let mut waited = false;
        loop {
            let Some(item) = held.take() else {
                // Nothing to push (a caller's bug): nothing was refused either.
                return Offer::Accepted;
            };
            let mut notified = pin!(self.not_full.notified());
            notified.as_mut().enable();
            // In a block of its own: the guard must not live across the wait.
            let back = {
                let mut st = self.lock();
                if waited {
                    // The wake-up a pop sent (if it was one) is taken.
                    st.woken = st.woken.saturating_sub(1);
                }
                let was_empty = st.items.is_empty();
                match self.push_locked(&mut st, item, policy) {
                    TryPush::Done(offer) => {
                        if blocked.registered {
                            st.unblock();
                            blocked.registered = false;
                        }
                        let wake = was_empty && !st.items.is_empty();
                        let filled = self.want > 0 && st.items.len() >= self.want;
                        drop(st);
                        if wake {
                            self.not_empty.notify_one();
                        }
                        if filled {
                            self.filled.notify_waiters();
                        }
                        return offer;
                    }
                    TryPush::Full(back) => {
                        if !blocked.registered {
                            st.blocked += 1;
                            blocked.registered = true;
                        }
                        back
                    }
                }
            };
            *held = Some(back);
            notified.await;
            waited = true;
            if let Some(item) = held.as_mut() {
                item.enqueued_ns = now();
            }
        }
    }

    /// Takes the oldest message if there is one, without waiting.
    pub fn try_pop(&self) -> TryPop {
        let mut st = self.lock();
        if st.paused && !st.closed {
            return TryPop::Empty;
        }
        match st.items.pop_front() {
            Some(item) => {
                let size = item.message.byte_size();
                st.bytes -= size;
                st.taken += 1;
                let wake_producer = st.blocked > st.woken;
                st.woken += usize::from(wake_producer);
                let more = !st.items.is_empty();
                // The last message of a closed queue: the other workers may end now.
                let last = !more && st.closed && st.delayed == 0;
                drop(st);
                self.budget.sub(size);
                if wake_producer {
                    self.not_full.notify_one();
                }
                if more && self.chain_wakeups {
                    self.not_empty.notify_one();
                } else if last {
                    self.not_empty.notify_waiters();
                }
                TryPop::Item(item)
            }
            // Closed, and no retry will come back: the workers may end.
            None if st.closed && st.delayed == 0 => TryPop::Closed,
            None => TryPop::Empty,
        }
    }

    /// Takes the oldest message, waiting while the queue is empty; `None` once it is empty and
    /// closed.
    pub async fn pop(&self) -> Option<Queued> {
        loop {
            let mut notified = pin!(self.not_empty.notified());
            notified.as_mut().enable();
            match self.try_pop() {
                TryPop::Item(item) => return Some(item),
                TryPop::Closed => return None,
                TryPop::Empty => notified.await,
            }
        }
    }

    /// A message that failed leaves the worker to wait for its retry outside the queue; it
    /// keeps its place. `finish` (the worker counting the attempt as finished) runs under the
    /// queue's lock, so a snapshot never sees the message both in flight and waiting, or
    /// neither.
    pub fn set_aside(&self, finish: impl FnOnce()) {
        let mut st = self.lock();
        st.delayed += 1;
        // Counted as a retry when decided: the attempt it ended is processed, and the message is
        // waiting, so `received + retries = processed + ... + retry_waiting` holds meanwhile.
        st.retried += 1;
        finish();
    }

    /// A message set aside comes back for its retry, at the back of the queue (even when
    /// closed: it belongs to the shutdown drain). After the final clear it is dropped, settled
    /// as a requeue, and counted as cleared.
    pub fn give_back(&self, item: Queued) {
        let mut st = self.lock();
        st.delayed = st.delayed.saturating_sub(1);
        if st.drained {
            st.cleared += 1;
            let last = st.closed && st.items.is_empty() && st.delayed == 0;
            drop(st);
            drop(item);
            if last {
                self.not_empty.notify_waiters();
            }
            return;
        }
        let was_empty = st.items.is_empty();
        let size = item.message.byte_size();
        Self::enter(&mut st, item, size);
        let filled = st.items.len() == self.want;
        drop(st);
        self.budget.add(size);
        if was_empty {
            self.not_empty.notify_one();
        }
        if filled {
            self.filled.notify_waiters();
        }
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Waits until the queue holds a full batch (`batch_size`), or it closes, or `until`.
    pub async fn wait_filled(&self, until: tokio::time::Instant) {
        loop {
            let mut notified = pin!(self.filled.notified());
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.items.len() >= self.want || st.closed {
                    return;
                }
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }

    /// Takes up to `max` of the oldest messages at once, without waiting (a batch).
    pub fn pop_many(&self, max: usize) -> Vec<Queued> {
        let mut st = self.lock();
        if st.paused && !st.closed {
            return Vec::new();
        }
        let n = max.min(st.items.len());
        let items: Vec<Queued> = st.items.drain(..n).collect();
        let size: usize = items.iter().map(|q| q.message.byte_size()).sum();
        st.bytes -= size;
        st.taken += n as u64;
        // Each message taken made room: wake as many registered producers, not woken yet.
        let wake_producers = n.min(st.blocked.saturating_sub(st.woken));
        st.woken += wake_producers;
        let more = !st.items.is_empty();
        let last = !more && st.closed && st.delayed == 0;
        drop(st);
        self.budget.sub(size);
        for _ in 0..wake_producers {
            self.not_full.notify_one();
        }
        if more && self.chain_wakeups {
            self.not_empty.notify_one();
        } else if last {
            self.not_empty.notify_waiters();
        }
        items
    }

    /// A message set aside by the worker that keeps it (a retry in order) is taken again.
    pub fn take_back(&self) {
        let mut st = self.lock();
        st.delayed = st.delayed.saturating_sub(1);
        st.taken += 1;
        // Its place is free again (in flight is not counted against the capacity).
        let wake_producer = st.blocked > st.woken;
        st.woken += usize::from(wake_producer);
        let last = st.closed && st.items.is_empty() && st.delayed == 0;
        drop(st);
        if wake_producer {
            self.not_full.notify_one();
        }
        if last {
            self.not_empty.notify_waiters();
        }
    }

    /// Waits until a message is queued (without taking it), or returns false once the queue is
    /// closed, empty and awaits no retry.
    pub async fn ready(&self) -> bool {
        loop {
            let mut notified = pin!(self.not_empty.notified());
            notified.as_mut().enable();
            {
                let st = self.lock();
                if !st.items.is_empty() && (!st.paused || st.closed) {
                    drop(st);
                    // The wake-up this waiter may have consumed goes on to the next one.
                    if self.chain_wakeups {
                        self.not_empty.notify_one();
                    }
                    return true;
                }
                if st.closed && st.delayed == 0 {
                    return false;
                }
            }
            notified.await;
        }
    }

    /// Pauses (`true`) or resumes (`false`) taking messages; returns whether it changed. A
    /// resume wakes the waiting workers.
    pub fn set_paused(&self, paused: bool) -> bool {
        let mut st = self.lock();
        if st.paused == paused {
            return false;
        }
        st.paused = paused;
        drop(st);
        if !paused {
            self.not_empty.notify_waiters();
            self.filled.notify_waiters();
        }
        true
    }

    /// Refuses new messages from now on and wakes everyone waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_waiters();
        self.not_full.notify_waiters();
        self.filled.notify_waiters();
    }

    /// Length, oldest enqueue time and counts, read together, and `read_more` run under the same
    /// lock: while it runs no message can be queued or taken, so counts it reads of the
    /// messages taken (a worker's finished count) agree with `taken`.
    pub fn snapshot_with<R>(&self, read_more: impl FnOnce() -> R) -> (Snapshot, R) {
        let st = self.lock();
        let snapshot = Snapshot {
            len: st.items.len(),
            bytes: st.bytes,
            oldest_ns: st.items.front().map(|q| q.enqueued_ns),
            received: st.received,
            dropped: st.dropped,
            taken: st.taken,
            cleared: st.cleared,
            delayed: st.delayed,
            retried: st.retried,
            paused: st.paused,
        };
        let more = read_more();
        drop(st);
        (snapshot, more)
    }

    /// Producers waiting for room now.
    #[cfg(test)]
    pub fn blocked_producers(&self) -> usize {
        self.lock().blocked
    }

    /// Removes everything still queued, counted as cleared (their settlements fire on drop, as
    /// [`Verdict::Requeue`](hub_core::Verdict::Requeue), outside the lock).
    pub fn clear(&self) -> usize {
        let items = {
            let mut st = self.lock();
            st.drained = true;
            st.cleared += st.items.len() as u64;
            self.budget.sub(std::mem::take(&mut st.bytes));
            std::mem::take(&mut st.items)
        };
        items.len()
    }
}

#[cfg(test)]
mod budget_tests {
    use super::ByteBudget;

    /// A message's bytes subtracted (a worker took it) before its batch added them: the
    /// budget reads zero for that moment, and every queue still fits, instead of wrapping
    /// round to about `usize::MAX` and counting every non-empty queue as full.
    #[test]
    fn a_subtraction_before_its_addition_never_reads_as_full() {
        let b = ByteBudget::new(1000);
        b.sub(300);
        assert_eq!(b.used(), 0);
        assert!(b.fits(1000), "the whole limit is still there");
        assert!(!b.fits(1001));
        b.add(300);
        assert_eq!(b.used(), 0);
        b.add(400);
        assert_eq!(b.used(), 400);
        assert!(b.fits(600) && !b.fits(601));
    }
}
