//! One consumer's bounded FIFO queue, with the three `when_full` policies.
//!
//! A mutex around a `VecDeque` rather than a channel: `drop_oldest` needs the producer side to
//! pop, and the oldest-age gauge needs to peek at the head. Waiters use `Notify`, signalled only
//! on empty→non-empty and full→non-full transitions so a busy queue rarely touches it.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::WhenFull;

use super::ticket::Settle;
use crate::Message;

/// A message waiting for one consumer.
pub(crate) struct Queued {
    pub message: Message,
    pub settle: Settle,
    /// When it was queued, in nanoseconds after the dispatcher's epoch.
    pub enqueued_ns: u64,
}

struct State {
    items: VecDeque<Queued>,
    closed: bool,
    /// Messages accepted (counted here, under the lock the push takes anyway).
    received: u64,
    /// Messages dropped by the `when_full` policy.
    dropped: u64,
}

/// A queue's state at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Snapshot {
    pub len: usize,
    /// Enqueue time of the oldest message (nanoseconds after the dispatcher's epoch).
    pub oldest_ns: Option<u64>,
    pub received: u64,
    pub dropped: u64,
}

pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
    /// More than one worker takes from this queue: pass wake-ups along.
    chain_wakeups: bool,
    not_empty: Notify,
    not_full: Notify,
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

impl Queue {
    pub fn new(capacity: usize, workers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(4096)),
                closed: false,
                received: 0,
                dropped: 0,
            }),
            capacity,
            chain_wakeups: workers > 1,
            not_empty: Notify::new(),
            not_full: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_push(&self, item: Queued, policy: WhenFull) -> TryPush {
        let mut st = self.lock();
        // The common case first, with no detour (the hot path of every single delivery).
        if !st.closed && st.items.len() < self.capacity {
            st.received += 1;
            let was_empty = st.items.is_empty();
            st.items.push_back(item);
            drop(st);
            if was_empty {
                self.not_empty.notify_one();
            }
            return TryPush::Done(Offer::Accepted);
        }
        // Closed or full: nothing was queued, so there is nobody new to wake.
        self.push_locked(&mut st, item, policy)
    }

    /// One push under the caller's lock; the caller wakes the worker.
    fn push_locked(&self, st: &mut State, item: Queued, policy: WhenFull) -> TryPush {
        if st.closed {
            return TryPush::Done(Offer::Closed(Box::new(item)));
        }
        if st.items.len() < self.capacity {
            st.received += 1;
            st.items.push_back(item);
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
                let oldest = st.items.pop_front();
                st.items.push_back(item);
                match oldest {
                    Some(old) => {
                        st.dropped += 1;
                        TryPush::Done(Offer::Dropped(Box::new(old)))
                    }
                    None => TryPush::Done(Offer::Accepted),
                }
            }
        }
    }

    /// Offers several messages in order under one lock, waking the worker at most once (the
    /// cross-thread hand-off is what a message costs most here). Returns the outcomes that are
    /// not a plain acceptance, in order; under `block`, the messages from the first that did not
    /// fit are left at the front of `items`, to be pushed with [`Queue::push`].
    pub fn try_push_many(&self, items: &mut VecDeque<Queued>, policy: WhenFull) -> Vec<Offer> {
        let mut outcomes = Vec::new();
        let mut st = self.lock();
        let was_empty = st.items.is_empty();
        while let Some(item) = items.pop_front() {
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
        drop(st);
        if wake {
            self.not_empty.notify_one();
        }
        outcomes
    }

    /// Offers a message; under `block` waits for room (or for the queue to close).
    pub async fn push(&self, mut item: Queued, policy: WhenFull) -> Offer {
        match self.try_push(item, policy) {
            TryPush::Done(o) => return o,
            TryPush::Full(back) => item = back,
        }
        loop {
            let mut notified = pin!(self.not_full.notified());
            notified.as_mut().enable();
            match self.try_push(item, policy) {
                TryPush::Done(o) => return o,
                TryPush::Full(back) => item = back,
            }
            notified.await;
        }
    }

    /// Takes the oldest message if there is one, without waiting.
    pub fn try_pop(&self) -> TryPop {
        let mut st = self.lock();
        match st.items.pop_front() {
            Some(item) => {
                let was_full = st.items.len() + 1 == self.capacity;
                let more = !st.items.is_empty();
                drop(st);
                if was_full {
                    self.not_full.notify_one();
                }
                if more && self.chain_wakeups {
                    self.not_empty.notify_one();
                }
                TryPop::Item(item)
            }
            None if st.closed => TryPop::Closed,
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

    /// Refuses new messages from now on and wakes everyone waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_waiters();
        self.not_full.notify_waiters();
    }

    /// Length, oldest enqueue time and counts, read together.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            len: st.items.len(),
            oldest_ns: st.items.front().map(|q| q.enqueued_ns),
            received: st.received,
            dropped: st.dropped,
        }
    }

    /// Removes everything still queued (their settlements fire on drop).
    pub fn clear(&self) -> usize {
        let items = std::mem::take(&mut self.lock().items);
        items.len()
    }
}
