//! Reading RabbitMQ streams (`queue_type = "stream"`): where to start, and the offset each
//! consumer keeps.
//!
//! A stream is a log: reading removes nothing, and AMQP 0-9-1 has no server-side offset of a
//! consumer. So the hub keeps its own: the offset below which every message is finished (acked
//! after its consumer's verdict, in order) is published, at most once a second and once more at
//! shutdown, to the consumer's offset queue `<stream queue's consumer name>.offset` (durable,
//! classic, `x-max-length = 1`: only the latest is kept), as `{"offset": N}`. On start the hub
//! reads it back (`basic.get`, then given back) and resumes at `N + 1`; without it (first
//! start, or the queue deleted: the offset is lost) at the configured `offset`. After a crash
//! up to a second of finished messages, and whatever was in flight, is read again (at least
//! once); after a clean stop, nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hub_core::StreamOffset;
use lapin::options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::publisher::Publisher;

/// The header RabbitMQ puts on each message read from a stream: its offset.
pub(crate) const OFFSET_HEADER: &str = "x-stream-offset";

/// No offset yet.
const NONE: u64 = u64::MAX;

/// How often a consumer's offset is stored, at most.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// The offset of a delivery read from a stream.
pub(crate) fn delivery_offset(p: &BasicProperties) -> Option<u64> {
    match p.headers().as_ref()?.inner().get(OFFSET_HEADER)? {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// A stream consumer's progress: the offset below which (inclusive) everything is finished, and
/// the first offset read in this run.
#[derive(Debug)]
pub(crate) struct Progress {
    done: AtomicU64,
    /// The lowest offset read since the hub started (`NONE` before the first).
    first: AtomicU64,
    tx: watch::Sender<u64>,
}

impl Progress {
    /// Starts at `stored` (the offset read back, if any).
    pub(crate) fn new(stored: Option<u64>) -> (Arc<Self>, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(stored.unwrap_or(NONE));
        let p = Arc::new(Self {
            done: AtomicU64::new(stored.unwrap_or(NONE)),
            first: AtomicU64::new(NONE),
            tx,
        });
        (p, rx)
    }

    /// Everything up to `offset` is finished.
    pub(crate) fn finished_upto(&self, offset: u64) {
        let before = self.done.load(Ordering::Relaxed);
        if before == NONE || offset > before {
            self.done.store(offset, Ordering::Relaxed);
            self.tx.send_replace(offset);
        }
    }

    /// The offset below which (inclusive) everything is finished, if any.
    pub(crate) fn done(&self) -> Option<u64> {
        Some(self.done.load(Ordering::Relaxed)).filter(|&o| o != NONE)
    }

    /// A delivery at `offset` was read.
    pub(crate) fn read(&self, offset: u64) {
        self.first.fetch_min(offset, Ordering::Relaxed);
    }

    /// Where reading starts again after a reconnect or a new subscription: after what is
    /// finished; with nothing finished yet, at the first offset read (a `next`, `last` or time
    /// start taken again would skip what came meanwhile); `None` when nothing was read either.
    pub(crate) fn resume_at(&self) -> Option<u64> {
        self.done()
            .map(|o| o.saturating_add(1))
            .or_else(|| Some(self.first.load(Ordering::Relaxed)).filter(|&o| o != NONE))
    }

    /// Where to (re)start reading: [`Progress::resume_at`], else at `configured`.
    pub(crate) fn start(&self, configured: StreamOffset) -> AMQPValue {
        match self.resume_at() {
            Some(o) => AMQPValue::LongLongInt(i64::try_from(o).unwrap_or(i64::MAX)),
            None => match configured {
                StreamOffset::First => long_string("first"),
                StreamOffset::Last => long_string("last"),
                StreamOffset::Next => long_string("next"),
                StreamOffset::Time(t) => {
                    AMQPValue::Timestamp(u64::try_from(t.as_second()).unwrap_or(0))
                }
            },
        }
    }
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

/// Declares the consumer's offset queue and reads the stored offset, if any (giving the message
/// back, so it stays until a newer one replaces it).
pub(crate) async fn stored_offset(ch: &Channel, store: &str) -> Result<Option<u64>, String> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    ch.queue_declare(store.into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|e| format!("declaring offset queue {store:?}: {e}"))?;
    let got = ch
        .basic_get(store.into(), BasicGetOptions { no_ack: false })
        .await
        .map_err(|e| format!("reading offset queue {store:?}: {e}"))?;
    let Some(got) = got else {
        return Ok(None);
    };
    let offset = serde_json::from_slice::<serde_json::Value>(&got.delivery.data)
        .ok()
        .and_then(|v| v["offset"].as_u64());
    let _ = got
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await;
    if offset.is_none() {
        warn!(queue = %store, "The offset queue holds something else than an offset; starting at the configured offset.");
    }
    Ok(offset)
}

/// Stores the consumer's offset each time it moves (at most once a [`COMMIT_EVERY`]), and once
/// more when the settle task ends (its sender dropped), then ends.
pub(crate) async fn commit(
    mut rx: watch::Receiver<u64>,
    publisher: Publisher,
    store: String,
    consumer: String,
) {
    let mut stored = *rx.borrow_and_update();
    loop {
        let mut closed = rx.changed().await.is_err();
        if !closed {
            let until = tokio::time::Instant::now() + COMMIT_EVERY;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(until) => break,
                    r = rx.changed() => if r.is_err() { closed = true; break },
                }
            }
        }
        let now = *rx.borrow_and_update();
        if now != stored && now != NONE {
            let body =
                serde_json::to_vec(&serde_json::json!({ "offset": now })).unwrap_or_default();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            match publisher.publish("", &store, props, body).await {
                Ok(()) => {
                    debug!(%consumer, offset = now, "Stream offset stored.");
                    stored = now;
                }
                Err(e) => {
                    warn!(%consumer, queue = %store, offset = now, error = %e, "Could not store the stream offset; what follows it may be read again.");
                }
            }
        }
        if closed {
            info!(%consumer, offset = stored, "Stream offset stored at close.");
            return;
        }
    }
}
