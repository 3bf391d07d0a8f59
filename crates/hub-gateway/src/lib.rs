//! The WebSocket and Server-Sent-Events gateway: programs in any language and browsers
//! subscribe to topic patterns and get messages pushed as they pass through the hub, and, where
//! a token allows it, publish onto the bus, all through the hub's one HTTP port.
//!
//! - `GET /ws`: WebSocket, speaking the hub protocol (`docs/gateway-protocol.md`) and Moksha's
//!   livesocket frames on the same endpoint;
//! - `GET /events?topic=PATTERN&topic=...`: Server-Sent Events, each with the message id as
//!   its event id; `Last-Event-ID` replays what was missed from a per-gateway buffer.
//!
//! Data flow: a *tap* consumer per attached backend (an ordinary consumer of the engine, with
//! its own bounded `drop_oldest` queue) hands each message to [`Gateway::fan_out`], which
//! writes each message's frames once and queues them on every client whose subscription and
//! token take it. Each client has its own bounded queue (oldest dropped first, counted, the
//! client told) drained by its own writer task, so a slow client never slows the hub. What a
//! client publishes enters the hub through the gateway's own backend (id `gateway`), as if a
//! broker had delivered it, and is forwarded onto `forward_to` when set.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::Router;
use axum::routing::get;
use hub_core::{
    Backend, BackendContext, BackendError, ConsumeError, Consumer, Context, Delivery, Message,
    Pattern, PublishError, Publisher, Sink, TopicWords, async_trait,
};
use metrics::{Counter, Gauge};
use tracing::info;

mod auth;
mod client;
mod config;
pub mod protocol;
mod sse;
mod stall;
mod ws;

pub use config::{GatewayConfig, TokenConfig};
pub use stall::WriteStall;

use auth::{Auth, Grant};
use client::{Client, Frames};

/// The id of the gateway's own backend (what clients publish enters the hub through it).
pub const BACKEND_ID: &str = "gateway";

/// Message ids remembered to skip a message seen twice (a client's publish forwarded onto an
/// attached backend comes back through it).
const DEDUP_IDS: usize = 8192;

/// A configuration problem: the key under `[gateway]` and what is wrong.
pub type Issue = (String, String);

/// The gateway: its clients, credentials, replay buffer and series.
pub struct Gateway {
    cfg: GatewayConfig,
    auth: Auth,
    shared: Mutex<Shared>,
    next_client: AtomicU64,
    sink: Mutex<Option<Sink>>,
    forward: OnceLock<(String, Publisher)>,
    series: OnceLock<Series>,
}

struct Series {
    ws_clients: Gauge,
    sse_clients: Gauge,
    bad_frames: HashMap<&'static str, Counter>,
    disconnects: HashMap<&'static str, Counter>,
}

/// What the fan-out and the connections share: the clients, and the recent messages (for
/// duplicates and SSE replay). One lock, so an SSE client that replays and then registers
/// misses nothing and gets nothing twice.
#[derive(Default)]
struct Shared {
    clients: HashMap<u64, Arc<Client>>,
    seen: HashSet<Arc<str>>,
    seen_order: VecDeque<Arc<str>>,
    /// (id, topic, hub frame) of the last `replay_buffer` messages.
    replay: VecDeque<(Arc<str>, Arc<str>, axum::extract::ws::Utf8Bytes)>,
}

impl Gateway {
    /// Checks `cfg` (patterns, tokens) and builds the gateway.
    ///
    /// # Errors
    /// Every problem, each with its key under `[gateway]`.
    pub fn new(cfg: GatewayConfig) -> Result<Arc<Self>, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut read = |key: String, list: &[String]| -> Vec<Pattern> {
            list.iter()
                .filter_map(|p| {
                    Pattern::new(p)
                        .map_err(|e| issues.push((key.clone(), format!("{p:?}: {e}"))))
                        .ok()
                })
                .collect()
        };
        let mut tokens = Vec::new();
        let mut grants = Vec::new();
        for (name, t) in &cfg.tokens {
            let subscribe = read(format!("tokens.{name}.subscribe"), &t.subscribe);
            let publish = read(format!("tokens.{name}.publish"), &t.publish);
            grants.push((name.clone(), t.token.clone(), subscribe, publish));
        }
        for (name, source, subscribe, publish) in grants {
            match source.resolve() {
                Ok(secret) if secret.expose().trim().is_empty() => {
                    issues.push((format!("tokens.{name}.token"), "is empty".into()));
                }
                Ok(secret) => {
                    if tokens
                        .iter()
                        .any(|(s, _): &(hub_http::Secret, Arc<Grant>)| {
                            s.expose() == secret.expose()
                        })
                    {
                        issues.push((
                            format!("tokens.{name}.token"),
                            "is the same as another token's: each needs its own".into(),
                        ));
                    }
                    tokens.push((secret, Arc::new(Grant::new(&name, subscribe, publish))));
                }
                Err(e) => issues.push((format!("tokens.{name}.token"), e)),
            }
        }
        if tokens.is_empty() && !cfg.anonymous_subscribe {
            issues.push((
                "tokens".into(),
                "no token and anonymous_subscribe = false: nobody could connect; add [gateway.tokens.<name>] or set anonymous_subscribe = true".into(),
            ));
        }
        for (key, v) in [
            ("client_queue", cfg.client_queue),
            ("max_frame_bytes", cfg.max_frame_bytes),
            ("max_clients", cfg.max_clients),
        ] {
            if v == 0 {
                issues.push((key.into(), "must be at least 1".into()));
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let anonymous = cfg.anonymous_subscribe.then(|| {
            Arc::new(Grant::new(
                "anonymous",
                Pattern::new("#").into_iter().collect(),
                Vec::new(),
            ))
        });
        let auth = Auth {
            tokens,
            anonymous,
            origins: cfg.allowed_origins.clone(),
        };
        Ok(Arc::new(Self {
            cfg,
            auth,
            shared: Mutex::default(),
            next_client: AtomicU64::new(1),
            sink: Mutex::new(None),
            forward: OnceLock::new(),
            series: OnceLock::new(),
        }))
    }

    /// Its configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The patterns the taps bind: every topic some client may receive.
    pub fn tap_patterns(&self) -> Vec<Pattern> {
        let mut out: Vec<Pattern> = Vec::new();
        let grants = self
            .auth
            .tokens
            .iter()
            .map(|(_, g)| g)
            .chain(&self.auth.anonymous);
        for g in grants {
            for p in &g.subscribe {
                if !out.iter().any(|o| o.as_str() == p.as_str()) {
                    out.push(p.clone());
                }
            }
        }
        if out.iter().any(|p| p.as_str() == "#") {
            out.retain(|p| p.as_str() == "#");
        }
        out
    }

    /// The backend clients publish through (id [`BACKEND_ID`]).
    pub fn backend(self: &Arc<Self>) -> Arc<dyn Backend> {
        Arc::new(GatewayBackend(self.clone()))
    }

    /// A tap: the consumer that hands an attached backend's messages to the clients.
    pub fn tap(self: &Arc<Self>) -> Arc<dyn Consumer> {
        Arc::new(Tap(self.clone()))
    }

    /// Where client publishes are forwarded (`forward_to`), once the engine runs.
    pub fn set_forward(&self, backend: &str, publisher: Publisher) {
        let _ = self.forward.set((backend.to_owned(), publisher));
    }

    /// `/ws` and `/events`, for the hub's HTTP server.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/ws", get(ws::upgrade))
            .route("/events", get(sse::events))
            .with_state(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands a message to every client that takes it. A message seen moments ago (by id) is
    /// skipped: a client's publish forwarded onto an attached backend comes back through it.
    pub fn fan_out(&self, msg: &Message) {
        let words = TopicWords::new(msg.topic());
        let mut shared = self.lock();
        let id: Arc<str> = msg.id().into();
        if !shared.seen.insert(id.clone()) {
            return;
        }
        shared.seen_order.push_back(id.clone());
        if shared.seen_order.len() > DEDUP_IDS.max(self.cfg.replay_buffer)
            && let Some(old) = shared.seen_order.pop_front()
        {
            shared.seen.remove(&old);
        }
        let frames = Frames {
            msg,
            hub: protocol::hub_frame(msg).into(),
            moksha: std::cell::OnceCell::new(),
            sse: std::cell::OnceCell::new(),
        };
        if self.cfg.replay_buffer > 0 {
            if shared.replay.len() >= self.cfg.replay_buffer {
                shared.replay.pop_front();
            }
            shared
                .replay
                .push_back((id, msg.topic().into(), frames.hub.clone()));
        }
        for client in shared.clients.values() {
            client.offer(&words, &frames);
        }
    }

    /// Whether another client may connect now.
    fn has_room(&self) -> bool {
        self.lock().clients.len() < self.cfg.max_clients
    }

    /// Registers a new client, or refuses it when `max_clients` are connected.
    fn connect(&self, grant: Arc<Grant>, transport: &'static str) -> Option<Arc<Client>> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client::new(id, grant, transport, self.cfg.client_queue));
        let mut shared = self.lock();
        if shared.clients.len() >= self.cfg.max_clients {
            return None;
        }
        shared.clients.insert(id, client.clone());
        drop(shared);
        self.gauge(transport).inspect(|g| g.increment(1.0));
        Some(client)
    }

    /// Registers an SSE client after queueing what it missed since `last_event_id`: the
    /// buffered messages after it that its subscriptions take, or, when the id is no longer
    /// (or never was) in the buffer, a `gap` event saying so. Under the fan-out's lock: nothing
    /// is missed or sent twice between the replay and the live stream.
    fn connect_replaying(
        &self,
        client: Arc<Client>,
        last_event_id: Option<&str>,
    ) -> Result<Arc<Client>, ()> {
        let mut shared = self.lock();
        if shared.clients.len() >= self.cfg.max_clients {
            return Err(());
        }
        if let Some(last) = last_event_id {
            match shared.replay.iter().position(|(id, _, _)| &**id == last) {
                Some(at) => {
                    for (id, topic, frame) in shared.replay.iter().skip(at + 1) {
                        if client.wants(topic) {
                            client.push(client::Frame::Raw(protocol::sse_event(id, frame)));
                        }
                    }
                }
                None => client.push(client::Frame::Raw(sse::gap_event(
                    last,
                    self.cfg.replay_buffer,
                ))),
            }
        }
        shared.clients.insert(client.id, client.clone());
        drop(shared);
        self.gauge(client.transport).inspect(|g| g.increment(1.0));
        Ok(client)
    }

    fn disconnect(&self, client: &Client) {
        if self.lock().clients.remove(&client.id).is_some() {
            self.gauge(client.transport).inspect(|g| g.decrement(1.0));
        }
    }

    fn gauge(&self, transport: &str) -> Option<&Gauge> {
        let s = self.series.get()?;
        Some(if transport == "sse" {
            &s.sse_clients
        } else {
            &s.ws_clients
        })
    }

    fn count_bad(&self, reason: &'static str) {
        if let Some(c) = self.series.get().and_then(|s| s.bad_frames.get(reason)) {
            c.increment(1);
        }
    }

    fn count_disconnect(&self, reason: &'static str) {
        if let Some(c) = self.series.get().and_then(|s| s.disconnects.get(reason)) {
            c.increment(1);
        }
    }

    /// Enters a client's message into the hub (the gateway backend's consumers, then the
    /// taps), and forwards it onto `forward_to`. `Ok` once both took it.
    async fn publish(&self, msg: Message) -> Result<(), String> {
        let sink = self
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| "the hub is not running".to_owned())?;
        if let Some((id, publisher)) = self.forward.get() {
            publisher
                .publish(msg.clone())
                .await
                .map_err(|e| format!("forwarding to backend {id}: {e}"))?;
        }
        sink.deliver(Delivery::new(msg))
            .await
            .map_err(|e| format!("the hub is not taking messages: {e}"))
    }

    /// Closes every client (the hub is stopping).
    fn close_all(&self, reason: &str) {
        let clients: Vec<Arc<Client>> = self.lock().clients.values().cloned().collect();
        for c in &clients {
            c.close(reason);
            self.count_disconnect("shutdown");
        }
        if !clients.is_empty() {
            info!(
                clients = clients.len(),
                "Gateway clients disconnected: {reason}."
            );
        }
    }
}

/// The gateway's own backend: a loopback like `memory`, whose deliveries are what clients
/// publish (and what consumers publish on it).
struct GatewayBackend(Arc<Gateway>);

#[async_trait]
impl Backend for GatewayBackend {
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError> {
        let gw = &self.0;
        let registry = cx.metrics.registry();
        use hub_engine::metrics as m;
        let _ = gw.series.set(Series {
            ws_clients: m::gateway_clients(registry, "ws"),
            sse_clients: m::gateway_clients(registry, "sse"),
            bad_frames: ["not_json", "unknown_op", "invalid", "too_large", "binary"]
                .into_iter()
                .map(|r| (r, m::gateway_bad_frames(registry, r)))
                .collect(),
            disconnects: ["slow", "abuse", "shutdown"]
                .into_iter()
                .map(|r| (r, m::gateway_disconnects(registry, r)))
                .collect(),
        });
        for g in gw
            .auth
            .tokens
            .iter()
            .map(|(_, g)| g)
            .chain(&gw.auth.anonymous)
        {
            let _ = g.series.set(m::gateway_client(registry, &g.name));
        }
        *gw.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.sink.clone());
        cx.metrics.set_connected(true);
        cx.shutdown.cancelled().await;
        gw.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        gw.close_all("the hub is shutting down");
        cx.metrics.set_connected(false);
        Ok(())
    }

    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let sink = self
            .0
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| PublishError::Unavailable {
                backend: BACKEND_ID.into(),
                reason: "the gateway is not running".into(),
            })?;
        sink.deliver(Delivery::new(msg.clone()))
            .await
            .map_err(|e| PublishError::Unavailable {
                backend: BACKEND_ID.into(),
                reason: e.to_string(),
            })
    }
}

/// A tap: hands every message of its backend to the gateway's clients.
struct Tap(Arc<Gateway>);

#[async_trait]
impl Consumer for Tap {
    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        self.0.fan_out(msg);
        Ok(())
    }
}
