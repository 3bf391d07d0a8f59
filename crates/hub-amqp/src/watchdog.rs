//! The stall watchdog and the broker-side depth: every few seconds, per consumer queue, what the
//! broker reports (messages ready, consumers) against what the hub receives.
//!
//! A subscription can look alive and deliver nothing (fedora-messaging #208; after a node loss
//! queues come back and consumers do not): a queue with messages ready and no consumer at all,
//! or messages ready and none received for `stall_timeout` while the hub had room for more (its
//! queue not full, the prefetch window not full), makes the consumer's receive loop cancel its
//! subscription and subscribe again (see `consume`), counted in `hub_amqp_resubscribes_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hub_core::CancellationToken;
use hub_engine::metrics::ResubscribeReason;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use metrics::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How often the broker is asked, at most (more often with a short `stall_timeout`).
const POLL: Duration = Duration::from_secs(5);

/// What one consumer's receive loop and settle task tell the watchdog, and how it asks the
/// loop to subscribe again.
pub(crate) struct Flow {
    base: Instant,
    /// When the last delivery arrived (or the subscription began), in ms since `base`.
    last: AtomicU64,
    /// Deliveries not yet acknowledged to the broker (the settle task's count).
    pub unacked: AtomicUsize,
    /// The receive loop waits for room in the hub's queue (backpressure: not a stall).
    pub in_sink: AtomicBool,
    asked: std::sync::Mutex<Option<ResubscribeReason>>,
    /// lapin recovered the connection (a stream consumer then subscribes again itself).
    recovered: AtomicBool,
    ask: Notify,
}

/// What the receive loop is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Subscribe again (the watchdog found the queue stalled).
    Resubscribe(ResubscribeReason),
    /// The connection was recovered by lapin.
    Recovered,
}

impl Flow {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            unacked: AtomicUsize::new(0),
            in_sink: AtomicBool::new(false),
            asked: std::sync::Mutex::new(None),
            recovered: AtomicBool::new(false),
            ask: Notify::new(),
        })
    }

    /// A delivery arrived (or a subscription began).
    pub(crate) fn received(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn since_last(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }

    fn ask(&self, why: ResubscribeReason) {
        *self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        self.ask.notify_one();
    }

    /// Forgets a request not yet answered (a new subscription answers it).
    pub(crate) fn clear_ask(&self) {
        *self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The connection was recovered (lapin's `Connected` event after the first).
    pub(crate) fn recovered(&self) {
        self.recovered.store(true, Ordering::Release);
        self.ask.notify_one();
    }

    /// Waits until the watchdog asks for a new subscription, or the connection was recovered.
    pub(crate) async fn asked(&self) -> Ask {
        loop {
            self.ask.notified().await;
            if self.recovered.swap(false, Ordering::AcqRel) {
                return Ask::Recovered;
            }
            let why = self
                .asked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(why) = why {
                return Ask::Resubscribe(why);
            }
        }
    }
}

/// One consumer queue under watch.
pub(crate) struct Watched {
    pub consumer: String,
    pub queue: String,
    /// `hub_amqp_queue_messages{consumer}`.
    pub depth: Gauge,
    pub flow: Arc<Flow>,
    pub prefetch: usize,
    /// With a single active consumer, another hub's may be the one consuming: only "no
    /// consumer at all" is a stall.
    pub single_active: bool,
    /// A stream's count is its length, not a backlog: not watched for stalls.
    pub stream: bool,
}

/// What the broker said of one queue, and what the hub saw.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub ready: u32,
    pub consumers: u32,
    pub since_last: Duration,
    pub unacked: usize,
    pub prefetch: usize,
    pub in_sink: bool,
}

/// Whether a queue is stalled, and how. `stall_timeout` `None`: only a queue with messages ready
/// and no consumer is.
pub(crate) fn stalled(
    r: Reading,
    stall_timeout: Option<Duration>,
    single_active: bool,
) -> Option<ResubscribeReason> {
    if r.ready == 0 {
        return None;
    }
    if r.consumers == 0 {
        return Some(ResubscribeReason::NoConsumer);
    }
    let room = !r.in_sink && r.unacked < r.prefetch;
    match stall_timeout {
        Some(t) if !single_active && room && r.since_last >= t => Some(ResubscribeReason::Stalled),
        _ => None,
    }
}

/// The polling interval for `stall_timeout`.
pub(crate) fn interval(stall_timeout: Option<Duration>) -> Duration {
    stall_timeout.map_or(POLL, |t| (t / 2).clamp(Duration::from_millis(250), POLL))
}

/// Polls every queue until shutdown: the depth gauge, and the stall check. A passive declare
/// per queue, on a channel of its own (one of a queue deleted behind our back is a channel
/// error: the channel is then opened again by the caller's next round).
pub(crate) async fn watch(
    conn: Arc<lapin::Connection>,
    queues: Vec<Watched>,
    stall_timeout: Option<Duration>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval(stall_timeout));
    let mut channel: Option<Channel> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for w in &queues {
            let ch = match &channel {
                Some(c) if c.status().connected() => c.clone(),
                _ => match conn.create_channel().await {
                    Ok(c) => {
                        channel = Some(c.clone());
                        c
                    }
                    Err(e) => {
                        debug!(error = %e, "No channel for the queue watch this round.");
                        break;
                    }
                },
            };
            let opts = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let q = match ch
                .queue_declare(w.queue.as_str().into(), opts, FieldTable::default())
                .await
            {
                Ok(q) => q,
                Err(e) => {
                    debug!(consumer = %w.consumer, queue = %w.queue, error = %e, "Could not read the queue depth.");
                    channel = None;
                    continue;
                }
            };
            w.depth.set(f64::from(q.message_count()));
            if w.stream {
                continue;
            }
            let reading = Reading {
                ready: q.message_count(),
                consumers: q.consumer_count(),
                since_last: w.flow.since_last(),
                unacked: w.flow.unacked.load(Ordering::Relaxed),
                prefetch: w.prefetch,
                in_sink: w.flow.in_sink.load(Ordering::Relaxed),
            };
            if let Some(why) = stalled(reading, stall_timeout, w.single_active) {
                warn!(consumer = %w.consumer, queue = %w.queue, ready = reading.ready, consumers = reading.consumers, idle_for = ?reading.since_last, unacked = reading.unacked, reason = why.as_str(), "Messages wait in the queue and none arrive; subscribing again.");
                // Not again before the new subscription had its chance.
                w.flow.received();
                w.flow.ask(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            ready: 10,
            consumers: 1,
            since_last: Duration::from_secs(30),
            unacked: 0,
            prefetch: 100,
            in_sink: false,
        }
    }

    #[test]
    fn a_stall_is_messages_ready_and_none_arriving_while_there_is_room() {
        let t = Some(Duration::from_secs(10));
        assert_eq!(
            stalled(reading(), t, false),
            Some(ResubscribeReason::Stalled)
        );
        // Nothing ready, recent deliveries, a full hub queue or a full prefetch window: not one.
        for r in [
            Reading {
                ready: 0,
                ..reading()
            },
            Reading {
                since_last: Duration::from_secs(3),
                ..reading()
            },
            Reading {
                in_sink: true,
                ..reading()
            },
            Reading {
                unacked: 100,
                ..reading()
            },
        ] {
            assert_eq!(stalled(r, t, false), None, "{r:?}");
        }
        // A standby of a single active consumer receives nothing, rightly.
        assert_eq!(stalled(reading(), t, true), None);
        assert_eq!(stalled(reading(), None, false), None);
        // No consumer at all: always, whatever else.
        let gone = Reading {
            consumers: 0,
            in_sink: true,
            ..reading()
        };
        assert_eq!(
            stalled(gone, None, true),
            Some(ResubscribeReason::NoConsumer)
        );
    }

    #[test]
    fn the_poll_follows_a_short_stall_timeout() {
        assert_eq!(interval(None), POLL);
        assert_eq!(
            interval(Some(Duration::from_secs(2))),
            Duration::from_secs(1)
        );
        assert_eq!(interval(Some(Duration::from_secs(600))), POLL);
    }
}
