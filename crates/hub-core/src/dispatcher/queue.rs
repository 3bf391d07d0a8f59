//! One consumer's bounded FIFO queue, with the three `when_full` policies.
//!
//! A mutex around a `VecDeque` rather than a channel: `drop_oldest` needs the producer side to
//! pop, and the oldest-age gauge needs to peek at the head. Waiters use `Notify`, signalled only
//! on empty→non-empty and full→non-full transitions so a busy queue rarely touches it.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::WhenFull;

use super::ticket::Settle;
use crate::Message;

/// A message waiting for one consumer.
pub(crate) struct Queued {
    pub message: Message,
    pub settle: Settle,
    pub enqueued_at: Instant,
}

struct State {
    items: VecDeque<Queued>,
    closed: bool,
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

pub(crate) enum Popped {
    Item(Queued),
    Closed,
}

impl Queue {
    pub fn new(capacity: usize, workers: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.min(4096)),
                closed: false,
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
        if st.closed {
            return TryPush::Done(Offer::Closed(Box::new(item)));
        }
        if st.items.len() < self.capacity {
            let was_empty = st.items.is_empty();
            st.items.push_back(item);
            drop(st);
            if was_empty {
                self.not_empty.notify_one();
            }
            return TryPush::Done(Offer::Accepted);
        }
        match policy {
            WhenFull::Block => TryPush::Full(item),
            WhenFull::DropNewest => TryPush::Done(Offer::Dropped(Box::new(item))),
            WhenFull::DropOldest => {
                let oldest = st.items.pop_front();
                st.items.push_back(item);
                match oldest {
                    Some(old) => TryPush::Done(Offer::Dropped(Box::new(old))),
                    None => TryPush::Done(Offer::Accepted),
                }
            }
        }
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

    fn try_pop(&self) -> Option<Popped> {
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
                Some(Popped::Item(item))
            }
            None if st.closed => Some(Popped::Closed),
            None => None,
        }
    }

    /// Takes the oldest message, waiting while the queue is empty; `Closed` once it is empty and
    /// closed. The flag says whether it had to wait.
    pub async fn pop(&self) -> (Popped, bool) {
        if let Some(p) = self.try_pop() {
            return (p, false);
        }
        loop {
            let mut notified = pin!(self.not_empty.notified());
            notified.as_mut().enable();
            if let Some(p) = self.try_pop() {
                return (p, true);
            }
            notified.await;
        }
    }

    /// Refuses new messages from now on and wakes everyone waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_waiters();
        self.not_full.notify_waiters();
    }

    /// Length and the enqueue time of the oldest message.
    pub fn snapshot(&self) -> (usize, Option<Instant>) {
        let st = self.lock();
        (st.items.len(), st.items.front().map(|q| q.enqueued_at))
    }

    /// Removes everything still queued (their settlements fire on drop).
    pub fn clear(&self) -> usize {
        let items = std::mem::take(&mut self.lock().items);
        items.len()
    }
}
