//! One connected client: its subscriptions, its bounded queue (oldest dropped first, counted,
//! and the client told), and the control frames (replies, errors) that are never dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use hub_core::{Pattern, TopicWords};
use tokio::sync::Notify;

use crate::auth::Grant;

/// How a subscription wants its messages written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The hub protocol over WebSocket: `{"type": "message", "id", "topic", ...}`.
    Hub,
    /// Moksha's livesocket: `{"topic", "body"}`.
    Moksha,
    /// Server-Sent Events: `id:`, `event: message`, `data:` (the hub frame).
    Sse,
}

/// A message's frames, each built at most once per message whatever the number of clients.
pub(crate) struct Frames<'a> {
    pub msg: &'a hub_core::Message,
    pub hub: Utf8Bytes,
    pub moksha: std::cell::OnceCell<Utf8Bytes>,
    pub sse: std::cell::OnceCell<Bytes>,
}

impl Frames<'_> {
    fn get(&self, format: Format) -> Frame {
        match format {
            Format::Hub => Frame::Text(self.hub.clone()),
            Format::Moksha => Frame::Text(
                self.moksha
                    .get_or_init(|| crate::protocol::moksha_frame(self.msg).into())
                    .clone(),
            ),
            Format::Sse => Frame::Raw(
                self.sse
                    .get_or_init(|| crate::protocol::sse_event(self.msg.id(), &self.hub))
                    .clone(),
            ),
        }
    }
}

/// A frame ready to write: text for WebSocket, raw bytes for SSE. Cloning is a reference count.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    Text(Utf8Bytes),
    Raw(Bytes),
}

/// One subscription: the pattern as given, and how to write what matches.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub pattern: Pattern,
    pub format: Format,
}

/// What the writer takes next.
pub(crate) enum Next {
    /// A reply or an error frame (never dropped).
    Control(String),
    /// Messages were dropped since the last notice: (since then, in all).
    Dropped(u64, u64),
    /// A message.
    Message(Frame),
    /// Closed by the hub, with the reason.
    Closed(String),
}

#[derive(Default)]
struct Inner {
    subs: Vec<Sub>,
    messages: VecDeque<Frame>,
    control: VecDeque<String>,
    dropped_unreported: u64,
    dropped_total: u64,
    closed: Option<String>,
}

/// A client of the gateway.
pub(crate) struct Client {
    pub id: u64,
    pub grant: Arc<Grant>,
    pub transport: &'static str,
    capacity: usize,
    inner: Mutex<Inner>,
    wake: Notify,
}

/// Control frames a client may leave unread before it is disconnected.
const MAX_CONTROL: usize = 1024;

/// Patterns one connection may subscribe to (each message is matched against every one).
pub(crate) const MAX_SUBSCRIPTIONS: usize = 256;

impl Client {
    pub fn new(id: u64, grant: Arc<Grant>, transport: &'static str, capacity: usize) -> Self {
        Self {
            id,
            grant,
            transport,
            capacity: capacity.max(1),
            inner: Mutex::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the message if one of the client's subscriptions (and its token) takes it; true
    /// when queued.
    pub fn offer(&self, words: &TopicWords<'_>, frames: &Frames<'_>) -> bool {
        if !self.grant.may_receive(words) {
            return false;
        }
        let mut inner = self.lock();
        if inner.closed.is_some() {
            return false;
        }
        let Some(format) = inner
            .subs
            .iter()
            .find(|s| s.pattern.matches_words(words))
            .map(|s| s.format)
        else {
            return false;
        };
        let frame = frames.get(format);
        self.push_locked(&mut inner, frame);
        drop(inner);
        self.wake.notify_one();
        true
    }

    /// Queues a frame (a replayed SSE event), dropping the oldest when full.
    pub fn push(&self, frame: Frame) {
        let mut inner = self.lock();
        self.push_locked(&mut inner, frame);
        drop(inner);
        self.wake.notify_one();
    }

    fn push_locked(&self, inner: &mut Inner, frame: Frame) {
        if inner.messages.len() >= self.capacity {
            inner.messages.pop_front();
            inner.dropped_unreported += 1;
            inner.dropped_total += 1;
            self.grant.series().inspect(|s| s.dropped.increment(1));
        }
        inner.messages.push_back(frame);
    }

    /// Queues a reply or an error frame; false (and the client is closed) when the client has
    /// left too many of them unread.
    pub fn control(&self, text: String) -> bool {
        let mut inner = self.lock();
        if inner.control.len() >= MAX_CONTROL {
            inner.closed = Some("too many replies left unread".into());
            drop(inner);
            self.wake.notify_one();
            return false;
        }
        inner.control.push_back(text);
        drop(inner);
        self.wake.notify_one();
        true
    }

    /// Adds subscriptions (one already there with the same pattern takes the new format);
    /// every pattern now subscribed, or an error (and nothing added) past
    /// [`MAX_SUBSCRIPTIONS`].
    pub fn subscribe(&self, subs: impl IntoIterator<Item = Sub>) -> Result<Vec<String>, String> {
        let subs: Vec<Sub> = subs.into_iter().collect();
        let mut inner = self.lock();
        let new = subs
            .iter()
            .filter(|n| {
                !inner
                    .subs
                    .iter()
                    .any(|s| s.pattern.as_str() == n.pattern.as_str())
            })
            .count();
        if inner.subs.len() + new > MAX_SUBSCRIPTIONS {
            return Err(format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per connection ({} now)",
                inner.subs.len()
            ));
        }
        for sub in subs {
            inner
                .subs
                .retain(|s| s.pattern.as_str() != sub.pattern.as_str());
            inner.subs.push(sub);
        }
        Ok(inner
            .subs
            .iter()
            .map(|s| s.pattern.as_str().to_owned())
            .collect())
    }

    /// Removes subscriptions by pattern text; returns what is left.
    pub fn unsubscribe(&self, patterns: &[String]) -> Vec<String> {
        let mut inner = self.lock();
        inner
            .subs
            .retain(|s| !patterns.iter().any(|p| p == s.pattern.as_str()));
        inner
            .subs
            .iter()
            .map(|s| s.pattern.as_str().to_owned())
            .collect()
    }

    /// Whether a subscription of the client matches `topic` (for SSE replay).
    pub fn wants(&self, topic: &str) -> bool {
        let words = TopicWords::new(topic);
        self.grant.may_receive(&words)
            && self
                .lock()
                .subs
                .iter()
                .any(|s| s.pattern.matches_words(&words))
    }

    /// Closes the client: its writer sends `reason` and ends.
    pub fn close(&self, reason: impl Into<String>) {
        let mut inner = self.lock();
        if inner.closed.is_none() {
            inner.closed = Some(reason.into());
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// The next thing to write, if there is one now.
    pub fn try_next(&self) -> Option<Next> {
        let mut inner = self.lock();
        if let Some(reason) = &inner.closed {
            return Some(Next::Closed(reason.clone()));
        }
        if let Some(c) = inner.control.pop_front() {
            return Some(Next::Control(c));
        }
        if inner.dropped_unreported > 0 {
            let n = std::mem::take(&mut inner.dropped_unreported);
            return Some(Next::Dropped(n, inner.dropped_total));
        }
        inner.messages.pop_front().map(Next::Message)
    }

    /// Waits for the next thing to write.
    pub async fn next(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // One waiter (the writer): a notification sent while it was not waiting is kept.
            self.wake.notified().await;
        }
    }
}
