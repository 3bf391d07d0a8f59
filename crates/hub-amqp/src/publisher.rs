//! Confirmed, mandatory publishing on one channel of the publishing connection, with every
//! `basic.return` attributed to its own publish.
//!
//! lapin hands a returned (unroutable) message to whichever publisher confirm it completes next,
//! and completes the tags of a `multiple` ack in hash order, so with several publishes in flight
//! "unroutable" can land on another publish: a routable retry reported unroutable (a duplicate),
//! an unroutable dead letter reported confirmed (a loss). One task owns the channel instead:
//!
//! - it publishes requests in order (up to [`WINDOW`] unconfirmed), keeping for each the
//!   identity that decides routing: exchange, routing key, and `message_id`;
//! - every returned message it is handed, on any confirm, goes to a pool;
//! - a confirmed publish is answered only once every publish that was in flight when its confirm
//!   was seen has been confirmed too. RabbitMQ sends a publish's `basic.return` before its
//!   `basic.ack`, and lapin attaches returns to confirms first in, first out, so by then the
//!   publish's return, if there is one, is in the pool;
//! - it is then unroutable if the pool holds a return of its identity (the oldest such publish
//!   takes the oldest such return: publishes of one identity route alike).
//!
//! Publishes stay pipelined (the throughput of a window of confirms); what this costs is a
//! little latency for a publish confirmed while older ones are still waiting (measured in
//! BENCHMARKS.md).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, oneshot};
use tracing::error;

/// Unconfirmed publishes at most; requests beyond wait in the queue.
pub(crate) const WINDOW: usize = 1000;
/// Requests waiting for the publishing task at most; callers beyond wait to hand theirs over.
const QUEUE: usize = 4096;
/// How long a publish waits for lapin to recover the connection before it fails.
const RECOVERY: Duration = Duration::from_secs(30);
/// How long a publish sent waits for its confirm before it fails (the caller retries or reports
/// it), as a retry's republish always did: a confirm can go with its connection, and a consumer
/// publishing replies must not wait for it for ever.
pub(crate) const CONFIRM_WAIT: Duration = Duration::from_secs(30);

/// Why a publish was not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishFailure {
    /// The broker returned it: nothing is bound to the exchange for its routing key.
    Unroutable { exchange: String, key: String },
    /// The broker refused it (`basic.nack`).
    Refused,
    /// The connection or channel failed before it was confirmed.
    Transport(String),
    /// The exchange or routing key is not a valid AMQP short string.
    Invalid(String),
    /// The publishing task is gone (the backend is closing).
    Closed,
}

impl fmt::Display for PublishFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unroutable { exchange, key } => {
                write!(
                    f,
                    "unroutable: no queue is bound to {exchange:?} for {key:?}"
                )
            }
            Self::Refused => f.write_str("the broker refused it"),
            Self::Transport(e) => write!(f, "not confirmed: {e}"),
            Self::Invalid(e) => f.write_str(e),
            Self::Closed => f.write_str("the backend is closing"),
        }
    }
}

impl std::error::Error for PublishFailure {}

type Reply = oneshot::Sender<Result<(), PublishFailure>>;

struct Request {
    exchange: ShortString,
    key: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
    reply: Reply,
}

/// A handle to the publishing task. Cheap to clone; the task ends once every handle is dropped
/// and every publish in flight is answered.
#[derive(Clone)]
pub(crate) struct Publisher {
    tx: mpsc::Sender<Request>,
}

impl Publisher {
    /// Starts the publishing task on `channel` (confirms already enabled).
    pub fn start(channel: Channel) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(channel, rx));
        (Self { tx }, task)
    }

    /// Publishes with `mandatory` and waits for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        key: &str,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Result<(), PublishFailure> {
        let short = |what: &str, v: &str| {
            ShortString::try_new(v).map_err(|_| {
                PublishFailure::Invalid(format!("{what} {v:?} is longer than 255 bytes"))
            })
        };
        let (reply, answer) = oneshot::channel();
        let request = Request {
            exchange: short("exchange", exchange)?,
            key: short("routing key", key)?,
            properties,
            body,
            reply,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| PublishFailure::Closed)?;
        answer.await.unwrap_or(Err(PublishFailure::Closed))
    }
}

/// What decides where a publish is routed (and so whether it is returned): exchange, routing
/// key and `message_id`, as a 64-bit fingerprint (no copy of the strings per publish; two
/// publishes in flight at once colliding by chance is a 2^-64 event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity(u64);

impl Identity {
    fn of(exchange: &str, key: &str, message_id: Option<&ShortString>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (exchange, key, message_id.map(ShortString::as_str)).hash(&mut h);
        Self(h.finish())
    }

    fn of_return(r: &BasicReturnMessage) -> Self {
        let d = &r.delivery;
        Self::of(
            d.exchange.as_str(),
            d.routing_key.as_str(),
            d.properties.message_id().as_ref(),
        )
    }
}

enum Outcome {
    Ack,
    Nack,
    Failed(String),
}

struct InFlight {
    identity: Identity,
    reply: Reply,
    /// Set when its confirm was seen.
    outcome: Option<Outcome>,
    /// The newest publish when its confirm was seen: it is answered once everything up to
    /// this one is confirmed.
    barrier: u64,
}

type Confirm = Pin<Box<dyn Future<Output = (u64, Result<Confirmation, String>)> + Send>>;

struct State {
    channel: Channel,
    /// Our own order of publishing (not lapin's tags, which restart after a recovery).
    next: u64,
    in_flight: BTreeMap<u64, InFlight>,
    confirms: FuturesUnordered<Confirm>,
    /// Returned messages not yet matched to their publish.
    returns: Vec<BasicReturnMessage>,
}

async fn run(channel: Channel, mut rx: mpsc::Receiver<Request>) {
    let mut st = State {
        channel,
        next: 0,
        in_flight: BTreeMap::new(),
        confirms: FuturesUnordered::new(),
        returns: Vec::new(),
    };
    let mut open = true;
    while open || !st.in_flight.is_empty() {
        tokio::select! {
            request = rx.recv(), if open && st.in_flight.len() < WINDOW => match request {
                Some(r) => st.publish(r),
                None => open = false,
            },
            Some((seq, result)) = st.confirms.next(), if !st.confirms.is_empty() => {
                let newest = st.next.saturating_sub(1);
                st.confirmed(seq, result, newest);
                // Everything lapin resolved with it (one frame can confirm many).
                while let Some(Some((seq, result))) = st.confirms.next().now_or_never() {
                    st.confirmed(seq, result, newest);
                }
                st.answer();
            }
        }
    }
}

impl State {
    /// Hands the publish to lapin without waiting for it: its send and its confirm run in
    /// `confirms` beside the others (lapin then writes many publishes' frames at once).
    fn publish(&mut self, r: Request) {
        let Request {
            exchange,
            key,
            properties,
            body,
            reply,
        } = r;
        let identity = Identity::of(
            exchange.as_str(),
            key.as_str(),
            properties.message_id().as_ref(),
        );
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(
            seq,
            InFlight {
                identity,
                reply,
                outcome: None,
                barrier: seq,
            },
        );
        let channel = self.channel.clone();
        self.confirms.push(Box::pin(async move {
            let result = match send_or_recover(&channel, &exchange, &key, &properties, &body).await
            {
                Ok(confirm) => match tokio::time::timeout(CONFIRM_WAIT, confirm).await {
                    Ok(confirmed) => confirmed.map_err(|e| e.to_string()),
                    Err(_) => Err(format!(
                        "no confirm within {}s (the connection may have been lost meanwhile)",
                        CONFIRM_WAIT.as_secs()
                    )),
                },
                Err(e) => Err(e),
            };
            (seq, result)
        }));
    }

    /// Records a confirm; its returned message (whoever it belongs to) goes to the pool.
    fn confirmed(&mut self, seq: u64, result: Result<Confirmation, String>, newest: u64) {
        let outcome = match result {
            Ok(Confirmation::Ack(returned)) => {
                self.returns.extend(returned);
                Outcome::Ack
            }
            Ok(Confirmation::Nack(returned)) => {
                self.returns.extend(returned);
                Outcome::Nack
            }
            Ok(Confirmation::NotRequested) => Outcome::Failed("confirms are not enabled".into()),
            Err(e) => Outcome::Failed(e),
        };
        if let Some(p) = self.in_flight.get_mut(&seq) {
            p.outcome = Some(outcome);
            p.barrier = newest;
        }
    }

    /// Answers, in order, every confirmed publish whose barrier has passed.
    fn answer(&mut self) {
        // Everything before the oldest unconfirmed publish is confirmed; only those can be
        // answered (a barrier is never below its own publish).
        let lowest_waiting = self
            .in_flight
            .iter()
            .find(|(_, p)| p.outcome.is_none())
            .map_or(u64::MAX, |(seq, _)| *seq);
        let ready: Vec<u64> = self
            .in_flight
            .range(..lowest_waiting)
            .filter(|(_, p)| p.barrier < lowest_waiting)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in ready {
            let Some(p) = self.in_flight.remove(&seq) else {
                continue;
            };
            let returned = if self.returns.is_empty() {
                None
            } else {
                self.returns
                    .iter()
                    .position(|r| Identity::of_return(r) == p.identity)
                    .map(|i| self.returns.remove(i))
            };
            let result = match (p.outcome, returned) {
                (Some(Outcome::Failed(e)), _) => Err(PublishFailure::Transport(e)),
                (_, Some(r)) => Err(PublishFailure::Unroutable {
                    exchange: r.delivery.exchange.to_string(),
                    key: r.delivery.routing_key.to_string(),
                }),
                (Some(Outcome::Nack), None) => Err(PublishFailure::Refused),
                (Some(Outcome::Ack) | None, None) => Ok(()),
            };
            let _ = p.reply.send(result);
        }
        if self.in_flight.is_empty() && !self.returns.is_empty() {
            // Cannot happen if the broker returns before it confirms; say so if it does.
            for r in self.returns.drain(..) {
                error!(exchange = %r.delivery.exchange, routing_key = %r.delivery.routing_key, "A returned message matched no publish in flight; its publish was reported confirmed.");
            }
        }
    }
}

/// Hands one publish to lapin; during a reconnect, waits for lapin's recovery (bounded) and
/// tries once more.
async fn send_or_recover(
    channel: &Channel,
    exchange: &ShortString,
    key: &ShortString,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<lapin::PublisherConfirm, String> {
    let error = match send(channel, exchange, key, properties, body).await {
        Ok(confirm) => return Ok(confirm),
        Err(e) => e,
    };
    match tokio::time::timeout(RECOVERY, channel.wait_for_recovery(error)).await {
        Ok(Ok(())) => send(channel, exchange, key, properties, body)
            .await
            .map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the connection did not recover within {}s",
            RECOVERY.as_secs()
        )),
    }
}

async fn send(
    channel: &Channel,
    exchange: &ShortString,
    key: &ShortString,
    properties: &BasicProperties,
    body: &[u8],
) -> lapin::Result<lapin::PublisherConfirm> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    channel
        .basic_publish(
            exchange.clone(),
            key.clone(),
            options,
            body,
            properties.clone(),
        )
        .await
}
